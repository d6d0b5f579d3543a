//! A connection's messages in the store whose ack (or error) is not queued yet, so that its
//! other replies (pong, refusals, join/leave/read) can wait their turn behind those acks.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::Connection;

/// The count of a connection's unanswered messages.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// Signalled when the count drops to zero.
    settled: Notify,
}

impl InFlight {
    /// True when every message handed to the store has had its answer queued.
    pub fn is_settled(&self) -> bool {
        // Acquire: pairs with the release in `end`, so the answers queued before it are seen.
        self.count.load(Ordering::Acquire) == 0
    }

    /// Waits until `is_settled`.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero right after it still wakes us.
            notified.as_mut().enable();
            if self.is_settled() {
                return;
            }
            notified.await;
        }
    }

    fn begin(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }
}

/// A message's claim on its connection's order: counted while it lives. Whoever answers the
/// message queues the ack or error first and drops this after; a message dropped unanswered
/// (the store gone) ends its claim too, so nothing waits for it forever.
pub struct Unacked(Arc<Connection>);

impl Unacked {
    pub fn new(conn: Arc<Connection>) -> Unacked {
        conn.in_flight.begin();
        Unacked(conn)
    }
}

impl Deref for Unacked {
    type Target = Arc<Connection>;

    fn deref(&self) -> &Arc<Connection> {
        &self.0
    }
}

impl Drop for Unacked {
    fn drop(&mut self) {
        self.0.in_flight.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settles_when_the_last_claim_is_dropped() {
        let conn = Arc::new(Connection::new(1, 1, "web", 1024));
        assert!(conn.in_flight.is_settled());
        let (first, second) = (Unacked::new(conn.clone()), Unacked::new(conn.clone()));
        assert!(!conn.in_flight.is_settled());
        let waiter = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.in_flight.settled().await })
        };
        // Let the waiter park on the notification, so that the drops below must wake it.
        tokio::task::yield_now().await;
        drop(first);
        assert!(!conn.in_flight.is_settled(), "one message is still unanswered");
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter wakes")
            .expect("the waiter ran");
        assert!(conn.in_flight.is_settled());
    }
}
