//! `Node`: the sans-I/O state machine of one agent.
//!
//! # Calling contract
//! The agent owns one `Node` and calls, with the current time each time:
//! - `handle_*` for inputs: a gossip snapshot, a load sample, a session count, a drain, a leave;
//! - then drains [`Node::poll_effect`] until `None` and carries every effect out in order
//!   (publish a key, log an alert, persist the roster);
//! - `&self` getters (`members`, `status`) answer the socket.
//!
//! The node never reads a clock, a file or a socket; a test drives it with a fake `Instant`.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, RejectCause};
use crate::consensus::{
    self, Consensus, ConsensusConfig, MessageError, Output, PeerFacts, RaftDisk, RaftTiming,
    RaftWrite, Sender,
};
use crate::fingerprint::{CompatPolicy, Fingerprint};
use crate::load::{LoadPolicy, LoadTracker};
use crate::member::{keys, Member, NodeId, NodeState, Published, RaftKey, Status};
use crate::quorum::{self, Partition};
use crate::roster::{Roster, RosterEntry};
use crate::split::{SplitDetector, SplitOutput};
use crate::view::{MemberView, Observation, Refused, ViewContext};

/// How long a peer refused at its hello stays listed after its last attempt.
pub const REFUSED_SHOWN_FOR: Duration = Duration::from_secs(10 * 60);
/// Refusals a node tells the cluster about at once (each is a gossip key); more are still
/// shown locally.
pub const MAX_PUBLISHED_REFUSALS: usize = 16;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub cluster: String,
    pub advertise_addr: SocketAddr,
    pub fingerprint: Fingerprint,
    pub policy: CompatPolicy,
    /// A live node whose heartbeat has not moved for this long is shown `suspect`.
    pub suspect_after: Duration,
    /// Nodes to see before a new cluster bootstraps (`--expect`); also the floor of the roster
    /// size for quorum before the cluster has voters.
    pub expect: usize,
    pub load: LoadPolicy,
    /// Failures closer together than this are one split-brain alert, not several.
    pub split_window: Duration,
    /// A member dead this long is removed from the roster by a node with quorum, and a voter
    /// down this long is replaced.
    pub reap_after: Duration,
    /// This data dir's identity in Raft (never 0): a node whose data dir was wiped is a new
    /// member.
    pub raft_id: u64,
    /// At most this many voters (`--voters`, odd).
    pub voters: usize,
    pub raft_timing: RaftTiming,
    /// Seeds Raft's election timeouts and the cluster id (the simulator replays exactly).
    pub seed: u64,
}

impl NodeConfig {
    /// Timings derived from the gossip interval (docs/leader.md explains the numbers):
    /// `(suspect_after, split_window)`.
    pub fn timings(gossip_interval: Duration) -> (Duration, Duration) {
        let suspect_after = gossip_interval * 4;
        let split_window = (gossip_interval * 3).max(Duration::from_secs(2));
        (suspect_after, split_window)
    }

    fn consensus(&self) -> ConsensusConfig {
        ConsensusConfig {
            node_id: self.node_id.clone(),
            raft_id: self.raft_id,
            addr: self.advertise_addr,
            max_voters: self.voters,
            expect: self.expect,
            timing: self.raft_timing,
            seed: self.seed,
        }
    }
}

/// What the agent must do on the node's behalf.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Set a key in this node's gossip key space.
    Publish { key: String, value: String },
    /// Log it (`alert=<kind>`) and send it to `watch` clients.
    Alert(Alert),
    /// Write the roster to the data dir (atomically).
    PersistRoster(Vec<RosterEntry>),
    /// Send a Raft message to this node (its gossip address), over the peer channel.
    RaftSend {
        node_id: NodeId,
        addr: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Make this durable in the Raft log before carrying out any later effect; a failure is
    /// reported with [`Node::handle_raft_persist_failed`].
    RaftPersist(RaftWrite),
    /// Read the Raft log again and hand it to [`Node::handle_raft_reload`]: Raft stopped after
    /// a failure and starts over from what is durable.
    RaftReload,
    /// Quorum was just lost: run `--on-split-brain`, or exit with `--panic-exit`.
    SplitBrain {
        reachable: Vec<NodeId>,
        unreachable: Vec<NodeId>,
    },
    /// This node leads with this fencing epoch (the Raft term) and holds the lease until
    /// `until`: scheduled tasks may start from `tasks_from` (every earlier lease plus the task
    /// grace has run out by then) and must be stopped at `until` unless renewed.
    LeadershipAcquired {
        epoch: u64,
        until: Instant,
        tasks_from: Instant,
    },
    /// The lease now runs to `until`.
    LeaseRenewed { until: Instant },
    /// This node stopped leading: stop scheduled tasks now.
    LeadershipLost { epoch: u64 },
}

/// Why `forget` was refused. The roster is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error("node {0} is not in the roster")]
    Unknown(NodeId),
    #[error("node {0} is up: stop it (or let it leave) before forgetting it")]
    Up(NodeId),
    #[error("a node cannot forget itself")]
    Itself,
}

/// `chorus status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub cluster: String,
    pub fingerprint: String,
    pub app_version: String,
    pub alive: usize,
    pub roster: usize,
    pub quorum: bool,
    pub partition: Partition,
    pub leader: Option<NodeId>,
    pub epoch: u64,
    pub state: NodeState,
    /// This node in Raft.
    #[serde(default)]
    pub raft: RaftStatus,
}

/// This node's part in Raft, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub role: RaftRole,
    /// The Raft cluster, in hex (empty: none yet).
    pub cluster: String,
    pub term: u64,
    pub commit: u64,
    /// The index of the last applied voter change.
    pub conf_index: u64,
    /// The agreed voters, by node id.
    pub voters: Vec<NodeId>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    /// Not in a cluster yet (or Raft stopped after a data dir failure).
    #[default]
    None,
    /// In the cluster, not a voter.
    Learner,
    Follower,
    Candidate,
    Leader,
}

impl RaftRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::None => "none",
            RaftRole::Learner => "learner",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::Leader => "leader",
        }
    }
}

#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    roster: Roster,
    view: MemberView,
    load: LoadTracker,
    state: NodeState,
    /// The reason last alerted for each rejected node, so a refusal is reported once.
    rejections: HashMap<NodeId, String>,
    /// Peers the transport refused at the hello: node id -> (address, reason, when).
    refused: HashMap<NodeId, (SocketAddr, String, Instant)>,
    /// Second agents refused for claiming a live node id: (id, their address) -> last seen.
    conflicts: HashMap<(NodeId, SocketAddr), Instant>,
    /// Since when each roster member has been down, for reaping.
    down_since: HashMap<NodeId, Instant>,
    split: SplitDetector,
    consensus: Consensus,
    /// What gossip last said of the other nodes, for Raft's timeouts between gossip steps.
    peer_facts: Vec<PeerFacts>,
    /// The `raft` key as last published.
    published_raft: Option<RaftKey>,
    /// The leader as this node last showed it ([`Node::observed_leader`]).
    observed: Option<NodeId>,
    /// The time of the last call: getters judge the lease against it.
    now: Instant,
    /// Kept current with the roster and the view: it is read on every tick and every status.
    quorum: quorum::QuorumAssessment,
    effects: VecDeque<Effect>,
    /// The last data dir write failed (and was alerted).
    persist_failing: bool,
}

impl Node {
    /// `roster`, `state` and `raft` are what the data dir remembered; this node is always part
    /// of its own roster.
    pub fn new(
        now: Instant,
        config: NodeConfig,
        mut roster: Roster,
        state: NodeState,
        raft: &RaftDisk,
    ) -> Node {
        let mut effects = VecDeque::new();
        if roster.upsert(&config.node_id, config.advertise_addr) {
            effects.push_back(Effect::PersistRoster(roster.entries()));
        }
        effects.push_back(Effect::Publish {
            key: keys::STATE.into(),
            value: state.as_str().into(),
        });
        let consensus = Consensus::new(now, config.consensus(), raft);
        let view = MemberView::default();
        let quorum = assess_quorum(&view, &roster, &config, &consensus);
        let mut node = Node {
            load: LoadTracker::new(config.load.clone()),
            split: SplitDetector::new(config.split_window),
            consensus,
            peer_facts: Vec::new(),
            published_raft: None,
            observed: None,
            now,
            down_since: HashMap::new(),
            refused: HashMap::new(),
            conflicts: HashMap::new(),
            config,
            roster,
            view,
            state,
            rejections: HashMap::new(),
            quorum,
            effects,
            persist_failing: false,
        };
        node.drain_consensus();
        node
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A full gossip snapshot: every incarnation chitchat knows, this node's included. Also
    /// the clock tick: held failures, leases and reaping are judged here.
    pub fn handle_gossip(&mut self, now: Instant, observations: &[Observation]) {
        self.now = now;
        let expired: Vec<NodeId> = self
            .refused
            .iter()
            .filter(|(_, (_, _, at))| now.saturating_duration_since(*at) >= REFUSED_SHOWN_FOR)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.refused.remove(&id);
            self.effects.push_back(Effect::Publish {
                key: Published::refused_key(&id),
                value: String::new(),
            });
        }
        let ctx = ViewContext {
            self_id: &self.config.node_id,
            self_addr: self.config.advertise_addr,
            fingerprint: &self.config.fingerprint,
            policy: self.config.policy,
            suspect_after: self.config.suspect_after,
        };
        let refused = refused_peers(&self.refused, observations, &self.config.node_id);
        self.view
            .update(now, observations, &self.roster, &refused, &ctx);

        let mut roster_changed = false;
        let mut alerts = Vec::new();
        for (m, prev) in self.view.with_previous() {
            if m.is_self {
                continue;
            }
            match transition_alert(prev, m) {
                Some(Alert::NodeFailed { node, addr }) => self.split.on_failure(now, &node, addr),
                Some(alert) => alerts.push(alert),
                None => {}
            }
            match m.status {
                Status::Alive | Status::Suspect => {
                    roster_changed |= self.roster.upsert(&m.node_id, m.addr);
                    if !self.rejections.is_empty() {
                        self.rejections.remove(&m.node_id);
                    }
                }
                Status::Left => roster_changed |= self.roster.remove(&m.node_id),
                Status::Rejected => {
                    // Another version never counts as up. A roster member stays in the roster,
                    // down (reaped like a dead one): a member upgraded in place, or a node that
                    // finds every peer of its roster on another version, must not shrink its
                    // roster to the compatible few and so count itself a majority.
                    let reason = m.reason.as_deref().unwrap_or_default();
                    if self.rejections.get(&m.node_id).map(String::as_str) != Some(reason) {
                        self.rejections
                            .insert(m.node_id.clone(), reason.to_string());
                        alerts.push(Alert::VersionRejected {
                            node: m.node_id.clone(),
                            addr: Some(m.addr),
                            reason: reason.to_string(),
                            cause: RejectCause::of_reason(reason),
                        });
                    }
                }
                Status::Dead => {}
            }
        }
        self.effects.extend(alerts.into_iter().map(Effect::Alert));

        self.quorum = self.assess_quorum();
        let reaped = self.reap(
            now,
            self.quorum.quorum && self.quorum.partition == Partition::Majority,
        );
        if reaped {
            self.quorum = self.assess_quorum();
        }
        if roster_changed || reaped {
            self.effects
                .push_back(Effect::PersistRoster(self.roster.entries()));
        }

        let quorum = self.quorum;
        // The detector mostly has nothing to watch: then the sides need not be built.
        if !self.split.idle(&quorum) {
            // Alerts count the agreed voters, as quorum does, once there are any.
            let voters = self.consensus.voters();
            let roster_ids: BTreeSet<NodeId> = if voters.is_empty() {
                self.roster.ids().cloned().collect()
            } else {
                voters.into_iter().collect()
            };
            let up = self.up_ids();
            for output in self.split.poll(now, &roster_ids, &up, &quorum) {
                self.effects.push_back(match output {
                    SplitOutput::Alert(a) => Effect::Alert(a),
                    SplitOutput::Panic {
                        reachable,
                        unreachable,
                    } => Effect::SplitBrain {
                        reachable,
                        unreachable,
                    },
                });
            }
        }
        self.peer_facts = peer_facts(&self.view, &self.config.node_id);
        self.run_consensus(now);
    }

    /// Raft's clock, between gossip steps: call at [`Node::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.run_consensus(now);
    }

    /// When the node next needs [`Node::handle_timeout`]: Raft's tick or the lease's end.
    /// (The split window is judged on gossip steps, which come every half gossip interval.)
    pub fn poll_timeout(&self) -> Instant {
        self.consensus.poll_timeout()
    }

    /// A Raft message from a peer. An error says why it was dropped; nothing changed then.
    pub fn handle_raft_message(
        &mut self,
        now: Instant,
        from: &Sender<'_>,
        bytes: &[u8],
    ) -> Result<(), MessageError> {
        self.now = now;
        let result = self.consensus.handle_message(now, from, bytes);
        self.drain_consensus();
        result
    }

    /// The last [`Effect::RaftPersist`] could not be written: Raft stops until the log is read
    /// again ([`Effect::RaftReload`]).
    pub fn handle_raft_persist_failed(&mut self, error: &str) {
        self.consensus.handle_persist_failed(error);
        self.drain_consensus();
    }

    /// The Raft log as read again after [`Effect::RaftReload`].
    pub fn handle_raft_reload(&mut self, now: Instant, disk: &RaftDisk) {
        self.now = now;
        self.consensus.handle_reload(now, disk);
        self.drain_consensus();
    }

    fn run_consensus(&mut self, now: Instant) {
        let may_lead = self.state == NodeState::Active
            && self
                .view
                .get(&self.config.node_id)
                .is_none_or(crate::leader::may_lead);
        self.consensus
            .handle_timeout(now, &self.peer_facts, may_lead);
        self.drain_consensus();
    }

    /// Turns Raft's outputs into effects, in order, and shows what changed.
    fn drain_consensus(&mut self) {
        while let Some(output) = self.consensus.poll_output() {
            self.effects.push_back(match output {
                Output::Send {
                    node_id,
                    addr,
                    bytes,
                } => Effect::RaftSend {
                    node_id,
                    addr,
                    bytes,
                },
                Output::Persist(w) => Effect::RaftPersist(w),
                Output::Reload => Effect::RaftReload,
                Output::LeaseAcquired {
                    term,
                    until,
                    tasks_from,
                } => Effect::LeadershipAcquired {
                    epoch: term,
                    until,
                    tasks_from,
                },
                Output::LeaseRenewed { until } => Effect::LeaseRenewed { until },
                Output::LeaseLost { term } => Effect::LeadershipLost { epoch: term },
                // A data dir that refuses writes is one alert per run of failures, whichever
                // file it refused.
                Output::Alert(Alert::PersistFailed { what, error }) => {
                    if self.persist_failing {
                        continue;
                    }
                    self.persist_failing = true;
                    Effect::Alert(Alert::PersistFailed { what, error })
                }
                Output::Alert(a) => Effect::Alert(a),
            });
        }
        let key = RaftKey {
            raft_id: self.config.raft_id,
            cluster_id: self.consensus.cluster_id(),
            vote: self.consensus.bootstrap_vote(),
        };
        if self.published_raft != Some(key) {
            self.published_raft = Some(key);
            self.effects.push_back(Effect::Publish {
                key: keys::RAFT.into(),
                value: key.to_value(),
            });
            self.quorum = self.assess_quorum();
        }
        let observed = self.observed_leader().map(str::to_string);
        if observed != self.observed {
            self.effects.push_back(Effect::Alert(Alert::LeaderChanged {
                old: self.observed.take(),
                new: observed.clone(),
                epoch: self.consensus.term(),
            }));
            self.observed = observed;
        }
        // Rows appear as gossip delivers them: each is marked when it does.
        self.view.set_leader(self.observed.as_deref());
    }

    /// The leader as this node shows it: itself while it holds the lease, else the Raft leader
    /// it follows and hears from, unless this node sees no majority of the voters (a minority
    /// shows no leader: whoever it still hears there cannot hold a lease). A Raft leader without
    /// a lease, this node included, is no leader.
    fn observed_leader(&self) -> Option<&str> {
        if self.consensus.held(self.now).is_some() {
            return Some(&self.config.node_id);
        }
        if !self.quorum.quorum {
            return None;
        }
        self.consensus
            .leader()
            .filter(|l| *l != self.config.node_id)
    }

    /// Removes members down for longer than `reap_after`; only a node on the majority side
    /// may (a minority never talks itself into a quorum).
    fn reap(&mut self, now: Instant, allowed: bool) -> bool {
        let down: Vec<NodeId> = self
            .view
            .up_among(self.roster.ids())
            .filter(|(id, up)| !up && **id != self.config.node_id)
            .map(|(id, _)| id.clone())
            .collect();
        self.down_since.retain(|id, _| down.contains(id));
        let mut changed = false;
        for id in down {
            let since = *self.down_since.entry(id.clone()).or_insert(now);
            if allowed && now.saturating_duration_since(since) >= self.config.reap_after {
                self.roster.remove(&id);
                self.down_since.remove(&id);
                self.effects.push_back(Effect::Alert(Alert::NodeReaped {
                    node: id,
                    forgotten: false,
                }));
                changed = true;
            }
        }
        changed
    }

    /// The data dir refused to write `what`: say so loudly, once per run of failures.
    pub fn handle_persist_failed(&mut self, what: &str, error: &str) {
        if !self.persist_failing {
            self.persist_failing = true;
            self.effects.push_back(Effect::Alert(Alert::PersistFailed {
                what: what.to_string(),
                error: error.to_string(),
            }));
        }
    }

    /// The data dir took a write: the next failure is news again.
    pub fn handle_persist_ok(&mut self) {
        self.persist_failing = false;
    }

    /// The agent's gossip loop ended and was started again over the same state.
    pub fn handle_gossip_restarted(&mut self, reason: &str) {
        self.effects
            .push_back(Effect::Alert(Alert::GossipRestarted {
                reason: reason.to_string(),
            }));
    }

    /// The transport refused a second agent claiming the node id `node_id` from `claimed_from`
    /// while the agent at `held_at` holds it (see [`crate::identity`]). Alerted once per
    /// claimant address while it keeps trying (within [`REFUSED_SHOWN_FOR`]); the member's row,
    /// roster entry and leadership are untouched.
    pub fn handle_node_id_conflict(
        &mut self,
        now: Instant,
        node_id: &str,
        held_at: Option<SocketAddr>,
        claimed_from: SocketAddr,
    ) {
        self.conflicts
            .retain(|_, at| now.saturating_duration_since(*at) < REFUSED_SHOWN_FOR);
        let key = (node_id.to_string(), claimed_from);
        if self.conflicts.contains_key(&key) || self.conflicts.len() >= MAX_PUBLISHED_REFUSALS {
            self.conflicts.entry(key).and_modify(|at| *at = now);
            return;
        }
        self.conflicts.insert(key, now);
        self.effects.push_back(Effect::Alert(Alert::NodeIdConflict {
            node: node_id.to_string(),
            held_at,
            claimed_from,
        }));
    }

    /// The transport refused a peer at its hello (another cluster or version). It is shown as
    /// `rejected` with the reason; the alert is raised on the next gossip call, once per reason.
    pub fn handle_refused_peer(
        &mut self,
        now: Instant,
        node_id: &str,
        addr: SocketAddr,
        reason: &str,
    ) {
        if node_id.is_empty() || node_id == self.config.node_id {
            return;
        }
        let known = self.refused.get(node_id).map(|(a, r, _)| (*a, r.clone()));
        let publishable = Published::refused_key_allowed(node_id)
            && (known.is_some() || self.refused.len() < MAX_PUBLISHED_REFUSALS);
        if publishable && known != Some((addr, reason.to_string())) {
            self.effects.push_back(Effect::Publish {
                key: Published::refused_key(node_id),
                value: format!("{addr} {reason}"),
            });
        }
        self.refused
            .insert(node_id.to_string(), (addr, reason.to_string(), now));
    }

    /// `chorus forget NODE`: removes a dead member from the roster at once, and from the
    /// voters through Raft (retried until a majority of the voters commits it).
    pub fn handle_forget(&mut self, now: Instant, node: &str) -> Result<(), ForgetError> {
        if node == self.config.node_id {
            return Err(ForgetError::Itself);
        }
        if !self.roster.contains(node) {
            return Err(ForgetError::Unknown(node.to_string()));
        }
        if self.view.get(node).is_some_and(|m| m.status.is_up()) {
            return Err(ForgetError::Up(node.to_string()));
        }
        self.roster.remove(node);
        self.down_since.remove(node);
        if self.consensus.voters().iter().any(|v| v == node) {
            let _ = self.consensus.request_removal(now, node);
            self.drain_consensus();
        }
        self.quorum = self.assess_quorum();
        self.effects.push_back(Effect::Alert(Alert::NodeReaped {
            node: node.to_string(),
            forgotten: true,
        }));
        self.effects
            .push_back(Effect::PersistRoster(self.roster.entries()));
        Ok(())
    }

    fn up_ids(&self) -> BTreeSet<NodeId> {
        let mut up: BTreeSet<NodeId> = self
            .view
            .members()
            .filter(|m| m.status.is_up())
            .map(|m| m.node_id.clone())
            .collect();
        up.insert(self.config.node_id.clone());
        up
    }

    /// A fresh cpu/memory sample from the host.
    pub fn handle_load_sample(&mut self, now: Instant, cpu: f64, mem: f64) {
        self.load.set_sample(cpu, mem);
        self.publish_load(now);
    }

    /// The application's session count (`chorus load --sessions N`).
    pub fn handle_sessions(&mut self, now: Instant, sessions: u64) {
        self.load.set_sessions(sessions);
        self.publish_load(now);
    }

    /// `draining` or `active`; returns whether it changed. Leaving is [`Node::handle_leave`].
    pub fn handle_set_state(&mut self, now: Instant, state: NodeState) -> bool {
        if state == NodeState::Left || self.state == state || self.state == NodeState::Left {
            return false;
        }
        self.now = now;
        self.state = state;
        if state == NodeState::Active {
            self.consensus.resume();
        } else {
            self.step_down(now);
        }
        self.publish_state();
        true
    }

    /// A graceful stop: tells the others at once instead of letting them wait for the failure
    /// detector. The node stays a voter (a restart is not a removal).
    pub fn handle_leave(&mut self, now: Instant) {
        if self.state != NodeState::Left {
            self.now = now;
            self.state = NodeState::Left;
            self.step_down(now);
            self.publish_state();
        }
    }

    /// `chorus leave --permanent`: asks Raft to remove this node from the voters (the leader
    /// hands over first when it is this node). [`Node::is_removed`] says when it is done.
    pub fn handle_remove_self(&mut self, now: Instant) -> Result<(), consensus::RequestError> {
        self.now = now;
        let node = self.config.node_id.clone();
        let result = self.consensus.request_removal(now, &node);
        self.drain_consensus();
        result
    }

    /// Whether this node is out of the voters (after [`Node::handle_remove_self`]).
    pub fn is_removed(&self) -> bool {
        self.consensus.is_removed(&self.config.node_id)
    }

    /// Drops the lease and hands leadership over before telling the others this node is no
    /// longer eligible.
    fn step_down(&mut self, now: Instant) {
        self.consensus.relinquish(now);
        self.drain_consensus();
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn state(&self) -> NodeState {
        self.state
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.view.members()
    }

    /// The rows of [`Node::members`] as shared, for a reader that keeps them.
    pub fn shared_members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.view.shared_members()
    }

    /// Moves whenever a row of [`Node::members`] changed: equal revisions, equal rows.
    pub fn members_revision(&self) -> u64 {
        self.view.revision()
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn status(&self) -> NodeStatus {
        let q = self.quorum;
        NodeStatus {
            node_id: self.config.node_id.clone(),
            cluster: self.config.cluster.clone(),
            fingerprint: self.config.fingerprint.digest.clone(),
            app_version: self.config.fingerprint.app_version.clone(),
            alive: self.view.members().filter(|m| m.status.is_up()).count(),
            roster: self.roster.len(),
            quorum: q.quorum,
            partition: q.partition,
            leader: self.observed_leader().map(str::to_string),
            epoch: self.consensus.term(),
            state: self.state,
            raft: self.raft_status(),
        }
    }

    pub fn raft_status(&self) -> RaftStatus {
        let c = &self.consensus;
        let role = match c.role() {
            None => RaftRole::None,
            Some(_) if !c.is_voter() => RaftRole::Learner,
            Some(raft::StateRole::Leader) => RaftRole::Leader,
            Some(raft::StateRole::Candidate | raft::StateRole::PreCandidate) => RaftRole::Candidate,
            Some(raft::StateRole::Follower) => RaftRole::Follower,
        };
        RaftStatus {
            role,
            cluster: match c.cluster_id() {
                0 => String::new(),
                id => format!("{id:x}"),
            },
            term: c.term(),
            commit: c.commit(),
            conf_index: c.conf_index(),
            voters: c.voters(),
        }
    }

    /// The consensus state, for the simulator's checker and debugging.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    pub fn quorum(&self) -> quorum::QuorumAssessment {
        self.quorum
    }

    fn assess_quorum(&self) -> quorum::QuorumAssessment {
        assess_quorum(&self.view, &self.roster, &self.config, &self.consensus)
    }

    /// How long since each peer's heartbeat last moved (the failure detector's input).
    pub fn heartbeat_ages(&self, now: Instant) -> impl Iterator<Item = (&str, Duration)> {
        self.view
            .entries()
            .filter(|(m, _)| !m.is_self)
            .filter_map(move |(m, seen)| {
                let age = now.saturating_duration_since(seen?.last_advance);
                Some((m.node_id.as_str(), age))
            })
    }

    /// The epoch this node leads with, if it holds the lease as of the last call.
    pub fn leading(&self) -> Option<u64> {
        self.consensus.held(self.now).map(|h| h.term)
    }

    /// The leader this node shows (itself only while it holds the lease), and the term.
    pub fn leader(&self) -> Option<(&str, u64)> {
        let term = self.consensus.term();
        self.observed_leader().map(|l| (l, term))
    }

    fn publish_state(&mut self) {
        self.effects.push_back(Effect::Publish {
            key: keys::STATE.into(),
            value: self.state.as_str().into(),
        });
    }

    fn publish_load(&mut self, now: Instant) {
        if let Some(load) = self.load.poll_publish(now) {
            self.effects.push_back(Effect::Publish {
                key: keys::LOAD.into(),
                value: load.to_value(),
            });
        }
    }
}

/// [`quorum::assess`] over the agreed voters once the node is in a Raft cluster (the roster
/// before: a node that has not joined is `forming`), counting the members up in the view (this
/// node always), in place.
fn assess_quorum(
    view: &MemberView,
    roster: &Roster,
    config: &NodeConfig,
    consensus: &Consensus,
) -> quorum::QuorumAssessment {
    let voters = consensus.voters();
    let count = |ids: &mut dyn Iterator<Item = (&NodeId, bool)>| {
        let (mut up, mut lowest_up) = (0, None);
        for (id, in_view) in ids {
            let is_up = in_view || *id == config.node_id;
            up += usize::from(is_up);
            lowest_up.get_or_insert(is_up);
        }
        (up, lowest_up.unwrap_or(false))
    };
    if voters.is_empty() {
        let (up, lowest_up) = count(&mut view.up_among(roster.ids()));
        let mut q = quorum::decide(roster.len(), up, lowest_up, config.expect);
        q.quorum = false;
        q.partition = Partition::Forming;
        return q;
    }
    let (up, lowest_up) = count(&mut view.up_among(voters.iter()));
    quorum::decide(voters.len(), up, lowest_up, 0)
}

/// What the view says of every other node, for Raft: its identity, whether it is up, and
/// whether it may vote and lead.
fn peer_facts(view: &MemberView, self_id: &str) -> Vec<PeerFacts> {
    view.entries()
        .filter(|(m, _)| m.node_id != self_id)
        .filter_map(|(m, seen)| {
            let raft = seen?.raft?;
            Some(PeerFacts {
                node_id: m.node_id.clone(),
                addr: m.addr,
                raft_id: raft.raft_id,
                cluster_id: raft.cluster_id,
                up: m.status.is_up(),
                compatible: m.status != Status::Rejected,
                active: m.state == NodeState::Active,
                may_lead: crate::leader::may_lead(m),
                bootstrap_vote: raft.vote,
            })
        })
        .collect()
}

/// The peers to show as refused, in the order their refusals count: this node's own first,
/// then what the live peers say (never about this node).
fn refused_peers<'a>(
    own: &'a HashMap<NodeId, (SocketAddr, String, Instant)>,
    observations: &'a [Observation],
    self_id: &str,
) -> Vec<Refused<'a>> {
    let mut refused: Vec<Refused<'a>> = own
        .iter()
        .map(|(id, (addr, reason, _))| Refused {
            node_id: id,
            addr: *addr,
            reason: Cow::Borrowed(reason),
        })
        .collect();
    // Peers refused by the others: they never gossip, so only the refusing nodes know them.
    for obs in observations
        .iter()
        .filter(|o| o.live && o.node_id != self_id)
    {
        for (id, (addr, reason)) in &obs.published.refused {
            if id != self_id {
                refused.push(Refused {
                    node_id: id,
                    addr: *addr,
                    reason: Cow::Owned(format!("{reason} (seen by {})", obs.node_id)),
                });
            }
        }
    }
    refused
}

/// The alert for a node whose row went from `prev` (status, generation) to `m`, if any.
fn transition_alert(prev: Option<(Status, u64)>, m: &Member) -> Option<Alert> {
    let was_up = prev.is_some_and(|(s, _)| s.is_up());
    let restarted = prev.is_some_and(|(_, g)| g != 0 && g < m.generation);
    match m.status {
        Status::Alive | Status::Suspect if !was_up || restarted => Some(Alert::NodeJoined {
            node: m.node_id.clone(),
            addr: m.addr,
            generation: m.generation,
        }),
        Status::Dead if was_up => Some(Alert::NodeFailed {
            node: m.node_id.clone(),
            addr: m.addr,
        }),
        Status::Left if prev.is_some_and(|(s, _)| s != Status::Left) => Some(Alert::NodeLeft {
            node: m.node_id.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
