//! Presence across nodes: which users are online on any node, and with how many sessions
//! (for `--max-connections-per-user` across the cluster). A node publishes a delta whenever a
//! user's local connection count changes, and its whole online set with the counts every
//! `HEARTBEAT`; a node not heard from for `EXPIRY` is dead and its users and sessions drop out.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::registry::Registry;

/// How often a node publishes its whole online set.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a node counts as dead.
pub const EXPIRY: Duration = Duration::from_secs(3);
/// Users per heartbeat part: a part stays well under NATS's 1 MiB payload limit.
pub const PART_USERS: usize = 50_000;
/// Remote nodes tracked at most; heartbeats of further ones are ignored.
const MAX_NODES: usize = 1024;

/// This node's own online users.
pub trait LocalPresence: Send + Sync {
    fn is_online(&self, uid: u64) -> bool;
    /// Each online user once, with their open connections here, sorted by uid.
    fn online_sessions(&self) -> Vec<(u64, u32)>;
}

impl LocalPresence for Registry {
    fn is_online(&self, uid: u64) -> bool {
        Registry::is_online(self, uid)
    }

    fn online_sessions(&self) -> Vec<(u64, u32)> {
        let mut users = Vec::new();
        self.for_each_user(|uid, connections| users.push((uid, connections.min(u32::MAX as usize) as u32)));
        users.sort_unstable();
        users
    }
}

/// What travels on `<prefix>.presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceNotice {
    /// `uid` came online (first connection) or went offline (last one closed) on `node`, or
    /// (with `sessions`) now holds that many connections there. Nodes from before `sessions`
    /// send it on 0->1 and 1->0 only: without it, online counts as one session.
    Delta {
        node: String,
        uid: u64,
        online: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sessions: Option<u32>,
    },
    /// Part `part` of `parts` of `node`'s whole online set, heartbeat number `round`.
    /// `sessions` lists the users of this part holding more than one connection, as
    /// `[uid, count]`; the others hold one (all of them, from a node before `sessions`).
    Full {
        node: String,
        round: u64,
        part: u32,
        parts: u32,
        users: Vec<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sessions: Vec<(u64, u32)>,
    },
}

impl PresenceNotice {
    pub fn node(&self) -> &str {
        match self {
            PresenceNotice::Delta { node, .. } | PresenceNotice::Full { node, .. } => node,
        }
    }

    /// The heartbeat of round `round`: the parts of the whole set `users` (each with its
    /// connection count).
    pub fn heartbeat(node: &str, round: u64, users: &[(u64, u32)]) -> Vec<PresenceNotice> {
        let chunks: Vec<&[(u64, u32)]> =
            if users.is_empty() { vec![&[][..]] } else { users.chunks(PART_USERS).collect() };
        let parts = chunks.len() as u32;
        chunks
            .into_iter()
            .enumerate()
            .map(|(part, users)| PresenceNotice::Full {
                node: node.to_string(),
                round,
                part: part as u32,
                parts,
                users: users.iter().map(|(uid, _)| *uid).collect(),
                sessions: users.iter().filter(|(_, count)| *count > 1).copied().collect(),
            })
            .collect()
    }
}

struct RemoteNode {
    /// Online users, each with their sessions (connections) there, at least one.
    users: HashMap<u64, u32>,
    heard: Instant,
    /// A heartbeat whose parts are still arriving: (round, parts expected, parts received,
    /// users so far). Applied whole once complete, so that a half-received set never shows.
    pending: Option<(u64, u32, u32, HashMap<u64, u32>)>,
}

/// The remote nodes' online sets and session counts. Pure: the clock is passed in.
pub struct PresenceTable {
    expiry: Duration,
    nodes: HashMap<String, RemoteNode>,
}

impl PresenceTable {
    pub fn new(expiry: Duration) -> PresenceTable {
        PresenceTable { expiry, nodes: HashMap::new() }
    }

    pub fn apply(&mut self, notice: PresenceNotice, now: Instant) {
        self.expire(now);
        let node_id = notice.node().to_string();
        if !self.nodes.contains_key(&node_id) {
            if self.nodes.len() >= MAX_NODES {
                tracing::warn!(node = %node_id, "presence: more than {MAX_NODES} nodes, ignoring this one");
                return;
            }
            let fresh = RemoteNode { users: HashMap::new(), heard: now, pending: None };
            self.nodes.insert(node_id.clone(), fresh);
        }
        let Some(node) = self.nodes.get_mut(&node_id) else { return };
        node.heard = now;
        match notice {
            PresenceNotice::Delta { uid, online, sessions, .. } => match sessions.unwrap_or(u32::from(online)) {
                0 => {
                    node.users.remove(&uid);
                }
                count => {
                    node.users.insert(uid, count);
                }
            },
            PresenceNotice::Full { round, part, parts, users, sessions, .. } => {
                // No check of the round against the last applied: NATS keeps one publisher's
                // order, and a node restarted under the same id starts its rounds again.
                if part >= parts {
                    return;
                }
                if node.pending.as_ref().is_none_or(|(pending, ..)| *pending != round) {
                    node.pending = Some((round, parts, 0, HashMap::new()));
                }
                let Some((_, expected, received, set)) = node.pending.as_mut() else { return };
                set.extend(users.into_iter().map(|uid| (uid, 1)));
                set.extend(sessions.into_iter().filter(|(_, count)| *count > 0));
                *received += 1;
                if *received >= *expected
                    && let Some((_, _, _, set)) = node.pending.take()
                {
                    node.users = set;
                }
            }
        }
    }

    /// Forgets the nodes not heard from for the expiry.
    pub fn expire(&mut self, now: Instant) {
        let expiry = self.expiry;
        self.nodes.retain(|node_id, node| {
            let alive = now.saturating_duration_since(node.heard) < expiry;
            if !alive {
                tracing::info!(node = %node_id, "cluster node not heard from for {expiry:?}: its users are offline");
            }
            alive
        });
    }

    /// Whether `uid` is online on a live remote node.
    pub fn is_online(&self, uid: u64, now: Instant) -> bool {
        self.nodes.values().any(|node| self.live(node, now) && node.users.contains_key(&uid))
    }

    /// `uid`'s sessions on the live remote nodes together.
    pub fn sessions(&self, uid: u64, now: Instant) -> usize {
        let live = self.nodes.values().filter(|node| self.live(node, now));
        live.filter_map(|node| node.users.get(&uid)).map(|count| *count as usize).sum()
    }

    /// The live remote nodes, sorted.
    pub fn live_nodes(&self, now: Instant) -> Vec<String> {
        let mut live: Vec<String> =
            self.nodes.iter().filter(|(_, node)| self.live(node, now)).map(|(id, _)| id.clone()).collect();
        live.sort();
        live
    }

    fn live(&self, node: &RemoteNode, now: Instant) -> bool {
        now.saturating_duration_since(node.heard) < self.expiry
    }
}

/// Presence as the rest of imd asks it: local connections, or any live remote node.
pub struct Presence {
    node_id: String,
    local: Arc<dyn LocalPresence>,
    table: RwLock<PresenceTable>,
}

impl Presence {
    pub fn new(node_id: &str, local: Arc<dyn LocalPresence>) -> Presence {
        Presence { node_id: node_id.to_string(), local, table: RwLock::new(PresenceTable::new(EXPIRY)) }
    }

    /// Online here or on any live node.
    pub fn is_online(&self, uid: u64) -> bool {
        self.local.is_online(uid) || self.read(|table| table.is_online(uid, Instant::now()))
    }

    /// `uid`'s sessions on the other live nodes (not this one's).
    pub fn remote_sessions(&self, uid: u64) -> usize {
        self.read(|table| table.sessions(uid, Instant::now()))
    }

    /// This node and every live remote node, this one first.
    pub fn online_nodes(&self) -> Vec<String> {
        let mut nodes = vec![self.node_id.clone()];
        nodes.extend(self.read(|table| table.live_nodes(Instant::now())));
        nodes
    }

    /// Takes a notice of another node (the caller skips this node's own).
    pub fn apply(&self, notice: PresenceNotice) {
        let now = Instant::now();
        match self.table.write() {
            Ok(mut table) => table.apply(notice, now),
            Err(poisoned) => poisoned.into_inner().apply(notice, now),
        }
    }

    /// Drops the dead nodes' state (their users are offline already; this frees the memory).
    pub fn expire(&self) {
        let now = Instant::now();
        match self.table.write() {
            Ok(mut table) => table.expire(now),
            Err(poisoned) => poisoned.into_inner().expire(now),
        }
    }

    /// This node's online users with their connections, for its heartbeat.
    pub fn local_sessions(&self) -> Vec<(u64, u32)> {
        self.local.online_sessions()
    }

    fn read<R>(&self, f: impl FnOnce(&PresenceTable) -> R) -> R {
        match self.table.read() {
            Ok(table) => f(&table),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(node: &str, uid: u64, online: bool) -> PresenceNotice {
        PresenceNotice::Delta { node: node.into(), uid, online, sessions: None }
    }

    fn count(node: &str, uid: u64, sessions: u32) -> PresenceNotice {
        PresenceNotice::Delta { node: node.into(), uid, online: sessions > 0, sessions: Some(sessions) }
    }

    /// Users of one session each.
    fn ones(users: &[u64]) -> Vec<(u64, u32)> {
        users.iter().map(|uid| (*uid, 1)).collect()
    }

    #[test]
    fn deltas_and_whole_sets_say_who_is_online_where() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(EXPIRY);
        table.apply(delta("a", 1, true), t0);
        table.apply(delta("b", 2, true), t0);
        assert!(table.is_online(1, t0) && table.is_online(2, t0) && !table.is_online(3, t0));
        table.apply(delta("a", 1, false), t0);
        assert!(!table.is_online(1, t0));
        for notice in PresenceNotice::heartbeat("b", 1, &ones(&[3, 4])) {
            table.apply(notice, t0);
        }
        assert!(!table.is_online(2, t0), "a whole set replaces the node's users");
        assert!(table.is_online(3, t0) && table.is_online(4, t0));
        assert_eq!(table.live_nodes(t0), ["a", "b"]);
    }

    #[test]
    fn a_silent_node_expires_with_its_users() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(EXPIRY);
        table.apply(delta("a", 1, true), t0);
        table.apply(delta("b", 2, true), t0);
        let t2 = t0 + Duration::from_secs(2);
        for notice in PresenceNotice::heartbeat("b", 1, &ones(&[2])) {
            table.apply(notice, t2);
        }
        let t3 = t0 + Duration::from_millis(3001);
        assert!(!table.is_online(1, t3), "a silent for 3 s: dead");
        assert!(table.is_online(2, t3), "b heard at 2 s");
        assert_eq!(table.live_nodes(t3), ["b"]);
        table.expire(t3);
        assert_eq!(table.nodes.len(), 1, "a's state is freed");
        table.apply(delta("a", 5, true), t3);
        assert!(table.is_online(5, t3) && !table.is_online(1, t3), "a back: starts empty");
    }

    #[test]
    fn a_heartbeat_in_parts_applies_only_when_whole() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(EXPIRY);
        let users: Vec<(u64, u32)> = (1..=(PART_USERS as u64 * 2 + 5)).map(|uid| (uid, 1)).collect();
        let parts = PresenceNotice::heartbeat("a", 7, &users);
        assert_eq!(parts.len(), 3);
        table.apply(delta("a", 999_999_999, true), t0);
        let mut parts = parts.into_iter();
        table.apply(parts.next().unwrap(), t0);
        assert!(!table.is_online(1, t0), "not yet: one part of three");
        assert!(table.is_online(999_999_999, t0), "the old set still holds");
        parts.for_each(|part| table.apply(part, t0));
        assert!(table.is_online(1, t0) && table.is_online(users.len() as u64, t0));
        assert!(!table.is_online(999_999_999, t0), "replaced whole");
        // A part of a new round drops the unfinished one.
        let mut next = PresenceNotice::heartbeat("a", 8, &users).into_iter();
        table.apply(next.next().unwrap(), t0);
        PresenceNotice::heartbeat("a", 9, &ones(&[2])).into_iter().for_each(|part| table.apply(part, t0));
        assert!(table.is_online(2, t0) && !table.is_online(1, t0));
        // An empty set is one part, and empties the node.
        PresenceNotice::heartbeat("a", 10, &[]).into_iter().for_each(|part| table.apply(part, t0));
        assert!(!table.is_online(2, t0));
    }

    #[test]
    fn sessions_add_up_over_live_nodes_and_leave_with_a_dead_one() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(EXPIRY);
        assert_eq!(table.sessions(1, t0), 0);
        table.apply(count("a", 1, 1), t0);
        table.apply(count("a", 1, 2), t0);
        table.apply(count("b", 1, 3), t0);
        assert_eq!(table.sessions(1, t0), 5, "2 on a and 3 on b");
        table.apply(count("b", 1, 0), t0);
        assert_eq!(table.sessions(1, t0), 2);
        assert!(table.is_online(1, t0));
        table.apply(count("a", 1, 0), t0);
        assert!(!table.is_online(1, t0) && table.sessions(1, t0) == 0, "zero is offline");
        // An old node's delta (no count): online is one session, offline none.
        table.apply(delta("c", 2, true), t0);
        assert_eq!(table.sessions(2, t0), 1);
        table.apply(delta("c", 2, false), t0);
        assert_eq!(table.sessions(2, t0), 0);
        // The heartbeat carries the counts above one, the others are one.
        let t1 = t0 + Duration::from_secs(1);
        PresenceNotice::heartbeat("b", 1, &[(1, 4), (3, 1)]).into_iter().for_each(|part| table.apply(part, t1));
        assert_eq!((table.sessions(1, t1), table.sessions(3, t1)), (4, 1));
        // a silent since t0: dead at t0 + 3 s, and only b's sessions count.
        table.apply(count("a", 1, 2), t0);
        assert_eq!(table.sessions(1, t1), 6);
        let t3 = t0 + EXPIRY;
        assert_eq!(table.sessions(1, t3), 4, "a's sessions stopped counting when it expired");
    }

    #[test]
    fn an_old_nodes_heartbeat_counts_each_user_once() {
        let old = r#"{"kind":"full","node":"old","round":1,"part":0,"parts":1,"users":[5,6]}"#;
        let notice: PresenceNotice = serde_json::from_str(old).unwrap();
        let t0 = Instant::now();
        let mut table = PresenceTable::new(EXPIRY);
        table.apply(notice, t0);
        assert_eq!((table.sessions(5, t0), table.sessions(6, t0)), (1, 1));
        let old_delta: PresenceNotice =
            serde_json::from_str(r#"{"kind":"delta","node":"old","uid":7,"online":true}"#).unwrap();
        assert_eq!(old_delta, delta("old", 7, true));
    }

    #[test]
    fn notices_are_tagged_json() {
        let text = serde_json::to_string(&delta("a", 1, true)).unwrap();
        assert_eq!(text, r#"{"kind":"delta","node":"a","uid":1,"online":true}"#);
        let back: PresenceNotice = serde_json::from_str(&text).unwrap();
        assert_eq!(back, delta("a", 1, true));
        let text = serde_json::to_string(&count("a", 1, 3)).unwrap();
        assert_eq!(text, r#"{"kind":"delta","node":"a","uid":1,"online":true,"sessions":3}"#);
        let parts = PresenceNotice::heartbeat("a", 2, &[(1, 1), (2, 3)]);
        let text = serde_json::to_string(&parts[0]).unwrap();
        assert_eq!(text, r#"{"kind":"full","node":"a","round":2,"part":0,"parts":1,"users":[1,2],"sessions":[[2,3]]}"#);
    }
}
