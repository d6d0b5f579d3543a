//! What an action is applied to, and what it answers: the parts of the daemon actions use (not
//! the whole `App`), the next step for the session, and a refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::inflight::Unacked;
use crate::directory::Directory;
use crate::fanout::Origin;
use crate::frames;
use crate::metrics::Metrics;
use crate::registry::{Connection, Registry};
use crate::rules::message::Content;
use crate::store::{Kind, NewMessage, Store, StoreError};

/// What an action sees: borrowed for one frame from the daemon, and the sending connection.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub directory: &'a Arc<Directory>,
    pub registry: &'a Arc<Registry>,
    pub metrics: &'a Arc<Metrics>,
    pub conn: &'a Arc<Connection>,
    pub uid: u64,
}

impl Ctx<'_> {
    /// A checked message from this connection's user, acked to this connection once stored.
    pub fn message(&self, kind: Kind, chat_id: String, to_uid: Option<u64>, content: Content) -> NewMessage {
        NewMessage {
            kind,
            chat_id: Arc::from(chat_id),
            from_uid: self.uid,
            to_uid,
            msg_id: content.msg_id,
            msg_type: content.msg_type,
            body: content.body,
            service: None,
            ticket: Origin::Connection(Unacked::new(self.conn.clone())).ticket(),
        }
    }
}

/// What the session does with a frame.
pub enum Step {
    Reply(Utf8Bytes),
    /// Store the message; the writer acks it after the commit.
    Store(NewMessage),
    /// Reply once this finishes (a change that must be committed first). The session awaits
    /// it before reading the connection's next frame, which so sees the change.
    Later(Pin<Box<dyn Future<Output = Utf8Bytes> + Send>>),
}

/// A frame refused with an error code.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(code: u16, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }

    /// A message whose content is not valid (`rules::message`).
    pub fn invalid(message: String) -> Refusal {
        Refusal { code: 400, message }
    }
}

/// The error frame for a change that was not stored (503 or 500, see `StoreError::client_reply`).
pub fn not_stored(metrics: &Metrics, error: &StoreError) -> Utf8Bytes {
    let (code, text) = error.client_reply();
    metrics.error(code);
    frames::error(code, &text, None)
}
