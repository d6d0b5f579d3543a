//! PostgreSQL storage, for several nodes sharing one database (cluster mode). One writer task
//! per node commits queued messages in batches (group commit: one transaction, array
//! statements, pipelined); other writes and every read run on a pool of connections. Nothing
//! is cached between batches, since other nodes commit too.

mod errors;
mod reads;
mod schema;
#[cfg(test)]
pub(crate) mod testdb;
mod writer;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use reads::{RoomInfo, ShopInfo};

use crate::domain::NewMessage;
use crate::metrics::Metrics;
use crate::store::{OutcomeSender, StorageHealth, StoreError, StoreResult, WriterSettings, snapshot};
use crate::supervisor::{Supervisor, Worker};

/// How many messages may wait for the writer before senders are made to wait.
const QUEUE_DEPTH: usize = 16_384;
/// Connections one node keeps at most (the writer takes one per batch; reads and other
/// writes share the rest).
const POOL_SIZE: usize = 16;
/// How long connecting, or waiting for a pooled connection, may take before the database
/// counts as away (`Unavailable`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) enum PgCommand {
    Message(Box<NewMessage>),
    /// Commit what came before, then stop.
    Close,
}

/// Handle to the PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    commands: mpsc::Sender<PgCommand>,
    health: Arc<StorageHealth>,
}

/// A database connected to and migrated, not serving yet: start-up reads its state, then
/// `start` starts the writer.
pub struct PgPrepared {
    pool: Pool,
}

/// The writer task, to wait for when the store stops, and what closing needs.
pub struct PgTasks {
    writer: JoinHandle<()>,
    store: PgStore,
    /// The runtime the writer runs on, for the blocking stops (which run off it).
    runtime: tokio::runtime::Handle,
}

/// Makes a pool on the database at `url` (`postgres://user@host/db`); connects lazily.
pub(crate) fn make_pool(url: &str) -> StoreResult<Pool> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| StoreError::Refused(format!("not a PostgreSQL URL ({e})")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("imd");
    // Fast: a connection the server closed is noticed by its connection task and dropped;
    // a batch that meets one first is refused as unavailable and the next takes a fresh one.
    let manager =
        Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Refused(format!("cannot make the PostgreSQL pool: {e}")))
}

impl PgStore {
    /// Connects to the database at `url` and applies the migrations it lacks.
    pub async fn prepare(url: &str) -> StoreResult<PgPrepared> {
        let pool = make_pool(url)?;
        schema::migrate(&pool).await?;
        Ok(PgPrepared { pool })
    }

    /// Asks the writer to commit what is queued and stop; later messages are refused.
    pub async fn close(&self) {
        let _ = self.commands.send(PgCommand::Close).await;
    }

    /// Like `close`, without waiting for room in the queue (for a drop path); false when the
    /// queue was full or the writer gone.
    pub fn try_close(&self) -> bool {
        self.commands.try_send(PgCommand::Close).is_ok()
    }

    /// The storage error of the last write, while none has committed since.
    pub fn degraded(&self) -> Option<String> {
        self.health.degraded()
    }

    /// Messages waiting for the writer (for `imd_writer_queue_depth`).
    pub fn queue_depth(&self) -> usize {
        self.commands.max_capacity() - self.commands.capacity()
    }

    /// Queues a message; the writer commits it, then emits its outcome with its ticket.
    pub async fn submit(&self, message: NewMessage) -> StoreResult<()> {
        self.commands.send(PgCommand::Message(Box::new(message))).await.map_err(|_| StoreError::Closed)
    }

    /// Notes the outcome of a write for `/health`: a storage failure degrades it, a commit
    /// ends that.
    fn note<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        match &result {
            Ok(_) => self.health.set(None),
            Err(e) => {
                if let Some(text) = e.unavailable() {
                    self.health.set(Some(text));
                }
            }
        }
        result
    }
}

impl PgPrepared {
    /// Users, rooms and agents for the in-memory directory; `watch` follows the progress.
    pub async fn snapshot(&self, watch: Option<snapshot::Watch<'_>>) -> StoreResult<snapshot::Snapshot> {
        reads::snapshot(&self.pool, watch).await
    }

    /// The JWT secret kept in the database (`meta`), generated by the first node that asks.
    pub async fn jwt_secret(&self) -> StoreResult<String> {
        writes::stored_jwt_secret(&self.pool).await
    }

    /// Starts the writer task; it sends every batch's outcomes, in commit order, to
    /// `outcomes`. `supervisor` watches it. Must run inside the tokio runtime.
    pub fn start(
        self,
        settings: WriterSettings,
        outcomes: OutcomeSender,
        metrics: Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> StoreResult<(PgStore, PgTasks)> {
        if !settings.durable {
            tracing::warn!("--no-store has no effect on PostgreSQL: messages are stored");
        }
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let health = Arc::new(StorageHealth::default());
        let watch = supervisor.watch(Worker::Writer);
        let writer = writer::Writer::new(self.pool.clone(), outcomes, metrics, health.clone());
        let handle = tokio::spawn(async move {
            let mut rx = rx;
            // IMD_FAULT=writer-panic (tests only): die on the first command.
            if watch.fault_armed() {
                let _first = rx.recv().await;
                watch.fault_point();
            }
            writer.run(rx).await;
            watch.returned();
        });
        let store = PgStore { pool: self.pool, commands, health };
        let tasks = PgTasks { writer: handle, store: store.clone(), runtime: tokio::runtime::Handle::current() };
        Ok((store, tasks))
    }
}

impl PgTasks {
    /// Waits until the writer has committed what was queued and stopped (after `close`),
    /// then closes the pool's connections.
    pub async fn join(self) -> Result<(), tokio::task::JoinError> {
        let stopped = self.writer.await;
        self.store.pool.close();
        stopped
    }

    /// Blocking `join`, for a thread off the runtime's workers (a blocking task, or a thread
    /// of its own).
    pub fn join_blocking(self) {
        let runtime = self.runtime.clone();
        if let Err(e) = runtime.block_on(self.join()) {
            tracing::error!("the store writer ended badly: {e}");
        }
    }

    /// Blocking: tells the writer to commit what is queued and stop, then waits for it.
    pub fn close_and_join_blocking(self) {
        let (runtime, store) = (self.runtime.clone(), self.store.clone());
        runtime.block_on(store.close());
        self.join_blocking();
    }
}
