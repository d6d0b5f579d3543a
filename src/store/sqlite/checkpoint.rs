//! WAL checkpoints on their own thread and connection, so that the writer's commits never
//! wait for pages to be copied back into the database file (and fsynced there).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode};

use super::{StoreError, StoreResult, open_connection};
use crate::supervisor::Watch;

/// How often the WAL is copied back into the database.
const INTERVAL: Duration = Duration::from_millis(250);

pub struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// `copied` gets the frames each checkpoint had copied, for the writer (writer.rs).
    /// `watch` reports the thread's death to the supervisor.
    pub fn start(path: &Path, copied: Arc<AtomicU32>, watch: Watch) -> StoreResult<Checkpointer> {
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
                    // IMD_FAULT=checkpoint-panic (tests only): die at the first round.
                    watch.fault_point();
                    if let Some(done) = passive(&conn, "background") {
                        copied.store(done, Ordering::Relaxed);
                    }
                }
                // Last one: empty the WAL so the database file stands alone.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                watch.returned();
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

/// A PASSIVE checkpoint, which never blocks the writer (what it cannot copy now waits): the
/// frames it had copied, or None when another checkpoint was running (busy: whoever asked
/// tries again later) or it failed (logged).
pub(super) fn passive(conn: &Connection, who: &str) -> Option<u32> {
    match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
        Ok((_, copied)) => Some(copied.try_into().unwrap_or(0)),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => None,
        Err(e) => {
            tracing::warn!("{who} checkpoint: {e}");
            None
        }
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
