//! Delivery of committed messages: encode each frame once, then queue the same bytes to every
//! connection of every recipient, the sender's other connections and, last, the sender's ack.
//! One task on the runtime delivers the writer's batches in commit order, so every recipient
//! sees a conversation's messages in seq order. Being on the runtime, waking the sessions it
//! queues to costs no thread switch: the writer wakes it once per batch, not once per socket.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::frames;
use crate::metrics::Metrics;
use crate::registry::{Connection, Registry};
use crate::store::{Accepted, Committed, Kind, Origin, StoreError};
use crate::supervisor::{Supervisor, Worker};

/// What the writer hands over after a commit, in commit order.
pub enum Delivery {
    Committed(Committed),
    Refused { origin: Origin, msg_id: Option<Box<str>>, error: StoreError },
}

/// Where the writer sends its batches of deliveries.
pub type DeliverySender = mpsc::Sender<Vec<Delivery>>;

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
}

impl Fanout {
    /// Starts the delivery task on the current runtime.
    pub fn spawn(self) -> DeliverySender {
        let (tx, mut rx) = mpsc::channel::<Vec<Delivery>>(DELIVERY_DEPTH);
        tokio::spawn(async move {
            let watch = self.supervisor.watch(Worker::Fanout);
            while let Some(batch) = rx.recv().await {
                // IMD_FAULT=fanout-panic (tests only): die on the first batch.
                watch.fault_point();
                // The batch's commit time, taken before its deliveries are consumed.
                let committed_at = batch.iter().find_map(|delivery| match delivery {
                    Delivery::Committed(committed) => Some(committed.committed_at),
                    Delivery::Refused { .. } => None,
                });
                batch.into_iter().for_each(|delivery| self.apply(delivery));
                if let Some(at) = committed_at {
                    self.metrics.fanout_lag_seconds.observe(at.elapsed().as_secs_f64());
                }
            }
            // The writer dropped its end: it stopped, or died and its own watch says so.
            watch.input_closed();
        });
        tx
    }

    fn apply(&self, delivery: Delivery) {
        match delivery {
            Delivery::Committed(committed) => self.deliver(committed),
            Delivery::Refused { origin, msg_id, error } => self.refuse(origin, msg_id.as_deref(), error),
        }
    }

    fn deliver(&self, committed: Committed) {
        let Committed { message, duplicate, origin, .. } = committed;
        let origin_conn = match &origin {
            Origin::Connection(conn) => Some(conn.id),
            Origin::Http(_) => None,
        };
        let mut delivered = 0usize;
        if !duplicate {
            let from_name = match self.directory.username(message.from_uid) {
                Some(name) => name,
                None => Arc::from("system"),
            };
            let frame = frames::message(&message, &from_name);
            let mut send = |conn: &Arc<Connection>| {
                if Some(conn.id) != origin_conn && conn.send_message(&frame, &message.chat_id, message.seq) {
                    delivered += 1;
                }
            };
            // Hints before the registry lookups (see `unread`). The sender has read what it sent.
            let unread = &self.directory.unread;
            match message.kind {
                Kind::System => {
                    unread.note_everyone();
                    self.registry.for_each(&mut send);
                }
                Kind::Group => {
                    if let Some(members) = self.directory.room_members(&message.chat_id) {
                        unread.note(members.iter().copied().filter(|&uid| uid != message.from_uid));
                        for &uid in members.iter().filter(|&&uid| uid != message.from_uid) {
                            self.registry.for_each_of(uid, &mut send);
                        }
                    }
                    self.registry.for_each_of(message.from_uid, &mut send);
                }
                Kind::Single | Kind::Service => {
                    if message.kind == Kind::Service {
                        // Handlers and agents come and go: who may read it is the store's to say.
                        unread.note_everyone();
                    }
                    if let Some(to) = message.to_uid.filter(|&to| to != message.from_uid) {
                        unread.note([to]);
                        self.registry.for_each_of(to, &mut send);
                    }
                    self.registry.for_each_of(message.from_uid, &mut send);
                }
            }
            self.metrics.frames_delivered.inc_by(delivered as u64);
        }
        match origin {
            Origin::Connection(conn) => {
                conn.send(&frames::ack(&message, duplicate));
            }
            Origin::Http(reply) => {
                let _ = reply.send(Ok(Accepted { id: message.id, seq: message.seq, delivered }));
            }
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
