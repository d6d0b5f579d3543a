//! One delivery order per conversation across nodes: NATS orders only per publisher, so seq
//! N+2 (committed here) may come before N+1 (committed elsewhere). Pure: no I/O, no clock of
//! its own; `sequencer` drives it and `catchup` fetches the gaps it reports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::StoredMessage;

/// The bounds of a `Reorderer`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a message may wait behind a gap before the gap is fetched from the store.
    pub hold: Duration,
    /// Conversations tracked; past it the least recently used with nothing held is forgotten
    /// (its next message is taken as a new start).
    pub max_conversations: usize,
    /// Messages held behind a gap, per conversation and in all; past either, a message is not
    /// held but its gap is fetched at once (the fetch brings it back).
    pub max_held_per_conversation: usize,
    pub max_held: usize,
    /// Most messages one gap asks for; a longer one is fetched in several rounds.
    pub max_fetch: i64,
    /// A conversation first seen past its seq 1 (after a start, or once forgotten): how long
    /// its messages wait for earlier ones still on their way from other nodes, before the
    /// lowest seq that came is taken as its start.
    pub settle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            hold: Duration::from_millis(150),
            max_conversations: 100_000,
            max_held_per_conversation: 256,
            max_held: 4096,
            max_fetch: 500,
            settle: Duration::from_millis(40),
        }
    }
}

/// Messages of `chat_id` with `after_seq < seq <= up_to_seq` that must come from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub chat_id: Arc<str>,
    pub after_seq: i64,
    pub up_to_seq: i64,
}

/// What the reorderer did with the messages it was offered (for /metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReorderStats {
    pub delivered: u64,
    /// At or below the last delivered seq, or held already: dropped.
    pub repeats: u64,
    /// Beyond a gap with no room to hold it: dropped, its gap fetched at once.
    pub overflowed: u64,
    pub evicted: u64,
}

struct Conversation {
    /// The last seq delivered on this node.
    last: i64,
    /// The highest seq known to exist (offered, or reported by the store).
    known: i64,
    held: BTreeMap<i64, StoredMessage>,
    /// Since when the gap after `last` has waited (or was last reported), while there is one.
    waiting_since: Option<Instant>,
    /// A message was dropped for want of room: report the gap without waiting.
    urgent: bool,
    /// Since when this node has been behind in this conversation (for the lag).
    behind_since: Option<Instant>,
    /// Use counter, for the least-recently-used eviction.
    used: u64,
    /// First seen past seq 1: until then everything offered is held, and `last` follows the
    /// lowest seq held (see `Limits::settle`).
    settling_until: Option<Instant>,
}

impl Conversation {
    fn behind(&self) -> bool {
        self.known > self.last
    }
}

pub struct Reorderer {
    limits: Limits,
    conversations: HashMap<Arc<str>, Conversation>,
    /// The conversations behind (those with `behind_since`): what `due_gaps` and `lag` look
    /// at, so that they need not pass over every conversation.
    behind: HashSet<Arc<str>>,
    held: usize,
    clock: u64,
    stats: ReorderStats,
}

impl Reorderer {
    pub fn new(limits: Limits) -> Reorderer {
        // Every conversation holding a message counts against `max_held`: with more room for
        // conversations than that, one with nothing held can always be evicted.
        let max_held = limits.max_held.max(1);
        let limits = Limits {
            max_held,
            max_conversations: limits.max_conversations.max(max_held + 1),
            max_held_per_conversation: limits.max_held_per_conversation.max(1),
            max_fetch: limits.max_fetch.max(1),
            ..limits
        };
        Reorderer {
            limits,
            conversations: HashMap::new(),
            behind: HashSet::new(),
            held: 0,
            clock: 0,
            stats: ReorderStats::default(),
        }
    }

    /// Takes one committed message (local or remote, in any order) and returns those now
    /// deliverable, in seq order: none when it is a repeat or waits behind a gap. A
    /// conversation first seen at seq 1 starts there; first seen past it, it settles first
    /// (`Limits::settle`): an earlier message another node published at the same moment may
    /// still be on its way, and would otherwise be taken for a repeat and lost.
    pub fn offer(&mut self, message: StoredMessage, now: Instant) -> Vec<StoredMessage> {
        self.clock += 1;
        let clock = self.clock;
        if !self.conversations.contains_key(&message.chat_id) {
            self.make_room();
            let start = message.seq - 1;
            let settling_until = (message.seq > 1).then(|| now + self.limits.settle);
            let fresh = Conversation {
                last: start,
                known: start,
                held: BTreeMap::new(),
                waiting_since: None,
                urgent: false,
                behind_since: None,
                used: clock,
                settling_until,
            };
            self.conversations.insert(message.chat_id.clone(), fresh);
        }
        let Some(conv) = self.conversations.get_mut(&message.chat_id) else { return Vec::new() };
        conv.used = clock;
        let seq = message.seq;
        let room = conv.held.len() < self.limits.max_held_per_conversation && self.held < self.limits.max_held;
        if conv.settling_until.is_some() && !room {
            // No room to wait for earlier ones: what is held is the start.
            conv.settling_until = None;
        }
        if conv.settling_until.is_some() && seq <= conv.last && !conv.held.contains_key(&seq) {
            // Earlier than what came first, while settling: the start moves down to it.
            conv.last = seq - 1;
        }
        if seq <= conv.last || conv.held.contains_key(&seq) {
            self.stats.repeats += 1;
            return Vec::new();
        }
        conv.known = conv.known.max(seq);
        if seq > conv.last + 1 || conv.settling_until.is_some() {
            if conv.behind_since.is_none() {
                conv.behind_since = Some(now);
                self.behind.insert(message.chat_id.clone());
            }
            if room {
                conv.held.insert(seq, message);
                self.held += 1;
            } else {
                conv.urgent = true;
                self.stats.overflowed += 1;
            }
            conv.waiting_since.get_or_insert(now);
            return Vec::new();
        }
        let chat_id = message.chat_id.clone();
        conv.last = seq;
        self.stats.delivered += 1;
        let mut out = vec![message];
        self.release(&chat_id, &mut out, now);
        out
    }

    /// Conversations whose settling time is over: their held messages from the lowest on are
    /// deliverable (in order, up to the first gap, which then waits as any gap does).
    pub fn settle(&mut self, now: Instant) -> Vec<StoredMessage> {
        let settled: Vec<Arc<str>> = self
            .behind
            .iter()
            .filter(|chat_id| {
                self.conversations.get(*chat_id).and_then(|conv| conv.settling_until).is_some_and(|until| until <= now)
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for chat_id in settled {
            if let Some(conv) = self.conversations.get_mut(&chat_id) {
                conv.settling_until = None;
            }
            self.release(&chat_id, &mut out, now);
        }
        out
    }

    /// Moves the held messages that follow `last` of `chat_id` into `out`, and updates what
    /// the conversation waits for; `out` may already hold its messages just delivered.
    fn release(&mut self, chat_id: &Arc<str>, out: &mut Vec<StoredMessage>, now: Instant) {
        let Some(conv) = self.conversations.get_mut(chat_id) else { return };
        let before = out.len();
        while let Some(next) = conv.held.remove(&(conv.last + 1)) {
            conv.last += 1;
            self.held -= 1;
            out.push(next);
        }
        // A gap left behind the progress is a new one: it waits its own hold.
        conv.waiting_since = if conv.behind() { Some(now) } else { None };
        if !conv.behind() {
            conv.urgent = false;
            if conv.behind_since.take().is_some() {
                self.behind.remove(chat_id);
            }
        }
        self.stats.delivered += (out.len() - before) as u64;
    }

    /// The store says `chat_id` has messages up to `up_to_seq`: if this node has delivered
    /// less, the rest is a gap (fetched once it has waited the hold, in case NATS brings it
    /// first). False when the conversation is unknown here (the caller decides).
    pub fn expect(&mut self, chat_id: &str, up_to_seq: i64, now: Instant) -> bool {
        let Some(conv) = self.conversations.get_mut(chat_id) else { return false };
        if up_to_seq > conv.known {
            conv.known = up_to_seq;
            conv.waiting_since.get_or_insert(now);
            if conv.behind_since.is_none() {
                conv.behind_since = Some(now);
                self.behind.insert(Arc::from(chat_id));
            }
        }
        true
    }

    /// The gaps that waited longer than the hold (or overflowed): fetch each from the store
    /// and `offer` what comes back. A gap reported waits another hold before it is reported
    /// again, so that a slow fetch is not repeated at once.
    pub fn due_gaps(&mut self, now: Instant) -> Vec<Gap> {
        let (hold, max_fetch) = (self.limits.hold, self.limits.max_fetch);
        let mut gaps = Vec::new();
        for chat_id in &self.behind {
            let Some(conv) = self.conversations.get_mut(chat_id) else { continue };
            let Some(since) = conv.waiting_since else { continue };
            if conv.settling_until.is_some() {
                continue;
            }
            if !conv.behind() || (!conv.urgent && now.saturating_duration_since(since) < hold) {
                continue;
            }
            let before_held = conv.held.keys().next().map(|first| first - 1);
            let up_to = match before_held {
                Some(up_to) if !conv.urgent && up_to > conv.last => up_to,
                _ => conv.known,
            };
            gaps.push(Gap {
                chat_id: chat_id.clone(),
                after_seq: conv.last,
                up_to_seq: up_to.min(conv.last + max_fetch),
            });
            conv.waiting_since = Some(now);
            conv.urgent = false;
        }
        gaps
    }

    /// The last seq delivered of `chat_id`, if it is tracked.
    pub fn delivered(&self, chat_id: &str) -> Option<i64> {
        self.conversations.get(chat_id).map(|conv| conv.last)
    }

    /// How long the conversation furthest behind has been behind (zero when none is): the
    /// node's delivery lag, for /health and /metrics.
    pub fn lag(&self, now: Instant) -> Duration {
        let oldest = self.behind.iter().filter_map(|chat_id| self.conversations.get(chat_id)?.behind_since).min();
        oldest.map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Messages held behind gaps, in all.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn conversations(&self) -> usize {
        self.conversations.len()
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Before a new conversation is tracked at the bound: forgets the least recently used
    /// eighth of those with nothing pending, in one pass, so that the scan is paid rarely.
    fn make_room(&mut self) {
        if self.conversations.len() < self.limits.max_conversations {
            return;
        }
        let mut idle: Vec<(u64, Arc<str>)> = self
            .conversations
            .iter()
            .filter(|(_, conv)| conv.held.is_empty() && !conv.behind())
            .map(|(chat_id, conv)| (conv.used, chat_id.clone()))
            .collect();
        if idle.is_empty() {
            // Only conversations behind a gap with nothing held (the store said more exists):
            // forget the oldest of those; the catch-up finds them again.
            idle = self
                .conversations
                .iter()
                .filter(|(_, conv)| conv.held.is_empty())
                .map(|(chat_id, conv)| (conv.used, chat_id.clone()))
                .collect();
        }
        let count = (self.limits.max_conversations / 8).clamp(1, idle.len().max(1));
        if idle.len() > count {
            idle.select_nth_unstable(count - 1);
            idle.truncate(count);
        }
        for (_, chat_id) in idle {
            self.conversations.remove(&chat_id);
            self.behind.remove(&chat_id);
            self.stats.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::tests::message;

    fn seqs(messages: &[StoredMessage]) -> Vec<i64> {
        messages.iter().map(|m| m.seq).collect()
    }

    fn limits() -> Limits {
        Limits { hold: Duration::from_millis(150), ..Limits::default() }
    }

    #[test]
    fn in_order_messages_pass_and_repeats_are_dropped() {
        let now = Instant::now();
        let mut order = Reorderer::new(limits());
        assert_eq!(seqs(&order.offer(message("g", 1), now)), [1], "first seen at seq 1: no wait");
        assert_eq!(seqs(&order.offer(message("g", 2), now)), [2]);
        assert!(order.offer(message("g", 2), now).is_empty(), "repeat");
        assert_eq!(order.delivered("g"), Some(2));
        assert_eq!(order.stats().repeats, 1);
        assert_eq!(order.stats().delivered, 2);
        assert!(order.due_gaps(now + Duration::from_secs(10)).is_empty(), "no gap");
    }

    #[test]
    fn a_conversation_first_seen_past_seq_1_settles_so_an_earlier_late_message_is_not_lost() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(limits());
        assert!(order.offer(message("g", 5), t0).is_empty(), "first seen at 5: it settles");
        assert!(order.offer(message("g", 6), t0).is_empty(), "held while settling");
        let early = t0 + Duration::from_millis(10);
        assert!(order.offer(message("g", 4), early).is_empty(), "4 was on its way: the start moves to it");
        assert!(order.settle(early).is_empty(), "not settled yet");
        assert!(order.due_gaps(t0 + Duration::from_millis(39)).is_empty(), "settling is no gap");
        let settled = t0 + Duration::from_millis(40);
        assert_eq!(seqs(&order.settle(settled)), [4, 5, 6], "in order, from the lowest that came");
        assert_eq!(order.held(), 0);
        assert_eq!(order.lag(settled), Duration::ZERO);
        assert!(order.offer(message("g", 3), settled).is_empty(), "settled: below the start is old");
        assert_eq!(seqs(&order.offer(message("g", 7), settled)), [7], "then as usual");
        assert_eq!(order.stats().delivered, 4);
    }

    #[test]
    fn a_gap_left_after_settling_is_fetched_as_any_gap() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(limits());
        order.offer(message("g", 8), t0);
        order.offer(message("g", 10), t0);
        let settled = t0 + Duration::from_millis(40);
        assert_eq!(seqs(&order.settle(settled)), [8]);
        assert!(order.due_gaps(settled).is_empty(), "9 gets its hold");
        let gaps = order.due_gaps(settled + Duration::from_millis(150));
        assert_eq!(gaps, [Gap { chat_id: "g".into(), after_seq: 8, up_to_seq: 9 }]);
        assert_eq!(seqs(&order.offer(message("g", 9), settled)), [9, 10]);
    }

    #[test]
    fn settling_ends_at_once_when_there_is_no_room_to_hold() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(Limits { max_held_per_conversation: 1, ..limits() });
        assert!(order.offer(message("g", 5), t0).is_empty());
        assert_eq!(seqs(&order.offer(message("g", 6), t0)), Vec::<i64>::new(), "no room: settling ends");
        assert_eq!(seqs(&order.settle(t0)), Vec::<i64>::new(), "nothing settling any more");
        assert_eq!(order.held(), 1, "5 is held as the start; 6 overflowed and is fetched");
        let gaps = order.due_gaps(t0);
        assert_eq!(gaps, [Gap { chat_id: "g".into(), after_seq: 4, up_to_seq: 6 }]);
    }

    #[test]
    fn a_message_beyond_a_gap_waits_then_the_gap_is_reported_then_filled() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(limits());
        order.offer(message("g", 1), t0);
        assert!(order.offer(message("g", 4), t0).is_empty(), "held behind 2..3");
        assert!(order.offer(message("g", 4), t0).is_empty(), "held already");
        assert_eq!(order.held(), 1);
        assert!(order.due_gaps(t0 + Duration::from_millis(100)).is_empty(), "still within the hold");
        let later = t0 + Duration::from_millis(151);
        let gaps = order.due_gaps(later);
        assert_eq!(gaps, [Gap { chat_id: "g".into(), after_seq: 1, up_to_seq: 3 }]);
        assert!(order.due_gaps(later).is_empty(), "reported once per hold");
        assert_eq!(gaps.len(), 1);
        assert!(!order.due_gaps(later + Duration::from_millis(151)).is_empty(), "reported again if not filled");
        assert_eq!(seqs(&order.offer(message("g", 2), later)), [2]);
        assert_eq!(order.lag(later), Duration::from_millis(151), "behind since 4 came");
        assert_eq!(seqs(&order.offer(message("g", 3), later)), [3, 4], "the held one follows its gap");
        assert_eq!(order.held(), 0);
        assert_eq!(order.lag(later), Duration::ZERO, "caught up");
        assert!(order.due_gaps(later + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn the_store_can_announce_a_gap_nats_never_brings() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(limits());
        assert!(!order.expect("g", 9, t0), "unknown conversation: the caller decides");
        order.offer(message("g", 1), t0);
        assert!(order.expect("g", 3, t0));
        assert!(order.expect("g", 2, t0), "known already: nothing changes");
        assert!(order.due_gaps(t0 + Duration::from_millis(10)).is_empty(), "NATS may still bring it");
        let gaps = order.due_gaps(t0 + Duration::from_millis(200));
        assert_eq!(gaps, [Gap { chat_id: "g".into(), after_seq: 1, up_to_seq: 3 }]);
    }

    #[test]
    fn past_the_hold_bounds_a_message_is_dropped_and_its_gap_fetched_at_once() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(Limits { max_held_per_conversation: 2, max_held: 3, ..limits() });
        order.offer(message("a", 1), t0);
        order.offer(message("b", 1), t0);
        order.offer(message("a", 3), t0);
        order.offer(message("a", 4), t0);
        order.offer(message("a", 5), t0);
        assert_eq!(order.held(), 2, "two per conversation");
        assert_eq!(order.stats().overflowed, 1);
        order.offer(message("b", 3), t0);
        order.offer(message("b", 4), t0);
        assert_eq!(order.held(), 3, "three in all");
        let mut gaps = order.due_gaps(t0);
        gaps.sort_by(|x, y| x.chat_id.cmp(&y.chat_id));
        assert_eq!(
            gaps,
            [
                Gap { chat_id: "a".into(), after_seq: 1, up_to_seq: 5 },
                Gap { chat_id: "b".into(), after_seq: 1, up_to_seq: 4 },
            ],
            "no wait: everything up to the highest seq seen"
        );
        let fetched: Vec<i64> = (2..=5).flat_map(|seq| seqs(&order.offer(message("a", seq), t0))).collect();
        assert_eq!(fetched, [2, 3, 4, 5]);
    }

    #[test]
    fn a_long_gap_is_fetched_in_bounded_rounds() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(Limits { max_fetch: 100, ..limits() });
        order.offer(message("g", 1), t0);
        order.expect("g", 1000, t0);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(order.due_gaps(at), [Gap { chat_id: "g".into(), after_seq: 1, up_to_seq: 101 }]);
    }

    #[test]
    fn conversations_are_bounded_and_the_least_recently_used_idle_one_goes() {
        let t0 = Instant::now();
        let mut order = Reorderer::new(Limits { max_conversations: 16, max_held: 4, ..limits() });
        order.offer(message("busy", 1), t0);
        order.offer(message("busy", 3), t0);
        for n in 0..100 {
            order.offer(message(&format!("c{n}"), 1), t0);
            assert!(order.conversations() <= 16, "{}", order.conversations());
        }
        assert_eq!(order.delivered("busy"), Some(1), "one holding a message is kept");
        assert_eq!(order.held(), 1);
        assert_eq!(order.delivered("c99"), Some(1), "the newest is kept");
        assert_eq!(order.delivered("c0"), None, "the oldest idle one went");
        assert!(order.stats().evicted >= 84);
    }

    /// Two nodes commit seqs 1..=500 of one conversation in alternating runs. Each node's own
    /// messages arrive in its order (as NATS keeps per publisher), the two streams interleaved
    /// at random, and the gaps reported are filled from "the store". The output is 1..=500,
    /// each once, in order.
    #[test]
    fn two_publishers_interleaved_at_random_give_one_order() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..50 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut seq = 1;
            let mut to_a = true;
            while seq <= 500 {
                let run = 1 + next(8) as i64;
                for s in seq..(seq + run).min(501) {
                    if to_a { a.push(s) } else { b.push(s) }
                }
                seq += run;
                to_a = !to_a;
            }
            // Some messages never arrive over NATS: only the store has them.
            let lost: Vec<i64> = (0..5).map(|_| 1 + next(500) as i64).filter(|&s| s != 1).collect();
            a.retain(|s| !lost.contains(s));
            b.retain(|s| !lost.contains(s));
            let mut order = Reorderer::new(Limits { max_held_per_conversation: 64, max_held: 64, ..limits() });
            let mut out = Vec::new();
            // Seq 1 first, so that the conversation starts at the start.
            let (mut ia, mut ib) = (0, 0);
            let mut now = Instant::now();
            let first_in_a = a.first() == Some(&1);
            let (first, rest) = if first_in_a { (&mut ia, &a) } else { (&mut ib, &b) };
            out.extend(seqs(&order.offer(message("g", rest[0]), now)));
            *first += 1;
            let mut steps = 0;
            while (ia < a.len() || ib < b.len() || out.len() < 500) && steps < 100_000 {
                steps += 1;
                now += Duration::from_millis(next(40));
                let pick_a = ib >= b.len() || (ia < a.len() && next(2) == 0);
                if ia < a.len() && pick_a {
                    out.extend(seqs(&order.offer(message("g", a[ia]), now)));
                    ia += 1;
                } else if ib < b.len() {
                    out.extend(seqs(&order.offer(message("g", b[ib]), now)));
                    ib += 1;
                }
                if ia >= a.len() && ib >= b.len() {
                    // Nothing more over NATS: the catch-up says where the store is.
                    order.expect("g", 500, now);
                    now += Duration::from_millis(200);
                }
                for gap in order.due_gaps(now) {
                    assert!(gap.after_seq < gap.up_to_seq, "{gap:?}");
                    for s in gap.after_seq + 1..=gap.up_to_seq {
                        out.extend(seqs(&order.offer(message("g", s), now)));
                    }
                }
            }
            assert_eq!(out, (1..=500).collect::<Vec<_>>(), "round {round}");
            assert_eq!(order.held(), 0);
            assert_eq!(order.lag(now), Duration::ZERO, "caught up, round {round}");
            assert!(order.behind.is_empty());
        }
    }
}
