//! Shops and their customer-service agents: who may be routed a shop's customers, and what
//! an agent leaving the shop takes with them.

use rusqlite::{Connection, params};

use super::{SqliteStore, StoreResult};

impl SqliteStore {
    /// Creates a shop owned by `owner_uid`; its id.
    pub async fn create_shop(&self, name: String, owner_uid: u64) -> StoreResult<u64> {
        self.write(move |conn| create_shop(conn, &name, owner_uid)).await
    }

    /// Adds `uid` as an agent of the shop, accepted at once when `accepted` (the owner adds
    /// themselves), else invited. Adding again changes nothing; whether `uid` has accepted.
    pub async fn add_agent(&self, shop_id: u64, uid: u64, accepted: bool) -> StoreResult<bool> {
        self.write(move |conn| add_agent(conn, shop_id, uid, accepted)).await
    }

    /// The invited `uid` accepts; false when there is no invitation (any more).
    pub async fn accept_agent(&self, shop_id: u64, uid: u64) -> StoreResult<bool> {
        self.write(move |conn| accept_agent(conn, shop_id, uid)).await
    }

    /// `uid` is no longer an agent (or invited) of the shop, and gives up its conversations.
    pub async fn remove_agent(&self, shop_id: u64, uid: u64) -> StoreResult<()> {
        self.write(move |conn| remove_agent(conn, shop_id, uid)).await
    }
}

fn create_shop(conn: &Connection, name: &str, owner_uid: u64) -> StoreResult<u64> {
    conn.execute(
        "INSERT INTO shops (name, owner_uid, created_at) VALUES (?1, ?2, ?3)",
        params![name, owner_uid, crate::now_ms()],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}

fn add_agent(conn: &Connection, shop_id: u64, uid: u64, accepted: bool) -> StoreResult<bool> {
    conn.execute(
        "INSERT OR IGNORE INTO shop_agents (shop_id, uid, accepted) VALUES (?1, ?2, ?3)",
        params![shop_id, uid, accepted],
    )?;
    Ok(conn.query_row(
        "SELECT accepted FROM shop_agents WHERE shop_id = ?1 AND uid = ?2",
        params![shop_id, uid],
        |row| row.get::<_, bool>(0),
    )?)
}

fn accept_agent(conn: &Connection, shop_id: u64, uid: u64) -> StoreResult<bool> {
    let changed =
        conn.execute("UPDATE shop_agents SET accepted = 1 WHERE shop_id = ?1 AND uid = ?2", params![shop_id, uid])?;
    Ok(changed > 0)
}

fn remove_agent(conn: &Connection, shop_id: u64, uid: u64) -> StoreResult<()> {
    conn.execute("DELETE FROM shop_agents WHERE shop_id = ?1 AND uid = ?2", params![shop_id, uid])?;
    // The conversations they handled wait for the shop's other agents again, and sync stops
    // offering the shop's conversations to them (unless they are its customer).
    conn.execute(
        "UPDATE conversations SET handler_uid = NULL WHERE shop_id = ?1 AND handler_uid = ?2",
        params![shop_id, uid],
    )?;
    conn.execute(
        "DELETE FROM participants WHERE uid = ?2 AND chat_id IN
            (SELECT chat_id FROM conversations WHERE shop_id = ?1 AND customer_uid IS NOT ?2)",
        params![shop_id, uid],
    )?;
    Ok(())
}
