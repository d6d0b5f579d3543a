//! Delivery of committed messages: encode each frame once, then queue the same bytes to every
//! connection of every recipient, the sender's other connections and, last, the sender's ack.
//! One task on the runtime delivers the writer's batches in commit order, so every recipient
//! sees a conversation's messages in seq order. Being on the runtime, waking the sessions it
//! queues to costs no thread switch: the writer wakes it once per batch, not once per socket.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::delivery::inflight::Unacked;
use crate::directory::Directory;
use crate::domain::{Accepted, Kind, Ticket};
use crate::frames;
use crate::metrics::Metrics;
use crate::registry::{Connection, Registry};
use crate::store::{Committed, Outcome, OutcomeSender, StoreError, StoreResult};
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
}

impl Fanout {
    /// Starts the delivery task on the current runtime.
    pub fn spawn(self) -> OutcomeSender {
        let (tx, mut rx) = mpsc::channel::<Vec<Outcome>>(DELIVERY_DEPTH);
        tokio::spawn(async move {
            let watch = self.supervisor.watch(Worker::Fanout);
            while let Some(batch) = rx.recv().await {
                // IMD_FAULT=fanout-panic (tests only): die on the first batch.
                watch.fault_point();
                // The batch's commit time, taken before its deliveries are consumed.
                let committed_at = batch.iter().find_map(|delivery| match delivery {
                    Outcome::Committed(committed) => Some(committed.committed_at),
                    Outcome::Refused { .. } => None,
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
            Some(Origin::Connection(conn)) => {
                conn.send(&frames::ack(&message, duplicate));
            }
            Some(Origin::Http(reply)) => {
                let _ = reply.send(Ok(Accepted { id: message.id, seq: message.seq, delivered }));
            }
            None => tracing::error!(id = message.id, "message stored, but its ticket names no origin"),
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
