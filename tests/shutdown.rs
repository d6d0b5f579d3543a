//! SIGTERM: clients get close code 1001, the exit status is 0 and everything acknowledged is
//! still there after a restart (PROTOCOL.md 4).
mod common;

use std::collections::HashMap;

use common::{Server, WAIT, single_chat_id, text_frame};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_exits_0_and_keeps_messages() {
    let mut server = Server::start().await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;
    let (mut wb, _) = server.connect(&tb).await;
    let (mut wb2, _) = server.connect_device(&tb, "mobile").await;

    let mut acked = Vec::new();
    for i in 1..=3 {
        let ack = wa.request(text_frame(b, &format!("t-{i}"), &format!("m{i}"))).await;
        assert_eq!(ack["action"], "ack", "{ack}");
        acked.push(ack);
        wb.recv_action("single_chat").await;
        wb2.recv_action("single_chat").await;
    }

    // Read the close frames while the server shuts down.
    let (status, ca, cb, cb2) = tokio::join!(server.terminate(), wa.recv_close(), wb.recv_close(), wb2.recv_close());
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status:?}");
    assert_eq!(ca, Some(1001), "alice's close code");
    assert_eq!(cb, Some(1001), "bob's close code");
    assert_eq!(cb2, Some(1001), "bob's second device's close code");

    let server = server.restart().await;
    let (status, body) = server.get(&format!("/message/history?chat_id={}", single_chat_id(a, b)), Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    let messages = body["data"]["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3, "{body}");
    for (m, ack) in messages.iter().zip(&acked) {
        assert_eq!(m["id"], ack["id"], "{m}");
        assert_eq!(m["seq"], ack["seq"], "{m}");
    }
    // Delivered to two devices but never read: a third device of bob gets them.
    let (_wb, synced) = server.connect_device(&tb, "desk").await;
    assert_eq!(synced.len(), 3, "{synced:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_keeps_every_acked_message() {
    let mut server = Server::start_with(&["--rate-limit", "0"]).await;
    let (a, ta) = server.register("alice").await;
    let (b, tb) = server.register("bob").await;
    let (mut wa, _) = server.connect(&ta).await;

    const N: usize = 100;
    for i in 0..N {
        wa.send(text_frame(b, &format!("s-{i}"), &format!("m{i}"))).await;
    }
    // Wait for the first ack so some are certainly stored, then SIGTERM mid-stream.
    let mut acks: HashMap<String, Value> = HashMap::new();
    let first = wa.recv().await;
    assert_eq!(first["action"], "ack", "{first}");
    acks.insert(first["msg_id"].as_str().expect("msg_id").to_string(), first);

    let collect = async {
        let mut close = None;
        loop {
            match wa.stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    let ack: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    assert_eq!(ack["action"], "ack", "{ack}");
                    assert_eq!(ack["code"], 200, "{ack}");
                    acks.insert(ack["msg_id"].as_str().expect("msg_id").to_string(), ack);
                }
                Some(Ok(Message::Close(frame))) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        close
    };
    let (status, close) = tokio::join!(server.terminate(), async {
        tokio::time::timeout(WAIT, collect).await.expect("socket did not close after SIGTERM")
    });
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert_eq!(close, Some(1001), "close code on SIGTERM");
    drop(wa);

    let server = server.restart().await;
    let (status, body) =
        server.get(&format!("/message/history?chat_id={}&limit=200", single_chat_id(a, b)), Some(&ta)).await;
    assert_eq!(status, 200, "{body}");
    let messages = body["data"]["messages"].as_array().expect("messages");
    let seqs: Vec<u64> = messages.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=messages.len() as u64).collect::<Vec<_>>(), "no gaps");
    assert!(messages.len() >= acks.len(), "{} stored < {} acked", messages.len(), acks.len());
    for (msg_id, ack) in &acks {
        assert!(
            messages.iter().any(|m| m["id"] == ack["id"] && m["seq"] == ack["seq"]),
            "acked {msg_id} missing after SIGTERM and restart: {ack}"
        );
    }
    let (_wb, synced) = server.connect(&tb).await;
    assert_eq!(synced.len(), messages.len(), "bob syncs everything stored");
}

#[tokio::test]
async fn sigterm_with_no_clients_exits_0() {
    let mut server = Server::start().await;
    server.register("alice").await;
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    // And the restarted server still knows the account.
    let server = server.restart().await;
    let (status, body) =
        server.post_json("/user/login", json!({"username": "alice", "password": "secret-pw"}), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_clean_stop_leaves_the_database_in_one_file() {
    // About SQLite's WAL file: SQLite whatever the backend under test.
    let mut server = Server::start_sqlite_with(&[]).await;
    let (_, token) = server.register("alice").await;
    // Reads open the read-only connections, which must not be the last to close.
    let (status, _) = server.get("/message/conversations", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(server.terminate().await.code(), Some(0));
    let wal = server.db.with_extension("db-wal");
    assert!(!wal.exists(), "the WAL is checkpointed and removed at a clean stop: {}", wal.display());
}

/// The signal handlers exist before the ready line: a SIGTERM sent the moment `listening on`
/// appears takes the graceful path (exit 0), never the default action (death by signal).
#[tokio::test]
async fn sigterm_right_after_the_ready_line_exits_0_every_time() {
    for attempt in 1..=20 {
        let mut server = Server::start().await;
        let status = server.terminate().await;
        assert_eq!(status.code(), Some(0), "attempt {attempt}: SIGTERM right after start: {status:?}");
    }
}
