//! Real partitions: five `chorus agent` processes, one per network namespace, joined by a
//! bridge; a partition is a set of blackhole routes (`tc netem` is not available), healing
//! deletes them. The agents run with the default transport (QUIC, mutual TLS from a
//! `chorus keygen` cluster key), `--gossip-interval 200ms` and `--log-format json`; the tests
//! read the JSON log lines and `chorus status --json`, as an operator would.
//!
//! They need root (`ip netns add`), so they are `#[ignore]`d; `scripts/test.sh` runs them:
//! `cargo test -p chorus-tests -- --ignored netns --nocapture` (after
//! `cargo build -p chorus-cli`). Without permission to make namespaces they print
//! `SKIPPED` and pass. They run one at a time (a lock), so the times they print
//! (`[netns split] partition->quorum_lost on n1: 1.3s`, ...) are not disturbed by the other
//! test.
//!
//! The lab itself (namespaces, bridge, routes, clean-up) is in `netns_support.rs`.

#[path = "netns_support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::{chorus, read_or_empty, unix_now, wait_for, Lab, Skip, Status};

/// Number of agents.
const N: usize = 5;
/// Gossip interval of every agent.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// Deadline for a fresh cluster to converge, or a healed one to merge again.
const CONVERGE: Duration = Duration::from_secs(40);
/// Deadline for a partition to be noticed (detection takes a few seconds).
const DETECT: Duration = Duration::from_secs(30);

/// One lab at a time: ten agents on a small CI machine would distort the measured times.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn lab_or_skip(test: &str, tag: &str) -> Option<Lab> {
    match Lab::new(tag, N) {
        Ok(lab) => Some(lab),
        Err(Skip(why)) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn names(idx: &[usize]) -> BTreeSet<String> {
    idx.iter().map(|&i| name(i)).collect()
}

/// `chorus keygen` into the lab's directory.
fn keygen(lab: &Lab) -> PathBuf {
    let key = lab.dir.path().join("cluster.pem");
    let out = chorus(&[
        "keygen",
        "--cluster",
        "netns",
        "--out",
        key.to_str().expect("UTF-8 path"),
    ])
    .unwrap_or_else(|e| panic!("chorus keygen: {e}"));
    assert!(out.status.success(), "chorus keygen failed: {out:?}");
    key
}

fn agent_flags(key: &Path) -> Vec<String> {
    vec![
        "--cluster-key".into(),
        key.display().to_string(),
        "--gossip-interval".into(),
        format!("{}ms", GOSSIP_INTERVAL.as_millis()),
    ]
}

/// The status of the agents `idx`; fails if an agent process has ended.
fn statuses(lab: &mut Lab, idx: &[usize]) -> Result<Vec<Status>, String> {
    let mut all = Vec::new();
    for &i in idx {
        let agent = &mut lab.agents[i];
        if !agent.is_running() {
            panic!("agent {} has exited", agent.node_id);
        }
        all.push(agent.status()?);
    }
    Ok(all)
}

/// Waits until every agent sees all `N` members alive with quorum.
fn wait_all_alive(lab: &mut Lab, what: &str) {
    let all: Vec<usize> = (0..N).collect();
    wait_for(what, CONVERGE, || {
        let st = statuses(lab, &all)?;
        if st
            .iter()
            .all(|s| s.alive == N && s.roster == N && s.quorum && s.partition == "majority")
        {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    });
}

/// No agent ever reported two leaders at once.
fn assert_no_dual_leader(lab: &Lab) {
    for a in &lab.agents {
        let dual = a.alerts_of("dual_leader");
        assert!(
            dual.is_empty(),
            "{} logged dual_leader: {:?}",
            a.node_id,
            dual.iter().map(|d| &d.line).collect::<Vec<_>>()
        );
    }
}

/// Prints every alert but `node_joined`, in time order, relative to `t0` (the partition).
fn print_timeline(lab: &Lab, test: &str, t0: f64) {
    let mut all: Vec<(f64, &str, String)> = Vec::new();
    for a in &lab.agents {
        for al in a.alerts() {
            if al.alert != "node_joined" {
                all.push((al.time - t0, &a.node_id, al.details().to_string()));
            }
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("[netns {test}] alerts, seconds from the partition:");
    for (t, node, details) in all {
        println!("[netns {test}]   {t:+7.3}s {node}: {details}");
    }
}

fn as_set(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root (network namespaces): cargo test -p chorus-tests -- --ignored netns"]
fn netns_partition_minority_detects_split() {
    let _serial = serial();
    let Some(mut lab) = lab_or_skip("netns_partition_minority_detects_split", "split") else {
        return;
    };
    let key = keygen(&lab);
    let hooks = lab.dir.path().join("split-brain-hook.log");
    let hook = format!(
        "echo \"$CHORUS_NODE_ID unreachable=$CHORUS_UNREACHABLE\" >> {}",
        hooks.display()
    );
    let mut flags = agent_flags(&key);
    flags.extend(["--on-split-brain".to_string(), hook]);
    let started = Instant::now();
    for i in 0..N {
        lab.start_agent(i, N, &flags);
    }
    wait_all_alive(&mut lab, "all 5 agents see 5 alive");
    println!(
        "[netns split] start->all 5 alive: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let minority = [0, 1];
    let majority = [2, 3, 4];
    let split_at = unix_now();
    lab.partition(&minority, &majority);
    let partitioned = unix_now();
    println!(
        "[netns split] blackhole routes {{n1,n2}} | {{n3,n4,n5}} installed in {:.0}ms",
        (partitioned - split_at) * 1000.0
    );

    // The minority learns it from its logs and its status.
    let minority_status = wait_for(
        "n1 and n2 log quorum_lost and report quorum false, partition minority",
        DETECT,
        || {
            let st = statuses(&mut lab, &minority)?;
            for (s, &i) in st.iter().zip(&minority) {
                if lab.agents[i].alerts_of("quorum_lost").is_empty() {
                    return Err(format!(
                        "{} has not logged quorum_lost; status {s:?}",
                        name(i)
                    ));
                }
                if s.quorum || s.partition != "minority" {
                    return Err(format!("{s:?}"));
                }
            }
            Ok(st)
        },
    );
    for (i, s) in minority.iter().zip(&minority_status) {
        let lost = &lab.agents[*i].alerts_of("quorum_lost");
        assert_eq!(lost.len(), 1, "{}: one quorum_lost per loss", name(*i));
        let details = lost[0].details();
        assert_eq!(as_set(&details["reachable"]), names(&minority), "{details}");
        assert_eq!(
            as_set(&details["unreachable"]),
            names(&majority),
            "{details}"
        );
        assert!(
            s.leader.is_none() && !s.is_leader,
            "a minority never leads: {s:?}"
        );
        println!(
            "[netns split] partition->quorum_lost on {}: {:.2}s (log timestamp)",
            name(*i),
            lost[0].time - partitioned
        );
    }

    // The majority keeps quorum, and one of them sees several members go at once.
    let suspected = wait_for(
        "n3..n5 keep quorum (majority) and one of them logs split_brain_suspected",
        DETECT,
        || {
            let st = statuses(&mut lab, &majority)?;
            if let Some(s) = st
                .iter()
                .find(|s| !s.quorum || s.partition != "majority" || s.alive != 3)
            {
                return Err(format!("{s:?}"));
            }
            let found: Vec<(usize, f64)> = majority
                .iter()
                .filter_map(|&i| {
                    let a = lab.agents[i].alerts_of("split_brain_suspected");
                    a.first().map(|a| (i, a.time))
                })
                .collect();
            if found.is_empty() {
                Err("no split_brain_suspected on n3..n5 yet".into())
            } else {
                Ok(found)
            }
        },
    );
    for (i, time) in &suspected {
        println!(
            "[netns split] partition->split_brain_suspected on {}: {:.2}s",
            name(*i),
            time - partitioned
        );
    }
    for &i in &majority {
        assert!(
            lab.agents[i].alerts_of("quorum_lost").is_empty(),
            "{} is on the majority side but logged quorum_lost",
            name(i)
        );
    }
    // The split-brain hook ran once on each minority node, and nowhere else.
    let hook_lines = wait_for("the split-brain hook ran on n1 and n2", DETECT, || {
        let text = read_or_empty(&hooks);
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 2 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    });
    let mut ran_on: Vec<&str> = hook_lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    ran_on.sort();
    assert_eq!(ran_on, ["n1", "n2"], "hook lines: {hook_lines:?}");
    for l in &hook_lines {
        assert!(l.ends_with("unreachable=n3,n4,n5"), "hook line: {l}");
    }

    // Heal: every node sees all five again, and the split is reported as healed.
    let healed_at = unix_now();
    let heal_started = Instant::now();
    lab.heal();
    wait_all_alive(&mut lab, "all 5 agents see 5 alive again after the heal");
    println!(
        "[netns split] heal->all 5 alive everywhere: {:.1}s",
        heal_started.elapsed().as_secs_f64()
    );
    // Every node that reported the split (quorum_lost or split_brain_suspected) reports the
    // heal: both minority nodes and at least one majority node. A majority node whose grouping
    // window had not closed at the heal saw a blip and reports neither.
    let healed: Vec<(usize, f64)> = wait_for(
        "every node that reported the split logs split_brain_healed",
        DETECT,
        || {
            let mut found = Vec::new();
            for (i, a) in lab.agents.iter().enumerate() {
                let reported = !a.alerts_of("quorum_lost").is_empty()
                    || !a.alerts_of("split_brain_suspected").is_empty();
                match a.alerts_of("split_brain_healed").first() {
                    Some(h) => found.push((i, h.time)),
                    None if reported => {
                        return Err(format!("{} has not logged split_brain_healed", name(i)))
                    }
                    None => {}
                }
            }
            Ok(found)
        },
    );
    assert!(
        healed.iter().any(|(i, _)| majority.contains(i)),
        "a majority node logged split_brain_suspected, so one logs split_brain_healed"
    );
    for (i, time) in &healed {
        let h = &lab.agents[*i].alerts_of("split_brain_healed")[0];
        let d = h.details();
        println!(
            "[netns split] heal->split_brain_healed on {}: {:.2}s (split lasted {} ms, ours {}, theirs {})",
            name(*i),
            time - healed_at,
            d["duration_ms"],
            d["ours"],
            d["theirs"]
        );
    }
    let sides: Vec<&str> = healed
        .iter()
        .map(|(i, _)| {
            if minority.contains(i) {
                "minority"
            } else {
                "majority"
            }
        })
        .collect();
    println!(
        "[netns split] split_brain_healed logged by {:?} ({sides:?})",
        healed.iter().map(|(i, _)| name(*i)).collect::<Vec<_>>()
    );
    for &i in &minority {
        let regained = lab.agents[i].alerts_of("quorum_regained");
        assert_eq!(regained.len(), 1, "{} logs quorum_regained once", name(i));
    }
    assert_no_dual_leader(&lab);
    print_timeline(&lab, "split", partitioned);
}

/// One line of the task file: `node epoch unix-time`.
#[derive(Debug, Clone)]
struct TaskLine {
    node: String,
    epoch: u64,
    time: f64,
}

fn task_lines(path: &Path) -> Vec<TaskLine> {
    read_or_empty(path)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [node, epoch, time] => TaskLine {
                    node: node.to_string(),
                    epoch: epoch.parse().unwrap_or_else(|_| panic!("task line {l:?}")),
                    time: time.parse().unwrap_or_else(|_| panic!("task line {l:?}")),
                },
                _ => panic!("task line {l:?} is not `node epoch time`"),
            }
        })
        .collect()
}

/// Checks that the task ran on one node at a time: each epoch belongs to one node, and in
/// time order the epochs never go back (no run of an older leadership after the first run of
/// a newer one).
fn check_task_file(lines: &[TaskLine]) {
    let mut owner: BTreeMap<u64, &str> = BTreeMap::new();
    for l in lines {
        let o = owner.entry(l.epoch).or_insert(&l.node);
        assert_eq!(*o, l.node, "epoch {} ran on {o} and on {}", l.epoch, l.node);
    }
    let mut sorted = lines.to_vec();
    sorted.sort_by(|a, b| a.time.total_cmp(&b.time));
    for w in sorted.windows(2) {
        assert!(
            w[0].epoch <= w[1].epoch,
            "epoch {} ({}) ran at {:.3}, after epoch {} ({}) at {:.3}: leaderships overlapped",
            w[1].epoch,
            w[1].node,
            w[1].time,
            w[0].epoch,
            w[0].node,
            w[0].time
        );
    }
    // A 1 s task runs once per wall-clock second, whoever leads.
    let mut seconds = BTreeMap::new();
    for l in lines {
        if let Some(other) = seconds.insert(l.time.floor() as u64, l) {
            panic!("two runs in one period: {other:?} and {l:?}");
        }
    }
}

/// Waits until all of `idx` agree on one leader (with quorum) and it says it leads.
fn wait_single_leader(lab: &mut Lab, idx: &[usize], what: &str, within: Duration) -> (String, u64) {
    wait_for(what, within, || {
        let st = statuses(lab, idx)?;
        let leaders: BTreeSet<(Option<String>, u64)> =
            st.iter().map(|s| (s.leader.clone(), s.epoch)).collect();
        let claiming: Vec<&str> = st
            .iter()
            .filter(|s| s.is_leader)
            .map(|s| s.node_id.as_str())
            .collect();
        match (leaders.iter().next(), leaders.len(), &claiming[..]) {
            (Some((Some(l), epoch)), 1, [c]) if l == c && st.iter().all(|s| s.quorum) => {
                Ok((l.clone(), *epoch))
            }
            _ => Err(format!("{st:?}")),
        }
    })
}

#[test]
#[ignore = "needs root (network namespaces): cargo test -p chorus-tests -- --ignored netns"]
fn netns_leader_partitioned_into_minority_steps_down() {
    let _serial = serial();
    let Some(mut lab) = lab_or_skip("netns_leader_partitioned_into_minority_steps_down", "lead")
    else {
        return;
    };
    let key = keygen(&lab);
    let tasks = lab.dir.path().join("tasks.log");
    let task = format!(
        "tick=1s:echo \"$CHORUS_NODE_ID $CHORUS_LEADER_EPOCH $(date +%s.%N)\" >> {}",
        tasks.display()
    );
    let mut flags = agent_flags(&key);
    flags.extend([
        "--expect".to_string(),
        N.to_string(),
        "--task".to_string(),
        task,
    ]);
    for i in 0..N {
        lab.start_agent(i, N, &flags);
    }
    let all: Vec<usize> = (0..N).collect();
    wait_all_alive(&mut lab, "all 5 agents see 5 alive");
    let (old, old_epoch) = wait_single_leader(&mut lab, &all, "the 5 agree on a leader", CONVERGE);
    wait_for("the leader runs the task", DETECT, || {
        let lines = task_lines(&tasks);
        if lines.iter().any(|l| l.node == old && l.epoch == old_epoch) {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    let old_i = all
        .iter()
        .position(|&i| name(i) == old)
        .expect("leader is n1..n5");
    let buddy = all
        .iter()
        .copied()
        .find(|&i| i != old_i)
        .expect("another node");
    let minority = [old_i, buddy];
    let majority: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    println!(
        "[netns leader] leader {old} (epoch {old_epoch}); partitioning {{{old},{}}} | {:?}",
        name(buddy),
        names(&majority)
    );

    let lease = chorus_core::consensus::RaftTiming::new(std::time::Duration::from_secs(600)).lease;
    let partitioned = unix_now();
    let t0 = Instant::now();
    lab.partition(&minority, &majority);

    // The old leader steps down...
    let stepped = wait_for("the old leader steps down", DETECT, || {
        let s = lab.agents[old_i].status()?;
        if !s.is_leader && s.leader.is_none() && !s.quorum {
            Ok(t0.elapsed())
        } else {
            Err(format!("{s:?}"))
        }
    });
    println!(
        "[netns leader] partition->old leader {old} steps down: {:.2}s (status poll)",
        stepped.as_secs_f64()
    );
    // ... and the majority elects another, with a larger epoch.
    let (new, new_epoch) = wait_single_leader(
        &mut lab,
        &majority,
        "the majority elects a new leader",
        DETECT,
    );
    let elected = t0.elapsed();
    assert_ne!(new, old);
    assert!(new_epoch > old_epoch, "epoch {new_epoch} after {old_epoch}");
    println!(
        "[netns leader] partition->new leader {new} (epoch {new_epoch}) on the majority: {:.2}s (status poll; lease {lease:?})",
        elected.as_secs_f64()
    );
    // The same, from the agents' own log lines.
    let new_i = all.iter().position(|&i| name(i) == new).expect("n1..n5");
    let lost_at = lab.agents[old_i]
        .messages("this node is no longer the leader")
        .into_iter()
        .find(|&t| t >= partitioned)
        .expect("the old leader logs that it no longer leads");
    let acquired_at = lab.agents[new_i]
        .messages("this node is now the leader")
        .into_iter()
        .find(|&t| t >= partitioned)
        .expect("the new leader logs that it leads");
    println!(
        "[netns leader] from the logs: {old} stopped leading at partition{:+.2}s, {new} leads from partition{:+.2}s: no leader for {:.2}s (lease {lease:?}, voters wait 2 x lease)",
        lost_at - partitioned,
        acquired_at - partitioned,
        acquired_at - lost_at
    );
    assert!(
        lost_at < acquired_at,
        "{new} started leading at {acquired_at:.3} before {old} stopped at {lost_at:.3}"
    );
    // The minority buddy stops showing the deposed leader once it has not heard from it for
    // a lease (it heard it until the old leader stepped down, an election timeout in).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let buddy_status = loop {
        let s = lab.agents[buddy]
            .status()
            .expect("status of the minority buddy");
        if s.leader.is_none() || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !buddy_status.is_leader && buddy_status.leader.is_none(),
        "{buddy_status:?}"
    );

    // The task moved to the new leader without overlap.
    wait_for("the new leader runs the task twice", DETECT, || {
        let n = task_lines(&tasks)
            .iter()
            .filter(|l| l.epoch == new_epoch)
            .count();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} runs with epoch {new_epoch}"))
        }
    });
    let lines = task_lines(&tasks);
    check_task_file(&lines);
    let old_last = lines
        .iter()
        .filter(|l| l.epoch == old_epoch)
        .map(|l| l.time)
        .fold(f64::MIN, f64::max);
    let new_first = lines
        .iter()
        .filter(|l| l.epoch == new_epoch)
        .map(|l| l.time)
        .fold(f64::MAX, f64::min);
    println!(
        "[netns leader] task: last run of epoch {old_epoch} at partition{:+.2}s, first run of epoch {new_epoch} at partition{:+.2}s: gap {:.2}s",
        old_last - partitioned,
        new_first - partitioned,
        new_first - old_last
    );
    // The lease keeps leaderships apart; the core checker measures an overlap of zero, so
    // none is allowed here either.
    assert!(
        old_last < new_first,
        "the old leader ran the task at {old_last:.3}, after the new leader's first run at {new_first:.3}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.epoch > old_epoch)
            .all(|l| l.node == new && l.epoch == new_epoch),
        "only the new leader runs the task: {lines:?}"
    );

    // Heal: one leader for all five, the incumbent of the majority.
    let heal_started = Instant::now();
    let healed_at = unix_now();
    lab.heal();
    wait_all_alive(&mut lab, "all 5 agents see 5 alive again after the heal");
    let (after, after_epoch) = wait_single_leader(
        &mut lab,
        &all,
        "the 5 agree on one leader after the heal",
        CONVERGE,
    );
    println!(
        "[netns leader] heal->one leader {after} (epoch {after_epoch}) for all 5: {:.2}s",
        heal_started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (after.as_str(), after_epoch),
        (new.as_str(), new_epoch),
        "the incumbent keeps leading after the heal"
    );
    wait_for("the task runs after the heal", DETECT, || {
        let lines = task_lines(&tasks);
        if lines.iter().any(|l| l.time > healed_at + 1.0) {
            Ok(())
        } else {
            Err(format!(
                "last lines {:?}",
                &lines[lines.len().saturating_sub(3)..]
            ))
        }
    });
    let lines = task_lines(&tasks);
    check_task_file(&lines);
    let epochs: BTreeSet<u64> = lines.iter().map(|l| l.epoch).collect();
    println!(
        "[netns leader] task file: {} runs, epochs {epochs:?}",
        lines.len()
    );
    assert_no_dual_leader(&lab);
    print_timeline(&lab, "leader", partitioned);
}
