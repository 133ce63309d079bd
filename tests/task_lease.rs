//! Scheduled tasks bound to the leader's lease, with real task processes: the runner
//! (`chorus_agent::tasks::TaskRunner`) in this process with the real guard, then real
//! `chorus agent` processes stopped (SIGSTOP) and killed (`kill -9`). Tasks note their pids
//! in files and append `node epoch time` lines, so that what ran, when and under which epoch
//! is seen from outside, as an operator would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_agent::config::TaskSpec;
use chorus_agent::tasks::{GuardSettings, TaskRunner, DEFAULT_STOP_GRACE};
use serde::Deserialize;
use tempfile::TempDir;

use crate::support::bin::{chorus, chorus_bin, describe, KeyFile, ProcAgent};
use crate::support::{pids, wait_until, SLOW};

/// What a busy 2-core machine may add to a signal's delivery and a poll in these measurements.
const SLACK: Duration = Duration::from_secs(1);
/// The gossip interval of the agents here (lease 2 s, failover within about 6 s).
const INTERVAL: Duration = Duration::from_millis(200);
/// How soon after `kill -9` of its agent a task must be gone.
const KILLED_AGENT_BOUND: Duration = Duration::from_secs(1);

fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("chorus-lease-")
        .tempdir()
        .unwrap()
}

fn spec(name: &str, command: String) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        every: Duration::from_secs(1),
        command,
        jitter: Duration::ZERO,
        timeout: None,
        requires_writable: false,
    }
}

/// A runner for node `n1` whose runs go through the real `chorus task-guard`.
fn runner(spec: TaskSpec) -> TaskRunner {
    TaskRunner::new(vec![spec], "n1".into(), true).with_guard(GuardSettings {
        program: chorus_bin(),
        grace: DEFAULT_STOP_GRACE,
    })
}

/// tokio's clock, as the agent's.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A command that writes its pid to `pid`, notes each SIGTERM in `terms` and goes on.
fn term_ignoring_loop(pid: &Path, terms: &Path) -> String {
    format!(
        "trap 'echo term >> {terms}' TERM; echo $$ > {pid}; while :; do sleep 0.05; done",
        terms = terms.display(),
        pid = pid.display()
    )
}

/// Waits until `file` exists and returns how long after `since` it was seen.
async fn seen_after(file: &Path, since: Instant, within: Duration) -> Duration {
    wait_until(&format!("{} exists", file.display()), within, || async {
        if file.exists() {
            Ok(since.elapsed())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

#[tokio::test]
async fn a_run_gets_its_environment_through_the_guard() {
    let dir = tmp();
    let out = dir.path().join("out");
    let command = format!(
        "echo \"$CHORUS_TASK $CHORUS_NODE_ID $CHORUS_LEADER_EPOCH\" > {}",
        out.display()
    );
    let mut tasks = runner(spec("t", command));
    tasks.lead(7, now() + SLOW, now());
    let line = wait_until("the task ran", SLOW, || async {
        match std::fs::read_to_string(&out) {
            Ok(s) if s.ends_with('\n') => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(line.trim(), "t n1 7");
    tasks.stop();
}

#[tokio::test]
async fn stop_sends_sigterm_then_sigkill_after_the_grace() {
    let dir = tmp();
    let (pid_file, terms) = (dir.path().join("pid"), dir.path().join("terms"));
    let mut tasks = runner(spec("t", term_ignoring_loop(&pid_file, &terms)));
    tasks.lead(1, now() + SLOW, now());
    let pid = pids::written(&pid_file, SLOW).await;
    let stopped = Instant::now();
    tasks.stop();
    let term_at = seen_after(&terms, stopped, SLOW).await;
    pids::all_gone(&pid, SLOW).await;
    let dead_at = stopped.elapsed();
    println!(
        "runner: stop() -> SIGTERM seen {term_at:?}, the task gone {dead_at:?} (grace {DEFAULT_STOP_GRACE:?})"
    );
    // DESIGN.md: "SIGTERM at lease loss and SIGKILL after a grace (default 2 s)".
    assert_eq!(DEFAULT_STOP_GRACE, Duration::from_secs(2));
    assert!(term_at <= SLACK, "SIGTERM {term_at:?} after stop()");
    assert!(
        dead_at >= DEFAULT_STOP_GRACE && dead_at <= DEFAULT_STOP_GRACE + SLACK,
        "SIGKILL {dead_at:?} after stop()"
    );
    assert!(tasks.stop_and_wait().await, "the run's loop did not end");
}

#[tokio::test]
async fn renewed_a_run_outlives_its_first_lease_and_without_renewals_its_guard_stops_it() {
    let dir = tmp();
    let (pid_file, terms) = (dir.path().join("pid"), dir.path().join("terms"));
    let lease = Duration::from_secs(1);
    let mut tasks = runner(spec("t", term_ignoring_loop(&pid_file, &terms)));
    tasks.lead(1, now() + lease, now());
    // Renewed every 100 ms, as ticks would, until the run has lived three leases.
    let began = Instant::now();
    let mut running_since = None;
    while running_since.is_none_or(|t: Instant| t.elapsed() < lease * 3) {
        assert!(
            began.elapsed() < SLOW,
            "the task never ran: {:?}",
            pids::read(&pid_file)
        );
        tasks.renew(now() + lease);
        if running_since.is_none() && pids::read(&pid_file).is_ok() {
            running_since = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = pids::read(&pid_file).unwrap();
    assert!(pids::alive(pid[0]), "the renewed run died");
    assert!(!terms.exists(), "the renewed run got SIGTERM");
    // The last renewal; the runner is left alone (no stop()), as a stopped agent would be.
    let last = Instant::now();
    tasks.renew(now() + lease);
    let term_at = seen_after(&terms, last, SLOW).await;
    pids::all_gone(&pid, SLOW).await;
    let dead_at = last.elapsed();
    println!(
        "runner: last renewal -> SIGTERM seen {term_at:?}, the task gone {dead_at:?} (lease {lease:?}, grace {DEFAULT_STOP_GRACE:?})"
    );
    assert!(
        term_at >= lease && term_at <= lease + SLACK,
        "SIGTERM {term_at:?} after the last renewal"
    );
    assert!(
        dead_at >= lease + DEFAULT_STOP_GRACE && dead_at <= lease + DEFAULT_STOP_GRACE + SLACK,
        "SIGKILL {dead_at:?} after the last renewal"
    );
    tasks.stop();
}

/// `chorus leader --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct LeaderJson {
    leader: Option<String>,
    epoch: u64,
}

async fn leader(agent: &ProcAgent) -> Result<LeaderJson, String> {
    let out = chorus(&["leader", "--json", "--socket", agent.socket_arg()]).await;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", describe(&out)))
}

/// The leader and epoch every agent in `agents` reports, if they agree on one of them.
async fn agreed(agents: &[&ProcAgent]) -> Result<(String, u64), String> {
    let mut seen = Vec::new();
    for a in agents {
        seen.push(leader(a).await?);
    }
    match &seen[0].leader {
        Some(l) if seen.iter().all(|s| *s == seen[0]) && agents.iter().any(|a| a.node_id == *l) => {
            Ok((l.clone(), seen[0].epoch))
        }
        _ => Err(format!("no agreement: {seen:?}")),
    }
}

/// One `node epoch time` line of a task.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    node: String,
    epoch: u64,
    time: f64,
}

/// The complete lines of `file`.
fn lines(file: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(
            |l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                [node, epoch, time] => Line {
                    node: node.to_string(),
                    epoch: epoch.parse().unwrap(),
                    time: time.parse().unwrap(),
                },
                _ => panic!("not a `node epoch time` line: {l:?}"),
            },
        )
        .collect()
}

/// Tasks that append a line to `DIR/tick` each second. Several: each is a chance for an agent
/// woken from SIGSTOP to start a stale run before it notices it lost the lease (the timers of
/// the task loops and of the agent's tick all expired during the stop; which runs first is up
/// to the scheduler).
const TICK_TASKS: usize = 4;

/// Task flags: `hold` runs for ever, noting its pid in `DIR/hold-NODE-EPOCH.pid` and a line
/// in `DIR/hold` every 100 ms; then [`TICK_TASKS`] `tick` tasks that append one line each to
/// `DIR/tick` each second, and ignore SIGTERM, so that a run started at all writes its line
/// (SIGKILL comes only after the grace).
fn task_flags(dir: &Path) -> Vec<String> {
    let d = dir.display();
    let line = "\"$CHORUS_NODE_ID $CHORUS_LEADER_EPOCH $(date +%s.%N)\"";
    let mut flags = vec![format!(
        "hold=1s:echo $$ > {d}/hold-$CHORUS_NODE_ID-$CHORUS_LEADER_EPOCH.pid; \
         while :; do echo {line} >> {d}/hold; sleep 0.1; done"
    )];
    for i in 0..TICK_TASKS {
        flags.push(format!("tick{i}=1s:trap '' TERM; echo {line} >> {d}/tick"));
    }
    flags
}

/// `--task FLAG` for each of `flags`.
fn task_args(flags: &[String]) -> Vec<&str> {
    flags.iter().flat_map(|f| ["--task", f.as_str()]).collect()
}

fn hold_pid_file(dir: &Path, node: &str, epoch: u64) -> PathBuf {
    dir.join(format!("hold-{node}-{epoch}.pid"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leaders_task_dies_at_its_lease_and_no_old_run_starts_after_sigcont() {
    let lease = chorus_core::consensus::RaftTiming::new(std::time::Duration::from_secs(600)).lease;
    let grace = DEFAULT_STOP_GRACE;
    let key = KeyFile::keygen("proc-lease");
    let dir = tmp();
    let flags = task_flags(dir.path());
    let mut agents: Vec<ProcAgent> = Vec::new();
    for i in 1..=3 {
        let seeds: Vec<_> = agents.first().map(|a| a.addr).into_iter().collect();
        agents.push(ProcAgent::spawn_with_interval(
            &format!("n{i}"),
            "proc-lease",
            &key,
            &seeds,
            INTERVAL,
            &[task_args(&flags), vec!["--expect", "3"]].concat(),
        ));
    }
    let all: Vec<&ProcAgent> = agents.iter().collect();
    let (old, old_epoch) =
        wait_until("one leader agreed by all three", SLOW, || agreed(&all)).await;
    let pid = pids::written(&hold_pid_file(dir.path(), &old, old_epoch), SLOW).await;
    let tick_file = dir.path().join("tick");
    wait_until(&format!("{old} ticks"), SLOW, || async {
        let t = lines(&tick_file);
        match t.iter().any(|l| l.node == old && l.epoch == old_epoch) {
            true => Ok(()),
            false => Err(format!("{t:?}")),
        }
    })
    .await;

    let at = agents.iter().position(|a| a.node_id == old).unwrap();
    let agent_pid = agents[at].process.pid();
    let stopped_at = unix_now();
    let stopped = Instant::now();
    agents[at].process.signal("STOP");
    // Its last renewal was before the stop: the guard stops the task at that deadline at
    // the latest, SIGKILL a grace later if it held on.
    pids::all_gone(&pid, lease + grace + SLACK).await;
    let died_after = stopped.elapsed();
    assert!(
        pids::stopped(agent_pid),
        "the agent is not stopped any more: the guard must have acted alone"
    );
    println!(
        "SIGSTOP of {old} (epoch {old_epoch}): its running task gone {died_after:?} later \
         (lease {lease:?}, grace {grace:?})"
    );

    let survivors: Vec<&ProcAgent> = agents.iter().filter(|a| a.node_id != old).collect();
    let (new, new_epoch) = wait_until("the survivors agree on a new leader", SLOW, || async {
        match agreed(&survivors).await? {
            (l, e) if l != old && e > old_epoch => Ok((l, e)),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    let resumed_at = unix_now();
    agents[at].process.signal("CONT");
    wait_until("all three agree on the new leader", SLOW, || async {
        match agreed(&all).await? {
            (l, e) if l == new && e == new_epoch => Ok(()),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    // Two of the new leader's periods after the resume: the old agent had its chance to run
    // a stale period, which fired as soon as it woke.
    wait_until(
        &format!("{new} ticks twice after SIGCONT"),
        SLOW,
        || async {
            let t = lines(&tick_file);
            let after = t
                .iter()
                .filter(|l| l.epoch == new_epoch && l.time > resumed_at)
                .count();
            if after >= 2 * TICK_TASKS {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )
    .await;

    let lease_end = stopped_at + lease.as_secs_f64();
    for l in lines(&tick_file) {
        if l.epoch == old_epoch {
            assert!(
                l.time < lease_end,
                "a run of the old epoch started after its lease ({lease_end}): {l:?}"
            );
        }
    }
    for l in lines(&dir.path().join("hold")) {
        if l.epoch == old_epoch {
            assert!(
                l.time < lease_end + grace.as_secs_f64(),
                "the old epoch's task wrote after its lease and grace: {l:?}"
            );
        }
    }
    let log = agents[at].process.log();
    assert!(
        log.contains("task stopped by its guard")
            && log.contains("the lease deadline passed without a renewal"),
        "the old leader's log does not say its guard stopped the task at the deadline:\n{log}"
    );
    println!(
        "after SIGCONT: the old leader refused a stale run: {}",
        log.contains("the lease ran out before this run")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_takes_its_task_along() {
    let key = KeyFile::keygen("proc-kill9");
    let dir = tmp();
    let flags = task_flags(dir.path());
    let mut agent = ProcAgent::spawn_with_interval(
        "n1",
        "proc-kill9",
        &key,
        &[],
        INTERVAL,
        &task_args(&flags[..1]),
    );
    let alone = [&agent];
    let (node, epoch) = wait_until("n1 leads alone", SLOW, || agreed(&alone)).await;
    let pid = pids::written(&hold_pid_file(dir.path(), &node, epoch), SLOW).await;
    let killed = Instant::now();
    agent.process.kill_9();
    pids::all_gone(&pid, KILLED_AGENT_BOUND).await;
    println!(
        "kill -9 of the agent: its task gone {:?} later",
        killed.elapsed()
    );
}
