//! The SQLite backend. One writer thread owns the only writing connection and commits many
//! commands per transaction (group commit); reads run on a small pool of read-only
//! connections on tokio's blocking threads. Nothing here blocks an async worker.

pub mod accounts;
pub mod backup;
mod checkpoint;
mod delivered;
mod errors;
pub mod offline;
mod participants;
mod queries;
mod rooms;
mod schema;
mod shops;
mod snapshot;
mod users;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

// The backend-neutral types, named as `super::X` by this backend's modules.
use crate::domain::{NewMessage, ServiceRoute};
use crate::metrics::Metrics;
use crate::store::{Committed, Outcome, OutcomeSender, StorageHealth, StoreError, StoreResult, WriterSettings};
use crate::supervisor::{Supervisor, Worker};

/// How many commands may wait for the writer before senders are made to wait.
const QUEUE_DEPTH: usize = 16_384;
/// Read-only connections (and so concurrent reads) at most.
const READERS: usize = 4;
/// How long closing waits for reads under way to give their connections back.
const READERS_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Work the writer thread runs inside its batch transaction. It is given the connection, or
/// the error that keeps it from running (it is then only answered).
pub(crate) type Job = Box<dyn FnOnce(StoreResult<&Connection>) -> JobDone + Send>;

/// What a job leaves behind: whether it succeeded (else its savepoint is rolled back), why it
/// failed if the storage was the reason (for `/health`), and what to run once the batch has
/// committed (or failed to).
pub(crate) struct JobDone {
    ok: bool,
    unavailable: Option<String>,
    complete: Box<dyn FnOnce(StoreResult<()>) + Send>,
}

pub(crate) enum Command {
    Message(Box<NewMessage>),
    Job(Job),
    /// Commit what came before, then stop.
    Close,
}

/// Handle to the SQLite store (`store::Store::Sqlite`); cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    readers: Arc<ReaderPool>,
    health: Arc<StorageHealth>,
}

/// The store's threads, joined on shutdown (through `StoreGuard`), with what stopping them
/// needs: the writer's queue (to tell it to close) and the readers (to wait for).
pub(crate) struct StoreThreads {
    writer: std::thread::JoinHandle<()>,
    checkpointer: checkpoint::Checkpointer,
    commands: mpsc::Sender<Command>,
    readers: Arc<ReaderPool>,
}

impl StoreThreads {
    /// Refuses reads from now on and drops the idle read connections (see `close_readers`).
    pub(crate) fn close_readers(&self) {
        self.readers.close();
    }

    /// Blocking: tells the writer to commit what is queued and stop, then joins (for the
    /// guard's `Drop`, on a thread of its own).
    pub(crate) fn close_and_join(self) {
        let _ = self.commands.blocking_send(Command::Close);
        self.join();
    }

    /// Waits until every queued command is committed and the threads have stopped (after
    /// `SqliteStore::close`, or once every handle is dropped). The checkpointer stops last:
    /// its connection's close is the last one, which empties and removes the WAL.
    pub(crate) fn join(self) {
        let _ = self.writer.join();
        self.readers.wait_unused(READERS_CLOSE_TIMEOUT);
        self.checkpointer.stop();
    }
}

/// A database opened for writing and migrated, not yet started: start-up reads its state from
/// it, then `start` hands it to the writer. Its connection never leaves the store.
pub struct SqlitePrepared {
    conn: Connection,
    path: PathBuf,
}

impl SqlitePrepared {
    /// Opens the database for writing, creating it and applying migrations as needed.
    pub fn open(path: &Path) -> StoreResult<SqlitePrepared> {
        Ok(SqlitePrepared { conn: open_writable(path)?, path: path.to_path_buf() })
    }

    /// Users, rooms and agents for the in-memory directory; `watch` follows the progress.
    pub fn snapshot(
        &self,
        watch: Option<crate::store::snapshot::Watch<'_>>,
    ) -> StoreResult<crate::store::snapshot::Snapshot> {
        snapshot::read_snapshot(&self.conn, watch)
    }

    /// The JWT secret kept in the database, generated on first use.
    pub fn jwt_secret(&self) -> StoreResult<String> {
        users::stored_jwt_secret(&self.conn)
    }

    /// Starts the writer thread on the prepared connection; it sends every batch's outcomes,
    /// in commit order, to `outcomes`. `supervisor` watches it and the checkpoint thread. The
    /// threads are returned for the guard to stop.
    pub(crate) fn start(
        self,
        settings: WriterSettings,
        outcomes: OutcomeSender,
        metrics: Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> StoreResult<(SqliteStore, StoreThreads)> {
        let SqlitePrepared { conn, path } = self;
        let path = path.as_path();
        let thread_copied = Arc::default();
        let checkpoint_watch = supervisor.watch(Worker::Checkpoint);
        let checkpointer = checkpoint::Checkpointer::start(path, Arc::clone(&thread_copied), checkpoint_watch)?;
        let watch = supervisor.watch(Worker::Writer);
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let health = Arc::new(StorageHealth::default());
        let writer = writer::Writer::new(conn, settings, outcomes, metrics, thread_copied, health.clone())?;
        let handle = std::thread::Builder::new()
            .name("imd-store-writer".into())
            .spawn(move || {
                let mut rx = rx;
                // IMD_FAULT=writer-panic (tests only): die on the first command.
                if watch.fault_armed() {
                    let _first = rx.blocking_recv();
                    watch.fault_point();
                }
                writer.run(rx);
                watch.returned();
            })
            .map_err(|e| StoreError::Refused(format!("cannot start the writer thread: {e}")))?;
        let readers = Arc::new(ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(READERS),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let store = SqliteStore { commands: commands.clone(), readers: readers.clone(), health };
        let threads = StoreThreads { writer: handle, checkpointer, commands, readers };
        Ok((store, threads))
    }
}

impl SqliteStore {
    /// Asks the writer to commit what is queued and stop; later commands are refused.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
        self.close_readers();
    }

    /// Read-only connections cannot remove the WAL; closing them before the threads stop
    /// leaves the last close to the checkpointer, which empties the WAL and lets SQLite delete
    /// it. Later reads are refused, and a read under way closes its connection when done.
    fn close_readers(&self) {
        self.readers.close();
    }

    /// The storage error of the writer's last attempt, while it has not committed since.
    pub fn degraded(&self) -> Option<String> {
        self.health.degraded()
    }

    /// Commands waiting for the writer thread (for `imd_writer_queue_depth`).
    pub fn queue_depth(&self) -> usize {
        self.commands.max_capacity() - self.commands.capacity()
    }

    /// Queues a message; the writer commits it, then emits its outcome with its ticket.
    pub async fn submit(&self, message: NewMessage) -> StoreResult<()> {
        self.commands.send(Command::Message(Box::new(message))).await.map_err(|_| StoreError::Closed)
    }

    /// Runs `work` inside the writer's next batch transaction and returns its result once that
    /// transaction has committed. A failing `work` is rolled back alone.
    async fn write<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(work);
            let ok = result.is_ok();
            JobDone {
                ok,
                unavailable: result.as_ref().err().and_then(StoreError::unavailable),
                complete: Box::new(move |committed| {
                    let _ = tx.send(committed.and(result));
                }),
            }
        });
        self.commands.send(Command::Job(job)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on a pooled read-only connection, off the async workers.
    async fn read<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let readers = self.readers.clone();
        // Bounded: a burst of connects must not open a connection (and a page cache) each.
        let _permit = self.readers.permits.acquire().await.map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.give_back(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// Read-only connections, reused between reads. WAL lets them read while the writer writes.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection that may exist at once.
    permits: tokio::sync::Semaphore,
    /// Set by `SqliteStore::close`: no connection is opened or kept from then on.
    closed: std::sync::atomic::AtomicBool,
}

impl ReaderPool {
    /// Refuses later reads and closes the idle connections (`SqliteStore::close_readers`).
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    fn take(&self) -> StoreResult<Connection> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        if let Some(conn) = self.idle.lock().map_err(|_| StoreError::Closed)?.pop() {
            return Ok(conn);
        }
        open_connection(&self.path, true)
    }

    fn give_back(&self, conn: Connection) {
        // At most READERS exist (the semaphore), so all of them may be kept until the close.
        if let Ok(mut idle) = self.idle.lock()
            && !self.is_closed()
        {
            idle.push(conn);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits (up to `limit`) until no read holds a connection: every permit is back, and a
    /// permit is held until its connection is given back (closed, once the pool is closed).
    fn wait_unused(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.permits.available_permits() < READERS && std::time::Instant::now() < deadline {
            // Reads are short; this runs once, on the thread that stops the store.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Takes group and other access away from an existing database and its WAL and index files
/// (created before imd made its files 0600); new ones are 0600 from the umask, and SQLite
/// gives the WAL and index the database's mode.
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let Ok(meta) = std::fs::metadata(&file) else { continue };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
        {
            tracing::warn!("cannot make {} private (mode {:o}): {e}", file.display(), mode & 0o777);
        }
    }
}

/// Opens the database for writing and migrates it (for `prepare`, and tests that need a
/// connection of their own).
pub(crate) fn open_writable(path: &Path) -> StoreResult<Connection> {
    make_private(path);
    let conn = open_connection(path, false)?;
    schema::migrate(&conn)?;
    Ok(conn)
}

/// Opens a connection with the settings every connection shares.
pub fn open_connection(path: &Path, read_only: bool) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if !read_only {
        // WAL: readers never block the writer. FULL: a commit is on disk before its acks go out
        // (the writer may relax this with --sync normal).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    Ok(conn)
}
