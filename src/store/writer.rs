//! The writer thread: takes every queued command, runs them all in one transaction, commits
//! once (group commit), then answers and delivers each in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::messages::{Kind, NewMessage, Origin, StoredMessage};
use super::queries::{MESSAGE_COLUMNS, message_from_row};
use super::{Command, JobDone, StoreError, StoreResult, WriterSettings};
use crate::fanout::{Delivery, DeliverySender};
use crate::metrics::Metrics;

/// The writer's page cache, in KiB as SQLite's negative cache_size wants it: the indexes'
/// hot pages stay in memory instead of being read back for every batch.
const WRITER_CACHE_KIB: i64 = -16_384;
/// Most commands in one transaction; bounds the latency a batch adds to its first message.
const MAX_BATCH: usize = 4096;
/// Conversations whose last seq the writer keeps in memory (~100 bytes each). Past this, the
/// cache is emptied after a commit and refills from the `conversations` table.
const SEQ_CACHE_LIMIT: usize = 200_000;
/// WAL frames (~4 KiB each) past which the writer finishes a checkpoint itself, between
/// batches. The checkpoint thread's passive checkpoints never catch up with a writer that
/// keeps appending, and SQLite starts the WAL over only once every frame has been copied back:
/// without this, under sustained load the WAL grew by ~75 MB/s (~25 MB/s at 2,000 msg/s), and
/// every frame write extended the file. See `wants_checkpoint`.
const CHECKPOINT_FRAMES: u32 = 4096;

/// A message the writer has committed (or found to be a resend), ready for delivery.
pub struct Committed {
    pub message: StoredMessage,
    pub duplicate: bool,
    pub origin: Origin,
}

pub(super) struct Writer {
    conn: Connection,
    /// False only for benchmarks: messages get ids and seqs but are not written.
    durable: bool,
    deliveries: DeliverySender,
    metrics: Arc<Metrics>,
    /// last_seq of conversations written recently; the table row is updated once per batch.
    last_seq: HashMap<Arc<str>, i64>,
    seq_cache_limit: usize,
    next_id: i64,
    checkpoint_frames: u32,
    /// Frames in the WAL after the last commit, as SQLite's WAL hook reports them.
    wal_frames: Arc<AtomicU32>,
    /// Frames the checkpoint thread's last checkpoint had copied (checkpoint.rs).
    thread_copied: Arc<AtomicU32>,
}

/// Counters that many messages of one batch move; written once before the commit.
#[derive(Default)]
struct BatchUpdates {
    last_seq: HashMap<Arc<str>, i64>,
    read_seq: HashMap<(u64, Arc<str>), i64>,
}

enum Outcome {
    Message(StoreResult<(StoredMessage, bool)>, Origin, Option<Box<str>>),
    Job(Box<dyn FnOnce(StoreResult<()>) + Send>),
}

impl Writer {
    pub(super) fn new(
        mut conn: Connection,
        settings: WriterSettings,
        deliveries: DeliverySender,
        metrics: Arc<Metrics>,
        thread_copied: Arc<AtomicU32>,
    ) -> StoreResult<Writer> {
        conn.pragma_update(None, "synchronous", settings.sync.pragma())?;
        // Checkpoints run on their own thread (checkpoint.rs) and after batches (`checkpoint`),
        // never inside a commit. (This pragma also removes any WAL hook: it goes first.)
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        let next_id = max_message_id(&conn)? + 1;
        let last_seq = HashMap::new();
        let wal_frames = Arc::new(AtomicU32::new(0));
        let frames = wal_frames.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            frames.store(pages.try_into().unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }))?;
        Ok(Writer {
            conn,
            durable: settings.durable,
            deliveries,
            metrics,
            last_seq,
            seq_cache_limit: SEQ_CACHE_LIMIT,
            next_id,
            checkpoint_frames: CHECKPOINT_FRAMES,
            wal_frames,
            thread_copied,
        })
    }

    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        while !closing {
            let Some(first) = commands.blocking_recv() else { break };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                if matches!(command, Command::Close) {
                    closing = true;
                    break;
                }
                batch.push(command);
                if batch.len() < MAX_BATCH {
                    next = commands.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.run_batch(&mut batch);
            }
        }
        commands.close();
        tracing::info!("store writer stopped");
    }

    fn run_batch(&mut self, batch: &mut Vec<Command>) {
        let started = Instant::now();
        let size = batch.len();
        let mut outcomes = Vec::with_capacity(size);
        let mut updates = BatchUpdates::default();
        let mut result = self.control("BEGIN IMMEDIATE");
        for command in batch.drain(..) {
            match command {
                Command::Message(message) => {
                    let stored = match &result {
                        Ok(()) => self.insert(&message_fields(&message), &mut updates),
                        Err(e) => Err(clone_error(e)),
                    };
                    let NewMessage { origin, msg_id, .. } = *message;
                    outcomes.push(Outcome::Message(stored, origin, msg_id));
                }
                Command::Close => {}
                Command::Job(job) => {
                    if result.is_ok() {
                        result = updates.flush(&self.conn);
                    }
                    // A batch that already failed runs nothing more: the job is dropped, which
                    // tells its waiter that it did not run.
                    if result.is_ok() {
                        outcomes.push(Outcome::Job(self.run_job(job)));
                    }
                }
            }
        }
        if result.is_ok() {
            result = updates.flush(&self.conn);
        }
        let result = result.and_then(|()| self.control("COMMIT"));
        if let Err(e) = &result {
            tracing::error!("store batch of {size} failed: {e}");
            let _ = self.conn.execute_batch("ROLLBACK");
            // Seqs and ids handed out in this batch were not kept: forget them.
            self.last_seq.clear();
            self.next_id = max_message_id(&self.conn).unwrap_or(self.next_id) + 1;
        } else if self.durable && self.last_seq.len() > self.seq_cache_limit {
            // Committed, so the table holds every seq the cache knew. (Without the store the
            // cache is the only record, and is kept.)
            self.last_seq.clear();
        }
        self.metrics.store_batch_size.observe(size as f64);
        self.metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());

        let mut deliveries = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Outcome::Job(complete) => complete(result.as_ref().map(|_| ()).map_err(clone_error)),
                Outcome::Message(stored, origin, msg_id) => deliveries.push(match (&result, stored) {
                    (Ok(()), Ok((message, duplicate))) => {
                        if !duplicate {
                            self.metrics.messages_stored.inc();
                        }
                        Delivery::Committed(Committed { message, duplicate, origin })
                    }
                    (Err(e), _) => Delivery::Refused { origin, msg_id, error: clone_error(e) },
                    (Ok(()), Err(error)) => Delivery::Refused { origin, msg_id, error },
                }),
            }
        }
        if !deliveries.is_empty() {
            let _ = self.deliveries.send(deliveries);
        }
        // After the batch is answered, so no ack waits for it; meanwhile the next batch queues.
        let frames = self.wal_frames.load(Ordering::Relaxed);
        if wants_checkpoint(frames, self.thread_copied.load(Ordering::Relaxed), self.checkpoint_frames) {
            self.checkpoint();
        }
    }

    /// Copies the WAL back into the database while nothing is appended, so that the next
    /// transaction starts the WAL over. Busy (the checkpoint thread is at it) is fine: the
    /// next batch tries again.
    fn checkpoint(&mut self) {
        if super::checkpoint::passive(&self.conn, "writer").is_some() {
            // The WAL starts over at the next transaction: both counts refer to the old one.
            self.wal_frames.store(0, Ordering::Relaxed);
            self.thread_copied.store(0, Ordering::Relaxed);
        }
    }

    /// BEGIN / COMMIT through the statement cache: parsing them for every batch showed in
    /// profiles of small batches.
    fn control(&self, sql: &str) -> StoreResult<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    fn run_job(&mut self, job: super::Job) -> Box<dyn FnOnce(StoreResult<()>) + Send> {
        if let Err(e) = self.conn.execute_batch("SAVEPOINT job") {
            let e = clone_error(&StoreError::from(e));
            return Box::new(move |_| tracing::error!("job not run: {e}"));
        }
        let JobDone { ok, complete } = job(&self.conn);
        let end = if ok { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
        if let Err(e) = self.conn.execute_batch(end) {
            tracing::error!("savepoint: {e}");
        }
        complete
    }

    /// Assigns id and seq and inserts one message; returns the original for a resent msg_id.
    fn insert(&mut self, m: &MessageFields<'_>, updates: &mut BatchUpdates) -> StoreResult<(StoredMessage, bool)> {
        let seq = self.current_seq(m)? + 1;
        let message = StoredMessage {
            id: self.next_id,
            kind: m.kind,
            chat_id: m.chat_id.clone(),
            seq,
            from_uid: m.from_uid,
            to_uid: m.to_uid,
            msg_id: m.msg_id.map(Into::into),
            msg_type: m.msg_type.into(),
            body: m.body.to_owned(),
            ts: crate::now_ms(),
            shop_id: m.service.map(|s| s.shop_id),
            agent_uid: m.service.and_then(|s| s.agent_uid),
        };
        if self.durable {
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO messages (id, chat_id, seq, from_uid, to_uid, msg_id, msg_type, body, ts, shop_id, agent_uid)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    message.id,
                    &*message.chat_id,
                    message.seq,
                    message.from_uid,
                    message.to_uid,
                    message.msg_id.as_deref(),
                    &*message.msg_type,
                    message.body.get(),
                    message.ts,
                    message.shop_id,
                    message.agent_uid,
                ]);
            if let Err(e) = inserted {
                if is_unique_violation(&e)
                    && let Some(msg_id) = m.msg_id
                    && let Some(original) = find_by_client_id(&self.conn, m.from_uid, msg_id)?
                {
                    return Ok((original, true));
                }
                return Err(e.into());
            }
            if let Some(route) = m.service {
                record_service_route(&self.conn, &message.chat_id, route)?;
            }
        }
        self.next_id += 1;
        self.last_seq.insert(message.chat_id.clone(), seq);
        // Without the store the seq cache is the only record: a message must not touch the
        // database at all, or `--no-store` would still pay for commits (rooms' rows exist).
        if self.durable {
            updates.last_seq.insert(message.chat_id.clone(), seq);
            // What a user sends, that user has read.
            updates.read_seq.insert((message.from_uid, message.chat_id.clone()), seq);
        }
        Ok((message, false))
    }

    /// The conversation's newest seq, creating the conversation on its first message.
    fn current_seq(&mut self, m: &MessageFields<'_>) -> StoreResult<i64> {
        if let Some(seq) = self.last_seq.get(m.chat_id) {
            return Ok(*seq);
        }
        let stored: Option<i64> = self
            .conn
            .prepare_cached("SELECT last_seq FROM conversations WHERE chat_id = ?1")?
            .query_row([&**m.chat_id], |row| row.get(0))
            .optional()?;
        let seq = match stored {
            Some(seq) => seq,
            None if self.durable => {
                create_conversation(&self.conn, m)?;
                0
            }
            None => 0,
        };
        self.last_seq.insert(m.chat_id.clone(), seq);
        Ok(seq)
    }
}

/// Whether the writer should checkpoint after a batch, with `frames` in the WAL of which the
/// checkpoint thread has copied `copied`. Past `threshold`, it waits until the thread has
/// copied all but an eighth of a threshold, so that its own checkpoint (which holds up the
/// next batch) copies little; at four thresholds (a thread that has fallen behind: it runs at
/// a lower priority), it checkpoints whatever is left.
fn wants_checkpoint(frames: u32, copied: u32, threshold: u32) -> bool {
    let left = frames.saturating_sub(copied);
    frames >= threshold && (left <= threshold / 8 || frames >= threshold.saturating_mul(4))
}

/// The fields of a `NewMessage` the writer reads (its origin travels separately).
struct MessageFields<'a> {
    kind: Kind,
    chat_id: &'a Arc<str>,
    from_uid: u64,
    to_uid: Option<u64>,
    msg_id: Option<&'a str>,
    msg_type: &'a str,
    body: &'a RawValue,
    service: Option<&'a super::ServiceRoute>,
}

fn message_fields(m: &NewMessage) -> MessageFields<'_> {
    MessageFields {
        kind: m.kind,
        chat_id: &m.chat_id,
        from_uid: m.from_uid,
        to_uid: m.to_uid,
        msg_id: m.msg_id.as_deref(),
        msg_type: &m.msg_type,
        body: &m.body,
        service: m.service.as_ref(),
    }
}

impl BatchUpdates {
    fn flush(&mut self, conn: &Connection) -> StoreResult<()> {
        let mut set_last = conn.prepare_cached("UPDATE conversations SET last_seq = ?2 WHERE chat_id = ?1")?;
        for (chat_id, seq) in self.last_seq.drain() {
            set_last.execute(params![&*chat_id, seq])?;
        }
        let mut set_read = conn
            .prepare_cached("UPDATE participants SET read_seq = MAX(read_seq, ?3) WHERE uid = ?1 AND chat_id = ?2")?;
        for ((uid, chat_id), seq) in self.read_seq.drain() {
            set_read.execute(params![uid, &*chat_id, seq])?;
        }
        Ok(())
    }
}

fn create_conversation(conn: &Connection, m: &MessageFields<'_>) -> StoreResult<()> {
    let (shop_id, customer) = match m.service {
        Some(route) => (Some(route.shop_id), Some(route.customer_uid)),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO conversations (chat_id, kind, last_seq, shop_id, customer_uid, created_at) VALUES (?1, ?2, 0, ?3, ?4, ?5)",
    )?
    .execute(params![&**m.chat_id, m.kind as i64, shop_id, customer, crate::now_ms()])?;
    let mut add =
        conn.prepare_cached("INSERT OR IGNORE INTO participants (uid, chat_id, read_seq) VALUES (?1, ?2, 0)")?;
    match m.kind {
        Kind::Single => {
            add.execute(params![m.from_uid, &**m.chat_id])?;
            if let Some(to) = m.to_uid {
                add.execute(params![to, &**m.chat_id])?;
            }
        }
        Kind::Service => {
            if let Some(customer) = customer {
                add.execute(params![customer, &**m.chat_id])?;
            }
        }
        Kind::Group | Kind::System => {}
    }
    Ok(())
}

/// Remembers who handles a service conversation, and makes sure the agents who must see it
/// through sync take part in it.
fn record_service_route(conn: &Connection, chat_id: &str, route: &super::ServiceRoute) -> StoreResult<()> {
    let mut add =
        conn.prepare_cached("INSERT OR IGNORE INTO participants (uid, chat_id, read_seq) VALUES (?1, ?2, 0)")?;
    if let Some(agent) = route.agent_uid {
        conn.prepare_cached("UPDATE conversations SET handler_uid = ?2 WHERE chat_id = ?1 AND handler_uid IS NOT ?2")?
            .execute(params![chat_id, agent])?;
        add.execute(params![agent, chat_id])?;
    }
    for agent in &route.all_agents {
        add.execute(params![agent, chat_id])?;
    }
    Ok(())
}

fn find_by_client_id(conn: &Connection, from_uid: u64, msg_id: &str) -> StoreResult<Option<StoredMessage>> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE from_uid = ?1 AND msg_id = ?2");
    Ok(conn.prepare_cached(&sql)?.query_row(params![from_uid, msg_id], message_from_row).optional()?)
}

fn max_message_id(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |row| row.get(0))?)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// Errors are answered to many waiters; keep the text.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, oneshot};

    const SETTINGS: WriterSettings = WriterSettings { durable: true, sync: crate::config::SyncMode::Normal };

    fn message(chat_id: &str, to_uid: u64) -> Command {
        let (reply, _) = oneshot::channel();
        Command::Message(Box::new(NewMessage {
            kind: Kind::Single,
            chat_id: Arc::from(chat_id),
            from_uid: 1,
            to_uid: Some(to_uid),
            msg_id: None,
            msg_type: "text".into(),
            body: RawValue::from_string("\"hi\"".to_string()).unwrap(),
            service: None,
            origin: Origin::Http(reply),
        }))
    }

    fn seqs(deliveries: &mut mpsc::UnboundedReceiver<Vec<Delivery>>) -> Vec<i64> {
        let batch = deliveries.try_recv().unwrap();
        batch
            .into_iter()
            .map(|d| match d {
                Delivery::Committed(c) => c.message.seq,
                Delivery::Refused { error, .. } => panic!("refused: {error}"),
            })
            .collect()
    }

    #[test]
    fn the_seq_cache_is_bounded_and_seqs_continue_after_it_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::Store::prepare(&dir.path().join("w.db")).unwrap();
        let (tx, mut deliveries) = mpsc::unbounded_channel();
        let mut writer = Writer::new(conn, SETTINGS, tx, Arc::new(Metrics::new()), Arc::default()).unwrap();
        writer.seq_cache_limit = 2;

        let mut batch = vec![message("1_1_2", 2), message("1_1_3", 3), message("1_1_4", 4)];
        writer.run_batch(&mut batch);
        assert_eq!(seqs(&mut deliveries), vec![1, 1, 1]);
        assert!(writer.last_seq.is_empty(), "three conversations exceed a limit of two");

        let mut batch = vec![message("1_1_2", 2), message("1_1_2", 2), message("1_1_4", 4)];
        writer.run_batch(&mut batch);
        assert_eq!(seqs(&mut deliveries), vec![2, 3, 2]);
        assert_eq!(writer.last_seq.len(), 2);
    }

    #[test]
    fn without_the_store_messages_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::Store::prepare(&dir.path().join("w.db")).unwrap();
        // A conversation row that exists anyway, as a room's does.
        conn.execute("INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES ('1_1_2', 1, 0, 0)", [])
            .unwrap();
        let (tx, mut deliveries) = mpsc::unbounded_channel();
        let settings = WriterSettings { durable: false, ..SETTINGS };
        let mut writer = Writer::new(conn, settings, tx, Arc::new(Metrics::new()), Arc::default()).unwrap();

        let mut batch = vec![message("1_1_2", 2), message("1_1_2", 2), message("1_1_3", 3)];
        writer.run_batch(&mut batch);
        assert_eq!(seqs(&mut deliveries), vec![1, 2, 1]);
        assert_eq!(writer.wal_frames.load(Ordering::Relaxed), 0, "a commit wrote WAL frames");
        let stored: i64 = writer
            .conn
            .query_row("SELECT last_seq FROM conversations WHERE chat_id = '1_1_2'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
    }

    #[test]
    fn the_wal_starts_over_under_sustained_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = crate::store::Store::prepare(&path).unwrap();
        let (tx, mut deliveries) = mpsc::unbounded_channel();
        let mut writer = Writer::new(conn, SETTINGS, tx, Arc::new(Metrics::new()), Arc::default()).unwrap();
        writer.checkpoint_frames = 64;

        // Back-to-back batches, each touching 50 conversations, and no checkpoint thread: the
        // writer's own checkpoints at four thresholds are all there is.
        for round in 0..100 {
            let mut batch: Vec<Command> = (0..50).map(|peer| message(&format!("1_1_{}", peer + 2), peer + 2)).collect();
            writer.run_batch(&mut batch);
            assert_eq!(seqs(&mut deliveries).len(), 50, "round {round}");
        }
        // The WAL file keeps its high-water mark: every round's frames, had it never restarted.
        let frame = 4096 + 24;
        let wal_bytes = std::fs::metadata(dir.path().join("w.db-wal")).unwrap().len();
        assert!(wal_bytes < 512 * frame, "WAL grew to {wal_bytes} bytes");
    }

    #[test]
    fn the_writer_finishes_checkpoints_the_thread_has_mostly_done() {
        // Below the threshold: never.
        assert!(!wants_checkpoint(4095, 4095, 4096));
        // Past it, once the thread has copied all but an eighth.
        assert!(!wants_checkpoint(4096, 0, 4096));
        assert!(!wants_checkpoint(8000, 7000, 4096));
        assert!(wants_checkpoint(8000, 7500, 4096));
        assert!(wants_checkpoint(4096, 4096, 4096));
        // A stale count from before the WAL started over is past the frames: nothing is left.
        assert!(wants_checkpoint(5000, 6000, 4096));
        // At four thresholds, whatever the thread has done.
        assert!(wants_checkpoint(16384, 0, 4096));
    }
}
