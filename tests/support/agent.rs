//! Agents in this process: [`TestAgent`] runs `chorus_agent::run` on a tokio task, in its own
//! temporary directory (data dir + socket), over a transport the test picks ([`Net`]).
//! [`Cluster`] starts several and waits for what they say about each other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::{ChannelTransport, Transport};
use chorus_agent::api::{Request, Response, StatusReport, WatchEvent};
use chorus_agent::client::{self, Client};
use chorus_agent::{AgentError, Exit, Settings, Stop, TransportChoice};
use chorus_core::alert::Alert;
use chorus_core::member::{Member, Status};
use chorus_net::{
    CountingUdpTransport, FaultController, FaultyTransport, NetCounters, PeerChannel,
};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{free_addr, init_logging, wait_until, GOSSIP_INTERVAL, SLOW};

/// The app version every test agent runs unless told otherwise.
pub const APP_VERSION: &str = "1.0";

/// How the agents of a test reach each other.
#[derive(Clone)]
pub enum Net {
    /// chitchat's in-memory transport: every message still goes through the codec; nothing
    /// touches the network. It carries no Raft, so its agents never elect a leader.
    Channel(ChannelTransport),
    /// The agent's own plain UDP transport (`--transport udp`): real loopback datagrams, and
    /// counters in `status` (`net`).
    Udp,
    /// What a deployment runs: the agent builds its transport from its configuration, QUIC
    /// with mutual TLS, with certificates minted from this cluster key.
    Quic(Arc<ClusterKey>),
    /// Each agent's own plain UDP transport (gossip and Raft on loopback) behind chorus-net's
    /// fault injector: the test partitions, isolates, drops and delays messages, Raft's as
    /// well as gossip's, through the [`FaultController`] it keeps.
    Faulty(FaultController),
}

/// A cluster CA (as `chorus keygen` writes it) in a temporary directory.
pub struct ClusterKey {
    pub path: PathBuf,
    _dir: TempDir,
}

impl ClusterKey {
    pub fn generate(cluster: &str) -> ClusterKey {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("cluster.pem");
        let ca = chorus_net::ClusterCa::generate(cluster).expect("generate a cluster CA");
        std::fs::write(&path, ca.to_pem()).expect("write the cluster key");
        ClusterKey { path, _dir: dir }
    }
}

impl Net {
    /// Loopback UDP, gossip and Raft (an in-memory transport carries no Raft).
    pub fn channel() -> Net {
        Net::Udp
    }

    pub fn quic(cluster: &str) -> Net {
        Net::Quic(Arc::new(ClusterKey::generate(cluster)))
    }

    /// An in-memory network whose faults `controller` steers.
    pub fn faulty(controller: &FaultController) -> Net {
        Net::Faulty(controller.clone())
    }

    fn transport(&self) -> TransportChoice {
        match self {
            Net::Channel(t) => TransportChoice::Custom(Arc::new(t.clone()), None),
            Net::Faulty(controller) => {
                let counters = NetCounters::new();
                let (channel, inbox) = PeerChannel::new(counters.clone());
                let udp = CountingUdpTransport::new(counters).with_peer_channel(channel.clone());
                let faulty = FaultyTransport::new(udp, controller.clone());
                TransportChoice::Custom(Arc::new(faulty), Some((channel, inbox)))
            }
            Net::Udp | Net::Quic(_) => TransportChoice::FromConfig,
        }
    }

    /// Whether `addr` can be opened: a stopped agent's gossip socket is released by its
    /// (aborted) gossip task a moment after `run` returns.
    async fn can_open(&self, addr: SocketAddr) -> Result<(), String> {
        match self {
            Net::Channel(t) => t.open(addr).await.map(drop).map_err(|e| e.to_string()),
            Net::Udp | Net::Quic(_) | Net::Faulty(_) => std::net::UdpSocket::bind(addr)
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Everything needed to start (and restart) one agent. It owns the temporary directory, so
/// a restarted agent finds its data dir again.
pub struct AgentSpec {
    pub node_id: String,
    pub cluster: String,
    pub addr: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub app_version: String,
    pub net: Net,
    /// Where to serve Prometheus metrics (`--metrics-addr`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// `--expect`: how many nodes start the Raft cluster together.
    pub expect: Option<usize>,
    dir: Arc<TempDir>,
}

impl AgentSpec {
    pub fn new(node_id: &str, cluster: &str, net: &Net) -> AgentSpec {
        let dir = tempfile::Builder::new()
            .prefix("chorus-test-")
            .tempdir()
            .expect("create a temporary directory");
        AgentSpec {
            node_id: node_id.to_string(),
            cluster: cluster.to_string(),
            addr: free_addr(),
            seeds: Vec::new(),
            app_version: APP_VERSION.to_string(),
            net: net.clone(),
            metrics_addr: None,
            expect: None,
            dir: Arc::new(dir),
        }
    }

    pub fn seed(mut self, addr: SocketAddr) -> AgentSpec {
        self.seeds.push(addr);
        self
    }

    /// `--expect N`: the first `N` agents start the Raft cluster together, voters (an odd number, up to
    /// five), as the README's setup has it.
    pub fn expect(mut self, n: usize) -> AgentSpec {
        self.expect = Some(n);
        self
    }

    pub fn app_version(mut self, version: &str) -> AgentSpec {
        self.app_version = version.to_string();
        self
    }

    /// Serves Prometheus metrics on `addr` (`--metrics-addr`).
    pub fn metrics_addr(mut self, addr: SocketAddr) -> AgentSpec {
        self.metrics_addr = Some(addr);
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn config(&self) -> chorus_agent::AgentConfig {
        Settings {
            node_id: Some(self.node_id.clone()),
            cluster: Some(self.cluster.clone()),
            listen: Some(self.addr.to_string()),
            seeds: self.seeds.iter().map(|s| s.to_string()).collect(),
            app_version: Some(self.app_version.clone()),
            data_dir: Some(self.dir.path().join("data")),
            socket: Some(self.socket()),
            gossip_interval: Some(format!("{}ms", GOSSIP_INTERVAL.as_millis())),
            cluster_key: match &self.net {
                Net::Quic(key) => Some(key.path.clone()),
                Net::Channel(_) | Net::Udp | Net::Faulty(_) => None,
            },
            transport: match &self.net {
                Net::Udp => Some("udp".into()),
                Net::Channel(_) | Net::Quic(_) | Net::Faulty(_) => None,
            },
            metrics_addr: self.metrics_addr.map(|a| a.to_string()),
            expect: self.expect,
            ..Settings::default()
        }
        .validate()
        .expect("test settings are valid")
    }
}

/// A running in-process agent. Dropping it crashes the agent (as `kill -9` would).
pub struct TestAgent {
    pub spec: AgentSpec,
    stop: Option<oneshot::Sender<Stop>>,
    task: JoinHandle<Result<Exit, AgentError>>,
}

impl TestAgent {
    /// Starts the agent and returns once its socket answers.
    pub async fn start(spec: AgentSpec) -> TestAgent {
        let transport = spec.net.transport();
        TestAgent::start_with(spec, transport).await
    }

    /// Starts the agent over `transport` instead of its spec's network (a test's own
    /// wrapper); the spec's network still says when its address is free.
    pub async fn start_on(spec: AgentSpec, transport: Arc<dyn Transport>) -> TestAgent {
        TestAgent::start_with(spec, TransportChoice::Custom(transport, None)).await
    }

    async fn start_with(spec: AgentSpec, transport: TransportChoice) -> TestAgent {
        init_logging();
        wait_until(
            &format!("{}'s gossip address {} is free", spec.node_id, spec.addr),
            Duration::from_secs(10),
            || spec.net.can_open(spec.addr),
        )
        .await;
        let (stop, stopped) = oneshot::channel();
        // A dropped sender (a test that failed half way) crashes the agent.
        let shutdown = async move { stopped.await.unwrap_or(Stop::Crash) };
        let task = tokio::spawn(chorus_agent::run(spec.config(), transport, shutdown));
        let agent = TestAgent {
            spec,
            stop: Some(stop),
            task,
        };
        let socket = agent.socket();
        wait_until(
            &format!("{} serves {}", agent.node_id(), socket.display()),
            Duration::from_secs(10),
            || async {
                if agent.task.is_finished() {
                    panic!("agent {} ended at start", agent.node_id());
                }
                status(&socket).await.map(drop)
            },
        )
        .await;
        agent
    }

    pub fn node_id(&self) -> &str {
        &self.spec.node_id
    }

    pub fn addr(&self) -> SocketAddr {
        self.spec.addr
    }

    pub fn socket(&self) -> PathBuf {
        self.spec.socket()
    }

    /// Whether `run` is still running (it ends on a stop, a leave, or a dead gossip loop).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Waits for an agent that ended by itself (see [`TestAgent::is_running`]) and returns
    /// how it ended.
    pub async fn join(mut self) -> Result<Exit, AgentError> {
        let node = self.spec.node_id.clone();
        tokio::time::timeout(SLOW, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("{node} did not end within {SLOW:?}"))
            .unwrap_or_else(|e| panic!("{node}'s task failed: {e}"))
    }

    /// Stops the agent and returns how it ended, with its spec for a restart.
    pub async fn stop(mut self, how: Stop) -> (Exit, AgentSpec) {
        let _ = self.stop.take().expect("stopped once").send(how);
        let node = self.spec.node_id.clone();
        let ended = tokio::time::timeout(SLOW, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("{node} did not stop within {SLOW:?}"))
            .unwrap_or_else(|e| panic!("{node}'s task failed: {e}"))
            .unwrap_or_else(|e| panic!("{node} ended with an error: {e}"));
        (ended, self.spec)
    }
}

/// `members` from the agent at `socket`.
pub async fn members(socket: &Path) -> Result<Vec<Member>, String> {
    match client::call(socket, &Request::Members).await {
        Ok(Response::Members { members }) => Ok(members),
        Ok(other) => Err(format!("unexpected answer to members: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `status` from the agent at `socket`.
pub async fn status(socket: &Path) -> Result<StatusReport, String> {
    match client::call(socket, &Request::Status).await {
        Ok(Response::Status { status }) => Ok(status),
        Ok(other) => Err(format!("unexpected answer to status: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `node`'s row in the members of the agent at `socket`.
pub async fn member(socket: &Path, node: &str) -> Result<Member, String> {
    members(socket)
        .await?
        .into_iter()
        .find(|m| m.node_id == node)
        .ok_or_else(|| format!("{node} is not a member yet"))
}

/// A `watch` subscription: every event after this returns is delivered.
pub async fn watch(socket: &Path) -> Client {
    let mut client = Client::connect(socket).await.expect("connect to watch");
    match client.call(&Request::Watch).await {
        Ok(Response::Watching) => client,
        other => panic!("unexpected answer to watch: {other:?}"),
    }
}

/// Reads watch events until one matches, failing the test after `within`.
pub async fn next_event_matching(
    watcher: &mut Client,
    within: Duration,
    what: &str,
    matches: impl Fn(&Alert) -> bool,
) -> WatchEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(within, async {
        loop {
            match watcher.next_response().await {
                Ok(Response::Event { event }) if matches(&event.alert) => return event,
                Ok(other) => seen.push(format!("{other:?}")),
                Err(e) => panic!("watch ended while waiting for {what}: {e}; saw {seen:?}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} event within {within:?}"))
}

/// Several agents of one cluster, `n1`..`nN`, all seeded with `n1`.
pub struct Cluster {
    pub name: String,
    pub net: Net,
    pub agents: Vec<TestAgent>,
}

impl Cluster {
    /// Starts `n` agents over an in-memory transport. `name` is the cluster name; give each
    /// test its own (agents of other clusters are refused, so tests cannot disturb each other).
    pub async fn start(name: &str, n: usize) -> Cluster {
        Cluster::start_on(name, n, Net::channel()).await
    }

    pub async fn start_on(name: &str, n: usize, net: Net) -> Cluster {
        let mut cluster = Cluster {
            name: name.to_string(),
            net,
            agents: Vec::new(),
        };
        for i in 1..=n {
            let spec = cluster.spec(&format!("n{i}")).expect(n);
            cluster.agents.push(TestAgent::start(spec).await);
        }
        cluster
    }

    /// A spec for one more agent of this cluster, seeded with the first agent.
    pub fn spec(&self, node_id: &str) -> AgentSpec {
        let spec = AgentSpec::new(node_id, &self.name, &self.net);
        match self.agents.first() {
            Some(first) => spec.seed(first.addr()),
            None => spec,
        }
    }

    pub fn agent(&self, node_id: &str) -> &TestAgent {
        self.agents
            .iter()
            .find(|a| a.node_id() == node_id)
            .unwrap_or_else(|| panic!("no agent {node_id}"))
    }

    /// Takes an agent out of the cluster (to stop it).
    pub fn take(&mut self, node_id: &str) -> TestAgent {
        let i = self
            .agents
            .iter()
            .position(|a| a.node_id() == node_id)
            .unwrap_or_else(|| panic!("no agent {node_id}"));
        self.agents.remove(i)
    }

    /// Waits until every agent's `members` shows every agent `alive`, and its `status` counts
    /// them all alive.
    pub async fn wait_converged(&self) {
        let n = self.agents.len();
        let what = format!("all {n} agents of {} see each other alive", self.name);
        wait_until(&what, SLOW, || async {
            for a in &self.agents {
                let members = members(&a.socket()).await?;
                for b in &self.agents {
                    let row = members.iter().find(|m| m.node_id == b.node_id());
                    match row.map(|m| m.status) {
                        Some(Status::Alive) => {}
                        other => {
                            return Err(format!(
                                "{} sees {} as {other:?}",
                                a.node_id(),
                                b.node_id()
                            ))
                        }
                    }
                }
                let status = status(&a.socket()).await?;
                if status.node.raft.cluster.is_empty() {
                    return Err(format!("{} is not in the Raft cluster yet", a.node_id()));
                }
                if status.node.alive != n {
                    return Err(format!(
                        "{} counts {} alive",
                        a.node_id(),
                        status.node.alive
                    ));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Waits until every agent in the cluster shows `node` with `status`; returns the rows.
    pub async fn wait_all_see(&self, node: &str, wanted: Status) -> Vec<Member> {
        let what = format!("every agent of {} shows {node} {wanted}", self.name);
        wait_until(&what, SLOW, || async {
            let mut rows = Vec::new();
            for a in &self.agents {
                let row = member(&a.socket(), node).await?;
                if row.status != wanted {
                    return Err(format!("{} shows {node} {}", a.node_id(), row.status));
                }
                rows.push(row);
            }
            Ok(rows)
        })
        .await
    }
}
