//! In-process clusters: agents in this process, over chitchat's in-memory transport (or QUIC
//! with mutual TLS, as deployed), checked through their sockets as `chorus` would.

use std::time::Duration;

use chorus_agent::{Exit, Stop};
use chorus_core::alert::Alert;
use chorus_core::member::Status;

use crate::support::agent::{
    member, next_event_matching, status, watch, Cluster, Net, TestAgent, APP_VERSION,
};
use crate::support::{wait_until, GOSSIP_INTERVAL, SLOW};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_converge() {
    let cluster = Cluster::start("converge", 5).await;
    cluster.wait_converged().await;
    for a in &cluster.agents {
        let s = status(&a.socket()).await.unwrap();
        assert_eq!(s.node.node_id, a.node_id());
        assert_eq!(s.node.cluster, "converge");
        assert_eq!(s.node.alive, 5, "{s:?}");
        assert_eq!(s.node.roster, 5, "{s:?}");
        assert!(s.node.quorum, "{s:?}");
        assert_eq!(s.node.app_version, APP_VERSION);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_app_version_is_rejected_by_all_and_never_counted() {
    // n6 is seeded with n1 only: the others learn of it by relay, through gossip.
    let cluster = Cluster::start("versions", 5).await;
    version_rejection(cluster, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_app_version_is_refused_at_the_quic_hello() {
    // As deployed: QUIC with mutual TLS. The hello refuses n6 before any gossip, so only the
    // nodes it dials hear of it; it is seeded with all five, as an operator would.
    let cluster = Cluster::start_on("versions-quic", 5, Net::quic("versions-quic")).await;
    version_rejection(cluster, true).await;
}

/// Starts n6 with app version 2.0 next to five agents of version 1.0: all five show it
/// `rejected`, naming the app version, never count it, and say so on `watch`.
async fn version_rejection(cluster: Cluster, seed_all: bool) {
    cluster.wait_converged().await;
    let mut watchers = Vec::new();
    for a in &cluster.agents {
        watchers.push((a.node_id().to_string(), watch(&a.socket()).await));
    }

    let mut spec = cluster.spec("n6").app_version("2.0");
    if seed_all {
        spec.seeds = cluster.agents.iter().map(|a| a.addr()).collect();
    }
    let odd = TestAgent::start(spec).await;

    // Checked on every poll, from the moment n6 starts: n6 is never counted.
    let never_counted = |who: &str, s: &chorus_agent::api::StatusReport, n6: Option<Status>| {
        assert!(s.node.alive <= 5, "{who} counts {} alive", s.node.alive);
        if let Some(st) = n6 {
            assert!(!st.is_up(), "{who} counts n6 as {st}");
        }
    };
    wait_until("all five show n6 rejected", SLOW, || async {
        for a in &cluster.agents {
            let s = status(&a.socket()).await?;
            let row = member(&a.socket(), "n6").await;
            never_counted(a.node_id(), &s, row.as_ref().ok().map(|m| m.status));
            let row = row?;
            if row.status != Status::Rejected {
                return Err(format!("{} shows n6 {}", a.node_id(), row.status));
            }
            let reason = row.reason.clone().unwrap_or_default();
            assert!(
                reason.contains("app version") && reason.contains("2.0"),
                "{} refuses n6 for {reason:?}, which does not name the app version",
                a.node_id()
            );
            // A node refused at the QUIC hello never gossiped, so its version may be unknown.
            assert!(
                matches!(row.app_version.as_deref(), None | Some("2.0")),
                "{row:?}"
            );
        }
        Ok(())
    })
    .await;

    // n6, for its part, refuses its seed and counts only itself.
    wait_until("n6 refuses n1", SLOW, || async {
        let s = status(&odd.socket()).await?;
        let row = member(&odd.socket(), "n1").await?;
        if row.status != Status::Rejected {
            return Err(format!("n6 shows n1 {}", row.status));
        }
        assert_eq!(s.node.alive, 1, "n6 counts others alive: {s:?}");
        Ok(())
    })
    .await;

    // It stays refused while gossip goes on (n6's heartbeats keep arriving).
    let until = tokio::time::Instant::now() + GOSSIP_INTERVAL * 8;
    while tokio::time::Instant::now() < until {
        for a in &cluster.agents {
            let s = status(&a.socket()).await.unwrap();
            let row = member(&a.socket(), "n6").await.unwrap();
            never_counted(a.node_id(), &s, Some(row.status));
            assert_eq!(row.status, Status::Rejected);
            assert_eq!(
                s.node.alive,
                5,
                "{} counts {} alive",
                a.node_id(),
                s.node.alive
            );
        }
        tokio::time::sleep(GOSSIP_INTERVAL).await;
    }

    for (observer, watcher) in &mut watchers {
        let event = next_event_matching(
            watcher,
            Duration::from_secs(10),
            "version_rejected for n6",
            |a| matches!(a, Alert::VersionRejected { node, .. } if node == "n6"),
        )
        .await;
        assert_eq!(&event.observer, observer);
        assert_eq!(event.alert.kind(), "version_rejected");
        let Alert::VersionRejected { reason, .. } = &event.alert else {
            unreachable!()
        };
        assert!(reason.contains("app version"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_is_seen_dead() {
    let mut cluster = Cluster::start("crash", 5).await;
    cluster.wait_converged().await;
    let mut watcher = watch(&cluster.agent("n1").socket()).await;

    let (exit, _) = cluster.take("n5").stop(Stop::Crash).await;
    assert_eq!(exit, Exit::Crashed);

    cluster.wait_all_see("n5", Status::Dead).await;
    wait_until("the others count 4 alive", SLOW, || async {
        for a in &cluster.agents {
            let s = status(&a.socket()).await?;
            if s.node.alive != 4 {
                return Err(format!("{} counts {} alive", a.node_id(), s.node.alive));
            }
        }
        Ok(())
    })
    .await;
    next_event_matching(
        &mut watcher,
        SLOW,
        "node_failed for n5",
        |a| matches!(a, Alert::NodeFailed { node, .. } if node == "n5"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_agent_is_seen_left() {
    let mut cluster = Cluster::start("graceful", 5).await;
    cluster.wait_converged().await;
    let mut watcher = watch(&cluster.agent("n1").socket()).await;

    let (exit, _) = cluster.take("n4").stop(Stop::Graceful).await;
    assert_eq!(exit, Exit::Shutdown);

    // `left` spreads before the agent is gone: no failure detector involved, so no node
    // ever shows it `dead` on the way.
    cluster.wait_all_see("n4", Status::Left).await;
    next_event_matching(
        &mut watcher,
        SLOW,
        "node_left for n4",
        |a| matches!(a, Alert::NodeLeft { node } if node == "n4"),
    )
    .await;
    for a in &cluster.agents {
        let s = status(&a.socket()).await.unwrap();
        assert_eq!(s.node.alive, 4, "{s:?}");
        assert_eq!(s.node.roster, 4, "a left node leaves the roster: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_comes_back_with_a_larger_generation() {
    let mut cluster = Cluster::start("restart", 3).await;
    cluster.wait_converged().await;

    for (node, how, seen) in [
        ("n3", Stop::Crash, Status::Dead),
        ("n2", Stop::Graceful, Status::Left),
    ] {
        let before = member(&cluster.agent("n1").socket(), node)
            .await
            .unwrap()
            .generation;
        let (_, spec) = cluster.take(node).stop(how).await;
        cluster.wait_all_see(node, seen).await;

        let again = TestAgent::start(spec).await;
        let own = status(&again.socket()).await.unwrap();
        assert!(
            own.generation > before,
            "{node} restarted with generation {} after {before}",
            own.generation
        );
        cluster.agents.push(again);
        let rows = cluster.wait_all_see(node, Status::Alive).await;
        for row in rows {
            assert!(row.generation > before, "{row:?}");
        }
        cluster.wait_converged().await;
    }
}
