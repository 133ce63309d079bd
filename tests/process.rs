//! Real `chorus agent` processes on loopback ports, checked only through the `chorus`
//! command, as an operator or a script would. The JSON is read into the structs below, not
//! into the crates' own types, so renaming or dropping a documented field fails here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::bin::{chorus, chorus_bin, describe, KeyFile, ProcAgent};
use crate::support::{wait_until, SLOW};

/// A field that must be present, even when its value may be `null` (serde would otherwise
/// accept a missing `Option` field as `None`).
fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// One element of `chorus members --json` (DESIGN.md: "at least" these fields).
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // every field is read by serde: that is the check
struct MemberJson {
    node_id: String,
    addr: SocketAddr,
    status: MemberStatus,
    state: MemberState,
    #[serde(deserialize_with = "required")]
    app_version: Option<String>,
    #[serde(deserialize_with = "required")]
    fingerprint: Option<String>,
    load: LoadJson,
    tags: BTreeMap<String, String>,
    leader: bool,
    generation: u64,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LoadJson {
    cpu: f64,
    mem: f64,
    sessions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MemberStatus {
    Alive,
    Suspect,
    Dead,
    Left,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MemberState {
    Active,
    Draining,
    /// The last state a gracefully stopped node published.
    Left,
}

/// `chorus status --json`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct StatusJson {
    node_id: String,
    cluster: String,
    fingerprint: String,
    alive: usize,
    roster: usize,
    quorum: bool,
    partition: Partition,
    #[serde(deserialize_with = "required")]
    leader: Option<String>,
    epoch: u64,
    state: MemberState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Partition {
    Majority,
    Minority,
    Forming,
}

/// `chorus members --json` on `agent`'s socket. A failing command is "not yet" (the agent
/// may still be starting); output that does not parse fails the test at once.
async fn members(agent: &ProcAgent) -> Result<Vec<MemberJson>, String> {
    let out = chorus(&["members", "--json", "--socket", agent.socket_arg()]).await;
    if !out.status.success() {
        return Err(describe(&out));
    }
    let rows = serde_json::from_slice::<Vec<MemberJson>>(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "members --json does not match the contract: {e}\n{}",
            describe(&out)
        )
    });
    Ok(rows)
}

async fn status(agent: &ProcAgent) -> Result<StatusJson, String> {
    let out = chorus(&["status", "--json", "--socket", agent.socket_arg()]).await;
    if !out.status.success() {
        return Err(describe(&out));
    }
    let status = serde_json::from_slice::<StatusJson>(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json does not match the contract: {e}\n{}",
            describe(&out)
        )
    });
    Ok(status)
}

async fn row(agent: &ProcAgent, node: &str) -> Result<MemberJson, String> {
    members(agent)
        .await?
        .into_iter()
        .find(|m| m.node_id == node)
        .ok_or_else(|| format!("{} does not know {node} yet", agent.node_id))
}

/// Starts agent `nI` of `cluster`, seeded with `seeds` and tagged `zone=zI`.
fn spawn_agent(i: usize, cluster: &str, key: &KeyFile, seeds: &[SocketAddr]) -> ProcAgent {
    let tag = format!("zone=z{i}");
    ProcAgent::spawn(&format!("n{i}"), cluster, key, seeds, &["--tag", &tag])
}

/// Starts `n` agents `n1`..`nN` of `cluster`, each seeded with `n1`.
fn spawn_cluster(cluster: &str, key: &KeyFile, n: usize) -> Vec<ProcAgent> {
    let mut agents: Vec<ProcAgent> = Vec::new();
    for i in 1..=n {
        let seeds: Vec<SocketAddr> = agents.first().map(|a| a.addr).into_iter().collect();
        agents.push(spawn_agent(i, cluster, key, &seeds));
    }
    agents
}

/// Waits until every agent lists every agent `alive` and its status counts them all.
async fn wait_converged(agents: &[ProcAgent]) {
    let n = agents.len();
    wait_until(&format!("{n} agent processes converge"), SLOW, || async {
        for a in agents {
            let rows = members(a).await?;
            for b in agents {
                match rows.iter().find(|m| m.node_id == b.node_id) {
                    Some(m) if m.status == MemberStatus::Alive => {}
                    other => return Err(format!("{} sees {}: {other:?}", a.node_id, b.node_id)),
                }
            }
            let s = status(a).await?;
            if s.alive != n || !s.quorum {
                return Err(format!("{} status: {s:?}", a.node_id));
            }
        }
        Ok(())
    })
    .await;
}

async fn wait_seen_as(observers: &[&ProcAgent], node: &str, wanted: MemberStatus) {
    let what = format!("{node} is seen {wanted:?}");
    wait_until(&what, SLOW, || async {
        for o in observers {
            let m = row(o, node).await?;
            if m.status != wanted {
                return Err(format!("{} sees {node} {:?}", o.node_id, m.status));
            }
        }
        Ok(())
    })
    .await;
}

/// Reads `chorus watch --json` lines until every `(alert, node)` in `wanted` has been seen
/// (`seen` keeps what was read, across calls).
async fn read_events(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<(String, String)>,
    wanted: &[(&str, &str)],
) {
    let all_seen = |seen: &Vec<(String, String)>| {
        wanted
            .iter()
            .all(|(k, n)| seen.iter().any(|(sk, sn)| sk == k && sn == n))
    };
    let read = tokio::time::timeout(SLOW, async {
        while !all_seen(seen) {
            let Ok(Some(line)) = lines.next_line().await else {
                return;
            };
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch --json line is not JSON ({e}): {line}"));
            let field = |f: &str| event[f].as_str().unwrap_or_default().to_string();
            seen.push((field("alert"), field("node")));
        }
    })
    .await;
    assert!(
        read.is_ok() && all_seen(seen),
        "watch --json showed {seen:?}, wanted {wanted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_converge_and_tell_kill_9_from_sigterm() {
    // n1 first, with `chorus watch --json` on it. n3 joins only once n1 and n2 have
    // converged, long after the watch has subscribed, so its node_joined line shows the
    // watch is live before anything fails.
    let key = KeyFile::keygen("proc-life");
    let mut agents = spawn_cluster("proc-life", &key, 1);
    wait_until("n1 answers", SLOW, || status(&agents[0])).await;
    let mut watch = tokio::process::Command::new(chorus_bin())
        .args(["watch", "--json", "--socket", agents[0].socket_arg()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chorus watch");
    let mut watch_lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut events: Vec<(String, String)> = Vec::new();
    for i in 2..=3 {
        let seeds = [agents[0].addr];
        agents.push(spawn_agent(i, "proc-life", &key, &seeds));
        wait_converged(&agents).await;
    }
    read_events(&mut watch_lines, &mut events, &[("node_joined", "n3")]).await;

    // The documented fields, with the values this cluster must have.
    let fingerprint = status(&agents[0]).await.unwrap().fingerprint;
    for a in &agents {
        let s = status(a).await.unwrap();
        assert_eq!(s.node_id, a.node_id);
        assert_eq!(s.cluster, "proc-life");
        assert_eq!(s.fingerprint, fingerprint, "same version, same fingerprint");
        assert_eq!((s.alive, s.roster), (3, 3));
        assert_eq!(s.partition, Partition::Majority);
        assert_eq!(s.state, MemberState::Active);
        for (i, b) in agents.iter().enumerate() {
            let m = row(a, &b.node_id).await.unwrap();
            assert_eq!(m.addr, b.addr);
            assert_eq!(m.state, MemberState::Active);
            assert_eq!(m.app_version.as_deref(), Some("1.0"));
            assert_eq!(m.fingerprint.as_deref(), Some(fingerprint.as_str()));
            assert_eq!(m.tags.get("zone"), Some(&format!("z{}", i + 1)));
            assert!(m.generation > 0);
            assert!(
                m.load.cpu >= 0.0 && (0.0..=1.0).contains(&m.load.mem),
                "{m:?}"
            );
        }
    }

    // kill -9 n3: the others see it dead (failure detector).
    agents[2].process.kill_9();
    wait_seen_as(&[&agents[0], &agents[1]], "n3", MemberStatus::Dead).await;

    // SIGTERM n2: it publishes `left` and exits 0; n1 sees it left.
    agents[1].process.signal("TERM");
    let exit = agents[1].process.wait_exit(SLOW).await;
    assert!(
        exit.success(),
        "SIGTERM should stop the agent cleanly: {exit:?}"
    );
    wait_seen_as(&[&agents[0]], "n2", MemberStatus::Left).await;
    assert_eq!(status(&agents[0]).await.unwrap().alive, 1);

    // The watch stream saw both, one JSON object a line.
    read_events(
        &mut watch_lines,
        &mut events,
        &[("node_failed", "n3"), ("node_left", "n2")],
    )
    .await;

    // ... and so did n1's log, as `alert=<kind>` lines.
    let log = agents[0].process.log();
    for kind in ["alert=node_joined", "alert=node_failed", "alert=node_left"] {
        assert!(log.contains(kind), "no {kind} in n1's log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sessions_spread_and_bad_counts_change_nothing() {
    let key = KeyFile::keygen("proc-load");
    let n1 = spawn_agent(1, "proc-load", &key, &[]);
    // n2 logs JSON: its alerts must carry an `alert` field.
    let n2 = ProcAgent::spawn(
        "n2",
        "proc-load",
        &key,
        &[n1.addr],
        &["--log-format", "json"],
    );
    let mut agents = vec![n1, n2];
    wait_converged(&agents).await;
    wait_until("n2 logs n1's join as JSON", SLOW, || async {
        let log = agents[1].process.log();
        // Whole lines only: the agent may be writing the last one.
        let lines = log.split_inclusive('\n').filter(|l| l.ends_with('\n'));
        let joined = lines.map(str::trim_end).any(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("--log-format json wrote a non-JSON line ({e}): {line}")
            });
            v["alert"] == "node_joined" && v["node"] == "n1"
        });
        if joined {
            Ok(())
        } else {
            Err(format!("n2's log so far:\n{log}"))
        }
    })
    .await;

    let out = chorus(&[
        "load",
        "--sessions",
        "5",
        "--socket",
        agents[0].socket_arg(),
    ])
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sessions = 5"),
        "{}",
        describe(&out)
    );
    wait_until("n2 sees n1 with 5 sessions", SLOW, || async {
        let m = row(&agents[1], "n1").await?;
        match m.load.sessions {
            5 => Ok(()),
            n => Err(format!("n2 shows n1 with {n} sessions")),
        }
    })
    .await;

    for bad in ["-1", "abc", "2.5", ""] {
        let out = chorus(&[
            "load",
            "--sessions",
            bad,
            "--socket",
            agents[0].socket_arg(),
        ])
        .await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "bad usage exits 2: {}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--sessions") && stderr.contains("whole number"),
            "unclear error for --sessions {bad:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{}", describe(&out));
        // Nothing reached the agent: the count it reports is still 5.
        assert_eq!(row(&agents[0], "n1").await.unwrap().load.sessions, 5);
    }

    let out = chorus(&[
        "load",
        "--json",
        "--sessions",
        "0",
        "--socket",
        agents[0].socket_arg(),
    ])
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("load --json is JSON");
    assert_eq!(done["ok"], serde_json::Value::Bool(true), "{done}");
    wait_until("n2 sees n1 with 0 sessions", SLOW, || async {
        let m = row(&agents[1], "n1").await?;
        match m.load.sessions {
            0 => Ok(()),
            n => Err(format!("n2 shows n1 with {n} sessions")),
        }
    })
    .await;

    // `chorus leave` stops n2 gracefully: it answers, exits 0, and n1 sees it left.
    let out = chorus(&["leave", "--socket", agents[1].socket_arg()]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("n2 left the cluster"),
        "{}",
        describe(&out)
    );
    let exit = agents[1].process.wait_exit(SLOW).await;
    assert!(exit.success(), "{exit:?}");
    wait_seen_as(&[&agents[0]], "n2", MemberStatus::Left).await;
}

#[tokio::test]
async fn a_missing_agent_is_named_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-home.sock");
    let socket = socket.to_str().unwrap();
    let expected = format!("chorus: no agent at {socket} (is `chorus agent` running?)\n");
    for args in [
        vec!["members"],
        vec!["members", "--json"],
        vec!["status", "--json"],
        vec!["load", "--sessions", "1"],
        vec!["leave"],
        vec!["watch"],
    ] {
        let mut full = args.clone();
        full.extend(["--socket", socket]);
        let out = chorus(&full).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
}

#[tokio::test]
async fn bad_usage_exits_2() {
    for args in [
        vec!["members", "--status", "sleepy"],
        vec!["members", "--tag", "noequals"],
        vec!["frobnicate"],
        vec!["agent", "--gossip-interval"],
    ] {
        let out = chorus(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
    // A bad value in an otherwise well-formed agent command is refused before it starts.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        chorus(&[
            "agent",
            "--node-id",
            "bad id",
            "--socket",
            socket.to_str().unwrap(),
        ]),
    )
    .await
    .expect("a refused agent exits at once");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--node-id"),
        "{}",
        describe(&out)
    );
}
