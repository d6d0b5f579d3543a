-- imd schema, version 3.
-- How far each device of a user has received each conversation. Sync resumes after the larger
-- of read_seq and this position, so a device that never sends `read` is not sent the same
-- messages at every connect. Advanced by `received`, and by the session once a message frame
-- has been written to the device's socket (saved at most once a second per connection).
CREATE TABLE delivered (
    uid     INTEGER NOT NULL,
    device  TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (uid, device, chat_id)
) WITHOUT ROWID;
