-- imd schema, version 1.
-- Conversation ids (chat_id) are the contract's: 0_system, 1_<a>_<b>, 2_<uid>_<time>, 3_<shop>_<customer>.

CREATE TABLE users (
    uid           INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user',
    -- Bumped by logout: tokens carry the generation they were issued in.
    token_gen     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

-- Key/value settings that must survive restarts (the generated JWT secret).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per conversation; last_seq is the seq of its newest message.
CREATE TABLE conversations (
    chat_id      TEXT PRIMARY KEY,
    kind         INTEGER NOT NULL,          -- 0 system, 1 single, 2 group, 3 service
    last_seq     INTEGER NOT NULL DEFAULT 0,
    shop_id      INTEGER,                   -- service only
    customer_uid INTEGER,                   -- service only
    handler_uid  INTEGER,                   -- service only: the agent who handles it
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES ('0_system', 0, 0, 0);

-- Who takes part in a conversation, and how far they have read. Sync and unread counts
-- are computed from here.
CREATE TABLE participants (
    uid      INTEGER NOT NULL,
    chat_id  TEXT NOT NULL,
    read_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, chat_id)
) WITHOUT ROWID;

CREATE TABLE messages (
    id        INTEGER PRIMARY KEY,
    chat_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    from_uid  INTEGER NOT NULL,
    to_uid    INTEGER,
    msg_id    TEXT,
    msg_type  TEXT NOT NULL,
    body      TEXT NOT NULL,                -- the `msg` value as JSON text
    ts        INTEGER NOT NULL,             -- milliseconds since the epoch
    shop_id   INTEGER,
    agent_uid INTEGER                       -- service: the agent chosen for this message
);
CREATE UNIQUE INDEX messages_by_chat ON messages (chat_id, seq);
-- Resending a msg_id is answered with the original ack.
CREATE UNIQUE INDEX messages_by_client_id ON messages (from_uid, msg_id) WHERE msg_id IS NOT NULL;

CREATE TABLE rooms (
    chat_id    TEXT PRIMARY KEY,
    owner_uid  INTEGER NOT NULL,
    name       TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE room_members (
    chat_id   TEXT NOT NULL,
    uid       INTEGER NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, uid)
) WITHOUT ROWID;

CREATE TABLE shops (
    shop_id    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_uid  INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE shop_agents (
    shop_id INTEGER NOT NULL,
    uid     INTEGER NOT NULL,
    PRIMARY KEY (shop_id, uid)
) WITHOUT ROWID;
