//! `imd user list|add|passwd|role` on the database directly, also while a daemon runs; they
//! refuse a missing database and one of another schema version.
//! Opens SQLite files (the CLI): every server here runs on SQLite
//! whatever IMD_TEST_BACKEND says.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::*;
use tokio::io::AsyncWriteExt;

/// Runs `imd args…` with `input` on its stdin, bounded by [`WAIT`].
async fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imd");
    let mut stdin = child.stdin.take().expect("stdin");
    // imd may refuse before reading its stdin (a bad name): a closed pipe is not a failure.
    let _ = stdin.write_all(input.as_bytes()).await;
    drop(stdin);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("imd {args:?} did not finish in time"))
        .expect("run imd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn add_creates_an_account_a_running_daemon_logs_in_and_list_shows_it() {
    let server = Server::start_sqlite_with(&[]).await;
    server.register("alice").await;
    let db = path(&server.db);
    let out = run_with_stdin(&["user", "add", "carol", "--db", db, "--bcrypt-cost", "4"], "carol-pw-1\n").await;
    assert!(out.status.success(), "add: {}", text(&out.stderr));
    let (status, body) = login(&server, "carol", "carol-pw-1").await;
    let data = ok(status, &body, "login as the added user");
    assert_eq!(data["username"], "carol");
    let token = data["access_token"].as_str().expect("token").to_string();
    let (status, body) = server.get("/user/me", Some(&token)).await;
    ok(status, &body, "the added user's token works on the running daemon");
    let (mut ws, _) = server.connect(&token).await;
    send_text(&mut ws, 1, "c-1", "hello from an added account").await;

    let role = run_imd(&["user", "role", "carol", "admin", "--db", db]).await;
    assert!(role.status.success(), "role: {}", text(&role.stderr));
    let list = run_imd(&["user", "list", "--db", db]).await;
    assert!(list.status.success(), "list: {}", text(&list.stderr));
    assert_eq!(text(&list.stdout), "1\talice\tuser\n2\tcarol\tadmin\n");
}

#[tokio::test]
async fn add_refuses_what_register_refuses() {
    let server = Server::start_sqlite_with(&[]).await;
    server.register("alice").await;
    let db = path(&server.db);
    for (name, password, why) in [
        ("ALICE", "good-password\n", "a taken name, in another case"),
        ("a b", "good-password\n", "a name with a space"),
        ("dave", "short\n", "a password under 6 characters"),
        ("dave", &format!("{}\n", "p".repeat(73)), "a password over 72 bytes"),
        ("dave", "", "no password at all"),
    ] {
        let out = run_with_stdin(&["user", "add", name, "--db", db, "--bcrypt-cost", "4"], password).await;
        assert_eq!(out.status.code(), Some(1), "{why}: {}", text(&out.stdout));
        assert!(!out.stderr.is_empty(), "{why}: says why");
    }
    let list = run_imd(&["user", "list", "--db", db]).await;
    assert_eq!(text(&list.stdout), "1\talice\tuser\n", "nothing was added");
    // 72 bytes is the limit, not over it.
    let out = run_with_stdin(&["user", "add", "dave", "--db", db, "--bcrypt-cost", "4"], &"p".repeat(72)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (status, body) = login(&server, "dave", &"p".repeat(72)).await;
    ok(status, &body, "72-byte password");
}

#[tokio::test]
async fn passwd_sets_a_new_password_and_ends_the_old_tokens() {
    let server = Server::start_sqlite_with(&[]).await;
    let (_, token) = server.register("bob").await;
    let db = path(&server.db);
    let out = run_with_stdin(&["user", "passwd", "bob", "--db", db, "--bcrypt-cost", "4"], "new-secret\r\n").await;
    assert!(out.status.success(), "passwd: {}", text(&out.stderr));
    let (status, body) = login(&server, "bob", "secret-pw").await;
    assert_error(status, &body, 401, "the old password");
    let (status, body) = login(&server, "bob", "new-secret").await;
    ok(status, &body, "the new password");
    // The daemon notices the revocation counter; wait for the old token to die.
    let started = std::time::Instant::now();
    loop {
        let (status, _) = server.get("/user/me", Some(&token)).await;
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < WAIT, "the old token still works after passwd");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let missing = run_with_stdin(&["user", "passwd", "nobody", "--db", db, "--bcrypt-cost", "4"], "new-secret\n").await;
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn a_missing_database_is_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("none.db");
    let db_arg = path(&db);
    for args in [
        vec!["user", "list", "--db", db_arg],
        vec!["user", "add", "eve", "--db", db_arg, "--bcrypt-cost", "4"],
        vec!["user", "passwd", "eve", "--db", db_arg, "--bcrypt-cost", "4"],
        vec!["user", "role", "eve", "admin", "--db", db_arg],
    ] {
        let out = run_with_stdin(&args, "eve-password\n").await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stderr).contains("no such database"), "{args:?}: {}", text(&out.stderr));
        assert!(!db.exists(), "{args:?} created the database");
    }
}

/// A database of another schema version: a newer daemon owns it, or an older one left it
/// unmigrated. Nothing is written to it.
#[tokio::test]
async fn a_database_of_another_schema_is_not_written() {
    let mut server = Server::start_sqlite_with(&[]).await;
    server.register("alice").await;
    server.terminate().await;
    let db = server.db.clone();
    let current: i64 = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    };
    for (version, says) in [(current + 1, "newer"), (current - 1, "start the daemon")] {
        rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", version).unwrap();
        for args in [
            vec!["user", "add", "eve", "--db", path(&db), "--bcrypt-cost", "4"],
            vec!["user", "passwd", "alice", "--db", path(&db), "--bcrypt-cost", "4"],
            vec!["user", "role", "alice", "admin", "--db", path(&db)],
            vec!["user", "revoke", "alice", "--db", path(&db)],
        ] {
            let out = run_with_stdin(&args, "eve-password\n").await;
            assert_eq!(out.status.code(), Some(1), "{args:?} at version {version}");
            assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        let after: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(after, version, "not migrated");
        let (users, role): (i64, String) =
            conn.query_row("SELECT COUNT(*), MAX(role) FROM users", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((users, role.as_str()), (1, "user"), "nothing written");
    }
}

/// The offline commands open a SQLite file themselves: given a PostgreSQL URL they say so and
/// exit 1, touching nothing.
#[tokio::test]
async fn a_postgres_url_is_refused_by_the_offline_commands() {
    let url = "postgres://postgres@127.0.0.1/imd";
    for args in [
        vec!["user", "list", "--db", url],
        vec!["user", "add", "eve", "--db", url, "--bcrypt-cost", "4"],
        vec!["user", "passwd", "eve", "--db", url, "--bcrypt-cost", "4"],
        vec!["user", "role", "eve", "admin", "--db", url],
        vec!["user", "revoke", "eve", "--db", url],
        vec!["backup", "copy.db", "--db", "postgresql://postgres@127.0.0.1/imd"],
    ] {
        let out = run_with_stdin(&args, "eve-password\n").await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stderr).contains("SQLite database file only"), "{args:?}: {}", text(&out.stderr));
    }
    assert!(!Path::new("copy.db").exists(), "backup wrote a copy");
}
