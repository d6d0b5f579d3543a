//! Load generator for `imd`: drives a running server through its public contract only
//! (HTTP + WebSocket JSON frames, `docs/PROTOCOL.md`) and prints ONE JSON line on stdout
//! with the figures of the run and the settings that produced them. Progress goes to stderr.
//! It exits 0 only when nothing was lost or missing and no error happened.
//!
//! Start the server on one core, with bcrypt cheap, the rate limit off and an admin secret
//! for the broadcast scenario:
//!
//! ```text
//! cargo build --release --bin imd --example loadgen
//! taskset -c 0 target/release/imd start 9501 --host 127.0.0.1 --db /tmp/imd-bench.db \
//!     --bcrypt-cost 4 --rate-limit 0 --admin-token bench-admin-secret-0123456789abcdef
//! ```
//!
//! and the load generator on the other core (it runs on one thread):
//!
//! ```text
//! L="taskset -c 1 target/release/examples/loadgen"   # or: cargo run --release --example loadgen --
//! $L idle --conns 15000 --users 3000 --sources 4
//! $L pairs --pairs 100 --window 8 --duration 10
//! $L pairs --pairs 100 --window 8 --duration 10 --rate 5000
//! $L group --members 100 --senders 4 --window 4 --duration 10
//! $L broadcast --conns 5000 --users 1000 --admin-token bench-admin-secret-0123456789abcdef
//! ```
//!
//! Every run registers fresh accounts, so a database can take many runs. For more than ~1000
//! connections the server's shell needs `ulimit -n` above the connection count.
//!
//! Common options (before or after the scenario name): `--addr 127.0.0.1:9501` (loopback
//! only), `--sources N` (bind client sockets round-robin to 127.0.0.1..127.0.0.N, for more than
//! ~28k connections), `--password`, `--user-prefix` (default: unique per run, so runs on one
//! database never collide), `--concurrency` (registrations / room joins / WebSocket upgrades in
//! flight, default 64), `--msg-bytes` (text length of each chat message, default 16),
//! `--drain-secs` (how long to wait for outstanding acks and deliveries after the load, or for
//! a broadcast to arrive, default 10), `--nodes 127.0.0.1:A,127.0.0.1:B,...` (several servers,
//! a cluster's nodes, loopback only: the WebSocket connections are spread over them
//! round-robin, the receiver of each pair on the node after its sender's so that every message
//! crosses nodes; the HTTP set-up goes to `--addr`, else the first node; not for floor or soak).
//!
//! Scenarios:
//! - `idle --conns N [--users U] [--hold S]`: N authenticated connections (connection i uses
//!   account i mod U); connect rate from the first connect to the last `sync_done`, and the
//!   server's resident memory per connection (VmRSS of `/proc/PID/status`, PID from
//!   `GET /health`, read before the first and after the last connection).
//! - `pairs --pairs P [--window W] [--duration S] [--rate R]`: P sender/receiver pairs of
//!   distinct users; each sender keeps W `single_chat` in flight (or, with `--rate`, sends R
//!   messages/s in total, paced, still capped by W). Acked and delivered messages/s,
//!   send-to-receipt latency (the send time is in `msg_id`), `lost` = acked but never delivered.
//!   `--login-flood N` adds N wrong-password logins a second meanwhile (new connection each,
//!   at most 256 in flight); the report's `login_flood` counts their answers by status.
//! - `group --members M [--senders K] [--window W] [--duration S] [--rate R]`: one room with M
//!   connected members, K of them sending `group_chat`; deliveries/s counting each member's
//!   receipt, latency, `missing` = acked x (M-1) - receipts.
//! - `broadcast --conns N [--users U] --admin-token SECRET`: N connections, one
//!   `POST /message/sendPublicMessage`; time until every connection has the `public_message`.
//! - `floor [--rate R] [--duration S] [--echo-core C]`: no server; a bare TCP echo thread
//!   (pinned to core C) and one blocking client sending a 160-byte message R times a second.
//!   Its `latency_us` is the machine's own round trip: no server's send-to-receipt latency at
//!   that rate can be lower.
//! - `soak --imd PATH --db PATH [--pairs P] [--group M] [--duration S] [--rate R] [--window W]
//!   [--fault-min S] [--fault-max S] [--seed N] [--server-arg A]... [--log PATH]`: starts imd
//!   itself on `--addr` (port 0: a free port, kept across restarts) while a fault loop kills,
//!   pauses and restarts it; senders resend what is unacked with the same msg_id; then every
//!   message is reconciled against acks, receipts and history (`examples/loadgen/soak.rs`,
//!   docs/RELIABILITY.md). Prints `sent`, `acked`, `received`, `lost`, `duplicated`,
//!   `reordered`, `redelivered`, `faults`; exits 1 unless nothing was lost, duplicated or
//!   reordered.
//!
//! Output: one JSON object with `scenario`, `ok`, `error` (null or the fatal error), `settings`
//! (every option; secrets redacted), `errors` and `error_samples` (error frames, unexpected
//! closes), `cpu_cores` / `connect_cpu_cores` {`server`,`loadgen`} (CPU time over the measured
//! period divided by its length: near 1.0 means that side was the limit) with
//! `server_threads` (the same per server thread name: `imd-worker`, `imd-store-write`, ...), and the scenario's
//! figures: idle `connect_rate`, `connect_secs`,
//! `rss_before_bytes`, `rss_after_bytes`, `rss_per_conn_bytes`, `server_online`; pairs and
//! group `acked_per_sec`, `delivered_per_sec` / `deliveries_per_sec` (over the load period),
//! `sent`, `acked`, `unacked`, `refused`, `latency_us` {`count`,`p50`,`p90`,`p99`,`max`,`mean`},
//! `lost` / `missing` (with `expected_deliveries`), `extra_deliveries`, `reordered` (a `seq` not
//! above the previous one on a connection); broadcast `delivered` (the server's reply),
//! `received`, `missing`, `http_reply_ms`, `first_received_ms`, `p50_received_ms`,
//! `p99_received_ms`, `all_received_ms` (from just before the POST to the last receipt as seen
//! by the load generator); floor `round_trips`, `round_trips_per_sec`, `latency_us`.
//! With `--nodes` only: `nodes` [{`addr`, `connections`}] (the connections made to each node);
//! the CPU, memory and online figures are summed over the distinct server processes behind
//! the nodes (idle also lists their `server_pids`).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

#[path = "loadgen/soak.rs"]
mod soak;

type Res<T> = Result<T, String>;
type Ws = WebSocketStream<TcpStream>;

/// Longest wait for one HTTP request or one WebSocket upgrade (with its sync).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many error messages are kept for the report.
const ERROR_SAMPLES: usize = 5;

#[derive(Parser, Debug)]
#[command(name = "loadgen", about = "Load generator for the imd server (loopback only)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Server address for the HTTP set-up and the connections [default: 127.0.0.1:9501, or
    /// the first of --nodes]; only loopback addresses are accepted.
    #[arg(long, global = true)]
    addr: Option<String>,
    /// Several servers (a cluster's nodes) as `IP:PORT,IP:PORT,...`, loopback only: WebSocket
    /// connections are spread over them round-robin (the two ends of a pair on different
    /// nodes), the HTTP set-up still goes to --addr or the first node.
    #[arg(long, global = true, value_delimiter = ',')]
    nodes: Option<Vec<String>>,
    /// Spread client sockets over the source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, global = true, default_value_t = 1)]
    sources: u32,
    /// Password of the accounts the run registers.
    #[arg(long, global = true, default_value = "loadgen-pw")]
    password: String,
    /// User-name prefix (default: unique per run).
    #[arg(long = "user-prefix", alias = "prefix", global = true)]
    user_prefix: Option<String>,
    /// Registrations, room joins and WebSocket upgrades in flight at once.
    #[arg(long, global = true, default_value_t = 64)]
    concurrency: usize,
    /// Length of each chat message's text.
    #[arg(long, global = true, default_value_t = 16)]
    msg_bytes: usize,
    /// Bounded wait for outstanding acks and deliveries after the load (or for a broadcast).
    #[arg(long, global = true, default_value_t = 10.0)]
    drain_secs: f64,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N authenticated connections held open: connect rate and server memory per connection.
    Idle {
        #[arg(long)]
        conns: usize,
        /// Accounts to spread the connections over (default: one per connection).
        #[arg(long)]
        users: Option<usize>,
        /// Seconds to keep the connections open after measuring.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// Sender/receiver pairs exchanging single_chat messages.
    Pairs {
        #[arg(long)]
        pairs: usize,
        #[command(flatten)]
        pacing: Pacing,
        /// Meanwhile, N logins a second with wrong passwords (on new connections, at most
        /// 256 in flight), to see what a password-guessing flood costs the message path.
        #[arg(long)]
        login_flood: Option<f64>,
    },
    /// One room; K of its M members send group_chat.
    Group {
        #[arg(long)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        #[command(flatten)]
        pacing: Pacing,
    },
    /// One public message to N connections.
    Broadcast {
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        users: Option<usize>,
        /// The secret the server was started with (`--admin-token`).
        #[arg(long)]
        admin_token: String,
    },
    /// No imd: a bare TCP echo over loopback, paced like `pairs --rate`. The machine's own
    /// round-trip latency, under which no server's figure can go.
    Floor {
        /// Round trips per second.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Pin the echo thread to this core (the server's; the load generator's own core is
        /// whatever `taskset` gave it).
        #[arg(long)]
        echo_core: Option<usize>,
    },
    /// Numbered messages through a daemon the load generator starts, kills, pauses and
    /// restarts; then every message reconciled.
    Soak {
        #[command(flatten)]
        opts: soak::SoakOpts,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle { .. } => "idle",
            Scenario::Pairs { .. } => "pairs",
            Scenario::Group { .. } => "group",
            Scenario::Broadcast { .. } => "broadcast",
            Scenario::Floor { .. } => "floor",
            Scenario::Soak { .. } => "soak",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry point

fn main() {
    let cli = Cli::parse();
    let (prefix, settings) = match validate(&cli) {
        Ok(v) => v,
        Err(e) => {
            let line = json!({"scenario": cli.scenario.name(), "ok": false, "error": e});
            println!("{line}");
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, run(&cli, prefix));
    let (mut report, ok) = match result {
        Ok((figures, ok)) => (figures, ok),
        Err(e) => {
            eprintln!("loadgen: {e}");
            (json!({"error": e}), false)
        }
    };
    let obj = report.as_object_mut().expect("report is an object");
    obj.insert("scenario".into(), json!(cli.scenario.name()));
    obj.insert("ok".into(), json!(ok));
    obj.entry("error").or_insert(Value::Null);
    obj.insert("settings".into(), settings);
    println!("{report}");
    // Exit without tearing down thousands of tasks and sockets one by one.
    std::process::exit(if ok { 0 } else { 1 });
}

/// Checks the options; returns the user-name prefix and the settings object for the report.
fn validate(cli: &Cli) -> Res<(String, Value)> {
    let addr = http_addr(cli)?;
    let nodes = node_addrs(cli)?;
    if cli.sources == 0 || cli.sources > 254 {
        return Err("--sources must be 1..=254".into());
    }
    if cli.sources > 1 && !(addr.is_ipv4() && nodes.iter().flatten().all(SocketAddr::is_ipv4)) {
        return Err("--sources > 1 needs an IPv4 server address".into());
    }
    if nodes.is_some() && matches!(cli.scenario, Scenario::Floor { .. } | Scenario::Soak { .. }) {
        return Err("--nodes is for idle, pairs, group and broadcast (floor has no server, soak starts its own)".into());
    }
    if cli.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if cli.msg_bytes == 0 || cli.msg_bytes > 60_000 {
        return Err("--msg-bytes must be 1..=60000".into());
    }
    if !(cli.drain_secs >= 0.0 && cli.drain_secs <= 600.0) {
        return Err("--drain-secs must be 0..=600".into());
    }
    // imd refuses passwords over bcrypt's 72 bytes.
    if cli.password.chars().count() < 6 || cli.password.len() > 72 {
        return Err("--password must be 6 characters to 72 bytes".into());
    }
    let prefix = match &cli.user_prefix {
        Some(p) => p.clone(),
        None => default_prefix(),
    };
    if prefix.is_empty()
        || prefix.len() > 24
        || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err("--user-prefix must be 1..=24 characters of A-Za-z0-9_.-".into());
    }
    let mut settings = json!({
        "addr": addr.to_string(),
        "sources": cli.sources,
        "user_prefix": prefix,
        "password": "<redacted>",
        "concurrency": cli.concurrency,
        "msg_bytes": cli.msg_bytes,
        "drain_secs": cli.drain_secs,
    });
    let s = settings.as_object_mut().expect("object");
    if let Some(nodes) = &nodes {
        s.insert("nodes".into(), json!(nodes.iter().map(SocketAddr::to_string).collect::<Vec<_>>()));
    }
    match &cli.scenario {
        Scenario::Idle { conns, users, hold } => {
            let users = users.unwrap_or(*conns);
            if *conns == 0 || users == 0 || users > *conns {
                return Err("need --conns >= 1 and 1 <= --users <= --conns".into());
            }
            if !(*hold >= 0.0 && *hold <= 3600.0) {
                return Err("--hold must be 0..=3600".into());
            }
            s.insert("conns".into(), json!(conns));
            s.insert("users".into(), json!(users));
            s.insert("hold".into(), json!(hold));
        }
        Scenario::Pairs { pairs, pacing, login_flood } => {
            if *pairs == 0 {
                return Err("need --pairs >= 1".into());
            }
            if login_flood.is_some_and(|r| !(r > 0.0 && r <= 100_000.0)) {
                return Err("--login-flood must be in (0, 100000]".into());
            }
            s.insert("pairs".into(), json!(pairs));
            s.insert("login_flood".into(), json!(login_flood));
            pacing.check_into(s)?;
        }
        Scenario::Group { members, senders, pacing } => {
            if *members < 2 || *senders == 0 || *senders > *members {
                return Err("need --members >= 2 and 1 <= --senders <= --members".into());
            }
            s.insert("members".into(), json!(members));
            s.insert("senders".into(), json!(senders));
            pacing.check_into(s)?;
        }
        Scenario::Broadcast { conns, users, admin_token } => {
            let users = users.unwrap_or(*conns);
            if *conns == 0 || users == 0 || users > *conns {
                return Err("need --conns >= 1 and 1 <= --users <= --conns".into());
            }
            if admin_token.is_empty() {
                return Err("--admin-token must not be empty".into());
            }
            s.insert("conns".into(), json!(conns));
            s.insert("users".into(), json!(users));
            s.insert("admin_token".into(), json!("<redacted>"));
        }
        Scenario::Floor { rate, duration, echo_core } => {
            // Written so that NaN fails too.
            let rate_ok = *rate > 0.0 && *rate <= 100_000.0;
            let duration_ok = *duration > 0.0 && *duration <= 3600.0;
            if !(rate_ok && duration_ok) {
                return Err("need 0 < --rate <= 100000 and 0 < --duration <= 3600".into());
            }
            s.insert("rate".into(), json!(rate));
            s.insert("duration".into(), json!(duration));
            s.insert("echo_core".into(), json!(echo_core));
            s.insert("message_bytes".into(), json!(FLOOR_MESSAGE_BYTES));
        }
        Scenario::Soak { opts } => {
            if cli.sources != 1 {
                return Err("soak uses one source address".into());
            }
            opts.check_into(s)?;
        }
    }
    Ok((prefix, settings))
}

async fn run(cli: &Cli, prefix: String) -> Res<(Value, bool)> {
    let addr = http_addr(cli)?;
    // Connections that only wait for a frame or two get a small read buffer (allocated and
    // zeroed up front: at 15,000 connections 8 KiB each cost the load generator ~10% of its
    // connect time); chat loads read many frames per call.
    let read_buffer = match cli.scenario {
        Scenario::Idle { .. } | Scenario::Broadcast { .. } | Scenario::Floor { .. } => 1024,
        Scenario::Pairs { .. } | Scenario::Group { .. } | Scenario::Soak { .. } => 8 * 1024,
    };
    let net = Rc::new(Net::new(addr, cli.sources, read_buffer));
    let nodes = match node_addrs(cli)? {
        Some(addrs) => {
            Nodes::spread(addrs.into_iter().map(|a| Rc::new(Net::new(a, cli.sources, read_buffer))).collect())
        }
        None => Nodes::single(net.clone()),
    };
    let ctx = Ctx {
        net,
        nodes,
        prefix,
        password: cli.password.clone(),
        concurrency: cli.concurrency,
        msg_text: "x".repeat(cli.msg_bytes),
        drain: Duration::from_secs_f64(cli.drain_secs),
    };
    let (mut report, ok) = match &cli.scenario {
        Scenario::Idle { conns, users, hold } => {
            idle(&ctx, *conns, users.unwrap_or(*conns), Duration::from_secs_f64(*hold)).await
        }
        Scenario::Pairs { pairs, pacing, login_flood } => {
            chat_load(&ctx, Kind::Pairs { pairs: *pairs }, *pacing, *login_flood).await
        }
        Scenario::Group { members, senders, pacing } => {
            chat_load(&ctx, Kind::Group { members: *members, senders: *senders }, *pacing, None).await
        }
        Scenario::Broadcast { conns, users, admin_token } => {
            broadcast(&ctx, *conns, users.unwrap_or(*conns), admin_token).await
        }
        // Talks to no server: blocking sockets on its own threads, nothing else runs meanwhile.
        Scenario::Floor { rate, duration, echo_core } => floor(*rate, Duration::from_secs_f64(*duration), *echo_core),
        Scenario::Soak { opts } => soak::soak(&ctx, opts, addr.port()).await,
    }?;
    if let (Some(nodes), Some(obj)) = (ctx.nodes.report(), report.as_object_mut()) {
        obj.insert("nodes".into(), nodes);
    }
    Ok((report, ok))
}

struct Ctx {
    /// The server of the HTTP set-up (registrations, rooms, /health).
    net: Rc<Net>,
    /// The servers the WebSocket connections go to.
    nodes: Nodes,
    prefix: String,
    password: String,
    concurrency: usize,
    msg_text: String,
    drain: Duration,
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Microseconds since the process's time base; embedded in `msg_id` to measure latency.
fn now_us() -> u64 {
    t0().elapsed().as_micros() as u64
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
}

/// Latencies in µs, from 1 µs to an hour, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds are valid")
}

/// The `latency_us` object of a report.
fn latency_json(hist: &Histogram<u64>) -> Value {
    json!({
        "count": hist.len(),
        "p50": hist.value_at_quantile(0.50),
        "p90": hist.value_at_quantile(0.90),
        "p99": hist.value_at_quantile(0.99),
        "max": hist.max(),
        "mean": hist.mean().round(),
    })
}

fn per_sec(count: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { (count as f64 / s * 10.0).round() / 10.0 } else { 0.0 }
}

fn default_prefix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut x = (nanos as u64) ^ ((std::process::id() as u64) << 40);
    let mut s = String::from("lg");
    for _ in 0..9 {
        let d = (x % 36) as u32;
        s.push(char::from_digit(d, 36).expect("digit"));
        x /= 36;
    }
    s.push('_');
    s
}

/// The server address of `option` (`--addr` or `--nodes`); loopback only.
fn parse_addr(s: &str, option: &str) -> Res<SocketAddr> {
    let addr: SocketAddr = match s.strip_prefix("localhost:") {
        Some(port) => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port.parse().map_err(|_| format!("bad port in {option} {s}"))?)
        }
        None => s.parse().map_err(|_| format!("{option} {s}: expected IP:PORT"))?,
    };
    if !addr.ip().to_canonical().is_loopback() {
        return Err(format!("refusing {option} {addr}: the load generator only targets loopback addresses"));
    }
    Ok(addr)
}

const DEFAULT_ADDR: &str = "127.0.0.1:9501";

/// The servers of `--nodes`, if given.
fn node_addrs(cli: &Cli) -> Res<Option<Vec<SocketAddr>>> {
    let Some(nodes) = &cli.nodes else { return Ok(None) };
    let addrs = nodes.iter().map(|n| parse_addr(n.trim(), "--nodes")).collect::<Res<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err("--nodes needs at least one IP:PORT".into());
    }
    Ok(Some(addrs))
}

/// The server of the HTTP set-up: `--addr`, else the first of `--nodes`, else the default.
fn http_addr(cli: &Cli) -> Res<SocketAddr> {
    match (&cli.addr, node_addrs(cli)?) {
        (Some(addr), _) => parse_addr(addr, "--addr"),
        (None, Some(nodes)) => Ok(nodes[0]),
        (None, None) => parse_addr(DEFAULT_ADDR, "--addr"),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
fn raise_nofile_limit() {
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("loadgen: could not raise RLIMIT_NOFILE");
            }
        }
    }
}

/// Resident memory of a process in bytes, from `/proc/PID/status`.
fn vm_rss(pid: u64) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|_| format!("{path}: bad VmRSS line {line:?}"))?;
            return Ok(kb * 1024);
        }
    }
    Err(format!("{path}: no VmRSS line"))
}

/// Resident memory of all `pids` together (the servers behind the nodes).
fn total_rss(pids: &[u64]) -> Res<u64> {
    pids.iter().map(|&pid| vm_rss(pid)).sum()
}

/// CPU time (user + system) of a process in seconds, from `/proc/PID/stat`.
fn cpu_secs(pid: &str) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds per thread name of a process (threads of one name summed), from
/// `/proc/PID/task/*/stat`: says which of the server's threads (`imd-worker`, the store
/// writer, the checkpointer) a load keeps busy.
fn cpu_secs_by_thread(pid: &str) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let name = text.find('(').zip(text.rfind(')')).map(|(open, close)| &text[open + 1..close]);
        if let (Some(name), Some(secs)) = (name, stat_cpu_secs(&text)) {
            *by_name.entry(name.to_string()).or_insert(0.0) += secs;
        }
    }
    by_name
}

/// [`cpu_secs`] summed over processes; None if any cannot be read.
fn servers_cpu_secs(pids: &[String]) -> Option<f64> {
    pids.iter().map(|pid| cpu_secs(pid)).sum()
}

/// [`cpu_secs_by_thread`] summed by thread name over processes.
fn servers_cpu_secs_by_thread(pids: &[String]) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for pid in pids {
        for (name, secs) in cpu_secs_by_thread(pid) {
            *total.entry(name).or_insert(0.0) += secs;
        }
    }
    total
}

/// utime + stime of a `stat` line, in seconds.
fn stat_cpu_secs(text: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime
    // are the 14th and 15th fields of the line.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// How busy the server and the load generator were over a period, in cores (1.0 = one core
/// all the time): tells whether a figure is the server's limit or the load generator's.
/// With several servers (`--nodes`), `server` and each thread name are summed over them.
struct CpuMeter {
    server_pids: Vec<String>,
    start: Instant,
    server: Option<f64>,
    server_threads: BTreeMap<String, f64>,
    loadgen: Option<f64>,
}

impl CpuMeter {
    fn start(server_pids: &[u64]) -> CpuMeter {
        let server_pids: Vec<String> = server_pids.iter().map(u64::to_string).collect();
        let server = servers_cpu_secs(&server_pids);
        let server_threads = servers_cpu_secs_by_thread(&server_pids);
        CpuMeter { server_pids, start: Instant::now(), server, server_threads, loadgen: cpu_secs("self") }
    }

    fn report(&self) -> Value {
        let wall = self.start.elapsed().as_secs_f64();
        let share = |before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(b), Some(n)) if wall > 0.0 => json!(((n - b) / wall * 100.0).round() / 100.0),
            _ => Value::Null,
        };
        // A thread that started during the period counts from zero.
        let threads: serde_json::Map<String, Value> = servers_cpu_secs_by_thread(&self.server_pids)
            .into_iter()
            .map(|(name, now)| {
                let before = self.server_threads.get(&name).copied().unwrap_or(0.0);
                (name, share(Some(before), Some(now)))
            })
            .collect();
        json!({
            "server": share(self.server, servers_cpu_secs(&self.server_pids)),
            "server_threads": threads,
            "loadgen": share(self.loadgen, cpu_secs("self")),
        })
    }
}

/// Keeps the first few error messages for the report.
#[derive(Default)]
struct Errors {
    count: Cell<u64>,
    samples: RefCell<Vec<String>>,
}

impl Errors {
    fn add(&self, msg: String) {
        self.count.set(self.count.get() + 1);
        let mut samples = self.samples.borrow_mut();
        if samples.len() < ERROR_SAMPLES {
            eprintln!("loadgen: {msg}");
            samples.push(msg);
        }
    }
    fn get(&self) -> u64 {
        self.count.get()
    }
    fn samples(&self) -> Value {
        json!(*self.samples.borrow())
    }
}

// ---------------------------------------------------------------------------------------------
// Networking: TCP with chosen source addresses, HTTP/1.1 keep-alive, WebSocket upgrade

struct Net {
    addr: SocketAddr,
    sources: Vec<IpAddr>,
    next_source: Cell<usize>,
    read_buffer: usize,
}

impl Net {
    fn new(addr: SocketAddr, sources: u32, read_buffer: usize) -> Net {
        let sources = if addr.is_ipv4() {
            (1..=sources).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8))).collect()
        } else {
            Vec::new()
        };
        Net { addr, sources, next_source: Cell::new(0), read_buffer }
    }

    /// A TCP connection to the server, bound to the next source address (round-robin).
    async fn tcp(&self) -> Res<TcpStream> {
        let sock = if self.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("socket: {e}"))?;
        if !self.sources.is_empty() {
            let i = self.next_source.get();
            self.next_source.set((i + 1) % self.sources.len());
            let src = self.sources[i];
            // Let connect() pick the port, so the whole 4-tuple space is usable.
            let one: libc::c_int = 1;
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(SocketAddr::new(src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
        }
        sock.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        sock.connect(self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))
    }

    /// WebSocket upgrade with `token`; consumes `connected` .. `sync_done`.
    async fn ws(&self, token: &str, device: &str) -> Res<Ws> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        let tcp =
            tokio::time::timeout_at(deadline, self.tcp()).await.map_err(|_| "TCP connect timed out".to_string())??;
        let path = format!("/?access_token={token}&device={device}");
        // Small buffers so that tens of thousands of connections stay cheap.
        let config = WebSocketConfig::default().read_buffer_size(self.read_buffer).write_buffer_size(16 * 1024);
        let host = self.addr.to_string();
        let upgrade = upgrade(tcp, &host, &path, config);
        let mut ws = tokio::time::timeout_at(deadline, upgrade).await.map_err(|_| "WebSocket upgrade timed out")??;
        let first = next_json(&mut ws, deadline).await?;
        if first["action"] != "connected" {
            return Err(format!("first frame is not `connected`: {first}"));
        }
        loop {
            let frame = next_json(&mut ws, deadline).await?;
            if frame["action"] == "sync_done" {
                return Ok(ws);
            }
        }
    }
}

/// The servers that WebSocket connections go to: the one of `--addr`, or the nodes of
/// `--nodes` with how many connections each was given.
struct Nodes {
    nets: Vec<Rc<Net>>,
    /// Connections made to each node (successful upgrades).
    conns: RefCell<Vec<u64>>,
    /// Whether `--nodes` was given: only then does the report list the nodes.
    spread: bool,
}

impl Nodes {
    fn single(net: Rc<Net>) -> Nodes {
        Nodes { nets: vec![net], conns: RefCell::new(vec![0]), spread: false }
    }

    fn spread(nets: Vec<Rc<Net>>) -> Nodes {
        let conns = RefCell::new(vec![0; nets.len()]);
        Nodes { nets, conns, spread: true }
    }

    fn len(&self) -> usize {
        self.nets.len()
    }

    /// The report's `nodes`: each node's address and connection count (None without `--nodes`).
    fn report(&self) -> Option<Value> {
        let conns = self.conns.borrow();
        let list: Vec<Value> = self
            .nets
            .iter()
            .zip(conns.iter())
            .map(|(net, n)| json!({"addr": net.addr.to_string(), "connections": n}))
            .collect();
        self.spread.then(|| json!(list))
    }
}

/// The client side of the WebSocket upgrade (RFC 6455 section 4.1), using tungstenite's key
/// functions and httparse. tungstenite's general client handshake builds an `http::Request`
/// from a URL and allocates and zeroes 8 KiB per connection, which was a quarter of the load
/// generator's time per connect; this is the same exchange without them.
async fn upgrade(mut tcp: TcpStream, host: &str, path: &str, config: WebSocketConfig) -> Res<Ws> {
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.map_err(|e| format!("WebSocket upgrade: {e}"))?;
    let mut response = Vec::with_capacity(512);
    loop {
        if tcp.read_buf(&mut response).await.map_err(|e| format!("WebSocket upgrade: {e}"))? == 0 {
            return Err("WebSocket upgrade: connection closed before the response".into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        let length = match parsed.parse(&response).map_err(|e| format!("WebSocket upgrade: bad response: {e}"))? {
            httparse::Status::Partial if response.len() < 16 * 1024 => continue,
            httparse::Status::Partial => return Err("WebSocket upgrade: response head too large".into()),
            httparse::Status::Complete(length) => length,
        };
        let status = parsed.code.unwrap_or(0);
        if status != 101 {
            return Err(format!("WebSocket upgrade refused with HTTP {status}"));
        }
        let accept = parsed.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
        if accept.map(|h| h.value) != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
            return Err("WebSocket upgrade: wrong or missing Sec-WebSocket-Accept".into());
        }
        // The server may send its first frames in the same segment as the response.
        let frames = response.split_off(length);
        return Ok(WebSocketStream::from_partially_read(tcp, frames, Role::Client, Some(config)).await);
    }
}

/// The next text frame as JSON (pings are answered by the library while reading).
async fn next_json(ws: &mut Ws, deadline: tokio::time::Instant) -> Res<Value> {
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("timed out waiting for a frame".into()),
            Ok(None) => return Err("connection ended".into()),
            Ok(Some(Err(e))) => return Err(format!("WebSocket error: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("frame is not JSON ({e}): {t}"));
            }
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed by server: {f:?}")),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Sends a close frame and waits (briefly) for the server's close.
async fn close_ws(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// One HTTP/1.1 keep-alive connection, reopened when the server closes it.
struct Http {
    net: Rc<Net>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http {
    fn new(net: Rc<Net>) -> Http {
        Http { net, sender: None }
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Res<(u16, Value)> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        tokio::time::timeout_at(deadline, self.request_inner(method, path, body, token))
            .await
            .map_err(|_| format!("{method} {path}: timed out"))?
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Res<(u16, Value)> {
        let mut last_err = String::new();
        for _attempt in 0..2 {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let tcp = self.net.tcp().await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("HTTP handshake: {e}"))?;
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                });
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().expect("sender");
            if sender.ready().await.is_err() {
                self.sender = None;
                continue;
            }
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.net.addr.to_string());
            if let Some(token) = token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let bytes = match body {
                Some(v) => {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(v.to_string())
                }
                None => Bytes::new(),
            };
            let req = req.body(Full::new(bytes)).map_err(|e| format!("request: {e}"))?;
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body =
                        resp.into_body().collect().await.map_err(|e| format!("{method} {path}: body: {e}"))?.to_bytes();
                    let value = serde_json::from_slice(&body).map_err(|e| {
                        format!("{method} {path}: reply is not JSON ({e}): {}", String::from_utf8_lossy(&body))
                    })?;
                    return Ok((status, value));
                }
                Err(e) => {
                    // Typically the server closed the idle keep-alive connection: retry once.
                    last_err = format!("{method} {path}: {e}");
                    self.sender = None;
                }
            }
        }
        Err(last_err)
    }

    /// A request that must answer 200; returns `data`.
    async fn ok(&mut self, method: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> Res<Value> {
        let (status, mut value) = self.request(method, path, body, token).await?;
        if status != 200 || value["code"] != 200 {
            return Err(format!("{method} {path}: HTTP {status}: {value}"));
        }
        Ok(value["data"].take())
    }
}

struct Health {
    pid: u64,
    online: Option<u64>,
}

async fn health(net: &Rc<Net>) -> Res<Health> {
    let data = Http::new(net.clone()).ok("GET", "/health", None, None).await?;
    let pid = data["pid"].as_u64().ok_or_else(|| format!("GET /health: no data.pid in {data}"))?;
    Ok(Health { pid, online: data["online"].as_u64() })
}

/// /health of every node, one entry per server process (two addresses of one process, as in
/// a test, count once); without `--nodes` just the one server.
async fn node_health(ctx: &Ctx) -> Res<Vec<Health>> {
    if !ctx.nodes.spread {
        return Ok(vec![health(&ctx.net).await?]);
    }
    let mut all: Vec<Health> = Vec::new();
    for net in &ctx.nodes.nets {
        let h = health(net).await?;
        if all.iter().all(|seen| seen.pid != h.pid) {
            all.push(h);
        }
    }
    Ok(all)
}

/// The PIDs of the server processes behind the nodes.
async fn server_pids(ctx: &Ctx) -> Res<Vec<u64>> {
    Ok(node_health(ctx).await?.iter().map(|h| h.pid).collect())
}

#[derive(Clone)]
struct User {
    uid: u64,
    token: Rc<str>,
}

/// Registers `count` users `<prefix><i>` with bounded concurrency over keep-alive connections.
async fn register_users(ctx: &Ctx, count: usize) -> Res<(Vec<User>, Duration)> {
    let started = Instant::now();
    let next = Cell::new(0usize);
    let users: RefCell<Vec<Option<User>>> = RefCell::new(vec![None; count]);
    let workers = (0..ctx.concurrency.min(count)).map(|_| async {
        let mut http = Http::new(ctx.net.clone());
        loop {
            let i = next.get();
            if i >= count {
                return Ok::<(), String>(());
            }
            next.set(i + 1);
            let name = format!("{}{i}", ctx.prefix);
            let body = json!({"username": name, "password": ctx.password});
            let data = http.ok("POST", "/user/register", Some(&body), None).await?;
            let uid = data["uid"].as_u64().ok_or_else(|| format!("register: no uid in {data}"))?;
            let token = data["access_token"].as_str().ok_or_else(|| format!("register: no access_token in {data}"))?;
            users.borrow_mut()[i] = Some(User { uid, token: token.into() });
        }
    });
    futures_util::future::try_join_all(workers).await?;
    let users = users.into_inner().into_iter().map(|u| u.expect("registered")).collect();
    let took = started.elapsed();
    eprintln!("loadgen: registered {count} users in {:.2}s", took.as_secs_f64());
    Ok((users, took))
}

/// Opens one connection per token with bounded concurrency, connection i to node
/// `node_of(i)`; each is past `sync_done`. Returns the connections in token order and the time
/// from the first connect start to the last `sync_done`.
async fn connect_all(ctx: &Ctx, tokens: Vec<Rc<str>>, node_of: impl Fn(usize) -> usize) -> Res<(Vec<Ws>, Duration)> {
    let n = tokens.len();
    let started = Instant::now();
    let mut results: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut stream = futures_util::stream::iter(tokens.into_iter().enumerate().map(|(i, token)| {
        let node = node_of(i) % ctx.nodes.len();
        let net = ctx.nodes.nets[node].clone();
        // With several nodes, a user registered through one is known at once on the others:
        // the node reads a token's unknown user through from the shared database.
        async move { (i, node, net.ws(&token, &format!("lg{i}")).await) }
    }))
    .buffer_unordered(ctx.concurrency);
    while let Some((i, node, r)) = stream.next().await {
        let ws = r.map_err(|e| format!("connection {i}: {e}"))?;
        ctx.nodes.conns.borrow_mut()[node] += 1;
        results[i] = Some(ws);
    }
    let took = started.elapsed();
    eprintln!("loadgen: {n} connections up in {:.2}s", took.as_secs_f64());
    Ok((results.into_iter().map(|w| w.expect("connected")).collect(), took))
}

// ---------------------------------------------------------------------------------------------
// Scenario: idle

async fn idle(ctx: &Ctx, conns: usize, users: usize, hold: Duration) -> Res<(Value, bool)> {
    let servers = node_health(ctx).await?;
    let pids: Vec<u64> = servers.iter().map(|h| h.pid).collect();
    let (accounts, register_took) = register_users(ctx, users).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = total_rss(&pids);
    let tokens = (0..conns).map(|i| accounts[i % users].token.clone()).collect();
    let cpu = CpuMeter::start(&pids);
    let (streams, connect_took) = connect_all(ctx, tokens, |i| i).await?;
    let connect_cpu = cpu.report();

    // Every connection gets a task that keeps reading (answers pings) until told to stop.
    let errors = Rc::new(Errors::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let holders: Vec<_> = streams
        .into_iter()
        .map(|ws| tokio::task::spawn_local(hold_task(ws, stop_rx.clone(), errors.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = total_rss(&pids);
    // Each server counts its own connections.
    let online = node_health(ctx).await?.iter().map(|h| h.online).sum::<Option<u64>>();
    tokio::time::sleep(hold).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(holders)).await;

    let (before, after, per_conn, rss_error) = match (&rss_before, &rss_after) {
        (Ok(b), Ok(a)) => (json!(b), json!(a), json!((*a as f64 - *b as f64) / conns as f64), Value::Null),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("loadgen: cannot read the server's memory: {e}");
            (Value::Null, Value::Null, Value::Null, json!(e))
        }
    };
    let ok = errors.get() == 0;
    let mut report = json!({
        "server_pid": pids[0],
        "register_secs": secs(register_took),
        "register_per_sec": per_sec(users as u64, register_took),
        "connect_secs": secs(connect_took),
        "connect_rate": per_sec(conns as u64, connect_took),
        "connect_cpu_cores": connect_cpu,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_per_conn_bytes": per_conn,
        "rss_error": rss_error,
        "server_online": online,
        "errors": errors.get(),
        "error_samples": errors.samples(),
    });
    if ctx.nodes.spread
        && let Some(obj) = report.as_object_mut()
    {
        // The memory and online figures above are summed over these processes.
        obj.insert("server_pids".into(), json!(pids));
    }
    Ok((report, ok))
}

/// What a held connection's next item means: `Some(Some(text))` a text frame, `Some(None)`
/// something else to ignore, `None` the connection's end (recorded as an error).
fn held_frame(
    msg: Option<Result<Message, tungstenite::Error>>,
    what: &str,
    errors: &Errors,
) -> Option<Option<tungstenite::Utf8Bytes>> {
    match msg {
        Some(Ok(Message::Text(text))) => Some(Some(text)),
        Some(Ok(Message::Close(f))) => {
            errors.add(format!("{what} connection closed by server: {f:?}"));
            None
        }
        Some(Ok(_)) => Some(None),
        Some(Err(e)) => {
            errors.add(format!("{what} connection: {e}"));
            None
        }
        None => {
            errors.add(format!("{what} connection ended"));
            None
        }
    }
}

async fn hold_task(mut ws: Ws, mut stop: watch::Receiver<bool>, errors: Rc<Errors>) {
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => {}
            msg = ws.next() => if held_frame(msg, "idle", &errors).is_none() {
                return;
            },
        }
    }
    close_ws(ws).await;
}

// ---------------------------------------------------------------------------------------------
// Scenarios: pairs and group (chat load)

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Clients 0..P send, client P+i receives from client i.
    Pairs { pairs: usize },
    /// Clients 0..M are room members, 0..K send.
    Group { members: usize, senders: usize },
}

impl Kind {
    fn clients(self) -> usize {
        match self {
            Kind::Pairs { pairs } => 2 * pairs,
            Kind::Group { members, .. } => members,
        }
    }
    fn senders(self) -> usize {
        match self {
            Kind::Pairs { pairs } => pairs,
            Kind::Group { senders, .. } => senders,
        }
    }
    /// Receipts expected per acknowledged message.
    fn fanout(self) -> u64 {
        match self {
            Kind::Pairs { .. } => 1,
            Kind::Group { members, .. } => members as u64 - 1,
        }
    }
    /// The node (of `nodes`) client `c` connects to: round-robin, except that the receiver of
    /// a pair goes to the node after its sender's, so with several nodes every message crosses
    /// nodes.
    fn node(self, c: usize, nodes: usize) -> usize {
        match self {
            Kind::Pairs { pairs } if c >= pairs => (c - pairs + 1) % nodes,
            _ => c % nodes,
        }
    }

    fn is_recipient(self, sender: usize, me: usize) -> bool {
        match self {
            Kind::Pairs { pairs } => me == pairs + sender,
            Kind::Group { .. } => me != sender,
        }
    }
}

/// How hard the chat scenarios (pairs, group) push.
#[derive(clap::Args, Debug, Clone, Copy)]
struct Pacing {
    /// Messages in flight per sender awaiting their ack.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Total messages per second over all senders (paced); default: as fast as acks allow.
    #[arg(long)]
    rate: Option<f64>,
}

impl Pacing {
    /// Checks the values and records them in the run's settings.
    fn check_into(&self, settings: &mut serde_json::Map<String, Value>) -> Res<()> {
        if self.window == 0 {
            return Err("need --window >= 1".into());
        }
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            return Err("--duration must be in (0, 3600]".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("--rate must be positive".into());
        }
        settings.insert("window".into(), json!(self.window));
        settings.insert("duration".into(), json!(self.duration));
        settings.insert("rate".into(), json!(self.rate));
        Ok(())
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }
}

/// Per sender: the fate of each message it sent, by the sender's message number.
#[derive(Default)]
struct Track {
    /// 0 sent, 1 acknowledged, 2 refused with an error frame.
    status: Vec<u8>,
    /// Receipts counted at the recipients.
    receipts: Vec<u32>,
}

const SENT: u8 = 0;
const ACKED: u8 = 1;
const REFUSED: u8 = 2;

/// Everything the client tasks share (one thread, so plain cells).
struct Load {
    kind: Kind,
    uids: Vec<u64>,
    tracks: Vec<RefCell<Track>>,
    hist: RefCell<Histogram<u64>>,
    sent: Cell<u64>,
    acked: Cell<u64>,
    refused: Cell<u64>,
    in_flight: Cell<u64>,
    deliveries: Cell<u64>,
    misrouted: Cell<u64>,
    reordered: Cell<u64>,
    own_echo: Cell<u64>,
    errors: Errors,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(borrow, default)]
    msg_id: Option<Cow<'a, str>>,
    #[serde(default)]
    from_uid: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
}

impl<'a> Frame<'a> {
    /// Fast path for the hot frames (acks and chat messages) in the compact form and field
    /// order the server writes, read in one pass; `None` sends the frame through the full JSON
    /// parser (so another order or an escaped string is still read, only slower).
    fn scan(text: &'a str) -> Option<Frame<'a>> {
        if !text.starts_with('{') {
            return None;
        }
        let keys = keys();
        let mut cursor = Cursor { text, at: 0 };
        let action = cursor.str_after(&keys.action)?;
        let frame = match action {
            "ack" => {
                let code = Some(cursor.num_after(&keys.code)? as u32);
                let msg_id = cursor.str_after(&keys.msg_id)?;
                Frame {
                    action: Cow::Borrowed(action),
                    code,
                    msg_id: Some(Cow::Borrowed(msg_id)),
                    from_uid: None,
                    seq: None,
                }
            }
            "single_chat" | "group_chat" => {
                let seq = Some(cursor.num_after(&keys.seq)?);
                let msg_id = cursor.str_after(&keys.msg_id)?;
                let from_uid = Some(cursor.num_after(&keys.from_uid)?);
                Frame { action: Cow::Borrowed(action), code: None, msg_id: Some(Cow::Borrowed(msg_id)), from_uid, seq }
            }
            _ => return None,
        };
        Some(frame)
    }
}

/// The keys `Frame::scan` looks for, with their searchers built once: building a substring
/// searcher per call was a quarter of the load generator's time at a million frames per second.
struct Keys {
    action: Finder<'static>,
    code: Finder<'static>,
    msg_id: Finder<'static>,
    from_uid: Finder<'static>,
    seq: Finder<'static>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        action: Finder::new("\"action\":\""),
        code: Finder::new("\"code\":"),
        msg_id: Finder::new("\"msg_id\":\""),
        from_uid: Finder::new("\"from_uid\":"),
        seq: Finder::new("\"seq\":"),
    })
}

/// Reads a frame's values front to back: each key is looked for after the previous value.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The string value after `key`, if it has no escapes.
    fn str_after(&mut self, key: &Finder<'_>) -> Option<&'a str> {
        let start = self.value_at(key)?;
        let len = memchr::memchr2(b'"', b'\\', &self.text.as_bytes()[start..])?;
        (self.text.as_bytes()[start + len] == b'"').then(|| {
            self.at = start + len + 1;
            &self.text[start..start + len]
        })
    }

    /// The unsigned number after `key`.
    fn num_after(&mut self, key: &Finder<'_>) -> Option<u64> {
        let start = self.value_at(key)?;
        let digits = self.text.as_bytes()[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        self.at = start + digits;
        self.text[start..start + digits].parse().ok()
    }

    fn value_at(&self, key: &Finder<'_>) -> Option<usize> {
        let found = key.find(&self.text.as_bytes()[self.at..])?;
        Some(self.at + found + key.needle().len())
    }
}

/// `msg_id` = `<sender index>.<message number>.<send time in µs>`.
fn parse_msg_id(id: &str) -> Option<(usize, usize, u64)> {
    let mut it = id.split('.');
    let s = it.next()?.parse().ok()?;
    let n = it.next()?.parse().ok()?;
    let t = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((s, n, t))
}

struct SendPlan {
    /// The frame up to `msg_id`'s value, e.g. `{"action":"single_chat",...,"msg_id":"`.
    head: String,
    /// The rest after `msg_id`'s value, e.g. `","to_uid":2,"msg":"xxxx"}`.
    tail: String,
    window: usize,
    period: Option<Duration>,
    first_due: tokio::time::Instant,
    until: tokio::time::Instant,
}

impl Load {
    fn frame(&self, me: usize, text: &str, last_seq: &mut u64, in_flight: &mut usize) {
        let parsed = match Frame::scan(text) {
            Some(f) => Ok(f),
            None => serde_json::from_str(text),
        };
        let f = match parsed {
            Ok(f) => f,
            Err(e) => {
                self.errors.add(format!("client {me}: unexpected frame ({e}): {text}"));
                return;
            }
        };
        match f.action.as_ref() {
            "ack" => {
                let Some((s, n, _)) = f.msg_id.as_deref().and_then(parse_msg_id) else {
                    self.errors.add(format!("client {me}: ack without our msg_id: {text}"));
                    return;
                };
                if f.code != Some(200) || s != me {
                    self.errors.add(format!("client {me}: unexpected ack: {text}"));
                    return;
                }
                let mut tr = self.tracks[s].borrow_mut();
                match tr.status.get(n) {
                    Some(&SENT) => {
                        tr.status[n] = ACKED;
                        self.acked.set(self.acked.get() + 1);
                        self.in_flight.set(self.in_flight.get() - 1);
                        *in_flight -= 1;
                    }
                    _ => self.errors.add(format!("client {me}: second or unknown ack: {text}")),
                }
            }
            "error" => {
                self.errors.add(format!("client {me}: error frame: {text}"));
                if let Some((s, n, _)) = f.msg_id.as_deref().and_then(parse_msg_id)
                    && s == me
                {
                    let mut tr = self.tracks[s].borrow_mut();
                    if tr.status.get(n) == Some(&SENT) {
                        tr.status[n] = REFUSED;
                        self.refused.set(self.refused.get() + 1);
                        self.in_flight.set(self.in_flight.get() - 1);
                        *in_flight -= 1;
                    }
                }
            }
            "single_chat" | "group_chat" => {
                let now = now_us();
                let Some((s, n, t)) = f.msg_id.as_deref().and_then(parse_msg_id) else {
                    self.errors.add(format!("client {me}: message not sent by this run: {text}"));
                    return;
                };
                if s >= self.tracks.len() || f.from_uid != Some(self.uids[s]) {
                    self.misrouted.set(self.misrouted.get() + 1);
                    self.errors.add(format!("client {me}: message with a wrong sender: {text}"));
                    return;
                }
                if s == me {
                    self.own_echo.set(self.own_echo.get() + 1);
                    self.errors.add(format!("client {me}: got its own message back: {text}"));
                    return;
                }
                if !self.kind.is_recipient(s, me) {
                    self.misrouted.set(self.misrouted.get() + 1);
                    self.errors.add(format!("client {me}: message for somebody else: {text}"));
                    return;
                }
                if let Some(seq) = f.seq {
                    if seq <= *last_seq {
                        self.reordered.set(self.reordered.get() + 1);
                    } else {
                        *last_seq = seq;
                    }
                }
                let mut tr = self.tracks[s].borrow_mut();
                let Some(r) = tr.receipts.get_mut(n) else {
                    self.errors.add(format!("client {me}: message number never sent: {text}"));
                    return;
                };
                *r += 1;
                drop(tr);
                self.deliveries.set(self.deliveries.get() + 1);
                self.hist.borrow_mut().saturating_record(now.saturating_sub(t).max(1));
            }
            // pong, read receipts, broadcasts, anything the server adds later
            _ => {}
        }
    }
}

/// One client connection: receives (counting receipts and acks) and, with a plan, sends.
async fn client_task(load: Rc<Load>, me: usize, mut ws: Ws, plan: Option<SendPlan>, mut stop: watch::Receiver<bool>) {
    let mut last_seq = 0u64;
    let mut in_flight = 0usize;
    let mut sending = plan.is_some();
    let mut next_due = plan.as_ref().map(|p| p.first_due);
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    let mut id = String::with_capacity(64);
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        if let (true, Some(p)) = (sending, plan.as_ref()) {
            let now = tokio::time::Instant::now();
            if now >= p.until {
                sending = false;
            } else {
                let mut fed = false;
                while in_flight < p.window && next_due.is_none_or(|d| d <= now) {
                    let n = {
                        let mut tr = load.tracks[me].borrow_mut();
                        tr.status.push(SENT);
                        tr.receipts.push(0);
                        tr.status.len() - 1
                    };
                    id.clear();
                    use std::fmt::Write;
                    let _ = write!(id, "{me}.{n}.{}", now_us());
                    let mut frame = String::with_capacity(p.head.len() + id.len() + p.tail.len());
                    frame.push_str(&p.head);
                    frame.push_str(&id);
                    frame.push_str(&p.tail);
                    if let Err(e) = ws.feed(Message::text(frame)).await {
                        load.errors.add(format!("client {me}: send: {e}"));
                        return;
                    }
                    fed = true;
                    in_flight += 1;
                    load.in_flight.set(load.in_flight.get() + 1);
                    load.sent.set(load.sent.get() + 1);
                    if let (Some(d), Some(period)) = (next_due.as_mut(), p.period) {
                        *d += period;
                    }
                }
                if fed && let Err(e) = ws.flush().await {
                    load.errors.add(format!("client {me}: send: {e}"));
                    return;
                }
            }
        }
        // Wake for the next paced send (if the window has room) or the end of sending.
        let wake = match (sending, plan.as_ref()) {
            (true, Some(p)) => match next_due {
                Some(d) if in_flight < p.window => d.min(p.until),
                _ => p.until,
            },
            _ => far,
        };
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            msg = ws.next() => {
                let mut msg = msg;
                // Handle everything already buffered before the next round of sends.
                for _ in 0..256 {
                    match msg {
                        Some(Ok(Message::Text(t))) => load.frame(me, t.as_str(), &mut last_seq, &mut in_flight),
                        Some(Ok(Message::Close(f))) => {
                            load.errors.add(format!("client {me}: closed by server: {f:?}"));
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            load.errors.add(format!("client {me}: {e}"));
                            return;
                        }
                        None => {
                            load.errors.add(format!("client {me}: connection ended"));
                            return;
                        }
                    }
                    match ws.next().now_or_never() {
                        Some(next) => msg = next,
                        None => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(wake), if sending => {}
        }
    }
    close_ws(ws).await;
}

async fn chat_load(ctx: &Ctx, kind: Kind, pacing: Pacing, login_flood: Option<f64>) -> Res<(Value, bool)> {
    let clients = kind.clients();
    let senders = kind.senders();
    let (users, register_took) = register_users(ctx, clients).await?;

    // The frame every sender sends, split around msg_id.
    let text = serde_json::to_string(&ctx.msg_text).expect("json");
    let mut chat_id = Value::Null;
    let targets: Vec<String> = match kind {
        Kind::Pairs { pairs } => (0..pairs)
            .map(|i| {
                format!(
                    r#"{{"action":"single_chat","chat_type":1,"msg_type":"text","to_uid":{},"msg":{text},"msg_id":""#,
                    users[pairs + i].uid
                )
            })
            .collect(),
        Kind::Group { members, senders } => {
            let mut http = Http::new(ctx.net.clone());
            let body = json!({"name": format!("{}room", ctx.prefix)});
            let data = http.ok("POST", "/room/create", Some(&body), Some(&users[0].token)).await?;
            let id = data["chat_id"].as_str().ok_or_else(|| format!("/room/create: no chat_id in {data}"))?.to_string();
            chat_id = json!(id);
            join_room(ctx, &users[1..members], &id).await?;
            let quoted = serde_json::to_string(&id).expect("json");
            (0..senders)
                .map(|_| format!(r#"{{"action":"group_chat","chat_type":2,"msg_type":"text","chat_id":{quoted},"msg":{text},"msg_id":""#))
                .collect()
        }
    };

    let tokens = users.iter().map(|u| u.token.clone()).collect();
    let nodes = ctx.nodes.len();
    let (streams, connect_took) = connect_all(ctx, tokens, |c| kind.node(c, nodes)).await?;
    let server_pids = server_pids(ctx).await?;

    let load = Rc::new(Load {
        kind,
        uids: users.iter().map(|u| u.uid).collect(),
        tracks: (0..senders).map(|_| RefCell::new(Track::default())).collect(),
        hist: RefCell::new(latency_histogram()),
        sent: Cell::new(0),
        acked: Cell::new(0),
        refused: Cell::new(0),
        in_flight: Cell::new(0),
        deliveries: Cell::new(0),
        misrouted: Cell::new(0),
        reordered: Cell::new(0),
        own_echo: Cell::new(0),
        errors: Errors::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let until = start + pacing.duration();
    let period = pacing.rate.map(|r| Duration::from_secs_f64(senders as f64 / r));
    let mut tasks = Vec::with_capacity(clients);
    for (me, ws) in streams.into_iter().enumerate() {
        let plan = targets.get(me).map(|head| SendPlan {
            head: head.clone(),
            tail: r#""}"#.to_string(),
            window: pacing.window,
            period,
            // Stagger paced senders over one period so they do not fire together.
            first_due: start + period.map_or(Duration::ZERO, |p| p.mul_f64(me as f64 / senders as f64)),
            until,
        });
        tasks.push(tokio::task::spawn_local(client_task(load.clone(), me, ws, plan, stop_rx.clone())));
    }
    let flood = Rc::new(Flood::default());
    let flood_task = login_flood.map(|rate| {
        let names = users.iter().take(16).enumerate().map(|(i, _)| format!("{}{i}", ctx.prefix)).collect();
        tokio::task::spawn_local(run_login_flood(ctx.net.clone(), flood.clone(), names, rate, start, until))
    });
    eprintln!("loadgen: load running for {:.1}s", pacing.duration);

    // Figures over the load period.
    tokio::time::sleep_until(start).await;
    let cpu = CpuMeter::start(&server_pids);
    tokio::time::sleep_until(until).await;
    let measured = tokio::time::Instant::now() - start;
    let load_cpu = cpu.report();
    let acked_in_period = load.acked.get();
    let delivered_in_period = load.deliveries.get();

    // Bounded wait for outstanding acks and deliveries.
    let fanout = kind.fanout();
    let drain_start = tokio::time::Instant::now();
    let drain_deadline = drain_start + ctx.drain;
    while tokio::time::Instant::now() < drain_deadline {
        if load.in_flight.get() == 0 && load.deliveries.get() >= load.acked.get() * fanout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_took = drain_start.elapsed();
    if let Some(task) = flood_task {
        let _ = tokio::time::timeout(STEP_TIMEOUT, task).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(tasks)).await;

    // Exact accounting per message.
    let (mut expected, mut missing, mut extra, mut unacked) = (0u64, 0u64, 0u64, 0u64);
    for tr in &load.tracks {
        let tr = tr.borrow();
        for (st, &r) in tr.status.iter().zip(&tr.receipts) {
            let r = r as u64;
            match *st {
                ACKED => {
                    expected += fanout;
                    missing += fanout.saturating_sub(r);
                    extra += r.saturating_sub(fanout);
                }
                SENT => unacked += 1,
                _ => {}
            }
        }
    }
    let latency = latency_json(&load.hist.borrow());
    let errors = load.errors.get();
    let ok = errors == 0 && missing == 0 && unacked == 0;
    let mut report = json!({
        "register_secs": secs(register_took),
        "connect_secs": secs(connect_took),
        "connect_rate": per_sec(clients as u64, connect_took),
        "duration_secs": secs(measured),
        "cpu_cores": load_cpu,
        "sent": load.sent.get(),
        "acked": load.acked.get(),
        "acked_per_sec": per_sec(acked_in_period, measured),
        "refused": load.refused.get(),
        "unacked": unacked,
        "latency_us": latency,
        "drain_secs": secs(drain_took),
        "extra_deliveries": extra,
        "reordered": load.reordered.get(),
        "misrouted": load.misrouted.get(),
        "own_echo": load.own_echo.get(),
        "errors": errors,
        "error_samples": load.errors.samples(),
    });
    let obj = report.as_object_mut().expect("object");
    match kind {
        Kind::Pairs { .. } => {
            if login_flood.is_some() {
                obj.insert("login_flood".into(), flood.report());
            }
            obj.insert("delivered".into(), json!(load.deliveries.get()));
            obj.insert("delivered_per_sec".into(), json!(per_sec(delivered_in_period, measured)));
            obj.insert("lost".into(), json!(missing));
        }
        Kind::Group { .. } => {
            obj.insert("chat_id".into(), chat_id);
            obj.insert("deliveries".into(), json!(load.deliveries.get()));
            obj.insert("deliveries_per_sec".into(), json!(per_sec(delivered_in_period, measured)));
            obj.insert("expected_deliveries".into(), json!(expected));
            obj.insert("missing".into(), json!(missing));
        }
    }
    Ok((report, ok))
}

/// Members join the room over HTTP with bounded concurrency.
async fn join_room(ctx: &Ctx, members: &[User], chat_id: &str) -> Res<()> {
    let next = Cell::new(0usize);
    let body = json!({"chat_id": chat_id});
    let workers = (0..ctx.concurrency.min(members.len())).map(|_| async {
        let mut http = Http::new(ctx.net.clone());
        loop {
            let i = next.get();
            if i >= members.len() {
                return Ok::<(), String>(());
            }
            next.set(i + 1);
            http.ok("POST", "/room/join", Some(&body), Some(&members[i].token)).await?;
        }
    });
    futures_util::future::try_join_all(workers).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenario: broadcast

async fn broadcast(ctx: &Ctx, conns: usize, users: usize, admin_token: &str) -> Res<(Value, bool)> {
    let (accounts, register_took) = register_users(ctx, users).await?;
    let tokens = (0..conns).map(|i| accounts[i % users].token.clone()).collect();
    let (streams, connect_took) = connect_all(ctx, tokens, |i| i).await?;

    let text: Rc<str> = format!("loadgen broadcast {} {}", ctx.prefix, now_us()).into();
    let receipts: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::with_capacity(conns)));
    let errors = Rc::new(Errors::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|ws| {
            tokio::task::spawn_local(broadcast_task(
                ws,
                text.clone(),
                receipts.clone(),
                errors.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    tokio::task::yield_now().await;

    let server_pids = server_pids(ctx).await?;
    let cpu = CpuMeter::start(&server_pids);
    let mut http = Http::new(ctx.net.clone());
    let sent_at = now_us();
    let body = json!({"data": &*text});
    let data = http.ok("POST", "/message/sendPublicMessage", Some(&body), Some(admin_token)).await?;
    let reply_us = now_us() - sent_at;
    let delivered = data["delivered"].as_u64();

    let deadline = tokio::time::Instant::now() + ctx.drain;
    while receipts.borrow().len() < conns && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let broadcast_cpu = cpu.report();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(tasks)).await;

    let mut times: Vec<u64> = receipts.borrow().iter().map(|t| t.saturating_sub(sent_at)).collect();
    times.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let pick = |q: f64| -> Value {
        if times.is_empty() { Value::Null } else { json!(ms(times[((times.len() - 1) as f64 * q).round() as usize])) }
    };
    let received = times.len() as u64;
    let missing = conns as u64 - received.min(conns as u64);
    let ok = missing == 0 && errors.get() == 0 && delivered.is_some();
    if delivered.is_none() {
        errors.add(format!("sendPublicMessage: no data.delivered in {data}"));
    }
    Ok((
        json!({
            "register_secs": secs(register_took),
            "connect_secs": secs(connect_took),
            "connect_rate": per_sec(conns as u64, connect_took),
            "broadcast_id": data["id"],
            "delivered": delivered,
            "received": received,
            "missing": missing,
            "http_reply_ms": ms(reply_us),
            "first_received_ms": pick(0.0),
            "p50_received_ms": pick(0.5),
            "p99_received_ms": pick(0.99),
            "all_received_ms": if missing == 0 { pick(1.0) } else { Value::Null },
            "cpu_cores": broadcast_cpu,
            "errors": errors.get(),
            "error_samples": errors.samples(),
        }),
        ok,
    ))
}

async fn broadcast_task(
    mut ws: Ws,
    text: Rc<str>,
    receipts: Rc<RefCell<Vec<u64>>>,
    errors: Rc<Errors>,
    mut stop: watch::Receiver<bool>,
) {
    let mut got = false;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => {}
            msg = ws.next() => match held_frame(msg, "broadcast", &errors) {
                None => return,
                Some(Some(t)) => {
                    let now = now_us();
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        errors.add(format!("broadcast: frame is not JSON: {t}"));
                        continue;
                    };
                    if v["action"] == "public_message" && v["msg"].as_str() == Some(&*text) {
                        if got {
                            errors.add(format!("broadcast received twice on one connection: {t}"));
                        } else {
                            got = true;
                            receipts.borrow_mut().push(now);
                        }
                    }
                }
                Some(None) => {}
            },
        }
    }
    close_ws(ws).await;
}

// ---------------------------------------------------------------------------------------------
// floor: the machine without imd

/// About the size of a `single_chat` frame of the pairs scenario.
const FLOOR_MESSAGE_BYTES: usize = 160;

/// One connection to an echo thread; each message is sent at its paced time, and its latency
/// is from the send to the echo's arrival (as `pairs` measures send to receipt).
fn floor(rate: f64, duration: Duration, echo_core: Option<usize>) -> Res<(Value, bool)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some(core) = echo_core {
            pin_to_core(core)?;
        }
        let (mut sock, _) = listener.accept()?;
        sock.set_nodelay(true)?;
        let mut message = [0u8; FLOOR_MESSAGE_BYTES];
        loop {
            match sock.read_exact(&mut message) {
                Ok(()) => sock.write_all(&message)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    sock.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let count = (rate * duration.as_secs_f64()).ceil() as u32;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut hist = latency_histogram();
    let mut message = [b'x'; FLOOR_MESSAGE_BYTES];
    let start = Instant::now();
    for i in 0..count {
        if let Some(wait) = (start + gap * i).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        sock.write_all(&message).and_then(|()| sock.read_exact(&mut message)).map_err(|e| format!("echo: {e}"))?;
        hist.saturating_record(sent.elapsed().as_micros().max(1) as u64);
    }
    let took = start.elapsed();
    drop(sock);
    match echo.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("echo thread: {e}")),
        Err(_) => return Err("echo thread panicked".into()),
    }
    let report = json!({
        "duration_secs": secs(took),
        "round_trips": count,
        "round_trips_per_sec": per_sec(count.into(), took),
        "latency_us": latency_json(&hist),
        "errors": 0,
        "error_samples": [],
    });
    Ok((report, true))
}

fn pin_to_core(core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET checks nothing but writes within
    // the set for core < CPU_SETSIZE (checked); sched_setaffinity(0) affects the calling thread.
    unsafe {
        if core >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "core number too large"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Login flood (pairs --login-flood N)

/// Logins of the flood in flight at most; a tick that finds this many waiting is skipped.
const FLOOD_IN_FLIGHT: u64 = 256;

/// What the login flood saw: answers by HTTP status, transport errors, skipped ticks.
#[derive(Default)]
struct Flood {
    sent: Cell<u64>,
    in_flight: Cell<u64>,
    skipped: Cell<u64>,
    errors: Cell<u64>,
    by_status: RefCell<BTreeMap<u16, u64>>,
    hist: RefCell<Option<Histogram<u64>>>,
}

impl Flood {
    fn report(&self) -> Value {
        let statuses: serde_json::Map<String, Value> =
            self.by_status.borrow().iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let latency = self.hist.borrow().as_ref().map(latency_json);
        json!({
            "sent": self.sent.get(),
            "by_status": statuses,
            "errors": self.errors.get(),
            "skipped": self.skipped.get(),
            "latency_us": latency,
        })
    }
}

/// From `start` to `until`, `rate` logins a second with a wrong password for one of `names`,
/// each on a new connection (as a guessing client would), at most [`FLOOD_IN_FLIGHT`] at once.
async fn run_login_flood(
    net: Rc<Net>,
    flood: Rc<Flood>,
    names: Vec<String>,
    rate: f64,
    start: tokio::time::Instant,
    until: tokio::time::Instant,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = start;
    let mut i = 0usize;
    let mut attempts = Vec::new();
    while next < until {
        tokio::time::sleep_until(next).await;
        next += period;
        if flood.in_flight.get() >= FLOOD_IN_FLIGHT {
            flood.skipped.set(flood.skipped.get() + 1);
            continue;
        }
        let body = json!({"username": names[i % names.len()], "password": "wrong-password"});
        i += 1;
        flood.sent.set(flood.sent.get() + 1);
        flood.in_flight.set(flood.in_flight.get() + 1);
        let (net, flood) = (net.clone(), flood.clone());
        attempts.push(tokio::task::spawn_local(async move {
            let sent = Instant::now();
            match Http::new(net).request("POST", "/user/login", Some(&body), None).await {
                Ok((status, _)) => {
                    *flood.by_status.borrow_mut().entry(status).or_insert(0) += 1;
                    let us = (sent.elapsed().as_micros() as u64).max(1);
                    let _ = flood.hist.borrow_mut().get_or_insert_with(latency_histogram).record(us);
                }
                Err(_) => flood.errors.set(flood.errors.get() + 1),
            }
            flood.in_flight.set(flood.in_flight.get() - 1);
        }));
        attempts.retain(|a: &tokio::task::JoinHandle<()>| !a.is_finished());
    }
    futures_util::future::join_all(attempts).await;
}
