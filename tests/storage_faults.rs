//! Storage failures made to happen for real against the running daemon: failing triggers
//! created in its database while it runs, a write lock held past its busy timeout, and a
//! full filesystem. Whatever fails, every acked
//! message is stored once, nothing answered with an error is stored, seqs have no gaps, and
//! the daemon serves again once the cause is gone (BEHAVIOUR.md "Messages", "Running").
//! Works on SQLite's files (triggers, locks, a full disk): every server here runs on SQLite
//! whatever IMD_TEST_BACKEND says.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{Server, Ws, assert_ack, history, ok, service_chat_id, shop_with_agents, single_chat_id, text_frame};
use serde_json::{Value, json};

/// Runs `sql` on the daemon's database through a connection of the test's own; the daemon's
/// writer sees the schema change at its next statement.
fn db_exec(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).expect("open the daemon's database");
    conn.busy_timeout(std::time::Duration::from_secs(10)).expect("busy timeout");
    conn.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Every message of a conversation, oldest first, as (msg_id, seq), read page by page.
async fn all_messages(server: &Server, token: &str, chat_id: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..100 {
        let path = match before {
            Some(seq) => format!("/message/history?chat_id={chat_id}&limit=200&before={seq}"),
            None => format!("/message/history?chat_id={chat_id}&limit=200"),
        };
        let (status, body) = server.get(&path, Some(token)).await;
        let data = ok(status, &body, "history");
        let page = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
        for m in page {
            let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("seq: {m}"));
            found.push((m["msg_id"].as_str().unwrap_or("").to_string(), seq));
        }
        match page.iter().filter_map(|m| m["seq"].as_u64()).min() {
            Some(oldest) if data["has_more"] == true => before = Some(oldest),
            _ => break,
        }
    }
    found.sort_by_key(|(_, seq)| *seq);
    found
}

/// Asserts that the conversation holds exactly the acked messages, each at the seq its ack
/// named, with seqs 1..=n.
async fn assert_history_is(server: &Server, token: &str, chat_id: &str, acked: &[(String, u64)]) {
    let stored = all_messages(server, token, chat_id).await;
    let seqs: Vec<u64> = stored.iter().map(|(_, seq)| *seq).collect();
    let want: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(seqs, want, "the seqs of {chat_id} have gaps: {stored:?}");
    let mut acked = acked.to_vec();
    acked.sort_by_key(|(_, seq)| *seq);
    assert_eq!(stored, acked, "{chat_id} must hold exactly the acked messages, at their acked seqs");
}

/// Sends every frame at once (so that they share the writer's batches where they can) and
/// returns each one's reply by msg_id.
async fn send_all(ws: &mut Ws, frames: &[Value]) -> HashMap<String, Value> {
    for frame in frames {
        ws.send(frame.clone()).await;
    }
    let mut replies = HashMap::new();
    while replies.len() < frames.len() {
        let reply = ws.recv().await;
        if let Some(msg_id) = reply["msg_id"].as_str().filter(|_| reply.get("code").is_some()) {
            replies.insert(msg_id.to_string(), reply);
        }
    }
    replies
}

#[tokio::test]
async fn a_failure_after_the_row_is_written_stores_nothing_and_the_writer_goes_on() {
    let server = Server::start_sqlite_with(&[]).await;
    let setup = shop_with_agents(&server, "tea", ["agent"]).await;
    let (agent, _) = setup.agents[0];
    let (customer, customer_token) = server.register("customer").await;
    let (bob, _) = server.register("bob").await;
    // The agent is offline, so the message is recorded as waiting for every agent: after its
    // row is written, and that is what fails.
    db_exec(
        &server.db,
        &format!(
            "CREATE TRIGGER fail_route BEFORE INSERT ON participants WHEN NEW.uid = {agent}
             BEGIN SELECT RAISE(ABORT, 'injected'); END"
        ),
    );
    let (mut ws, _) = server.connect(&customer_token).await;
    let to_shop = |msg_id: &str| {
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": msg_id,
               "shop_id": setup.shop, "msg": "help"})
    };
    let refused = ws.request(to_shop("s1")).await;
    assert_eq!(refused["action"], "error", "{refused}");
    assert_eq!(refused["code"], 500, "a message refused for its own reason: {refused}");
    assert_eq!(refused["msg_id"], "s1", "{refused}");

    // The writer is not wedged: the next message is stored.
    let chat = single_chat_id(customer, bob);
    let ack = ws.request(text_frame(bob, "t1", "still here")).await;
    assert_ack(&ack, "t1", &chat);
    assert_eq!(ack["seq"], 1, "{ack}");

    db_exec(&server.db, "DROP TRIGGER fail_route");
    let service = service_chat_id(setup.shop, customer);
    let ack = ws.request(to_shop("s2")).await;
    assert_ack(&ack, "s2", &service);
    assert_eq!(ack["seq"], 1, "the refused message took no seq: {ack}");
    assert_history_is(&server, &customer_token, &service, &[("s2".into(), 1)]).await;
    assert_history_is(&server, &customer_token, &chat, &[("t1".into(), 1)]).await;
}

#[tokio::test]
async fn messages_around_a_rolled_back_transaction_are_each_acked_or_refused_exactly() {
    let server = Server::start_sqlite_with(&[]).await;
    let (alice, alice_token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut ws, _) = server.connect(&alice_token).await;
    let first = ws.request(text_frame(bob, "m0", "before")).await;
    assert_ack(&first, "m0", &chat);

    // Rolls back the writer's whole transaction, whatever else it holds.
    db_exec(
        &server.db,
        "CREATE TRIGGER fail_all BEFORE INSERT ON messages WHEN NEW.body = '\"fail\"'
         BEGIN SELECT RAISE(ROLLBACK, 'injected'); END",
    );
    let texts = ["a", "fail", "b", "c", "fail", "d", "e", "fail", "f"];
    let frames: Vec<Value> =
        texts.iter().enumerate().map(|(i, text)| text_frame(bob, &format!("m{}", i + 1), text)).collect();
    let replies = send_all(&mut ws, &frames).await;
    let mut acked = vec![("m0".to_string(), 1)];
    for (i, text) in texts.iter().enumerate() {
        let msg_id = format!("m{}", i + 1);
        let reply = &replies[&msg_id];
        if *text == "fail" {
            assert_eq!(reply["action"], "error", "{reply}");
            assert_eq!(reply["code"], 500, "{reply}");
        } else {
            // However the writer batched them, a failure takes nothing else with it.
            assert_ack(reply, &msg_id, &chat);
            acked.push((msg_id, reply["seq"].as_u64().unwrap_or(0)));
        }
    }
    assert_history_is(&server, &alice_token, &chat, &acked).await;

    db_exec(&server.db, "DROP TRIGGER fail_all");
    let ack = ws.request(text_frame(bob, "m10", "after")).await;
    assert_ack(&ack, "m10", &chat);
    assert_eq!(ack["seq"], acked.len() as u64 + 1, "the next seq: {ack}");
    acked.push(("m10".into(), acked.len() as u64 + 1));
    assert_history_is(&server, &alice_token, &chat, &acked).await;
}

#[tokio::test]
async fn a_locked_database_is_answered_503_over_websocket_and_http() {
    let server = Server::start_sqlite_with(&[]).await;
    let (alice, alice_token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut ws, _) = server.connect(&alice_token).await;
    // Another process holds the write lock past the daemon's busy timeout (5 s).
    let holder = rusqlite::Connection::open(&server.db).expect("open the daemon's database");
    holder.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");

    let refused = ws.request(text_frame(bob, "locked", "wait")).await;
    assert_eq!(refused["action"], "error", "{refused}");
    assert_eq!(refused["code"], 503, "{refused}");
    assert_eq!(refused["msg_id"], "locked", "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.starts_with("storage unavailable: ")), "{refused}");
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["data"]["status"], "degraded", "{health}");
    let (status, body) =
        server.post_json("/user/register", json!({"username": "carol", "password": "secret-pw"}), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.starts_with("storage unavailable: ")), "{body}");

    holder.execute_batch("COMMIT").expect("release the write lock");
    let ack = ws.request(text_frame(bob, "unlocked", "go")).await;
    assert_ack(&ack, "unlocked", &chat);
    assert_eq!(ack["seq"], 1, "{ack}");
    server.register("carol").await;
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["data"]["status"], "ok", "{health}");
    assert_history_is(&server, &alice_token, &chat, &[("unlocked".into(), 1)]).await;
}

/// A small tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// None when this process may not mount (not root, or no permission in this sandbox).
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Mount { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a daemon killed a moment ago may still hold its files open.
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes to `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let mut written = 0u64;
    // Big chunks first, then small ones for the last pages; bounded by the mount's size.
    for chunk in [64 * 1024, 4096, 512] {
        let block = vec![0x5au8; chunk];
        for _ in 0..100_000 {
            match file.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test]
async fn a_full_disk_is_answered_503_and_served_again_once_space_is_freed() {
    let Some(mount) = Mount::tmpfs("8m") else {
        println!(
            "SKIPPED: a_full_disk_is_answered_503_and_served_again_once_space_is_freed needs root to mount a tmpfs"
        );
        return;
    };
    let mut server = Server::start_on_db(&mount.path().join("imd.db"), &[]).await;
    let (alice, alice_token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut ws, _) = server.connect(&alice_token).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let msg_id = format!("ok{i}");
        let ack = ws.request(text_frame(bob, &msg_id, "room to spare")).await;
        assert_ack(&ack, &msg_id, &chat);
        acked.push((msg_id, ack["seq"].as_u64().unwrap_or(0)));
    }

    let filler = mount.path().join("filler");
    assert!(fill(&filler) > 0, "the filler wrote nothing");
    // Big messages need new pages at once; the WAL cannot start over while checkpoints fail.
    let big = "x".repeat(16 * 1024);
    let mut refusal = None;
    for i in 0..500 {
        let msg_id = format!("full{i}");
        let reply = ws.request(text_frame(bob, &msg_id, &big)).await;
        if reply["action"] == "ack" {
            assert_ack(&reply, &msg_id, &chat);
            acked.push((msg_id, reply["seq"].as_u64().unwrap_or(0)));
            continue;
        }
        refusal = Some(reply);
        break;
    }
    let refusal = refusal.expect("a full filesystem never refused a message");
    assert_eq!(refusal["action"], "error", "{refusal}");
    assert_eq!(refusal["code"], 503, "a full disk is the storage's failure: {refusal}");
    let text = refusal["message"].as_str().unwrap_or("");
    assert!(text.starts_with("storage unavailable: "), "{refusal}");
    assert!(refusal["msg_id"].as_str().is_some_and(|id| id.starts_with("full")), "{refusal}");

    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 503, "/health while the disk is full: {health}");
    assert_eq!(health["data"]["status"], "degraded", "{health}");
    assert!(health["data"]["storage"].as_str().is_some_and(|s| s.starts_with("storage unavailable")), "{health}");

    std::fs::remove_file(&filler).expect("remove the filler");
    let ack = ws.request(text_frame(bob, "after", "space again")).await;
    assert_ack(&ack, "after", &chat);
    acked.push(("after".into(), ack["seq"].as_u64().unwrap_or(0)));
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 200, "/health after a commit: {health}");
    assert_eq!(health["data"]["status"], "ok", "{health}");

    assert_history_is(&server, &alice_token, &chat, &acked).await;
    let (status, _) = history(&server, &alice_token, &chat).await;
    assert_eq!(status, 200);
    server.kill9().await;
}
