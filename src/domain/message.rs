//! The message types that travel from an action through the store to delivery.

use std::any::Any;
use std::sync::Arc;

use serde_json::value::RawValue;

/// The kind of a conversation, as the `chat_type` of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    System = 0,
    Single = 1,
    Group = 2,
    Service = 3,
}

impl Kind {
    /// The `action` of the frame that carries a message of this kind.
    pub fn action(self) -> &'static str {
        match self {
            Kind::System => "public_message",
            Kind::Single => "single_chat",
            Kind::Group => "group_chat",
            Kind::Service => "service_chat",
        }
    }
}

/// Routing facts of a customer-service message, decided by `service` before it is stored.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    pub shop_id: u64,
    pub customer_uid: u64,
    /// The agent this message goes to (the replying agent for an agent's message).
    pub agent_uid: Option<u64>,
    /// With no agent handling the conversation yet: every agent of the shop, who all get it
    /// through sync.
    pub all_agents: Vec<u64>,
    /// The handler the routing node knew when it chose `agent_uid` (customer messages). A
    /// store shared by several nodes keeps the handler it holds when another node changed it
    /// meanwhile, so that one conversation never gets two agents.
    pub seen_handler: Option<u64>,
}

/// Who waits for a message's outcome, opaque to the store: delivery makes it (from a
/// connection or an HTTP waiter) and resolves it again once the store has answered. The store
/// only carries it, so it needs to know nothing of connections.
pub struct Ticket(Box<dyn Any + Send>);

impl Ticket {
    pub fn new<T: Any + Send>(waiter: T) -> Ticket {
        Ticket(Box::new(waiter))
    }

    /// The waiter put in by `new`, or the ticket back if it holds something else.
    pub fn into_inner<T: Any>(self) -> Result<T, Ticket> {
        self.0.downcast::<T>().map(|waiter| *waiter).map_err(Ticket)
    }
}

/// A message on its way into the store.
pub struct NewMessage {
    pub kind: Kind,
    pub chat_id: Arc<str>,
    pub from_uid: u64,
    pub to_uid: Option<u64>,
    pub msg_id: Option<Box<str>>,
    pub msg_type: Box<str>,
    /// The `msg` value (a JSON string or object), stored and sent as is.
    pub body: Box<RawValue>,
    pub service: Option<ServiceRoute>,
    /// Who waits for the outcome (see `Ticket`).
    pub ticket: Ticket,
}

/// A message as stored: what delivery and sync encode into frames.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: i64,
    pub kind: Kind,
    pub chat_id: Arc<str>,
    pub seq: i64,
    pub from_uid: u64,
    pub to_uid: Option<u64>,
    pub msg_id: Option<Box<str>>,
    pub msg_type: Box<str>,
    pub body: Box<RawValue>,
    pub ts: i64,
    pub shop_id: Option<u64>,
    pub agent_uid: Option<u64>,
}

/// The reply to an HTTP-originated message.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub id: i64,
    pub seq: i64,
    pub delivered: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_gives_back_only_what_was_put_in() {
        let ticket = Ticket::new(7u32);
        let ticket = ticket.into_inner::<String>().expect_err("not a String");
        assert_eq!(ticket.into_inner::<u32>().ok(), Some(7));
    }
}
