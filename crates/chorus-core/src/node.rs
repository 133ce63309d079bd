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
use crate::fingerprint::{CompatPolicy, Fingerprint};
use crate::leader::{Election, ElectionInput, ElectionOutput};
use crate::load::{LoadPolicy, LoadTracker};
use crate::member::{keys, Member, NodeId, NodeState, Published, Status};
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
    /// Floor of the roster size for quorum (`--expect`).
    pub expect: usize,
    pub load: LoadPolicy,
    /// Failures closer together than this are one split-brain alert, not several.
    pub split_window: Duration,
    /// A member dead this long is removed from the roster by a node with quorum.
    pub reap_after: Duration,
    /// How long a vote counts after the voter was last heard from; voters wait twice this
    /// before moving their vote from a silent leader.
    pub lease: Duration,
}

impl NodeConfig {
    /// Timings derived from the gossip interval (docs/leader.md explains the numbers).
    pub fn timings(gossip_interval: Duration) -> (Duration, Duration, Duration) {
        let suspect_after = gossip_interval * 4;
        let split_window = (gossip_interval * 3).max(Duration::from_secs(2));
        let lease = (gossip_interval * 4).max(Duration::from_secs(2));
        (suspect_after, split_window, lease)
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
    /// Write the largest epoch seen to the data dir, then confirm it with
    /// [`Node::handle_epoch_persisted`]: no leadership takes an unconfirmed epoch.
    PersistEpoch(u64),
    /// Quorum was just lost: run `--on-split-brain`, or exit with `--panic-exit`.
    SplitBrain {
        reachable: Vec<NodeId>,
        unreachable: Vec<NodeId>,
    },
    /// This node became leader: start scheduled tasks with this fencing epoch.
    LeadershipAcquired { epoch: u64 },
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
    election: Election,
    /// Kept current with the roster and the view: it is read on every tick and every status.
    quorum: quorum::QuorumAssessment,
    effects: VecDeque<Effect>,
    /// The last data dir write failed (and was alerted).
    persist_failing: bool,
}

impl Node {
    /// `roster`, `state` and `epoch` are what the data dir remembered; this node is always part
    /// of its own roster.
    pub fn new(
        now: Instant,
        config: NodeConfig,
        mut roster: Roster,
        state: NodeState,
        epoch: u64,
    ) -> Node {
        let mut effects = VecDeque::new();
        if roster.upsert(&config.node_id, config.advertise_addr) {
            effects.push_back(Effect::PersistRoster(roster.entries()));
        }
        effects.push_back(Effect::Publish {
            key: keys::STATE.into(),
            value: state.as_str().into(),
        });
        effects.push_back(Effect::Publish {
            key: keys::EPOCH.into(),
            value: epoch.to_string(),
        });
        let view = MemberView::default();
        let quorum = assess_quorum(&view, &roster, &config);
        Node {
            load: LoadTracker::new(config.load.clone()),
            split: SplitDetector::new(config.split_window),
            election: Election::new(now, config.lease, epoch),
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
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A full gossip snapshot: every incarnation chitchat knows, this node's included. Also
    /// the clock tick: held failures, leases and reaping are judged here.
    pub fn handle_gossip(&mut self, now: Instant, observations: &[Observation]) {
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
            let roster_ids: BTreeSet<NodeId> = self.roster.ids().cloned().collect();
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
        self.run_election(now, &quorum);
    }

    fn run_election(&mut self, now: Instant, q: &quorum::QuorumAssessment) {
        let input = ElectionInput {
            now,
            self_id: &self.config.node_id,
            view: &self.view,
            roster: &self.roster,
            counted: q.counted,
            quorum: q.quorum && q.partition == Partition::Majority,
            self_state: self.state,
        };
        for output in self.election.step(&input) {
            let effect = match output {
                ElectionOutput::Vote { candidate, seq } => Effect::Publish {
                    key: keys::VOTE.into(),
                    value: crate::member::vote_value(candidate.as_deref(), seq),
                },
                ElectionOutput::PersistEpoch(e) => Effect::PersistEpoch(e),
                ElectionOutput::MaxEpoch(e) => Effect::Publish {
                    key: keys::EPOCH.into(),
                    value: e.to_string(),
                },
                ElectionOutput::Acquired { epoch } => {
                    self.effects.push_back(Effect::Publish {
                        key: keys::LEAD.into(),
                        value: epoch.to_string(),
                    });
                    Effect::LeadershipAcquired { epoch }
                }
                ElectionOutput::Lost { epoch } => {
                    self.effects.push_back(Effect::Publish {
                        key: keys::LEAD.into(),
                        value: String::new(),
                    });
                    Effect::LeadershipLost { epoch }
                }
                ElectionOutput::Alert(a) => Effect::Alert(a),
            };
            self.effects.push_back(effect);
        }
        let leader = self.election.observed_leader().map(|(n, _)| n);
        self.view.set_leader(leader);
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

    /// The transport refused a peer at its hello (another cluster or version). It is shown as
    /// `rejected` with the reason; the alert is raised on the next gossip call, once per reason.
    /// The data dir wrote `epoch` (after [`Effect::PersistEpoch`]).
    pub fn handle_epoch_persisted(&mut self, epoch: u64) {
        self.election.epoch_persisted(epoch);
    }

    /// The data dir refused to write `what`: say so loudly, once per run of failures.
    /// Leadership waits for a confirmed epoch, so a failed epoch write never leads.
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

    /// `chorus forget NODE`: removes a dead member from the roster at once.
    pub fn handle_forget(&mut self, node: &str) -> Result<(), ForgetError> {
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
    pub fn handle_set_state(&mut self, state: NodeState) -> bool {
        if state == NodeState::Left || self.state == state || self.state == NodeState::Left {
            return false;
        }
        self.state = state;
        if state != NodeState::Active {
            self.step_down();
        }
        self.publish_state();
        true
    }

    /// A graceful stop: tells the others at once instead of letting them wait for the failure
    /// detector.
    pub fn handle_leave(&mut self) {
        if self.state != NodeState::Left {
            self.state = NodeState::Left;
            self.step_down();
            self.publish_state();
        }
    }

    /// Stops leading before telling the others this node is no longer eligible, so voters
    /// may move at once.
    fn step_down(&mut self) {
        if let Some(epoch) = self.election.leading() {
            self.election.force_step_down();
            self.effects.push_back(Effect::Publish {
                key: keys::LEAD.into(),
                value: String::new(),
            });
            self.effects.push_back(Effect::LeadershipLost { epoch });
        }
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
            leader: self.election.observed_leader().map(|(n, _)| n.to_string()),
            epoch: self
                .election
                .observed_leader()
                .map_or(self.election.max_epoch(), |(_, e)| e),
            state: self.state,
        }
    }

    pub fn quorum(&self) -> quorum::QuorumAssessment {
        self.quorum
    }

    fn assess_quorum(&self) -> quorum::QuorumAssessment {
        assess_quorum(&self.view, &self.roster, &self.config)
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

    /// The epoch this node leads with, if it leads.
    pub fn leading(&self) -> Option<u64> {
        self.election.leading()
    }

    /// The leader this node sees, and its epoch.
    pub fn leader(&self) -> Option<(&str, u64)> {
        self.election.observed_leader()
    }

    /// When the node next needs a call even if gossip says nothing new.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.split.next_deadline()
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

/// [`quorum::assess`] over the roster and the members up in the view (this node always),
/// counted in place.
fn assess_quorum(
    view: &MemberView,
    roster: &Roster,
    config: &NodeConfig,
) -> quorum::QuorumAssessment {
    let (mut up, mut lowest_up) = (0, None);
    for (id, in_view) in view.up_among(roster.ids()) {
        let is_up = in_view || *id == config.node_id;
        up += usize::from(is_up);
        lowest_up.get_or_insert(is_up);
    }
    quorum::decide(roster.len(), up, lowest_up.unwrap_or(false), config.expect)
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
