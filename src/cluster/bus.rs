//! The connection to NATS: subjects, bounded publishing that never makes the caller wait,
//! and the tasks that hand what other nodes publish to the hooks. async-nats reconnects by
//! itself and subscribes again; what is lost meanwhile the catch-up repairs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cluster::ClusterSettings;
use crate::cluster::invalidation::{self, Invalidation};
use crate::cluster::presence::{self, LocalPresence, Presence, PresenceNotice};
use crate::cluster::wire;
use crate::domain::StoredMessage;

/// Payloads that may wait to be handed to the NATS client; past that they are dropped (and
/// counted): a publish must never hold up a commit's delivery.
pub const OUTBOUND_DEPTH: usize = 4096;
/// How long the publishing task waits for the client to take one payload (it waits while
/// reconnecting, once the client's own buffer is full) before dropping it.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);
/// Messages a subscription buffers for its receiving task; past that the client drops them.
const SUBSCRIPTION_DEPTH: usize = 8192;
/// Commands the client buffers, notably while it reconnects.
const CLIENT_DEPTH: usize = 2048;
/// How long a round trip through the server may take (`connect`, `leave`).
const CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// Longest a change's reply waits for the other nodes to apply its invalidation.
const CONFIRM_LIMIT: Duration = Duration::from_secs(1);

/// What the node does with what other nodes publish. Each is called on a receiving task and
/// must only queue or update memory, never wait.
#[derive(Clone)]
pub struct Hooks {
    /// This node's online users (the registry), for its heartbeat and `Presence`.
    pub local: Arc<dyn LocalPresence>,
    /// Committed messages of another node (one batch, in its commit order): for the sequencer.
    pub on_batch: Arc<dyn Fn(Vec<StoredMessage>) + Send + Sync>,
    /// Shared state another node changed: for the directory.
    /// With where to confirm it once applied, when the publisher waits for that.
    pub on_invalidation: Arc<dyn Fn(Invalidation, Option<Subject>) + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
}

/// The connection's state, for /health and /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    Connected,
    /// Lost (or not yet made): the client is trying again by itself.
    Reconnecting,
}

impl ClusterState {
    pub fn name(self) -> &'static str {
        match self {
            ClusterState::Connected => "connected",
            ClusterState::Reconnecting => "reconnecting",
        }
    }
}

/// Counters of the bus (for /metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStats {
    /// Payloads handed to NATS.
    pub published: u64,
    /// Payloads dropped: the queue was full, NATS did not take them in time, or they could
    /// not be encoded.
    pub dropped: u64,
    /// Batches of other nodes received.
    pub batches_received: u64,
    /// Payloads received that this node published itself (skipped).
    pub own_skipped: u64,
    /// Payloads received that could not be read (skipped).
    pub undecodable: u64,
    /// Times the connection came back after it was lost.
    pub reconnects: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    batches_received: AtomicU64,
    own_skipped: AtomicU64,
    undecodable: AtomicU64,
    reconnects: AtomicU64,
}

struct Subjects {
    msg: Subject,
    inval: Subject,
    presence: Subject,
    /// Nobody subscribes to it: requests to it make round trips through the server.
    confirm: Subject,
}

/// What the publishing task is handed, in order.
enum Outgoing {
    Publish(Subject, Bytes),
    /// Answered once every payload queued before it is handed to the client.
    Mark(oneshot::Sender<()>),
}

/// This node on the bus; its tasks stop when it is dropped (and so does its heartbeat, so
/// that the other nodes soon count its users offline).
pub struct Cluster {
    client: Client,
    node_id: Arc<str>,
    subjects: Arc<Subjects>,
    outbound: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
    presence: Arc<Presence>,
    /// Hands the queued payloads to the client.
    publisher: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
    receivers: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.publisher.iter().chain(&self.heartbeat).chain(&self.receivers).for_each(JoinHandle::abort);
    }
}

impl Cluster {
    /// Connects, subscribes to the three subjects and starts publishing and receiving. When
    /// NATS cannot be reached now (refused, timed out, DNS), the node starts anyway and the
    /// client keeps connecting in the background: the store is the truth and the catch-up
    /// brings other nodes' messages meanwhile. A bad URL or credentials fail at once. Once
    /// connected, losing NATS only makes the client reconnect.
    pub async fn connect(settings: ClusterSettings, hooks: Hooks) -> Result<Cluster, ClusterError> {
        let ClusterSettings { nats_url, prefix, node_id } = settings;
        let counters = Arc::new(Counters::default());
        // Set when the connection is lost: the next `Connected` is a reconnection (the first
        // one, at start, is not).
        let lost = Arc::new(AtomicBool::new(false));
        let options = || connect_options(&node_id, &counters, &lost);
        let connect_error =
            |e: async_nats::ConnectError| ClusterError::Connect { url: nats_url.clone(), reason: e.to_string() };
        let (client, connected) = match options().connect(nats_url.as_str()).await {
            Ok(client) => (client, true),
            Err(e) if is_unreachable(e.kind()) => {
                tracing::warn!(
                    node = %node_id,
                    nats = %nats_url,
                    "NATS cannot be reached ({e}): starting without it and connecting in the background; \
                     other nodes' messages come through the store's catch-up until then"
                );
                (options().retry_on_initial_connect().connect(nats_url.as_str()).await.map_err(connect_error)?, false)
            }
            Err(e) => return Err(connect_error(e)),
        };
        let node_id: Arc<str> = Arc::from(node_id);
        let presence = Arc::new(Presence::new(&node_id, hooks.local.clone()));
        let subjects = Arc::new(Subjects {
            msg: Subject::from(format!("{prefix}.msg")),
            inval: Subject::from(format!("{prefix}.inval")),
            presence: Subject::from(format!("{prefix}.presence")),
            confirm: Subject::from(format!("{prefix}.confirm")),
        });
        let batches = subscribe(&client, &subjects.msg).await?;
        let invalidations = subscribe(&client, &subjects.inval).await?;
        let notices = subscribe(&client, &subjects.presence).await?;
        // Flushing only writes the subscriptions out, and the server reads each connection
        // apart: another node's publish could still overtake them. Once the server answered a
        // round trip sent after them, they are in place and nothing published is missed.
        // (Not connected yet: nothing can be missed before the subscriptions are sent.)
        if connected {
            round_trip(&client, &subjects.confirm)
                .await
                .map_err(|reason| ClusterError::Subscribe { subject: format!("{prefix}.*"), reason })?;
        }
        let (outbound, queue) = mpsc::channel(OUTBOUND_DEPTH);
        let mut cluster = Cluster {
            client,
            node_id,
            subjects,
            outbound,
            counters,
            presence,
            publisher: None,
            heartbeat: None,
            receivers: Vec::new(),
        };
        cluster.publisher = Some(tokio::spawn(publish_loop(cluster.client.clone(), queue, cluster.counters.clone())));
        cluster.heartbeat = Some(tokio::spawn(heartbeat_loop(cluster.heartbeat_handle())));
        cluster.receivers = vec![
            tokio::spawn(receive_batches(batches, cluster.node_id.clone(), cluster.counters.clone(), hooks.on_batch)),
            tokio::spawn(receive_invalidations(
                invalidations,
                cluster.node_id.clone(),
                cluster.counters.clone(),
                hooks.on_invalidation,
            )),
            tokio::spawn(receive_presence(
                notices,
                cluster.node_id.clone(),
                cluster.counters.clone(),
                cluster.presence.clone(),
            )),
        ];
        tracing::info!(node = %cluster.node_id, nats = %nats_url, %prefix, "joined the cluster bus");
        Ok(cluster)
    }

    /// Leaves the bus for a graceful stop: the heartbeat stops, and what is queued is
    /// published and handled by the server, waiting at most `limit` (what is left then is
    /// dropped; the other nodes' catch-up finds it in the store). Publishes queued after this
    /// began may be lost. Dropping a `Cluster` leaves at once instead.
    pub async fn leave(&self, limit: Duration) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
        let drained = async {
            // A mark behind the queued payloads: once answered, the client holds them all.
            let (handed, answered) = oneshot::channel();
            if self.outbound.send(Outgoing::Mark(handed)).await.is_err() || answered.await.is_err() {
                return false;
            }
            // A flush is not enough: closing the socket with unread input resets it, and the
            // server may lose what it had not read yet. Once it answered a round trip sent
            // after the publishes, it has handled them.
            if let Err(e) = round_trip(&self.client, &self.subjects.confirm).await {
                tracing::warn!(node = %self.node_id, "leaving the cluster bus: {e}");
                return false;
            }
            true
        };
        match tokio::time::timeout(limit, drained).await {
            Ok(true) => tracing::info!(node = %self.node_id, "left the cluster bus, every publish handed over"),
            _ => tracing::warn!(node = %self.node_id, "left the cluster bus with publishes still queued"),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the connection is up now (the client reconnects by itself when it is not).
    pub fn state(&self) -> ClusterState {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => ClusterState::Connected,
            _ => ClusterState::Reconnecting,
        }
    }

    /// Who is online on this node or any live one.
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    pub fn stats(&self) -> ClusterStats {
        let c = &self.counters;
        ClusterStats {
            published: c.published.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            batches_received: c.batches_received.load(Ordering::Relaxed),
            own_skipped: c.own_skipped.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Publishes a committed batch (one NATS message, more only past `wire::MAX_PAYLOAD`).
    /// Never waits: when the queue is full it is dropped and counted.
    pub fn publish_batch(&self, messages: &[StoredMessage]) {
        match wire::encode_batch(&self.node_id, messages) {
            Ok(parts) => parts.into_iter().for_each(|part| self.enqueue(&self.subjects.msg, part)),
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot encode a committed batch for the cluster: {e}");
            }
        }
    }

    /// Tells the other nodes that `what` changed. Never waits (see `publish_batch`).
    pub fn publish_invalidation(&self, what: &Invalidation) {
        match invalidation::encode(&self.node_id, what) {
            Ok(payload) => self.enqueue(&self.subjects.inval, payload),
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot encode an invalidation: {e}");
            }
        }
    }

    /// Publishes `what` and waits, at most `CONFIRM_LIMIT`, until every other live node has applied
    /// it: a reply sent after this finds the change on any node (a logout's old token is
    /// refused there, a member who left is gone from the list). A node that does not answer
    /// in time (dying, NATS away) is not waited for longer; the notice or, for messages, its
    /// catch-up reaches it later.
    pub async fn publish_invalidation_confirmed(&self, what: &Invalidation) {
        let others = self.presence.online_nodes().len().saturating_sub(1);
        if others == 0 || self.state() != ClusterState::Connected {
            return self.publish_invalidation(what);
        }
        let payload = match invalidation::encode(&self.node_id, what) {
            Ok(payload) => Bytes::from(payload),
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return tracing::error!("cannot encode an invalidation: {e}");
            }
        };
        let inbox = Subject::from(self.client.new_inbox());
        let confirmed = async {
            let mut answers = self.client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
            self.client
                .publish_with_reply(self.subjects.inval.clone(), inbox, payload)
                .await
                .map_err(|e| e.to_string())?;
            self.counters.published.fetch_add(1, Ordering::Relaxed);
            let mut answered = 0;
            while answered < others && answers.next().await.is_some() {
                answered += 1;
            }
            Ok::<_, String>(answered)
        };
        match tokio::time::timeout(CONFIRM_LIMIT, confirmed).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?what, "cannot publish an invalidation: {e}");
            }
            Err(_) => tracing::warn!(?what, "not every node confirmed an invalidation within {CONFIRM_LIMIT:?}"),
        }
    }

    /// Tells the node that published an invalidation (and waits) that this one applied it.
    pub fn confirm(&self, to: Subject) {
        self.enqueue(&to, Vec::new());
    }

    /// `uid`'s first connection on this node opened.
    pub fn user_online(&self, uid: u64) {
        self.user_sessions(uid, 1);
    }

    /// `uid`'s last connection on this node closed.
    pub fn user_offline(&self, uid: u64) {
        self.user_sessions(uid, 0);
    }

    /// `uid` now has `sessions` connections open on this node (0: offline here). Never waits
    /// (see `publish_batch`); a count lost on the way is repaired by the next heartbeat.
    pub fn user_sessions(&self, uid: u64, sessions: usize) {
        let sessions = u32::try_from(sessions).unwrap_or(u32::MAX);
        let node = self.node_id.to_string();
        self.publish_presence(&PresenceNotice::Delta { node, uid, online: sessions > 0, sessions: Some(sessions) });
    }

    fn publish_presence(&self, notice: &PresenceNotice) {
        publish_notice(&self.outbound, &self.subjects.presence, &self.counters, notice);
    }

    fn enqueue(&self, subject: &Subject, payload: Vec<u8>) {
        enqueue(&self.outbound, subject, &self.counters, payload);
    }

    fn heartbeat_handle(&self) -> Heartbeat {
        Heartbeat {
            node_id: self.node_id.clone(),
            outbound: self.outbound.clone(),
            subject: self.subjects.presence.clone(),
            counters: self.counters.clone(),
            presence: self.presence.clone(),
        }
    }
}

/// The client's options: capacities, reconnection without end, and events logged and counted.
fn connect_options(node_id: &str, counters: &Arc<Counters>, lost: &Arc<AtomicBool>) -> async_nats::ConnectOptions {
    let (events, events_node, lost) = (counters.clone(), node_id.to_string(), lost.clone());
    async_nats::ConnectOptions::new()
        .name(format!("imd {node_id}"))
        // Our own publishes are of no use to us; the node id check stays as the rule.
        .no_echo()
        .client_capacity(CLIENT_DEPTH)
        .subscription_capacity(SUBSCRIPTION_DEPTH)
        .ping_interval(Duration::from_secs(10))
        .max_reconnects(None)
        // Back soon after NATS returns: at most a second between attempts.
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1000)))
        .event_callback(move |event| {
            let (counters, node, lost) = (events.clone(), events_node.clone(), lost.clone());
            async move {
                match event {
                    async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%node, "NATS connection back");
                    }
                    async_nats::Event::Connected => tracing::info!(%node, "NATS connected"),
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Relaxed);
                        tracing::warn!(%node, "NATS connection lost; reconnecting");
                    }
                    other => tracing::info!(%node, "NATS: {other}"),
                }
            }
        })
}

/// A connect error that may pass (NATS down or not up yet), as against a wrong URL or
/// credentials, which stay wrong.
fn is_unreachable(kind: async_nats::ConnectErrorKind) -> bool {
    use async_nats::ConnectErrorKind::{Dns, Io, TimedOut};
    matches!(kind, Io | TimedOut | Dns)
}

async fn subscribe(client: &Client, subject: &Subject) -> Result<Subscriber, ClusterError> {
    client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Subscribe { subject: subject.to_string(), reason: e.to_string() })
}

/// Waits until the server has handled everything this connection sent before: the server
/// handles one connection's operations in order, so its answer to a request sent after them
/// ("no responders": nobody listens on `subject`) comes after them.
async fn round_trip(client: &Client, subject: &Subject) -> Result<(), String> {
    match tokio::time::timeout(CONFIRM_WAIT, client.request(subject.clone(), Bytes::new())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) => Err(format!("no round trip through the server: {e}")),
        Err(_) => Err(format!("no round trip through the server within {CONFIRM_WAIT:?}")),
    }
}

fn enqueue(outbound: &mpsc::Sender<Outgoing>, subject: &Subject, counters: &Counters, payload: Vec<u8>) {
    if outbound.try_send(Outgoing::Publish(subject.clone(), Bytes::from(payload))).is_err() {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn publish_notice(outbound: &mpsc::Sender<Outgoing>, subject: &Subject, counters: &Counters, notice: &PresenceNotice) {
    match serde_json::to_vec(notice) {
        Ok(payload) => enqueue(outbound, subject, counters, payload),
        Err(e) => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("cannot encode a presence notice: {e}");
        }
    }
}

/// Hands the queued payloads to the client, in order.
async fn publish_loop(client: Client, mut queue: mpsc::Receiver<Outgoing>, counters: Arc<Counters>) {
    while let Some(outgoing) = queue.recv().await {
        let (subject, payload) = match outgoing {
            Outgoing::Publish(subject, payload) => (subject, payload),
            Outgoing::Mark(handed) => {
                let _ = handed.send(());
                continue;
            }
        };
        match tokio::time::timeout(PUBLISH_WAIT, client.publish(subject, payload)).await {
            Ok(Ok(())) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cannot publish to NATS: {e}");
            }
            Err(_) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a payload came from this node (skipped, and counted).
fn own(node: &str, this: &str, counters: &Counters) -> bool {
    let own = node == this;
    if own {
        counters.own_skipped.fetch_add(1, Ordering::Relaxed);
    }
    own
}

fn undecodable(counters: &Counters, what: &str, error: &dyn std::fmt::Display) {
    counters.undecodable.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("unreadable {what} from the cluster: {error}");
}

async fn receive_batches(
    mut subscriber: Subscriber,
    this: Arc<str>,
    counters: Arc<Counters>,
    on_batch: Arc<dyn Fn(Vec<StoredMessage>) + Send + Sync>,
) {
    while let Some(message) = subscriber.next().await {
        match wire::decode_batch(&message.payload) {
            Ok(batch) if own(&batch.node, &this, &counters) => {}
            Ok(batch) => {
                counters.batches_received.fetch_add(1, Ordering::Relaxed);
                on_batch(batch.messages);
            }
            Err(e) => undecodable(&counters, "batch", &e),
        }
    }
}

async fn receive_invalidations(
    mut subscriber: Subscriber,
    this: Arc<str>,
    counters: Arc<Counters>,
    on_invalidation: Arc<dyn Fn(Invalidation, Option<Subject>) + Send + Sync>,
) {
    while let Some(message) = subscriber.next().await {
        match invalidation::decode(&message.payload) {
            Ok((node, _)) if own(&node, &this, &counters) => {}
            Ok((_, what)) => on_invalidation(what, message.reply),
            Err(e) => undecodable(&counters, "invalidation", &e),
        }
    }
}

async fn receive_presence(
    mut subscriber: Subscriber,
    this: Arc<str>,
    counters: Arc<Counters>,
    presence: Arc<Presence>,
) {
    while let Some(message) = subscriber.next().await {
        match serde_json::from_slice::<PresenceNotice>(&message.payload) {
            Ok(notice) if own(notice.node(), &this, &counters) => {}
            Ok(notice) => presence.apply(notice),
            Err(e) => undecodable(&counters, "presence notice", &e),
        }
    }
}

/// What the heartbeat task needs of the `Cluster` (which it must not keep alive).
struct Heartbeat {
    node_id: Arc<str>,
    outbound: mpsc::Sender<Outgoing>,
    subject: Subject,
    counters: Arc<Counters>,
    presence: Arc<Presence>,
}

/// Every `HEARTBEAT`: this node's whole online set with its session counts, and the dead
/// nodes forgotten.
async fn heartbeat_loop(beat: Heartbeat) {
    let mut ticks = tokio::time::interval(presence::HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 1u64.. {
        ticks.tick().await;
        let users = beat.presence.local_sessions();
        for notice in PresenceNotice::heartbeat(&beat.node_id, round, &users) {
            publish_notice(&beat.outbound, &beat.subject, &beat.counters, &notice);
        }
        beat.presence.expire();
    }
}
