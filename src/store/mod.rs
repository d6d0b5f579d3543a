//! Storage, reached through one interface whatever the backend: the `Store` enum (one
//! variant per backend, dispatched with a `match`), its `Prepared` start-up state, the guard
//! that stops it, and the types every backend speaks. Each backend lives in a directory of
//! its own (`sqlite/`, `postgres/`); nothing outside `store/` names a backend's types but the offline
//! SQLite commands of the CLI.

mod facade;
mod guard;
mod outcome;
pub mod postgres;
mod rows;
pub mod snapshot;
pub mod sqlite;
mod target;

use std::sync::Mutex;

// The domain's types, re-exported where callers found them before they moved down.
pub use crate::domain::{Accepted, Kind, NewMessage, ServiceRoute, StoredMessage, Ticket};
pub use facade::{Prepared, Store};
pub use guard::StoreGuard;
pub use outcome::{Committed, Outcome, OutcomeSender};
/// What a cluster node reloads when another node changed a room or a shop.
pub use postgres::{RoomInfo, ShopInfo};
pub use rows::{ConversationRow, Joined, SyncBatch, UserRow};
pub use target::DbTarget;

/// Why a store call failed, in terms any backend can give (see `sqlite/errors.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed the command for a reason of its own (its text, for logs).
    #[error("database error: {0}")]
    Backend(String),
    /// A uniqueness or other constraint refused the command: the row it would make exists.
    #[error("database error: {0}")]
    Conflict(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("{0}")]
    Refused(String),
    /// The storage itself failed (disk full, I/O error, locked, ...), not the command: the
    /// same command may succeed once the cause is gone.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The same error for one more waiter (an error answers every command of a failed
    /// batch): the text, and whether the storage or a constraint was the cause, carry over.
    pub(crate) fn for_another(&self) -> StoreError {
        match self {
            StoreError::Closed => StoreError::Closed,
            StoreError::Unavailable(reason) => StoreError::Unavailable(reason.clone()),
            StoreError::Conflict(reason) => StoreError::Conflict(reason.clone()),
            other => StoreError::Refused(other.to_string()),
        }
    }

    /// "storage unavailable: …" when the storage failed rather than the command (clients get
    /// 503 for these, 500 for the rest).
    pub fn unavailable(&self) -> Option<String> {
        match self {
            StoreError::Unavailable(_) => Some(self.to_string()),
            _ => None,
        }
    }

    /// The code and text a client is answered with when its command was not stored: 503 when
    /// it may work later (shutting down, storage unavailable), 500 when it was refused itself.
    pub fn client_reply(&self) -> (u16, String) {
        match (self, self.unavailable()) {
            (StoreError::Closed, _) => (503, self.to_string()),
            (_, Some(text)) => (503, text),
            (_, None) => (500, format!("not stored: {self}")),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Whether the writer's last attempt to store failed because of the storage (`/health`).
#[derive(Default)]
pub struct StorageHealth(Mutex<Option<String>>);

impl StorageHealth {
    /// The storage error of the last attempt, or None when it succeeded.
    pub fn degraded(&self) -> Option<String> {
        self.0.lock().map(|e| e.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Recorded by the writer after each attempt.
    pub(crate) fn set(&self, error: Option<String>) {
        match self.0.lock() {
            Ok(mut state) => *state = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }
}

/// How the writer commits.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// False only for benchmarks (`--no-store`): messages are numbered but not written.
    pub durable: bool,
    pub sync: crate::config::SyncMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_storage_failures_are_unavailable() {
        assert_eq!(StoreError::Refused("UNIQUE constraint failed".into()).unavailable(), None);
        assert_eq!(StoreError::Conflict("UNIQUE constraint failed".into()).unavailable(), None);
        assert_eq!(StoreError::Closed.unavailable(), None);
        let unavailable = StoreError::Unavailable("database or disk is full".into());
        assert_eq!(unavailable.unavailable().as_deref(), Some("storage unavailable: database or disk is full"));
    }
}
