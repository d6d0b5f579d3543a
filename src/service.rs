//! Customer service: which conversation a service message belongs to, and which agent of the
//! shop gets it (contract 3.4): the handling agent if online, else a random online agent who
//! then handles it, else nobody now (stored; synced to the handler, or to every agent).

use crate::chat_id::{self, ChatId};
use crate::directory::Directory;
use crate::rules::agent;
use crate::store::ServiceRoute;

/// Why a service message cannot be routed.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Neither a shop (customer) nor a conversation (agent) is named.
    NothingNamed,
    /// Someone who is not one of the shop's agents answers in this conversation.
    NotAnAgent(String),
    UnknownShop(u64),
    UnknownUser(u64),
}

/// A service message's conversation, recipient and route.
pub struct Routed {
    pub chat_id: String,
    pub to_uid: Option<u64>,
    pub route: ServiceRoute,
}

/// Routes a service message from `sender`. A conversation named by `chat_id` is trusted only
/// for the shop's agents; a customer's conversation is always `3_<shop_id>_<customer>`.
/// An agent may also name the customer with `to_uid` and `shop_id` (`service_review_chat`).
pub fn route(
    directory: &Directory,
    is_online: &dyn Fn(u64) -> bool,
    sender: u64,
    shop_id: Option<u64>,
    chat_id: Option<&str>,
    to_uid: Option<u64>,
) -> Result<Routed, RouteError> {
    let from_chat_id = match chat_id.and_then(chat_id::parse) {
        Some(ChatId::Service { shop_id, customer_uid }) => Some((shop_id, customer_uid)),
        _ => None,
    };
    let named = from_chat_id.or(shop_id.zip(to_uid));
    // An agent's reply goes by chat_id, else by shop_id and to_uid: an old client may still hold
    // a chat_id in the old service's order (`3_<customer>_<shop>`), which must not turn the
    // agent's reply into a customer message while its shop_id and to_uid name the customer.
    let replies_to = [from_chat_id, shop_id.zip(to_uid)]
        .into_iter()
        .flatten()
        .find(|&(shop, customer)| customer != sender && directory.is_agent(shop, sender));
    if let Some((shop, customer)) = replies_to {
        return agent_reply(directory, shop, customer, sender);
    }
    // Otherwise the sender is the customer: the shop comes from shop_id, or from the sender's
    // own conversation.
    match shop_id.or_else(|| named.filter(|&(_, customer)| customer == sender).map(|(shop, _)| shop)) {
        Some(shop) => customer_message(directory, is_online, shop, sender),
        None => match chat_id {
            Some(chat_id) => Err(RouteError::NotAnAgent(chat_id.to_string())),
            None => Err(RouteError::NothingNamed),
        },
    }
}

fn customer_message(
    directory: &Directory,
    is_online: &dyn Fn(u64) -> bool,
    shop_id: u64,
    customer_uid: u64,
) -> Result<Routed, RouteError> {
    let agents = directory.shop_agents(shop_id).ok_or(RouteError::UnknownShop(shop_id))?;
    let chat_id = chat_id::service(shop_id, customer_uid);
    let seen_handler = directory.handler(&chat_id);
    let choice = agent::choose(seen_handler, &agents, is_online, |n| rand::random_range(0..n));
    if let Some(agent) = choice.agent {
        // Set now, not after the commit, so the customer's next message sticks to this agent.
        directory.set_handler(&chat_id, agent);
    }
    let all_agents = if choice.all_agents { agents.to_vec() } else { Vec::new() };
    let route = ServiceRoute { shop_id, customer_uid, agent_uid: choice.agent, all_agents, seen_handler };
    Ok(Routed { chat_id, to_uid: choice.agent, route })
}

fn agent_reply(directory: &Directory, shop_id: u64, customer_uid: u64, agent_uid: u64) -> Result<Routed, RouteError> {
    if !directory.user_exists(customer_uid) {
        return Err(RouteError::UnknownUser(customer_uid));
    }
    let chat_id = chat_id::service(shop_id, customer_uid);
    directory.set_handler(&chat_id, agent_uid);
    Ok(Routed {
        chat_id,
        to_uid: Some(customer_uid),
        route: ServiceRoute {
            shop_id,
            customer_uid,
            agent_uid: Some(agent_uid),
            all_agents: Vec::new(),
            seen_handler: None,
        },
    })
}
