//! Delivered positions: how far each device of a user has received each conversation (table
//! `delivered`). Written by the writer thread only; sync reads them (`queries::sync_for`).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, StoreResult};

impl SqliteStore {
    /// Saves a device's delivered positions (`advance`) in the writer's next batch.
    pub async fn advance_delivered(
        &self,
        uid: u64,
        device: String,
        positions: Vec<(Arc<str>, i64)>,
    ) -> StoreResult<()> {
        self.write(move |conn| advance(conn, uid, &device, &positions)).await
    }

    /// A device's `received` (`receive`), in the writer's next batch.
    pub async fn receive(&self, uid: u64, device: String, chat_id: String, seq: i64) -> StoreResult<Option<i64>> {
        self.write(move |conn| receive(conn, uid, &device, &chat_id, seq)).await
    }
}

/// Moves `device`'s positions forward (never back) to the given seqs.
pub fn advance(conn: &Connection, uid: u64, device: &str, positions: &[(Arc<str>, i64)]) -> StoreResult<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO delivered (uid, device, chat_id, seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (uid, device, chat_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?;
    for (chat_id, seq) in positions {
        upsert.execute(params![uid, device, &**chat_id, seq])?;
    }
    Ok(())
}

/// A device says it has received `chat_id` up to `seq`: moves its position there (never back,
/// never past the newest message). Returns where sync now resumes for that device (the larger
/// of the read and delivered positions), or None if the user does not take part in `chat_id`.
pub fn receive(conn: &Connection, uid: u64, device: &str, chat_id: &str, seq: i64) -> StoreResult<Option<i64>> {
    let found: Option<(i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT p.floor_seq, (SELECT c.last_seq FROM conversations c WHERE c.chat_id = p.chat_id)
             FROM participants p WHERE p.uid = ?1 AND p.chat_id = ?2",
        )?
        .query_row(params![uid, chat_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((floor_seq, last_seq)) = found else { return Ok(None) };
    let seq = seq.min(last_seq.unwrap_or(0));
    let stored: i64 = conn
        .prepare_cached(
            "INSERT INTO delivered (uid, device, chat_id, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (uid, device, chat_id) DO UPDATE SET seq = MAX(seq, excluded.seq) RETURNING seq",
        )?
        .query_row(params![uid, device, chat_id, seq], |row| row.get(0))?;
    Ok(Some(stored.max(floor_seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::sqlite::open_writable(&dir.path().join("d.db")).unwrap();
        conn.execute_batch(
            "INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES ('1_1_2', 1, 5, 0);
             INSERT INTO participants (uid, chat_id, read_seq, floor_seq) VALUES (2, '1_1_2', 1, 1);",
        )
        .unwrap();
        (dir, conn)
    }

    fn position(conn: &Connection, device: &str) -> Option<i64> {
        conn.query_row("SELECT seq FROM delivered WHERE uid = 2 AND device = ?1", [device], |r| r.get(0))
            .optional()
            .unwrap()
    }

    #[test]
    fn positions_only_move_forward_per_device() {
        let (_dir, conn) = setup();
        advance(&conn, 2, "web", &[(Arc::from("1_1_2"), 3)]).unwrap();
        advance(&conn, 2, "web", &[(Arc::from("1_1_2"), 2)]).unwrap();
        assert_eq!(position(&conn, "web"), Some(3));
        assert_eq!(position(&conn, "mobile"), None);
    }

    #[test]
    fn receive_is_clamped_and_refused_to_strangers() {
        let (_dir, conn) = setup();
        assert_eq!(receive(&conn, 2, "web", "1_1_2", 99).unwrap(), Some(5), "not past the newest");
        assert_eq!(receive(&conn, 2, "web", "1_1_2", 2).unwrap(), Some(5), "not back");
        assert_eq!(receive(&conn, 2, "app", "1_1_2", 0).unwrap(), Some(1), "the read position counts");
        assert_eq!(receive(&conn, 3, "web", "1_1_2", 1).unwrap(), None);
    }
}
