//! `group_chat`: a message to a room the sender is a member of.

use super::{ClientFrame, Ctx, Refusal, Step};
use crate::read_through::Fact;
use crate::rules::message::Content;
use crate::store::Kind;

pub struct GroupChat<'f> {
    chat_id: &'f str,
    content: Content,
}

impl<'f> GroupChat<'f> {
    pub fn parse(frame: &'f ClientFrame<'_>) -> Result<GroupChat<'f>, Refusal> {
        let content = frame.content()?;
        Ok(GroupChat { chat_id: frame.require_chat_id()?, content })
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        let chat_id = self.chat_id;
        // Cluster mode: a refusal is checked against the store once (`Refusal::unless`), in
        // case the room or the join comes from another node a moment ago.
        if !ctx.directory.room_exists(chat_id) {
            let unknown = Refusal::new(404, format!("unknown room: {chat_id}"));
            return Err(unknown.unless(Fact::Member(chat_id.to_string(), ctx.uid)));
        }
        if !ctx.directory.is_member(chat_id, ctx.uid) {
            let outsider = Refusal::new(403, format!("not a member of {chat_id}"));
            return Err(outsider.unless(Fact::Member(chat_id.to_string(), ctx.uid)));
        }
        Ok(Step::Store(ctx.message(Kind::Group, chat_id.to_string(), None, self.content)))
    }
}
