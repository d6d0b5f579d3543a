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

pub fn sync_for(conn: &Connection, uid: u64) -> StoreResult<SyncBatch> {
    // A service conversation syncs to its customer, to its handling agent, or to every agent
    // of the shop while nobody handles it.
    let mut unread = conn.prepare_cached(
        "SELECT p.chat_id, p.read_seq FROM participants p JOIN conversations c ON c.chat_id = p.chat_id
         WHERE p.uid = ?1 AND c.last_seq > p.read_seq
           AND (c.kind <> 3 OR c.customer_uid = p.uid OR c.handler_uid IS NULL OR c.handler_uid = p.uid)
         ORDER BY c.chat_id",
    )?;
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
        .prepare_cached(
            "SELECT p.chat_id, c.kind, c.last_seq, p.read_seq FROM participants p JOIN conversations c ON c.chat_id = p.chat_id
             WHERE p.uid = ?1 AND (c.last_seq > 0 OR c.kind = 2)",
        )?
        .query_map([uid], |row| {
            Ok(ConversationRow { chat_id: row.get(0)?, kind: row.get(1)?, last_seq: row.get(2)?, read_seq: row.get(3)?, last: None })
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
