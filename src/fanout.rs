//! Delivery of committed messages: encode each frame once, then queue the same bytes to every
//! connection of every recipient, the sender's other connections and, last, the sender's ack.
//! One task on the runtime delivers the writer's batches in commit order, so every recipient
//! sees a conversation's messages in seq order. Being on the runtime, waking the sessions it
//! queues to costs no thread switch: the writer wakes it once per batch, not once per socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::cluster::{Cluster, Deliver, Sequencer};

use crate::delivery::inflight::Unacked;
use crate::directory::Directory;
use crate::domain::{Accepted, Kind, Ticket};
use crate::frames;
use crate::metrics::Metrics;
use crate::registry::{Connection, Registry};
use crate::store::{Committed, Outcome, OutcomeSender, StoreError, StoreResult, StoredMessage};
use crate::supervisor::{Supervisor, Worker};

/// Who is waiting for the outcome of a message; it travels through the store as its `Ticket`.
pub enum Origin {
    /// A WebSocket connection: it gets the ack, the user's other connections the mirror. Its
    /// later replies wait until this is dropped, so drop it only after queuing the answer.
    Connection(Unacked),
    /// An HTTP request (broadcast): it gets the stored ids and the number of connections reached.
    Http(oneshot::Sender<StoreResult<Accepted>>),
}

impl Origin {
    /// The ticket the message carries through the store; `resolve` turns it back.
    pub fn ticket(self) -> Ticket {
        Ticket::new(self)
    }

    /// The origin a ticket was made from. Every ticket comes from `ticket`, so None means a
    /// ticket made elsewhere (a bug): its message is delivered but answered to nobody.
    fn resolve(ticket: Ticket) -> Option<Origin> {
        ticket.into_inner::<Origin>().ok()
    }
}

/// Batches that may wait for the delivery task. When it falls this far behind, the writer
/// waits before its next batch, so senders wait on the writer's queue instead of memory
/// growing without bound.
pub const DELIVERY_DEPTH: usize = 4096;

#[derive(Clone)]
pub struct Fanout {
    pub registry: Arc<Registry>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub supervisor: Supervisor,
    /// Cluster mode; None on a single node, whose path stays as it was.
    pub cluster: Option<ClusterDelivery>,
}

impl Fanout {
    /// Starts the delivery task on the current runtime.
    /// Starts the delivery task on the current runtime; the handle ends once the writer
    /// stopped and every batch it sent is delivered (and, in cluster mode, queued to publish).
    pub fn spawn(self) -> (OutcomeSender, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Vec<Outcome>>(DELIVERY_DEPTH);
        let task = tokio::spawn(async move {
            let watch = self.supervisor.watch(Worker::Fanout);
            while let Some(batch) = rx.recv().await {
                // IMD_FAULT=fanout-panic (tests only): die on the first batch.
                watch.fault_point();
                // The batch's commit time, taken before its deliveries are consumed.
                let committed_at = batch.iter().find_map(|delivery| match delivery {
                    Outcome::Committed(committed) => Some(committed.committed_at),
                    Outcome::Refused { .. } => None,
                });
                match &self.cluster {
                    Some(cluster) => self.deliver_clustered(cluster, batch),
                    None => batch.into_iter().for_each(|delivery| self.apply(delivery)),
                }
                if let Some(at) = committed_at {
                    self.metrics.fanout_lag_seconds.observe(at.elapsed().as_secs_f64());
                }
            }
            // The writer dropped its end: it stopped, or died and its own watch says so.
            watch.input_closed();
        });
        (tx, task)
    }

    fn apply(&self, outcome: Outcome) {
        match outcome {
            Outcome::Committed(committed) => self.deliver(committed),
            Outcome::Refused { ticket, msg_id, error } => match Origin::resolve(ticket) {
                Some(origin) => self.refuse(origin, msg_id.as_deref(), error),
                None => tracing::error!("message not stored, and its ticket names no origin: {error}"),
            },
        }
    }

    fn deliver(&self, committed: Committed) {
        let Committed { message, duplicate, ticket, .. } = committed;
        let origin = Origin::resolve(ticket);
        let origin_conn = match &origin {
            Some(Origin::Connection(conn)) => Some(conn.id),
            _ => None,
        };
        let delivered = if duplicate {
            0
        } else {
            to_connections(&self.registry, &self.directory, &self.metrics, &message, origin_conn)
        };
        answer(origin, &message, duplicate, delivered);
    }

    /// Cluster mode: the batch's new messages go through the node's sequencer (which delivers
    /// them in each conversation's order, interleaved with other nodes' messages) and out to
    /// the bus; the origins are answered at once, whatever the sequencer holds back.
    fn deliver_clustered(&self, cluster: &ClusterDelivery, batch: Vec<Outcome>) {
        let mut fresh = Vec::new();
        let mut answers = Vec::new();
        for outcome in batch {
            match outcome {
                Outcome::Committed(Committed { message, duplicate, ticket, .. }) => {
                    let origin = Origin::resolve(ticket);
                    let counter = if duplicate {
                        None
                    } else {
                        let conn = match &origin {
                            Some(Origin::Connection(conn)) => Some(conn.id),
                            _ => None,
                        };
                        let counter = matches!(origin, Some(Origin::Http(_))).then(|| Arc::new(AtomicUsize::new(0)));
                        cluster.origins.note(message.id, conn, counter.clone());
                        fresh.push(message.clone());
                        counter
                    };
                    answers.push((origin, message, duplicate, counter));
                }
                Outcome::Refused { ticket, msg_id, error } => match Origin::resolve(ticket) {
                    Some(origin) => self.refuse(origin, msg_id.as_deref(), error),
                    None => tracing::error!("message not stored, and its ticket names no origin: {error}"),
                },
            }
        }
        if !fresh.is_empty() {
            cluster.cluster.publish_batch(&fresh);
            cluster.sequencer.offer(fresh);
        }
        for (origin, message, duplicate, counter) in answers {
            // What the sequencer delivered by now: this node's connections (see PROTOCOL.md).
            let delivered = counter.map_or(0, |c| c.load(Ordering::Relaxed));
            answer(origin, &message, duplicate, delivered);
        }
    }

    /// Tells the origin that its message could not be stored: 503 when the storage failed
    /// (the same message may be sent again later), 500 when the message itself was refused.
    fn refuse(&self, origin: Origin, msg_id: Option<&str>, error: StoreError) {
        let (code, text) = error.client_reply();
        match &origin {
            Origin::Connection(conn) => {
                tracing::warn!(conn = conn.id, uid = conn.uid, code, "message not stored: {error}")
            }
            Origin::Http(_) => tracing::warn!(code, "message not stored (HTTP): {error}"),
        }
        self.metrics.error(code);
        match origin {
            Origin::Connection(conn) => {
                conn.send(&frames::error(code, &text, msg_id));
            }
            Origin::Http(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Queues `message`'s frame, encoded once, to every local connection of every recipient but
/// `origin_conn` (the connection that sent it, answered with its ack); returns how many.
pub fn to_connections(
    registry: &Registry,
    directory: &Directory,
    metrics: &Metrics,
    message: &StoredMessage,
    origin_conn: Option<u64>,
) -> usize {
    let mut delivered = 0usize;
    let from_name = match directory.username(message.from_uid) {
        Some(name) => name,
        None => Arc::from("system"),
    };
    let frame = frames::message(message, &from_name);
    let mut send = |conn: &Arc<Connection>| {
        if Some(conn.id) != origin_conn && conn.send_message(&frame, &message.chat_id, message.seq) {
            delivered += 1;
        }
    };
    // Hints before the registry lookups (see `unread`). The sender has read what it sent.
    let unread = &directory.unread;
    match message.kind {
        Kind::System => {
            unread.note_everyone();
            registry.for_each(&mut send);
        }
        Kind::Group => {
            if let Some(members) = directory.room_members(&message.chat_id) {
                unread.note(members.iter().copied().filter(|&uid| uid != message.from_uid));
                for &uid in members.iter().filter(|&&uid| uid != message.from_uid) {
                    registry.for_each_of(uid, &mut send);
                }
            }
            registry.for_each_of(message.from_uid, &mut send);
        }
        Kind::Single | Kind::Service => {
            if message.kind == Kind::Service {
                // Handlers and agents come and go: who may read it is the store's to say.
                unread.note_everyone();
            }
            if let Some(to) = message.to_uid.filter(|&to| to != message.from_uid) {
                unread.note([to]);
                registry.for_each_of(to, &mut send);
            }
            registry.for_each_of(message.from_uid, &mut send);
        }
    }
    metrics.frames_delivered.inc_by(delivered as u64);
    delivered
}

/// The ack to a connection, or the reply to an HTTP request.
fn answer(origin: Option<Origin>, message: &StoredMessage, duplicate: bool, delivered: usize) {
    match origin {
        Some(Origin::Connection(conn)) => {
            conn.send(&frames::ack(message, duplicate));
        }
        Some(Origin::Http(reply)) => {
            let _ = reply.send(Ok(Accepted { id: message.id, seq: message.seq, delivered }));
        }
        None => tracing::error!(id = message.id, "message stored, but its ticket names no origin"),
    }
}

/// What the delivery task needs in cluster mode.
#[derive(Clone)]
pub struct ClusterDelivery {
    pub cluster: Arc<Cluster>,
    pub sequencer: Arc<Sequencer>,
    pub origins: Arc<LocalOrigins>,
}

/// Local messages on their way through the sequencer: which connection sent each (it gets
/// the ack, not the message) and, for a broadcast, where to count the connections reached.
/// Bounded: past `MAX_ORIGINS` a message is not noted (its sender then gets it echoed once).
#[derive(Default)]
pub struct LocalOrigins {
    pending: Mutex<HashMap<i64, LocalOrigin>>,
}

/// The sending connection of a local message, and the counter of a broadcast's deliveries.
type LocalOrigin = (Option<u64>, Option<Arc<AtomicUsize>>);

/// Local messages the sequencer may hold at once, noted with their origin.
pub const MAX_ORIGINS: usize = 65_536;

impl LocalOrigins {
    fn note(&self, id: i64, conn: Option<u64>, counter: Option<Arc<AtomicUsize>>) {
        if conn.is_none() && counter.is_none() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.len() < MAX_ORIGINS {
            pending.insert(id, (conn, counter));
        }
    }

    /// The origin noted for message `id`, forgotten as it is delivered.
    fn take(&self, id: i64) -> LocalOrigin {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.remove(&id).unwrap_or((None, None))
    }
}

/// The sequencer's `deliver` for this node: `to_connections` for each message, minus the ack
/// (the delivery task answered the origin already).
pub fn sequenced_delivery(
    registry: Arc<Registry>,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    origins: Arc<LocalOrigins>,
) -> Deliver {
    Arc::new(move |messages: Vec<StoredMessage>| {
        for message in messages {
            // The handler the store settled on (see `ServiceRoute::seen_handler`), whichever
            // node routed the message.
            if message.kind == Kind::Service
                && let Some(agent) = message.agent_uid
                && directory.handler(&message.chat_id) != Some(agent)
            {
                directory.set_handler(&message.chat_id, agent);
            }
            let (conn, counter) = origins.take(message.id);
            let delivered = to_connections(&registry, &directory, &metrics, &message, conn);
            if let Some(counter) = counter {
                counter.store(delivered, Ordering::Relaxed);
            }
        }
    })
}
