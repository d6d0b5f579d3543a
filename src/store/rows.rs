//! The rows and answers the store's calls return, the same for every backend.

use std::sync::Arc;

use crate::domain::StoredMessage;

/// Whether joining what `join_room` was asked to join happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// A member now (or already).
    Yes,
    /// The room is private and there was no invitation to use up.
    NotInvited,
}

/// What a connecting device missed: per conversation, the newest messages after the device's
/// position, oldest first; and what had to be left out.
pub struct SyncBatch {
    pub messages: Vec<StoredMessage>,
    /// Conversations not sent whole: chat_id and the oldest seq sent, or last_seq + 1 when the
    /// total cap left nothing for it. Older messages are in history (`before` = that seq).
    pub cut: Vec<(Arc<str>, i64)>,
    /// More than `SYNC_MAX_CONVERSATIONS` conversations had something to sync.
    pub more: bool,
    /// Nothing is unread for the user (by read position), on any device.
    pub all_read: bool,
}

/// One conversation of a user's listing.
pub struct ConversationRow {
    pub chat_id: String,
    pub kind: i64,
    pub last_seq: i64,
    pub read_seq: i64,
    /// A room's name, when it was given one.
    pub name: Option<String>,
    pub last: Option<StoredMessage>,
}

/// One user's account row.
pub struct UserRow {
    pub uid: u64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub token_gen: u64,
}
