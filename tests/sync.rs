//! Offline delivery and sync at connect (PROTOCOL.md 3.3; BEHAVIOUR.md "Sync").
mod common;

use common::{Server, Ws, metric_value, send_text, seqs, single_chat_id, text_frame};
use serde_json::{Value, json};

#[tokio::test]
async fn offline_messages_arrive_between_connected_and_sync_done() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let mut acks = Vec::new();
    for i in 1..=5 {
        acks.push(send_text(&mut wa, b, &format!("off-{i}"), &format!("m{i}")).await);
    }

    // By hand, to see every frame in order.
    let mut wb = Ws::connect(server.addr, &format!("/?access_token={tb}&device=mobile")).await.expect("upgrade");
    let connected = wb.recv().await;
    assert_eq!(connected["action"], "connected", "{connected}");
    assert_eq!(connected["uid"].as_u64(), Some(b), "{connected}");
    assert_eq!(connected["username"], "bob", "{connected}");
    assert_eq!(connected["device"], "mobile", "{connected}");
    for (i, ack) in acks.iter().enumerate() {
        let got = wb.recv().await;
        assert_eq!(got["action"], "single_chat", "{got}");
        assert_eq!(got["chat_type"], 1, "{got}");
        assert_eq!(got["chat_id"], single_chat_id(a, b).as_str(), "{got}");
        assert_eq!(got["seq"], i as u64 + 1, "ascending seq: {got}");
        assert_eq!(got["id"], ack["id"], "{got}");
        assert_eq!(got["msg_id"], format!("off-{}", i + 1), "{got}");
        assert_eq!(got["msg_type"], "text", "{got}");
        assert_eq!(got["msg"], format!("m{}", i + 1), "{got}");
        assert_eq!(got["from_uid"].as_u64(), Some(a), "{got}");
        assert_eq!(got["from_name"], "alice", "{got}");
        assert_eq!(got["to_uid"].as_u64(), Some(b), "{got}");
        assert_eq!(got["uid"].as_u64(), Some(a), "{got}");
        assert_eq!(got["ts"], ack["ts"], "{got}");
    }
    let done = wb.recv().await;
    assert_eq!(done["action"], "sync_done", "{done}");
    assert_eq!(done["count"], 5, "{done}");
    wb.expect_nothing_pending().await;

    // Live messages after sync_done still arrive.
    send_text(&mut wa, b, "live-1", "live").await;
    let got = wb.recv().await;
    assert_eq!(got["seq"], 6, "{got}");
}

#[tokio::test]
async fn connected_frame_names_the_device_and_accepts_from_source() {
    let server = Server::start().await;
    let (uid, token) = server.register("alice").await;
    for (query, device) in [("device=desk", "desk"), ("fromSource=mobile", "mobile"), ("device=web", "web")] {
        let mut ws = Ws::connect(server.addr, &format!("/?access_token={token}&{query}")).await.expect("upgrade");
        let connected = ws.recv().await;
        assert_eq!(connected["action"], "connected", "{connected}");
        assert_eq!(connected["uid"].as_u64(), Some(uid), "{connected}");
        assert_eq!(connected["username"], "alice", "{connected}");
        assert_eq!(connected["device"], device, "{query}: {connected}");
        let done = ws.recv().await;
        assert_eq!(done["action"], "sync_done", "{done}");
        assert_eq!(done["count"], 0, "{done}");
    }
}

#[tokio::test]
async fn delivered_but_unread_is_synced_again() {
    let server = Server::start().await;
    let (_, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, synced) = server.connect(&tb).await;
    assert!(synced.is_empty(), "{synced:?}");

    let ack1 = send_text(&mut wa, b, "u-1", "one").await;
    let ack2 = send_text(&mut wa, b, "u-2", "two").await;
    assert_eq!(wb.recv().await["id"], ack1["id"]);
    assert_eq!(wb.recv().await["id"], ack2["id"]);
    drop(wb);

    // Delivered to "web", never read: bob's other devices get both, same ids. ("web" itself
    // does not get them again: tests/device_sync.rs.)
    let (wb, synced) = server.connect_device(&tb, "mobile").await;
    assert_eq!(seqs(&synced), vec![1, 2], "{synced:?}");
    assert_eq!(synced[0]["id"], ack1["id"]);
    assert_eq!(synced[1]["id"], ack2["id"]);
    drop(wb);

    // Two more devices connecting at the same time both get them.
    let (_w1, s1) = server.connect_device(&tb, "desk").await;
    let (_w2, s2) = server.connect_device(&tb, "tablet").await;
    assert_eq!(seqs(&s1), vec![1, 2]);
    assert_eq!(seqs(&s2), vec![1, 2]);

    // The sender never gets their own messages through sync.
    let (_wa2, synced) = server.connect_device(&ta, "mobile").await;
    assert!(synced.is_empty(), "own messages are read for the sender: {synced:?}");
}

#[tokio::test]
async fn after_reading_everything_nothing_is_synced() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    for i in 1..=4 {
        send_text(&mut wa, b, &format!("r-{i}"), "x").await;
    }
    let (mut wb, synced) = server.connect_device(&tb, "d1").await;
    assert_eq!(seqs(&synced), vec![1, 2, 3, 4]);

    // Read up to 2: 3 and 4 come again (to a device that has not had them).
    let reply = wb.request(json!({"action": "read", "chat_id": single_chat_id(a, b), "seq": 2})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    drop(wb);
    let (mut wb, synced) = server.connect_device(&tb, "d2").await;
    assert_eq!(seqs(&synced), vec![3, 4]);

    // Read up to the last seq: nothing.
    let reply = wb.request(json!({"action": "read", "chat_id": single_chat_id(a, b), "seq": 4})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    drop(wb);
    let (mut wb, synced) = server.connect_device(&tb, "d3").await;
    assert!(synced.is_empty(), "{synced:?}");

    // A new message afterwards is synced alone.
    send_text(&mut wa, b, "r-5", "five").await;
    wb.recv_action("single_chat").await;
    drop(wb);
    let (_wb, synced) = server.connect_device(&tb, "d4").await;
    assert_eq!(seqs(&synced), vec![5]);
    assert_eq!(synced[0]["msg"], "five");
}

#[tokio::test]
async fn read_position_survives_restart() {
    let mut server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    for i in 1..=3 {
        send_text(&mut wa, b, &format!("p-{i}"), "x").await;
    }
    let (mut wb, _) = server.connect(&tb).await;
    let reply = wb.request(json!({"action": "read", "chat_id": single_chat_id(a, b), "seq": 2})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    drop(wa);
    drop(wb);
    let exit = server.terminate().await;
    assert!(exit.success(), "{exit:?}");
    let server = server.restart().await;
    let (_wb, synced) = server.connect_device(&tb, "mobile").await;
    assert_eq!(seqs(&synced), vec![3], "{synced:?}");
}

#[tokio::test]
async fn several_conversations_each_ascending() {
    let server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (c, tc) = server.register("carol").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wc, _) = server.connect(&tc).await;
    for i in 1..=3 {
        send_text(&mut wa, b, &format!("a-{i}"), &format!("from alice {i}")).await;
        send_text(&mut wc, b, &format!("c-{i}"), &format!("from carol {i}")).await;
    }
    let (_wb, synced) = server.connect(&tb).await;
    assert_eq!(synced.len(), 6, "{synced:?}");
    for (peer, name) in [(a, "alice"), (c, "carol")] {
        let chat = single_chat_id(peer, b);
        let conv: Vec<Value> = synced.iter().filter(|m| m["chat_id"] == chat.as_str()).cloned().collect();
        assert_eq!(seqs(&conv), vec![1, 2, 3], "{chat}: {synced:?}");
        for (i, m) in conv.iter().enumerate() {
            assert_eq!(m["msg"], format!("from {name} {}", i + 1), "{m}");
            assert_eq!(m["from_uid"].as_u64(), Some(peer), "{m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_200_per_conversation_are_synced() {
    let server = Server::start_with(&["--rate-limit", "0"]).await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    const N: u64 = 230;
    for i in 1..=N {
        wa.send(text_frame(b, &format!("big-{i}"), &format!("m{i}"))).await;
    }
    for i in 1..=N {
        let ack = wa.recv().await;
        assert_eq!(ack["action"], "ack", "{ack}");
        assert_eq!(ack["seq"], i, "{ack}");
    }

    let (_wb, synced) = server.connect(&tb).await;
    assert_eq!(synced.len(), 200, "at most 200 per conversation");
    let expected: Vec<u64> = (N - 199..=N).collect();
    assert_eq!(seqs(&synced), expected, "the newest 200, ascending");
    assert_eq!(synced[0]["msg"], format!("m{}", N - 199));

    // The rest through history.
    let chat = single_chat_id(a, b);
    let (status, body) =
        server.get(&format!("/message/history?chat_id={chat}&before={}&limit=200", N - 199), Some(&tb)).await;
    assert_eq!(status, 200, "{body}");
    let older: Vec<Value> = body["data"]["messages"].as_array().expect("messages").clone();
    assert_eq!(seqs(&older), (1..N - 199).collect::<Vec<u64>>(), "{body}");
    assert_eq!(body["data"]["has_more"], false, "{body}");
}

/// Connect-time syncs answered from memory and by the store so far.
async fn sync_sources(server: &Server) -> (f64, f64) {
    let text = server.metrics().await;
    let memory = metric_value(&text, r#"imd_syncs_total{answered_from="memory"}"#).unwrap_or(0.0);
    let store = metric_value(&text, r#"imd_syncs_total{answered_from="store"}"#).unwrap_or(0.0);
    (memory, store)
}

/// Connects `token`, checks what was synced, and returns which source answered the sync.
async fn reconnect(server: &Server, token: &str, want_seqs: &[u64]) -> &'static str {
    let before = sync_sources(server).await;
    let (ws, synced) = server.connect(token).await;
    assert_eq!(seqs(&synced), want_seqs, "{synced:?}");
    drop(ws);
    let after = sync_sources(server).await;
    match (after.0 - before.0, after.1 - before.1) {
        (1.0, 0.0) => "memory",
        (0.0, 1.0) => "store",
        moved => panic!("one sync expected, counters moved by {moved:?}"),
    }
}

#[tokio::test]
async fn nothing_unread_is_known_without_the_store_until_a_message_arrives() {
    // One node: it counts the syncs of its own /metrics.
    let server = Server::start_single_with(&["--admin-token", "admin-secret-0123456789abcdef-0123"]).await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;

    // A new account has nothing unread.
    assert_eq!(reconnect(&server, &tb, &[]).await, "memory");
    let (mut wa, _) = server.connect(&ta).await;

    // A message to bob while he is away: the store is asked, and asked again until he reads
    // (though this device is not sent them again).
    send_text(&mut wa, b, "u-1", "one").await;
    send_text(&mut wa, b, "u-2", "two").await;
    assert_eq!(reconnect(&server, &tb, &[1, 2]).await, "store");
    assert_eq!(reconnect(&server, &tb, &[]).await, "store");
    let (mut wb, synced) = server.connect(&tb).await;
    assert!(synced.is_empty(), "{synced:?}");
    let reply = wb.request(json!({"action": "read", "chat_id": single_chat_id(a, b), "seq": 2})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    drop(wb);
    // Once a sync found nothing, memory answers again.
    assert_eq!(reconnect(&server, &tb, &[]).await, "store");
    assert_eq!(reconnect(&server, &tb, &[]).await, "memory");

    // A group message while bob is away reaches him through the store.
    let room = common::create_room(&server, &ta).await;
    let (status, body) = server.post_json("/room/join", json!({"chat_id": room}), Some(&tb)).await;
    common::ok(status, &body, "bob joins");
    assert_eq!(reconnect(&server, &tb, &[]).await, "store", "a join may race a message: ask once");
    assert_eq!(reconnect(&server, &tb, &[]).await, "memory");
    let ack = wa.request(common::group_frame(&room, "g-1", "to the room")).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(reconnect(&server, &tb, &[1]).await, "store");

    // The sender has read what it sent; a broadcast may be unread for anyone. (Alice goes
    // offline first: her open "web" connection would be sent it live.)
    drop(wa);
    common::wait_online(&server, 0).await;
    assert_eq!(reconnect(&server, &ta, &[]).await, "memory");
    let (status, body) = server
        .post_json("/message/sendPublicMessage", json!({"data": "to all"}), Some("admin-secret-0123456789abcdef-0123"))
        .await;
    common::ok(status, &body, "broadcast");
    assert_eq!(reconnect(&server, &ta, &[1]).await, "store");
}

#[tokio::test]
async fn after_a_restart_every_user_asks_the_store_once() {
    // One node: it counts the syncs of its own /metrics.
    let server = Server::start_single_with(&[]).await;
    let (_, ta) = server.register("alice").await;
    assert_eq!(reconnect(&server, &ta, &[]).await, "memory");
    let server = server.restart().await;
    assert_eq!(reconnect(&server, &ta, &[]).await, "store");
    assert_eq!(reconnect(&server, &ta, &[]).await, "memory");
}
