//! Which voter to add or remove next, decided by the leader alone and carried out through a
//! committed Raft membership change (one at a time), as Consul's autopilot does.
//!
//! Rules, in order:
//! 1. Fewer voters than the target: add the best stable candidate (a compatible, active node
//!    up for at least `stabilize`, not a voter). The target is the largest odd number up to
//!    `max_voters` and up to the voters plus the stable candidates: an even voter set tolerates
//!    no more failures than the odd one below it, and a 2|2 split of four voters has no
//!    majority on either side.
//! 2. A voter down (dead, or gone and not back) for `replace_after`: add a stable candidate
//!    first, if there is one (the group is briefly one voter larger); rule 3 then removes it.
//! 3. More voters than `max_voters`: remove the voter down longest (never this node).
//! 4. A voter down for `replace_after` with no candidate to replace it: remove it when more
//!    than 3 voters remain after and the voters up still form a majority of the smaller group
//!    (it only shrinks what a majority needs).
//!
//! A graceful restart is not a removal: a voter is replaced only after `replace_after` down,
//! far longer than a restart takes. Refused versions never become candidates.

use std::time::{Duration, Instant};

use super::state::MemberInfo;

/// A node that could become a voter.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub raft_id: u64,
    pub info: MemberInfo,
    /// Up (compatible and active) without a break since.
    pub up_since: Instant,
    /// It may lead (not tagged `leader=false`, not read-only where a task needs writes).
    pub may_lead: bool,
}

/// A voter and, when it is down, since when.
#[derive(Clone, Debug, PartialEq)]
pub struct Voter {
    pub raft_id: u64,
    pub down_since: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Add(u64, MemberInfo),
    Remove(u64),
}

pub struct Limits {
    pub max_voters: usize,
    pub stabilize: Duration,
    pub replace_after: Duration,
}

pub fn next_change(
    now: Instant,
    self_id: u64,
    voters: &[Voter],
    candidates: &[Candidate],
    limits: &Limits,
) -> Option<Change> {
    let stable = |c: &&Candidate| {
        now.saturating_duration_since(c.up_since) >= limits.stabilize
            && !voters.iter().any(|v| v.raft_id == c.raft_id)
    };
    // Prefer a node that may lead, then the one up longest, then the lowest node id.
    let best = candidates.iter().filter(stable).min_by(|a, b| {
        b.may_lead
            .cmp(&a.may_lead)
            .then(a.up_since.cmp(&b.up_since))
            .then(a.info.node_id.cmp(&b.info.node_id))
    });
    let long_down = |v: &&Voter| {
        v.raft_id != self_id
            && v.down_since
                .is_some_and(|d| now.saturating_duration_since(d) >= limits.replace_after)
    };
    let longest_down = voters
        .iter()
        .filter(long_down)
        .min_by_key(|v| (v.down_since, v.raft_id));

    let stable_count = candidates.iter().filter(stable).count();
    let target = odd_floor(limits.max_voters.min(voters.len() + stable_count));
    if voters.len() < target {
        if let Some(c) = best {
            return Some(Change::Add(c.raft_id, c.info.clone()));
        }
    }
    if longest_down.is_some() && voters.len() <= limits.max_voters {
        if let Some(c) = best {
            return Some(Change::Add(c.raft_id, c.info.clone()));
        }
    }
    if voters.len() > limits.max_voters {
        let down = voters
            .iter()
            .filter(|v| v.raft_id != self_id && v.down_since.is_some())
            .min_by_key(|v| (v.down_since, v.raft_id));
        return down.map(|v| Change::Remove(v.raft_id));
    }
    let up = voters.iter().filter(|v| v.down_since.is_none()).count();
    let after = voters.len().saturating_sub(1);
    match longest_down {
        Some(v) if after > 3 && up > after / 2 => Some(Change::Remove(v.raft_id)),
        _ => None,
    }
}

/// The largest odd number at most `n` (at least 1).
pub fn odd_floor(n: usize) -> usize {
    if n <= 1 {
        1
    } else if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const STABILIZE: Duration = Duration::from_secs(10);
    const REPLACE: Duration = Duration::from_secs(600);

    fn limits(max_voters: usize) -> Limits {
        Limits {
            max_voters,
            stabilize: STABILIZE,
            replace_after: REPLACE,
        }
    }

    fn cand(id: u64, up_since: Instant, may_lead: bool) -> Candidate {
        Candidate {
            raft_id: id,
            info: MemberInfo {
                node_id: format!("n{id}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            },
            up_since,
            may_lead,
        }
    }

    fn up(id: u64) -> Voter {
        Voter {
            raft_id: id,
            down_since: None,
        }
    }

    fn down(id: u64, since: Instant) -> Voter {
        Voter {
            raft_id: id,
            down_since: Some(since),
        }
    }

    #[test]
    fn grows_to_max_voters_with_stable_candidates_that_may_lead_first() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(60);
        let cands = [
            cand(4, t0, false),
            cand(5, t0 + Duration::from_secs(5), true),
            cand(6, now, true),
        ];
        let voters = [up(1), up(2), up(3)];
        assert_eq!(
            next_change(now, 1, &voters, &cands, &limits(5)).map(|c| match c {
                Change::Add(id, _) => id,
                Change::Remove(id) => 1000 + id,
            }),
            Some(5),
            "n5 may lead; n6 is not stable yet"
        );
        let voters = [up(1), up(2), up(3), up(4), up(5)];
        assert_eq!(next_change(now, 1, &voters, &cands, &limits(5)), None);
    }

    #[test]
    fn a_voter_down_long_is_replaced_add_first_then_removed() {
        let t0 = Instant::now();
        let now = t0 + REPLACE + Duration::from_secs(1);
        let cands = [cand(4, t0, true)];
        let voters = [up(1), up(2), down(3, t0)];
        assert!(matches!(
            next_change(now, 1, &voters, &cands, &limits(3)),
            Some(Change::Add(4, _))
        ));
        let voters = [up(1), up(2), down(3, t0), up(4)];
        assert_eq!(
            next_change(now, 1, &voters, &cands, &limits(3)),
            Some(Change::Remove(3))
        );
    }

    #[test]
    fn a_restart_is_not_a_removal() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(30);
        let voters = [up(1), up(2), down(3, t0)];
        assert_eq!(
            next_change(now, 1, &voters, &[cand(4, t0, true)], &limits(3)),
            None
        );
    }

    #[test]
    fn without_a_replacement_a_small_group_keeps_its_dead_voter() {
        let t0 = Instant::now();
        let now = t0 + REPLACE * 2;
        let three = [up(1), up(2), down(3, t0)];
        assert_eq!(next_change(now, 1, &three, &[], &limits(3)), None);
        let five = [
            up(1),
            up(2),
            up(3),
            down(4, t0),
            down(5, t0 + Duration::from_secs(1)),
        ];
        assert_eq!(
            next_change(now, 1, &five, &[], &limits(5)),
            Some(Change::Remove(4))
        );
        // Never itself, even when the others think it is down.
        let me_down = [down(1, t0), up(2), up(3), up(4), up(5)];
        assert_eq!(next_change(now, 1, &me_down, &[], &limits(5)), None);
    }
}
