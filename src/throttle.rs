//! Login and register throttling: failures per username and per client IP, each at most N a
//! minute (a generic cell rate: N at once, then one every 60/N s). Over it: 429 + Retry-After.
//! In cluster mode the names' failures and clearings of the other nodes count here too
//! (`failed_elsewhere`, `succeeded_elsewhere`); the addresses' stay per node.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered per table; beyond, recovered entries are dropped first, then new keys go
/// uncounted (the per-IP table still applies), so memory stays bounded under a name spray.
const MAX_KEYS: usize = 100_000;
/// Usernames are keyed on at most this many characters, lowercased.
const NAME_KEY_CHARS: usize = 64;

/// One table of "theoretical arrival times": a key is over its rate while its time is more
/// than a window ahead of now.
struct Cells<K> {
    per_minute: u32,
    cells: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Cells<K> {
    fn new(per_minute: u32) -> Self {
        Cells { per_minute, cells: Mutex::new(HashMap::new()) }
    }

    fn interval(&self) -> Duration {
        WINDOW / self.per_minute.max(1)
    }

    /// None if one more failure fits; else how long until it does.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let tat = *cells.get(key)?;
        // The next failure would push the time to tat + interval; it fits within a window.
        let limit = now + WINDOW;
        let next = tat.max(now) + self.interval();
        (next > limit).then(|| next - limit)
    }

    fn failed(&self, key: &K, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if cells.len() >= MAX_KEYS && !cells.contains_key(key) {
            cells.retain(|_, tat| *tat > now);
            if cells.len() >= MAX_KEYS {
                return;
            }
        }
        let tat = cells.get(key).copied().unwrap_or(now).max(now);
        cells.insert(key.clone(), tat + self.interval());
    }

    /// Gives back one failure counted ahead (the attempt turned out not to be one).
    fn refund(&self, key: &K) {
        if self.per_minute == 0 {
            return;
        }
        let interval = self.interval();
        if let Some(tat) = self.cells.lock().unwrap_or_else(|e| e.into_inner()).get_mut(key) {
            *tat = tat.checked_sub(interval).unwrap_or(*tat);
        }
    }

    /// Forgets `key`'s failures; whether it had more counted than the one attempt being
    /// settled (which `begin` counted ahead).
    fn clear(&self, key: &K, now: Instant) -> bool {
        let removed = self.cells.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        removed.is_some_and(|tat| tat.checked_sub(self.interval()).is_some_and(|before| before > now))
    }
}

/// Over the rate: retry after this many seconds (429 with `Retry-After`).
#[derive(Debug, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: u64,
}

pub struct Throttle {
    by_name: Cells<String>,
    by_ip: Cells<IpAddr>,
}

impl Throttle {
    /// `per_user` failed logins per username and `per_ip` failures per address each minute;
    /// 0 turns that limit off.
    pub fn new(per_user: u32, per_ip: u32) -> Throttle {
        Throttle { by_name: Cells::new(per_user), by_ip: Cells::new(per_ip) }
    }

    /// Lets an attempt go ahead, or Throttled while the address or the name is over its rate.
    /// The name's failure is counted at once (so a flood of one name's attempts waiting for
    /// bcrypt cannot slip past its limit); the address's only once `settled` says it failed
    /// (so that one address may register or log in many accounts at once). Then call
    /// `settled` with the outcome.
    pub fn begin(&self, ip: Option<IpAddr>, name: Option<&str>) -> Result<(), Throttled> {
        let now = Instant::now();
        let name = name.map(name_key);
        let by_ip = ip.and_then(|ip| self.by_ip.wait(&ip, now));
        let by_name = name.as_ref().and_then(|name| self.by_name.wait(name, now));
        if let Some(wait) = by_ip.max(by_name) {
            // Round up: a client that waits this long will fit.
            return Err(Throttled { retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) });
        }
        if let Some(name) = &name {
            self.by_name.failed(name, now);
        }
        Ok(())
    }

    /// The outcome of a begun attempt: a failure is counted against the address (the name's
    /// is already); otherwise the name's is given back, and a success clears the name's
    /// failures (its owner knows the password). Returns whether a success cleared failures
    /// (in cluster mode the other nodes are then told to clear theirs).
    pub fn settled(&self, ip: Option<IpAddr>, name: Option<&str>, outcome: Outcome) -> bool {
        let name = name.map(name_key);
        match outcome {
            Outcome::Failed => {
                if let Some(ip) = ip {
                    self.by_ip.failed(&ip, Instant::now());
                }
                false
            }
            Outcome::Succeeded => name.is_some_and(|name| self.by_name.clear(&name, Instant::now())),
            Outcome::Neither => {
                name.iter().for_each(|name| self.by_name.refund(name));
                false
            }
        }
    }

    /// Another cluster node counted a failure of `name`: it counts here too, so that the
    /// limit holds across the nodes together.
    pub fn failed_elsewhere(&self, name: &str) {
        self.by_name.failed(&name_key(name), Instant::now());
    }

    /// A login under `name` succeeded on another cluster node: its failures are forgotten.
    pub fn succeeded_elsewhere(&self, name: &str) {
        self.by_name.clear(&name_key(name), Instant::now());
    }
}

/// How a throttled attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Wrong credentials, or a registration's name taken: counted.
    Failed,
    /// Anything else (bad input, busy): not counted.
    Neither,
}

fn name_key(name: &str) -> String {
    name.chars().take(NAME_KEY_CHARS).flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_failures_fit_then_the_next_waits() {
        let cells = Cells::<u32>::new(3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(cells.wait(&1, now), None);
            cells.failed(&1, now);
        }
        let wait = cells.wait(&1, now).expect("the fourth waits");
        assert_eq!(wait, Duration::from_secs(20), "one interval (60 s / 3)");
        assert_eq!(cells.wait(&1, now + wait), None, "after the wait one more fits");
        assert_eq!(cells.wait(&2, now), None, "other keys are not affected");
    }

    #[test]
    fn zero_means_off_and_success_clears_the_name() {
        let throttle = Throttle::new(1, 0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        throttle.begin(Some(ip), Some("Alice")).unwrap();
        throttle.settled(Some(ip), Some("Alice"), Outcome::Failed);
        assert!(throttle.begin(Some(ip), Some("alice")).is_err(), "names are keyed case-insensitively");
        throttle.begin(Some(ip), Some("bob")).unwrap();
        throttle.settled(Some(ip), Some("bob"), Outcome::Succeeded);
        throttle.settled(Some(ip), Some("ALICE"), Outcome::Succeeded);
        assert!(throttle.begin(Some(ip), Some("alice")).is_ok(), "a success clears the name");
    }

    #[test]
    fn a_names_attempts_in_flight_count_until_settled() {
        let throttle = Throttle::new(2, 100);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        throttle.begin(Some(ip), Some("a")).unwrap();
        throttle.begin(Some(ip), Some("a")).unwrap();
        assert!(throttle.begin(Some(ip), Some("a")).is_err(), "two unsettled attempts fill the name's rate");
        throttle.settled(Some(ip), Some("a"), Outcome::Neither);
        assert!(throttle.begin(Some(ip), Some("a")).is_ok(), "an attempt given back frees its place");
    }

    #[test]
    fn failures_elsewhere_share_the_names_limit() {
        let throttle = Throttle::new(3, 100);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        throttle.begin(Some(ip), Some("carol")).unwrap();
        assert!(!throttle.settled(Some(ip), Some("carol"), Outcome::Failed), "a failure clears nothing");
        throttle.failed_elsewhere("Carol");
        throttle.failed_elsewhere("CAROL");
        assert!(throttle.begin(Some(ip), Some("carol")).is_err(), "one here and two elsewhere: three");
        assert!(throttle.begin(Some(ip), Some("dave")).is_ok(), "other names are not affected");
        throttle.succeeded_elsewhere("carol");
        assert!(throttle.begin(Some(ip), Some("carol")).is_ok(), "a success elsewhere clears the name");
        // The attempt itself was counted at begin: alone, it is no failure to tell of.
        assert!(!throttle.settled(Some(ip), Some("carol"), Outcome::Succeeded), "no failures: nothing to tell");
        throttle.failed_elsewhere("carol");
        throttle.begin(Some(ip), Some("carol")).unwrap();
        assert!(throttle.settled(Some(ip), Some("carol"), Outcome::Succeeded), "failures cleared: told");
        // Off: nothing is counted, from here or elsewhere.
        let off = Throttle::new(0, 0);
        (0..10).for_each(|_| off.failed_elsewhere("x"));
        assert!(off.begin(Some(ip), Some("x")).is_ok());
        assert!(!off.settled(Some(ip), Some("x"), Outcome::Succeeded));
    }

    #[test]
    fn an_address_counts_failures_only() {
        let throttle = Throttle::new(100, 1);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..5 {
            throttle.begin(Some(ip), None).unwrap();
        }
        for _ in 0..5 {
            throttle.settled(Some(ip), None, Outcome::Succeeded);
        }
        throttle.begin(Some(ip), None).unwrap();
        throttle.settled(Some(ip), None, Outcome::Failed);
        assert!(throttle.begin(Some(ip), None).is_err());
    }
}
