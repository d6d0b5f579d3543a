//! Structured logs: with `--log-format json` every stderr line is a JSON object, and the
//! operator's events (connection open/close, auth failures, limit refusals) are there with
//! their fields, but no password, token or message text.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::{Server, WAIT, Ws};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const MESSAGE_TEXT: &str = "a-private-message-body-7Q";
const WRONG_PASSWORD: &str = "wrong-password-9Z";
const BAD_TOKEN: &str = "not.a.valid-token-4K";

/// The daemon's stderr, line by line, with every line read so far kept for the final check.
struct Log {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    /// Reads lines until one is a JSON object whose `fields.message` starts with `message`
    /// and `pred` holds; returns its fields.
    async fn wait_for(&mut self, message: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no log line {message:?} within the timeout; got:\n{}", self.seen.join("\n"))
                })
                .expect("stderr ended");
            self.seen.push(line.clone());
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(value.get(key).is_some(), "no {key}: {line}");
            }
            let fields = &value["fields"];
            if fields["message"].as_str().is_some_and(|m| m.starts_with(message)) && pred(fields) {
                return fields.clone();
            }
        }
    }
}

/// Starts the daemon with `--log-format json` and its stderr piped to the test.
async fn start(extra: &[&str]) -> (Server, Log) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("imd.db");
    let mut child = Command::new(common::BIN)
        .args(["start", "0", "--host", "127.0.0.1", "--bcrypt-cost", "4", "--log-format", "json"])
        .arg("--db")
        .arg(&db)
        .args(extra)
        .env_remove("IMD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imd");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (tx, lines) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = out.next_line().await.expect("read stdout") {
            if let Some(rest) = line.strip_prefix("listening on ") {
                return rest.trim().parse::<SocketAddr>().expect("listen address");
            }
        }
        panic!("imd exited before listening");
    })
    .await
    .expect("imd did not start listening in time");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let server = Server { child, addr, db, dir: Some(dir), extra_args: Vec::new(), cluster: None, pg: None };
    (server, Log { lines, seen: Vec::new() })
}

#[tokio::test]
async fn json_logs_carry_the_operators_events_and_no_secret() {
    let (server, mut log) = start(&["--rate-limit", "1", "--rate-burst", "1", "--max-connections-per-user", "1"]).await;
    let (alice, token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;

    // Open: conn, uid, ip, device.
    let (mut ws, _) = server.connect_device(&token, "phone").await;
    let opened = log
        .wait_for("connection opened", |f| f["uid"] == alice && f["device"] == "phone" && f["ip"] == "127.0.0.1")
        .await;
    let conn = opened["conn"].as_u64().expect("conn id");

    // A second session is over the per-user cap.
    let over = Ws::connect(server.addr, &format!("/?access_token={token}")).await.err();
    assert_eq!(over, Some(429));
    log.wait_for("websocket refused: per-user connection cap", |f| f["uid"] == alice && f["ip"] == "127.0.0.1").await;

    // Rate limit: the burst of one lets the first frame through; the next ones are refused.
    for i in 0..3 {
        ws.send(common::text_frame(bob, &format!("m{i}"), MESSAGE_TEXT)).await;
    }
    loop {
        let reply = ws.recv().await;
        if reply["code"] == 429 {
            break;
        }
    }
    log.wait_for("frames refused: rate limit", |f| f["conn"] == conn && f["uid"] == alice).await;

    // Close by the client: the reason says so.
    ws.stream.close(None).await.expect("close");
    let closed = log.wait_for("connection closed", |f| f["conn"] == conn).await;
    let refusals = log.seen.iter().filter(|l| l.contains("frames refused: rate limit")).count();
    assert_eq!(refusals, 1, "one line per limited stretch, not per frame:\n{}", log.seen.join("\n"));
    assert_eq!(closed["uid"], alice, "{closed}");
    assert_eq!(closed["ip"], "127.0.0.1", "{closed}");
    assert_eq!(closed["device"], "phone", "{closed}");
    assert_eq!(closed["reason"], "peer closed", "{closed}");

    // A wrong password: the address and the name, never the password.
    let (status, body) = common::login(&server, "alice", WRONG_PASSWORD).await;
    assert_eq!(status, 401, "{body}");
    log.wait_for("login failed", |f| f["username"] == "alice" && f["ip"] == "127.0.0.1").await;

    // A bad token on the upgrade.
    let refused = Ws::connect(server.addr, &format!("/?access_token={BAD_TOKEN}")).await.err();
    assert_eq!(refused, Some(401));
    log.wait_for("websocket refused", |f| f["ip"] == "127.0.0.1").await;

    // A logout closes the user's socket: its reason and close code are in the log.
    let (mut ws, _) = server.connect(&token).await;
    let opened = log.wait_for("connection opened", |f| f["uid"] == alice && f["device"] == "web").await;
    let (status, body) = server.post_json("/user/logout", serde_json::json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ws.recv_close().await, Some(4001));
    let closed = log.wait_for("connection closed", |f| f["conn"] == opened["conn"]).await;
    assert_eq!(closed["reason"], "logged out", "{closed}");
    assert_eq!(closed["code"], 4001, "{closed}");

    for secret in [token.as_str(), "secret-pw", WRONG_PASSWORD, BAD_TOKEN, MESSAGE_TEXT] {
        for line in &log.seen {
            assert!(!line.contains(secret), "a secret ({secret}) in the log: {line}");
        }
    }
}

/// Refusals of a limit (login throttle, Origin) and a message the store failed to write each
/// make a line with the client's address or session, and no secret or message text.
#[tokio::test]
async fn limit_refusals_and_storage_errors_are_logged() {
    let (server, mut log) = start(&["--login-failures-per-user", "1", "--login-failures-per-ip", "1000"]).await;
    let (alice, token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;

    // Login throttle: the first failure is a 401, the next attempt a 429.
    assert_eq!(common::login(&server, "alice", WRONG_PASSWORD).await.0, 401);
    assert_eq!(common::login(&server, "alice", WRONG_PASSWORD).await.0, 429);
    let throttled = log.wait_for("login refused: throttled", |f| f["username"] == "alice").await;
    assert_eq!(throttled["ip"], "127.0.0.1", "{throttled}");
    assert!(throttled["retry_after"].as_u64().is_some_and(|s| s >= 1), "{throttled}");

    // An Origin not allowed: 403 before the upgrade.
    assert_eq!(common::upgrade_with_origin(&server, &token, Some("https://evil.example")).await, Err(403));
    let origin = log.wait_for("websocket refused: Origin not allowed", |f| f["ip"] == "127.0.0.1").await;
    assert!(origin["origin"].as_str().is_some_and(|o| o.contains("evil.example")), "{origin}");

    // The store fails to write a message (as in tests/storage_faults.rs): its session and code.
    let conn = rusqlite::Connection::open(&server.db).expect("open the daemon's database");
    conn.execute_batch(
        "CREATE TRIGGER fail_insert BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'injected'); END",
    )
    .expect("trigger");
    let (mut ws, _) = server.connect(&token).await;
    let opened = log.wait_for("connection opened", |f| f["uid"] == alice).await;
    let refused = ws.request(common::text_frame(bob, "s1", MESSAGE_TEXT)).await;
    assert_eq!(refused["code"], 500, "{refused}");
    let failed = log.wait_for("message not stored", |f| f["conn"] == opened["conn"]).await;
    assert_eq!(failed["uid"], alice, "{failed}");
    assert_eq!(failed["code"], 500, "{failed}");
    assert!(failed["message"].as_str().is_some_and(|m| m.contains("injected")), "{failed}");

    for secret in [token.as_str(), "secret-pw", WRONG_PASSWORD, MESSAGE_TEXT] {
        for line in &log.seen {
            assert!(!line.contains(secret), "a secret ({secret}) in the log: {line}");
        }
    }
}

/// A connection over `--max-connections-per-ip` (429) and one over `--max-connections` (503)
/// are each logged with the client's address and the code.
#[tokio::test]
async fn connection_cap_refusals_are_logged_with_the_address() {
    let (server, mut log) = start(&["--max-connections", "3", "--max-connections-per-ip", "2"]).await;
    let _held = common::hold_connections(server.addr, 2).await;
    let (status, _) = common::http(server.addr, "GET", "/health", None, None).await;
    assert_eq!(status, 429);
    let per_ip = log.wait_for("connection refused", |f| f["code"] == 429).await;
    assert_eq!(per_ip["ip"], "127.0.0.1", "{per_ip}");

    // A second loopback address has room under its own cap, but not under the total.
    let mut other = from_address(server.addr, [127, 0, 0, 2]).await;
    assert_eq!(common::keep_alive_health(&mut other).await, 200);
    let mut over = from_address(server.addr, [127, 0, 0, 2]).await;
    assert_eq!(common::keep_alive_health(&mut over).await, 503);
    let total = log.wait_for("connection refused", |f| f["code"] == 503).await;
    assert_eq!(total["ip"], "127.0.0.2", "{total}");
}

/// A connection to `addr` from the loopback address `source`.
async fn from_address(addr: SocketAddr, source: [u8; 4]) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind a loopback source address");
    socket.connect(addr).await.expect("connect")
}
