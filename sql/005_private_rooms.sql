-- imd schema: private rooms, room invitations, agents' consent (issue 9, "who may see what").
-- Existing rooms stay public with their whole history shared, and existing members see
-- everything (joined_seq 0). Agents already in shop_agents count as accepted.
ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
-- 'shared': members see the whole history; 'joined': a member sees from their join on.
ALTER TABLE rooms ADD COLUMN history TEXT NOT NULL DEFAULT 'shared';
-- The room's last_seq when the member joined: with history 'joined' they see only later seqs.
ALTER TABLE room_members ADD COLUMN joined_seq INTEGER NOT NULL DEFAULT 0;
-- 0 while the user is only invited: they get no customers until they accept.
ALTER TABLE shop_agents ADD COLUMN accepted INTEGER NOT NULL DEFAULT 1;

-- Pending invitations into rooms; one is used up when the invited user joins.
CREATE TABLE room_invites (
    chat_id    TEXT NOT NULL,
    uid        INTEGER NOT NULL,
    invited_by INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, uid)
) WITHOUT ROWID;
