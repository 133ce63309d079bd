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
    VersionRejected {
        node: NodeId,
        addr: Option<SocketAddr>,
        reason: String,
    },
}

impl Alert {
    /// The `alert=<kind>` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::NodeJoined { .. } => "node_joined",
            Alert::NodeFailed { .. } => "node_failed",
            Alert::NodeLeft { .. } => "node_left",
            Alert::VersionRejected { .. } => "version_rejected",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Alert::NodeJoined { .. } | Alert::NodeLeft { .. } => Severity::Info,
            Alert::NodeFailed { .. } | Alert::VersionRejected { .. } => Severity::Warn,
        }
    }

    /// The node the alert is about, when there is one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Alert::NodeJoined { node, .. }
            | Alert::NodeFailed { node, .. }
            | Alert::NodeLeft { node }
            | Alert::VersionRejected { node, .. } => Some(node),
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
            Alert::VersionRejected { node, reason, .. } => {
                write!(f, "node {node} refused: {reason}")
            }
        }
    }
}
