//! Start-up on a database with many users shows its progress on stderr when that is a
//! terminal (run under a pseudo-terminal by `script`), and writes nothing of it when stderr is
//! a pipe, so logs stay clean.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{BIN, Server, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const USERS: u64 = 20_000;

/// A database with the daemon's schema and `USERS` users (written directly: bcrypt for each
/// would take minutes).
async fn many_users(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("imd.db");
    let mut server = Server::start_on_db(&db, &[]).await;
    assert!(server.terminate().await.success());
    let mut conn = rusqlite::Connection::open(&db).expect("open");
    let tx = conn.transaction().expect("transaction");
    {
        let mut insert = tx
            .prepare("INSERT INTO users (username, name_key, password_hash, created_at) VALUES (?1, ?1, 'x', 0)")
            .expect("prepare");
        for i in 0..USERS {
            insert.execute([format!("user{i}")]).expect("insert");
        }
    }
    tx.commit().expect("commit");
    db
}

/// SIGTERM to the daemon whose `/health` names its pid, which this test started.
async fn stop(addr: std::net::SocketAddr) {
    let (status, body) = common::http(addr, "GET", "/health", None, None).await;
    assert_eq!(status, 200, "{body}");
    let pid = body["data"]["pid"].as_i64().expect("pid") as i32;
    // SAFETY: kill(2) on the pid of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

#[tokio::test]
async fn start_up_shows_progress_on_a_terminal_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = many_users(dir.path()).await;

    // Under a pseudo-terminal: `script` copies everything the daemon writes to it (stdout and
    // stderr) to its own stdout.
    let command = format!("exec {BIN} start 0 --host 127.0.0.1 --db {}", db.display());
    let mut script = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn script (util-linux)");
    let mut out = BufReader::new(script.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let addr = tokio::time::timeout(WAIT, async {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).await.expect("read") > 0, "imd exited:\n{seen}");
            seen.push_str(&line);
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                return rest.parse::<std::net::SocketAddr>().expect("address");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("imd did not start listening in time"));
    assert!(seen.contains(&format!("start-up: loading users: {USERS}/{USERS} users")), "no progress:\n{seen}");
    assert!(seen.contains("start-up: loading room members: 0/0 members"), "no progress:\n{seen}");
    stop(addr).await;
    let mut rest = String::new();
    let _ = tokio::time::timeout(WAIT, out.read_to_string(&mut rest)).await;
    tokio::time::timeout(WAIT, script.wait()).await.expect("imd did not stop").expect("wait");

    // Stderr a pipe: the same start-up, no progress.
    let mut child = common::imd_start(&db).stderr(Stdio::piped()).spawn().expect("spawn imd");
    let addr = common::listening_address(&mut child).await;
    stop(addr).await;
    let mut err = String::new();
    let mut stderr = child.stderr.take().expect("stderr");
    tokio::time::timeout(WAIT, stderr.read_to_string(&mut err)).await.expect("stderr did not end").expect("read");
    assert!(child.wait().await.expect("wait").success());
    assert!(!err.contains("start-up:"), "progress on a pipe:\n{err}");
    assert!(err.contains("shutting down"), "the log is there: {err}");
}
