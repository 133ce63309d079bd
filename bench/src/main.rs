//! `chorus-bench`: chorus (over QUIC and over UDP) against plain chitchat and foca (SWIM),
//! N nodes in one process on 127.0.0.1, one system at a time.
//!
//! Each run of one system at one size is a child process (this binary with `--child`), so
//! CPU time and RSS belong to that system alone, nothing lingers into the next run, and a run
//! that overstays its bound is killed and reported instead of hanging the benchmark.
//!
//! # Layout
//! - [`scenario`]: the phases every run goes through, and the [`scenario::Cluster`] trait.
//! - [`chorus`], [`plain`], [`swim`]: one cluster per system.
//! - [`real`]: one real `chorus agent` process in a cluster of N.
//! - [`measure`]: `/proc` readers, ports, statistics.
//! - [`report`]: tables and ratios.

mod chorus;
mod measure;
mod plain;
mod real;
mod report;
mod scenario;
mod swim;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::chorus::{ChorusCluster, ChorusOptions, Wire};
use crate::plain::PlainCluster;
use crate::real::RealResult;
use crate::scenario::{Cluster, RunResult, Timings};
use crate::swim::SwimCluster;

/// Prefix of the line a child prints its result on.
const RESULT_PREFIX: &str = "RESULT ";
/// chitchat's own default gossip interval.
const CHITCHAT_DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum System {
    ChorusQuic,
    ChorusUdp,
    Chitchat,
    Foca,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::ChorusQuic => "chorus-quic",
            System::ChorusUdp => "chorus-udp",
            System::Chitchat => "chitchat",
            System::Foca => "foca",
        }
    }
}

/// Benchmark chorus against plain chitchat and foca: N in-process nodes on 127.0.0.1.
#[derive(Parser, Debug)]
#[command(name = "chorus-bench")]
struct Args {
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    nodes: Vec<usize>,
    /// Runs per system and size; the tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// CI mode: N = 5, one run, windows too short to mean much (crash detection gets 2 s):
    /// proves the command works (overrides --nodes, --runs, --steady).
    #[arg(long)]
    quick: bool,
    /// Steady window (traffic, CPU, false failures).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Systems to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chorus-quic,chorus-udp,chitchat,foca"
    )]
    systems: Vec<System>,
    /// Gossip interval of chorus and chitchat [default: chorus's own default for chorus,
    /// chitchat's 1s for chitchat].
    #[arg(long, value_parser = humantime::parse_duration)]
    gossip_interval: Option<Duration>,
    /// Also run one real `chorus agent` process in a cluster of each size (RSS, socket speed).
    #[arg(long)]
    real_agent: bool,
    /// The `chorus` binary for --real-agent [default: next to this binary].
    #[arg(long)]
    chorus_bin: Option<PathBuf>,
    /// Also write the tables (markdown) and the raw results (`.json` beside it) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: run one system once and print its result.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// What a child process is asked to do.
#[derive(Debug, Serialize, Deserialize)]
struct ChildSpec {
    system: Option<System>,
    /// Measure one real agent process instead of a system.
    real_agent: Option<PathBuf>,
    n: usize,
    run: usize,
    timings: Timings,
    gossip_interval: Option<Duration>,
}

fn timings(args: &Args, n: usize) -> Timings {
    if args.quick {
        Timings {
            converge: Duration::from_secs(15),
            settle: Duration::from_millis(200),
            steady: Duration::from_secs(1),
            value: Duration::from_secs(2),
            detect: Duration::from_secs(2),
            poll: Duration::from_millis(50),
        }
    } else {
        Timings {
            converge: Duration::from_secs(30) + Duration::from_millis(500) * n as u32,
            settle: Duration::from_secs(5),
            steady: args.steady,
            value: Duration::from_secs(20),
            detect: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

impl Timings {
    /// Longest a child may live: every phase's bound plus room to start and stop.
    fn bound(&self) -> Duration {
        self.converge
            + self.settle
            + self.steady
            + self.value
            + self.detect
            + Duration::from_secs(60)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Before any thread exists: a network namespace is per thread.
    let isolated = args.child.is_some() && measure::isolate_network();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(spec) = args.child.take() {
        let spec: ChildSpec = serde_json::from_str(&spec).context("bad --child spec")?;
        let line = runtime.block_on(child(spec, isolated))?;
        println!("{RESULT_PREFIX}{line}");
        // Whatever a stopped node left behind is not waited for.
        runtime.shutdown_timeout(Duration::from_secs(2));
        return Ok(());
    }
    if args.quick {
        args.nodes = vec![5];
        args.runs = 1;
    }
    runtime.block_on(parent(args))
}

/// Runs every (size, run, system) in its own process, one after another, and reports.
async fn parent(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let header = header(&args);
    eprintln!("{header}");
    let exe = std::env::current_exe()?;
    let mut results: Vec<RunResult> = Vec::new();
    for &n in &args.nodes {
        anyhow::ensure!(n >= 3, "--nodes: each size must be at least 3");
        for run in 1..=args.runs {
            for &system in &args.systems {
                let spec = ChildSpec {
                    system: Some(system),
                    real_agent: None,
                    n,
                    run,
                    timings: timings(&args, n),
                    gossip_interval: args.gossip_interval,
                };
                eprintln!("{} N={n} run {run}/{}", system.name(), args.runs);
                let result = match run_child(&exe, &spec).await {
                    Ok(line) => serde_json::from_str(&line).context("bad child result")?,
                    Err(e) => RunResult {
                        system: system.name().into(),
                        n,
                        error: Some(format!("{e:#}")),
                        ..RunResult::default()
                    },
                };
                if let Some(e) = &result.error {
                    eprintln!("  failed: {e}");
                }
                results.push(result);
            }
        }
    }
    let mut real_results: Vec<RealResult> = Vec::new();
    if args.real_agent {
        let binary = args.chorus_bin.clone().unwrap_or_else(real::default_binary);
        for &n in &args.nodes {
            let spec = ChildSpec {
                system: None,
                real_agent: Some(binary.clone()),
                n,
                run: 1,
                timings: timings(&args, n),
                gossip_interval: args.gossip_interval,
            };
            eprintln!("real agent N={n}");
            real_results.push(match run_child(&exe, &spec).await {
                Ok(line) => serde_json::from_str(&line).context("bad child result")?,
                Err(e) => RealResult {
                    n,
                    error: Some(format!("{e:#}")),
                    ..RealResult::default()
                },
            });
        }
    }

    let systems: Vec<String> = args.systems.iter().map(|s| s.name().to_string()).collect();
    let mut text = format!(
        "{header}\n{}",
        report::tables(&results, &args.nodes, &systems)
    );
    if !real_results.is_empty() {
        text.push_str(&report::real_table(&real_results));
    }
    text.push_str(&format!(
        "\nTotal benchmark time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    ));
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        let raw = serde_json::json!({ "runs": results, "real_agent": real_results });
        std::fs::write(
            path.with_extension("json"),
            serde_json::to_string_pretty(&raw)?,
        )?;
    }
    Ok(())
}

/// Starts this binary on one spec, bounded in time; returns its result line.
async fn run_child(exe: &std::path::Path, spec: &ChildSpec) -> anyhow::Result<String> {
    let bound = spec.timings.bound();
    let mut child = tokio::process::Command::new(exe)
        .arg("--child")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no child stdout")?;
    let mut progress = None;
    let read = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut found = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(RESULT_PREFIX) {
                found = Some(rest.to_string());
            } else if let Some(rest) = line.strip_prefix(scenario::PROGRESS_PREFIX) {
                progress = serde_json::from_str::<scenario::Progress>(rest).ok();
            }
        }
        let status = child.wait().await?;
        found.with_context(|| format!("the run ended ({status}) without a result"))
    };
    match tokio::time::timeout(bound, read).await {
        Ok(result) => result,
        Err(_) => {
            let _ = child.kill().await;
            let how_far = progress.map(|p| format!(" {}", p.describe()));
            anyhow::bail!(
                "did not finish within {bound:?}: stopped{}",
                how_far.unwrap_or_default()
            )
        }
    }
}

/// One system, one run, in this (child) process.
async fn child(spec: ChildSpec, isolated: bool) -> anyhow::Result<String> {
    if let Some(binary) = &spec.real_agent {
        let query_for = if spec.timings.steady < Duration::from_secs(10) {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let result = real::run(
            spec.n,
            binary,
            spec.gossip_interval,
            &spec.timings,
            query_for,
        )
        .await;
        return Ok(serde_json::to_string(&result)?);
    }
    let system = spec.system.context("no system given")?;
    let mut result = RunResult {
        system: system.name().into(),
        n: spec.n,
        rss_kib_base: measure::rss_kib("self"),
        loopback_isolated: isolated,
        ..RunResult::default()
    };
    let chitchat_interval = spec.gossip_interval.unwrap_or(CHITCHAT_DEFAULT_INTERVAL);
    let outcome = match system {
        System::ChorusQuic | System::ChorusUdp => {
            let wire = if system == System::ChorusQuic {
                Wire::Quic
            } else {
                Wire::Udp
            };
            let options = ChorusOptions {
                wire,
                gossip_interval: spec.gossip_interval,
            };
            measure_cluster(
                ChorusCluster::start(spec.n, &options).await,
                &spec,
                &mut result,
            )
            .await
        }
        System::Chitchat => {
            measure_cluster(
                PlainCluster::start(spec.n, chitchat_interval).await,
                &spec,
                &mut result,
            )
            .await
        }
        System::Foca => measure_cluster(SwimCluster::start(spec.n).await, &spec, &mut result).await,
    };
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
    }
    Ok(serde_json::to_string(&result)?)
}

async fn measure_cluster<C: Cluster>(
    started: anyhow::Result<C>,
    spec: &ChildSpec,
    result: &mut RunResult,
) -> anyhow::Result<()> {
    let mut cluster = started?;
    let launched = Instant::now();
    scenario::run(&mut cluster, launched, &spec.timings, result).await;
    cluster.shutdown().await;
    Ok(())
}

/// The command, the machine and the settings, as the report's first lines.
fn header(args: &Args) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let command: Vec<String> = std::env::args().collect();
    let chorus_interval = args.gossip_interval.map_or_else(
        || {
            format!(
                "{:?} (chorus default)",
                chorus_agent::config::DEFAULT_GOSSIP_INTERVAL
            )
        },
        |d| format!("{d:?}"),
    );
    let chitchat_interval = args.gossip_interval.unwrap_or(CHITCHAT_DEFAULT_INTERVAL);
    let t = timings(args, args.nodes.first().copied().unwrap_or(10));
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "## chorus-bench\n\n- command: `{}`\n- build: {}, commit {commit}\n- machine: {cores} cores, {cpu}\n\
         - gossip interval: chorus {chorus_interval}, chitchat {chitchat_interval:?}; foca \
         Config::new_lan(N) (1 s probe period)\n- sizes {:?}, {} run(s) each; steady window \
         {:?} after {:?} settling; polls every {:?}",
        command.join(" "),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        args.nodes,
        args.runs,
        t.steady,
        t.settle,
        t.poll,
    )
}
