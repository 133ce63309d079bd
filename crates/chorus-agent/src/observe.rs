//! chitchat's state as core [`Observation`]s, kept from one tick to the next.
//!
//! Every tick reads every node chitchat knows, but between two ticks most nodes only have a new
//! heartbeat, and most of the others only a new vote. So the last tick's observations are
//! brought up to date in place: a node's key-values are read again only when its version
//! moved, and then only the keys that moved, unless one of them needs the whole set parsed.

use std::collections::{BTreeMap, HashMap};

use chitchat::{Chitchat, ChitchatId, NodeState};
use chorus_core::member::Published;
use chorus_core::view::Observation;

/// Which key-values of an incarnation an observation was read from. chitchat moves
/// `(last_gc_version, max_version)` up whenever an incarnation's key-values change, and a key
/// set or deleted by gossip carries a version above the old `max_version`. Keys vanish only
/// when tombstones are collected or the state is reset, which moves `last_gc_version` or the
/// number of keys. (A catch-up reset could drop one key and add another at once without
/// either; chorus configures no catch-up.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Read {
    last_gc: u64,
    max: u64,
    /// Keys including tombstones.
    keys: usize,
}

/// The observations of the last tick, one per incarnation, in chitchat's order.
#[derive(Default)]
pub struct Observer {
    ids: Vec<ChitchatId>,
    /// `None`: not read yet.
    reads: Vec<Option<Read>>,
    observations: Vec<Observation>,
}

impl Observer {
    /// Brings the observations up to date with chitchat. Call with the chitchat lock held, and
    /// release it right after.
    pub fn refresh(&mut self, chitchat: &Chitchat) {
        let states = chitchat.node_states();
        if !states.keys().eq(self.ids.iter()) {
            self.realign(states);
        }
        let kept = self.reads.iter_mut().zip(self.observations.iter_mut());
        for (state, (read, obs)) in states.values().zip(kept) {
            obs.heartbeat = u64::from(state.heartbeat());
            obs.live = false;
            read_changes(state, read, &mut obs.published);
        }
        for id in chitchat.live_nodes() {
            if let Ok(i) = self.ids.binary_search(id) {
                self.observations[i].live = true;
            }
        }
    }

    /// Everything chitchat knew at the last [`Observer::refresh`].
    pub fn observations(&self) -> &[Observation] {
        &self.observations
    }

    /// Follows chitchat's set of incarnations (a node joined, restarted or was collected),
    /// keeping what was read of those still there.
    fn realign(&mut self, states: &BTreeMap<ChitchatId, NodeState>) {
        let mut kept: HashMap<ChitchatId, (Option<Read>, Observation)> = self
            .ids
            .drain(..)
            .zip(self.reads.drain(..).zip(self.observations.drain(..)))
            .collect();
        for id in states.keys() {
            let (read, obs) = kept.remove(id).unwrap_or_else(|| {
                let obs = Observation {
                    node_id: id.node_id.to_string(),
                    generation: id.generation_id,
                    addr: id.gossip_advertise_addr,
                    live: false,
                    heartbeat: 0,
                    published: Published::default(),
                };
                (None, obs)
            });
            self.ids.push(id.clone());
            self.reads.push(read);
            self.observations.push(obs);
        }
    }
}

/// Brings `published`, read from `state` at `read`, up to date.
fn read_changes(state: &NodeState, read: &mut Option<Read>, published: &mut Published) {
    let (last_gc, max) = (state.last_gc_version(), state.max_version());
    if read.is_some_and(|r| (r.last_gc, r.max) == (last_gc, max)) {
        return;
    }
    let now = Read {
        last_gc,
        max,
        keys: state.key_values_including_deleted().count(),
    };
    let only_new_versions = read.is_some_and(|r| r.last_gc == now.last_gc && r.keys == now.keys);
    let since = read.map_or(0, |r| r.max);
    // `apply` changes nothing when it refuses a key, and a refusal means a full parse anyway.
    let applied = only_new_versions
        && state
            .key_values_including_deleted()
            .filter(|(_, v)| v.version > since)
            .all(|(key, v)| published.apply(key, (!v.is_deleted()).then_some(v.value.as_str())));
    if !applied {
        *published = Published::from_pairs(state.key_values());
    }
    *read = Some(now);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::time::Duration;

    use chitchat::{DeletionStatus, VersionedValue};
    use chorus_core::fingerprint::Fingerprint;
    use chorus_core::member::keys;

    use super::*;
    use crate::gossip;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + i))
    }

    fn id(i: u16, generation: u64) -> ChitchatId {
        ChitchatId::new(format!("n{i}"), generation, addr(i))
    }

    /// What every tick read before observations were kept: everything, parsed again.
    fn parse_all(chitchat: &Chitchat) -> Vec<Observation> {
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        chitchat
            .node_states()
            .iter()
            .map(|(id, state)| Observation {
                node_id: id.node_id.to_string(),
                generation: id.generation_id,
                addr: id.gossip_advertise_addr,
                live: live.contains(id),
                heartbeat: u64::from(state.heartbeat()),
                published: Published::from_pairs(state.key_values()),
            })
            .collect()
    }

    /// A peer's key space as chitchat would hold it after gossip: `(key, value, version,
    /// deleted)`.
    fn set_peer(
        chitchat: &mut Chitchat,
        peer: &ChitchatId,
        kvs: &[(&str, &str, u64, bool)],
        last_gc: u64,
    ) {
        let max = kvs.iter().map(|kv| kv.2).max().unwrap_or(0);
        let kvs = kvs.iter().map(|(k, v, version, deleted)| {
            let status = if *deleted {
                DeletionStatus::Deleted(tokio::time::Instant::now())
            } else {
                DeletionStatus::Set
            };
            let value = VersionedValue {
                value: v.to_string(),
                version: *version,
                status,
            };
            (k.to_string(), value)
        });
        chitchat.reset_node_state_if_update(peer, kvs, max, last_gc);
    }

    #[test]
    fn kept_observations_equal_a_full_read_after_every_change() {
        let fp = Fingerprint::compute(chorus_core::PROTOCOL_VERSION, "1.0", &[]);
        let config = gossip::chitchat_config(
            "n0",
            1,
            addr(0),
            addr(0),
            "c",
            Vec::new(),
            Duration::from_millis(500),
        );
        let (_seeds, seeds_rx) = tokio::sync::watch::channel(HashSet::new());
        let mut chitchat = Chitchat::with_chitchat_id_and_seeds(
            config,
            seeds_rx,
            Published::identity_pairs(&fp, 1),
        );
        let identity = Published::identity_pairs(&fp, 2);
        let mut peer: Vec<(&str, &str, u64, bool)> = identity
            .iter()
            .zip(1..)
            .map(|((k, v), version)| (k.as_str(), v.as_str(), version, false))
            .collect();
        let mut observer = Observer::default();
        let mut check = |chitchat: &Chitchat, step: &str| {
            observer.refresh(chitchat);
            assert_eq!(observer.observations(), parse_all(chitchat), "{step}");
        };
        check(&chitchat, "only this node");

        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "a peer arrives");
        let vote = "1/0/0".to_string();
        peer.push((keys::RAFT, &vote, 10, false));
        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "a new key");
        let vote = "1/7/0".to_string();
        peer.last_mut().unwrap().1 = &vote;
        peer.last_mut().unwrap().2 = 11;
        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "the raft key moves");
        peer.last_mut().unwrap().2 = 12;
        peer.last_mut().unwrap().3 = true;
        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "the raft key is deleted");
        peer[0].1 = "another-digest";
        peer[0].2 = 13;
        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "the fingerprint changes");
        peer.push((keys::LOAD, "0.10,0.20,1", 14, false));
        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "load arrives");
        // A catch-up reset may drop a key without collecting anything.
        peer.pop();
        let vote = "1/8/0".to_string();
        *peer.last_mut().unwrap() = (keys::RAFT, &vote, 15, false);
        set_peer(&mut chitchat, &id(1, 1), &peer, 0);
        check(&chitchat, "load dropped as the raft key moves");
        peer.pop();
        peer[1].2 = 16;
        set_peer(&mut chitchat, &id(1, 1), &peer, 12);
        check(&chitchat, "tombstones collected");

        chitchat.self_node_state().set(keys::STATE, "draining");
        check(&chitchat, "this node drains");
        chitchat.self_node_state().set(keys::STATE, "active");
        chitchat.self_node_state().set("tag:zone", "a");
        check(&chitchat, "this node resumes, with a tag");
        chitchat.self_node_state().delete("tag:zone");
        check(&chitchat, "the tag is deleted");

        set_peer(&mut chitchat, &id(1, 2), &peer, 0);
        set_peer(&mut chitchat, &id(2, 1), &peer, 0);
        check(&chitchat, "a restart and another peer");
        check(&chitchat, "nothing moved");
    }
}
