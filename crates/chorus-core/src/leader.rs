//! Leader election for scheduled tasks, without a coordinator: a quorum lease over gossip.
//!
//! Every node publishes a vote (`vote` key) with a sequence number it bumps every `lease / 4`
//! (see [`crate::member::vote_value`]). A node leads while a majority of the counted roster has
//! *fresh* votes for it: a voter counts only while its vote's sequence number moved less than
//! `lease` ago in the leader's view. (Not its heartbeat: chitchat also carries heartbeats alone,
//! in the digest of a SYN, over a link that works one way only; a leader that could hear but
//! not speak kept seeing its voters "alive" with the votes they had withdrawn long ago.) A
//! node is *heard* while its sequence number moves. Voters change their vote slowly:
//! - they keep voting for their candidate while it is eligible (the incumbent stays leader, a
//!   joining node never moves leadership);
//! - a candidate that declared itself ineligible (draining, left, `leader=false`, another
//!   version) stopped claiming before it said so: voters move at once;
//! - a candidate that went silent keeps the vote until it has not been heard for `vote_wait`
//!   (= 2 x lease): by then it has stopped counting the vote, so the lease of the old leader
//!   has run out before anyone can gather a majority; a candidate not heard for `vote_wait` is
//!   not eligible, and its leadership claim is not believed;
//! - any other change of vote (votes split with no leader) first withdraws the vote and waits
//!   `vote_wait` before voting again; a voter does that only after its candidate has gone a
//!   lease without being seen to claim leadership (a leader just elected, or just restarted,
//!   has not yet published its claim: withdrawing at once made leadership flap);
//! - a node without quorum votes for nobody and never leads.
//!
//! Epochs: a node with a majority of fresh votes first *proposes* an epoch (largest seen + 1,
//! persisted and published as its `epoch`) and only leads once a majority of fresh voters
//! publish an epoch at least that large. Any later leader's majority shares a voter with this
//! one and sees its epoch, so it proposes a larger one. (Taking the epoch at once let a leader
//! cut off right after its election use an epoch nobody else had seen, and the next leader
//! take the same one.) A proposal is dropped when the majority goes.
//!
//! Invariants, pinned by tests here and in `tests/scenarios.rs` (docs/leader.md has the timing
//! argument and the measurements):
//! - leaders never overlap: in one snapshot at most one node has a majority
//!   (`never_two_leaders_claimed_under_one_quorum`), and across time the lease keeps the old
//!   leader's votes from counting twice (`checker_finds_no_overlapping_leaders`, with
//!   partitions, crashes, restarts, loss and one-way links;
//!   `leader_that_cannot_speak_steps_down`);
//! - a minority never leads (`minority_never_leads`);
//! - epochs only grow: every leadership takes an epoch above every epoch and claim it has seen,
//!   persisted first (`epoch_only_grows`), and above every earlier leadership in the cluster
//!   (the checker);
//! - a joining node keeps the incumbent (`joining_node_keeps_incumbent`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::alert::Alert;
use crate::member::{Member, NodeId, NodeState};
use crate::roster::Roster;
use crate::view::{MemberView, Seen};

/// The tag that keeps a node from ever leading: `--tag leader=false`.
pub const LEADER_TAG: &str = "leader";
/// The tag of a read-only node (`read_only=true`): it never leads where a task needs writes.
pub const READ_ONLY_TAG: &str = "read_only";

/// Whether a node must publish `leader=false`: it was told so, or it is read-only while some
/// scheduled task needs a writable leader (so leadership always lands where that task can run).
pub fn must_not_lead(
    tags: &std::collections::BTreeMap<String, String>,
    has_writable_task: bool,
) -> bool {
    tags.get(LEADER_TAG).map(String::as_str) == Some("false")
        || (has_writable_task && tags.get(READ_ONLY_TAG).map(String::as_str) == Some("true"))
}

#[derive(Debug, Clone, PartialEq)]
pub enum ElectionOutput {
    /// Publish this node's vote (`None`: no vote) with this sequence number
    /// ([`crate::member::vote_value`]).
    Vote {
        candidate: Option<NodeId>,
        seq: u64,
    },
    /// Persist the epoch before anything else: a restart must never reuse it. A proposal is
    /// taken only once [`Election::epoch_persisted`] confirms it.
    PersistEpoch(u64),
    /// This node now leads with this epoch (publish `lead`, start tasks).
    Acquired {
        epoch: u64,
    },
    /// This node no longer leads (clear `lead`, stop tasks).
    Lost {
        epoch: u64,
    },
    /// Publish the largest epoch seen.
    MaxEpoch(u64),
    Alert(Alert),
}

#[derive(Debug, Clone, PartialEq)]
enum Vote {
    /// Not voting; may vote again at `until`.
    Withdrawn {
        until: Instant,
    },
    For(NodeId),
}

#[derive(Debug)]
pub struct Election {
    lease: Duration,
    vote: Vote,
    /// When the vote was last cast, or its candidate last seen claiming leadership.
    backed_at: Instant,
    leading: Option<u64>,
    /// The epoch proposed for the leadership this node is about to take.
    proposed: Option<u64>,
    max_epoch: u64,
    /// The largest epoch the data dir confirmed written: a leadership never uses an epoch
    /// above it, so a restart can never reuse an epoch that was led with.
    durable_epoch: u64,
    /// The sequence number of this node's vote, and when it was last published.
    vote_seq: u64,
    vote_published_at: Option<Instant>,
    /// Every other node's last vote publication (candidate, sequence) and when it was first
    /// seen: when that node was last heard from. `None`: not seen to move yet (the first
    /// value seen may be old news relayed from a node that can no longer be heard).
    heard: BTreeMap<NodeId, (Option<NodeId>, u64, Option<Instant>)>,
    observed: Option<(NodeId, u64)>,
    dual_since: Option<Instant>,
    dual_reported: bool,
}

/// What the election reads from the rest of the node on every tick.
pub struct ElectionInput<'a> {
    pub now: Instant,
    pub self_id: &'a str,
    pub view: &'a MemberView,
    pub roster: &'a Roster,
    /// The size a majority is counted against (roster, floored by `--expect`).
    pub counted: usize,
    pub quorum: bool,
    pub self_state: NodeState,
}

impl Election {
    /// `persisted_epoch`: the largest epoch this node had seen before it restarted. A new node
    /// waits `vote_wait` before its first vote, so a vote of its previous run still counted
    /// somewhere has expired.
    pub fn new(now: Instant, lease: Duration, persisted_epoch: u64) -> Election {
        Election {
            lease,
            vote: Vote::Withdrawn {
                until: now + lease * 2,
            },
            backed_at: now,
            leading: None,
            proposed: None,
            max_epoch: persisted_epoch,
            durable_epoch: persisted_epoch,
            vote_seq: 0,
            vote_published_at: None,
            heard: BTreeMap::new(),
            observed: None,
            dual_since: None,
            dual_reported: false,
        }
    }

    pub fn vote_wait(&self) -> Duration {
        self.lease * 2
    }

    /// How often the vote is published again, unchanged, so that its voter is heard.
    pub fn vote_refresh(&self) -> Duration {
        self.lease / 4
    }

    pub fn leading(&self) -> Option<u64> {
        self.leading
    }

    /// Stops leading now (drain, leave); the caller publishes it. Voters see the node become
    /// ineligible only after this, so they may move their vote at once.
    pub fn force_step_down(&mut self) {
        self.leading = None;
    }

    pub fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    /// The data dir has written `epoch` (the answer to [`ElectionOutput::PersistEpoch`]).
    pub fn epoch_persisted(&mut self, epoch: u64) {
        self.durable_epoch = self.durable_epoch.max(epoch);
    }

    /// The leader this node sees and its epoch.
    pub fn observed_leader(&self) -> Option<(&str, u64)> {
        self.observed.as_ref().map(|(n, e)| (n.as_str(), *e))
    }

    pub fn step(&mut self, input: &ElectionInput<'_>) -> Vec<ElectionOutput> {
        let mut out = Vec::new();
        self.update_heard(input);
        // Only counted members move the epoch: a rejected or unknown node (another version,
        // a forged row) publishing 2^64-1 must not poison every later leadership.
        let seen_max = input
            .view
            .entries()
            .filter(|(m, _)| counts_for_epoch(input, m))
            .filter_map(|(_, seen)| seen)
            .map(|s| s.epoch.max(s.lead.unwrap_or(0)))
            .max()
            .unwrap_or(0);
        if seen_max > self.max_epoch {
            self.max_epoch = seen_max;
            out.push(ElectionOutput::PersistEpoch(self.max_epoch));
            out.push(ElectionOutput::MaxEpoch(self.max_epoch));
        }

        let old_vote = self.vote.clone();
        self.update_vote(input);
        let published = |v: &Vote| match v {
            Vote::For(n) => Some(n.clone()),
            Vote::Withdrawn { .. } => None,
        };
        if self.vote != old_vote {
            self.backed_at = input.now;
        }
        let due = self
            .vote_published_at
            .is_none_or(|t| input.now.saturating_duration_since(t) >= self.vote_refresh());
        if due || published(&self.vote) != published(&old_vote) {
            self.vote_seq += 1;
            self.vote_published_at = Some(input.now);
            out.push(ElectionOutput::Vote {
                candidate: published(&self.vote),
                seq: self.vote_seq,
            });
        }

        let should_lead = input.quorum && self.self_eligible(input) && self.has_majority(input, 0);
        match (self.leading, should_lead) {
            (None, true) => {
                // A proposal is good while nothing larger has been seen, and no other node
                // claims it (an equal `epoch` may be an echo of the proposal; a claim is not).
                let claimed = input
                    .view
                    .entries()
                    .filter(|(m, _)| !m.is_self)
                    .filter_map(|(_, seen)| seen?.lead)
                    .max()
                    .unwrap_or(0);
                let proposed = match self.proposed {
                    Some(p) if p >= self.max_epoch && p > claimed => {
                        if p > self.durable_epoch {
                            // The last write was refused: ask again until the data dir takes it.
                            out.push(ElectionOutput::PersistEpoch(p));
                        }
                        p
                    }
                    _ => {
                        // An epoch that cannot grow is never reused: refuse to lead instead.
                        let Some(next) = self.max_epoch.checked_add(1) else {
                            self.observe_leader(input, &mut out);
                            return out;
                        };
                        self.max_epoch = next;
                        out.push(ElectionOutput::PersistEpoch(self.max_epoch));
                        out.push(ElectionOutput::MaxEpoch(self.max_epoch));
                        self.proposed = Some(self.max_epoch);
                        self.max_epoch
                    }
                };
                if proposed <= self.durable_epoch && self.has_majority(input, proposed) {
                    debug_assert!(
                        proposed >= seen_max && proposed > claimed,
                        "a leadership epoch is above every claim and never below an epoch seen"
                    );
                    self.proposed = None;
                    self.leading = Some(proposed);
                    out.push(ElectionOutput::Acquired { epoch: proposed });
                }
            }
            (None, false) => self.proposed = None,
            (Some(epoch), false) => {
                self.leading = None;
                out.push(ElectionOutput::Lost { epoch });
            }
            (Some(_), true) => {}
        }

        self.observe_leader(input, &mut out);
        out
    }

    fn update_vote(&mut self, input: &ElectionInput<'_>) {
        let now = input.now;
        if !input.quorum {
            if let Vote::For(_) = self.vote {
                self.vote = Vote::Withdrawn {
                    until: now + self.vote_wait(),
                };
            }
            return;
        }
        let incumbent = self.incumbent(input);
        let best = incumbent.clone().or_else(|| self.oldest_eligible(input));
        match &self.vote {
            Vote::Withdrawn { until } => {
                // Voting for a leader that already holds a majority cannot make a second one,
                // so a joining or returning node backs the incumbent at once.
                if incumbent.is_some() || now >= *until {
                    if let Some(b) = best {
                        self.vote = Vote::For(b);
                    }
                }
            }
            Vote::For(current) => {
                let current = current.clone();
                let member = input.view.get(&current);
                if !declared_eligible(input, member) {
                    // It stopped claiming before it said so: moving now is safe.
                    self.vote = match best {
                        Some(b) => Vote::For(b),
                        None => Vote::Withdrawn { until: now },
                    };
                } else if !is_up(input, &current) || !self.heard_within(input, &current, self.lease)
                {
                    // Gone quiet: it stops counting this vote a lease after it last heard it;
                    // hold the vote until it has not been heard for twice that.
                    if !self.heard_within(input, &current, self.vote_wait()) {
                        self.vote = match best {
                            Some(b) => Vote::For(b),
                            None => Vote::Withdrawn { until: now },
                        };
                    }
                } else if let Some(inc) = incumbent {
                    // The incumbent already holds a majority without this vote.
                    if inc != current {
                        self.vote = Vote::For(inc);
                    }
                    self.backed_at = now;
                } else if best.as_ref().is_some_and(|b| *b != current)
                    && now.saturating_duration_since(self.backed_at) >= self.lease
                {
                    // Votes are split and nobody leads: withdraw, let the lease run out, revote.
                    self.vote = Vote::Withdrawn {
                        until: now + self.vote_wait(),
                    };
                }
            }
        }
    }

    /// A strict majority of the counted roster has a fresh vote for this node (its own
    /// included) and publishes an epoch of at least `min_epoch`; or exactly half does, holding
    /// the lowest roster id (the quorum tie-break: two disjoint halves cannot both hold it).
    fn has_majority(&self, input: &ElectionInput<'_>, min_epoch: u64) -> bool {
        // Run by every node on every tick: the vote, which rules out most voters of a node
        // that does not lead, is looked at first.
        let votes_for_me =
            |id: &str| {
                if id == input.self_id {
                    return matches!(&self.vote, Vote::For(c) if c == input.self_id);
                }
                input.view.seen(id).is_some_and(|s| {
                    s.vote.as_deref() == Some(input.self_id) && s.epoch >= min_epoch
                }) && is_up(input, id)
                    && self.heard_within(input, id, self.lease)
            };
        let n = input.roster.ids().filter(|id| votes_for_me(id)).count() * 2;
        n > input.counted
            || (n == input.counted
                && input.roster.len() >= input.counted
                && input
                    .roster
                    .ids()
                    .next()
                    .is_some_and(|lowest| votes_for_me(lowest)))
    }

    /// Notes, for every node gossip knows, when its vote publication last changed.
    fn update_heard(&mut self, input: &ElectionInput<'_>) {
        let now = input.now;
        let mut known = 0;
        for (m, s) in input.view.entries().filter(|(m, _)| !m.is_self) {
            let Some(s) = s else { continue };
            known += 1;
            match self.heard.get_mut(&m.node_id) {
                Some((vote, seq, _)) if *vote == s.vote && *seq == s.vote_seq => {}
                Some((vote, seq, at)) => {
                    // Mostly only the sequence moved: keep the candidate's string.
                    if *vote != s.vote {
                        vote.clone_from(&s.vote);
                    }
                    *seq = s.vote_seq;
                    *at = Some(now);
                }
                None => {
                    self.heard
                        .insert(m.node_id.clone(), (s.vote.clone(), s.vote_seq, None));
                }
            }
        }
        // Every node gossip knows is in `heard` now: anything more is a node it forgot.
        if self.heard.len() != known {
            self.heard.retain(|id, _| input.view.seen(id).is_some());
        }
    }

    /// Whether `id`'s vote publication moved less than `within` ago (this node: always).
    fn heard_within(&self, input: &ElectionInput<'_>, id: &str, within: Duration) -> bool {
        id == input.self_id
            || self
                .heard
                .get(id)
                .and_then(|(_, _, at)| *at)
                .is_some_and(|at| input.now.saturating_duration_since(at) < within)
    }

    /// Declared eligible, up, and heard within `vote_wait`.
    fn eligible(&self, input: &ElectionInput<'_>, m: &Member) -> bool {
        declared_eligible(input, Some(m))
            && (m.node_id == input.self_id || m.status.is_up())
            && self.heard_within(input, &m.node_id, self.vote_wait())
    }

    fn self_eligible(&self, input: &ElectionInput<'_>) -> bool {
        input
            .view
            .get(input.self_id)
            .is_some_and(|m| self.eligible(input, m))
    }

    /// An eligible node that claims leadership (this one included), highest epoch first.
    fn incumbent(&self, input: &ElectionInput<'_>) -> Option<NodeId> {
        input
            .view
            .entries()
            .filter_map(|(m, seen)| Some((seen?.lead?, m)))
            .filter(|(_, m)| self.eligible(input, m))
            .map(|(lead, m)| (lead, &m.node_id))
            .max()
            .map(|(_, id)| id.clone())
    }

    /// The oldest eligible node: earliest start time, then lowest id.
    fn oldest_eligible(&self, input: &ElectionInput<'_>) -> Option<NodeId> {
        input
            .view
            .members()
            .filter(|m| self.eligible(input, m))
            .min_by_key(|m| (m.start_ms.unwrap_or(u64::MAX), &m.node_id))
            .map(|m| m.node_id.clone())
    }

    fn observe_leader(&mut self, input: &ElectionInput<'_>, out: &mut Vec<ElectionOutput>) {
        let mut claims: Vec<(NodeId, u64)> = input
            .view
            .entries()
            .filter(|(m, _)| !m.is_self && m.status.is_up() && input.quorum)
            .filter_map(|(m, seen): (&Member, Option<&Seen>)| {
                let lead = seen?.lead?;
                self.heard_within(input, &m.node_id, self.vote_wait())
                    .then(|| (m.node_id.clone(), lead))
            })
            .collect();
        if let Some(epoch) = self.leading {
            claims.push((input.self_id.to_string(), epoch));
        }
        claims.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let current = claims.first().cloned();

        if claims.len() > 1 {
            let since = *self.dual_since.get_or_insert(input.now);
            // A claim cleared by a step-down can arrive a little after the new leader's: only
            // a double claim that outlives a lease is a real overlap.
            if !self.dual_reported && input.now.saturating_duration_since(since) >= self.lease {
                self.dual_reported = true;
                out.push(ElectionOutput::Alert(Alert::DualLeader { leaders: claims }));
            }
        } else {
            self.dual_since = None;
            self.dual_reported = false;
        }

        let old = self.observed.as_ref().map(|(n, _)| n.clone());
        let new = current.as_ref().map(|(n, _)| n.clone());
        let epoch_changed =
            self.observed.as_ref().map(|(_, e)| *e) != current.as_ref().map(|(_, e)| *e);
        if old != new || epoch_changed {
            out.push(ElectionOutput::Alert(Alert::LeaderChanged {
                old,
                new,
                epoch: current.as_ref().map_or(self.max_epoch, |(_, e)| *e),
            }));
            self.observed = current;
        }
    }
}

fn is_up(input: &ElectionInput<'_>, id: &str) -> bool {
    id == input.self_id || input.view.get(id).is_some_and(|m| m.status.is_up())
}

/// Whether a member's published epoch and claim may raise this node's epoch: it is in the
/// counted roster and compatible (never rejected).
fn counts_for_epoch(input: &ElectionInput<'_>, m: &Member) -> bool {
    m.is_self || (m.status != crate::member::Status::Rejected && input.roster.contains(&m.node_id))
}

/// Eligible by what the candidate itself published: in the roster, active, not tagged
/// `leader=false`, compatible and not left. Says nothing about reachability.
fn declared_eligible(input: &ElectionInput<'_>, member: Option<&Member>) -> bool {
    let Some(m) = member else { return false };
    let state = if m.is_self { input.self_state } else { m.state };
    state == NodeState::Active
        && !matches!(
            m.status,
            crate::member::Status::Rejected | crate::member::Status::Left
        )
        && m.tags.get(LEADER_TAG).map(String::as_str) != Some("false")
        && input.roster.contains(&m.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{CompatPolicy, Fingerprint};
    use crate::member::{keys, vote_value, Published};
    use crate::quorum;
    use crate::roster::{Roster, RosterEntry};
    use crate::view::{Observation, ViewContext};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const LEASE: Duration = Duration::from_secs(2);

    fn id(i: usize) -> NodeId {
        format!("n{i}")
    }

    fn fp() -> Fingerprint {
        Fingerprint::compute(crate::PROTOCOL_VERSION, "1.0", &[])
    }

    /// What one node published, as everyone sees it in one snapshot.
    #[derive(Debug, Clone)]
    struct Facts {
        vote: Option<usize>,
        seq: u64,
        live: bool,
        active: bool,
        epoch: u64,
        lead: Option<u64>,
    }

    fn observation(i: usize, f: &Facts, heartbeat: u64) -> Observation {
        let mut pairs = Published::identity_pairs(&fp(), 1);
        let state = if f.active { "active" } else { "draining" };
        pairs.push((keys::STATE.into(), state.into()));
        let vote = f.vote.map(id);
        pairs.push((keys::VOTE.into(), vote_value(vote.as_deref(), f.seq)));
        pairs.push((keys::EPOCH.into(), f.epoch.to_string()));
        if let Some(lead) = f.lead {
            pairs.push((keys::LEAD.into(), lead.to_string()));
        }
        Observation {
            node_id: id(i),
            generation: 1,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
            live: f.live,
            heartbeat,
            published: Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        }
    }

    fn roster_of(ids: &BTreeSet<NodeId>) -> Roster {
        Roster::from_entries(ids.iter().map(|n| RosterEntry {
            node_id: n.clone(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        }))
    }

    fn view_of(
        me: usize,
        obs: &[Observation],
        roster: &BTreeSet<NodeId>,
        now: Instant,
    ) -> MemberView {
        let fp = fp();
        let self_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + me as u16));
        let me = id(me);
        let ctx = ViewContext {
            self_id: &me,
            self_addr,
            fingerprint: &fp,
            policy: CompatPolicy::Exact,
            suspect_after: Duration::from_secs(60),
        };
        let mut view = MemberView::default();
        view.update(now, obs, &roster_of(roster), &[], &ctx);
        view
    }

    fn facts() -> impl Strategy<Value = Facts> {
        (
            proptest::option::of(0usize..7),
            0u64..3,
            any::<bool>(),
            proptest::bool::weighted(0.8),
            0u64..5,
            proptest::option::of(0u64..5),
        )
            .prop_map(|(vote, seq, live, active, epoch, lead)| Facts {
                vote,
                seq,
                live,
                active,
                epoch,
                lead,
            })
    }

    /// Another node as one node sees it, step after step: mostly voting for `n0`.
    fn voter() -> impl Strategy<Value = Facts> {
        (
            prop_oneof![3 => Just(Some(0usize)), 1 => (1usize..5).prop_map(Some), 1 => Just(None)],
            0u64..3,
            proptest::bool::weighted(0.9),
            proptest::bool::weighted(0.9),
            0u64..12,
            proptest::option::weighted(0.15, 0u64..12),
        )
            .prop_map(|(vote, seq, live, active, epoch, lead)| Facts {
                vote,
                seq,
                live,
                active,
                epoch,
                lead,
            })
    }

    /// One step of `n0` with every node voting for it and heard within the lease; `extra`
    /// are more observations (nodes outside the roster, say).
    fn step_unanimous(
        e: &mut Election,
        persisted: u64,
        extra: &[Observation],
    ) -> Vec<ElectionOutput> {
        let t0 = Instant::now();
        let now = t0 + LEASE;
        let roster: BTreeSet<NodeId> = (0..3).map(id).collect();
        let voter = |_| Facts {
            vote: Some(0),
            seq: 1,
            live: true,
            active: true,
            epoch: persisted,
            lead: None,
        };
        let mut obs: Vec<Observation> = (0..3).map(|i| observation(i, &voter(i), 1)).collect();
        obs.extend_from_slice(extra);
        let view = view_of(0, &obs, &roster, now);
        e.vote = Vote::For(id(0));
        for j in 1..3 {
            e.heard
                .insert(id(j), (Some(id(0)), 1, Some(now - LEASE / 2)));
        }
        let input = ElectionInput {
            now,
            self_id: &id(0),
            view: &view,
            roster: &roster_of(&roster),
            counted: 3,
            quorum: true,
            self_state: NodeState::Active,
        };
        e.step(&input)
    }

    /// A node outside the counted roster (a forged row, another version's node) publishing
    /// the largest epoch does not move this node's epoch: the next leadership proposes 1.
    #[test]
    fn epoch_is_moved_only_by_counted_members() {
        let forged = Facts {
            vote: None,
            seq: 1,
            live: true,
            active: true,
            epoch: u64::MAX,
            lead: Some(u64::MAX),
        };
        let mut e = Election::new(Instant::now(), LEASE, 0);
        let out = step_unanimous(&mut e, 0, &[observation(7, &forged, 1)]);
        assert_eq!(e.max_epoch(), 1, "{out:?}");
        assert!(out.contains(&ElectionOutput::PersistEpoch(1)), "{out:?}");
    }

    /// An epoch at the top of its range cannot grow: the node refuses to lead rather than
    /// wrap to 0 and reuse an epoch.
    #[test]
    fn epoch_that_cannot_grow_refuses_to_lead() {
        let mut e = Election::new(Instant::now(), LEASE, u64::MAX);
        for _ in 0..3 {
            let out = step_unanimous(&mut e, u64::MAX, &[]);
            assert!(
                !out.iter().any(|o| matches!(
                    o,
                    ElectionOutput::Acquired { .. } | ElectionOutput::PersistEpoch(_)
                )),
                "{out:?}"
            );
        }
        assert_eq!(e.leading(), None);
        assert_eq!(e.max_epoch(), u64::MAX);
    }

    proptest! {
        /// In one snapshot of the cluster (every node sees the same votes, heard at the same
        /// times), for any roster, `--expect`, votes, liveness and states, at most one node
        /// may lead: every vote counts for one candidate and two disjoint halves cannot both
        /// hold the tie-break.
        #[test]
        fn never_two_leaders_claimed_under_one_quorum(
            all in proptest::collection::vec(facts(), 1..=7),
            in_roster in proptest::collection::vec(proptest::bool::weighted(0.85), 7),
            expect in 0usize..=7,
            moved in proptest::collection::vec(any::<bool>(), 7),
        ) {
            let n = all.len();
            let t0 = Instant::now();
            let now = t0 + LEASE;
            let roster: BTreeSet<NodeId> = (0..n).filter(|&i| in_roster[i]).map(id).collect();
            let obs: Vec<Observation> = all
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let mut f = f.clone();
                    f.vote = f.vote.filter(|v| *v < n);
                    observation(i, &f, 1)
                })
                .collect();
            let mut claims = Vec::new();
            for me in 0..n {
                let view = view_of(me, &obs, &roster, now);
                let up: BTreeSet<NodeId> = view
                    .members()
                    .filter(|m| m.status.is_up())
                    .map(|m| m.node_id.clone())
                    .collect();
                let q = quorum::assess(&roster, &up, expect);
                let mut e = Election::new(t0, LEASE, all[me].epoch);
                let my_vote = all[me].vote.filter(|v| *v < n);
                e.vote = my_vote.map_or(Vote::Withdrawn { until: now + LEASE }, |v| Vote::For(id(v)));
                for (j, f) in all.iter().enumerate().filter(|(j, _)| *j != me) {
                    // Heard: seen to move within the lease, the same for every observer.
                    let at = moved[j].then_some(now - LEASE / 2);
                    e.heard.insert(id(j), (f.vote.filter(|v| *v < n).map(id), f.seq, at));
                }
                let input = ElectionInput {
                    now,
                    self_id: &id(me),
                    view: &view,
                    roster: &roster_of(&roster),
                    counted: q.counted,
                    quorum: q.quorum && q.partition == quorum::Partition::Majority,
                    self_state: if all[me].active { NodeState::Active } else { NodeState::Draining },
                };
                if input.quorum && e.self_eligible(&input) && e.has_majority(&input, 0) {
                    claims.push(me);
                }
            }
            prop_assert!(claims.len() <= 1, "{claims:?} would all lead");
        }

        /// Whatever one node sees, step after step (votes for it or not, other epochs going up
        /// and down, claims, quorum coming and going, drains): its epoch never goes back, every
        /// leadership takes an epoch above every earlier one and above every claim it has
        /// seen, and the epoch is persisted before it is used.
        #[test]
        fn epoch_only_grows(
            persisted in 0u64..6,
            steps in proptest::collection::vec(
                (
                    proptest::collection::vec((voter(), proptest::bool::weighted(0.7)), 4),
                    proptest::bool::weighted(0.9),
                    0u64..1500,
                ),
                1..80,
            ),
            persist_ok in proptest::collection::vec(proptest::bool::weighted(0.8), 1..8),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let roster: BTreeSet<NodeId> = (0..5).map(id).collect();
            let mut e = Election::new(t0, LEASE, persisted);
            let mut view = MemberView::default();
            let fp = fp();
            let me = id(0);
            let ctx = ViewContext {
                self_id: &me,
                self_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000)),
                fingerprint: &fp,
                policy: CompatPolicy::Exact,
                suspect_after: Duration::from_secs(60),
            };
            let mut seqs = [0u64; 5];
            let mut persisted_max = persisted;
            let mut max_epoch = persisted;
            let mut last_acquired = None::<u64>;
            let mut max_claim_seen = 0u64;
            let mut published_vote = None::<usize>;
            for (step, (others, active, dt)) in steps.into_iter().enumerate() {
                now += Duration::from_millis(dt);
                let mut obs = vec![observation(0, &Facts {
                    vote: published_vote,
                    seq: seqs[0],
                    live: true,
                    active,
                    epoch: max_epoch,
                    lead: e.leading(),
                }, step as u64)];
                for (j, (f, echo)) in others.iter().enumerate() {
                    let j = j + 1;
                    let mut f = f.clone();
                    if *echo {
                        // It has seen this node's epoch (its proposal included).
                        f.epoch = f.epoch.max(max_epoch);
                    }
                    f.vote = f.vote.map(|v| v % 5);
                    seqs[j] += f.seq;
                    f.seq = seqs[j];
                    max_claim_seen = max_claim_seen.max(f.lead.unwrap_or(0));
                    obs.push(observation(j, &f, step as u64));
                }
                view.update(now, &obs, &roster_of(&roster), &[], &ctx);
                let up: BTreeSet<NodeId> = view
                    .members()
                    .filter(|m| m.status.is_up())
                    .map(|m| m.node_id.clone())
                    .collect();
                let q = quorum::assess(&roster, &up, 0);
                let input = ElectionInput {
                    now,
                    self_id: &me,
                    view: &view,
                    roster: &roster_of(&roster),
                    counted: q.counted,
                    quorum: q.quorum,
                    self_state: if active { NodeState::Active } else { NodeState::Draining },
                };
                if !active {
                    e.force_step_down();
                }
                for output in e.step(&input) {
                    match output {
                        ElectionOutput::PersistEpoch(p) => {
                            prop_assert!(p >= persisted_max, "persisted {p} after {persisted_max}");
                            // The data dir may refuse a write: only a confirmed epoch is durable.
                            if persist_ok[step % persist_ok.len()] {
                                persisted_max = p;
                                e.epoch_persisted(p);
                            }
                        }
                        ElectionOutput::MaxEpoch(m) => {
                            prop_assert!(m >= max_epoch, "published {m} after {max_epoch}");
                            max_epoch = m;
                        }
                        ElectionOutput::Acquired { epoch } => {
                            prop_assert!(epoch <= persisted_max, "{epoch} used before it was persisted");
                            prop_assert!(last_acquired.is_none_or(|l| epoch > l), "{epoch} after {last_acquired:?}");
                            prop_assert!(epoch > max_claim_seen, "{epoch} not above a claim of {max_claim_seen}");
                            last_acquired = Some(epoch);
                        }
                        ElectionOutput::Vote { candidate, seq } => {
                            published_vote = candidate.map(|c| c[1..].parse().unwrap());
                            seqs[0] = seq;
                        }
                        ElectionOutput::Lost { .. } | ElectionOutput::Alert(_) => {}
                    }
                }
                prop_assert!(e.max_epoch() >= max_epoch && e.max_epoch() >= persisted);
            }
        }
    }
}
