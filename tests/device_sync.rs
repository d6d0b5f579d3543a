//! Each device gets each message once: sync resumes per device after what it already received;
//! `received`; sync flags what it leaves out and reports a failed query; the conversation list
//! is capped (BEHAVIOUR.md "Sync").
mod common;

use std::collections::HashMap;

use common::{Server, WAIT, Ws, group_frame, ok, send_text, seqs, single_chat_id, wait_online};
use serde_json::{Value, json};

/// Opens a socket by hand and reads `connected` .. `sync_done`; returns the socket, the synced
/// frames and the `sync_done` frame.
async fn connect_raw(server: &Server, token: &str, device: &str) -> (Ws, Vec<Value>, Value) {
    let mut ws = Ws::connect(server.addr, &format!("/?access_token={token}&device={device}")).await.expect("upgrade");
    let connected = ws.recv().await;
    assert_eq!(connected["action"], "connected", "{connected}");
    let mut synced = Vec::new();
    loop {
        let frame = ws.recv().await;
        if frame["action"] == "sync_done" {
            assert_eq!(frame["count"].as_u64(), Some(synced.len() as u64), "{frame}");
            return (ws, synced, frame);
        }
        synced.push(frame);
    }
}

/// The `cut` list of a `sync_done` frame, as chat_id -> first_seq.
fn cuts(done: &Value) -> HashMap<String, u64> {
    done["cut"]
        .as_array()
        .unwrap_or_else(|| panic!("sync_done carries a cut list: {done}"))
        .iter()
        .map(|c| (c["chat_id"].as_str().expect("chat_id").to_string(), c["first_seq"].as_u64().expect("first_seq")))
        .collect()
}

async fn conversation(server: &Server, token: &str, chat_id: &str) -> Value {
    let (status, body) = server.get("/message/conversations", Some(token)).await;
    let data = ok(status, &body, "conversations");
    let list = data["conversations"].as_array().expect("conversations").clone();
    list.into_iter().find(|c| c["chat_id"] == chat_id).unwrap_or_else(|| panic!("{chat_id} not listed: {body}"))
}

#[tokio::test]
async fn a_client_that_never_acknowledges_sees_nothing_twice() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let chat = single_chat_id(a, b);
    let (mut wa, _) = server.connect(&ta).await;

    // Bob's client of the old service: it shows what arrives and never sends read/received.
    let (mut wb, _) = server.connect(&tb).await;
    for i in 1..=3 {
        let ack = send_text(&mut wa, b, &format!("live-{i}"), &format!("m{i}")).await;
        assert_eq!(wb.recv_action("single_chat").await["id"], ack["id"]);
    }
    drop(wb);
    wait_online(&server, 1).await;

    // The same device reconnects: nothing again. Another device gets all three.
    let (wb, synced) = server.connect(&tb).await;
    assert!(synced.is_empty(), "already delivered to this device: {synced:?}");
    drop(wb);
    let (wm, synced) = server.connect_device(&tb, "mobile").await;
    assert_eq!(seqs(&synced), vec![1, 2, 3], "{synced:?}");
    drop(wm);

    // What sync itself sent is not sent again either.
    send_text(&mut wa, b, "off-4", "m4").await;
    send_text(&mut wa, b, "off-5", "m5").await;
    wait_online(&server, 1).await;
    let (wb, synced) = server.connect(&tb).await;
    assert_eq!(seqs(&synced), vec![4, 5], "{synced:?}");
    drop(wb);
    let (wb, synced) = server.connect(&tb).await;
    assert!(synced.is_empty(), "synced once already: {synced:?}");
    drop(wb);

    // Delivery is not reading: the unread count still follows `read` only.
    let c = conversation(&server, &tb, &chat).await;
    assert_eq!((c["read_seq"].as_u64(), c["unread"].as_u64()), (Some(0), Some(5)), "{c}");

    // Positions survive a graceful restart.
    drop(wa);
    wait_online(&server, 0).await;
    let mut server = server;
    let exit = server.terminate().await;
    assert!(exit.success(), "{exit:?}");
    let server = server.restart().await;
    let (_wb, synced) = server.connect(&tb).await;
    assert!(synced.is_empty(), "after a restart: {synced:?}");
    let (_wd, synced) = server.connect_device(&tb, "desk").await;
    assert_eq!(seqs(&synced), vec![1, 2, 3, 4, 5], "a device never seen gets everything unread: {synced:?}");
}

#[tokio::test]
async fn received_moves_this_device_forward_and_never_back() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (_c, tc) = server.register("carol").await;
    let chat = single_chat_id(a, b);
    let (mut wa, _) = server.connect(&ta).await;
    for i in 1..=4 {
        send_text(&mut wa, b, &format!("r-{i}"), "x").await;
    }
    let (mut wb, synced) = server.connect_device(&tb, "app").await;
    assert_eq!(seqs(&synced), vec![1, 2, 3, 4]);

    let reply = wb.request(json!({"action": "received", "chat_id": chat, "seq": 2})).await;
    assert_eq!(reply, json!({"action": "received", "code": 200, "chat_id": chat, "seq": 4}), "never back");
    let reply = wb.request(json!({"action": "received", "chat_id": chat, "seq": "99"})).await;
    assert_eq!(reply["seq"], 4, "never past the newest message: {reply}");
    let reply = wb.request(json!({"action": "received", "chat_id": chat})).await;
    common::assert_frame_error(&reply, 400, None, "received without seq");

    // Not a participant: 403, like `read`.
    let (mut wc, _) = server.connect(&tc).await;
    let reply = wc.request(json!({"action": "received", "chat_id": chat, "seq": 1})).await;
    common::assert_frame_error(&reply, 403, None, "received by a stranger");

    // The acknowledged device reconnects: nothing again; unread unchanged.
    drop(wb);
    wait_online(&server, 2).await;
    let (_wb, synced) = server.connect_device(&tb, "app").await;
    assert!(synced.is_empty(), "{synced:?}");
    let c = conversation(&server, &tb, &chat).await;
    assert_eq!(c["unread"], 4, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_cut_at_200_is_flagged() {
    let server = Server::start_with(&["--rate-limit", "0"]).await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    const N: u64 = 230;
    for i in 1..=N {
        wa.send(common::text_frame(b, &format!("big-{i}"), &format!("m{i}"))).await;
    }
    for _ in 1..=N {
        assert_eq!(wa.recv().await["action"], "ack");
    }
    let (_wb, synced, done) = connect_raw(&server, &tb, "web").await;
    assert_eq!(seqs(&synced), (N - 199..=N).collect::<Vec<u64>>());
    let chat = single_chat_id(a, b);
    assert_eq!(cuts(&done), HashMap::from([(chat, N - 199)]), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_sync_is_capped_in_total_and_flags_what_it_leaves_out() {
    // 7 rooms of 180 unread messages each, 1,260 in all: over the 1,000 one sync sends.
    const ROOMS: usize = 7;
    const PER_ROOM: u64 = 180;
    let server = Server::start_with(&["--rate-limit", "0"]).await;
    let (_, ta) = server.register("alice").await;
    let (_, tb) = server.register("bob").await;
    let mut rooms = Vec::new();
    for _ in 0..ROOMS {
        let room = common::create_room(&server, &ta).await;
        let (status, body) = server.post_json("/room/join", json!({"chat_id": room}), Some(&tb)).await;
        ok(status, &body, "bob joins");
        rooms.push(room);
    }
    let (mut wa, _) = server.connect(&ta).await;
    for room in &rooms {
        for i in 1..=PER_ROOM {
            wa.send(group_frame(room, &format!("{room}-{i}"), &format!("m{i}"))).await;
        }
    }
    for _ in 0..ROOMS as u64 * PER_ROOM {
        assert_eq!(wa.recv().await["action"], "ack");
    }

    let (wb, synced, done) = connect_raw(&server, &tb, "web").await;
    assert_eq!(synced.len(), 1000, "at most 1,000 messages per sync");
    let cut = cuts(&done);
    let mut full = 0;
    for room in &rooms {
        let got: Vec<u64> = seqs(&synced.iter().filter(|m| m["chat_id"] == room.as_str()).cloned().collect::<Vec<_>>());
        let first = got.first().copied().unwrap_or(PER_ROOM + 1);
        assert_eq!(got, (first..=PER_ROOM).collect::<Vec<u64>>(), "{room}: the newest, ascending");
        if first == 1 {
            full += 1;
            assert!(!cut.contains_key(room), "{room} was sent whole: {done}");
        } else {
            assert_eq!(cut.get(room), Some(&first), "{room}: the oldest seq sent, or last_seq + 1: {done}");
        }
    }
    assert_eq!((full, cut.len()), (5, 2), "{done}");
    drop(wb);

    // The next connect of that device brings the conversation left out entirely.
    let (_wb, synced, done) = connect_raw(&server, &tb, "web").await;
    assert_eq!(seqs(&synced), (1..=PER_ROOM).collect::<Vec<u64>>(), "{done}");
    assert!(cuts(&done).is_empty(), "{done}");
}

#[tokio::test]
async fn the_conversation_list_is_capped_and_pages() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let mut rooms = Vec::new();
    for _ in 0..5 {
        rooms.push(common::create_room(&server, &ta).await);
    }
    let (status, body) = server.get("/message/conversations", Some(&ta)).await;
    let all = ok(status, &body, "whole list");
    assert_eq!(all["conversations"].as_array().expect("list").len(), 5, "{body}");
    assert_eq!(all["has_more"], false, "{body}");

    let mut paged = Vec::new();
    for (offset, want, more) in [(0, 2, true), (2, 2, true), (4, 1, false)] {
        let (status, body) = server.get(&format!("/message/conversations?limit=2&offset={offset}"), Some(&ta)).await;
        let page = ok(status, &body, "page");
        let list = page["conversations"].as_array().expect("list");
        assert_eq!(list.len(), want, "{body}");
        assert_eq!(page["has_more"], more, "{body}");
        paged.extend(list.iter().map(|c| c["chat_id"].clone()));
    }
    let whole: Vec<Value> =
        all["conversations"].as_array().expect("list").iter().map(|c| c["chat_id"].clone()).collect();
    assert_eq!(paged, whole, "the pages make up the list, in its order");

    for bad in ["limit=0", "limit=501", "limit=x", "offset=-1"] {
        let (status, body) = server.get(&format!("/message/conversations?{bad}"), Some(&ta)).await;
        common::assert_error(status, &body, 400, bad);
    }
}

#[tokio::test]
async fn a_failed_sync_is_an_error_and_a_close_never_sync_done() {
    // Works on the SQLite file itself (imd user …, rusqlite): SQLite whatever the backend under test.
    let server = Server::start_sqlite_with(&[]).await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let ack = send_text(&mut wa, b, "s-1", "waiting").await;

    // Make the sync's message query fail for real: move the table it reads out of the way, from
    // another connection to the same database file, as an operator's mistake would.
    let db = rusqlite::Connection::open(&server.db).expect("open the database");
    db.busy_timeout(WAIT).expect("busy timeout");
    db.execute_batch("ALTER TABLE messages RENAME TO messages_aside").expect("rename");

    let mut wb = Ws::connect(server.addr, &format!("/?access_token={tb}")).await.expect("upgrade");
    assert_eq!(wb.recv().await["action"], "connected");
    let error = wb.recv().await;
    common::assert_frame_error(&error, 503, None, "failed sync");
    assert!(error["message"].as_str().is_some_and(|m| m.starts_with("sync failed: ")), "{error}");
    assert_eq!(wb.recv_close().await, Some(1011), "closed as a server error");

    // Once the table is back, nothing was lost.
    db.execute_batch("ALTER TABLE messages_aside RENAME TO messages").expect("rename back");
    let (_wb, synced) = server.connect(&tb).await;
    assert_eq!(synced.len(), 1, "{synced:?}");
    assert_eq!(synced[0]["id"], ack["id"]);
}

/// Found by the soak: a user's own message moved their read position past other members'
/// messages their other device had not received, and sync never offered those again.
#[tokio::test]
async fn sending_does_not_skip_what_another_device_has_not_received() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (_, tb) = server.register("bob").await;
    let room = common::create_room(&server, &ta).await;
    let (status, body) = server.post_json("/room/join", json!({"chat_id": room}), Some(&tb)).await;
    ok(status, &body, "join");

    // Alice's phone is online; her laptop is not.
    let (mut phone, _) = server.connect_device(&ta, "phone").await;
    let (mut wb, _) = server.connect(&tb).await;
    let from_bob = wb.request(group_frame(&room, "b-1", "from bob")).await;
    assert_eq!(from_bob["code"], 200, "{from_bob}");
    assert_eq!(phone.recv_action("group_chat").await["id"], from_bob["id"]);
    let own = phone.request(group_frame(&room, "a-1", "from alice")).await;
    assert_eq!(own["code"], 200, "{own}");

    // The laptop has received nothing: Bob's message is synced to it; Alice's own is not.
    let (_, synced, _) = connect_raw(&server, &ta, "laptop").await;
    let ids: Vec<&Value> = synced.iter().map(|f| &f["id"]).collect();
    assert_eq!(ids, [&from_bob["id"]], "sync of the laptop: {synced:?}");

    // Once Alice reads up to her own message, nothing is unread for her.
    let mut laptop = connect_raw(&server, &ta, "laptop2").await.0;
    let read = laptop.request(json!({"action": "read", "chat_id": room, "seq": own["seq"]})).await;
    assert_eq!(read["seq"], own["seq"], "{read}");
    assert_eq!(conversation(&server, &ta, &room).await["unread"], 0);
}
