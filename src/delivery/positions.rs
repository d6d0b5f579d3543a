//! A connection's delivered positions: the newest seq of each conversation written to its
//! socket. They live in memory and reach the `delivered` table through the store writer in
//! coalesced saves, which the session schedules (`ws::positions`) — at most one a second per
//! connection, and one when the session ends — never one write per frame. A crash loses at most the last second: those messages come
//! again at the next connect (at-least-once; clients dedupe by `id`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::outbox::Queued;

/// Least time between two saves of one connection's positions.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Positions {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Newest seq of each conversation written to this connection.
    seen: HashMap<Arc<str>, i64>,
    /// Those not saved yet.
    unsaved: HashMap<Arc<str>, i64>,
    /// A save is scheduled and has not yet taken `unsaved`.
    scheduled: bool,
    last_save: Option<Instant>,
}

impl Positions {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the frames of messages already written to this connection: a message committed
    /// while the sync was read is both in the sync and queued live.
    pub fn drop_written(&self, queued: &mut Vec<Queued>) {
        let state = self.state();
        queued.retain(|q| q.mark.as_ref().is_none_or(|(chat_id, seq)| state.seen.get(chat_id).is_none_or(|s| s < seq)));
    }

    /// These messages were written to the socket.
    pub fn advance<'a>(&self, marks: impl IntoIterator<Item = (&'a Arc<str>, i64)>) {
        let mut state = self.state();
        for (chat_id, seq) in marks {
            let seen = state.seen.entry(chat_id.clone()).or_insert(0);
            if *seen < seq {
                *seen = seq;
                state.unsaved.insert(chat_id.clone(), seq);
            }
        }
    }

    /// How long a new save must wait, or None when there is nothing to save or one is
    /// already scheduled (which will take what is unsaved by then).
    pub fn schedule(&self, now: Instant) -> Option<Duration> {
        let mut state = self.state();
        if state.unsaved.is_empty() || state.scheduled {
            return None;
        }
        state.scheduled = true;
        Some(state.last_save.map_or(Duration::ZERO, |last| (last + SAVE_INTERVAL).saturating_duration_since(now)))
    }

    /// Takes what is unsaved, as the save starting now.
    pub fn take(&self, now: Instant) -> Vec<(Arc<str>, i64)> {
        let mut state = self.state();
        state.scheduled = false;
        state.last_save = Some(now);
        state.unsaved.drain().collect()
    }

    /// A save failed: keep its positions for the next one (never moving one back).
    pub fn restore(&self, positions: Vec<(Arc<str>, i64)>) {
        let mut state = self.state();
        for (chat_id, seq) in positions {
            let unsaved = state.unsaved.entry(chat_id).or_insert(seq);
            *unsaved = (*unsaved).max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_move_forward_and_saves_are_a_second_apart() {
        let positions = Positions::default();
        let chat: Arc<str> = Arc::from("1_1_2");
        let now = Instant::now();
        assert_eq!(positions.schedule(now), None, "nothing to save");
        positions.advance([(&chat, 3), (&chat, 2)]);
        assert_eq!(positions.state().seen.get("1_1_2"), Some(&3), "never back");
        assert_eq!(positions.schedule(now), Some(Duration::ZERO), "the first save goes at once");
        positions.advance([(&chat, 4)]);
        assert_eq!(positions.schedule(now), None, "one save is scheduled already");
        assert_eq!(positions.take(now), vec![(chat.clone(), 4)]);

        positions.advance([(&chat, 5)]);
        let later = now + Duration::from_millis(300);
        assert_eq!(positions.schedule(later), Some(Duration::from_millis(700)));
        let taken = positions.take(later);
        positions.restore(taken);
        positions.advance([(&chat, 6)]);
        assert_eq!(positions.take(later), vec![(chat, 6)], "a failed save is retried, never moving back");
    }

    #[test]
    fn frames_already_written_are_dropped() {
        use tokio_tungstenite::tungstenite::Message;
        let positions = Positions::default();
        let chat: Arc<str> = Arc::from("1_1_2");
        positions.advance([(&chat, 5)]);
        let frame = |mark: Option<i64>| Queued { frame: Message::text("x"), mark: mark.map(|seq| (chat.clone(), seq)) };
        let mut queued = vec![frame(Some(5)), frame(None), frame(Some(6))];
        positions.drop_written(&mut queued);
        let marks: Vec<Option<i64>> = queued.iter().map(|q| q.mark.as_ref().map(|m| m.1)).collect();
        assert_eq!(marks, [None, Some(6)]);
    }
}
