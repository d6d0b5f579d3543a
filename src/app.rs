//! The state every part of a running daemon shares.

use std::net::IpAddr;
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
use crate::registry::{Registry, UserSlot};
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::throttle::{Outcome, Throttle, Throttled};

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
    /// Failed logins and registrations, per username and per client IP; in cluster mode the
    /// names' failures on other nodes count too (the bus's hook feeds them in).
    pub throttle: Arc<Throttle>,
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

    /// A place for one more WebSocket session of `uid` under `--max-connections-per-user`,
    /// counting their sessions on the other live nodes in cluster mode; None past the cap.
    pub fn reserve_session(&self, uid: u64) -> Option<UserSlot> {
        let max = self.config.max_connections_per_user;
        // A single node, or no cap: nothing to ask of the cluster.
        let elsewhere = match &self.cluster {
            Some(node) if max > 0 => node.bus.presence().remote_sessions(uid),
            _ => 0,
        };
        self.registry.reserve_session(uid, max, elsewhere)
    }

    /// Lets a login or registration go ahead, or Throttled (see `Throttle::begin`).
    pub fn begin_login(&self, ip: Option<IpAddr>, name: Option<&str>) -> Result<(), Throttled> {
        self.throttle.begin(ip, name)
    }

    /// The outcome of a begun login or registration (see `Throttle::settled`); in cluster
    /// mode the other nodes hear of the name's failure, or of its failures cleared.
    pub fn settle_login(&self, ip: Option<IpAddr>, name: Option<&str>, outcome: Outcome) {
        let cleared = self.throttle.settled(ip, name, outcome);
        let (Some(node), Some(name)) = (&self.cluster, name) else { return };
        let username = name.to_string();
        match outcome {
            Outcome::Failed => node.bus.publish_invalidation(&Invalidation::LoginFailed { username }),
            Outcome::Succeeded if cleared => node.bus.publish_invalidation(&Invalidation::LoginSucceeded { username }),
            Outcome::Succeeded | Outcome::Neither => {}
        }
    }

    /// Tells the other nodes (cluster mode) that shared state changed and committed, and
    /// waits (at most a second) until each live one has applied it, so that the
    /// client's next request finds the change on whichever node it reaches; nothing on a
    /// single node.
    pub async fn invalidate(&self, what: Invalidation) {
        if let Some(node) = &self.cluster {
            node.bus.publish_invalidation_confirmed(&what).await;
        }
    }

    /// False once the token has expired or its user logged out since it was issued.
    pub fn token_still_valid(&self, claims: &Claims) -> bool {
        claims.exp > crate::auth::now_secs() && self.directory.token_gen(claims.uid) == Some(claims.tgen)
    }
}
