//! 1:1 chat over WebSocket: acks, delivery shape, seq, devices, dedup, identity, read, ping
//! (PROTOCOL.md 3; BEHAVIOUR.md "Messages").
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Server, assert_frame_error, send_text, single_chat_id, text_frame};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

#[tokio::test]
async fn ack_then_delivery_have_the_contract_shape() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let before = now_ms();
    let ack = send_text(&mut wa, b, "c-1", "hello").await;
    let after = now_ms();
    assert_eq!(ack["msg_id"], "c-1", "{ack}");
    let id = ack["id"].as_u64().unwrap_or_else(|| panic!("id must be a number: {ack}"));
    assert_eq!(ack["chat_id"], single_chat_id(a, b).as_str(), "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    let ts = ack["ts"].as_i64().unwrap_or_else(|| panic!("ts must be a number: {ack}"));
    assert!(ts >= before - 2_000 && ts <= after + 2_000, "ts is ms since the epoch: {ts} not in [{before}, {after}]");

    let got = wb.recv().await;
    assert_eq!(got["action"], "single_chat", "{got}");
    assert_eq!(got["chat_type"], 1, "{got}");
    assert_eq!(got["chat_id"], single_chat_id(a, b).as_str(), "{got}");
    assert_eq!(got["seq"], 1, "{got}");
    assert_eq!(got["id"].as_u64(), Some(id), "{got}");
    assert_eq!(got["msg_id"], "c-1", "{got}");
    assert_eq!(got["msg_type"], "text", "{got}");
    assert_eq!(got["msg"], "hello", "{got}");
    assert_eq!(got["from_uid"].as_u64(), Some(a), "{got}");
    assert_eq!(got["from_name"], "alice", "{got}");
    assert_eq!(got["to_uid"].as_u64(), Some(b), "{got}");
    assert_eq!(got["uid"].as_u64(), Some(a), "uid repeats from_uid: {got}");
    assert_eq!(got["ts"].as_i64(), Some(ts), "{got}");
    assert!(got.get("code").is_none() || got["code"] == 200, "{got}");

    // The sender's connection got only the ack; the recipient only the delivery.
    wa.expect_nothing_pending().await;
    wb.expect_nothing_pending().await;
}

#[tokio::test]
async fn chat_id_is_the_same_in_both_directions() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;
    let expected = single_chat_id(a, b);

    // From the larger uid to the smaller one.
    let ack = send_text(&mut wb, a, "b-1", "hi alice").await;
    assert_eq!(ack["chat_id"], expected.as_str(), "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    let got = wa.recv().await;
    assert_eq!(got["chat_id"], expected.as_str(), "{got}");
    assert_eq!(got["from_uid"].as_u64(), Some(b), "{got}");
    assert_eq!(got["to_uid"].as_u64(), Some(a), "{got}");
    assert_eq!(got["from_name"], "bob", "{got}");

    let ack = send_text(&mut wa, b, "a-1", "hi bob").await;
    assert_eq!(ack["chat_id"], expected.as_str(), "{ack}");
    assert_eq!(ack["seq"], 2, "one conversation, one sequence: {ack}");
    let got = wb.recv().await;
    assert_eq!(got["seq"], 2, "{got}");
}

#[tokio::test]
async fn optional_fields_may_be_omitted_and_to_uid_may_be_a_string() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    // No chat_type, no msg_id.
    let ack = wa.request(json!({"action": "single_chat", "msg_type": "text", "to_uid": b, "msg": "no ids"})).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    let got = wb.recv().await;
    assert_eq!(got["msg"], "no ids", "{got}");
    assert_eq!(got["from_uid"].as_u64(), Some(a), "{got}");

    // to_uid as a string of digits (old PHP clients).
    let ack = wa.request(text_frame(0, "s-1", "string uid")).await;
    assert_eq!(ack["action"], "error", "to_uid 0 is nobody: {ack}");
    let mut frame = text_frame(b, "s-1", "string uid");
    frame["to_uid"] = json!(b.to_string());
    let ack = wa.request(frame).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["seq"], 2, "{ack}");
    let got = wb.recv().await;
    assert_eq!(got["msg"], "string uid", "{got}");
    assert_eq!(got["to_uid"].as_u64(), Some(b), "to_uid is a number in deliveries: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_counts_up_without_gaps_and_messages_arrive_in_order() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    // Pipelined: send 100 frames, then collect the acks.
    const N: u64 = 100;
    for i in 1..=N {
        wa.send(text_frame(b, &format!("p-{i}"), &format!("msg {i}"))).await;
    }
    let mut ids = std::collections::HashSet::new();
    for i in 1..=N {
        let ack = wa.recv().await;
        assert_eq!(ack["action"], "ack", "{ack}");
        assert_eq!(ack["code"], 200, "{ack}");
        assert_eq!(ack["msg_id"], format!("p-{i}"), "acks come in sending order: {ack}");
        assert_eq!(ack["seq"], i, "{ack}");
        assert!(ids.insert(ack["id"].as_u64().expect("id")), "ids are unique: {ack}");
    }
    for i in 1..=N {
        let got = wb.recv().await;
        assert_eq!(got["action"], "single_chat", "{got}");
        assert_eq!(got["seq"], i, "deliveries in seq order without gaps: {got}");
        assert_eq!(got["msg"], format!("msg {i}"), "{got}");
    }
    wb.expect_nothing_pending().await;

    // Both directions share the one sequence.
    for i in 0..10u64 {
        let (from, to, peer) = if i % 2 == 0 { (&mut wa, b, &mut wb) } else { (&mut wb, a, &mut wa) };
        let ack = send_text(from, to, &format!("x-{i}"), "ping-pong").await;
        assert_eq!(ack["seq"], N + 1 + i, "{ack}");
        let got = peer.recv().await;
        assert_eq!(got["seq"], N + 1 + i, "{got}");
    }
}

#[tokio::test]
async fn every_device_gets_it_and_the_sender_gets_a_mirror() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut a1, _) = server.connect_device(&ta, "web").await;
    let (mut a2, _) = server.connect_device(&ta, "mobile").await;
    let (mut b1, _) = server.connect_device(&tb, "web").await;
    let (mut b2, _) = server.connect_device(&tb, "desk").await;

    let ack = send_text(&mut a1, b, "md-1", "to all devices").await;
    let id = ack["id"].clone();
    for (name, ws) in [("b1", &mut b1), ("b2", &mut b2), ("a2 (mirror)", &mut a2)] {
        let got = ws.recv().await;
        assert_eq!(got["action"], "single_chat", "{name}: {got}");
        assert_eq!(got["id"], id, "{name}: {got}");
        assert_eq!(got["seq"], 1, "{name}: {got}");
        assert_eq!(got["msg"], "to all devices", "{name}: {got}");
        assert_eq!(got["from_uid"].as_u64(), Some(a), "{name}: {got}");
        assert_eq!(got["to_uid"].as_u64(), Some(b), "{name}: {got}");
        assert_eq!(got["chat_id"], single_chat_id(a, b).as_str(), "{name}: {got}");
    }
    // The sending connection got only its ack; nobody got anything twice.
    a1.expect_nothing_pending().await;
    a2.expect_nothing_pending().await;
    b1.expect_nothing_pending().await;
    b2.expect_nothing_pending().await;

    // And the other way round, from bob's second device.
    let ack = send_text(&mut b2, a, "md-2", "reply").await;
    for (name, ws) in [("a1", &mut a1), ("a2", &mut a2), ("b1 (mirror)", &mut b1)] {
        let got = ws.recv().await;
        assert_eq!(got["id"], ack["id"], "{name}: {got}");
        assert_eq!(got["from_uid"].as_u64(), Some(b), "{name}: {got}");
        assert_eq!(got["seq"], 2, "{name}: {got}");
    }
    b2.expect_nothing_pending().await;
    a1.expect_nothing_pending().await;
    a2.expect_nothing_pending().await;
    b1.expect_nothing_pending().await;
}

#[tokio::test]
async fn same_msg_id_again_is_a_duplicate() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wa2, _) = server.connect_device(&ta, "mobile").await;
    let (mut wb, _) = server.connect(&tb).await;

    let first = send_text(&mut wa, b, "dup-1", "once").await;
    assert_eq!(wb.recv().await["id"], first["id"]);
    assert_eq!(wa2.recv().await["id"], first["id"]);

    // Again, even with other content: the original ack, marked duplicate.
    let again = wa.request(text_frame(b, "dup-1", "twice?")).await;
    assert_eq!(again["action"], "ack", "{again}");
    assert_eq!(again["code"], 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["msg_id"], "dup-1", "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(again["seq"], first["seq"], "{again}");
    assert_eq!(again["chat_id"], first["chat_id"], "{again}");
    assert_eq!(again["ts"], first["ts"], "{again}");
    // Nothing new was delivered anywhere.
    wb.expect_nothing_pending().await;
    wa2.expect_nothing_pending().await;
    wa.expect_nothing_pending().await;

    // From another connection of the same user: still a duplicate.
    let from_other_device = wa2.request(text_frame(b, "dup-1", "thrice?")).await;
    assert_eq!(from_other_device["duplicate"], true, "{from_other_device}");
    assert_eq!(from_other_device["id"], first["id"], "{from_other_device}");
    wb.expect_nothing_pending().await;
    wa.expect_nothing_pending().await;

    // After reconnecting: still a duplicate.
    drop(wa);
    let (mut wa3, _) = server.connect(&ta).await;
    let later = wa3.request(text_frame(b, "dup-1", "again")).await;
    assert_eq!(later["duplicate"], true, "{later}");
    assert_eq!(later["seq"], first["seq"], "{later}");
    wb.expect_nothing_pending().await;

    // The duplicate used no seq: the next message is seq 2.
    let next = send_text(&mut wa3, b, "dup-2", "next").await;
    assert_eq!(next["seq"], 2, "{next}");
    let got = wb.recv().await;
    assert_eq!(got["seq"], 2, "{got}");

    // History holds the message once.
    let (status, body) = server.get(&format!("/message/history?chat_id={}", single_chat_id(a, b)), Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    let messages = body["data"]["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "{body}");
    assert_eq!(messages[0]["msg"], "once", "{body}");
}

#[tokio::test]
async fn dedup_is_per_user_across_conversations() {
    // "Sending the same msg_id again from the same user stores and delivers nothing new."
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (c, tc) = server.register("carol").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;
    let (mut wc, _) = server.connect(&tc).await;

    let first = send_text(&mut wa, b, "same-id", "to bob").await;
    wb.recv_action("single_chat").await;
    let again = wa.request(text_frame(c, "same-id", "to carol")).await;
    assert_eq!(again["action"], "ack", "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(again["chat_id"], first["chat_id"], "the original ack: {again}");
    wc.expect_nothing_pending().await;
    wb.expect_nothing_pending().await;
}

#[tokio::test]
async fn same_msg_id_from_another_user_is_not_a_duplicate() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let first = send_text(&mut wa, b, "shared", "from alice").await;
    assert_eq!(wb.recv().await["msg"], "from alice");
    let second = send_text(&mut wb, a, "shared", "from bob").await;
    assert_ne!(second["id"], first["id"], "{second}");
    assert_eq!(second["seq"], 2, "{second}");
    let got = wa.recv().await;
    assert_eq!(got["msg"], "from bob", "{got}");
    assert_eq!(got["from_uid"].as_u64(), Some(b), "{got}");
}

#[tokio::test]
async fn unknown_recipient_is_404_and_self_is_400() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (mut wa, _) = server.connect(&ta).await;

    let reply = wa.request(text_frame(999_999, "nobody-1", "hello?")).await;
    assert_frame_error(&reply, 404, None, "message to an unknown uid");
    assert_eq!(reply["msg_id"], "nobody-1", "error carries the msg_id: {reply}");
    wa.expect_nothing_pending().await;

    let reply = wa.request(text_frame(a, "self-1", "me")).await;
    assert_frame_error(&reply, 400, None, "message to oneself");
    assert_eq!(reply["msg_id"], "self-1", "{reply}");

    let pong = wa.request(json!({"action": "ping"})).await;
    assert_eq!(pong["action"], "pong", "the connection still works: {pong}");
}

#[tokio::test]
async fn identity_comes_from_the_token_only() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (c, tc) = server.register("carol").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;
    let (mut wc, _) = server.connect(&tc).await;

    let mut frame = text_frame(b, "spoof-1", "who am I");
    frame["from_uid"] = json!(c);
    frame["from"] = json!(c);
    frame["uid"] = json!(c);
    frame["from_name"] = json!("carol");
    frame["openid"] = json!("carol-openid");
    let ack = wa.request(frame).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["chat_id"], single_chat_id(a, b).as_str(), "the chat is alice-bob: {ack}");

    let got = wb.recv().await;
    assert_eq!(got["from_uid"].as_u64(), Some(a), "{got}");
    assert_eq!(got["uid"].as_u64(), Some(a), "{got}");
    assert_eq!(got["from_name"], "alice", "{got}");
    assert_eq!(got["chat_id"], single_chat_id(a, b).as_str(), "{got}");
    wc.expect_nothing_pending().await;
}

#[tokio::test]
async fn image_messages_carry_an_object() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;

    let image = json!({"url": "https://example.com/cat.png", "width": 640, "height": 480});
    let ack = wa
        .request(json!({"action": "single_chat", "chat_type": 1, "msg_type": "image",
                        "msg_id": "img-1", "to_uid": b, "msg": image}))
        .await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    let got = wb.recv().await;
    assert_eq!(got["msg_type"], "image", "{got}");
    assert_eq!(got["msg"], image, "{got}");
    assert_eq!(got["from_uid"].as_u64(), Some(a), "{got}");

    // History keeps the object too.
    let (status, body) = server.get(&format!("/message/history?chat_id={}", single_chat_id(a, b)), Some(&tb)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["messages"][0]["msg"], image, "{body}");

    // An image with a string body is refused.
    let reply = wa
        .request(json!({"action": "single_chat", "msg_type": "image", "msg_id": "img-2",
                        "to_uid": b, "msg": "not an object"}))
        .await;
    assert_frame_error(&reply, 400, None, "image with a string body");
    wb.expect_nothing_pending().await;
}

#[tokio::test]
async fn read_replies_is_mirrored_and_never_moves_back() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut b1, _) = server.connect_device(&tb, "web").await;
    let (mut b2, _) = server.connect_device(&tb, "mobile").await;
    let chat = single_chat_id(a, b);
    for i in 1..=3 {
        send_text(&mut wa, b, &format!("r-{i}"), &format!("m{i}")).await;
        b1.recv_action("single_chat").await;
        b2.recv_action("single_chat").await;
    }

    let reply = b1.request(json!({"action": "read", "chat_id": chat, "seq": 2})).await;
    assert_eq!(reply["action"], "read", "{reply}");
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["chat_id"], chat.as_str(), "{reply}");
    assert_eq!(reply["seq"], 2, "{reply}");

    let mirror = b2.recv().await;
    assert_eq!(mirror["action"], "read", "the read is mirrored to the other device: {mirror}");
    assert_eq!(mirror["chat_id"], chat.as_str(), "{mirror}");
    assert_eq!(mirror["seq"], 2, "{mirror}");
    b1.expect_nothing_pending().await;
    b2.expect_nothing_pending().await;
    // The sender is not told about bob's read position.
    wa.expect_nothing_pending().await;

    // Reading a lower seq keeps the higher one.
    let reply = b1.request(json!({"action": "read", "chat_id": chat, "seq": 1})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    let (status, body) = server.get("/message/conversations", Some(&tb)).await;
    assert_eq!(status, 200, "{body}");
    let conv = &body["data"]["conversations"][0];
    assert_eq!(conv["read_seq"], 2, "read never moves back: {body}");
    assert_eq!(conv["unread"], 1, "{body}");

    // The next connect syncs only what is after the read position.
    let (_b3, synced) = server.connect_device(&tb, "desk").await;
    let synced_seqs: Vec<&Value> = synced.iter().map(|m| &m["seq"]).collect();
    assert_eq!(synced_seqs, vec![&json!(3)], "{synced:?}");

    // seq as a string of digits is accepted.
    let reply = b1.request(json!({"action": "read", "chat_id": chat, "seq": "3"})).await;
    assert_eq!(reply["action"], "read", "{reply}");
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["seq"], 3, "{reply}");
    let (status, body) = server.get("/message/conversations", Some(&tb)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["conversations"][0]["read_seq"], 3, "{body}");
    assert_eq!(body["data"]["conversations"][0]["unread"], 0, "{body}");
}

#[tokio::test]
async fn ping_gets_pong() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (mut wa, _) = server.connect(&ta).await;
    for _ in 0..3 {
        let pong = wa.request(json!({"action": "ping"})).await;
        assert_eq!(pong["action"], "pong", "{pong}");
        assert_eq!(pong["code"], 200, "{pong}");
    }
    wa.expect_nothing_pending().await;
}
