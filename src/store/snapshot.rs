//! What the in-memory directory is built from at start: users, rooms and their members,
//! shops and their agents, and who handles each service conversation. Each backend reads it.

/// One user as the directory keeps them.
pub struct UserEntryRow {
    pub uid: u64,
    pub username: String,
    pub token_gen: u64,
}

/// One room's policy.
pub struct RoomRow {
    pub chat_id: String,
    pub private: bool,
    /// A member sees only messages after their join.
    pub history_from_join: bool,
}

/// One agent (or invited agent) of a shop.
pub struct AgentRow {
    pub shop_id: u64,
    pub uid: u64,
    pub accepted: bool,
}

/// Every row the directory needs, read in one go.
pub struct Snapshot {
    pub users: Vec<UserEntryRow>,
    pub rooms: Vec<RoomRow>,
    /// (chat_id, uid); may name rooms that no longer exist.
    pub members: Vec<(String, u64)>,
    /// (shop_id, owner_uid).
    pub shops: Vec<(u64, u64)>,
    /// (shop_id, uid) is the table's key: no duplicates.
    pub agents: Vec<AgentRow>,
    /// (chat_id, handler_uid) of the service conversations someone handles.
    pub handlers: Vec<(String, u64)>,
}

/// Told how far the reading of a large table is: (table, rows read, rows in all).
pub type Watch<'a> = &'a mut dyn FnMut(&'static str, u64, u64);
