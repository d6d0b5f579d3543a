//! Owns the store's threads from start to stop, so the database is closed cleanly whatever
//! path the process takes: a normal stop (`shutdown`), or an error or a panic during start-up
//! or serving (`Drop`), like mini-redis's `DbDropGuard`.

use std::time::Duration;

use super::{Command, Store, StoreThreads};
use crate::supervisor::Supervisor;

/// How long a dropped guard waits for the writer to commit and the threads to stop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the store when dropped unless `shutdown` already did: the writer commits what is
/// queued and stops (its outcome sender drops, which ends delivery), then the checkpointer
/// empties the WAL and closes the last connection.
pub struct StoreGuard {
    store: Store,
    threads: Option<StoreThreads>,
    supervisor: Supervisor,
}

impl StoreGuard {
    pub(super) fn new(store: Store, threads: StoreThreads, supervisor: Supervisor) -> StoreGuard {
        StoreGuard { store, threads: Some(threads), supervisor }
    }

    /// The normal stop: commits what is queued, refuses later commands and returns once the
    /// threads have stopped. The joining runs off the async workers; dropping this future
    /// (a timeout) leaves it running.
    pub async fn shutdown(mut self) -> Result<(), tokio::task::JoinError> {
        self.store.close().await;
        let Some(threads) = self.threads.take() else { return Ok(()) };
        let readers = self.store.readers.clone();
        tokio::task::spawn_blocking(move || threads.join(&readers)).await
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        let Some(threads) = self.threads.take() else { return };
        tracing::warn!("closing the store after a failed start or serve");
        // The threads stop because they are told to, not because they died.
        self.supervisor.stopping();
        self.store.close_readers();
        let commands = self.store.commands.clone();
        let readers = self.store.readers.clone();
        // On a thread of its own: this may run on a runtime thread (start-up's error path, or
        // a panic unwinding through `block_on`), where a blocking send would panic.
        let (done, finished) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new().name("imd-store-close".into()).spawn(move || {
            let _ = commands.blocking_send(Command::Close);
            threads.join(&readers);
            let _ = done.send(());
        });
        match closing {
            Ok(_) if finished.recv_timeout(CLOSE_TIMEOUT).is_ok() => tracing::info!("store closed"),
            Ok(_) => tracing::error!("the store did not close within {CLOSE_TIMEOUT:?}"),
            Err(e) => tracing::error!("cannot start a thread to close the store: {e}"),
        }
    }
}
