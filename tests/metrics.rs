//! `GET /metrics` answers an operator's questions: a short real load (HTTP calls, a group
//! chat, a sync, a slow consumer, a revoked session, limit refusals) moves each metric of
//! docs/OPERATIONS.md by what it did, and every metric the Grafana dashboard in contrib/ uses
//! is served.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The value of one series (name and labels as rendered), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or(0.0)
}

fn closed(reason: &str) -> String {
    format!("imd_connections_closed_total{{reason=\"{reason}\"}}")
}

fn requests(route: &str, code: u16) -> String {
    format!("imd_http_requests_total{{code=\"{code}\",route=\"{route}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_moves_every_operator_metric() {
    // Holds SQLite's write lock itself (rusqlite): SQLite whatever the backend under test.
    let server =
        Server::start_sqlite_with(&["--rate-limit", "0", "--outbox-bytes", "16384", "--max-connections-per-user", "2"])
            .await;
    let (_, alice) = server.register("alice").await;
    let (_, bob) = server.register("bob").await;
    let (_, carol) = server.register("carol").await;
    let (dave_uid, dave) = server.register("dave").await;

    // HTTP: per route and code, unknown paths under one label.
    let (status, _) = server.get("/no/such/path-9f", None).await;
    assert_eq!(status, 404);
    let room = create_room(&server, &alice).await;
    for token in [&bob, &carol] {
        let (status, body) = server.post_json("/room/join", json!({"chat_id": room}), Some(token)).await;
        ok(status, &body, "join");
    }
    let text = server.metrics().await;
    assert_eq!(value(&text, &requests("/user/register", 200)), 4.0, "{text}");
    assert_eq!(value(&text, &requests("/room/join", 200)), 2.0);
    assert_eq!(value(&text, &requests("other", 404)), 1.0);
    assert!(!text.contains("path-9f"), "a raw path became a label");
    assert_eq!(value(&text, "imd_http_request_duration_seconds_count{route=\"/user/register\"}"), 4.0);
    assert_eq!(value(&text, "imd_http_request_duration_seconds_count{route=\"other\"}"), 1.0);

    // A group chat: Alice and Bob online, Carol offline (she gets them by sync).
    let (mut alice_ws, _) = server.connect(&alice).await;
    let (mut bob_ws, _) = server.connect(&bob).await;
    let before = server.metrics().await;
    for i in 0..5 {
        let ack = reply(&mut alice_ws, group_frame(&room, &format!("g{i}"), "hello")).await;
        assert_eq!(ack["action"], "ack", "{ack}");
        assert_eq!(bob_ws.recv_action("group_chat").await["msg_id"], format!("g{i}"));
    }
    let after = server.metrics().await;
    let moved = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(moved("imd_messages_stored_total"), 5.0);
    assert_eq!(moved("imd_frames_delivered_total"), 5.0, "one frame to Bob per message");
    assert!(moved("imd_store_commit_seconds_count") >= 1.0);
    // Each batch's lag is recorded once its frames are queued, before the ack is written.
    assert!(moved("imd_fanout_lag_seconds_count") >= 1.0, "fan-out lag not recorded");
    assert_eq!(value(&after, "imd_connections_opened_total"), 2.0);

    // Carol's connect-time sync brings the five.
    let (carol_ws, synced) = server.connect(&carol).await;
    assert_eq!(synced.len(), 5);
    let text = server.metrics().await;
    assert_eq!(value(&text, "imd_sync_messages_count"), 3.0, "one observation per connect");
    assert_eq!(value(&text, "imd_sync_messages_sum"), 5.0);
    assert_eq!(value(&text, "imd_sync_messages_bucket{le=\"1\"}"), 2.0, "two empty syncs");

    // Limits: a third session of Alice's is refused; a frame over the size limit closes.
    let (mut second, _) = server.connect(&alice).await;
    assert_eq!(Ws::connect(server.addr, &format!("/?access_token={alice}")).await.err(), Some(429));
    second.send_raw(Message::text("x".repeat(70_000))).await;
    assert_eq!(second.recv_close().await, Some(1009));
    let text = wait_metric(&server, &closed("limit"), 1.0).await;
    assert_eq!(value(&text, "imd_connections_refused_total{reason=\"per_user\"}"), 1.0, "{text}");

    // A refused Origin and a bad token, counted before any session.
    assert_eq!(upgrade_with_origin(&server, &alice, Some("https://evil.example")).await, Err(403));
    assert_eq!(Ws::connect(server.addr, "/?access_token=bad").await.err(), Some(401));
    let text = server.metrics().await;
    assert_eq!(value(&text, "imd_connections_refused_total{reason=\"origin\"}"), 1.0, "{text}");
    assert_eq!(value(&text, "imd_connections_refused_total{reason=\"auth\"}"), 1.0, "{text}");

    // Revoked: Bob logs out. Normal: Carol closes.
    let (status, body) = server.post_json("/user/logout", json!({}), Some(&bob)).await;
    ok(status, &body, "logout");
    assert_eq!(bob_ws.recv_close().await, Some(4001));
    wait_metric(&server, &closed("revoked"), 1.0).await;
    let mut carol_ws = carol_ws;
    carol_ws.stream.close(None).await.expect("close");
    wait_metric(&server, &closed("normal"), 1.0).await;

    // Writer queue depth: while another connection holds the write lock (for less than the
    // daemon's 5 s busy timeout), the writer waits in a batch and later messages wait in its
    // queue. (To the room: a first message of a new conversation would wait for the writer
    // itself before the next frame is read.)
    let holder = rusqlite::Connection::open(&server.db).expect("open the database");
    holder.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let sent = 10;
    for i in 0..sent {
        alice_ws.send(group_frame(&room, &format!("q{i}"), "queued")).await;
    }
    wait_metric(&server, "imd_writer_queue_depth", 1.0).await;
    holder.execute_batch("COMMIT").expect("release the write lock");
    for i in 0..sent {
        assert_eq!(alice_ws.recv_action("ack").await["msg_id"], format!("q{i}"));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while value(&server.metrics().await, "imd_writer_queue_depth") > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the writer's queue did not empty");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A slow consumer: Dave reads nothing while Alice floods him.
    let mut slow = slow_reader(server.addr, &dave).await;
    overrun(&mut alice_ws, dave_uid).await;
    assert_eq!(slow.recv_close().await, Some(1008));
    let text = wait_metric(&server, &closed("slow_consumer"), 1.0).await;

    // Each reason counted once, for exactly the sessions that ended so.
    for (reason, want) in [("limit", 1.0), ("revoked", 1.0), ("normal", 1.0), ("slow_consumer", 1.0)] {
        assert_eq!(value(&text, &closed(reason)), want, "{reason}: {text}");
    }
    assert_eq!(value(&text, "imd_connections_opened_total"), 5.0, "alice x2, bob, carol, dave");
    assert_eq!(value(&text, "imd_online_connections"), 1.0, "only Alice's first session is left");
    assert_eq!(value(&text, &requests("/user/logout", 200)), 1.0);
    assert_eq!(value(&text, &requests("/", 429)), 1.0, "the refused upgrade, under the WebSocket route");
    assert_eq!(value(&text, &requests("/", 403)), 1.0, "the refused Origin");
    assert!(value(&text, &requests("/metrics", 200)) >= 5.0);

    // Process metrics.
    assert!(value(&text, "process_resident_memory_bytes") > 1e6, "{text}");
    assert!(value(&text, "process_open_fds") >= 5.0, "{text}");
    // Whole seconds (the crate's resolution): present, not necessarily moved yet.
    assert!(metric_value(&text, "process_cpu_seconds_total").is_some(), "{text}");
}

/// Every metric a panel of contrib/grafana-imd.json queries is one the daemon serves, so the
/// dashboard cannot drift from the code.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_served_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana-imd.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "too few queries: {exprs:?}");
    let server = Server::start().await;
    // Histograms and labelled series appear once something was observed; a request makes
    // the HTTP ones appear.
    server.get("/health", None).await;
    let text = server.metrics().await;
    let served: std::collections::HashSet<&str> =
        text.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.split(['{', ' ']).next()).collect();
    let mut used = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            used += 1;
            assert!(served.contains(name.as_str()), "the dashboard queries {name}, which /metrics does not serve");
        }
    }
    assert!(used >= exprs.len(), "a query names no metric: {exprs:?}");
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `imd_…` and `process_…` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = ["imd_", "process_"].iter().filter_map(|p| rest.find(p)).min() {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
