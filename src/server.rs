//! The daemon's life: open the store, serve the listener until SIGTERM/SIGINT, then drain:
//! stop accepting, close sessions with 1001, commit what is queued, exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, ClusterNode};
use crate::auth::Auth;
use crate::cluster::ClusterSettings;
use crate::config::Config;
use crate::conn_limits::ConnLimits;
use crate::directory::Directory;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::progress::{self, Steps};
use crate::registry::Registry;
use crate::store::{self, DbTarget, Store, WriterSettings};
use crate::supervisor::Supervisor;
use crate::throttle::Throttle;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long sessions get to close on shutdown before the store is closed regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon whose worker died keeps answering 503 before it exits.
const FAILED_LINGER: Duration = Duration::from_secs(1);
/// File descriptors kept out of the default connection cap: the database, its WAL, logs,
/// and connections being refused.
const FD_RESERVE: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to the hard limit (every connection is a descriptor);
/// returns the soft limit in force afterwards.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
        return 1024;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!("setrlimit(RLIMIT_NOFILE, {}): {}", lim.rlim_max, std::io::Error::last_os_error());
        }
    }
    tracing::info!("open file limit {} (was {before}, hard {})", lim.rlim_cur, lim.rlim_max);
    lim.rlim_cur
}

/// Binds `host:port` with a backlog deep enough for bursts of connects.
pub fn bind(host: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no address for {host}")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs the daemon on a bound listener until it is told to stop. `on_ready` is called once
/// the database is open and connections are being accepted.
pub fn run(config: Config, listener: std::net::TcpListener, on_ready: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("imd-worker").build()?;
    let result = runtime.block_on(serve(config, listener, on_ready));
    // Dropping the runtime would wait without end for a blocking task stuck behind a dead
    // worker; the process is exiting anyway.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(
    config: Config,
    listener: std::net::TcpListener,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    // First: from here on SIGTERM/SIGINT take the graceful path, also one sent the moment the
    // ready line appears (a handler installed by a spawned task could still be missing then).
    let mut stop_signals = StopSignals::install()?;
    let supervisor = Supervisor::from_env()?;
    let metrics = Arc::new(Metrics::with_routes(crate::http::route_paths()));
    let target = DbTarget::parse(&config.db);
    let cluster_settings = ClusterSettings::from_config(&config);
    if cluster_settings.is_some() && !matches!(target, DbTarget::Postgres(_)) {
        return Err("--nats (cluster mode) needs a shared PostgreSQL database: --db postgres://USER@HOST:PORT/DB; \
                    a SQLite file cannot be shared between nodes"
            .into());
    }
    let db = Store::prepare(&target).await?;
    // Start-up's longest step on a large database, shown on a terminal.
    let mut steps = Steps::default();
    let mut show = |table: &'static str, done: u64, total: u64| match table {
        "users" => steps.update("start-up: loading users", "users", done, total),
        _ => steps.update("start-up: loading room members", "members", done, total),
    };
    let watch: Option<store::snapshot::Watch<'_>> = if progress::on_terminal() { Some(&mut show) } else { None };
    let snapshot = db.snapshot(watch).await?;
    steps.finish();
    let directory = Arc::new(Directory::load(snapshot));
    let secret = match &config.jwt_secret {
        Some(secret) if !secret.is_empty() => secret.clone(),
        _ => db.jwt_secret().await?,
    };
    let auth = Auth::new(secret.as_bytes(), config.token_ttl, config.bcrypt_cost, config.admin_token.clone())?
        .with_bcrypt_pool(config.bcrypt_threads, config.bcrypt_queue);
    let file_limit = raise_file_limit();
    let max_connections = match config.max_connections {
        0 => file_limit.saturating_sub(FD_RESERVE).max(1) as usize,
        n => n,
    };
    let conns = ConnLimits::new(max_connections, config.max_connections_per_ip);
    let throttle = Throttle::new(config.login_failures_per_user, config.login_failures_per_ip);
    let registry = Arc::new(Registry::new(config.outbox_bytes, metrics.clone()));
    let joined = match cluster_settings {
        Some(settings) => Some(crate::node::join(settings, &registry, &directory, &metrics).await?),
        None => None,
    };
    let fanout = Fanout {
        registry: registry.clone(),
        directory: directory.clone(),
        metrics: metrics.clone(),
        supervisor: supervisor.clone(),
        cluster: joined.as_ref().map(|joined| joined.delivery.clone()),
    };
    let (cluster, invalidations) = match joined {
        Some(joined) => {
            (Some(ClusterNode { bus: joined.bus, sequencer: joined.sequencer }), Some(joined.invalidations))
        }
        None => (None, None),
    };
    let settings = WriterSettings { durable: !config.no_store, sync: config.sync };
    // From here on the guard closes the store on every path out of this function, before
    // anything else it started is torn down.
    let (store, store_guard) = db.start(settings, fanout.spawn(), metrics.clone(), &supervisor)?;
    if config.no_store {
        tracing::warn!("--no-store: messages are NOT written to disk (benchmarks only)");
    }
    let read_through = Arc::new(crate::read_through::ReadThrough::new(store.clone(), directory.clone()));
    let app = Arc::new(App {
        config,
        store,
        directory,
        read_through,
        registry,
        metrics,
        auth,
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        supervisor,
        conns,
        throttle,
        cluster,
    });
    // Kept to the end of `serve`: the catch-up and the invalidations stop when it is dropped.
    let _cluster_tasks = invalidations.and_then(|rx| crate::node::spawn(app.clone(), rx));

    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        stop_signals.recv().await;
        shutdown.cancel();
    });
    crate::revocations::spawn(app.clone());
    // IMD_FAULT=start-fail|start-panic (tests only): start-up fails after the store started.
    app.supervisor.start_fault_point()?;
    tracing::info!("imd listening on {addr}, database {}", app.config.db.display());
    on_ready(addr);
    crate::notify::ready();

    let stop = app.shutdown.cancelled();
    let failure = app.supervisor.failure();
    tokio::pin!(stop, failure);
    let failed = loop {
        tokio::select! {
            _ = &mut stop => break false,
            _ = &mut failure => break true,
            accepted = listener.accept() => accept(&app, accepted).await,
        }
    };
    if failed {
        // Sessions close now, while the port keeps answering every request with 503 naming
        // the dead worker (`http`) for a moment, so that whoever polls /health sees why.
        app.shutdown.cancel();
        let linger = tokio::time::sleep(FAILED_LINGER);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                _ = &mut linger => break,
                accepted = listener.accept() => accept(&app, accepted).await,
            }
        }
    }
    app.supervisor.stopping();
    crate::notify::stopping();
    drop(listener);
    tracing::info!("shutting down: closing {} connections", app.registry.online_connections());
    app.sessions.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, app.sessions.wait()).await.is_err() {
        tracing::warn!("some sessions did not close in time");
    }
    let joined = store_guard.shutdown();
    if let Some(worker) = app.supervisor.failed() {
        // What a dead worker leaves behind may never finish: exit regardless, after a while.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, joined).await;
        return Err(format!("the {worker} died; exiting with status 1 so that imd is restarted").into());
    }
    joined.await?;
    // A worker may also die while the daemon stops (a panic in the last commit).
    if let Some(worker) = app.supervisor.failed() {
        return Err(format!("the {worker} died while stopping").into());
    }
    tracing::info!("imd stopped");
    Ok(())
}

async fn accept(app: &Arc<App>, accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>) {
    match accepted {
        Ok((stream, peer)) => {
            // Counted from here to the connection's (or its WebSocket session's) end; over a
            // cap it is still served, with a refusal, so the client learns why.
            let admitted = app.conns.admit(peer.ip());
            tokio::spawn(crate::http::serve_connection(app.clone(), stream, peer, admitted, crate::ws::start));
        }
        Err(e) => {
            // Out of file descriptors, most likely: back off instead of spinning.
            tracing::warn!("accept: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// SIGTERM and SIGINT. The handlers are in place as soon as `install` returns.
struct StopSignals {
    term: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals { term: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    /// Returns at the first of either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
