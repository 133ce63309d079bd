//! The leader from consensus: Raft (tikv's raft-rs) among a small set of voters, driven like
//! the rest of chorus-core: time and messages in, outputs out, no I/O.
//!
//! # Calling contract
//! The node owns one [`Consensus`] and, with the current time each time:
//! - calls [`Consensus::handle_timeout`] at [`Consensus::poll_timeout`] (and whenever gossip
//!   changed what it knows of the others), [`Consensus::handle_message`] for every Raft
//!   message that arrives, and the `request_*` methods for operator commands;
//! - then drains [`Consensus::poll_output`] and carries every output out **in order**: a
//!   [`Output::Persist`] must be durable before any later [`Output::Send`] leaves, and a
//!   failed write is reported with [`Consensus::handle_persist_failed`].
//!
//! # What it guarantees (docs/leader.md has the argument; `tests/scenarios.rs` the checker)
//! - At most one node holds a valid lease at any instant ([`lease`]): leases end before any
//!   later leader can be elected, for clocks whose rates differ by less than
//!   [`RaftTiming::lease`]'s margin.
//! - Epochs are Raft terms: a lease is taken only in the term its node leads, terms only grow
//!   and are persisted by Raft before they are used.
//! - Tasks of a new leader start only after every earlier lease plus the task grace has run out
//!   (`tasks_from` in [`Output::LeaseAcquired`]).
//! - The voter set changes only through committed membership changes ([`autopilot`]).
//! - Messages are accepted only from the node their Raft id belongs to, in this node's
//!   cluster, with sane terms; raft-rs never sees a local message type from the network.

// raft-rs's protobuf messages are built field by field, as raft-rs itself does.
#![allow(clippy::field_reassign_with_default)]

pub mod autopilot;
pub mod bootstrap;
pub mod envelope;
pub mod lease;
pub mod state;
pub mod storage;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::alert::Alert;
use crate::member::NodeId;
use autopilot::{Candidate, Change, Limits, Voter};
use bootstrap::Seen;
use lease::Lease;
use state::{ClusterState, MemberInfo};
pub use storage::{NodeStorage, RaftDisk, RaftWrite};

/// Raft's clock: how often it ticks, and in ticks how often a leader sends heartbeats and how
/// long a follower waits before it stands for election. Durations derive from these.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RaftTiming {
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
    /// How long a majority's acknowledgement lets the leader act alone: well under the
    /// election timeout, so that clocks running up to [`CLOCK_RATE_MARGIN`] apart still end a
    /// lease before another leader can be elected.
    pub lease: Duration,
    /// How long a task of a lost lease may take to die (SIGTERM, then SIGKILL): a new leader
    /// starts tasks only this long after it was elected.
    pub task_grace: Duration,
    /// A node must be up this long before it is made a voter.
    pub stabilize: Duration,
    /// A voter down this long is replaced (`--reap-after`).
    pub replace_after: Duration,
    /// A node waits this long after its start before it bootstraps a cluster, so gossip can
    /// show it a cluster that already exists.
    pub settle: Duration,
}

/// The relative clock-rate difference between two nodes that leases tolerate.
pub const CLOCK_RATE_MARGIN: f64 = 0.2;

impl RaftTiming {
    /// chorus's defaults: 100 ms ticks, heartbeats every 200 ms, elections after 1-2 s, a
    /// lease of 0.8 s renewed every heartbeat, tasks given 2 s to die.
    pub fn new(replace_after: Duration) -> RaftTiming {
        let tick = Duration::from_millis(100);
        let election_ticks = 10;
        RaftTiming {
            tick,
            heartbeat_ticks: 2,
            election_ticks,
            lease: (tick * election_ticks as u32).mul_f64(1.0 - CLOCK_RATE_MARGIN),
            task_grace: Duration::from_secs(2),
            stabilize: Duration::from_secs(10),
            replace_after,
            settle: Duration::from_secs(2),
        }
    }

    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    pub node_id: NodeId,
    /// This data dir's identity in Raft: a node whose data dir was wiped is a new member.
    pub raft_id: u64,
    pub addr: SocketAddr,
    /// At most this many voters (`--voters`, odd).
    pub max_voters: usize,
    /// Nodes to see before bootstrapping a cluster ([`bootstrap`]).
    pub expect: usize,
    pub timing: RaftTiming,
    /// Seeds the election timeouts and the cluster id (replays are exact in the simulator).
    pub seed: u64,
}

/// What the node knows of another node from gossip.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerFacts {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    /// Its published Raft id and cluster (0: none).
    pub raft_id: u64,
    pub cluster_id: u64,
    /// Alive or suspect, and compatible.
    pub up: bool,
    pub compatible: bool,
    /// Active (not draining, not left).
    pub active: bool,
    pub may_lead: bool,
    /// The Raft id it votes for to start a cluster (0: none; [`bootstrap`]).
    pub bootstrap_vote: u64,
}

/// Who sent a Raft message, as the transport knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sender<'a> {
    /// The node id the transport authenticated (QUIC's certificate and hello); `None` when
    /// nothing authenticates the peer (`--transport udp`).
    pub node_id: Option<&'a str>,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send these bytes to this node.
    Send {
        node_id: NodeId,
        addr: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Make this durable before anything that follows.
    Persist(RaftWrite),
    /// This node leads in `term` and holds the lease until `until`; tasks may start at
    /// `tasks_from`.
    LeaseAcquired {
        term: u64,
        until: Instant,
        tasks_from: Instant,
    },
    /// The lease now runs to `until`.
    LeaseRenewed {
        until: Instant,
    },
    /// The lease of `term` ended (expired, stepped down, drained): stop acting now.
    LeaseLost {
        term: u64,
    },
    /// Read the data dir again and hand it to [`Consensus::handle_reload`]: Raft stopped after
    /// a failure and must start over from what is durable.
    Reload,
    Alert(Alert),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    #[error("a Raft message for {to} reached {me}")]
    NotForMe { to: u64, me: u64 },
    #[error("Raft id {raft_id} does not belong to {sender}")]
    WrongSender { raft_id: u64, sender: String },
    #[error("a Raft message of cluster {theirs:x} reached cluster {ours:x}")]
    OtherCluster { theirs: u64, ours: u64 },
    #[error("a local Raft message type {0:?} came from the network")]
    LocalType(MessageType),
    #[error("Raft is stopped on this node until its data is read again")]
    Stopped,
}

/// Why an operator's request was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("this node is not part of a cluster yet")]
    NotMember,
    #[error("{0} is not a voter")]
    NotVoter(NodeId),
    #[error("the cluster has no leader to take the change; try again")]
    NoLeader,
}

/// The lease this node holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Held {
    pub term: u64,
    pub until: Instant,
    pub tasks_from: Instant,
}

/// How many ticks one call may run at most: a node back from a long pause does not spin.
const MAX_TICKS_PER_CALL: u64 = 1000;

pub struct Consensus {
    cfg: ConsensusConfig,
    rng: StdRng,
    started: Instant,
    /// Raft state came from the data dir: votes are refused for an election timeout after
    /// the start, as the acknowledgements this node gave before it stopped may still hold a
    /// lease up somewhere.
    restarted: bool,
    raw: Option<RawNode<NodeStorage>>,
    storage: NodeStorage,
    state: ClusterState,
    applied: u64,
    /// The index of the last applied membership change.
    conf_index: u64,
    /// The randomized election timeout this node chose last (raft-rs draws its own from the
    /// thread's RNG; replacing it keeps runs reproducible from the seed).
    election_timeout: usize,
    last_tick: Instant,
    lease: Lease,
    held: Option<Held>,
    /// The term of the last lease this node lost: one regained in the same term waits for its
    /// own lapsed runs too.
    lapsed: Option<u64>,
    /// When this node last became leader, and in which term.
    elected: Option<(u64, Instant)>,
    /// The node gives up leading (drain, leave, not eligible): no lease, hand over.
    relinquish: bool,
    may_lead: bool,
    last_transfer: Option<Instant>,
    last_lease_request: Option<Instant>,
    peers: BTreeMap<u64, PeerFacts>,
    up_since: BTreeMap<u64, Instant>,
    down_since: BTreeMap<u64, Instant>,
    /// Raft ids whose removal an operator asked for, retried until applied.
    removals: Vec<u64>,
    last_removal_try: Option<Instant>,
    stopped: bool,
    /// Whom this node votes for to start a cluster, once chosen (persisted, never changed).
    bootstrap_vote: u64,
    conflict_reported: Option<u64>,
    /// What the sends of the Ready being handled must tell raft-rs once it is advanced
    /// (raft-rs takes no step while a Ready is out).
    send_reports: Vec<SendReport>,
    out: VecDeque<Output>,
}

/// A fact about a send that raft-rs must learn after the Ready that produced it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SendReport {
    /// No address is known for this Raft id.
    Unreachable(u64),
    /// A snapshot went out. Delivery is not confirmed (a lost one is sent again once the
    /// follower, probed, still lags), but until this report raft-rs keeps the follower in
    /// snapshot state and sends it nothing.
    SnapshotSent(u64),
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("node_id", &self.cfg.node_id)
            .field("raft_id", &self.cfg.raft_id)
            .field("term", &self.term())
            .field("leader", &self.leader())
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Consensus {
    /// `disk`: what the data dir held (empty for a node never in a cluster).
    pub fn new(now: Instant, cfg: ConsensusConfig, disk: &RaftDisk) -> Consensus {
        let mut c = Consensus {
            rng: StdRng::seed_from_u64(cfg.seed ^ cfg.raft_id),
            lease: Lease::new(cfg.timing.lease),
            cfg,
            started: now,
            restarted: false,
            raw: None,
            storage: NodeStorage::new(),
            state: ClusterState::default(),
            applied: 0,
            conf_index: 0,
            election_timeout: 0,
            last_tick: now,
            held: None,
            lapsed: None,
            elected: None,
            relinquish: false,
            may_lead: true,
            last_transfer: None,
            last_lease_request: None,
            peers: BTreeMap::new(),
            up_since: BTreeMap::new(),
            down_since: BTreeMap::new(),
            removals: Vec::new(),
            last_removal_try: None,
            stopped: false,
            bootstrap_vote: 0,
            conflict_reported: None,
            send_reports: Vec::new(),
            out: VecDeque::new(),
        };
        c.load(disk);
        c
    }

    fn load(&mut self, disk: &RaftDisk) {
        if !disk.is_initialized() {
            // A node not in a cluster keeps only its bootstrap vote, in the hard state's vote.
            self.bootstrap_vote = disk.hard_state.vote;
            return;
        }
        match NodeStorage::restore(disk) {
            Ok(storage) => {
                let applied = disk.snapshot.get_metadata().index;
                if !disk.snapshot.is_empty() {
                    match ClusterState::decode(disk.snapshot.get_data()) {
                        Ok(s) => self.state = s,
                        Err(e) => return self.fail(format!("the snapshot on disk: {e}")),
                    }
                }
                self.applied = applied;
                self.conf_index = applied;
                self.storage = storage;
                self.restarted = true;
                self.start_raw(applied);
            }
            Err(e) => self.fail(format!("the Raft log on disk: {e}")),
        }
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        let t = &self.cfg.timing;
        raft::Config {
            id: self.cfg.raft_id,
            election_tick: t.election_ticks,
            heartbeat_tick: t.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 64,
            ..raft::Config::default()
        }
    }

    fn start_raw(&mut self, applied: u64) {
        let config = self.raft_config(applied);
        match RawNode::new(&config, self.storage.clone(), &logger()) {
            Ok(raw) => {
                self.raw = Some(raw);
                self.reseed_election_timeout();
            }
            Err(e) => self.fail(format!("cannot start Raft: {e}")),
        }
    }

    /// Stops Raft on this node until the data dir is read again: no messages, no lease.
    fn fail(&mut self, why: String) {
        self.drop_lease();
        self.raw = None;
        self.stopped = true;
        self.send_reports.clear();
        self.out.retain(|o| !matches!(o, Output::Send { .. }));
        self.out.push_back(Output::Alert(Alert::PersistFailed {
            what: "raft".into(),
            error: why,
        }));
        self.out.push_back(Output::Reload);
    }

    // ----- getters -----

    pub fn config(&self) -> &ConsensusConfig {
        &self.cfg
    }

    /// Whom this node votes for to start a cluster (0: none; [`bootstrap`]).
    pub fn bootstrap_vote(&self) -> u64 {
        if self.raw.is_some() {
            0
        } else {
            self.bootstrap_vote
        }
    }

    /// The cluster this node belongs to (0: none yet).
    pub fn cluster_id(&self) -> u64 {
        self.state.cluster_id
    }

    pub fn term(&self) -> u64 {
        self.raw.as_ref().map_or(0, |r| r.raft.term)
    }

    /// This node's Raft role (`None`: not in a cluster, or stopped).
    pub fn role(&self) -> Option<StateRole> {
        self.raw.as_ref().map(|r| r.raft.state)
    }

    /// The commit index this node knows.
    pub fn commit(&self) -> u64 {
        self.raw.as_ref().map_or(0, |r| r.raft.raft_log.committed)
    }

    /// The Raft leader this node follows (or is), by node id.
    pub fn leader(&self) -> Option<&str> {
        let raw = self.raw.as_ref()?;
        let id = raw.raft.leader_id;
        if id == 0 {
            return None;
        }
        if id == self.cfg.raft_id {
            return Some(&self.cfg.node_id);
        }
        // A follower shows its leader only while it hears from it: within a lease of its last
        // message (raft-rs counts ticks since then), so a deposed or cut-off leader stops being
        // shown about as soon as its lease has ended.
        let heard = self.cfg.timing.tick * raw.raft.election_elapsed.min(u32::MAX as usize) as u32;
        if heard >= self.cfg.timing.lease {
            return None;
        }
        self.state.node_of(id)
    }

    /// The lease this node holds now, if any.
    pub fn held(&self, now: Instant) -> Option<Held> {
        self.held.filter(|h| now < h.until)
    }

    /// The node ids of the voters, as this node last applied them.
    pub fn voters(&self) -> Vec<NodeId> {
        let Some(raw) = self.raw.as_ref() else {
            return Vec::new();
        };
        let conf = raw.raft.prs().conf().to_conf_state();
        let mut v: Vec<NodeId> = conf
            .voters
            .iter()
            .filter_map(|id| {
                if *id == self.cfg.raft_id {
                    Some(self.cfg.node_id.clone())
                } else {
                    self.state.node_of(*id).map(str::to_string)
                }
            })
            .collect();
        v.sort();
        v
    }

    /// The Raft ids of the voters, as this node last applied them.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.raw
            .as_ref()
            .map_or_else(Vec::new, |r| r.raft.prs().conf().to_conf_state().voters)
    }

    pub fn is_voter(&self) -> bool {
        self.raw
            .as_ref()
            .is_some_and(|r| r.raft.prs().conf().voters().contains(self.cfg.raft_id))
    }

    /// The index of the last applied membership change: a newer voter list has a larger one.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// When [`Consensus::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let next_tick = self.last_tick + self.cfg.timing.tick;
        match self.held {
            Some(h) if h.until < next_tick => h.until,
            _ => next_tick,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ----- inputs -----

    /// Time passed and gossip says `peers` (every other node it knows): tick Raft, renew or
    /// drop the lease, bootstrap, and (on the leader) change voters.
    pub fn handle_timeout(&mut self, now: Instant, peers: &[PeerFacts], may_lead: bool) {
        self.update_peers(now, peers);
        self.may_lead = may_lead;
        if self.stopped {
            // Nothing to tick, but the clock moves on: a `poll_timeout` left in the past would
            // have the caller call again at once, forever.
            self.last_tick = now;
            return;
        }
        if self.raw.is_none() {
            self.maybe_bootstrap(now);
        }
        let elapsed = now.saturating_duration_since(self.last_tick);
        let ticks = (elapsed.as_nanos() / self.cfg.timing.tick.as_nanos().max(1)) as u64;
        for _ in 0..ticks.min(MAX_TICKS_PER_CALL) {
            let Some(raw) = self.raw.as_mut() else { break };
            if catch_unwind(AssertUnwindSafe(|| raw.tick())).is_err() {
                return self.fail("raft-rs panicked on a tick".into());
            }
            // A tick may start an election, which draws a new timeout: make it ours.
            self.reseed_election_timeout();
        }
        self.last_tick += self.cfg.timing.tick * ticks.min(u32::MAX as u64) as u32;
        if ticks > MAX_TICKS_PER_CALL {
            self.last_tick = now;
        }
        self.process_ready(now);
        self.lead(now);
        self.retry_removals(now);
        self.process_ready(now);
        self.check_lease(now);
    }

    /// A Raft message from `from`. An error means it was dropped (and why); nothing changed.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: &Sender<'_>,
        bytes: &[u8],
    ) -> Result<(), MessageError> {
        if self.stopped {
            return Err(MessageError::Stopped);
        }
        let (cluster_id, msg) = envelope::decode(bytes)?;
        if msg.to != self.cfg.raft_id {
            return Err(MessageError::NotForMe {
                to: msg.to,
                me: self.cfg.raft_id,
            });
        }
        if raft::raw_node::is_local_msg(msg.get_msg_type()) {
            return Err(MessageError::LocalType(msg.get_msg_type()));
        }
        self.check_sender(msg.from, from)?;
        let ours = self.state.cluster_id;
        if ours != 0 && cluster_id != ours {
            if self.conflict_reported != Some(cluster_id) {
                self.conflict_reported = Some(cluster_id);
                self.out
                    .push_back(Output::Alert(Alert::SplitBrainSuspected {
                        lost: Vec::new(),
                        reachable: vec![from.node_id.unwrap_or("?").to_string()],
                    }));
            }
            return Err(MessageError::OtherCluster {
                theirs: cluster_id,
                ours,
            });
        }
        let is_vote = matches!(
            msg.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        );
        if is_vote
            && self.restarted
            && now.saturating_duration_since(self.started) < self.cfg.timing.election_timeout()
        {
            // Acknowledgements from before the restart may still hold a lease up.
            return Ok(());
        }
        if self.raw.is_none() {
            if cluster_id == 0 {
                return Ok(());
            }
            // Joining: an empty log that the leader fills (a snapshot first).
            self.state.cluster_id = cluster_id;
            self.start_raw(0);
        }
        let Some(raw) = self.raw.as_mut() else {
            return Err(MessageError::Stopped);
        };
        let stepped = catch_unwind(AssertUnwindSafe(|| raw.step(msg)));
        match stepped {
            Ok(_) => {}
            Err(_) => {
                self.fail("raft-rs panicked on a message".into());
                return Err(MessageError::Stopped);
            }
        }
        self.process_ready(now);
        self.check_lease(now);
        Ok(())
    }

    /// The write of the last [`Output::Persist`] failed: Raft stops here (it cannot go on
    /// with a log it did not keep) and asks for the data dir to be read again.
    pub fn handle_persist_failed(&mut self, error: &str) {
        if !self.stopped {
            self.fail(format!("cannot write the Raft log: {error}"));
        }
    }

    /// What the data dir holds now, after an [`Output::Reload`].
    pub fn handle_reload(&mut self, now: Instant, disk: &RaftDisk) {
        self.stopped = false;
        self.raw = None;
        self.storage = NodeStorage::new();
        self.state = ClusterState::default();
        self.started = now;
        self.last_tick = now;
        self.load(disk);
    }

    /// Leading is not for this node now (drain, leave): drop the lease at once and hand
    /// leadership to another voter.
    pub fn relinquish(&mut self, now: Instant) {
        self.relinquish = true;
        self.drop_lease();
        self.transfer(now);
        self.process_ready(now);
    }

    /// Leading is allowed again (resume).
    pub fn resume(&mut self) {
        self.relinquish = false;
    }

    /// Removes `node` from the voters (`chorus forget`, `chorus leave --permanent`); retried
    /// until it is applied.
    pub fn request_removal(&mut self, now: Instant, node: &str) -> Result<(), RequestError> {
        if self.raw.is_none() {
            return Err(RequestError::NotMember);
        }
        let id = if node == self.cfg.node_id {
            self.cfg.raft_id
        } else {
            self.state
                .raft_id_of(node)
                .ok_or_else(|| RequestError::NotVoter(node.to_string()))?
        };
        if !self.removals.contains(&id) {
            self.removals.push(id);
        }
        self.last_removal_try = None;
        self.retry_removals(now);
        self.process_ready(now);
        Ok(())
    }

    /// Whether `node` is out of the voters (a removal asked for has been applied).
    pub fn is_removed(&self, node: &str) -> bool {
        !self.voters().iter().any(|v| v == node)
    }

    // ----- internals -----

    fn update_peers(&mut self, now: Instant, peers: &[PeerFacts]) {
        self.peers.clear();
        for p in peers {
            if p.raft_id == 0 || p.raft_id == self.cfg.raft_id {
                continue;
            }
            // One node id per Raft id: a second claimant is ignored.
            self.peers.entry(p.raft_id).or_insert_with(|| p.clone());
        }
        let healthy = |p: &PeerFacts| p.up && p.compatible && p.active;
        for (id, p) in &self.peers {
            if healthy(p) {
                self.up_since.entry(*id).or_insert(now);
                self.down_since.remove(id);
            } else {
                self.up_since.remove(id);
                self.down_since.entry(*id).or_insert(now);
            }
        }
        // A member gossip no longer knows at all counts as down since it was first missed.
        for id in self.state.members.keys() {
            if *id != self.cfg.raft_id && !self.peers.contains_key(id) {
                self.up_since.remove(id);
                self.down_since.entry(*id).or_insert(now);
            }
        }
        let known: Vec<u64> = self
            .peers
            .keys()
            .chain(self.state.members.keys())
            .copied()
            .collect();
        self.up_since.retain(|id, _| known.contains(id));
        self.down_since.retain(|id, _| known.contains(id));
    }

    fn check_sender(&self, raft_id: u64, from: &Sender<'_>) -> Result<(), MessageError> {
        let wrong = || MessageError::WrongSender {
            raft_id,
            sender: from
                .node_id
                .map_or_else(|| from.addr.to_string(), str::to_string),
        };
        if raft_id == 0 || raft_id == self.cfg.raft_id {
            return Err(wrong());
        }
        let (node, addr) = match self.state.members.get(&raft_id) {
            Some(m) => (m.node_id.as_str(), m.addr),
            None => match self.peers.get(&raft_id) {
                Some(p) if p.compatible => (p.node_id.as_str(), p.addr),
                _ => return Err(wrong()),
            },
        };
        let ok = match from.node_id {
            Some(n) => n == node,
            None => from.addr == addr,
        };
        if ok {
            Ok(())
        } else {
            Err(wrong())
        }
    }

    fn maybe_bootstrap(&mut self, now: Instant) {
        if now.saturating_duration_since(self.started) < self.cfg.timing.settle {
            return;
        }
        let mut me = Seen {
            raft_id: self.cfg.raft_id,
            info: MemberInfo {
                node_id: self.cfg.node_id.clone(),
                addr: self.cfg.addr,
            },
            cluster_id: 0,
            up: true,
            compatible: true,
            vote: self.bootstrap_vote,
        };
        let others: Vec<Seen> = self
            .peers
            .values()
            .map(|p| Seen {
                raft_id: p.raft_id,
                info: MemberInfo {
                    node_id: p.node_id.clone(),
                    addr: p.addr,
                },
                cluster_id: p.cluster_id,
                up: p.up,
                compatible: p.compatible,
                vote: p.bootstrap_vote,
            })
            .collect();
        if self.bootstrap_vote == 0 {
            let Some(vote) = bootstrap::choose_vote(&me, &others, self.cfg.expect) else {
                return;
            };
            // Durable before anyone sees it: a restart must not vote again differently.
            self.bootstrap_vote = vote;
            me.vote = vote;
            let mut hs = raft::eraftpb::HardState::default();
            hs.vote = vote;
            self.out.push_back(Output::Persist(RaftWrite {
                hard_state: Some(hs),
                ..RaftWrite::default()
            }));
        }
        let Some(voters) =
            bootstrap::voters_to_start(&me, &others, self.cfg.expect, self.cfg.max_voters)
        else {
            return;
        };
        let mut cluster_id = 0;
        while cluster_id == 0 {
            cluster_id = self.rng.gen();
        }
        self.state = ClusterState {
            cluster_id,
            members: voters.iter().cloned().collect(),
        };
        let mut snap = Snapshot::default();
        {
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = voters.iter().map(|(id, _)| *id).collect();
        }
        snap.data = self.state.encode().into();
        let mut hs = raft::eraftpb::HardState::default();
        hs.term = 1;
        hs.commit = 1;
        let disk = RaftDisk {
            snapshot: snap.clone(),
            entries: Vec::new(),
            hard_state: hs.clone(),
        };
        match NodeStorage::restore(&disk) {
            Ok(storage) => self.storage = storage,
            Err(e) => return self.fail(format!("bootstrap: {e}")),
        }
        self.out.push_back(Output::Persist(RaftWrite {
            snapshot: Some(snap),
            entries: Vec::new(),
            hard_state: Some(hs),
        }));
        self.applied = 1;
        self.conf_index = 1;
        self.start_raw(1);
        if let Some(raw) = self.raw.as_mut() {
            let _ = catch_unwind(AssertUnwindSafe(|| raw.campaign()));
        }
    }

    fn reseed_election_timeout(&mut self) {
        let Some(raw) = self.raw.as_mut() else { return };
        let current = raw.raft.randomized_election_timeout();
        if current == self.election_timeout {
            return;
        }
        let min = self.cfg.timing.election_ticks;
        let t = self.rng.gen_range(min..2 * min);
        raw.raft.set_randomized_election_timeout(t);
        self.election_timeout = t;
    }

    /// Carries out every Ready raft-rs has: persist, send, apply.
    fn process_ready(&mut self, now: Instant) {
        for _ in 0..64 {
            let Some(raw) = self.raw.as_mut() else { return };
            if !raw.has_ready() {
                break;
            }
            let mut rd = raw.ready();
            let role = rd.ss().map(|ss| ss.raft_state);
            let msgs = rd.take_messages();
            self.send_all(msgs);

            let mut write = RaftWrite::default();
            let raw = self.raw.as_mut().expect("checked above");
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let applied = raw.mut_store().mem().wl().apply_snapshot(snap.clone());
                if let Err(e) = applied {
                    return self.fail(format!("applying a snapshot: {e}"));
                }
                match ClusterState::decode(snap.get_data()) {
                    Ok(s) => self.state = s,
                    Err(e) => return self.fail(format!("a snapshot from the leader: {e}")),
                }
                let index = snap.get_metadata().index;
                self.applied = index;
                self.conf_index = index;
                let raw = self.raw.as_mut().expect("checked above");
                raw.mut_store().set_applied(index, snap.get_data().to_vec());
                write.snapshot = Some(snap);
            }
            let raw = self.raw.as_mut().expect("checked above");
            let entries = rd.take_entries();
            if !entries.is_empty() {
                let appended = raw.mut_store().mem().wl().append(&entries);
                if let Err(e) = appended {
                    return self.fail(format!("appending entries: {e}"));
                }
                write.entries = entries;
            }
            if let Some(hs) = rd.hs() {
                raw.mut_store().mem().wl().set_hardstate(hs.clone());
                write.hard_state = Some(hs.clone());
            }
            if !write.is_empty() {
                self.out.push_back(Output::Persist(write));
            }
            let persisted = rd.take_persisted_messages();
            self.send_all(persisted);
            // Confirmations are handled once the Ready is advanced: what they lead to may
            // step raft-rs.
            let confirmed: Vec<Vec<u8>> = rd
                .take_read_states()
                .into_iter()
                .map(|rs| rs.request_ctx)
                .collect();
            let committed = rd.take_committed_entries();
            self.apply(now, committed);
            let Some(raw) = self.raw.as_mut() else { return };
            let mut light = raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                let mut hs = raw.mut_store().mem().wl().hard_state().clone();
                hs.commit = commit;
                raw.mut_store().mem().wl().set_hardstate(hs.clone());
                self.out.push_back(Output::Persist(RaftWrite {
                    hard_state: Some(hs),
                    ..RaftWrite::default()
                }));
            }
            let msgs = light.take_messages();
            self.send_all(msgs);
            let committed = light.take_committed_entries();
            self.apply(now, committed);
            let Some(raw) = self.raw.as_mut() else { return };
            raw.advance_apply();
            self.report_sends();
            self.reseed_election_timeout();
            if let Some(role) = role {
                self.on_role(now, role);
            }
            for ctx in confirmed {
                self.lease_confirmed(now, &ctx);
            }
        }
    }

    /// Tells raft-rs what the sends of the last Ready need it to know.
    fn report_sends(&mut self) {
        let reports = std::mem::take(&mut self.send_reports);
        let Some(raw) = self.raw.as_mut() else { return };
        for report in reports {
            let _ = catch_unwind(AssertUnwindSafe(|| match report {
                SendReport::Unreachable(id) => raw.report_unreachable(id),
                SendReport::SnapshotSent(id) => raw.report_snapshot(id, SnapshotStatus::Finish),
            }));
        }
    }

    fn on_role(&mut self, now: Instant, role: StateRole) {
        let term = self.term();
        if role == StateRole::Leader {
            self.elected = Some((term, now));
            self.last_lease_request = None;
            self.lease.clear();
        } else {
            self.elected = None;
            self.drop_lease();
        }
    }

    fn send_all(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let target = match self.state.members.get(&to) {
                Some(info) => Some((info.node_id.clone(), info.addr)),
                None => self.peers.get(&to).map(|p| (p.node_id.clone(), p.addr)),
            };
            match target {
                Some((node_id, addr)) => {
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        self.send_reports.push(SendReport::SnapshotSent(to));
                    }
                    self.out.push_back(Output::Send {
                        node_id,
                        addr,
                        bytes: envelope::encode(self.state.cluster_id, &m),
                    })
                }
                None => self.send_reports.push(SendReport::Unreachable(to)),
            }
        }
    }

    fn apply(&mut self, _now: Instant, entries: Vec<Entry>) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                self.apply_conf_change(&e);
            }
            self.applied = e.index;
            if self.stopped {
                return;
            }
            let encoded = self.state.encode();
            if let Some(raw) = self.raw.as_mut() {
                raw.mut_store().set_applied(e.index, encoded);
            }
        }
    }

    fn apply_conf_change(&mut self, e: &Entry) {
        let cc = match ConfChangeV2::parse_from_bytes(e.get_data()) {
            Ok(cc) => cc,
            Err(err) => return self.fail(format!("a membership change does not decode: {err}")),
        };
        let info = state::decode_context(cc.get_context()).ok();
        let Some(raw) = self.raw.as_mut() else { return };
        let cs = match catch_unwind(AssertUnwindSafe(|| raw.apply_conf_change(&cc))) {
            Ok(Ok(cs)) => cs,
            Ok(Err(err)) => {
                // raft-rs refused it (it validates against the current configuration): the
                // entry is committed everywhere, so every member refuses it the same way.
                let _ = err;
                self.conf_index = e.index;
                return;
            }
            Err(_) => return self.fail("raft-rs panicked applying a membership change".into()),
        };
        raw.mut_store().set_conf_state(cs);
        for change in cc.get_changes() {
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(info) = info.clone() {
                        self.state.members.insert(change.node_id, info);
                    }
                }
                ConfChangeType::RemoveNode => {
                    self.state.members.remove(&change.node_id);
                    self.removals.retain(|id| *id != change.node_id);
                }
            }
        }
        self.conf_index = e.index;
    }

    fn is_leader(&self) -> bool {
        self.raw
            .as_ref()
            .is_some_and(|r| r.raft.state == StateRole::Leader)
    }

    /// The leader's round: ask for lease renewals, hand over when it should not lead, and
    /// make one voter change when one is due.
    fn lead(&mut self, now: Instant) {
        if !self.is_leader() {
            return;
        }
        if self.relinquish || !self.may_lead {
            self.drop_lease();
            self.transfer(now);
            return;
        }
        let every = self.cfg.timing.tick * self.cfg.timing.heartbeat_ticks as u32;
        if self
            .last_lease_request
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
        {
            self.last_lease_request = Some(now);
            let ctx = self.lease.request(now);
            if let Some(raw) = self.raw.as_mut() {
                raw.read_index(ctx);
            }
        }
        if self.held(now).is_some() {
            self.autopilot(now);
        }
    }

    fn autopilot(&mut self, now: Instant) {
        let Some(raw) = self.raw.as_ref() else { return };
        if raw.raft.pending_conf_index > self.applied {
            return;
        }
        let conf = raw.raft.prs().conf().to_conf_state();
        let voters: Vec<Voter> = conf
            .voters
            .iter()
            .map(|id| Voter {
                raft_id: *id,
                down_since: if *id == self.cfg.raft_id {
                    None
                } else {
                    self.down_since.get(id).copied().or_else(|| {
                        // A voter gossip never showed: down since this node started.
                        (!self.up_since.contains_key(id)).then_some(self.started)
                    })
                },
            })
            .collect();
        // Every healthy node follows as a learner first: it learns the voters and the leader
        // from Raft, and only a learner that keeps up (Raft heard from it lately and it holds
        // the log up to the commit index) is made a voter, never one that can send but not
        // receive.
        let joiner = self
            .peers
            .values()
            .filter(|p| p.up && p.compatible)
            .filter(|p| p.cluster_id == 0 || p.cluster_id == self.state.cluster_id)
            .filter(|p| !self.removals.contains(&p.raft_id))
            .find(|p| !conf.voters.contains(&p.raft_id) && !conf.learners.contains(&p.raft_id))
            .map(|p| {
                (
                    p.raft_id,
                    MemberInfo {
                        node_id: p.node_id.clone(),
                        addr: p.addr,
                    },
                )
            });
        if let Some((id, info)) = joiner {
            return self.propose_change(ConfChangeType::AddLearnerNode, id, Some(&info));
        }
        let dead_learner = conf.learners.iter().copied().find(|id| {
            self.down_since
                .get(id)
                .is_some_and(|d| now.saturating_duration_since(*d) >= self.cfg.timing.replace_after)
        });
        if let Some(id) = dead_learner {
            return self.propose_change(ConfChangeType::RemoveNode, id, None);
        }
        let committed = raw.raft.raft_log.committed;
        let keeps_up = |id: u64| {
            raw.raft
                .prs()
                .get(id)
                .is_some_and(|pr| pr.recent_active && pr.matched >= committed)
        };
        let candidates: Vec<Candidate> = self
            .peers
            .values()
            .filter(|p| p.up && p.compatible && p.active)
            .filter(|p| p.cluster_id == self.state.cluster_id)
            .filter(|p| !self.removals.contains(&p.raft_id))
            .filter(|p| conf.learners.contains(&p.raft_id) && keeps_up(p.raft_id))
            .filter_map(|p| {
                Some(Candidate {
                    raft_id: p.raft_id,
                    info: MemberInfo {
                        node_id: p.node_id.clone(),
                        addr: p.addr,
                    },
                    up_since: *self.up_since.get(&p.raft_id)?,
                    may_lead: p.may_lead,
                })
            })
            .collect();
        let limits = Limits {
            max_voters: self.cfg.max_voters,
            stabilize: self.cfg.timing.stabilize,
            replace_after: self.cfg.timing.replace_after,
        };
        match autopilot::next_change(now, self.cfg.raft_id, &voters, &candidates, &limits) {
            Some(Change::Add(id, info)) => {
                self.propose_change(ConfChangeType::AddNode, id, Some(&info))
            }
            Some(Change::Remove(id)) => self.propose_change(ConfChangeType::RemoveNode, id, None),
            None => {}
        }
    }

    fn propose_change(&mut self, ty: ConfChangeType, raft_id: u64, info: Option<&MemberInfo>) {
        let Some(raw) = self.raw.as_mut() else { return };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ty);
        single.node_id = raft_id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        if let Some(info) = info {
            cc.context = state::encode_context(info).into();
        }
        let _ = catch_unwind(AssertUnwindSafe(|| raw.propose_conf_change(Vec::new(), cc)));
    }

    fn retry_removals(&mut self, now: Instant) {
        let voters: Vec<u64> = match self.raw.as_ref() {
            Some(raw) => raw.raft.prs().conf().voters().ids().iter().collect(),
            None => return,
        };
        self.removals.retain(|id| voters.contains(id));
        let Some(&target) = self.removals.first() else {
            return;
        };
        if self
            .last_removal_try
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timing.election_timeout())
        {
            return;
        }
        self.last_removal_try = Some(now);
        if target == self.cfg.raft_id && self.is_leader() {
            // A leader does not remove itself: it hands over and the next leader does.
            self.relinquish(now);
            return;
        }
        self.propose_change(ConfChangeType::RemoveNode, target, None);
    }

    /// Hands leadership to the best voter that may lead (at most once per election timeout).
    fn transfer(&mut self, now: Instant) {
        if !self.is_leader() {
            return;
        }
        if self
            .last_transfer
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timing.election_timeout())
        {
            return;
        }
        let Some(raw) = self.raw.as_ref() else { return };
        let voters: Vec<u64> = raw.raft.prs().conf().voters().ids().iter().collect();
        // Up in gossip and answering Raft lately: gossip takes seconds to see a crash, and a
        // handover to a crashed voter would wait out a whole election timeout.
        let target = voters
            .into_iter()
            .filter(|id| *id != self.cfg.raft_id)
            .filter(|id| raw.raft.prs().get(*id).is_some_and(|p| p.recent_active))
            .filter(|id| {
                self.peers
                    .get(id)
                    .is_some_and(|p| p.up && p.compatible && p.active && p.may_lead)
            })
            .min();
        if let Some(target) = target {
            self.last_transfer = Some(now);
            if let Some(raw) = self.raw.as_mut() {
                raw.transfer_leader(target);
            }
        }
    }

    fn lease_confirmed(&mut self, now: Instant, ctx: &[u8]) {
        let Some(until) = self.lease.confirmed(ctx) else {
            return;
        };
        if !self.is_leader() || self.relinquish || !self.may_lead || until <= now {
            return;
        }
        // A lease that ran out since the last call ends here, before any new one begins.
        self.check_lease(now);
        let term = self.term();
        match self.held {
            Some(h) if h.term == term && now < h.until => {
                self.held = Some(Held { until, ..h });
                self.out.push_back(Output::LeaseRenewed { until });
            }
            _ => {
                let elected = match self.elected {
                    Some((t, at)) if t == term => at,
                    _ => now,
                };
                // Every earlier lease ended before this term's election; its tasks get the
                // grace to die after that. A lease regained in the same term waits too, for
                // this node's own runs of the lapsed lease.
                let tasks_from = if self.lapsed == Some(term) {
                    now + self.cfg.timing.task_grace
                } else {
                    (elected + self.cfg.timing.task_grace).max(now)
                };
                let held = Held {
                    term,
                    until,
                    tasks_from,
                };
                self.held = Some(held);
                self.out.push_back(Output::LeaseAcquired {
                    term,
                    until,
                    tasks_from,
                });
            }
        }
    }

    fn check_lease(&mut self, now: Instant) {
        if let Some(h) = self.held {
            if now >= h.until || !self.is_leader() || h.term != self.term() {
                self.drop_lease();
            }
        }
    }

    fn drop_lease(&mut self) {
        self.lease.clear();
        if let Some(h) = self.held.take() {
            self.lapsed = Some(h.term);
            self.out.push_back(Output::LeaseLost { term: h.term });
        }
    }
}

#[cfg(test)]
mod tests;
