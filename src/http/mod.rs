//! HTTP on the WebSocket's port: hyper serves each connection, `/` is the WebSocket handshake
//! (`upgrade`, which hands the connection to a session), every other path goes to its route.

mod admin;
mod envelope;
mod message;
pub mod origin;
mod params;
mod room;
mod shop;
mod upgrade;
mod user;
mod web;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpStream;

pub use envelope::{ApiError, Body, envelope};
use envelope::{ApiResult, reply, with_body};
pub use params::Params;

use crate::app::App;
use crate::bcrypt_pool::Busy;
use crate::conn_limits::{ConnPermit, Refusal};
use crate::handoff::{Peer, StartSession};
use crate::throttle::{Outcome, Throttled};

/// Serves one TCP connection until it closes (or is upgraded to a WebSocket, whose session
/// `start` runs). A connection over a cap (`admitted` is a refusal) gets every request
/// answered 503/429 and is closed.
pub async fn serve_connection(
    app: Arc<App>,
    stream: TcpStream,
    addr: SocketAddr,
    admitted: Result<ConnPermit, Refusal>,
    start: StartSession,
) {
    let _ = stream.set_nodelay(true);
    // For the WebSocket upgrade, which corks the socket while it answers (see `ws::cork`).
    let socket = stream.as_raw_fd();
    let io = TokioIo::new(stream);
    let mut builder = http1::Builder::new();
    // hyper's timer also runs while a kept-alive connection waits for its next request head.
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(app.config.http_header_timeout.max(1)));
    let idle_timeout = Duration::from_secs(app.config.http_idle_timeout.max(1));
    let permit = match admitted {
        Ok(permit) => Arc::new(permit),
        Err(refusal) => {
            app.metrics.refused(refusal.metric());
            tracing::warn!(ip = %addr.ip(), code = refusal.code(), "connection refused: {}", refusal.message());
            builder.keep_alive(false);
            let service = service_fn(move |_req| async move {
                Ok::<_, Infallible>(envelope(refusal.code(), refusal.message(), serde_json::Value::Null))
            });
            let _ = tokio::time::timeout(idle_timeout, builder.serve_connection(io, service)).await;
            return;
        }
    };
    let peer = Peer { addr, permit, socket };
    let activity = Arc::new(Activity::default());
    let counter = activity.clone();
    let service = service_fn(move |req| {
        let (app, peer, counter) = (app.clone(), peer.clone(), counter.clone());
        async move {
            counter.started.fetch_add(1, Ordering::Relaxed);
            counter.in_flight.fetch_add(1, Ordering::Relaxed);
            let response = handle(app, req, peer, start).await;
            counter.in_flight.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    // Idle: no request in flight now and none started during the last whole timeout, so a
    // quiet connection is closed between one and two timeouts after its last request.
    let mut started_before = 0;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = tokio::time::sleep(idle_timeout) => {
                let started = activity.started.load(Ordering::Relaxed);
                if activity.in_flight.load(Ordering::Relaxed) == 0 && started == started_before {
                    // Closes an idle connection at once, or after the response in progress.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(idle_timeout, &mut conn).await;
                    return;
                }
                started_before = started;
            }
        }
    }
}

/// Requests of one connection: how many have started, how many are being answered.
#[derive(Default)]
struct Activity {
    started: AtomicUsize,
    in_flight: AtomicUsize,
}

impl From<Throttled> for ApiError {
    fn from(t: Throttled) -> Self {
        let mut e = ApiError::new(429, format!("too many failed attempts; retry in {} s", t.retry_after));
        e.retry_after = Some(t.retry_after);
        e
    }
}

impl From<Busy> for ApiError {
    fn from(_: Busy) -> Self {
        ApiError::new(503, "busy checking passwords; retry in a moment")
    }
}

/// Answers CORS preflight (`OPTIONS`, any path) and marks other answers for allowed origins.
/// Counts every answer in `imd_http_requests_total` and `imd_http_request_duration_seconds`.
async fn handle(app: Arc<App>, req: Request<Incoming>, peer: Peer, start: StartSession) -> Response<Body> {
    let started = Instant::now();
    let route = app.metrics.route_index(req.uri().path());
    let metrics = app.metrics.clone();
    let verdict = origin::check(&app.config.allowed_origins, req.headers());
    let response = if req.method() == Method::OPTIONS {
        origin::preflight(&verdict, allowed_methods(req.uri().path()))
    } else {
        let mut response = respond(app, req, peer, start).await;
        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            origin::add_cors_headers(&mut response, &verdict);
        }
        response
    };
    metrics.http_request(route, response.status().as_str(), started.elapsed());
    response
}

async fn respond(app: Arc<App>, req: Request<Incoming>, peer: Peer, start: StartSession) -> Response<Body> {
    if let Some(worker) = app.supervisor.failed() {
        return failed(&app, worker);
    }
    if let Some(page) = web::page(&req) {
        return page;
    }
    let path = req.uri().path();
    if path == "/" {
        return upgrade::upgrade(app, req, peer, start).await;
    }
    let Some((_, allowed)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return reply(Err(ApiError::not_found(format!("no such endpoint: {path}"))));
    };
    if req.method() != *allowed {
        let mut response = reply(Err(ApiError::new(405, format!("{path} takes {allowed}"))));
        // RFC 9110 requires it on a 405.
        response.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allowed.as_str()));
        return response;
    }
    let path = path.to_string();
    match path.as_str() {
        "/metrics" => {
            app.metrics.writer_queue_depth.set(i64::try_from(app.store.queue_depth()).unwrap_or(i64::MAX));
            let mut text = app.metrics.render();
            text.push_str(&crate::node::metrics(&app));
            with_body(200, "text/plain; version=0.0.4", text)
        }
        "/openapi.json" => with_body(200, "application/json", OPENAPI.to_string()),
        "/health" => match app.store.degraded() {
            Some(error) => storage_degraded(health(&app), &error),
            None => reply(Ok(health(&app))),
        },
        _ => {
            let mut params = match Params::from_request(req, app.config.max_body_bytes).await {
                Ok(params) => params,
                Err(e) => return reply(Err(e)),
            };
            params.peer = Some(peer.addr.ip());
            // Cluster mode: a caller registered (or logged in again) on another node a moment
            // ago is read into the directory here, once, before any handler checks the token.
            if let Some(token) = params.token() {
                app.authenticate_fresh(token).await;
            }
            reply(route(&app, &path, params).await)
        }
    }
}

/// The paths of `ROUTES`: the `route` labels of the HTTP metrics.
pub fn route_paths() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().map(|(path, _)| *path)
}

/// Every endpoint and the method it takes.
const ROUTES: &[(&str, Method)] = &[
    ("/user/register", Method::POST),
    ("/user/login", Method::POST),
    ("/user/logout", Method::POST),
    ("/user/me", Method::GET),
    ("/user/lookup", Method::GET),
    ("/room/create", Method::POST),
    ("/room/join", Method::POST),
    ("/room/leave", Method::POST),
    ("/room/members", Method::GET),
    ("/room/invite", Method::POST),
    ("/shop/create", Method::POST),
    ("/shop/agent/add", Method::POST),
    ("/shop/agent/remove", Method::POST),
    ("/shop/agents", Method::GET),
    ("/shop/agent/accept", Method::POST),
    ("/message/sendPublicMessage", Method::POST),
    ("/admin/user/revoke", Method::POST),
    ("/message/history", Method::GET),
    ("/message/conversations", Method::GET),
    ("/health", Method::GET),
    ("/metrics", Method::GET),
    ("/openapi.json", Method::GET),
];

/// `Allow` for `OPTIONS` on `path`: its method and OPTIONS (an unknown path: both methods).
fn allowed_methods(path: &str) -> &'static str {
    if path == "/" {
        return "GET, OPTIONS";
    }
    match ROUTES.iter().find(|(p, _)| *p == path).map(|(_, method)| method) {
        Some(&Method::GET) => "GET, OPTIONS",
        Some(&Method::POST) => "POST, OPTIONS",
        _ => "GET, POST, OPTIONS",
    }
}

/// The OpenAPI document of every route above (and `/`), served at `/openapi.json`; the tests
/// below keep the two in agreement.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn route(app: &App, path: &str, params: Params) -> ApiResult {
    match path {
        "/user/register" => {
            // A name of its own in the per-username table: guessing at registrations must not
            // lock the name's owner out of logging in.
            let name = params.get("username").map(|name| format!("register\u{0}{name}"));
            throttled(app, params.peer, name, user::register(app, params)).await
        }
        "/user/login" => {
            let name = params.get("username").map(str::to_string);
            throttled(app, params.peer, name, user::login(app, params)).await
        }
        "/user/logout" => user::logout(app, params).await,
        "/user/me" => user::me(app, params).await,
        "/user/lookup" => user::lookup(app, params).await,
        "/room/create" => room::create(app, params).await,
        "/room/join" => room::join(app, params).await,
        "/room/leave" => room::leave(app, params).await,
        "/room/members" => room::members(app, params).await,
        "/room/invite" => room::invite(app, params).await,
        "/shop/create" => shop::create(app, params).await,
        "/shop/agent/add" => shop::add_agent(app, params).await,
        "/shop/agent/remove" => shop::remove_agent(app, params).await,
        "/shop/agents" => shop::agents(app, params).await,
        "/shop/agent/accept" => shop::accept_agent(app, params).await,
        "/message/sendPublicMessage" => message::broadcast(app, params).await,
        "/admin/user/revoke" => admin::revoke_user(app, params).await,
        "/message/history" => message::history(app, params).await,
        "/message/conversations" => message::conversations(app, params).await,
        _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    }
}

/// Login and register under the throttle: 429 with Retry-After while the client's address or
/// the username (for a login, or for registering that name) is over its rate. Wrong credentials (401) and taken names (409)
/// are failures, bad input is not; a successful login clears its name's failures.
async fn throttled(
    app: &App,
    ip: Option<IpAddr>,
    name: Option<String>,
    handler: impl Future<Output = ApiResult>,
) -> ApiResult {
    if let Err(t) = app.throttle.begin(ip, name.as_deref()) {
        tracing::warn!(
            ip = ip.map(tracing::field::display),
            username = name.as_deref(),
            retry_after = t.retry_after,
            "login refused: throttled"
        );
        return Err(t.into());
    }
    let result = handler.await;
    let outcome = match &result {
        Ok(_) => Outcome::Succeeded,
        Err(e) if matches!(e.code, 401 | 409) => Outcome::Failed,
        Err(_) => Outcome::Neither,
    };
    app.throttle.settled(ip, name.as_deref(), outcome);
    result
}

/// Every request's answer once a watched worker has died, until the daemon exits (a second
/// later; see `server`): 503 with /health's fields and `"status":"failed"`.
fn failed(app: &App, worker: &str) -> Response<Body> {
    let data = json!({
        "status": "failed",
        "failed": worker,
        "pid": std::process::id(),
        "uptime_secs": app.started.elapsed().as_secs(),
        "online": app.registry.online_connections(),
    });
    envelope(503, &format!("imd is failing: the {worker} died; it exits to be restarted"), data)
}

fn health(app: &App) -> serde_json::Value {
    let mut data = json!({
        "status": "ok",
        "pid": std::process::id(),
        "uptime_secs": app.started.elapsed().as_secs(),
        "online": app.registry.online_connections(),
    });
    if let Some(cluster) = crate::node::health(app) {
        data["cluster"] = cluster;
    }
    data
}

/// `/health` while the writer's last attempt to store failed for the storage's own reasons
/// (disk full, I/O error, ...): 503, so that a monitor sees it, with the error. Back to ok
/// after the next commit.
fn storage_degraded(mut data: serde_json::Value, error: &str) -> Response<Body> {
    data["status"] = json!("degraded");
    data["storage"] = json!(error);
    envelope(503, error, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `(path, METHOD)` of every operation in docs/openapi.json.
    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let mut ops = BTreeSet::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                if method != "parameters" {
                    ops.insert((path.clone(), method.to_ascii_uppercase()));
                }
            }
        }
        ops
    }

    #[test]
    fn openapi_documents_every_route_and_nothing_else() {
        let mut routes: BTreeSet<(String, String)> =
            ROUTES.iter().map(|(path, method)| (path.to_string(), method.to_string())).collect();
        // `/` is served before ROUTES: the WebSocket upgrade.
        routes.insert(("/".to_string(), "GET".to_string()));
        let documented = documented();
        let undocumented: Vec<_> = routes.difference(&documented).collect();
        let phantom: Vec<_> = documented.difference(&routes).collect();
        assert!(undocumented.is_empty(), "routes missing from docs/openapi.json: {undocumented:?}");
        assert!(phantom.is_empty(), "docs/openapi.json documents what the router does not serve: {phantom:?}");
    }

    #[test]
    fn openapi_version_is_the_crate_version() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    /// Every `$ref` points at something the document defines.
    #[test]
    fn openapi_refs_resolve() {
        fn walk(value: &serde_json::Value, doc: &serde_json::Value, bad: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').unwrap_or(target);
                        if doc.pointer(pointer).is_none() {
                            bad.push(target.clone());
                        }
                    }
                    map.values().for_each(|v| walk(v, doc, bad));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, doc, bad)),
                _ => {}
            }
        }
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let mut bad = Vec::new();
        walk(&doc, &doc, &mut bad);
        assert!(bad.is_empty(), "unresolved $ref: {bad:?}");
    }
}
