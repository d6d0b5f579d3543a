//! `service_chat` (and the old `service_user_chat`, `service_review_chat`): a customer's
//! message to a shop, or an agent's reply; `service::route` decides which.

use super::{ClientFrame, Ctx, Refusal, Step};
use crate::chat_id::{self, ChatId};
use crate::read_through::Fact;
use crate::rules::message::Content;
use crate::service::{self, RouteError};
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
        let routed =
            service::route(ctx.directory, &|uid| ctx.is_online(uid), ctx.uid, self.shop_id, self.chat_id, self.to_uid)
                .map_err(|error| refusal(ctx.uid, error))?;
        let mut message = ctx.message(Kind::Service, routed.chat_id, routed.to_uid, self.content);
        message.service = Some(routed.route);
        Ok(Step::Store(message))
    }
}

/// The error frame's code and text for a message of `sender` that cannot be routed, and what
/// the refusal rests on (cluster mode: checked against the store once before it stands).
fn refusal(sender: u64, error: RouteError) -> Refusal {
    match error {
        RouteError::NothingNamed => Refusal::new(400, "shop_id (customer) or chat_id (agent) is required"),
        RouteError::NotAnAgent(chat_id) => {
            let refused = Refusal::new(403, format!("only the shop's agents may reply in {chat_id}"));
            match chat_id::parse(&chat_id) {
                Some(ChatId::Service { shop_id, .. }) => refused.unless(Fact::Agent(shop_id, sender)),
                _ => refused,
            }
        }
        RouteError::UnknownShop(shop_id) => {
            Refusal::new(404, format!("unknown shop: {shop_id}")).unless(Fact::Shop(shop_id))
        }
        RouteError::UnknownUser(uid) => Refusal::new(404, format!("unknown user: {uid}")).unless(Fact::user(uid)),
    }
}
