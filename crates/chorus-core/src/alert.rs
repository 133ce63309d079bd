//! Alerts: what happened to the cluster, as data.
//!
//! Core only says *that* something happened; the agent turns each [`Alert`] into a tracing event
//! whose text carries `alert=<kind>` and into a `chorus watch` line.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// How loud an alert is in the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Error,
}

/// What differs about a rejected peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCause {
    /// Its version fingerprint is incompatible (app version, fingerprint files, chorus).
    #[default]
    VersionMismatch,
    /// It belongs to a cluster of another name.
    ClusterMismatch,
    /// It speaks another chorus wire protocol.
    ProtocolMismatch,
}

impl RejectCause {
    /// The cause a refusal's reason names (the hello policy's words, also as a peer sent
    /// them: "cluster name ...", "wire protocol ..."); anything else is a version.
    pub fn of_reason(reason: &str) -> RejectCause {
        if reason.contains("cluster name") {
            RejectCause::ClusterMismatch
        } else if reason.contains("wire protocol") {
            RejectCause::ProtocolMismatch
        } else {
            RejectCause::VersionMismatch
        }
    }

    fn what(self) -> &'static str {
        match self {
            RejectCause::VersionMismatch => "another version",
            RejectCause::ClusterMismatch => "another cluster",
            RejectCause::ProtocolMismatch => "another wire protocol",
        }
    }
}

/// Something an operator should hear about. Each variant is emitted once per event, never
/// once per tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "alert", rename_all = "snake_case")]
pub enum Alert {
    NodeJoined {
        node: NodeId,
        addr: SocketAddr,
        generation: u64,
    },
    NodeFailed {
        node: NodeId,
        addr: SocketAddr,
    },
    NodeLeft {
        node: NodeId,
    },
    /// A peer refused at its hello or shown `rejected` by gossip: another version, another
    /// cluster or another wire protocol (`cause`).
    VersionRejected {
        node: NodeId,
        addr: Option<SocketAddr>,
        reason: String,
        #[serde(default)]
        cause: RejectCause,
    },
    /// A second agent claimed the node id of a live one. The live agent keeps the id; the
    /// claimant is refused at every hello and exits.
    NodeIdConflict {
        node: NodeId,
        /// Where the agent that holds the id is alive (unknown when the refusal did not say).
        held_at: Option<SocketAddr>,
        /// Where the second agent claimed it from.
        claimed_from: SocketAddr,
    },
    /// Several members were lost within one window: a partition, not N separate failures.
    SplitBrainSuspected {
        lost: Vec<NodeId>,
        reachable: Vec<NodeId>,
    },
    /// This node no longer sees a majority of the roster: it is on the minority side.
    QuorumLost {
        reachable: Vec<NodeId>,
        unreachable: Vec<NodeId>,
    },
    QuorumRegained {
        reachable: Vec<NodeId>,
    },
    /// The members lost in a split are back.
    SplitBrainHealed {
        duration_ms: u64,
        ours: Vec<NodeId>,
        theirs: Vec<NodeId>,
    },
    /// A dead member was removed from the roster (by a node with quorum, or by `forget`).
    NodeReaped {
        node: NodeId,
        forgotten: bool,
    },
    LeaderChanged {
        old: Option<NodeId>,
        new: Option<NodeId>,
        epoch: u64,
    },
    /// Two live nodes claimed leadership at once. Must never happen: a bug detector.
    DualLeader {
        leaders: Vec<(NodeId, u64)>,
    },
    /// The data dir refused a write: `what` was not remembered. A leadership whose epoch
    /// could not be persisted is not taken; a request whose change could not be persisted
    /// is answered with an error.
    PersistFailed {
        what: String,
        error: String,
    },
    /// The gossip task ended and was started again in place (same generation and data).
    GossipRestarted {
        reason: String,
    },
}

/// Every [`Alert::kind`], in declaration order: what the metrics show at 0 before the first
/// alert of a kind. A new variant goes here as well as in `kind` (a test checks both agree).
pub const KINDS: [&str; 14] = [
    "node_joined",
    "node_failed",
    "node_left",
    "version_rejected",
    "node_id_conflict",
    "split_brain_suspected",
    "quorum_lost",
    "quorum_regained",
    "split_brain_healed",
    "node_reaped",
    "leader_changed",
    "dual_leader",
    "persist_failed",
    "gossip_restarted",
];

impl Alert {
    /// The `alert=<kind>` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::NodeJoined { .. } => "node_joined",
            Alert::NodeFailed { .. } => "node_failed",
            Alert::NodeLeft { .. } => "node_left",
            Alert::VersionRejected { .. } => "version_rejected",
            Alert::SplitBrainSuspected { .. } => "split_brain_suspected",
            Alert::QuorumLost { .. } => "quorum_lost",
            Alert::QuorumRegained { .. } => "quorum_regained",
            Alert::SplitBrainHealed { .. } => "split_brain_healed",
            Alert::NodeReaped { .. } => "node_reaped",
            Alert::LeaderChanged { .. } => "leader_changed",
            Alert::DualLeader { .. } => "dual_leader",
            Alert::PersistFailed { .. } => "persist_failed",
            Alert::GossipRestarted { .. } => "gossip_restarted",
            Alert::NodeIdConflict { .. } => "node_id_conflict",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Alert::NodeJoined { .. }
            | Alert::NodeLeft { .. }
            | Alert::NodeReaped { .. }
            | Alert::QuorumRegained { .. } => Severity::Info,
            Alert::NodeFailed { .. }
            | Alert::VersionRejected { .. }
            | Alert::SplitBrainSuspected { .. }
            | Alert::SplitBrainHealed { .. }
            | Alert::LeaderChanged { .. }
            | Alert::GossipRestarted { .. } => Severity::Warn,
            Alert::QuorumLost { .. }
            | Alert::DualLeader { .. }
            | Alert::PersistFailed { .. }
            | Alert::NodeIdConflict { .. } => Severity::Error,
        }
    }

    /// The node the alert is about, when there is one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Alert::NodeJoined { node, .. }
            | Alert::NodeFailed { node, .. }
            | Alert::NodeLeft { node }
            | Alert::VersionRejected { node, .. }
            | Alert::NodeIdConflict { node, .. }
            | Alert::NodeReaped { node, .. } => Some(node),
            Alert::LeaderChanged { new, .. } => new.as_deref(),
            _ => None,
        }
    }
}

/// One human sentence; the structured fields travel separately.
impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alert::NodeJoined {
                node,
                addr,
                generation,
            } => {
                write!(
                    f,
                    "node {node} joined from {addr} (generation {generation})"
                )
            }
            Alert::NodeFailed { node, addr } => write!(f, "node {node} at {addr} failed"),
            Alert::NodeLeft { node } => write!(f, "node {node} left the cluster"),
            Alert::VersionRejected {
                node,
                reason,
                cause,
                ..
            } => {
                write!(f, "node {node} refused, {}: {reason}", cause.what())
            }
            Alert::NodeIdConflict {
                node,
                held_at,
                claimed_from,
            } => {
                let held = held_at.map_or_else(|| "another address".to_string(), |a| a.to_string());
                write!(
                    f,
                    "node id {node} claimed by a second agent at {claimed_from} while the agent at \
                     {held} is alive: refused (give each agent its own --node-id)"
                )
            }
            Alert::SplitBrainSuspected { lost, reachable } => write!(
                f,
                "split-brain suspected: lost {} at once; reachable {}",
                list(lost),
                list(reachable)
            ),
            Alert::QuorumLost {
                reachable,
                unreachable,
            } => write!(
                f,
                "quorum lost: this node is on the minority side; reachable {}, unreachable {}",
                list(reachable),
                list(unreachable)
            ),
            Alert::QuorumRegained { reachable } => {
                write!(f, "quorum regained; reachable {}", list(reachable))
            }
            Alert::SplitBrainHealed {
                duration_ms,
                ours,
                theirs,
            } => write!(
                f,
                "split-brain healed after {:.1}s: this side {}, other side {}",
                *duration_ms as f64 / 1000.0,
                list(ours),
                list(theirs)
            ),
            Alert::NodeReaped {
                node,
                forgotten: true,
            } => {
                write!(f, "node {node} forgotten: removed from the roster")
            }
            Alert::NodeReaped {
                node,
                forgotten: false,
            } => {
                write!(
                    f,
                    "node {node} reaped: dead too long, removed from the roster"
                )
            }
            Alert::LeaderChanged { old, new, epoch } => write!(
                f,
                "leader changed from {} to {} (epoch {epoch})",
                old.as_deref().unwrap_or("none"),
                new.as_deref().unwrap_or("none")
            ),
            Alert::DualLeader { leaders } => {
                let l: Vec<String> = leaders
                    .iter()
                    .map(|(n, e)| format!("{n} (epoch {e})"))
                    .collect();
                write!(f, "two leaders at once: {}", l.join(" and "))
            }
            Alert::PersistFailed { what, error } => {
                write!(f, "cannot persist {what} to the data dir: {error}")
            }
            Alert::GossipRestarted { reason } => {
                write!(f, "gossip stopped ({reason}) and was restarted")
            }
        }
    }
}

fn list(ids: &[NodeId]) -> String {
    if ids.is_empty() {
        "none".to_string()
    } else {
        format!("[{}]", ids.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serde_tag_is_the_kind_name() {
        let alerts = [
            Alert::NodeIdConflict {
                node: "web1".into(),
                held_at: Some("127.0.0.1:1".parse().unwrap()),
                claimed_from: "127.0.0.1:2".parse().unwrap(),
            },
            Alert::VersionRejected {
                node: "web3".into(),
                addr: None,
                reason: "cluster name \"x\"".into(),
                cause: RejectCause::ClusterMismatch,
            },
        ];
        for alert in alerts {
            let json = serde_json::to_value(&alert).unwrap();
            assert_eq!(json["alert"], alert.kind());
        }
    }

    #[test]
    fn a_node_id_conflict_names_both_addresses_and_is_an_error() {
        let alert = Alert::NodeIdConflict {
            node: "web1".into(),
            held_at: Some("127.0.0.1:7001".parse().unwrap()),
            claimed_from: "127.0.0.1:7009".parse().unwrap(),
        };
        let text = alert.to_string();
        assert!(
            text.contains("127.0.0.1:7001") && text.contains("127.0.0.1:7009"),
            "{text}"
        );
        assert_eq!(alert.severity(), Severity::Error);
        assert_eq!(alert.node(), Some("web1"));
    }

    #[test]
    fn a_cluster_mismatch_is_its_own_cause_not_a_version() {
        let reason = "refused at hello: cluster name \"test\" (ours \"prod\")";
        let cause = RejectCause::of_reason(reason);
        assert_eq!(cause, RejectCause::ClusterMismatch);
        let alert = Alert::VersionRejected {
            node: "x".into(),
            addr: None,
            reason: reason.into(),
            cause,
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["cause"], "cluster_mismatch");
        let text = alert.to_string();
        assert!(
            text.contains("another cluster") && !text.contains("version"),
            "{text}"
        );
        assert_eq!(
            RejectCause::of_reason("app version \"2.1\" (ours \"2.0\")"),
            RejectCause::VersionMismatch
        );
        assert_eq!(
            RejectCause::of_reason("wire protocol 3 (ours 2)"),
            RejectCause::ProtocolMismatch
        );
    }

    /// One alert of each variant. The match below has no wildcard, so a new variant does not
    /// compile until it is added here, and the test then asks for it in [`KINDS`].
    fn one_of_each() -> Vec<Alert> {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let node = || "n".to_string();
        let all = vec![
            Alert::NodeJoined {
                node: node(),
                addr,
                generation: 1,
            },
            Alert::NodeFailed { node: node(), addr },
            Alert::NodeLeft { node: node() },
            Alert::VersionRejected {
                node: node(),
                addr: None,
                reason: String::new(),
                cause: RejectCause::VersionMismatch,
            },
            Alert::NodeIdConflict {
                node: node(),
                held_at: None,
                claimed_from: addr,
            },
            Alert::SplitBrainSuspected {
                lost: vec![],
                reachable: vec![],
            },
            Alert::QuorumLost {
                reachable: vec![],
                unreachable: vec![],
            },
            Alert::QuorumRegained { reachable: vec![] },
            Alert::SplitBrainHealed {
                duration_ms: 0,
                ours: vec![],
                theirs: vec![],
            },
            Alert::NodeReaped {
                node: node(),
                forgotten: false,
            },
            Alert::LeaderChanged {
                old: None,
                new: None,
                epoch: 0,
            },
            Alert::DualLeader { leaders: vec![] },
            Alert::PersistFailed {
                what: String::new(),
                error: String::new(),
            },
            Alert::GossipRestarted {
                reason: String::new(),
            },
        ];
        for a in &all {
            match a {
                Alert::NodeJoined { .. }
                | Alert::NodeFailed { .. }
                | Alert::NodeLeft { .. }
                | Alert::VersionRejected { .. }
                | Alert::NodeIdConflict { .. }
                | Alert::SplitBrainSuspected { .. }
                | Alert::QuorumLost { .. }
                | Alert::QuorumRegained { .. }
                | Alert::SplitBrainHealed { .. }
                | Alert::NodeReaped { .. }
                | Alert::LeaderChanged { .. }
                | Alert::DualLeader { .. }
                | Alert::PersistFailed { .. }
                | Alert::GossipRestarted { .. } => {}
            }
        }
        all
    }

    #[test]
    fn kinds_lists_every_variant_once() {
        let kinds: Vec<&str> = one_of_each().iter().map(Alert::kind).collect();
        assert_eq!(kinds, KINDS);
    }
}
