//! Per-connection rate limit: a token bucket of `burst` frames refilled at `rate` per second.

use std::time::Instant;

pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// `rate` 0 turns the limit off.
    pub fn new(rate: u32, burst: u32) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    /// Takes one token; false when the connection is over its limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 3);
        assert!((0..3).all(|_| limit.allow(start)));
        assert!(!limit.allow(start), "the burst is spent");
        assert!(limit.allow(start + Duration::from_millis(100)), "one token back after 1/10 s");
        assert!(!limit.allow(start + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut limit = RateLimit::new(0, 1);
        assert!((0..1000).all(|_| limit.allow(Instant::now())));
    }
}
