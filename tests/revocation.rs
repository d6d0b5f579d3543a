//! Revocation is immediate: logout, token expiry, an admin's revoke (HTTP or `imd user
//! revoke` on the database) close the user's open sockets with 4001 even when they only
//! receive; and every kind of client frame counts against the rate limit (BEHAVIOUR.md
//! "Tokens", "Running"; PROTOCOL.md 3.2, 4).
mod common;

use common::{Server, WAIT, Ws, assert_error, assert_frame_error, ok, run_imd};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Close code of a socket whose token was revoked or expired.
const REVOKED: u16 = 4001;
/// An admin secret long enough for any minimum length.
const ADMIN: &str = "revocation-test-admin-secret-0123456789";
const REVOKE: &str = "/admin/user/revoke";

/// Waits (bounded by WAIT) for the server to close `ws`, skipping other frames; returns the
/// close code and reason. Fails if the stream ends without a close frame.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.stream.next()).await.expect("no close within the timeout");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket failed instead of closing: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

#[track_caller]
fn assert_closed_revoked(close: &(u16, String), reason: &str, what: &str) {
    assert_eq!(close.0, REVOKED, "{what}: close code ({close:?})");
    assert_eq!(close.1, reason, "{what}: close reason ({close:?})");
}

/// The user's token no longer works over HTTP.
async fn assert_token_dead(server: &Server, token: &str, what: &str) {
    let (status, body) = server.get("/user/me", Some(token)).await;
    assert_error(status, &body, 401, what);
}

#[tokio::test]
async fn logout_closes_every_receive_only_socket_of_the_user_with_4001() {
    let server = Server::start().await;
    let (_, alice) = server.register("alice").await;
    let (_, bob) = server.register("bob").await;
    // Alice on two devices, neither of which ever sends a frame.
    let (mut phone, _) = server.connect_device(&alice, "phone").await;
    let (mut web, _) = server.connect_device(&alice, "web").await;
    let (mut bob_ws, _) = server.connect(&bob).await;

    let (status, body) = server.post_json("/user/logout", json!({}), Some(&alice)).await;
    ok(status, &body, "logout");

    assert_closed_revoked(&close_of(&mut phone).await, "logged out", "phone");
    assert_closed_revoked(&close_of(&mut web).await, "logged out", "web");
    assert_token_dead(&server, &alice, "the logged-out token").await;
    assert_eq!(Ws::connect(server.addr, &format!("/?access_token={alice}")).await.err(), Some(401));
    // Nobody else is touched.
    bob_ws.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_receive_only_socket_closes_when_its_token_expires() {
    let server = Server::start_with(&["--token-ttl", "2"]).await;
    let (_, token) = server.register("alice").await;
    let (mut ws, _) = server.connect(&token).await;
    let connected = tokio::time::Instant::now();
    assert_closed_revoked(&close_of(&mut ws).await, "token expired", "expiry");
    // Closed at exp (at most 2 s after connect), not by something else right away.
    assert!(connected.elapsed() > std::time::Duration::from_millis(500), "closed too early: {:?}", connected.elapsed());
}

#[tokio::test]
async fn an_admin_revokes_a_user_over_http_by_name_or_uid() {
    let server = Server::start_with(&["--admin-token", ADMIN]).await;
    let (alice_uid, alice) = server.register("alice").await;
    let (_, bob) = server.register("bob").await;
    let (mut alice_ws, _) = server.connect(&alice).await;
    let (mut bob_ws, _) = server.connect(&bob).await;

    // Credentials first: none, a bad one, a user who is not an admin.
    let (status, body) = server.post_form(REVOKE, &[("username", "alice")], None).await;
    assert_error(status, &body, 401, "revoke without a credential");
    let (status, body) = server.post_form(REVOKE, &[("username", "alice")], Some("not-a-token")).await;
    assert_error(status, &body, 401, "revoke with a bad credential");
    let (status, body) = server.post_form(REVOKE, &[("username", "alice")], Some(&bob)).await;
    assert_error(status, &body, 403, "revoke by a user who is not an admin");
    alice_ws.expect_nothing_pending().await;

    // Unknown users and missing arguments.
    let (status, body) = server.post_form(REVOKE, &[("username", "nobody")], Some(ADMIN)).await;
    assert_error(status, &body, 404, "revoke an unknown name");
    let (status, body) = server.post_form(REVOKE, &[("uid", "4242")], Some(ADMIN)).await;
    assert_error(status, &body, 404, "revoke an unknown uid");
    let (status, body) = server.post_form(REVOKE, &[], Some(ADMIN)).await;
    assert_error(status, &body, 400, "revoke without username or uid");

    let (status, body) = server.post_form(REVOKE, &[("username", "alice")], Some(ADMIN)).await;
    let data = ok(status, &body, "revoke by name");
    assert_eq!(data, json!({"uid": alice_uid, "username": "alice"}));
    assert_closed_revoked(&close_of(&mut alice_ws).await, "token revoked", "revoked by name");
    assert_token_dead(&server, &alice, "a token revoked by an admin").await;
    bob_ws.expect_nothing_pending().await;

    // A new login works, until the next revoke (by uid, JSON body).
    let fresh = server.login("alice").await;
    let (mut again, _) = server.connect(&fresh).await;
    let (status, body) = server.post_json(REVOKE, json!({"uid": alice_uid}), Some(ADMIN)).await;
    let data = ok(status, &body, "revoke by uid");
    assert_eq!(data, json!({"uid": alice_uid, "username": "alice"}));
    assert_closed_revoked(&close_of(&mut again).await, "token revoked", "revoked by uid");
    assert_token_dead(&server, &fresh, "the second token").await;
    bob_ws.expect_nothing_pending().await;
}

#[tokio::test]
async fn imd_user_revoke_on_the_database_closes_the_sockets_of_a_running_daemon() {
    // Works on the SQLite file itself (imd user …, rusqlite): SQLite whatever the backend under test.
    let server = Server::start_sqlite_with(&[]).await;
    let (_, alice) = server.register("alice").await;
    let (_, bob) = server.register("bob").await;
    let (mut alice_ws, _) = server.connect(&alice).await;
    let (mut bob_ws, _) = server.connect(&bob).await;
    let db = server.db.to_str().expect("utf-8 path");

    let out = run_imd(&["user", "revoke", "nobody", "--db", db]).await;
    assert!(!out.status.success(), "revoking an unknown user fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"), "names the user: {out:?}");

    let out = run_imd(&["user", "revoke", "alice", "--db", db]).await;
    assert!(out.status.success(), "imd user revoke alice: {out:?}");
    // The daemon notices the change made by another process within about a second.
    assert_closed_revoked(&close_of(&mut alice_ws).await, "token revoked", "revoked with the CLI");
    assert_token_dead(&server, &alice, "a token revoked with the CLI").await;
    bob_ws.expect_nothing_pending().await;
    let fresh = server.login("alice").await;
    let (mut again, _) = server.connect(&fresh).await;
    again.expect_nothing_pending().await;
}

#[tokio::test]
async fn imd_user_revoke_does_not_create_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.db");
    let out = run_imd(&["user", "revoke", "alice", "--db", missing.to_str().expect("utf-8 path")]).await;
    assert!(!out.status.success(), "revoke on a missing database fails: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db"), "names the file: {out:?}");
    assert!(!missing.exists(), "no database was created");
}

#[tokio::test]
async fn binary_frames_count_against_the_rate_limit() {
    let server = Server::start_with(&["--rate-limit", "1", "--rate-burst", "3"]).await;
    let (_, token) = server.register("alice").await;
    let (mut ws, _) = server.connect(&token).await;
    for _ in 0..10 {
        ws.send_raw(Message::Binary(Bytes::from_static(b"\x00\x01"))).await;
    }
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(ws.recv().await);
    }
    for reply in replies.iter().take(3) {
        assert_frame_error(reply, 400, None, "binary within the burst");
    }
    let limited = replies.iter().filter(|r| r["code"] == 429).count();
    for reply in &replies {
        assert!(reply["code"] == 400 || reply["code"] == 429, "one 400 or 429 per binary frame: {reply}");
    }
    assert!(limited >= 1, "10 binary frames at once with a burst of 3 must be limited: {replies:?}");
}

#[tokio::test]
async fn websocket_pings_count_against_the_rate_limit() {
    let server = Server::start_with(&["--rate-limit", "1", "--rate-burst", "5"]).await;
    let (_, token) = server.register("alice").await;
    let (mut ws, _) = server.connect(&token).await;
    const PINGS: usize = 50;
    for i in 0..PINGS {
        ws.stream.feed(Message::Ping(Bytes::from(vec![i as u8]))).await.expect("feed ping");
    }
    ws.stream.flush().await.expect("flush");
    // Its reply comes after the server has handled every ping before it; the pings spent the
    // tokens (1 a second come back), so it is refused too.
    ws.send(json!({"action": "ping", "msg_id": "last"})).await;
    let mut errors = Vec::<Value>::new();
    let last = loop {
        let frame = ws.recv().await;
        if frame["msg_id"] == "last" || frame["action"] == "pong" {
            break frame;
        }
        errors.push(frame);
    };
    assert_frame_error(&last, 429, Some("last"), "a text frame after a ping flood");
    // One 429 for the stretch of pings over the limit, not one per ping.
    assert_eq!(errors.len(), 1, "one 429 for the ping flood: {errors:?}");
    assert_frame_error(&errors[0], 429, None, "ping flood");
}
