//! Reads, on the pool: sync, history, conversation lists, users, the start-up snapshot, and
//! what a node of a cluster reads to refresh its caches and fill gaps.

use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use serde_json::value::RawValue;
use tokio_postgres::Row;

use super::PgStore;
use crate::chat_id;
use crate::domain::{Kind, StoredMessage};
use crate::store::snapshot::{AgentRow, RoomRow, Snapshot, UserEntryRow, Watch};
use crate::store::{ConversationRow, StoreError, StoreResult, SyncBatch, UserRow};

/// Columns read by `message_from_row`, in its order (the table is always `m`).
pub(super) const MESSAGE_COLUMNS: &str =
    "m.id, m.chat_id, m.seq, m.from_uid, m.to_uid, m.msg_id, m.msg_type, m.body, m.ts, m.shop_id, m.agent_uid";

/// Most messages one conversation contributes to a sync; the rest come through history.
const SYNC_PER_CONVERSATION: usize = 200;
/// Most messages one connect-time sync sends in all.
const SYNC_MAX_MESSAGES: usize = 1000;
/// Most conversations one sync looks at; the next connect takes up the rest.
const SYNC_MAX_CONVERSATIONS: usize = 500;

/// The user's conversations with messages after the device's position (the larger of the
/// floor and delivered positions), in chat_id order. A service conversation syncs to its
/// customer, to its handling agent, or to every agent of the shop while nobody handles it.
const SYNC_SQL: &str = "SELECT chat_id, position, last_seq FROM (
        SELECT p.chat_id, GREATEST(p.floor_seq, COALESCE(d.seq, 0)) AS position,
            CASE WHEN c.kind <> 3 OR c.customer_uid = p.uid OR c.handler_uid IS NULL OR c.handler_uid = p.uid
                THEN c.last_seq ELSE 0 END AS last_seq
        FROM participants p
        JOIN conversations c ON c.chat_id = p.chat_id
        LEFT JOIN delivered d ON d.uid = p.uid AND d.device = $2 AND d.chat_id = p.chat_id
        WHERE p.uid = $1) AS s
    WHERE last_seq > position ORDER BY chat_id LIMIT $3";

/// Whether the user has any conversation with messages after where its sync starts.
const UNREAD_SQL: &str = "SELECT 1 FROM participants p JOIN conversations c ON c.chat_id = p.chat_id
    WHERE p.uid = $1 AND c.last_seq > p.floor_seq
      AND (c.kind <> 3 OR c.customer_uid = p.uid OR c.handler_uid IS NULL OR c.handler_uid = p.uid)
    LIMIT 1";

/// The user's conversations (with messages, or rooms), most recently active first (chat_id
/// order among equal times and rooms without messages).
const CONVERSATIONS_SQL: &str = "SELECT p.chat_id, c.kind, c.last_seq, p.read_seq, r.name
    FROM participants p
    JOIN conversations c ON c.chat_id = p.chat_id
    LEFT JOIN rooms r ON r.chat_id = p.chat_id
    LEFT JOIN messages m ON m.chat_id = p.chat_id AND m.seq = c.last_seq
    WHERE p.uid = $1 AND (c.last_seq > 0 OR c.kind = 2)
    ORDER BY COALESCE(m.ts, 0) DESC, p.chat_id
    OFFSET $2 LIMIT $3";

const USER_COLUMNS: &str = "uid, username, password_hash, role, token_gen";

/// One room's policy and members (a node refreshing its directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub chat_id: String,
    pub owner_uid: u64,
    pub private: bool,
    pub history_from_join: bool,
    pub members: Vec<u64>,
}

/// One shop's owner, accepted agents and invited ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopInfo {
    pub shop_id: u64,
    pub owner_uid: u64,
    pub agents: Vec<u64>,
    pub invited: Vec<u64>,
}

pub(super) fn message_from_row(row: &Row) -> StoreResult<StoredMessage> {
    let chat_id: String = row.try_get(1)?;
    let body: String = row.try_get(7)?;
    Ok(StoredMessage {
        id: row.try_get(0)?,
        kind: chat_id::kind_of(&chat_id).unwrap_or(Kind::Single),
        chat_id: Arc::from(chat_id),
        seq: row.try_get(2)?,
        from_uid: row.try_get::<_, i64>(3)? as u64,
        to_uid: row.try_get::<_, Option<i64>>(4)?.map(|u| u as u64),
        msg_id: row.try_get::<_, Option<String>>(5)?.map(Into::into),
        msg_type: row.try_get::<_, String>(6)?.into(),
        body: RawValue::from_string(body)
            .map_err(|e| StoreError::Backend(format!("a stored body is not JSON: {e}")))?,
        ts: row.try_get(8)?,
        shop_id: row.try_get::<_, Option<i64>>(9)?.map(|s| s as u64),
        agent_uid: row.try_get::<_, Option<i64>>(10)?.map(|a| a as u64),
    })
}

fn user_from_row(row: &Row) -> StoreResult<UserRow> {
    Ok(UserRow {
        uid: row.try_get::<_, i64>(0)? as u64,
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        role: row.try_get(3)?,
        token_gen: row.try_get::<_, i64>(4)? as u64,
    })
}

fn messages(rows: &[Row]) -> StoreResult<Vec<StoredMessage>> {
    rows.iter().map(message_from_row).collect()
}

impl PgStore {
    async fn reader(&self) -> StoreResult<Object> {
        Ok(self.pool.get().await?)
    }

    /// What a connecting device has missed: per conversation, the newest messages after the
    /// device's position, oldest first; the user's own messages are not synced back.
    pub async fn sync_for(&self, uid: u64, device: String) -> StoreResult<SyncBatch> {
        let client = self.reader().await?;
        let uid = uid as i64;
        let pending_sql = client.prepare_cached(SYNC_SQL).await?;
        let pending = client.query(&pending_sql, &[&uid, &device, &(SYNC_MAX_CONVERSATIONS as i64 + 1)]).await?;
        let all_read = pending.is_empty() && {
            let unread = client.prepare_cached(UNREAD_SQL).await?;
            client.query_opt(&unread, &[&uid]).await?.is_none()
        };
        let newest = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.chat_id = $1 AND m.seq > $2 AND m.from_uid <> $4
                 ORDER BY m.seq DESC LIMIT $3"
            ))
            .await?;
        let mut batch =
            SyncBatch { messages: Vec::new(), cut: Vec::new(), more: pending.len() > SYNC_MAX_CONVERSATIONS, all_read };
        for row in pending.iter().take(SYNC_MAX_CONVERSATIONS) {
            let chat_id: Arc<str> = Arc::from(row.try_get::<_, String>(0)?);
            let (position, last_seq): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
            let take = SYNC_PER_CONVERSATION.min(SYNC_MAX_MESSAGES - batch.messages.len());
            if take == 0 {
                batch.cut.push((chat_id, last_seq + 1));
                continue;
            }
            // One more than taken tells whether older ones were left out.
            let rows = client.query(&newest, &[&&*chat_id, &position, &(take as i64 + 1), &uid]).await?;
            let start = batch.messages.len();
            batch.messages.extend(messages(&rows)?);
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
        let client = self.reader().await?;
        let after = if from_join {
            let joined =
                client.prepare_cached("SELECT joined_seq FROM room_members WHERE chat_id = $1 AND uid = $2").await?;
            match client.query_opt(&joined, &[&chat_id, &(uid as i64)]).await? {
                Some(row) => row.try_get(0)?,
                None => i64::MAX,
            }
        } else {
            0
        };
        let page = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.chat_id = $1 AND m.seq < $2 AND m.seq > $3
                 ORDER BY m.seq DESC LIMIT $4"
            ))
            .await?;
        let rows = client.query(&page, &[&chat_id, &before.unwrap_or(i64::MAX), &after, &(limit + 1)]).await?;
        let mut page = messages(&rows)?;
        let has_more = page.len() as i64 > limit;
        page.truncate(limit.max(0) as usize);
        page.reverse();
        Ok((page, has_more))
    }

    /// A page of `uid`'s conversations, most recently active first: `limit` rows after the
    /// first `offset`, and whether more follow.
    pub async fn conversations_of(
        &self,
        uid: u64,
        offset: usize,
        limit: usize,
    ) -> StoreResult<(Vec<ConversationRow>, bool)> {
        let client = self.reader().await?;
        let uid = uid as i64;
        let list = client.prepare_cached(CONVERSATIONS_SQL).await?;
        let (offset, fetch) = (offset as i64, limit.saturating_add(1) as i64);
        let mut rows = Vec::new();
        for row in client.query(&list, &[&uid, &offset, &fetch]).await? {
            rows.push(ConversationRow {
                chat_id: row.try_get(0)?,
                kind: row.try_get(1)?,
                last_seq: row.try_get(2)?,
                read_seq: row.try_get(3)?,
                name: row.try_get(4)?,
                last: None,
            });
        }
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        // A member of a room whose history starts at their join does not see an older last message.
        let last = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.chat_id = $1 AND m.seq = $2 AND m.seq > COALESCE(
                    (SELECT rm.joined_seq FROM room_members rm JOIN rooms r ON r.chat_id = rm.chat_id
                     WHERE rm.chat_id = $1 AND rm.uid = $3 AND r.history = 'joined'), 0)"
            ))
            .await?;
        for row in &mut rows {
            if let Some(found) = client.query_opt(&last, &[&row.chat_id, &row.last_seq, &uid]).await? {
                row.last = Some(message_from_row(&found)?);
            }
        }
        Ok((rows, has_more))
    }

    /// Whether a user holds the name key `key` (`usernames::key`).
    pub async fn name_taken(&self, key: String) -> StoreResult<bool> {
        Ok(name_holder(&self.reader().await?, &key).await?.is_some())
    }

    /// The user a login names, by any spelling (case, NFC, look-alikes): the exact name first,
    /// then the key.
    pub async fn user_for_login(&self, name: String) -> StoreResult<Option<UserRow>> {
        let client = self.reader().await?;
        let name: String = unicode_normalization::UnicodeNormalization::nfc(name.as_str()).collect();
        if let Some(user) = user_by_name(&client, &name).await? {
            return Ok(Some(user));
        }
        match name_holder(&client, &crate::usernames::key(&name)).await? {
            Some(holder) => user_by_name(&client, &holder).await,
            None => Ok(None),
        }
    }

    /// The user named exactly `name`.
    pub async fn user_by_name(&self, name: String) -> StoreResult<Option<UserRow>> {
        user_by_name(&self.reader().await?, &name).await
    }

    /// The user `uid`.
    pub async fn user_by_uid(&self, uid: u64) -> StoreResult<Option<UserRow>> {
        let client = self.reader().await?;
        let query = client.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE uid = $1")).await?;
        client.query_opt(&query, &[&(uid as i64)]).await?.as_ref().map(user_from_row).transpose()
    }

    /// The count of revocations made outside the daemon (None before the first).
    pub async fn revocation_count(&self) -> StoreResult<Option<String>> {
        let client = self.reader().await?;
        let row = client.query_opt("SELECT value FROM meta WHERE key = 'token_revocations'", &[]).await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// Every user's (uid, token generation).
    pub async fn token_generations(&self) -> StoreResult<Vec<(u64, u64)>> {
        let client = self.reader().await?;
        let rows = client.query("SELECT uid, token_gen FROM users", &[]).await?;
        rows.iter().map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get::<_, i64>(1)? as u64))).collect()
    }

    /// The messages of `chat_id` with seqs in (`after_seq`, `up_to_seq`], oldest first (a node
    /// filling a gap in what it was sent).
    pub async fn messages_between(
        &self,
        chat_id: String,
        after_seq: i64,
        up_to_seq: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let client = self.reader().await?;
        let query = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.chat_id = $1 AND m.seq > $2 AND m.seq <= $3 ORDER BY m.seq"
            ))
            .await?;
        messages(&client.query(&query, &[&chat_id, &after_seq, &up_to_seq]).await?)
    }

    /// The conversations whose last message committed at or after `ms` (milliseconds since the
    /// epoch, by the committing node's clock), with their newest seq. The time is taken before
    /// the commit: a caller catching up asks from a little before its last look.
    pub async fn conversations_changed_since(&self, ms: i64) -> StoreResult<Vec<(Arc<str>, i64)>> {
        let client = self.reader().await?;
        let query = client.prepare_cached("SELECT chat_id, last_seq FROM conversations WHERE updated_at >= $1").await?;
        let rows = client.query(&query, &[&ms]).await?;
        rows.iter().map(|r| Ok((Arc::from(r.try_get::<_, String>(0)?), r.try_get(1)?))).collect()
    }

    /// A room's policy and members; None when there is no such room.
    pub async fn room(&self, chat_id: String) -> StoreResult<Option<RoomInfo>> {
        let client = self.reader().await?;
        let Some(row) =
            client.query_opt("SELECT owner_uid, private, history FROM rooms WHERE chat_id = $1", &[&chat_id]).await?
        else {
            return Ok(None);
        };
        let members = client.query("SELECT uid FROM room_members WHERE chat_id = $1 ORDER BY uid", &[&chat_id]).await?;
        Ok(Some(RoomInfo {
            owner_uid: row.try_get::<_, i64>(0)? as u64,
            private: row.try_get(1)?,
            history_from_join: row.try_get::<_, String>(2)? == "joined",
            members: members.iter().map(|r| r.try_get::<_, i64>(0).map(|u| u as u64)).collect::<Result<_, _>>()?,
            chat_id,
        }))
    }

    /// A shop's owner and agents; None when there is no such shop.
    pub async fn shop(&self, shop_id: u64) -> StoreResult<Option<ShopInfo>> {
        let client = self.reader().await?;
        let id = shop_id as i64;
        let Some(row) = client.query_opt("SELECT owner_uid FROM shops WHERE shop_id = $1", &[&id]).await? else {
            return Ok(None);
        };
        let mut shop =
            ShopInfo { shop_id, owner_uid: row.try_get::<_, i64>(0)? as u64, agents: Vec::new(), invited: Vec::new() };
        for agent in
            client.query("SELECT uid, accepted FROM shop_agents WHERE shop_id = $1 ORDER BY uid", &[&id]).await?
        {
            let uid = agent.try_get::<_, i64>(0)? as u64;
            if agent.try_get(1)? { shop.agents.push(uid) } else { shop.invited.push(uid) }
        }
        Ok(Some(shop))
    }

    /// One user as the directory keeps them; None when there is no such user.
    pub async fn user(&self, uid: u64) -> StoreResult<Option<UserEntryRow>> {
        let client = self.reader().await?;
        let row =
            client.query_opt("SELECT uid, username, token_gen FROM users WHERE uid = $1", &[&(uid as i64)]).await?;
        row.as_ref().map(user_entry).transpose()
    }
}

async fn user_by_name(client: &Object, name: &str) -> StoreResult<Option<UserRow>> {
    let query = client.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1")).await?;
    client.query_opt(&query, &[&name]).await?.as_ref().map(user_from_row).transpose()
}

/// The username that holds `key`, if any.
pub(super) async fn name_holder(client: &Object, key: &str) -> StoreResult<Option<String>> {
    let query = client.prepare_cached("SELECT username FROM users WHERE name_key = $1").await?;
    Ok(client.query_opt(&query, &[&key]).await?.map(|row| row.try_get(0)).transpose()?)
}

fn user_entry(row: &Row) -> StoreResult<UserEntryRow> {
    Ok(UserEntryRow {
        uid: row.try_get::<_, i64>(0)? as u64,
        username: row.try_get(1)?,
        token_gen: row.try_get::<_, i64>(2)? as u64,
    })
}

/// Every row the directory needs, read in one go (once, at start).
pub(super) async fn snapshot(pool: &Pool, mut watch: Option<Watch<'_>>) -> StoreResult<Snapshot> {
    let client = pool.get().await?;
    let users = watched(&client, "users", "SELECT uid, username, token_gen FROM users", &mut watch, user_entry).await?;
    let rooms = collect(&client, "SELECT chat_id, private, history FROM rooms", |r| {
        Ok(RoomRow {
            chat_id: r.try_get(0)?,
            private: r.try_get(1)?,
            history_from_join: r.try_get::<_, String>(2)? == "joined",
        })
    })
    .await?;
    let members = watched(&client, "room_members", "SELECT chat_id, uid FROM room_members", &mut watch, |r| {
        Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64))
    })
    .await?;
    let shops = collect(&client, "SELECT shop_id, owner_uid FROM shops", |r| {
        Ok((r.try_get::<_, i64>(0)? as u64, r.try_get::<_, i64>(1)? as u64))
    })
    .await?;
    let agents = collect(&client, "SELECT shop_id, uid, accepted FROM shop_agents", |r| {
        Ok(AgentRow {
            shop_id: r.try_get::<_, i64>(0)? as u64,
            uid: r.try_get::<_, i64>(1)? as u64,
            accepted: r.try_get(2)?,
        })
    })
    .await?;
    let handlers =
        collect(&client, "SELECT chat_id, handler_uid FROM conversations WHERE handler_uid IS NOT NULL", |r| {
            Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64))
        })
        .await?;
    Ok(Snapshot { users, rooms, members, shops, agents, handlers })
}

/// Every row of `sql` (which reads `table`, a name of ours), mapped, telling `watch` how far.
async fn watched<T>(
    client: &Object,
    table: &'static str,
    sql: &str,
    watch: &mut Option<Watch<'_>>,
    map: impl FnMut(&Row) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let Some(watch) = watch else { return collect(client, sql, map).await };
    let total: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.try_get(0)?;
    let total = total as u64;
    watch(table, 0, total);
    let rows = collect(client, sql, map).await?;
    watch(table, rows.len() as u64, total);
    Ok(rows)
}

async fn collect<T>(client: &Object, sql: &str, map: impl FnMut(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    client.query(sql, &[]).await?.iter().map(map).collect()
}
