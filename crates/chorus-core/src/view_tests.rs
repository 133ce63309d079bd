//! The view updated in place must show exactly what a view rebuilt from scratch on every
//! update shows: [`Reference`] is that simple view (how the view worked before rows were
//! kept), and the property below runs both on random updates.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::member::{keys, Load, RaftKey};
use crate::roster::RosterEntry;

#[derive(Default)]
struct Reference {
    heartbeats: HashMap<NodeId, HeartbeatSeen>,
    members: BTreeMap<NodeId, Member>,
    seen: BTreeMap<NodeId, Seen>,
}

impl Reference {
    fn update(
        &mut self,
        now: Instant,
        observations: &[Observation],
        roster: &Roster,
        ctx: &ViewContext<'_>,
    ) {
        // Believed: the newest complete incarnation that no older live one at another address
        // shadows (for this node: only those at its own address), else the newest.
        let complete: Vec<&Observation> = observations
            .iter()
            .filter(|o| o.published.fingerprint.is_some())
            .collect();
        let shadowed = |o: &Observation| {
            if o.node_id == ctx.self_id {
                return o.addr != ctx.self_addr;
            }
            complete.iter().any(|older| {
                older.node_id == o.node_id
                    && older.generation < o.generation
                    && older.addr != o.addr
                    && older.live
                    && older.published.state != NodeState::Left
            })
        };
        let mut newest: BTreeMap<&str, &Observation> = BTreeMap::new();
        let mut fallback: BTreeMap<&str, &Observation> = BTreeMap::new();
        for obs in complete.iter().copied() {
            let slot = fallback.entry(obs.node_id.as_str()).or_insert(obs);
            if obs.generation > slot.generation {
                *slot = obs;
            }
            if shadowed(obs) {
                continue;
            }
            let slot = newest.entry(obs.node_id.as_str()).or_insert(obs);
            if obs.generation > slot.generation {
                *slot = obs;
            }
        }
        for (id, obs) in fallback {
            newest.entry(id).or_insert(obs);
        }
        let mut members = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for (id, obs) in newest {
            let is_self = id == ctx.self_id;
            let mut heartbeat = self.heartbeats.get(id).copied();
            let (status, reason) = judge(now, obs, is_self, ctx, &mut heartbeat);
            if let Some(h) = heartbeat {
                self.heartbeats.insert(id.to_string(), h);
            }
            let last_advance = if is_self {
                now
            } else {
                self.heartbeats.get(id).map_or(now, |h| h.changed_at)
            };
            seen.insert(
                id.to_string(),
                Seen {
                    last_advance,
                    raft: obs.published.raft,
                },
            );
            let fp = obs.published.fingerprint.as_ref();
            members.insert(
                id.to_string(),
                Member {
                    node_id: id.to_string(),
                    addr: obs.addr,
                    generation: obs.generation,
                    status,
                    state: obs.published.state,
                    app_version: fp.map(|f| f.app_version.clone()),
                    fingerprint: fp.map(|f| f.digest.clone()),
                    load: obs.published.load.unwrap_or_default(),
                    tags: obs.published.tags.clone(),
                    start_ms: obs.published.start_ms,
                    reason,
                    leader: self.members.get(id).is_some_and(|m| m.leader),
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

    /// A refusal shows the node rejected unless it is up or rejected already.
    fn add_refused(&mut self, r: &Refused<'_>) {
        if self
            .members
            .get(r.node_id)
            .is_some_and(|m| m.status.is_up() || m.status == Status::Rejected)
        {
            return;
        }
        let row = Member::unseen(r.node_id, r.addr, Status::Rejected, Some(&r.reason));
        self.members.insert(r.node_id.to_string(), row);
        self.seen.remove(r.node_id);
        self.heartbeats.remove(r.node_id);
    }

    fn set_leader(&mut self, leader: Option<&str>) {
        for m in self.members.values_mut() {
            m.leader = Some(m.node_id.as_str()) == leader;
        }
    }
}

fn fp(app: &str) -> Fingerprint {
    Fingerprint::compute(crate::PROTOCOL_VERSION, app, &[])
}

/// One incarnation as gossip shows it in one update.
#[derive(Clone, Debug)]
struct Inc {
    node: usize,
    generation: u64,
    /// 0: not arrived, 1: ours, 2: another version.
    fingerprint: u8,
    live: bool,
    heartbeat: u64,
    state: u8,
    raft_id: Option<usize>,
    cluster: u64,
    sessions: Option<u64>,
    zone: Option<u8>,
}

fn inc() -> impl Strategy<Value = Inc> {
    (
        (
            0usize..6,
            1u64..3,
            0u8..3,
            proptest::bool::weighted(0.8),
            0u64..3,
        ),
        (0u8..3, proptest::option::of(1usize..6), 0u64..3),
        (proptest::option::of(0u64..3), proptest::option::of(0u8..2)),
    )
        .prop_map(
            |(
                (node, generation, fingerprint, live, heartbeat),
                (state, raft_id, cluster),
                (sessions, zone),
            )| Inc {
                node,
                generation,
                fingerprint,
                live,
                heartbeat,
                state,
                raft_id,
                cluster,
                sessions,
                zone,
            },
        )
}

fn observation(i: &Inc) -> Observation {
    let mut pairs: Vec<(String, String)> = match i.fingerprint {
        0 => Vec::new(),
        1 => Published::identity_pairs(&fp("1.0"), 5),
        _ => Published::identity_pairs(&fp("2.0"), 5),
    };
    let state = ["active", "draining", "left"][i.state as usize];
    pairs.push((keys::STATE.into(), state.into()));
    if let Some(raft_id) = i.raft_id {
        let key = RaftKey {
            raft_id: raft_id as u64,
            cluster_id: i.cluster,
            vote: 0,
        };
        pairs.push((keys::RAFT.into(), key.to_value()));
    }
    if let Some(sessions) = i.sessions {
        let load = Load {
            cpu: 0.5,
            mem: 0.25,
            sessions,
        };
        pairs.push((keys::LOAD.into(), load.to_value()));
    }
    if let Some(zone) = i.zone {
        pairs.push((Published::tag_key("zone"), zone.to_string()));
    }
    Observation {
        node_id: format!("n{}", i.node),
        generation: i.generation,
        addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i.generation as u16)),
        live: i.live,
        heartbeat: i.heartbeat,
        published: Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    }
}

/// One update: time passing, gossip, the roster, refusals, and the leader the election saw.
#[derive(Clone, Debug)]
struct Step {
    advance_ms: u64,
    incarnations: Vec<Inc>,
    roster: Vec<bool>,
    refused: Vec<(usize, u8)>,
    leader: Option<usize>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u64..3000,
        proptest::collection::vec(inc(), 0..9),
        proptest::collection::vec(any::<bool>(), 8),
        proptest::collection::vec((3usize..8, 0u8..2), 0..3),
        proptest::option::of(0usize..7),
    )
        .prop_map(|(advance_ms, incarnations, roster, refused, leader)| Step {
            advance_ms,
            incarnations,
            roster,
            refused,
            leader,
        })
}

/// Equal revisions show equal rows.
fn check_revision(
    shown: &mut Option<(u64, Vec<Member>)>,
    view: &MemberView,
) -> Result<(), TestCaseError> {
    let rows: Vec<Member> = view.members().cloned().collect();
    if let Some((revision, before)) = shown {
        if *revision == view.revision() {
            prop_assert_eq!(&*before, &rows, "the revision did not move");
        }
    }
    *shown = Some((view.revision(), rows));
    Ok(())
}

proptest! {
    #[test]
    fn rows_kept_in_place_equal_rows_rebuilt(steps in proptest::collection::vec(step(), 1..25)) {
        let ours = fp("1.0");
        let ctx = ViewContext {
            self_id: "n0",
            self_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            fingerprint: &ours,
            policy: CompatPolicy::Exact,
            suspect_after: Duration::from_secs(2),
        };
        let mut now = Instant::now();
        let mut view = MemberView::default();
        let mut reference = Reference::default();
        let mut shown: Option<(u64, Vec<Member>)> = None;
        for step in steps {
            now += Duration::from_millis(step.advance_ms);
            let observations: Vec<Observation> = step.incarnations.iter().map(observation).collect();
            let roster = Roster::from_entries(
                step.roster.iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| RosterEntry {
                    node_id: format!("n{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 2], 7000 + i as u16)),
                }),
            );
            let names: Vec<String> = step.refused.iter().map(|(i, _)| format!("n{i}")).collect();
            let refused: Vec<Refused<'_>> = step
                .refused
                .iter()
                .zip(&names)
                .map(|((_, reason), name)| Refused {
                    node_id: name,
                    addr: SocketAddr::from(([127, 0, 0, 3], 7000)),
                    reason: Cow::Owned(format!("reason {reason}")),
                })
                .collect();
            let before: BTreeMap<NodeId, (Status, u64)> = reference
                .members
                .values()
                .map(|m| (m.node_id.clone(), (m.status, m.generation)))
                .collect();

            view.update(now, &observations, &roster, &refused, &ctx);
            reference.update(now, &observations, &roster, &ctx);
            for r in &refused {
                reference.add_refused(r);
            }
            let rows: Vec<Member> = view.members().cloned().collect();
            let expected: Vec<Member> = reference.members.values().cloned().collect();
            prop_assert_eq!(&rows, &expected);
            for (m, previous) in view.with_previous() {
                prop_assert_eq!(previous, before.get(&m.node_id).copied(), "{}", m.node_id);
                prop_assert_eq!(view.seen(&m.node_id), reference.seen.get(&m.node_id));
            }
            check_revision(&mut shown, &view)?;

            let leader = step.leader.map(|i| format!("n{i}"));
            view.set_leader(leader.as_deref());
            reference.set_leader(leader.as_deref());
            let rows: Vec<Member> = view.members().cloned().collect();
            prop_assert_eq!(&rows, &reference.members.values().cloned().collect::<Vec<_>>());
            check_revision(&mut shown, &view)?;
        }
    }
}
