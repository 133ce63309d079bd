//! The deployed transport, in process: QUIC with mutual TLS on 127.0.0.1, certificates minted
//! from a cluster key, as `chorus agent --cluster-key` does.

use std::time::Duration;

use chorus_core::member::Status;

use crate::support::agent::{members, status, AgentSpec, Cluster, Net, TestAgent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_agents_converge_over_quic() {
    let cluster = Cluster::start_on("quic10", 10, Net::quic("quic10")).await;
    cluster.wait_converged().await;
    let s = status(&cluster.agents[9].socket()).await.unwrap();
    assert_eq!((s.node.alive, s.node.roster), (10, 10), "{s:?}");
    let net = &s.net;
    assert!(net["messages_received"].as_u64().unwrap() > 0, "{net}");
    assert_eq!(net["failed_handshakes"].as_u64(), Some(0), "{net}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_another_ca_never_appears_alive_anywhere() {
    let cluster = Cluster::start_on("quicca", 3, Net::quic("quicca")).await;
    cluster.wait_converged().await;
    // Same cluster name, same version, but a certificate from another CA: refused at the TLS
    // handshake, before any gossip.
    let mut spec = AgentSpec::new("intruder", "quicca", &Net::quic("quicca"));
    for a in &cluster.agents {
        spec = spec.seed(a.addr());
    }
    let intruder = TestAgent::start(spec).await;

    // The refusal is counted on the cluster's side...
    crate::support::wait_until(
        "a failed handshake is counted",
        crate::support::SLOW,
        || async {
            for a in &cluster.agents {
                let s = status(&a.socket()).await?;
                if s.net["failed_handshakes"].as_u64().unwrap_or(0) > 0 {
                    return Ok(());
                }
            }
            Err("no agent counted a failed handshake yet".to_string())
        },
    )
    .await;
    // ...and, over an observation window of many gossip rounds, nobody ever lists the intruder
    // (nor does the intruder see anyone).
    let window_end = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < window_end {
        for a in &cluster.agents {
            let rows = members(&a.socket()).await.unwrap();
            assert!(
                rows.iter()
                    .all(|m| m.node_id != "intruder" || m.status != Status::Alive),
                "{} lists the intruder alive: {rows:?}",
                a.node_id()
            );
            assert_eq!(status(&a.socket()).await.unwrap().node.alive, 3);
        }
        let seen = members(&intruder.socket()).await.unwrap();
        assert!(
            seen.iter().all(|m| m.is_self || m.status != Status::Alive),
            "{seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
