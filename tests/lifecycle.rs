//! Start-up and shutdown are owned by a guard (docs/ARCHITECTURE.md): a start-up that fails,
//! or panics, after the store started still stops the writer and the checkpointer in order,
//! so the database is closed cleanly (WAL checkpointed and removed) and opens again.
mod common;

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use common::{BIN, Server, WAIT};
use tokio::process::Command;

/// Runs `imd start` on `db` with `IMD_FAULT=fault` to its exit: (status, stderr).
async fn failed_start(db: &Path, fault: &str) -> (ExitStatus, String) {
    let child = Command::new(BIN)
        .args(["start", "0", "--host", "127.0.0.1", "--bcrypt-cost", "4", "--db"])
        .arg(db)
        .env("IMD_FAULT", fault)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imd");
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("imd with {fault} did not exit"))
        .expect("wait");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

async fn start_up_failure_closes_the_database_cleanly(fault: &str) {
    let mut server = Server::start().await;
    server.register("alice").await;
    assert!(server.terminate().await.success(), "a clean first run");
    let wal = server.db.with_extension("db-wal");
    assert!(!wal.exists(), "no WAL after a clean stop");

    let (status, stderr) = failed_start(&server.db, fault).await;
    assert!(!status.success(), "a failed start-up exits non-zero: {status}");
    assert!(stderr.contains(fault), "the error names the fault: {stderr}");
    assert!(stderr.contains("store closed"), "the guard closed the store: {stderr}");
    assert!(!wal.exists(), "the WAL is checkpointed and removed after {fault}: {}", wal.display());

    // Nothing was lost: the database opens again and alice logs in.
    let server = server.restart().await;
    server.login("alice").await;
}

#[tokio::test]
async fn a_start_up_that_fails_after_the_store_started_closes_the_database_cleanly() {
    start_up_failure_closes_the_database_cleanly("start-fail").await;
}

#[tokio::test]
async fn a_panic_in_start_up_after_the_store_started_closes_the_database_cleanly() {
    start_up_failure_closes_the_database_cleanly("start-panic").await;
}

/// `--db postgres://…` names a server, not a file: with no server there, start-up fails
/// saying PostgreSQL cannot be reached, and creates no file of that name.
#[tokio::test]
async fn a_postgres_url_names_a_server_not_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("postgres://postgres@127.0.0.1:{closed}/imd");
    let child = Command::new(BIN)
        .args(["start", "0", "--host", "127.0.0.1", "--bcrypt-cost", "4", "--db", &url])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imd");
    let output = tokio::time::timeout(WAIT, child.wait_with_output()).await.expect("imd did not exit").expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("storage unavailable: PostgreSQL"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
    assert!(left.is_empty(), "the URL was taken for a path: {left:?}");
}
