//! HTTP on the WebSocket's port: hyper serves each connection, `/` with an upgrade goes to
//! `ws`, every other path to its route.

mod admin;
mod envelope;
mod message;
pub mod origin;
mod params;
mod room;
mod shop;
mod user;

use std::convert::Infallible;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

pub use envelope::{ApiError, Body, envelope};
use envelope::{ApiResult, reply, with_body};
pub use params::Params;

use crate::app::App;

/// Serves one TCP connection until it closes (or is upgraded to a WebSocket).
pub async fn serve_connection(app: Arc<App>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // For the WebSocket upgrade, which corks the socket while it answers (see `ws::cork`).
    let socket = stream.as_raw_fd();
    let io = TokioIo::new(stream);
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(app, req, socket).await) }
    });
    let _ = http1::Builder::new().serve_connection(io, service).with_upgrades().await;
}

/// Answers CORS preflight (`OPTIONS`, any path) and marks other answers for allowed origins.
async fn handle(app: Arc<App>, req: Request<Incoming>, socket: RawFd) -> Response<Body> {
    let verdict = origin::check(&app.config.allowed_origins, req.headers());
    if req.method() == Method::OPTIONS {
        return origin::preflight(&verdict);
    }
    let mut response = respond(app, req, socket).await;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        origin::add_cors_headers(&mut response, &verdict);
    }
    response
}

async fn respond(app: Arc<App>, req: Request<Incoming>, socket: RawFd) -> Response<Body> {
    if let Some(worker) = app.supervisor.failed() {
        return failed(&app, worker);
    }
    let path = req.uri().path();
    if path == "/" {
        return crate::ws::upgrade(app, req, socket);
    }
    let Some((_, allowed)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return reply(Err(ApiError::not_found(format!("no such endpoint: {path}"))));
    };
    if req.method() != *allowed {
        return reply(Err(ApiError::new(405, format!("{path} takes {allowed}"))));
    }
    let path = path.to_string();
    match path.as_str() {
        "/metrics" => with_body(200, "text/plain; version=0.0.4", app.metrics.render()),
        "/health" => match app.store.degraded() {
            Some(error) => storage_degraded(health(&app), &error),
            None => reply(Ok(health(&app))),
        },
        _ => {
            let params = match Params::from_request(req).await {
                Ok(params) => params,
                Err(e) => return reply(Err(e)),
            };
            reply(route(&app, &path, params).await)
        }
    }
}

/// Every endpoint and the method it takes.
const ROUTES: &[(&str, Method)] = &[
    ("/user/register", Method::POST),
    ("/user/login", Method::POST),
    ("/user/logout", Method::POST),
    ("/user/me", Method::GET),
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
];

async fn route(app: &App, path: &str, params: Params) -> ApiResult {
    match path {
        "/user/register" => user::register(app, params).await,
        "/user/login" => user::login(app, params).await,
        "/user/logout" => user::logout(app, params).await,
        "/user/me" => user::me(app, params).await,
        "/room/create" => room::create(app, params).await,
        "/room/join" => room::join(app, params).await,
        "/room/leave" => room::leave(app, params).await,
        "/room/members" => room::members(app, params),
        "/room/invite" => room::invite(app, params).await,
        "/shop/create" => shop::create(app, params).await,
        "/shop/agent/add" => shop::add_agent(app, params).await,
        "/shop/agent/remove" => shop::remove_agent(app, params).await,
        "/shop/agents" => shop::agents(app, params),
        "/shop/agent/accept" => shop::accept_agent(app, params).await,
        "/message/sendPublicMessage" => message::broadcast(app, params).await,
        "/admin/user/revoke" => admin::revoke_user(app, params).await,
        "/message/history" => message::history(app, params).await,
        "/message/conversations" => message::conversations(app, params).await,
        _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    }
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
    json!({
        "status": "ok",
        "pid": std::process::id(),
        "uptime_secs": app.started.elapsed().as_secs(),
        "online": app.registry.online_connections(),
    })
}

/// `/health` while the writer's last attempt to store failed for the storage's own reasons
/// (disk full, I/O error, ...): 503, so that a monitor sees it, with the error. Back to ok
/// after the next commit.
fn storage_degraded(mut data: serde_json::Value, error: &str) -> Response<Body> {
    data["status"] = json!("degraded");
    data["storage"] = json!(error);
    envelope(503, error, data)
}
