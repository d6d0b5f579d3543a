//! Pure rules of the domain: plain functions over plain data, no I/O, unit-tested beside them.
//! The actions and HTTP handlers gather the facts (directory, registry) and ask these.

pub mod agent;
pub mod message;
pub mod msg_check;
pub mod reader;
