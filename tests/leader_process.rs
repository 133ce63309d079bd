//! The leader for scheduled tasks, with real `chorus agent` processes: `kill -9` of the leader
//! is followed by a new leader with a larger epoch, and a task run on the leader writes lines of
//! one node at a time. Checked through `chorus leader --json`, `chorus is-leader` and the
//! task's own output, as an operator would.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::support::bin::{chorus, describe, KeyFile, ProcAgent};
use crate::support::{wait_until, SLOW};

/// The gossip interval of these agents.
const INTERVAL: Duration = Duration::from_millis(200);

/// Runs of the 1 s task awaited from each leader.
const RUNS_PER_LEADER: usize = 3;

/// `chorus leader --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct LeaderJson {
    leader: Option<String>,
    epoch: u64,
}

/// One line the task wrote: `$CHORUS_NODE_ID $CHORUS_LEADER_EPOCH $(date +%s.%N)`.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    node: String,
    epoch: u64,
    /// Unix seconds.
    time: f64,
}

/// `chorus leader --json` on `agent`. Exit 1 (no leader) still prints the JSON.
async fn leader(agent: &ProcAgent) -> Result<LeaderJson, String> {
    let out = chorus(&["leader", "--json", "--socket", agent.socket_arg()]).await;
    if out.stdout.is_empty() {
        return Err(describe(&out));
    }
    let parsed: LeaderJson = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "leader --json does not match the contract: {e}\n{}",
            describe(&out)
        )
    });
    let code = out.status.code();
    match (&parsed.leader, code) {
        (Some(_), Some(0)) | (None, Some(1)) => Ok(parsed),
        _ => panic!("leader exits 0 only with a leader: {}", describe(&out)),
    }
}

/// `chorus is-leader` on `agent`: true (exit 0) or false (exit 1), and it prints nothing.
async fn is_leader(agent: &ProcAgent) -> Result<bool, String> {
    let out = chorus(&["is-leader", "--socket", agent.socket_arg()]).await;
    match out.status.code() {
        Some(0 | 1) if out.stdout.is_empty() && out.stderr.is_empty() => Ok(out.status.success()),
        _ => Err(describe(&out)),
    }
}

/// The leader and epoch every agent in `agents` reports, if they agree on one.
async fn agreed(agents: &[&ProcAgent]) -> Result<(String, u64), String> {
    let mut seen = BTreeMap::new();
    for a in agents {
        seen.insert(a.node_id.clone(), leader(a).await?);
    }
    let first = seen.values().next().cloned().expect("at least one agent");
    match first.leader {
        Some(l) if seen.contains_key(&l) && seen.values().all(|s| *s == seen[&l]) => {
            Ok((l, first.epoch))
        }
        _ => Err(format!("no agreement: {seen:?}")),
    }
}

/// Whether `chorus is-leader` says yes on `leader` and no on every other agent.
async fn only_leader_says_so(agents: &[&ProcAgent], leader: &str) -> Result<(), String> {
    for a in agents {
        let yes = is_leader(a).await?;
        if yes != (a.node_id == leader) {
            return Err(format!("is-leader on {} says {yes}", a.node_id));
        }
    }
    Ok(())
}

/// The complete lines of the task file.
fn ticks(file: &Path) -> Vec<Tick> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let parsed = match f.as_slice() {
                [node, epoch, time] => {
                    epoch
                        .parse()
                        .ok()
                        .zip(time.parse().ok())
                        .map(|(epoch, time)| Tick {
                            node: node.to_string(),
                            epoch,
                            time,
                        })
                }
                _ => None,
            };
            parsed.unwrap_or_else(|| panic!("a task line that is not `node epoch time`: {line:?}"))
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Checks the whole task file: one node per epoch; epochs never go back, in the file or in
/// time (no line of an older epoch is later than the first line of a newer one); each 1 s
/// period ran at most once.
fn check_one_node_at_a_time(ticks: &[Tick]) {
    let mut by_epoch: BTreeMap<u64, Vec<&Tick>> = BTreeMap::new();
    for t in ticks {
        by_epoch.entry(t.epoch).or_default().push(t);
    }
    for (epoch, lines) in &by_epoch {
        assert!(
            lines.iter().all(|t| t.node == lines[0].node),
            "epoch {epoch} has lines of several nodes: {lines:?}"
        );
    }
    for pair in ticks.windows(2) {
        assert!(
            pair[0].epoch <= pair[1].epoch,
            "the epoch went back in the file: {pair:?}"
        );
    }
    let epochs: Vec<(&u64, &Vec<&Tick>)> = by_epoch.iter().collect();
    for pair in epochs.windows(2) {
        let ((old, old_lines), (new, new_lines)) = (pair[0], pair[1]);
        let last_old = old_lines.iter().map(|t| t.time).fold(f64::MIN, f64::max);
        let first_new = new_lines.iter().map(|t| t.time).fold(f64::MAX, f64::min);
        assert!(
            last_old < first_new,
            "epoch {old} ran at {last_old}, after epoch {new} began at {first_new}: {ticks:?}"
        );
    }
    let mut periods = BTreeMap::new();
    for t in ticks {
        if let Some(other) = periods.insert(t.time.floor() as u64, t) {
            panic!("the period of {t:?} also ran as {other:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_is_replaced() {
    // The bounds of docs/leader.md, from the same timings the agents derive: the old lease
    // runs out, an election timeout or two (a split vote) pass, a vote and a lease
    // confirmation travel; plus a second for polling with the `chorus` command on a busy
    // machine.
    let t = chorus_core::consensus::RaftTiming::new(Duration::from_secs(600));
    let failover_bound = t.lease + t.election_timeout() * 4;
    let hard_bound = failover_bound + Duration::from_secs(1);

    let key = KeyFile::keygen("proc-leader");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticks");
    let task = format!(
        "tick=1s:echo \"$CHORUS_NODE_ID $CHORUS_LEADER_EPOCH $(date +%s.%N)\" >> {}",
        file.display()
    );
    let mut agents: Vec<ProcAgent> = Vec::new();
    for i in 1..=3 {
        let seeds: Vec<_> = agents.first().map(|a| a.addr).into_iter().collect();
        agents.push(ProcAgent::spawn_with_interval(
            &format!("n{i}"),
            "proc-leader",
            &key,
            &seeds,
            INTERVAL,
            // All three vote from the start, as the README's setup has it.
            &["--task", &task, "--expect", "3"],
        ));
    }

    let all: Vec<&ProcAgent> = agents.iter().collect();
    let (old, old_epoch) = wait_until("one leader agreed by all three", SLOW, || async {
        let (l, e) = agreed(&all).await?;
        only_leader_says_so(&all, &l).await?;
        Ok((l, e))
    })
    .await;
    assert!(old_epoch >= 1);
    wait_until(
        &format!("{old} runs the task a few times"),
        SLOW,
        || async {
            let t = ticks(&file);
            let runs = t
                .iter()
                .filter(|t| t.node == old && t.epoch == old_epoch)
                .count();
            if runs >= RUNS_PER_LEADER {
                Ok(())
            } else {
                Err(format!("task lines: {t:?}"))
            }
        },
    )
    .await;

    // kill -9 the leader.
    let at = agents.iter().position(|a| a.node_id == old).unwrap();
    let killed_at = unix_now();
    let killed = Instant::now();
    agents[at].process.kill_9();
    let survivors: Vec<&ProcAgent> = agents.iter().filter(|a| a.node_id != old).collect();
    let (new, new_epoch) = wait_until("the survivors agree on a new leader", SLOW, || async {
        match agreed(&survivors).await? {
            (l, e) if l != old && e > old_epoch => Ok((l, e)),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    let failover = killed.elapsed();
    println!(
        "failover: {:.1}s ({old} epoch {old_epoch} -> {new} epoch {new_epoch}; \
         documented failover bound {:.1}s, asserted bound {:.1}s)",
        failover.as_secs_f64(),
        failover_bound.as_secs_f64(),
        hard_bound.as_secs_f64()
    );
    assert!(
        failover <= hard_bound,
        "a new leader took {failover:?} (bound {hard_bound:?})"
    );
    wait_until("is-leader: yes on the new leader only", SLOW, || {
        only_leader_says_so(&survivors, &new)
    })
    .await;

    // The task resumes on the new leader, with its epoch, at the next period.
    wait_until(
        &format!("{new} runs the task a few times"),
        SLOW,
        || async {
            let t = ticks(&file);
            let runs = t
                .iter()
                .filter(|t| t.node == new && t.epoch == new_epoch)
                .count();
            if runs >= RUNS_PER_LEADER {
                Ok(())
            } else {
                Err(format!("task lines: {t:?}"))
            }
        },
    )
    .await;
    let lines = ticks(&file);
    check_one_node_at_a_time(&lines);
    let first_new = lines.iter().find(|t| t.epoch == new_epoch).unwrap();
    println!(
        "task: {} lines, {} of epoch {old_epoch} ({old}); first of epoch {new_epoch} ({new}) \
         {:.1}s after the kill",
        lines.len(),
        lines.iter().filter(|t| t.epoch == old_epoch).count(),
        first_new.time - killed_at
    );
    for t in &lines {
        if t.node == old {
            assert!(
                t.time < killed_at + 0.5,
                "{old} wrote after it was killed: {t:?}"
            );
        }
        if t.epoch > old_epoch {
            assert!(t.time > killed_at, "a new epoch ran before the kill: {t:?}");
        }
    }
    for a in &survivors {
        let log = a.process.log();
        assert!(
            !log.contains("alert=dual_leader"),
            "{} saw two leaders:\n{log}",
            a.node_id
        );
    }
}

/// `chorus leave --permanent` takes a voter out of the Raft voters (committed by a majority)
/// before it leaves; a plain `leave` or a restart would keep it a voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_permanent_removes_the_voter() {
    let key = KeyFile::keygen("proc-leave");
    let mut agents: Vec<ProcAgent> = Vec::new();
    for i in 1..=3 {
        let seeds: Vec<_> = agents.first().map(|a| a.addr).into_iter().collect();
        agents.push(ProcAgent::spawn_with_interval(
            &format!("n{i}"),
            "proc-leave",
            &key,
            &seeds,
            INTERVAL,
            &["--expect", "3"],
        ));
    }
    let voters_of = |agent: &ProcAgent| {
        let socket = agent.socket_arg().to_string();
        async move {
            let out = chorus(&["status", "--json", "--socket", &socket]).await;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", describe(&out)))?;
            let voters: Vec<String> = status["raft"]["voters"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Ok::<Vec<String>, String>(voters)
        }
    };
    wait_until("all three are voters with a leader", SLOW, || async {
        let all: Vec<&ProcAgent> = agents.iter().collect();
        agreed(&all).await?;
        match voters_of(&agents[0]).await? {
            v if v.len() == 3 => Ok(()),
            v => Err(format!("voters {v:?}")),
        }
    })
    .await;
    let out = chorus(&["leave", "--permanent", "--socket", agents[2].socket_arg()]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("for good"), "{}", describe(&out));
    for a in &agents[..2] {
        wait_until(
            &format!("{} sees n3 out of the voters", a.node_id),
            SLOW,
            || async {
                match voters_of(a).await? {
                    v if v == ["n1", "n2"] => Ok(()),
                    v => Err(format!("voters {v:?}")),
                }
            },
        )
        .await;
    }
    let survivors: Vec<&ProcAgent> = agents[..2].iter().collect();
    wait_until("the two still agree on a leader", SLOW, || {
        agreed(&survivors)
    })
    .await;
    // Twice is a clear error, not a hang: the agent is gone.
    let again = chorus(&["leave", "--permanent", "--socket", agents[2].socket_arg()]).await;
    assert!(!again.status.success(), "{}", describe(&again));
}
