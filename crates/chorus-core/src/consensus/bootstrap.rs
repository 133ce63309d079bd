//! When a node with no Raft state starts a cluster, and with whom (Consul's bootstrap-expect).
//!
//! - A node that sees any compatible node already in a cluster never starts one: it waits to be
//!   added. A node with Raft state never gets here.
//! - Otherwise, once it sees `expect` compatible nodes up with no cluster (itself included),
//!   the one with the lowest node id among them starts the cluster with the lowest
//!   `max_voters` of them as voters; the others join when the new leader reaches them.
//! - `expect` is `--expect N`, or, when unset, the number of distinct seeds (this node counted
//!   once): a node that is its own only seed (or has none) starts alone; one given other seeds
//!   waits for them (`partition: forming`).
//!
//! Two clusters can only start side by side if two disjoint groups of `expect` nodes each saw
//! none of the other at start: `expect` must be more than half of the nodes that start
//! together (docs/leader.md).

use super::state::MemberInfo;

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
}

/// The voters to start a cluster with, if this node should start one now.
pub fn voters_to_start(
    me: &Seen,
    others: &[Seen],
    expect: usize,
    max_voters: usize,
) -> Option<Vec<(u64, MemberInfo)>> {
    if others.iter().any(|s| s.compatible && s.cluster_id != 0) {
        return None;
    }
    let mut ready: Vec<&Seen> = std::iter::once(me)
        .chain(
            others
                .iter()
                .filter(|s| s.up && s.compatible && s.raft_id != 0 && s.raft_id != me.raft_id),
        )
        .collect();
    if ready.len() < expect.max(1) {
        return None;
    }
    ready.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
    ready.dedup_by(|a, b| a.info.node_id == b.info.node_id);
    if ready.first()?.raft_id != me.raft_id {
        return None;
    }
    Some(
        ready
            .into_iter()
            .take(max_voters.max(1))
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
        }
    }

    fn ids(v: Option<Vec<(u64, MemberInfo)>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|(id, _)| id).collect())
    }

    #[test]
    fn the_lowest_id_starts_once_expect_nodes_are_seen() {
        let (n1, n2, n3) = (seen(1, 0, true), seen(2, 0, true), seen(3, 0, true));
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

    #[test]
    fn an_existing_cluster_is_joined_never_doubled() {
        let n1 = seen(1, 0, true);
        assert_eq!(
            ids(voters_to_start(
                &n1,
                &[seen(2, 0, true), seen(3, 77, false)],
                2,
                5
            )),
            None,
            "even a dead member of a cluster means the cluster exists"
        );
        let mut rejected = seen(3, 77, true);
        rejected.compatible = false;
        assert_eq!(
            ids(voters_to_start(&n1, &[seen(2, 0, true), rejected], 2, 5)),
            Some(vec![101, 102])
        );
    }

    #[test]
    fn alone_with_expect_one_and_never_counting_down_nodes() {
        let n2 = seen(2, 0, true);
        assert_eq!(ids(voters_to_start(&n2, &[], 1, 5)), Some(vec![102]));
        assert_eq!(
            ids(voters_to_start(&n2, &[seen(1, 0, false)], 1, 5)),
            Some(vec![102])
        );
        assert_eq!(ids(voters_to_start(&n2, &[seen(1, 0, false)], 2, 5)), None);
    }
}
