//! The HTTP API: envelope, routing errors, /health, /metrics, /message/history and
//! /message/conversations (PROTOCOL.md 2; BEHAVIOUR.md "HTTP").
mod common;

use std::time::Duration;

use common::{Server, Ws, assert_error, http, http_with_headers, metric_value, ok, send_text, seqs, single_chat_id};
use serde_json::{Value, json};

#[tokio::test]
async fn envelope_status_equals_code() {
    let server = Server::start().await;
    let (status, body) =
        server.post_json("/user/register", json!({"username": "alice", "password": "secret-pw"}), None).await;
    let data = ok(status, &body, "POST /user/register");
    assert!(data.is_object(), "{body}");
    let obj = body.as_object().expect("object");
    for key in ["code", "message", "data"] {
        assert!(obj.contains_key(key), "envelope lacks {key}: {body}");
    }

    // Errors: 400, 401, 409 each with status == code and data null.
    let (status, body) =
        server.post_json("/user/register", json!({"username": "x", "password": "secret-pw"}), None).await;
    assert_error(status, &body, 400, "POST /user/register");
    let (status, body) =
        server.post_json("/user/login", json!({"username": "alice", "password": "nope-nope"}), None).await;
    assert_error(status, &body, 401, "POST /user/login");
    let (status, body) =
        server.post_json("/user/register", json!({"username": "alice", "password": "secret-pw"}), None).await;
    assert_error(status, &body, 409, "POST /user/register");
    let (status, body) = server.get("/message/conversations", None).await;
    assert_error(status, &body, 401, "GET /message/conversations");
    let (status, body) = server.get("/message/history?chat_id=1_1_2", None).await;
    assert_error(status, &body, 401, "GET /message/history");
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let server = Server::start().await;
    for path in ["/nope", "/user/nope", "/message", "/user/me/extra"] {
        let (status, body) = server.get(path, None).await;
        assert_error(status, &body, 404, &format!("GET {path}"));
    }
    let (status, body) = server.post_json("/does/not/exist", json!({}), None).await;
    assert_error(status, &body, 404, "POST /does/not/exist");

    let (status, body) = server.get("/user/register", None).await;
    assert_error(status, &body, 405, "GET /user/register");
    let (status, body) = server.get("/user/login", None).await;
    assert_error(status, &body, 405, "GET /user/login");
    let (status, body) = server.post_json("/user/me", json!({}), None).await;
    assert_error(status, &body, 405, "POST /user/me");
    let (status, body) = server.post_json("/message/history", json!({}), None).await;
    assert_error(status, &body, 405, "POST /message/history");
    let (status, body) = http(server.addr, "DELETE", "/health", None, None).await;
    assert_error(status, &body, 405, "DELETE /health");
}

/// RFC 9110: a 405 must say in `Allow` which method the path takes (schemathesis's finding).
#[tokio::test]
async fn allow_names_the_method_of_the_path() {
    let server = Server::start().await;
    for (method, path, allowed) in
        [("TRACE", "/health", "GET"), ("GET", "/user/login", "POST"), ("DELETE", "/user/me", "GET")]
    {
        let (status, headers, body) = http_with_headers(server.addr, method, path, None, None).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some(allowed), "{method} {path}: {headers:?}");
    }
    // The CORS preflight's `Allow` names the path's own method too (schemathesis's finding).
    for (path, allowed) in [("/user/me", "GET, OPTIONS"), ("/user/login", "POST, OPTIONS"), ("/", "GET, OPTIONS")] {
        let (status, headers, body) = http_with_headers(server.addr, "OPTIONS", path, None, None).await;
        assert_eq!(status, 204, "OPTIONS {path}: {body}");
        assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some(allowed), "OPTIONS {path}: {headers:?}");
    }
}

#[tokio::test]
async fn health_reports_ok_pid_uptime_online() {
    let server = Server::start().await;
    // Each node of a cluster answers for itself: its own pid, its own connections.
    for node in server.nodes() {
        let (status, body) = http(node.addr, "GET", "/health", None, None).await;
        let data = ok(status, &body, "GET /health");
        assert_eq!(data["status"], "ok", "{body}");
        assert_eq!(data["pid"].as_u64(), node.child.id().map(u64::from), "{body}");
        assert!(data["uptime_secs"].as_u64().is_some(), "{body}");
        assert_eq!(data["online"].as_u64(), Some(0), "{body}");
    }

    let (_, token) = server.register("alice").await;
    let (_ws, _) = server.connect(&token).await;
    let (_ws2, _) = server.connect_device(&token, "mobile").await;
    let mut online = 0;
    for node in server.nodes() {
        let (status, body) = http(node.addr, "GET", "/health", None, None).await;
        online += ok(status, &body, "GET /health")["online"].as_u64().unwrap_or_else(|| panic!("online: {body}"));
    }
    assert_eq!(online, 2, "two connections, counted by the node that holds each");
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let server = Server::start().await;
    for text in ["{\"username\":", "not json", "[1,2,3]", "42"] {
        let (status, body) =
            http(server.addr, "POST", "/user/register", Some(("application/json", text.to_string())), None).await;
        assert_error(status, &body, 400, &format!("POST /user/register {text:?}"));
    }
    let (status, body) = http(
        server.addr,
        "POST",
        "/user/login",
        Some(("application/json", "{\"username\": \"a\", ".to_string())),
        None,
    )
    .await;
    assert_error(status, &body, 400, "POST /user/login");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = Server::start().await;
    let big = "x".repeat(70 * 1024);
    let text = json!({"username": "alice", "password": big}).to_string();
    let (status, body) = http(server.addr, "POST", "/user/register", Some(("application/json", text)), None).await;
    assert_error(status, &body, 413, "POST /user/register");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_count_messages() {
    // One node: /metrics counts the answering node's own connections and messages.
    let server = Server::start_single_with(&[]).await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let before = server.metrics().await;
    let stored_before = metric_value(&before, "imd_messages_stored_total").unwrap_or(0.0);
    let delivered_before = metric_value(&before, "imd_frames_delivered_total").unwrap_or(0.0);
    let online = metric_value(&before, "imd_online_connections");
    assert_eq!(online, Some(2.0), "imd_online_connections with two connections:\n{before}");

    send_text(&mut wa, b, "m-1", "hello").await;
    let got = wb.recv_action("single_chat").await;
    assert_eq!(got["msg"], "hello");
    // An error frame, so that the error counter has something to count.
    let err = wa.request(json!({"action": "no_such_action"})).await;
    assert_eq!(err["action"], "error", "{err}");

    // The counters may be updated just after the ack; poll with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        let text = server.metrics().await;
        let stored = metric_value(&text, "imd_messages_stored_total").unwrap_or(0.0);
        let delivered = metric_value(&text, "imd_frames_delivered_total").unwrap_or(0.0);
        if stored > stored_before && delivered > delivered_before {
            assert!(stored >= stored_before + 1.0, "{text}");
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "imd_messages_stored_total / imd_frames_delivered_total did not go up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for name in [
        "imd_online_connections",
        "imd_messages_stored_total",
        "imd_frames_delivered_total",
        "imd_errors_total",
        "imd_store_batch_size",
        "imd_store_commit_seconds",
    ] {
        assert!(after.contains(&format!("# TYPE {name}")), "no # TYPE line for {name}:\n{after}");
        assert!(after.lines().any(|l| !l.starts_with('#') && l.starts_with(name)), "no sample for {name}:\n{after}");
    }
    assert!(metric_value(&after, "imd_errors_total").unwrap_or(0.0) >= 1.0, "{after}");
    // Histograms in the text format.
    assert!(after.contains("imd_store_batch_size_bucket"), "{after}");
    assert!(after.contains("imd_store_commit_seconds_bucket"), "{after}");
    assert!(metric_value(&after, "imd_store_batch_size_count").unwrap_or(0.0) >= 1.0, "{after}");
}

/// Sends `n` messages a -> b (acked one by one) and returns the acks.
async fn send_many(ws: &mut Ws, to: u64, n: usize) -> Vec<Value> {
    let mut acks = Vec::new();
    for i in 1..=n {
        acks.push(send_text(ws, to, &format!("h-{i}"), &format!("m{i}")).await);
    }
    acks
}

#[tokio::test]
async fn history_pages_backwards() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let acks = send_many(&mut wa, b, 7).await;
    let chat = single_chat_id(a, b);
    assert_eq!(acks[0]["chat_id"], chat.as_str());

    // Default limit (50) returns everything, ascending.
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}"), Some(&ta)).await;
    let data = ok(status, &body, "GET /message/history");
    assert_eq!(data["chat_id"], chat.as_str(), "{body}");
    assert_eq!(seqs(&data["messages"]), vec![1, 2, 3, 4, 5, 6, 7], "{body}");
    assert_eq!(data["has_more"], false, "{body}");
    for (m, ack) in data["messages"].as_array().expect("array").iter().zip(&acks) {
        assert_eq!(m["id"], ack["id"], "history id matches the ack: {m} vs {ack}");
        assert_eq!(m["seq"], ack["seq"], "{m}");
        assert_eq!(m["msg"], format!("m{}", ack["seq"]), "{m}");
    }

    // The newest page first.
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}&limit=3"), Some(&ta)).await;
    let data = ok(status, &body, "GET /message/history");
    assert_eq!(seqs(&data["messages"]), vec![5, 6, 7], "{body}");
    assert_eq!(data["has_more"], true, "{body}");

    // Then backwards with `before`; the recipient may read it too.
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}&before=5&limit=3"), Some(&tb)).await;
    let data = ok(status, &body, "GET /message/history");
    assert_eq!(seqs(&data["messages"]), vec![2, 3, 4], "{body}");
    assert_eq!(data["has_more"], true, "{body}");

    let (status, body) = server.get(&format!("/message/history?chat_id={chat}&before=2&limit=3"), Some(&tb)).await;
    let data = ok(status, &body, "GET /message/history");
    assert_eq!(seqs(&data["messages"]), vec![1], "{body}");
    assert_eq!(data["has_more"], false, "{body}");

    // Exactly filling a page: before=4, limit=3 -> 1,2,3 and nothing more.
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}&before=4&limit=3"), Some(&ta)).await;
    let data = ok(status, &body, "GET /message/history");
    assert_eq!(seqs(&data["messages"]), vec![1, 2, 3], "{body}");
    assert_eq!(data["has_more"], false, "{body}");

    // Token in the query string works too.
    let (status, body) =
        server.get(&format!("/message/history?chat_id={chat}&limit=200&access_token={ta}"), None).await;
    assert_eq!(seqs(&ok(status, &body, "GET /message/history")["messages"]).len(), 7, "{body}");
}

#[tokio::test]
async fn history_refuses_bad_limits_strangers_and_bad_ids() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, _) = server.register("bob").await;
    let (_, tc) = server.register("carol").await;
    let (mut wa, _) = server.connect(&ta).await;
    send_many(&mut wa, b, 2).await;
    let chat = single_chat_id(a, b);

    for limit in ["0", "201", "-1", "abc"] {
        let (status, body) = server.get(&format!("/message/history?chat_id={chat}&limit={limit}"), Some(&ta)).await;
        assert_error(status, &body, 400, &format!("GET /message/history limit={limit}"));
    }
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}&limit=200"), Some(&ta)).await;
    ok(status, &body, "GET /message/history");
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}&limit=1"), Some(&ta)).await;
    assert_eq!(seqs(&ok(status, &body, "GET /message/history")["messages"]), vec![2], "{body}");

    // Not a participant.
    let (status, body) = server.get(&format!("/message/history?chat_id={chat}"), Some(&tc)).await;
    assert_error(status, &body, 403, "GET /message/history");

    // Malformed chat ids.
    for bad in ["garbage", "1_abc", "1_x_y", "9_1_2"] {
        let (status, body) = server.get(&format!("/message/history?chat_id={bad}"), Some(&ta)).await;
        assert_error(status, &body, 404, &format!("GET /message/history chat_id={bad}"));
    }
}

#[tokio::test]
async fn conversations_list_unread_and_read_positions() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    send_many(&mut wa, b, 3).await;
    let chat = single_chat_id(a, b);

    let conv_of = |body: &Value| -> Value {
        let list = body["data"]["conversations"]
            .as_array()
            .unwrap_or_else(|| panic!("conversations must be an array: {body}"));
        assert_eq!(list.len(), 1, "{body}");
        list[0].clone()
    };

    let (status, body) = server.get("/message/conversations", Some(&tb)).await;
    ok(status, &body, "GET /message/conversations");
    let c = conv_of(&body);
    assert_eq!(c["chat_id"], chat.as_str(), "{c}");
    assert_eq!(c["chat_type"], 1, "{c}");
    assert_eq!(c["last_seq"], 3, "{c}");
    assert_eq!(c["read_seq"], 0, "{c}");
    assert_eq!(c["unread"], 3, "{c}");
    let last = &c["last"];
    assert!(last["msg"] == "m3" || *last == "m3", "last must be the newest message: {c}");
    if last.is_object() {
        assert_eq!(last["seq"], 3, "{c}");
    }

    // The sender's own messages are never unread for the sender.
    let (status, body) = server.get("/message/conversations", Some(&ta)).await;
    ok(status, &body, "GET /message/conversations");
    let c = conv_of(&body);
    assert_eq!(c["chat_id"], chat.as_str(), "{c}");
    assert_eq!(c["last_seq"], 3, "{c}");
    assert_eq!(c["read_seq"], 3, "{c}");
    assert_eq!(c["unread"], 0, "{c}");

    // Reading moves unread down.
    let (mut wb, synced) = server.connect(&tb).await;
    assert_eq!(synced.len(), 3);
    let reply = wb.request(json!({"action": "read", "chat_id": chat, "seq": 2})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    let (status, body) = server.get("/message/conversations", Some(&tb)).await;
    ok(status, &body, "GET /message/conversations");
    let c = conv_of(&body);
    assert_eq!(c["read_seq"], 2, "{c}");
    assert_eq!(c["unread"], 1, "{c}");

    let reply = wb.request(json!({"action": "read", "chat_id": chat, "seq": 3})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    let (status, body) = server.get(&format!("/message/conversations?access_token={tb}"), None).await;
    ok(status, &body, "GET /message/conversations");
    let c = conv_of(&body);
    assert_eq!(c["read_seq"], 3, "{c}");
    assert_eq!(c["unread"], 0, "{c}");

    // A user with no conversations gets an empty list.
    let (_, tc) = server.register("carol").await;
    let (status, body) = server.get("/message/conversations", Some(&tc)).await;
    let data = ok(status, &body, "GET /message/conversations");
    assert_eq!(data["conversations"], json!([]), "{body}");
}
