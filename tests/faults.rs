//! Bad input and hostile clients over WebSocket: refused upgrades, error frames, frame size
//! limit, rate limit, chat_type checks, token expiry during a session and dead-connection
//! detection (PROTOCOL.md 3, 4; BEHAVIOUR.md "Tokens", "Messages", "Running").
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Server, WAIT, Ws, assert_frame_error, text_frame};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Next frame, which must be the reply to what was just sent.
async fn reply_to_raw(ws: &mut Ws, msg: Message) -> Value {
    ws.send_raw(msg).await;
    ws.recv().await
}

async fn assert_alive(ws: &mut Ws, what: &str) {
    let pong = ws.request(json!({"action": "ping"})).await;
    assert_eq!(pong["action"], "pong", "connection must still work after {what}: {pong}");
    assert_eq!(pong["code"], 200, "{pong}");
}

async fn online(server: &Server) -> u64 {
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["online"].as_u64().unwrap_or_else(|| panic!("/health online: {body}"))
}

async fn wait_online(server: &Server, want: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = online(server).await;
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "/health online stayed {now}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WebSocket upgrade by hand over raw TCP; the returned stream is never read again.
async fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, stream.read_exact(&mut byte))
            .await
            .expect("upgrade response in time")
            .expect("read upgrade response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    stream
}

#[tokio::test]
async fn upgrade_without_or_with_bad_token_is_401() {
    let server = Server::start().await;
    let (_, token) = server.register("alice").await;
    for path in [
        "/".to_string(),
        "/?device=web".to_string(),
        "/?access_token=".to_string(),
        "/?access_token=garbage".to_string(),
        "/?access_token=a.b.c".to_string(),
        format!("/?access_token={token}x"),
    ] {
        let result = Ws::connect(server.addr, &path).await;
        assert_eq!(result.err(), Some(401), "{path} must be refused with 401 before the upgrade");
    }
    // The good token still works.
    let (mut ws, _) = server.connect(&token).await;
    assert_alive(&mut ws, "refused upgrades").await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_stays() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (_, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let cases: Vec<(&str, Message, u16)> = vec![
        ("invalid JSON", Message::text("{not json"), 400),
        ("truncated JSON", Message::text("{\"action\":\"ping\""), 400),
        ("JSON array", Message::text("[1,2,3]"), 400),
        ("JSON number", Message::text("5"), 400),
        ("JSON string", Message::text("\"ping\""), 400),
        ("unknown action", Message::text(r#"{"action":"dance"}"#), 404),
        ("binary frame", Message::binary(vec![0x7b, 0x7d, 0x00, 0xff]), 400),
        ("binary JSON", Message::binary(br#"{"action":"ping"}"#.to_vec()), 400),
    ];
    for (what, msg, code) in cases {
        let reply = reply_to_raw(&mut wa, msg).await;
        assert_frame_error(&reply, code, None, what);
        assert_alive(&mut wa, what).await;
    }
    wb.expect_nothing_pending().await;
}

#[tokio::test]
async fn wrong_field_types_are_400_with_the_msg_id() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let cases: Vec<(&str, Value)> = vec![
        (
            "to_uid true",
            json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-1", "to_uid": true, "msg": "x"}),
        ),
        (
            "to_uid letters",
            json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-2", "to_uid": "abc", "msg": "x"}),
        ),
        (
            "to_uid array",
            json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-3", "to_uid": [b], "msg": "x"}),
        ),
        ("to_uid missing", json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-4", "msg": "x"})),
        ("msg number", json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-5", "to_uid": b, "msg": 5})),
        ("msg null", json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-6", "to_uid": b, "msg": null})),
        ("msg missing", json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-7", "to_uid": b})),
        ("empty text", json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-8", "to_uid": b, "msg": ""})),
        (
            "text as object",
            json!({"action": "single_chat", "msg_type": "text", "msg_id": "t-9", "to_uid": b, "msg": {"a": 1}}),
        ),
        (
            "image as string",
            json!({"action": "single_chat", "msg_type": "image", "msg_id": "t-10", "to_uid": b, "msg": "x"}),
        ),
        ("msg_type number", json!({"action": "single_chat", "msg_type": 5, "msg_id": "t-11", "to_uid": b, "msg": "x"})),
    ];
    for (what, frame) in cases {
        let msg_id = frame["msg_id"].clone();
        let reply = wa.request(frame).await;
        assert_frame_error(&reply, 400, None, what);
        assert_eq!(reply["msg_id"], msg_id, "{what}: the error carries the msg_id: {reply}");
        assert_alive(&mut wa, what).await;
    }

    // read with bad fields.
    for (what, frame) in [
        ("read seq letters", json!({"action": "read", "chat_id": "1_1_2", "seq": "abc"})),
        ("read seq bool", json!({"action": "read", "chat_id": "1_1_2", "seq": true})),
        ("read without chat_id", json!({"action": "read", "seq": 1})),
        ("read chat_id bool", json!({"action": "read", "chat_id": true, "seq": 1})),
    ] {
        let reply = wa.request(frame).await;
        assert_frame_error(&reply, 400, None, what);
        assert_alive(&mut wa, what).await;
    }
    // None of it reached bob.
    wb.expect_nothing_pending().await;
}

#[tokio::test]
async fn msg_id_is_limited_to_64_chars() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let long = "x".repeat(65);
    let reply = wa.request(text_frame(b, &long, "too long an id")).await;
    assert_frame_error(&reply, 400, None, "msg_id of 65 chars");
    assert_alive(&mut wa, "a long msg_id").await;
    wb.expect_nothing_pending().await;

    let max = "y".repeat(64);
    let ack = wa.request(text_frame(b, &max, "fine")).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["msg_id"], max.as_str(), "{ack}");
    assert_eq!(wb.recv().await["msg_id"], max.as_str());
}

#[tokio::test]
async fn chat_type_must_agree_with_the_action() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    for chat_type in [0, 2, 3, 7] {
        let mut frame = text_frame(b, &format!("ct-{chat_type}"), "x");
        frame["chat_type"] = json!(chat_type);
        let reply = wa.request(frame).await;
        assert_frame_error(&reply, 400, None, &format!("single_chat with chat_type {chat_type}"));
        assert_eq!(reply["msg_id"], format!("ct-{chat_type}"), "{reply}");
    }
    wb.expect_nothing_pending().await;
    let ack = wa.request(text_frame(b, "ct-1", "agrees")).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["seq"], 1, "refused frames used no seq: {ack}");
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = Server::start_with(&["--max-frame-bytes", "1024"]).await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    // Under the limit is fine.
    let small = "s".repeat(800);
    let frame = text_frame(b, "fits", &small);
    assert!(frame.to_string().len() < 1024);
    let ack = wa.request(frame).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(wb.recv().await["msg"], small.as_str());

    let big = text_frame(b, "too-big", &"b".repeat(2000));
    wa.send(big).await;
    let code = wa.recv_close().await;
    assert_eq!(code, Some(1009), "a frame over --max-frame-bytes closes with 1009");
    // Nothing of it was delivered; bob's connection is unaffected.
    wb.expect_nothing_pending().await;
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let server = Server::start_with(&["--rate-limit", "5", "--rate-burst", "5"]).await;
    let (_, ta) = server.register("alice").await;
    let (mut wa, _) = server.connect(&ta).await;

    for _ in 0..20 {
        wa.send(json!({"action": "ping"})).await;
    }
    let mut replies = Vec::new();
    for _ in 0..20 {
        replies.push(wa.recv().await);
    }
    for (i, reply) in replies.iter().take(5).enumerate() {
        assert_eq!(reply["action"], "pong", "reply {i} is within the burst: {reply}");
    }
    let mut limited = 0;
    for reply in &replies {
        if reply["action"] == "error" {
            assert_frame_error(reply, 429, None, "rate limited");
            limited += 1;
        } else {
            assert_eq!(reply["action"], "pong", "{reply}");
        }
    }
    assert!(limited >= 1, "20 pings at once with a burst of 5 must be limited: {replies:?}");

    // Every frame got exactly one reply: the next frame answers the next ping.
    wa.send(json!({"action": "ping"})).await;
    let next = wa.recv().await;
    assert!(
        next["action"] == "pong" || (next["action"] == "error" && next["code"] == 429),
        "expected only the reply to the last ping, got {next}"
    );

    // It recovers as tokens refill.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = wa.request(json!({"action": "ping"})).await;
        if reply["action"] == "pong" {
            break;
        }
        assert_frame_error(&reply, 429, None, "while waiting for tokens");
        assert!(tokio::time::Instant::now() < deadline, "rate limit never let a frame through again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends a `ping` frame every 100 ms until the server closes the socket (bounded by WAIT);
/// every reply before the close must be a pong, or the 401 of a frame that raced the close.
/// Returns the close code.
async fn ping_until_closed(ws: &mut Ws) -> u16 {
    use futures_util::{SinkExt, StreamExt};
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A send may fail once the server has closed; the close frame is still read below.
        let _ = ws.stream.send(Message::text(json!({"action": "ping"}).to_string())).await;
        let next = tokio::time::timeout_at(deadline, ws.stream.next()).await.expect("still open after WAIT");
        match next {
            Some(Ok(Message::Text(text))) => {
                let reply: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                if reply["action"] == "error" {
                    assert_frame_error(&reply, 401, None, "a frame that raced the close");
                } else {
                    assert_eq!(reply["action"], "pong", "{reply}");
                }
            }
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)).expect("a close code"),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn expired_token_during_session_closes_with_4001() {
    let server = Server::start_with(&["--token-ttl", "2"]).await;
    let (_, token) = server.register("alice").await;
    let (mut ws, _) = server.connect(&token).await;
    assert_eq!(ping_until_closed(&mut ws).await, 4001);
}

#[tokio::test]
async fn logout_during_session_closes_with_4001() {
    let server = Server::start().await;
    let (_, token) = server.register("alice").await;
    let (mut ws, _) = server.connect(&token).await;
    assert_alive(&mut ws, "connect").await;
    let (status, body) = server.post_json("/user/logout", json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ping_until_closed(&mut ws).await, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_drop_a_dead_connection() {
    let server = Server::start_with(&["--ping-interval", "1"]).await;
    let (_, token) = server.register("alice").await;
    let dead = raw_upgrade(server.addr, &token).await;
    wait_online(&server, 1, WAIT).await;
    // The raw socket never reads and never answers pings: it must be dropped.
    wait_online(&server, 0, WAIT).await;
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_stays_connected() {
    let server = Server::start_with(&["--ping-interval", "1"]).await;
    let (_, token) = server.register("alice").await;
    let (mut ws, _) = server.connect(&token).await;
    // Keep polling (the client library answers pings) for more than two intervals.
    let quiet = ws.try_recv(Duration::from_millis(3500)).await;
    assert!(quiet.is_none(), "no frame expected while idle: {quiet:?}");
    assert_alive(&mut ws, "idle time with server pings").await;
    assert_eq!(online(&server).await, 1);
}

#[tokio::test]
async fn a_client_close_is_answered_and_the_user_goes_offline() {
    let server = Server::start().await;
    let (_, token) = server.register("closer").await;
    let (mut ws, _) = server.connect(&token).await;
    ws.stream.close(None).await.expect("send close");
    let reply = tokio::time::timeout(WAIT, async {
        loop {
            match futures_util::StreamExt::next(&mut ws.stream).await {
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return false,
            }
        }
    })
    .await
    .expect("no close reply within the timeout");
    assert!(reply, "the server answers a close frame with its own");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, health) = server.get("/health", None).await;
        if health["data"]["online"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still online after closing: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
