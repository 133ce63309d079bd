//! What one node publishes about itself, and what another node concludes about it.
//!
//! The gossip schema lives here so that the agent that writes keys and the view that reads
//! them agree by construction. Keys are short ASCII strings (chitchat panics on a key whose
//! first character is multi-byte, and every byte of a key is gossiped again and again).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;

/// A node's identity across restarts (its `--node-id`).
pub type NodeId = String;

/// Gossip keys. Changing one is a protocol change: bump [`crate::PROTOCOL_VERSION`].
pub mod keys {
    pub const FINGERPRINT: &str = "fp";
    pub const PROTOCOL: &str = "proto";
    pub const APP_VERSION: &str = "app";
    pub const FILES: &str = "files";
    pub const START_MS: &str = "start";
    pub const STATE: &str = "state";
    pub const LOAD: &str = "load";
    /// Prefix of one key per tag: `tag:read_only`.
    pub const TAG_PREFIX: &str = "tag:";
    /// This node's Raft identity, the Raft cluster it belongs to and its bootstrap vote,
    /// `raft_id/cluster/vote` in hex (0: none yet). See [`super::RaftKey`].
    pub const RAFT: &str = "raft";
    /// Prefix of one key per peer this node refused at the hello: `refused:<node>` =
    /// `<addr> <reason>` (empty once forgotten).
    pub const REFUSED_PREFIX: &str = "refused:";
}

/// Whether a node takes new sessions; `Left` is published by a graceful stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Active,
    Draining,
    Left,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Left => "left",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        match s {
            "active" => Some(NodeState::Active),
            "draining" => Some(NodeState::Draining),
            "left" => Some(NodeState::Left),
            _ => None,
        }
    }
}

/// Load as published: cpu = 1-min load average / cores, mem = used fraction, sessions as
/// reported by the application.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub cpu: f64,
    pub mem: f64,
    pub sessions: u64,
}

impl Load {
    /// The `load` gossip value: `cpu,mem,sessions` with two decimals, short on the wire.
    pub fn to_value(&self) -> String {
        format!("{:.2},{:.2},{}", self.cpu, self.mem, self.sessions)
    }

    pub fn parse(value: &str) -> Option<Load> {
        let mut parts = value.split(',');
        let cpu = parts
            .next()?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())?;
        let mem = parts
            .next()?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())?;
        let sessions = parts.next()?.parse::<u64>().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Load { cpu, mem, sessions })
    }
}

/// Everything a node publishes in its key space, parsed. Built by [`Published::from_pairs`]
/// from whatever arrived; absent or malformed keys stay `None` rather than failing the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    pub fingerprint: Option<Fingerprint>,
    pub start_ms: Option<u64>,
    pub state: NodeState,
    pub tags: BTreeMap<String, String>,
    pub load: Option<Load>,
    /// Its Raft identity, once published.
    pub raft: Option<RaftKey>,
    /// Peers this node refused at the hello: node id -> (address, reason).
    pub refused: BTreeMap<NodeId, (SocketAddr, String)>,
}

impl Published {
    /// Parses a node's key-values. The fingerprint is only taken when all its parts are there,
    /// so a half-arrived state is "not yet known", never "different".
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Published {
        let mut out = Published::default();
        let (mut digest, mut proto, mut app, mut files) = (None, None, None, None);
        for (key, value) in pairs {
            if out.apply(key, Some(value)) {
                continue;
            }
            match key {
                keys::FINGERPRINT => digest = Some(value.to_string()),
                keys::PROTOCOL => proto = value.parse::<u32>().ok(),
                keys::APP_VERSION => app = Some(value.to_string()),
                keys::FILES => files = Some(Fingerprint::parse_files_value(value)),
                _ => {
                    if let Some(tag) = key.strip_prefix(keys::TAG_PREFIX) {
                        out.tags.insert(tag.to_string(), value.to_string());
                    } else if let Some(node) = key.strip_prefix(keys::REFUSED_PREFIX) {
                        let parsed = value.split_once(' ').and_then(|(addr, reason)| {
                            Some((addr.parse::<SocketAddr>().ok()?, reason.to_string()))
                        });
                        if let Some(entry) = parsed {
                            out.refused.insert(node.to_string(), entry);
                        }
                    }
                }
            }
        }
        if let (Some(digest), Some(protocol), Some(app_version), Some(files)) =
            (digest, proto, app, files)
        {
            out.fingerprint = Some(Fingerprint {
                digest,
                protocol,
                app_version,
                files,
            });
        }
        out
    }

    /// Applies one key that changed (`None`: deleted) as [`Published::from_pairs`] would have
    /// parsed it, so a reader need not parse a node again when only its vote moved. Returns
    /// `false`, changing nothing, for a key whose meaning depends on other keys (fingerprint
    /// parts) or that is one of many (tags, refusals): the caller must parse all pairs again.
    pub fn apply(&mut self, key: &str, value: Option<&str>) -> bool {
        match key {
            keys::START_MS => self.start_ms = value.and_then(|v| v.parse().ok()),
            keys::STATE => {
                self.state = value.and_then(NodeState::parse).unwrap_or_default();
            }
            keys::LOAD => self.load = value.and_then(Load::parse),
            keys::RAFT => self.raft = value.and_then(RaftKey::parse),
            _ => return false,
        }
        true
    }

    /// The key-values that describe the fingerprint and the fixed facts of this run.
    pub fn identity_pairs(fp: &Fingerprint, start_ms: u64) -> Vec<(String, String)> {
        vec![
            (keys::FINGERPRINT.into(), fp.digest.clone()),
            (keys::PROTOCOL.into(), fp.protocol.to_string()),
            (keys::APP_VERSION.into(), fp.app_version.clone()),
            (keys::FILES.into(), fp.files_value()),
            (keys::START_MS.into(), start_ms.to_string()),
        ]
    }

    pub fn tag_key(tag: &str) -> String {
        format!("{}{tag}", keys::TAG_PREFIX)
    }

    pub fn refused_key(node: &str) -> String {
        format!("{}{node}", keys::REFUSED_PREFIX)
    }

    /// A refused peer's id comes from the peer: publish it only if it is a sane key.
    pub fn refused_key_allowed(node: &str) -> bool {
        !node.is_empty() && node.len() <= 64 && node.chars().all(|c| c.is_ascii_graphic())
    }
}

/// The `raft` value: which Raft node this node is (its data dir's identity) and which Raft
/// cluster it belongs to. Gossip only introduces nodes to Raft: who leads is Raft's answer,
/// never a gossip key, so a stale claim relayed by gossip cannot show a leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftKey {
    pub raft_id: u64,
    /// 0: not in a cluster yet.
    pub cluster_id: u64,
    /// The Raft id it votes for to start a cluster (0: none; see
    /// `consensus::bootstrap`).
    pub vote: u64,
}

impl RaftKey {
    pub fn to_value(self) -> String {
        format!("{:x}/{:x}/{:x}", self.raft_id, self.cluster_id, self.vote)
    }

    /// The inverse of [`RaftKey::to_value`]; a Raft id of 0 is no identity.
    pub fn parse(value: &str) -> Option<RaftKey> {
        let mut parts = value.split('/');
        let mut hex = || u64::from_str_radix(parts.next()?, 16).ok();
        let raft_id = hex().filter(|id| *id != 0)?;
        let cluster_id = hex()?;
        let vote = hex()?;
        if parts.next().is_some() {
            return None;
        }
        Some(RaftKey {
            raft_id,
            cluster_id,
            vote,
        })
    }
}

/// How this node sees another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Alive,
    /// Still alive for the failure detector, but its heartbeat has not moved for a while.
    Suspect,
    Dead,
    Left,
    /// Its version fingerprint is incompatible: never alive, never counted.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Dead => "dead",
            Status::Left => "left",
            Status::Rejected => "rejected",
        }
    }

    /// Counts as a working member (quorum, placement, leader eligibility).
    pub fn is_up(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "alive" => Ok(Status::Alive),
            "suspect" => Ok(Status::Suspect),
            "dead" => Ok(Status::Dead),
            "left" => Ok(Status::Left),
            "rejected" => Ok(Status::Rejected),
            other => Err(format!(
                "unknown status {other:?} (expected alive, suspect, dead, left or rejected)"
            )),
        }
    }
}

/// One row of `members`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    pub generation: u64,
    pub status: Status,
    pub state: NodeState,
    pub app_version: Option<String>,
    pub fingerprint: Option<String>,
    pub load: Load,
    pub tags: BTreeMap<String, String>,
    pub start_ms: Option<u64>,
    /// Why a `rejected` node was refused.
    pub reason: Option<String>,
    pub leader: bool,
    /// This row is the node answering.
    pub is_self: bool,
}

impl Member {
    /// A row for a node known only by name and address (a roster member gossip has not
    /// delivered, or a peer refused at its hello).
    pub fn unseen(node_id: &str, addr: SocketAddr, status: Status, reason: Option<&str>) -> Member {
        Member {
            node_id: node_id.to_string(),
            addr,
            generation: 0,
            status,
            state: NodeState::Active,
            app_version: None,
            fingerprint: None,
            load: Load::default(),
            tags: BTreeMap::new(),
            start_ms: None,
            reason: reason.map(str::to_string),
            leader: false,
            is_self: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any key chorus reads, or junk.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                keys::FINGERPRINT,
                keys::PROTOCOL,
                keys::APP_VERSION,
                keys::FILES,
                keys::START_MS,
                keys::STATE,
                keys::LOAD,
                keys::RAFT,
                "tag:zone",
                "refused:n9",
            ])
            .prop_map(str::to_string),
            ".{0,6}",
        ]
    }

    #[test]
    fn load_round_trips_and_rejects_junk() {
        let l = Load {
            cpu: 0.5,
            mem: 0.25,
            sessions: 7,
        };
        assert_eq!(Load::parse(&l.to_value()), Some(l));
        for junk in [
            "", "1,2", "a,b,c", "1,2,-3", "1,2,3,4", "NaN,1,1", "inf,1,1",
        ] {
            assert_eq!(Load::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn raft_key_round_trips_and_refuses_junk() {
        for (raft_id, cluster_id, vote) in [(1, 0, 0), (u64::MAX, u64::MAX, 3), (0xabc, 7, 1)] {
            let k = RaftKey {
                raft_id,
                cluster_id,
                vote,
            };
            let p = Published::from_pairs([(keys::RAFT, k.to_value().as_str())]);
            assert_eq!(p.raft, Some(k));
        }
        for junk in [
            "",
            "0/1/0",
            "1",
            "1/2",
            "x/1/0",
            "1//0",
            "1/-2/0",
            "1/2/3/4",
            "10000000000000000/1/0",
        ] {
            assert_eq!(RaftKey::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn half_arrived_fingerprint_is_unknown_not_different() {
        let p = Published::from_pairs([("fp", "abc"), ("app", "1.0")]);
        assert!(p.fingerprint.is_none());
    }

    #[test]
    fn published_round_trips_identity_tags_and_state() {
        let fp = Fingerprint::compute(1, "3.2", &[("f".into(), b"x".to_vec())]);
        let mut pairs = Published::identity_pairs(&fp, 42);
        pairs.push((Published::tag_key("read_only"), "true".into()));
        pairs.push((keys::STATE.into(), "draining".into()));
        let p = Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(p.fingerprint, Some(fp));
        assert_eq!(p.start_ms, Some(42));
        assert_eq!(p.state, NodeState::Draining);
        assert_eq!(p.tags.get("read_only").map(String::as_str), Some("true"));
    }

    /// Applying each pair of `changes` to the parse of `base` gives the parse of the merged
    /// pairs, or is refused.
    fn apply_matches_a_full_parse(base: &[(String, String)], changes: &[(String, Option<String>)]) {
        let parse = |pairs: &BTreeMap<String, String>| {
            Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        };
        let mut pairs: BTreeMap<String, String> = base.iter().cloned().collect();
        let mut applied = parse(&pairs);
        for (key, value) in changes {
            match value {
                Some(v) => pairs.insert(key.clone(), v.clone()),
                None => pairs.remove(key),
            };
            if !applied.apply(key, value.as_deref()) {
                applied = parse(&pairs);
            }
            assert_eq!(applied, parse(&pairs), "after {key}={value:?}");
        }
    }

    #[test]
    fn applying_a_changed_key_equals_parsing_again() {
        let fp = Fingerprint::compute(1, "3.2", &[]);
        let mut base = Published::identity_pairs(&fp, 42);
        base.push((keys::RAFT.into(), "a/0/0".into()));
        base.push((keys::LOAD.into(), "0.50,0.25,2".into()));
        let some = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
        apply_matches_a_full_parse(
            &base,
            &[
                some(keys::RAFT, "a/b/0"),
                some(keys::RAFT, "junk"),
                some(keys::LOAD, "junk"),
                (keys::RAFT.to_string(), None),
                some(keys::STATE, "draining"),
                (keys::STATE.to_string(), None),
                some(keys::APP_VERSION, "3.3"),
                some("tag:zone", "a"),
                (keys::START_MS.to_string(), None),
            ],
        );
    }

    proptest! {
        #[test]
        fn applying_arbitrary_changes_equals_parsing_again(
            base in proptest::collection::vec((key(), ".{0,12}"), 0..12),
            changes in proptest::collection::vec((key(), proptest::option::of(".{0,12}")), 0..12),
        ) {
            apply_matches_a_full_parse(&base, &changes);
        }

        #[test]
        fn arbitrary_pairs_never_panic(pairs in proptest::collection::vec((".{0,8}", ".{0,16}"), 0..16)) {
            let _ = Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
    }
}
