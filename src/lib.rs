//! imd: an instant-messaging daemon. HTTP and WebSocket on one port, SQLite underneath.
//!
//! A message travels: `ws::session` reads a frame, `actions` checks it and turns it into a
//! `store::NewMessage`, the `store` writer commits it in a batch, and `fanout` pushes the
//! encoded frame into the `registry`'s connections' outboxes, which `ws::session` writes out.

pub mod access;
pub mod actions;
pub mod app;
pub mod auth;
pub mod bcrypt_pool;
pub mod chat_id;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn_limits;
pub mod delivery;
pub mod directory;
pub mod domain;
pub mod fanout;
pub mod frames;
pub mod fuzzing;
pub mod handoff;
pub mod http;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod passwords;
pub mod progress;
pub mod read_through;
pub mod registry;
pub mod revocations;
pub mod rooms;
pub mod rules;
pub mod server;
pub mod service;
pub mod store;
pub mod supervisor;
pub mod throttle;
pub mod unread;
pub mod usernames;
pub mod ws;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
