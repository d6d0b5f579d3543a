//! One open connection as delivery sees it: where its frames queue, its unanswered messages,
//! how far it has received each conversation, and how to ask its session to close.

use std::sync::{Arc, OnceLock};

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::inflight::InFlight;
use super::outbox::Outbox;
use super::positions::Positions;

/// One open WebSocket connection (a device of a user).
pub struct Connection {
    pub id: u64,
    pub uid: u64,
    pub device: Box<str>,
    pub outbox: Outbox,
    /// Its messages in the store not answered yet: its other replies wait behind them.
    pub in_flight: InFlight,
    /// How far this connection has received each conversation (kept in memory, saved in
    /// coalesced writes).
    pub positions: Positions,
    /// Cancelled to make the session close with `closing`'s code and reason.
    pub kicked: CancellationToken,
    closing: OnceLock<(u16, &'static str)>,
}

impl Connection {
    /// Connection `id` of user `uid`'s `device`, its outbox bounded to `outbox_bytes`.
    pub fn new(id: u64, uid: u64, device: &str, outbox_bytes: usize) -> Connection {
        Connection {
            id,
            uid,
            device: device.into(),
            outbox: Outbox::new(outbox_bytes),
            in_flight: InFlight::default(),
            positions: Positions::default(),
            kicked: CancellationToken::new(),
            closing: OnceLock::new(),
        }
    }

    /// Asks the session to close with `code` and `reason` (the first request wins).
    pub fn kick(&self, code: u16, reason: &'static str) {
        let _ = self.closing.set((code, reason));
        self.kicked.cancel();
    }

    /// The code and reason the session was asked to close with, once kicked.
    pub fn closing(&self) -> Option<(u16, &'static str)> {
        self.closing.get().copied()
    }

    /// Queues a frame for this connection; false if it is gone or overflowed.
    pub fn send(&self, frame: &Utf8Bytes) -> bool {
        self.outbox.push(frame)
    }

    /// Queues the frame of message `seq` of `chat_id`: once written to the socket, the
    /// device has received it.
    pub fn send_message(&self, frame: &Utf8Bytes, chat_id: &Arc<str>, seq: i64) -> bool {
        self.outbox.push_marked(frame, Some((chat_id.clone(), seq)))
    }
}
