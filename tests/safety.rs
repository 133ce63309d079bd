//! Issue 15, "safe by default": everyday mistakes reproduced with real `chorus agent`
//! processes, each showing the safe outcome.
//! - a second agent started with the node id of a live one (a copied config file, cloned VMs
//!   sharing a host name) is refused, says so in one ERROR line and exits 5; the live node
//!   keeps its row and roster entry, and nothing ever shows it `left`; a restart of the real
//!   node (same id and address, newer generation) still rejoins;
//! - a member restarted in place on another version is `rejected` on both sides, alerted
//!   on both sides, and never counted; under `--compat app-major` a minor bump is accepted.

use std::net::SocketAddr;

use chorus_core::member::{Member, Status};

use crate::support::agent::{members, status};
use std::os::unix::fs::PermissionsExt;

use crate::support::bin::{chorus, describe, KeyFile, ProcAgent};
use crate::support::{free_addr, wait_until, SLOW};

/// Starts `n1`..`n3` of `cluster` (each seeded with `n1`) with `extra` flags, and waits until
/// each sees all three alive.
async fn three(cluster: &str, key: &KeyFile, extra: &[&str]) -> Vec<ProcAgent> {
    let mut agents: Vec<ProcAgent> = Vec::new();
    // The three start the Raft cluster together, all voters.
    let mut flags = extra.to_vec();
    flags.extend(["--expect", "3"]);
    for i in 1..=3 {
        let seeds: Vec<SocketAddr> = agents.first().map(|a| a.addr).into_iter().collect();
        agents.push(ProcAgent::spawn(
            &format!("n{i}"),
            cluster,
            key,
            &seeds,
            &flags,
        ));
    }
    for a in &agents {
        for b in &agents {
            wait_row(a, &b.node_id, |m| m.status == Status::Alive).await;
        }
    }
    for a in &agents {
        wait_until(&format!("{} has quorum", a.node_id), SLOW, || async {
            let s = status(&a.socket).await?;
            if s.node.quorum && s.node.raft.voters.len() == 3 {
                Ok(())
            } else {
                Err(format!("{:?}", s.node))
            }
        })
        .await;
    }
    agents
}

async fn row(observer: &ProcAgent, node: &str) -> Result<Member, String> {
    members(&observer.socket)
        .await?
        .into_iter()
        .find(|m| m.node_id == node)
        .ok_or_else(|| format!("{} does not list {node}", observer.node_id))
}

/// Waits until `observer`'s row of `node` passes `wanted`; returns it.
async fn wait_row(observer: &ProcAgent, node: &str, wanted: impl Fn(&Member) -> bool) -> Member {
    let what = format!("{} sees {node} as wanted", observer.node_id);
    wait_until(&what, SLOW, || async {
        let m = row(observer, node).await?;
        if wanted(&m) {
            Ok(m)
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await
}

/// Lines of `agent`'s current log that carry `alert=<kind>`.
fn alert_lines(agent: &ProcAgent, kind: &str) -> Vec<String> {
    let needle = format!("alert={kind}");
    agent
        .process
        .log()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Waits until `agent`'s log has an `alert=<kind>` line naming `node`.
async fn wait_alert(agent: &ProcAgent, kind: &str, node: &str) -> String {
    let what = format!("{} logs alert={kind} about {node}", agent.node_id);
    wait_until(&what, SLOW, || async {
        alert_lines(agent, kind)
            .into_iter()
            .find(|l| l.contains(&format!("node={node}")))
            .ok_or_else(|| "not yet".to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_with_a_live_node_id_is_refused_and_the_live_node_keeps_it() {
    let key = KeyFile::keygen("dup-id");
    let mut agents = three("dup-id", &key, &[]).await;
    let live = agents[1].addr;

    // The mistake: another agent, elsewhere, with n2's id (its own certificate for n2,
    // minted from the same cluster key), seeded with n1.
    let mut impostor = ProcAgent::spawn("n2", "dup-id", &key, &[agents[0].addr], &[]);
    let exit = impostor.process.wait_exit(SLOW).await;
    let log = impostor.process.log();
    assert_eq!(exit.code(), Some(5), "the impostor exits 5: {log}");
    let lines = alert_lines(&impostor, "node_id_conflict");
    assert_eq!(lines.len(), 1, "one alert line: {log}");
    let line = &lines[0];
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&live.to_string()) && line.contains(&impostor.addr.to_string()),
        "the alert names both addresses: {line}"
    );
    assert!(
        log.contains("chorus: node id \"n2\" is already held by a live agent at"),
        "a clear last line: {log}"
    );
    // The cluster raises the same alert, naming both addresses too.
    let seen = wait_alert(&agents[0], "node_id_conflict", "n2").await;
    assert!(
        seen.contains(&live.to_string()) && seen.contains(&impostor.addr.to_string()),
        "{seen}"
    );
    assert!(seen.contains("ERROR"), "{seen}");

    // The live n2 keeps its row, address and roster entry everywhere, and is never `left`.
    for a in &agents {
        let m = row(a, "n2").await.unwrap();
        assert_eq!(
            (m.status, m.addr),
            (Status::Alive, live),
            "{} sees {m:?}",
            a.node_id
        );
        let s = status(&a.socket).await.unwrap();
        assert_eq!(
            (s.node.roster, s.node.alive),
            (3, 3),
            "{} status {s:?}",
            a.node_id
        );
        assert!(
            alert_lines(a, "node_left").is_empty(),
            "{}",
            a.process.log()
        );
    }

    // A restart of the real n2 (same id and address, a newer generation) is no conflict:
    // gracefully, then after kill -9 (the others still think the old one alive).
    let before = row(&agents[0], "n2").await.unwrap().generation;
    agents[1].stop(SLOW).await;
    agents[1].start_again();
    let back = wait_row(&agents[0], "n2", |m| {
        m.status == Status::Alive && m.generation > before
    })
    .await;
    agents[1].process.kill_9();
    agents[1].start_again();
    wait_row(&agents[0], "n2", |m| {
        m.status == Status::Alive && m.generation > back.generation
    })
    .await;
    for a in &mut agents {
        assert!(a.process.exited().is_none(), "{} still runs", a.node_id);
    }
    assert!(alert_lines(&agents[1], "node_id_conflict").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_upgraded_in_place_under_exact_is_rejected_and_alerted_on_both_sides() {
    let key = KeyFile::keygen("upgrade-exact");
    let mut agents = three("upgrade-exact", &key, &["--compat", "exact"]).await;
    agents[2].stop(SLOW).await;
    agents[2].set_flag("--app-version", "2.0");
    agents[2].start_again();

    // Every compatible node shows it rejected with the reason, and alerts.
    for a in &agents[..2] {
        let m = wait_row(a, "n3", |m| m.status == Status::Rejected).await;
        let reason = m.reason.unwrap_or_default();
        assert!(
            reason.contains("2.0"),
            "{} gives the reason: {reason}",
            a.node_id
        );
        wait_alert(a, "version_rejected", "n3").await;
        let s = status(&a.socket).await.unwrap();
        assert!(s.node.quorum, "{} keeps quorum: {s:?}", a.node_id);
        assert_eq!(s.node.alive, 2, "n3 is never counted: {s:?}");
    }
    // And it sees them so itself, alerts, and holds no quorum alone.
    for other in ["n1", "n2"] {
        wait_row(&agents[2], other, |m| m.status == Status::Rejected).await;
        wait_alert(&agents[2], "version_rejected", other).await;
    }
    let s = status(&agents[2].socket).await.unwrap();
    assert!(
        !s.node.quorum,
        "the upgraded node alone is no majority: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minor_bump_under_app_major_rejoins_without_a_rejection() {
    let key = KeyFile::keygen("upgrade-major");
    let mut agents = three("upgrade-major", &key, &["--compat", "app-major"]).await;
    for i in 0..3 {
        let before = row(&agents[(i + 1) % 3], &agents[i].node_id)
            .await
            .unwrap()
            .generation;
        agents[i].stop(SLOW).await;
        agents[i].set_flag("--app-version", "1.1");
        agents[i].start_again();
        let node = agents[i].node_id.clone();
        for a in &agents {
            wait_row(a, &node, |m| {
                m.status == Status::Alive
                    && (a.node_id == node || m.generation > before)
                    && m.app_version.as_deref() == Some("1.1")
            })
            .await;
        }
    }
    for a in &agents {
        assert!(
            alert_lines(a, "version_rejected").is_empty(),
            "{}: {}",
            a.node_id,
            a.process.log()
        );
    }
}

/// `chorus ARGS`, which must end by itself within [`SLOW`].
async fn chorus_ends(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(SLOW, chorus(args))
        .await
        .unwrap_or_else(|_| panic!("chorus {args:?} did not end within {SLOW:?}"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_makes_a_missing_directory_private() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("etc/chorus/cluster.pem");
    let out = chorus_ends(&[
        "keygen",
        "--out",
        out_path.to_str().unwrap(),
        "--cluster",
        "shop",
    ])
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(out_path.parent().unwrap()), 0o700);
    assert_eq!(mode(&out_path), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_cluster_differs_from_its_key_refuses_to_start() {
    let key = KeyFile::keygen("shop");
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr().to_string();
    let socket = dir.path().join("agent.sock");
    let data = dir.path().join("data");
    let out = chorus_ends(&[
        "agent",
        "--node-id",
        "n1",
        "--cluster",
        "prod",
        "--cluster-key",
        key.path.to_str().unwrap(),
        "--listen",
        &listen,
        "--expect",
        "1",
        "--socket",
        socket.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let last = stderr(&out).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("chorus: ")
            && last.contains("was made for cluster \"shop\"")
            && last.contains("--cluster \"prod\""),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_value_in_the_config_file_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "node-id = \"n1\"\ncluster = \"shop\"\ngossip-interval = \"fast\"\n",
    )
    .unwrap();
    let out = chorus_ends(&["agent", "--config", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let expected = format!(
        "chorus: config file {}, line 3, key gossip-interval: ",
        path.display()
    );
    assert!(stderr(&out).starts_with(&expected), "{}", describe(&out));
    assert!(
        !stderr(&out).contains("--gossip-interval"),
        "{}",
        describe(&out)
    );

    // A malformed value: file, line and key from toml's span.
    std::fs::write(&path, "node-id = \"n1\"\nexpect = \"three\"\n").unwrap();
    let out = chorus_ends(&["agent", "--config", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let expected = format!(
        "chorus: malformed config file {}: line 2, key expect: ",
        path.display()
    );
    assert!(stderr(&out).starts_with(&expected), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn version_names_the_commit_and_the_license_is_mit() {
    let out = chorus_ends(&["--version"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let commit = text
        .strip_prefix(&format!("chorus {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {text}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
    let license = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../LICENSE"),
    )
    .expect("a LICENSE file at the root");
    assert!(license.starts_with("MIT License"), "{license}");
}
