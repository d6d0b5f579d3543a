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

/// Told of a user's connection count on this node each time it changes (0: their last one
/// closed): cluster mode's presence and per-user cap. Called under the user's entry lock, so
/// that one user's counts are told in the order they happened; it must only queue.
pub type PresenceListener = Arc<dyn Fn(u64, usize) + Send + Sync>;

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

    /// A place for one more session of `uid`, unless they have `max` already here and
    /// `elsewhere` (their sessions on other cluster nodes, 0 on a single node) together
    /// (0: no cap).
    pub fn reserve_session(self: &Arc<Self>, uid: u64, max: usize, elsewhere: usize) -> Option<UserSlot> {
        let mut count = self.sessions_of.entry(uid).or_insert(0);
        if max > 0 && count.saturating_add(elsewhere) >= max {
            return None;
        }
        *count += 1;
        Some(UserSlot { registry: self.clone(), uid })
    }

    pub fn add(&self, uid: u64, device: &str) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection::new(id, uid, device, self.outbox_bytes));
        {
            let mut conns = self.by_uid.entry(uid).or_default();
            conns.push(conn.clone());
            if let Some(listener) = self.presence.get() {
                listener(uid, conns.len());
            }
        }
        self.metrics.online_connections.inc();
        conn
    }

    pub fn remove(&self, conn: &Connection) {
        conn.outbox.close();
        let mut removed = false;
        self.by_uid.remove_if_mut(&conn.uid, |_, conns| {
            let before = conns.len();
            conns.retain(|c| c.id != conn.id);
            removed = conns.len() != before;
            if removed && let Some(listener) = self.presence.get() {
                listener(conn.uid, conns.len());
            }
            conns.is_empty()
        });
        if removed {
            self.metrics.online_connections.dec();
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

    /// Calls `f` with each online user and their number of open connections.
    pub fn for_each_user(&self, mut f: impl FnMut(u64, usize)) {
        for entry in self.by_uid.iter() {
            f(*entry.key(), entry.value().len());
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn the_cap_counts_sessions_elsewhere_too() {
        let registry = Arc::new(Registry::new(1 << 10, Arc::new(Metrics::new())));
        let first = registry.reserve_session(1, 2, 0).expect("one of two");
        assert!(registry.reserve_session(1, 2, 1).is_none(), "one here and one elsewhere: full");
        let second = registry.reserve_session(1, 2, 0).expect("none elsewhere: two of two");
        assert!(registry.reserve_session(1, 2, 0).is_none());
        drop((first, second));
        assert!(registry.reserve_session(1, 2, 2).is_none(), "two elsewhere: full without any here");
        assert!(registry.reserve_session(1, 0, 100).is_some(), "0: no cap");
    }

    #[test]
    fn the_listener_hears_every_count_change() {
        let registry = Registry::new(1 << 10, Arc::new(Metrics::new()));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let into = heard.clone();
        registry.set_presence_listener(Arc::new(move |uid, n| into.lock().unwrap().push((uid, n))));
        let a = registry.add(7, "a");
        let b = registry.add(7, "b");
        registry.remove(&a);
        registry.remove(&a);
        registry.remove(&b);
        assert_eq!(*heard.lock().unwrap(), [(7, 1), (7, 2), (7, 1), (7, 0)], "a second remove is no change");
    }
}
