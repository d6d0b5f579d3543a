//! `service_chat` (and the old `service_user_chat`, `service_review_chat`): a customer's
//! message to a shop, or an agent's reply; `service::route` decides which.

use super::{ClientFrame, Ctx, Refusal, Step};
use crate::rules::message::Content;
use crate::service;
use crate::store::Kind;

pub struct ServiceChat<'f> {
    shop_id: Option<u64>,
    chat_id: Option<&'f str>,
    to_uid: Option<u64>,
    content: Content,
}

impl<'f> ServiceChat<'f> {
    pub fn parse(frame: &'f ClientFrame<'_>) -> Result<ServiceChat<'f>, Refusal> {
        let content = frame.content()?;
        Ok(ServiceChat { shop_id: frame.shop_id, chat_id: frame.chat_id.as_deref(), to_uid: frame.to_uid, content })
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        let routed = service::route(ctx.directory, ctx.registry, ctx.uid, self.shop_id, self.chat_id, self.to_uid)?;
        let mut message = ctx.message(Kind::Service, routed.chat_id, routed.to_uid, self.content);
        message.service = Some(routed.route);
        Ok(Step::Store(message))
    }
}
