//! Leader election for scheduled tasks, without a coordinator: a quorum lease over gossip.
//!
//! Every node publishes a vote (`vote` key). A node leads while a majority of the counted
//! roster has *fresh* votes for it: a voter counts only while its heartbeat moved less than
//! `lease` ago in the leader's view. Voters change their vote slowly:
//! - they keep voting for their candidate while it is eligible (the incumbent stays leader, a
//!   joining node never moves leadership);
//! - a candidate that declared itself ineligible (draining, left, `leader=false`, another
//!   version) stopped claiming before it said so: voters move at once;
//! - a candidate that went silent keeps the vote until its heartbeat has been still for
//!   `vote_wait` (= 2 x lease): by then it has stopped counting the vote, so the lease of the
//!   old leader has run out before anyone can gather a majority;
//! - any other change of vote (votes split with no leader) first withdraws the vote and waits
//!   `vote_wait` before voting again;
//! - a node without quorum votes for nobody and never leads.
//!
//! Invariants, pinned by tests here and in `tests/scenarios.rs`:
//! - leaders never overlap by more than the propagation delay margin
//!   (`checker_finds_no_overlapping_leaders`);
//! - a minority never leads (`minority_never_leads`);
//! - epochs only grow: a new leadership takes max(every epoch seen) + 1
//!   (`epochs_strictly_grow`);
//! - a joining node keeps the incumbent (`joining_node_keeps_incumbent`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::alert::Alert;
use crate::member::{Member, NodeId, NodeState};
use crate::view::MemberView;

/// The tag that keeps a node from ever leading: `--tag leader=false`.
pub const LEADER_TAG: &str = "leader";

#[derive(Debug, Clone, PartialEq)]
pub enum ElectionOutput {
    /// Publish this node's vote (`None`: no vote).
    Vote(Option<NodeId>),
    /// Persist the epoch before anything else: a restart must never reuse it.
    PersistEpoch(u64),
    /// This node now leads with this epoch (publish `lead`, start tasks).
    Acquired { epoch: u64 },
    /// This node no longer leads (clear `lead`, stop tasks).
    Lost { epoch: u64 },
    /// Publish the largest epoch seen.
    MaxEpoch(u64),
    Alert(Alert),
}

#[derive(Debug, Clone, PartialEq)]
enum Vote {
    /// Not voting; may vote again at `until`.
    Withdrawn { until: Instant },
    For(NodeId),
}

#[derive(Debug)]
pub struct Election {
    lease: Duration,
    vote: Vote,
    leading: Option<u64>,
    max_epoch: u64,
    observed: Option<(NodeId, u64)>,
    dual_since: Option<Instant>,
    dual_reported: bool,
}

/// What the election reads from the rest of the node on every tick.
pub struct ElectionInput<'a> {
    pub now: Instant,
    pub self_id: &'a str,
    pub view: &'a MemberView,
    pub roster: &'a BTreeSet<NodeId>,
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
            leading: None,
            max_epoch: persisted_epoch,
            observed: None,
            dual_since: None,
            dual_reported: false,
        }
    }

    pub fn vote_wait(&self) -> Duration {
        self.lease * 2
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

    /// The leader this node sees and its epoch.
    pub fn observed_leader(&self) -> Option<(&str, u64)> {
        self.observed.as_ref().map(|(n, e)| (n.as_str(), *e))
    }

    pub fn step(&mut self, input: &ElectionInput<'_>) -> Vec<ElectionOutput> {
        let mut out = Vec::new();
        let seen_max = input
            .view
            .members()
            .filter_map(|m| input.view.seen(&m.node_id))
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
        if self.vote != old_vote {
            let published = |v: &Vote| match v {
                Vote::For(n) => Some(n.clone()),
                Vote::Withdrawn { .. } => None,
            };
            if published(&self.vote) != published(&old_vote) {
                out.push(ElectionOutput::Vote(published(&self.vote)));
            }
        }

        let should_lead = input.quorum
            && self_eligible(input)
            && self.fresh_votes_for_me(input) * 2 > input.counted;
        match (self.leading, should_lead) {
            (None, true) => {
                self.max_epoch += 1;
                self.leading = Some(self.max_epoch);
                out.push(ElectionOutput::PersistEpoch(self.max_epoch));
                out.push(ElectionOutput::MaxEpoch(self.max_epoch));
                out.push(ElectionOutput::Acquired {
                    epoch: self.max_epoch,
                });
            }
            (Some(epoch), false) => {
                self.leading = None;
                out.push(ElectionOutput::Lost { epoch });
            }
            _ => {}
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
        let incumbent = incumbent(input);
        let best = incumbent.clone().or_else(|| oldest_eligible(input));
        match &self.vote {
            Vote::Withdrawn { until } => {
                if now >= *until {
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
                } else if !is_up(input, &current) {
                    let silent_for = input
                        .view
                        .seen(&current)
                        .map_or(Duration::MAX, |s| now.saturating_duration_since(s.last_advance));
                    if silent_for >= self.vote_wait() {
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
                } else if best.as_ref().is_some_and(|b| *b != current) {
                    // Votes are split and nobody leads: withdraw, let the lease run out, revote.
                    self.vote = Vote::Withdrawn {
                        until: now + self.vote_wait(),
                    };
                }
            }
        }
    }

    fn fresh_votes_for_me(&self, input: &ElectionInput<'_>) -> usize {
        input
            .roster
            .iter()
            .filter(|id| {
                if id.as_str() == input.self_id {
                    return self.vote == Vote::For(input.self_id.to_string());
                }
                is_up(input, id)
                    && input.view.seen(id).is_some_and(|s| {
                        s.vote.as_deref() == Some(input.self_id)
                            && input.now.saturating_duration_since(s.last_advance) < self.lease
                    })
            })
            .count()
    }

    fn observe_leader(&mut self, input: &ElectionInput<'_>, out: &mut Vec<ElectionOutput>) {
        let mut claims: Vec<(NodeId, u64)> = input
            .view
            .members()
            .filter(|m| !m.is_self && m.status.is_up() && input.quorum)
            .filter_map(|m| {
                let lead = input.view.seen(&m.node_id)?.lead?;
                Some((m.node_id.clone(), lead))
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
        let epoch_changed = self.observed.as_ref().map(|(_, e)| *e) != current.as_ref().map(|(_, e)| *e);
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

/// Eligible by what the candidate itself published: in the roster, active, not tagged
/// `leader=false`, compatible and not left. Says nothing about reachability.
fn declared_eligible(input: &ElectionInput<'_>, member: Option<&Member>) -> bool {
    let Some(m) = member else { return false };
    if !input.roster.contains(&m.node_id) {
        return false;
    }
    let state = if m.is_self { input.self_state } else { m.state };
    state == NodeState::Active
        && m.tags.get(LEADER_TAG).map(String::as_str) != Some("false")
        && !matches!(
            m.status,
            crate::member::Status::Rejected | crate::member::Status::Left
        )
}

fn eligible(input: &ElectionInput<'_>, m: &Member) -> bool {
    declared_eligible(input, Some(m)) && is_up(input, &m.node_id)
}

fn self_eligible(input: &ElectionInput<'_>) -> bool {
    input
        .view
        .get(input.self_id)
        .is_some_and(|m| eligible(input, m))
}

/// An eligible node (other than this one) that claims leadership, highest epoch first; or
/// this node if it leads.
fn incumbent(input: &ElectionInput<'_>) -> Option<NodeId> {
    input
        .view
        .members()
        .filter(|m| eligible(input, m))
        .filter_map(|m| Some((input.view.seen(&m.node_id)?.lead?, m.node_id.clone())))
        .max()
        .map(|(_, id)| id)
}

/// The oldest eligible node: earliest start time, then lowest id.
fn oldest_eligible(input: &ElectionInput<'_>) -> Option<NodeId> {
    input
        .view
        .members()
        .filter(|m| eligible(input, m))
        .min_by_key(|m| (m.start_ms.unwrap_or(u64::MAX), m.node_id.clone()))
        .map(|m| m.node_id.clone())
}
