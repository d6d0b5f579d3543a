//! The writer task: takes every queued message, commits them all in one transaction (group
//! commit) with a handful of array statements sent back to back (pipelined), then emits each
//! outcome in order. Seqs are taken inside that transaction from the locked conversation rows
//! (in chat_id order, so two nodes never deadlock), so they stay gap-free whichever node
//! commits; a msg_id is claimed before any seq is taken, so a resend never burns one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, PoolError, Transaction};
use futures_util::try_join;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::PgCommand;
use super::reads::{MESSAGE_COLUMNS, message_from_row};
use crate::domain::{Kind, NewMessage, ServiceRoute, StoredMessage, Ticket};
use crate::metrics::Metrics;
use crate::store::{Committed, Outcome, OutcomeSender, StorageHealth, StoreError, StoreResult};

/// Most messages in one transaction; bounds the latency a batch adds to its first message.
const MAX_BATCH: usize = 4096;
/// Transactions one batch may take when PostgreSQL aborts it for a deadlock or a
/// serialization failure (which running it again resolves).
const ATTEMPTS: usize = 3;
/// How long the writer idles before it checks that the database answers (`probe`).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may wait for the database (messages queued meanwhile wait as long).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims msg_ids; returns the ones this transaction claimed (the rest were sent before).
const CLAIM_SQL: &str = "INSERT INTO client_ids (from_uid, msg_id)
    SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING RETURNING from_uid, msg_id";
/// Creates the conversations that do not exist yet, and the participants of those it created.
const CREATE_SQL: &str = "WITH created AS (
        INSERT INTO conversations (chat_id, kind, shop_id, customer_uid, created_at, updated_at)
        SELECT chat_id, kind, shop_id, customer_uid, $5::bigint, $5::bigint
        FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS c(chat_id, kind, shop_id, customer_uid)
        ORDER BY chat_id
        ON CONFLICT (chat_id) DO NOTHING RETURNING chat_id)
    INSERT INTO participants (uid, chat_id)
    SELECT p.uid, p.chat_id FROM unnest($6::bigint[], $7::text[]) AS p(uid, chat_id)
    JOIN created c ON c.chat_id = p.chat_id
    ON CONFLICT DO NOTHING";
/// Locks the batch's conversations, always in chat_id order, and reads their newest seq and
/// handling agent.
const LOCK_SQL: &str = "SELECT chat_id, last_seq, handler_uid FROM conversations WHERE chat_id = ANY($1::text[]) ORDER BY chat_id FOR UPDATE";
const IDS_SQL: &str = "SELECT nextval('messages_id_seq') FROM generate_series(1, $1::bigint)";
const INSERT_SQL: &str =
    "INSERT INTO messages (id, chat_id, seq, from_uid, to_uid, msg_id, msg_type, body, ts, shop_id, agent_uid)
    SELECT id, chat_id, seq, from_uid, to_uid, msg_id, msg_type, body, $9::bigint, shop_id, agent_uid
    FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
        $8::text[], $10::bigint[], $11::bigint[])
        AS m(id, chat_id, seq, from_uid, to_uid, msg_id, msg_type, body, shop_id, agent_uid)";
/// Agents who must see a service conversation through sync take part in it.
const JOIN_SQL: &str =
    "INSERT INTO participants (uid, chat_id) SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING";
const HANDLER_SQL: &str = "UPDATE conversations c SET handler_uid = u.agent
    FROM unnest($1::text[], $2::bigint[]) AS u(chat_id, agent)
    WHERE c.chat_id = u.chat_id AND c.handler_uid IS DISTINCT FROM u.agent";
const LAST_SEQ_SQL: &str = "UPDATE conversations c SET last_seq = u.seq, updated_at = $3::bigint
    FROM unnest($1::text[], $2::bigint[]) AS u(chat_id, seq) WHERE c.chat_id = u.chat_id";
/// What a user sends, that user has read.
const READ_SQL: &str = "UPDATE participants p SET read_seq = GREATEST(p.read_seq, u.seq)
    FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(uid, chat_id, seq)
    WHERE p.uid = u.uid AND p.chat_id = u.chat_id";

pub(super) struct Writer {
    pool: Pool,
    outcomes: OutcomeSender,
    metrics: Arc<Metrics>,
    health: Arc<StorageHealth>,
}

/// A message of the batch without its ticket (which is not `Sync`, and stays with the
/// writer loop while the batch commits).
struct Entry {
    kind: Kind,
    chat_id: Arc<str>,
    from_uid: u64,
    to_uid: Option<u64>,
    msg_id: Option<Box<str>>,
    msg_type: Box<str>,
    body: Box<serde_json::value::RawValue>,
    service: Option<ServiceRoute>,
}

impl Entry {
    fn split(message: NewMessage) -> (Entry, Ticket) {
        let NewMessage { kind, chat_id, from_uid, to_uid, msg_id, msg_type, body, service, ticket } = message;
        (Entry { kind, chat_id, from_uid, to_uid, msg_id, msg_type, body, service }, ticket)
    }
}

/// What one message of a batch is answered with: the stored message (the original for a
/// resend) and whether it was a resend, or why it was not stored.
type Answer = StoreResult<(StoredMessage, bool)>;

/// A failed transaction: why, and whether running it again may succeed.
struct Failed {
    error: StoreError,
    retry: bool,
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        Failed { retry: super::errors::is_retryable(&e), error: e.into() }
    }
}

impl From<PoolError> for Failed {
    fn from(e: PoolError) -> Failed {
        Failed { retry: false, error: e.into() }
    }
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed { retry: false, error }
    }
}

impl Writer {
    pub(super) fn new(
        pool: Pool,
        outcomes: OutcomeSender,
        metrics: Arc<Metrics>,
        health: Arc<StorageHealth>,
    ) -> Writer {
        Writer { pool, outcomes, metrics, health }
    }

    pub(super) async fn run(self, mut commands: mpsc::Receiver<PgCommand>) {
        let mut batch: Vec<NewMessage> = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        while !closing {
            let first = match tokio::time::timeout(PROBE_EVERY, commands.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => break,
                Err(_idle) => {
                    self.probe().await;
                    continue;
                }
            };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    PgCommand::Close => {
                        closing = true;
                        break;
                    }
                    PgCommand::Message(message) => batch.push(*message),
                }
                if batch.len() < MAX_BATCH {
                    next = commands.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.run_batch(&mut batch).await;
            }
        }
        commands.close();
        tracing::info!("store writer stopped");
    }

    /// While idle: whether the database answers, so that `/health` tells it is away (or back)
    /// even when nothing is written.
    async fn probe(&self) {
        let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
            let client = self.pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<(), StoreError>(())
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("PostgreSQL: no answer to a probe".into())));
        match answer {
            Ok(()) => self.health.set(None),
            Err(e) => {
                if let Some(text) = e.unavailable() {
                    self.health.set(Some(text));
                }
            }
        }
    }

    /// Commits a batch and emits its outcomes in order.
    async fn run_batch(&self, batch: &mut Vec<NewMessage>) {
        let started = Instant::now();
        let size = batch.len();
        let (entries, tickets): (Vec<Entry>, Vec<Ticket>) = batch.drain(..).map(Entry::split).unzip();
        let answers = self.commit(&entries).await;
        // Degraded while the database is away; a commit ends that.
        if let Some(text) = answers.iter().find_map(|a| a.as_ref().err().and_then(StoreError::unavailable)) {
            self.health.set(Some(text));
        } else if answers.iter().any(Result::is_ok) {
            self.health.set(None);
        }
        self.metrics.store_batch_size.observe(size as f64);
        let committed_at = Instant::now();
        self.metrics.store_commit_seconds.observe(committed_at.duration_since(started).as_secs_f64());
        let mut outcomes = Vec::with_capacity(size);
        for ((entry, ticket), answer) in entries.into_iter().zip(tickets).zip(answers) {
            let msg_id = entry.msg_id;
            outcomes.push(match answer {
                Ok((message, duplicate)) => {
                    if !duplicate {
                        self.metrics.messages_stored.inc();
                    }
                    Outcome::Committed(Committed { message, duplicate, ticket, committed_at })
                }
                Err(error) => Outcome::Refused { ticket, msg_id, error },
            });
        }
        // Bounded: when the delivery task falls behind, the writer waits here, and senders
        // wait on its queue.
        if self.outcomes.send(outcomes).await.is_err() {
            tracing::error!("the delivery task is gone: a batch was not delivered");
        }
    }

    /// One answer per message. A batch PostgreSQL refuses for a reason of the batch's own
    /// (not the database being away) is run again one message per transaction, so that only
    /// what fails is refused.
    async fn commit(&self, messages: &[Entry]) -> Vec<Answer> {
        match self.commit_retrying(messages).await {
            Ok(answers) => answers,
            Err(error) if error.unavailable().is_some() || messages.len() == 1 => {
                tracing::error!("store batch of {} failed: {error}", messages.len());
                messages.iter().map(|_| Err(error.for_another())).collect()
            }
            Err(error) => {
                tracing::warn!("store batch of {} failed ({error}): committing one by one", messages.len());
                let mut answers = Vec::with_capacity(messages.len());
                for one in messages.chunks(1) {
                    match self.commit_retrying(one).await {
                        Ok(mut answer) => answers.append(&mut answer),
                        Err(error) => answers.push(Err(error)),
                    }
                }
                answers
            }
        }
    }

    async fn commit_retrying(&self, messages: &[Entry]) -> StoreResult<Vec<Answer>> {
        let mut attempt = 1;
        loop {
            match self.commit_once(messages).await {
                Ok(answers) => return Ok(answers),
                Err(Failed { error, retry: true }) if attempt < ATTEMPTS => {
                    tracing::info!("store batch retried: {error}");
                    attempt += 1;
                }
                Err(Failed { error, .. }) => return Err(error),
            }
        }
    }

    /// One transaction for the whole batch.
    async fn commit_once(&self, messages: &[Entry]) -> Result<Vec<Answer>, Failed> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let now = crate::now_ms();
        let resends = Resends::find(&tx, messages).await?;
        let fresh: Vec<usize> = (0..messages.len()).filter(|&i| resends.is_fresh(i, &messages[i])).collect();
        let mut stored: Vec<Option<StoredMessage>> = vec![None; messages.len()];
        if !fresh.is_empty() {
            let numbered = number(&tx, messages, &fresh, now).await?;
            write(&tx, messages, &fresh, &numbered, now).await?;
            for (i, message) in fresh.iter().zip(numbered) {
                stored[*i] = Some(message);
            }
        }
        tx.commit().await?;
        Ok((0..messages.len()).map(|i| resends.answer(i, &messages[i], &stored)).collect())
    }
}

/// The batch's msg_ids: which were claimed before (resends, with their originals), and which
/// messages repeat one sent earlier in the same batch.
struct Resends {
    /// For each message, the index of the earlier message of the batch it repeats.
    copy_of: Vec<Option<usize>>,
    /// (from_uid, msg_id) claimed before this batch, and the original message found for each.
    claimed_before: HashSet<(u64, String)>,
    originals: HashMap<(u64, String), StoredMessage>,
}

impl Resends {
    /// Claims the batch's msg_ids (sorted, so two nodes claim in the same order) and reads the
    /// originals of those claimed before. A claim another transaction holds makes this wait
    /// for it: a resend to another node is found once the first commits.
    async fn find(tx: &Transaction<'_>, messages: &[Entry]) -> Result<Resends, Failed> {
        let mut copy_of = vec![None; messages.len()];
        let mut first_of: HashMap<(u64, &str), usize> = HashMap::new();
        let mut claims: Vec<(i64, &str)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let Some(msg_id) = m.msg_id.as_deref() else { continue };
            match first_of.entry((m.from_uid, msg_id)) {
                std::collections::hash_map::Entry::Occupied(first) => copy_of[i] = Some(*first.get()),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                    claims.push((m.from_uid as i64, msg_id));
                }
            }
        }
        let mut resends = Resends { copy_of, claimed_before: HashSet::new(), originals: HashMap::new() };
        if claims.is_empty() {
            return Ok(resends);
        }
        claims.sort_unstable();
        let (uids, ids): (Vec<i64>, Vec<&str>) = claims.iter().copied().unzip();
        let claim = tx.prepare_cached(CLAIM_SQL).await?;
        let claimed: HashSet<(i64, String)> = tx
            .query(&claim, &[&uids, &ids])
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        let before: Vec<(i64, &str)> =
            claims.into_iter().filter(|(uid, id)| !claimed.contains(&(*uid, (*id).to_owned()))).collect();
        if before.is_empty() {
            return Ok(resends);
        }
        let (uids, ids): (Vec<i64>, Vec<&str>) = before.iter().copied().unzip();
        let find = tx
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN unnest($1::bigint[], $2::text[]) AS u(from_uid, msg_id)
                 ON m.from_uid = u.from_uid AND m.msg_id = u.msg_id"
            ))
            .await?;
        for row in tx.query(&find, &[&uids, &ids]).await? {
            let original = message_from_row(&row)?;
            let key = (original.from_uid, original.msg_id.as_deref().unwrap_or_default().to_owned());
            resends.originals.insert(key, original);
        }
        resends.claimed_before = before.into_iter().map(|(uid, id)| (uid as u64, id.to_owned())).collect();
        Ok(resends)
    }

    /// Whether message `i` is stored as a new message (not a resend of any kind).
    fn is_fresh(&self, i: usize, m: &Entry) -> bool {
        self.copy_of[i].is_none() && !self.was_claimed(m)
    }

    fn was_claimed(&self, m: &Entry) -> bool {
        m.msg_id.as_deref().is_some_and(|id| self.claimed_before.contains(&(m.from_uid, id.to_owned())))
    }

    /// What message `i` is answered with, once the batch has committed.
    fn answer(&self, i: usize, m: &Entry, stored: &[Option<StoredMessage>]) -> Answer {
        if let Some(message) = &stored[i] {
            return Ok((message.clone(), false));
        }
        if let Some(first) = self.copy_of[i]
            && let Some(message) = &stored[first]
        {
            return Ok((message.clone(), true));
        }
        let key = (m.from_uid, m.msg_id.as_deref().unwrap_or_default().to_owned());
        match self.originals.get(&key) {
            Some(original) => Ok((original.clone(), true)),
            // The claim commits with its message, so this is not expected.
            None => Err(StoreError::Refused("the original of this resent msg_id was not found".into())),
        }
    }
}

/// Creates the missing conversations, locks all of the batch's, and gives each fresh message
/// its id and the next seq of its conversation.
async fn number(
    tx: &Transaction<'_>,
    messages: &[Entry],
    fresh: &[usize],
    now: i64,
) -> Result<Vec<StoredMessage>, Failed> {
    // The first message of each conversation describes it, should it be new.
    let mut chats: BTreeMap<&str, &Entry> = BTreeMap::new();
    for &i in fresh {
        chats.entry(&messages[i].chat_id).or_insert(&messages[i]);
    }
    let mut chat_ids = Vec::with_capacity(chats.len());
    let (mut kinds, mut shops, mut customers) = (Vec::new(), Vec::new(), Vec::new());
    let (mut member_uids, mut member_chats): (Vec<i64>, Vec<&str>) = (Vec::new(), Vec::new());
    for (chat_id, m) in &chats {
        let route = m.service.as_ref();
        chat_ids.push(*chat_id);
        kinds.push(m.kind as i64);
        shops.push(route.map(|r| r.shop_id as i64));
        customers.push(route.map(|r| r.customer_uid as i64));
        let members: Vec<u64> = match m.kind {
            Kind::Single => std::iter::once(m.from_uid).chain(m.to_uid).collect(),
            Kind::Service => route.map(|r| r.customer_uid).into_iter().collect(),
            Kind::Group | Kind::System => Vec::new(),
        };
        for uid in members {
            member_uids.push(uid as i64);
            member_chats.push(*chat_id);
        }
    }
    let (create, lock, ids) =
        try_join!(tx.prepare_cached(CREATE_SQL), tx.prepare_cached(LOCK_SQL), tx.prepare_cached(IDS_SQL))?;
    let count = fresh.len() as i64;
    let create_params: [&(dyn ToSql + Sync); 7] =
        [&chat_ids, &kinds, &shops, &customers, &now, &member_uids, &member_chats];
    // Sent back to back: the server runs them in order.
    let (lock_params, ids_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) = ([&chat_ids], [&count]);
    let (_, locked, id_rows) =
        try_join!(tx.execute(&create, &create_params), tx.query(&lock, &lock_params), tx.query(&ids, &ids_params))?;
    let mut last_seq: HashMap<String, i64> = HashMap::with_capacity(locked.len());
    let mut handlers: HashMap<String, Option<i64>> = HashMap::new();
    for row in &locked {
        let chat_id: String = row.try_get(0)?;
        handlers.insert(chat_id.clone(), row.try_get(2)?);
        last_seq.insert(chat_id, row.try_get(1)?);
    }
    let mut ids: Vec<i64> = id_rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
    ids.sort_unstable();
    let mut numbered = Vec::with_capacity(fresh.len());
    for (&i, id) in fresh.iter().zip(ids) {
        let m = &messages[i];
        let Some(seq) = last_seq.get_mut(&*m.chat_id) else {
            return Err(StoreError::Backend(format!("conversation {} vanished while committing", m.chat_id)).into());
        };
        *seq += 1;
        let (to_uid, agent_uid) = settle_handler(m, handlers.get_mut(&*m.chat_id));
        numbered.push(StoredMessage {
            id,
            kind: m.kind,
            chat_id: m.chat_id.clone(),
            seq: *seq,
            from_uid: m.from_uid,
            to_uid,
            msg_id: m.msg_id.clone(),
            msg_type: m.msg_type.clone(),
            body: m.body.clone(),
            ts: now,
            shop_id: m.service.as_ref().map(|s| s.shop_id),
            agent_uid,
        });
    }
    if numbered.len() != fresh.len() {
        return Err(StoreError::Backend("PostgreSQL gave fewer message ids than asked".into()).into());
    }
    Ok(numbered)
}

/// The recipient and agent of a message, decided under the conversation's row lock: a
/// customer's message keeps the handler the database holds when another node set it after the
/// routing node looked (`seen_handler`), so that two nodes never give one conversation two
/// agents; otherwise its chosen agent becomes the handler. `handler` is the conversation's,
/// kept up to date through the batch.
fn settle_handler(m: &Entry, handler: Option<&mut Option<i64>>) -> (Option<u64>, Option<u64>) {
    let Some(route) = m.service.as_ref() else { return (m.to_uid, None) };
    let (Some(chosen), Some(handler)) = (route.agent_uid, handler) else { return (m.to_uid, route.agent_uid) };
    let stored = handler.map(|h| h as u64);
    if m.from_uid == route.customer_uid
        && let Some(stored) = stored.filter(|&h| h != chosen && Some(h) != route.seen_handler)
    {
        return (Some(stored), Some(stored));
    }
    *handler = Some(chosen as i64);
    (m.to_uid, Some(chosen))
}

/// Writes the numbered messages and what they move (newest seqs, the senders' read positions,
/// service routing), as five statements sent back to back.
async fn write(
    tx: &Transaction<'_>,
    messages: &[Entry],
    fresh: &[usize],
    numbered: &[StoredMessage],
    now: i64,
) -> Result<(), Failed> {
    let n = numbered.len();
    let (mut ids, mut chats, mut seqs, mut froms, mut tos) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut msg_ids, mut types, mut bodies, mut shops, mut agents) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut read: BTreeMap<(i64, &str), i64> = BTreeMap::new();
    let mut handler: BTreeMap<&str, i64> = BTreeMap::new();
    let mut joining: BTreeSet<(i64, &str)> = BTreeSet::new();
    for (&i, m) in fresh.iter().zip(numbered) {
        ids.push(m.id);
        chats.push(&*m.chat_id);
        seqs.push(m.seq);
        froms.push(m.from_uid as i64);
        tos.push(m.to_uid.map(|u| u as i64));
        msg_ids.push(m.msg_id.as_deref());
        types.push(&*m.msg_type);
        bodies.push(m.body.get());
        shops.push(m.shop_id.map(|s| s as i64));
        agents.push(m.agent_uid.map(|a| a as i64));
        newest.insert(&m.chat_id, m.seq);
        read.insert((m.from_uid as i64, &m.chat_id), m.seq);
        if let Some(route) = &messages[i].service {
            // As settled under the lock (`settle_handler`).
            if let Some(agent) = m.agent_uid {
                handler.insert(&m.chat_id, agent as i64);
                joining.insert((agent as i64, &m.chat_id));
            }
            for agent in &route.all_agents {
                joining.insert((*agent as i64, &m.chat_id));
            }
        }
    }
    let (newest_chats, newest_seqs): (Vec<&str>, Vec<i64>) = newest.into_iter().unzip();
    let (mut read_uids, mut read_chats, mut read_seqs) = (Vec::new(), Vec::new(), Vec::new());
    for ((uid, chat), seq) in read {
        read_uids.push(uid);
        read_chats.push(chat);
        read_seqs.push(seq);
    }
    let (handler_chats, handler_uids): (Vec<&str>, Vec<i64>) = handler.into_iter().unzip();
    let (join_uids, join_chats): (Vec<i64>, Vec<&str>) = joining.into_iter().unzip();
    let (insert, join, set_handler, set_last, set_read) = try_join!(
        tx.prepare_cached(INSERT_SQL),
        tx.prepare_cached(JOIN_SQL),
        tx.prepare_cached(HANDLER_SQL),
        tx.prepare_cached(LAST_SEQ_SQL),
        tx.prepare_cached(READ_SQL),
    )?;
    let insert_params: [&(dyn ToSql + Sync); 11] =
        [&ids, &chats, &seqs, &froms, &tos, &msg_ids, &types, &bodies, &now, &shops, &agents];
    // In this order: an agent joins a conversation before their read position in it moves.
    let join_params: [&(dyn ToSql + Sync); 2] = [&join_uids, &join_chats];
    let handler_params: [&(dyn ToSql + Sync); 2] = [&handler_chats, &handler_uids];
    let last_params: [&(dyn ToSql + Sync); 3] = [&newest_chats, &newest_seqs, &now];
    let read_params: [&(dyn ToSql + Sync); 3] = [&read_uids, &read_chats, &read_seqs];
    try_join!(
        tx.execute(&insert, &insert_params),
        tx.execute(&join, &join_params),
        tx.execute(&set_handler, &handler_params),
        tx.execute(&set_last, &last_params),
        tx.execute(&set_read, &read_params),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::store::WriterSettings;
    use crate::store::postgres::testdb::TestDb;
    use crate::store::postgres::{PgPrepared, PgStore, PgTasks, make_pool};
    use crate::supervisor::Supervisor;

    const SETTINGS: WriterSettings = WriterSettings { durable: true, sync: crate::config::SyncMode::Normal };

    /// One node: a store with a pool and a writer of its own, and its outcomes.
    async fn node(prepared: PgPrepared) -> (PgStore, PgTasks, mpsc::Receiver<Vec<Outcome>>) {
        let (tx, rx) = mpsc::channel(1024);
        let (store, tasks) =
            prepared.start(SETTINGS, tx, Arc::new(Metrics::new()), &Supervisor::new(None)).expect("start");
        (store, tasks, rx)
    }

    /// A message of `from` to `to` in their single chat; its ticket is `tag`.
    fn message(from: u64, to: u64, msg_id: Option<&str>, tag: usize) -> NewMessage {
        let (a, b) = (from.min(to), from.max(to));
        NewMessage {
            kind: Kind::Single,
            chat_id: Arc::from(format!("1_{a}_{b}")),
            from_uid: from,
            to_uid: Some(to),
            msg_id: msg_id.map(Into::into),
            msg_type: "text".into(),
            body: serde_json::value::RawValue::from_string(format!("\"m{tag}\"")).unwrap(),
            service: None,
            ticket: Ticket::new(tag),
        }
    }

    /// What each ticket was answered with: (seq, id, duplicate) or the refusal.
    type Answers = HashMap<usize, Result<(i64, i64, bool), StoreError>>;

    /// Reads outcomes until `count` tickets are answered (or 30 s pass, which fails).
    async fn answers(rx: &mut mpsc::Receiver<Vec<Outcome>>, count: usize) -> Answers {
        let mut got = HashMap::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < count {
            let batch = tokio::time::timeout_at(deadline, rx.recv()).await.expect("outcomes in time").expect("writer");
            for outcome in batch {
                let (ticket, answer) = match outcome {
                    Outcome::Committed(c) => (c.ticket, Ok((c.message.seq, c.message.id, c.duplicate))),
                    Outcome::Refused { ticket, error, .. } => (ticket, Err(error)),
                };
                let tag: usize = ticket.into_inner().ok().expect("a usize ticket");
                assert!(got.insert(tag, answer).is_none(), "ticket {tag} answered twice");
            }
        }
        got
    }

    async fn stored_seqs(db: &TestDb, chat_id: &str) -> (Vec<i64>, i64) {
        let client = db.pool().get().await.unwrap();
        let seqs = client
            .query("SELECT seq FROM messages WHERE chat_id = $1 ORDER BY seq", &[&chat_id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let last =
            client.query_one("SELECT last_seq FROM conversations WHERE chat_id = $1", &[&chat_id]).await.unwrap();
        (seqs, last.get(0))
    }

    /// Two nodes (two pools, two writers) commit into one conversation at once: every seq
    /// from 1 to N is taken exactly once, and the table agrees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_share_one_conversation_without_gaps() {
        let Some(db) = TestDb::create().await else { return };
        const EACH: usize = 600;
        let (one, _one_tasks, mut one_rx) = node(PgStore::prepare(&db.url).await.unwrap()).await;
        let (two, _two_tasks, mut two_rx) = node(PgStore::prepare(&db.url).await.unwrap()).await;
        let send_one = tokio::spawn(async move {
            for i in 0..EACH {
                one.submit(message(1, 2, None, i)).await.unwrap();
            }
            one
        });
        let send_two = tokio::spawn(async move {
            for i in EACH..2 * EACH {
                two.submit(message(2, 1, None, i)).await.unwrap();
            }
            two
        });
        let (got_one, got_two) = tokio::join!(answers(&mut one_rx, EACH), answers(&mut two_rx, EACH));
        let (_one, _two) = (send_one.await.unwrap(), send_two.await.unwrap());
        let mut seqs: Vec<i64> =
            got_one.values().chain(got_two.values()).map(|a| a.as_ref().expect("committed").0).collect();
        seqs.sort_unstable();
        let expected: Vec<i64> = (1..=2 * EACH as i64).collect();
        assert_eq!(seqs, expected, "every seq once");
        // Each node's own messages keep their order.
        for got in [&got_one, &got_two] {
            let mut by_tag: Vec<(usize, i64)> = got.iter().map(|(t, a)| (*t, a.as_ref().unwrap().0)).collect();
            by_tag.sort_unstable();
            assert!(by_tag.windows(2).all(|w| w[0].1 < w[1].1), "a node's messages out of order");
        }
        assert_eq!(stored_seqs(&db, "1_1_2").await, (expected, 2 * EACH as i64));
    }

    /// The same msg_ids sent to two nodes at once, and twice within a batch: each is stored
    /// once, every resend is answered with the original, and no seq is burnt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resend_to_either_node_is_answered_with_the_original() {
        let Some(db) = TestDb::create().await else { return };
        const IDS: usize = 200;
        let (one, _one_tasks, mut one_rx) = node(PgStore::prepare(&db.url).await.unwrap()).await;
        let (two, _two_tasks, mut two_rx) = node(PgStore::prepare(&db.url).await.unwrap()).await;
        // Tags: node one sends id k as 3k and again as 3k+1; node two sends it as 3k+2.
        let send_one = tokio::spawn(async move {
            for k in 0..IDS {
                let id = format!("c{k}");
                one.submit(message(1, 2, Some(&id), 3 * k)).await.unwrap();
                one.submit(message(1, 2, Some(&id), 3 * k + 1)).await.unwrap();
            }
            one
        });
        let send_two = tokio::spawn(async move {
            for k in 0..IDS {
                two.submit(message(1, 2, Some(&format!("c{k}")), 3 * k + 2)).await.unwrap();
            }
            two
        });
        let (mut got, got_two) = tokio::join!(answers(&mut one_rx, 2 * IDS), answers(&mut two_rx, IDS));
        let (one, _two) = (send_one.await.unwrap(), send_two.await.unwrap());
        got.extend(got_two);
        for k in 0..IDS {
            let copies: Vec<(i64, i64, bool)> =
                (0..3).map(|c| got[&(3 * k + c)].as_ref().copied().expect("committed")).collect();
            assert_eq!(copies.iter().filter(|c| !c.2).count(), 1, "id {k} stored once: {copies:?}");
            assert!(copies.iter().all(|c| (c.0, c.1) == (copies[0].0, copies[0].1)), "id {k}: {copies:?}");
        }
        let expected: Vec<i64> = (1..=IDS as i64).collect();
        assert_eq!(stored_seqs(&db, "1_1_2").await, (expected, IDS as i64), "no seq burnt");

        // A resend in a later batch, alone.
        one.submit(message(1, 2, Some("c7"), 9999)).await.unwrap();
        let later = answers(&mut one_rx, 1).await;
        let original = got[&21].as_ref().copied().unwrap();
        assert_eq!(later[&9999].as_ref().copied().unwrap(), (original.0, original.1, true));
    }

    /// A database that cannot be reached: every message is refused as unavailable (503 for
    /// the client, never an ack), /health is degraded, and the writer goes on.
    #[tokio::test]
    async fn a_batch_the_database_cannot_take_is_refused_as_unavailable() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("postgres://postgres@127.0.0.1:{closed}/none");
        let prepare = PgStore::prepare(&url).await.err().expect("nothing listens there");
        assert!(prepare.unavailable().is_some(), "{prepare:?}");

        let (store, _tasks, mut rx) = node(PgPrepared { pool: make_pool(&url).unwrap() }).await;
        // Nothing written yet: the idle writer's probe finds the database away.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.degraded().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "an idle writer never noticed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for round in 0..2 {
            store.submit(message(1, 2, Some("x"), 2 * round)).await.unwrap();
            store.submit(message(1, 3, None, 2 * round + 1)).await.unwrap();
            let got = answers(&mut rx, 2).await;
            for tag in [2 * round, 2 * round + 1] {
                let error = got[&tag].as_ref().expect_err("refused");
                assert_eq!(error.client_reply().0, 503, "{error:?}");
            }
            assert!(store.degraded().is_some(), "/health is not degraded");
        }
    }
}
