//! Which users may have something to sync, known without asking SQLite.
//!
//! Most connects find nothing unread, and asking the store costs a hand-over to a blocking
//! thread and back. Each user has a counter bumped (before delivery) for every message that may
//! be unread for them, and remembers its value, and that of a shared counter, from the last
//! sync that found nothing. A connect whose counters have not moved since then skips the query.
//!
//! The hints may say "maybe" when nothing is unread, never "nothing" when something is: every
//! existing user starts as "maybe" at start-up, and kinds whose readers are not cheaply known
//! here (broadcasts, service conversations) bump the shared counter, which makes everybody a
//! "maybe" until their next sync.
//!
//! Why a connect cannot miss a message: a session registers its connection, then reads the
//! hints; delivery bumps the hints, then looks the recipients' connections up in the registry.
//! Both go through the registry's lock for that user, so either delivery finds the new
//! connection and sends live, or the session sees the bump and queries the store, which
//! already holds the message (delivery runs after the commit).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{PoisonError, RwLock};

/// Users per page: pages are allocated as uids grow (uids are dense rowids).
const PAGE: usize = 1024;

#[derive(Default)]
struct Hint {
    /// Bumped for every message that may be unread for this user.
    news: AtomicU64,
    /// `news` when a sync last found nothing unread.
    synced_news: AtomicU64,
    /// The shared counter then.
    synced_shared: AtomicU64,
}

pub struct UnreadHints {
    pages: RwLock<Vec<Box<[Hint]>>>,
    shared: AtomicU64,
}

/// What the counters were when a sync started; see `UnreadHints::synced`.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    uid: u64,
    news: u64,
    shared: u64,
}

/// What a connecting user's sync must do.
#[derive(Debug)]
pub enum SyncNeed {
    /// Nothing can be unread: skip the store.
    Nothing,
    /// Ask the store; if it finds nothing, report it with `synced`.
    Query(Snapshot),
}

impl UnreadHints {
    /// `existing` users (uids up to it) are in the database already: anything may be unread for
    /// them until their first sync.
    pub fn new(existing: u64) -> UnreadHints {
        let hints = UnreadHints { pages: RwLock::new(Vec::new()), shared: AtomicU64::new(0) };
        hints.grow(existing);
        let pages = hints.pages.read().unwrap_or_else(PoisonError::into_inner);
        for uid in 1..=existing {
            if let Some(hint) = hint(&pages, uid) {
                hint.news.store(1, SeqCst);
            }
        }
        drop(pages);
        hints
    }

    /// The shared counter: read it before storing a new account and pass it to `registered`, so
    /// a broadcast committed meanwhile still counts as possibly unread for that account.
    pub fn shared_mark(&self) -> u64 {
        self.shared.load(SeqCst)
    }

    /// A new account: nothing is unread for it, except shared news after `shared_mark`.
    pub fn registered(&self, uid: u64, shared_mark: u64) {
        self.grow(uid);
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(hint) = hint(&pages, uid) {
            hint.synced_shared.fetch_max(shared_mark, SeqCst);
        }
    }

    /// A message that may be unread for each of `uids`. Call before looking up their connections.
    pub fn note<I: IntoIterator<Item = u64>>(&self, uids: I) {
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        for uid in uids {
            match hint(&pages, uid) {
                Some(hint) => {
                    hint.news.fetch_add(1, SeqCst);
                }
                // Not expected (accounts get a hint before they can be written to); be safe.
                None => self.note_everyone(),
            }
        }
    }

    /// A message whose readers are not listed here: anybody may have it unread.
    pub fn note_everyone(&self) {
        self.shared.fetch_add(1, SeqCst);
    }

    /// Call after the connection is in the registry.
    pub fn check(&self, uid: u64) -> SyncNeed {
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        let shared = self.shared.load(SeqCst);
        let Some(hint) = hint(&pages, uid) else {
            return SyncNeed::Query(Snapshot { uid, news: u64::MAX, shared });
        };
        let news = hint.news.load(SeqCst);
        if news == hint.synced_news.load(SeqCst) && shared == hint.synced_shared.load(SeqCst) {
            SyncNeed::Nothing
        } else {
            SyncNeed::Query(Snapshot { uid, news, shared })
        }
    }

    /// Like [`UnreadHints::check`], but always [`SyncNeed::Query`]: for a cluster node, whose
    /// hints count only the messages it has delivered itself (another node's commit reaches them
    /// when its batch arrives, which may be after a connect that must sync it).
    pub fn query(&self, uid: u64) -> SyncNeed {
        match self.check(uid) {
            SyncNeed::Nothing => {
                let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
                let news = hint(&pages, uid).map_or(u64::MAX, |hint| hint.news.load(SeqCst));
                SyncNeed::Query(Snapshot { uid, news, shared: self.shared.load(SeqCst) })
            }
            need => need,
        }
    }

    /// The sync that started at `snapshot` found nothing unread. News noted since then still
    /// counts: the counters have moved past the snapshot.
    pub fn synced(&self, snapshot: Snapshot) {
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(hint) = hint(&pages, snapshot.uid)
            && snapshot.news != u64::MAX
        {
            hint.synced_news.fetch_max(snapshot.news, SeqCst);
            hint.synced_shared.fetch_max(snapshot.shared, SeqCst);
        }
    }

    fn grow(&self, uid: u64) {
        let needed = (uid as usize / PAGE) + 1;
        if self.pages.read().unwrap_or_else(PoisonError::into_inner).len() >= needed {
            return;
        }
        let mut pages = self.pages.write().unwrap_or_else(PoisonError::into_inner);
        while pages.len() < needed {
            pages.push((0..PAGE).map(|_| Hint::default()).collect());
        }
    }
}

impl Default for UnreadHints {
    fn default() -> UnreadHints {
        UnreadHints::new(0)
    }
}

fn hint(pages: &[Box<[Hint]>], uid: u64) -> Option<&Hint> {
    let uid = usize::try_from(uid).ok()?;
    pages.get(uid / PAGE)?.get(uid % PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn must_query(hints: &UnreadHints, uid: u64) -> Snapshot {
        match hints.check(uid) {
            SyncNeed::Query(snapshot) => snapshot,
            SyncNeed::Nothing => panic!("user {uid} must query the store"),
        }
    }

    fn is_clean(hints: &UnreadHints, uid: u64) -> bool {
        matches!(hints.check(uid), SyncNeed::Nothing)
    }

    #[test]
    fn existing_users_query_until_a_sync_finds_nothing() {
        let hints = UnreadHints::new(3);
        let snapshot = must_query(&hints, 2);
        hints.synced(snapshot);
        assert!(is_clean(&hints, 2));
        must_query(&hints, 1);
    }

    #[test]
    fn a_new_account_has_nothing_until_a_message_is_noted() {
        let hints = UnreadHints::new(0);
        hints.registered(5000, hints.shared_mark());
        assert!(is_clean(&hints, 5000));
        hints.note([5000]);
        let snapshot = must_query(&hints, 5000);
        hints.synced(snapshot);
        assert!(is_clean(&hints, 5000));
    }

    #[test]
    fn news_noted_during_a_sync_is_not_lost() {
        let hints = UnreadHints::new(0);
        hints.registered(7, hints.shared_mark());
        hints.note([7]);
        let snapshot = must_query(&hints, 7);
        // A message arrives while the store is being asked; that query may not have seen it.
        hints.note([7]);
        hints.synced(snapshot);
        must_query(&hints, 7);
    }

    #[test]
    fn shared_news_makes_everyone_query_once() {
        let hints = UnreadHints::new(0);
        hints.registered(1, hints.shared_mark());
        hints.registered(2, hints.shared_mark());
        hints.note_everyone();
        let first = must_query(&hints, 1);
        must_query(&hints, 2);
        hints.synced(first);
        assert!(is_clean(&hints, 1));
        must_query(&hints, 2);
    }

    #[test]
    fn a_broadcast_between_the_mark_and_the_registration_counts() {
        let hints = UnreadHints::new(0);
        let mark = hints.shared_mark();
        hints.note_everyone();
        hints.registered(9, mark);
        must_query(&hints, 9);
    }

    #[test]
    fn a_cluster_node_always_queries_even_when_its_hints_say_nothing() {
        let hints = UnreadHints::new(0);
        hints.registered(4, hints.shared_mark());
        assert!(is_clean(&hints, 4));
        assert!(matches!(hints.query(4), SyncNeed::Query(_)));
    }

    #[test]
    fn unknown_users_always_query_and_notes_for_them_reach_everyone() {
        let hints = UnreadHints::new(0);
        hints.registered(1, hints.shared_mark());
        must_query(&hints, 99_999);
        hints.note([99_999]);
        must_query(&hints, 1);
    }
}
