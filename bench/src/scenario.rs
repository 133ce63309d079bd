//! One run of one system at one size, the same phases for every system:
//!
//! 1. launch N nodes (seeds: the first three) and wait until every node sees all N alive;
//! 2. let join traffic settle, then a steady window: traffic, CPU, RSS, false failures;
//! 3. set a value on node 1 and wait until every other node has it;
//! 4. crash the last node and wait until every other node sees it dead.
//!
//! Every wait has a deadline; a phase that misses it is reported, never waited on forever.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::measure::{self, Spread};

/// What a system's nodes are asked about.
#[derive(Clone, Debug)]
pub enum Probe {
    /// The observer sees every node alive (chorus: `members` all `alive`).
    AllAlive,
    /// The observer counts every node as up (cheap; chorus: alive or suspect).
    AllUp,
    /// The observer sees this node dead.
    Dead(usize),
    /// The observer has this value from this origin.
    Value { origin: usize, value: u64 },
}

/// Cumulative traffic of all running nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetTotals {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Connections set up (QUIC: one handshake each), counted at both ends.
    pub connections_opened: u64,
    /// Raft's own traffic (chorus only; not in the figures above).
    pub raft_bytes_sent: u64,
    pub raft_messages_sent: u64,
}

/// A cluster of one system, driven by the scenario.
#[allow(async_fn_in_trait)]
pub trait Cluster {
    fn size(&self) -> usize;
    /// For each observer, whether `probe` holds in its view now.
    async fn check(&mut self, observers: &[usize], probe: &Probe) -> Vec<bool>;
    async fn set_value(&mut self, origin: usize, value: u64) -> anyhow::Result<()>;
    /// Stops a node at once, without a word (kill -9).
    async fn kill(&mut self, node: usize);
    async fn net(&mut self) -> NetTotals;
    /// Starts counting failure reports (a node seen going from up to down).
    async fn watch_failures(&mut self);
    /// Failure reports since [`Cluster::watch_failures`].
    async fn failures(&mut self) -> u64;
    /// Stops every node and waits (bounded) until they are gone.
    async fn shutdown(self);
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timings {
    /// Longest a full convergence may take.
    pub converge: Duration,
    /// Quiet time after convergence before the steady window.
    pub settle: Duration,
    pub steady: Duration,
    pub value: Duration,
    pub detect: Duration,
    /// How often a waiting phase asks the nodes.
    pub poll: Duration,
}

/// Everything one run measured. Times are seconds; `None` means the phase missed its deadline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub system: String,
    pub n: usize,
    pub error: Option<String>,
    /// Until the last node saw all N alive, from the launch of the last node.
    pub converge_s: Option<f64>,
    pub converged: usize,
    /// Connections each node took part in setting up until convergence (both ends count),
    /// for transports with connections.
    pub connections_per_node: Option<f64>,
    /// Over the observers of the crash (N-1 of them).
    pub detect: Option<Spread>,
    pub detect_missed: usize,
    pub value_s: Option<f64>,
    pub value_missed: usize,
    pub steady_s: f64,
    pub bytes_out_per_node: f64,
    pub bytes_in_per_node: f64,
    pub msgs_out_per_node: f64,
    /// Raft's bytes and messages per second sent, per node (chorus only).
    #[serde(default)]
    pub raft_out_per_node: f64,
    #[serde(default)]
    pub raft_msgs_per_node: f64,
    /// Bytes per second sent on the loopback interface, per node (IP and UDP headers
    /// included: what QUIC really costs on the wire).
    pub loopback_per_node: f64,
    /// The run had a network namespace of its own, so the loopback counter is its alone.
    pub loopback_isolated: bool,
    /// Percent of one core, per node.
    pub cpu_pct_per_node: f64,
    pub rss_kib_total: u64,
    /// RSS before the first node started.
    pub rss_kib_base: u64,
    pub false_failures: u64,
    /// The host's 1-minute load average at the start and the end of the steady window.
    pub loadavg: (f64, f64),
    /// Steady-window polls (once a second) in which some observer missed a member.
    pub steady_dips: u64,
    pub notes: Vec<String>,
}

/// Polls `probe` on `observers` until each holds or `within` has passed since `since`.
/// Returns, per observer in order, the seconds since `since` at which it first held.
pub async fn wait_all<C: Cluster>(
    cluster: &mut C,
    observers: &[usize],
    probe: &Probe,
    since: Instant,
    within: Duration,
    poll: Duration,
) -> Vec<Option<f64>> {
    let deadline = tokio::time::Instant::from_std(since + within);
    let mut done: Vec<Option<f64>> = vec![None; observers.len()];
    let mut pending: Vec<usize> = (0..observers.len()).collect();
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let round = tokio::time::Instant::now();
        let asked: Vec<usize> = pending.iter().map(|&k| observers[k]).collect();
        let Ok(answers) = tokio::time::timeout_at(deadline, cluster.check(&asked, probe)).await
        else {
            break;
        };
        let at = since.elapsed().as_secs_f64();
        let mut still = Vec::new();
        for (k, ok) in pending.into_iter().zip(answers) {
            if ok {
                done[k] = Some(at);
            } else {
                still.push(k);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep_until((round + poll).min(deadline)).await;
        }
    }
    done
}

/// Runs the phases on a cluster whose last node was launched at `launched`.
pub async fn run<C: Cluster>(
    cluster: &mut C,
    launched: Instant,
    timings: &Timings,
    result: &mut RunResult,
) {
    let n = cluster.size();
    let all: Vec<usize> = (0..n).collect();
    say(result, "waiting for convergence");
    let joined = wait_all(
        cluster,
        &all,
        &Probe::AllAlive,
        launched,
        timings.converge,
        timings.poll,
    )
    .await;
    result.converged = joined.iter().flatten().count();
    result.converge_s = if result.converged == n {
        joined.iter().flatten().copied().reduce(f64::max)
    } else {
        result.notes.push(format!(
            "only {}/{n} nodes saw all {n} alive within {:?}",
            result.converged, timings.converge
        ));
        None
    };
    let opened = cluster.net().await.connections_opened;
    result.connections_per_node = (opened > 0).then(|| opened as f64 / n as f64);

    tokio::time::sleep(timings.settle).await;
    say(result, "steady window");
    steady(cluster, timings, result).await;

    say(result, "value propagation");
    let origin = 1.min(n - 1);
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != origin).collect();
    let value = 4_200 + n as u64;
    let set_at = Instant::now();
    match cluster.set_value(origin, value).await {
        Ok(()) => {
            let got = wait_all(
                cluster,
                &others,
                &Probe::Value { origin, value },
                set_at,
                timings.value,
                timings.poll,
            )
            .await;
            result.value_missed = got.iter().filter(|t| t.is_none()).count();
            if result.value_missed == 0 {
                result.value_s = got.iter().flatten().copied().reduce(f64::max);
            }
        }
        Err(e) => result.notes.push(format!("cannot set a value: {e:#}")),
    }

    say(result, "crash detection");
    let victim = n - 1;
    let observers: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let killed_at = Instant::now();
    cluster.kill(victim).await;
    let kill_took = killed_at.elapsed();
    if kill_took > Duration::from_secs(1) {
        result.notes.push(format!(
            "stopping the crashed node took {kill_took:.1?} (counted in detection)"
        ));
    }
    let seen = wait_all(
        cluster,
        &observers,
        &Probe::Dead(victim),
        killed_at,
        timings.detect,
        timings.poll,
    )
    .await;
    let times: Vec<f64> = seen.iter().flatten().copied().collect();
    result.detect_missed = seen.len() - times.len();
    result.detect = Spread::of(&times);
}

/// The steady window: traffic and CPU over it, RSS at its end, failure reports during it.
async fn steady<C: Cluster>(cluster: &mut C, timings: &Timings, result: &mut RunResult) {
    let n = cluster.size();
    let all: Vec<usize> = (0..n).collect();
    cluster.watch_failures().await;
    let load0 = measure::loadavg();
    let net0 = cluster.net().await;
    let cpu0 = measure::cpu_time();
    let lo0 = measure::loopback_tx_bytes();
    let started = Instant::now();
    let end = started + timings.steady;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while Instant::now() + Duration::from_secs(1) <= end {
        tick.tick().await;
        let up = cluster.check(&all, &Probe::AllUp).await;
        result.steady_dips += up.iter().filter(|ok| !**ok).count() as u64;
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let net1 = cluster.net().await;
    let cpu1 = measure::cpu_time();
    let lo1 = measure::loopback_tx_bytes();
    let secs = started.elapsed().as_secs_f64();
    let per_node_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs / n as f64;
    result.steady_s = secs;
    result.bytes_out_per_node = per_node_s(net0.bytes_sent, net1.bytes_sent);
    result.bytes_in_per_node = per_node_s(net0.bytes_received, net1.bytes_received);
    result.msgs_out_per_node = per_node_s(net0.messages_sent, net1.messages_sent);
    result.raft_out_per_node = per_node_s(net0.raft_bytes_sent, net1.raft_bytes_sent);
    result.raft_msgs_per_node = per_node_s(net0.raft_messages_sent, net1.raft_messages_sent);
    result.loopback_per_node = per_node_s(lo0, lo1);
    result.cpu_pct_per_node = (cpu1 - cpu0).as_secs_f64() / secs / n as f64 * 100.0;
    result.rss_kib_total = measure::rss_kib("self");
    result.false_failures = cluster.failures().await;
    result.loadavg = (load0, measure::loadavg());
}

/// Marks a child's stdout line that says which phase a run entered and what it had measured,
/// so that a run stopped for taking too long still reports how far it got.
pub const PROGRESS_PREFIX: &str = "PROGRESS ";

/// A run as it entered `phase`.
#[derive(Debug, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub result: RunResult,
}

impl Progress {
    /// What the run had measured when it was stopped in this phase.
    pub fn describe(&self) -> String {
        let r = &self.result;
        let mut done = Vec::new();
        if r.converged > 0 {
            done.push(match r.converge_s {
                Some(s) => format!("all {} saw all alive after {s:.2} s", r.n),
                None => format!("{}/{} saw all alive in time", r.converged, r.n),
            });
        }
        if r.steady_s > 0.0 {
            done.push(format!(
                "steady: {:.1} KiB/s out per node, {:.2} % CPU per node, {} false failures",
                r.bytes_out_per_node / 1024.0,
                r.cpu_pct_per_node,
                r.false_failures
            ));
        }
        if let Some(s) = r.value_s {
            done.push(format!("value reached all in {s:.2} s"));
        }
        if done.is_empty() {
            format!("during {}", self.phase)
        } else {
            format!("during {} ({})", self.phase, done.join("; "))
        }
    }
}

fn say(result: &RunResult, phase: &str) {
    eprintln!("  [{} N={}] {phase}", result.system, result.n);
    let progress = serde_json::json!({ "phase": phase, "result": result });
    println!("{PROGRESS_PREFIX}{progress}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the child prints, read back the way the parent reads it.
    fn progress_of(phase: &str, result: &RunResult) -> Progress {
        let line = serde_json::json!({ "phase": phase, "result": result }).to_string();
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn a_stopped_run_says_how_far_it_got() {
        let mut result = RunResult {
            system: "chorus-quic".into(),
            n: 200,
            ..RunResult::default()
        };
        assert_eq!(
            progress_of("waiting for convergence", &result).describe(),
            "during waiting for convergence"
        );

        result.converged = 180;
        result.steady_s = 30.0;
        result.bytes_out_per_node = 2048.0;
        result.cpu_pct_per_node = 1.5;
        let text = progress_of("value propagation", &result).describe();
        assert_eq!(
            text,
            "during value propagation (180/200 saw all alive in time; steady: 2.0 KiB/s out per \
             node, 1.50 % CPU per node, 0 false failures)"
        );

        result.converged = 200;
        result.converge_s = Some(93.25);
        result.value_s = Some(1.5);
        let text = progress_of("crash detection", &result).describe();
        assert!(text.starts_with("during crash detection (all 200 saw all alive after 93.25 s;"));
        assert!(text.ends_with("; value reached all in 1.50 s)"));
    }
}
