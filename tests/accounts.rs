//! Accounts: register, login, logout, /user/me, token expiry, tokens across restarts and
//! the `imd user role` tool (PROTOCOL.md 1, 2; BEHAVIOUR.md "Tokens").
mod common;

use std::time::Duration;

use common::{Server, Ws, assert_error, login, ok, run_imd};
use serde_json::{Value, json};

async fn me(server: &Server, token: &str) -> (u16, Value) {
    server.get("/user/me", Some(token)).await
}

fn looks_like_jwt(token: &str) {
    assert_eq!(token.split('.').count(), 3, "access_token is not a JWT: {token}");
    assert!(token.split('.').all(|part| !part.is_empty()), "access_token is not a JWT: {token}");
}

#[tokio::test]
async fn register_json_returns_account_and_token() {
    let server = Server::start().await;
    let (status, body) =
        server.post_json("/user/register", json!({"username": "alice", "password": "secret-pw"}), None).await;
    let data = ok(status, &body, "POST /user/register");
    let uid = data["uid"].as_u64().unwrap_or_else(|| panic!("uid must be a number: {body}"));
    assert!(uid > 0, "uid: {body}");
    assert_eq!(data["username"], "alice");
    let token = data["access_token"].as_str().expect("access_token");
    looks_like_jwt(token);
    let expires_in = data["expires_in"].as_u64().unwrap_or_else(|| panic!("expires_in: {body}"));
    assert!((86_300..=86_400).contains(&expires_in), "default ttl is 86400 s: {body}");

    // Logged in at once: the token works.
    let (status, body) = me(&server, token).await;
    let data = ok(status, &body, "GET /user/me");
    assert_eq!(data["uid"].as_u64(), Some(uid));
    assert_eq!(data["username"], "alice");
}

#[tokio::test]
async fn register_form_body_works() {
    let server = Server::start().await;
    let (status, body) =
        server.post_form("/user/register", &[("username", "bob.form-user_1"), ("password", "secret-pw")], None).await;
    let data = ok(status, &body, "POST /user/register (form)");
    assert_eq!(data["username"], "bob.form-user_1");
    assert!(data["uid"].as_u64().is_some(), "{body}");
    let token = data["access_token"].as_str().expect("access_token").to_string();
    looks_like_jwt(&token);
    let (status, body) = me(&server, &token).await;
    assert_eq!(ok(status, &body, "GET /user/me")["username"], "bob.form-user_1");

    // Login with a form body as well.
    let (status, body) =
        server.post_form("/user/login", &[("username", "bob.form-user_1"), ("password", "secret-pw")], None).await;
    let data = ok(status, &body, "POST /user/login (form)");
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["username"], "bob.form-user_1");
}

#[tokio::test]
async fn register_two_users_get_distinct_uids() {
    let server = Server::start().await;
    let (a, _) = server.register("first").await;
    let (b, _) = server.register("second").await;
    assert_ne!(a, b);
}

#[tokio::test]
async fn register_rejects_bad_usernames() {
    let server = Server::start().await;
    let too_long = "a".repeat(33);
    let bad = [
        "ab",              // too short
        too_long.as_str(), // too long
        "bad name",        // space
        "bad/name",
        "bad@name",
        "",
        "semi;colon",
    ];
    for name in bad {
        let (status, body) =
            server.post_json("/user/register", json!({"username": name, "password": "secret-pw"}), None).await;
        assert_error(status, &body, 400, &format!("POST /user/register {name:?}"));
        // Same through a form body.
        let (status, body) =
            server.post_form("/user/register", &[("username", name), ("password", "secret-pw")], None).await;
        assert_error(status, &body, 400, &format!("POST /user/register {name:?} (form)"));
    }
    // The boundaries are accepted.
    let max = "Z".repeat(32);
    // Any script (issue 9; tests/usernames.rs has the rest).
    for name in ["abc", max.as_str(), "A.b-c_9", "naïve", "名字名字"] {
        let (status, body) =
            server.post_json("/user/register", json!({"username": name, "password": "secret-pw"}), None).await;
        assert_eq!(ok(status, &body, &format!("POST /user/register {name:?}"))["username"], name);
    }
}

#[tokio::test]
async fn register_rejects_bad_passwords_and_missing_fields() {
    let server = Server::start().await;
    // bcrypt's limit: 72 bytes (longer ones would be cut silently).
    let too_long = "p".repeat(73);
    for password in ["", "12345", too_long.as_str()] {
        let (status, body) =
            server.post_json("/user/register", json!({"username": "carol", "password": password}), None).await;
        assert_error(status, &body, 400, &format!("POST /user/register, a password of {} chars", password.len()));
    }
    let (status, body) = server.post_json("/user/register", json!({"username": "carol"}), None).await;
    assert_error(status, &body, 400, "POST /user/register");
    let (status, body) = server.post_json("/user/register", json!({"password": "secret-pw"}), None).await;
    assert_error(status, &body, 400, "POST /user/register");
    let (status, body) = server.post_form("/user/register", &[("username", "carol")], None).await;
    assert_error(status, &body, 400, "POST /user/register (form)");

    // Boundaries: 6 characters and 72 bytes are fine.
    let (status, body) =
        server.post_json("/user/register", json!({"username": "carol", "password": "123456"}), None).await;
    ok(status, &body, "POST /user/register");
    let max = "p".repeat(72);
    let (status, body) = server.post_json("/user/register", json!({"username": "carol2", "password": max}), None).await;
    ok(status, &body, "POST /user/register");
    let (status, body) = login(&server, "carol2", &max).await;
    ok(status, &body, "POST /user/login");
}

#[tokio::test]
async fn register_duplicate_is_409() {
    let server = Server::start().await;
    server.register("dave").await;
    let (status, body) =
        server.post_json("/user/register", json!({"username": "dave", "password": "other-pw"}), None).await;
    assert_error(status, &body, 409, "POST /user/register");
    let (status, body) =
        server.post_form("/user/register", &[("username", "dave"), ("password", "other-pw")], None).await;
    assert_error(status, &body, 409, "POST /user/register (form)");
    // The original password still logs in, the refused one does not.
    let (status, body) = login(&server, "dave", "secret-pw").await;
    ok(status, &body, "POST /user/login");
    let (status, body) = login(&server, "dave", "other-pw").await;
    assert_error(status, &body, 401, "POST /user/login");
}

#[tokio::test]
async fn login_returns_bearer_token() {
    let server = Server::start().await;
    let (uid, _) = server.register("erin").await;
    let (status, body) = login(&server, "erin", "secret-pw").await;
    let data = ok(status, &body, "POST /user/login");
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["uid"].as_u64(), Some(uid));
    assert_eq!(data["username"], "erin");
    let expires_in = data["expires_in"].as_u64().unwrap_or_else(|| panic!("expires_in: {body}"));
    assert!((86_300..=86_400).contains(&expires_in), "{body}");
    let token = data["access_token"].as_str().expect("access_token");
    looks_like_jwt(token);
    let (status, body) = me(&server, token).await;
    assert_eq!(ok(status, &body, "GET /user/me")["uid"].as_u64(), Some(uid));
}

#[tokio::test]
async fn login_wrong_password_or_unknown_user_is_401() {
    let server = Server::start().await;
    server.register("frank").await;
    let (status, body) = login(&server, "frank", "wrong-pw").await;
    assert_error(status, &body, 401, "POST /user/login");
    let (status, body) = login(&server, "nobody", "secret-pw").await;
    assert_error(status, &body, 401, "POST /user/login");
    let (status, body) =
        server.post_form("/user/login", &[("username", "frank"), ("password", "wrong-pw")], None).await;
    assert_error(status, &body, 401, "POST /user/login (form)");
}

#[tokio::test]
async fn me_via_bearer_header_and_query_parameter() {
    let server = Server::start().await;
    let (uid, token) = server.register("grace").await;

    let (status, body) = me(&server, &token).await;
    let data = ok(status, &body, "GET /user/me");
    assert_eq!(data["uid"].as_u64(), Some(uid));
    assert_eq!(data["username"], "grace");
    assert_eq!(data["role"], "user");

    let (status, body) = server.get(&format!("/user/me?access_token={token}"), None).await;
    let data = ok(status, &body, "GET /user/me");
    assert_eq!(data["uid"].as_u64(), Some(uid));
    assert_eq!(data["username"], "grace");
    assert_eq!(data["role"], "user");
}

#[tokio::test]
async fn me_without_or_with_bad_token_is_401() {
    let server = Server::start().await;
    let (_, token) = server.register("heidi").await;
    let (status, body) = server.get("/user/me", None).await;
    assert_error(status, &body, 401, "GET /user/me");
    let (status, body) = me(&server, "not-a-token").await;
    assert_error(status, &body, 401, "GET /user/me");
    let (status, body) = server.get("/user/me?access_token=garbage", None).await;
    assert_error(status, &body, 401, "GET /user/me");
    // A token with a tampered signature.
    let (head, sig) = token.rsplit_once('.').expect("jwt");
    let mut sig: Vec<char> = sig.chars().collect();
    sig[2] = if sig[2] == 'A' { 'B' } else { 'A' };
    let forged = format!("{head}.{}", sig.into_iter().collect::<String>());
    let (status, body) = me(&server, &forged).await;
    assert_error(status, &body, 401, "GET /user/me");
}

#[tokio::test]
async fn logout_revokes_every_earlier_token() {
    let server = Server::start().await;
    let (uid, t1) = server.register("ivan").await;
    let (status, body) = login(&server, "ivan", "secret-pw").await;
    let t2 = ok(status, &body, "POST /user/login")["access_token"].as_str().expect("token").to_string();
    // Another user's token is unaffected by ivan's logout.
    let (_, other) = server.register("judy").await;

    let (status, body) = server.post_json("/user/logout", json!({}), Some(&t2)).await;
    let data = ok(status, &body, "POST /user/logout");
    assert_eq!(data, json!({}), "logout data: {body}");

    for old in [&t1, &t2] {
        let (status, body) = me(&server, old).await;
        assert_error(status, &body, 401, "GET /user/me");
        let (status, body) = server.get(&format!("/user/me?access_token={old}"), None).await;
        assert_error(status, &body, 401, "GET /user/me");
        let refused = Ws::connect(server.addr, &format!("/?access_token={old}")).await;
        assert_eq!(refused.err(), Some(401), "revoked token must be refused before the upgrade");
        let (status, body) = server.post_json("/user/logout", json!({}), Some(old)).await;
        assert_error(status, &body, 401, "POST /user/logout");
    }

    let (status, body) = me(&server, &other).await;
    assert_eq!(ok(status, &body, "GET /user/me")["username"], "judy");

    // A new login after logout works, for HTTP and WebSocket.
    let (status, body) = login(&server, "ivan", "secret-pw").await;
    let t3 = ok(status, &body, "POST /user/login")["access_token"].as_str().expect("token").to_string();
    let (status, body) = me(&server, &t3).await;
    assert_eq!(ok(status, &body, "GET /user/me")["uid"].as_u64(), Some(uid));
    let (mut ws, _) = server.connect(&t3).await;
    ws.expect_nothing_pending().await;
}

#[tokio::test]
async fn logout_without_token_is_401() {
    let server = Server::start().await;
    let (status, body) = server.post_json("/user/logout", json!({}), None).await;
    assert_error(status, &body, 401, "POST /user/logout");
}

#[tokio::test]
async fn expired_token_is_refused() {
    let server = Server::start_with(&["--token-ttl", "1"]).await;
    let (status, body) =
        server.post_json("/user/register", json!({"username": "kate", "password": "secret-pw"}), None).await;
    let data = ok(status, &body, "POST /user/register");
    let expires_in = data["expires_in"].as_u64().unwrap_or_else(|| panic!("expires_in: {body}"));
    assert!(expires_in <= 1, "expires_in must follow --token-ttl 1: {body}");
    let token = data["access_token"].as_str().expect("token").to_string();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = me(&server, &token).await;
        if status == 401 {
            assert_error(status, &body, 401, "GET /user/me");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "token with ttl 1 s still accepted after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = Ws::connect(server.addr, &format!("/?access_token={token}")).await;
    assert_eq!(refused.err(), Some(401), "expired token must be refused before the upgrade");

    // A fresh login still works (and expires again, but is valid right now).
    let (status, body) = login(&server, "kate", "secret-pw").await;
    let data = ok(status, &body, "POST /user/login");
    assert_eq!(data["token_type"], "Bearer");
}

#[tokio::test]
async fn tokens_survive_restart() {
    let mut server = Server::start().await;
    let (uid, token) = server.register("leo").await;
    let (status, body) = me(&server, &token).await;
    ok(status, &body, "GET /user/me");

    let exit = server.terminate().await;
    assert!(exit.success(), "SIGTERM exit: {exit:?}");
    let server = server.restart().await;
    let (status, body) = me(&server, &token).await;
    let data = ok(status, &body, "GET /user/me");
    assert_eq!(data["uid"].as_u64(), Some(uid));
    assert_eq!(data["username"], "leo");
    // The account itself survived too.
    let (status, body) = login(&server, "leo", "secret-pw").await;
    ok(status, &body, "POST /user/login");
}

#[tokio::test]
async fn tokens_survive_crash_restart() {
    let mut server = Server::start().await;
    let (uid, token) = server.register("mia").await;
    server.kill9().await;
    let server = server.restart().await;
    let (status, body) = me(&server, &token).await;
    assert_eq!(ok(status, &body, "GET /user/me")["uid"].as_u64(), Some(uid));
}

#[tokio::test]
async fn user_role_tool_changes_role() {
    // Works on the SQLite file itself (imd user …, rusqlite): SQLite whatever the backend under test.
    let mut server = Server::start_sqlite_with(&[]).await;
    let (uid, token) = server.register("nina").await;
    let (status, body) = me(&server, &token).await;
    assert_eq!(ok(status, &body, "GET /user/me")["role"], "user");

    let exit = server.terminate().await;
    assert!(exit.success(), "SIGTERM exit: {exit:?}");
    let db = server.db.to_str().expect("utf-8 db path").to_string();

    let out = run_imd(&["user", "role", "nina", "admin", "--db", &db]).await;
    assert!(
        out.status.success(),
        "imd user role nina admin: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown user and unknown role are refused.
    let out = run_imd(&["user", "role", "nobody", "admin", "--db", &db]).await;
    assert!(!out.status.success(), "role for an unknown user must fail");
    let out = run_imd(&["user", "role", "nina", "superuser", "--db", &db]).await;
    assert!(!out.status.success(), "an unknown role must be refused");

    let server = server.restart().await;
    let (status, body) = me(&server, &token).await;
    let data = ok(status, &body, "GET /user/me");
    assert_eq!(data["uid"].as_u64(), Some(uid));
    assert_eq!(data["role"], "admin", "{body}");

    // And back to user.
    let mut server = server;
    let exit = server.terminate().await;
    assert!(exit.success(), "SIGTERM exit: {exit:?}");
    let out = run_imd(&["user", "role", "nina", "user", "--db", &db]).await;
    assert!(out.status.success(), "imd user role nina user: {:?}", out.status);
    let server = server.restart().await;
    let (status, body) = me(&server, &token).await;
    assert_eq!(ok(status, &body, "GET /user/me")["role"], "user");
}
