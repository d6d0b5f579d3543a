//! Cluster mode's wiring (issue 13): joins the bus, feeds the sequencer, the catch-up and the
//! presence (with each user's session count, for the per-user cap), counts other nodes'
//! login failures in this node's throttle, and keeps the directory in step with what other
//! nodes change.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use crate::app::App;
use crate::cluster::{
    CatchUp, CatchUpSettings, Cluster, ClusterSettings, ClusterStore, ConfirmTo, Hooks, Invalidation, Limits, Sequencer,
};
use crate::directory::Directory;
use crate::fanout::{ClusterDelivery, LocalOrigins, sequenced_delivery};
use crate::metrics::Metrics;
use crate::registry::{LOGGED_OUT, Registry, TOKEN_CLOSE, TOKEN_REVOKED};
use crate::store::{Store, StoreError, StoreResult, StoredMessage};
use crate::throttle::Throttle;

/// Invalidations from other nodes waiting to be applied; past that they are dropped (logged).
const INVALIDATION_DEPTH: usize = 4096;

/// A node joined to the bus, before the store starts.
pub struct Joined {
    pub bus: Arc<Cluster>,
    pub sequencer: Arc<Sequencer>,
    /// For the fan-out task.
    pub delivery: ClusterDelivery,
    /// What other nodes changed; `spawn` applies it.
    pub invalidations: mpsc::Receiver<(Invalidation, Option<ConfirmTo>)>,
}

/// Connects to NATS and builds this node's sequencer: committed messages of every node
/// reach the local connections through it.
pub async fn join(
    settings: ClusterSettings,
    registry: &Arc<Registry>,
    directory: &Arc<Directory>,
    metrics: &Arc<Metrics>,
    throttle: &Arc<Throttle>,
) -> Result<Joined, crate::cluster::ClusterError> {
    let origins = Arc::new(LocalOrigins::default());
    let deliver = sequenced_delivery(registry.clone(), directory.clone(), metrics.clone(), origins.clone());
    let sequencer = Sequencer::new(Limits::default(), deliver);
    let (inval_tx, invalidations) = mpsc::channel(INVALIDATION_DEPTH);
    let to_sequencer = sequencer.clone();
    let throttle = throttle.clone();
    let hooks = Hooks {
        local: registry.clone(),
        on_batch: Arc::new(move |batch: Vec<StoredMessage>| to_sequencer.offer(batch)),
        // Login notices are counted here at once (memory only): queued with the reloads, a
        // spray of failed logins could crowd out the invalidations of real changes.
        on_invalidation: Arc::new(move |what: Invalidation, confirm_to: Option<ConfirmTo>| match what {
            Invalidation::LoginFailed { username } => throttle.failed_elsewhere(&username),
            Invalidation::LoginSucceeded { username } => throttle.succeeded_elsewhere(&username),
            what => {
                if inval_tx.try_send((what, confirm_to)).is_err() {
                    tracing::warn!("too many invalidations waiting: one dropped");
                }
            }
        }),
    };
    let bus = Arc::new(Cluster::connect(settings, hooks).await?);
    // Weak: the bus holds the registry (its presence), the registry must not keep it alive.
    let weak: Weak<Cluster> = Arc::downgrade(&bus);
    registry.set_presence_listener(Arc::new(move |uid, sessions| {
        if let Some(bus) = weak.upgrade() {
            bus.user_sessions(uid, sessions);
        }
    }));
    let delivery = ClusterDelivery { cluster: bus.clone(), sequencer: sequencer.clone(), origins };
    Ok(Joined { bus, sequencer, delivery, invalidations })
}

/// Starts the catch-up and the task that applies other nodes' invalidations; both stop when
/// the returned guard is dropped.
pub fn spawn(app: Arc<App>, mut invalidations: mpsc::Receiver<(Invalidation, Option<ConfirmTo>)>) -> Option<Running> {
    let node = app.cluster.as_ref()?;
    let catch_up = CatchUp::spawn(Arc::new(app.store.clone()), node.sequencer.clone(), CatchUpSettings::default());
    let applier = tokio::spawn(async move {
        while let Some((what, confirm_to)) = invalidations.recv().await {
            if let Err(e) = apply(&app, &what).await {
                tracing::warn!(?what, "cannot reload what another node changed: {e}");
            }
            // Applied (or failed: the publisher is not kept waiting for a reload that cannot be).
            if let (Some(to), Some(node)) = (confirm_to, &app.cluster) {
                node.bus.confirm(to);
            }
        }
    });
    Some(Running { _catch_up: catch_up, applier })
}

/// The node's background tasks; stopped when dropped.
pub struct Running {
    _catch_up: CatchUp,
    applier: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.applier.abort();
    }
}

/// Reloads what `what` names from the store into the directory.
async fn apply(app: &App, what: &Invalidation) -> StoreResult<()> {
    let Some(pg) = app.store.postgres() else { return Ok(()) };
    let directory = &app.directory;
    match what {
        Invalidation::User { uid } => {
            if let Some(user) = pg.user(*uid).await? {
                directory.unread.registered(user.uid, 0);
                directory.add_user(user.uid, &user.username, user.token_gen);
            }
        }
        Invalidation::TokenGeneration { uid, generation, logged_out } => {
            directory.set_token_gen(*uid, *generation);
            // As a local logout or revocation does.
            let reason = if *logged_out { LOGGED_OUT } else { TOKEN_REVOKED };
            app.registry.close_user(*uid, TOKEN_CLOSE, reason);
        }
        Invalidation::ReadPosition { uid, chat_id, seq } => {
            let frame =
                crate::frames::json(serde_json::json!({"action": "read", "code": 200, "chat_id": chat_id, "seq": seq}));
            app.registry.for_each_of(*uid, |conn| {
                conn.send(&frame);
            });
        }
        Invalidation::Room { chat_id } => {
            if let Some(room) = pg.room(chat_id.clone()).await? {
                directory.replace_room(&room);
                // A message delivered before the reload missed new members: their next connect
                // asks the store.
                directory.unread.note(room.members.iter().copied());
            }
        }
        Invalidation::Shop { shop_id } => {
            if let Some(shop) = pg.shop(*shop_id).await? {
                directory.replace_shop(&shop);
            }
        }
        // Counted by the hook as they arrive (see `join`); none is queued to here.
        Invalidation::LoginFailed { .. } | Invalidation::LoginSucceeded { .. } => {}
    }
    Ok(())
}

#[async_trait::async_trait]
impl ClusterStore for Store {
    async fn messages_between(&self, chat_id: &str, after_seq: i64, up_to_seq: i64) -> StoreResult<Vec<StoredMessage>> {
        let pg = self.postgres().ok_or_else(not_shared)?;
        pg.messages_between(chat_id.to_string(), after_seq, up_to_seq).await
    }

    async fn conversations_changed_since(&self, ms: i64) -> StoreResult<Vec<(String, i64)>> {
        let pg = self.postgres().ok_or_else(not_shared)?;
        let changed = pg.conversations_changed_since(ms).await?;
        Ok(changed.into_iter().map(|(chat_id, seq)| (chat_id.to_string(), seq)).collect())
    }
}

fn not_shared() -> StoreError {
    StoreError::Refused("cluster mode needs the PostgreSQL backend".into())
}

/// The cluster's part of /health (None on a single node).
pub fn health(app: &App) -> Option<serde_json::Value> {
    let node = app.cluster.as_ref()?;
    Some(serde_json::json!({
        "node_id": node.bus.node_id(),
        "nats": node.bus.state().name(),
        "postgres": if app.store.degraded().is_some() { "degraded" } else { "ok" },
        "lag_seconds": node.sequencer.lag().as_secs_f64(),
        "held": node.sequencer.held(),
        "nodes": node.bus.presence().online_nodes(),
    }))
}

/// The `imd_cluster_*` series, in Prometheus text (empty on a single node).
pub fn metrics(app: &App) -> String {
    let Some(node) = app.cluster.as_ref() else { return String::new() };
    let stats = node.bus.stats();
    let connected = u8::from(node.bus.state() == crate::cluster::ClusterState::Connected);
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    series("imd_cluster_nats_connected", "gauge", "1 while the node is connected to NATS.", connected.to_string());
    series(
        "imd_cluster_nodes",
        "gauge",
        "Live nodes seen, this one included.",
        node.bus.presence().online_nodes().len().to_string(),
    );
    series(
        "imd_cluster_lag_seconds",
        "gauge",
        "How long the conversation furthest behind has waited for a missing message.",
        node.sequencer.lag().as_secs_f64().to_string(),
    );
    series("imd_cluster_held", "gauge", "Messages held behind a gap.", node.sequencer.held().to_string());
    series("imd_cluster_published_total", "counter", "Payloads handed to NATS.", stats.published.to_string());
    series("imd_cluster_dropped_total", "counter", "Payloads not published.", stats.dropped.to_string());
    series(
        "imd_cluster_batches_received_total",
        "counter",
        "Committed batches received from other nodes.",
        stats.batches_received.to_string(),
    );
    series("imd_cluster_reconnects_total", "counter", "Reconnections to NATS.", stats.reconnects.to_string());
    out
}
