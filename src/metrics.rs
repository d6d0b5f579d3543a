//! Prometheus metrics, served at `GET /metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub online_connections: IntGauge,
    pub connections_total: IntCounter,
    pub messages_stored: IntCounter,
    pub frames_delivered: IntCounter,
    pub errors: IntCounterVec,
    /// Connect-time syncs answered from memory (nothing unread) and by the store.
    pub syncs_from_memory: IntCounter,
    pub syncs_from_store: IntCounter,
    pub store_batch_size: Histogram,
    pub store_commit_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let online_connections = IntGauge::new("imd_online_connections", "Open WebSocket connections").expect("metric");
        let connections_total =
            IntCounter::new("imd_connections_total", "WebSocket connections accepted since start").expect("metric");
        let messages_stored =
            IntCounter::new("imd_messages_stored_total", "Messages committed to the store").expect("metric");
        let frames_delivered =
            IntCounter::new("imd_frames_delivered_total", "Message frames queued to connections").expect("metric");
        let errors =
            IntCounterVec::new(Opts::new("imd_errors_total", "Error replies, by code"), &["code"]).expect("metric");
        let syncs = IntCounterVec::new(
            Opts::new("imd_syncs_total", "Connect-time syncs, by how they were answered (memory: nothing unread)"),
            &["answered_from"],
        )
        .expect("metric");
        let store_batch_size = Histogram::with_opts(
            HistogramOpts::new("imd_store_batch_size", "Commands committed per store transaction")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 13).expect("buckets")),
        )
        .expect("metric");
        let store_commit_seconds = Histogram::with_opts(
            HistogramOpts::new("imd_store_commit_seconds", "Time to run and commit one store batch")
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("buckets")),
        )
        .expect("metric");
        for collector in [
            Box::new(online_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_total.clone()),
            Box::new(messages_stored.clone()),
            Box::new(frames_delivered.clone()),
            Box::new(errors.clone()),
            Box::new(syncs.clone()),
            Box::new(store_batch_size.clone()),
            Box::new(store_commit_seconds.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Metrics {
            registry,
            online_connections,
            connections_total,
            messages_stored,
            frames_delivered,
            errors,
            syncs_from_memory: syncs.with_label_values(&["memory"]),
            syncs_from_store: syncs.with_label_values(&["store"]),
            store_batch_size,
            store_commit_seconds,
        }
    }

    pub fn error(&self, code: u16) {
        self.errors.with_label_values(&[code.to_string().as_str()]).inc();
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
