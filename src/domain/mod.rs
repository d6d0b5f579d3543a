//! The domain: the types every layer shares (kinds, messages, tickets). It imports nothing
//! from the crate above it, so the store and delivery can both depend on it.

pub mod message;

pub use message::{Accepted, Kind, NewMessage, ServiceRoute, StoredMessage, Ticket};
