//! `received`: a device says it has received a conversation up to a seq, so that its next sync
//! starts after it (for clients that want at-least-once delivery without marking messages read).

use serde_json::json;

use super::{ClientFrame, Ctx, Refusal, Step, not_stored};
use crate::frames;

pub struct Received<'f> {
    chat_id: &'f str,
    seq: i64,
}

impl<'f> Received<'f> {
    pub fn parse(frame: &'f ClientFrame<'_>) -> Result<Received<'f>, Refusal> {
        let (chat_id, seq) = frame.position()?;
        Ok(Received { chat_id, seq })
    }

    /// Moves the sending device's delivered position forward (never back, never past the
    /// newest message); the reply's `seq` is where this device's sync now resumes.
    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        let (store, metrics) = (ctx.store.clone(), ctx.metrics.clone());
        let (uid, device, chat_id, seq) = (ctx.uid, ctx.conn.device.to_string(), self.chat_id.to_string(), self.seq);
        Ok(Step::Later(Box::pin(async move {
            match store.receive(uid, device, chat_id.clone(), seq).await {
                Ok(Some(position)) => {
                    frames::json(json!({"action": "received", "code": 200, "chat_id": chat_id, "seq": position}))
                }
                Ok(None) => {
                    metrics.error(403);
                    frames::error(403, &format!("not a participant of {chat_id}"), None)
                }
                Err(e) => not_stored(&metrics, &e),
            }
        })))
    }
}
