//! Test harness: starts the real `imd` binary on a free loopback port with a temporary
//! database, and talks to it over real HTTP and WebSocket connections.
#![allow(dead_code)]

pub mod nats;
pub mod pg_instance;
pub mod process;
pub mod shared_pg;
pub mod source;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// With `IMD_TEST_BACKEND=cluster`: the other node and the bus joining them (this server is
    /// node 0). Declared before `pg`, so the nodes stop before their database is dropped.
    pub cluster: Option<ClusterPeers>,
    /// With `IMD_TEST_BACKEND=postgres` or `cluster`: the server's own database on the shared
    /// PostgreSQL (`db` is then its URL), dropped after the server.
    pub pg: Option<shared_pg::SharedPgDatabase>,
}

/// Nodes a cluster server has besides node 0 (the `Server` itself), and how requests are
/// spread over all of them.
pub struct ClusterPeers {
    /// Nodes 1.., on the same database, prefix and NATS as node 0.
    pub nodes: Vec<Server>,
    /// Counts the requests and connections spread round robin over the nodes.
    next: AtomicUsize,
    /// The test's own nats-server when the machine's (127.0.0.1:4222) is not there; dropped
    /// after the nodes (fields drop in order).
    own_nats: Option<nats::NatsServer>,
}

/// How many nodes `IMD_TEST_BACKEND=cluster` starts for each server.
pub const CLUSTER_NODES: usize = 2;

/// The machine's NATS, which cluster servers share, each with a subject prefix of its own.
const MACHINE_NATS_PORT: u16 = 4222;

/// Whether servers run on PostgreSQL (`IMD_TEST_BACKEND=postgres`) instead of a temporary
/// SQLite file, so that the same tests check both backends.
pub fn on_postgres() -> bool {
    std::env::var("IMD_TEST_BACKEND").is_ok_and(|backend| backend == "postgres")
}

/// Whether each server is a cluster of [`CLUSTER_NODES`] nodes on one PostgreSQL database,
/// joined over NATS (`IMD_TEST_BACKEND=cluster`), with requests and connections alternating
/// between the nodes.
pub fn on_cluster() -> bool {
    std::env::var("IMD_TEST_BACKEND").is_ok_and(|backend| backend == "cluster")
}

impl Server {
    /// Starts a server with a fresh temporary database.
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// Starts a server with a fresh database and extra command-line options: a temporary
    /// SQLite file, or a new PostgreSQL database under `IMD_TEST_BACKEND=postgres`.
    pub async fn start_with(extra: &[&str]) -> Server {
        if on_cluster() {
            return Server::start_cluster_with(extra).await;
        }
        Server::start_single_with(extra).await
    }

    /// Starts one server whatever the backend under test (PostgreSQL for `cluster` too): for
    /// tests that by nature watch one process.
    pub async fn start_single_with(extra: &[&str]) -> Server {
        if on_postgres() || on_cluster() {
            let pg = shared_pg::SharedPgDatabase::create()
                .await
                .expect("IMD_TEST_BACKEND=postgres, but the shared PostgreSQL cannot be reached");
            let mut server = Server::start_on_db(Path::new(&pg.url()), extra).await;
            server.pg = Some(pg);
            return server;
        }
        Server::start_sqlite_with(extra).await
    }

    /// [`CLUSTER_NODES`] nodes on a fresh database of the shared PostgreSQL, joined over the
    /// machine's NATS (or one of the test's own) under a prefix of their own; returns once
    /// every node's /health lists them all.
    async fn start_cluster_with(extra: &[&str]) -> Server {
        let pg = shared_pg::SharedPgDatabase::create()
            .await
            .expect("IMD_TEST_BACKEND=cluster, but the shared PostgreSQL cannot be reached");
        let own_nats = if process::port_accepts(MACHINE_NATS_PORT).await {
            None
        } else {
            Some(nats::NatsServer::start().await.expect("IMD_TEST_BACKEND=cluster, but no NATS can be started"))
        };
        let nats_url =
            own_nats.as_ref().map_or_else(|| format!("nats://127.0.0.1:{MACHINE_NATS_PORT}"), nats::NatsServer::url);
        let prefix = format!("imdt.c{}_{:08x}", std::process::id(), rand::random::<u32>());
        let db = pg.url();
        let mut nodes = Vec::new();
        for i in 0..CLUSTER_NODES {
            let node_id = format!("n{i}");
            let mut args: Vec<&str> = extra.to_vec();
            args.extend(["--nats", &nats_url, "--cluster-prefix", &prefix, "--node-id", &node_id]);
            nodes.push(Server::start_on_db(Path::new(&db), &args).await);
        }
        let mut server = nodes.remove(0);
        server.cluster = Some(ClusterPeers { nodes, next: AtomicUsize::new(0), own_nats });
        server.pg = Some(pg);
        server.wait_cluster_joined().await;
        server
    }

    /// Waits (bounded by [`WAIT`]) until every node's /health lists every node.
    async fn wait_cluster_joined(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        for addr in self.node_addrs() {
            loop {
                let (_, body) = http(addr, "GET", "/health", None, None).await;
                let nodes = body["data"]["cluster"]["nodes"].as_array().map(Vec::len);
                if nodes == Some(CLUSTER_NODES) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "node {addr} never saw the whole cluster: {body}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Every node: this one alone, or node 0 and then the cluster's others.
    pub fn nodes(&self) -> Vec<&Server> {
        let others = self.cluster.iter().flat_map(|c| c.nodes.iter());
        std::iter::once(self).chain(others).collect()
    }

    /// The address of every node (see [`Server::nodes`]).
    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        self.nodes().iter().map(|node| node.addr).collect()
    }

    /// The node the next request or connection goes to: round robin over a cluster's nodes,
    /// so that two users of one test land on different nodes; always `addr` on one node.
    pub fn next_addr(&self) -> SocketAddr {
        match &self.cluster {
            Some(cluster) => {
                let n = cluster.next.fetch_add(1, Ordering::Relaxed) % (cluster.nodes.len() + 1);
                if n == 0 { self.addr } else { cluster.nodes[n - 1].addr }
            }
            None => self.addr,
        }
    }

    /// Starts a server on a temporary SQLite file whatever the backend under test: for tests
    /// that open the file themselves (`imd user …`, rusqlite).
    pub async fn start_sqlite_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("imd.db");
        let mut server = Server::start_on_db(&db, extra).await;
        server.dir = Some(dir);
        server
    }

    /// Starts a server on an existing database path (for restart tests).
    pub async fn start_on_db(db: &Path, extra: &[&str]) -> Server {
        let mut child = imd_start(db).args(extra).spawn().expect("spawn imd");
        let addr = listening_address(&mut child).await;
        Server {
            child,
            addr,
            db: db.to_path_buf(),
            dir: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            cluster: None,
            pg: None,
        }
    }

    /// SIGKILL, as a crash would (every node of a cluster).
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("wait");
        if let Some(cluster) = &mut self.cluster {
            for node in &mut cluster.nodes {
                Box::pin(node.kill9()).await;
            }
        }
    }

    /// SIGTERM and wait for the exit status (of every node of a cluster: the first that is not
    /// a success, else node 0's).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid") as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("server did not exit after SIGTERM")
            .expect("wait");
        if let Some(cluster) = &mut self.cluster {
            for node in &mut cluster.nodes {
                let node_status = Box::pin(node.terminate()).await;
                if status.success() {
                    status = node_status;
                }
            }
        }
        status
    }

    /// Starts a new server on the same database (after kill9 or terminate): every node of a
    /// cluster, with the same options, prefix and node ids, joined again.
    pub async fn restart(mut self) -> Server {
        let dir = self.dir.take();
        let pg = self.pg.take();
        let cluster = self.cluster.take();
        let extra: Vec<String> = self.extra_args.clone();
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let mut server = Server::start_on_db(&self.db.clone(), &extra).await;
        server.dir = dir;
        server.pg = pg;
        if let Some(cluster) = cluster {
            let mut nodes = Vec::new();
            for node in cluster.nodes {
                nodes.push(Box::pin(node.restart()).await);
            }
            server.cluster = Some(ClusterPeers { nodes, next: AtomicUsize::new(0), own_nats: cluster.own_nats });
            server.wait_cluster_joined().await;
        }
        server
    }

    /// `GET path` on the next node ([`Server::next_addr`]).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        http(self.next_addr(), "GET", path, None, token).await
    }

    /// `POST path` with a JSON body, on the next node ([`Server::next_addr`]).
    pub async fn post_json(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let body = ("application/json", body.to_string());
        http(self.next_addr(), "POST", path, Some(body), token).await
    }

    /// `POST path` with a form body, on the next node ([`Server::next_addr`]).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)], token: Option<&str>) -> (u16, Value) {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        http(self.next_addr(), "POST", path, Some(("application/x-www-form-urlencoded", body)), token).await
    }

    /// The Prometheus text of `GET /metrics` (of node 0: a node counts only its own work).
    pub async fn metrics(&self) -> String {
        let (status, text) = http_raw(self.addr, "GET", "/metrics", None, None).await;
        assert_eq!(status, 200, "/metrics: {text}");
        text
    }

    /// Registers a user and returns (uid, token).
    pub async fn register(&self, username: &str) -> (u64, String) {
        let (status, body) =
            self.post_json("/user/register", json!({"username": username, "password": "secret-pw"}), None).await;
        assert_eq!(status, 200, "register {username}: {body}");
        let data = &body["data"];
        (data["uid"].as_u64().expect("uid"), data["access_token"].as_str().expect("token").to_string())
    }

    /// Logs in with the password [`Server::register`] uses and returns the new access token.
    pub async fn login(&self, username: &str) -> String {
        let (status, body) = login(self, username, "secret-pw").await;
        let data = ok(status, &body, "login");
        data["access_token"].as_str().expect("access_token").to_string()
    }

    /// Opens a WebSocket (on the next node, [`Server::next_addr`]) and consumes `connected` ..
    /// `sync_done`; returns the socket and the synced messages.
    pub async fn connect(&self, token: &str) -> (Ws, Vec<Value>) {
        self.connect_device(token, "web").await
    }

    pub async fn connect_device(&self, token: &str, device: &str) -> (Ws, Vec<Value>) {
        let mut ws = Ws::connect(self.next_addr(), &format!("/?access_token={token}&device={device}"))
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

/// `imd start` on a free loopback port with the database `db` and a fast bcrypt, its stdout
/// piped (for [`listening_address`]), killed when dropped; callers add options and variables.
pub fn imd_start(db: &Path) -> Command {
    imd_start_on(db, 0)
}

/// [`imd_start`] on a given port (0: any free one), for a restart that clients must find again.
pub fn imd_start_on(db: &Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["start", &port.to_string(), "--host", "127.0.0.1", "--bcrypt-cost", "4", "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// Waits for the `listening on ADDR` line on a spawned imd's piped stdout and returns ADDR;
/// then keeps draining stdout, so the daemon never blocks on a full pipe.
pub async fn listening_address(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("imd's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("listening on ") {
                return rest.trim().parse::<SocketAddr>().expect("listen address");
            }
        }
        panic!("imd exited before listening");
    })
    .await
    .expect("imd did not start listening in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// One HTTP/1.1 request over a fresh connection; returns (status, JSON body).
/// Sum of all samples of `name` (with or without labels) in Prometheus text; None if absent.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

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
    let (status, _, text) = http_with_headers(addr, method, path, body, token).await;
    (status, text)
}

/// One HTTP/1.1 request; returns (status, response headers, body text).
pub async fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
    token: Option<&str>,
) -> (u16, hyper::HeaderMap, String) {
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
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
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

    /// The address of the server (in a cluster, of the node) this socket is connected to.
    pub fn server_addr(&self) -> SocketAddr {
        match self.stream.get_ref() {
            MaybeTlsStream::Plain(tcp) => tcp.peer_addr().expect("peer address of a connected socket"),
            _ => unreachable!("tests connect over plain TCP"),
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

/// Runs the `imd` binary with `args` (e.g. `user role NAME ROLE --db PATH`) to completion,
/// bounded by [`WAIT`].
pub async fn run_imd(args: &[&str]) -> std::process::Output {
    let child = Command::new(BIN).args(args).stdin(Stdio::null()).output();
    tokio::time::timeout(WAIT, child)
        .await
        .unwrap_or_else(|_| panic!("imd {args:?} did not finish in time"))
        .expect("run imd")
}

// HTTP: the response envelope and the requests several test files make.

/// Asserts a success envelope (HTTP 200, `code` 200, `message` "success", a `data` field) and
/// returns its `data`. `what` names the request in failure messages.
#[track_caller]
pub fn ok(status: u16, body: &Value, what: &str) -> Value {
    assert_eq!(status, 200, "{what}: expected HTTP 200: {body}");
    assert_eq!(body["code"], 200, "{what}: envelope code: {body}");
    assert_eq!(body["message"], "success", "{what}: envelope message: {body}");
    assert!(body.get("data").is_some(), "{what}: the envelope needs data: {body}");
    body["data"].clone()
}

/// Asserts an error envelope: HTTP status and `code` both equal to `code`, `data` present and
/// null, and a non-empty `message`. `what` names the request in failure messages.
#[track_caller]
pub fn assert_error(status: u16, body: &Value, code: u16, what: &str) {
    assert_eq!(status, code, "{what}: expected HTTP {code}: {body}");
    assert_eq!(body["code"], code, "{what}: envelope code: {body}");
    assert!(body.get("data").is_some_and(Value::is_null), "{what}: error data must be null: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: error needs a message: {body}");
}

/// `POST /user/login` with a JSON body; returns (status, body) unchecked.
pub async fn login(server: &Server, username: &str, password: &str) -> (u16, Value) {
    server.post_json("/user/login", json!({"username": username, "password": password}), None).await
}

/// `GET /message/history?chat_id=...` (the newest page, default limit); returns (status, body)
/// unchecked.
pub async fn history(server: &Server, token: &str, chat_id: &str) -> (u16, Value) {
    server.get(&format!("/message/history?chat_id={chat_id}"), Some(token)).await
}

/// Creates a room (`POST /room/create`, no name) and returns its chat_id.
pub async fn create_room(server: &Server, token: &str) -> String {
    let (status, body) = server.post_json("/room/create", json!({}), Some(token)).await;
    let data = ok(status, &body, "create room");
    data["chat_id"].as_str().expect("chat_id").to_string()
}

/// Creates a shop named `name` (`POST /shop/create`) and returns its shop_id.
pub async fn create_shop(server: &Server, token: &str, name: &str) -> u64 {
    let (status, body) = server.post_json("/shop/create", json!({"name": name}), Some(token)).await;
    let data = ok(status, &body, "create shop");
    data["shop_id"].as_u64().unwrap_or_else(|| panic!("shop_id is a number: {body}"))
}

/// `POST /shop/agent/add` (JSON body); returns (status, body) unchecked.
pub async fn add_agent(server: &Server, token: &str, shop: u64, uid: u64) -> (u16, Value) {
    server.post_json("/shop/agent/add", json!({"shop_id": shop, "uid": uid}), Some(token)).await
}

/// `POST /shop/agent/accept` as the invited agent (`token`), asserting it succeeded: only then
/// are they routed customers.
pub async fn accept_agent(server: &Server, token: &str, shop: u64) {
    let (status, body) = server.post_json("/shop/agent/accept", json!({"shop_id": shop}), Some(token)).await;
    ok(status, &body, "accept agent");
}

/// A shop ready for customer-service tests, made by [`shop_with_agents`].
pub struct ShopSetup<const N: usize> {
    /// The uid and token of the user "owner", who created the shop.
    pub owner: (u64, String),
    pub shop: u64,
    /// (uid, token) of each agent, in the order their names were given.
    pub agents: [(u64, String); N],
}

/// Registers "owner" and then a user for each of `agents`, creates the shop `shop_name` as the
/// owner and adds every agent to it, each agent accepting, asserting each step succeeded. Uids and the shop id come out
/// as if a test made the same requests itself.
pub async fn shop_with_agents<const N: usize>(server: &Server, shop_name: &str, agents: [&str; N]) -> ShopSetup<N> {
    let owner = server.register("owner").await;
    let mut registered = Vec::with_capacity(N);
    for name in agents {
        registered.push(server.register(name).await);
    }
    let shop = create_shop(server, &owner.1, shop_name).await;
    for (uid, token) in &registered {
        let (status, body) = add_agent(server, &owner.1, shop, *uid).await;
        ok(status, &body, "add agent");
        accept_agent(server, token, shop).await;
    }
    let agents = registered.try_into().unwrap_or_else(|_| unreachable!("one entry per name"));
    ShopSetup { owner, shop, agents }
}

/// The chat_id of `customer`'s customer-service conversation with `shop`: `3_<shop>_<customer>`.
pub fn service_chat_id(shop: u64, customer: u64) -> String {
    format!("3_{shop}_{customer}")
}

// Lists of users with an online flag: `members` of /room/members, `agents` of /shop/agents.

/// The uids in the list `data[list]`.
pub fn uids_in(data: &Value, list: &str) -> HashSet<u64> {
    data[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list} list: {data}"))
        .iter()
        .map(|m| m["uid"].as_u64().unwrap_or_else(|| panic!("uid in {list}: {m}")))
        .collect()
}

/// The `online` flag of `uid` in the list `data[list]`; None if `uid` is not listed.
pub fn online_in(data: &Value, list: &str, uid: u64) -> Option<bool> {
    let m = data[list].as_array()?.iter().find(|m| m["uid"] == json!(uid))?;
    Some(m["online"].as_bool().unwrap_or_else(|| panic!("online is a bool: {m}")))
}

/// Polls `GET path` (bounded by [`WAIT`]) until the online flag of `uid` in the list
/// `data[list]` is `want`: the server notices a closed socket asynchronously.
pub async fn wait_online_in(server: &Server, token: &str, path: &str, list: &str, uid: u64, want: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    // Every node must say so (a cluster's presence reaches each node moments apart): the
    // test's next request may go to any of them.
    for addr in server.node_addrs() {
        loop {
            let (status, body) = http(addr, "GET", path, None, Some(token)).await;
            let data = ok(status, &body, path);
            if online_in(&data, list, uid) == Some(want) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "online flag of {uid} in {path} never became {want}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `GET /health` (bounded by [`WAIT`]) until the server counts `want` open connections
/// (a cluster: all its nodes together, each counting its own). A session saves its
/// connection's delivered positions before it leaves the count, so after this a reconnect of
/// that device is not sent again what it was sent before.
pub async fn wait_online(server: &Server, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut online = Some(0);
        let mut bodies = Vec::new();
        for addr in server.node_addrs() {
            let (status, body) = http(addr, "GET", "/health", None, None).await;
            let data = ok(status, &body, "/health");
            online = online.zip(data["online"].as_u64()).map(|(sum, n)| sum + n);
            bodies.push(body);
        }
        if online == Some(want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "online never became {want}: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// WebSocket frames: building them, sending them, and checking replies and deliveries.

/// The chat_id of the 1:1 conversation between `a` and `b`: `1_<smaller uid>_<larger uid>`.
pub fn single_chat_id(a: u64, b: u64) -> String {
    format!("1_{}_{}", a.min(b), a.max(b))
}

/// A 1:1 text message frame (`single_chat`, chat_type 1) to `to`.
pub fn text_frame(to: u64, msg_id: &str, text: &str) -> Value {
    json!({"action": "single_chat", "chat_type": 1, "msg_type": "text", "msg_id": msg_id,
           "to_uid": to, "msg": text})
}

/// A room text message frame (`group_chat`, chat_type 2) to the room `chat_id`.
pub fn group_frame(chat_id: &str, msg_id: &str, msg: &str) -> Value {
    json!({"action": "group_chat", "chat_type": 2, "msg_type": "text", "msg_id": msg_id,
           "chat_id": chat_id, "msg": msg})
}

/// Sends a 1:1 text message (see [`text_frame`]) and asserts a successful ack of a new,
/// non-duplicate message; returns the ack.
pub async fn send_text(ws: &mut Ws, to: u64, msg_id: &str, text: &str) -> Value {
    let ack = ws.request(text_frame(to, msg_id, text)).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_ne!(ack["duplicate"], true, "a new message is not a duplicate: {ack}");
    ack
}

/// Sends a frame and requires the very next frame to be its reply: nothing was delivered to
/// this connection in between (e.g. no echo of its own message). Unlike [`Ws::request`], which
/// skips frames until the reply.
pub async fn reply(ws: &mut Ws, frame: Value) -> Value {
    ws.send(frame.clone()).await;
    let r = ws.recv().await;
    assert!(r.get("code").is_some(), "expected the reply to {frame}, got {r}");
    r
}

/// Asserts a successful ack of the message `msg_id` in `chat_id`, with a seq, an id and a ts.
#[track_caller]
pub fn assert_ack(ack: &Value, msg_id: &str, chat_id: &str) {
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["msg_id"], msg_id, "{ack}");
    assert_eq!(ack["chat_id"], chat_id, "{ack}");
    assert!(ack["seq"].as_u64().is_some(), "ack seq: {ack}");
    assert!(ack["id"].as_u64().is_some(), "ack id: {ack}");
    assert!(ack["ts"].as_u64().is_some(), "ack ts: {ack}");
}

/// Asserts an `error` frame with `code` and a non-empty `message`; with `Some(msg_id)`, also
/// that it carries the msg_id of the refused frame. `what` names the case in failure messages.
#[track_caller]
pub fn assert_frame_error(reply: &Value, code: u16, msg_id: Option<&str>, what: &str) {
    assert_eq!(reply["action"], "error", "{what}: expected an error frame, got {reply}");
    assert_eq!(reply["code"], code, "{what}: {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: error needs a message: {reply}");
    if let Some(msg_id) = msg_id {
        assert_eq!(reply["msg_id"], msg_id, "{what}: the error carries the msg_id: {reply}");
    }
}

/// Asserts a delivered `service_chat` frame: conversation `chat_id` of `shop`, handled by
/// `agent`, the message of `ack`, sent by `from` (`from_name`) with the text `msg`.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn assert_service_message(
    f: &Value,
    chat_id: &str,
    shop: u64,
    agent: u64,
    ack: &Value,
    from: u64,
    from_name: &str,
    msg: &str,
) {
    assert_eq!(f["action"], "service_chat", "{f}");
    assert_eq!(f["chat_type"], 3, "{f}");
    assert_eq!(f["chat_id"], chat_id, "{f}");
    assert_eq!(f["shop_id"], json!(shop), "{f}");
    assert_eq!(f["agent_uid"], json!(agent), "{f}");
    assert_delivered_text(f, ack, from, from_name, msg);
}

/// Asserts what every delivered text message shares: the `seq` and `id` of its `ack`, the
/// sender `from` (`from_name`), the text `msg` and a ts.
#[track_caller]
pub fn assert_delivered_text(f: &Value, ack: &Value, from: u64, from_name: &str, msg: &str) {
    assert_eq!(f["seq"], ack["seq"], "seq as acked ({ack}): {f}");
    assert_eq!(f["id"], ack["id"], "id as acked ({ack}): {f}");
    assert_eq!(f["from_uid"], json!(from), "{f}");
    assert_eq!(f["from_name"], from_name, "{f}");
    assert_eq!(f["msg_type"], "text", "{f}");
    assert_eq!(f["msg"], msg, "{f}");
    assert!(f["ts"].as_u64().is_some(), "ts: {f}");
}

/// Something [`seqs`] reads a list of frames or stored messages from: the frames `connect`
/// synced, or a JSON array.
pub trait FrameList {
    fn frames(&self) -> &[Value];
}

impl FrameList for Vec<Value> {
    fn frames(&self) -> &[Value] {
        self
    }
}

/// A JSON array, such as `data["messages"]` of `/message/history`.
impl FrameList for Value {
    fn frames(&self) -> &[Value] {
        self.as_array().unwrap_or_else(|| panic!("messages must be an array: {self}"))
    }
}

/// The `seq` of every frame or message in `list` (synced frames, or a history page's
/// `messages`), in order.
pub fn seqs<L: FrameList + ?Sized>(list: &L) -> Vec<u64> {
    list.frames().iter().map(|m| m["seq"].as_u64().unwrap_or_else(|| panic!("seq: {m}"))).collect()
}

/// Text of each frame [`overrun`] sends.
const OVERRUN_TEXT_BYTES: usize = 4000;

/// Enough ~4 KB frames to overrun what the kernel can buffer for a [`slow_reader`]: twice the
/// largest send buffer TCP may grow to (its receive buffer is pinned small), at least 8 MB.
pub fn messages_to_overrun() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2).and_then(|max| max.parse::<usize>().ok()))
        .unwrap_or(4 << 20);
    (2 * wmem_max).max(8 << 20) / OVERRUN_TEXT_BYTES
}

/// A WebSocket whose socket has a small receive buffer, so that the server's writes to it back
/// up quickly while the test reads nothing (the `connected` frame is left unread too).
pub async fn slow_reader(addr: SocketAddr, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let url = format!("ws://{addr}/?access_token={token}");
    let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("upgrade");
    Ws { stream }
}

/// Sends [`messages_to_overrun`] ~4 KB messages to `to_uid`, up to 64 in flight, reading the
/// acks as they come (a reader that keeps up); returns their seqs. Run with `--rate-limit 0`.
pub async fn overrun(sender: &mut Ws, to_uid: u64) -> Vec<i64> {
    let messages = messages_to_overrun();
    let text = "x".repeat(OVERRUN_TEXT_BYTES);
    let mut acked = Vec::new();
    for i in 0..messages {
        let frame = json!({"action": "single_chat", "msg_type": "text", "msg_id": format!("m{i}"),
                           "to_uid": to_uid, "msg": text});
        sender.send_raw(Message::text(frame.to_string())).await;
        while i + 1 - acked.len() >= 64 || (i + 1 == messages && acked.len() < messages) {
            let reply = sender.recv().await;
            assert_eq!(reply["action"], "ack", "{reply}");
            acked.push(reply["seq"].as_i64().expect("seq"));
        }
    }
    acked
}

/// Polls `/metrics` until the series `series` (name and labels as rendered) reaches `want`;
/// returns the whole text then.
pub async fn wait_metric(server: &Server, series: &str, want: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = server.metrics().await;
        let got = metric_value(&text, series).unwrap_or(0.0);
        if got >= want {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} stayed at {got}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upgrades to a WebSocket sending `origin` (if any); Ok(101) or Err(the refusal's status).
pub async fn upgrade_with_origin(server: &Server, token: &str, origin: Option<&str>) -> Result<u16, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request =
        format!("ws://{}/?access_token={token}", server.addr).into_client_request().expect("client request");
    if let Some(origin) = origin {
        let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(origin).expect("origin header");
        request.headers_mut().insert("origin", value);
    }
    let connect = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(WAIT, connect).await.expect("upgrade timed out") {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// Sends one keep-alive `GET /health` on `stream` and reads the response head; returns its status.
pub async fn keep_alive_health(stream: &mut TcpStream) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("response in time").expect("read");
        assert!(n > 0, "closed before a response");
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line")
}

/// Opens `n` keep-alive connections that have each been answered once, so the server has
/// accepted and counted them.
pub async fn hold_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(keep_alive_health(&mut stream).await, 200);
        held.push(stream);
    }
    held
}
