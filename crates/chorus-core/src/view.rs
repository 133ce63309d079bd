//! The member view: from what gossip says about every incarnation of every node, one row per
//! node id with a status.
//!
//! Rules, in order, for the newest complete incarnation of a node (highest generation whose
//! fingerprint has fully arrived; a restart leaves the old generation behind as dead until
//! chitchat collects it, so rows are keyed by node id):
//! 1. it published `state=left` -> `left`;
//! 2. its fingerprint is incompatible under the policy -> `rejected` (never alive, never counted);
//! 3. the failure detector says it is not live -> `dead`;
//! 4. its heartbeat has not moved for `suspect_after` -> `suspect`;
//! 5. else `alive`.
//!
//! A roster member that gossip does not know at all (collected, or not heard from since this
//! node restarted) is `dead` at its last known address.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::fingerprint::{CompatPolicy, Fingerprint};
use crate::member::{Member, NodeId, NodeState, Published, Status};
use crate::roster::Roster;

/// What chitchat knows about one incarnation `(node_id, generation)` of a node, stamped by the
/// agent. This is the only shape in which gossip enters core.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub node_id: NodeId,
    pub generation: u64,
    pub addr: SocketAddr,
    /// The failure detector's verdict.
    pub live: bool,
    pub heartbeat: u64,
    pub published: Published,
}

/// What the view remembers of a node beyond its `members` row: the facts election needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// When this node last saw the heartbeat move (for itself: now).
    pub last_advance: Instant,
    pub vote: Option<NodeId>,
    /// Moves every few rounds while the node is heard from (see [`crate::member::vote_value`]).
    pub vote_seq: u64,
    pub lead: Option<u64>,
    pub epoch: u64,
}

/// The fixed facts the view is judged against.
#[derive(Clone, Debug)]
pub struct ViewContext<'a> {
    pub self_id: &'a str,
    pub fingerprint: &'a Fingerprint,
    pub policy: CompatPolicy,
    pub suspect_after: Duration,
}

#[derive(Clone, Copy, Debug)]
struct HeartbeatSeen {
    generation: u64,
    heartbeat: u64,
    changed_at: Instant,
}

#[derive(Debug, Default)]
pub struct MemberView {
    heartbeats: HashMap<NodeId, HeartbeatSeen>,
    members: BTreeMap<NodeId, Member>,
    seen: BTreeMap<NodeId, Seen>,
}

impl MemberView {
    /// Recomputes every row from a full gossip snapshot.
    pub fn update(
        &mut self,
        now: Instant,
        observations: &[Observation],
        roster: &Roster,
        ctx: &ViewContext<'_>,
    ) {
        let mut newest: BTreeMap<&str, &Observation> = BTreeMap::new();
        for obs in observations {
            if obs.published.fingerprint.is_none() {
                continue;
            }
            let slot = newest.entry(obs.node_id.as_str()).or_insert(obs);
            if obs.generation > slot.generation {
                *slot = obs;
            }
        }

        let mut members = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for (id, obs) in newest {
            let is_self = id == ctx.self_id;
            let (status, reason) = self.judge(now, obs, is_self, ctx);
            let last_advance = if is_self {
                now
            } else {
                self.heartbeats.get(id).map_or(now, |h| h.changed_at)
            };
            seen.insert(
                id.to_string(),
                Seen {
                    last_advance,
                    vote: obs.published.vote.clone(),
                    vote_seq: obs.published.vote_seq,
                    lead: obs.published.lead,
                    epoch: obs.published.epoch,
                },
            );
            let previous_leader = self.members.get(id).is_some_and(|m| m.leader);
            members.insert(
                id.to_string(),
                Member {
                    node_id: id.to_string(),
                    addr: obs.addr,
                    generation: obs.generation,
                    status,
                    state: obs.published.state,
                    app_version: obs
                        .published
                        .fingerprint
                        .as_ref()
                        .map(|f| f.app_version.clone()),
                    fingerprint: obs.published.fingerprint.as_ref().map(|f| f.digest.clone()),
                    load: obs.published.load.unwrap_or_default(),
                    tags: obs.published.tags.clone(),
                    start_ms: obs.published.start_ms,
                    reason,
                    leader: previous_leader,
                    is_self,
                },
            );
        }
        for entry in roster.entries() {
            members
                .entry(entry.node_id.clone())
                .or_insert_with(|| Member::unseen(&entry.node_id, entry.addr, Status::Dead, None));
        }
        self.heartbeats.retain(|id, _| members.contains_key(id));
        self.members = members;
        self.seen = seen;
    }

    fn judge(
        &mut self,
        now: Instant,
        obs: &Observation,
        is_self: bool,
        ctx: &ViewContext<'_>,
    ) -> (Status, Option<String>) {
        if obs.published.state == NodeState::Left {
            return (Status::Left, None);
        }
        if is_self {
            return (Status::Alive, None);
        }
        if let Some(fp) = &obs.published.fingerprint {
            if let Err(mismatch) = ctx.policy.check(ctx.fingerprint, fp) {
                return (Status::Rejected, Some(mismatch.to_string()));
            }
        }
        let seen = self
            .heartbeats
            .entry(obs.node_id.clone())
            .or_insert(HeartbeatSeen {
                generation: obs.generation,
                heartbeat: obs.heartbeat,
                changed_at: now,
            });
        if seen.generation != obs.generation || seen.heartbeat != obs.heartbeat {
            *seen = HeartbeatSeen {
                generation: obs.generation,
                heartbeat: obs.heartbeat,
                changed_at: now,
            };
        }
        if !obs.live {
            (Status::Dead, None)
        } else if now.saturating_duration_since(seen.changed_at) >= ctx.suspect_after {
            (Status::Suspect, None)
        } else {
            (Status::Alive, None)
        }
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn get(&self, node_id: &str) -> Option<&Member> {
        self.members.get(node_id)
    }

    /// Election facts of a node gossip knows (absent for roster-only rows).
    pub fn seen(&self, node_id: &str) -> Option<&Seen> {
        self.seen.get(node_id)
    }

    /// Shows a peer the transport refused at its hello as `rejected`, unless gossip knows it
    /// (a node is never both a member and refused: gossip only carries accepted peers).
    pub(crate) fn add_refused(&mut self, node_id: &str, addr: SocketAddr, reason: &str) {
        self.members
            .entry(node_id.to_string())
            .or_insert_with(|| Member::unseen(node_id, addr, Status::Rejected, Some(reason)));
    }

    pub(crate) fn set_leader(&mut self, leader: Option<&str>) {
        for m in self.members.values_mut() {
            m.leader = Some(m.node_id.as_str()) == leader;
        }
    }
}
