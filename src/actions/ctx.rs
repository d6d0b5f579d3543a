//! What an action is applied to, and what it answers: the parts of the daemon actions use (not
//! the whole `App`), the next step for the session, and a refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::{Cluster, Invalidation};
use crate::delivery::inflight::Unacked;
use crate::directory::Directory;
use crate::fanout::Origin;
use crate::frames;
use crate::metrics::Metrics;
use crate::read_through::{Fact, ReadThrough};
use crate::registry::{Connection, Registry};
use crate::rules::message::Content;
use crate::store::{Kind, NewMessage, Store, StoreError};

/// What an action sees: borrowed for one frame from the daemon, and the sending connection.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub directory: &'a Arc<Directory>,
    pub read_through: &'a Arc<ReadThrough>,
    pub registry: &'a Arc<Registry>,
    pub metrics: &'a Arc<Metrics>,
    pub conn: &'a Arc<Connection>,
    pub uid: u64,
    /// Cluster mode's bus; None on a single node.
    pub cluster: Option<&'a Arc<Cluster>>,
}

impl Ctx<'_> {
    /// Whether `uid` is online: on any node in cluster mode, on this one otherwise.
    pub fn is_online(&self, uid: u64) -> bool {
        match self.cluster {
            Some(cluster) => cluster.presence().is_online(uid),
            None => self.registry.is_online(uid),
        }
    }

    /// What tells the other nodes (cluster mode) of a committed change.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator { cluster: self.cluster.cloned() }
    }

    /// A checked message from this connection's user, acked to this connection once stored.
    pub fn message(&self, kind: Kind, chat_id: String, to_uid: Option<u64>, content: Content) -> NewMessage {
        NewMessage {
            kind,
            chat_id: Arc::from(chat_id),
            from_uid: self.uid,
            to_uid,
            msg_id: content.msg_id,
            msg_type: content.msg_type,
            body: content.body,
            service: None,
            ticket: Origin::Connection(Unacked::new(self.conn.clone())).ticket(),
        }
    }
}

/// What the session does with a frame.
pub enum Step {
    Reply(Utf8Bytes),
    /// Store the message; the writer acks it after the commit.
    Store(NewMessage),
    /// Reply once this finishes (a change that must be committed first). The session awaits
    /// it before reading the connection's next frame, which so sees the change.
    Later(Pin<Box<dyn Future<Output = Utf8Bytes> + Send>>),
    /// Handle the frame again once this finishes: a refusal that may rest on a stale directory
    /// (cluster mode) is checked against the store first (`Refusal::unless`). The second
    /// handling refuses for good.
    Recheck(Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// A frame refused with an error code.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub message: String,
    /// What the refusal rests on that another node may have changed a moment ago; asked of
    /// the store before the refusal stands (cluster mode).
    pub unless: Option<Fact>,
}

impl Refusal {
    pub fn new(code: u16, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into(), unless: None }
    }

    /// A message whose content is not valid (`rules::message`).
    pub fn invalid(message: String) -> Refusal {
        Refusal { code: 400, message, unless: None }
    }

    /// This refusal, unless the store shows `fact` (which the directory lacked).
    pub fn unless(mut self, fact: Fact) -> Refusal {
        self.unless = Some(fact);
        self
    }
}

/// The error frame for a change that was not stored (503 or 500, see `StoreError::client_reply`).
pub fn not_stored(metrics: &Metrics, error: &StoreError) -> Utf8Bytes {
    let (code, text) = error.client_reply();
    metrics.error(code);
    frames::error(code, &text, None)
}

/// Tells the other nodes (cluster mode; nothing on a single node) of a committed change.
pub struct Invalidator {
    cluster: Option<Arc<Cluster>>,
}

impl Invalidator {
    /// Publishes `what` and waits until every live node applied it (at most a second), so the
    /// reply sent next finds the change on any node.
    pub async fn confirmed(&self, what: Invalidation) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_invalidation_confirmed(&what).await;
        }
    }

    /// Publishes `what` without waiting (for notices nobody's next request depends on).
    pub fn notify(&self, what: Invalidation) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_invalidation(&what);
        }
    }
}
