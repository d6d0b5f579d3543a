//! Cluster mode's read-through (issue 13): a user, room, membership or shop another node made
//! a moment ago may not be in this node's directory yet (its invalidation is on the way, or
//! lost). Before a refusal, the fact is asked of the shared store once and the directory filled.
//! A fact found missing is remembered briefly, so that naming what does not exist cannot turn
//! into a query per frame; at most a few such reads run at once. On a single node (SQLite) the
//! directory is the whole truth and nothing is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::chat_id::{self, ChatId};
use crate::directory::Directory;
use crate::store::{Store, StoreResult};

/// How long a fact the store did not hold either is refused without asking again. Short: a
/// change on another node makes it true, and its invalidation may never reach this node.
const MISS_TTL: Duration = Duration::from_secs(1);
/// Misses remembered at most; past that (after dropping the stale ones) new misses are not
/// remembered, and the `READS_AT_ONCE` bound alone limits the store's load.
const MISSES_MAX: usize = 4096;
/// Store reads the read-through makes at once; further callers wait their turn.
const READS_AT_ONCE: usize = 4;

/// What a check needs to be true; the directory is asked first, the store only when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fact {
    /// The user exists, with a token generation of at least `generation` (a token issued on
    /// another node after a logout there carries the newer one).
    User {
        uid: u64,
        generation: u64,
    },
    Room(String),
    /// `uid` is a member of the room.
    Member(String, u64),
    Shop(u64),
    /// `uid` is an accepted agent of the shop.
    Agent(u64, u64),
    /// `uid` was invited to be an agent of the shop (or already accepted).
    Invited(u64, u64),
}

impl Fact {
    /// A user who exists, whatever their token generation.
    pub fn user(uid: u64) -> Fact {
        Fact::User { uid, generation: 0 }
    }

    /// Whether the directory shows it.
    fn holds(&self, directory: &Directory) -> bool {
        match self {
            Fact::User { uid, generation } => directory.token_gen(*uid).is_some_and(|known| known >= *generation),
            Fact::Room(chat_id) => directory.room_exists(chat_id),
            Fact::Member(chat_id, uid) => directory.is_member(chat_id, *uid),
            Fact::Shop(shop_id) => directory.shop_owner(*shop_id).is_some(),
            Fact::Agent(shop_id, uid) => directory.is_agent(*shop_id, *uid),
            Fact::Invited(shop_id, uid) => {
                directory.is_invited_agent(*shop_id, *uid) || directory.is_agent(*shop_id, *uid)
            }
        }
    }
}

pub struct ReadThrough {
    store: Store,
    directory: Arc<Directory>,
    /// Facts the store did not hold, and when that was learned.
    misses: Mutex<HashMap<Fact, Instant>>,
    reads: Semaphore,
}

impl ReadThrough {
    pub fn new(store: Store, directory: Arc<Directory>) -> ReadThrough {
        ReadThrough { store, directory, misses: Mutex::new(HashMap::new()), reads: Semaphore::new(READS_AT_ONCE) }
    }

    /// Whether a refusal may be stale: other nodes change the store (cluster mode).
    pub fn active(&self) -> bool {
        self.store.postgres().is_some()
    }

    /// Whether `fact` holds: in the directory, else (cluster mode) in the store, which then
    /// fills the directory. A store error counts as false (the refusal stands; logged).
    pub async fn confirm(&self, fact: &Fact) -> bool {
        if fact.holds(&self.directory) {
            return true;
        }
        if !self.active() || self.missed_lately(fact) {
            return false;
        }
        let Ok(_turn) = self.reads.acquire().await else { return false };
        // Another caller may have read it while this one waited.
        if fact.holds(&self.directory) {
            return true;
        }
        if let Err(e) = self.read(fact).await {
            tracing::warn!(?fact, "cannot read through to the store: {e}");
            return false;
        }
        let holds = fact.holds(&self.directory);
        if !holds {
            self.remember_miss(fact);
        }
        holds
    }

    /// Confirms each fact (see `confirm`); true if all hold.
    pub async fn confirm_all(&self, facts: &[Fact]) -> bool {
        let mut all = true;
        for fact in facts {
            all &= self.confirm(fact).await;
        }
        all
    }

    /// The facts a refused reader of `chat_id` may be missing (`rules::reader`'s checks).
    pub fn reader_facts(uid: u64, chat_id: &str) -> Vec<Fact> {
        match chat_id::parse(chat_id) {
            Some(ChatId::Single(low, high)) => vec![Fact::user(low), Fact::user(high)],
            Some(ChatId::Group) => vec![Fact::Member(chat_id.to_string(), uid)],
            Some(ChatId::Service { shop_id, customer_uid }) if customer_uid == uid => vec![Fact::Shop(shop_id)],
            Some(ChatId::Service { shop_id, customer_uid }) => {
                vec![Fact::Shop(shop_id), Fact::user(customer_uid), Fact::Agent(shop_id, uid)]
            }
            Some(ChatId::System) | None => Vec::new(),
        }
    }

    /// Reads what `fact` names and adds what the directory lacks. Only adds: a whole
    /// replacement could undo a local change committed after the read.
    async fn read(&self, fact: &Fact) -> StoreResult<()> {
        let Some(pg) = self.store.postgres() else { return Ok(()) };
        let directory = &self.directory;
        match fact {
            Fact::User { uid, .. } => {
                let Some(user) = pg.user(*uid).await? else { return Ok(()) };
                if directory.user_exists(user.uid) {
                    directory.set_token_gen(user.uid, user.token_gen);
                } else {
                    // Nothing known as read: its unread hints start conservative.
                    directory.unread.registered(user.uid, 0);
                    directory.add_user(user.uid, &user.username, user.token_gen);
                }
            }
            Fact::Room(chat_id) | Fact::Member(chat_id, _) => {
                let Some(room) = pg.room(chat_id.clone()).await? else { return Ok(()) };
                if !directory.room_exists(chat_id) {
                    directory.replace_room(&room);
                    directory.unread.note(room.members.iter().copied());
                } else if let Fact::Member(_, uid) = fact
                    && room.members.contains(uid)
                {
                    directory.add_member(chat_id, *uid);
                    directory.unread.note([*uid]);
                }
            }
            Fact::Shop(shop_id) | Fact::Agent(shop_id, _) | Fact::Invited(shop_id, _) => {
                let Some(shop) = pg.shop(*shop_id).await? else { return Ok(()) };
                if directory.shop_owner(*shop_id).is_none() {
                    directory.replace_shop(&shop);
                } else if let Fact::Agent(_, uid) | Fact::Invited(_, uid) = fact {
                    if shop.agents.contains(uid) {
                        directory.accept_agent(*shop_id, *uid);
                    } else if shop.invited.contains(uid) {
                        directory.invite_agent(*shop_id, *uid);
                    }
                }
            }
        }
        Ok(())
    }

    fn missed_lately(&self, fact: &Fact) -> bool {
        let Ok(misses) = self.misses.lock() else { return false };
        misses.get(fact).is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    fn remember_miss(&self, fact: &Fact) {
        let Ok(mut misses) = self.misses.lock() else { return };
        if misses.len() >= MISSES_MAX {
            misses.retain(|_, at| at.elapsed() < MISS_TTL);
        }
        if misses.len() < MISSES_MAX {
            misses.insert(fact.clone(), Instant::now());
        }
    }
}
