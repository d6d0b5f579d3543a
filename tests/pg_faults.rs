//! PostgreSQL stopped (and crashed) under a running imd, then started again (issue 13): while
//! it is away, a send is answered with error 503 (never an ack), an HTTP write with 503 and
//! `/health` says the storage is unavailable; once it is back, without restarting imd,
//! `/health` is ok, a resend of the refused message is acked and delivered, and everything
//! acked before is there (history and a new device's sync). Runs on a PostgreSQL of its own
//! (`PgInstance`), since the shared one is never stopped. The same for two cluster nodes
//! (with a nats-server of the test's own): both refuse, both say so, both resume.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::pg_instance::PgInstance;
use common::{Server, WAIT, Ws, assert_ack, assert_error, assert_frame_error, history, ok, single_chat_id, text_frame};

/// Every message of a conversation as msg_id -> (seq, id), read page by page.
async fn stored(server: &Server, token: &str, chat_id: &str) -> BTreeMap<String, (u64, u64)> {
    let mut found = BTreeMap::new();
    let mut before: Option<u64> = None;
    for _ in 0..100 {
        let path = match before {
            Some(seq) => format!("/message/history?chat_id={chat_id}&limit=200&before={seq}"),
            None => format!("/message/history?chat_id={chat_id}&limit=200"),
        };
        let (status, body) = server.get(&path, Some(token)).await;
        let data = ok(status, &body, "history");
        let page = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
        for m in page {
            let msg_id = m["msg_id"].as_str().unwrap_or_else(|| panic!("msg_id: {m}")).to_string();
            let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("seq: {m}"));
            let id = m["id"].as_u64().unwrap_or_else(|| panic!("id: {m}"));
            assert!(found.insert(msg_id, (seq, id)).is_none(), "a msg_id stored twice in {chat_id}: {m}");
        }
        match page.iter().filter_map(|m| m["seq"].as_u64()).min() {
            Some(oldest) if data["has_more"] == true => before = Some(oldest),
            _ => return found,
        }
    }
    panic!("history of {chat_id} did not end within 100 pages");
}

/// Asserts that the stored seqs of a conversation are exactly 1..=n.
#[track_caller]
fn assert_gap_free(stored: &BTreeMap<String, (u64, u64)>) {
    let seqs: BTreeSet<u64> = stored.values().map(|(seq, _)| *seq).collect();
    let want: BTreeSet<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(seqs, want, "seqs have gaps or repeats: {stored:?}");
}

/// Polls `/health` (bounded by [`WAIT`]) until it answers 200 with `"status":"ok"`.
async fn wait_healthy(server: &Server) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.get("/health", None).await;
        if status == 200 {
            assert_eq!(body["data"]["status"], "ok", "{body}");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "/health still not ok after PostgreSQL came back: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts `/health` says the storage is unavailable: 503, `"status":"degraded"` and a
/// non-empty `storage` reason, as for a degraded SQLite store.
async fn assert_health_degraded(server: &Server) {
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["data"]["status"], "degraded", "{body}");
    assert!(body["data"]["storage"].as_str().is_some_and(|s| !s.is_empty()), "storage reason: {body}");
}

/// Reads frames on `ws` until the `single_chat` with `msg_id` arrives; returns it.
async fn recv_message(ws: &mut Ws, msg_id: &str) -> Value {
    loop {
        let frame = ws.recv().await;
        if frame["action"] == "single_chat" && frame["msg_id"] == msg_id {
            return frame;
        }
        assert_ne!(frame["action"], "single_chat", "expected {msg_id} next, got {frame}");
    }
}

/// One imd on a PostgreSQL of the test's own: alice (sender) and bob (receiver) connected,
/// `before` messages acked and delivered.
struct Setup {
    pg: PgInstance,
    server: Server,
    alice: (u64, String),
    bob: (u64, String),
    alice_ws: Ws,
    bob_ws: Ws,
    /// msg_id -> (seq, id) of every acked message.
    acked: BTreeMap<String, (u64, u64)>,
}

async fn setup(before: usize) -> Option<Setup> {
    let pg = PgInstance::start().await?;
    pg.create_database("imd").await;
    // No rate limit: one test sends a few hundred messages at once.
    let server = Server::start_on_db(Path::new(&pg.url("imd")), &["--rate-limit", "0"]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (mut alice_ws, _) = server.connect(&alice.1).await;
    let (mut bob_ws, _) = server.connect(&bob.1).await;
    let chat = single_chat_id(alice.0, bob.0);
    let mut acked = BTreeMap::new();
    for i in 0..before {
        let msg_id = format!("before-{i}");
        let ack = alice_ws.request(text_frame(bob.0, &msg_id, &format!("text {i}"))).await;
        assert_ack(&ack, &msg_id, &chat);
        let frame = recv_message(&mut bob_ws, &msg_id).await;
        assert_eq!(frame["id"], ack["id"], "{frame}");
        acked.insert(msg_id, (ack["seq"].as_u64().expect("seq"), ack["id"].as_u64().expect("id")));
    }
    Some(Setup { pg, server, alice, bob, alice_ws, bob_ws, acked })
}

/// While PostgreSQL is away: a send is refused with 503 and the msg_id (no ack), an HTTP write
/// is 503, /health is degraded, and the recipient is sent nothing.
async fn assert_refused_while_away(s: &mut Setup, msg_id: &str) {
    let refused = s.alice_ws.request(text_frame(s.bob.0, msg_id, "while away")).await;
    assert_frame_error(&refused, 503, Some(msg_id), "a send while PostgreSQL is away");
    assert!(refused["message"].as_str().is_some_and(|m| m.starts_with("storage unavailable")), "{refused}");
    let (status, body) =
        s.server.post_json("/user/register", json!({"username": "carol", "password": "secret-pw"}), None).await;
    assert_error(status, &body, 503, "register while PostgreSQL is away");
    let (status, body) = s.server.post_json("/room/create", json!({}), Some(&s.alice.1)).await;
    assert_error(status, &body, 503, "room/create while PostgreSQL is away");
    assert_health_degraded(&s.server).await;
    s.bob_ws.expect_nothing_pending().await;
}

/// After PostgreSQL is back (imd not restarted): /health ok by itself, the refused message
/// resent is acked (not a duplicate, the next seq) and delivered, HTTP writes work, and
/// history and a new device's sync hold exactly what was acked.
async fn assert_served_again(mut s: Setup, refused: &str) {
    wait_healthy(&s.server).await;
    let chat = single_chat_id(s.alice.0, s.bob.0);
    let ack = s.alice_ws.request(text_frame(s.bob.0, refused, "while away")).await;
    assert_ack(&ack, refused, &chat);
    assert_ne!(ack["duplicate"], true, "the refused message was not stored: {ack}");
    assert_eq!(ack["seq"], json!(s.acked.len() + 1), "the refused message took no seq: {ack}");
    let frame = recv_message(&mut s.bob_ws, refused).await;
    assert_eq!(frame["id"], ack["id"], "{frame}");
    s.acked.insert(refused.to_string(), (ack["seq"].as_u64().expect("seq"), ack["id"].as_u64().expect("id")));
    s.server.register("carol").await;
    let (status, body) = s.server.post_json("/room/create", json!({}), Some(&s.alice.1)).await;
    ok(status, &body, "room/create after PostgreSQL came back");

    let stored = stored(&s.server, &s.alice.1, &chat).await;
    assert_eq!(stored, s.acked, "the store holds exactly what was acked, at the acked seqs and ids");
    assert_gap_free(&stored);
    // A device bob never used gets the whole conversation through sync.
    let (_phone, synced) = s.server.connect_device(&s.bob.1, "phone").await;
    let synced: BTreeMap<String, (u64, u64)> = synced
        .iter()
        .filter(|f| f["chat_id"] == chat.as_str())
        .map(|f| {
            let msg_id = f["msg_id"].as_str().unwrap_or_else(|| panic!("msg_id: {f}")).to_string();
            (msg_id, (f["seq"].as_u64().expect("seq"), f["id"].as_u64().expect("id")))
        })
        .collect();
    assert_eq!(synced, s.acked, "a new device's sync holds every acked message");
    let (status, body) = history(&s.server, &s.bob.1, &chat).await;
    ok(status, &body, "bob's history");
}

#[tokio::test]
async fn a_stopped_postgresql_is_answered_503_and_everything_resumes_without_a_restart() {
    let Some(mut s) = setup(5).await else { return };
    s.pg.stop().await;
    assert_refused_while_away(&mut s, "away").await;
    s.pg.start_again().await;
    assert_served_again(s, "away").await;
}

#[tokio::test]
async fn a_crashed_postgresql_loses_nothing_acked_and_is_used_again_after_recovery() {
    let Some(mut s) = setup(5).await else { return };
    // SIGKILL to every PostgreSQL process: what was acked was committed with fsync on, so
    // crash recovery must bring it back.
    s.pg.kill9().await;
    assert_refused_while_away(&mut s, "crashed").await;
    s.pg.start_again().await;
    assert_served_again(s, "crashed").await;
}

/// PostgreSQL stopped while sends are in flight: every reply is an ack or a 503 error; after
/// it is back, every acked message is stored at its acked seq, and resending every refused
/// one stores each exactly once (a refusal whose commit had in fact reached the database is
/// answered as a duplicate), with no gaps.
#[tokio::test]
async fn sends_in_flight_when_postgresql_stops_are_acked_only_if_stored() {
    /// Most messages sent before PostgreSQL is down (then a few more, all refused).
    const MAX_SENT: usize = 2000;
    /// Messages sent and not yet answered, at most.
    const WINDOW: usize = 64;
    /// Refusals after the stop that end the sending.
    const REFUSALS: usize = 20;
    let Some(s) = setup(0).await else { return };
    let Setup { pg, server, alice, bob, mut alice_ws, mut bob_ws, .. } = s;
    let chat = single_chat_id(alice.0, bob.0);
    let mut replies: BTreeMap<String, Value> = BTreeMap::new();
    // The stop runs beside the sending, so that messages are queued and committing while
    // PostgreSQL shuts down.
    let mut pg = Some(pg);
    let mut stopping: Option<tokio::task::JoinHandle<PgInstance>> = None;
    let mut sent = 0;
    let mut refused_after_stop = 0;
    let deadline = tokio::time::Instant::now() + 6 * WAIT;
    while replies.len() < sent || refused_after_stop < REFUSALS {
        // Past MAX_SENT, only once PostgreSQL is down: those sends are refused at once, so
        // the recipient is not sent more than the bound.
        let stop_done = stopping.as_ref().is_some_and(|task| task.is_finished());
        while (sent < MAX_SENT || stop_done) && sent - replies.len() < WINDOW && refused_after_stop < REFUSALS {
            alice_ws.send(text_frame(bob.0, &format!("m{sent}"), "in flight")).await;
            sent += 1;
        }
        if replies.len() == sent {
            // All answered, the bound reached, the stop still under way: wait for it.
            assert!(tokio::time::Instant::now() < deadline, "PostgreSQL did not stop in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let reply = alice_ws.recv().await;
        if reply.get("code").is_none() {
            continue;
        }
        if reply["action"] != "ack" && stopping.as_ref().is_some_and(|task| task.is_finished()) {
            refused_after_stop += 1;
        }
        let msg_id = reply["msg_id"].as_str().unwrap_or_else(|| panic!("reply without msg_id: {reply}")).to_string();
        assert!(replies.insert(msg_id, reply).is_none(), "two replies for one msg_id");
        if replies.len() >= 200
            && let Some(mut pg) = pg.take()
        {
            stopping = Some(tokio::spawn(async move {
                pg.stop().await;
                pg
            }));
        }
    }
    let mut pg = stopping.expect("PostgreSQL was stopped under load").await.expect("the stop");
    let mut acked = BTreeMap::new();
    let mut refused = Vec::new();
    for (msg_id, reply) in &replies {
        if reply["action"] == "ack" {
            assert_ack(reply, msg_id, &chat);
            acked.insert(msg_id.clone(), (reply["seq"].as_u64().expect("seq"), reply["id"].as_u64().expect("id")));
        } else {
            assert_frame_error(reply, 503, Some(msg_id), "a send when PostgreSQL stopped");
            refused.push(msg_id.clone());
        }
    }
    assert!(!refused.is_empty(), "PostgreSQL stopped with sends in flight, yet all {sent} were acked");
    assert_health_degraded(&server).await;

    pg.start_again().await;
    wait_healthy(&server).await;
    let before = stored(&server, &alice.1, &chat).await;
    for (msg_id, seq_id) in &acked {
        assert_eq!(before.get(msg_id), Some(seq_id), "acked {msg_id} is stored as acked");
    }
    for msg_id in &refused {
        let ack = alice_ws.request(text_frame(bob.0, msg_id, "in flight")).await;
        assert_ack(&ack, msg_id, &chat);
        let seq_id = (ack["seq"].as_u64().expect("seq"), ack["id"].as_u64().expect("id"));
        if ack["duplicate"] == true {
            assert_eq!(before.get(msg_id), Some(&seq_id), "a duplicate names the stored message: {ack}");
        } else {
            assert!(!before.contains_key(msg_id), "{msg_id} was stored, yet its resend is no duplicate: {ack}");
        }
        acked.insert(msg_id.clone(), seq_id);
    }
    let after = stored(&server, &alice.1, &chat).await;
    assert_eq!(after.len(), sent, "every message stored once");
    assert_eq!(after, acked, "stored as acked");
    assert_gap_free(&after);
    // bob, connected throughout, was sent each message once (by id), and every one of them.
    let mut seen = BTreeSet::new();
    while seen.len() < sent {
        let frame = bob_ws.recv().await;
        if frame["action"] == "single_chat" {
            let id = frame["id"].as_u64().unwrap_or_else(|| panic!("id: {frame}"));
            assert!(seen.insert(id), "bob was sent message {id} twice");
        }
    }
    bob_ws.expect_nothing_pending().await;
}

/// Two nodes of a cluster on one PostgreSQL, alice on the first and bob on the second:
/// PostgreSQL stopped refuses sends with 503 on both nodes and both say so in `/health`
/// (the cluster part too); started again, both resume by themselves and messages cross the
/// nodes live both ways at the next seqs.
#[tokio::test]
async fn a_postgresql_outage_under_a_cluster_is_503_on_every_node_and_both_resume() {
    let Some(mut pg) = PgInstance::start().await else { return };
    let Some(nats) = common::nats::NatsServer::start().await else { return };
    pg.create_database("imd").await;
    let prefix = format!("imdt.pgout{}_{:08x}", std::process::id(), rand::random::<u32>());
    let mut nodes = Vec::new();
    for node_id in ["n0", "n1"] {
        let args = ["--nats", &nats.url(), "--node-id", node_id, "--cluster-prefix", &prefix];
        nodes.push(Server::start_on_db(Path::new(&pg.url("imd")), &args).await);
    }
    let alice = nodes[0].register("alice").await;
    let bob = nodes[0].register("bob").await;
    // bob's account reaches the second node by an invalidation, moments later.
    let deadline = tokio::time::Instant::now() + WAIT;
    while nodes[1].get("/user/me", Some(&bob.1)).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the second node never learned of bob");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut alice_ws, _) = nodes[0].connect(&alice.1).await;
    let (mut bob_ws, _) = nodes[1].connect(&bob.1).await;
    let chat = single_chat_id(alice.0, bob.0);
    let mut acked: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut exchange = async |from_ws: &mut Ws, to_ws: &mut Ws, to: u64, msg_id: &str| {
        let ack = from_ws.request(text_frame(to, msg_id, "across nodes")).await;
        assert_ack(&ack, msg_id, &chat);
        assert_eq!(ack["seq"], json!(acked.len() + 1), "the next seq: {ack}");
        let frame = recv_message(to_ws, msg_id).await;
        assert_eq!(frame["id"], ack["id"], "{frame}");
        acked.insert(msg_id.to_string(), (ack["seq"].as_u64().expect("seq"), ack["id"].as_u64().expect("id")));
    };
    exchange(&mut alice_ws, &mut bob_ws, bob.0, "before-a").await;
    exchange(&mut bob_ws, &mut alice_ws, alice.0, "before-b").await;

    pg.stop().await;
    for (ws, to, msg_id) in [(&mut alice_ws, bob.0, "away-a"), (&mut bob_ws, alice.0, "away-b")] {
        let refused = ws.request(text_frame(to, msg_id, "while away")).await;
        assert_frame_error(&refused, 503, Some(msg_id), "a send while PostgreSQL is away");
    }
    for node in &nodes {
        assert_health_degraded(node).await;
        let (_, body) = node.get("/health", None).await;
        assert_eq!(body["data"]["cluster"]["postgres"], "degraded", "{body}");
    }

    pg.start_again().await;
    for node in &nodes {
        wait_healthy(node).await;
    }
    exchange(&mut alice_ws, &mut bob_ws, bob.0, "away-a").await;
    exchange(&mut bob_ws, &mut alice_ws, alice.0, "away-b").await;
    for node in &nodes {
        let stored = stored(node, &alice.1, &chat).await;
        assert_eq!(stored, acked, "the store holds exactly what was acked");
        assert_gap_free(&stored);
    }
}
