//! Test harness: starts the real `imd` binary on a free loopback port with a temporary
//! database, and talks to it over real HTTP and WebSocket connections.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const BIN: &str = env!("CARGO_BIN_EXE_imd");

/// A running daemon in the foreground, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub db: PathBuf,
    /// Keeps the temporary directory (and so the database) alive for the server's life.
    pub dir: Option<tempfile::TempDir>,
    pub extra_args: Vec<String>,
}

impl Server {
    /// Starts a server with a fresh temporary database.
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// Starts a server with a fresh temporary database and extra command-line options.
    pub async fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("imd.db");
        let mut server = Server::start_on_db(&db, extra).await;
        server.dir = Some(dir);
        server
    }

    /// Starts a server on an existing database path (for restart tests).
    pub async fn start_on_db(db: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["start", "0", "--host", "127.0.0.1", "--bcrypt-cost", "4"])
            .arg("--db")
            .arg(db)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn imd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    return rest.trim().parse::<SocketAddr>().expect("listen address");
                }
            }
            panic!("imd exited before listening");
        })
        .await
        .expect("imd did not start listening in time");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            addr,
            db: db.to_path_buf(),
            dir: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// SIGKILL, as a crash would.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("wait");
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid") as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("server did not exit after SIGTERM").expect("wait")
    }

    /// Starts a new server on the same database (after kill9 or terminate).
    pub async fn restart(mut self) -> Server {
        let dir = self.dir.take();
        let extra: Vec<String> = self.extra_args.clone();
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let mut server = Server::start_on_db(&self.db.clone(), &extra).await;
        server.dir = dir;
        server
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        http(self.addr, "GET", path, None, token).await
    }

    pub async fn post_json(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let body = ("application/json", body.to_string());
        http(self.addr, "POST", path, Some(body), token).await
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)], token: Option<&str>) -> (u16, Value) {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        http(self.addr, "POST", path, Some(("application/x-www-form-urlencoded", body)), token).await
    }

    /// Registers a user and returns (uid, token).
    pub async fn register(&self, username: &str) -> (u64, String) {
        let (status, body) =
            self.post_json("/user/register", json!({"username": username, "password": "secret-pw"}), None).await;
        assert_eq!(status, 200, "register {username}: {body}");
        let data = &body["data"];
        (data["uid"].as_u64().expect("uid"), data["access_token"].as_str().expect("token").to_string())
    }

    /// Opens a WebSocket and consumes `connected` .. `sync_done`; returns the socket and the
    /// synced messages.
    pub async fn connect(&self, token: &str) -> (Ws, Vec<Value>) {
        self.connect_device(token, "web").await
    }

    pub async fn connect_device(&self, token: &str, device: &str) -> (Ws, Vec<Value>) {
        let mut ws = Ws::connect(self.addr, &format!("/?access_token={token}&device={device}"))
            .await
            .expect("websocket upgrade");
        let connected = ws.recv().await;
        assert_eq!(connected["action"], "connected", "first frame: {connected}");
        let mut synced = Vec::new();
        loop {
            let frame = ws.recv().await;
            if frame["action"] == "sync_done" {
                assert_eq!(frame["count"].as_u64(), Some(synced.len() as u64), "sync_done count");
                return (ws, synced);
            }
            synced.push(frame);
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns (status, JSON body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
    token: Option<&str>,
) -> (u16, Value) {
    let (status, text) = http_raw(addr, method, path, body, token).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (status, value)
}

/// One HTTP/1.1 request; returns (status, body text).
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
    token: Option<&str>,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some((content_type, text)) => {
            req = req.header("content-type", content_type);
            Full::new(Bytes::from(text))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.expect("HTTP timeout").expect("HTTP");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A WebSocket client that speaks JSON text frames.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects to `path` (e.g. `/?access_token=...`); Err carries the HTTP status of a refusal.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, u16> {
        let url = format!("ws://{addr}{path}");
        match tokio_tungstenite::connect_async(url).await {
            Ok((stream, _)) => Ok(Ws { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket connect: {e}"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::text(frame.to_string())).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.stream.send(msg).await.expect("ws send");
    }

    /// Next JSON text frame (WebSocket pings are answered by the client library).
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("no frame within the timeout")
    }

    /// Next JSON text frame within `within`, or None on timeout.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("server frame is JSON"));
                }
                Some(Ok(Message::Close(frame))) => panic!("connection closed by server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("ws error: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// Waits for the next frame whose `action` is `action`, skipping others.
    pub async fn recv_action(&mut self, action: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["action"] == action {
                return frame;
            }
        }
    }

    /// Waits until the server closes the connection; returns the close code (None if the
    /// stream ended without a close frame).
    pub async fn recv_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await.expect("no close within the timeout") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a frame and returns the reply (`ack`, `error`, or the action's own reply).
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        loop {
            let reply = self.recv().await;
            if reply.get("code").is_some() {
                return reply;
            }
        }
    }

    /// Asserts that nothing is queued for this connection: sends `ping` and requires the very
    /// next frame to be its `pong`. The server writes every frame for a connection through one
    /// ordered queue, so anything delivered before the ping would come first.
    pub async fn expect_nothing_pending(&mut self) {
        self.send(json!({"action": "ping"})).await;
        let next = self.recv().await;
        assert_eq!(next["action"], "pong", "expected nothing pending, got {next}");
    }
}
