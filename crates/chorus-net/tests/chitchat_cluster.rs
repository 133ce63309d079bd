//! Real chitchat clusters over the chorus transports.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use chorus_net::{ClusterCa, FaultController, FaultyTransport};
use common::{free_addr, quic, DEADLINE};
use tokio::time::Instant;

async fn node(
    name: &str,
    addr: SocketAddr,
    seed: Option<SocketAddr>,
    transport: &dyn Transport,
) -> ChitchatHandle {
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name.to_string(), 1, addr),
        cluster_id: "cluster".to_string(),
        gossip_interval: Duration::from_millis(50),
        listen_addr: addr,
        seed_nodes: seed.map(|s| s.to_string()).into_iter().collect(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    spawn_chitchat(config, vec![("name".into(), name.into())], transport)
        .await
        .unwrap()
}

async fn live_names(handle: &ChitchatHandle) -> Vec<String> {
    let chitchat = handle.chitchat();
    let guard = chitchat.lock().await;
    let mut names: Vec<String> = guard
        .live_nodes()
        .map(|id| id.node_id.to_string())
        .collect();
    names.sort();
    names
}

async fn wait_for_view(handles: &[&ChitchatHandle], expected: &[&str]) {
    let end = Instant::now() + DEADLINE;
    loop {
        let mut all = true;
        for handle in handles {
            all &= live_names(handle).await == expected;
        }
        if all {
            return;
        }
        assert!(Instant::now() < end, "views never became {expected:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_over_quic() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let addrs = [free_addr(), free_addr(), free_addr()];
    let transports = [quic(&ca, "a"), quic(&ca, "b"), quic(&ca, "c")];
    let a = node("a", addrs[0], None, &transports[0]).await;
    let b = node("b", addrs[1], Some(addrs[0]), &transports[1]).await;
    let c = node("c", addrs[2], Some(addrs[0]), &transports[2]).await;
    wait_for_view(&[&a, &b, &c], &["a", "b", "c"]).await;
    for transport in &transports {
        let stats = transport.counters().snapshot();
        assert!(stats.messages_received > 0);
        assert_eq!(stats.failed_handshakes, 0);
        assert_eq!(stats.garbage_received, 0);
    }
}

#[tokio::test]
async fn a_partitioned_node_joins_once_healed() {
    let controller = FaultController::new(5);
    let transport = FaultyTransport::in_memory(controller.clone());
    let addrs: Vec<SocketAddr> = (1..=3).map(|p| ([127, 0, 0, 1], p).into()).collect();
    controller.partition([
        ("main", vec![addrs[0], addrs[1]]),
        ("island", vec![addrs[2]]),
    ]);
    let a = node("a", addrs[0], None, &transport).await;
    let b = node("b", addrs[1], Some(addrs[0]), &transport).await;
    let c = node("c", addrs[2], Some(addrs[0]), &transport).await;
    wait_for_view(&[&a, &b], &["a", "b"]).await;
    wait_for_view(&[&c], &["c"]).await;
    assert!(controller.stats().dropped_partition > 0);
    controller.heal();
    wait_for_view(&[&a, &b, &c], &["a", "b", "c"]).await;
}
