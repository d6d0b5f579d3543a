//! Cluster mode end to end (issue 13): two or three real `imd` nodes on one database of the
//! shared PostgreSQL, joined by a nats-server of the test's own with a unique subject prefix.
//! Skips loudly where PostgreSQL or nats-server cannot be reached (panics under CI).

mod common;

use std::path::Path;
use std::time::Duration;

use common::nats::NatsServer;
use common::shared_pg::SharedPgDatabase;
use common::*;
use serde_json::{Value, json};

/// The nodes of one test, with what keeps their database and bus alive.
struct Cluster {
    nodes: Vec<Server>,
    // Dropped after the nodes (fields drop in order).
    nats: NatsServer,
    _db: SharedPgDatabase,
}

/// `n` nodes on a fresh database and an own nats-server; None when either is missing.
async fn cluster(n: usize) -> Option<Cluster> {
    let db = SharedPgDatabase::create().await?;
    let nats = NatsServer::start().await?;
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let mut nodes = Vec::new();
    for i in 0..n {
        let node_id = format!("n{i}");
        let args = ["--nats", &nats.url(), "--cluster-prefix", &prefix, "--node-id", &node_id, "--admin-token", ADMIN];
        nodes.push(Server::start_on_db(Path::new(&db.url()), &args).await);
    }
    let cluster = Cluster { nodes, nats, _db: db };
    // Every node has seen every other one (their subscriptions are up, their heartbeats in).
    for node in &cluster.nodes {
        wait_for(node, "/health", |data| data["cluster"]["nodes"].as_array().is_some_and(|a| a.len() == n)).await;
    }
    Some(cluster)
}

/// Polls `path` of `node` until `done` holds for its `data`, for at most `WAIT`.
async fn wait_for(node: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = node.get(path, None).await;
        if done(&body["data"]) {
            return body["data"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never became as expected: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` accepts `token` (it learns of a user registered on another node by an
/// invalidation, moments later).
async fn wait_known(node: &Server, token: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.get("/user/me", Some(token)).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{} never learned of the user", node.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` knows the room `chat_id` (created on another node).
async fn wait_room(node: &Server, token: &str, chat_id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.get(&format!("/room/members?chat_id={chat_id}"), Some(token)).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{} never learned of the room {chat_id}", node.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next frame with `action`, skipping others.
async fn next_of(ws: &mut Ws, action: &str) -> Value {
    ws.recv_action(action).await
}

#[tokio::test]
async fn sqlite_with_nats_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("imd.db");
    let db = db.to_str().expect("utf-8 path");
    let out = run_imd(&["start", "0", "--host", "127.0.0.1", "--db", db, "--nats", "nats://127.0.0.1:1"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PostgreSQL"), "the refusal names what is needed: {stderr}");
}

#[tokio::test]
async fn single_chat_crosses_nodes_both_ways_to_every_device() {
    let Some(c) = cluster(2).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (alice, alice_token) = a.register("alice").await;
    let (bob, bob_token) = a.register("bob").await;
    wait_known(b, &bob_token).await;
    wait_known(b, &alice_token).await;
    let (mut alice_ws, _) = a.connect(&alice_token).await;
    let (mut bob_on_b, _) = b.connect_device(&bob_token, "phone").await;
    let (mut bob_on_a, _) = a.connect_device(&bob_token, "web").await;
    let chat = single_chat_id(alice, bob);

    let ack = send_text(&mut alice_ws, bob, "m1", "hello across").await;
    assert_ack(&ack, "m1", &chat);
    for ws in [&mut bob_on_b, &mut bob_on_a] {
        let f = next_of(ws, "single_chat").await;
        assert_delivered_text(&f, &ack, alice, "alice", "hello across");
    }

    let ack = send_text(&mut bob_on_b, alice, "m2", "and back").await;
    let f = next_of(&mut alice_ws, "single_chat").await;
    assert_delivered_text(&f, &ack, bob, "bob", "and back");
    // Bob's other device (on the other node) gets the mirror; the sending one does not.
    let f = next_of(&mut bob_on_a, "single_chat").await;
    assert_eq!(f["seq"], ack["seq"], "{f}");
    bob_on_b.expect_nothing_pending().await;
}

#[tokio::test]
async fn concurrent_group_senders_on_two_nodes_agree_on_one_order() {
    let Some(c) = cluster(2).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (_, s1_token) = a.register("sender1").await;
    let (_, s2_token) = a.register("sender2").await;
    let (_, r_token) = a.register("reader").await;
    let room = create_room(a, &s1_token).await;
    for token in [&s2_token, &r_token] {
        let (status, body) = a.post_form("/room/join", &[("chat_id", &room)], Some(token)).await;
        ok(status, &body, "join");
    }
    wait_known(b, &s2_token).await;
    wait_known(b, &r_token).await;
    // B learned of the room and of both joins (made on A) once it lists three members.
    let members = format!("/room/members?chat_id={room}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.get(&members, Some(&r_token)).await.1["data"]["members"].as_array().map(Vec::len) != Some(3) {
        assert!(tokio::time::Instant::now() < deadline, "B never learned of the joins");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut s1, _) = a.connect(&s1_token).await;
    let (mut s2, _) = b.connect(&s2_token).await;
    let (mut r_a, _) = a.connect_device(&r_token, "a").await;
    let (mut r_b, _) = b.connect_device(&r_token, "b").await;
    const EACH: usize = 200;
    async fn send_all(ws: &mut Ws, room: &str, tag: &str) {
        for i in 0..EACH {
            ws.send(group_frame(room, &format!("{tag}-{i}"), "x")).await;
        }
    }
    tokio::join!(send_all(&mut s1, &room, "one"), send_all(&mut s2, &room, "two"));
    for (name, ws) in [("reader on A", &mut r_a), ("reader on B", &mut r_b)] {
        let mut seqs = Vec::new();
        while seqs.len() < 2 * EACH {
            let f = next_of(ws, "group_chat").await;
            seqs.push(f["seq"].as_u64().expect("seq"));
        }
        let expected: Vec<u64> = (1..=2 * EACH as u64).collect();
        assert_eq!(seqs, expected, "{name}: every message once, in seq order");
    }
}

#[tokio::test]
async fn a_join_on_one_node_and_a_logout_reach_the_other() {
    let Some(c) = cluster(2).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (_, owner_token) = a.register("owner").await;
    let (_, joiner_token) = a.register("joiner").await;
    wait_known(b, &owner_token).await;
    wait_known(b, &joiner_token).await;
    let room = create_room(b, &owner_token).await;
    wait_room(a, &owner_token, &room).await;
    // Joined on A: B, where the owner writes, must learn of it (the invalidation).
    let (status, body) = a.post_form("/room/join", &[("chat_id", &room)], Some(&joiner_token)).await;
    ok(status, &body, "join on A");
    let (mut joiner_ws, _) = a.connect(&joiner_token).await;
    let (mut owner_ws, _) = b.connect(&owner_token).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Until B reloaded the room, a message reaches nobody on A: try again, bounded.
    let mut n = 0;
    loop {
        n += 1;
        let ack = owner_ws.request(group_frame(&room, &format!("g{n}"), "hi")).await;
        assert_eq!(ack["action"], "ack", "{ack}");
        if let Some(f) = joiner_ws.try_recv(Duration::from_millis(300)).await {
            assert_eq!(f["action"], "group_chat", "{f}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the join on A never reached B");
    }
    // A logout on A closes the user's connection on B with the revocation code.
    let (mut joiner_on_b, _) = b.connect_device(&joiner_token, "b").await;
    let (status, body) = a.post_form("/user/logout", &[], Some(&joiner_token)).await;
    ok(status, &body, "logout on A");
    assert_eq!(joiner_on_b.recv_close().await, Some(4001), "closed on B as a revocation");
}

#[tokio::test]
async fn room_members_see_presence_on_other_nodes_and_a_killed_node_drops_it() {
    let Some(mut c) = cluster(2).await else { return };
    let (_, owner_token) = c.nodes[0].register("owner").await;
    let (member, member_token) = c.nodes[0].register("member").await;
    let room = create_room(&c.nodes[0], &owner_token).await;
    let (status, body) = c.nodes[0].post_form("/room/join", &[("chat_id", &room)], Some(&member_token)).await;
    ok(status, &body, "join");
    wait_known(&c.nodes[1], &member_token).await;
    let (_member_ws, _) = c.nodes[1].connect(&member_token).await;
    let path = format!("/room/members?chat_id={room}");
    wait_online_in(&c.nodes[0], &owner_token, &path, "members", member, true).await;
    c.nodes[1].kill9().await;
    wait_online_in(&c.nodes[0], &owner_token, &path, "members", member, false).await;
}

#[tokio::test]
async fn a_broadcast_reaches_every_node() {
    let Some(c) = cluster(3).await else { return };
    let mut sockets = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let (_, token) = node.register(&format!("user{i}")).await;
        wait_known(node, &token).await;
        sockets.push(node.connect(&token).await.0);
    }
    let (status, body) = c.nodes[0].post_form("/message/sendPublicMessage", &[("data", "to all")], Some(ADMIN)).await;
    let data = ok(status, &body, "broadcast");
    assert_eq!(data["delivered_scope"], "node", "{data}");
    assert!(data["delivered"].as_u64().is_some(), "{data}");
    for ws in &mut sockets {
        let f = next_of(ws, "public_message").await;
        assert_eq!((&f["msg"], &f["id"]), (&json!("to all"), &data["id"]), "every node delivers it: {f}");
    }
}

/// Every node's `--admin-token`, for the broadcast.
const ADMIN: &str = "s3cret-admin-token-0123456789abcdef";

#[tokio::test]
async fn a_resend_to_another_node_is_a_duplicate_with_the_original_id() {
    let Some(c) = cluster(2).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (_, alice_token) = a.register("alice").await;
    let (bob, _) = a.register("bob").await;
    let (mut on_a, _) = a.connect(&alice_token).await;
    let first = on_a.request(text_frame(bob, "once", "hi")).await;
    assert_eq!(first["action"], "ack", "{first}");
    wait_known(b, &alice_token).await;
    let (mut on_b, _) = b.connect_device(&alice_token, "b").await;
    let again = on_b.request(text_frame(bob, "once", "hi")).await;
    assert_eq!(again["action"], "ack", "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(again["seq"], first["seq"], "{again}");
}

#[tokio::test]
async fn concurrent_customers_on_two_nodes_get_one_handler() {
    let Some(c) = cluster(2).await else { return };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let setup = shop_with_agents(a, "shop", ["agent1", "agent2"]).await;
    let owner_token = &setup.owner.1;
    for token in [owner_token, &setup.agents[0].1, &setup.agents[1].1] {
        wait_known(b, token).await;
    }
    // Agent 1 online on A only, agent 2 on B only; each node sees both online and picks one
    // at random, so unsettled routing would give about half the conversations two agents.
    let mut agent_sockets = Vec::new();
    for (i, node) in [a, b].into_iter().enumerate() {
        agent_sockets.push(node.connect(&setup.agents[i].1).await.0);
    }
    for node in [a, b] {
        for (agent, _) in &setup.agents {
            let path = format!("/shop/agents?shop_id={}", setup.shop);
            wait_online_in(node, owner_token, &path, "agents", *agent, true).await;
        }
    }
    const CUSTOMERS: usize = 8;
    for i in 0..CUSTOMERS {
        let (customer, customer_token) = a.register(&format!("customer{i}")).await;
        wait_known(b, &customer_token).await;
        let (mut on_a, _) = a.connect_device(&customer_token, "a").await;
        let (mut on_b, _) = b.connect_device(&customer_token, "b").await;
        let frame = |n: usize| {
            json!({"action": "service_chat", "chat_type": 3, "msg_type": "text",
                   "msg_id": format!("c{n}"), "shop_id": setup.shop, "msg": "help"})
        };
        let (ack_a, ack_b) = tokio::join!(on_a.request(frame(1)), on_b.request(frame(2)));
        assert_eq!((ack_a["action"].as_str(), ack_b["action"].as_str()), (Some("ack"), Some("ack")), "{ack_a} {ack_b}");
        let chat = service_chat_id(setup.shop, customer);
        // What the store holds: both messages of the conversation to one agent.
        let (status, body) = history(a, &customer_token, &chat).await;
        let data = ok(status, &body, "history");
        let agents: Vec<u64> = data["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["agent_uid"].as_u64().unwrap_or_else(|| panic!("an agent for each message: {m}")))
            .collect();
        assert_eq!(agents.len(), 2, "{data}");
        assert_eq!(agents[0], agents[1], "customer {i}: one handler for the conversation: {data}");
    }
}

#[tokio::test]
async fn without_nats_messages_between_nodes_come_through_the_catch_up() {
    let Some(mut c) = cluster(2).await else { return };
    let (alice, alice_token) = c.nodes[0].register("alice").await;
    let (bob, bob_token) = c.nodes[0].register("bob").await;
    wait_known(&c.nodes[1], &bob_token).await;
    let (mut alice_ws, _) = c.nodes[0].connect(&alice_token).await;
    let (mut bob_ws, _) = c.nodes[1].connect(&bob_token).await;
    c.nats.kill9().await;
    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(send_text(&mut alice_ws, bob, &format!("m{i}"), &format!("text {i}")).await);
    }
    for (i, ack) in acks.iter().enumerate() {
        let f = next_of(&mut bob_ws, "single_chat").await;
        assert_delivered_text(&f, ack, alice, "alice", &format!("text {i}"));
    }
}

#[tokio::test]
async fn a_node_stopped_right_after_a_burst_hands_every_message_to_the_others() {
    let Some(mut c) = cluster(2).await else { return };
    let (alice, alice_token) = c.nodes[0].register("alice").await;
    let (bob, bob_token) = c.nodes[0].register("bob").await;
    wait_known(&c.nodes[1], &bob_token).await;
    let (mut alice_ws, _) = c.nodes[0].connect(&alice_token).await;
    let (mut bob_ws, _) = c.nodes[1].connect(&bob_token).await;
    const BURST: usize = 200;
    for i in 0..BURST {
        alice_ws.send(text_frame(bob, &format!("b{i}"), "burst")).await;
    }
    let mut acked = Vec::new();
    while acked.len() < BURST {
        let ack = next_of(&mut alice_ws, "ack").await;
        assert_eq!(ack["code"], 200, "{ack}");
        acked.push(ack["seq"].as_u64().expect("seq"));
    }
    let dropped = metric_value(&c.nodes[0].metrics().await, "imd_cluster_dropped_total");
    assert_eq!(dropped, Some(0.0), "nothing dropped before the stop");
    // SIGTERM right after the last ack: the stop must publish what is queued before it closes
    // NATS, so B delivers at once instead of waiting for its catch-up to poll the database.
    let status = c.nodes[0].terminate().await;
    assert!(status.success(), "a clean stop exits 0: {status:?}");
    let stopped = tokio::time::Instant::now();
    let mut delivered = Vec::new();
    while delivered.len() < BURST {
        let f = next_of(&mut bob_ws, "single_chat").await;
        assert_eq!(f["from_uid"], json!(alice), "{f}");
        delivered.push(f["seq"].as_u64().expect("seq"));
    }
    let late = stopped.elapsed();
    assert_eq!(delivered, acked, "every acked message, once, in order");
    assert!(late < Duration::from_secs(1), "the last messages came {late:?} after the stop: through the catch-up");
}
