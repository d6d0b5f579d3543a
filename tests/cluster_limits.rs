//! Per-user limits agreed across cluster nodes (issue 13): `--max-connections-per-user`
//! counts a user's sessions on every live node, and `--login-failures-per-user` a name's
//! failed logins on every node. Two real `imd` nodes on one database of the shared PostgreSQL,
//! joined by a nats-server of the test's own with a unique subject prefix. Skips loudly where
//! PostgreSQL or nats-server cannot be reached (panics under CI).

mod common;

use std::path::Path;
use std::time::Duration;

use common::nats::NatsServer;
use common::shared_pg::SharedPgDatabase;
use common::*;
use tokio::time::Instant;

/// The nodes of one test, with what keeps their database and bus alive.
struct Cluster {
    nodes: Vec<Server>,
    // Dropped after the nodes (fields drop in order).
    _nats: NatsServer,
    _db: SharedPgDatabase,
}

/// Two nodes started with `extra` on a fresh database and an own nats-server; None when
/// either is missing.
async fn cluster(extra: &[&str]) -> Option<Cluster> {
    let db = SharedPgDatabase::create().await?;
    let nats = NatsServer::start().await?;
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let url = nats.url();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let node_id = format!("n{i}");
        let mut args = vec!["--nats", &url, "--cluster-prefix", &prefix, "--node-id", &node_id];
        args.extend_from_slice(extra);
        nodes.push(Server::start_on_db(Path::new(&db.url()), &args).await);
    }
    let cluster = Cluster { nodes, _nats: nats, _db: db };
    // Every node has seen the other (subscriptions up, heartbeats in).
    for node in &cluster.nodes {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = node.get("/health", None).await;
            if body["data"]["cluster"]["nodes"].as_array().is_some_and(|nodes| nodes.len() == 2) {
                break;
            }
            assert!(Instant::now() < deadline, "the nodes never saw each other: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Some(cluster)
}

/// Waits until `node` accepts `token` (a user registered on another node arrives by an
/// invalidation, moments later).
async fn wait_known(node: &Server, token: &str) {
    let deadline = Instant::now() + WAIT;
    while node.get("/user/me", Some(token)).await.0 != 200 {
        assert!(Instant::now() < deadline, "{} never learned of the user", node.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `name` on `from` and waits until `to` knows it: one node publishes its notices in
/// order and the other handles them in order, so `to` has then handled every notice `from`
/// published before (its login failures).
async fn fence(from: &Server, to: &Server, name: &str) {
    let (_, token) = from.register(name).await;
    wait_known(to, &token).await;
}

fn socket_path(token: &str, device: &str) -> String {
    format!("/?access_token={token}&device={device}")
}

/// Tries WebSockets of `token` on `node` until one is refused 429 (a session accepted meanwhile
/// is closed at once: the other node's count had not arrived yet), for at most `WAIT`.
async fn wait_refused(node: &Server, token: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match Ws::connect(node.addr, &socket_path(token, "extra")).await {
            Err(429) => return,
            Err(code) => panic!("{what}: refused {code}, not 429"),
            Ok(accepted) => drop(accepted),
        }
        assert!(Instant::now() < deadline, "{what}: never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tries WebSockets of `token` on `node` until one is accepted, for at most `within`; returns it.
async fn wait_accepted(node: &Server, token: &str, within: Duration, what: &str) -> Ws {
    let deadline = Instant::now() + within;
    loop {
        match Ws::connect(node.addr, &socket_path(token, "late")).await {
            Ok(accepted) => return accepted,
            Err(code) => assert!(code == 429 && Instant::now() < deadline, "{what}: still refused {code}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_per_user_cap_counts_sessions_on_every_node() {
    let Some(c) = cluster(&["--max-connections-per-user", "2"]).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (_, alice) = a.register("alice").await;
    let (_, bob) = a.register("bob").await;
    wait_known(b, &alice).await;
    let (_on_a, _) = a.connect_device(&alice, "phone").await;
    let (on_b, _) = b.connect_device(&alice, "laptop").await;
    // One here and one there: two, the cap, on either node.
    wait_refused(a, &alice, "a third session on A").await;
    wait_refused(b, &alice, "a third session on B").await;
    // Another user is not affected.
    let (_bob_on_a, _) = a.connect(&bob).await;
    // The session on B closes: once A hears of it, A takes a new one.
    drop(on_b);
    let _again = wait_accepted(a, &alice, WAIT, "a new session on A after one on B closed").await;
    wait_refused(b, &alice, "B, with the new session on A counted").await;
}

#[tokio::test]
async fn a_killed_nodes_sessions_stop_counting() {
    let Some(mut c) = cluster(&["--max-connections-per-user", "2"]).await else { return };
    let (_, alice) = c.nodes[0].register("alice").await;
    wait_known(&c.nodes[1], &alice).await;
    let (_first, _) = c.nodes[1].connect_device(&alice, "phone").await;
    let (_second, _) = c.nodes[1].connect_device(&alice, "laptop").await;
    wait_refused(&c.nodes[0], &alice, "A with two sessions on B").await;
    c.nodes[1].kill9().await;
    let killed = Instant::now();
    // B's heartbeats stop: A counts it dead after 3 s of silence, and its sessions with it.
    let _on_a = wait_accepted(&c.nodes[0], &alice, WAIT, "A after B was killed").await;
    assert!(killed.elapsed() < Duration::from_secs(8), "took {:?}", killed.elapsed());
}

#[tokio::test]
async fn failed_logins_of_a_name_add_up_over_the_nodes() {
    let args = ["--login-failures-per-user", "3", "--login-failures-per-ip", "1000"];
    let Some(c) = cluster(&args).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    a.register("carol").await;
    a.register("dave").await;
    for (i, node) in [a, b, a].into_iter().enumerate() {
        let (status, body) = login(node, "carol", "wrong-password").await;
        assert_eq!(status, 401, "failure {i} is an ordinary 401: {body}");
    }
    // Two failures on A and one on B: each node must count all three.
    fence(a, b, "fence-a").await;
    fence(b, a, "fence-b").await;
    for (name, node) in [("A", a), ("B", b)] {
        let (status, body) = login(node, "carol", "wrong-password").await;
        assert_eq!((status, body["code"].as_u64()), (429, Some(429)), "{name}: {body}");
        let (status, body) = login(node, "carol", "secret-pw").await;
        assert_eq!(status, 429, "{name}: the throttled name waits whatever the password: {body}");
        let (status, body) = login(node, "dave", "secret-pw").await;
        assert_eq!(status, 200, "{name}: another name logs in: {body}");
    }
}

#[tokio::test]
async fn a_login_on_one_node_clears_the_names_failures_on_the_other() {
    let args = ["--login-failures-per-user", "3", "--login-failures-per-ip", "1000"];
    let Some(c) = cluster(&args).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    a.register("erin").await;
    for i in 0..2 {
        let (status, body) = login(a, "erin", "wrong-password").await;
        assert_eq!(status, 401, "failure {i}: {body}");
    }
    fence(a, b, "fence-a").await;
    // B counts A's two failures; the owner's login there fits and clears them everywhere.
    let (status, body) = login(b, "erin", "secret-pw").await;
    assert_eq!(status, 200, "{body}");
    fence(b, a, "fence-b").await;
    // Cleared on A: three failures fit again (uncleared, the second would be the fourth: 429).
    for i in 0..3 {
        let (status, body) = login(a, "erin", "wrong-password").await;
        assert_eq!(status, 401, "failure {i} after the clearing: {body}");
    }
    let (status, body) = login(a, "erin", "wrong-password").await;
    assert_eq!(status, 429, "then the limit holds: {body}");
}
