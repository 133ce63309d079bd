//! Who may lead: the eligibility rules gossip carries. Who *does* lead is Raft's answer
//! ([`crate::consensus`]): the Raft leader while it holds its lease, with the Raft term as its
//! fencing epoch.

use std::collections::BTreeMap;

use crate::member::{Member, NodeState};

/// The tag that keeps a node from ever leading: `--tag leader=false`.
pub const LEADER_TAG: &str = "leader";
/// The tag of a read-only node (`read_only=true`): it never leads where a task needs writes.
pub const READ_ONLY_TAG: &str = "read_only";

/// Whether a node must publish `leader=false`: it was told so, or it is read-only while some
/// scheduled task needs a writable leader (so leadership always lands where that task can run).
pub fn must_not_lead(tags: &BTreeMap<String, String>, has_writable_task: bool) -> bool {
    tags.get(LEADER_TAG).map(String::as_str) == Some("false")
        || (has_writable_task && tags.get(READ_ONLY_TAG).map(String::as_str) == Some("true"))
}

/// Whether a member, as gossip shows it, may be handed leadership: up, active, compatible,
/// and not tagged `leader=false`.
pub fn may_lead(m: &Member) -> bool {
    m.status.is_up()
        && m.state == NodeState::Active
        && m.tags.get(LEADER_TAG).map(String::as_str) != Some("false")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn leader_false_and_read_only_with_a_writable_task_never_lead() {
        assert!(must_not_lead(&tags(&[("leader", "false")]), false));
        assert!(must_not_lead(&tags(&[("read_only", "true")]), true));
        assert!(!must_not_lead(&tags(&[("read_only", "true")]), false));
        assert!(!must_not_lead(&tags(&[("zone", "a")]), true));
    }
}
