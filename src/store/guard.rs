//! Owns what the store started, from start to stop, so the database is closed cleanly whatever
//! path the process takes: a normal stop (`shutdown`), or an error or a panic during start-up
//! or serving (`Drop`), like mini-redis's `DbDropGuard`.

use std::time::Duration;

use super::Store;
use super::postgres::PgTasks;
use super::sqlite::StoreThreads;
use crate::supervisor::Supervisor;

/// How long a dropped guard waits for the writer to commit and the store to stop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend started and stopping it waits for, one variant per backend.
pub(super) enum Stopper {
    /// The writer and checkpoint threads, and the read connections.
    Sqlite(StoreThreads),
    /// The PostgreSQL writer task.
    Postgres(PgTasks),
}

impl Stopper {
    /// Refuses later reads at once (before the writer is told to close).
    fn close_reads(&self) {
        match self {
            Stopper::Sqlite(threads) => threads.close_readers(),
            // Reads go on over the pool until the writer has stopped; then it is closed.
            Stopper::Postgres(_) => {}
        }
    }

    /// Blocking: waits until the backend has stopped, after `Store::close`.
    fn join(self) {
        match self {
            Stopper::Sqlite(threads) => threads.join(),
            Stopper::Postgres(tasks) => tasks.join_blocking(),
        }
    }

    /// Blocking: tells the backend to commit what is queued and stop, then waits for it.
    fn close_and_join(self) {
        match self {
            Stopper::Sqlite(threads) => threads.close_and_join(),
            Stopper::Postgres(tasks) => tasks.close_and_join_blocking(),
        }
    }
}

/// Closes the store when dropped unless `shutdown` already did: the writer commits what is
/// queued and stops (its outcome sender drops, which ends delivery), then the SQLite
/// checkpointer empties the WAL and closes the last connection.
pub struct StoreGuard {
    store: Store,
    stopper: Option<Stopper>,
    supervisor: Supervisor,
}

impl StoreGuard {
    pub(super) fn new(store: Store, stopper: Stopper, supervisor: Supervisor) -> StoreGuard {
        StoreGuard { store, stopper: Some(stopper), supervisor }
    }

    /// The normal stop: commits what is queued, refuses later commands and returns once the
    /// backend has stopped. The joining runs off the async workers; dropping this future
    /// (a timeout) leaves it running.
    pub async fn shutdown(mut self) -> Result<(), tokio::task::JoinError> {
        self.store.close().await;
        let Some(stopper) = self.stopper.take() else { return Ok(()) };
        tokio::task::spawn_blocking(move || stopper.join()).await
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        let Some(stopper) = self.stopper.take() else { return };
        tracing::warn!("closing the store after a failed start or serve");
        // The backend stops because it is told to, not because it died.
        self.supervisor.stopping();
        stopper.close_reads();
        // On a thread of its own: this may run on a runtime thread (start-up's error path, or
        // a panic unwinding through `block_on`), where a blocking send would panic.
        let (done, finished) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new().name("imd-store-close".into()).spawn(move || {
            stopper.close_and_join();
            let _ = done.send(());
        });
        match closing {
            Ok(_) if finished.recv_timeout(CLOSE_TIMEOUT).is_ok() => tracing::info!("store closed"),
            Ok(_) => tracing::error!("the store did not close within {CLOSE_TIMEOUT:?}"),
            Err(e) => tracing::error!("cannot start a thread to close the store: {e}"),
        }
    }
}
