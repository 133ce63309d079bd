//! When a node with no Raft state starts a cluster, and with whom (Consul's bootstrap-expect).
//!
//! - A node that sees any compatible node already in a cluster never starts one: it waits to be
//!   added. A node with Raft state never gets here.
//! - Otherwise, once it sees `expect` compatible nodes up with no cluster (itself included), it
//!   votes, once and for good (the vote is persisted), for the one with the lowest node id
//!   among them, and publishes the vote in gossip.
//! - A node starts the cluster when it has voted for itself and sees `expect` nodes (itself
//!   included) up, with no cluster, voting for it; the lowest `max_voters` of them are the
//!   voters, and the others join when the new leader reaches them. Each node votes once, so
//!   two nodes can only both gather `expect` votes if there are `2 × expect` voters: different
//!   views at the start (one node not yet seen by another) cannot start two clusters.
//! - `expect` is `--expect N`, or, when unset, the number of distinct seeds (this node counted
//!   once): a node that is its own only seed (or has none) starts alone; one given other seeds
//!   waits for them (`partition: forming`).
//!
//! Two clusters can only start side by side if two disjoint groups of `expect` nodes each saw
//! none of the other at start: `expect` must be more than half of the nodes that start
//! together (docs/leader.md).

use super::state::MemberInfo;

/// `expect` when `--expect` is not given: the distinct seeds that are not this node (any of
/// the addresses in `own`), plus this node. A node that is its own only seed, or has none,
/// starts alone.
pub fn expect_from_seeds(seeds: &[String], own: &[String]) -> usize {
    let mut others: Vec<&str> = seeds
        .iter()
        .map(String::as_str)
        .filter(|s| !own.iter().any(|o| o == s))
        .collect();
    others.sort_unstable();
    others.dedup();
    others.len() + 1
}

/// A node as gossip shows it, for bootstrapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub raft_id: u64,
    pub info: MemberInfo,
    /// The cluster it belongs to (0: none yet).
    pub cluster_id: u64,
    /// Up and compatible.
    pub up: bool,
    /// Compatible (not rejected); a rejected node's cluster does not stop a bootstrap.
    pub compatible: bool,
    /// The Raft id it votes for to start the cluster (0: none yet).
    pub vote: u64,
}

/// The node this node votes for to start the cluster, if it should vote now: the lowest node
/// id among `expect` compatible nodes up with no cluster, when no cluster exists in view.
pub fn choose_vote(me: &Seen, others: &[Seen], expect: usize) -> Option<u64> {
    if others.iter().any(|s| s.compatible && s.cluster_id != 0) {
        return None;
    }
    let ready = ready(me, others, |_| true);
    if ready.len() < expect.max(1) {
        return None;
    }
    ready.first().map(|s| s.raft_id)
}

/// `me` and the nodes up, compatible and with no cluster that pass `keep`, by node id.
fn ready<'a>(me: &'a Seen, others: &'a [Seen], keep: impl Fn(&Seen) -> bool) -> Vec<&'a Seen> {
    let mut ready: Vec<&Seen> = std::iter::once(me)
        .chain(others.iter().filter(|s| {
            s.up && s.compatible
                && s.cluster_id == 0
                && s.raft_id != 0
                && s.raft_id != me.raft_id
                && keep(s)
        }))
        .collect();
    ready.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
    ready.dedup_by(|a, b| a.info.node_id == b.info.node_id);
    ready
}

/// The voters to start a cluster with, if this node should start one now.
pub fn voters_to_start(
    me: &Seen,
    others: &[Seen],
    expect: usize,
    max_voters: usize,
) -> Option<Vec<(u64, MemberInfo)>> {
    if others.iter().any(|s| s.compatible && s.cluster_id != 0) || me.vote != me.raft_id {
        return None;
    }
    let ready = ready(me, others, |s| s.vote == me.raft_id);
    if ready.len() < expect.max(1) || ready.first()?.raft_id != me.raft_id {
        return None;
    }
    let voters = super::autopilot::odd_floor(max_voters.max(1).min(ready.len()));
    Some(
        ready
            .into_iter()
            .take(voters)
            .map(|s| (s.raft_id, s.info.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn seen(i: u64, cluster_id: u64, up: bool) -> Seen {
        Seen {
            raft_id: 100 + i,
            info: MemberInfo {
                node_id: format!("n{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
            },
            cluster_id,
            up,
            compatible: true,
            vote: 0,
        }
    }

    /// `s` voting for `n{v}`.
    fn voting(mut s: Seen, v: u64) -> Seen {
        s.vote = 100 + v;
        s
    }

    fn ids(v: Option<Vec<(u64, MemberInfo)>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|(id, _)| id).collect())
    }

    #[test]
    fn the_lowest_id_starts_once_expect_nodes_vote_for_it() {
        let (n1, n2, n3) = (seen(1, 0, true), seen(2, 0, true), seen(3, 0, true));
        assert_eq!(choose_vote(&n1, std::slice::from_ref(&n2), 3), None);
        assert_eq!(choose_vote(&n2, &[n1.clone(), n3.clone()], 3), Some(101));
        let (n1, n2, n3) = (voting(n1, 1), voting(n2, 1), voting(n3, 1));
        assert_eq!(
            ids(voters_to_start(&n1, std::slice::from_ref(&n2), 3, 5)),
            None
        );
        assert_eq!(
            ids(voters_to_start(&n1, &[n2.clone(), n3.clone()], 3, 5)),
            Some(vec![101, 102, 103])
        );
        assert_eq!(
            ids(voters_to_start(&n2, &[n1.clone(), n3.clone()], 3, 5)),
            None
        );
        assert_eq!(
            ids(voters_to_start(&n1, &[n2, n3], 3, 1)),
            Some(vec![101]),
            "at most max_voters"
        );
    }

    /// n3 does not see n1 yet and would be the lowest of what it sees; n1 sees everyone.
    /// Votes are cast once: only one of them gathers `expect` (a majority of 5) votes.
    #[test]
    fn different_views_never_start_two_clusters() {
        let all: Vec<Seen> = (1..=5).map(|i| seen(i, 0, true)).collect();
        let n3_view: Vec<Seen> = vec![all[3].clone(), all[4].clone(), all[1].clone()];
        assert_eq!(choose_vote(&all[2], &n3_view, 3), Some(102), "n3 votes n2");
        // n2, n4, n5 vote n1; n3 votes n2.
        let votes = [1, 1, 2, 1, 1];
        let voted: Vec<Seen> = all
            .iter()
            .zip(votes)
            .map(|(s, v)| voting(s.clone(), v))
            .collect();
        let others = |i: usize| -> Vec<Seen> {
            voted
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.clone())
                .collect()
        };
        let n2_as_self = voting(all[1].clone(), 2);
        assert_eq!(ids(voters_to_start(&n2_as_self, &others(1), 3, 5)), None);
        assert_eq!(
            ids(voters_to_start(&voted[0], &others(0), 3, 5)),
            Some(vec![101, 102, 104]),
            "an odd number of voters: the fourth follows as a learner"
        );
    }

    #[test]
    fn an_existing_cluster_is_joined_never_doubled() {
        let n1 = voting(seen(1, 0, true), 1);
        assert_eq!(
            ids(voters_to_start(
                &n1,
                &[voting(seen(2, 0, true), 1), seen(3, 77, false)],
                2,
                5
            )),
            None,
            "even a dead member of a cluster means the cluster exists"
        );
        let mut rejected = seen(3, 77, true);
        rejected.compatible = false;
        assert_eq!(
            ids(voters_to_start(
                &n1,
                &[voting(seen(2, 0, true), 1), rejected],
                2,
                5
            )),
            Some(vec![101]),
            "two nodes: one voter (two would tolerate no failure either)"
        );
    }

    #[test]
    fn expect_from_seeds_counts_the_others_once_and_this_node() {
        let own = ["10.0.0.1:7946".to_string(), "0.0.0.0:7946".to_string()];
        let seeds = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(expect_from_seeds(&[], &own), 1);
        assert_eq!(expect_from_seeds(&seeds(&["10.0.0.1:7946"]), &own), 1);
        assert_eq!(
            expect_from_seeds(
                &seeds(&[
                    "10.0.0.1:7946",
                    "10.0.0.2:7946",
                    "10.0.0.2:7946",
                    "10.0.0.3:7946"
                ]),
                &own
            ),
            3
        );
    }

    #[test]
    fn alone_with_expect_one_and_never_counting_down_nodes() {
        let n2 = seen(2, 0, true);
        let n2 = voting(n2, 2);
        assert_eq!(ids(voters_to_start(&n2, &[], 1, 5)), Some(vec![102]));
        assert_eq!(
            ids(voters_to_start(&n2, &[seen(1, 0, false)], 1, 5)),
            Some(vec![102])
        );
        assert_eq!(ids(voters_to_start(&n2, &[seen(1, 0, false)], 2, 5)), None);
    }
}
