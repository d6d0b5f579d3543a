//! `single_chat`: a message to one user, in the conversation of the two (`1_<a>_<b>`).

use super::{ClientFrame, Ctx, Refusal, Step};
use crate::chat_id;
use crate::read_through::Fact;
use crate::rules::message::Content;
use crate::store::Kind;

pub struct SingleChat {
    to_uid: u64,
    content: Content,
}

impl SingleChat {
    pub fn parse(frame: &ClientFrame<'_>) -> Result<SingleChat, Refusal> {
        let content = frame.content()?;
        let to_uid = frame.to_uid.ok_or_else(|| Refusal::new(400, "to_uid is required"))?;
        Ok(SingleChat { to_uid, content })
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        let to = self.to_uid;
        if to == ctx.uid {
            return Err(Refusal::new(400, "cannot send a message to yourself"));
        }
        if !ctx.directory.user_exists(to) {
            return Err(Refusal::new(404, format!("unknown user: {to}")).unless(Fact::user(to)));
        }
        Ok(Step::Store(ctx.message(Kind::Single, chat_id::single(ctx.uid, to), Some(to), self.content)))
    }
}
