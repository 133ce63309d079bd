//! Placement: which node should take the next new session (`chorus pick`).
//!
//! A node qualifies when it is `alive` (not suspect: a node that may be failing should not get
//! new users), `active` (not draining), compatible, and matches the requested tags
//! (`--tag k=v`) while carrying none of the excluded ones (`--exclude-tag read_only=true`).
//!
//! Score (lower is better): `sessions + CPU_WEIGHT * cpu + MEM_WEIGHT * mem`, where cpu is the
//! 1-minute load average per core and mem the used fraction. A fully busy cpu weighs as much as
//! ten sessions, a full memory as much as ten more.
//!
//! Spreading: agents answer from their own view, so many callers at once would all get the
//! same least-loaded node until its load is gossiped. The pick is therefore a weighted random
//! draw among the near-best (score within `NEAR_BEST` of the best), weight `1 / (1 + gap)`,
//! with a seed per call: equal nodes share new sessions evenly.

use rand::Rng;

use crate::member::{Member, NodeState, Status};

pub const CPU_WEIGHT: f64 = 10.0;
pub const MEM_WEIGHT: f64 = 10.0;
/// Nodes scoring within this much of the best are candidates for the draw.
pub const NEAR_BEST: f64 = 2.0;

/// What the caller asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PickFilter {
    /// Every one of these tags must be carried with this value.
    pub tags: Vec<(String, String)>,
    /// None of these may be carried with this value.
    pub exclude_tags: Vec<(String, String)>,
}

impl PickFilter {
    pub fn accepts(&self, m: &Member) -> bool {
        m.status == Status::Alive
            && m.state == NodeState::Active
            && self.tags.iter().all(|(k, v)| m.tags.get(k) == Some(v))
            && !self
                .exclude_tags
                .iter()
                .any(|(k, v)| m.tags.get(k) == Some(v))
    }
}

pub fn score(m: &Member) -> f64 {
    m.load.sessions as f64 + CPU_WEIGHT * m.load.cpu + MEM_WEIGHT * m.load.mem
}

/// Picks a node for a new session; `None` when no node qualifies.
pub fn pick<'a, R: Rng + ?Sized>(
    members: impl IntoIterator<Item = &'a Member>,
    filter: &PickFilter,
    rng: &mut R,
) -> Option<&'a Member> {
    let candidates: Vec<(&Member, f64)> = members
        .into_iter()
        .filter(|m| filter.accepts(m))
        .map(|m| (m, score(m)))
        .collect();
    let best = candidates
        .iter()
        .map(|(_, s)| *s)
        .fold(f64::INFINITY, f64::min);
    let near: Vec<(&Member, f64)> = candidates
        .into_iter()
        .filter(|(_, s)| *s <= best + NEAR_BEST)
        .map(|(m, s)| (m, 1.0 / (1.0 + (s - best))))
        .collect();
    let total: f64 = near.iter().map(|(_, w)| w).sum();
    if near.is_empty() {
        return None;
    }
    let mut x = rng.gen_range(0.0..total);
    for (m, w) in &near {
        if x < *w {
            return Some(m);
        }
        x -= w;
    }
    near.last().map(|(m, _)| *m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::Load;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::{BTreeMap, HashMap};

    fn member(id: &str, sessions: u64, cpu: f64) -> Member {
        Member {
            node_id: id.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            generation: 1,
            status: Status::Alive,
            state: NodeState::Active,
            app_version: Some("1".into()),
            fingerprint: Some("f".into()),
            load: Load {
                cpu,
                mem: 0.2,
                sessions,
            },
            tags: BTreeMap::new(),
            start_ms: Some(1),
            reason: None,
            leader: false,
            is_self: false,
        }
    }

    #[test]
    fn least_loaded_wins_when_far_ahead() {
        let ms = vec![
            member("a", 50, 0.5),
            member("b", 3, 0.1),
            member("c", 40, 0.9),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(
                pick(&ms, &PickFilter::default(), &mut rng).unwrap().node_id,
                "b"
            );
        }
    }

    #[test]
    fn draining_suspect_dead_and_rejected_are_never_picked() {
        let mut ms = vec![
            member("a", 0, 0.0),
            member("b", 0, 0.0),
            member("c", 0, 0.0),
            member("d", 0, 0.0),
        ];
        ms[0].state = NodeState::Draining;
        ms[1].status = Status::Suspect;
        ms[2].status = Status::Rejected;
        ms[3].status = Status::Dead;
        assert!(pick(&ms, &PickFilter::default(), &mut StdRng::seed_from_u64(1)).is_none());
    }

    #[test]
    fn tags_and_excluded_tags_filter() {
        let mut ms = vec![member("ro", 0, 0.0), member("rw", 100, 1.0)];
        ms[0].tags.insert("read_only".into(), "true".into());
        let writable = PickFilter {
            exclude_tags: vec![("read_only".into(), "true".into())],
            ..PickFilter::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            assert_eq!(pick(&ms, &writable, &mut rng).unwrap().node_id, "rw");
        }
        let ro = PickFilter {
            tags: vec![("read_only".into(), "true".into())],
            ..PickFilter::default()
        };
        assert_eq!(pick(&ms, &ro, &mut rng).unwrap().node_id, "ro");
    }

    #[test]
    fn concurrent_picks_from_three_views_spread_over_every_node() {
        // Three agents with the same (equal-load) view each answer picks.
        let views: Vec<Vec<Member>> = (0..3)
            .map(|_| {
                vec![
                    member("a", 5, 0.2),
                    member("b", 5, 0.2),
                    member("c", 5, 0.2),
                ]
            })
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut seeds = StdRng::seed_from_u64(42);
        for i in 0..1000 {
            let mut rng = StdRng::seed_from_u64(seeds.gen());
            let m = pick(&views[i % 3], &PickFilter::default(), &mut rng).unwrap();
            *counts.entry(m.node_id.clone()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|&c| c <= 500), "{counts:?}");
    }
}
