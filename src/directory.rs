//! The in-memory directory: users, room members, shops and service handlers, loaded from the
//! database at start and updated after each committed change, so the message path never
//! reads SQLite.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use rusqlite::{Connection, OptionalExtension};

use crate::progress::Progress;
use crate::store::StoreResult;
use crate::unread::UnreadHints;

/// The `meta` key that `imd user revoke` counts up, so that a running daemon notices
/// revocations made by another process (see `revocations`).
pub const REVOCATIONS_KEY: &str = "token_revocations";

pub struct UserEntry {
    pub name: Arc<str>,
    /// Tokens from an older generation are revoked.
    pub token_gen: AtomicU64,
}

pub struct Shop {
    pub owner_uid: u64,
    /// Agents who accepted: only they are routed customers, synced and listed as agents.
    pub agents: Arc<Vec<u64>>,
    /// Users the owner added who have not accepted yet.
    pub invited: Vec<u64>,
}

/// Who may join a room and what history a new member sees; rooms not listed are public with
/// their history shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomPolicy {
    /// Joining needs an invitation by a member.
    pub private: bool,
    /// A member sees only messages after their join.
    pub history_from_join: bool,
}

#[derive(Default)]
pub struct Directory {
    users: DashMap<u64, UserEntry>,
    /// Members of each room; replaced whole on change so readers share a snapshot.
    rooms: DashMap<Arc<str>, Arc<HashSet<u64>>>,
    /// Rooms whose policy is not the default (public, history shared).
    room_policies: DashMap<Arc<str>, RoomPolicy>,
    shops: DashMap<u64, Shop>,
    /// The agent handling each service conversation.
    handlers: DashMap<Arc<str>, u64>,
    /// Who may have something unread, so most connects skip the sync query.
    pub unread: UnreadHints,
}

impl Directory {
    pub fn load(conn: &Connection) -> StoreResult<Directory> {
        let mut directory = Directory::default();
        // Start-up's longest step on a large database: shown on a terminal.
        let mut progress = Progress::new("start-up: loading users", "users");
        let total = if progress.shown() { count(conn, "users")? } else { 0 };
        let mut users = conn.prepare("SELECT uid, username, token_gen FROM users")?;
        let mut max_uid = 0;
        let mut loaded = 0;
        for row in users.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?, r.get::<_, u64>(2)?)))? {
            let (uid, name, token_gen) = row?;
            directory.add_user(uid, &name, token_gen);
            max_uid = max_uid.max(uid);
            loaded += 1;
            progress.update(loaded, total);
        }
        progress.finish();
        directory.unread = UnreadHints::new(max_uid);
        // Each set is built whole, then shared once: adding members one by one (`add_member`
        // copies the set each time) made start-up quadratic in a room's size.
        let mut room_members: HashMap<String, HashSet<u64>> = HashMap::new();
        let mut rooms = conn.prepare("SELECT chat_id, private, history FROM rooms")?;
        for row in
            rooms.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))?
        {
            let (chat_id, private, history) = row?;
            let policy = RoomPolicy { private, history_from_join: history == "joined" };
            if policy != RoomPolicy::default() {
                directory.room_policies.insert(Arc::from(chat_id.as_str()), policy);
            }
            room_members.insert(chat_id, HashSet::new());
        }
        let mut progress = Progress::new("start-up: loading room members", "members");
        let total = if progress.shown() { count(conn, "room_members")? } else { 0 };
        let mut loaded = 0;
        let mut members = conn.prepare("SELECT chat_id, uid FROM room_members")?;
        for row in members.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
            let (chat_id, uid) = row?;
            loaded += 1;
            progress.update(loaded, total);
            // Members of a room that no longer exists are ignored.
            if let Some(set) = room_members.get_mut(&chat_id) {
                set.insert(uid);
            }
        }
        progress.finish();
        for (chat_id, set) in room_members {
            directory.rooms.insert(Arc::from(chat_id), Arc::new(set));
        }
        let mut shop_agents: HashMap<u64, (u64, Vec<u64>, Vec<u64>)> = HashMap::new();
        let mut shops = conn.prepare("SELECT shop_id, owner_uid FROM shops")?;
        for row in shops.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?)))? {
            let (shop_id, owner_uid) = row?;
            shop_agents.insert(shop_id, (owner_uid, Vec::new(), Vec::new()));
        }
        // (shop_id, uid) is the table's key: no duplicates to skip.
        let mut agents = conn.prepare("SELECT shop_id, uid, accepted FROM shop_agents")?;
        for row in agents.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?, r.get::<_, bool>(2)?)))? {
            let (shop_id, uid, accepted) = row?;
            if let Some((_, list, invited)) = shop_agents.get_mut(&shop_id) {
                if accepted { list.push(uid) } else { invited.push(uid) }
            }
        }
        for (shop_id, (owner_uid, agents, invited)) in shop_agents {
            directory.shops.insert(shop_id, Shop { owner_uid, agents: Arc::new(agents), invited });
        }
        let mut handlers =
            conn.prepare("SELECT chat_id, handler_uid FROM conversations WHERE handler_uid IS NOT NULL")?;
        for row in handlers.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
            let (chat_id, agent) = row?;
            directory.handlers.insert(Arc::from(chat_id), agent);
        }
        Ok(directory)
    }

    // Users.

    pub fn add_user(&self, uid: u64, name: &str, token_gen: u64) {
        self.users.insert(uid, UserEntry { name: Arc::from(name), token_gen: AtomicU64::new(token_gen) });
    }

    pub fn user_exists(&self, uid: u64) -> bool {
        self.users.contains_key(&uid)
    }

    pub fn username(&self, uid: u64) -> Option<Arc<str>> {
        self.users.get(&uid).map(|u| u.name.clone())
    }

    pub fn token_gen(&self, uid: u64) -> Option<u64> {
        self.users.get(&uid).map(|u| u.token_gen.load(Ordering::Acquire))
    }

    pub fn set_token_gen(&self, uid: u64, token_gen: u64) {
        if let Some(user) = self.users.get(&uid) {
            user.token_gen.fetch_max(token_gen, Ordering::AcqRel);
        }
    }

    /// Takes every user's token generation from the database (where another process may have
    /// moved it on); returns the uids whose generation moved. Blocking: a store read.
    pub fn reload_token_gens(&self, conn: &Connection) -> StoreResult<Vec<u64>> {
        let mut moved = Vec::new();
        let mut users = conn.prepare("SELECT uid, token_gen FROM users")?;
        for row in users.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?)))? {
            let (uid, token_gen) = row?;
            if let Some(user) = self.users.get(&uid)
                && user.token_gen.fetch_max(token_gen, Ordering::AcqRel) < token_gen
            {
                moved.push(uid);
            }
        }
        Ok(moved)
    }

    // Rooms.

    pub fn add_room(&self, chat_id: &str, owner_uid: u64, policy: RoomPolicy) {
        if policy != RoomPolicy::default() {
            self.room_policies.insert(Arc::from(chat_id), policy);
        }
        self.rooms.insert(Arc::from(chat_id), Arc::new(HashSet::from([owner_uid])));
    }

    pub fn room_policy(&self, chat_id: &str) -> RoomPolicy {
        self.room_policies.get(chat_id).map(|p| *p).unwrap_or_default()
    }

    pub fn room_exists(&self, chat_id: &str) -> bool {
        self.rooms.contains_key(chat_id)
    }

    pub fn room_members(&self, chat_id: &str) -> Option<Arc<HashSet<u64>>> {
        self.rooms.get(chat_id).map(|m| m.clone())
    }

    pub fn is_member(&self, chat_id: &str, uid: u64) -> bool {
        self.rooms.get(chat_id).is_some_and(|m| m.contains(&uid))
    }

    pub fn add_member(&self, chat_id: &str, uid: u64) {
        if let Some(mut members) = self.rooms.get_mut(chat_id)
            && !members.contains(&uid)
        {
            let mut next = (**members).clone();
            next.insert(uid);
            *members = Arc::new(next);
        }
    }

    pub fn remove_member(&self, chat_id: &str, uid: u64) {
        if let Some(mut members) = self.rooms.get_mut(chat_id)
            && members.contains(&uid)
        {
            let mut next = (**members).clone();
            next.remove(&uid);
            *members = Arc::new(next);
        }
    }

    // Shops and service conversations.

    pub fn add_shop(&self, shop_id: u64, owner_uid: u64) {
        self.shops.insert(shop_id, Shop { owner_uid, agents: Arc::new(Vec::new()), invited: Vec::new() });
    }

    pub fn shop_owner(&self, shop_id: u64) -> Option<u64> {
        self.shops.get(&shop_id).map(|s| s.owner_uid)
    }

    pub fn shop_agents(&self, shop_id: u64) -> Option<Arc<Vec<u64>>> {
        self.shops.get(&shop_id).map(|s| s.agents.clone())
    }

    pub fn is_agent(&self, shop_id: u64, uid: u64) -> bool {
        self.shops.get(&shop_id).is_some_and(|s| s.agents.contains(&uid))
    }

    pub fn add_agent(&self, shop_id: u64, uid: u64) {
        if let Some(mut shop) = self.shops.get_mut(&shop_id)
            && !shop.agents.contains(&uid)
        {
            let mut next = (*shop.agents).clone();
            next.push(uid);
            shop.agents = Arc::new(next);
        }
    }

    pub fn remove_agent(&self, shop_id: u64, uid: u64) {
        if let Some(mut shop) = self.shops.get_mut(&shop_id) {
            let next: Vec<u64> = shop.agents.iter().copied().filter(|&a| a != uid).collect();
            shop.agents = Arc::new(next);
            shop.invited.retain(|&a| a != uid);
        }
    }

    /// `uid` was added by the owner but has not accepted: not an agent yet.
    pub fn invite_agent(&self, shop_id: u64, uid: u64) {
        if let Some(mut shop) = self.shops.get_mut(&shop_id)
            && !shop.agents.contains(&uid)
            && !shop.invited.contains(&uid)
        {
            shop.invited.push(uid);
        }
    }

    pub fn is_invited_agent(&self, shop_id: u64, uid: u64) -> bool {
        self.shops.get(&shop_id).is_some_and(|s| s.invited.contains(&uid))
    }

    /// Users added to the shop who have not accepted yet.
    pub fn shop_invited(&self, shop_id: u64) -> Vec<u64> {
        self.shops.get(&shop_id).map(|s| s.invited.clone()).unwrap_or_default()
    }

    /// The invited `uid` accepted: from now on an agent like any other.
    pub fn accept_agent(&self, shop_id: u64, uid: u64) {
        if let Some(mut shop) = self.shops.get_mut(&shop_id) {
            shop.invited.retain(|&a| a != uid);
        }
        self.add_agent(shop_id, uid);
    }

    pub fn handler(&self, chat_id: &str) -> Option<u64> {
        self.handlers.get(chat_id).map(|h| *h)
    }

    pub fn set_handler(&self, chat_id: &str, agent_uid: u64) {
        self.handlers.insert(Arc::from(chat_id), agent_uid);
    }

    /// `agent_uid` no longer handles any conversation of `shop_id` (they left the shop).
    pub fn forget_handler(&self, shop_id: u64, agent_uid: u64) {
        self.handlers.retain(|chat_id, handler| {
            *handler != agent_uid
                || !matches!(crate::chat_id::parse(chat_id), Some(crate::chat_id::ChatId::Service { shop_id: s, .. }) if s == shop_id)
        });
    }
}

/// Moves `uid`'s token generation on, which revokes every token issued to them so far;
/// returns the new generation, or None when there is no such user.
pub fn bump_token_gen(conn: &Connection, uid: u64) -> StoreResult<Option<u64>> {
    Ok(conn
        .query_row("UPDATE users SET token_gen = token_gen + 1 WHERE uid = ?1 RETURNING token_gen", [uid], |r| {
            r.get::<_, u64>(0)
        })
        .optional()?)
}

/// Counts a revocation made outside the daemon up (see `REVOCATIONS_KEY`).
pub fn note_revocation(conn: &Connection) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [REVOCATIONS_KEY],
    )?;
    Ok(())
}

/// The count of `note_revocation`, None before the first.
pub fn revocations(conn: &Connection) -> StoreResult<Option<String>> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [REVOCATIONS_KEY], |r| r.get(0)).optional()?)
}

/// Rows of `table` (a name of ours, never a client's), for a progress total.
fn count(conn: &Connection, table: &str) -> StoreResult<u64> {
    Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rusqlite::params;

    use super::*;

    #[test]
    fn a_revocation_by_another_connection_shows_in_the_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = crate::store::Store::prepare(&dir.path().join("imd.db")).expect("database");
        for name in ["alice", "bob"] {
            conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES (?1, 'x', 0)", [name])
                .expect("user");
        }
        let directory = Directory::load(&conn).expect("load");
        assert_eq!(revocations(&conn).expect("count"), None);
        assert_eq!(directory.reload_token_gens(&conn).expect("reload"), Vec::<u64>::new(), "nothing moved");

        assert_eq!(bump_token_gen(&conn, 2).expect("bump"), Some(1));
        assert_eq!(bump_token_gen(&conn, 99).expect("bump"), None, "no such user");
        note_revocation(&conn).expect("note");
        note_revocation(&conn).expect("note");
        assert_eq!(revocations(&conn).expect("count").as_deref(), Some("2"));

        assert_eq!(directory.reload_token_gens(&conn).expect("reload"), vec![2]);
        assert_eq!((directory.token_gen(1), directory.token_gen(2)), (Some(0), Some(1)));
        assert_eq!(directory.reload_token_gens(&conn).expect("reload"), Vec::<u64>::new(), "seen once");
    }

    /// Members of one room, as a large deployment has them.
    const MEMBERS: u64 = 200_000;

    #[test]
    fn loading_a_huge_room_is_linear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = crate::store::Store::prepare(&dir.path().join("imd.db")).expect("database");
        let tx = conn.transaction().expect("transaction");
        tx.execute("INSERT INTO rooms (chat_id, owner_uid, created_at) VALUES ('2_1_1', 1, 0)", []).expect("room");
        tx.execute("INSERT INTO rooms (chat_id, owner_uid, created_at) VALUES ('2_1_2', 1, 0)", []).expect("room");
        {
            let mut member =
                tx.prepare("INSERT INTO room_members (chat_id, uid, joined_at) VALUES (?1, ?2, 0)").expect("prepare");
            for uid in 1..=MEMBERS {
                member.execute(params!["2_1_1", uid]).expect("member");
            }
            member.execute(params!["2_1_2", 7]).expect("member");
            // A member row of a room that is gone is ignored, as before.
            member.execute(params!["2_9_9", 7]).expect("member");
        }
        tx.commit().expect("commit");

        let started = Instant::now();
        let directory = Directory::load(&conn).expect("load");
        let took = started.elapsed();
        // Measured on a 2-core VM: 0.08 s; adding the members one by one, the set copied each
        // time, took 16 s.
        assert!(took < Duration::from_secs(3), "loading {MEMBERS} members took {took:?}");
        assert_eq!(directory.room_members("2_1_1").map(|m| m.len()), Some(MEMBERS as usize));
        assert!(directory.is_member("2_1_1", MEMBERS) && directory.is_member("2_1_1", 1));
        assert_eq!(directory.room_members("2_1_2").map(|m| m.len()), Some(1));
        assert!(!directory.room_exists("2_9_9"));
    }
}
