//! `leave_group` (and the old `exit_group`): leaves a room; replies once committed.

use super::join_group::change_membership;
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
        let uid = ctx.uid;
        change_membership(ctx, self.action, self.chat_id, move |store, directory, read_through, chat_id| async move {
            rooms::leave(&store, &directory, &read_through, &chat_id, uid).await
        })
    }
}
