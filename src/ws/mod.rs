//! WebSocket: one session task per upgraded connection, started by `start` with what the
//! router's handshake (`http::upgrade`) accepted.

mod cork;
mod liveness;
mod positions;
mod rate;
mod session;

use std::sync::Arc;

use hyper_util::rt::TokioIo;

use self::cork::Cork;
use crate::app::App;
use crate::handoff::Handoff;

/// Spawns the session of an accepted upgrade. Called before the `101` is answered, so that the
/// socket is corked in time for the `101`, `connected` and the sync to leave in one segment.
pub fn start(app: Arc<App>, handoff: Handoff) {
    let Handoff { upgrade, claims, device, peer, slot } = handoff;
    let cork = Cork::new(peer.socket);
    let ip = peer.addr.ip();
    let tracker = app.sessions.clone();
    tracker.spawn(async move {
        // Held for the session's life: both are given back when it ends.
        let _places = (slot, peer.permit);
        match upgrade.await {
            Ok(upgraded) => session::run(app, TokioIo::new(upgraded), claims, device, ip, cork).await,
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
}
