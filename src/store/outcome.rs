//! What a store's writer emits once a batch is committed: each message's outcome, in commit
//! order, with the ticket it came with. Every backend emits the same types.

use std::time::Instant;

use tokio::sync::mpsc;

use super::StoreError;
use crate::domain::{StoredMessage, Ticket};

/// A message the writer has committed (or found to be a resend), ready for delivery.
pub struct Committed {
    pub message: StoredMessage,
    pub duplicate: bool,
    pub ticket: Ticket,
    /// When its batch committed (for `imd_fanout_lag_seconds`).
    pub committed_at: Instant,
}

/// What the writer emits after each batch, in commit order: every message's outcome with the
/// ticket it came with. Whoever reads them (delivery) resolves the tickets; the store does not.
pub enum Outcome {
    Committed(Committed),
    Refused { ticket: Ticket, msg_id: Option<Box<str>>, error: StoreError },
}

/// Where the writer sends its batches of outcomes; bounded by whoever made the channel.
pub type OutcomeSender = mpsc::Sender<Vec<Outcome>>;
