//! The agent: one task that owns the core [`Node`], feeds it gossip, load and socket requests,
//! and carries out its effects. It decides nothing itself.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport;
use chitchat::{spawn_chitchat, ChitchatHandle};
use chorus_core::alert::Alert;
use chorus_core::consensus::{RaftTiming, Sender};
use chorus_core::fingerprint::Fingerprint;
use chorus_core::identity::{self, Holders};
use chorus_core::load::LoadPolicy;
use chorus_core::member::{NodeState, Published};
use chorus_core::node::{Effect, Node, NodeConfig};
use chorus_core::roster::Roster;
use chorus_core::PROTOCOL_VERSION;
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc};

use crate::api::{Response, StatusReport, WatchEvent};
use crate::config::AgentConfig;
use crate::datadir::{DataDir, DataDirError, PersistedState};
use crate::gossip;
use crate::hooks;
use crate::logging::log_alert;
use crate::metrics::{self, Metrics};
use crate::observe::Observer;
use crate::publish::ViewPublisher;
use crate::raftdisk::RaftStore;
use crate::server::{self, ApiView, Input, ServerState};
use crate::sysload;
use crate::tasks::{GuardSettings, TaskRunner};
use chorus_net::{NetCounters, PeerChannel, PeerMessage, RefusalKind};

/// How often host load is sampled.
const LOAD_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Most a graceful stop waits for its `left` state to spread.
const MAX_LEAVE_WAIT: Duration = Duration::from_secs(5);
/// Pending socket requests; senders wait when it is full.
const INPUT_QUEUE: usize = 64;
/// Watch events buffered per slow client before it is told it fell behind.
const WATCH_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot read fingerprint file {path}: {source}")]
    FingerprintFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] server::ServerError),
    #[error("cannot start gossip on {addr}: {reason}")]
    Gossip { addr: SocketAddr, reason: String },
    #[error("the gossip loop stopped twice within a minute ({0}); the agent cannot go on without gossip")]
    GossipDied(String),
    #[error("cannot find an address to advertise: {0}; set --advertise")]
    Advertise(String),
    #[error("quorum lost and --panic-exit is set: exiting (cluster panic)")]
    Panic,
    #[error(
        "node id {node:?} is already held by a live agent at {}; this agent (at {ours}) \
         stops without joining: give it its own --node-id",
        held_at.map_or_else(|| "another address".to_string(), |a| a.to_string())
    )]
    NodeIdConflict {
        node: String,
        held_at: Option<SocketAddr>,
        ours: SocketAddr,
    },
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("cannot open the Raft log: {0}")]
    RaftLog(#[from] crate::raftlog::RaftLogError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A gossip loop that ends twice within this window stops the agent (exit code 4): a fault
/// that comes back at once is not one a restart fixes.
pub const GOSSIP_RESTART_WINDOW: Duration = Duration::from_secs(60);

/// How often `--insecure` reminds the operator.
const INSECURE_WARN_EVERY: Duration = Duration::from_secs(5 * 60);

/// How the caller asks the agent to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Publish `left`, let it spread, then stop (SIGTERM, SIGINT).
    Graceful,
    /// Stop at once without a word, as `kill -9` would: for in-process tests of failures.
    Crash,
}

/// How the agent ended when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `chorus leave`.
    Left,
    /// The shutdown future asked for a graceful stop (SIGTERM, SIGINT, a test).
    Shutdown,
    /// The shutdown future asked for a crash.
    Crashed,
}

/// Where a custom transport's Raft messages leave and arrive.
pub type PeerLink = (PeerChannel, mpsc::Receiver<PeerMessage>);

/// Which transport carries gossip.
pub enum TransportChoice {
    /// As the configuration says.
    FromConfig,
    /// Supplied by the caller (in-process tests, fault injection), with the channel its Raft
    /// messages travel on (`None`: no Raft traffic; such a node never joins a Raft cluster).
    Custom(Arc<dyn Transport>, Option<PeerLink>),
}

/// Runs an agent until `shutdown` completes or a client asks it to leave. A graceful stop and
/// a leave publish `left` and wait (bounded) for it to spread before returning.
pub async fn run(
    config: AgentConfig,
    transport: TransportChoice,
    shutdown: impl Future<Output = Stop>,
) -> Result<Exit, AgentError> {
    let started = now();
    let data_dir = DataDir::open(&config.data_dir)?;
    let persisted = data_dir.begin_generation(&config.node_id, unix_ms())?;
    let fingerprint = compute_fingerprint(&config)?;
    let advertise = match config.advertise {
        Some(a) => a,
        None => derive_advertise(config.listen, &config.seeds)?,
    };

    let (raft_store, raft_disk) = RaftStore::open(&config.data_dir)?;
    let (suspect_after, split_window) = NodeConfig::timings(config.gossip_interval);
    let node_config = NodeConfig {
        node_id: config.node_id.clone(),
        cluster: config.cluster.clone(),
        advertise_addr: advertise,
        fingerprint: fingerprint.clone(),
        policy: config.compat,
        suspect_after,
        expect: bootstrap_expect(&config, advertise),
        load: LoadPolicy::default(),
        split_window,
        reap_after: config.reap_after,
        raft_id: persisted.raft_id,
        voters: config.voters,
        raft_timing: RaftTiming::new(config.reap_after),
        seed: rand::random(),
    };
    let roster = Roster::from_entries(persisted.roster.clone());
    let mut seeds = config.seeds.clone();
    seeds.extend(
        roster
            .entries()
            .into_iter()
            .filter(|e| e.node_id != config.node_id)
            .map(|e| e.addr.to_string()),
    );
    let initial_state = persisted
        .state
        .filter(|s| *s != NodeState::Left)
        .unwrap_or_default();
    let node = Node::new(now(), node_config, roster, initial_state, &raft_disk);

    let mut initial_kvs = Published::identity_pairs(&fingerprint, unix_ms());
    let mut tags = config.tags.clone();
    let has_writable_task = config.tasks.iter().any(|t| t.requires_writable);
    if chorus_core::leader::must_not_lead(&tags, has_writable_task) {
        tags.insert(chorus_core::leader::LEADER_TAG.into(), "false".into());
    }
    for (k, v) in &tags {
        initial_kvs.push((Published::tag_key(k), v.clone()));
    }
    let chitchat_config = gossip::chitchat_config(
        &config.node_id,
        persisted.generation,
        advertise,
        config.listen,
        &config.cluster,
        seeds,
        config.gossip_interval,
    );
    let holders = Arc::new(RwLock::new(Holders::only(&config.node_id, advertise)));
    let (transport, counters, mut refusals, insecure, peer_channel, mut peer_messages) =
        match transport {
            TransportChoice::Custom(t, peers) => {
                let (channel, messages) = match peers {
                    Some((c, m)) => (Some(c), m),
                    None => (None, mpsc::channel(1).1),
                };
                (t, None, mpsc::channel(1).1, false, channel, messages)
            }
            TransportChoice::FromConfig => {
                let built =
                    crate::transport::build(&config, advertise, &fingerprint, holders.clone())?;
                (
                    built.transport,
                    Some(built.counters),
                    built.refusals,
                    built.insecure,
                    Some(built.peer_channel),
                    built.peer_messages,
                )
            }
        };
    if insecure {
        warn_insecure(&config);
    }
    let metrics = Arc::new(Metrics::new());
    let _metrics_task = match config.metrics_addr {
        Some(addr) => {
            let listener = metrics::bind(addr)
                .await
                .map_err(|source| AgentError::Metrics { addr, source })?;
            Some(AbortOnDrop(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
            ))))
        }
        None => None,
    };
    let chitchat = spawn_chitchat(chitchat_config, initial_kvs, transport.as_ref())
        .await
        .map_err(|e| AgentError::Gossip {
            addr: config.listen,
            reason: format!("{e:#}"),
        })?;

    let (listener, owner_uid) = server::bind(&config.socket, config.default_socket).await?;
    let (inputs_tx, mut inputs) = mpsc::channel(INPUT_QUEUE);
    let (events, _) = broadcast::channel(WATCH_BUFFER);
    let writable = config
        .tags
        .get(chorus_core::leader::READ_ONLY_TAG)
        .map(String::as_str)
        != Some("true");
    let mut agent = Running {
        observer: Observer::default(),
        publisher: ViewPublisher::new(started, persisted.generation, advertise),
        metrics,
        counters,
        tasks: TaskRunner::new(config.tasks.clone(), config.node_id.clone(), writable).with_guard(
            GuardSettings {
                program: config
                    .task_guard
                    .clone()
                    .unwrap_or_else(|| GuardSettings::default().program),
                ..GuardSettings::default()
            },
        ),
        on_split_brain: config.on_split_brain.clone(),
        panic_exit: config.panic_exit,
        panicked: false,
        node,
        holders,
        holders_revision: None,
        chitchat,
        transport,
        last_gossip_restart: None,
        persist_error: None,
        data_dir,
        persisted,
        raft_store,
        peer_channel,
        events: events.clone(),
        view: Arc::new(RwLock::new(Arc::new(ApiView {
            members: Arc::new([]),
            status: placeholder_status(),
        }))),
    };
    agent.step(now()).await;
    let _server_task = AbortOnDrop(tokio::spawn(server::serve(
        listener,
        ServerState {
            view: agent.view.clone(),
            events,
            inputs: inputs_tx,
            owner_uid,
            metrics: agent.metrics.clone(),
        },
    )));
    tracing::info!(
        node = %config.node_id, cluster = %config.cluster, addr = %advertise,
        generation = agent.persisted.generation, fingerprint = %fingerprint.digest,
        socket = %config.socket.display(), "chorus agent started"
    );
    // The socket serves from here on: what is left before READY=1 is a peer (crate::notify).
    let mut notifier = crate::notify::Notifier::from_env(&config, advertise, started);

    let tick_every =
        (config.gossip_interval / 2).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_load_sample: Option<Instant> = None;
    let mut last_insecure_warning = now();
    let mut gossip_died = Box::pin(agent.chitchat.termination_watcher());
    tokio::pin!(shutdown);

    // `leave --permanent` waiting for its removal from the voters to commit.
    let mut removal: Option<PendingRemoval> = None;
    let mut leave_note = String::new();
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = now();
                if let Some(p) = removal.take() {
                    if agent.node.is_removed() {
                        leave_note = " for good (out of the Raft voters)".into();
                        break Ok((Exit::Left, Some((p.reply, p.written))));
                    }
                    if now >= p.deadline {
                        leave_note = format!(
                            ", but its removal from the Raft voters was not committed within {}s (no leader with a majority?): it stays a voter until `chorus forget {}` on another node succeeds",
                            REMOVAL_WAIT.as_secs(),
                            config.node_id
                        );
                        break Ok((Exit::Left, Some((p.reply, p.written))));
                    }
                    removal = Some(p);
                }
                if last_load_sample.is_none_or(|t| now.duration_since(t) >= LOAD_SAMPLE_EVERY) {
                    last_load_sample = Some(now);
                    if let Some((cpu, mem)) = sysload::sample() {
                        agent.node.handle_load_sample(now, cpu, mem);
                    }
                }
                if insecure && now.duration_since(last_insecure_warning) >= INSECURE_WARN_EVERY {
                    last_insecure_warning = now;
                    warn_insecure(&config);
                }
                agent.step(now).await;
                if agent.panicked {
                    break Err(AgentError::Panic);
                }
                notifier.turned(now, &agent.view.read().status.node);
            }
            _ = tokio::time::sleep_until(agent.node.poll_timeout().into()) => {
                agent.node.handle_timeout(now());
                agent.apply_effects().await;
            }
            Some(message) = peer_messages.recv() => agent.on_peer_message(message).await,
            Some(peer) = refusals.recv() => {
                if peer.kind == RefusalKind::NodeIdConflict {
                    if peer.by_us {
                        let held_at = agent.holders.read().get(&peer.node_id);
                        agent.node.handle_node_id_conflict(now(), &peer.node_id, held_at, peer.addr);
                        agent.apply_effects().await;
                        continue;
                    }
                    // Another agent holds our id and is alive: this one gives way at once,
                    // publishing nothing (above all not `left`, which would be about the id
                    // the live agent holds).
                    let held_at = identity::held_at_in_reason(&peer.reason);
                    agent.alert(Alert::NodeIdConflict {
                        node: config.node_id.clone(),
                        held_at,
                        claimed_from: advertise,
                    });
                    break Err(AgentError::NodeIdConflict {
                        node: config.node_id.clone(),
                        held_at,
                        ours: advertise,
                    });
                }
                let reason = if peer.by_us {
                    format!("refused at hello: {}", peer.reason)
                } else {
                    format!("refused us at hello: {}", peer.reason)
                };
                agent.node.handle_refused_peer(now(), &peer.node_id, peer.addr, &reason);
            }
            Some(input) = inputs.recv() => match input {
                Input::Sessions(n, reply) => {
                    agent.node.handle_sessions(now(), n);
                    agent.step(now()).await;
                    let _ = reply.send(Response::Done { message: format!("sessions = {n}") });
                }
                Input::Forget(node, reply) => {
                    let response = match agent.node.handle_forget(now(), &node) {
                        Ok(()) => Response::Done { message: format!("{node} forgotten") },
                        Err(e) => Response::Error { message: e.to_string() },
                    };
                    agent.persist_error = None;
                    agent.step(now()).await;
                    let response = match agent.persist_error.take() {
                        Some(e) => Response::Error {
                            message: format!("{node} forgotten here, but the roster could not be saved ({e}): it comes back after a restart"),
                        },
                        None => response,
                    };
                    let _ = reply.send(response);
                }
                Input::SetState(state, reply) => {
                    let _ = reply.send(agent.set_state(state).await);
                }
                Input::Leave(false, reply, written) => break Ok((Exit::Left, Some((reply, written)))),
                Input::Leave(true, reply, written) => match agent.node.handle_remove_self(now()) {
                    Ok(()) => {
                        agent.apply_effects().await;
                        tracing::info!(node = %config.node_id, "leaving for good: waiting for the removal from the Raft voters to commit");
                        removal = Some(PendingRemoval { deadline: now() + REMOVAL_WAIT, reply, written });
                    }
                    Err(e) => {
                        let _ = reply.send(Response::Error { message: format!("cannot leave for good: {e}; nothing changed") });
                    }
                },
            },
            stop = &mut shutdown => match stop {
                Stop::Graceful => break Ok((Exit::Shutdown, None)),
                Stop::Crash => break Ok((Exit::Crashed, None)),
            },
            result = &mut gossip_died => {
                let reason = match result { Ok(()) => "it exited".to_string(), Err(e) => format!("{e:#}") };
                if let Err(e) = agent.restart_gossip(now(), reason).await {
                    break Err(e);
                }
                gossip_died = Box::pin(agent.chitchat.termination_watcher());
            }
        }
    };
    // New clients find no socket; the server itself (and any `watch` stream) ends when its
    // guard drops, after a `leave` reply has been written.
    let _ = std::fs::remove_file(&config.socket);
    agent.tasks.stop();
    let (exit, reply) = match outcome {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "agent stopping");
            agent.chitchat.abort();
            return Err(e);
        }
    };
    if exit == Exit::Crashed {
        agent.chitchat.abort();
        return Ok(exit);
    }
    notifier.stopping();
    agent.leave(config.gossip_interval).await;
    agent.tasks.stop_and_wait().await;
    if let Some((reply, written)) = reply {
        let _ = reply.send(Response::Done {
            message: format!("{} left the cluster{leave_note}", config.node_id),
        });
        // The client's connection task writes the answer: do not exit before it has.
        let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
    }
    let _ = agent.chitchat.shutdown().await;
    tracing::info!(node = %config.node_id, "chorus agent stopped");
    Ok(exit)
}

/// How long `leave --permanent` waits for its removal from the voters to commit.
const REMOVAL_WAIT: Duration = Duration::from_secs(15);

/// A `leave --permanent` whose removal from the voters has not committed yet.
struct PendingRemoval {
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Response>,
    written: tokio::sync::oneshot::Receiver<()>,
}

/// Aborts a background task when the agent returns, whichever way it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Running {
    observer: Observer,
    publisher: ViewPublisher,
    metrics: Arc<Metrics>,
    /// Transport counters; `None` for a transport supplied by a test.
    counters: Option<NetCounters>,
    tasks: TaskRunner,
    on_split_brain: Option<String>,
    panic_exit: bool,
    /// Quorum was lost with `--panic-exit`: the loop must end.
    panicked: bool,
    node: Node,
    /// Where each live node id is held, for the transport's claim check.
    holders: Arc<RwLock<Holders>>,
    /// The members revision `holders` was made from.
    holders_revision: Option<u64>,
    chitchat: ChitchatHandle,
    /// Kept to open a new socket if the gossip loop has to be restarted.
    transport: Arc<dyn Transport>,
    /// When the gossip loop was last restarted: a second end within
    /// [`GOSSIP_RESTART_WINDOW`] stops the agent.
    last_gossip_restart: Option<Instant>,
    /// The last failed data dir write since a request cleared it, for that request's answer.
    persist_error: Option<String>,
    data_dir: DataDir,
    persisted: PersistedState,
    raft_store: RaftStore,
    /// Where Raft messages leave (`None`: a test transport without one; Raft then stays
    /// alone).
    peer_channel: Option<PeerChannel>,
    events: broadcast::Sender<WatchEvent>,
    view: Arc<RwLock<Arc<ApiView>>>,
}

impl Running {
    /// Feeds the current gossip state to core, carries out the effects, publishes the view.
    async fn step(&mut self, now: Instant) {
        let started = std::time::Instant::now();
        // Publish what a request just changed (drain, load) before reading gossip back, so
        // the view answered next (this node's own row: `pick`, `drain --wait`) shows it.
        self.apply_effects().await;
        {
            let guard = self.chitchat.chitchat();
            let chitchat = guard.lock().await;
            self.observer.refresh(&chitchat);
        }
        self.node.handle_gossip(now, self.observer.observations());
        self.apply_effects().await;
        let revision = self.node.members_revision();
        if self.holders_revision != Some(revision) {
            self.holders_revision = Some(revision);
            *self.holders.write() = Holders::of(self.node.members());
        }
        self.publish_view(now);
        self.metrics.tick(started.elapsed());
    }

    /// Logs `alert`, counts it and tells `watch` clients.
    fn alert(&self, alert: Alert) {
        log_alert(&self.node.config().node_id, &alert);
        self.metrics.alert(alert.kind());
        let _ = self.events.send(WatchEvent {
            time_ms: unix_ms(),
            observer: self.node.config().node_id.clone(),
            alert,
        });
    }

    async fn apply_effects(&mut self) {
        while let Some(effect) = self.node.poll_effect() {
            match effect {
                Effect::Publish { key, value } => {
                    let guard = self.chitchat.chitchat();
                    guard.lock().await.self_node_state().set(key, value);
                }
                Effect::Alert(alert) => self.alert(alert),
                Effect::PersistRoster(entries) => {
                    self.persisted.roster = entries;
                    let _ = self.persist("roster");
                }
                Effect::RaftPersist(w) => match self.raft_store.write(&w) {
                    Ok(()) if !w.is_empty() => self.node.handle_persist_ok(),
                    Ok(()) => {}
                    Err(e) => self.node.handle_raft_persist_failed(&e.to_string()),
                },
                Effect::RaftSend { addr, bytes, .. } => {
                    if let Some(channel) = &self.peer_channel {
                        channel.send(addr, bytes);
                    }
                }
                Effect::RaftReload => match self.raft_store.reload() {
                    Ok(disk) => self.node.handle_raft_reload(now(), &disk),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the Raft log again; Raft stays stopped on this node until a restart");
                    }
                },
                Effect::SplitBrain {
                    reachable,
                    unreachable,
                } => {
                    if self.panic_exit {
                        self.panicked = true;
                    } else if let Some(cmd) = &self.on_split_brain {
                        hooks::spawn_split_brain_hook(
                            cmd.clone(),
                            self.node.config().node_id.clone(),
                            reachable,
                            unreachable,
                        );
                    }
                }
                Effect::LeadershipAcquired {
                    epoch,
                    until,
                    tasks_from,
                } => {
                    tracing::info!(epoch, "this node is now the leader");
                    self.tasks.lead(epoch, until, tasks_from);
                }
                Effect::LeaseRenewed { until } => self.tasks.renew(until),
                Effect::LeadershipLost { epoch } => {
                    tracing::info!(epoch, "this node is no longer the leader");
                    self.tasks.stop();
                }
            }
        }
    }

    /// Writes the state; a failure is alerted (`persist_failed`, naming `what`) and kept in
    /// `persist_error` for the request being answered. The old file stays intact (atomic
    /// write) and the next change tries again.
    fn persist(&mut self, what: &str) -> Result<(), ()> {
        // `left` is how a run ends, not a state to come back in: a graceful stop must not
        // overwrite `draining` (the drain survives a restart until `resume`).
        let state = self.node.state();
        if state != NodeState::Left {
            self.persisted.state = Some(state);
        }
        match self.data_dir.save(&self.persisted) {
            Ok(()) => {
                self.node.handle_persist_ok();
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                self.node.handle_persist_failed(what, &error);
                self.persist_error = Some(error);
                Err(())
            }
        }
    }

    /// `drain` / `resume`: the new state is written to the data dir before it is published
    /// or answered, so "now draining" always survives a restart; if it cannot be written the
    /// state stays as it was and the client gets the error.
    async fn set_state(&mut self, state: NodeState) -> Response {
        let old = self.node.state();
        if old == state {
            return Response::Done {
                message: format!("already {}", state.as_str()),
            };
        }
        self.node.handle_set_state(now(), state);
        self.persist_error = None;
        let saved = self.persist("state");
        if saved.is_err() {
            self.node.handle_set_state(now(), old);
            self.persisted.state = Some(old);
        }
        self.step(now()).await;
        match (saved, self.persist_error.take()) {
            (Ok(()), _) => Response::Done {
                message: format!("now {}", state.as_str()),
            },
            (Err(()), e) => Response::Error {
                message: format!(
                    "cannot make this node {}: {}; it stays {}",
                    state.as_str(),
                    e.unwrap_or_default(),
                    old.as_str()
                ),
            },
        }
    }

    /// The gossip loop ended (an error, or a panic that no peer input should reach): start it
    /// again over the same state, once; a second end within [`GOSSIP_RESTART_WINDOW`] stops
    /// the agent.
    async fn restart_gossip(&mut self, now: Instant, reason: String) -> Result<(), AgentError> {
        if self
            .last_gossip_restart
            .is_some_and(|t| now.saturating_duration_since(t) < GOSSIP_RESTART_WINDOW)
        {
            return Err(AgentError::GossipDied(reason));
        }
        self.last_gossip_restart = Some(now);
        self.chitchat
            .respawn(self.transport.as_ref())
            .await
            .map_err(|e| AgentError::GossipDied(format!("{reason}; restart failed: {e:#}")))?;
        self.node.handle_gossip_restarted(&reason);
        self.apply_effects().await;
        Ok(())
    }

    /// A Raft message from a peer: the transport says who sent it (QUIC: the node its
    /// certificate and hello prove; UDP: only an address).
    async fn on_peer_message(&mut self, message: PeerMessage) {
        let from = Sender {
            node_id: message.from_node.as_deref(),
            addr: message.from_addr,
        };
        if let Err(e) = self.node.handle_raft_message(now(), &from, &message.bytes) {
            tracing::debug!(peer = %message.from_addr, error = %e, "Raft message dropped");
        }
        self.apply_effects().await;
    }

    fn publish_view(&mut self, now: Instant) {
        let net = self.counters.as_ref().map(NetCounters::snapshot);
        let view = self.publisher.publish(&self.node, &self.metrics, now, net);
        *self.view.write() = view;
    }

    /// Publishes `left` and gives gossip a few rounds (bounded) to carry it to the others.
    async fn leave(&mut self, gossip_interval: Duration) {
        self.node.handle_leave(now());
        self.apply_effects().await;
        let _ = self.persist("state");
        let others_up = self
            .node
            .members()
            .filter(|m| !m.is_self && m.status.is_up())
            .count();
        if others_up == 0 {
            return;
        }
        // Each round reaches a few peers, who pass it on: log2(n) + 2 rounds reach everyone
        // with high probability.
        let rounds = (usize::BITS - others_up.leading_zeros()) + 2;
        let wait = (gossip_interval * rounds).min(MAX_LEAVE_WAIT);
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "leaving: publishing left to the cluster"
        );
        tokio::time::sleep(wait).await;
    }
}

fn warn_insecure(config: &AgentConfig) {
    tracing::warn!(
        node = %config.node_id,
        "INSECURE: gossip is not authenticated (--insecure or --transport udp): anyone who can \
         reach {} can read, forge and join this cluster",
        config.listen
    );
}

/// How many nodes must find each other before a new cluster starts: `--expect`, or the number
/// of distinct seeds with this node counted once (a node that is its own only seed, or has
/// none, starts alone).
fn bootstrap_expect(config: &AgentConfig, advertise: SocketAddr) -> usize {
    if config.expect > 0 {
        return config.expect;
    }
    let own = [advertise.to_string(), config.listen.to_string()];
    chorus_core::consensus::bootstrap::expect_from_seeds(&config.seeds, &own)
}

fn placeholder_status() -> StatusReport {
    StatusReport {
        node: chorus_core::node::NodeStatus {
            node_id: String::new(),
            cluster: String::new(),
            fingerprint: String::new(),
            app_version: String::new(),
            alive: 0,
            roster: 0,
            quorum: false,
            partition: chorus_core::quorum::Partition::Forming,
            leader: None,
            epoch: 0,
            state: NodeState::Active,
            raft: Default::default(),
        },
        generation: 0,
        is_leader: false,
        addr: String::new(),
        uptime_s: 0,
        net: serde_json::Value::Null,
    }
}

fn compute_fingerprint(config: &AgentConfig) -> Result<Fingerprint, AgentError> {
    let mut files = Vec::new();
    for path in &config.fingerprint_files {
        let bytes = std::fs::read(path).map_err(|source| AgentError::FingerprintFile {
            path: path.display().to_string(),
            source,
        })?;
        files.push((file_name(path), bytes));
    }
    Ok(Fingerprint::compute(
        PROTOCOL_VERSION,
        &config.app_version,
        &files,
    ))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The listen address if it is concrete; else the local address of the route to the first
/// seed (a UDP `connect` sends nothing); else loopback.
fn derive_advertise(listen: SocketAddr, seeds: &[String]) -> Result<SocketAddr, AgentError> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let Some(seed) = seeds.iter().find_map(|s| s.parse::<SocketAddr>().ok()) else {
        return Ok(SocketAddr::new([127, 0, 0, 1].into(), listen.port()));
    };
    let probe = UdpSocket::bind((listen.ip(), 0))
        .and_then(|s| s.connect(seed).map(|_| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| AgentError::Advertise(e.to_string()))?;
    Ok(SocketAddr::new(probe.ip(), listen.port()))
}

/// tokio's clock, so tests with a paused clock drive the node's time too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
