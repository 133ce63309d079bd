//! One real `chorus agent` process (the release binary) joined to an in-process cluster of
//! N-1 agents over QUIC: its own RSS, and how fast its socket answers `status`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_agent::api::{Request, Response};
use chorus_agent::client::Client;
use serde::{Deserialize, Serialize};

use crate::chorus::{ChorusCluster, ChorusOptions, Wire};
use crate::measure::{self, quantile};
use crate::scenario::{wait_all, Cluster, Probe, Timings};

/// Clients of the concurrent query phase.
const CONCURRENT_CLIENTS: usize = 4;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RealResult {
    pub n: usize,
    pub error: Option<String>,
    /// From the process start until it saw all N alive.
    pub joined_s: Option<f64>,
    pub rss_kib: u64,
    pub qps_one: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub qps_four: f64,
}

/// The `chorus` binary next to this one (target/<profile>/chorus), unless given.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("chorus")))
        .unwrap_or_else(|| PathBuf::from("chorus"))
}

pub async fn run(
    n: usize,
    binary: &Path,
    gossip_interval: Option<Duration>,
    timings: &Timings,
    query_for: Duration,
) -> RealResult {
    let mut result = RealResult {
        n,
        ..RealResult::default()
    };
    if !binary.is_file() {
        result.error = Some(format!(
            "{} not found: build it with `cargo build --release -p chorus-cli`",
            binary.display()
        ));
        return result;
    }
    let options = ChorusOptions {
        wire: Wire::Quic,
        gossip_interval,
    };
    let mut cluster = match ChorusCluster::start(n - 1, &options).await {
        Ok(c) => c,
        Err(e) => {
            result.error = Some(format!("cannot start the in-process agents: {e:#}"));
            return result;
        }
    };
    if let Err(e) = measure_process(
        &mut cluster,
        binary,
        &options,
        timings,
        query_for,
        &mut result,
    )
    .await
    {
        result.error = Some(format!("{e:#}"));
    }
    cluster.shutdown().await;
    result
}

async fn measure_process(
    cluster: &mut ChorusCluster,
    binary: &Path,
    options: &ChorusOptions,
    timings: &Timings,
    query_for: Duration,
    result: &mut RealResult,
) -> anyhow::Result<()> {
    let n = result.n;
    let others: Vec<usize> = (0..n - 1).collect();
    let joined = wait_all(
        cluster,
        &others,
        &Probe::AllAlive,
        Instant::now(),
        timings.converge,
        timings.poll,
    )
    .await;
    anyhow::ensure!(
        joined.iter().all(Option::is_some),
        "the in-process agents did not converge"
    );

    let dir = tempfile::Builder::new().prefix("chorus-real-").tempdir()?;
    let socket = dir.path().join("agent.sock");
    let listen = measure::free_addrs(1)?[0];
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("agent")
        .args(["--node-id", "real", "--listen", &listen.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for seed in measure::seeds_for(usize::MAX, cluster.addrs()) {
        command.args(["--seed", &seed.to_string()]);
    }
    if let Some(key) = cluster.cluster_key() {
        command.arg("--cluster-key").arg(key);
    }
    if let Some(d) = options.gossip_interval {
        command.args(["--gossip-interval", &format!("{}ms", d.as_millis())]);
    }
    command.args(["--app-version", "1.0"]);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();

    let outcome = async {
        let deadline = started + timings.converge;
        let mut seen = None;
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the process saw {} of {n} alive after {:?} (a binary built from other \
                 sources is refused at the hello)",
                seen.map_or("none".to_string(), |s: usize| s.to_string()),
                timings.converge
            );
            if let Ok(Response::Status { status }) =
                chorus_agent::client::call(&socket, &Request::Status).await
            {
                seen = Some(status.node.alive);
                if status.node.alive == n {
                    break;
                }
            }
            tokio::time::sleep(timings.poll).await;
        }
        result.joined_s = Some(started.elapsed().as_secs_f64());
        tokio::time::sleep(timings.settle + timings.steady.min(Duration::from_secs(10))).await;
        result.rss_kib = measure::rss_kib(&pid);

        let mut one = query_threads(&socket, 1, query_for).await?;
        let (count, mut latencies) = one.pop().context("no query thread")?;
        latencies.sort_by(f64::total_cmp);
        result.qps_one = count as f64 / query_for.as_secs_f64();
        result.p50_us = quantile(&latencies, 0.50);
        result.p99_us = quantile(&latencies, 0.99);
        let concurrent = query_threads(&socket, CONCURRENT_CLIENTS, query_for).await?;
        let total: usize = concurrent.iter().map(|(c, _)| c).sum();
        result.qps_four = total as f64 / query_for.as_secs_f64();
        Ok(())
    }
    .await;

    // A graceful stop (SIGTERM) lets it leave; then it is killed if it lingers.
    if let Some(id) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(id as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    outcome
}

/// Runs `clients` query loops at once, each on a thread of its own with its own runtime, so
/// they do not queue behind the N-1 in-process agents on this process's runtime.
async fn query_threads(
    socket: &Path,
    clients: usize,
    how_long: Duration,
) -> anyhow::Result<Vec<(usize, Vec<f64>)>> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || -> anyhow::Result<(usize, Vec<f64>)> {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(query_loop(&socket, how_long))
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a query thread panicked"))?
            })
            .collect()
    })
    .await?
}

/// `status` on one kept connection, back to back, for `how_long`: the count and each
/// round trip in microseconds.
async fn query_loop(socket: &Path, how_long: Duration) -> anyhow::Result<(usize, Vec<f64>)> {
    let mut client = Client::connect(socket).await?;
    let mut latencies = Vec::new();
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let asked = Instant::now();
        let response =
            tokio::time::timeout(Duration::from_secs(5), client.call(&Request::Status)).await??;
        anyhow::ensure!(
            matches!(response, Response::Status { .. }),
            "status answered {response:?}"
        );
        latencies.push(asked.elapsed().as_secs_f64() * 1e6);
    }
    Ok((latencies.len(), latencies))
}
