//! Rooms (group chat): HTTP room management, `join_group`/`leave_group` frames, delivery to
//! every member connection, sync, history and conversations for rooms (PROTOCOL.md 2, 3.1-3.3).

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{Value, json};
use util::*;

#[tokio::test]
async fn room_create_returns_timestamped_distinct_chat_ids() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;

    let (status, body) = server.post_json("/room/create", json!({}), None).await;
    assert_error(status, &body, 401, "create room without a token");

    let mut ids = HashSet::new();
    for i in 0..5 {
        let body = if i % 2 == 0 { json!({}) } else { json!({"name": format!("room {i}")}) };
        let (status, body) = server.post_json("/room/create", body, Some(&alice_t)).await;
        let data = ok(status, &body, "create room");
        let chat_id = data["chat_id"].as_str().unwrap_or_else(|| panic!("chat_id is a string: {body}"));
        check_room_id(chat_id, alice);
        assert!(ids.insert(chat_id.to_string()), "room chat_id {chat_id} handed out twice: {ids:?}");
    }
    assert_eq!(ids.len(), 5);

    // Form bodies work too.
    let (status, body) = server.post_form("/room/create", &[("name", "form room")], Some(&alice_t)).await;
    let data = ok(status, &body, "create room (form)");
    let chat_id = data["chat_id"].as_str().expect("chat_id").to_string();
    check_room_id(&chat_id, alice);
    assert!(!ids.contains(&chat_id), "form room got a used chat_id {chat_id}");

    // The creator is a member of every room it made.
    for chat_id in ids.iter().chain([&chat_id]) {
        let (status, body) = members(&server, &alice_t, chat_id).await;
        let data = ok(status, &body, "members of a new room");
        assert_eq!(data["chat_id"], json!(chat_id), "{body}");
        let list = data["members"].as_array().unwrap_or_else(|| panic!("members is a list: {body}"));
        assert_eq!(list.len(), 1, "only the creator is in a new room: {body}");
        assert_eq!(list[0]["uid"], json!(alice), "{body}");
        assert_eq!(list[0]["username"], "alice", "{body}");
        assert_eq!(list[0]["online"], json!(false), "creator is not connected: {body}");
    }
}

#[tokio::test]
async fn room_join_leave_members_and_online_flags() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (_carol, carol_t) = server.register("carol").await;
    let room = create_room(&server, &alice_t).await;
    let unknown = "2_999_991231235959";

    // Unknown rooms are 404 for join, leave and members.
    let (status, body) = join(&server, &bob_t, unknown).await;
    assert_error(status, &body, 404, "join an unknown room");
    let (status, body) = leave(&server, &bob_t, unknown).await;
    assert_error(status, &body, 404, "leave an unknown room");
    let (status, body) = members(&server, &alice_t, unknown).await;
    assert_error(status, &body, 404, "members of an unknown room");

    // No token: 401.
    let (status, body) = server.post_json("/room/join", json!({"chat_id": room}), None).await;
    assert_error(status, &body, 401, "join without a token");
    let (status, body) = server.get(&format!("/room/members?chat_id={room}"), None).await;
    assert_error(status, &body, 401, "members without a token");

    // Not a member yet: 403.
    let (status, body) = members(&server, &bob_t, &room).await;
    assert_error(status, &body, 403, "members asked by a non-member");

    let (status, body) = join(&server, &bob_t, &room).await;
    let data = ok(status, &body, "bob joins");
    assert_eq!(data["chat_id"], json!(room), "{body}");

    // Both members listed, nobody online.
    let (status, body) = members(&server, &bob_t, &room).await;
    let data = ok(status, &body, "members asked by bob");
    assert_eq!(uids_in(&data, "members"), HashSet::from([alice, bob]), "{body}");
    assert_eq!(online_in(&data, "members", alice), Some(false), "{body}");
    assert_eq!(online_in(&data, "members", bob), Some(false), "{body}");
    let bob_entry = data["members"].as_array().unwrap().iter().find(|m| m["uid"] == json!(bob)).unwrap();
    assert_eq!(bob_entry["username"], "bob", "{body}");

    // Carol is still not a member.
    let (status, body) = members(&server, &carol_t, &room).await;
    assert_error(status, &body, 403, "members asked by carol (not a member)");

    // A connected member is online; the other is not.
    let (mut bob_ws, _) = server.connect(&bob_t).await;
    let (status, body) = members(&server, &alice_t, &room).await;
    let data = ok(status, &body, "members while bob is connected");
    assert_eq!(online_in(&data, "members", bob), Some(true), "bob is connected: {body}");
    assert_eq!(online_in(&data, "members", alice), Some(false), "alice is not connected: {body}");

    // After bob disconnects his flag goes back to false.
    bob_ws.stream.close(None).await.ok();
    drop(bob_ws);
    wait_online_in(&server, &alice_t, &format!("/room/members?chat_id={room}"), "members", bob, false).await;

    // Leaving: bob is no longer listed and can no longer ask.
    let (status, body) = leave(&server, &bob_t, &room).await;
    let data = ok(status, &body, "bob leaves");
    assert_eq!(data["chat_id"], json!(room), "{body}");
    let (status, body) = members(&server, &alice_t, &room).await;
    let data = ok(status, &body, "members after bob left");
    assert_eq!(uids_in(&data, "members"), HashSet::from([alice]), "{body}");
    let (status, body) = members(&server, &bob_t, &room).await;
    assert_error(status, &body, 403, "members asked by bob after leaving");
}

#[tokio::test]
async fn room_membership_survives_restart() {
    let mut server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (carol, carol_t) = server.register("carol").await;
    let room = create_room(&server, &alice_t).await;
    let (status, body) = join(&server, &bob_t, &room).await;
    ok(status, &body, "bob joins");
    let (status, body) = join(&server, &carol_t, &room).await;
    ok(status, &body, "carol joins");
    let (status, body) = leave(&server, &carol_t, &room).await;
    ok(status, &body, "carol leaves");

    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let server = server.restart().await;

    let (status, body) = members(&server, &bob_t, &room).await;
    let data = ok(status, &body, "members after restart");
    assert_eq!(uids_in(&data, "members"), HashSet::from([alice, bob]), "membership after restart: {body}");
    assert!(!uids_in(&data, "members").contains(&carol));
    let (status, body) = members(&server, &carol_t, &room).await;
    assert_error(status, &body, 403, "carol left before the restart");

    // Bob can still talk in the room, carol cannot.
    let (mut bob_ws, _) = server.connect(&bob_t).await;
    let ack = reply(&mut bob_ws, group_frame(&room, "after-restart", "still here")).await;
    assert_ack(&ack, "after-restart", &room);
    let (mut carol_ws, _) = server.connect(&carol_t).await;
    let err = reply(&mut carol_ws, group_frame(&room, "carol-1", "let me in")).await;
    assert_frame_error(&err, 403, Some("carol-1"), "carol posts after leaving before the restart");
}

#[tokio::test]
async fn join_and_leave_group_frames() {
    let server = Server::start().await;
    let (_alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (_carol, carol_t) = server.register("carol").await;
    let room = create_room(&server, &alice_t).await;
    let (mut bob_ws, _) = server.connect(&bob_t).await;
    let (mut carol_ws, _) = server.connect(&carol_t).await;

    // Not a member: group_chat is 403.
    let err = reply(&mut bob_ws, group_frame(&room, "b-0", "hello?")).await;
    assert_frame_error(&err, 403, Some("b-0"), "group_chat by a non-member");

    // join_group
    let r = reply(&mut bob_ws, json!({"action": "join_group", "chat_type": 2, "chat_id": room})).await;
    assert_eq!(r["action"], "join_group", "{r}");
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["chat_id"], json!(room), "{r}");
    let (status, body) = members(&server, &alice_t, &room).await;
    let data = ok(status, &body, "members after join_group");
    assert!(uids_in(&data, "members").contains(&bob), "bob joined by frame: {body}");
    let ack = reply(&mut bob_ws, group_frame(&room, "b-1", "hi all")).await;
    assert_ack(&ack, "b-1", &room);

    // chat_type may be omitted.
    let r = reply(&mut carol_ws, json!({"action": "join_group", "chat_id": room})).await;
    assert_eq!(r["action"], "join_group", "{r}");
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["chat_id"], json!(room), "{r}");

    // leave_group
    let r = reply(&mut bob_ws, json!({"action": "leave_group", "chat_type": 2, "chat_id": room})).await;
    assert_eq!(r["action"], "leave_group", "{r}");
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["chat_id"], json!(room), "{r}");
    let (status, body) = members(&server, &alice_t, &room).await;
    let data = ok(status, &body, "members after leave_group");
    assert!(!uids_in(&data, "members").contains(&bob), "bob left by frame: {body}");
    let err = reply(&mut bob_ws, group_frame(&room, "b-2", "still here?")).await;
    assert_frame_error(&err, 403, Some("b-2"), "group_chat after leave_group");

    // Unknown rooms: 404 for join_group and group_chat.
    let unknown = "2_999_991231235959";
    let err = reply(&mut bob_ws, json!({"action": "join_group", "chat_type": 2, "chat_id": unknown})).await;
    assert_frame_error(&err, 404, None, "join_group of an unknown room");
    let err = reply(&mut bob_ws, group_frame(unknown, "b-3", "anyone?")).await;
    assert_frame_error(&err, 404, Some("b-3"), "group_chat to an unknown room");

    // The connections stay usable.
    bob_ws.expect_nothing_pending().await;
}

#[tokio::test]
async fn group_chat_reaches_every_member_connection_except_the_sender_connection() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (_carol, carol_t) = server.register("carol").await;
    let (_dave, dave_t) = server.register("dave").await;
    let (_erin, erin_t) = server.register("erin").await;
    let room = create_room(&server, &alice_t).await;
    for t in [&bob_t, &carol_t, &dave_t] {
        let (status, body) = join(&server, t, &room).await;
        ok(status, &body, "join");
    }

    let (mut a1, _) = server.connect_device(&alice_t, "web").await;
    let (mut a2, _) = server.connect_device(&alice_t, "mobile").await;
    let (mut b, _) = server.connect(&bob_t).await;
    let (mut c, _) = server.connect(&carol_t).await;
    // dave stays offline.

    let ack1 = reply(&mut a1, group_frame(&room, "g-1", "hello, everyone.")).await;
    assert_ack(&ack1, "g-1", &room);
    for ws in [&mut a2, &mut b, &mut c] {
        let f = ws.recv_action("group_chat").await;
        assert_group_message(&f, &room, &ack1, alice, "alice", "hello, everyone.");
    }
    // Exactly one copy each, and none back to the sending connection.
    for ws in [&mut a1, &mut a2, &mut b, &mut c] {
        ws.expect_nothing_pending().await;
    }

    // Bob answers: both of alice's devices and carol get it, bob's connection does not.
    let ack2 = reply(&mut b, group_frame(&room, "g-2", "hi alice")).await;
    assert_ack(&ack2, "g-2", &room);
    assert_eq!(ack2["seq"].as_u64(), Some(ack1["seq"].as_u64().unwrap() + 1), "seq counts up by one: {ack1} {ack2}");
    for ws in [&mut a1, &mut a2, &mut c] {
        let f = ws.recv_action("group_chat").await;
        assert_group_message(&f, &room, &ack2, bob, "bob", "hi alice");
    }
    for ws in [&mut a1, &mut a2, &mut b, &mut c] {
        ws.expect_nothing_pending().await;
    }

    // Dave was offline: both messages arrive through sync, in order.
    let (mut d, synced) = server.connect(&dave_t).await;
    let got: Vec<&Value> = synced.iter().filter(|f| f["chat_id"] == json!(room)).collect();
    assert_eq!(got.len(), 2, "dave's sync has the room's two messages: {synced:?}");
    assert_group_message(got[0], &room, &ack1, alice, "alice", "hello, everyone.");
    assert_group_message(got[1], &room, &ack2, bob, "bob", "hi alice");
    d.expect_nothing_pending().await;

    // History, for members only.
    let (status, body) = history(&server, &carol_t, &room).await;
    let data = ok(status, &body, "room history");
    assert_eq!(data["chat_id"], json!(room), "{body}");
    let msgs = data["messages"].as_array().unwrap_or_else(|| panic!("messages list: {body}"));
    assert_eq!(msgs.len(), 2, "{body}");
    assert_eq!(msgs[0]["id"], ack1["id"], "{body}");
    assert_eq!(msgs[0]["from_uid"], json!(alice), "{body}");
    assert_eq!(msgs[0]["msg"], "hello, everyone.", "{body}");
    assert_eq!(msgs[1]["id"], ack2["id"], "{body}");
    assert_eq!(msgs[1]["from_uid"], json!(bob), "{body}");
    assert_eq!(data["has_more"], json!(false), "{body}");
    let (status, body) = history(&server, &erin_t, &room).await;
    assert_error(status, &body, 403, "room history for a non-member");
    let (status, body) = history(&server, &erin_t, "2_999_991231235959").await;
    assert_error(status, &body, 404, "history of an unknown room");

    // Conversations: chat_type 2 with unread counts.
    let last_seq = ack2["seq"].as_u64().unwrap();
    let conv = conversation(&server, &carol_t, &room).await;
    assert_eq!(conv["chat_type"], 2, "{conv}");
    assert_eq!(conv["last_seq"].as_u64(), Some(last_seq), "{conv}");
    assert_eq!(conv["unread"], 2, "carol has read nothing: {conv}");
    let conv = conversation(&server, &alice_t, &room).await;
    assert_eq!(conv["chat_type"], 2, "{conv}");
    assert_eq!(conv["unread"], 1, "alice's own message is not unread for her: {conv}");
    let conv = conversation(&server, &bob_t, &room).await;
    assert_eq!(conv["unread"], 0, "bob sent the latest message: {conv}");

    // Reading clears carol's unread count.
    let r = reply(&mut c, json!({"action": "read", "chat_id": room, "seq": last_seq})).await;
    assert_eq!(r["action"], "read", "{r}");
    assert_eq!(r["code"], 200, "{r}");
    let conv = conversation(&server, &carol_t, &room).await;
    assert_eq!(conv["unread"], 0, "after read: {conv}");
    assert_eq!(conv["read_seq"].as_u64(), Some(last_seq), "{conv}");
}

#[tokio::test]
async fn leavers_get_no_more_group_messages_and_cannot_post() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (_bob, bob_t) = server.register("bob").await;
    let (_carol, carol_t) = server.register("carol").await;
    let room = create_room(&server, &alice_t).await;
    for t in [&bob_t, &carol_t] {
        let (status, body) = join(&server, t, &room).await;
        ok(status, &body, "join");
    }
    let (mut a, _) = server.connect(&alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;
    let (mut c, _) = server.connect(&carol_t).await;

    // While members, both get alice's message.
    let ack = reply(&mut a, group_frame(&room, "before", "before leaving")).await;
    assert_ack(&ack, "before", &room);
    for ws in [&mut b, &mut c] {
        let f = ws.recv_action("group_chat").await;
        assert_group_message(&f, &room, &ack, alice, "alice", "before leaving");
        ws.expect_nothing_pending().await;
    }

    // Bob leaves by frame, carol over HTTP.
    let r = reply(&mut b, json!({"action": "leave_group", "chat_type": 2, "chat_id": room})).await;
    assert_eq!(r["action"], "leave_group", "{r}");
    assert_eq!(r["code"], 200, "{r}");
    let (status, body) = leave(&server, &carol_t, &room).await;
    ok(status, &body, "carol leaves over HTTP");
    let (status, body) = members(&server, &alice_t, &room).await;
    let data = ok(status, &body, "members after both left");
    assert_eq!(uids_in(&data, "members"), HashSet::from([alice]), "{body}");

    // Alice's next message reaches neither of them.
    let ack = reply(&mut a, group_frame(&room, "after", "after leaving")).await;
    assert_ack(&ack, "after", &room);
    b.expect_nothing_pending().await;
    c.expect_nothing_pending().await;

    // Neither may post any more.
    let err = reply(&mut b, group_frame(&room, "b-after", "wait")).await;
    assert_frame_error(&err, 403, Some("b-after"), "bob posts after leaving");
    let err = reply(&mut c, group_frame(&room, "c-after", "wait")).await;
    assert_frame_error(&err, 403, Some("c-after"), "carol posts after leaving");
    a.expect_nothing_pending().await;

    // Nor does the post-leave message come to them through sync.
    drop(b);
    let (_b2, synced) = server.connect(&bob_t).await;
    assert!(
        !synced.iter().any(|f| f["id"] == ack["id"]),
        "bob left the room but its later message was synced to him: {synced:?}"
    );
    let (_c2, synced) = server.connect(&carol_t).await;
    assert!(
        !synced.iter().any(|f| f["id"] == ack["id"]),
        "carol left the room but its later message was synced to her: {synced:?}"
    );
}

mod util {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::common::*;
    use serde_json::{Value, json};

    pub fn assert_group_message(f: &Value, chat_id: &str, ack: &Value, from: u64, from_name: &str, msg: &str) {
        assert_eq!(f["action"], "group_chat", "{f}");
        assert_eq!(f["chat_type"], 2, "{f}");
        assert_eq!(f["chat_id"], chat_id, "{f}");
        assert_eq!(f["msg_id"], ack["msg_id"], "{f}");
        assert_delivered_text(f, ack, from, from_name, msg);
    }

    pub async fn join(server: &Server, token: &str, chat_id: &str) -> (u16, Value) {
        server.post_json("/room/join", json!({"chat_id": chat_id}), Some(token)).await
    }

    pub async fn leave(server: &Server, token: &str, chat_id: &str) -> (u16, Value) {
        server.post_json("/room/leave", json!({"chat_id": chat_id}), Some(token)).await
    }

    pub async fn members(server: &Server, token: &str, chat_id: &str) -> (u16, Value) {
        server.get(&format!("/room/members?chat_id={chat_id}"), Some(token)).await
    }

    /// The caller's entry for `chat_id` in `/message/conversations`.
    pub async fn conversation(server: &Server, token: &str, chat_id: &str) -> Value {
        let (status, body) = server.get("/message/conversations", Some(token)).await;
        let data = ok(status, &body, "conversations");
        let list = data["conversations"].as_array().unwrap_or_else(|| panic!("conversations list: {body}"));
        list.iter()
            .find(|c| c["chat_id"] == chat_id)
            .unwrap_or_else(|| panic!("no conversation {chat_id}: {body}"))
            .clone()
    }

    /// `2_<uid>_<yymmddHHMMSS>` with an optional suffix that does not run into the timestamp;
    /// the timestamp is the current time (server local time or UTC).
    pub fn check_room_id(chat_id: &str, uid: u64) {
        let prefix = format!("2_{uid}_");
        let rest = chat_id
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("room chat_id {chat_id:?} does not start with {prefix:?}"));
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        assert_eq!(
            digits.len(),
            12,
            "room chat_id {chat_id:?}: expected 12 timestamp digits (yymmddHHMMSS) after {prefix:?}"
        );
        let n = |i: usize| digits[i..i + 2].parse::<i64>().unwrap();
        let (yy, mo, dd, hh, mi, ss) = (n(0), n(2), n(4), n(6), n(8), n(10));
        assert!(
            (1..=12).contains(&mo) && (1..=31).contains(&dd) && hh < 24 && mi < 60 && ss < 60,
            "room chat_id {chat_id:?}: {digits} is not a yymmddHHMMSS time"
        );
        let secs = days_from_civil(2000 + yy, mo, dd) * 86_400 + hh * 3600 + mi * 60 + ss;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(
            (secs - now).abs() <= 15 * 3600,
            "room chat_id {chat_id:?}: timestamp {digits} is not the current time (now = {now} s since the epoch)"
        );
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
}
