//! Delivery's per-connection state, below both the registry and the WebSocket session: the
//! byte-bounded outbox, the count of messages awaiting their ack, and delivered positions.

mod connection;
pub mod inflight;
pub mod outbox;
pub mod positions;

pub use connection::Connection;
