//! Drain and resume (the OMERO workflow): a draining node is never picked, anywhere, once its
//! state has spread; it stays drained across a restart until resumed. In-process agents,
//! asked through the socket protocol; the last test checks the command line's bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chorus_agent::api::{Request, Response};
use chorus_agent::client;
use chorus_agent::Stop;
use chorus_core::member::{Member, NodeState, Status};

use crate::support::agent::{member, status, Cluster, TestAgent};
use crate::support::bin::{chorus, describe};
use crate::support::{wait_until, GOSSIP_INTERVAL, SLOW};

/// How long a drain may take to reach every node's `pick`. The contract is one gossip
/// round-trip (a round or two, plus the agent tick that refreshes what `pick` reads); the
/// bound leaves room for a busy 2-core machine and for the 50 ms polling of the measurement.
const SPREAD_BOUND: Duration = GOSSIP_INTERVAL.saturating_mul(10);

/// Picks asked of each node to show a drained node is never returned.
const PICKS_PER_NODE: usize = 200;

/// `pick` with no tag filter, from the view of the agent at `socket`.
async fn pick(socket: &Path) -> Result<Member, String> {
    let request = Request::Pick {
        tags: vec![],
        exclude_tags: vec![],
    };
    match client::call(socket, &request).await {
        Ok(Response::Picked { member }) => Ok(member),
        Ok(other) => Err(format!("unexpected answer to pick: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A request answered with `Done` (drain, resume).
async fn done(socket: &Path, request: Request) -> String {
    match client::call(socket, &request).await {
        Ok(Response::Done { message }) => message,
        other => panic!("unexpected answer to {request:?}: {other:?}"),
    }
}

/// `n` picks on each agent; the nodes picked, with how often.
async fn picks(agents: &[&TestAgent], n: usize) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for a in agents {
        let counts: &mut BTreeMap<String, usize> = seen.entry(a.node_id().to_string()).or_default();
        for _ in 0..n {
            let m = pick(&a.socket())
                .await
                .unwrap_or_else(|e| panic!("pick on {}: {e}", a.node_id()));
            assert_eq!(
                (m.status, m.state),
                (Status::Alive, NodeState::Active),
                "{} picked a node that is not alive and active: {m:?}",
                a.node_id()
            );
            *counts.entry(m.node_id).or_default() += 1;
        }
    }
    seen
}

/// Whether `node` is drained as far as `pick` on `observer` goes: shown draining, and not
/// returned by a few picks.
async fn drained_at(observer: &TestAgent, node: &str) -> Result<(), String> {
    let row = member(&observer.socket(), node).await?;
    if row.state != NodeState::Draining {
        return Err(format!(
            "{} shows {node} {:?}",
            observer.node_id(),
            row.state
        ));
    }
    for _ in 0..10 {
        let m = pick(&observer.socket()).await?;
        if m.node_id == node {
            return Err(format!("{} still picks {node}", observer.node_id()));
        }
    }
    Ok(())
}

/// Whether `observer` picks `node` within 30 picks (with 5 equal nodes, it misses one time
/// in a thousand; the caller polls).
async fn picks_sometimes(observer: &TestAgent, node: &str) -> Result<(), String> {
    for _ in 0..30 {
        if pick(&observer.socket()).await?.node_id == node {
            return Ok(());
        }
    }
    Err(format!("{} does not pick {node}", observer.node_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_never_picked_anywhere() {
    let cluster = Cluster::start("drain-pick", 5).await;
    cluster.wait_converged().await;
    let drained = cluster.agent("n3");
    let others: Vec<&TestAgent> = cluster
        .agents
        .iter()
        .filter(|a| a.node_id() != "n3")
        .collect();

    let started = Instant::now();
    assert_eq!(
        done(&drained.socket(), Request::Drain).await,
        "now draining"
    );
    // Its own picks leave it out at once: the answer to `drain` comes after the state change.
    for _ in 0..20 {
        assert_ne!(pick(&drained.socket()).await.unwrap().node_id, "n3");
    }
    let spread = wait_until("no pick on the other 4 returns n3", SLOW, || async {
        for o in &others {
            drained_at(o, "n3").await?;
        }
        Ok(started.elapsed())
    })
    .await;
    println!(
        "drain spread: {} ms (gossip interval {} ms)",
        spread.as_millis(),
        GOSSIP_INTERVAL.as_millis()
    );
    assert!(
        spread <= SPREAD_BOUND,
        "the drain took {spread:?} to reach every pick (bound {SPREAD_BOUND:?})"
    );

    // From now on it is never picked, on any node (its own included).
    let all: Vec<&TestAgent> = cluster.agents.iter().collect();
    let seen = picks(&all, PICKS_PER_NODE).await;
    let mut picked = BTreeSet::new();
    for (asked, counts) in &seen {
        assert!(!counts.contains_key("n3"), "{asked} picked n3: {counts:?}");
        picked.extend(counts.keys().cloned());
    }
    // Equal loads: the picks spread over every active node.
    let active: BTreeSet<String> = others.iter().map(|a| a.node_id().to_string()).collect();
    assert_eq!(picked, active, "picks: {seen:?}");
    assert_eq!(
        status(&drained.socket()).await.unwrap().node.state,
        NodeState::Draining
    );

    // `resume`: every node picks it again, eventually.
    let resumed = Instant::now();
    assert_eq!(done(&drained.socket(), Request::Resume).await, "now active");
    let back = wait_until("every node picks n3 again", SLOW, || async {
        for o in &others {
            picks_sometimes(o, "n3").await?;
        }
        Ok(resumed.elapsed())
    })
    .await;
    println!("resume spread: {} ms", back.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_survives_restart() {
    let mut cluster = Cluster::start("drain-restart", 3).await;
    cluster.wait_converged().await;
    assert_eq!(
        done(&cluster.agent("n2").socket(), Request::Drain).await,
        "now draining"
    );
    wait_until("n1 and n3 see n2 draining", SLOW, || async {
        drained_at(cluster.agent("n1"), "n2").await?;
        drained_at(cluster.agent("n3"), "n2").await
    })
    .await;

    // A crash (nothing written on the way out), then a graceful stop (the agent publishes
    // and persists `left` on its way out, as SIGTERM does in a rolling restart): each time
    // it comes back on the same data dir, still draining.
    for how in [Stop::Crash, Stop::Graceful] {
        let before = member(&cluster.agent("n1").socket(), "n2")
            .await
            .unwrap()
            .generation;
        let (_, spec) = cluster.take("n2").stop(how).await;
        let again = TestAgent::start(spec).await;
        let own = status(&again.socket()).await.unwrap();
        assert_eq!(
            own.node.state,
            NodeState::Draining,
            "n2 restarted after {how:?}: {own:?}"
        );
        assert!(own.generation > before, "{own:?}");
        cluster.agents.push(again);

        // While the others learn the new generation, no pick on them returns n2: it never
        // comes back `active`, not even for a round. (n2 itself may have nobody to offer yet.)
        let others = [cluster.agent("n1"), cluster.agent("n3")];
        wait_until(
            "n1 and n3 see the new n2 alive, still draining",
            SLOW,
            || {
                let others = &others;
                async move {
                    for (asked, counts) in picks(others, 5).await {
                        assert!(
                            !counts.contains_key("n2"),
                            "{asked} picked n2 after its restart ({how:?}): {counts:?}"
                        );
                    }
                    for o in others {
                        let row = member(&o.socket(), "n2").await?;
                        let o = o.node_id();
                        if row.generation <= before {
                            return Err(format!("{o} still shows the old n2: {row:?}"));
                        }
                        assert_eq!(
                            row.state,
                            NodeState::Draining,
                            "{o} shows n2 after its restart ({how:?}): {row:?}"
                        );
                        if row.status != Status::Alive {
                            return Err(format!("{o} shows {row:?}"));
                        }
                    }
                    Ok(())
                }
            },
        )
        .await;
        // Once n2 sees the others too, nobody picks it, itself included.
        cluster.wait_converged().await;
        let agents: Vec<&TestAgent> = cluster.agents.iter().collect();
        for (asked, counts) in picks(&agents, PICKS_PER_NODE / 2).await {
            assert!(!counts.contains_key("n2"), "{asked} picked n2: {counts:?}");
        }
    }

    // Only `resume` ends it.
    assert_eq!(
        done(&cluster.agent("n2").socket(), Request::Resume).await,
        "now active"
    );
    wait_until("n1 and n3 pick n2 again", SLOW, || async {
        picks_sometimes(cluster.agent("n1"), "n2").await?;
        picks_sometimes(cluster.agent("n3"), "n2").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pick_and_drain_flags_exit_2_and_change_nothing() {
    // (`load --sessions -1 | abc | 2.5 | ""` are in process.rs.)
    let cluster = Cluster::start("drain-bad", 1).await;
    let agent = cluster.agent("n1");
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    for (args, flag, expected) in [
        (vec!["pick", "--tag", "noequals"], "--tag", "KEY=VALUE"),
        (vec!["pick", "--tag", "=v"], "--tag", "key"),
        (
            vec!["pick", "--exclude-tag", "noequals"],
            "--exclude-tag",
            "KEY=VALUE",
        ),
        (vec!["drain", "--timeout", "soon"], "--timeout", "e.g. 30s"),
    ] {
        let mut full = args.clone();
        full.extend(["--socket", socket]);
        let out = chorus(&full).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains(expected),
            "{args:?}: unclear error: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
    // Nothing reached the agent: still active, still picked.
    assert_eq!(
        status(&agent.socket()).await.unwrap().node.state,
        NodeState::Active
    );
    assert_eq!(pick(&agent.socket()).await.unwrap().node_id, "n1");
}
