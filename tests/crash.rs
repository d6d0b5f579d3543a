//! kill -9 in the middle of a pipelined stream loses no acknowledged message
//! (PROTOCOL.md 3.2 "The ack is sent only after the message is durably stored", 4).
mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Server, WAIT, single_chat_id, text_frame};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn frame(to: u64, i: usize) -> Value {
    text_frame(to, &format!("crash-{i}"), &format!("payload {i}"))
}

#[derive(Debug, Clone, PartialEq)]
struct Ack {
    id: u64,
    seq: u64,
}

fn record_ack(acks: &mut HashMap<String, Ack>, ack: &Value) {
    assert_eq!(ack["action"], "ack", "only acks are expected on the sender: {ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    let msg_id = ack["msg_id"].as_str().unwrap_or_else(|| panic!("ack without msg_id: {ack}")).to_string();
    let a = Ack { id: ack["id"].as_u64().expect("id"), seq: ack["seq"].as_u64().expect("seq") };
    let old = acks.insert(msg_id, a);
    assert!(old.is_none(), "one ack per message: {ack}");
}

async fn history(server: &Server, token: &str, chat: &str) -> Vec<Value> {
    // Newest page first, then backwards.
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/message/history?chat_id={chat}&limit=200&before={b}"),
            None => format!("/message/history?chat_id={chat}&limit=200"),
        };
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        let page = body["data"]["messages"].as_array().expect("messages").clone();
        let more = body["data"]["has_more"] == true;
        let first = page.first().map(|m| m["seq"].as_u64().expect("seq"));
        let mut page = page;
        page.extend(all);
        all = page;
        match (more, first) {
            (true, Some(seq)) => before = Some(seq),
            _ => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_no_acknowledged_message() {
    kill9_mid_stream(&["--rate-limit", "0"]).await;
}

/// `--sync normal` gives up only power-loss safety: a killed process still loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_sync_normal_loses_no_acknowledged_message() {
    kill9_mid_stream(&["--rate-limit", "0", "--sync", "normal"]).await;
}

async fn kill9_mid_stream(args: &[&str]) {
    const TOTAL: usize = 150;
    const WINDOW: usize = 30;
    const KILL_AFTER: usize = 50;

    let mut server = Server::start_with(args).await;
    let (a, ta) = server.register("sender").await;
    let (b, tb) = server.register("receiver").await;
    let chat = single_chat_id(a, b);
    let (mut ws, _) = server.connect(&ta).await;

    // Pipelined: keep up to WINDOW messages in flight; kill -9 once KILL_AFTER are acked,
    // while others are still unacknowledged.
    let mut sent = 0;
    let mut acks: HashMap<String, Ack> = HashMap::new();
    while acks.len() < KILL_AFTER {
        while sent < TOTAL && sent - acks.len() < WINDOW {
            ws.send(frame(b, sent)).await;
            sent += 1;
        }
        let ack = ws.recv().await;
        record_ack(&mut acks, &ack);
    }
    server.kill9().await;

    // Acks already on the wire count too: read until the socket ends.
    let drain = async {
        loop {
            match ws.stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    let ack: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    record_ack(&mut acks, &ack);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, drain).await.expect("socket did not end after kill -9");
    drop(ws);
    assert!(acks.len() >= KILL_AFTER);

    let server = server.restart().await;

    // Every acked message is in history with its id and seq; seqs have no gaps.
    let stored = history(&server, &ta, &chat).await;
    let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(seqs, expected, "stored seqs are 1..N without gaps");
    assert!(stored.len() >= acks.len(), "{} stored < {} acked", stored.len(), acks.len());
    let by_id: BTreeMap<u64, &Value> = stored.iter().map(|m| (m["id"].as_u64().expect("id"), m)).collect();
    assert_eq!(by_id.len(), stored.len(), "ids are unique");
    for (msg_id, ack) in &acks {
        let m = by_id.get(&ack.id).unwrap_or_else(|| panic!("acked {msg_id} (id {}) lost after kill -9", ack.id));
        assert_eq!(m["seq"].as_u64(), Some(ack.seq), "{msg_id}: {m}");
        let i: usize = msg_id.trim_start_matches("crash-").parse().expect("index");
        assert_eq!(m["msg"], format!("payload {i}"), "{m}");
    }

    // The receiver gets every acked message through sync, ascending.
    let (mut wb, synced) = server.connect(&tb).await;
    let synced_seqs: Vec<u64> = synced.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(synced_seqs, expected, "sync delivers everything stored, ascending");
    for (msg_id, ack) in &acks {
        assert!(
            synced.iter().any(|m| m["id"].as_u64() == Some(ack.id) && m["seq"].as_u64() == Some(ack.seq)),
            "acked {msg_id} not synced to the receiver"
        );
    }

    // Resending acked msg_ids after the restart: duplicates with the original id/seq.
    let (mut ws, _) = server.connect(&ta).await;
    let mut by_index: Vec<(usize, &Ack)> =
        acks.iter().map(|(k, v)| (k.trim_start_matches("crash-").parse().expect("index"), v)).collect();
    by_index.sort_by_key(|(i, _)| *i);
    for (i, ack) in &by_index {
        let reply = ws.request(frame(b, *i)).await;
        assert_eq!(reply["action"], "ack", "{reply}");
        assert_eq!(reply["duplicate"], true, "resent crash-{i} after restart: {reply}");
        assert_eq!(reply["id"].as_u64(), Some(ack.id), "{reply}");
        assert_eq!(reply["seq"].as_u64(), Some(ack.seq), "{reply}");
    }
    wb.expect_nothing_pending().await;

    // Resending the unacked ones: each is stored exactly once (duplicate if it had made it
    // to disk before the crash, otherwise new with the next seq).
    let mut next_seq = stored.len() as u64 + 1;
    let mut fresh = 0;
    for i in 0..TOTAL {
        if acks.contains_key(&format!("crash-{i}")) {
            continue;
        }
        let reply = ws.request(frame(b, i)).await;
        assert_eq!(reply["action"], "ack", "{reply}");
        assert_eq!(reply["code"], 200, "{reply}");
        if reply["duplicate"] == true {
            let id = reply["id"].as_u64().expect("id");
            let m = by_id.get(&id).unwrap_or_else(|| panic!("duplicate of a message not in history: {reply}"));
            assert_eq!(m["msg"], format!("payload {i}"), "{m}");
        } else {
            assert_eq!(reply["seq"].as_u64(), Some(next_seq), "{reply}");
            next_seq += 1;
            fresh += 1;
        }
    }
    for _ in 0..fresh {
        wb.recv_action("single_chat").await;
    }
    wb.expect_nothing_pending().await;
    let stored = history(&server, &ta, &chat).await;
    assert_eq!(stored.len(), TOTAL, "every message stored exactly once after resending");
    let mut texts: Vec<String> = stored.iter().map(|m| m["msg"].as_str().expect("msg").to_string()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), TOTAL, "no message stored twice");
}
