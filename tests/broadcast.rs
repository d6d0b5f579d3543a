//! Broadcast: `POST /message/sendPublicMessage` with an admin credential, delivery to every
//! connection, sync for offline users, none for users registered later (PROTOCOL.md 2, 3.2, 3.3).

mod common;

use common::*;
use serde_json::{Value, json};
use util::*;

const SECRET: &str = "s3cret-admin-token-0123456789abcdef";
const PATH: &str = "/message/sendPublicMessage";

#[tokio::test]
async fn broadcast_requires_an_admin_credential_and_text() {
    let server = Server::start_with(&["--admin-token", SECRET]).await;
    let (_u, user_t) = server.register("normal").await;

    let (status, body) = server.post_json(PATH, json!({"data": "hi"}), None).await;
    assert_error(status, &body, 401, "broadcast without a credential");
    let (status, body) = server.post_form(PATH, &[("data", "hi")], None).await;
    assert_error(status, &body, 401, "broadcast without a credential (form)");
    let (status, body) = server.post_json(PATH, json!({"data": "hi"}), Some(&user_t)).await;
    assert_error(status, &body, 403, "broadcast with a normal user's token");
    let (status, body) = server.post_json(&format!("{PATH}?access_token={user_t}"), json!({"data": "hi"}), None).await;
    assert_error(status, &body, 403, "broadcast with a normal user's token in the query");

    let (status, body) = server.post_json(PATH, json!({"data": ""}), Some(SECRET)).await;
    assert_error(status, &body, 400, "broadcast of empty text");
    let (status, body) = server.post_form(PATH, &[("data", "")], Some(SECRET)).await;
    assert_error(status, &body, 400, "broadcast of empty text (form)");
    let (status, body) = server.post_json(PATH, json!({}), Some(SECRET)).await;
    assert_error(status, &body, 400, "broadcast without data");

    // Nothing of the refused attempts was stored: a user connecting now gets nothing.
    let (mut ws, synced) = server.connect(&user_t).await;
    assert!(synced.is_empty(), "refused broadcasts were delivered: {synced:?}");

    let (status, body) = broadcast_on(server.addr, "accepted").await;
    let data = ok(status, &body, "broadcast with the admin token");
    assert_delivered(&data, delivered_by(server.addr, &[&ws]), &body);
    let f = ws.recv_action("public_message").await;
    assert_public(&f, &data, "accepted");
}

#[tokio::test]
async fn broadcast_reaches_every_connection() {
    let server = Server::start_with(&["--admin-token", SECRET]).await;
    let (_u1, t1) = server.register("user1").await;
    let (_u2, t2) = server.register("user2").await;
    let (_u3, t3) = server.register("user3").await;
    let (w1a, _) = server.connect_device(&t1, "web").await;
    let (w1b, _) = server.connect_device(&t1, "mobile").await;
    let (w2, _) = server.connect(&t2).await;
    let (w3, _) = server.connect(&t3).await;
    let mut all = [w1a, w1b, w2, w3];

    // 3 users, one with 2 devices: 4 connections (in a cluster, spread over the nodes).
    let on_node0 = delivered_by(server.addr, &all.iter().collect::<Vec<_>>());
    if on_cluster() {
        assert!(0 < on_node0 && on_node0 < 4, "the connections are spread over the nodes: {on_node0} on node 0");
    }

    // Bearer secret, JSON body.
    let (status, body) = broadcast_on(server.addr, "hello, everybody").await;
    let first = ok(status, &body, "broadcast with Authorization: Bearer SECRET");
    assert!(first["id"].as_u64().is_some(), "id: {body}");
    assert!(first["seq"].as_u64().is_some(), "seq: {body}");
    assert_delivered(&first, on_node0, &body);
    for ws in all.iter_mut() {
        let f = ws.recv_action("public_message").await;
        assert_public(&f, &first, "hello, everybody");
        ws.expect_nothing_pending().await;
    }

    // access_token=SECRET in the query is refused (it would land in logs); the header with a
    // form body works.
    let (status, body) = server.post_form(&format!("{PATH}?access_token={SECRET}"), &[("data", "refused")], None).await;
    assert_error(status, &body, 401, "broadcast with ?access_token=SECRET");
    let form = ("application/x-www-form-urlencoded", "data=second+notice".to_string());
    let (status, body) = http(server.addr, "POST", PATH, Some(form), Some(SECRET)).await;
    let second = ok(status, &body, "broadcast with a form body");
    assert_delivered(&second, on_node0, &body);
    assert_eq!(second["seq"].as_u64(), Some(first["seq"].as_u64().unwrap() + 1), "seq counts up: {body}");
    assert_ne!(second["id"], first["id"], "{body}");
    for ws in all.iter_mut() {
        let f = ws.recv_action("public_message").await;
        assert_public(&f, &second, "second notice");
        ws.expect_nothing_pending().await;
    }
}

#[tokio::test]
async fn broadcast_by_a_user_made_admin_with_the_cli() {
    // No --admin-token: only an admin user can broadcast.
    // Works on the SQLite file itself (imd user …, rusqlite): SQLite whatever the backend under test.
    let server = Server::start_sqlite_with(&[]).await;
    let (uid, token) = server.register("promoted").await;
    let (_l, listener_t) = server.register("listener").await;
    let (mut ws, _) = server.connect(&listener_t).await;

    let (status, body) = server.post_json(PATH, json!({"data": "not yet"}), Some(&token)).await;
    assert_error(status, &body, 403, "broadcast before promotion");

    set_role(&server, "promoted", "admin").await;
    let token = server.login("promoted").await;
    let (status, body) = server.get("/user/me", Some(&token)).await;
    let me = ok(status, &body, "me after promotion");
    assert_eq!(me["uid"], json!(uid), "{body}");
    assert_eq!(me["role"], "admin", "{body}");

    let (status, body) = server.post_json(PATH, json!({"data": "from an admin user"}), Some(&token)).await;
    let data = ok(status, &body, "broadcast by an admin user");
    assert_eq!(data["delivered"], 1, "the listener's connection: {body}");
    let f = ws.recv_action("public_message").await;
    assert_public(&f, &data, "from an admin user");
    let (status, body) =
        server.post_form(&format!("{PATH}?access_token={token}"), &[("data", "again, by query token")], None).await;
    let data = ok(status, &body, "broadcast by an admin user, token in the query");
    let f = ws.recv_action("public_message").await;
    assert_public(&f, &data, "again, by query token");

    // And back: a demoted user is refused again.
    set_role(&server, "promoted", "user").await;
    let token = server.login("promoted").await;
    let (status, body) = server.post_json(PATH, json!({"data": "no more"}), Some(&token)).await;
    assert_error(status, &body, 403, "broadcast after demotion");
    ws.expect_nothing_pending().await;

    // Without --admin-token, a bearer that is not a user token is no admin credential.
    let (status, body) = server.post_json(PATH, json!({"data": "guess"}), Some(SECRET)).await;
    assert!(status == 401 || status == 403, "made-up credential accepted: {status} {body}");
    ws.expect_nothing_pending().await;
}

#[tokio::test]
async fn offline_users_get_broadcasts_through_sync_and_later_users_do_not() {
    let server = Server::start_with(&["--admin-token", SECRET]).await;
    let (_u, early_t) = server.register("early").await;

    let (status, body) = server.post_json(PATH, json!({"data": "while you were away"}), Some(SECRET)).await;
    let data = ok(status, &body, "broadcast with nobody online");
    assert_eq!(data["delivered"], 0, "nobody is connected: {body}");

    let (mut ws, synced) = server.connect(&early_t).await;
    let got: Vec<&Value> = synced.iter().filter(|f| f["action"] == "public_message").collect();
    assert_eq!(got.len(), 1, "the offline user gets the broadcast through sync: {synced:?}");
    assert_public(got[0], &data, "while you were away");
    ws.expect_nothing_pending().await;

    // A user registered after the broadcast does not get it.
    let (_l, late_t) = server.register("late").await;
    let (mut late_ws, synced) = server.connect(&late_t).await;
    assert!(
        !synced.iter().any(|f| f["action"] == "public_message" || f["id"] == data["id"]),
        "a user registered after the broadcast got it through sync: {synced:?}"
    );
    late_ws.expect_nothing_pending().await;

    // But later broadcasts reach them, live and through sync.
    let (status, body) = broadcast_on(server.addr, "welcome").await;
    let data2 = ok(status, &body, "second broadcast");
    assert_delivered(&data2, delivered_by(server.addr, &[&ws, &late_ws]), &body);
    let f = late_ws.recv_action("public_message").await;
    assert_public(&f, &data2, "welcome");
    let f = ws.recv_action("public_message").await;
    assert_public(&f, &data2, "welcome");
    drop(late_ws);
    // Delivered to that device but not read: another device gets it; the older one still does
    // not.
    let (_late_ws, synced) = server.connect_device(&late_t, "mobile").await;
    assert!(
        synced.iter().all(|f| f["id"] != data["id"]),
        "the broadcast from before registration came later through sync: {synced:?}"
    );
    let got: Vec<&Value> = synced.iter().filter(|f| f["action"] == "public_message").collect();
    assert_eq!(got.len(), 1, "the unread later broadcast is synced again: {synced:?}");
    assert_public(got[0], &data2, "welcome");
}

mod util {
    use std::net::SocketAddr;

    use super::common::*;
    use super::{PATH, SECRET};
    use serde_json::{Value, json};

    /// Broadcasts `text` as the `--admin-token` admin (JSON body) on the node at `node`.
    pub async fn broadcast_on(node: SocketAddr, text: &str) -> (u16, Value) {
        let body = ("application/json", json!({"data": text}).to_string());
        http(node, "POST", PATH, Some(body), Some(SECRET)).await
    }

    /// How many of `conns` a broadcast answered by the node at `node` counts as `delivered`:
    /// all of them on a single node; in a cluster only those on that node, since each node
    /// delivers to its own connections (the others still get it, live).
    pub fn delivered_by(node: SocketAddr, conns: &[&Ws]) -> u64 {
        conns.iter().filter(|ws| !on_cluster() || ws.server_addr() == node).count() as u64
    }

    /// Asserts the reply's `delivered` and, in a cluster, that it says its count is the node's.
    #[track_caller]
    pub fn assert_delivered(data: &Value, want: u64, body: &Value) {
        assert_eq!(data["delivered"], want, "connections the answering node delivered to: {body}");
        if on_cluster() {
            assert_eq!(data["delivered_scope"], "node", "{body}");
        }
    }

    /// A broadcast frame matching the `data` of the sendPublicMessage reply.
    pub fn assert_public(f: &Value, data: &Value, text: &str) {
        assert_eq!(f["action"], "public_message", "{f}");
        assert_eq!(f["chat_type"], 0, "{f}");
        assert_eq!(f["chat_id"], "0_system", "{f}");
        assert_eq!(f["id"], data["id"], "id as in the reply ({data}): {f}");
        assert_eq!(f["seq"], data["seq"], "seq as in the reply ({data}): {f}");
        assert_eq!(f["msg"], text, "{f}");
        assert!(f["ts"].as_u64().is_some(), "ts: {f}");
    }

    /// `imd user role NAME ROLE --db PATH` against the running server's database.
    pub async fn set_role(server: &Server, name: &str, role: &str) {
        let db = server.db.to_str().expect("utf-8 db path");
        let out = run_imd(&["user", "role", name, role, "--db", db]).await;
        assert!(
            out.status.success(),
            "imd user role {name} {role}: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
