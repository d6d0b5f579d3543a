//! Usernames in any script (issue 9): Unicode letters, digits and `_.-`, NFC-normalised, unique
//! case-insensitively and across look-alikes; invisible characters refused; passwords over
//! bcrypt's 72 bytes refused; a taken name refused before any hashing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

async fn register(server: &Server, username: &str, password: &str) -> (u16, Value) {
    server.post_json("/user/register", json!({"username": username, "password": password}), None).await
}

#[tokio::test]
async fn names_in_any_script_register_and_log_in() {
    let server = Server::start().await;
    for name in ["张三", "刘祖宽", "José", "Ελένη", "Анна_1", "محمد", "김민준", "o.neil-x_1", "ab1"]
        .iter()
        .map(|s| s.to_string())
    {
        let (status, body) = register(&server, &name, "secret-pw").await;
        let data = ok(status, &body, &format!("register {name}"));
        assert_eq!(data["username"], name.as_str(), "{body}");
        let (status, body) = login(&server, &name, "secret-pw").await;
        ok(status, &body, &format!("login {name}"));
    }
}

#[tokio::test]
async fn names_are_nfc_normalised() {
    let server = Server::start().await;
    // "José" with a combining acute accent: stored composed.
    let (status, body) = register(&server, "Jose\u{301}", "secret-pw").await;
    let data = ok(status, &body, "register decomposed José");
    assert_eq!(data["username"], "Jos\u{e9}", "stored in NFC: {body}");
    let (status, body) = register(&server, "Jos\u{e9}", "secret-pw").await;
    assert_error(status, &body, 409, "the composed spelling is the same name");
    let (status, body) = login(&server, "Jos\u{e9}", "secret-pw").await;
    ok(status, &body, "login with the composed spelling");
    let (status, body) = login(&server, "Jose\u{301}", "secret-pw").await;
    ok(status, &body, "login with the decomposed spelling");
}

#[tokio::test]
async fn names_are_unique_case_insensitively() {
    let server = Server::start().await;
    let (uid, _) = server.register("Alice").await;
    let (status, body) = register(&server, "alice", "other-pw").await;
    assert_error(status, &body, 409, "alice after Alice");
    let (status, body) = register(&server, "ALICE", "other-pw").await;
    assert_error(status, &body, 409, "ALICE after Alice");
    for spelling in ["alice", "ALICE", "Alice"] {
        let (status, body) = login(&server, spelling, "secret-pw").await;
        let data = ok(status, &body, &format!("login as {spelling}"));
        assert_eq!(data["uid"], uid, "{spelling} is Alice's account: {body}");
        assert_eq!(data["username"], "Alice", "the name as registered: {body}");
    }
    let (status, body) = login(&server, "alice", "other-pw").await;
    assert_error(status, &body, 401, "the case-folded name still needs Alice's password");
}

#[tokio::test]
async fn invisible_control_and_bidi_characters_are_refused() {
    let server = Server::start().await;
    for name in [
        "ali\u{200B}ce",  // zero-width space
        "ali\u{200D}ce",  // zero-width joiner
        "ali\u{00AD}ce",  // soft hyphen
        "bob\u{202E}xyz", // right-to-left override
        "bob\u{2066}xyz", // left-to-right isolate
        "bob\u{200F}xyz", // right-to-left mark
        "a\u{7}bc",       // control
        "ab\u{3164}c",    // Hangul filler: a "letter" that shows as blank
        "ali ce",
        "ali\u{3000}ce", // ideographic space
        "al/ice",
        "ab",
        "\u{2460}\u{2461}\u{2462}", // circled digits
    ] {
        let (status, body) = register(&server, name, "secret-pw").await;
        assert_error(status, &body, 400, &format!("register {name:?}"));
    }
}

#[tokio::test]
async fn mixed_script_look_alikes_collide_with_the_name_they_imitate() {
    let server = Server::start().await;
    server.register("paypal").await;
    // Cyrillic а (U+0430) in place of the Latin a.
    let (status, body) = register(&server, "p\u{430}ypal", "secret-pw").await;
    assert_error(status, &body, 409, "Cyrillic а in pаypal");
    // Cyrillic о and е in "оmеga" against the Latin one registered after the fake.
    let (status, body) = register(&server, "\u{43e}m\u{435}ga", "secret-pw").await;
    ok(status, &body, "a first registration of a look-alike");
    let (status, body) = register(&server, "omega", "secret-pw").await;
    assert_error(status, &body, 409, "the Latin name after its Cyrillic look-alike");
}

#[tokio::test]
async fn passwords_over_72_bytes_are_refused() {
    let server = Server::start().await;
    let (status, body) = register(&server, "long1", &"p".repeat(73)).await;
    assert_error(status, &body, 400, "a 73-byte password");
    // 37 two-byte characters: 37 characters but 74 bytes.
    let (status, body) = register(&server, "long2", &"é".repeat(37)).await;
    assert_error(status, &body, 400, "a 74-byte password of 37 characters");
    let (status, body) = register(&server, "long3", &"p".repeat(72)).await;
    ok(status, &body, "a 72-byte password");
    let (status, body) = login(&server, "long3", &"p".repeat(72)).await;
    ok(status, &body, "login with the 72-byte password");
}

/// A server whose bcrypt cost is 13 (the harness always passes 4).
async fn slow_hash_server() -> SlowServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(BIN)
        .args(["start", "0", "--host", "127.0.0.1", "--bcrypt-cost", "13", "--db"])
        .arg(dir.path().join("imd.db"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imd");
    let addr = common::listening_address(&mut child).await;
    SlowServer { _child: child, _dir: dir, addr }
}

struct SlowServer {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

impl SlowServer {
    async fn post(&self, path: &str, username: &str, password: &str) -> (u16, Value) {
        let body = json!({"username": username, "password": password}).to_string();
        http(self.addr, "POST", path, Some(("application/json", body)), None).await
    }
}

#[tokio::test]
async fn a_taken_name_is_refused_before_the_password_is_hashed() {
    // A slow hash (2^13 rounds) makes the difference between hashing and not obvious; the
    // harness's `--bcrypt-cost 4` comes first on its command line, so it is set here instead.
    let server = slow_hash_server().await;
    let (status, body) = server.post("/user/register", "taken", "secret-pw").await;
    ok(status, &body, "first registration");

    // One bcrypt run at this cost, measured now on this (possibly loaded) machine.
    let started = Instant::now();
    let (status, body) = server.post("/user/login", "taken", "wrong-pw").await;
    assert_error(status, &body, 401, "wrong password");
    let one_hash = started.elapsed();

    let started = Instant::now();
    let (status, body) = server.post("/user/register", "taken", "secret-pw").await;
    let refused_in = started.elapsed();
    assert_error(status, &body, 409, "the taken name");
    assert!(
        refused_in < one_hash / 3 && refused_in < Duration::from_secs(5),
        "the refusal took {refused_in:?}, one bcrypt {one_hash:?}: it hashed before checking"
    );
}
