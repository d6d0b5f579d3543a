//! WAL checkpoints on their own thread and connection, so that the writer's commits never
//! wait for pages to be copied back into the database file (and fsynced there).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{StoreError, StoreResult, open_connection};

/// How often the WAL is copied back into the database.
const INTERVAL: Duration = Duration::from_millis(250);

pub struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = open_connection(path, false)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("imd-checkpoint".into())
            .spawn(move || {
                lower_priority();
                let (lock, wake) = &*signal;
                let Ok(mut stopping) = lock.lock() else { return };
                while !*stopping {
                    stopping = match wake.wait_timeout(stopping, INTERVAL) {
                        Ok((guard, _)) => guard,
                        Err(_) => return,
                    };
                    // PASSIVE never blocks the writer; whatever it cannot copy now waits.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!("checkpoint: {e}");
                    }
                }
                // Last one: empty the WAL so the database file stands alone.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::Refused(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    pub fn stop(self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopping) = lock.lock() {
            *stopping = true;
        }
        wake.notify_one();
        let _ = self.thread.join();
    }
}

/// Checkpoints are background work: on a busy core, the writer and the sessions come first.
fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread only; failure just keeps the default.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
