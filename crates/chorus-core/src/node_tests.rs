//! Node-level rules: what a gossip snapshot turns into (statuses, roster, alerts).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::member::Published;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn fp(app: &str) -> Fingerprint {
    Fingerprint::compute(crate::PROTOCOL_VERSION, app, &[])
}

fn config(id: &str, port: u16) -> NodeConfig {
    NodeConfig {
        node_id: id.into(),
        cluster: "c".into(),
        advertise_addr: addr(port),
        fingerprint: fp("1.0"),
        policy: CompatPolicy::Exact,
        suspect_after: Duration::from_secs(2),
        expect: 0,
        load: LoadPolicy::default(),
        split_window: Duration::from_secs(2),
        reap_after: Duration::from_secs(600),
        raft_id: u64::from(port) + 1000,
        voters: 5,
        raft_timing: RaftTiming::new(Duration::from_secs(600)),
        seed: 1,
    }
}

fn obs(
    id: &str,
    port: u16,
    generation: u64,
    live: bool,
    hb: u64,
    app: &str,
    state: &str,
) -> Observation {
    let mut pairs = Published::identity_pairs(&fp(app), 1);
    pairs.push((keys::STATE.into(), state.into()));
    Observation {
        node_id: id.into(),
        generation,
        addr: addr(port),
        live,
        heartbeat: hb,
        published: Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    }
}

fn drain(node: &mut Node) -> Vec<Effect> {
    std::iter::from_fn(|| node.poll_effect()).collect()
}

fn alerts(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Alert(a) => Some(a.kind()),
            _ => None,
        })
        .collect()
}

fn status_of(node: &Node, id: &str) -> Status {
    node.members().find(|m| m.node_id == id).unwrap().status
}

#[test]
fn other_version_is_rejected_once_never_counted_and_not_in_the_roster() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    let snapshot = vec![
        obs("a", 1, 1, true, 1, "1.0", "active"),
        obs("b", 2, 1, true, 1, "1.0", "active"),
        obs("x", 9, 1, true, 1, "2.0", "active"),
    ];
    n.handle_gossip(t0, &snapshot);
    let first = drain(&mut n);
    assert_eq!(
        alerts(&first)
            .iter()
            .filter(|k| **k == "version_rejected")
            .count(),
        1
    );
    n.handle_gossip(t0 + Duration::from_millis(100), &snapshot);
    assert!(
        !alerts(&drain(&mut n)).contains(&"version_rejected"),
        "reported once"
    );
    assert_eq!(status_of(&n, "x"), Status::Rejected);
    assert!(!n.roster().contains("x"));
    assert_eq!(n.status().alive, 2);
    let reason = n
        .members()
        .find(|m| m.node_id == "x")
        .unwrap()
        .reason
        .clone()
        .unwrap();
    assert!(reason.contains("2.0"), "{reason}");
}

#[test]
fn refused_peer_is_listed_rejected_with_its_reason() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    n.handle_refused_peer(t0, "evil", addr(7), "refused at hello: cluster name \"x\"");
    n.handle_gossip(t0, &[obs("a", 1, 1, true, 1, "1.0", "active")]);
    assert!(alerts(&drain(&mut n)).contains(&"version_rejected"));
    assert_eq!(status_of(&n, "evil"), Status::Rejected);
}

#[test]
fn left_is_left_and_leaves_the_roster() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    n.handle_gossip(
        t0,
        &[
            obs("a", 1, 1, true, 1, "1.0", "active"),
            obs("b", 2, 1, true, 1, "1.0", "active"),
        ],
    );
    assert!(n.roster().contains("b"));
    drain(&mut n);
    n.handle_gossip(
        t0,
        &[
            obs("a", 1, 1, true, 1, "1.0", "active"),
            obs("b", 2, 1, true, 2, "1.0", "left"),
        ],
    );
    assert_eq!(alerts(&drain(&mut n)), vec!["node_left"]);
    assert_eq!(status_of(&n, "b"), Status::Left);
    assert!(!n.roster().contains("b"));
}

#[test]
fn restart_with_a_new_generation_is_a_join_and_the_old_one_is_ignored() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    n.handle_gossip(
        t0,
        &[
            obs("a", 1, 1, true, 1, "1.0", "active"),
            obs("b", 2, 5, true, 1, "1.0", "active"),
        ],
    );
    drain(&mut n);
    let snapshot = [
        obs("a", 1, 1, true, 2, "1.0", "active"),
        obs("b", 2, 5, false, 1, "1.0", "active"),
        obs("b", 2, 6, true, 1, "1.0", "active"),
    ];
    n.handle_gossip(t0 + Duration::from_secs(1), &snapshot);
    assert_eq!(alerts(&drain(&mut n)), vec!["node_joined"]);
    let b = n.members().find(|m| m.node_id == "b").unwrap();
    assert_eq!((b.status, b.generation), (Status::Alive, 6));
}

#[test]
fn a_still_heartbeat_makes_a_live_node_suspect() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    let snap = [
        obs("a", 1, 1, true, 1, "1.0", "active"),
        obs("b", 2, 1, true, 7, "1.0", "active"),
    ];
    n.handle_gossip(t0, &snap);
    n.handle_gossip(t0 + Duration::from_secs(1), &snap);
    assert_eq!(status_of(&n, "b"), Status::Alive);
    n.handle_gossip(t0 + Duration::from_secs(3), &snap);
    assert_eq!(status_of(&n, "b"), Status::Suspect);
}

#[test]
fn forget_refuses_live_nodes_and_removes_dead_ones() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    n.handle_gossip(
        t0,
        &[
            obs("a", 1, 1, true, 1, "1.0", "active"),
            obs("b", 2, 1, true, 1, "1.0", "active"),
        ],
    );
    assert_eq!(n.handle_forget(t0, "b"), Err(ForgetError::Up("b".into())));
    assert_eq!(n.handle_forget(t0, "a"), Err(ForgetError::Itself));
    assert_eq!(
        n.handle_forget(t0, "zz"),
        Err(ForgetError::Unknown("zz".into()))
    );
    n.handle_gossip(
        t0,
        &[
            obs("a", 1, 1, true, 1, "1.0", "active"),
            obs("b", 2, 1, false, 1, "1.0", "active"),
        ],
    );
    drain(&mut n);
    assert_eq!((n.quorum().up, n.quorum().counted), (1, 2));
    assert_eq!(n.handle_forget(t0, "b"), Ok(()));
    assert!(!n.roster().contains("b"));
    // Quorum follows the roster at once, not at the next gossip.
    assert_eq!((n.quorum().up, n.quorum().counted), (1, 1));
    assert_eq!(n.status().roster, 1);
    assert!(drain(&mut n)
        .iter()
        .any(|e| matches!(e, Effect::PersistRoster(r) if r.len() == 1)));
}

#[test]
fn read_only_nodes_do_not_lead_when_a_task_needs_writes() {
    use crate::leader::must_not_lead;
    use std::collections::BTreeMap;
    let ro: BTreeMap<String, String> = [("read_only".to_string(), "true".to_string())].into();
    assert!(must_not_lead(&ro, true));
    assert!(!must_not_lead(&ro, false));
    let no: BTreeMap<String, String> = [("leader".to_string(), "false".to_string())].into();
    assert!(must_not_lead(&no, false));
    assert!(!must_not_lead(&BTreeMap::new(), true));
}

#[test]
fn a_refusal_is_published_and_shown_by_the_others() {
    let t0 = Instant::now();
    let mut refuser = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    refuser.handle_refused_peer(t0, "evil", addr(7), "refused at hello: app version \"9\"");
    let published: Vec<(String, String)> = drain(&mut refuser)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Publish { key, value } if key.starts_with("refused:") => Some((key, value)),
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 1);

    // Another node sees a's state, refusal included, by gossip.
    let mut a = obs("a", 1, 1, true, 1, "1.0", "active");
    let pairs: Vec<(String, String)> = Published::identity_pairs(&fp("1.0"), 1)
        .into_iter()
        .chain(published)
        .collect();
    a.published = Published::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut other = Node::new(
        t0,
        config("b", 2),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    other.handle_gossip(t0, &[a, obs("b", 2, 1, true, 1, "1.0", "active")]);
    assert!(alerts(&drain(&mut other)).contains(&"version_rejected"));
    let evil = other.members().find(|m| m.node_id == "evil").unwrap();
    assert_eq!(evil.status, Status::Rejected);
    assert!(
        evil.reason.as_deref().unwrap().contains("seen by a"),
        "{evil:?}"
    );

    // The refusal is withdrawn once it is old.
    refuser.handle_gossip(
        t0 + REFUSED_SHOWN_FOR,
        &[obs("a", 1, 1, true, 1, "1.0", "active")],
    );
    assert!(drain(&mut refuser).iter().any(
        |e| matches!(e, Effect::Publish { key, value } if key == "refused:evil" && value.is_empty())
    ));
}

fn roster_of(ids: &[(&str, u16)]) -> Roster {
    Roster::from_entries(ids.iter().map(|(id, port)| crate::roster::RosterEntry {
        node_id: id.to_string(),
        addr: addr(*port),
    }))
}

#[test]
fn a_known_member_back_on_another_version_is_rejected_alerted_and_never_counted() {
    let t0 = Instant::now();
    let roster = roster_of(&[("a", 1), ("b", 2), ("c", 3)]);
    let mut n = Node::new(
        t0,
        config("a", 1),
        roster,
        NodeState::Active,
        &RaftDisk::default(),
    );
    // c stopped gracefully: its last incarnation is `left` in gossip.
    let snapshot = [
        obs("a", 1, 1, true, 1, "1.0", "active"),
        obs("b", 2, 1, true, 1, "1.0", "active"),
        obs("c", 3, 1, false, 1, "1.0", "left"),
    ];
    n.handle_gossip(t0, &snapshot);
    drain(&mut n);
    // It comes back on its data dir with another version: refused at every hello, it never
    // gossips again, so only the refusal says where it is.
    n.handle_refused_peer(
        t0,
        "c",
        addr(3),
        "refused at hello: app version \"2.0\" (ours \"1.0\")",
    );
    n.handle_gossip(t0 + Duration::from_millis(100), &snapshot);
    let effects = drain(&mut n);
    let rejected: Vec<&Alert> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Alert(a @ Alert::VersionRejected { .. }) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1, "{effects:?}");
    let Alert::VersionRejected { node, cause, .. } = rejected[0] else {
        unreachable!()
    };
    assert_eq!((node.as_str(), *cause), ("c", RejectCause::VersionMismatch));
    let c = n.members().find(|m| m.node_id == "c").unwrap();
    assert_eq!(c.status, Status::Rejected);
    assert!(c.reason.as_deref().unwrap().contains("2.0"), "{c:?}");
    // Never counted (it left the roster when it stopped; a crashed member stays in it, down).
    assert!(!n.roster().contains("c"));
    assert_eq!((n.status().alive, n.status().roster), (2, 2));
    // Quorum itself is Raft's voters' (none formed here); by the roster, both counted are up.
    assert_eq!((n.quorum().up, n.quorum().counted), (2, 2));
    // Reported once.
    n.handle_gossip(t0 + Duration::from_millis(200), &snapshot);
    assert!(!alerts(&drain(&mut n)).contains(&"version_rejected"));
}

#[test]
fn the_upgraded_member_sees_its_old_peers_rejected_and_holds_no_quorum() {
    let t0 = Instant::now();
    let roster = roster_of(&[("a", 1), ("b", 2), ("c", 3)]);
    let mut c = Node::new(
        t0,
        config("c", 3),
        roster,
        NodeState::Active,
        &RaftDisk::default(),
    );
    // Restarted: gossip knows only itself; the others refuse it (and it refuses them).
    c.handle_refused_peer(t0, "a", addr(1), "refused us at hello: app version \"1.0\"");
    c.handle_refused_peer(t0, "b", addr(2), "refused at hello: app version \"1.0\"");
    c.handle_gossip(t0, &[obs("c", 3, 2, true, 1, "1.0", "active")]);
    let kinds = alerts(&drain(&mut c));
    assert_eq!(
        kinds.iter().filter(|k| **k == "version_rejected").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(status_of(&c, "a"), Status::Rejected);
    assert_eq!(status_of(&c, "b"), Status::Rejected);
    // The roster is not shrunk to the compatible few: alone, it is no majority.
    assert_eq!(c.roster().len(), 3);
    assert_eq!((c.quorum().up, c.quorum().counted), (1, 3));
    assert!(!c.status().quorum);
}

#[test]
fn a_second_agent_with_a_live_id_never_becomes_the_member_nor_makes_it_left() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    n.handle_gossip(
        t0,
        &[
            obs("a", 1, 1, true, 1, "1.0", "active"),
            obs("b", 2, 5, true, 1, "1.0", "active"),
        ],
    );
    drain(&mut n);
    // Another agent claims b from port 9 (newer generation), then stops and says `left`;
    // another claims this node's own id.
    for (i, state) in ["active", "left"].into_iter().enumerate() {
        let hb = 2 + i as u64;
        n.handle_gossip(
            t0 + Duration::from_millis(100 * (i as u64 + 1)),
            &[
                obs("a", 1, 1, true, hb, "1.0", "active"),
                obs("a", 9, 7, true, 1, "1.0", state),
                obs("b", 2, 5, true, hb, "1.0", "active"),
                obs("b", 9, 6, true, 1, "1.0", state),
            ],
        );
        let kinds = alerts(&drain(&mut n));
        assert!(!kinds.contains(&"node_left"), "{kinds:?}");
        let b = n.members().find(|m| m.node_id == "b").unwrap();
        assert_eq!(
            (b.status, b.addr, b.generation),
            (Status::Alive, addr(2), 5)
        );
        let me = n.members().find(|m| m.node_id == "a").unwrap();
        assert_eq!(
            (me.status, me.addr, me.generation),
            (Status::Alive, addr(1), 1)
        );
    }
    // Once the first b is dead, a b at another address is a restart, believed.
    n.handle_gossip(
        t0 + Duration::from_secs(1),
        &[
            obs("a", 1, 1, true, 9, "1.0", "active"),
            obs("b", 2, 5, false, 3, "1.0", "active"),
            obs("b", 8, 6, true, 1, "1.0", "active"),
        ],
    );
    let b = n.members().find(|m| m.node_id == "b").unwrap();
    assert_eq!(
        (b.status, b.addr, b.generation),
        (Status::Alive, addr(8), 6)
    );
}

#[test]
fn a_node_id_conflict_is_alerted_once_per_claimant_and_leaves_the_member_alone() {
    let t0 = Instant::now();
    let mut n = Node::new(
        t0,
        config("a", 1),
        Roster::default(),
        NodeState::Active,
        &RaftDisk::default(),
    );
    let snap = [
        obs("a", 1, 1, true, 1, "1.0", "active"),
        obs("b", 2, 5, true, 1, "1.0", "active"),
    ];
    n.handle_gossip(t0, &snap);
    drain(&mut n);
    n.handle_node_id_conflict(t0, "b", Some(addr(2)), addr(9));
    n.handle_node_id_conflict(t0, "b", Some(addr(2)), addr(9));
    n.handle_gossip(t0, &snap);
    let effects = drain(&mut n);
    let conflicts: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Alert(Alert::NodeIdConflict { .. })))
        .collect();
    assert_eq!(conflicts.len(), 1, "{effects:?}");
    assert_eq!(status_of(&n, "b"), Status::Alive);
    assert!(n.roster().contains("b"));
    // Another claimant is news.
    n.handle_node_id_conflict(t0, "b", Some(addr(2)), addr(10));
    assert_eq!(alerts(&drain(&mut n)), vec!["node_id_conflict"]);
}
