//! `join_group`: joins a room (a private one needs an invitation); replies once committed.

use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{ClientFrame, Ctx, Refusal, Step, not_stored};
use crate::frames;
use crate::metrics::Metrics;
use crate::rooms::{self, RoomError};

pub struct JoinGroup<'f> {
    /// The action's name as sent, echoed in the reply.
    action: &'f str,
    chat_id: &'f str,
}

impl<'f> JoinGroup<'f> {
    pub fn parse(frame: &'f ClientFrame<'_>) -> Result<JoinGroup<'f>, Refusal> {
        Ok(JoinGroup { action: &frame.action, chat_id: frame.require_chat_id()? })
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        if !ctx.directory.room_exists(self.chat_id) {
            return Err(Refusal::new(404, format!("unknown room: {}", self.chat_id)));
        }
        let (store, directory, metrics) = (ctx.store.clone(), ctx.directory.clone(), ctx.metrics.clone());
        let (action, chat_id, uid) = (self.action.to_string(), self.chat_id.to_string(), ctx.uid);
        Ok(Step::Later(Box::pin(async move {
            let result = rooms::join(&store, &directory, &chat_id, uid).await;
            room_reply(&metrics, action, chat_id, result)
        })))
    }
}

/// The reply to a membership change (join or leave) once it is committed or failed.
pub(super) fn room_reply(
    metrics: &Metrics,
    action: String,
    chat_id: String,
    result: Result<(), RoomError>,
) -> Utf8Bytes {
    match result {
        Ok(()) => frames::json(json!({"action": action, "code": 200, "chat_id": chat_id})),
        Err(RoomError::NoSuchRoom) => frames::error(404, &format!("unknown room: {chat_id}"), None),
        Err(RoomError::NoSuchUser(uid)) => frames::error(404, &format!("unknown user: {uid}"), None),
        Err(RoomError::Forbidden(why)) => {
            metrics.error(403);
            frames::error(403, &why, None)
        }
        Err(RoomError::Store(e)) => not_stored(metrics, &e),
    }
}
