//! Cluster mode's bus (issue 13): NATS carries committed messages, cache invalidations and
//! presence between the imd nodes that share one PostgreSQL.
//!
//! - `bus`: the connection, its subjects (`<prefix>.msg`, `<prefix>.inval`,
//!   `<prefix>.presence`), bounded non-blocking publishing and the receiving tasks.
//! - `wire`: committed messages as they travel, one NATS message per committed batch.
//! - `reorder` and `sequencer`: one order per conversation on this node, whichever node
//!   committed; gaps are held briefly, then fetched from the store.
//! - `catchup`: the periodic poll of the store that repairs what NATS lost.
//! - `invalidation`: "reload this" notices for the directory's caches.
//! - `presence`: which users are online on any node.
//!
//! Without `--nats` none of this runs: a single node needs no bus.
//!
//! Wiring, for a node started with `--nats` (`ClusterSettings::from_config`):
//! - one `Sequencer` whose `deliver` queues to the connections (what `fanout` does for a
//!   committed message today, minus the ack); `Hooks::on_batch` offers remote batches to it;
//! - after a local batch commits: its new (not duplicate) messages are offered to the same
//!   sequencer, then `Cluster::publish_batch`; acks go out at once as now, whatever the
//!   sequencer holds back;
//! - `CatchUp::spawn` with the store's `ClusterStore` reads and that sequencer;
//! - every change of a user's connection count in the registry calls `user_sessions`;
//!   `Presence::is_online` answers "online" for rooms, shops and routing, and
//!   `Presence::remote_sessions` adds the other nodes' sessions to the per-user cap;
//! - a login failure (and a success that cleared failures) is published as an
//!   `Invalidation`, which the other nodes count in their throttle at once;
//! - `Hooks::on_invalidation` reloads the directory's entry; a node that changes shared
//!   state calls `publish_invalidation` after the change commits;
//! - /health and /metrics: `node_id`, `state`, `Presence::online_nodes`, `ClusterStats`,
//!   `Sequencer::lag`, `Sequencer::held` and its `ReorderStats`.

pub mod bus;
pub mod catchup;
pub mod invalidation;
pub mod presence;
pub mod reorder;
pub mod sequencer;
pub mod wire;

pub use bus::{Cluster, ClusterError, ClusterState, ClusterStats, Hooks};

/// Where a node confirms an invalidation it applied, when its publisher waits for that.
pub type ConfirmTo = async_nats::Subject;
pub use catchup::{CatchUp, CatchUpSettings, ClusterStore};
pub use invalidation::Invalidation;
pub use presence::{LocalPresence, Presence};
pub use reorder::{Gap, Limits, ReorderStats, Reorderer};
pub use sequencer::{Deliver, Sequencer};

use crate::config::Config;

/// What a node needs to join the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `nats://HOST:PORT`.
    pub nats_url: String,
    /// First token(s) of every subject; the nodes of one cluster share it, and tests use a
    /// unique one so that runs never see each other.
    pub prefix: String,
    /// This node's name, carried in everything it publishes so that it can skip its own.
    pub node_id: String,
}

impl ClusterSettings {
    /// The settings `--nats`, `--node-id` and `--cluster-prefix` give, or None without
    /// `--nats` (a single node). A missing node id is made up (see `random_node_id`).
    pub fn from_config(config: &Config) -> Option<ClusterSettings> {
        let nats_url = config.nats.as_deref().filter(|url| !url.is_empty())?;
        Some(ClusterSettings {
            nats_url: nats_url.to_string(),
            prefix: config.cluster_prefix.clone(),
            node_id: config.node_id.clone().unwrap_or_else(random_node_id),
        })
    }
}

/// A node id for a node started without `--node-id`: unique enough among a cluster's nodes
/// (64 random bits), and logged at start so that an operator can match /health to a node.
pub fn random_node_id() -> String {
    format!("node-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn settings(args: &[&str]) -> Option<ClusterSettings> {
        let cli = Cli::try_parse_from(std::iter::once("imd").chain(args.iter().copied())).unwrap();
        ClusterSettings::from_config(&cli.config)
    }

    #[test]
    fn only_nats_makes_a_cluster_node() {
        assert_eq!(settings(&[]), None, "a single node");
        assert_eq!(settings(&["--nats", ""]), None, "an empty IMD_NATS= is none");
        let named = settings(&["--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--cluster-prefix", "p.q"]);
        let expected =
            ClusterSettings { nats_url: "nats://127.0.0.1:4222".into(), prefix: "p.q".into(), node_id: "n1".into() };
        assert_eq!(named, Some(expected));
        let first = settings(&["--nats", "nats://h:4222"]).unwrap();
        let second = settings(&["--nats", "nats://h:4222"]).unwrap();
        assert_eq!(first.prefix, "imd");
        assert!(first.node_id.starts_with("node-") && first.node_id != second.node_id, "random: {first:?}");
    }
}
