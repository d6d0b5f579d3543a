//! The store as callers see it: one enum over the backends, each method a `match` that
//! forwards to the backend's method of the same name and signature (no boxing, no dynamic
//! dispatch on the hot path).

use std::sync::Arc;

use super::postgres::{PgPrepared, PgStore};
use super::snapshot::{Snapshot, Watch};
use super::sqlite::{SqlitePrepared, SqliteStore};
use super::{
    ConversationRow, DbTarget, Joined, NewMessage, OutcomeSender, StoreGuard, StoreResult, StoredMessage, SyncBatch,
    UserRow, WriterSettings,
};
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    /// Several nodes may share the database (cluster mode).
    Postgres(PgStore),
    // A further backend is one more variant here, one more in `Prepared` and in the guard's
    // `Stopper`, and an arm in `forward!` below.
}

/// A database opened and migrated, not yet started: start-up reads its state from it, then
/// `start` hands it to the backend's writer.
pub enum Prepared {
    Sqlite(SqlitePrepared),
    Postgres(PgPrepared),
}

impl Store {
    /// Opens the database `target` names, creating it and applying migrations as needed.
    pub async fn prepare(target: &DbTarget) -> StoreResult<Prepared> {
        match target {
            DbTarget::Sqlite(path) => Ok(Prepared::Sqlite(SqlitePrepared::open(path)?)),
            DbTarget::Postgres(url) => Ok(Prepared::Postgres(PgStore::prepare(url).await?)),
        }
    }
}

impl Prepared {
    /// Users, rooms and agents for the in-memory directory; `watch` follows the progress.
    pub async fn snapshot(&self, watch: Option<Watch<'_>>) -> StoreResult<Snapshot> {
        match self {
            Prepared::Sqlite(db) => db.snapshot(watch),
            Prepared::Postgres(db) => db.snapshot(watch).await,
        }
    }

    /// The JWT secret kept in the database, generated on first use.
    pub async fn jwt_secret(&self) -> StoreResult<String> {
        match self {
            Prepared::Sqlite(db) => db.jwt_secret(),
            Prepared::Postgres(db) => db.jwt_secret().await,
        }
    }

    /// Starts the backend's writer; it sends every batch's outcomes, in commit order, to
    /// `outcomes`. `supervisor` watches what it starts. The guard stops the store when
    /// dropped, whatever path start-up or serving takes.
    pub fn start(
        self,
        settings: WriterSettings,
        outcomes: OutcomeSender,
        metrics: Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> StoreResult<(Store, StoreGuard)> {
        match self {
            Prepared::Sqlite(db) => {
                let (store, threads) = db.start(settings, outcomes, metrics, supervisor)?;
                let store = Store::Sqlite(store);
                let guard = StoreGuard::new(store.clone(), super::guard::Stopper::Sqlite(threads), supervisor.clone());
                Ok((store, guard))
            }
            Prepared::Postgres(db) => {
                let (store, tasks) = db.start(settings, outcomes, metrics, supervisor)?;
                let store = Store::Postgres(store);
                let guard = StoreGuard::new(store.clone(), super::guard::Stopper::Postgres(tasks), supervisor.clone());
                Ok((store, guard))
            }
        }
    }
}

impl Store {
    /// Asks the writer to commit what is queued and stop; later commands are refused.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }

    /// The storage error of the writer's last attempt, while it has not committed since.
    pub fn degraded(&self) -> Option<String> {
        match self {
            Store::Sqlite(store) => store.degraded(),
            Store::Postgres(store) => store.degraded(),
        }
    }

    /// Commands waiting for the writer (for `imd_writer_queue_depth`).
    pub fn queue_depth(&self) -> usize {
        match self {
            Store::Sqlite(store) => store.queue_depth(),
            Store::Postgres(store) => store.queue_depth(),
        }
    }

    /// The PostgreSQL backend, for what only it offers (a cluster node's catch-up reads);
    /// None on SQLite.
    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Postgres(store) => Some(store),
            Store::Sqlite(_) => None,
        }
    }
}

/// Forwards each listed async method to the backend's method of the same name and arguments.
macro_rules! forward {
    ($($(#[$doc:meta])* async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(store) => store.$name($($arg),*).await,
                        Store::Postgres(store) => store.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

forward! {
    /// Queues a message; the writer commits it, then emits its outcome with its ticket.
    async fn submit(&self, message: NewMessage) -> StoreResult<()>;

    /// Saves a device's delivered positions in the writer's next batch.
    async fn advance_delivered(&self, uid: u64, device: String, positions: Vec<(Arc<str>, i64)>) -> StoreResult<()>;
    /// A device's `received` of `seq` in `chat_id`, in the writer's next batch.
    async fn receive(&self, uid: u64, device: String, chat_id: String, seq: i64) -> StoreResult<Option<i64>>;
    /// Moves `uid`'s read position in `chat_id` to `seq`, never back; the position now, or
    /// None when `uid` is not a participant.
    async fn mark_read(&self, uid: u64, chat_id: String, seq: i64) -> StoreResult<Option<i64>>;

    /// What a connecting device missed.
    async fn sync_for(&self, uid: u64, device: String) -> StoreResult<SyncBatch>;
    /// A page of a conversation's history, oldest first, and whether older messages exist.
    async fn history_page(
        &self,
        chat_id: String,
        uid: u64,
        from_join: bool,
        before: Option<i64>,
        limit: i64
    ) -> StoreResult<(Vec<StoredMessage>, bool)>;
    /// A page of the user's conversations, most recently active first, and whether more follow.
    async fn conversations_of(&self, uid: u64, offset: usize, limit: usize) -> StoreResult<(Vec<ConversationRow>, bool)>;

    /// Creates a room owned (and joined) by `owner_uid`; returns its chat id.
    async fn create_room(
        &self,
        owner_uid: u64,
        name: Option<String>,
        private: bool,
        history_from_join: bool
    ) -> StoreResult<String>;
    /// Invites `uid` into a room.
    async fn invite_to_room(&self, chat_id: String, by_uid: u64, uid: u64) -> StoreResult<()>;
    /// Makes `uid` a member of a room (using up an invitation when `private`).
    async fn join_room(&self, chat_id: String, uid: u64, private: bool) -> StoreResult<Joined>;
    /// Takes `uid` out of a room.
    async fn leave_room(&self, chat_id: String, uid: u64) -> StoreResult<()>;

    /// Creates a shop owned by `owner_uid`; returns its id.
    async fn create_shop(&self, name: String, owner_uid: u64) -> StoreResult<u64>;
    /// Adds (or invites, when not `accepted`) an agent to a shop.
    async fn add_agent(&self, shop_id: u64, uid: u64, accepted: bool) -> StoreResult<bool>;
    /// An invited agent accepts.
    async fn accept_agent(&self, shop_id: u64, uid: u64) -> StoreResult<bool>;
    /// Takes an agent (or an invitation) away from a shop.
    async fn remove_agent(&self, shop_id: u64, uid: u64) -> StoreResult<()>;

    /// Whether a user holds the name with this key.
    async fn name_taken(&self, key: String) -> StoreResult<bool>;
    /// Creates a user; None when the name is taken.
    async fn create_user(&self, name: String, key: String, hash: String) -> StoreResult<Option<u64>>;
    /// The account to check a login against.
    async fn user_for_login(&self, name: String) -> StoreResult<Option<UserRow>>;
    /// A user by name.
    async fn user_by_name(&self, name: String) -> StoreResult<Option<UserRow>>;
    /// A user by uid.
    async fn user_by_uid(&self, uid: u64) -> StoreResult<Option<UserRow>>;
    /// Revokes every token issued to `uid` so far; the new generation, or None when there is
    /// no such user.
    async fn bump_token_generation(&self, uid: u64) -> StoreResult<Option<u64>>;
    /// The count of revocations made outside the daemon (None before the first).
    async fn revocation_count(&self) -> StoreResult<Option<String>>;
    /// Every user's (uid, token generation).
    async fn token_generations(&self) -> StoreResult<Vec<(u64, u64)>>;
}
