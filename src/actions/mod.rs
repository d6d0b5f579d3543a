//! Client actions: the table from a frame's `action` to its handler. A handler checks the
//! frame and says what to do next: reply at once, store a message, or reply once a change is
//! committed.

mod chat;
mod frame;
mod membership;
pub(crate) mod msg_check;
mod received;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use frame::ClientFrame;

use crate::app::App;
use crate::frames;
use crate::registry::Connection;
use crate::store::{Kind, NewMessage};

/// What a handler sees: the daemon and the sending connection.
pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub conn: &'a Arc<Connection>,
    pub uid: u64,
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
}

type Handler = fn(&Ctx<'_>, &ClientFrame<'_>) -> Result<Step, Refusal>;

/// Every action: its name, the `chat_type` it implies (a frame may omit it), its handler.
/// The old service's names map onto the same handlers.
const ACTIONS: &[(&str, Option<Kind>, Handler)] = &[
    ("single_chat", Some(Kind::Single), chat::single),
    ("group_chat", Some(Kind::Group), chat::group),
    ("service_chat", Some(Kind::Service), chat::service),
    ("service_user_chat", Some(Kind::Service), chat::service),
    ("service_review_chat", Some(Kind::Service), chat::service),
    ("join_group", Some(Kind::Group), membership::join),
    ("leave_group", Some(Kind::Group), membership::leave),
    ("exit_group", Some(Kind::Group), membership::leave),
    ("read", None, membership::read),
    ("received", None, received::received),
    ("ping", None, ping),
];

/// Handles one text frame. Every outcome, refusals included, is a step with a reply.
pub fn handle(ctx: &Ctx<'_>, text: &str) -> Step {
    let frame: ClientFrame<'_> = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => return Step::Reply(refuse(ctx, 400, &format!("bad frame: {e}"), frame::msg_id_of(text).as_deref())),
    };
    let Some(&(_, kind, handler)) = ACTIONS.iter().find(|(name, _, _)| *name == frame.action) else {
        let message = format!("unknown action: {}", frame.action);
        return Step::Reply(refuse(ctx, 404, &message, frame.msg_id.as_deref()));
    };
    if let (Some(given), Some(kind)) = (frame.chat_type, kind)
        && given != kind as u64
    {
        let message = format!("chat_type {given} does not match action {}", frame.action);
        return Step::Reply(refuse(ctx, 400, &message, frame.msg_id.as_deref()));
    }
    match handler(ctx, &frame) {
        Ok(step) => step,
        Err(refusal) => Step::Reply(refuse(ctx, refusal.code, &refusal.message, frame.msg_id.as_deref())),
    }
}

fn refuse(ctx: &Ctx<'_>, code: u16, message: &str, msg_id: Option<&str>) -> Utf8Bytes {
    ctx.app.metrics.error(code);
    frames::error(code, message, msg_id)
}

/// An error frame for `text`, carrying its msg_id if it has one (for refusals made before a
/// frame is handled: rate limit, expired token).
pub fn refusal(text: &str, code: u16, message: &str) -> Utf8Bytes {
    frames::error(code, message, frame::msg_id_of(text).as_deref())
}

fn ping(_: &Ctx<'_>, _: &ClientFrame<'_>) -> Result<Step, Refusal> {
    Ok(Step::Reply(Utf8Bytes::from_static(r#"{"action":"pong","code":200}"#)))
}

/// The error frame for a change that was not stored (503 or 500, see `StoreError::client_reply`).
fn not_stored(metrics: &crate::metrics::Metrics, error: &crate::store::StoreError) -> Utf8Bytes {
    let (code, text) = error.client_reply();
    metrics.error(code);
    frames::error(code, &text, None)
}
