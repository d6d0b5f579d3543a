//! `leave_group` (and the old `exit_group`): leaves a room; replies once committed.

use super::join_group::room_reply;
use super::{ClientFrame, Ctx, Refusal, Step};
use crate::rooms;

pub struct LeaveGroup<'f> {
    /// The action's name as sent, echoed in the reply.
    action: &'f str,
    chat_id: &'f str,
}

impl<'f> LeaveGroup<'f> {
    pub fn parse(frame: &'f ClientFrame<'_>) -> Result<LeaveGroup<'f>, Refusal> {
        Ok(LeaveGroup { action: &frame.action, chat_id: frame.require_chat_id()? })
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        if !ctx.directory.room_exists(self.chat_id) {
            return Err(Refusal::new(404, format!("unknown room: {}", self.chat_id)));
        }
        let (store, directory, metrics) = (ctx.store.clone(), ctx.directory.clone(), ctx.metrics.clone());
        let (action, chat_id, uid) = (self.action.to_string(), self.chat_id.to_string(), ctx.uid);
        Ok(Step::Later(Box::pin(async move {
            let result = rooms::leave(&store, &directory, &chat_id, uid).await;
            room_reply(&metrics, action, chat_id, result)
        })))
    }
}
