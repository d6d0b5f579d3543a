//! What the HTTP router hands a WebSocket session after the upgrade handshake, so that neither
//! `http` nor `ws` names the other: the connection, the authenticated user, its places.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;

use crate::app::App;
use crate::auth::Claims;
use crate::conn_limits::ConnPermit;
use crate::registry::UserSlot;

/// The connection a request came on: the client's address, its place under the connection
/// caps (a WebSocket session keeps it) and its socket (which the session corks at the upgrade).
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub permit: Arc<ConnPermit>,
    pub socket: RawFd,
}

/// An accepted upgrade: everything a session needs, checked by the router.
pub struct Handoff {
    /// Resolves to the upgraded stream once the `101` has been written.
    pub upgrade: OnUpgrade,
    /// The user the access token names (valid and not revoked at the handshake).
    pub claims: Claims,
    pub device: String,
    pub peer: Peer,
    /// The user's place among their capped sessions, held for the session's life.
    pub slot: UserSlot,
}

/// Starts the session of an accepted upgrade, before its `101` goes out (`ws::start`). The
/// server hands it to the router, which cannot name `ws`.
pub type StartSession = fn(Arc<App>, Handoff);
