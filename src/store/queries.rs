//! Read queries: sync, history, conversation lists, accounts. They run on read-only
//! connections (`Store::read`).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::value::RawValue;

use super::StoreResult;
use super::messages::{Kind, StoredMessage};
use crate::chat_id;

/// Columns read by `message_from_row`, in its order.
pub const MESSAGE_COLUMNS: &str = "id, chat_id, seq, from_uid, to_uid, msg_id, msg_type, body, ts, shop_id, agent_uid";

/// Most messages one conversation contributes to a sync; the rest come through history.
pub const SYNC_PER_CONVERSATION: i64 = 200;

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

/// What a connecting user missed: per conversation, the newest unread messages, oldest first.
pub struct SyncBatch {
    pub messages: Vec<StoredMessage>,
}

// SQLite re-prepares a statement at every run when its plan depends on a bound value: a bound
// LIMIT, or a join or ORDER BY next to a bound parameter. The two queries that run at every
// connect and listing avoid both (correlated subqueries instead of joins; checked by the unit
// test below); the message queries need their ORDER BY and run only when there is a page to read.

/// The user's conversations with unread messages, in primary-key (chat_id) order.
const UNREAD_SQL: &str = "SELECT p.chat_id, p.read_seq FROM participants p WHERE p.uid = ?1 AND (
    SELECT c.last_seq > p.read_seq
       AND (c.kind <> 3 OR c.customer_uid = p.uid OR c.handler_uid IS NULL OR c.handler_uid = p.uid)
    FROM conversations c WHERE c.chat_id = p.chat_id)";

/// The user's conversations (with messages, or rooms) and read positions.
const CONVERSATIONS_SQL: &str = "SELECT chat_id, kind, last_seq, read_seq FROM (
        SELECT p.chat_id, p.read_seq,
            (SELECT c.kind FROM conversations c WHERE c.chat_id = p.chat_id) AS kind,
            (SELECT c.last_seq FROM conversations c WHERE c.chat_id = p.chat_id) AS last_seq
        FROM participants p WHERE p.uid = ?1)
    WHERE last_seq > 0 OR kind = 2";

pub fn sync_for(conn: &Connection, uid: u64) -> StoreResult<SyncBatch> {
    // A service conversation syncs to its customer, to its handling agent, or to every agent
    // of the shop while nobody handles it.
    let mut unread = conn.prepare_cached(UNREAD_SQL)?;
    let pending: Vec<(String, i64)> =
        unread.query_map([uid], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3");
    let mut newest = conn.prepare_cached(&sql)?;
    let mut messages = Vec::new();
    for (chat_id, read_seq) in pending {
        let start = messages.len();
        for message in newest.query_map(params![chat_id, read_seq, SYNC_PER_CONVERSATION], message_from_row)? {
            messages.push(message?);
        }
        messages[start..].reverse();
    }
    Ok(SyncBatch { messages })
}

/// One page of a conversation, newest page first: messages with seq below `before`.
pub fn history(
    conn: &Connection,
    chat_id: &str,
    before: Option<i64>,
    limit: i64,
) -> StoreResult<(Vec<StoredMessage>, bool)> {
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3");
    let mut page: Vec<StoredMessage> = conn
        .prepare_cached(&sql)?
        .query_map(params![chat_id, before.unwrap_or(i64::MAX), limit + 1], message_from_row)?
        .collect::<Result<_, _>>()?;
    let has_more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    page.reverse();
    Ok((page, has_more))
}

pub struct ConversationRow {
    pub chat_id: String,
    pub kind: i64,
    pub last_seq: i64,
    pub read_seq: i64,
    pub last: Option<StoredMessage>,
}

/// The conversations a user takes part in, most recently active first.
pub fn conversations_of(conn: &Connection, uid: u64) -> StoreResult<Vec<ConversationRow>> {
    let mut rows: Vec<ConversationRow> = conn
        .prepare_cached(CONVERSATIONS_SQL)?
        .query_map([uid], |row| {
            Ok(ConversationRow {
                chat_id: row.get(0)?,
                kind: row.get(1)?,
                last_seq: row.get(2)?,
                read_seq: row.get(3)?,
                last: None,
            })
        })?
        .collect::<Result<_, _>>()?;
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2");
    let mut last = conn.prepare_cached(&sql)?;
    for row in &mut rows {
        row.last = last.query_row(params![row.chat_id, row.last_seq], message_from_row).optional()?;
    }
    rows.sort_by_key(|row| std::cmp::Reverse(row.last.as_ref().map(|m| m.ts).unwrap_or(0)));
    Ok(rows)
}

pub struct UserRow {
    pub uid: u64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub token_gen: u64,
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

    #[test]
    fn hot_queries_are_not_reprepared_at_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let _writer = crate::store::Store::prepare(&path).unwrap();
        let reader = crate::store::open_connection(&path, true).unwrap();
        for (sql, params) in [(UNREAD_SQL, 1), (CONVERSATIONS_SQL, 1)] {
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
