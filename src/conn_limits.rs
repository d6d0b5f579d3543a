//! Caps on open TCP connections (HTTP and WebSocket alike): in total and per client IP. The
//! newest connection over a cap is refused; the ones already open are never touched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why a connection was refused: the HTTP answer it gets (503 over the total, 429 per IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    pub fn code(self) -> u16 {
        match self {
            Refusal::Total => 503,
            Refusal::PerIp => 429,
        }
    }

    /// Its reason in `imd_connections_refused_total`.
    pub fn metric(self) -> crate::metrics::RefusedReason {
        match self {
            Refusal::Total => crate::metrics::RefusedReason::Total,
            Refusal::PerIp => crate::metrics::RefusedReason::PerIp,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Total => "too many connections to this server; retry later",
            Refusal::PerIp => "too many connections from your address; close some and retry",
        }
    }
}

pub struct ConnLimits {
    max_total: usize,
    /// 0: no per-IP cap.
    max_per_ip: usize,
    total: AtomicUsize,
    /// Open connections per IP; an address leaves the map with its last connection.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection's place until dropped (when the connection, or the WebSocket session
/// it became, ends).
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits { max_total, max_per_ip, total: AtomicUsize::new(0), per_ip: Mutex::new(HashMap::new()) })
    }

    /// Counts a new connection from `ip` in, unless it is over a cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(Refusal::Total);
        }
        let count = per_ip.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *count >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnPermit { limits: self.clone(), ip })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_over_a_cap_is_refused_and_a_close_frees_a_place() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::PerIp));
        let _third = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Refusal::Total));
        drop(first);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn zero_per_ip_means_no_per_ip_cap() {
        let limits = ConnLimits::new(10, 0);
        let a: IpAddr = "::1".parse().unwrap();
        let permits: Vec<_> = (0..10).map(|_| limits.admit(a).unwrap()).collect();
        assert_eq!(limits.admit(a).err(), Some(Refusal::Total));
        drop(permits);
        assert!(limits.per_ip.lock().unwrap().is_empty(), "addresses leave with their last connection");
    }
}
