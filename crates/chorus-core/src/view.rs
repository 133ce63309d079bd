//! The member view: from what gossip says about every incarnation of every node, one row per
//! node id with a status.
//!
//! Rules, in order, for the believed incarnation of a node ([`believed`]: the newest complete
//! one, i.e. highest generation whose fingerprint has fully arrived, unless an older live one
//! at another address shadows it; a restart leaves the old generation behind as dead until
//! chitchat collects it, so rows are keyed by node id):
//! 1. it published `state=left` -> `left`;
//! 2. its fingerprint is incompatible under the policy -> `rejected` (never alive, never counted);
//! 3. the failure detector says it is not live -> `dead`;
//! 4. its heartbeat has not moved for `suspect_after` -> `suspect`;
//! 5. else `alive`.
//!
//! A roster member that gossip does not know at all (collected, or not heard from since this
//! node restarted) is `dead` at its last known address; a peer refused at its hello is
//! `rejected` unless gossip shows it up (a refused peer never gossips again, so its last
//! incarnation, `dead` or `left`, would otherwise hide the refusal).
//!
//! Every agent tick hands the view a full snapshot, but from one tick to the next almost no
//! row changes. Rows are therefore updated in place and shared (`Arc`) with whoever published
//! them: a row is only rebuilt when what it shows changed, and [`MemberView::revision`] moves
//! whenever any row did, so the agent republishes nothing on a quiet tick.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fingerprint::{CompatPolicy, Fingerprint};
use crate::member::{Member, NodeId, NodeState, Published, RaftKey, Status};
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
    /// Its Raft identity (introduces it to consensus).
    pub raft: Option<RaftKey>,
}

/// The fixed facts the view is judged against.
#[derive(Clone, Debug)]
pub struct ViewContext<'a> {
    pub self_id: &'a str,
    /// This node's gossip address: incarnations of its id elsewhere are another agent's.
    pub self_addr: SocketAddr,
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

/// A peer the transport refused at its hello (by this node, or by another that says so).
#[derive(Clone, Debug)]
pub struct Refused<'a> {
    pub node_id: &'a str,
    pub addr: SocketAddr,
    pub reason: Cow<'a, str>,
}

#[derive(Debug)]
struct Row {
    member: Arc<Member>,
    /// Only for nodes gossip knows.
    seen: Option<Seen>,
    /// Kept while the node is in gossip or the roster, so a node that drops out of gossip and
    /// comes back with the same heartbeat is not taken for freshly heard.
    heartbeat: Option<HeartbeatSeen>,
    /// Status and generation before the last update; `None` for a row it created.
    previous: Option<(Status, u64)>,
    /// The last update that produced this row: rows it did not produce are dropped.
    update: u64,
}

#[derive(Debug, Default)]
pub struct MemberView {
    rows: BTreeMap<NodeId, Row>,
    updates: u64,
    revision: u64,
}

impl MemberView {
    /// Brings every row up to date with a full gossip snapshot, the roster and the refused
    /// peers (the first refusal of a node wins).
    pub fn update(
        &mut self,
        now: Instant,
        observations: &[Observation],
        roster: &Roster,
        refused: &[Refused<'_>],
        ctx: &ViewContext<'_>,
    ) {
        let newest = believed(observations, ctx);

        self.updates += 1;
        let mut changed = false;
        for obs in &newest {
            let id = obs.node_id.as_str();
            changed |= self.produce(id, obs.addr, |row| {
                let is_self = id == ctx.self_id;
                let (status, reason) = judge(now, obs, is_self, ctx, &mut row.heartbeat);
                let last_advance = if is_self {
                    now
                } else {
                    row.heartbeat.map_or(now, |h| h.changed_at)
                };
                refresh_seen(&mut row.seen, last_advance, &obs.published);
                refresh_member(&mut row.member, obs, status, reason, is_self)
            });
        }
        let mut in_gossip = newest.iter().map(|o| o.node_id.as_str()).peekable();
        for (id, addr) in roster.iter() {
            // Both in id order: walk them together.
            while in_gossip.next_if(|g| *g < id.as_str()).is_some() {}
            if in_gossip.next_if_eq(&id.as_str()).is_some() {
                continue;
            }
            changed |= self.produce(id, addr, |row| {
                row.seen = None;
                show_unseen(&mut row.member, addr, Status::Dead, None)
            });
        }
        for r in refused {
            changed |= self.produce_refused(r);
        }
        let before = self.rows.len();
        let update = self.updates;
        self.rows.retain(|_, row| row.update == update);
        changed |= self.rows.len() != before;
        if changed {
            self.revision += 1;
        }
    }

    /// Lets `refresh` bring the row of `id` up to date for this update, remembering its status
    /// before (a new row starts as [`Member::unseen`]); nothing if this update already produced
    /// it. Returns whether the row changed.
    fn produce(
        &mut self,
        id: &str,
        addr: SocketAddr,
        refresh: impl FnOnce(&mut Row) -> bool,
    ) -> bool {
        let update = self.updates;
        if let Some(row) = self.rows.get_mut(id) {
            if row.update == update {
                return false;
            }
            row.previous = Some((row.member.status, row.member.generation));
            row.update = update;
            return refresh(row);
        }
        let mut row = Row {
            member: Arc::new(Member::unseen(id, addr, Status::Dead, None)),
            seen: None,
            heartbeat: None,
            previous: None,
            update,
        };
        refresh(&mut row);
        self.rows.insert(id.to_string(), row);
        true
    }

    /// Shows a refused peer `rejected`, unless this update already shows it up (live gossip
    /// outweighs a refusal, which may be minutes old) or rejected. A refusal does replace a
    /// row that is dead or `left`: a known member that restarts with another version is
    /// refused at every hello and never gossips again, so its last incarnation would
    /// otherwise stay on display and the refusal would never be seen.
    fn produce_refused(&mut self, r: &Refused<'_>) -> bool {
        let update = self.updates;
        let refresh = |row: &mut Row| {
            row.seen = None;
            row.heartbeat = None;
            show_unseen(&mut row.member, r.addr, Status::Rejected, Some(&r.reason))
        };
        match self.rows.get_mut(r.node_id) {
            Some(row) if row.update == update => {
                let status = row.member.status;
                if status.is_up() || status == Status::Rejected {
                    return false;
                }
                refresh(row)
            }
            _ => self.produce(r.node_id, r.addr, refresh),
        }
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.rows.values().map(|r| &*r.member)
    }

    /// The rows as shared, for a reader that keeps them (cloning is a reference count).
    pub fn shared_members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.rows.values().map(|r| &r.member)
    }

    /// Every row with its election facts.
    pub fn entries(&self) -> impl Iterator<Item = (&Member, Option<&Seen>)> {
        self.rows.values().map(|r| (&*r.member, r.seen.as_ref()))
    }

    /// Every row with its status and generation before the last update (`None`: new).
    pub fn with_previous(&self) -> impl Iterator<Item = (&Member, Option<(Status, u64)>)> {
        self.rows.values().map(|r| (&*r.member, r.previous))
    }

    /// Whether each of `ids`, which must be in id order, has a row that is up: one walk
    /// alongside the rows rather than a lookup per id.
    pub fn up_among<'a>(
        &'a self,
        ids: impl Iterator<Item = &'a NodeId> + 'a,
    ) -> impl Iterator<Item = (&'a NodeId, bool)> + 'a {
        let mut rows = self.rows.iter().peekable();
        ids.map(move |id| {
            while rows.next_if(|(r, _)| *r < id).is_some() {}
            let up = rows
                .peek()
                .is_some_and(|(r, row)| *r == id && row.member.status.is_up());
            (id, up)
        })
    }

    pub fn get(&self, node_id: &str) -> Option<&Member> {
        self.rows.get(node_id).map(|r| &*r.member)
    }

    /// Election facts of a node gossip knows (absent for roster-only rows).
    pub fn seen(&self, node_id: &str) -> Option<&Seen> {
        self.rows.get(node_id)?.seen.as_ref()
    }

    /// Moves whenever a row changed (or appeared, or went); equal revisions show equal rows.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub(crate) fn set_leader(&mut self, leader: Option<&str>) {
        let mut changed = false;
        for (id, row) in self.rows.iter_mut() {
            let is_leader = Some(id.as_str()) == leader;
            if row.member.leader != is_leader {
                Arc::make_mut(&mut row.member).leader = is_leader;
                changed = true;
            }
        }
        if changed {
            self.revision += 1;
        }
    }
}

/// The incarnation believed for each node id, in id order: of the complete incarnations
/// (fingerprint arrived), the newest (the first one seen, on a tie) that no older live
/// incarnation at another address shadows. A node id belongs to one live agent: a newer
/// incarnation from another address while the older one is alive and has not left is a
/// second agent claiming the id (`alert=node_id_conflict`), not a restart, so it never
/// becomes the member and its `left` never removes the live one. A restart at the same
/// address, or at another once the old incarnation is dead or left, is believed. For this
/// node itself only incarnations at its own address count: it knows it is alive.
pub fn believed<'a>(
    observations: &'a [Observation],
    ctx: &ViewContext<'_>,
) -> Vec<&'a Observation> {
    let mut complete: Vec<&Observation> = observations
        .iter()
        .filter(|o| o.published.fingerprint.is_some())
        .collect();
    // chitchat hands them sorted, so the sort only checks; stable, so ties keep their order.
    complete.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let mut out = Vec::new();
    for group in complete.chunk_by(|a, b| a.node_id == b.node_id) {
        let is_self = group[0].node_id == ctx.self_id;
        let shadowed = |o: &Observation| {
            if is_self {
                return o.addr != ctx.self_addr;
            }
            group.iter().any(|older| {
                older.generation < o.generation
                    && older.addr != o.addr
                    && older.live
                    && older.published.state != NodeState::Left
            })
        };
        let mut best: Option<&Observation> = None;
        for o in group.iter().filter(|o| !shadowed(o)) {
            if best.is_none_or(|b| o.generation > b.generation) {
                best = Some(o);
            }
        }
        // Only this node's own row can lose every incarnation (gossip about its id from
        // elsewhere): it then falls back to the newest, as before.
        if let Some(best) = best.or_else(|| {
            group
                .iter()
                .copied()
                .fold(None, |b: Option<&Observation>, o| match b {
                    Some(b) if b.generation >= o.generation => Some(b),
                    _ => Some(o),
                })
        }) {
            out.push(best);
        }
    }
    out
}

fn judge(
    now: Instant,
    obs: &Observation,
    is_self: bool,
    ctx: &ViewContext<'_>,
    heartbeat: &mut Option<HeartbeatSeen>,
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
    let current = HeartbeatSeen {
        generation: obs.generation,
        heartbeat: obs.heartbeat,
        changed_at: now,
    };
    let seen = heartbeat.get_or_insert(current);
    if seen.generation != obs.generation || seen.heartbeat != obs.heartbeat {
        *seen = current;
    }
    if !obs.live {
        (Status::Dead, None)
    } else if now.saturating_duration_since(seen.changed_at) >= ctx.suspect_after {
        (Status::Suspect, None)
    } else {
        (Status::Alive, None)
    }
}

fn refresh_seen(slot: &mut Option<Seen>, last_advance: Instant, p: &Published) {
    match slot {
        Some(s) => {
            s.last_advance = last_advance;
            s.raft = p.raft;
        }
        None => {
            *slot = Some(Seen {
                last_advance,
                raft: p.raft,
            })
        }
    }
}

/// Makes `member` the row of a node gossip knows; returns whether it changed. The leader flag
/// is kept: the election sets it.
fn refresh_member(
    member: &mut Arc<Member>,
    obs: &Observation,
    status: Status,
    reason: Option<String>,
    is_self: bool,
) -> bool {
    let p = &obs.published;
    let fp = p.fingerprint.as_ref();
    let m = &**member;
    let same = m.addr == obs.addr
        && m.generation == obs.generation
        && m.status == status
        && m.state == p.state
        && m.app_version.as_deref() == fp.map(|f| f.app_version.as_str())
        && m.fingerprint.as_deref() == fp.map(|f| f.digest.as_str())
        && m.load == p.load.unwrap_or_default()
        && m.tags == p.tags
        && m.start_ms == p.start_ms
        && m.reason == reason
        && m.is_self == is_self;
    if same {
        return false;
    }
    *member = Arc::new(Member {
        node_id: m.node_id.clone(),
        addr: obs.addr,
        generation: obs.generation,
        status,
        state: p.state,
        app_version: fp.map(|f| f.app_version.clone()),
        fingerprint: fp.map(|f| f.digest.clone()),
        load: p.load.unwrap_or_default(),
        tags: p.tags.clone(),
        start_ms: p.start_ms,
        reason,
        leader: m.leader,
        is_self,
    });
    true
}

/// Makes `member` the row of a node known only by name and address ([`Member::unseen`]);
/// returns whether it changed.
fn show_unseen(
    member: &mut Arc<Member>,
    addr: SocketAddr,
    status: Status,
    reason: Option<&str>,
) -> bool {
    let wanted = Member::unseen(&member.node_id, addr, status, reason);
    if **member == wanted {
        return false;
    }
    *member = Arc::new(wanted);
    true
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
