//! The in-memory directory: users, room members, shops and service handlers, loaded from the
//! database at start and updated after each committed change, so the message path never
//! reads SQLite.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::store::snapshot::Snapshot;
use crate::store::{RoomInfo, ShopInfo};
use crate::unread::UnreadHints;

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
    /// The directory of a snapshot the store read at start.
    pub fn load(snapshot: Snapshot) -> Directory {
        let mut directory = Directory::default();
        let mut max_uid = 0;
        for user in snapshot.users {
            directory.add_user(user.uid, &user.username, user.token_gen);
            max_uid = max_uid.max(user.uid);
        }
        directory.unread = UnreadHints::new(max_uid);
        // Each set is built whole, then shared once: adding members one by one (`add_member`
        // copies the set each time) made start-up quadratic in a room's size.
        let mut room_members: HashMap<String, HashSet<u64>> = HashMap::new();
        for room in snapshot.rooms {
            let policy = RoomPolicy { private: room.private, history_from_join: room.history_from_join };
            if policy != RoomPolicy::default() {
                directory.room_policies.insert(Arc::from(room.chat_id.as_str()), policy);
            }
            room_members.insert(room.chat_id, HashSet::new());
        }
        for (chat_id, uid) in snapshot.members {
            // Members of a room that no longer exists are ignored.
            if let Some(set) = room_members.get_mut(&chat_id) {
                set.insert(uid);
            }
        }
        for (chat_id, set) in room_members {
            directory.rooms.insert(Arc::from(chat_id), Arc::new(set));
        }
        let mut shop_agents: HashMap<u64, (u64, Vec<u64>, Vec<u64>)> = HashMap::new();
        for (shop_id, owner_uid) in snapshot.shops {
            shop_agents.insert(shop_id, (owner_uid, Vec::new(), Vec::new()));
        }
        for agent in snapshot.agents {
            if let Some((_, list, invited)) = shop_agents.get_mut(&agent.shop_id) {
                if agent.accepted { list.push(agent.uid) } else { invited.push(agent.uid) }
            }
        }
        for (shop_id, (owner_uid, agents, invited)) in shop_agents {
            directory.shops.insert(shop_id, Shop { owner_uid, agents: Arc::new(agents), invited });
        }
        for (chat_id, agent) in snapshot.handlers {
            directory.handlers.insert(Arc::from(chat_id), agent);
        }
        directory
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
    /// moved it on: `(uid, generation)` rows); returns the uids whose generation moved.
    pub fn reload_token_gens(&self, generations: &[(u64, u64)]) -> Vec<u64> {
        let mut moved = Vec::new();
        for &(uid, token_gen) in generations {
            if let Some(user) = self.users.get(&uid)
                && user.token_gen.fetch_max(token_gen, Ordering::AcqRel) < token_gen
            {
                moved.push(uid);
            }
        }
        moved
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

    /// Replaces a room's policy and members with what the store holds (cluster mode: another
    /// node changed it).
    pub fn replace_room(&self, room: &RoomInfo) {
        let policy = RoomPolicy { private: room.private, history_from_join: room.history_from_join };
        if policy != RoomPolicy::default() {
            self.room_policies.insert(Arc::from(room.chat_id.as_str()), policy);
        } else {
            self.room_policies.remove(room.chat_id.as_str());
        }
        self.rooms.insert(Arc::from(room.chat_id.as_str()), Arc::new(room.members.iter().copied().collect()));
    }

    // Shops and service conversations.

    pub fn add_shop(&self, shop_id: u64, owner_uid: u64) {
        self.shops.insert(shop_id, Shop { owner_uid, agents: Arc::new(Vec::new()), invited: Vec::new() });
    }

    /// Replaces a shop's owner, agents and invitations with what the store holds (cluster mode).
    pub fn replace_shop(&self, shop: &ShopInfo) {
        let entry =
            Shop { owner_uid: shop.owner_uid, agents: Arc::new(shop.agents.clone()), invited: shop.invited.clone() };
        self.shops.insert(shop.shop_id, entry);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_by_another_process_shows_in_the_reload() {
        let directory = Directory::default();
        directory.add_user(1, "alice", 0);
        directory.add_user(2, "bob", 0);
        assert_eq!(directory.reload_token_gens(&[(1, 0), (2, 0)]), Vec::<u64>::new(), "nothing moved");
        assert_eq!(directory.reload_token_gens(&[(1, 0), (2, 1), (99, 4)]), vec![2]);
        assert_eq!((directory.token_gen(1), directory.token_gen(2)), (Some(0), Some(1)));
        assert_eq!(directory.reload_token_gens(&[(1, 0), (2, 1)]), Vec::<u64>::new(), "seen once");
        assert_eq!(directory.reload_token_gens(&[(2, 0)]), Vec::<u64>::new(), "never moved back");
        assert_eq!(directory.token_gen(2), Some(1));
    }
}
