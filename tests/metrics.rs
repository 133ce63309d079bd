//! `--metrics-addr`: Prometheus text over real HTTP. Every metric the table at the top of
//! `crates/chorus-agent/src/metrics.rs` documents is served, and the values follow the
//! cluster: three agents alive with one leader, then one crashed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use chorus_agent::Stop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::agent::{Cluster, Net, TestAgent};
use crate::support::{free_addr, wait_until, SLOW};

/// The metrics module, whose doc table is the list of documented names.
const METRICS_RS: &str = include_str!("../crates/chorus-agent/src/metrics.rs");

/// The metric names in the doc table of `metrics.rs`: the first cell of each row, one or more
/// backquoted names; labels (`{status}`) are dropped, and `..._received_total` after
/// `chorus_net_bytes_sent_total` stands for `chorus_net_bytes_received_total`.
fn documented_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in METRICS_RS.lines() {
        let Some(row) = line.strip_prefix("//! | ").filter(|r| r.starts_with('`')) else {
            continue;
        };
        let cell = row.split(" | ").next().unwrap_or_default();
        for quoted in cell.split('`').skip(1).step_by(2).map(str::trim) {
            let quoted = quoted.split('{').next().unwrap_or_default();
            let name = match quoted.strip_prefix("...") {
                Some(tail) => {
                    let prev = names.last().expect("a shorthand follows a full name");
                    let keep = prev.split('_').count() - tail.split('_').count() + 1;
                    let head: Vec<&str> = prev.split('_').take(keep).collect();
                    format!("{}{tail}", head.join("_"))
                }
                None => quoted.to_string(),
            };
            names.push(name);
        }
    }
    names
}

/// A loopback address free for TCP now (and never handed out twice by this process).
fn free_tcp_addr() -> SocketAddr {
    loop {
        let addr = free_addr();
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// One scrape: the samples, keyed by name with labels (`chorus_members{status="dead"}`).
struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn names(&self) -> BTreeSet<&str> {
        self.samples
            .keys()
            .map(|k| k.split('{').next().unwrap_or_default())
            .collect()
    }

    /// The value of one sample; a missing sample is "not yet".
    fn get(&self, key: &str) -> Result<f64, String> {
        self.samples
            .get(key)
            .copied()
            .ok_or_else(|| format!("no sample {key}"))
    }

    fn value(&self, key: &str) -> f64 {
        self.get(key).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `GET /metrics` over a plain TCP connection, as Prometheus would.
async fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    let raw = String::from_utf8(raw).expect("the metrics response is UTF-8");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    assert_eq!(
        header("content-length"),
        Some(body.len().to_string()),
        "{head}"
    );
    let ctype = header("content-type").unwrap_or_default();
    assert!(ctype.contains("openmetrics-text"), "{head}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {body}"
    );
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("not a number ({e}): {line:?}"));
        samples.insert(key.to_string(), value);
    }
    Ok(Scrape { samples })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_names_and_values() {
    let documented = documented_names();
    // The table parses into the names the README and the alerting rules rely on.
    for name in [
        "chorus_members",
        "chorus_roster_size",
        "chorus_quorum",
        "chorus_partition",
        "chorus_leader_epoch",
        "chorus_is_leader",
        "chorus_alerts_total",
        "chorus_net_bytes_sent_total",
        "chorus_net_bytes_received_total",
        "chorus_net_messages_sent_total",
        "chorus_net_messages_received_total",
        "chorus_net_dropped_sends_total",
        "chorus_net_garbage_received_total",
        "chorus_net_stale_received_total",
        "chorus_net_failed_handshakes_total",
        "chorus_net_rejected_peers_total",
        "chorus_net_connections_opened_total",
        "chorus_peer_heartbeat_age_seconds",
        "chorus_tick_duration_seconds",
    ] {
        assert!(
            documented.iter().any(|d| d == name),
            "{name} is not in the table of metrics.rs: {documented:?}"
        );
    }

    // Three agents over QUIC (so the network counters count real traffic).
    let mut cluster = Cluster {
        name: "metrics".into(),
        net: Net::quic("metrics"),
        agents: Vec::new(),
    };
    let mut addrs = BTreeMap::new();
    for i in 1..=3 {
        let node = format!("n{i}");
        let addr = free_tcp_addr();
        let spec = cluster.spec(&node).metrics_addr(addr);
        cluster.agents.push(TestAgent::start(spec).await);
        addrs.insert(node, addr);
    }
    cluster.wait_converged().await;

    // Every documented name is served (a histogram as _bucket, _sum and _count), once the
    // cluster has a leader everywhere.
    let scrapes = wait_until(
        "every node's metrics show 3 alive and one leader",
        SLOW,
        || {
            let addrs = &addrs;
            async move {
                let mut scrapes = BTreeMap::new();
                for (node, addr) in addrs {
                    let s = scrape(*addr).await?;
                    if s.get("chorus_members{status=\"alive\"}")? != 3.0 {
                        return Err(format!("{node}: {:?}", s.samples));
                    }
                    scrapes.insert(node.clone(), s);
                }
                let leaders = scrapes
                    .values()
                    .filter(|s| s.get("chorus_is_leader") == Ok(1.0))
                    .count();
                let epochs: BTreeSet<u64> = scrapes
                    .values()
                    .map(|s| s.get("chorus_leader_epoch").map(|e| e as u64))
                    .collect::<Result<_, _>>()?;
                if leaders != 1 || epochs.len() != 1 || epochs.contains(&0) {
                    return Err(format!("{leaders} leaders, epochs {epochs:?}"));
                }
                Ok(scrapes)
            }
        },
    )
    .await;
    for (node, s) in &scrapes {
        let served = s.names();
        for name in &documented {
            let histogram = ["_bucket", "_sum", "_count"]
                .iter()
                .all(|suffix| served.contains(format!("{name}{suffix}").as_str()));
            assert!(
                served.contains(name.as_str()) || histogram,
                "{node} does not serve {name}; it serves {served:?}"
            );
        }
        for (key, value) in [
            ("chorus_members{status=\"dead\"}", 0.0),
            ("chorus_members{status=\"suspect\"}", 0.0),
            ("chorus_roster_size", 3.0),
            ("chorus_quorum", 1.0),
            ("chorus_partition{side=\"majority\"}", 1.0),
            ("chorus_partition{side=\"minority\"}", 0.0),
            ("chorus_net_garbage_received_total", 0.0),
            ("chorus_net_rejected_peers_total", 0.0),
        ] {
            assert_eq!(s.value(key), value, "{node}: {key}");
        }
        assert!(s.value("chorus_alerts_total{kind=\"node_joined\"}") >= 1.0);
        for counter in [
            "chorus_net_bytes_sent_total",
            "chorus_net_bytes_received_total",
            "chorus_net_messages_sent_total",
            "chorus_net_messages_received_total",
            "chorus_net_connections_opened_total",
            "chorus_tick_duration_seconds_count",
        ] {
            assert!(s.value(counter) > 0.0, "{node}: {counter} is 0");
        }
        for peer in addrs.keys().filter(|p| *p != node) {
            let age = s.value(&format!(
                "chorus_peer_heartbeat_age_seconds{{peer=\"{peer}\"}}"
            ));
            assert!((0.0..5.0).contains(&age), "{node}: {peer}'s age {age}");
        }
    }

    // Crash a node that does not lead: the others count it dead and raise node_failed.
    let victim = scrapes
        .iter()
        .find(|(_, s)| s.value("chorus_is_leader") == 0.0)
        .map(|(node, _)| node.clone())
        .unwrap();
    cluster.take(&victim).stop(Stop::Crash).await;
    let victim_addr = addrs.remove(&victim).unwrap();
    for (node, addr) in &addrs {
        let before = &scrapes[node];
        wait_until(
            &format!("{node}'s metrics count {victim} dead"),
            SLOW,
            || async {
                let s = scrape(*addr).await?;
                let dead = s.get("chorus_members{status=\"dead\"}")?;
                // The series exists at 0 from the start: wait for the count, not the name.
                let failed = s.get("chorus_alerts_total{kind=\"node_failed\"}")?;
                if dead != 1.0 || failed < 1.0 {
                    return Err(format!("dead {dead}, node_failed {failed:?}"));
                }
                assert_eq!(s.value("chorus_alerts_total{kind=\"node_failed\"}"), 1.0);
                assert_eq!(s.value("chorus_members{status=\"alive\"}"), 2.0);
                // Two of three alive is still a majority; the roster keeps the dead node
                // until it is reaped.
                assert_eq!(s.value("chorus_quorum"), 1.0);
                assert_eq!(s.value("chorus_roster_size"), 3.0);
                let age = s.value(&format!(
                    "chorus_peer_heartbeat_age_seconds{{peer=\"{victim}\"}}"
                ));
                assert!(age >= 1.0, "{victim} is dead with a heartbeat {age}s old");
                for counter in [
                    "chorus_net_bytes_sent_total",
                    "chorus_tick_duration_seconds_count",
                ] {
                    assert!(s.value(counter) > before.value(counter), "{counter}");
                }
                Ok(())
            },
        )
        .await;
    }
    // The crashed agent's endpoint is gone with it.
    wait_until(
        &format!("{victim}'s endpoint is closed"),
        Duration::from_secs(10),
        || async {
            match TcpStream::connect(victim_addr).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepting".to_string()),
            }
        },
    )
    .await;
}
