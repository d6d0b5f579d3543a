//! `received`: a device says it has received a conversation up to a seq, so that its next sync
//! starts after it (for clients that want at-least-once delivery without marking messages read).

use serde_json::json;

use super::{ClientFrame, Ctx, Refusal, Step};
use crate::frames;

/// Moves the sending device's delivered position forward (never back, never past the newest
/// message); the reply's `seq` is where this device's sync now resumes.
pub fn received(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let chat_id = frame.chat_id.as_deref().ok_or_else(|| Refusal::new(400, "chat_id is required"))?.to_string();
    let seq = frame.seq.ok_or_else(|| Refusal::new(400, "seq is required"))?;
    let seq = i64::try_from(seq).map_err(|_| Refusal::new(400, "seq is too large"))?;
    let (app, uid, device) = (ctx.app.clone(), ctx.uid, ctx.conn.device.to_string());
    Ok(Step::Later(Box::pin(async move {
        match app.store.receive(uid, device, chat_id.clone(), seq).await {
            Ok(Some(position)) => {
                frames::json(json!({"action": "received", "code": 200, "chat_id": chat_id, "seq": position}))
            }
            Ok(None) => {
                app.metrics.error(403);
                frames::error(403, &format!("not a participant of {chat_id}"), None)
            }
            Err(e) => super::not_stored(&app.metrics, &e),
        }
    })))
}
