//! One connection, one order: frames sent back to back (pipelined, without waiting for
//! replies) are answered in the order they were sent, and each sees the effects of the ones
//! before it (join then send, leave then send, read then sync, message then ping).

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Sends every frame in one write (as a program that does not wait for replies does), then
/// returns the next `frames.len()` frames received.
async fn pipeline(ws: &mut Ws, frames: &[Value]) -> Vec<Value> {
    for frame in frames {
        ws.stream.feed(Message::text(frame.to_string())).await.expect("ws feed");
    }
    ws.stream.flush().await.expect("ws flush");
    let mut replies = Vec::with_capacity(frames.len());
    for _ in frames {
        replies.push(ws.recv().await);
    }
    replies
}

fn join_frame(room: &str) -> Value {
    json!({"action": "join_group", "chat_type": 2, "chat_id": room})
}

fn leave_frame(room: &str) -> Value {
    json!({"action": "leave_group", "chat_type": 2, "chat_id": room})
}

#[tokio::test]
async fn pipelined_join_then_group_chat_is_accepted() {
    let server = Server::start().await;
    let (_alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let room = create_room(&server, &alice_t).await;
    let (mut a, _) = server.connect(&alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;

    let replies = pipeline(&mut b, &[join_frame(&room), group_frame(&room, "b-1", "hi all")]).await;
    assert_eq!(replies[0]["action"], "join_group", "the join is answered first: {replies:?}");
    assert_eq!(replies[0]["code"], 200, "{replies:?}");
    assert_ack(&replies[1], "b-1", &room);

    let f = a.recv_action("group_chat").await;
    assert_eq!(f["from_uid"], json!(bob), "{f}");
    assert_eq!(f["msg"], "hi all", "{f}");
}

#[tokio::test]
async fn pipelined_leave_then_group_chat_is_refused() {
    let server = Server::start().await;
    let (_alice, alice_t) = server.register("alice").await;
    let (_bob, bob_t) = server.register("bob").await;
    let room = create_room(&server, &alice_t).await;
    let (status, body) = server.post_json("/room/join", json!({"chat_id": room}), Some(&bob_t)).await;
    ok(status, &body, "bob joins");
    let (mut b, _) = server.connect(&bob_t).await;

    let replies = pipeline(&mut b, &[leave_frame(&room), group_frame(&room, "b-1", "too late")]).await;
    assert_eq!(replies[0]["action"], "leave_group", "the leave is answered first: {replies:?}");
    assert_eq!(replies[0]["code"], 200, "{replies:?}");
    assert_frame_error(&replies[1], 403, Some("b-1"), "group_chat after a pipelined leave");

    let (status, body) = history(&server, &alice_t, &room).await;
    let data = ok(status, &body, "room history");
    assert_eq!(data["messages"], json!([]), "the refused message is not stored: {body}");
}

#[tokio::test]
async fn join_send_leave_send_ping_are_answered_in_order() {
    let server = Server::start().await;
    let (_alice, alice_t) = server.register("alice").await;
    let (_bob, bob_t) = server.register("bob").await;
    let room = create_room(&server, &alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;

    let replies = pipeline(
        &mut b,
        &[
            join_frame(&room),
            group_frame(&room, "b-1", "in"),
            leave_frame(&room),
            group_frame(&room, "b-2", "out"),
            json!({"action": "ping"}),
        ],
    )
    .await;
    let actions: Vec<&Value> = replies.iter().map(|r| &r["action"]).collect();
    assert_eq!(actions, ["join_group", "ack", "leave_group", "error", "pong"], "{replies:?}");
    assert_ack(&replies[1], "b-1", &room);
    assert_frame_error(&replies[3], 403, Some("b-2"), "group_chat after the leave");
}

#[tokio::test]
async fn replies_wait_for_the_acks_of_earlier_messages() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, _bob_t) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut a, _) = server.connect(&alice_t).await;

    // A message, then a ping: the pong comes after the ack.
    for round in 0..5 {
        let id = format!("a-{round}");
        let replies = pipeline(&mut a, &[text_frame(bob, &id, "hello"), json!({"action": "ping"})]).await;
        assert_ack(&replies[0], &id, &chat);
        assert_eq!(replies[1]["action"], "pong", "round {round}: {replies:?}");
    }

    // Immediate refusals (a bad frame, an unknown action) wait for the acks before them too.
    let replies = pipeline(
        &mut a,
        &[
            text_frame(bob, "b-1", "one"),
            json!({"action": "no_such_action", "msg_id": "x-1"}),
            text_frame(bob, "b-2", "two"),
            text_frame(bob, "b-3", ""),
            json!({"action": "ping"}),
        ],
    )
    .await;
    assert_ack(&replies[0], "b-1", &chat);
    assert_frame_error(&replies[1], 404, Some("x-1"), "unknown action");
    assert_ack(&replies[2], "b-2", &chat);
    assert_frame_error(&replies[3], 400, Some("b-3"), "empty text");
    assert_eq!(replies[4]["action"], "pong", "{replies:?}");
}

#[tokio::test]
async fn a_read_is_reflected_by_the_next_sync() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut a, _) = server.connect(&alice_t).await;
    for i in 1..=3 {
        send_text(&mut a, bob, &format!("a-{i}"), &format!("message {i}")).await;
    }

    let (mut b, synced) = server.connect(&bob_t).await;
    assert_eq!(seqs(&synced), [1, 2, 3], "bob was offline: {synced:?}");
    // read then ping, back to back: the read's reply comes first, so once the pong is here
    // the read is committed.
    let replies =
        pipeline(&mut b, &[json!({"action": "read", "chat_id": chat, "seq": 3}), json!({"action": "ping"})]).await;
    assert_eq!(replies[0]["action"], "read", "the read is answered before the pong: {replies:?}");
    assert_eq!(replies[0]["seq"], 3, "{replies:?}");
    assert_eq!(replies[1]["action"], "pong", "{replies:?}");

    let (_b2, synced) = server.connect_device(&bob_t, "phone").await;
    assert!(synced.is_empty(), "a read conversation is not synced again: {synced:?}");
}
