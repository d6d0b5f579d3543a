//! A reader too slow for its frames is closed with 1008 once its outbound queue is full, and
//! loses nothing: what it missed is stored and comes back through sync and history.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const TEXT_BYTES: usize = 4000;

/// Enough ~4 KB frames to overrun what the kernel can buffer for the slow reader: twice the
/// largest send buffer TCP may grow to (its receive buffer is pinned small below), at least 8 MB.
fn messages_to_overrun() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2).and_then(|max| max.parse::<usize>().ok()))
        .unwrap_or(4 << 20);
    (2 * wmem_max).max(8 << 20) / TEXT_BYTES
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_closed_with_1008_and_catches_up_by_sync() {
    let server = Server::start_with(&["--rate-limit", "0", "--outbox-bytes", "16384"]).await;
    let (_, alice) = server.register("alice").await;
    let (bob_uid, bob) = server.register("bob").await;

    // Bob's socket gets a small receive buffer, so the server's writes back up quickly; he
    // reads nothing until Alice is done.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let url = format!("ws://{}/?access_token={bob}", server.addr);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (slow, _) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade");
    let mut slow = Ws { stream: slow };

    let (mut sender, _) = server.connect(&alice).await;
    let messages = messages_to_overrun();
    // Alice keeps up to 64 messages in flight and reads her acks as they come: she is a
    // reader that keeps up.
    let text = "x".repeat(TEXT_BYTES);
    let mut acked = Vec::new();
    for i in 0..messages {
        let frame = json!({"action": "single_chat", "msg_type": "text", "msg_id": format!("m{i}"),
                           "to_uid": bob_uid, "msg": text});
        sender.send_raw(Message::text(frame.to_string())).await;
        while i + 1 - acked.len() >= 64 || (i + 1 == messages && acked.len() < messages) {
            let reply = sender.recv().await;
            assert_eq!(reply["action"], "ack", "{reply}");
            acked.push(reply["seq"].as_i64().expect("seq"));
        }
    }

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
