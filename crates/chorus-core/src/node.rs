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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::fingerprint::{CompatPolicy, Fingerprint};
use crate::load::{LoadPolicy, LoadTracker};
use crate::member::{keys, Member, NodeId, NodeState, Status};
use crate::quorum::{self, Partition};
use crate::roster::{Roster, RosterEntry};
use crate::view::{MemberView, Observation, ViewContext};

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
    effects: VecDeque<Effect>,
}

impl Node {
    /// `roster` is what the data dir remembered; this node is always part of its own roster.
    pub fn new(config: NodeConfig, mut roster: Roster, state: NodeState) -> Node {
        let mut effects = VecDeque::new();
        if roster.upsert(&config.node_id, config.advertise_addr) {
            effects.push_back(Effect::PersistRoster(roster.entries()));
        }
        effects.push_back(Effect::Publish {
            key: keys::STATE.into(),
            value: state.as_str().into(),
        });
        Node {
            load: LoadTracker::new(config.load.clone()),
            config,
            roster,
            view: MemberView::default(),
            state,
            rejections: HashMap::new(),
            effects,
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A full gossip snapshot: every incarnation chitchat knows, this node's included.
    pub fn handle_gossip(&mut self, now: Instant, observations: &[Observation]) {
        let before: HashMap<NodeId, (Status, u64)> = self
            .view
            .members()
            .map(|m| (m.node_id.clone(), (m.status, m.generation)))
            .collect();
        let ctx = ViewContext {
            self_id: &self.config.node_id,
            fingerprint: &self.config.fingerprint,
            policy: self.config.policy,
            suspect_after: self.config.suspect_after,
        };
        self.view.update(now, observations, &self.roster, &ctx);

        let mut roster_changed = false;
        let mut alerts = Vec::new();
        for m in self.view.members() {
            if m.is_self {
                continue;
            }
            let prev = before.get(&m.node_id).copied();
            alerts.extend(transition_alert(prev, m));
            match m.status {
                Status::Alive | Status::Suspect => {
                    roster_changed |= self.roster.upsert(&m.node_id, m.addr);
                    self.rejections.remove(&m.node_id);
                }
                Status::Left => roster_changed |= self.roster.remove(&m.node_id),
                Status::Rejected => {
                    let reason = m.reason.clone().unwrap_or_default();
                    if self.rejections.get(&m.node_id) != Some(&reason) {
                        self.rejections.insert(m.node_id.clone(), reason.clone());
                        alerts.push(Alert::VersionRejected {
                            node: m.node_id.clone(),
                            addr: Some(m.addr),
                            reason,
                        });
                    }
                }
                Status::Dead => {}
            }
        }
        self.effects.extend(alerts.into_iter().map(Effect::Alert));
        if roster_changed {
            self.effects
                .push_back(Effect::PersistRoster(self.roster.entries()));
        }
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
        self.publish_state();
        true
    }

    /// A graceful stop: tells the others at once instead of letting them wait for the failure
    /// detector.
    pub fn handle_leave(&mut self) {
        if self.state != NodeState::Left {
            self.state = NodeState::Left;
            self.publish_state();
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

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn status(&self) -> NodeStatus {
        let q = self.quorum();
        NodeStatus {
            node_id: self.config.node_id.clone(),
            cluster: self.config.cluster.clone(),
            fingerprint: self.config.fingerprint.digest.clone(),
            app_version: self.config.fingerprint.app_version.clone(),
            alive: self.view.members().filter(|m| m.status.is_up()).count(),
            roster: self.roster.len(),
            quorum: q.quorum,
            partition: q.partition,
            leader: None,
            epoch: 0,
            state: self.state,
        }
    }

    pub fn quorum(&self) -> quorum::QuorumAssessment {
        let roster: BTreeSet<NodeId> = self.roster.ids().cloned().collect();
        let mut up: BTreeSet<NodeId> = self
            .view
            .members()
            .filter(|m| m.status.is_up())
            .map(|m| m.node_id.clone())
            .collect();
        up.insert(self.config.node_id.clone());
        quorum::assess(&roster, &up, self.config.expect)
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
