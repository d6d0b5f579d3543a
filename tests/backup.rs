//! `imd backup PATH`: an online copy of a database a running daemon is writing, which holds
//! every message acked before the backup began.
//! Copies SQLite files: every server here runs on SQLite
//! whatever IMD_TEST_BACKEND says.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Every message of `chat_id` in the daemon's history, msg_id → seq (paged with `before`).
async fn all_history(server: &Server, token: &str, chat_id: &str) -> HashMap<String, u64> {
    let mut found = HashMap::new();
    let mut before: Option<u64> = None;
    // Bounded: each page holds at least one message older than the last.
    for _ in 0..10_000 {
        let path = match before {
            Some(b) => format!("/message/history?chat_id={chat_id}&limit=200&before={b}"),
            None => format!("/message/history?chat_id={chat_id}&limit=200"),
        };
        let (status, body) = server.get(&path, Some(token)).await;
        let data = ok(status, &body, "history");
        let page = data["messages"].as_array().expect("messages");
        for m in page {
            found.insert(m["msg_id"].as_str().expect("msg_id").to_string(), m["seq"].as_u64().expect("seq"));
        }
        let oldest = page.iter().filter_map(|m| m["seq"].as_u64()).min();
        match (data["has_more"].as_bool(), oldest) {
            (Some(true), Some(oldest)) => before = Some(oldest),
            _ => return found,
        }
    }
    panic!("history of {chat_id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_messages_flow_has_every_message_acked_before_it() {
    // No rate limit: the sender writes as fast as the daemon acks.
    let server = Server::start_sqlite_with(&["--rate-limit", "0"]).await;
    let (alice, alice_token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let (mut ws, _) = server.connect(&alice_token).await;

    // A sender that keeps writing for 2 s, noting every ack as it comes.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let noted = acked.clone();
    let sender = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(2);
        let mut n = 0u64;
        while Instant::now() < until && n < 100_000 {
            let msg_id = format!("m-{n}");
            let ack = send_text(&mut ws, bob, &msg_id, "backed up?").await;
            noted.lock().unwrap().push((msg_id, ack["seq"].as_u64().expect("seq")));
            n += 1;
        }
    });
    let started = Instant::now();
    while acked.lock().unwrap().len() < 20 {
        assert!(started.elapsed() < WAIT, "the sender got no acks");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("copy.db");
    let db = server.db.to_str().expect("utf-8 path").to_string();
    let copy_arg = copy.to_str().expect("utf-8 path").to_string();
    let before_backup: Vec<(String, u64)> = acked.lock().unwrap().clone();
    let out = run_imd(&["backup", &copy_arg, "--db", &db]).await;
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    let during = acked.lock().unwrap().len();
    sender.await.expect("sender");
    assert!(during > before_backup.len() || acked.lock().unwrap().len() > before_backup.len(), "writes went on");

    let mode = std::fs::metadata(&copy).expect("copy exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy is for its owner only");
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["copy.db".to_string()], "no temporary file is left beside the copy");

    let mut restored = Server::start_on_db(&copy, &[]).await;
    let token = restored.login("alice").await;
    let history = all_history(&restored, &token, &single_chat_id(alice, bob)).await;
    for (msg_id, seq) in &before_backup {
        assert_eq!(history.get(msg_id), Some(seq), "{msg_id} was acked before the backup began");
    }
    restored.terminate().await;

    // An existing file is kept unless --force.
    let again = run_imd(&["backup", &copy_arg, "--db", &db]).await;
    assert_eq!(again.status.code(), Some(1), "refuses to overwrite");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "{}", String::from_utf8_lossy(&again.stderr));
    let forced = run_imd(&["backup", &copy_arg, "--db", &db, "--force"]).await;
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
}

#[tokio::test]
async fn a_missing_database_is_not_backed_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("none.db");
    let copy = dir.path().join("copy.db");
    let out = run_imd(&["backup", copy.to_str().unwrap(), "--db", db.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!db.exists(), "no database was created");
    assert!(!copy.exists(), "no copy was made");
}
