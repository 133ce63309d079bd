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
