//! Catch-up: repairs what NATS did not bring (a node that crashed between commit and publish,
//! an outage of NATS, a dropped publish). It is periodic: every `poll` (1 s) it asks the
//! store which conversations changed since the last poll (minus a margin for clocks and slow
//! commits), and each that the store has beyond what this node delivered gets a gap; every
//! gap that waited the reorderer's hold (150 ms) without NATS filling it is fetched from the
//! store and offered like any message. So a live recipient is at most poll + hold (plus the
//! fetch) behind the committed state: about 1.2 s.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cluster::sequencer::Sequencer;
use crate::domain::StoredMessage;
use crate::store::StoreResult;

/// The two reads the catch-up needs from the shared store.
#[async_trait::async_trait]
pub trait ClusterStore: Send + Sync {
    /// The messages of `chat_id` with `after_seq < seq <= up_to_seq`, in seq order.
    async fn messages_between(&self, chat_id: &str, after_seq: i64, up_to_seq: i64) -> StoreResult<Vec<StoredMessage>>;

    /// Each conversation with a message committed at or after `ms` (Unix milliseconds),
    /// with its last seq.
    async fn conversations_changed_since(&self, ms: i64) -> StoreResult<Vec<(String, i64)>>;
}

#[derive(Debug, Clone, Copy)]
pub struct CatchUpSettings {
    /// How often the store is asked what changed.
    pub poll: Duration,
    /// How far back of the previous poll each poll looks: covers the nodes' clock skew and a
    /// commit that became visible after the poll that should have seen it.
    pub margin: Duration,
    /// How often due gaps and settled conversations are looked for (well under the hold; a
    /// conversation first seen past seq 1 waits its settling time plus up to this).
    pub gap_check: Duration,
    /// A conversation this node has not seen at all: at most this many of its last messages,
    /// those committed inside the poll's window, are delivered.
    pub unseen_window: i64,
}

impl Default for CatchUpSettings {
    fn default() -> CatchUpSettings {
        CatchUpSettings {
            poll: Duration::from_secs(1),
            margin: Duration::from_secs(2),
            gap_check: Duration::from_millis(25),
            unseen_window: 64,
        }
    }
}

/// The running catch-up task; stopped when dropped.
pub struct CatchUp {
    task: JoinHandle<()>,
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CatchUp {
    /// Starts the task on the current runtime.
    pub fn spawn(store: Arc<dyn ClusterStore>, sequencer: Arc<Sequencer>, settings: CatchUpSettings) -> CatchUp {
        CatchUp { task: tokio::spawn(run(store, sequencer, settings)) }
    }
}

async fn run(store: Arc<dyn ClusterStore>, sequencer: Arc<Sequencer>, settings: CatchUpSettings) {
    let margin_ms = settings.margin.as_millis() as i64;
    // Where the next poll looks from: the start of the last poll that succeeded, less the
    // margin, so that a failed poll's window is looked at again.
    let mut since = crate::now_ms() - margin_ms;
    let mut gaps = tokio::time::interval(settings.gap_check);
    gaps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = tokio::time::interval(settings.poll);
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gaps.tick() => fill_gaps(store.as_ref(), &sequencer).await,
            _ = polls.tick() => {
                let started = crate::now_ms();
                if poll(store.as_ref(), &sequencer, since, settings.unseen_window).await {
                    since = started - margin_ms;
                }
            }
        }
    }
}

/// Releases the conversations done settling, then fetches and offers every due gap.
async fn fill_gaps(store: &dyn ClusterStore, sequencer: &Sequencer) {
    sequencer.settle();
    for gap in sequencer.due_gaps() {
        match store.messages_between(&gap.chat_id, gap.after_seq, gap.up_to_seq).await {
            Ok(messages) => sequencer.offer(messages),
            // Reported again after another hold.
            Err(e) => tracing::warn!(chat_id = %gap.chat_id, "cannot fetch a gap of the conversation: {e}"),
        }
    }
}

/// One poll: a gap for each conversation the store has beyond this node. False when the
/// store could not answer.
async fn poll(store: &dyn ClusterStore, sequencer: &Sequencer, since: i64, unseen_window: i64) -> bool {
    let changed = match store.conversations_changed_since(since).await {
        Ok(changed) => changed,
        Err(e) => {
            tracing::warn!("catch-up: cannot ask the store what changed: {e}");
            return false;
        }
    };
    for (chat_id, last_seq) in changed {
        if sequencer.expect(&chat_id, last_seq) {
            continue;
        }
        // Never seen here (or forgotten): its messages of the window, if NATS lost them.
        let after = (last_seq - unseen_window).max(0);
        match store.messages_between(&chat_id, after, last_seq).await {
            Ok(messages) => sequencer.offer(messages.into_iter().filter(|m| m.ts >= since)),
            Err(e) => tracing::warn!(%chat_id, "catch-up: cannot fetch the conversation: {e}"),
        }
    }
    true
}
