//! Actions that change stored state and reply once it is committed: join_group, leave_group,
//! read.

use serde_json::json;

use super::{ClientFrame, Ctx, Refusal, Step};
use crate::frames;
use crate::rooms::{self, RoomError};

fn room_reply(
    app: &crate::app::App,
    action: String,
    chat_id: String,
    result: Result<(), RoomError>,
) -> tokio_tungstenite::tungstenite::Utf8Bytes {
    match result {
        Ok(()) => frames::json(json!({"action": action, "code": 200, "chat_id": chat_id})),
        Err(RoomError::NoSuchRoom) => frames::error(404, &format!("unknown room: {chat_id}"), None),
        Err(RoomError::NoSuchUser(uid)) => frames::error(404, &format!("unknown user: {uid}"), None),
        Err(RoomError::Forbidden(why)) => {
            app.metrics.error(403);
            frames::error(403, &why, None)
        }
        Err(RoomError::Store(e)) => super::not_stored(&app.metrics, &e),
    }
}

pub fn join(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let chat_id = frame.chat_id.as_deref().ok_or_else(|| Refusal::new(400, "chat_id is required"))?.to_string();
    if !ctx.app.directory.room_exists(&chat_id) {
        return Err(Refusal::new(404, format!("unknown room: {chat_id}")));
    }
    let (app, uid, action) = (ctx.app.clone(), ctx.uid, frame.action.to_string());
    Ok(Step::Later(Box::pin(async move {
        let result = rooms::join(&app, &chat_id, uid).await;
        room_reply(&app, action, chat_id, result)
    })))
}

pub fn leave(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let chat_id = frame.chat_id.as_deref().ok_or_else(|| Refusal::new(400, "chat_id is required"))?.to_string();
    if !ctx.app.directory.room_exists(&chat_id) {
        return Err(Refusal::new(404, format!("unknown room: {chat_id}")));
    }
    let (app, uid, action) = (ctx.app.clone(), ctx.uid, frame.action.to_string());
    Ok(Step::Later(Box::pin(async move {
        let result = rooms::leave(&app, &chat_id, uid).await;
        room_reply(&app, action, chat_id, result)
    })))
}

/// Moves the user's read position forward (never back, never past the newest message) and
/// tells the user's other connections.
pub fn read(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let chat_id = frame.chat_id.as_deref().ok_or_else(|| Refusal::new(400, "chat_id is required"))?.to_string();
    let seq = frame.seq.ok_or_else(|| Refusal::new(400, "seq is required"))?;
    let seq = i64::try_from(seq).map_err(|_| Refusal::new(400, "seq is too large"))?;
    let (app, conn, uid) = (ctx.app.clone(), ctx.conn.clone(), ctx.uid);
    Ok(Step::Later(Box::pin(async move {
        let moved = app.store.mark_read(uid, chat_id.clone(), seq).await;
        match moved {
            Ok(Some(read_seq)) => {
                let frame = frames::json(json!({"action": "read", "code": 200, "chat_id": chat_id, "seq": read_seq}));
                app.registry.for_each_of(uid, |other| {
                    if other.id != conn.id {
                        other.send(&frame);
                    }
                });
                frame
            }
            Ok(None) => {
                app.metrics.error(403);
                frames::error(403, &format!("not a participant of {chat_id}"), None)
            }
            Err(e) => super::not_stored(&app.metrics, &e),
        }
    })))
}
