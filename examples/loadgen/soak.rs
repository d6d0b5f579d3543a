//! The `soak` scenario: numbered messages through a daemon that a fault loop keeps killing
//! (SIGKILL), pausing (SIGSTOP/SIGCONT), stopping (SIGTERM) and restarting, then a reconciliation
//! of every message against the acks, the receipts and `/message/history`. docs/RELIABILITY.md
//! says what each figure means.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Ctx, Errors, Http, Net, Nodes, Res, User, Ws, join_room, register_users, upgrade};

/// Longest wait for a TCP connect plus the WebSocket upgrade, and separately for the sync.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection with messages in flight that hears nothing this long is dropped and reopened.
const STALL: Duration = Duration::from_secs(10);
/// A refused message is sent again after this long.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Reconnect backoff, doubling from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest wait for the daemon's `listening` line, and attempts to start it (the port of a
/// killed daemon can be busy for a moment).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 50;
/// The device every soak connection names, so that a reconnect is the same device again.
const DEVICE: &str = "soak";

#[derive(clap::Args, Debug, Clone)]
pub struct SoakOpts {
    /// The imd binary to start (the load generator runs it on 127.0.0.1, on `--addr`'s port;
    /// port 0 picks a free one and keeps it across restarts).
    #[arg(long)]
    pub imd: PathBuf,
    /// The daemon's database, kept across restarts (use a temporary file).
    #[arg(long)]
    pub db: PathBuf,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 4)]
    pub pairs: usize,
    /// Members of one room, each of whom sends and receives (0: no room).
    #[arg(long, default_value_t = 3)]
    pub group: usize,
    /// Seconds of load under faults.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// New messages per second over all senders.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Unacknowledged messages a sender allows before it waits.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Seconds between faults, drawn uniformly from [fault-min, fault-max].
    #[arg(long, default_value_t = 0.5)]
    pub fault_min: f64,
    #[arg(long, default_value_t = 3.0)]
    pub fault_max: f64,
    /// Seed of the fault loop's choices (default: from the clock; printed in the settings).
    #[arg(long)]
    pub seed: Option<u64>,
    /// An extra option for imd, repeatable: `--server-arg=--sync --server-arg=normal`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Append the daemon's stderr (its log) to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Clients never send `read`, like the old PHP service's: `redelivered` then shows what
    /// sync replays of messages a device already has.
    #[arg(long)]
    pub no_read: bool,
}

impl SoakOpts {
    /// Checks the options and adds them to the settings object.
    pub fn check_into(&self, s: &mut serde_json::Map<String, Value>) -> Res<()> {
        if self.pairs == 0 && self.group < 2 {
            return Err("need --pairs >= 1 or --group >= 2".into());
        }
        if self.group == 1 {
            return Err("--group must be 0 or at least 2".into());
        }
        if !(self.duration > 0.0 && self.duration <= 86_400.0) {
            return Err("need 0 < --duration <= 86400".into());
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            return Err("need 0 < --rate <= 100000".into());
        }
        if self.window == 0 || self.window > 10_000 {
            return Err("--window must be 1..=10000".into());
        }
        if !(self.fault_min > 0.0 && self.fault_min <= self.fault_max && self.fault_max <= 3600.0) {
            return Err("need 0 < --fault-min <= --fault-max <= 3600".into());
        }
        s.insert("imd".into(), json!(self.imd.display().to_string()));
        s.insert("db".into(), json!(self.db.display().to_string()));
        s.insert("pairs".into(), json!(self.pairs));
        s.insert("group".into(), json!(self.group));
        s.insert("duration".into(), json!(self.duration));
        s.insert("rate".into(), json!(self.rate));
        s.insert("window".into(), json!(self.window));
        s.insert("fault_min".into(), json!(self.fault_min));
        s.insert("fault_max".into(), json!(self.fault_max));
        s.insert("server_args".into(), json!(self.server_args));
        s.insert("no_read".into(), json!(self.no_read));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test

/// How often each fault happened.
#[derive(Default, Debug)]
struct Faults {
    kill: u64,
    stop: u64,
    term: u64,
    restart: u64,
    /// The daemon exited without being told to (a crash, or a supervisor's exit).
    unexpected_exit: u64,
}

struct Daemon {
    opts: SoakOpts,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Daemon {
    /// Starts imd and waits for its `listening on` line; retries while the port is busy.
    async fn start(&mut self) -> Res<()> {
        let mut last_err = String::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let stderr = match &self.opts.log {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(Stdio::from)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None => Stdio::null(),
            };
            let mut child = tokio::process::Command::new(&self.opts.imd)
                .arg("start")
                .arg(self.port.to_string())
                .args(["--host", "127.0.0.1", "--bcrypt-cost", "4", "--rate-limit", "0", "--db"])
                .arg(&self.opts.db)
                .args(&self.opts.server_args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("start {}: {e}", self.opts.imd.display()))?;
            let Some(stdout) = child.stdout.take() else { return Err("imd: no stdout".into()) };
            let mut lines = BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(START_TIMEOUT, async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        return Some(addr.to_string());
                    }
                }
                None
            })
            .await;
            let port = match ready {
                Ok(Some(addr)) => addr.rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok()),
                Ok(None) => None,
                Err(_) => {
                    last_err = format!("imd printed no `listening on` line within {START_TIMEOUT:?}");
                    None
                }
            };
            match port {
                Some(port) => {
                    self.port = port;
                    // Keep reading stdout so the daemon never blocks on a full pipe.
                    tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    self.child = Some(child);
                    return Ok(());
                }
                None => {
                    let _ = child.start_kill();
                    let status = child.wait().await;
                    if last_err.is_empty() || status.is_ok() {
                        last_err = format!("imd exited before listening ({status:?})");
                    }
                }
            }
        }
        Err(format!("could not start imd on port {} after {START_ATTEMPTS} attempts: {last_err}", self.port))
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            // SAFETY: kill(2) on the pid of our own child, which we have not yet waited for.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }

    async fn wait_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
    }

    async fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit().await;
    }

    /// SIGTERM, the graceful path; SIGKILL if it takes longer than `patience`.
    async fn term(&mut self, patience: Duration) {
        self.signal(libc::SIGTERM);
        let Some(child) = self.child.as_mut() else { return };
        if tokio::time::timeout(patience, child.wait()).await.is_err() {
            self.signal(libc::SIGKILL);
        }
        self.wait_exit().await;
    }

    /// Whether the daemon exited on its own since the last look.
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            Some(Ok(None)) => false,
            None => true,
        }
    }
}

/// xorshift64*: the fault loop's choices, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [lo, hi].
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sleeps until `until`, restarting the daemon if it exits on its own meanwhile.
async fn watch_daemon(daemon: &mut Daemon, faults: &mut Faults, until: Instant) -> Res<()> {
    loop {
        if daemon.exited() {
            faults.unexpected_exit += 1;
            eprintln!("loadgen: imd exited on its own; restarting it");
            daemon.start().await?;
            faults.restart += 1;
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::time::sleep_until(until.min(now + Duration::from_millis(100))).await;
    }
}

/// Until `until`, at random intervals: SIGKILL and restart (40%), SIGSTOP for 0.1-1.5 s then
/// SIGCONT (40%), or SIGTERM and restart (20%); the first three are one of each, so that even a
/// short run has every kind. Each fault ends with the daemon running.
async fn fault_loop(
    daemon: &mut Daemon,
    faults: &mut Faults,
    rng: &mut Rng,
    opts: &SoakOpts,
    until: Instant,
) -> Res<()> {
    for round in 0u64.. {
        let next = Instant::now() + Duration::from_secs_f64(rng.between(opts.fault_min, opts.fault_max));
        if next >= until {
            break;
        }
        watch_daemon(daemon, faults, next).await?;
        let pick = match round {
            0 => 0,
            1 => 4,
            2 => 8,
            _ => rng.next() % 10,
        };
        if pick < 4 {
            daemon.kill9().await;
            faults.kill += 1;
            tokio::time::sleep(Duration::from_secs_f64(rng.between(0.0, 0.5))).await;
            daemon.start().await?;
            faults.restart += 1;
        } else if pick < 8 {
            daemon.signal(libc::SIGSTOP);
            faults.stop += 1;
            tokio::time::sleep(Duration::from_secs_f64(rng.between(0.1, 1.5))).await;
            daemon.signal(libc::SIGCONT);
        } else {
            daemon.term(Duration::from_secs(15)).await;
            faults.term += 1;
            daemon.start().await?;
            faults.restart += 1;
        }
    }
    watch_daemon(daemon, faults, until).await
}

// ---------------------------------------------------------------------------------------------
// The clients

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// New messages are sent; faults happen.
    Load,
    /// No new messages; what is unacked is resent until acked; the daemon runs undisturbed.
    Drain,
    /// Every client closes its connection.
    Done,
}

/// Where a client's messages go.
enum Target {
    User(u64),
    Room(Rc<str>),
}

/// An unacknowledged message: when to (re)send it, or `None` while it is in flight.
struct Pending {
    due: Option<Instant>,
}

/// One user with one device: sends to its target (if any) and receives.
struct Client {
    user: User,
    target: Option<Target>,
    /// Indexes of the clients that must receive each of its messages.
    recipients: Vec<usize>,
    /// The conversation its messages go to.
    chat_id: String,
    /// Per message number: the (id, seq) of its first ack.
    acked: Vec<Option<(u64, u64)>>,
    pending: BTreeMap<usize, Pending>,
    /// When the next new message is due.
    next_due: Instant,
}

/// A message as a recipient saw it.
struct Receipt {
    count: u32,
}

#[derive(Default)]
struct Tally {
    resent: u64,
    duplicate_acks: u64,
    /// An ack for a msg_id naming another id than its first ack: the message is stored twice.
    ack_id_changed: u64,
    /// A first receipt whose seq is not above the last one of that conversation on that connection.
    reordered_live: u64,
    redelivered: u64,
    own_echo: u64,
    reconnects: u64,
    connect_failures: u64,
    stalls: u64,
    /// Error frames, by code.
    refused: BTreeMap<u16, u64>,
}

struct Soak {
    clients: Vec<std::cell::RefCell<Client>>,
    by_uid: HashMap<u64, usize>,
    /// (recipient, id) -> receipts.
    receipts: std::cell::RefCell<HashMap<(usize, u64), Receipt>>,
    tally: std::cell::RefCell<Tally>,
    errors: Errors,
    refusal_samples: Errors,
    net: Rc<Net>,
    window: usize,
    send_read: bool,
    /// Time between one sender's new messages.
    period: Duration,
    text: String,
}

/// Per connection: the last seq per conversation, and the read positions to send.
#[derive(Default)]
struct Conn {
    last_seq: HashMap<String, u64>,
    to_read: HashMap<String, u64>,
    synced: bool,
}

fn msg_number(msg_id: &str) -> Option<usize> {
    msg_id.strip_prefix('m')?.parse().ok()
}

impl Soak {
    fn frame(&self, me: usize, n: usize) -> String {
        let c = self.clients[me].borrow();
        let text = format!("soak {me}.{n} {}", self.text);
        match &c.target {
            Some(Target::User(to)) => format!(
                r#"{{"action":"single_chat","chat_type":1,"msg_type":"text","msg_id":"m{n}","to_uid":{to},"msg":"{text}"}}"#
            ),
            Some(Target::Room(chat_id)) => format!(
                r#"{{"action":"group_chat","chat_type":2,"msg_type":"text","msg_id":"m{n}","chat_id":"{chat_id}","msg":"{text}"}}"#
            ),
            None => String::new(),
        }
    }

    /// Handles one text frame; returns true for `sync_done`.
    fn on_frame(&self, me: usize, conn: &mut Conn, text: &str) -> bool {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.errors.add(format!("client {me}: frame is not JSON ({e}): {text}"));
                return false;
            }
        };
        match v["action"].as_str().unwrap_or("") {
            "sync_done" => {
                conn.synced = true;
                return true;
            }
            "ack" => self.on_ack(me, &v),
            "error" => self.on_error(me, &v),
            "single_chat" | "group_chat" => self.on_message(me, conn, &v),
            "connected" | "read" | "pong" => {}
            other => self.errors.add(format!("client {me}: unexpected frame {other}: {text}")),
        }
        false
    }

    fn on_ack(&self, me: usize, v: &Value) {
        let (Some(n), Some(id), Some(seq)) =
            (v["msg_id"].as_str().and_then(msg_number), v["id"].as_u64(), v["seq"].as_u64())
        else {
            self.errors.add(format!("client {me}: ack without msg_id, id or seq: {v}"));
            return;
        };
        let mut c = self.clients[me].borrow_mut();
        let Some(slot) = c.acked.get_mut(n) else {
            self.errors.add(format!("client {me}: ack for a message never sent: {v}"));
            return;
        };
        let mut tally = self.tally.borrow_mut();
        match *slot {
            None => *slot = Some((id, seq)),
            Some((first, _)) if first == id => tally.duplicate_acks += 1,
            Some((first, _)) => {
                tally.ack_id_changed += 1;
                self.errors.add(format!("client {me}: msg_id m{n} acked as id {first}, then as {id}"));
            }
        }
        c.pending.remove(&n);
    }

    fn on_error(&self, me: usize, v: &Value) {
        let code = v["code"].as_u64().unwrap_or(0) as u16;
        *self.tally.borrow_mut().refused.entry(code).or_insert(0) += 1;
        self.refusal_samples.add(format!("client {me}: {v}"));
        // A refused message goes again shortly (503 storage unavailable, shutting down...).
        if let Some(n) = v["msg_id"].as_str().and_then(msg_number) {
            let mut c = self.clients[me].borrow_mut();
            if let Some(p) = c.pending.get_mut(&n) {
                p.due = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    fn on_message(&self, me: usize, conn: &mut Conn, v: &Value) {
        let (Some(id), Some(seq), Some(chat_id)) = (v["id"].as_u64(), v["seq"].as_u64(), v["chat_id"].as_str()) else {
            self.errors.add(format!("client {me}: message without id, seq or chat_id: {v}"));
            return;
        };
        if v["from_uid"].as_u64() == Some(self.clients[me].borrow().user.uid) {
            self.tally.borrow_mut().own_echo += 1;
        }
        let read = conn.to_read.entry(chat_id.to_string()).or_insert(0);
        *read = (*read).max(seq);
        let mut receipts = self.receipts.borrow_mut();
        let receipt = receipts.entry((me, id)).or_insert(Receipt { count: 0 });
        receipt.count += 1;
        if receipt.count > 1 {
            // Already shown: the client dedupes by id.
            self.tally.borrow_mut().redelivered += 1;
            return;
        }
        let last = conn.last_seq.entry(chat_id.to_string()).or_insert(0);
        if seq <= *last {
            self.tally.borrow_mut().reordered_live += 1;
            self.errors.add(format!("client {me}: {chat_id} seq {seq} after seq {last}"));
        }
        *last = (*last).max(seq);
    }

    fn unacked(&self, me: usize) -> usize {
        self.clients[me].borrow().pending.len()
    }

    /// Opens a connection (not yet synced).
    async fn open(&self, me: usize) -> Res<Ws> {
        let token = self.clients[me].borrow().user.token.clone();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let tcp = tokio::time::timeout_at(deadline, self.net.tcp())
            .await
            .map_err(|_| "TCP connect timed out".to_string())??;
        let path = format!("/?access_token={token}&device={DEVICE}");
        let host = self.net.addr.to_string();
        let config = WebSocketConfig::default();
        tokio::time::timeout_at(deadline, upgrade(tcp, &host, &path, config))
            .await
            .map_err(|_| "WebSocket upgrade timed out".to_string())?
    }

    /// Reads frames up to `sync_done`.
    async fn sync(&self, me: usize, ws: &mut Ws, conn: &mut Conn) -> Res<()> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let text = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err("sync timed out".into()),
                Ok(msg) => text_of(msg)?,
            };
            if let Some(text) = text
                && self.on_frame(me, conn, &text)
            {
                return Ok(());
            }
        }
    }

    /// Sends the read positions of what this connection has received.
    async fn send_reads(&self, ws: &mut Ws, conn: &mut Conn) -> Res<()> {
        for (chat_id, seq) in conn.to_read.drain() {
            if !self.send_read {
                continue;
            }
            let frame = format!(r#"{{"action":"read","chat_id":"{chat_id}","seq":{seq}}}"#);
            ws.feed(Message::text(frame)).await.map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    }

    /// One connection's life: sync, then send and receive until it breaks or the run is done.
    async fn session(&self, me: usize, mut ws: Ws, phase: &mut watch::Receiver<Phase>) -> Res<()> {
        let mut conn = Conn::default();
        self.sync(me, &mut ws, &mut conn).await?;
        let now = Instant::now();
        // Whatever is unacked goes out again on this connection, with the same msg_id.
        for p in self.clients[me].borrow_mut().pending.values_mut() {
            p.due = Some(now);
        }
        let mut last_heard = now;
        loop {
            let now = Instant::now();
            let current = *phase.borrow_and_update();
            if current == Phase::Done {
                super::close_ws(ws).await;
                return Ok(());
            }
            self.send_reads(&mut ws, &mut conn).await?;
            if self.unacked(me) == 0 {
                last_heard = now;
            }
            // Resends that are due.
            let due: Vec<usize> = {
                let mut c = self.clients[me].borrow_mut();
                let due: Vec<usize> =
                    c.pending.iter().filter(|(_, p)| p.due.is_some_and(|d| d <= now)).map(|(n, _)| *n).collect();
                for n in &due {
                    if let Some(p) = c.pending.get_mut(n) {
                        p.due = None;
                    }
                }
                due
            };
            self.tally.borrow_mut().resent += due.len() as u64;
            for n in due {
                ws.feed(Message::text(self.frame(me, n))).await.map_err(|e| format!("send: {e}"))?;
            }
            // New messages, paced, within the window.
            let has_target = self.clients[me].borrow().target.is_some();
            while current == Phase::Load && has_target && self.unacked(me) < self.window {
                let n = {
                    let mut c = self.clients[me].borrow_mut();
                    if c.next_due > now {
                        break;
                    }
                    // After an outage, go on at the rate instead of catching up in a burst.
                    c.next_due = (c.next_due + self.period).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
                    c.acked.push(None);
                    let n = c.acked.len() - 1;
                    c.pending.insert(n, Pending { due: None });
                    n
                };
                ws.feed(Message::text(self.frame(me, n))).await.map_err(|e| format!("send: {e}"))?;
            }
            ws.flush().await.map_err(|e| format!("send: {e}"))?;
            if self.unacked(me) > 0 && now.duration_since(last_heard) > STALL {
                self.tally.borrow_mut().stalls += 1;
                return Err(format!("no reply for {STALL:?} with messages in flight"));
            }
            let wake = {
                let c = self.clients[me].borrow();
                let mut wake = now + Duration::from_millis(250);
                for p in c.pending.values() {
                    if let Some(d) = p.due {
                        wake = wake.min(d);
                    }
                }
                if current == Phase::Load && has_target && c.pending.len() < self.window {
                    wake = wake.min(c.next_due);
                }
                wake
            };
            tokio::select! {
                biased;
                _ = phase.changed() => {}
                msg = ws.next() => {
                    let mut msg = msg;
                    // Everything already buffered, before the next round of sends.
                    for _ in 0..256 {
                        if let Some(text) = text_of(msg)? {
                            self.on_frame(me, &mut conn, &text);
                        }
                        last_heard = Instant::now();
                        match ws.next().now_or_never() {
                            Some(next) => msg = next,
                            None => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// The text of a WebSocket message; `None` for control frames; an error when the connection ends.
fn text_of(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Res<Option<String>> {
    match msg {
        Some(Ok(Message::Text(t))) => Ok(Some(t.as_str().to_string())),
        Some(Ok(Message::Close(f))) => Err(format!("closed by server: {f:?}")),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(format!("WebSocket error: {e}")),
        None => Err("connection ended".into()),
    }
}

/// A client until the run is done: connect, sync, send and receive; reconnect with backoff.
async fn client_task(soak: Rc<Soak>, me: usize, mut phase: watch::Receiver<Phase>) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    // Spread the clients' retries so they do not all knock at once.
    let jitter = Duration::from_millis((me as u64 * 7919) % 50);
    while *phase.borrow() != Phase::Done {
        match soak.open(me).await {
            Ok(ws) => {
                if connected_before {
                    soak.tally.borrow_mut().reconnects += 1;
                }
                connected_before = true;
                backoff = BACKOFF_MIN;
                // A connection that breaks is expected under faults; the messages it had in
                // flight are resent on the next one.
                let _ = soak.session(me, ws, &mut phase).await;
            }
            Err(_) => {
                soak.tally.borrow_mut().connect_failures += 1;
                tokio::select! {
                    _ = phase.changed() => {}
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

/// Every message of a conversation from `/message/history`, oldest first.
async fn full_history(http: &mut Http, token: &str, chat_id: &str) -> Res<Vec<Value>> {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut before: Option<u64> = None;
    // Bounded: 200 per page, and a page must move `before` down.
    for _ in 0..1_000_000 {
        let path = match before {
            Some(b) => format!("/message/history?chat_id={chat_id}&limit=200&before={b}"),
            None => format!("/message/history?chat_id={chat_id}&limit=200"),
        };
        let mut data = http.ok("GET", &path, None, Some(token)).await?;
        let Value::Array(page) = data["messages"].take() else { return Err(format!("GET {path}: no messages")) };
        let first = page.first().and_then(|m| m["seq"].as_u64());
        let more = data["has_more"].as_bool().unwrap_or(false);
        pages.push(page);
        match first {
            Some(seq) if more && before.is_none_or(|b| seq < b) => before = Some(seq),
            _ => break,
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

#[derive(Default, Debug)]
struct Reconciled {
    sent: u64,
    acked: u64,
    unacked: u64,
    received: u64,
    not_received: u64,
    missing_from_history: u64,
    lost: u64,
    duplicated: u64,
    history_reordered: u64,
    gaps: u64,
    /// Received by a client, yet in no conversation's history.
    phantom: u64,
    /// In history, but no message of this run.
    unexpected: u64,
    history_messages: u64,
    /// The first few lost messages: what was missing where.
    lost_samples: Vec<Value>,
    /// Lost messages per conversation.
    lost_by_chat: BTreeMap<String, u64>,
}

async fn reconcile(soak: &Soak, http: &mut Http, chats: &[(String, usize)]) -> Res<Reconciled> {
    let mut r = Reconciled::default();
    // (sender, number) -> the distinct ids stored for it.
    let mut stored: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
    let mut in_history: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for (chat_id, reader) in chats {
        let token = soak.clients[*reader].borrow().user.token.clone();
        let messages = full_history(http, &token, chat_id).await?;
        r.history_messages += messages.len() as u64;
        let mut expected_seq = 1u64;
        let mut last = 0u64;
        for m in &messages {
            let seq = m["seq"].as_u64().unwrap_or(0);
            if seq <= last {
                r.history_reordered += 1;
            } else {
                r.gaps += seq - expected_seq;
                expected_seq = seq + 1;
            }
            last = last.max(seq);
            let id = m["id"].as_u64().unwrap_or(0);
            in_history.insert(id);
            let sender = m["from_uid"].as_u64().and_then(|uid| soak.by_uid.get(&uid).copied());
            match (sender, m["msg_id"].as_str().and_then(msg_number)) {
                (Some(s), Some(n)) => {
                    let ids = stored.entry((s, n)).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                _ => r.unexpected += 1,
            }
        }
    }
    let receipts = soak.receipts.borrow();
    for (s, client) in soak.clients.iter().enumerate() {
        let c = client.borrow();
        for (n, ack) in c.acked.iter().enumerate() {
            r.sent += 1;
            let ids = stored.get(&(s, n)).map(Vec::as_slice).unwrap_or(&[]);
            r.duplicated += ids.len().saturating_sub(1) as u64;
            let Some((id, _)) = ack else {
                r.unacked += 1;
                continue;
            };
            r.acked += 1;
            let mut lost = false;
            let sample = |what: &str, to: Option<usize>| {
                let to_uid = to.map(|t| soak.clients[t].borrow().user.uid);
                json!({"what": what, "from_uid": c.user.uid, "msg_id": format!("m{n}"), "id": id,
                       "seq": ack.map(|a| a.1), "to_uid": to_uid})
            };
            if !ids.contains(id) {
                r.missing_from_history += 1;
                lost = true;
                if r.lost_samples.len() < 5 {
                    r.lost_samples.push(sample("not in history", None));
                }
            }
            for &to in &c.recipients {
                if receipts.get(&(to, *id)).is_none_or(|rc| rc.count == 0) {
                    r.not_received += 1;
                    lost = true;
                    if r.lost_samples.len() < 5 {
                        r.lost_samples.push(sample("not received", Some(to)));
                    }
                }
            }
            if lost {
                r.lost += 1;
                *r.lost_by_chat.entry(c.chat_id.clone()).or_insert(0) += 1;
            }
        }
    }
    r.received = receipts.len() as u64;
    r.phantom = receipts.keys().filter(|(_, id)| !in_history.contains(id)).count() as u64;
    r.duplicated += soak.tally.borrow().ack_id_changed;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// The scenario

pub async fn soak(ctx: &Ctx, opts: &SoakOpts, port: u16) -> Res<(Value, bool)> {
    let seed = opts.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
        nanos.map(|n| n as u64).unwrap_or(1) | 1
    });
    let mut rng = Rng(seed.max(1));
    let mut daemon = Daemon { opts: opts.clone(), port, child: None };
    daemon.start().await?;
    let result = run_soak(ctx, opts, &mut daemon, &mut rng).await;
    // The daemon goes whatever happened; its database stays for a look.
    daemon.term(Duration::from_secs(15)).await;
    let (mut report, ok) = result?;
    if let Some(obj) = report.as_object_mut() {
        obj.insert("seed".into(), json!(seed));
        obj.insert("port".into(), json!(daemon.port));
    }
    Ok((report, ok))
}

async fn run_soak(ctx: &Ctx, opts: &SoakOpts, daemon: &mut Daemon, rng: &mut Rng) -> Res<(Value, bool)> {
    let addr = std::net::SocketAddr::new(ctx.net.addr.ip(), daemon.port);
    let net = Rc::new(Net::new(addr, 1, 8 * 1024));
    let ctx = Ctx {
        net: net.clone(),
        nodes: Nodes::single(net.clone()),
        prefix: ctx.prefix.clone(),
        password: ctx.password.clone(),
        concurrency: ctx.concurrency,
        msg_text: ctx.msg_text.clone(),
        drain: ctx.drain,
    };
    let (users, _) = register_users(&ctx, opts.pairs * 2 + opts.group).await?;
    let mut http = Http::new(net.clone());
    let now = Instant::now();
    let mut clients: Vec<Client> = users
        .iter()
        .map(|u| Client {
            user: u.clone(),
            target: None,
            recipients: Vec::new(),
            chat_id: String::new(),
            acked: Vec::new(),
            pending: BTreeMap::new(),
            next_due: now,
        })
        .collect();
    // Which conversations to read back, and as whom.
    let mut chats: Vec<(String, usize)> = Vec::new();
    for p in 0..opts.pairs {
        let (a, b) = (2 * p, 2 * p + 1);
        clients[a].target = Some(Target::User(users[b].uid));
        clients[a].recipients = vec![b];
        let (lo, hi) = (users[a].uid.min(users[b].uid), users[a].uid.max(users[b].uid));
        clients[a].chat_id = format!("1_{lo}_{hi}");
        chats.push((clients[a].chat_id.clone(), b));
    }
    if opts.group >= 2 {
        let first = opts.pairs * 2;
        let members: Vec<usize> = (first..first + opts.group).collect();
        let data = http.ok("POST", "/room/create", Some(&json!({"name": "soak"})), Some(&users[first].token)).await?;
        let chat_id: Rc<str> =
            data["chat_id"].as_str().ok_or_else(|| format!("room/create: no chat_id in {data}"))?.into();
        join_room(&ctx, &users[first + 1..first + opts.group], &chat_id).await?;
        for &m in &members {
            clients[m].target = Some(Target::Room(chat_id.clone()));
            clients[m].recipients = members.iter().copied().filter(|&o| o != m).collect();
            clients[m].chat_id = chat_id.to_string();
        }
        chats.push((chat_id.to_string(), first));
    }
    let senders = clients.iter().filter(|c| c.target.is_some()).count().max(1);
    let soak = Rc::new(Soak {
        by_uid: users.iter().enumerate().map(|(i, u)| (u.uid, i)).collect(),
        clients: clients.into_iter().map(std::cell::RefCell::new).collect(),
        receipts: Default::default(),
        tally: Default::default(),
        errors: Errors::default(),
        refusal_samples: Errors::default(),
        net: net.clone(),
        window: opts.window,
        send_read: !opts.no_read,
        period: Duration::from_secs_f64(senders as f64 / opts.rate),
        text: ctx.msg_text.clone(),
    });

    let (phase_tx, phase_rx) = watch::channel(Phase::Load);
    let tasks: Vec<_> = (0..soak.clients.len())
        .map(|me| tokio::task::spawn_local(client_task(soak.clone(), me, phase_rx.clone())))
        .collect();
    let started = Instant::now();
    let load_end = started + Duration::from_secs_f64(opts.duration);
    let mut faults = Faults::default();
    let faulted = fault_loop(daemon, &mut faults, rng, opts, load_end).await;
    eprintln!("loadgen: soak load over after {:.1}s: {faults:?}", started.elapsed().as_secs_f64());

    // Quiet: the daemon runs; senders resend until everything is acked and received.
    let _ = phase_tx.send(Phase::Drain);
    let drain_deadline = Instant::now() + ctx.drain;
    let drain_started = Instant::now();
    while faulted.is_ok() && Instant::now() < drain_deadline && !settled(&soak) {
        watch_daemon(daemon, &mut faults, Instant::now() + Duration::from_millis(50)).await?;
    }
    let drain_took = drain_started.elapsed();
    let _ = phase_tx.send(Phase::Done);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    faulted?;

    // One more connect of every client: what sync replays now was already received (and read).
    for me in 0..soak.clients.len() {
        let mut ws = soak.open(me).await.map_err(|e| format!("final connect of client {me}: {e}"))?;
        let mut conn = Conn::default();
        soak.sync(me, &mut ws, &mut conn).await.map_err(|e| format!("final sync of client {me}: {e}"))?;
        super::close_ws(ws).await;
    }

    let r = reconcile(&soak, &mut http, &chats).await?;
    let tally = soak.tally.borrow();
    let reordered = r.history_reordered + tally.reordered_live;
    let ok = r.lost == 0
        && r.duplicated == 0
        && reordered == 0
        && r.gaps == 0
        && r.phantom == 0
        && r.unexpected == 0
        && r.unacked == 0
        && soak.errors.get() == 0;
    let report = json!({
        "sent": r.sent,
        "acked": r.acked,
        "received": r.received,
        "lost": r.lost,
        "duplicated": r.duplicated,
        "reordered": reordered,
        "redelivered": tally.redelivered,
        "faults": {
            "kill": faults.kill,
            "stop": faults.stop,
            "term": faults.term,
            "restart": faults.restart,
            "unexpected_exit": faults.unexpected_exit,
        },
        "unacked": r.unacked,
        "not_received": r.not_received,
        "missing_from_history": r.missing_from_history,
        "lost_samples": r.lost_samples,
        "lost_by_chat": r.lost_by_chat,
        "gaps": r.gaps,
        "phantom": r.phantom,
        "unexpected": r.unexpected,
        "history_messages": r.history_messages,
        "reordered_live": tally.reordered_live,
        "reordered_history": r.history_reordered,
        "resent": tally.resent,
        "duplicate_acks": tally.duplicate_acks,
        "own_echo": tally.own_echo,
        "reconnects": tally.reconnects,
        "connect_failures": tally.connect_failures,
        "stalls": tally.stalls,
        "refused": tally.refused.iter().map(|(code, n)| (code.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "refused_samples": soak.refusal_samples.samples(),
        "errors": soak.errors.get(),
        "error_samples": soak.errors.samples(),
        "load_secs": super::secs(Duration::from_secs_f64(opts.duration)),
        "drain_secs_used": super::secs(drain_took),
        "chats": chats.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
    });
    Ok((report, ok))
}

/// Whether every message is acked and every acked message received by all its recipients.
fn settled(soak: &Soak) -> bool {
    let receipts = soak.receipts.borrow();
    soak.clients.iter().all(|c| {
        let c = c.borrow();
        c.pending.is_empty()
            && c.acked.iter().flatten().all(|(id, _)| c.recipients.iter().all(|r| receipts.contains_key(&(*r, *id))))
    })
}
