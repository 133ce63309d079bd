//! chorus: N `chorus_agent::run` agents in this process, over QUIC with mutual TLS (a cluster
//! CA made here) or over chorus's plain UDP transport. Everything is asked through each
//! agent's Unix socket, as an operator would: `status`, `members`, `load`, `watch`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_agent::api::{Request, Response};
use chorus_agent::client::Client;
use chorus_agent::{AgentConfig, AgentError, Exit, Settings, Stop, TransportChoice};
use chorus_core::alert::Alert;
use chorus_core::member::{Member, Status};
use futures_util::future::join_all;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::measure;
use crate::scenario::{Cluster, NetTotals, Probe};

/// Longest a single socket request may take before the agent counts as not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an agent may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Quic,
    Udp,
}

/// How to start the agents.
#[derive(Clone, Debug)]
pub struct ChorusOptions {
    pub wire: Wire,
    /// `None`: chorus's own default.
    pub gossip_interval: Option<Duration>,
}

struct Agent {
    node_id: String,
    socket: PathBuf,
    stop: Option<oneshot::Sender<Stop>>,
    task: Option<JoinHandle<Result<Exit, AgentError>>>,
    client: Option<Client>,
}

pub struct ChorusCluster {
    agents: Vec<Agent>,
    addrs: Vec<SocketAddr>,
    key: Option<PathBuf>,
    failures: Arc<AtomicU64>,
    watchers: Vec<JoinHandle<()>>,
    /// Holds every data dir, socket and the cluster key until the cluster is dropped.
    _dir: TempDir,
}

/// Settings of agent `i`: chorus's defaults but for the addresses, directories and wire.
fn settings(
    i: usize,
    addrs: &[SocketAddr],
    dir: &std::path::Path,
    options: &ChorusOptions,
    cluster_key: Option<&std::path::Path>,
) -> Settings {
    let node_dir = dir.join(format!("n{i:03}"));
    Settings {
        node_id: Some(node_id(i)),
        listen: Some(addrs[i].to_string()),
        seeds: measure::seeds_for(i, addrs)
            .iter()
            .map(ToString::to_string)
            .collect(),
        app_version: Some("1.0".into()),
        data_dir: Some(node_dir.join("data")),
        socket: Some(node_dir.join("agent.sock")),
        gossip_interval: options
            .gossip_interval
            .map(|d| format!("{}ms", d.as_millis())),
        transport: Some(
            match options.wire {
                Wire::Quic => "quic",
                Wire::Udp => "udp",
            }
            .into(),
        ),
        cluster_key: cluster_key.map(std::path::Path::to_path_buf),
        insecure: cluster_key.is_none().then_some(true),
        ..Settings::default()
    }
}

fn node_id(i: usize) -> String {
    format!("n{i:03}")
}

/// Writes a fresh cluster CA (as `chorus keygen` does) into `dir`.
fn write_cluster_key(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("cluster.pem");
    std::fs::write(&path, chorus_net::ClusterCa::generate("chorus")?.to_pem())?;
    Ok(path)
}

impl ChorusCluster {
    /// Launches `n` agents; returns when the last one has been launched (not yet converged).
    pub async fn start(n: usize, options: &ChorusOptions) -> anyhow::Result<ChorusCluster> {
        let dir = tempfile::Builder::new().prefix("chorus-bench-").tempdir()?;
        let key = match options.wire {
            Wire::Quic => Some(write_cluster_key(dir.path())?),
            Wire::Udp => None,
        };
        let addrs = measure::free_addrs(n)?;
        let mut agents = Vec::with_capacity(n);
        let interval = options
            .gossip_interval
            .unwrap_or(chorus_agent::config::DEFAULT_GOSSIP_INTERVAL);
        let launches = measure::Launches::over(interval, n);
        for i in 0..n {
            launches.turn(i).await;
            let config: AgentConfig =
                settings(i, &addrs, dir.path(), options, key.as_deref()).validate()?;
            let socket = config.socket.clone();
            let (stop, stopped) = oneshot::channel();
            let shutdown = async move { stopped.await.unwrap_or(Stop::Crash) };
            let task = tokio::spawn(chorus_agent::run(
                config,
                TransportChoice::FromConfig,
                shutdown,
            ));
            agents.push(Agent {
                node_id: node_id(i),
                socket,
                stop: Some(stop),
                task: Some(task),
                client: None,
            });
        }
        Ok(ChorusCluster {
            agents,
            addrs,
            key,
            failures: Arc::new(AtomicU64::new(0)),
            watchers: Vec::new(),
            _dir: dir,
        })
    }

    /// The gossip addresses of the agents (for a process that joins them).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The cluster CA file (QUIC only).
    pub fn cluster_key(&self) -> Option<&std::path::Path> {
        self.key.as_deref()
    }
}

impl Agent {
    /// One request on the agent's kept connection (reconnecting once if it was lost).
    async fn call(&mut self, request: &Request) -> Option<Response> {
        // A stopped agent answers nothing.
        self.task.as_ref()?;
        for _ in 0..2 {
            if self.client.is_none() {
                self.client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(&self.socket))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            // Taken out while the call runs: a caller that gives up on this future (a phase
            // deadline) drops the connection with it, so no late answer is read as the answer
            // to the next request.
            let mut client = self.client.take()?;
            if let Ok(Ok(response)) = tokio::time::timeout(CALL_TIMEOUT, client.call(request)).await
            {
                self.client = Some(client);
                return Some(response);
            }
        }
        None
    }

    async fn up_count(&mut self) -> Option<usize> {
        match self.call(&Request::Status).await? {
            Response::Status { status } => Some(status.node.alive),
            _ => None,
        }
    }

    async fn members(&mut self) -> Option<Vec<Member>> {
        match self.call(&Request::Members).await? {
            Response::Members { members } => Some(members),
            _ => None,
        }
    }

    /// Answers a probe; `status` first, `members` only when the cheap count allows it.
    async fn check(&mut self, probe: &Probe, n: usize, ids: &[String]) -> bool {
        match probe {
            Probe::AllUp => self.up_count().await == Some(n),
            Probe::AllAlive => {
                self.up_count().await == Some(n)
                    && self.members().await.is_some_and(|m| {
                        m.iter().filter(|m| m.status == Status::Alive).count() == n
                    })
            }
            Probe::Dead(victim) => {
                self.up_count().await.is_some_and(|up| up < n)
                    && self.members().await.is_some_and(|m| {
                        m.iter()
                            .any(|m| m.node_id == ids[*victim] && m.status == Status::Dead)
                    })
            }
            Probe::Value { origin, value } => self.members().await.is_some_and(|m| {
                m.iter()
                    .any(|m| m.node_id == ids[*origin] && m.load.sessions == *value)
            }),
        }
    }

    async fn stop(&mut self, how: Stop) {
        self.client = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Cluster for ChorusCluster {
    fn size(&self) -> usize {
        self.agents.len()
    }

    async fn check(&mut self, observers: &[usize], probe: &Probe) -> Vec<bool> {
        let n = self.agents.len();
        let ids: Vec<String> = self.agents.iter().map(|a| a.node_id.clone()).collect();
        let mut asked: Vec<(usize, &mut Agent)> = self
            .agents
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| observers.contains(i))
            .collect();
        let answers = join_all(asked.iter_mut().map(|(i, a)| {
            let ids = &ids;
            let i = *i;
            async move { (i, a.check(probe, n, ids).await) }
        }))
        .await;
        observers
            .iter()
            .map(|o| answers.iter().any(|(i, ok)| i == o && *ok))
            .collect()
    }

    async fn set_value(&mut self, origin: usize, value: u64) -> anyhow::Result<()> {
        match self.agents[origin]
            .call(&Request::Load { sessions: value })
            .await
        {
            Some(Response::Done { .. }) => Ok(()),
            other => anyhow::bail!("`load --sessions {value}` answered {other:?}"),
        }
    }

    async fn kill(&mut self, node: usize) {
        self.agents[node].stop(Stop::Crash).await;
    }

    async fn net(&mut self) -> NetTotals {
        let reports = join_all(self.agents.iter_mut().map(|a| a.call(&Request::Status))).await;
        let mut total = NetTotals::default();
        for report in reports.into_iter().flatten() {
            let Response::Status { status } = report else {
                continue;
            };
            let get = |k: &str| status.net.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            total.bytes_sent += get("bytes_sent");
            total.bytes_received += get("bytes_received");
            total.messages_sent += get("messages_sent");
            total.messages_received += get("messages_received");
            total.connections_opened += get("connections_opened");
            total.raft_bytes_sent += get("raft_bytes_sent");
            total.raft_messages_sent += get("raft_messages_sent");
        }
        total
    }

    async fn watch_failures(&mut self) {
        self.failures.store(0, Ordering::Relaxed);
        for agent in &self.agents {
            let Ok(Ok(mut client)) =
                tokio::time::timeout(CALL_TIMEOUT, Client::connect(&agent.socket)).await
            else {
                continue;
            };
            if !matches!(client.call(&Request::Watch).await, Ok(Response::Watching)) {
                continue;
            }
            let failures = self.failures.clone();
            self.watchers.push(tokio::spawn(async move {
                while let Ok(response) = client.next_response().await {
                    let Response::Event { event } = response else {
                        continue;
                    };
                    let lost = match event.alert {
                        Alert::NodeFailed { .. } => 1,
                        Alert::SplitBrainSuspected { lost, .. } => lost.len() as u64,
                        _ => 0,
                    };
                    failures.fetch_add(lost, Ordering::Relaxed);
                }
            }));
        }
    }

    async fn failures(&mut self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    async fn shutdown(mut self) {
        for w in self.watchers.drain(..) {
            w.abort();
        }
        let started = Instant::now();
        join_all(self.agents.iter_mut().map(|a| a.stop(Stop::Crash))).await;
        if started.elapsed() > STOP_TIMEOUT {
            eprintln!("  (chorus agents took {:?} to stop)", started.elapsed());
        }
    }
}
