//! Server-side keepalive: which ping tick pings the peer and which one gives up on it.
//!
//! A peer is dropped only when a ping it was sent went unanswered (nothing at all heard since)
//! for a whole tick. Comparing "time since last heard" with two intervals instead would
//! depend on timer jitter: a pong that arrives a moment after a late tick looks like silence.

use std::time::{Duration, Instant};

pub struct Liveness {
    interval: Duration,
    last_heard: Instant,
    ping_sent: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Heard from recently: nothing to do.
    Quiet,
    /// Send a WebSocket ping now.
    Ping,
    /// The previous ping went unanswered: drop the connection.
    Dead,
}

impl Liveness {
    pub fn new(interval: Duration, now: Instant) -> Liveness {
        Liveness { interval, last_heard: now, ping_sent: None }
    }

    /// How often `on_tick` should run.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Anything arrived from the peer (a frame, a pong, a close).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    pub fn on_tick(&mut self, now: Instant) -> Tick {
        if let Some(sent) = self.ping_sent
            && self.last_heard < sent
        {
            return Tick::Dead;
        }
        // Half an interval of silence is enough to ask: a peer heard just before a tick is
        // pinged at the next one, so a silent peer is dropped within about three intervals.
        if now.saturating_duration_since(self.last_heard) >= self.interval / 2 {
            self.ping_sent = Some(now);
            Tick::Ping
        } else {
            self.ping_sent = None;
            Tick::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn an_answered_ping_never_drops_even_when_ticks_run_late() {
        let start = Instant::now();
        let mut live = Liveness::new(SEC, start);
        // Ticks late by up to 0.4 s, the pong 0.3 s after each ping.
        let mut at = start;
        for late in [0, 400, 0, 300, 100, 0, 400] {
            at += SEC + Duration::from_millis(late);
            assert_ne!(live.on_tick(at), Tick::Dead, "tick at {:?}", at - start);
            live.heard(at + Duration::from_millis(300));
        }
    }

    #[test]
    fn a_silent_peer_is_pinged_then_dropped_at_the_next_tick() {
        let start = Instant::now();
        let mut live = Liveness::new(SEC, start);
        assert_eq!(live.on_tick(start + SEC), Tick::Ping);
        assert_eq!(live.on_tick(start + 2 * SEC), Tick::Dead);
    }

    #[test]
    fn a_busy_peer_is_not_pinged() {
        let start = Instant::now();
        let mut live = Liveness::new(SEC, start);
        live.heard(start + Duration::from_millis(900));
        assert_eq!(live.on_tick(start + SEC), Tick::Quiet);
        // Silent from then on: pinged at the next tick, dropped at the one after.
        assert_eq!(live.on_tick(start + 2 * SEC), Tick::Ping);
        assert_eq!(live.on_tick(start + 3 * SEC), Tick::Dead);
    }

    #[test]
    fn a_frame_after_the_ping_counts_as_an_answer() {
        let start = Instant::now();
        let mut live = Liveness::new(SEC, start);
        assert_eq!(live.on_tick(start + SEC), Tick::Ping);
        live.heard(start + Duration::from_millis(1999));
        assert_ne!(live.on_tick(start + 2 * SEC), Tick::Dead);
    }
}
