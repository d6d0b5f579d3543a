//! Who is online: every open WebSocket connection, by user.

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

pub use crate::delivery::Connection;
use crate::metrics::Metrics;

/// Close code of a connection whose token was revoked (logout, an admin) or expired.
pub const TOKEN_CLOSE: u16 = 4001;

/// The close reason of [`TOKEN_CLOSE`] after the user's own logout.
pub const LOGGED_OUT: &str = "logged out";

/// The close reason of [`TOKEN_CLOSE`] after a revocation by an admin or a token's expiry.
pub const TOKEN_REVOKED: &str = "token revoked";

/// Told when a user's first connection opens (`true`) or their last one closes (`false`):
/// cluster mode's presence. Called right after the change; it must only queue.
pub type PresenceListener = Arc<dyn Fn(u64, bool) + Send + Sync>;

pub struct Registry {
    by_uid: DashMap<u64, Vec<Arc<Connection>>>,
    next_id: AtomicU64,
    outbox_bytes: usize,
    metrics: Arc<Metrics>,
    /// WebSocket sessions per user, counted from the upgrade (before `add`) to the session's end.
    sessions_of: DashMap<u64, usize>,
    /// Set once in cluster mode.
    presence: OnceLock<PresenceListener>,
}

/// One user's place among their capped sessions; given back when dropped.
pub struct UserSlot {
    registry: Arc<Registry>,
    uid: u64,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.registry.sessions_of.remove_if_mut(&self.uid, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl Registry {
    pub fn new(outbox_bytes: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            by_uid: DashMap::new(),
            next_id: AtomicU64::new(1),
            outbox_bytes,
            metrics,
            sessions_of: DashMap::new(),
            presence: OnceLock::new(),
        }
    }

    /// A place for one more session of `uid`, unless they have `max` already (0: no cap).
    pub fn reserve_session(self: &Arc<Self>, uid: u64, max: usize) -> Option<UserSlot> {
        let mut count = self.sessions_of.entry(uid).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(UserSlot { registry: self.clone(), uid })
    }

    pub fn add(&self, uid: u64, device: &str) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection::new(id, uid, device, self.outbox_bytes));
        let first = {
            let mut conns = self.by_uid.entry(uid).or_default();
            conns.push(conn.clone());
            conns.len() == 1
        };
        self.metrics.online_connections.inc();
        if first && let Some(listener) = self.presence.get() {
            listener(uid, true);
        }
        conn
    }

    pub fn remove(&self, conn: &Connection) {
        conn.outbox.close();
        let (mut removed, mut last) = (false, false);
        self.by_uid.remove_if_mut(&conn.uid, |_, conns| {
            let before = conns.len();
            conns.retain(|c| c.id != conn.id);
            removed = conns.len() != before;
            last = conns.is_empty();
            last
        });
        if removed {
            self.metrics.online_connections.dec();
            if last && let Some(listener) = self.presence.get() {
                listener(conn.uid, false);
            }
        }
    }

    /// Sets who hears of users coming online and going offline (once; later calls are ignored).
    pub fn set_presence_listener(&self, listener: PresenceListener) {
        let _ = self.presence.set(listener);
    }

    pub fn is_online(&self, uid: u64) -> bool {
        self.by_uid.contains_key(&uid)
    }

    /// Calls `f` with each connection of `uid`.
    pub fn for_each_of(&self, uid: u64, mut f: impl FnMut(&Arc<Connection>)) {
        if let Some(conns) = self.by_uid.get(&uid) {
            conns.iter().for_each(&mut f);
        }
    }

    /// Closes every open connection of `uid` with `code` and `reason`; returns how many.
    pub fn close_user(&self, uid: u64, code: u16, reason: &'static str) -> usize {
        let mut closed = 0;
        self.for_each_of(uid, |conn| {
            conn.kick(code, reason);
            closed += 1;
        });
        closed
    }

    /// Calls `f` with every open connection.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Connection>)) {
        for entry in self.by_uid.iter() {
            entry.value().iter().for_each(&mut f);
        }
    }

    pub fn online_connections(&self) -> usize {
        self.metrics.online_connections.get().max(0) as usize
    }
}
