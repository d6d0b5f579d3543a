//! Prometheus metrics, served at `GET /metrics` (the table in docs/OPERATIONS.md).
//!
//! Labelled series are resolved once here and kept as handles: the hot paths only add to
//! atomics, never look up, format or allocate a label.

use std::time::Duration;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Why a WebSocket session ended: the `reason` label of `imd_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or went away.
    Normal,
    /// The socket or the server failed (a read error, a failed sync).
    Error,
    /// Its outbound queue overflowed: the client did not read fast enough.
    SlowConsumer,
    /// Its token was revoked (logout, an admin).
    Revoked,
    /// Its token expired.
    Expired,
    /// It broke a limit that closes (a frame over `--max-frame-bytes`).
    Limit,
    /// It stopped answering pings.
    PingTimeout,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Normal,
        CloseReason::Error,
        CloseReason::SlowConsumer,
        CloseReason::Revoked,
        CloseReason::Expired,
        CloseReason::Limit,
        CloseReason::PingTimeout,
        CloseReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Error => "error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Revoked => "revoked",
            CloseReason::Expired => "expired",
            CloseReason::Limit => "limit",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Why a connection or WebSocket upgrade was refused: `imd_connections_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReason {
    /// Over `--max-connections` (503).
    Total,
    /// Over `--max-connections-per-ip` (429).
    PerIp,
    /// Over `--max-connections-per-user` (429).
    PerUser,
    /// An Origin not allowed (403).
    Origin,
    /// No, a bad, an expired or a revoked token (401).
    Auth,
}

impl RefusedReason {
    const ALL: [RefusedReason; 5] = [
        RefusedReason::Total,
        RefusedReason::PerIp,
        RefusedReason::PerUser,
        RefusedReason::Origin,
        RefusedReason::Auth,
    ];

    fn label(self) -> &'static str {
        match self {
            RefusedReason::Total => "max_connections",
            RefusedReason::PerIp => "per_ip",
            RefusedReason::PerUser => "per_user",
            RefusedReason::Origin => "origin",
            RefusedReason::Auth => "auth",
        }
    }
}

/// The `route` label of a request that matched no route (never the raw path, whose values
/// a client chooses).
pub const OTHER_ROUTE: &str = "other";
/// The `route` label of the WebSocket upgrade on `/`.
pub const WEBSOCKET_ROUTE: &str = "/";

pub struct Metrics {
    registry: Registry,
    pub online_connections: IntGauge,
    pub connections_total: IntCounter,
    pub connections_opened: IntCounter,
    closed: [IntCounter; CloseReason::ALL.len()],
    refused: [IntCounter; RefusedReason::ALL.len()],
    pub messages_stored: IntCounter,
    pub frames_delivered: IntCounter,
    pub errors: IntCounterVec,
    /// Connect-time syncs answered from memory (nothing unread) and by the store.
    pub syncs_from_memory: IntCounter,
    pub syncs_from_store: IntCounter,
    /// Messages sent by each connect-time sync.
    pub sync_messages: Histogram,
    pub store_batch_size: Histogram,
    pub store_commit_seconds: Histogram,
    /// Commands waiting for the writer thread; set when `/metrics` is read.
    pub writer_queue_depth: IntGauge,
    /// From a batch's commit to its frames queued on every connection.
    pub fanout_lag_seconds: Histogram,
    http_requests: IntCounterVec,
    /// One per route label, in `routes` order.
    http_seconds: Vec<Histogram>,
    routes: Vec<&'static str>,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("metric")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("metric")
}

/// Resolves one handle per label value, in the order given.
fn handles<const N: usize>(vec: &IntCounterVec, labels: [&str; N]) -> [IntCounter; N] {
    labels.map(|label| vec.with_label_values(&[label]))
}

impl Metrics {
    /// Metrics with no HTTP routes of their own: every request counts under `/` or `other`
    /// (for tests of parts that never answer HTTP).
    pub fn new() -> Metrics {
        Metrics::with_routes([])
    }

    /// The HTTP route labels are `routes` (the router's paths, which the router hands in, so
    /// metrics need not know HTTP), `/` and `other`.
    pub fn with_routes(routes: impl IntoIterator<Item = &'static str>) -> Metrics {
        let registry = Registry::new();
        let online_connections = IntGauge::new("imd_online_connections", "Open WebSocket connections").expect("metric");
        let connections_total = counter("imd_connections_total", "WebSocket connections accepted since start");
        let connections_opened =
            counter("imd_connections_opened_total", "WebSocket sessions opened (same as imd_connections_total)");
        let closed = IntCounterVec::new(
            Opts::new("imd_connections_closed_total", "WebSocket sessions ended, by reason"),
            &["reason"],
        )
        .expect("metric");
        let refused = IntCounterVec::new(
            Opts::new("imd_connections_refused_total", "Connections and WebSocket upgrades refused, by reason"),
            &["reason"],
        )
        .expect("metric");
        let messages_stored = counter("imd_messages_stored_total", "Messages committed to the store");
        let frames_delivered = counter("imd_frames_delivered_total", "Message frames queued to connections");
        let errors =
            IntCounterVec::new(Opts::new("imd_errors_total", "Error replies, by code"), &["code"]).expect("metric");
        let syncs = IntCounterVec::new(
            Opts::new("imd_syncs_total", "Connect-time syncs, by how they were answered (memory: nothing unread)"),
            &["answered_from"],
        )
        .expect("metric");
        let sync_messages = histogram(
            "imd_sync_messages",
            "Messages sent by one connect-time sync",
            vec![0.0, 1.0, 5.0, 20.0, 100.0, 500.0, 1000.0, 5000.0],
        );
        let store_batch_size = histogram(
            "imd_store_batch_size",
            "Commands committed per store transaction",
            prometheus::exponential_buckets(1.0, 2.0, 13).expect("buckets"),
        );
        let store_commit_seconds = histogram(
            "imd_store_commit_seconds",
            "Time to run and commit one store batch",
            prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("buckets"),
        );
        let writer_queue_depth =
            IntGauge::new("imd_writer_queue_depth", "Commands waiting for the store writer thread").expect("metric");
        let fanout_lag_seconds = histogram(
            "imd_fanout_lag_seconds",
            "From a store batch's commit to its frames queued on every connection",
            prometheus::exponential_buckets(0.000_01, 2.0, 18).expect("buckets"),
        );
        let http_requests = IntCounterVec::new(
            Opts::new("imd_http_requests_total", "HTTP requests answered, by route and status code"),
            &["route", "code"],
        )
        .expect("metric");
        let http_seconds_vec = prometheus::HistogramVec::new(
            HistogramOpts::new("imd_http_request_duration_seconds", "Time to answer an HTTP request, by route")
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 18).expect("buckets")),
            &["route"],
        )
        .expect("metric");
        let routes: Vec<&'static str> = routes.into_iter().chain([WEBSOCKET_ROUTE, OTHER_ROUTE]).collect();
        let http_seconds = routes.iter().map(|route| http_seconds_vec.with_label_values(&[route])).collect();

        let process = prometheus::process_collector::ProcessCollector::for_self();
        for collector in [
            Box::new(online_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_total.clone()),
            Box::new(connections_opened.clone()),
            Box::new(closed.clone()),
            Box::new(refused.clone()),
            Box::new(messages_stored.clone()),
            Box::new(frames_delivered.clone()),
            Box::new(errors.clone()),
            Box::new(syncs.clone()),
            Box::new(sync_messages.clone()),
            Box::new(store_batch_size.clone()),
            Box::new(store_commit_seconds.clone()),
            Box::new(writer_queue_depth.clone()),
            Box::new(fanout_lag_seconds.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_seconds_vec),
            Box::new(process),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Metrics {
            registry,
            online_connections,
            connections_total,
            connections_opened,
            closed: handles(&closed, CloseReason::ALL.map(CloseReason::label)),
            refused: handles(&refused, RefusedReason::ALL.map(RefusedReason::label)),
            messages_stored,
            frames_delivered,
            errors,
            syncs_from_memory: syncs.with_label_values(&["memory"]),
            syncs_from_store: syncs.with_label_values(&["store"]),
            sync_messages,
            store_batch_size,
            store_commit_seconds,
            writer_queue_depth,
            fanout_lag_seconds,
            http_requests,
            http_seconds,
            routes,
        }
    }

    pub fn error(&self, code: u16) {
        self.errors.with_label_values(&[code.to_string().as_str()]).inc();
    }

    /// A WebSocket session opened.
    pub fn opened(&self) {
        self.connections_total.inc();
        self.connections_opened.inc();
    }

    /// A WebSocket session ended (once per session).
    pub fn closed(&self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|&r| r == reason) {
            self.closed[i].inc();
        }
    }

    pub fn refused(&self, reason: RefusedReason) {
        if let Some(i) = RefusedReason::ALL.iter().position(|&r| r == reason) {
            self.refused[i].inc();
        }
    }

    /// The label index of an HTTP path: its route's, `/`'s, or `other`'s.
    pub fn route_index(&self, path: &str) -> usize {
        self.routes.iter().position(|&route| route == path).unwrap_or(self.routes.len() - 1)
    }

    /// One HTTP request answered. (A lookup of the code label per request: HTTP requests are
    /// far rarer than messages, and the codes are few.)
    pub fn http_request(&self, route: usize, code: &str, took: Duration) {
        let Some(&label) = self.routes.get(route) else { return };
        self.http_requests.with_label_values(&[label, code]).inc();
        self.http_seconds[route].observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
