//! `join_group`: joins a room (a private one needs an invitation); replies once committed.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::Invalidation;

use super::{ClientFrame, Ctx, Refusal, Step, not_stored};
use crate::directory::Directory;
use crate::frames;
use crate::metrics::Metrics;
use crate::read_through::{Fact, ReadThrough};
use crate::rooms::{self, RoomError};
use crate::store::Store;

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
        let uid = ctx.uid;
        change_membership(ctx, self.action, self.chat_id, move |store, directory, read_through, chat_id| async move {
            rooms::join(&store, &directory, &read_through, &chat_id, uid).await
        })
    }
}

/// A membership change (join or leave) of a room that exists, replied to once `change` has
/// committed or failed.
pub(super) fn change_membership<Change>(
    ctx: &Ctx<'_>,
    action: &str,
    chat_id: &str,
    change: impl FnOnce(Store, Arc<Directory>, Arc<ReadThrough>, String) -> Change,
) -> Result<Step, Refusal>
where
    Change: Future<Output = Result<(), RoomError>> + Send + 'static,
{
    if !ctx.directory.room_exists(chat_id) {
        let unknown = Refusal::new(404, format!("unknown room: {chat_id}"));
        return Err(unknown.unless(Fact::Room(chat_id.to_string())));
    }
    let (metrics, action, chat_id) = (ctx.metrics.clone(), action.to_string(), chat_id.to_string());
    let committed = change(ctx.store.clone(), ctx.directory.clone(), ctx.read_through.clone(), chat_id.clone());
    let invalidate = ctx.invalidator();
    Ok(Step::Later(Box::pin(async move {
        let result = committed.await;
        if result.is_ok() {
            invalidate.confirmed(Invalidation::Room { chat_id: chat_id.clone() }).await;
        }
        room_reply(&metrics, action, chat_id, result)
    })))
}

/// The reply to a membership change (join or leave) once it is committed or failed.
fn room_reply(metrics: &Metrics, action: String, chat_id: String, result: Result<(), RoomError>) -> Utf8Bytes {
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
