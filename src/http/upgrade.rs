//! The WebSocket handshake on `/`: Origin, token and per-user cap checked here, the `101`
//! answered here, and the upgraded connection handed to a session (`handoff`).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::envelope::{ApiError, Body, envelope};
use super::origin;
use crate::app::App;
use crate::handoff::{Handoff, Peer, StartSession};
use crate::metrics::RefusedReason;

/// Answers `GET /?access_token=…`: 403 before the upgrade for a refused Origin, 401 for a bad
/// token, 429 when the user has `--max-connections-per-user` sessions already, else 101, with
/// the upgraded connection handed to `start` (a session, which keeps the connection's place
/// under the caps).
pub async fn upgrade(app: Arc<App>, mut req: Request<Incoming>, peer: Peer, start: StartSession) -> Response<Body> {
    let ip = peer.addr.ip();
    let headers = req.headers();
    // A page of another site must not ride a user's token (cross-site WebSocket hijacking).
    if origin::check(&app.config.allowed_origins, headers) == origin::Verdict::Refused {
        tracing::warn!(%ip, origin = ?headers.get(header::ORIGIN), "websocket refused: Origin not allowed");
        app.metrics.refused(RefusedReason::Origin);
        return refusal(ApiError::forbidden("this Origin may not open a WebSocket here (see --allowed-origins)"));
    }
    let wants_upgrade =
        headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let (true, Some(accept)) = (wants_upgrade, key) else {
        return refusal(ApiError::bad_request(
            "this endpoint takes a WebSocket upgrade: ws://HOST:PORT/?access_token=JWT",
        ));
    };
    let query: Vec<(String, String)> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let Some(token) = param("access_token").filter(|t| !t.is_empty()) else {
        tracing::warn!(%ip, "websocket refused: no access token");
        app.metrics.refused(RefusedReason::Auth);
        return refusal(ApiError::unauthorized("an access_token is required"));
    };
    let Some(claims) = app.authenticate_fresh(token).await else {
        // Never the token itself: it may be a valid one of someone else's, mistyped.
        tracing::warn!(%ip, "websocket refused: invalid, expired or revoked token");
        app.metrics.refused(RefusedReason::Auth);
        return refusal(ApiError::unauthorized("the access token is invalid, expired or revoked"));
    };
    let Some(slot) = app.registry.reserve_session(claims.uid, app.config.max_connections_per_user) else {
        tracing::warn!(%ip, uid = claims.uid, limit = app.config.max_connections_per_user, "websocket refused: per-user connection cap");
        app.metrics.refused(RefusedReason::PerUser);
        return refusal(ApiError::new(
            429,
            format!("you have {} connections open already; close one first", app.config.max_connections_per_user),
        ));
    };
    let device: String = param("device").or_else(|| param("fromSource")).unwrap_or("web").chars().take(32).collect();

    let upgrade = hyper::upgrade::on(&mut req);
    start(app, Handoff { upgrade, claims, device, peer, slot });

    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn refusal(e: ApiError) -> Response<Body> {
    envelope(e.code, &e.message, serde_json::Value::Null)
}
