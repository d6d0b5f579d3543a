//! The writer thread: takes every queued command, runs them all in one transaction, commits
//! once (group commit), then answers and delivers each in order. Each command runs in a
//! savepoint of its own, so one that fails takes nothing else with it; a transaction SQLite
//! rolls back by itself (or a failed commit) is run again without what failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::queries::{MESSAGE_COLUMNS, message_from_row};
use super::{
    Command, Committed, Job, JobDone, Outcome, OutcomeSender, StorageHealth, StoreError, StoreResult, WriterSettings,
};
use crate::domain::{Kind, NewMessage, StoredMessage};
use crate::metrics::Metrics;

/// The writer's page cache, in KiB as SQLite's negative cache_size wants it: the indexes'
/// hot pages stay in memory instead of being read back for every batch.
const WRITER_CACHE_KIB: i64 = -16_384;
/// Most commands in one transaction; bounds the latency a batch adds to its first message.
const MAX_BATCH: usize = 4096;
/// Whole-batch transactions one batch may take. When SQLite rolls a transaction back by itself
/// (disk full, I/O error, a trigger's RAISE(ROLLBACK)) or the commit fails, the command it
/// failed on is refused and the rest run again in a fresh transaction; past this many tries,
/// the rest run one transaction each, so that each failure is refused alone (and the work
/// stays linear in the batch).
const ATTEMPTS: usize = 3;
/// Conversations whose last seq the writer keeps in memory (~100 bytes each). Past this, the
/// cache is emptied after a commit and refills from the `conversations` table.
const SEQ_CACHE_LIMIT: usize = 200_000;
/// WAL frames (~4 KiB each) past which the writer finishes a checkpoint itself, between
/// batches. The checkpoint thread's passive checkpoints never catch up with a writer that
/// keeps appending, and SQLite starts the WAL over only once every frame has been copied back:
/// without this, under sustained load the WAL grew by ~75 MB/s (~25 MB/s at 2,000 msg/s), and
/// every frame write extended the file. See `wants_checkpoint`.
const CHECKPOINT_FRAMES: u32 = 4096;

pub(super) struct Writer {
    conn: Connection,
    /// False only for benchmarks: messages get ids and seqs but are not written.
    durable: bool,
    outcomes: OutcomeSender,
    metrics: Arc<Metrics>,
    /// last_seq of conversations written recently; the table row is updated once per batch.
    /// Between batches every entry equals the table's.
    last_seq: HashMap<Arc<str>, i64>,
    seq_cache_limit: usize,
    /// The id of the next message; between batches, one past the table's largest.
    next_id: i64,
    checkpoint_frames: u32,
    /// Frames in the WAL after the last commit, as SQLite's WAL hook reports them.
    wal_frames: Arc<AtomicU32>,
    /// Frames the checkpoint thread's last checkpoint had copied (checkpoint.rs).
    thread_copied: Arc<AtomicU32>,
    /// Set while the last batch met a storage failure (`/health`).
    health: Arc<StorageHealth>,
    /// The storage failure met in the current batch, if any.
    storage_error: Option<String>,
}

/// Counters that many messages of one batch move; written once before the commit.
#[derive(Default)]
struct BatchUpdates {
    last_seq: HashMap<Arc<str>, i64>,
    read_seq: HashMap<(u64, Arc<str>), i64>,
}

type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// One command of a batch on its way through one or more transactions.
enum Step {
    /// A message not written in the current transaction (yet, or any more).
    Pending(Box<NewMessage>),
    /// A message written in the current transaction (or found to be a resend): acked if it
    /// commits, run again if the transaction is lost.
    Written(Box<NewMessage>, StoredMessage, bool),
    /// A job not run yet.
    Job(Job),
    /// A job whose work is part of the current transaction. Jobs run once: if the
    /// transaction is lost, the job is answered with the error.
    Ran(Completion),
    /// A message refused for good, whatever becomes of the transaction.
    Refused(Box<NewMessage>, StoreError),
    /// A job settled for good: its completion and what to tell it.
    Done(Completion, StoreResult<()>),
}

/// A failed attempt at a batch's transaction.
struct Failed {
    error: StoreError,
    /// Whether what is left may run again in a fresh transaction (false when none could begin).
    retry: bool,
}

/// The seq cache entries an attempt touched, as they were before it (None: absent), so that
/// losing the transaction leaves the cache equal to the table again.
#[derive(Default)]
struct SeqUndo(HashMap<Arc<str>, Option<i64>>);

impl SeqUndo {
    fn note(&mut self, chat_id: &Arc<str>, before: Option<i64>) {
        self.0.entry(chat_id.clone()).or_insert(before);
    }

    fn restore(self, cache: &mut HashMap<Arc<str>, i64>) {
        for (chat_id, before) in self.0 {
            restore_seq(cache, chat_id, before);
        }
    }
}

fn restore_seq(cache: &mut HashMap<Arc<str>, i64>, chat_id: Arc<str>, before: Option<i64>) {
    match before {
        Some(seq) => cache.insert(chat_id, seq),
        None => cache.remove(&chat_id),
    };
}

impl Writer {
    pub(super) fn new(
        mut conn: Connection,
        settings: WriterSettings,
        outcomes: OutcomeSender,
        metrics: Arc<Metrics>,
        thread_copied: Arc<AtomicU32>,
        health: Arc<StorageHealth>,
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
            outcomes,
            metrics,
            last_seq,
            seq_cache_limit: SEQ_CACHE_LIMIT,
            next_id,
            checkpoint_frames: CHECKPOINT_FRAMES,
            wal_frames,
            thread_copied,
            health,
            storage_error: None,
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
        self.storage_error = None;
        let mut steps: Vec<Step> = batch
            .drain(..)
            .filter_map(|command| match command {
                Command::Message(message) => Some(Step::Pending(message)),
                Command::Job(job) => Some(Step::Job(job)),
                Command::Close => None,
            })
            .collect();
        let mut result = Ok(());
        for _ in 0..ATTEMPTS {
            (steps, result) = self.attempt(steps);
            if !matches!(&result, Err(Failed { retry: true, .. })) || !steps.iter().any(Step::is_open) {
                break;
            }
        }
        if matches!(&result, Err(Failed { retry: true, .. })) && steps.iter().any(Step::is_open) {
            (steps, result) = self.one_by_one(steps);
        }
        let committed = result.is_ok();
        if let Err(Failed { error, .. }) = result {
            tracing::error!("store batch of {size} failed: {error}");
            self.note_failure(&error);
            steps = steps.into_iter().map(|step| step.give_up(&error)).collect();
        } else if self.durable && self.last_seq.len() > self.seq_cache_limit {
            // Committed, so the table holds every seq the cache knew. (Without the store the
            // cache is the only record, and is kept.)
            self.last_seq.clear();
        }
        // Degraded until a batch meets no storage failure and commits.
        match self.storage_error.take() {
            Some(error) => self.health.set(Some(error)),
            None if committed => self.health.set(None),
            None => {}
        }
        self.metrics.store_batch_size.observe(size as f64);
        let committed_at = Instant::now();
        self.metrics.store_commit_seconds.observe(committed_at.duration_since(started).as_secs_f64());

        let mut outcomes = Vec::with_capacity(steps.len());
        for step in steps {
            match step {
                Step::Written(message, stored, duplicate) => {
                    if !duplicate {
                        self.metrics.messages_stored.inc();
                    }
                    let NewMessage { ticket, .. } = *message;
                    outcomes.push(Outcome::Committed(Committed { message: stored, duplicate, ticket, committed_at }));
                }
                Step::Refused(message, error) => {
                    let NewMessage { ticket, msg_id, .. } = *message;
                    outcomes.push(Outcome::Refused { ticket, msg_id, error });
                }
                Step::Ran(complete) => complete(Ok(())),
                Step::Done(complete, result) => complete(result),
                // `give_up` settled every open step of a failed batch.
                Step::Pending(_) | Step::Job(_) => {}
            }
        }
        // Bounded: when the delivery task falls behind, the writer waits here, and senders
        // wait on its queue.
        if !outcomes.is_empty() && self.outcomes.blocking_send(outcomes).is_err() {
            tracing::error!("the delivery task is gone: a batch was not delivered");
        }
        // After the batch is answered, so no ack waits for it; meanwhile the next batch queues.
        let frames = self.wal_frames.load(Ordering::Relaxed);
        if wants_checkpoint(frames, self.thread_copied.load(Ordering::Relaxed), self.checkpoint_frames) {
            self.checkpoint();
        }
    }

    /// Runs the open steps in one transaction and commits it. If the transaction is lost
    /// (rolled back by SQLite, or the commit failed), what it held is forgotten: written
    /// messages become pending again, jobs that ran are answered with the error, and the id
    /// counter and seq cache are put back as they were.
    fn attempt(&mut self, steps: Vec<Step>) -> (Vec<Step>, Result<(), Failed>) {
        if let Err(error) = self.control("BEGIN IMMEDIATE") {
            return (steps, Err(Failed { error, retry: false }));
        }
        let next_id = self.next_id;
        let mut undo = SeqUndo::default();
        let mut updates = BatchUpdates::default();
        let (steps, mut result) = self.run_steps(steps, &mut updates, &mut undo);
        if result.is_ok() {
            result = updates.flush(&self.conn);
        }
        if result.is_ok() {
            result = self.control("COMMIT");
        }
        let Err(error) = result else { return (steps, Ok(())) };
        let error = error.for_another();
        self.note_failure(&error);
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!("rollback: {e}");
        }
        self.next_id = next_id;
        undo.restore(&mut self.last_seq);
        let steps = steps.into_iter().map(|step| step.lose(&error)).collect();
        (steps, Err(Failed { error, retry: true }))
    }

    /// Runs each open step in a transaction of its own: after a batch kept losing its
    /// transaction, what fails takes nothing else with it. The result is the last one's.
    fn one_by_one(&mut self, steps: Vec<Step>) -> (Vec<Step>, Result<(), Failed>) {
        let mut done = Vec::with_capacity(steps.len());
        let mut last = Ok(());
        for step in steps {
            if !step.is_open() {
                done.push(step);
                continue;
            }
            // No transaction can begin (say, the database is locked past the busy timeout):
            // the rest are refused now rather than waiting that long each.
            if let Err(Failed { error, retry: false }) = &last {
                done.push(step.give_up(error));
                continue;
            }
            let (alone, result) = self.attempt(vec![step]);
            match &result {
                Err(Failed { error, .. }) => done.extend(alone.into_iter().map(|step| step.give_up(error))),
                Ok(()) => done.extend(alone),
            }
            last = result;
        }
        (done, last)
    }

    /// Runs every open step inside the current transaction, each in its own savepoint. Stops
    /// at an error that lost the transaction, and returns it; the steps after it stay open.
    fn run_steps(
        &mut self,
        steps: Vec<Step>,
        updates: &mut BatchUpdates,
        undo: &mut SeqUndo,
    ) -> (Vec<Step>, StoreResult<()>) {
        let mut done = Vec::with_capacity(steps.len());
        let mut steps = steps.into_iter();
        let mut result = Ok(());
        // Once a job's work is in the transaction, a message's failure must not take it along.
        let mut jobs_ran = false;
        for step in steps.by_ref() {
            let (step, outcome) = match step {
                Step::Pending(message) => {
                    let guarded = jobs_ran || self.needs_savepoint(&message);
                    self.write_message(message, guarded, updates, undo)
                }
                // A job may read what the messages before it changed.
                Step::Job(job) => match updates.flush(&self.conn) {
                    Ok(()) => {
                        jobs_ran = true;
                        self.run_job(job)
                    }
                    Err(e) => (Step::Job(job), Err(e)),
                },
                settled => (settled, Ok(())),
            };
            done.push(step);
            if outcome.is_err() {
                result = outcome;
                break;
            }
        }
        done.extend(steps);
        (done, result)
    }

    /// Whether writing `message` may take more than its one INSERT (a new conversation, a
    /// service route), and so needs a savepoint to be taken back alone. A savepoint costs about
    /// a µs of the writer per message (two more statements), which most messages can skip.
    fn needs_savepoint(&self, message: &NewMessage) -> bool {
        self.durable && (message.service.is_some() || !self.last_seq.contains_key(&message.chat_id))
    }

    /// Writes one message, in a savepoint when `guarded`. A message that fails is refused and
    /// leaves nothing behind; the result is an error when the whole transaction went with it
    /// (always, for a failure without a savepoint: the rest of the batch runs again).
    fn write_message(
        &mut self,
        message: Box<NewMessage>,
        guarded: bool,
        updates: &mut BatchUpdates,
        undo: &mut SeqUndo,
    ) -> (Step, StoreResult<()>) {
        let before = self.last_seq.get(&message.chat_id).copied();
        undo.note(&message.chat_id, before);
        match self.try_write(&message, guarded) {
            Ok((stored, false)) => {
                self.keep(&stored, updates);
                (Step::Written(message, stored, false), Ok(()))
            }
            Ok((original, true)) => {
                restore_seq(&mut self.last_seq, message.chat_id.clone(), before);
                (Step::Written(message, original, true), Ok(()))
            }
            Err(error) => self.refuse_message(message, guarded, before, error),
        }
    }

    /// SAVEPOINT, insert, RELEASE when `guarded`. A resend keeps nothing of its own (such as
    /// the conversation it named, if that was new): the original is the answer. Unguarded, the
    /// one INSERT is all there is, and a resend's failed INSERT was undone by SQLite itself.
    fn try_write(&mut self, message: &NewMessage, guarded: bool) -> StoreResult<(StoredMessage, bool)> {
        // Without the store nothing is written, so there is nothing to take back.
        if !self.durable || !guarded {
            return self.insert(&message_fields(message));
        }
        self.control("SAVEPOINT message")?;
        let (stored, duplicate) = self.insert(&message_fields(message))?;
        if duplicate {
            self.control("ROLLBACK TO message")?;
        }
        self.control("RELEASE message")?;
        Ok((stored, duplicate))
    }

    /// Takes back what a failed message wrote (its savepoint) and the seq it took. The result
    /// is an error when the transaction is gone (SQLite rolled it back, or the savepoint could
    /// not be rolled back to). Without a savepoint (a trigger may have written before failing)
    /// the transaction is rolled back here: the rest of the batch runs again without this one.
    fn refuse_message(
        &mut self,
        message: Box<NewMessage>,
        guarded: bool,
        before: Option<i64>,
        error: StoreError,
    ) -> (Step, StoreResult<()>) {
        restore_seq(&mut self.last_seq, message.chat_id.clone(), before);
        self.note_failure(&error);
        let transaction = if self.conn.is_autocommit() {
            Err(error.for_another())
        } else if self.durable && guarded {
            self.control("ROLLBACK TO message").and_then(|()| self.control("RELEASE message"))
        } else if self.durable {
            // `attempt` sees the transaction gone and runs the rest again.
            let rolled_back = self.control("ROLLBACK");
            Err(rolled_back.err().unwrap_or_else(|| error.for_another()))
        } else {
            Ok(())
        };
        (Step::Refused(message, error.for_another()), transaction)
    }

    /// Records a message that was written and released: its id and seq are taken for good
    /// once the transaction commits.
    fn keep(&mut self, message: &StoredMessage, updates: &mut BatchUpdates) {
        self.next_id += 1;
        self.last_seq.insert(message.chat_id.clone(), message.seq);
        // Without the store the seq cache is the only record: a message must not touch the
        // database at all, or `--no-store` would still pay for commits (rooms' rows exist).
        if self.durable {
            updates.last_seq.insert(message.chat_id.clone(), message.seq);
            // What a user sends, that user has read.
            updates.read_seq.insert((message.from_uid, message.chat_id.clone()), message.seq);
        }
    }

    /// Runs a job in a savepoint: kept if it succeeds, rolled back alone if it fails. The
    /// result is an error when the transaction is gone.
    fn run_job(&mut self, job: Job) -> (Step, StoreResult<()>) {
        if let Err(error) = self.control("SAVEPOINT job") {
            self.note_failure(&error);
            let JobDone { complete, .. } = job(Err(error.for_another()));
            let transaction = if self.conn.is_autocommit() { Err(error.for_another()) } else { Ok(()) };
            return (Step::Done(complete, Err(error)), transaction);
        }
        let JobDone { ok, unavailable, complete } = job(Ok(&self.conn));
        if unavailable.is_some() {
            self.storage_error = unavailable;
        }
        // A job that failed is answered with its own error (`SqliteStore::write`), whatever happens
        // to the transaction; one that succeeded, with the transaction's outcome.
        let end = if self.conn.is_autocommit() {
            Err(StoreError::Refused("the transaction was rolled back by a job".into()))
        } else if ok {
            self.control("RELEASE job")
        } else {
            self.control("ROLLBACK TO job").and_then(|()| self.control("RELEASE job"))
        };
        match end {
            Ok(()) if ok => (Step::Ran(complete), Ok(())),
            Ok(()) => (Step::Done(complete, Ok(())), Ok(())),
            Err(error) => {
                self.note_failure(&error);
                let answer = if ok { Err(error.for_another()) } else { Ok(()) };
                (Step::Done(complete, answer), Err(error))
            }
        }
    }

    /// Remembers a storage failure of this batch for `/health`.
    fn note_failure(&mut self, error: &StoreError) {
        if let Some(text) = error.unavailable() {
            self.storage_error = Some(text);
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

    /// BEGIN / COMMIT / SAVEPOINT through the statement cache: parsing them for every batch
    /// showed in profiles of small batches.
    fn control(&self, sql: &str) -> StoreResult<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Assigns id and seq and inserts one message; returns the original for a resent msg_id.
    /// The id and seq are taken only by `keep`, once the message's savepoint is released.
    fn insert(&mut self, m: &MessageFields<'_>) -> StoreResult<(StoredMessage, bool)> {
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
                // (A constraint error that rolled the transaction back is no resend: a trigger.)
                if is_unique_violation(&e)
                    && !self.conn.is_autocommit()
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

impl Step {
    /// Not settled yet: runs in the next transaction.
    fn is_open(&self) -> bool {
        matches!(self, Step::Pending(_) | Step::Job(_))
    }

    /// The transaction this step's work was in is gone.
    fn lose(self, error: &StoreError) -> Step {
        match self {
            Step::Written(message, _, _) => Step::Pending(message),
            Step::Ran(complete) => Step::Done(complete, Err(error.for_another())),
            other => other,
        }
    }

    /// No transaction will run this step if it is open: it is answered with `error`. (Steps
    /// written in a transaction that was lost were made open again by `lose`; any still
    /// written were committed, alone, by `one_by_one`.)
    fn give_up(self, error: &StoreError) -> Step {
        match self {
            Step::Pending(message) => Step::Refused(message, error.for_another()),
            Step::Job(job) => {
                let JobDone { complete, .. } = job(Err(error.for_another()));
                Step::Done(complete, Err(error.for_another()))
            }
            settled => settled,
        }
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

/// A UNIQUE index refused the row (the msg_id dedup). Only that: a trigger's RAISE is a
/// constraint failure too, and taking it for a resend would ack a message that is not stored.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Ticket;
    use tokio::sync::{mpsc, oneshot};

    type DeliveryReceiver = mpsc::Receiver<Vec<Outcome>>;

    fn delivery_channel() -> (OutcomeSender, DeliveryReceiver) {
        mpsc::channel(64)
    }

    const SETTINGS: WriterSettings = WriterSettings { durable: true, sync: crate::config::SyncMode::Normal };

    fn message(chat_id: &str, to_uid: u64) -> Command {
        Command::Message(Box::new(NewMessage {
            kind: Kind::Single,
            chat_id: Arc::from(chat_id),
            from_uid: 1,
            to_uid: Some(to_uid),
            msg_id: None,
            msg_type: "text".into(),
            body: RawValue::from_string("\"hi\"".to_string()).unwrap(),
            service: None,
            ticket: Ticket::new(()),
        }))
    }

    fn seqs(deliveries: &mut DeliveryReceiver) -> Vec<i64> {
        let batch = deliveries.try_recv().unwrap();
        batch
            .into_iter()
            .map(|d| match d {
                Outcome::Committed(c) => c.message.seq,
                Outcome::Refused { error, .. } => panic!("refused: {error}"),
            })
            .collect()
    }

    /// A 1:1 text message from uid 1 with its own msg_id, so outcomes can be matched to rows.
    fn text(chat_id: &str, to_uid: u64, msg_id: &str, text: &str) -> Command {
        Command::Message(Box::new(NewMessage {
            kind: Kind::Single,
            chat_id: Arc::from(chat_id),
            from_uid: 1,
            to_uid: Some(to_uid),
            msg_id: Some(msg_id.into()),
            msg_type: "text".into(),
            body: RawValue::from_string(serde_json::to_string(text).unwrap()).unwrap(),
            service: None,
            ticket: Ticket::new(()),
        }))
    }

    /// A customer's (uid 1) first message to shop 1, waiting for every agent in `agents`.
    fn to_shop(msg_id: &str, agents: Vec<u64>) -> Command {
        Command::Message(Box::new(NewMessage {
            kind: Kind::Service,
            chat_id: Arc::from("3_1_1"),
            from_uid: 1,
            to_uid: None,
            msg_id: Some(msg_id.into()),
            msg_type: "text".into(),
            body: RawValue::from_string("\"help\"".to_string()).unwrap(),
            service: Some(crate::store::ServiceRoute {
                shop_id: 1,
                customer_uid: 1,
                agent_uid: None,
                all_agents: agents,
                seen_handler: None,
            }),
            ticket: Ticket::new(()),
        }))
    }

    /// A job that stores `key` in `meta`, and where its answer arrives.
    fn job(key: &'static str) -> (Command, oneshot::Receiver<StoreResult<()>>) {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(|conn| {
                conn.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [key])?;
                Ok(())
            });
            JobDone {
                ok: result.is_ok(),
                unavailable: None,
                complete: Box::new(move |committed| {
                    let _ = tx.send(committed.and(result));
                }),
            }
        });
        (Command::Job(job), rx)
    }

    fn meta_keys(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT key FROM meta WHERE value = 'x' ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A message's msg_id and its (chat_id, seq), or its error's text.
    type Answer = (String, Result<(String, i64), String>);

    /// The answer each message of the last batch got: its msg_id and (chat_id, seq), or its
    /// error's text.
    fn answers(deliveries: &mut DeliveryReceiver) -> Vec<Answer> {
        deliveries
            .try_recv()
            .unwrap()
            .into_iter()
            .map(|d| match d {
                Outcome::Committed(c) => (
                    c.message.msg_id.as_deref().unwrap_or("").to_string(),
                    Ok((c.message.chat_id.to_string(), c.message.seq)),
                ),
                Outcome::Refused { msg_id, error, .. } => {
                    (msg_id.as_deref().unwrap_or("").to_string(), Err(error.to_string()))
                }
            })
            .collect()
    }

    fn acked(answers: &[Answer]) -> Vec<&str> {
        answers.iter().filter(|(_, a)| a.is_ok()).map(|(id, _)| id.as_str()).collect()
    }

    /// Checks the writer against its tables: exactly the `acked` msg_ids are stored, each
    /// conversation's seqs run 1..=n, `conversations.last_seq` and the seq cache equal the
    /// newest seq, and the next id is the one after the largest.
    fn assert_consistent(writer: &Writer, acked: &[&str]) {
        let conn = &writer.conn;
        let mut stored: Vec<String> = conn
            .prepare("SELECT msg_id FROM messages WHERE msg_id IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        stored.sort();
        let mut want: Vec<String> = acked.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(stored, want, "the stored messages are exactly the acked ones");
        let rows = chat_seqs(conn, "SELECT chat_id, seq FROM messages ORDER BY chat_id, seq");
        let mut newest: HashMap<String, i64> = HashMap::new();
        for (chat_id, seq) in rows {
            let last = newest.entry(chat_id.clone()).or_insert(0);
            assert_eq!(seq, *last + 1, "seqs of {chat_id} have a gap");
            *last = seq;
        }
        let conversations = chat_seqs(conn, "SELECT chat_id, last_seq FROM conversations");
        let conversations: HashMap<String, i64> = conversations.into_iter().collect();
        for (chat_id, seq) in &newest {
            assert_eq!(conversations.get(chat_id), Some(seq), "conversations.last_seq of {chat_id}");
        }
        for (chat_id, seq) in &writer.last_seq {
            assert_eq!(conversations.get(&**chat_id), Some(seq), "the seq cache of {chat_id} is not the table's");
        }
        let max_id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| r.get(0)).unwrap();
        assert_eq!(writer.next_id, max_id + 1, "next_id");
    }

    /// The (chat_id, seq) rows a query returns.
    fn chat_seqs(conn: &Connection, sql: &str) -> Vec<(String, i64)> {
        let mut statement = conn.prepare(sql).unwrap();
        statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// A trigger `fail` that runs `raise` (`RAISE(ABORT, …)`, `RAISE(ROLLBACK, …)`, …) at
    /// `when` (`AFTER INSERT ON messages WHEN …`): a real failure of SQLite's own making.
    fn fail_when(writer: &Writer, when: &str, raise: &str) {
        writer.conn.execute_batch(&format!("CREATE TRIGGER fail {when} BEGIN SELECT {raise}; END")).unwrap();
    }

    fn writer_on(dir: &tempfile::TempDir) -> (Writer, DeliveryReceiver) {
        let conn = crate::store::sqlite::open_writable(&dir.path().join("w.db")).unwrap();
        let (tx, deliveries) = delivery_channel();
        (Writer::new(conn, SETTINGS, tx, Arc::new(Metrics::new()), Arc::default(), Arc::default()).unwrap(), deliveries)
    }

    #[test]
    fn a_message_that_fails_alone_leaves_its_neighbours_and_the_seqs_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut deliveries) = writer_on(&dir);
        fail_when(&writer, "AFTER INSERT ON messages WHEN NEW.body = '\"fail\"'", "RAISE(ABORT, 'injected')");
        let mut batch = vec![
            text("1_1_2", 2, "a", "a"),
            text("1_1_2", 2, "f1", "fail"),
            text("1_1_2", 2, "b", "b"),
            text("1_1_3", 3, "f2", "fail"),
            text("1_1_3", 3, "c", "c"),
        ];
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(acked(&got), ["a", "b", "c"], "{got:?}");
        assert_eq!(got[2].1, Ok(("1_1_2".to_string(), 2)));
        assert_eq!(got[4].1, Ok(("1_1_3".to_string(), 1)));
        assert_consistent(&writer, &["a", "b", "c"]);

        let mut batch = vec![text("1_1_2", 2, "d", "d")];
        writer.run_batch(&mut batch);
        assert_eq!(answers(&mut deliveries)[0].1, Ok(("1_1_2".to_string(), 3)));
        assert_consistent(&writer, &["a", "b", "c", "d"]);
    }

    /// Messages of a known conversation skip their savepoint; one that fails after writing
    /// (RAISE(FAIL) keeps what its statement wrote) must still leave nothing behind, and a
    /// job that ran before it in the batch is not taken along.
    #[test]
    fn a_message_without_a_savepoint_that_fails_after_writing_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut deliveries) = writer_on(&dir);
        let mut batch = vec![text("1_1_2", 2, "a", "a")];
        writer.run_batch(&mut batch);
        assert_eq!(acked(&answers(&mut deliveries)), ["a"]);
        fail_when(&writer, "AFTER INSERT ON messages WHEN NEW.body = '\"fail\"'", "RAISE(FAIL, 'injected')");
        let Command::Message(known) = text("1_1_2", 2, "x", "x") else { unreachable!() };
        assert!(!writer.needs_savepoint(&known), "a known conversation goes without a savepoint");
        let mut batch = vec![text("1_1_2", 2, "f", "fail"), text("1_1_2", 2, "b", "b"), text("1_1_2", 2, "c", "c")];
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(acked(&got), ["b", "c"], "{got:?}");
        assert_eq!(got[2].1, Ok(("1_1_2".to_string(), 3)));
        assert_consistent(&writer, &["a", "b", "c"]);
    }

    #[test]
    fn a_failure_after_the_row_is_written_takes_the_row_back_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut deliveries) = writer_on(&dir);
        // Recording the agents who wait for a service conversation fails: after its row.
        fail_when(&writer, "BEFORE INSERT ON participants WHEN NEW.uid = 99", "RAISE(ABORT, 'injected')");
        let mut batch = vec![text("1_1_2", 2, "a", "a"), to_shop("s1", vec![99]), text("1_1_2", 2, "b", "b")];
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(acked(&got), ["a", "b"], "{got:?}");
        assert_consistent(&writer, &["a", "b"]);

        let mut batch = vec![text("1_1_2", 2, "c", "c"), to_shop("s2", vec![98])];
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(acked(&got), ["c", "s2"], "{got:?}");
        assert_eq!(got[1].1, Ok(("3_1_1".to_string(), 1)));
        assert_consistent(&writer, &["a", "b", "c", "s2"]);
    }

    #[test]
    fn a_transaction_rolled_back_mid_batch_is_retried_without_the_message_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut deliveries) = writer_on(&dir);
        fail_when(&writer, "BEFORE INSERT ON messages WHEN NEW.body = '\"fail\"'", "RAISE(ROLLBACK, 'injected')");
        let (job1, mut job1_done) = job("j1");
        let (job2, mut job2_done) = job("j2");
        let mut batch = vec![
            text("1_1_2", 2, "a", "a"),
            job1,
            text("1_1_3", 3, "b", "b"),
            text("1_1_2", 2, "f1", "fail"),
            text("1_1_2", 2, "c", "c"),
            text("1_1_4", 4, "f2", "fail"),
            job2,
            text("1_1_4", 4, "d", "d"),
        ];
        writer.run_batch(&mut batch);
        // Three transactions: lost at f1, lost at f2, committed. A job runs once: the one
        // whose work was lost is told so; the one after the failures is kept.
        assert!(job1_done.try_recv().unwrap().is_err(), "job 1 ran in the lost transaction");
        assert!(job2_done.try_recv().unwrap().is_ok(), "job 2 ran after the failure");
        assert_eq!(meta_keys(&writer.conn), ["j2"]);
        let got = answers(&mut deliveries);
        for (msg_id, answer) in &got {
            if msg_id.starts_with('f') {
                assert!(answer.as_ref().is_err_and(|e| e.contains("injected")), "{msg_id}: {answer:?}");
            }
        }
        let ok = acked(&got);
        assert_consistent(&writer, &ok);
        assert_eq!(ok, ["a", "b", "c", "d"], "{got:?}");

        let mut batch = vec![text("1_1_2", 2, "e", "e"), text("1_1_4", 4, "g", "g")];
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(got[0].1, Ok(("1_1_2".to_string(), 3)));
        assert_eq!(got[1].1, Ok(("1_1_4".to_string(), 2)));
        assert_consistent(&writer, &["a", "b", "c", "d", "e", "g"]);
    }

    #[test]
    fn a_batch_that_keeps_losing_its_transaction_refuses_only_what_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut deliveries) = writer_on(&dir);
        fail_when(&writer, "BEFORE INSERT ON messages WHEN NEW.body = '\"fail\"'", "RAISE(ROLLBACK, 'injected')");
        // More failures than whole-batch attempts: the rest run one transaction each.
        let mut batch: Vec<Command> = (0..12)
            .map(|i| {
                let body = if i % 2 == 1 { "fail" } else { "ok" };
                text(&format!("1_1_{}", 2 + i % 3), 2 + i % 3, &format!("m{i}"), body)
            })
            .collect();
        let (job, mut job_done) = job("j");
        batch.push(job);
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(acked(&got), ["m0", "m2", "m4", "m6", "m8", "m10"], "{got:?}");
        assert!(job_done.try_recv().unwrap().is_ok(), "the job ran alone");
        assert_eq!(meta_keys(&writer.conn), ["j"]);
        assert_consistent(&writer, &["m0", "m2", "m4", "m6", "m8", "m10"]);
    }

    #[test]
    fn a_full_database_refuses_honestly_and_serves_again_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut deliveries) = writer_on(&dir);
        let pages: i64 = writer.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        writer.conn.pragma_update(None, "max_page_count", pages + 8).unwrap();
        // Big bodies fill pages fast; several conversations, some of them new.
        let big = "x".repeat(1500);
        let mut batch: Vec<Command> =
            (0..60).map(|i| text(&format!("1_1_{}", 2 + i % 4), 2 + i % 4, &format!("m{i}"), &big)).collect();
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        let refused: Vec<&String> = got.iter().filter_map(|(_, a)| a.as_ref().err()).collect();
        assert!(!refused.is_empty(), "the database never filled up");
        assert!(refused.iter().all(|e| e.starts_with("storage unavailable: ") && e.contains("full")), "{refused:?}");
        assert!(writer.health.degraded().is_some_and(|e| e.contains("full")), "/health is not degraded");
        let mut ok: Vec<String> = acked(&got).iter().map(|s| s.to_string()).collect();
        assert_consistent(&writer, &ok.iter().map(String::as_str).collect::<Vec<_>>());

        writer.conn.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        let mut batch: Vec<Command> =
            (0..8).map(|i| text(&format!("1_1_{}", 2 + i % 4), 2 + i % 4, &format!("n{i}"), "y")).collect();
        writer.run_batch(&mut batch);
        let got = answers(&mut deliveries);
        assert_eq!(acked(&got).len(), 8, "{got:?}");
        assert_eq!(writer.health.degraded(), None, "a commit ends the degraded state");
        ok.extend(acked(&got).iter().map(|s| s.to_string()));
        assert_consistent(&writer, &ok.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_delivery_channel_makes_the_writer_wait_and_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::sqlite::open_writable(&dir.path().join("w.db")).unwrap();
        let (tx, mut deliveries) = mpsc::channel(1);
        tx.try_send(Vec::new()).unwrap();
        let mut writer =
            Writer::new(conn, SETTINGS, tx, Arc::new(Metrics::new()), Arc::default(), Arc::default()).unwrap();
        let batch = std::thread::spawn(move || {
            writer.run_batch(&mut vec![text("1_1_2", 2, "a", "a")]);
            writer
        });
        // The channel is full until the delivery task takes the batch before it.
        assert!(deliveries.blocking_recv().unwrap().is_empty());
        let got = deliveries.blocking_recv().expect("the writer's batch");
        assert_eq!(got.len(), 1);
        let writer = batch.join().unwrap();
        assert_consistent(&writer, &["a"]);
    }

    #[test]
    fn the_seq_cache_is_bounded_and_seqs_continue_after_it_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::sqlite::open_writable(&dir.path().join("w.db")).unwrap();
        let (tx, mut deliveries) = delivery_channel();
        let mut writer =
            Writer::new(conn, SETTINGS, tx, Arc::new(Metrics::new()), Arc::default(), Arc::default()).unwrap();
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
        let conn = crate::store::sqlite::open_writable(&dir.path().join("w.db")).unwrap();
        // A conversation row that exists anyway, as a room's does.
        conn.execute("INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES ('1_1_2', 1, 0, 0)", [])
            .unwrap();
        let (tx, mut deliveries) = delivery_channel();
        let settings = WriterSettings { durable: false, ..SETTINGS };
        let mut writer =
            Writer::new(conn, settings, tx, Arc::new(Metrics::new()), Arc::default(), Arc::default()).unwrap();

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
        let conn = crate::store::sqlite::open_writable(&path).unwrap();
        let (tx, mut deliveries) = delivery_channel();
        let mut writer =
            Writer::new(conn, SETTINGS, tx, Arc::new(Metrics::new()), Arc::default(), Arc::default()).unwrap();
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
