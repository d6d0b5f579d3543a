//! How far each participant has read a conversation (the `read` action).

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, StoreResult};

impl SqliteStore {
    /// Moves `uid`'s read position in `chat_id` to `seq`, never back and never past the
    /// newest message; the position now, or None when `uid` is not a participant.
    pub async fn mark_read(&self, uid: u64, chat_id: String, seq: i64) -> StoreResult<Option<i64>> {
        self.write(move |conn| mark_read(conn, uid, &chat_id, seq)).await
    }
}

fn mark_read(conn: &Connection, uid: u64, chat_id: &str, seq: i64) -> StoreResult<Option<i64>> {
    Ok(conn
        .query_row(
            "UPDATE participants SET read_seq = MAX(read_seq,
                 MIN(?3, (SELECT last_seq FROM conversations WHERE chat_id = ?2))),
               floor_seq = MAX(floor_seq,
                 MIN(?3, (SELECT last_seq FROM conversations WHERE chat_id = ?2)))
             WHERE uid = ?1 AND chat_id = ?2 RETURNING read_seq",
            params![uid, chat_id, seq],
            |row| row.get::<_, i64>(0),
        )
        .optional()?)
}
