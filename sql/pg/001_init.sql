-- imd schema for PostgreSQL, version 1: the final state of the SQLite schema (sql/001..006) in
-- PostgreSQL's types, plus what several nodes sharing one database need (msg_id claims,
-- conversations.updated_at). Conversation ids (chat_id) are the contract's: 0_system,
-- 1_<a>_<b>, 2_<uid>_<time>, 3_<shop>_<customer>.

CREATE TABLE users (
    uid           BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    -- The UTS #39 skeleton of the lowercased NFC name (src/usernames.rs): one name per key.
    name_key      TEXT UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user',
    -- Bumped by logout: tokens carry the generation they were issued in.
    token_gen     BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

-- Key/value settings that must survive restarts (the generated JWT secret).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per conversation; last_seq is the seq of its newest message. The committing
-- transaction locks the row to take the next seqs, so seqs stay gap-free across nodes.
CREATE TABLE conversations (
    chat_id      TEXT PRIMARY KEY,
    kind         BIGINT NOT NULL,           -- 0 system, 1 single, 2 group, 3 service
    last_seq     BIGINT NOT NULL DEFAULT 0,
    shop_id      BIGINT,                    -- service only
    customer_uid BIGINT,                    -- service only
    handler_uid  BIGINT,                    -- service only: the agent who handles it
    created_at   BIGINT NOT NULL,
    -- When its last message committed (ms): a node catching up asks what changed since.
    updated_at   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX conversations_by_shop ON conversations (shop_id) WHERE shop_id IS NOT NULL;
CREATE INDEX conversations_by_update ON conversations (updated_at);

INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES ('0_system', 0, 0, 0);

-- Who takes part in a conversation, and how far they have read. floor_seq is where their
-- sync starts: it moves with `read` and joining, not when they send.
CREATE TABLE participants (
    uid       BIGINT NOT NULL,
    chat_id   TEXT NOT NULL,
    read_seq  BIGINT NOT NULL DEFAULT 0,
    floor_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, chat_id)
);

CREATE TABLE messages (
    id        BIGSERIAL PRIMARY KEY,
    chat_id   TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    from_uid  BIGINT NOT NULL,
    to_uid    BIGINT,
    msg_id    TEXT,
    msg_type  TEXT NOT NULL,
    body      TEXT NOT NULL,                -- the `msg` value as JSON text, sent as is
    ts        BIGINT NOT NULL,              -- milliseconds since the epoch
    shop_id   BIGINT,
    agent_uid BIGINT                        -- service: the agent chosen for this message
);
CREATE UNIQUE INDEX messages_by_chat ON messages (chat_id, seq);
CREATE UNIQUE INDEX messages_by_client_id ON messages (from_uid, msg_id) WHERE msg_id IS NOT NULL;

-- A sender's msg_ids, claimed before a seq is taken: a resend (to any node) is found here and
-- answered with the original, and never burns a seq.
CREATE TABLE client_ids (
    from_uid BIGINT NOT NULL,
    msg_id   TEXT NOT NULL,
    PRIMARY KEY (from_uid, msg_id)
);

CREATE TABLE rooms (
    chat_id    TEXT PRIMARY KEY,
    owner_uid  BIGINT NOT NULL,
    name       TEXT,
    created_at BIGINT NOT NULL,
    private    BOOLEAN NOT NULL DEFAULT FALSE,
    -- 'shared': members see the whole history; 'joined': a member sees from their join on.
    history    TEXT NOT NULL DEFAULT 'shared'
);

CREATE TABLE room_members (
    chat_id    TEXT NOT NULL,
    uid        BIGINT NOT NULL,
    joined_at  BIGINT NOT NULL,
    -- The room's last_seq when the member joined: with history 'joined' they see only later seqs.
    joined_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, uid)
);

-- Pending invitations into rooms; one is used up when the invited user joins.
CREATE TABLE room_invites (
    chat_id    TEXT NOT NULL,
    uid        BIGINT NOT NULL,
    invited_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (chat_id, uid)
);

CREATE TABLE shops (
    shop_id    BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_uid  BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE shop_agents (
    shop_id  BIGINT NOT NULL,
    uid      BIGINT NOT NULL,
    -- FALSE while the user is only invited: they get no customers until they accept.
    accepted BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (shop_id, uid)
);

-- How far each device of a user has received each conversation; sync resumes after the
-- larger of floor_seq and this position.
CREATE TABLE delivered (
    uid     BIGINT NOT NULL,
    device  TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (uid, device, chat_id)
);
