//! The delivery order of this node: every committed message, local or from another node,
//! goes through one `Reorderer`, and what comes out is handed on in that order.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::cluster::reorder::{Gap, Limits, ReorderStats, Reorderer};
use crate::domain::StoredMessage;

/// Where deliverable messages go, in order. Called with the order's lock held (that is what
/// keeps two callers' messages from crossing), so it must only queue, never wait.
pub type Deliver = Arc<dyn Fn(Vec<StoredMessage>) + Send + Sync>;

pub struct Sequencer {
    order: Mutex<Reorderer>,
    deliver: Deliver,
}

impl Sequencer {
    pub fn new(limits: Limits, deliver: Deliver) -> Arc<Sequencer> {
        Arc::new(Sequencer { order: Mutex::new(Reorderer::new(limits)), deliver })
    }

    /// Offers committed messages (a local batch, a remote one, a fetched gap) and delivers
    /// whatever they make deliverable.
    pub fn offer(&self, messages: impl IntoIterator<Item = StoredMessage>) {
        let now = Instant::now();
        let mut order = self.lock();
        let mut out = Vec::new();
        for message in messages {
            out.extend(order.offer(message, now));
        }
        if !out.is_empty() {
            (self.deliver)(out);
        }
    }

    /// Delivers what the conversations done settling now release (see `Reorderer::settle`).
    pub fn settle(&self) {
        let mut order = self.lock();
        let out = order.settle(Instant::now());
        if !out.is_empty() {
            (self.deliver)(out);
        }
    }

    /// See `Reorderer::expect`.
    pub fn expect(&self, chat_id: &str, up_to_seq: i64) -> bool {
        self.lock().expect(chat_id, up_to_seq, Instant::now())
    }

    /// See `Reorderer::due_gaps`.
    pub fn due_gaps(&self) -> Vec<Gap> {
        self.lock().due_gaps(Instant::now())
    }

    pub fn delivered(&self, chat_id: &str) -> Option<i64> {
        self.lock().delivered(chat_id)
    }

    /// See `Reorderer::lag`.
    pub fn lag(&self) -> std::time::Duration {
        self.lock().lag(Instant::now())
    }

    /// Messages waiting behind gaps (for /metrics).
    pub fn held(&self) -> usize {
        self.lock().held()
    }

    pub fn stats(&self) -> ReorderStats {
        self.lock().stats()
    }

    /// The order's lock. A panic while it was held (in `deliver`) leaves the reorderer
    /// consistent, as each of its calls finishes before `deliver` runs; that call's messages
    /// count as delivered, so they are not fetched again.
    fn lock(&self) -> MutexGuard<'_, Reorderer> {
        self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
