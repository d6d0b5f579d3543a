//! The state every part of a running daemon shares.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Claims};
use crate::cluster::{Cluster, Invalidation, Sequencer};
use crate::config::Config;
use crate::conn_limits::ConnLimits;
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::read_through::{Fact, ReadThrough};
use crate::registry::Registry;
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::throttle::Throttle;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub directory: Arc<Directory>,
    /// Cluster mode: what the directory lacks is asked of the shared store before a refusal.
    pub read_through: Arc<ReadThrough>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub started: Instant,
    /// Cancelled on SIGTERM: stop accepting, close sessions with 1001.
    pub shutdown: CancellationToken,
    /// WebSocket sessions, waited for on shutdown.
    pub sessions: TaskTracker,
    /// Watches the store writer, the checkpoint thread and the fan-out task.
    pub supervisor: Supervisor,
    /// Open TCP connections, capped in total and per client IP.
    pub conns: Arc<ConnLimits>,
    /// Failed logins and registrations, per username and per client IP.
    pub throttle: Throttle,
    /// Cluster mode (`--nats`): the bus and this node's sequencer; None on a single node.
    pub cluster: Option<ClusterNode>,
}

/// A node's part of the cluster.
pub struct ClusterNode {
    pub bus: Arc<Cluster>,
    pub sequencer: Arc<Sequencer>,
}

impl App {
    /// The claims of a token that is well signed, unexpired and not revoked.
    pub fn authenticate(&self, token: &str) -> Option<Claims> {
        let claims = self.auth.decode(token)?;
        self.token_still_valid(&claims).then_some(claims)
    }

    /// As `authenticate`, but a user or token generation the directory does not know yet
    /// (cluster mode: made on another node a moment ago) is first read from the store.
    pub async fn authenticate_fresh(&self, token: &str) -> Option<Claims> {
        let claims = self.auth.decode(token)?;
        if !self.token_still_valid(&claims) {
            // Only a well-signed, unexpired token gets here: no store read for garbage.
            if claims.exp <= crate::auth::now_secs() {
                return None;
            }
            self.read_through.confirm(&Fact::User { uid: claims.uid, generation: claims.tgen }).await;
        }
        self.token_still_valid(&claims).then_some(claims)
    }

    /// Whether `uid` has a connection open: on any node in cluster mode, on this one otherwise.
    pub fn is_online(&self, uid: u64) -> bool {
        match &self.cluster {
            Some(node) => node.bus.presence().is_online(uid),
            None => self.registry.is_online(uid),
        }
    }

    /// Tells the other nodes (cluster mode) that shared state changed and committed; nothing
    /// on a single node.
    pub fn invalidate(&self, what: Invalidation) {
        if let Some(node) = &self.cluster {
            node.bus.publish_invalidation(&what);
        }
    }

    /// False once the token has expired or its user logged out since it was issued.
    pub fn token_still_valid(&self, claims: &Claims) -> bool {
        claims.exp > crate::auth::now_secs() && self.directory.token_gen(claims.uid) == Some(claims.tgen)
    }
}
