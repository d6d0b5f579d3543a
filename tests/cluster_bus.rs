//! The cluster bus (issue 13) on a real NATS: each test starts its own `nats-server` on a free
//! loopback port and connects two `Cluster`s with a unique subject prefix. No daemon: the bus
//! is a library part, so the tests drive it directly. The store behind the catch-up is a fake
//! of the shared PostgreSQL (an external store), kept in memory here. Without `nats-server`
//! on PATH each test says so loudly and skips.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imd::cluster::catchup::{CatchUp, CatchUpSettings, ClusterStore};
use imd::cluster::{Cluster, ClusterSettings, ClusterState, Hooks, Invalidation, Limits, Sequencer};
use imd::domain::{Kind, StoredMessage};
use imd::metrics::Metrics;
use imd::registry::Registry;
use imd::store::StoreResult;
use serde_json::value::RawValue;

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A `nats-server` of this test, on 127.0.0.1; killed and waited for when dropped.
struct Nats {
    child: Option<Child>,
    port: u16,
}

impl Nats {
    /// A server of the test's own, or None (said loudly) where `nats-server` is not installed.
    fn start() -> Option<Nats> {
        if Command::new("nats-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            eprintln!("\n!!! SKIPPED a cluster bus test: `nats-server` is not on PATH (Debian: nats-server) !!!\n");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut nats = Nats { child: None, port };
        nats.spawn();
        Some(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server on `port` and waits until it accepts connections.
    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (on PATH) must be installed for the cluster tests");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {} in {WAIT:?}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (by its PID, through its handle) and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A subject prefix no other run shares.
fn prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("imdtest.p{}x{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos)
}

/// What one node received, for the test to look at.
#[derive(Clone, Default)]
struct Seen {
    batches: Arc<Mutex<Vec<Vec<StoredMessage>>>>,
    invalidations: Arc<Mutex<Vec<Invalidation>>>,
}

impl Seen {
    fn seqs(&self) -> Vec<(String, i64)> {
        let batches = self.batches.lock().unwrap();
        batches.iter().flatten().map(|m| (m.chat_id.to_string(), m.seq)).collect()
    }
}

struct Node {
    cluster: Cluster,
    registry: Arc<Registry>,
    seen: Seen,
}

async fn node(nats: &Nats, prefix: &str, id: &str) -> Node {
    let registry = Arc::new(Registry::new(1 << 16, Arc::new(Metrics::new())));
    let seen = Seen::default();
    let (batches, invalidations) = (seen.batches.clone(), seen.invalidations.clone());
    let hooks = Hooks {
        local: registry.clone(),
        on_batch: Arc::new(move |messages| batches.lock().unwrap().push(messages)),
        on_invalidation: Arc::new(move |what, _| invalidations.lock().unwrap().push(what)),
    };
    let settings = ClusterSettings { nats_url: nats.url(), prefix: prefix.to_string(), node_id: id.to_string() };
    let cluster = Cluster::connect(settings, hooks).await.expect("connect to the test's nats-server");
    Node { cluster, registry, seen }
}

/// Waits until `condition` holds, failing after `limit` with `what`.
async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn message(chat_id: &str, seq: i64) -> StoredMessage {
    StoredMessage {
        id: seq,
        kind: Kind::Group,
        chat_id: Arc::from(chat_id),
        seq,
        from_uid: 1,
        to_uid: None,
        msg_id: Some(format!("m-{chat_id}-{seq}").into_boxed_str()),
        msg_type: "text".into(),
        body: RawValue::from_string(format!("{{\"text\": \"seq {seq}\"}}")).unwrap(),
        ts: imd::now_ms(),
        shop_id: None,
        agent_uid: None,
    }
}

#[tokio::test]
async fn a_batch_published_by_one_node_reaches_the_other_and_not_itself() {
    let Some(nats) = Nats::start() else { return };
    let prefix = prefix();
    let (a, b) = (node(&nats, &prefix, "a").await, node(&nats, &prefix, "b").await);
    assert_eq!((a.cluster.state(), a.cluster.node_id()), (ClusterState::Connected, "a"));
    a.cluster.publish_batch(&[message("g_1", 1), message("g_1", 2)]);
    wait_for("b gets a's batch", WAIT, || b.seen.seqs().len() == 2).await;
    assert_eq!(b.seen.seqs(), [("g_1".to_string(), 1), ("g_1".to_string(), 2)]);
    let got = b.seen.batches.lock().unwrap()[0].clone();
    assert_eq!(got.len(), 2, "one NATS message for the batch");
    assert_eq!(got[1].body.get(), "{\"text\": \"seq 2\"}", "the body as stored");
    assert_eq!(got[1].msg_id.as_deref(), Some("m-g_1-2"));
    // b answers; a gets that, and (published before it) never its own.
    b.cluster.publish_batch(&[message("g_2", 7)]);
    wait_for("a gets b's batch", WAIT, || !a.seen.seqs().is_empty()).await;
    assert_eq!(a.seen.seqs(), [("g_2".to_string(), 7)], "a's own batch came back to it");
    // A third node on another prefix sees nothing of this cluster.
    let other = node(&nats, &self::prefix(), "c").await;
    a.cluster.publish_batch(&[message("g_1", 3)]);
    wait_for("b gets the third", WAIT, || b.seen.seqs().len() == 3).await;
    assert!(other.seen.seqs().is_empty(), "prefixes keep clusters apart");
    assert_eq!(a.cluster.stats().dropped, 0);
    assert!(a.cluster.stats().published >= 2);
}

#[tokio::test]
async fn a_node_that_closes_publishes_what_it_queued_first() {
    let Some(nats) = Nats::start() else { return };
    let prefix = prefix();
    let (a, b) = (node(&nats, &prefix, "a").await, node(&nats, &prefix, "b").await);
    for seq in 1..=1000 {
        a.cluster.publish_batch(&[message("g", seq)]);
    }
    a.cluster.leave(WAIT).await;
    wait_for("all 1000 on b", WAIT, || b.seen.seqs().len() == 1000).await;
    assert_eq!(b.seen.seqs(), expected("g", 1..=1000), "in order, once each");
}

#[tokio::test]
async fn invalidations_reach_the_other_node() {
    let Some(nats) = Nats::start() else { return };
    let prefix = prefix();
    let (a, b) = (node(&nats, &prefix, "a").await, node(&nats, &prefix, "b").await);
    let sent = [
        Invalidation::Room { chat_id: "g_5".into() },
        Invalidation::TokenGeneration { uid: 3, generation: 2, logged_out: false },
        Invalidation::User { uid: 9 },
    ];
    sent.iter().for_each(|what| a.cluster.publish_invalidation(what));
    wait_for("b gets three invalidations", WAIT, || b.seen.invalidations.lock().unwrap().len() == 3).await;
    assert_eq!(*b.seen.invalidations.lock().unwrap(), sent, "in order");
    b.cluster.publish_invalidation(&Invalidation::Shop { shop_id: 4 });
    wait_for("a gets b's", WAIT, || !a.seen.invalidations.lock().unwrap().is_empty()).await;
    assert_eq!(*a.seen.invalidations.lock().unwrap(), [Invalidation::Shop { shop_id: 4 }], "none of its own");
}

#[tokio::test]
async fn presence_spreads_by_deltas_and_heartbeats_and_a_silent_node_expires() {
    let Some(nats) = Nats::start() else { return };
    let prefix = prefix();
    let (a, b) = (node(&nats, &prefix, "a").await, node(&nats, &prefix, "b").await);
    let presence = b.cluster.presence().clone();
    assert!(!presence.is_online(42));
    // A delta: a's user 42 opens a first connection.
    let conn = a.registry.add(42, "phone");
    a.cluster.user_online(42);
    wait_for("42 online on b", WAIT, || presence.is_online(42)).await;
    assert_eq!(presence.online_nodes(), ["b", "a"], "this node first, then the live ones");
    a.registry.remove(&conn);
    a.cluster.user_offline(42);
    wait_for("42 offline on b", WAIT, || !presence.is_online(42)).await;
    // No delta: the heartbeat's whole set brings 43.
    let _conn = a.registry.add(43, "web");
    wait_for("43 online on b by heartbeat", WAIT, || presence.is_online(43)).await;
    // b's own users count through its registry.
    let _local = b.registry.add(44, "web");
    assert!(presence.is_online(44));
    // a stops (its heartbeat with it): 43 drops out on b within 4 s.
    let a_presence = a.cluster.presence().clone();
    wait_for("b on a", WAIT, || a_presence.is_online(44)).await;
    drop(a.cluster);
    let stopped = Instant::now();
    wait_for("43 offline on b once a is silent", Duration::from_secs(4), || !presence.is_online(43)).await;
    assert!(stopped.elapsed() >= Duration::from_secs(1), "expired by silence, not at once: {:?}", stopped.elapsed());
    assert_eq!(presence.online_nodes(), ["b"]);
}

#[tokio::test]
async fn nats_restarted_on_its_port_the_nodes_reconnect_by_themselves() {
    let Some(mut nats) = Nats::start() else { return };
    let prefix = prefix();
    let (a, b) = (node(&nats, &prefix, "a").await, node(&nats, &prefix, "b").await);
    a.cluster.publish_batch(&[message("g", 1)]);
    wait_for("before the outage", WAIT, || b.seen.seqs().len() == 1).await;
    assert_eq!(a.cluster.stats().reconnects, 0, "the first connection is no reconnection");
    nats.stop();
    wait_for("a sees the outage", WAIT, || a.cluster.state() == ClusterState::Reconnecting).await;
    // Publishing while NATS is away never makes the caller wait.
    let started = Instant::now();
    for seq in 2..=2000 {
        a.cluster.publish_batch(&[message("outage", seq)]);
    }
    assert!(started.elapsed() < Duration::from_secs(1), "publishing waited: {:?}", started.elapsed());
    nats.spawn();
    wait_for("both back", WAIT, || {
        a.cluster.state() == ClusterState::Connected && b.cluster.state() == ClusterState::Connected
    })
    .await;
    // b's subscription is renewed on its reconnect, perhaps after a's first publishes: a
    // publishes until one arrives.
    let deadline = Instant::now() + WAIT;
    let mut seq = 100;
    while !b.seen.seqs().iter().any(|(chat, _)| chat == "after") {
        assert!(Instant::now() < deadline, "nothing published after the restart reached b");
        seq += 1;
        a.cluster.publish_batch(&[message("after", seq)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.cluster.stats().reconnects >= 1, "{:?}", a.cluster.stats());
}

/// The shared store as the catch-up sees it (a test double of PostgreSQL).
#[derive(Default)]
struct FakeStore {
    messages: Mutex<BTreeMap<(String, i64), StoredMessage>>,
    /// While set, every read fails as an unreachable database would.
    down: std::sync::atomic::AtomicBool,
    /// Reads refused while down.
    refused: AtomicU64,
}

impl FakeStore {
    fn commit(&self, message: StoredMessage) -> StoredMessage {
        self.messages.lock().unwrap().insert((message.chat_id.to_string(), message.seq), message.clone());
        message
    }

    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(imd::store::StoreError::Unavailable("connection refused".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ClusterStore for FakeStore {
    async fn messages_between(&self, chat_id: &str, after_seq: i64, up_to_seq: i64) -> StoreResult<Vec<StoredMessage>> {
        self.check()?;
        let messages = self.messages.lock().unwrap();
        Ok(messages
            .range((chat_id.to_string(), after_seq + 1)..=(chat_id.to_string(), up_to_seq))
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn conversations_changed_since(&self, ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.check()?;
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for ((chat, seq), m) in self.messages.lock().unwrap().iter() {
            if m.ts >= ms {
                last.insert(chat.clone(), *seq);
            }
        }
        Ok(last.into_iter().collect())
    }
}

/// What a node delivered, in order: (conversation, seq).
type Delivered = Arc<Mutex<Vec<(String, i64)>>>;

/// Node b's delivery: the sequencer fed by the bus, with the catch-up on the store.
fn delivery(store: &Arc<FakeStore>) -> (Arc<Sequencer>, Delivered, CatchUp) {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sink = delivered.clone();
    let sequencer = Sequencer::new(
        Limits::default(),
        Arc::new(move |messages: Vec<StoredMessage>| {
            sink.lock().unwrap().extend(messages.iter().map(|m| (m.chat_id.to_string(), m.seq)))
        }),
    );
    let catchup = CatchUp::spawn(store.clone(), sequencer.clone(), CatchUpSettings::default());
    (sequencer, delivered, catchup)
}

fn expected(chat: &str, seqs: std::ops::RangeInclusive<i64>) -> Vec<(String, i64)> {
    seqs.map(|s| (chat.to_string(), s)).collect()
}

/// Across the bus: a commits 1..=3 of a conversation but only 1 and 3 go out over NATS (a
/// crash between commit and publish); then 4..=5 are committed with no publish at all. b
/// delivers 1..=5 in order, once each: the gap from the store after the hold, the tail by the
/// periodic catch-up.
#[tokio::test]
async fn what_nats_lost_is_fetched_from_the_store_in_order() {
    let Some(nats) = Nats::start() else { return };
    let prefix = prefix();
    let store = Arc::new(FakeStore::default());
    let (sequencer, delivered, _catchup) = delivery(&store);
    let a = node(&nats, &prefix, "a").await;
    let b = {
        let registry = Arc::new(Registry::new(1 << 16, Arc::new(Metrics::new())));
        let feed = sequencer.clone();
        let hooks = Hooks {
            local: registry.clone(),
            on_batch: Arc::new(move |messages| feed.offer(messages)),
            on_invalidation: Arc::new(|_, _| {}),
        };
        let settings = ClusterSettings { nats_url: nats.url(), prefix: prefix.clone(), node_id: "b".into() };
        Cluster::connect(settings, hooks).await.expect("connect b")
    };
    let m1 = store.commit(message("g", 1));
    a.cluster.publish_batch(&[m1]);
    wait_for("1 delivered on b", WAIT, || delivered.lock().unwrap().len() == 1).await;
    store.commit(message("g", 2));
    let m3 = store.commit(message("g", 3));
    a.cluster.publish_batch(&[m3]);
    wait_for("2 fetched, then 3", WAIT, || delivered.lock().unwrap().len() == 3).await;
    assert_eq!(*delivered.lock().unwrap(), expected("g", 1..=3));
    let quiet = Instant::now();
    store.commit(message("g", 4));
    store.commit(message("g", 5));
    // A conversation b never saw, committed with no publish either.
    store.commit(message("h", 1));
    wait_for("the catch-up brings 4, 5 and h", Duration::from_secs(3), || delivered.lock().unwrap().len() == 6).await;
    assert!(quiet.elapsed() < Duration::from_millis(2500), "poll + hold bound: {:?}", quiet.elapsed());
    let got = delivered.lock().unwrap().clone();
    let of = |chat: &str| got.iter().filter(|(c, _)| c == chat).cloned().collect::<Vec<_>>();
    assert_eq!(of("g"), expected("g", 1..=5));
    assert_eq!(of("h"), expected("h", 1..=1));
    // Late copies over NATS change nothing.
    let m6 = store.commit(message("g", 6));
    a.cluster.publish_batch(&[message("g", 4), message("g", 5)]);
    a.cluster.publish_batch(&[m6]);
    wait_for("6 delivered", WAIT, || delivered.lock().unwrap().len() == 7).await;
    assert!(sequencer.stats().repeats >= 2, "{:?}", sequencer.stats());
    let got = delivered.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|(c, _)| c == "g").cloned().collect::<Vec<_>>(), expected("g", 1..=6));
    assert_eq!(sequencer.held(), 0);
    assert_eq!(sequencer.lag(), Duration::ZERO, "caught up");
    drop(b);
}

/// The store away for a while: the catch-up keeps trying, and once the store is back it
/// delivers what was committed meanwhile, also in a conversation this node never saw (its
/// window was kept although several polls failed).
#[tokio::test]
async fn the_catch_up_outlasts_a_store_outage() {
    let store = Arc::new(FakeStore::default());
    let delivered: Delivered = Arc::default();
    let sink = delivered.clone();
    let sequencer = Sequencer::new(
        Limits::default(),
        Arc::new(move |messages: Vec<StoredMessage>| {
            sink.lock().unwrap().extend(messages.iter().map(|m| (m.chat_id.to_string(), m.seq)))
        }),
    );
    let settings = CatchUpSettings {
        poll: Duration::from_millis(100),
        margin: Duration::from_millis(50),
        ..CatchUpSettings::default()
    };
    let _catchup = CatchUp::spawn(store.clone(), sequencer.clone(), settings);
    sequencer.offer([store.commit(message("g", 1))]);
    store.down.store(true, Ordering::SeqCst);
    store.commit(message("g", 2));
    store.commit(message("h", 1));
    // Ten failed polls: a second, far past poll + margin, so a poll that moved its window on
    // failure would no longer look at h.
    wait_for("ten refused reads", WAIT, || store.refused.load(Ordering::SeqCst) >= 10).await;
    assert_eq!(*delivered.lock().unwrap(), expected("g", 1..=1), "nothing while the store is away");
    store.down.store(false, Ordering::SeqCst);
    wait_for("g 2 and h 1 once it is back", WAIT, || delivered.lock().unwrap().len() == 3).await;
    // One order per conversation; none between them.
    let got = delivered.lock().unwrap().clone();
    let of = |chat: &str| got.iter().filter(|(c, _)| c == chat).cloned().collect::<Vec<_>>();
    assert_eq!(of("g"), expected("g", 1..=2));
    assert_eq!(of("h"), expected("h", 1..=1));
}
