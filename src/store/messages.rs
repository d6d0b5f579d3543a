//! The message types that travel from an action through the writer to the fan-out.

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::StoreResult;
use crate::delivery::inflight::Unacked;

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
}

/// Who is waiting for the outcome of a message.
pub enum Origin {
    /// A WebSocket connection: it gets the ack, the user's other connections the mirror. Its
    /// later replies wait until this is dropped, so drop it only after queuing the answer.
    Connection(Unacked),
    /// An HTTP request (broadcast): it gets the stored ids and the number of connections reached.
    Http(oneshot::Sender<StoreResult<Accepted>>),
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
    pub origin: Origin,
}

/// A message as stored: what the fan-out and sync encode into frames.
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
