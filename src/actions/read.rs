//! `read`: moves the user's read position forward (never back, never past the newest message)
//! and tells the user's other connections.

use serde_json::json;

use super::{ClientFrame, Ctx, Refusal, Step, not_stored};
use crate::cluster::Invalidation;
use crate::frames;

pub struct Read<'f> {
    chat_id: &'f str,
    seq: i64,
}

impl<'f> Read<'f> {
    pub fn parse(frame: &'f ClientFrame<'_>) -> Result<Read<'f>, Refusal> {
        let (chat_id, seq) = frame.position()?;
        Ok(Read { chat_id, seq })
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        let (store, registry, metrics) = (ctx.store.clone(), ctx.registry.clone(), ctx.metrics.clone());
        let (conn, uid, chat_id, seq) = (ctx.conn.clone(), ctx.uid, self.chat_id.to_string(), self.seq);
        let invalidate = ctx.invalidator();
        Ok(Step::Later(Box::pin(async move {
            match store.mark_read(uid, chat_id.clone(), seq).await {
                Ok(Some(read_seq)) => {
                    let frame =
                        frames::json(json!({"action": "read", "code": 200, "chat_id": chat_id, "seq": read_seq}));
                    registry.for_each_of(uid, |other| {
                        if other.id != conn.id {
                            other.send(&frame);
                        }
                    });
                    // The user's connections on other nodes get the mirror too.
                    invalidate.notify(Invalidation::ReadPosition { uid, chat_id, seq: read_seq });
                    frame
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
