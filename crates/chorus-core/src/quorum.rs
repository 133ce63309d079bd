//! Quorum: is this node on the side of the cluster that may act?
//!
//! Invariants (each pinned by a test below):
//! - quorum = more than half of the counted roster is up in this node's view, where the counted
//!   size is `max(roster, expect)` (`--expect` is a floor for a forming cluster);
//! - an exact half keeps quorum only on the side that holds the lowest node id of the roster
//!   (Akka's keep-majority tie-break), and only when the roster is the whole count;
//! - so two disjoint sets of nodes never both hold quorum over the same roster
//!   (`disjoint_sides_never_both_have_quorum`);
//! - nodes outside the roster (rejected, unknown) never count.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// Which side of a split this node is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    Majority,
    Minority,
    /// Fewer members than `--expect` have been seen yet.
    Forming,
}

impl Partition {
    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Majority => "majority",
            Partition::Minority => "minority",
            Partition::Forming => "forming",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumAssessment {
    pub quorum: bool,
    pub partition: Partition,
    /// Roster members up in this view.
    pub up: usize,
    /// The size quorum is counted against.
    pub counted: usize,
}

/// Decides quorum for the set `up` of nodes this node sees up (itself included).
pub fn assess(roster: &BTreeSet<NodeId>, up: &BTreeSet<NodeId>, expect: usize) -> QuorumAssessment {
    let lowest_up = roster
        .iter()
        .next()
        .is_some_and(|lowest| up.contains(lowest));
    decide(
        roster.len(),
        roster.intersection(up).count(),
        lowest_up,
        expect,
    )
}

/// [`assess`] from counts: `up_count` roster members are up, and `lowest_up` says whether the
/// lowest id of the roster is one of them.
pub fn decide(
    roster_len: usize,
    up_count: usize,
    lowest_up: bool,
    expect: usize,
) -> QuorumAssessment {
    let counted = roster_len.max(expect).max(1);
    let quorum = if up_count * 2 > counted {
        true
    } else if up_count * 2 == counted && roster_len >= counted {
        lowest_up
    } else {
        false
    };
    let partition = if roster_len < expect {
        Partition::Forming
    } else if quorum {
        Partition::Majority
    } else {
        Partition::Minority
    };
    QuorumAssessment {
        quorum,
        partition,
        up: up_count,
        counted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[&str]) -> BTreeSet<NodeId> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn three_of_five_is_majority_two_is_minority() {
        let roster = set(&["a", "b", "c", "d", "e"]);
        assert!(assess(&roster, &set(&["c", "d", "e"]), 0).quorum);
        let minority = assess(&roster, &set(&["a", "b"]), 0);
        assert!(!minority.quorum);
        assert_eq!(minority.partition, Partition::Minority);
    }

    #[test]
    fn exact_half_goes_to_the_side_with_the_lowest_id() {
        let roster = set(&["a", "b", "c", "d"]);
        assert!(assess(&roster, &set(&["a", "d"]), 0).quorum);
        assert!(!assess(&roster, &set(&["b", "c"]), 0).quorum);
    }

    #[test]
    fn expect_is_a_floor_and_reports_forming() {
        let roster = set(&["a", "b"]);
        let a = assess(&roster, &set(&["a", "b"]), 5);
        assert!(!a.quorum);
        assert_eq!(a.partition, Partition::Forming);
        assert_eq!(a.counted, 5);
    }

    #[test]
    fn nodes_outside_the_roster_never_count() {
        let roster = set(&["a", "b", "c"]);
        assert!(!assess(&roster, &set(&["a", "x", "y", "z"]), 0).quorum);
    }

    proptest! {
        #[test]
        fn disjoint_sides_never_both_have_quorum(
            n in 1usize..=9,
            expect in 0usize..=9,
            membership in proptest::collection::vec(0u8..3, 9),
        ) {
            let roster: BTreeSet<NodeId> = (0..n).map(|i| format!("n{i}")).collect();
            let mut side_a = BTreeSet::new();
            let mut side_b = BTreeSet::new();
            for (i, id) in roster.iter().enumerate() {
                match membership[i] {
                    0 => { side_a.insert(id.clone()); }
                    1 => { side_b.insert(id.clone()); }
                    _ => {}
                }
            }
            let a = assess(&roster, &side_a, expect);
            let b = assess(&roster, &side_b, expect);
            prop_assert!(!(a.quorum && b.quorum), "{side_a:?} and {side_b:?} both have quorum");
        }
    }
}
