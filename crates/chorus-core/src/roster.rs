//! The roster: the nodes this node knows as members of its cluster.
//!
//! A node enters the roster when it is seen alive with a compatible fingerprint; it leaves it
//! when it leaves gracefully, is forgotten by an operator, or is reaped. The roster is what
//! quorum is counted against, so it is persisted and survives restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// One known member and the address it was last seen at (a restarted agent gossips to these
/// addresses as well as to its seeds, so it finds its cluster again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub node_id: NodeId,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    members: BTreeMap<NodeId, SocketAddr>,
}

impl Roster {
    pub fn from_entries(entries: impl IntoIterator<Item = RosterEntry>) -> Roster {
        Roster {
            members: entries.into_iter().map(|e| (e.node_id, e.addr)).collect(),
        }
    }

    pub fn entries(&self) -> Vec<RosterEntry> {
        self.members
            .iter()
            .map(|(node_id, addr)| RosterEntry {
                node_id: node_id.clone(),
                addr: *addr,
            })
            .collect()
    }

    /// Adds or moves a member; returns whether the roster changed.
    pub fn upsert(&mut self, node_id: &str, addr: SocketAddr) -> bool {
        // Every live member is upserted on every tick: only a new member costs a key.
        match self.members.get_mut(node_id) {
            Some(known) if *known == addr => false,
            Some(known) => {
                *known = addr;
                true
            }
            None => {
                self.members.insert(node_id.to_string(), addr);
                true
            }
        }
    }

    /// Returns whether the node was there.
    pub fn remove(&mut self, node_id: &str) -> bool {
        self.members.remove(node_id).is_some()
    }

    pub fn contains(&self, node_id: &str) -> bool {
        self.members.contains_key(node_id)
    }

    pub fn addr(&self, node_id: &str) -> Option<SocketAddr> {
        self.members.get(node_id).copied()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// In id order.
    pub fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.members.keys()
    }

    /// Members and their addresses, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, SocketAddr)> {
        self.members.iter().map(|(id, addr)| (id, *addr))
    }
}
