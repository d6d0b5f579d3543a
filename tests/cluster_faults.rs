//! Cluster faults under load (issue 13): real imd nodes on one PostgreSQL database of the
//! test's own (`SharedPgDatabase`) and a nats-server of the test's own (`NatsServer`), with a
//! unique subject prefix. A node killed with SIGKILL mid-way: its clients reconnect to another
//! node and get every acked message, everything acked is stored, the others carry on. NATS
//! stopped and started mid-way: sends stay acked, the nodes reconnect by themselves and the
//! online recipients get every message, none twice. Skips loudly where PostgreSQL or
//! nats-server cannot be reached.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use common::nats::NatsServer;
use common::shared_pg::SharedPgDatabase;
use common::{Server, WAIT, Ws, assert_ack, ok, single_chat_id, text_frame};

/// The nodes of one test: each its own imd on the same database and NATS.
struct Cluster {
    nodes: Vec<Server>,
    nats: NatsServer,
    _db: SharedPgDatabase,
}

impl Cluster {
    /// `n` nodes `n0`, `n1`, … with a subject prefix of this test's own; None (said loudly)
    /// where PostgreSQL or nats-server is missing.
    async fn start(n: usize) -> Option<Cluster> {
        let db = SharedPgDatabase::create().await?;
        let nats = NatsServer::start().await?;
        let prefix = format!("imdt.faults{}_{:08x}", std::process::id(), rand::random::<u32>());
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let node_id = format!("n{i}");
            // No rate limit: the load is a few hundred messages at once.
            let args = ["--nats", &nats.url(), "--node-id", &node_id, "--cluster-prefix", &prefix, "--rate-limit", "0"];
            nodes.push(Server::start_on_db(Path::new(&db.url()), &args).await);
        }
        let cluster = Cluster { nodes, nats, _db: db };
        // Every node has seen every other one (subscriptions up, heartbeats in).
        for node in &cluster.nodes {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (_, body) = node.get("/health", None).await;
                if body["data"]["cluster"]["nodes"].as_array().is_some_and(|a| a.len() == n) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "the nodes never all saw each other: {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(cluster)
    }
}

/// Waits until every node's /health says its NATS connection is `want` (`connected`,
/// `reconnecting`).
async fn wait_nats(nodes: &[Server], want: &str) {
    for node in nodes {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = node.get("/health", None).await;
            if body["data"]["cluster"]["nats"] == want {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}: NATS never {want}: {body}", node.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until every node accepts `token` (a user registered on one node reaches the others
/// by an invalidation, moments later).
async fn wait_known(nodes: &[Server], token: &str) {
    for node in nodes {
        let deadline = tokio::time::Instant::now() + WAIT;
        while node.get("/user/me", Some(token)).await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "{} never learned of the user", node.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What [`next_frame`] found.
enum Next {
    Frame(Value),
    /// The server went away (close frame, error or end of stream): a killed node.
    Gone,
    Timeout,
}

/// The next JSON text frame within `within`; unlike `Ws::recv`, a connection that ends is an
/// answer, not a failure.
async fn next_frame(ws: &mut Ws, within: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => return Next::Timeout,
            Ok(Some(Ok(Message::Text(text)))) => {
                return Next::Frame(serde_json::from_str(text.as_str()).expect("server frame is JSON"));
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return Next::Gone,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// One user's side of a conversation: what it sent and had acked, and what it was sent.
#[derive(Default)]
struct Traffic {
    /// msg_id -> id of each acked message this user sent.
    acked: BTreeMap<String, u64>,
    /// msg_ids sent without a reply (their node died first).
    unanswered: Vec<String>,
    /// ids of the peer's messages received, in arrival order, repeats kept.
    received: Vec<u64>,
}

impl Traffic {
    /// Notes a frame: an ack of ours, or a message from `peer`; panics on an error reply.
    fn note(&mut self, frame: &Value, peer: u64, chat: &str) {
        if frame.get("code").is_some() {
            let msg_id = frame["msg_id"].as_str().unwrap_or_else(|| panic!("reply without msg_id: {frame}"));
            assert_ack(frame, msg_id, chat);
            let id = frame["id"].as_u64().expect("id");
            if let Some(old) = self.acked.insert(msg_id.to_string(), id) {
                assert_eq!(old, id, "{msg_id} acked with two ids");
            }
            self.unanswered.retain(|m| m != msg_id);
        } else if frame["action"] == "single_chat" && frame["from_uid"] == peer {
            self.received.push(frame["id"].as_u64().unwrap_or_else(|| panic!("id: {frame}")));
        }
    }
}

/// A user of the test: uid, token, and who it talks to.
#[derive(Clone)]
struct User {
    uid: u64,
    token: String,
    peer: u64,
}

/// Sends `count` messages (`<tag>-<i>`) from `user` to its peer on `ws`, at most `window`
/// unanswered, `pace` apart, counting acks in `acks`; stops early when `stop` is set, and
/// returns (the socket if it is still up, the traffic) when all are answered or the node is
/// gone.
#[allow(clippy::too_many_arguments)] // one client's whole load, as plain values for a task
async fn exchange(
    mut ws: Ws,
    user: User,
    tag: String,
    count: usize,
    window: usize,
    pace: Duration,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (Option<Ws>, Traffic) {
    let chat = single_chat_id(user.uid, user.peer);
    let mut traffic = Traffic::default();
    let mut sent = 0;
    loop {
        let answered = traffic.acked.len();
        let stopping = stop.load(Ordering::Relaxed);
        if (sent == count || stopping) && answered == sent {
            return (Some(ws), traffic);
        }
        if sent < count && !stopping && sent - answered < window {
            let msg_id = format!("{tag}-{sent}");
            traffic.unanswered.push(msg_id.clone());
            // A send to a killed node may fail outright: that node is gone, as when reading.
            let frame = Message::text(text_frame(user.peer, &msg_id, "under load").to_string());
            if ws.stream.send(frame).await.is_err() {
                return (None, traffic);
            }
            sent += 1;
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            continue;
        }
        match next_frame(&mut ws, WAIT).await {
            Next::Frame(frame) => {
                let before = traffic.acked.len();
                traffic.note(&frame, user.peer, &chat);
                acks.fetch_add(traffic.acked.len() - before, Ordering::Relaxed);
            }
            Next::Gone => return (None, traffic),
            Next::Timeout => panic!("uid {}: no reply within {WAIT:?} ({sent} sent, {answered} acked)", user.uid),
        }
    }
}

/// Reads `ws` until `user` has received every id of `want` (bounded by [`WAIT`]); notes all
/// it reads in `traffic`.
async fn receive_all(ws: &mut Ws, user: &User, traffic: &mut Traffic, want: &BTreeSet<u64>, what: &str) {
    let chat = single_chat_id(user.uid, user.peer);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got: BTreeSet<u64> = traffic.received.iter().copied().collect();
        let missing: Vec<u64> = want.difference(&got).copied().collect();
        if missing.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_frame(ws, left).await {
            Next::Frame(frame) => traffic.note(&frame, user.peer, &chat),
            Next::Gone => panic!("{what}: uid {}'s connection ended", user.uid),
            Next::Timeout => {
                panic!("{what}: uid {} never received {} acked messages: {missing:?}", user.uid, missing.len())
            }
        }
    }
}

/// Sends `frame` and returns its reply, noting in `traffic` the peer's messages that arrive
/// before it (`Ws::request` skips them: a live message would look lost).
async fn request_noting(ws: &mut Ws, frame: Value, traffic: &mut Traffic, peer: u64, chat: &str) -> Value {
    ws.send(frame).await;
    loop {
        match next_frame(ws, WAIT).await {
            Next::Frame(reply) if reply.get("code").is_some() => return reply,
            Next::Frame(other) => traffic.note(&other, peer, chat),
            Next::Gone => panic!("the connection ended while waiting for a reply"),
            Next::Timeout => panic!("no reply within {WAIT:?}"),
        }
    }
}

/// Every stored message of `chat` as msg_id -> (seq, id), read page by page through `server`.
async fn stored(server: &Server, token: &str, chat: &str) -> BTreeMap<String, (u64, u64)> {
    let mut found = BTreeMap::new();
    let mut before: Option<u64> = None;
    for _ in 0..100 {
        let path = match before {
            Some(seq) => format!("/message/history?chat_id={chat}&limit=200&before={seq}"),
            None => format!("/message/history?chat_id={chat}&limit=200"),
        };
        let (status, body) = server.get(&path, Some(token)).await;
        let data = ok(status, &body, "history");
        let page = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
        for m in page {
            let msg_id = m["msg_id"].as_str().unwrap_or_else(|| panic!("msg_id: {m}")).to_string();
            let entry = (m["seq"].as_u64().expect("seq"), m["id"].as_u64().expect("id"));
            assert!(found.insert(msg_id, entry).is_none(), "a msg_id stored twice in {chat}: {m}");
        }
        match page.iter().filter_map(|m| m["seq"].as_u64()).min() {
            Some(oldest) if data["has_more"] == true => before = Some(oldest),
            _ => return found,
        }
    }
    panic!("history of {chat} did not end within 100 pages");
}

/// Polls `cond` on the shared counter (bounded by [`WAIT`]).
async fn wait_for_acks(acks: &AtomicUsize, at_least: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while acks.load(Ordering::Relaxed) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: only {} acks, waited for {at_least}",
            acks.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Registers `pairs` pairs (`alice<i>`, `bob<i>`) through the first node; returns once every node
/// knows them.
async fn pairs(nodes: &[Server], pairs: usize) -> Vec<(User, User)> {
    let mut out = Vec::new();
    for i in 0..pairs {
        let (a, a_token) = nodes[0].register(&format!("alice{i}")).await;
        let (b, b_token) = nodes[0].register(&format!("bob{i}")).await;
        wait_known(nodes, &a_token).await;
        wait_known(nodes, &b_token).await;
        out.push((User { uid: a, token: a_token, peer: b }, User { uid: b, token: b_token, peer: a }));
    }
    out
}

/// One message each way between every pair, delivered live across the nodes: the cluster is
/// wired before the fault is made. Returns the connections and their traffic so far.
async fn warm_up(pairs: &[(User, User)], a_node: &Server, b_node: &Server) -> Vec<((Ws, Traffic), (Ws, Traffic))> {
    let mut out = Vec::new();
    for (a, b) in pairs {
        let (mut a_ws, _) = a_node.connect(&a.token).await;
        let (mut b_ws, _) = b_node.connect(&b.token).await;
        let (mut a_t, mut b_t) = (Traffic::default(), Traffic::default());
        one_live_message(a, &mut a_ws, &mut a_t, &mut b_ws, &mut b_t, b).await;
        one_live_message(b, &mut b_ws, &mut b_t, &mut a_ws, &mut a_t, a).await;
        out.push(((a_ws, a_t), (b_ws, b_t)));
    }
    out
}

/// `from` sends one message to `to`, acked, and `to` receives it live.
async fn one_live_message(
    from: &User,
    from_ws: &mut Ws,
    from_t: &mut Traffic,
    to_ws: &mut Ws,
    to_t: &mut Traffic,
    to: &User,
) {
    let chat = single_chat_id(from.uid, to.uid);
    let msg_id = format!("warm-{}", from.uid);
    let ack = from_ws.request(text_frame(to.uid, &msg_id, "hello")).await;
    from_t.note(&ack, from.peer, &chat);
    let want: BTreeSet<u64> = [ack["id"].as_u64().expect("id")].into();
    receive_all(to_ws, to, to_t, &want, "warm-up across nodes").await;
}

#[tokio::test]
async fn a_node_killed_under_load_loses_nothing_acked_and_the_others_carry_on() {
    const PAIRS: usize = 4;
    /// Per user and direction: well under sync's 200 per conversation.
    const COUNT: usize = 80;
    let Some(mut cluster) = Cluster::start(3).await else { return };
    let users = pairs(&cluster.nodes, PAIRS).await;
    // a<i> on node 0, b<i> on node 1 (to be killed); node 2 is where b<i> go next.
    let conns = warm_up(&users, &cluster.nodes[0], &cluster.nodes[1]).await;
    let acks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for ((a, b), ((a_ws, a_warm), (b_ws, b_warm))) in users.iter().cloned().zip(conns) {
        for (user, ws, warm) in [(a.clone(), a_ws, a_warm), (b.clone(), b_ws, b_warm)] {
            let (acks, stop) = (acks.clone(), stop.clone());
            let tag = format!("u{}", user.uid);
            let pace = Duration::from_millis(2);
            tasks.push(tokio::spawn(async move {
                let (ws, mut traffic) = exchange(ws, user, tag, COUNT, 4, pace, acks, stop).await;
                traffic.acked.extend(warm.acked);
                traffic.received.extend(warm.received);
                (ws, traffic)
            }));
        }
    }
    wait_for_acks(&acks, PAIRS * 2 * COUNT / 2, "before the kill").await;
    cluster.nodes[1].kill9().await;
    let at_kill = acks.load(Ordering::Relaxed);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("client task"));
    }
    assert!(acks.load(Ordering::Relaxed) > at_kill, "node 0 acked nothing after the kill ({at_kill} acks at the kill)");

    let (survivor, refuge) = (&cluster.nodes[0], &cluster.nodes[2]);
    let mut results = results.into_iter();
    for (a, b) in &users {
        let (a_ws, mut a_t) = results.next().expect("a's result");
        let (_, mut b_t) = results.next().expect("b's result");
        let mut a_ws = a_ws.expect("a's node was not killed");
        let chat = single_chat_id(a.uid, b.uid);
        // b comes back on node 2 with the same device: sync brings what it missed.
        let (mut b_ws, synced) = refuge.connect(&b.token).await;
        for frame in &synced {
            b_t.note(frame, b.peer, &chat);
        }
        // What b sent without a reply is resent to node 2: a duplicate if node 1 had
        // committed it (the msg_id is claimed in the shared store), else stored now.
        for msg_id in b_t.unanswered.clone() {
            let reply =
                request_noting(&mut b_ws, text_frame(a.uid, &msg_id, "under load"), &mut b_t, a.uid, &chat).await;
            b_t.note(&reply, a.uid, &chat);
        }
        // The others carry on: one more message each way across nodes 0 and 2.
        for (from, from_ws, from_t) in [(a, &mut a_ws, &mut a_t), (b, &mut b_ws, &mut b_t)] {
            let msg_id = format!("after-{}", from.uid);
            let frame = text_frame(from.peer, &msg_id, "after the kill");
            let reply = request_noting(from_ws, frame, from_t, from.peer, &chat).await;
            from_t.note(&reply, from.peer, &chat);
            assert_ne!(reply["duplicate"], true, "{reply}");
        }
        assert!(a_t.unanswered.is_empty() && b_t.unanswered.is_empty(), "every message was answered");
        let a_sent: BTreeSet<u64> = a_t.acked.values().copied().collect();
        let b_sent: BTreeSet<u64> = b_t.acked.values().copied().collect();
        receive_all(&mut b_ws, b, &mut b_t, &a_sent, "b after moving to node 2").await;
        receive_all(&mut a_ws, a, &mut a_t, &b_sent, "a on the surviving node").await;

        // The store holds exactly what was acked, gap-free, seen from either live node.
        let mut want: BTreeMap<String, u64> = a_t.acked.clone();
        want.extend(b_t.acked.clone());
        for node in [survivor, refuge] {
            let stored = stored(node, &a.token, &chat).await;
            let ids: BTreeMap<String, u64> = stored.iter().map(|(m, (_, id))| (m.clone(), *id)).collect();
            assert_eq!(ids, want, "{chat}: the store holds exactly the acked messages");
            let seqs: BTreeSet<u64> = stored.values().map(|(seq, _)| *seq).collect();
            assert_eq!(seqs, (1..=stored.len() as u64).collect(), "{chat}: seqs gap-free");
        }
    }
}

#[tokio::test]
async fn nats_stopped_and_started_under_load_delays_delivery_but_loses_and_repeats_nothing() {
    const PAIRS: usize = 3;
    /// Most messages per sender; the test stops them sooner.
    const MAX: usize = 2000;
    let Some(mut cluster) = Cluster::start(2).await else { return };
    let users = pairs(&cluster.nodes, PAIRS).await;
    // Senders a<i> on node 0, recipients b<i> on node 1.
    let conns = warm_up(&users, &cluster.nodes[0], &cluster.nodes[1]).await;
    let acks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for ((a, b), ((a_ws, _), (mut b_ws, b_warm))) in users.iter().cloned().zip(conns) {
        let (acks, stop) = (acks.clone(), stop.clone());
        let tag = format!("u{}", a.uid);
        senders.push(tokio::spawn(exchange(a_ws, a, tag, MAX, 4, Duration::from_millis(10), acks, stop)));
        let seen = Arc::new(Mutex::new(b_warm.received));
        let (seen_here, done) = (seen.clone(), done.clone());
        receivers.push((
            seen,
            tokio::spawn(async move {
                let chat = single_chat_id(b.uid, b.peer);
                let mut t = Traffic::default();
                while !done.load(Ordering::Relaxed) {
                    match next_frame(&mut b_ws, Duration::from_millis(50)).await {
                        Next::Frame(frame) => {
                            t.note(&frame, b.peer, &chat);
                            seen_here.lock().expect("seen").append(&mut t.received);
                        }
                        Next::Gone => panic!("b{}'s node closed the connection", b.uid),
                        Next::Timeout => {}
                    }
                }
            }),
        ));
    }
    wait_for_acks(&acks, 30, "before NATS stops").await;
    cluster.nats.stop().await;
    wait_nats(&cluster.nodes, "reconnecting").await;
    let at_stop = acks.load(Ordering::Relaxed);
    // Sends on node 0 are still acked (stored) while NATS is away.
    wait_for_acks(&acks, at_stop + 60, "while NATS is away").await;
    cluster.nats.start_again().await;
    // The nodes reconnect by themselves.
    wait_nats(&cluster.nodes, "connected").await;
    let at_start = acks.load(Ordering::Relaxed);
    wait_for_acks(&acks, at_start + 30, "after NATS is back").await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for task in senders {
        let (ws, traffic) = task.await.expect("sender task");
        assert!(ws.is_some(), "node 0 closed a sender's connection");
        sent.push(traffic);
    }

    // Every recipient, online all along on node 1, gets every acked message within a few
    // seconds of NATS' return (catch-up), and none twice.
    let deadline = tokio::time::Instant::now() + WAIT;
    for (traffic, (seen, _)) in sent.iter().zip(&receivers) {
        let want: BTreeSet<u64> = traffic.acked.values().copied().collect();
        loop {
            let got: BTreeSet<u64> = seen.lock().expect("seen").iter().copied().collect();
            let missing: Vec<u64> = want.difference(&got).copied().collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} acked messages never reached their online recipient: {missing:?}",
                missing.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    done.store(true, Ordering::Relaxed);
    for (seen, task) in receivers {
        task.await.expect("receiver task");
        let seen = seen.lock().expect("seen");
        let mut times: HashMap<u64, usize> = HashMap::new();
        for id in seen.iter() {
            *times.entry(*id).or_default() += 1;
        }
        let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "messages shown more than once (id, times): {twice:?}");
    }
    let total: usize = sent.iter().map(|t| t.acked.len()).sum();
    assert!(total >= at_start + 30 - at_stop, "the load ran through the outage: {total} acked");
}

/// `from` sends one message (`<tag>-<uid>`) to `to`: acked as new, and received by `to`.
async fn one_way(
    from: &User,
    from_ws: &mut Ws,
    from_t: &mut Traffic,
    to: &User,
    to_ws: &mut Ws,
    to_t: &mut Traffic,
    tag: &str,
) {
    let chat = single_chat_id(from.uid, to.uid);
    let msg_id = format!("{tag}-{}", from.uid);
    let reply = request_noting(from_ws, text_frame(to.uid, &msg_id, tag), from_t, from.peer, &chat).await;
    from_t.note(&reply, from.peer, &chat);
    assert_ne!(reply["duplicate"], true, "{reply}");
    let want: BTreeSet<u64> = [reply["id"].as_u64().expect("id")].into();
    receive_all(to_ws, to, to_t, &want, tag).await;
}

/// NATS killed, then a node restarted while it is still away: the node starts anyway and
/// serves (the store is the truth), chat between it and the other node arrives through the
/// catch-up meanwhile, and once NATS is back both nodes reconnect by themselves and messages
/// cross live again; none of those is shown twice.
#[tokio::test]
async fn a_node_restarted_while_nats_is_down_serves_and_rejoins_when_it_returns() {
    let Some(mut cluster) = Cluster::start(2).await else { return };
    let users = pairs(&cluster.nodes, 1).await;
    let (a, b) = users[0].clone();
    let mut conns = warm_up(&users, &cluster.nodes[0], &cluster.nodes[1]).await;
    let ((mut a_ws, mut a_t), (b_ws, mut b_t)) = conns.remove(0);
    drop(b_ws);
    let chat = single_chat_id(a.uid, b.uid);

    cluster.nats.kill9().await;
    wait_nats(&cluster.nodes[..1], "reconnecting").await;
    let mut node = cluster.nodes.remove(1);
    node.kill9().await;
    let restarted = node.restart().await;
    let (_, body) = restarted.get("/health", None).await;
    assert_eq!(body["data"]["cluster"]["nats"], "reconnecting", "started without NATS: {body}");
    cluster.nodes.push(restarted);
    let (mut b_ws, synced) = cluster.nodes[1].connect(&b.token).await;
    for frame in &synced {
        b_t.note(frame, b.peer, &chat);
    }

    // Without NATS: both ways through the catch-up.
    one_way(&a, &mut a_ws, &mut a_t, &b, &mut b_ws, &mut b_t, "nats-down").await;
    one_way(&b, &mut b_ws, &mut b_t, &a, &mut a_ws, &mut a_t, "nats-down").await;

    cluster.nats.start_again().await;
    wait_nats(&cluster.nodes, "connected").await;
    one_way(&a, &mut a_ws, &mut a_t, &b, &mut b_ws, &mut b_t, "nats-back").await;
    one_way(&b, &mut b_ws, &mut b_t, &a, &mut a_ws, &mut a_t, "nats-back").await;
    // The node that was killed may send the warm-up again through the sync (at least once
    // after a crash); the messages of the outage and after it come once each.
    for (t, who) in [(&a_t, "a"), (&b_t, "b")] {
        let mut seen = BTreeSet::new();
        let ids: BTreeSet<u64> =
            a_t.acked.iter().chain(&b_t.acked).filter(|(m, _)| m.starts_with("nats-")).map(|(_, id)| *id).collect();
        let twice: Vec<u64> = t.received.iter().copied().filter(|id| ids.contains(id) && !seen.insert(*id)).collect();
        assert!(twice.is_empty(), "{who} was shown messages twice: {twice:?}");
    }
}
