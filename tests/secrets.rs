//! Secrets and files (issue 9): the database and imd's files are private (0600), secrets come
//! from files and are refused below 32 bytes, the admin secret is taken from the
//! `Authorization` header only, and `--no-store` is absent from the default build.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::json;

/// 40 bytes: long enough for the 32-byte minimum.
const ADMIN: &str = "admin-secret-0123456789abcdef-0123456789";
const BROADCAST: &str = "/message/sendPublicMessage";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// A path beside `db` with `suffix` appended to its name (`-wal`, `-shm`).
fn sibling(db: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// `imd start` on a fresh database with `args`, expected to refuse and exit by itself.
async fn start_refused(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("imd.db");
    let db = db.to_str().expect("utf-8 path");
    let mut all = vec!["start", "0", "--host", "127.0.0.1", "--db", db];
    all.extend_from_slice(args);
    run_imd(&all).await
}

#[tokio::test]
async fn database_wal_shm_and_pid_file_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = dir.path().join("imd.pid");
    let pid_arg = pid.to_str().expect("utf-8 path");
    let server = Server::start_on_db(&dir.path().join("imd.db"), &["--pid-file", pid_arg]).await;
    // A commit, so the WAL and its index exist.
    server.register("alice").await;
    for path in [server.db.clone(), sibling(&server.db, "-wal"), sibling(&server.db, "-shm"), pid] {
        assert_eq!(mode(&path), 0o600, "{} must be 0600, is {:o}", path.display(), mode(&path));
    }
}

#[tokio::test]
async fn an_existing_world_readable_database_is_made_private_at_start() {
    // About the SQLite file's mode: SQLite whatever the backend under test.
    let server = Server::start_sqlite_with(&[]).await;
    server.register("alice").await;
    let db = server.db.clone();
    let mut server = server;
    server.terminate().await;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let server = server.restart().await;
    assert_eq!(mode(&server.db), 0o600, "the database is tightened at start");
    server.login("alice").await;
}

#[tokio::test]
async fn short_inline_secrets_are_refused_at_start() {
    for (option, what) in [("--admin-token", "admin token"), ("--jwt-secret", "JWT secret")] {
        let out = start_refused(&[option, "only-31-bytes-long-secret-value"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option} of 31 bytes: {stderr}");
        assert!(stderr.contains("32 bytes") && stderr.contains(option), "{what}: a clear error: {stderr}");
    }
}

#[tokio::test]
async fn short_or_missing_secret_files_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, "too-short\n").expect("write");
    let short = short.to_str().expect("utf-8 path");
    for option in ["--admin-token-file", "--jwt-secret-file"] {
        let out = start_refused(&[option, short]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option} with 9 bytes: {stderr}");
        assert!(stderr.contains("32 bytes"), "{option}: a clear error: {stderr}");
        let out = start_refused(&[option, "/nonexistent/imd-secret"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option} missing: {stderr}");
        assert!(stderr.contains("imd-secret"), "{option}: the error names the file: {stderr}");
    }
}

#[tokio::test]
async fn the_admin_secret_comes_from_a_file_and_only_from_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("admin");
    // A trailing newline (as editors write it) is not part of the secret.
    std::fs::write(&file, format!("{ADMIN}\n")).expect("write");
    let server = Server::start_with(&["--admin-token-file", file.to_str().expect("utf-8 path")]).await;
    let (_uid, user) = server.register("alice").await;

    // The admin secret in the query string or the body lands in logs: refused.
    let (status, body) =
        server.post_json(&format!("{BROADCAST}?access_token={ADMIN}"), json!({"data": "hi"}), None).await;
    assert_error(status, &body, 401, "admin secret in the query string");
    let (status, body) = server.post_json(BROADCAST, json!({"data": "hi", "access_token": ADMIN}), None).await;
    assert_error(status, &body, 401, "admin secret in the body");
    let (status, body) = server.post_form(BROADCAST, &[("data", "hi"), ("access_token", ADMIN)], None).await;
    assert_error(status, &body, 401, "admin secret in a form body");

    // The header works; a user token still works from the query string.
    let (status, body) = server.post_json(BROADCAST, json!({"data": "hi"}), Some(ADMIN)).await;
    ok(status, &body, "admin secret in Authorization: Bearer");
    let (status, body) = server.get(&format!("/user/me?access_token={user}"), None).await;
    ok(status, &body, "a user token in the query string");
}

#[tokio::test]
async fn the_jwt_secret_comes_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::write(&one, "jwt-secret-one-0123456789abcdef-0123456789\n").expect("write");
    std::fs::write(&two, "jwt-secret-two-0123456789abcdef-0123456789").expect("write");
    let (one, two) = (one.to_str().expect("utf-8 path"), two.to_str().expect("utf-8 path"));
    let db = dir.path().join("imd.db");

    let mut server = Server::start_on_db(&db, &["--jwt-secret-file", one]).await;
    let (_uid, token) = server.register("alice").await;
    server.terminate().await;
    // Signed with the first file's secret: another secret refuses it, the same one takes it.
    let mut server = Server::start_on_db(&db, &["--jwt-secret-file", two]).await;
    let (status, body) = server.get("/user/me", Some(&token)).await;
    assert_error(status, &body, 401, "a token signed with another secret");
    server.terminate().await;
    let server = Server::start_on_db(&db, &["--jwt-secret-file", one]).await;
    let (status, body) = server.get("/user/me", Some(&token)).await;
    ok(status, &body, "a token signed with the file's secret");
}

#[tokio::test]
async fn secret_files_may_be_named_by_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, "too-short").expect("write");
    let db = dir.path().join("imd.db");
    for variable in ["IMD_ADMIN_TOKEN_FILE", "IMD_JWT_SECRET_FILE"] {
        let child = tokio::process::Command::new(BIN)
            .args(["start", "0", "--host", "127.0.0.1", "--db"])
            .arg(&db)
            .env(variable, &short)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, child).await.expect("imd did not exit").expect("run imd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{variable} names a 9-byte file: {stderr}");
        assert!(stderr.contains("32 bytes"), "{variable}: {stderr}");
    }
}

#[tokio::test]
async fn no_store_is_not_an_option_of_the_default_build() {
    let out = start_refused(&["--no-store"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "--no-store must be unknown: {stderr}");
    assert!(stderr.contains("--no-store"), "{stderr}");
}
