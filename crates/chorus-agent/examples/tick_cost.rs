//! What one agent tick costs in CPU, at 100 members: read chitchat, decide, publish the view.
//!
//! `cargo run --release -p chorus-agent --example tick_cost [-- MEMBERS TICKS]`
//!
//! One agent (`n7`, a follower) runs the steps of `Running::step` against a chitchat state
//! filled with `MEMBERS` peers that behave as in a steady cluster at a 500 ms gossip interval
//! (the agent ticks every 250 ms): every peer's heartbeat moves once a round, its vote is
//! republished every 500 ms (lease 2 s / 4), its load every 5 s, and everyone backs `n0`, the
//! leader. Time is virtual; only the agent's own work is timed, on this thread's CPU clock, so
//! other load on the machine counts less (it still slows the caches).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::{Chitchat, ChitchatId, DeletionStatus, VersionedValue};
use chorus_agent::gossip;
use chorus_agent::metrics::Metrics;
use chorus_agent::observe::Observer;
use chorus_agent::publish::ViewPublisher;
use chorus_core::consensus::{RaftDisk, RaftTiming};
use chorus_core::fingerprint::{CompatPolicy, Fingerprint};
use chorus_core::load::LoadPolicy;
use chorus_core::member::{keys, NodeState, Published, RaftKey};
use chorus_core::node::{Effect, Node, NodeConfig};
use chorus_core::roster::{Roster, RosterEntry};

const GOSSIP: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(250);
const ME: usize = 7;

fn name(i: usize) -> String {
    format!("n{i}")
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))
}

fn id(i: usize) -> ChitchatId {
    ChitchatId::new(name(i), 1, addr(i))
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("the thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// One peer's key space as chitchat holds it: values with their versions.
struct Peer {
    kvs: BTreeMap<String, (String, u64)>,
    max_version: u64,
}

impl Peer {
    fn new(i: usize, fp: &Fingerprint) -> Peer {
        let mut peer = Peer {
            kvs: BTreeMap::new(),
            max_version: 0,
        };
        for (k, v) in Published::identity_pairs(fp, 1_700_000_000_000 + i as u64) {
            peer.set(&k, v);
        }
        peer.set(&Published::tag_key("zone"), format!("z{}", i % 3));
        peer.set(keys::STATE, "active".into());
        let raft = RaftKey {
            raft_id: 1 + i as u64,
            cluster_id: 7,
            vote: 0,
        };
        peer.set(keys::RAFT, raft.to_value());
        peer.set(keys::LOAD, "0.10,0.20,0".into());
        peer
    }

    fn set(&mut self, key: &str, value: String) {
        self.max_version += 1;
        self.kvs.insert(key.to_string(), (value, self.max_version));
    }

    fn push(&self, chitchat: &mut Chitchat, i: usize) {
        let kvs = self.kvs.iter().map(|(k, (v, version))| {
            let value = VersionedValue {
                value: v.clone(),
                version: *version,
                status: DeletionStatus::Set,
            };
            (k.clone(), value)
        });
        chitchat.reset_node_state_if_update(&id(i), kvs, self.max_version, 0);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let members: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100);
    let ticks: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let fp = Fingerprint::compute(chorus_core::PROTOCOL_VERSION, "1.0", &[]);

    let config = gossip::chitchat_config(
        &name(ME),
        1,
        addr(ME),
        addr(ME),
        "bench",
        Vec::new(),
        GOSSIP,
    );
    let (_seeds_tx, seeds_rx) = tokio::sync::watch::channel(HashSet::new());
    let mut own = Published::identity_pairs(&fp, 1_700_000_000_000 + ME as u64);
    own.push((Published::tag_key("zone"), format!("z{}", ME % 3)));
    let mut chitchat = Chitchat::with_chitchat_id_and_seeds(config, seeds_rx, own);
    let mut peers: Vec<Option<Peer>> = (0..members)
        .map(|i| (i != ME).then(|| Peer::new(i, &fp)))
        .collect();
    for (i, p) in peers.iter().enumerate() {
        if let Some(p) = p {
            p.push(&mut chitchat, i);
        }
    }

    let t0 = Instant::now();
    let (suspect_after, split_window) = NodeConfig::timings(GOSSIP);
    let node_config = NodeConfig {
        node_id: name(ME),
        cluster: "bench".into(),
        advertise_addr: addr(ME),
        fingerprint: fp.clone(),
        policy: CompatPolicy::Exact,
        suspect_after,
        expect: 0,
        load: LoadPolicy::default(),
        split_window,
        reap_after: Duration::from_secs(600),
        raft_id: 1 + ME as u64,
        voters: 5,
        raft_timing: RaftTiming::new(Duration::from_secs(600)),
        seed: 1,
    };
    let roster = Roster::from_entries((0..members).map(|i| RosterEntry {
        node_id: name(i),
        addr: addr(i),
    }));
    let mut node = Node::new(
        t0,
        node_config,
        roster,
        NodeState::Active,
        &RaftDisk::default(),
    );
    let metrics = Metrics::new();
    let mut publisher = ViewPublisher::new(t0, 1, addr(ME));

    let warmup = ticks / 4;
    let (mut observe, mut decide, mut publish) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut observer = Observer::default();
    for tick in 0..warmup + ticks {
        let now = t0 + TICK * tick as u32;
        // The cluster moves: each peer republishes its load every 20 ticks, on its own phase.
        for (i, p) in peers.iter_mut().enumerate() {
            let Some(p) = p else { continue };
            let on_phase = |every: u64| tick % every == i as u64 % every;
            let mut changed = false;
            if on_phase(20) {
                p.set(keys::LOAD, format!("0.{:02},0.20,{}", tick % 100, tick % 7));
                changed = true;
            }
            if changed {
                p.push(&mut chitchat, i);
            }
        }

        let c0 = thread_cpu();
        observer.refresh(&chitchat);
        let c1 = thread_cpu();
        // chitchat here never hears a heartbeat (its failure detector is fed by the network):
        // what it would say in a steady cluster, outside the timing.
        let mut observations = observer.observations().to_vec();
        for o in observations.iter_mut() {
            o.live = true;
            o.heartbeat = tick / 2 + 1;
        }
        let c2 = thread_cpu();
        node.handle_gossip(now, &observations);
        while let Some(effect) = node.poll_effect() {
            if let Effect::Publish { key, value } = effect {
                chitchat.self_node_state().set(key, value);
            }
        }
        let c3 = thread_cpu();
        let view = publisher.publish(&node, &metrics, now, None);
        std::hint::black_box(view);
        let c4 = thread_cpu();
        if tick >= warmup {
            observe += c1 - c0;
            decide += c3 - c2;
            publish += c4 - c3;
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / ticks as f64;
    let status = node.status();
    println!(
        "{members} members, {ticks} ticks: alive {} leader {:?} quorum {}",
        status.alive, status.leader, status.quorum
    );
    println!(
        "per tick (us): observe {:.1}  handle_gossip+effects {:.1}  publish_view {:.1}  total {:.1}",
        per(observe),
        per(decide),
        per(publish),
        per(observe + decide + publish)
    );
}
