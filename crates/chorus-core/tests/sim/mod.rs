//! A deterministic cluster simulator for chorus-core: N [`Node`]s, a virtual clock, a link
//! matrix and a small model of chitchat's gossip. No tokio, no real time, no sockets.
//!
//! # The gossip model (what it keeps of chitchat 0.11, and what it drops)
//! - Every node keeps a store: for each incarnation `(node_id, generation)` it has heard of,
//!   the newest heartbeat and the newest key-value snapshot (with a `max_version`).
//! - A node increments its own heartbeat once per gossip round and on every message it
//!   handles (chitchat's `update_self_heartbeat`).
//! - Every gossip round, each running node picks up to [`GOSSIP_COUNT`] peers among those its
//!   failure detector says are live (all known peers while none is), plus a random dead peer
//!   with probability `dead / (live + 1)`, plus a random seed with probability
//!   `seeds / (live + dead)` when fewer peers are live than there are seeds (every other node is
//!   a seed here), exactly as chitchat's `select_nodes_for_gossip`.
//! - One exchange is chitchat's three messages, each lost on a cut link or with the drop
//!   probability: SYN (A's digest: the heartbeat of every incarnation A knows) -> B learns those
//!   heartbeats; SYNACK (B's digest and delta) -> A learns heartbeats and every key-value
//!   snapshot newer than its own; ACK (A's delta) -> B learns A's snapshots. So state travels by
//!   relay, and, as in chitchat, a heartbeat can arrive without the keys that go with it.
//! - Failure detector: A counts a heartbeat report whenever an incarnation's heartbeat grows in
//!   its store; an interval longer than `max_interval` (10 rounds, at least 2 s) is not sampled.
//!   At the end of each of A's rounds an incarnation is live when it has at least one sampled
//!   interval and its last report is younger than `fd_timeout` (default 7 rounds: chitchat's phi
//!   is `elapsed / mean interval` against the agent's threshold of 7); judging it dead clears its
//!   samples, so it needs two fresh reports to come back, like chitchat's
//!   `SamplingWindow::reset`.
//! - Dropped: MTU truncation of deltas, per-key versions (a whole snapshot is copied), garbage
//!   collection of dead nodes, message latency (an exchange completes within its tick).
//!
//! # Time
//! A tick is `gossip_interval / ticks_per_round` (the agent ticks at half the gossip interval).
//! Each node gossips on its own phase of the round, and every running node gets
//! `handle_gossip(now, observations)` on every tick, then its effects are drained and carried
//! out: `Publish` into its own key space, `PersistRoster`/`PersistEpoch` onto its "disk",
//! alerts and leadership intervals into the [`Journal`].
//!
//! # Raft
//! Raft messages travel apart from gossip, as over the agent's QUIC streams: each is delivered
//! after a random delay of 1 to [`SimConfig::raft_delay_ms`] ms unless its link is cut, it is
//! lost with the drop probability, or its receiver is down or paused. Between gossip ticks the
//! clock moves in steps of [`RAFT_STEP`]: due messages are handled and every node whose
//! `poll_timeout` has come gets `handle_timeout`. `RaftPersist` is applied to the slot's disk at
//! once (before any later send), so a crash loses nothing that Raft was told is durable.
//!
//! Every step is logged (`[   12.300s] partition [n1,n2] | [n3,n4,n5]`) when the simulator is
//! verbose; run a test with `--nocapture` to see it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chorus_core::alert::Alert;
use chorus_core::consensus::{RaftDisk, RaftTiming, Sender};
use chorus_core::fingerprint::{CompatPolicy, Fingerprint};
use chorus_core::load::LoadPolicy;
use chorus_core::member::{NodeState, Published, Status};
use chorus_core::node::{Effect, Node, NodeConfig};
use chorus_core::quorum::Partition;
use chorus_core::roster::{Roster, RosterEntry};
use chorus_core::view::Observation;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// How far the clock moves at once between gossip ticks, for Raft.
pub const RAFT_STEP: Duration = Duration::from_millis(20);

/// chitchat's `GOSSIP_COUNT`: live peers contacted per round.
pub const GOSSIP_COUNT: usize = 3;
/// The wall-clock epoch the virtual clock starts at, for `start` (unix ms).
pub const BASE_UNIX_MS: u64 = 1_700_000_000_000;

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

pub fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// `n1`, `n2`, ... for the 1-based slot `i`.
pub fn name(i: usize) -> String {
    format!("n{i}")
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub gossip_interval: Duration,
    pub ticks_per_round: u32,
    /// How long a heartbeat may stay still before the failure detector calls its node dead.
    pub fd_timeout: Duration,
    pub suspect_after: Duration,
    pub split_window: Duration,
    pub reap_after: Duration,
    pub expect: usize,
    /// `--voters`.
    pub voters: usize,
    /// Raft messages take 1 to this many ms.
    pub raft_delay_ms: u64,
    pub seed: u64,
    pub verbose: bool,
}

impl SimConfig {
    /// The agent's timings for this gossip interval ([`NodeConfig::timings`]) and a failure
    /// detector that calls a node dead after 8 silent rounds.
    pub fn new(gossip_interval: Duration) -> SimConfig {
        let (suspect_after, split_window) = NodeConfig::timings(gossip_interval);
        SimConfig {
            gossip_interval,
            ticks_per_round: 2,
            fd_timeout: gossip_interval * 7,
            suspect_after,
            split_window,
            reap_after: secs(600),
            expect: 3,
            voters: 5,
            raft_delay_ms: 10,
            seed: 1,
            verbose: true,
        }
    }

    pub fn seed(mut self, seed: u64) -> SimConfig {
        self.seed = seed;
        self
    }

    pub fn quiet(mut self) -> SimConfig {
        self.verbose = false;
        self
    }

    pub fn tick(&self) -> Duration {
        self.gossip_interval / self.ticks_per_round
    }

    /// Raft's timings for this configuration (as the agent derives them).
    pub fn raft_timing(&self) -> RaftTiming {
        RaftTiming::new(self.reap_after)
    }

    /// The leader lease.
    pub fn lease(&self) -> Duration {
        self.raft_timing().lease
    }

    /// chitchat's `max_interval` for our gossip interval (the agent's setting).
    pub fn max_interval(&self) -> Duration {
        (self.gossip_interval * 10).max(secs(2))
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::new(ms(200))
    }
}

/// One step of a script. Nodes are 1-based: `Crash(1)` crashes `n1`.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Starts nodes `n1..=nN` that are not running yet (fresh data dirs).
    Start(usize),
    /// Starts (or restarts) one node.
    Boot(usize),
    /// Cuts every link between different groups; nodes in no group are alone.
    Partition(Vec<Vec<usize>>),
    /// Loses every message from the first node to the second (one way only).
    Cut(usize, usize),
    /// Restores every link, both partitions and one-way cuts.
    Heal,
    /// Stops the node at once (`kill -9`): no more ticks, no more gossip.
    Crash(usize),
    /// Starts the node again with a larger generation, its persisted roster, state and Raft
    /// log, and an empty gossip store.
    Restart(usize),
    /// A graceful stop (SIGTERM): `left` is published and gossiped once, then the node stops.
    Stop(usize),
    /// Restarts the node on a wiped data dir: a new Raft identity, no roster.
    Wipe(usize),
    /// SIGSTOP: the node does nothing and hears nothing until [`Op::Resume`].
    Pause(usize),
    Resume(usize),
    /// Loses this fraction of all messages.
    Drop(f64),
    Advance(Duration),
    /// `chorus drain` on the node.
    Drain(usize),
    /// Back to `active`.
    Activate(usize),
    AssertQuorum(usize, bool),
    AssertPartition(usize, Partition),
    /// The node sees exactly this many members up (itself included).
    AssertUp(usize, usize),
    /// The node raised this alert kind at least once.
    AssertAlert(usize, &'static str),
    /// The node never raised this alert kind.
    AssertNoAlert(usize, &'static str),
}

fn list(ids: &[usize]) -> String {
    let names: Vec<String> = ids.iter().map(|i| name(*i)).collect();
    format!("[{}]", names.join(","))
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Start(n) => write!(f, "start n1..n{n}"),
            Op::Boot(i) => write!(f, "boot {}", name(*i)),
            Op::Partition(groups) => {
                let g: Vec<String> = groups.iter().map(|g| list(g)).collect();
                write!(f, "partition {}", g.join(" | "))
            }
            Op::Cut(a, b) => write!(f, "cut {} -> {}", name(*a), name(*b)),
            Op::Heal => write!(f, "heal"),
            Op::Crash(i) => write!(f, "crash {}", name(*i)),
            Op::Restart(i) => write!(f, "restart {}", name(*i)),
            Op::Stop(i) => write!(f, "stop {} gracefully", name(*i)),
            Op::Wipe(i) => write!(f, "restart {} on a wiped data dir", name(*i)),
            Op::Pause(i) => write!(f, "pause {}", name(*i)),
            Op::Resume(i) => write!(f, "resume {}", name(*i)),
            Op::Drop(p) => write!(f, "drop {:.0}% of messages", p * 100.0),
            Op::Advance(d) => write!(f, "advance {d:?}"),
            Op::Drain(i) => write!(f, "drain {}", name(*i)),
            Op::Activate(i) => write!(f, "activate {}", name(*i)),
            Op::AssertQuorum(i, q) => write!(f, "assert {} quorum={q}", name(*i)),
            Op::AssertPartition(i, p) => write!(f, "assert {} partition={}", name(*i), p.as_str()),
            Op::AssertUp(i, n) => write!(f, "assert {} sees {n} up", name(*i)),
            Op::AssertAlert(i, k) => write!(f, "assert {} raised {k}", name(*i)),
            Op::AssertNoAlert(i, k) => write!(f, "assert {} never raised {k}", name(*i)),
        }
    }
}

/// One alert, when and where it was raised.
#[derive(Clone, Debug)]
pub struct AlertRecord {
    pub at: Duration,
    pub node: usize,
    pub generation: u64,
    pub alert: Alert,
}

/// One lease `[start, end)` of one incarnation, as the holder saw it.
#[derive(Clone, Debug)]
pub struct Leadership {
    pub node: usize,
    pub generation: u64,
    pub epoch: u64,
    pub start: Duration,
    /// When the holder dropped it (`None`: still held, or the holder crashed or paused).
    pub end: Option<Duration>,
    /// The lease's deadline, as last renewed: the holder may act until then even if it
    /// crashed or paused (its tasks' watchdog kills them at this deadline).
    pub until: Duration,
    /// Tasks may start from here.
    pub tasks_from: Duration,
}

impl Leadership {
    /// When the lease stops being valid, as of `now` (an open one still held: `now`).
    pub fn end_or(&self, now: Duration) -> Duration {
        match self.end {
            Some(end) => end.min(self.until),
            None => self.until.min(now.max(self.start)),
        }
    }
}

/// A Raft message on its way.
#[derive(Clone, Debug)]
struct Flight {
    at: Duration,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct Journal {
    pub alerts: Vec<AlertRecord>,
    pub leaderships: Vec<Leadership>,
    /// `Effect::SplitBrain` (the panic hook), per node.
    pub panics: Vec<(Duration, usize)>,
}

/// What a node's data dir holds across restarts.
#[derive(Clone, Debug, Default)]
struct Disk {
    roster: Vec<RosterEntry>,
    state: NodeState,
    raft: RaftDisk,
    /// The data dir's Raft identity (a wiped data dir gets a new one).
    raft_id: u64,
}

/// One key-value snapshot of one incarnation, shared between stores (copy on write).
#[derive(Debug)]
struct Kv {
    max_version: u64,
    pairs: BTreeMap<String, String>,
    published: Published,
}

impl Kv {
    fn new(max_version: u64, pairs: BTreeMap<String, String>) -> Kv {
        let published = Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Kv {
            max_version,
            pairs,
            published,
        }
    }
}

/// What one node knows of one incarnation.
#[derive(Debug, Clone)]
struct Known {
    addr: SocketAddr,
    heartbeat: u64,
    kv: Option<Rc<Kv>>,
    last_report: Option<Duration>,
    samples: u32,
    live: bool,
    /// In chitchat's dead set (judged not live at least once, not live since).
    dead: bool,
}

impl Known {
    fn new(addr: SocketAddr) -> Known {
        Known {
            addr,
            heartbeat: 0,
            kv: None,
            last_report: None,
            samples: 0,
            live: false,
            dead: false,
        }
    }
}

/// An incarnation: (1-based slot, generation).
type Key = (usize, u64);
type Store = BTreeMap<Key, Known>;

struct Running {
    node: Node,
    store: Store,
    key: Key,
    obs: ObsCache,
}

/// The observations handed to the node on the previous tick, updated in place: a snapshot is
/// only parsed and cloned again when it changed.
#[derive(Default)]
struct ObsCache {
    keys: Vec<Key>,
    kvs: Vec<Rc<Kv>>,
    obs: Vec<Observation>,
}

pub struct Slot {
    pub id: String,
    pub addr: SocketAddr,
    pub generation: u64,
    run: Option<Running>,
    disk: Disk,
    phase: u32,
    /// When this node's connectivity (or its being up, or its state) last changed: for the
    /// liveness check.
    pub last_fault: Duration,
    /// The running nodes it could reach at `last_fault`.
    reach: BTreeSet<usize>,
    /// SIGSTOPped: no ticks, no gossip, messages to it lost.
    pub paused: bool,
}

pub struct Sim {
    pub cfg: SimConfig,
    base: Instant,
    now: Duration,
    tick_no: u64,
    rng: StdRng,
    pub slots: Vec<Slot>,
    /// Partition group of each slot; equal groups can talk.
    group: Vec<usize>,
    /// One-way cuts (from, to) on top of the groups.
    cuts: BTreeSet<(usize, usize)>,
    drop: f64,
    /// When the drop probability last went from zero to non-zero or back.
    pub last_drop_change: Duration,
    pub journal: Journal,
    /// Per-tick checks run by the simulator itself; failures panic with the time.
    pub check_invariants: bool,
    flight: Vec<Flight>,
    next_raft_id: u64,
    /// Raft messages sent and their bytes.
    pub raft_messages: u64,
    pub raft_bytes: u64,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sim {
            cfg,
            base: Instant::now(),
            now: Duration::ZERO,
            tick_no: 0,
            rng,
            slots: Vec::new(),
            group: Vec::new(),
            cuts: BTreeSet::new(),
            drop: 0.0,
            last_drop_change: Duration::ZERO,
            journal: Journal::default(),
            check_invariants: true,
            flight: Vec::new(),
            next_raft_id: 1,
            raft_messages: 0,
            raft_bytes: 0,
        }
    }

    /// Virtual time since the start of the simulation.
    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    pub fn log(&self, msg: impl fmt::Display) {
        if self.cfg.verbose {
            println!("[{:>9.3}s] {msg}", self.now.as_secs_f64());
        }
    }

    pub fn run(&mut self, ops: &[Op]) {
        for op in ops {
            self.exec(op.clone());
        }
    }

    pub fn exec(&mut self, op: Op) {
        if !matches!(op, Op::Advance(_)) {
            self.log(&op);
        }
        match op {
            Op::Start(n) => {
                for i in 1..=n {
                    self.ensure_slot(i);
                    if self.slots[i - 1].run.is_none() {
                        self.boot(i);
                    }
                }
            }
            Op::Boot(i) => {
                self.ensure_slot(i);
                if self.slots[i - 1].run.is_some() {
                    self.crash(i);
                }
                self.boot(i);
            }
            Op::Partition(groups) => {
                for g in self.group.iter_mut() {
                    *g = usize::MAX;
                }
                for (gi, members) in groups.iter().enumerate() {
                    for &i in members {
                        self.ensure_slot(i);
                        self.group[i - 1] = gi;
                    }
                }
                let mut lone = groups.len();
                for g in self.group.iter_mut() {
                    if *g == usize::MAX {
                        *g = lone;
                        lone += 1;
                    }
                }
                self.mark_connectivity_faults();
            }
            Op::Cut(a, b) => {
                self.ensure_slot(a.max(b));
                self.cuts.insert((a, b));
                self.mark_connectivity_faults();
            }
            Op::Heal => {
                for g in self.group.iter_mut() {
                    *g = 0;
                }
                self.cuts.clear();
                self.mark_connectivity_faults();
            }
            Op::Crash(i) => self.crash(i),
            Op::Restart(i) => {
                if self.slots[i - 1].run.is_some() {
                    self.crash(i);
                }
                self.boot(i);
            }
            Op::Stop(i) => {
                if self.running(i) && !self.slots[i - 1].paused {
                    let now = self.instant();
                    self.node_mut(i).handle_leave(now);
                    self.slots[i - 1].disk.state = NodeState::Left;
                    self.drain_effects(i);
                    self.gossip_round(i);
                }
                self.crash(i);
            }
            Op::Wipe(i) => {
                self.ensure_slot(i);
                if self.slots[i - 1].run.is_some() {
                    self.crash(i);
                }
                let raft_id = self.new_raft_id();
                self.slots[i - 1].disk = Disk {
                    raft_id,
                    ..Disk::default()
                };
                self.boot(i);
            }
            Op::Pause(i) => {
                if self.running(i) {
                    self.slots[i - 1].paused = true;
                    self.slots[i - 1].last_fault = self.now;
                    self.mark_connectivity_faults();
                }
            }
            Op::Resume(i) => {
                if self.slots[i - 1].paused {
                    self.slots[i - 1].paused = false;
                    self.slots[i - 1].last_fault = self.now;
                    self.mark_connectivity_faults();
                }
            }
            Op::Drop(p) => {
                if (p > 0.0) != (self.drop > 0.0) {
                    self.last_drop_change = self.now;
                }
                self.drop = p;
            }
            Op::Advance(d) => self.advance(d),
            Op::Drain(i) => self.set_state(i, NodeState::Draining),
            Op::Activate(i) => self.set_state(i, NodeState::Active),
            Op::AssertQuorum(i, q) => {
                let st = self.node(i).status();
                assert_eq!(st.quorum, q, "{} at {:?}: {st:?}", name(i), self.now);
            }
            Op::AssertPartition(i, p) => {
                let st = self.node(i).status();
                assert_eq!(st.partition, p, "{} at {:?}: {st:?}", name(i), self.now);
            }
            Op::AssertUp(i, n) => {
                let up = self.up_seen_by(i);
                assert_eq!(up.len(), n, "{} at {:?} sees up {up:?}", name(i), self.now);
            }
            Op::AssertAlert(i, kind) => {
                assert!(
                    self.alerts_of(i, kind, Duration::ZERO).next().is_some(),
                    "{} never raised {kind}; its alerts: {:?}",
                    name(i),
                    self.kinds_of(i, Duration::ZERO)
                );
            }
            Op::AssertNoAlert(i, kind) => {
                let found: Vec<&AlertRecord> = self.alerts_of(i, kind, Duration::ZERO).collect();
                assert!(found.is_empty(), "{} raised {kind}: {found:?}", name(i));
            }
        }
    }

    fn ensure_slot(&mut self, i: usize) {
        assert!(i >= 1, "nodes are 1-based");
        while self.slots.len() < i {
            let n = self.slots.len() + 1;
            let raft_id = self.new_raft_id();
            self.slots.push(Slot {
                id: name(n),
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + n as u16)),
                generation: 0,
                run: None,
                disk: Disk {
                    raft_id,
                    ..Disk::default()
                },
                phase: 0,
                last_fault: self.now,
                reach: BTreeSet::new(),
                paused: false,
            });
            // A new node starts connected to group 0 (everyone, unless partitioned).
            self.group.push(0);
        }
    }

    fn new_raft_id(&mut self) -> u64 {
        let id = 1000 + self.next_raft_id;
        self.next_raft_id += 1;
        id
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint::compute(chorus_core::PROTOCOL_VERSION, "1.0.0", &[])
    }

    fn boot(&mut self, i: usize) {
        let now = self.instant();
        let start_ms = BASE_UNIX_MS + self.now.as_millis() as u64;
        let phase = self.rng.gen_range(0..self.cfg.ticks_per_round);
        let cfg = &self.cfg;
        let slot = &mut self.slots[i - 1];
        slot.generation += 1;
        slot.phase = phase;
        slot.last_fault = self.now;
        slot.paused = false;
        let fingerprint = Self::fingerprint();
        let config = NodeConfig {
            node_id: slot.id.clone(),
            cluster: "sim".into(),
            advertise_addr: slot.addr,
            fingerprint: fingerprint.clone(),
            policy: CompatPolicy::default(),
            suspect_after: cfg.suspect_after,
            expect: cfg.expect,
            load: LoadPolicy::default(),
            split_window: cfg.split_window,
            reap_after: cfg.reap_after,
            raft_id: slot.disk.raft_id,
            voters: cfg.voters,
            raft_timing: cfg.raft_timing(),
            // Distinct per node and incarnation, and never cancelled by the Raft id (which
            // Consensus mixes in, and which stays below 2^32 here).
            seed: cfg.seed ^ (slot.generation << 32) ^ ((i as u64) << 48),
        };
        let state = if slot.disk.state == NodeState::Left {
            NodeState::Active
        } else {
            slot.disk.state
        };
        let node = Node::new(
            now,
            config,
            Roster::from_entries(slot.disk.roster.clone()),
            state,
            &slot.disk.raft,
        );
        let pairs: BTreeMap<String, String> = Published::identity_pairs(&fingerprint, start_ms)
            .into_iter()
            .collect();
        let key = (i, slot.generation);
        let mut me = Known::new(slot.addr);
        me.kv = Some(Rc::new(Kv::new(pairs.len() as u64, pairs)));
        me.live = true;
        let mut store = Store::new();
        store.insert(key, me);
        slot.run = Some(Running {
            node,
            store,
            key,
            obs: ObsCache::default(),
        });
        self.drain_effects(i);
        self.mark_connectivity_faults();
    }

    fn crash(&mut self, i: usize) {
        let now = self.now;
        let generation = self.slots[i - 1].generation;
        if self.slots[i - 1].run.take().is_some() {
            for l in self.journal.leaderships.iter_mut() {
                if l.node == i && l.generation == generation && l.end.is_none() {
                    // Its lease stays valid to its deadline: the others must wait it out.
                    l.end = Some(l.until);
                    if self.cfg.verbose {
                        println!(
                            "[{:>9.3}s] {} crashed holding the lease of epoch {} (valid to {:.3}s)",
                            now.as_secs_f64(),
                            name(i),
                            l.epoch,
                            l.until.as_secs_f64()
                        );
                    }
                }
            }
        }
        self.flight.retain(|f| f.to != i);
        self.slots[i - 1].paused = false;
        self.slots[i - 1].last_fault = now;
        self.mark_connectivity_faults();
    }

    fn set_state(&mut self, i: usize, state: NodeState) {
        if self.slots[i - 1].paused {
            return;
        }
        let now = self.instant();
        let changed = self.slots[i - 1]
            .run
            .as_mut()
            .expect("node is running")
            .node
            .handle_set_state(now, state);
        if changed {
            self.slots[i - 1].disk.state = state;
            self.slots[i - 1].last_fault = self.now;
        }
        self.drain_effects(i);
    }

    /// Everyone whose set of reachable running nodes changed gets a fault stamp.
    fn mark_connectivity_faults(&mut self) {
        let reach: Vec<BTreeSet<usize>> = (1..=self.slots.len()).map(|i| self.reach(i)).collect();
        for (idx, r) in reach.into_iter().enumerate() {
            let slot = &mut self.slots[idx];
            if slot.reach != r {
                slot.reach = r;
                slot.last_fault = self.now;
            }
        }
    }

    /// Running nodes `i` can talk to both ways (itself included when running).
    pub fn reach(&self, i: usize) -> BTreeSet<usize> {
        if !self.awake(i) {
            return BTreeSet::new();
        }
        (1..=self.slots.len())
            .filter(|&j| {
                self.awake(j)
                    && self.group[j - 1] == self.group[i - 1]
                    && !self.cuts.contains(&(i, j))
                    && !self.cuts.contains(&(j, i))
            })
            .collect()
    }

    pub fn has_cuts(&self) -> bool {
        !self.cuts.is_empty()
    }

    pub fn running(&self, i: usize) -> bool {
        self.slots.get(i - 1).is_some_and(|s| s.run.is_some())
    }

    /// Whether node `i`'s data dir holds Raft state (it has been in a cluster).
    pub fn has_raft_state(&self, i: usize) -> bool {
        self.slots[i - 1].disk.raft.is_initialized()
    }

    /// Running and not paused.
    pub fn awake(&self, i: usize) -> bool {
        self.slots
            .get(i - 1)
            .is_some_and(|s| s.run.is_some() && !s.paused)
    }

    pub fn drop_rate(&self) -> f64 {
        self.drop
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.slots[i - 1]
            .run
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", name(i)))
            .node
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.slots[i - 1]
            .run
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", name(i)))
            .node
    }

    /// Ids `i` sees up (alive or suspect), itself included.
    pub fn up_seen_by(&self, i: usize) -> Vec<String> {
        self.node(i)
            .members()
            .filter(|m| m.status.is_up())
            .map(|m| m.node_id.clone())
            .collect()
    }

    pub fn status_seen_by(&self, i: usize, of: usize) -> Option<Status> {
        self.node(i)
            .members()
            .find(|m| m.node_id == name(of))
            .map(|m| m.status)
    }

    /// The running node that leads, if exactly one does; panics if several do.
    pub fn leaders(&self) -> Vec<(usize, u64)> {
        (1..=self.slots.len())
            .filter(|&i| self.awake(i))
            .filter_map(|i| self.node(i).leading().map(|e| (i, e)))
            .collect()
    }

    pub fn leader(&self) -> Option<(usize, u64)> {
        let l = self.leaders();
        assert!(l.len() <= 1, "several leaders at {:?}: {l:?}", self.now);
        l.first().copied()
    }

    pub fn alerts_of<'a>(
        &'a self,
        i: usize,
        kind: &'a str,
        since: Duration,
    ) -> impl Iterator<Item = &'a AlertRecord> + 'a {
        self.journal
            .alerts
            .iter()
            .filter(move |a| a.node == i && a.at >= since && a.alert.kind() == kind)
    }

    pub fn kinds_of(&self, i: usize, since: Duration) -> Vec<&'static str> {
        self.journal
            .alerts
            .iter()
            .filter(|a| a.node == i && a.at >= since)
            .map(|a| a.alert.kind())
            .collect()
    }

    /// Advances virtual time by `d`, one tick at a time.
    pub fn advance(&mut self, d: Duration) {
        self.log(format_args!("advance {d:?}"));
        let end = self.now + d;
        while self.now + self.cfg.tick() <= end {
            self.tick();
        }
    }

    /// Ticks until `pred` holds or `limit` has passed; returns the time it took.
    pub fn advance_until(
        &mut self,
        limit: Duration,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            if pred(self) {
                return Some(self.now - start);
            }
            self.tick();
        }
        pred(self).then(|| self.now - start)
    }

    /// One tick: Raft's steps up to it, then the nodes whose phase it is gossip, then every
    /// awake node handles the new gossip snapshot.
    pub fn tick(&mut self) {
        let end = self.now + self.cfg.tick();
        while self.now + RAFT_STEP < end {
            self.now += RAFT_STEP;
            self.raft_step();
        }
        self.now = end;
        self.raft_step();
        self.tick_no += 1;
        let phase = (self.tick_no % u64::from(self.cfg.ticks_per_round)) as u32;
        let mut order: Vec<usize> = (1..=self.slots.len())
            .filter(|&i| self.awake(i) && self.slots[i - 1].phase == phase)
            .collect();
        order.shuffle(&mut self.rng);
        for i in order {
            self.gossip_round(i);
        }
        let now = self.instant();
        for i in 1..=self.slots.len() {
            if !self.awake(i) {
                continue;
            }
            let run = self.slots[i - 1].run.as_mut().expect("awake");
            refresh_observations(run);
            run.node.handle_gossip(now, &run.obs.obs);
            self.drain_effects(i);
        }
        if self.check_invariants {
            self.check_tick_invariants();
        }
    }

    /// Delivers the Raft messages that are due, then runs the Raft timeouts that are due.
    fn raft_step(&mut self) {
        let now = self.now;
        let due: Vec<Flight> = {
            let (due, later): (Vec<Flight>, Vec<Flight>) = std::mem::take(&mut self.flight)
                .into_iter()
                .partition(|f| f.at <= now);
            self.flight = later;
            due
        };
        let at = self.instant();
        for f in due {
            if !self.awake(f.to) {
                continue;
            }
            let from_id = name(f.from);
            let from_addr = self.slots[f.from - 1].addr;
            let node = self.node_mut(f.to);
            let _ = node.handle_raft_message(
                at,
                &Sender {
                    node_id: Some(&from_id),
                    addr: from_addr,
                },
                &f.bytes,
            );
            self.drain_effects(f.to);
        }
        for i in 1..=self.slots.len() {
            if self.awake(i) && self.node(i).poll_timeout() <= at {
                self.node_mut(i).handle_timeout(at);
                self.drain_effects(i);
            }
        }
    }

    /// Checked on every tick of every simulation: a node's own view of its lease agrees with
    /// the journal, and no two leases are valid at once.
    fn check_tick_invariants(&self) {
        let now = self.now;
        let valid: Vec<&Leadership> = self
            .journal
            .leaderships
            .iter()
            .filter(|l| l.start <= now && now < l.end_or(now + Duration::from_nanos(1)))
            .collect();
        assert!(valid.len() <= 1, "two leases valid at {now:?}: {valid:?}");
    }

    fn lost(&mut self) -> bool {
        self.drop > 0.0 && self.rng.gen_bool(self.drop)
    }

    /// Whether a message from `a` reaches `b`.
    fn linked(&self, a: usize, b: usize) -> bool {
        self.group[a - 1] == self.group[b - 1] && !self.cuts.contains(&(a, b)) && self.awake(b)
    }

    fn gossip_round(&mut self, a: usize) {
        let now = self.now;
        // Peers by slot, as chitchat's sets of addresses (every incarnation of a node shares
        // its address). Every other node is a seed.
        let (mut live, mut dead, mut peers) = (Vec::new(), Vec::new(), Vec::new());
        {
            let run = self.slots[a - 1].run.as_mut().expect("running");
            bump_heartbeat(run);
            for (key, k) in &run.store {
                if *key == run.key {
                    continue;
                }
                if key.0 != a {
                    peers.push(key.0);
                }
                if k.live {
                    live.push(key.0);
                }
                if k.dead {
                    dead.push(key.0);
                }
            }
        }
        for set in [&mut live, &mut dead, &mut peers] {
            set.dedup();
        }
        let seeds = self.slots.len() - 1;
        // chitchat's select_nodes_for_gossip.
        let pool = if live.is_empty() { &peers } else { &live };
        let mut targets: Vec<usize> = pool
            .choose_multiple(&mut self.rng, GOSSIP_COUNT)
            .copied()
            .collect();
        let with_seed = targets.iter().any(|&t| t != a);
        let p_dead = dead.len() as f64 / (live.len() + 1) as f64;
        if !dead.is_empty() && p_dead > self.rng.gen::<f64>() {
            targets.push(*dead.choose(&mut self.rng).expect("non-empty"));
        }
        if (!with_seed || live.len() < seeds) && seeds > 0 {
            let p_seed = seeds as f64 / (live.len() + dead.len()) as f64;
            if live.is_empty() || self.rng.gen::<f64>() <= p_seed {
                let s = self.rng.gen_range(1..=seeds);
                targets.push(if s >= a { s + 1 } else { s });
            }
        }
        for b in targets {
            self.exchange(a, b);
        }
        let fd_timeout = self.cfg.fd_timeout;
        let run = self.slots[a - 1].run.as_mut().expect("running");
        update_liveness(run, now, fd_timeout);
    }

    /// One SYN / SYNACK / ACK exchange initiated by `a`.
    fn exchange(&mut self, a: usize, b: usize) {
        if a == b || !self.linked(a, b) || self.lost() {
            return;
        }
        let back = self.linked(b, a);
        let now = self.now;
        let max_interval = self.cfg.max_interval();
        // SYN: b learns a's digest.
        {
            let (sa, sb) = pair_mut(&mut self.slots, a - 1, b - 1);
            let (ra, rb) = (sa.run.as_mut().unwrap(), sb.run.as_mut().unwrap());
            bump_heartbeat(rb);
            apply_digest(rb, ra, now, max_interval);
        }
        if !back || self.lost() {
            return;
        }
        // SYNACK: a learns b's digest and delta.
        {
            let (sa, sb) = pair_mut(&mut self.slots, a - 1, b - 1);
            let (ra, rb) = (sa.run.as_mut().unwrap(), sb.run.as_mut().unwrap());
            bump_heartbeat(ra);
            apply_digest(ra, rb, now, max_interval);
            apply_delta(ra, rb);
        }
        if self.lost() {
            return;
        }
        // ACK: b learns a's delta.
        {
            let (sa, sb) = pair_mut(&mut self.slots, a - 1, b - 1);
            let (ra, rb) = (sa.run.as_mut().unwrap(), sb.run.as_mut().unwrap());
            bump_heartbeat(rb);
            apply_delta(rb, ra);
        }
    }

    fn drain_effects(&mut self, i: usize) {
        let now = self.now;
        let base = self.base;
        let verbose = self.cfg.verbose;
        let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let slot = &mut self.slots[i - 1];
        let generation = slot.generation;
        let Some(run) = slot.run.as_mut() else {
            return;
        };
        let mut publishes: Vec<(String, String)> = Vec::new();
        let mut reload = false;
        while let Some(effect) = run.node.poll_effect() {
            match effect {
                Effect::Publish { key, value } => publishes.push((key, value)),
                Effect::Alert(alert) => {
                    if verbose {
                        println!(
                            "[{:>9.3}s] {} alert={}: {alert}",
                            now.as_secs_f64(),
                            slot.id,
                            alert.kind()
                        );
                    }
                    self.journal.alerts.push(AlertRecord {
                        at: now,
                        node: i,
                        generation,
                        alert,
                    });
                }
                Effect::PersistRoster(r) => slot.disk.roster = r,
                Effect::RaftPersist(w) => {
                    assert!(
                        w.hard_state
                            .as_ref()
                            .is_none_or(|hs| hs.term >= slot.disk.raft.hard_state.term),
                        "{} persisted a term below {}",
                        slot.id,
                        slot.disk.raft.hard_state.term
                    );
                    slot.disk.raft.apply(&w);
                }
                Effect::RaftSend { addr, bytes, .. } => sends.push((addr, bytes)),
                Effect::RaftReload => reload = true,
                Effect::SplitBrain { .. } => self.journal.panics.push((now, i)),
                Effect::LeadershipAcquired {
                    epoch,
                    until,
                    tasks_from,
                } => {
                    assert!(
                        slot.disk.raft.hard_state.term >= epoch,
                        "{} leads with epoch {epoch} before persisting its term",
                        slot.id
                    );
                    assert!(
                        !self
                            .journal
                            .leaderships
                            .iter()
                            .any(|l| l.node == i && l.generation == generation && l.end.is_none()),
                        "{} acquired leadership twice",
                        slot.id
                    );
                    let until = until.saturating_duration_since(base);
                    let tasks_from = tasks_from.saturating_duration_since(base);
                    if verbose {
                        println!(
                            "[{:>9.3}s] {} leads (epoch {epoch}) until {:.3}s, tasks from {:.3}s",
                            now.as_secs_f64(),
                            slot.id,
                            until.as_secs_f64(),
                            tasks_from.as_secs_f64()
                        );
                    }
                    self.journal.leaderships.push(Leadership {
                        node: i,
                        generation,
                        epoch,
                        start: now,
                        end: None,
                        until,
                        tasks_from,
                    });
                }
                Effect::LeaseRenewed { until } => {
                    let open = self
                        .journal
                        .leaderships
                        .iter_mut()
                        .find(|l| l.node == i && l.generation == generation && l.end.is_none())
                        .unwrap_or_else(|| panic!("{} renewed a lease it did not hold", i));
                    let until = until.saturating_duration_since(base);
                    assert!(until >= open.until, "a renewal never shortens a lease");
                    assert!(
                        now < open.until,
                        "{} renewed a lease that had run out at {:?}",
                        name(i),
                        open.until
                    );
                    open.until = until;
                }
                Effect::LeadershipLost { epoch } => {
                    let open = self
                        .journal
                        .leaderships
                        .iter_mut()
                        .find(|l| l.node == i && l.generation == generation && l.end.is_none())
                        .unwrap_or_else(|| panic!("{} lost a leadership it did not hold", i));
                    assert_eq!(open.epoch, epoch, "{} lost another epoch", name(i));
                    open.end = Some(now);
                    if verbose {
                        println!(
                            "[{:>9.3}s] {} stops leading (epoch {epoch})",
                            now.as_secs_f64(),
                            slot.id
                        );
                    }
                }
            }
        }
        if !publishes.is_empty() {
            let me = run.store.get_mut(&run.key).expect("self in store");
            let old = me.kv.as_ref().expect("own kv");
            let mut pairs = old.pairs.clone();
            let mut version = old.max_version;
            for (k, v) in publishes {
                pairs.insert(k, v);
                version += 1;
            }
            me.kv = Some(Rc::new(Kv::new(version, pairs)));
        }
        if reload {
            let now = self.instant();
            let disk = self.slots[i - 1].disk.raft.clone();
            self.node_mut(i).handle_raft_reload(now, &disk);
        }
        for (addr, bytes) in sends {
            self.send_raft(i, addr, bytes);
        }
        if reload {
            self.drain_effects(i);
        }
    }

    fn send_raft(&mut self, from: usize, addr: SocketAddr, bytes: Vec<u8>) {
        self.raft_messages += 1;
        self.raft_bytes += bytes.len() as u64;
        let Some(to) = self
            .slots
            .iter()
            .position(|s| s.addr == addr)
            .map(|p| p + 1)
        else {
            return;
        };
        if to == from || !self.linked(from, to) || self.lost() {
            return;
        }
        let delay = ms(self.rng.gen_range(1..=self.cfg.raft_delay_ms.max(1)));
        self.flight.push(Flight {
            at: self.now + delay,
            from,
            to,
            bytes,
        });
    }

    /// Closes the journal at the current time: every open interval ends now.
    pub fn leaderships_closed(&self) -> Vec<Leadership> {
        self.journal
            .leaderships
            .iter()
            .map(|l| Leadership {
                end: Some(l.end_or(self.now)),
                ..l.clone()
            })
            .collect()
    }
}

fn pair_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

fn bump_heartbeat(run: &mut Running) {
    run.store.get_mut(&run.key).expect("self").heartbeat += 1;
}

/// chitchat's `report_heartbeats_in_digest`: every heartbeat the sender knows that is newer
/// than ours is taken, and reported to the failure detector.
fn apply_digest(recv: &mut Running, sender: &Running, now: Duration, max_interval: Duration) {
    for (key, k) in &sender.store {
        if *key == recv.key {
            continue;
        }
        if !recv.store.contains_key(key) {
            recv.store.insert(*key, Known::new(k.addr));
        }
        let mine = recv.store.get_mut(key).expect("inserted");
        if k.heartbeat > mine.heartbeat {
            mine.heartbeat = k.heartbeat;
            if let Some(last) = mine.last_report {
                if now - last <= max_interval {
                    mine.samples += 1;
                }
            }
            mine.last_report = Some(now);
        }
    }
}

/// The delta: every key-value snapshot the sender has that is newer than ours.
fn apply_delta(recv: &mut Running, sender: &Running) {
    for (key, k) in &sender.store {
        if *key == recv.key {
            continue;
        }
        let Some(kv) = &k.kv else { continue };
        if !recv.store.contains_key(key) {
            recv.store.insert(*key, Known::new(k.addr));
        }
        let mine = recv.store.get_mut(key).expect("inserted");
        if mine
            .kv
            .as_ref()
            .is_none_or(|m| m.max_version < kv.max_version)
        {
            mine.kv = Some(kv.clone());
        }
    }
}

/// chitchat's `update_nodes_liveness`, with a fixed timeout instead of phi.
fn update_liveness(run: &mut Running, now: Duration, fd_timeout: Duration) {
    let me = run.key;
    for (key, k) in run.store.iter_mut() {
        if *key == me {
            continue;
        }
        let alive = k.samples >= 1 && k.last_report.is_some_and(|t| now - t <= fd_timeout);
        if alive {
            k.live = true;
            k.dead = false;
        } else {
            k.live = false;
            k.dead = true;
            k.samples = 0;
        }
    }
}

/// What chitchat would report: every incarnation whose keys have arrived, with the failure
/// detector's verdict (a node is always live to itself).
fn refresh_observations(run: &mut Running) {
    let with_kv = || run.store.iter().filter(|(_, k)| k.kv.is_some());
    let same_keys = with_kv().map(|(key, _)| key).eq(run.obs.keys.iter());
    if !same_keys {
        run.obs = ObsCache::default();
        for (key, k) in with_kv() {
            let kv = k.kv.clone().expect("filtered");
            run.obs.obs.push(Observation {
                node_id: name(key.0),
                generation: key.1,
                addr: k.addr,
                live: false,
                heartbeat: 0,
                published: kv.published.clone(),
            });
            run.obs.keys.push(*key);
            run.obs.kvs.push(kv);
        }
    }
    for (i, (key, k)) in run.store.iter().filter(|(_, k)| k.kv.is_some()).enumerate() {
        let kv = k.kv.as_ref().expect("filtered");
        let o = &mut run.obs.obs[i];
        if !Rc::ptr_eq(&run.obs.kvs[i], kv) {
            o.published = kv.published.clone();
            run.obs.kvs[i] = kv.clone();
        }
        o.addr = k.addr;
        o.live = *key == run.key || k.live;
        o.heartbeat = k.heartbeat;
    }
}

/// Largest overlap (and the pair) between leaderships of different incarnations.
pub fn max_overlap(ls: &[Leadership]) -> (Duration, Option<(Leadership, Leadership)>) {
    let mut worst = (Duration::ZERO, None);
    for (x, a) in ls.iter().enumerate() {
        for b in &ls[x + 1..] {
            if a.node == b.node && a.generation == b.generation {
                continue;
            }
            let (ae, be) = (a.end.expect("closed"), b.end.expect("closed"));
            let start = a.start.max(b.start);
            let end = ae.min(be);
            if end > start && end - start > worst.0 {
                worst = (end - start, Some((a.clone(), b.clone())));
            }
        }
    }
    worst
}

impl Sim {
    /// One line per running node: its published vote, lead and epoch, and how it sees the
    /// others (status initial, heartbeat age in ms). For debugging a schedule.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let now = self.instant();
        for (idx, slot) in self.slots.iter().enumerate() {
            let Some(run) = slot.run.as_ref() else {
                out.push_str(&format!("  {} down\n", slot.id));
                continue;
            };
            let me = run.store.get(&run.key).and_then(|k| k.kv.clone());
            let p = me.as_ref().map(|k| &k.published);
            let ages: HashMap<&str, Duration> = run.node.heartbeat_ages(now).collect();
            let others: Vec<String> = run
                .node
                .members()
                .filter(|m| !m.is_self)
                .map(|m| {
                    format!(
                        "{}:{}{}",
                        m.node_id,
                        &m.status.as_str()[..1],
                        ages.get(m.node_id.as_str())
                            .map_or(String::new(), |a| format!("/{}", a.as_millis()))
                    )
                })
                .collect();
            let raft = run.node.raft_status();
            out.push_str(&format!(
                "  {} g{}{} raft={:?} {}/{} term={} commit={} voters={:?} leading={:?} q={} | {}\n",
                slot.id,
                slot.generation,
                if slot.paused { " PAUSED" } else { "" },
                p.and_then(|p| p.raft),
                raft.role.as_str(),
                raft.cluster,
                raft.term,
                raft.commit,
                raft.voters,
                run.node.leading(),
                run.node.status().quorum,
                others.join(" ")
            ));
            let _ = idx;
        }
        out
    }
}
