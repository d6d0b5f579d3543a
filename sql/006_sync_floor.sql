-- Where a user's sync starts in each conversation (beside each device's delivered position).
-- It moves with `read` and joining, like read_seq, but not when the user sends: sending marks
-- the conversation read for unread counts, yet messages of others that a device of the user
-- has not received must still be synced to it. A user's own messages are never synced back.
ALTER TABLE participants ADD COLUMN floor_seq INTEGER NOT NULL DEFAULT 0;
UPDATE participants SET floor_seq = read_seq;
