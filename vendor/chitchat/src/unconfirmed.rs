//! Nodes heard of but not yet seen live (chorus change 8, CHORUS.md).
//!
//! A digest entry or a delta is no proof that a node exists: anybody who can send a message
//! can list made-up node ids in it. The release made each such id a node of the cluster
//! state at once, put it in every digest it sent from then on, and kept it until the dead
//! node grace period ran out, so two messages of fake ids could grow a node's digest past a
//! datagram and mute it for minutes, and the fakes spread to every node.
//!
//! Here a node id first heard of, in a digest entry or in a delta that starts from nothing,
//! becomes an *unconfirmed* node. Its heartbeat is followed and the key-values deltas bring
//! are kept, but nothing else sees it: it is not in the digest, not in deltas, not a gossip
//! target, not in `node_states`, `live_nodes` or `dead_nodes`. It becomes a member once the
//! failure detector finds it live, which takes its heartbeat moving in at least three
//! received digests (so at least two heartbeat intervals). One not seen live within
//! [`unconfirmed_node_ttl`] is dropped. The number of new ids one message may bring and the
//! number held at once are bounded.
//!
//! A node with the same id that was collected recently (dead, then garbage collected) comes
//! back only with a heartbeat above the one it was collected with, as in the release.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::ChitchatId;
use crate::state::NodeState;

/// Most node ids one message may introduce (digest entries and deltas together). The ids
/// after that in the message are ignored; an honest sender lists them again in its next
/// message. A new node hears of up to this many nodes per message it receives: talking to
/// its seed alone (one SynAck a round), it has heard of all of a 1,000-node cluster after 4
/// rounds and counts them all as members after 6 (the release: after 3), and their keys
/// come as fast as in the release (`test_a_new_node_learns_a_large_cluster_from_its_seed`).
pub const MAX_NEW_NODES_PER_MESSAGE: usize = 256;

/// Most unconfirmed nodes held at once. A new id past it takes the place of the oldest
/// unconfirmed node whose heartbeat never moved (a fake listed once, most likely); if every
/// one has moved, the new id is ignored until one is confirmed or dropped. Above the
/// thousand-odd nodes a digest can list, so a new node can hold a whole cluster at once.
pub const MAX_UNCONFIRMED_NODES: usize = 1_024;

/// Longest node id an unknown node may have, in bytes; a longer one is ignored. A digest
/// entry costs 41 bytes plus its id, so ids of 64 KiB would fill a datagram alone. Host
/// names are at most 253 bytes.
pub const MAX_NODE_ID_LEN: usize = 255;

/// Most members (confirmed nodes, this one included). A node seen live past it takes the
/// place of the member that died first; with no dead member it stays unconfirmed (and is
/// dropped at its deadline). Four times the nodes a digest can list, so restarts (each
/// leaves a dead incarnation behind for the dead node grace period) never reach it.
pub const MAX_MEMBERS: usize = 4_096;

/// An unconfirmed node not seen live within this many gossip intervals is dropped (it may
/// come back with the next message that mentions it). A live node is seen live within
/// about three rounds of being heard of.
pub const UNCONFIRMED_NODE_TTL_ROUNDS: u32 = 20;

/// Floor of [`unconfirmed_node_ttl`], for very short gossip intervals.
pub const MIN_UNCONFIRMED_NODE_TTL: Duration = Duration::from_secs(3);

/// How long a node may stay unconfirmed at the given gossip interval.
pub fn unconfirmed_node_ttl(gossip_interval: Duration) -> Duration {
    gossip_interval
        .saturating_mul(UNCONFIRMED_NODE_TTL_ROUNDS)
        .max(MIN_UNCONFIRMED_NODE_TTL)
}

/// A node heard of, not yet seen live.
pub(crate) struct Unconfirmed {
    pub(crate) state: NodeState,
    first_heard: Instant,
    /// Its heartbeat moved at least once since it was first heard of.
    advanced: bool,
}

impl Unconfirmed {
    /// Takes a heartbeat from a digest; returns whether it moved (as
    /// [`NodeState::try_set_heartbeat`]).
    pub(crate) fn report_heartbeat(&mut self, heartbeat: crate::Heartbeat) -> bool {
        let moved = self.state.try_set_heartbeat(heartbeat);
        self.advanced |= moved;
        moved
    }
}

/// How many node ids the message being processed may still introduce.
#[derive(Debug)]
pub(crate) struct NewNodeAllowance {
    left: usize,
    /// Ids refused because the message had used its allowance or the table was full.
    pub(crate) refused: usize,
}

impl NewNodeAllowance {
    /// The allowance of one message: [`MAX_NEW_NODES_PER_MESSAGE`].
    pub(crate) fn per_message() -> Self {
        NewNodeAllowance {
            left: MAX_NEW_NODES_PER_MESSAGE,
            refused: 0,
        }
    }
}

/// What became of the unconfirmed nodes since the node started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnconfirmedStats {
    /// Unconfirmed nodes now.
    pub unconfirmed: usize,
    /// Ids that became unconfirmed nodes.
    pub heard: u64,
    /// Unconfirmed nodes that were seen live and became members.
    pub confirmed: u64,
    /// Unconfirmed nodes dropped: not seen live in time, or replaced when the table was full.
    pub dropped: u64,
    /// Ids ignored: over a message's allowance, the table full, or an id too long.
    pub refused: u64,
}

/// The unconfirmed nodes, at most [`MAX_UNCONFIRMED_NODES`].
#[derive(Default)]
pub(crate) struct UnconfirmedNodes {
    nodes: BTreeMap<ChitchatId, Unconfirmed>,
    /// Ids and when they were heard of, oldest first, for [`UnconfirmedNodes::make_room`].
    /// It may still hold ids that left `nodes` (or came back later); they are skipped, and
    /// the queue is pruned when it reaches twice the table.
    heard_order: VecDeque<(ChitchatId, Instant)>,
    stats: UnconfirmedStats,
}

impl UnconfirmedNodes {
    pub(crate) fn get(&self, chitchat_id: &ChitchatId) -> Option<&Unconfirmed> {
        self.nodes.get(chitchat_id)
    }

    pub(crate) fn get_mut(&mut self, chitchat_id: &ChitchatId) -> Option<&mut Unconfirmed> {
        self.nodes.get_mut(chitchat_id)
    }

    pub(crate) fn contains(&self, chitchat_id: &ChitchatId) -> bool {
        self.nodes.contains_key(chitchat_id)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = &ChitchatId> {
        self.nodes.keys()
    }

    pub(crate) fn stats(&self) -> UnconfirmedStats {
        UnconfirmedStats {
            unconfirmed: self.nodes.len(),
            ..self.stats
        }
    }

    /// Adds `state` (a node never heard of) as unconfirmed, if the message's allowance, the
    /// id's length and the table allow it.
    pub(crate) fn admit(
        &mut self,
        state: NodeState,
        now: Instant,
        allowance: &mut NewNodeAllowance,
    ) -> Option<&mut Unconfirmed> {
        let chitchat_id = state.chitchat_id().clone();
        if allowance.left == 0 || chitchat_id.node_id.len() > MAX_NODE_ID_LEN || !self.make_room() {
            allowance.refused += 1;
            self.stats.refused += 1;
            return None;
        }
        allowance.left -= 1;
        self.stats.heard += 1;
        if self.heard_order.len() >= 2 * MAX_UNCONFIRMED_NODES {
            let nodes = &self.nodes;
            self.heard_order.retain(|(chitchat_id, heard)| {
                nodes
                    .get(chitchat_id)
                    .is_some_and(|unconfirmed| unconfirmed.first_heard == *heard)
            });
        }
        self.heard_order.push_back((chitchat_id.clone(), now));
        let unconfirmed = Unconfirmed {
            state,
            first_heard: now,
            advanced: false,
        };
        Some(self.nodes.entry(chitchat_id).or_insert(unconfirmed))
    }

    /// Frees a place if the table is full, by dropping the oldest node whose heartbeat never
    /// moved; false if there is none. Nodes whose heartbeat moved leave the queue as they
    /// are passed: they are never dropped to make room.
    fn make_room(&mut self) -> bool {
        if self.nodes.len() < MAX_UNCONFIRMED_NODES {
            return true;
        }
        while let Some((chitchat_id, heard)) = self.heard_order.pop_front() {
            let is_static = self.nodes.get(&chitchat_id).is_some_and(|unconfirmed| {
                unconfirmed.first_heard == heard && !unconfirmed.advanced
            });
            if is_static {
                self.drop(&chitchat_id);
                return true;
            }
        }
        false
    }

    /// Removes a node seen live, to become a member.
    pub(crate) fn confirm(&mut self, chitchat_id: &ChitchatId) -> Option<NodeState> {
        let unconfirmed = self.nodes.remove(chitchat_id)?;
        self.stats.confirmed += 1;
        Some(unconfirmed.state)
    }

    /// Removes a node (not seen live in time, or replaced); returns whether it was there.
    pub(crate) fn drop(&mut self, chitchat_id: &ChitchatId) -> bool {
        let dropped = self.nodes.remove(chitchat_id).is_some();
        self.stats.dropped += u64::from(dropped);
        dropped
    }

    /// The nodes first heard of at least `ttl` before `now`.
    pub(crate) fn expired(&self, now: Instant, ttl: Duration) -> Vec<ChitchatId> {
        self.nodes
            .iter()
            .filter(|(_, unconfirmed)| {
                now.saturating_duration_since(unconfirmed.first_heard) >= ttl
            })
            .map(|(chitchat_id, _)| chitchat_id.clone())
            .collect()
    }
}

#[cfg(test)]
#[path = "unconfirmed_tests.rs"]
mod tests;
