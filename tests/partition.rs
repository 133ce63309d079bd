//! Split-brain and leadership with whole agents on a faulty network: in-process agents over
//! chitchat's in-memory transport behind chorus-net's `FaultyTransport`, whose
//! `FaultController` the test uses to partition, isolate and drop messages; agents are crashed
//! with `Stop::Crash` and restarted on their data dir. Every agent is read through its socket,
//! as an operator would: `status`, and its `watch` stream recorded by an [`EventLog`].
//!
//! # The clock
//! Every test here runs on tokio's paused clock (`start_paused`; the checker builds such
//! runtimes itself). When every task is idle, tokio moves the clock to the next timer, so a
//! minute of gossip takes a few seconds and a busy machine cannot make a failure detector
//! fire. Everything in the loop runs on that clock: the agent (`tokio::time::Instant::now()
//! .into_std()`), chitchat's gossip timer and failure detector (`tokio::time::Instant`), the
//! fault injector's delays (tokio sleeps) and the channel transport (tokio channels). The Unix
//! sockets are real I/O, yet they do not race the clock: both ends are in this process, so a
//! write makes the other end readable at once; before it auto-advances, tokio polls for I/O
//! with a zero timeout, and (tokio 1.54) a task woken by that poll marks the time driver woken,
//! which cancels the advance. A socket round trip takes no virtual time (measured: 100
//! `status` calls, 0 ns), and a `watch` event is read at the instant the agent raised it.
//! What would race the clock is I/O finishing outside this process (a child process, a real
//! network): nothing here does that, and `spawn_blocking` holds the clock while it runs.
//!
//! Runs are not reproducible to the bit: chitchat picks gossip peers with `thread_rng`, and
//! `tokio::select!` polls its branches in random order. A seed fixes the schedule of faults
//! and the fault controller's random drops, so it replays the same kind of run.
//!
//! Times measured here are printed (`--nocapture` shows them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chorus_agent::api::StatusReport;
use chorus_agent::{Exit, Stop};
use chorus_core::alert::Alert;
use chorus_core::node::NodeConfig;
use chorus_core::quorum::Partition;
use chorus_net::FaultController;
use tokio::time::Instant;

use crate::support::agent::{status, AgentSpec, Cluster, Net, TestAgent};
use crate::support::events::EventLog;
use crate::support::{wait_until, GOSSIP_INTERVAL, SLOW};

/// The agent's timings for the test gossip interval, as `chorus_agent::run` derives them.
struct Timings {
    split_window: Duration,
    lease: Duration,
}

fn timings() -> Timings {
    let (_, split_window) = NodeConfig::timings(GOSSIP_INTERVAL);
    Timings {
        split_window,
        lease: raft_timing().lease,
    }
}

fn raft_timing() -> chorus_core::consensus::RaftTiming {
    chorus_core::consensus::RaftTiming::new(Duration::from_secs(600))
}

/// The agent's tick (`chorus_agent::run`): half a gossip interval, within 50..500 ms.
fn tick() -> Duration {
    (GOSSIP_INTERVAL / 2).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// The documented liveness bound (`liveness_bound` in crates/chorus-core/tests/scenarios.rs):
/// a majority of the voters connected, without crashes, restarts, link changes or message
/// loss for this long has a leader.
fn liveness_bound() -> Duration {
    let t = raft_timing();
    t.settle + t.election_timeout() * 6 + t.lease + GOSSIP_INTERVAL * 7
}

/// By how much two leaderships of different nodes may overlap: none (the lease argument of
/// crates/chorus-core/src/leader.rs; `OVERLAP_MARGIN` of the core checker). Here a leadership
/// is journaled from the `watch` events of the leader itself, read at the virtual instant the
/// agent raised them, so nothing has to be added for measurement.
const OVERLAP_MARGIN: Duration = Duration::ZERO;

/// A "this never happens" check watches for this long. Named so, because it is the one
/// place where the tests let time pass without waiting for something.
async fn observation_window(length: Duration) {
    tokio::time::sleep(length).await;
}

/// A cluster on a faulty network whose every agent is followed by `log`.
struct Lab {
    cluster: Cluster,
    faults: FaultController,
    log: EventLog,
}

impl Lab {
    /// Starts `n` agents `n1..nN`, waits until they all see each other, then follows them.
    async fn start(name: &str, n: usize, seed: u64) -> Lab {
        let faults = FaultController::new(seed);
        let cluster = Cluster::start_on(name, n, Net::faulty(&faults)).await;
        cluster.wait_converged().await;
        let log = EventLog::default();
        for a in &cluster.agents {
            log.follow(a.node_id(), &a.socket()).await;
        }
        Lab {
            cluster,
            faults,
            log,
        }
    }

    fn addr(&self, node: &str) -> SocketAddr {
        self.cluster.agent(node).addr()
    }

    /// Replaces the partition: messages between different sides are dropped.
    fn partition(&self, sides: &[&[&str]]) {
        self.faults
            .partition(sides.iter().enumerate().map(|(i, side)| {
                let addrs: Vec<SocketAddr> = side.iter().map(|n| self.addr(n)).collect();
                (format!("side{i}"), addrs)
            }));
    }

    async fn status(&self, node: &str) -> Result<StatusReport, String> {
        status(&self.cluster.agent(node).socket()).await
    }

    /// Waits until every node of `among` names the same leader, one of `among`, which says
    /// it leads; returns it and its epoch.
    async fn wait_leader(&self, among: &[&str]) -> (String, u64) {
        let what = format!("{among:?} agree on a leader among them");
        wait_until(&what, SLOW, || async {
            let mut named = BTreeSet::new();
            for n in among {
                let s = self.status(n).await?;
                named.insert((s.node.leader.clone(), s.node.epoch));
            }
            let named: Vec<_> = named.into_iter().collect();
            let [(Some(leader), epoch)] = &named[..] else {
                return Err(format!("they do not agree yet: {named:?}"));
            };
            let (leader, epoch) = (leader.clone(), *epoch);
            if !among.contains(&leader.as_str()) || !self.status(&leader).await?.is_leader {
                return Err(format!("{leader} is named but does not lead"));
            }
            Ok((leader, epoch))
        })
        .await
    }

    /// Waits until `check` holds for the status of every node of `nodes`.
    async fn wait_status(&self, what: &str, nodes: &[&str], check: impl Fn(&StatusReport) -> bool) {
        wait_until(what, SLOW, || async {
            for n in nodes {
                let s = self.status(n).await?;
                if !check(&s) {
                    return Err(format!("{n}: {:?}", s.node));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Alerts of `kinds` raised by any of `observers` (about anyone).
    fn raised(&self, observers: &[&str], kinds: &[&str]) -> Vec<String> {
        self.log
            .events()
            .iter()
            .filter(|r| observers.contains(&r.observer()) && kinds.contains(&r.alert().kind()))
            .map(|r| format!("{}: {}", r.observer(), r.alert()))
            .collect()
    }

    /// Nothing went wrong that no test asked about: no node ever saw two leaders, and no
    /// `watch` stream fell behind.
    fn assert_sound(&self) {
        let all: Vec<String> = self
            .cluster
            .agents
            .iter()
            .map(|a| a.node_id().to_string())
            .collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(self.raised(&all, &["dual_leader"]), Vec::<String>::new());
        assert_eq!(self.log.problems(), Vec::<String>::new());
    }
}

/// Waits for `quorum_lost` on each node of `side`, naming exactly `side` as reachable and
/// `other` as unreachable; prints how long after `since` each came.
async fn expect_quorum_lost(lab: &Lab, side: &[&str], other: &[&str], since: Instant, label: &str) {
    for n in side {
        let lost = lab
            .log
            .wait_for(n, "quorum_lost", SLOW, |a| {
                matches!(a, Alert::QuorumLost { .. })
            })
            .await;
        let Alert::QuorumLost {
            reachable,
            unreachable,
        } = lost.alert()
        else {
            unreachable!()
        };
        assert_eq!(reachable, &ids(side), "{n}");
        assert_eq!(unreachable, &ids(other), "{n}");
        println!(
            "{label}: {n} raised quorum_lost {:?} after the fault",
            lost.at - since
        );
    }
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

#[tokio::test(start_paused = true)]
async fn five_split_3_2() {
    let t = timings();
    let lab = Lab::start("split-3-2", 5, 32).await;
    let (old_leader, old_epoch) = lab.wait_leader(&FIVE).await;
    let minority = ["n1", "n2"];
    let majority = ["n3", "n4", "n5"];

    let split_at = Instant::now();
    lab.partition(&[&minority, &majority]);

    // The two: quorum_lost, naming who they still reach and who they lost; then `minority`
    // and no leadership in `status`.
    expect_quorum_lost(&lab, &minority, &majority, split_at, "five_split_3_2").await;
    lab.wait_status("the two say minority", &minority, |s| {
        !s.node.quorum && s.node.partition == Partition::Minority && !s.is_leader
    })
    .await;

    // The three: one split_brain_suspected each, naming both lost nodes; they keep quorum
    // and, the old leader being on the other side, elect one of them.
    for n in majority {
        let suspected = lab
            .log
            .wait_for(n, "split_brain_suspected", SLOW, |a| {
                matches!(a, Alert::SplitBrainSuspected { .. })
            })
            .await;
        let Alert::SplitBrainSuspected { lost, reachable } = suspected.alert() else {
            unreachable!()
        };
        let lost: BTreeSet<&str> = lost.iter().map(String::as_str).collect();
        assert_eq!(lost, BTreeSet::from(minority), "{n}");
        assert_eq!(reachable, &ids(&majority), "{n}");
        println!(
            "five_split_3_2: {n} raised split_brain_suspected {:?} after the partition",
            suspected.at - split_at
        );
    }
    lab.wait_status("the three keep quorum", &majority, |s| {
        s.node.quorum && s.node.partition == Partition::Majority && s.node.alive == 3
    })
    .await;
    let (leader, epoch) = lab.wait_leader(&majority).await;
    println!(
        "five_split_3_2: {leader} leads the three (epoch {epoch}) {:?} after the partition cut \
         off {old_leader} (epoch {old_epoch})",
        split_at.elapsed()
    );
    if leader != old_leader {
        assert!(
            epoch > old_epoch,
            "{leader} took epoch {epoch} after {old_epoch}"
        );
    }

    // Observation window: a split window and a lease more. The three never reported the two
    // as separate failures, and never lost quorum.
    observation_window(t.split_window + t.lease).await;
    assert_eq!(
        lab.raised(&majority, &["node_failed", "quorum_lost"]),
        Vec::<String>::new()
    );
    lab.wait_status("the two still say minority", &minority, |s| {
        !s.node.quorum && !s.is_leader
    })
    .await;

    let heal_at = Instant::now();
    lab.faults.heal();
    for n in FIVE {
        let healed = lab
            .log
            .wait_for(n, "split_brain_healed", SLOW, |a| {
                matches!(a, Alert::SplitBrainHealed { .. })
            })
            .await;
        let Alert::SplitBrainHealed { ours, theirs, .. } = healed.alert() else {
            unreachable!()
        };
        let (us, them) = if minority.contains(&n) {
            (&minority[..], &majority[..])
        } else {
            (&majority[..], &minority[..])
        };
        assert_eq!(ours, &ids(us), "{n}");
        assert_eq!(theirs, &ids(them), "{n}");
        println!(
            "five_split_3_2: {n} raised split_brain_healed {:?} after the heal",
            healed.at - heal_at
        );
    }
    for n in minority {
        lab.log
            .wait_for(n, "quorum_regained", SLOW, |a| {
                matches!(a, Alert::QuorumRegained { .. })
            })
            .await;
    }
    lab.cluster.wait_converged().await;
    lab.wait_status("all five have quorum", &FIVE, |s| {
        s.node.quorum && s.node.partition == Partition::Majority
    })
    .await;
    // The heal does not move leadership: the incumbent stays.
    assert_eq!(lab.wait_leader(&FIVE).await, (leader, epoch));
    lab.assert_sound();
}

#[tokio::test(start_paused = true)]
async fn four_split_2_2_exactly_one_side_keeps_quorum() {
    let t = timings();
    let lab = Lab::start("split-2-2", 4, 22).await;
    let all = ["n1", "n2", "n3", "n4"];
    lab.wait_leader(&all).await;
    // Two halves of the nodes, but four nodes have three voters (an even set tolerates no more
    // failures): n1, n2, n3, the lowest ids, voters since the bootstrap. The half holding two
    // of them keeps quorum and leads, whichever way the groups are listed.
    let keeps = ["n1", "n2"];
    let loses = ["n3", "n4"];
    let split_at = Instant::now();
    lab.partition(&[&loses, &keeps]);

    for n in loses {
        let lost = lab
            .log
            .wait_for(n, "quorum_lost", SLOW, |a| {
                matches!(a, Alert::QuorumLost { .. })
            })
            .await;
        println!(
            "four_split_2_2: {n} raised quorum_lost {:?} after the partition",
            lost.at - split_at
        );
    }
    lab.wait_status("n3 and n4 say minority", &loses, |s| {
        !s.node.quorum && s.node.partition == Partition::Minority && !s.is_leader
    })
    .await;
    lab.wait_status("n1 and n2 see only each other", &keeps, |s| {
        s.node.alive == 2
    })
    .await;
    let (leader, _) = lab.wait_leader(&keeps).await;
    println!("four_split_2_2: {leader} leads the half with n1");

    // Observation window: a split window and a lease after both halves settled. The half with
    // n1 never lost quorum, the other never got it back: exactly one side has it.
    observation_window(t.split_window + t.lease).await;
    assert_eq!(lab.raised(&keeps, &["quorum_lost"]), Vec::<String>::new());
    assert_eq!(
        lab.raised(&loses, &["quorum_regained"]),
        Vec::<String>::new()
    );
    let mut with_quorum = BTreeSet::new();
    for n in all {
        let s = lab.status(n).await.unwrap();
        if s.node.quorum {
            with_quorum.insert(lab.faults.group_of(lab.addr(n)).unwrap());
        }
    }
    assert_eq!(with_quorum.len(), 1, "sides with quorum: {with_quorum:?}");
    lab.wait_status("n1 and n2 keep quorum", &keeps, |s| {
        s.node.quorum && s.node.partition == Partition::Majority
    })
    .await;

    lab.faults.heal();
    for n in loses {
        lab.log
            .wait_for(n, "quorum_regained", SLOW, |a| {
                matches!(a, Alert::QuorumRegained { .. })
            })
            .await;
    }
    lab.cluster.wait_converged().await;
    assert_eq!(lab.wait_leader(&all).await.0, leader);
    lab.assert_sound();
}

#[tokio::test(start_paused = true)]
async fn one_crash_raises_node_failed_only() {
    let t = timings();
    let mut lab = Lab::start("one-crash", 5, 1).await;
    // The crash that matters most: the leader's.
    let (crashed, epoch) = lab.wait_leader(&FIVE).await;
    let survivors: Vec<&str> = FIVE.into_iter().filter(|n| *n != crashed).collect();

    let crash_at = Instant::now();
    let (exit, _) = lab.cluster.take(&crashed).stop(Stop::Crash).await;
    assert_eq!(exit, Exit::Crashed);

    let mut last_failed = crash_at;
    for n in &survivors {
        let failed = lab
            .log
            .wait_for(
                n,
                &format!("node_failed for {crashed}"),
                SLOW,
                |a| matches!(a, Alert::NodeFailed { node, .. } if *node == crashed),
            )
            .await;
        println!(
            "one_crash: {n} raised node_failed {:?} after the crash of {crashed}",
            failed.at - crash_at
        );
        last_failed = last_failed.max(failed.at);
    }
    let (leader, new_epoch) = lab.wait_leader(&survivors).await;
    let failover = crash_at.elapsed();
    println!(
        "one_crash: {leader} leads (epoch {new_epoch}) {failover:?} after the crash of the \
         leader {crashed} (epoch {epoch}); bound {:?}",
        liveness_bound()
    );
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
    assert!(
        failover <= liveness_bound(),
        "failover took {failover:?}, more than the bound {:?}",
        liveness_bound()
    );

    // Observation window: from the last node_failed, a split window and a lease more. One
    // failure is not a split: no split_brain_suspected, nobody loses quorum.
    let until = last_failed + t.split_window + t.lease;
    observation_window(until.saturating_duration_since(Instant::now())).await;
    assert_eq!(
        lab.raised(&survivors, &["split_brain_suspected", "quorum_lost"]),
        Vec::<String>::new()
    );
    lab.wait_status("the four keep quorum", &survivors, |s| {
        s.node.quorum && s.node.alive == 4 && s.node.roster == 5
    })
    .await;
    lab.assert_sound();
}

#[tokio::test(start_paused = true)]
async fn three_of_five_crash_survivors_lose_quorum() {
    let mut lab = Lab::start("three-crash", 5, 3).await;
    lab.wait_leader(&FIVE).await;
    let survivors = ["n1", "n2"];
    let crashed = ["n3", "n4", "n5"];
    let crash_at = Instant::now();
    for n in crashed {
        lab.cluster.take(n).stop(Stop::Crash).await;
    }
    expect_quorum_lost(&lab, &survivors, &crashed, crash_at, "three_crash").await;
    // Nobody leads a minority, whoever led before.
    lab.wait_status("the two say minority, without a leader", &survivors, |s| {
        !s.node.quorum
            && s.node.partition == Partition::Minority
            && !s.is_leader
            && s.node.leader.is_none()
    })
    .await;
    observation_window(timings().lease).await;
    lab.wait_status("the two still have no leader", &survivors, |s| {
        !s.node.quorum && !s.is_leader
    })
    .await;
    lab.assert_sound();
}

#[tokio::test(start_paused = true)]
async fn ten_percent_loss_no_false_quorum_lost() {
    const LOSS: f64 = 0.1;
    const FOR: Duration = Duration::from_secs(60);
    let lab = Lab::start("loss", 5, 10).await;
    let (leader, epoch) = lab.wait_leader(&FIVE).await;
    let before = lab.faults.stats();
    lab.faults.set_drop_rate(LOSS);

    // Observation window: 60 simulated seconds of loss, every node checked every second.
    let until = Instant::now() + FOR;
    let mut polls = 0;
    while Instant::now() < until {
        for n in FIVE {
            let s = lab.status(n).await.unwrap();
            assert!(
                s.node.quorum && s.node.partition == Partition::Majority,
                "{n} under {LOSS} loss: {:?}",
                s.node
            );
            polls += 1;
        }
        observation_window(Duration::from_secs(1)).await;
    }
    lab.faults.set_drop_rate(0.0);
    let after = lab.faults.stats();
    let dropped = after.dropped_random - before.dropped_random;
    let sent = dropped + after.delivered - before.delivered;
    let alerts: BTreeMap<&str, usize> =
        lab.log.events().iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.alert().kind()).or_default() += 1;
            m
        });
    println!(
        "ten_percent_loss: {dropped} of {sent} messages dropped ({:.1}%) over {FOR:?}, \
         {polls} status polls all with quorum; alerts raised: {alerts:?}",
        100.0 * dropped as f64 / sent as f64
    );
    assert_eq!(
        lab.raised(&FIVE, &["quorum_lost", "split_brain_suspected"]),
        Vec::<String>::new()
    );
    // Loss alone never moves leadership.
    assert_eq!(lab.wait_leader(&FIVE).await, (leader, epoch));
    lab.cluster.wait_converged().await;
    lab.assert_sound();
}

// ----- The leader checker ---------------------------------------------------------------

/// Schedules the checker runs unless `CHORUS_RUNS` says otherwise; `CHORUS_SEED` replays one.
const CHECKER_RUNS: u64 = 20;
/// Virtual length of one schedule, before its final quiet spell.
const CHECKER_LENGTH: Duration = Duration::from_secs(45);
/// How often the checker reads every agent's `status` (virtual time).
const CHECKER_POLL: Duration = Duration::from_millis(100);

/// splitmix64: the schedule's own random numbers, from its seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize].clone())
    }
}

/// One fault the checker injects.
#[derive(Debug, Clone)]
enum Fault {
    Partition(Vec<Vec<String>>),
    Isolate(String),
    Heal,
    Crash(String),
    Restart(String),
    Loss(f64),
}

/// One leadership as the leader's own `watch` stream told it: from the `leader_changed` that
/// names itself to the next `leader_changed` it raises, or its crash.
#[derive(Debug, Clone)]
struct Leadership {
    node: String,
    run: usize,
    epoch: u64,
    start: Duration,
    end: Duration,
}

/// A `status` that said "I lead" (`is_leader`), and when.
#[derive(Debug, Clone)]
struct LeadSample {
    node: String,
    run: usize,
    epoch: u64,
    at: Duration,
}

/// What one schedule measured.
#[derive(Debug, Default, Clone)]
struct CheckerStats {
    faults: usize,
    leaderships: usize,
    max_overlap: Duration,
    /// Shortest time between one node's leadership ending and another's starting.
    min_handover_gap: Option<Duration>,
    stable_windows: usize,
    /// Longest time from "a majority became connected and stable" to "one of it leads".
    max_time_to_leader: Duration,
    /// Times from the crash or isolation of the leader to another node leading (when no
    /// other fault came in between).
    failovers: Vec<Duration>,
    virtual_time: Duration,
}

/// One schedule's cluster and what the checker knows about it.
struct Checker {
    seed: u64,
    verbose: bool,
    t0: Instant,
    faults: FaultController,
    cluster: Cluster,
    /// Every node's gossip address (crashed ones too).
    addrs: BTreeMap<String, SocketAddr>,
    down: BTreeMap<String, AgentSpec>,
    log: EventLog,
    /// The run (`EventLog::follow`) of each node now running.
    run_of: BTreeMap<String, usize>,
    /// When each run crashed.
    crashed: BTreeMap<usize, Duration>,
    /// The fault model, to know which majority is connected: partition groups (empty:
    /// none), isolated nodes, loss.
    groups: Vec<BTreeSet<String>>,
    isolated: BTreeSet<String>,
    loss: f64,
    /// The connected majority and since when it has been stable.
    stable: Option<(BTreeSet<String>, Duration)>,
    led_in_window: bool,
    /// The one node whose `status` said it leads at the last poll (none if none or several).
    leader: Option<String>,
    /// A failover being timed: the old leader and when it was cut off.
    failover: Option<(String, Duration)>,
    samples: Vec<LeadSample>,
    stats: CheckerStats,
}

impl Checker {
    async fn start(seed: u64, verbose: bool) -> Checker {
        let faults = FaultController::new(seed);
        let cluster = Cluster::start_on(&format!("checker-{seed}"), 5, Net::faulty(&faults)).await;
        let log = EventLog::default();
        let mut run_of = BTreeMap::new();
        for a in &cluster.agents {
            run_of.insert(
                a.node_id().to_string(),
                log.follow(a.node_id(), &a.socket()).await,
            );
        }
        let addrs = cluster
            .agents
            .iter()
            .map(|a| (a.node_id().to_string(), a.addr()))
            .collect();
        let mut checker = Checker {
            seed,
            verbose,
            t0: Instant::now(),
            faults,
            cluster,
            addrs,
            down: BTreeMap::new(),
            log,
            run_of,
            crashed: BTreeMap::new(),
            groups: Vec::new(),
            isolated: BTreeSet::new(),
            loss: 0.0,
            stable: None,
            led_in_window: false,
            leader: None,
            failover: None,
            samples: Vec::new(),
            stats: CheckerStats::default(),
        };
        checker.stable = checker
            .connected_majority()
            .map(|side| (side, Duration::ZERO));
        checker
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {}: at {:?}: {what}\nreplay: CHORUS_SEED={} cargo test -p chorus-tests \
             partition::leader_checker_in_process -- --nocapture",
            self.seed,
            self.now(),
            self.seed
        );
    }

    fn running(&self) -> Vec<String> {
        self.run_of.keys().cloned().collect()
    }

    /// Whether the fault model lets `a` and `b` talk.
    fn linked(&self, a: &str, b: &str) -> bool {
        let group = |n: &str| self.groups.iter().position(|g| g.contains(n));
        !self.isolated.contains(a) && !self.isolated.contains(b) && group(a) == group(b)
    }

    /// The running nodes that all talk to each other, if they are a majority of the five and
    /// no message is lost.
    fn connected_majority(&self) -> Option<BTreeSet<String>> {
        if self.loss > 0.0 {
            return None;
        }
        let running = self.running();
        running
            .iter()
            .map(|a| {
                running
                    .iter()
                    .filter(|b| self.linked(a, b))
                    .cloned()
                    .collect::<BTreeSet<String>>()
            })
            .find(|side| side.len() * 2 > self.addrs.len())
    }

    async fn apply(&mut self, fault: Fault) {
        if self.verbose {
            println!("seed {} at {:?}: {fault:?}", self.seed, self.now());
        }
        self.stats.faults += 1;
        let mut touched = BTreeSet::new();
        match &fault {
            Fault::Partition(groups) => {
                self.faults
                    .partition(groups.iter().enumerate().map(|(i, g)| {
                        let addrs: Vec<SocketAddr> = g.iter().map(|n| self.addrs[n]).collect();
                        (format!("g{i}"), addrs)
                    }));
                self.groups = groups.iter().map(|g| g.iter().cloned().collect()).collect();
            }
            Fault::Isolate(node) => {
                self.faults.isolate(self.addrs[node]);
                self.isolated.insert(node.clone());
                touched.insert(node.clone());
            }
            Fault::Heal => {
                self.faults.heal();
                self.groups.clear();
                self.isolated.clear();
            }
            Fault::Crash(node) => {
                let at = self.now();
                let run = self.run_of.remove(node).expect("crash a running node");
                self.crashed.insert(run, at);
                let (exit, spec) = self.cluster.take(node).stop(Stop::Crash).await;
                assert_eq!(exit, Exit::Crashed);
                self.down.insert(node.clone(), spec);
                touched.insert(node.clone());
            }
            Fault::Restart(node) => {
                let spec = self.down.remove(node).expect("restart a crashed node");
                let agent = TestAgent::start(spec).await;
                let run = self.log.follow(node, &agent.socket()).await;
                self.run_of.insert(node.clone(), run);
                self.cluster.agents.push(agent);
                touched.insert(node.clone());
            }
            Fault::Loss(rate) => {
                self.faults.set_drop_rate(*rate);
                self.loss = *rate;
            }
        }
        // The leader cut off: time how long until another node leads, unless another fault
        // comes first.
        self.failover = match (&fault, &self.leader) {
            (Fault::Crash(n) | Fault::Isolate(n), Some(leader)) if n == leader => {
                Some((n.clone(), self.now()))
            }
            _ => None,
        };
        let side = self.connected_majority();
        let unchanged = match (&self.stable, &side) {
            (Some((old, _)), Some(new)) => old == new && old.is_disjoint(&touched),
            _ => false,
        };
        if !unchanged {
            if self.verbose {
                println!("seed {}: connected majority {side:?}", self.seed);
            }
            self.stable = side.map(|s| (s, self.now()));
            self.led_in_window = false;
            self.stats.stable_windows += usize::from(self.stable.is_some());
        }
    }

    /// Reads every running agent's `status`: records who says it leads, checks the liveness
    /// bound, times failovers.
    async fn poll(&mut self) {
        let now = self.now();
        let mut leading = Vec::new();
        for (node, run) in self.run_of.clone() {
            let socket = self.cluster.agent(&node).socket();
            let s = match status(&socket).await {
                Ok(s) => s,
                Err(e) => self.fail(format!("{node} does not answer status: {e}")),
            };
            if !s.is_leader {
                continue;
            }
            if s.node.leader.as_deref() != Some(node.as_str()) {
                self.fail(format!(
                    "{node} leads but names {:?} (epoch {}) as the leader",
                    s.node.leader, s.node.epoch
                ));
            }
            leading.push(node.clone());
            self.samples.push(LeadSample {
                node,
                run,
                epoch: s.node.epoch,
                at: now,
            });
        }
        self.leader = match &leading[..] {
            [one] => Some(one.clone()),
            _ => None,
        };
        if let (Some((old, since)), Some(new)) = (&self.failover, &self.leader) {
            if old != new {
                self.stats.failovers.push(now - *since);
                self.failover = None;
            }
        }
        if let Some((side, since)) = &self.stable {
            let led = leading.iter().any(|n| side.contains(n));
            if led && !self.led_in_window {
                self.led_in_window = true;
                self.stats.max_time_to_leader = self.stats.max_time_to_leader.max(now - *since);
            }
            if !led && now - *since > liveness_bound() {
                self.fail(format!(
                    "the majority {side:?}, connected and stable since {since:?}, has no \
                     leader after {:?} (bound {:?}); leading: {leading:?}",
                    now - *since,
                    liveness_bound()
                ));
            }
        }
    }

    /// Lets `length` of virtual time pass, polling all along.
    async fn run_for(&mut self, length: Duration) {
        let until = Instant::now() + length;
        while Instant::now() < until {
            self.poll().await;
            observation_window(CHECKER_POLL).await;
        }
    }

    /// Everyone back, healed, no loss.
    async fn quiet(&mut self) {
        for node in self.down.keys().cloned().collect::<Vec<_>>() {
            self.apply(Fault::Restart(node)).await;
        }
        if !self.groups.is_empty() || !self.isolated.is_empty() {
            self.apply(Fault::Heal).await;
        }
        if self.loss > 0.0 {
            self.apply(Fault::Loss(0.0)).await;
        }
    }

    /// A random fault that changes something. While a leader is known, three faults in four
    /// that aim at a node hit it, and as many partitions put it in a minority: the cases the
    /// lease is for.
    fn random_fault(&self, rng: &mut Rng) -> Fault {
        let names: Vec<String> = self.addrs.keys().cloned().collect();
        let running = self.running();
        let down: Vec<String> = self.down.keys().cloned().collect();
        let leader = self.leader.clone().filter(|_| rng.below(4) != 0);
        loop {
            let fault = match rng.below(100) {
                0..=29 => {
                    let n = if rng.below(5) == 0 { 3 } else { 2 };
                    let mut groups = vec![Vec::new(); n];
                    for name in &names {
                        groups[rng.below(n as u64) as usize].push(name.clone());
                    }
                    if let Some(l) = &leader {
                        // The leader and at most one other node on a side of their own.
                        for g in &mut groups {
                            g.retain(|x| x != l);
                        }
                        let mut side = vec![l.clone()];
                        if let Some(other) = rng.pick(&groups[0]) {
                            if rng.below(2) == 0 {
                                groups[0].retain(|x| *x != other);
                                side.push(other);
                            }
                        }
                        groups.push(side);
                    }
                    Fault::Partition(groups)
                }
                30..=44 => match leader.clone().or_else(|| rng.pick(&running)) {
                    Some(n) if !self.isolated.contains(&n) => Fault::Isolate(n),
                    _ => continue,
                },
                45..=59 if !self.groups.is_empty() || !self.isolated.is_empty() => Fault::Heal,
                60..=71 => match leader.clone().or_else(|| rng.pick(&running)) {
                    Some(n) => Fault::Crash(n),
                    None => continue,
                },
                72..=84 => match rng.pick(&down) {
                    Some(n) => Fault::Restart(n),
                    None => continue,
                },
                85..=99 => match [0.0, 0.05, 0.1, 0.3][rng.below(4) as usize] {
                    rate if rate != self.loss => Fault::Loss(rate),
                    _ => continue,
                },
                _ => continue,
            };
            return fault;
        }
    }

    /// Builds every node's leaderships from its own `leader_changed` events.
    fn leaderships(&self, end: Duration) -> Vec<Leadership> {
        let mut runs: BTreeMap<usize, Vec<(Duration, Option<String>, u64)>> = BTreeMap::new();
        let mut node_of = BTreeMap::new();
        for r in self.log.events() {
            if let Alert::LeaderChanged { new, epoch, .. } = r.alert() {
                node_of.insert(r.run, r.observer().to_string());
                runs.entry(r.run)
                    .or_default()
                    .push((r.at - self.t0, new.clone(), *epoch));
            }
        }
        let mut out = Vec::new();
        for (run, changes) in runs {
            let node = &node_of[&run];
            let stop = self.crashed.get(&run).copied().unwrap_or(end);
            let mut open: Option<(Duration, u64)> = None;
            for (at, new, epoch) in changes {
                if let Some((start, epoch)) = open.take() {
                    out.push(Leadership {
                        node: node.clone(),
                        run,
                        epoch,
                        start,
                        end: at.min(stop),
                    });
                }
                if new.as_deref() == Some(node.as_str()) {
                    open = Some((at.min(stop), epoch));
                }
            }
            if let Some((start, epoch)) = open {
                out.push(Leadership {
                    node: node.clone(),
                    run,
                    epoch,
                    start,
                    end: stop,
                });
            }
        }
        out.sort_by_key(|l| (l.start, l.end));
        out
    }

    /// The safety checks, on the whole run.
    fn check(&mut self) {
        let end = self.now();
        self.stats.virtual_time = end;
        let ls = self.leaderships(end);
        self.stats.leaderships = ls.len();
        if self.verbose {
            for l in &ls {
                println!("seed {}: {l:?}", self.seed);
            }
        }
        // 1. No two nodes lead at once.
        for (i, a) in ls.iter().enumerate() {
            for b in ls[i + 1..].iter().filter(|b| b.node != a.node) {
                let overlap = a.end.min(b.end).saturating_sub(a.start.max(b.start));
                self.stats.max_overlap = self.stats.max_overlap.max(overlap);
                if overlap > OVERLAP_MARGIN {
                    self.fail(format!(
                        "leaderships overlap by {overlap:?}: {a:?} and {b:?}"
                    ));
                }
                if b.start >= a.end {
                    let gap = b.start - a.end;
                    self.stats.min_handover_gap =
                        Some(self.stats.min_handover_gap.map_or(gap, |g| g.min(gap)));
                }
            }
        }
        // 2. Every leadership takes an epoch above every earlier one (a lease its own run
        // regains in the same Raft term keeps that term).
        for (i, later) in ls.iter().enumerate() {
            let same = |e: &Leadership| e.node == later.node && e.run == later.run;
            if let Some(earlier) = ls[..i]
                .iter()
                .find(|e| e.epoch > later.epoch || (e.epoch == later.epoch && !same(e)))
            {
                self.fail(format!("epochs went back: {earlier:?} then {later:?}"));
            }
        }
        // 3. The journal has every leadership `status` showed (events and status agree): a
        // sample at `at` reflects the agent's last tick, at most a tick earlier.
        for s in &self.samples {
            let journaled = ls.iter().any(|l| {
                l.run == s.run && l.epoch == s.epoch && l.start <= s.at && l.end + tick() >= s.at
            });
            if !journaled {
                self.fail(format!(
                    "status showed {s:?}, which no leader_changed of {} covers: {:?}",
                    s.node,
                    ls.iter().filter(|l| l.run == s.run).collect::<Vec<_>>()
                ));
            }
        }
        // 4. No node ever saw two leaders, no watch stream lost events.
        let dual: Vec<String> = self
            .log
            .events()
            .iter()
            .filter(|r| r.alert().kind() == "dual_leader")
            .map(|r| format!("{}: {}", r.observer(), r.alert()))
            .collect();
        if !dual.is_empty() || !self.log.problems().is_empty() {
            self.fail(format!(
                "dual_leader: {dual:?}; watch: {:?}",
                self.log.problems()
            ));
        }
    }
}

/// One seeded random schedule of partitions, isolations, heals, crashes, restarts and message
/// loss on five agents, checked as it runs (liveness) and at the end (safety).
async fn leader_schedule(seed: u64, verbose: bool) -> CheckerStats {
    let t = timings();
    let mut rng = Rng(seed ^ 0x5eed_c0de);
    let mut checker = Checker::start(seed, verbose).await;
    checker.run_for(t.lease * 3).await;
    while checker.now() < CHECKER_LENGTH {
        let fault = checker.random_fault(&mut rng);
        checker.apply(fault).await;
        let gap = match rng.below(10) {
            // Faults in quick succession, within a lease.
            0..=2 => {
                tick() * (1 + rng.below((t.lease.as_millis() / tick().as_millis()) as u64)) as u32
            }
            // Long enough for failure detection and some of the vote wait.
            3..=7 => t.lease + (t.lease * 3).mul_f64(rng.fraction()),
            // A quiet spell, long enough for the liveness check.
            _ => {
                checker.quiet().await;
                liveness_bound() + Duration::from_secs(1 + rng.below(3))
            }
        };
        checker.run_for(gap).await;
    }
    // A last quiet spell: the whole cluster must have a leader again.
    checker.quiet().await;
    checker.run_for(liveness_bound() + t.lease).await;
    checker.check();
    if verbose {
        println!("seed {seed}: {:?}", checker.stats);
    }
    checker.stats
}

/// Issue 5's checker, in process: five agents driven through seeded random schedules of
/// partitions, isolations, heals, crashes, restarts on the same data dir, and message loss,
/// each schedule on its own paused runtime (two at a time). Checked:
/// - no two nodes lead at once (beyond [`OVERLAP_MARGIN`], none): each node's leaderships are
///   journaled from the `leader_changed` events it raises about itself (a crash ends one);
/// - every leadership takes an epoch above every earlier one;
/// - that journal is complete: every `status` poll (every 100 ms) that says `is_leader` falls
///   in a journaled leadership of that node, run and epoch, and a node that leads always names
///   itself as the leader. (The events alone would hide a leader that kept leading while it
///   saw another's higher claim: its `leader_changed` names the other one.)
/// - a majority connected and stable (no crash, restart or link change among it, no loss) has
///   a leader within [`liveness_bound`];
/// - no node raises `dual_leader`, no `watch` stream falls behind.
///
/// Tried against a broken election (a leader that never steps down): both the overlap check
/// and the `status` cross-check catch it, in about half of the schedules each.
///
/// `CHORUS_RUNS=N` runs N schedules; `CHORUS_SEED=S` replays schedule S alone and prints its
/// faults, connected majorities and leaderships.
#[test]
fn leader_checker_in_process() {
    let seeds: Vec<u64> = match std::env::var("CHORUS_SEED") {
        Ok(s) => vec![s.parse().expect("CHORUS_SEED is a number")],
        Err(_) => {
            let runs = std::env::var("CHORUS_RUNS").map_or(CHECKER_RUNS, |r| {
                r.parse().expect("CHORUS_RUNS is a number")
            });
            (0..runs).collect()
        }
    };
    let verbose = seeds.len() == 1;
    let started = std::time::Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(u64, Result<CheckerStats, String>)>> = Mutex::new(Vec::new());
    // Each schedule on its own paused current-thread runtime; two at a time.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .start_paused(true)
                        .build()
                        .expect("a tokio runtime");
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        runtime.block_on(leader_schedule(seed, verbose))
                    }))
                    .map_err(|e| {
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    });
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((seed, run));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(seed, _)| *seed);
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(seed, run)| run.as_ref().err().map(|e| format!("seed {seed}: {e}")))
        .collect();
    let all: Vec<&CheckerStats> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let mut failovers: Vec<Duration> = all.iter().flat_map(|s| s.failovers.clone()).collect();
    failovers.sort();
    println!(
        "leader checker: {} schedules in {:?}, {:?} virtual: {} faults, {} leaderships, max \
         overlap {:?}, min handover gap {:?}; {} stable windows, max time to leader {:?} \
         (bound {:?}); {} failovers after the leader's crash or isolation: median {:?}, max {:?}",
        all.len(),
        started.elapsed(),
        all.iter().map(|s| s.virtual_time).sum::<Duration>(),
        all.iter().map(|s| s.faults).sum::<usize>(),
        all.iter().map(|s| s.leaderships).sum::<usize>(),
        all.iter().map(|s| s.max_overlap).max().unwrap_or_default(),
        all.iter().filter_map(|s| s.min_handover_gap).min(),
        all.iter().map(|s| s.stable_windows).sum::<usize>(),
        all.iter()
            .map(|s| s.max_time_to_leader)
            .max()
            .unwrap_or_default(),
        liveness_bound(),
        failovers.len(),
        failovers.get(failovers.len() / 2),
        failovers.last(),
    );
    assert!(
        failed.is_empty(),
        "{} schedules failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
