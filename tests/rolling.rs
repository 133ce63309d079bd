//! `scripts/rolling-restart.sh` over three real agents, while a client asks `chorus pick` every
//! 50 ms on the nodes that are not being restarted: no pick fails, and none returns the node
//! being restarted once its drain has spread.
//!
//! The test plays the service manager, as systemd does behind `systemctl stop`/`start`: the
//! script's `--stop`/`--start` templates run a small generated shell script (`ask.sh`) that
//! asks the test to stop (SIGTERM, wait for the exit) or start the agent of `{node}`, and
//! returns once that is done. So every agent process stays a child of the test, killed if the
//! test fails. The script's `CHORUS` is a wrapper that, before `chorus resume`, tells the test
//! too (same handshake), so the test knows the first moment the node may be picked again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chorus_core::member::Status;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use crate::support::agent::members;
use crate::support::bin::{chorus, chorus_bin, describe, KeyFile, ProcAgent};
use crate::support::{wait_until, SLOW};

/// The agents' gossip interval.
const INTERVAL: Duration = Duration::from_millis(200);
/// How often the client asks for a pick.
const PICK_EVERY: Duration = Duration::from_millis(50);
/// How long after the script says "draining" another node may still pick the node: the
/// `chorus drain` command has to start, and the state to travel one gossip round-trip (a
/// round or two, plus the agent tick that refreshes what `pick` reads). Five rounds: room for
/// a busy machine; the measured lag is printed.
const DRAIN_ALLOWANCE: Duration = INTERVAL.saturating_mul(5);
/// The whole rolling restart must end within this.
const WHOLE_RUN: Duration = Duration::from_secs(120);

/// What `chorus pick --json` says about the node it picked (the fields the test relies on).
#[derive(Debug, Clone, Deserialize)]
struct PickJson {
    node_id: String,
    status: String,
    state: String,
    generation: u64,
}

/// One pick: asked of `asked`, sent and answered at these times.
#[derive(Debug)]
struct PickRecord {
    asked: String,
    sent: Instant,
    answered: Instant,
    outcome: Result<PickJson, String>,
}

/// One node's restart, as the script and the handshakes showed it.
#[derive(Debug)]
struct Restart {
    node: String,
    /// When the script's "draining" line was read (it is printed before `chorus drain`).
    draining: Instant,
    stopped: Option<Instant>,
    started: Option<Instant>,
    /// When the script was about to send `chorus resume` (it waits for the test's answer).
    resuming: Option<Instant>,
    /// When the script's "back, alive everywhere, resumed" line was read.
    resumed: Option<Instant>,
}

#[derive(Debug, Default)]
struct Timeline {
    /// The node between its "draining" and "resumed" lines: not asked for picks.
    restarting: Option<String>,
    restarts: Vec<Restart>,
}

impl Timeline {
    fn restart_of(&mut self, node: &str) -> &mut Restart {
        self.restarts
            .iter_mut()
            .rev()
            .find(|r| r.node == node)
            .unwrap_or_else(|| panic!("{node} is handled before its \"draining\" line"))
    }
}

/// `ask.sh ACTION NODE`: the `--stop`/`--start` snippet, and the resume hook.
const ASK_SH: &str = r#"#!/bin/sh
# ask.sh ACTION NODE: asks the test, which plays the service manager (as systemd does behind
# `systemctl stop`), to stop, start or resume NODE; returns once the test says it is done.
ctl=$(dirname "$0")
echo "$1 $2" > "$ctl/$2.$1.tmp" && mv "$ctl/$2.$1.tmp" "$ctl/$2.$1.req" || exit 1
n=0
while [ ! -e "$ctl/$2.$1.done" ]; do
    n=$((n + 1))
    if [ "$n" -gt 1200 ]; then echo "ask.sh: no answer to $1 $2 within 60s" >&2; exit 1; fi
    sleep 0.05
done
answer=$(cat "$ctl/$2.$1.done")
rm -f "$ctl/$2.$1.done"
[ "$answer" = ok ] || { echo "ask.sh: $1 $2: $answer" >&2; exit 1; }
"#;

/// The `CHORUS` the script runs: the real binary, after a handshake before `resume`.
fn chorus_wrapper(ctl: &Path) -> String {
    format!(
        r#"#!/bin/sh
# chorus, as rolling-restart.sh calls it; tells the test before `resume --socket CTL/NODE.sock`.
if [ "$1" = resume ]; then
    sh '{ask}' resume "$(basename "$3" .sock)" || exit 1
fi
exec '{bin}' "$@"
"#,
        ask = ctl.join("ask.sh").display(),
        bin = chorus_bin().display()
    )
}

/// `chorus pick --json` on the agent behind `socket`.
async fn pick(asked: String, socket: PathBuf) -> PickRecord {
    let sent = Instant::now();
    let out = chorus(&["pick", "--json", "--socket", socket.to_str().unwrap()]).await;
    let answered = Instant::now();
    let outcome = if out.status.success() {
        serde_json::from_slice::<PickJson>(&out.stdout).map_err(|e| {
            format!(
                "pick --json does not match the contract: {e}: {}",
                describe(&out)
            )
        })
    } else {
        Err(describe(&out))
    };
    PickRecord {
        asked,
        sent,
        answered,
        outcome,
    }
}

/// Runs the script; follows its log lines into `timeline`. Returns its exit status and lines.
async fn run_script(
    ctl: &Path,
    nodes: &str,
    timeline: &Mutex<Timeline>,
    finished: &AtomicBool,
) -> (std::process::ExitStatus, Vec<String>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rolling-restart.sh");
    let ask = format!("sh '{}'", ctl.join("ask.sh").display());
    let stderr_log = ctl.join("script.stderr");
    let mut child = tokio::process::Command::new("bash")
        .arg(&script)
        .args(["--nodes", nodes])
        .arg("--socket")
        .arg(ctl.join("{node}.sock"))
        .args(["--stop", &format!("{ask} stop {{node}}")])
        .args(["--start", &format!("{ask} start {{node}}")])
        .args(["--drain-timeout", "10s", "--alive-timeout", "60"])
        .env("CHORUS", ctl.join("chorus.sh"))
        .env_remove("CHORUS_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run scripts/rolling-restart.sh");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let now = Instant::now();
        println!("{line}");
        // "rolling-restart: HH:MM:SS nX: draining (generation G)"
        let mut words = line.split_whitespace().skip(2);
        let node = words.next().and_then(|w| w.strip_suffix(':'));
        let what = words.collect::<Vec<_>>().join(" ");
        if let Some(node) = node {
            let mut t = timeline.lock().unwrap();
            if what.starts_with("draining") {
                t.restarting = Some(node.to_string());
                t.restarts.push(Restart {
                    node: node.to_string(),
                    draining: now,
                    stopped: None,
                    started: None,
                    resuming: None,
                    resumed: None,
                });
            } else if what == "back, alive everywhere, resumed" {
                t.restart_of(node).resumed = Some(now);
                t.restarting = None;
            }
        }
        seen.push(line);
    }
    let status = child.wait().await.expect("wait for the script");
    finished.store(true, Ordering::SeqCst);
    let stderr = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    (status, seen, stderr)
}

/// Asks every node that is not being restarted for a pick, every [`PICK_EVERY`], until the
/// script has finished. A round holds `round` while its picks are out.
async fn pick_loop(
    sockets: &BTreeMap<String, PathBuf>,
    timeline: &Mutex<Timeline>,
    round: &tokio::sync::Mutex<()>,
    finished: &AtomicBool,
) -> Vec<PickRecord> {
    let mut records = Vec::new();
    let mut every = tokio::time::interval(PICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !finished.load(Ordering::SeqCst) {
        every.tick().await;
        let _round = round.lock().await;
        let restarting = timeline.lock().unwrap().restarting.clone();
        let mut set = JoinSet::new();
        for (node, socket) in sockets {
            if restarting.as_ref() != Some(node) {
                set.spawn(pick(node.clone(), socket.clone()));
            }
        }
        while let Some(record) = set.join_next().await {
            records.push(record.expect("a pick task"));
        }
    }
    records
}

/// The service manager: answers `ask.sh` requests (stop, start, resume) until the script has
/// finished. Returns what went wrong, if anything.
async fn supervise(
    ctl: &Path,
    agents: &mut BTreeMap<String, ProcAgent>,
    timeline: &Mutex<Timeline>,
    round: &tokio::sync::Mutex<()>,
    finished: &AtomicBool,
) -> Vec<String> {
    let mut problems = Vec::new();
    while !finished.load(Ordering::SeqCst) {
        let mut requests: Vec<(String, String)> = std::fs::read_dir(ctl)
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let (node, action) = name.strip_suffix(".req")?.split_once('.')?;
                Some((node.to_string(), action.to_string()))
            })
            .collect();
        requests.sort();
        for (node, action) in requests {
            std::fs::remove_file(ctl.join(format!("{node}.{action}.req"))).unwrap();
            let answer = match (action.as_str(), agents.get_mut(&node)) {
                ("stop", Some(agent)) => {
                    // The script printed "draining" before it asked: that line is (about to
                    // be) read, and from then on the node is not asked for picks.
                    wait_until(&format!("the draining line of {node}"), SLOW, || async {
                        match &timeline.lock().unwrap().restarting {
                            Some(n) if *n == node => Ok(()),
                            other => Err(format!("restarting: {other:?}")),
                        }
                    })
                    .await;
                    // No pick may be out to the node when it goes down.
                    drop(round.lock().await);
                    let exit = agent.stop(SLOW).await;
                    timeline.lock().unwrap().restart_of(&node).stopped = Some(Instant::now());
                    if exit.success() {
                        "ok".to_string()
                    } else {
                        format!("{node} exited with {exit:?} on SIGTERM")
                    }
                }
                ("start", Some(agent)) => {
                    agent.start_again();
                    timeline.lock().unwrap().restart_of(&node).started = Some(Instant::now());
                    "ok".to_string()
                }
                ("resume", Some(_)) => {
                    timeline.lock().unwrap().restart_of(&node).resuming = Some(Instant::now());
                    "ok".to_string()
                }
                _ => format!("unknown request {action} {node}"),
            };
            if answer != "ok" {
                problems.push(answer.clone());
            }
            let done = ctl.join(format!("{node}.{action}.done"));
            let tmp = ctl.join(format!("{node}.{action}.done-tmp"));
            std::fs::write(&tmp, &answer).unwrap();
            std::fs::rename(&tmp, &done).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_never_picks_the_restarting_node() {
    let key = KeyFile::keygen("proc-rolling");
    let mut agents: BTreeMap<String, ProcAgent> = BTreeMap::new();
    for i in 1..=3 {
        let node = format!("n{i}");
        let seeds: Vec<_> = agents.get("n1").map(|a| a.addr).into_iter().collect();
        let agent =
            ProcAgent::spawn_with_interval(&node, "proc-rolling", &key, &seeds, INTERVAL, &[]);
        agents.insert(node, agent);
    }
    wait_until("3 agent processes converge", SLOW, || async {
        for a in agents.values() {
            let rows = members(&a.socket).await?;
            let alive = rows.iter().filter(|m| m.status == Status::Alive).count();
            if alive != 3 {
                return Err(format!("{} sees {alive} alive", a.node_id));
            }
        }
        Ok(())
    })
    .await;

    // The control directory: one socket per node by name (for --socket), ask.sh, the wrapper.
    let ctl_dir = tempfile::tempdir().unwrap();
    let ctl = ctl_dir.path();
    let mut sockets = BTreeMap::new();
    for (node, a) in &agents {
        let link = ctl.join(format!("{node}.sock"));
        std::os::unix::fs::symlink(&a.socket, &link).unwrap();
        sockets.insert(node.clone(), link);
    }
    std::fs::write(ctl.join("ask.sh"), ASK_SH).unwrap();
    std::fs::write(ctl.join("chorus.sh"), chorus_wrapper(ctl)).unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(ctl.join("chorus.sh"), exec).unwrap();
    let generations: BTreeMap<String, u64> = members(&agents["n1"].socket)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.node_id, m.generation))
        .collect();

    let timeline = Mutex::new(Timeline::default());
    let round = tokio::sync::Mutex::new(());
    let finished = AtomicBool::new(false);
    let began = Instant::now();
    let ((status, lines, stderr), records, problems) = tokio::time::timeout(WHOLE_RUN, async {
        tokio::join!(
            run_script(ctl, "n1 n2 n3", &timeline, &finished),
            pick_loop(&sockets, &timeline, &round, &finished),
            supervise(ctl, &mut agents, &timeline, &round, &finished),
        )
    })
    .await
    .unwrap_or_else(|_| panic!("the rolling restart did not end within {WHOLE_RUN:?}"));
    let took = began.elapsed();

    assert!(
        status.success(),
        "rolling-restart.sh failed: {status:?}\n{}\nstderr:\n{stderr}",
        lines.join("\n")
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("all nodes restarted")),
        "{lines:?}"
    );
    let timeline = timeline.into_inner().unwrap();
    let order: Vec<&str> = timeline.restarts.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(order, ["n1", "n2", "n3"], "{timeline:?}");

    // Every pick was answered, with a node alive and active in the answering node's view.
    let failed: Vec<&PickRecord> = records.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failed.is_empty(), "picks failed: {failed:#?}");
    let picks: Vec<(&PickRecord, &PickJson)> = records
        .iter()
        .map(|r| (r, r.outcome.as_ref().unwrap()))
        .collect();
    for (r, p) in &picks {
        assert_eq!(
            (p.status.as_str(), p.state.as_str()),
            ("alive", "active"),
            "{r:?}"
        );
    }

    // Never the node being restarted: from its "draining" line (plus the time its drain
    // needs to spread) until the script was about to resume it.
    let mut report = Vec::new();
    for r in &timeline.restarts {
        let (Some(stopped), Some(started), Some(resuming), Some(resumed)) =
            (r.stopped, r.started, r.resuming, r.resumed)
        else {
            panic!("an incomplete restart: {r:?}");
        };
        assert!(r.draining < stopped && stopped < started && started < resuming);
        assert!(resuming < resumed, "{r:?}");
        let during: Vec<&(&PickRecord, &PickJson)> = picks
            .iter()
            .filter(|(rec, _)| rec.answered > r.draining && rec.sent < resuming)
            .collect();
        // (The test's own bookkeeping: a node is never asked while it is down.)
        let asked_down: Vec<&PickRecord> = records
            .iter()
            .filter(|rec| rec.asked == r.node && rec.answered > stopped && rec.sent < resumed)
            .collect();
        assert!(
            asked_down.is_empty(),
            "{} was asked while down: {asked_down:?}",
            r.node
        );
        let of_it: Vec<&&(&PickRecord, &PickJson)> =
            during.iter().filter(|(_, p)| p.node_id == r.node).collect();
        let lag = of_it.iter().map(|(rec, _)| rec.answered - r.draining).max();
        let last_answer = of_it.iter().map(|(rec, _)| rec.answered).max();
        if let (Some(lag), Some(last_answer)) = (lag, last_answer) {
            assert!(
                lag <= DRAIN_ALLOWANCE && last_answer < stopped,
                "{} was picked {lag:?} after its \"draining\" line (allowed {DRAIN_ALLOWANCE:?}, \
                 and never once stopped); generation before {}; stopped {:?}, started {:?}, \
                 resuming {:?} after it; picks of it (asked, sent, answered after it, \
                 generation): {:?}",
                r.node,
                generations[&r.node],
                stopped - r.draining,
                started - r.draining,
                resuming - r.draining,
                of_it
                    .iter()
                    .map(|(rec, p)| (
                        &rec.asked,
                        rec.sent - r.draining,
                        rec.answered - r.draining,
                        p.generation
                    ))
                    .collect::<Vec<_>>()
            );
        }
        // After the restart it is back with a new generation (picked again, or at least
        // shown alive by the others: the script checked that).
        let again = picks
            .iter()
            .filter(|(rec, p)| p.node_id == r.node && rec.sent > resuming)
            .map(|(_, p)| p.generation)
            .max();
        if let Some(g) = again {
            assert!(
                g > generations[&r.node],
                "{} picked with generation {g}",
                r.node
            );
        }
        report.push(format!(
            "{}: {} picks while restarting, last pick of it {} after \"draining\", \
             stopped {:.2}s and started {:.2}s after \"draining\", resumed after {:.2}s",
            r.node,
            during.len(),
            lag.map_or("none".to_string(), |l| format!("{} ms", l.as_millis())),
            (stopped - r.draining).as_secs_f64(),
            (started - r.draining).as_secs_f64(),
            (resumed - r.draining).as_secs_f64()
        ));
    }
    let mut by_asked: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *by_asked.entry(r.asked.as_str()).or_default() += 1;
    }
    println!(
        "rolling restart: {:.1}s, {} picks ({by_asked:?}), none failed\n  {}",
        took.as_secs_f64(),
        records.len(),
        report.join("\n  ")
    );
}
