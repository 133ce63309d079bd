//! chitchat's configuration. Its state reaches core through [`crate::observe`].

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig};

/// How long chitchat keeps a dead node's state before collecting it. Minutes, not chitchat's
/// 24 h default: every restart leaves an old generation behind and each one costs digest
/// space (the whole digest must fit in ~65 KB). The roster remembers members for longer.
pub const DEAD_NODE_GRACE: Duration = Duration::from_secs(10 * 60);
/// How long deleted keys are kept as tombstones.
pub const TOMBSTONE_GRACE: Duration = Duration::from_secs(60 * 60);

/// Heartbeat arrivals the failure detector averages over, per peer. chitchat's 1,000 is an
/// 8 KB array for every peer; a few hundred arrivals (tens of seconds of history) give the
/// same mean.
const SAMPLING_WINDOW: usize = 200;

/// chitchat's phi is `silence / mean heartbeat interval`, so a peer is declared dead after
/// about this many mean intervals of silence. 7 (chitchat's default is 8) at the 400 ms default
/// interval puts the median crash detection at 100 nodes under 3 s, with no false failure in
/// 60 s of steady state (docs/benchmarks.md). Each step down trades margin against scheduling
/// stalls for about one interval of detection time.
const PHI_THRESHOLD: f64 = 7.0;

/// chitchat's settings for a given gossip interval. The phi-accrual detector learns the real
/// heartbeat intervals; its prior is the gossip interval so a new node is judged fairly.
pub fn chitchat_config(
    node_id: &str,
    generation: u64,
    advertise: SocketAddr,
    listen: SocketAddr,
    cluster: &str,
    seeds: Vec<String>,
    gossip_interval: Duration,
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(node_id.to_string(), generation, advertise),
        cluster_id: cluster.to_string(),
        gossip_interval,
        listen_addr: listen,
        seed_nodes: seeds,
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: PHI_THRESHOLD,
            sampling_window_size: SAMPLING_WINDOW,
            max_interval: (gossip_interval * 10).max(Duration::from_secs(2)),
            initial_interval: gossip_interval,
            dead_node_grace_period: DEAD_NODE_GRACE,
        },
        marked_for_deletion_grace_period: TOMBSTONE_GRACE,
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}
