//! A reader too slow for its frames is closed with 1008 once its outbound queue is full, and
//! loses nothing: what it missed is stored and comes back through sync and history.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_closed_with_1008_and_catches_up_by_sync() {
    let server = Server::start_with(&["--rate-limit", "0", "--outbox-bytes", "16384"]).await;
    let (_, alice) = server.register("alice").await;
    let (bob_uid, bob) = server.register("bob").await;

    // Bob reads nothing until Alice is done.
    let mut slow = slow_reader(server.addr, &bob).await;
    let (mut sender, _) = server.connect(&alice).await;
    let mut acked = overrun(&mut sender, bob_uid).await;

    // Every ack was queued after the frame for Bob, so his queue has overflowed by now.
    assert_eq!(slow.recv_close().await, Some(1008), "the slow reader is closed with 1008");

    // Nothing is lost: the newest 200 come back through sync, all of them through history.
    let (_, synced) = server.connect(&bob).await;
    let last = *acked.iter().max().expect("acks");
    let synced_seqs: Vec<i64> = synced.iter().map(|f| f["seq"].as_i64().expect("seq")).collect();
    let newest: Vec<i64> = (last - 199..=last).collect();
    assert_eq!(synced_seqs, newest, "sync brings the newest 200, in order");

    let chat_id = synced[0]["chat_id"].as_str().expect("chat_id").to_string();
    let mut stored: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut path = format!("/message/history?chat_id={chat_id}&limit=200");
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        let (status, body) = server.get(&path, Some(&bob)).await;
        assert_eq!(status, 200, "{body}");
        let page: &Vec<Value> = body["data"]["messages"].as_array().expect("messages");
        stored.extend(page.iter().map(|m| m["seq"].as_i64().expect("seq")));
        if body["data"]["has_more"] != true {
            break;
        }
        before = page.first().and_then(|m| m["seq"].as_i64());
    }
    stored.sort_unstable();
    acked.sort_unstable();
    assert_eq!(stored, acked, "every acknowledged message is in the history");
}
