//! Read queries: sync, history, conversation lists, accounts. They run on read-only
//! connections (`SqliteStore::read`).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::value::RawValue;

use super::{SqliteStore, StoreResult};
use crate::store::{ConversationRow, SyncBatch, UserRow};

impl SqliteStore {
    /// What a connecting device has missed (`sync_for`).
    pub async fn sync_for(&self, uid: u64, device: String) -> StoreResult<SyncBatch> {
        self.read(move |conn| sync_for(conn, uid, &device)).await
    }

    /// One page of `chat_id` for `uid` (`history`); with `from_join`, only what came after
    /// their join (nothing when they are not a member).
    pub async fn history_page(
        &self,
        chat_id: String,
        uid: u64,
        from_join: bool,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<(Vec<StoredMessage>, bool)> {
        self.read(move |conn| {
            let after = if from_join { joined_seq(conn, &chat_id, uid)?.unwrap_or(i64::MAX) } else { 0 };
            history(conn, &chat_id, before, after, limit)
        })
        .await
    }

    /// A page of `uid`'s conversations (`conversations_of`).
    pub async fn conversations_of(
        &self,
        uid: u64,
        offset: usize,
        limit: usize,
    ) -> StoreResult<(Vec<ConversationRow>, bool)> {
        self.read(move |conn| conversations_of(conn, uid, offset, limit)).await
    }
}
use crate::chat_id;
use crate::domain::{Kind, StoredMessage};

/// Columns read by `message_from_row`, in its order.
pub const MESSAGE_COLUMNS: &str = "id, chat_id, seq, from_uid, to_uid, msg_id, msg_type, body, ts, shop_id, agent_uid";

/// Most messages one conversation contributes to a sync; the rest come through history.
pub const SYNC_PER_CONVERSATION: usize = 200;
/// Most messages one connect-time sync sends in all (~300 KB of frames).
pub const SYNC_MAX_MESSAGES: usize = 1000;
/// Most conversations one sync looks at; the next connect takes up the rest.
pub const SYNC_MAX_CONVERSATIONS: usize = 500;

pub fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let chat_id: String = row.get(1)?;
    Ok(StoredMessage {
        id: row.get(0)?,
        kind: chat_id::kind_of(&chat_id).unwrap_or(Kind::Single),
        chat_id: Arc::from(chat_id),
        seq: row.get(2)?,
        from_uid: row.get(3)?,
        to_uid: row.get(4)?,
        msg_id: row.get::<_, Option<String>>(5)?.map(Into::into),
        msg_type: row.get::<_, String>(6)?.into(),
        body: RawValue::from_string(row.get(7)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e)))?,
        ts: row.get(8)?,
        shop_id: row.get(9)?,
        agent_uid: row.get(10)?,
    })
}

// SQLite re-prepares a statement at every run when its plan depends on a bound value: a bound
// LIMIT, or a join or ORDER BY next to a bound parameter. The queries that run at every
// connect and listing avoid both (correlated subqueries instead of joins; checked by the unit
// test below); the message queries need their ORDER BY and run only when there is a page to read.

/// Whether the user has any conversation with messages after where its sync starts.
const UNREAD_SQL: &str = "SELECT p.chat_id FROM participants p WHERE p.uid = ?1 AND (
    SELECT c.last_seq > p.floor_seq
       AND (c.kind <> 3 OR c.customer_uid = p.uid OR c.handler_uid IS NULL OR c.handler_uid = p.uid)
    FROM conversations c WHERE c.chat_id = p.chat_id)";

/// The user's conversations with messages after the device's position (the larger of the read
/// and delivered positions), in primary-key (chat_id) order. A service conversation syncs to its
/// customer, to its handling agent, or to every agent of the shop while nobody handles it.
const SYNC_SQL: &str = "SELECT chat_id, position, last_seq FROM (
        SELECT p.chat_id,
            MAX(p.floor_seq, COALESCE((SELECT d.seq FROM delivered d
                WHERE d.uid = p.uid AND d.device = ?2 AND d.chat_id = p.chat_id), 0)) AS position,
            (SELECT CASE WHEN c.kind <> 3 OR c.customer_uid = p.uid OR c.handler_uid IS NULL
                    OR c.handler_uid = p.uid THEN c.last_seq ELSE 0 END
             FROM conversations c WHERE c.chat_id = p.chat_id) AS last_seq
        FROM participants p WHERE p.uid = ?1)
    WHERE last_seq > position";

/// The user's conversations (with messages, or rooms), read positions and the time of the last
/// message, in primary-key (chat_id) order. (Sorted by the caller: an ORDER BY here made SQLite
/// re-prepare the statement at every run.)
const CONVERSATIONS_SQL: &str = "SELECT chat_id, kind, last_seq, read_seq, last_ts, name FROM (
        SELECT p.chat_id AS chat_id, p.read_seq AS read_seq,
            (SELECT r.name FROM rooms r WHERE r.chat_id = p.chat_id) AS name,
            (SELECT c.kind FROM conversations c WHERE c.chat_id = p.chat_id) AS kind,
            (SELECT c.last_seq FROM conversations c WHERE c.chat_id = p.chat_id) AS last_seq,
            (SELECT m.ts FROM messages m WHERE m.chat_id = p.chat_id
                AND m.seq = (SELECT c.last_seq FROM conversations c WHERE c.chat_id = p.chat_id)) AS last_ts
        FROM participants p WHERE p.uid = ?1)
    WHERE last_seq > 0 OR kind = 2";

/// The connect-time sync of `device` of `uid`: at most `SYNC_PER_CONVERSATION` messages per
/// conversation and `SYNC_MAX_MESSAGES` in all; what is left out is listed in `cut`. The
/// user's own messages are not synced back to them (their read position may stop before them,
/// see the writer's `BatchUpdates::sent`).
pub fn sync_for(conn: &Connection, uid: u64, device: &str) -> StoreResult<SyncBatch> {
    let mut pending_rows = conn.prepare_cached(SYNC_SQL)?;
    // Rows stream: stopping after the cap leaves the rest unread.
    let pending: Vec<(Arc<str>, i64, i64)> = pending_rows
        .query_map(params![uid, device], |row| Ok((Arc::from(row.get::<_, String>(0)?), row.get(1)?, row.get(2)?)))?
        .take(SYNC_MAX_CONVERSATIONS + 1)
        .collect::<Result<_, _>>()?;
    let all_read = pending.is_empty() && conn.prepare_cached(UNREAD_SQL)?.query([uid])?.next()?.is_none();
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq > ?2 AND from_uid <> ?4 ORDER BY seq DESC LIMIT ?3"
    );
    let mut newest = conn.prepare_cached(&sql)?;
    let mut batch =
        SyncBatch { messages: Vec::new(), cut: Vec::new(), more: pending.len() > SYNC_MAX_CONVERSATIONS, all_read };
    for (chat_id, position, last_seq) in pending.into_iter().take(SYNC_MAX_CONVERSATIONS) {
        let take = SYNC_PER_CONVERSATION.min(SYNC_MAX_MESSAGES - batch.messages.len());
        if take == 0 {
            batch.cut.push((chat_id, last_seq + 1));
            continue;
        }
        // One more than taken tells whether older ones were left out.
        let start = batch.messages.len();
        for message in newest.query_map(params![&*chat_id, position, take as i64 + 1, uid], message_from_row)? {
            batch.messages.push(message?);
        }
        // The extra (oldest) row only says that older ones were left out.
        let cut = batch.messages.len() - start > take;
        if cut {
            batch.messages.pop();
        }
        batch.messages[start..].reverse();
        if let (true, Some(first)) = (cut, batch.messages.get(start)) {
            batch.cut.push((chat_id, first.seq));
        }
    }
    Ok(batch)
}

/// The room's last seq when `uid` joined it (messages up to it came before them); None if
/// they are not a member.
pub fn joined_seq(conn: &Connection, chat_id: &str, uid: u64) -> StoreResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT joined_seq FROM room_members WHERE chat_id = ?1 AND uid = ?2")?
        .query_row(params![chat_id, uid], |row| row.get(0))
        .optional()?)
}

/// One page of a conversation, newest page first: messages with seq below `before` and above
/// `after` (where a member's visible history starts).
pub fn history(
    conn: &Connection,
    chat_id: &str,
    before: Option<i64>,
    after: i64,
    limit: i64,
) -> StoreResult<(Vec<StoredMessage>, bool)> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq < ?2 AND seq > ?3
         ORDER BY seq DESC LIMIT ?4"
    );
    let mut page: Vec<StoredMessage> = conn
        .prepare_cached(&sql)?
        .query_map(params![chat_id, before.unwrap_or(i64::MAX), after, limit + 1], message_from_row)?
        .collect::<Result<_, _>>()?;
    let has_more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    page.reverse();
    Ok((page, has_more))
}

/// A page of the conversations a user takes part in, most recently active first: `limit` rows
/// after the first `offset`, and whether more follow.
pub fn conversations_of(
    conn: &Connection,
    uid: u64,
    offset: usize,
    limit: usize,
) -> StoreResult<(Vec<ConversationRow>, bool)> {
    let mut all: Vec<(Option<i64>, ConversationRow)> = conn
        .prepare_cached(CONVERSATIONS_SQL)?
        .query_map([uid], |row| {
            let conversation = ConversationRow {
                chat_id: row.get(0)?,
                kind: row.get(1)?,
                last_seq: row.get(2)?,
                read_seq: row.get(3)?,
                name: row.get(5)?,
                last: None,
            };
            Ok((row.get(4)?, conversation))
        })?
        .collect::<Result<_, _>>()?;
    // Stable: rooms without messages, and equal times, keep chat_id order.
    all.sort_by_key(|(ts, _)| std::cmp::Reverse(ts.unwrap_or(0)));
    let mut rows: Vec<ConversationRow> =
        all.into_iter().skip(offset).take(limit.saturating_add(1)).map(|(_, row)| row).collect();
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    // A member of a room whose history starts at their join does not see an older last message.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2 AND seq > COALESCE(
            (SELECT rm.joined_seq FROM room_members rm JOIN rooms r ON r.chat_id = rm.chat_id
             WHERE rm.chat_id = ?1 AND rm.uid = ?3 AND r.history = 'joined'), 0)"
    );
    let mut last = conn.prepare_cached(&sql)?;
    for row in &mut rows {
        row.last = last.query_row(params![row.chat_id, row.last_seq, uid], message_from_row).optional()?;
    }
    Ok((rows, has_more))
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        uid: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        role: row.get(3)?,
        token_gen: row.get(4)?,
    })
}

pub fn user_by_name(conn: &Connection, username: &str) -> StoreResult<Option<UserRow>> {
    Ok(conn
        .prepare_cached("SELECT uid, username, password_hash, role, token_gen FROM users WHERE username = ?1")?
        .query_row([username], user_from_row)
        .optional()?)
}

pub fn user_by_uid(conn: &Connection, uid: u64) -> StoreResult<Option<UserRow>> {
    Ok(conn
        .prepare_cached("SELECT uid, username, password_hash, role, token_gen FROM users WHERE uid = ?1")?
        .query_row([uid], user_from_row)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A conversation 1_1_2 with `n` messages, unread by user 2.
    fn conversation_of(n: i64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::sqlite::open_writable(&dir.path().join("s.db")).unwrap();
        conn.execute_batch("INSERT INTO participants (uid, chat_id, read_seq) VALUES (2, '1_1_2', 0)").unwrap();
        conn.execute("INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES ('1_1_2', 1, ?1, 0)", [n])
            .unwrap();
        for seq in 1..=n {
            conn.execute(
                "INSERT INTO messages (chat_id, seq, from_uid, to_uid, msg_type, body, ts) VALUES ('1_1_2', ?1, 1, 2, 'text', '\"x\"', 0)",
                [seq],
            )
            .unwrap();
        }
        (dir, conn)
    }

    fn synced(batch: &SyncBatch) -> (usize, Option<i64>, Vec<(String, i64)>) {
        let first = batch.messages.first().map(|m| m.seq);
        (batch.messages.len(), first, batch.cut.iter().map(|(c, s)| (c.to_string(), *s)).collect())
    }

    #[test]
    fn a_conversation_is_cut_only_past_its_share() {
        let (_dir, conn) = conversation_of(SYNC_PER_CONVERSATION as i64);
        assert_eq!(synced(&sync_for(&conn, 2, "web").unwrap()), (200, Some(1), vec![]));
        let (_dir, conn) = conversation_of(SYNC_PER_CONVERSATION as i64 + 1);
        let batch = sync_for(&conn, 2, "web").unwrap();
        assert_eq!(synced(&batch), (200, Some(2), vec![("1_1_2".into(), 2)]));
        assert!(!batch.all_read && !batch.more);
        // This device's position counts; another device's does not.
        crate::store::sqlite::delivered::advance(&conn, 2, "web", &[(Arc::from("1_1_2"), 150)]).unwrap();
        assert_eq!(synced(&sync_for(&conn, 2, "web").unwrap()), (51, Some(151), vec![]));
        assert_eq!(synced(&sync_for(&conn, 2, "mobile").unwrap()).0, 200);
        crate::store::sqlite::delivered::advance(&conn, 2, "web", &[(Arc::from("1_1_2"), 201)]).unwrap();
        let batch = sync_for(&conn, 2, "web").unwrap();
        assert_eq!(synced(&batch), (0, None, vec![]));
        assert!(!batch.all_read, "delivered is not read");
    }

    #[test]
    fn hot_queries_are_not_reprepared_at_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let _writer = crate::store::sqlite::open_writable(&path).unwrap();
        let reader = crate::store::sqlite::open_connection(&path, true).unwrap();
        for (sql, params) in [(UNREAD_SQL, 1), (SYNC_SQL, 2), (CONVERSATIONS_SQL, 1)] {
            for run in 1..=3 {
                let mut statement = reader.prepare_cached(sql).unwrap();
                let values: Vec<i64> = (1..=params as i64).collect();
                let mut rows = statement.query(rusqlite::params_from_iter(values)).unwrap();
                while rows.next().unwrap().is_some() {}
                drop(rows);
                assert_eq!(statement.get_status(StatementStatus::Run), run, "{sql}");
                assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "re-prepared: {sql}");
            }
        }
    }
}
