//! Admission of nodes heard of (chorus change 8) and the digest budget (chorus change 9), on
//! `Chitchat` instances exchanging messages directly, on tokio's paused clock.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::delta::Delta;
use crate::digest::Digest;
use crate::serialize::Serializable;
use crate::{
    Chitchat, ChitchatConfig, ChitchatMessage, FailureDetectorConfig, Heartbeat,
    MAX_UDP_DATAGRAM_PAYLOAD_SIZE, MESSAGE_HEADER_LEN, MIN_DELTA_BUDGET,
};

const INTERVAL: Duration = Duration::from_millis(400);

/// A node configured as chorus configures it: 400 ms rounds, the detector's prior one round.
fn node_config(port: u16) -> ChitchatConfig {
    let mut config = ChitchatConfig::for_test(port);
    config.chitchat_id.gossip_advertise_addr =
        ([10, 0, (port >> 8) as u8, port as u8], 7946).into();
    config.gossip_interval = INTERVAL;
    config.failure_detector_config = FailureDetectorConfig {
        phi_threshold: 7.0,
        sampling_window_size: 200,
        max_interval: INTERVAL * 10,
        initial_interval: INTERVAL,
        dead_node_grace_period: Duration::from_secs(600),
    };
    config
}

fn node(port: u16) -> Chitchat {
    let seeds = watch::channel(Default::default()).1;
    Chitchat::with_chitchat_id_and_seeds(
        node_config(port),
        seeds,
        vec![("name".to_string(), format!("n{port}"))],
    )
}

fn fake_id(i: usize) -> ChitchatId {
    let addr: SocketAddr = ([10, 99, (i >> 8) as u8, i as u8], 7946).into();
    ChitchatId::new(format!("fake-{i:05}"), 1, addr)
}

/// A Syn listing `count` made-up nodes (from `first` on), each at `heartbeat`.
fn fake_syn(node: &Chitchat, first: usize, count: usize, heartbeat: u64) -> ChitchatMessage {
    let mut digest = Digest::default();
    for i in first..first + count {
        digest.add_node(fake_id(i), Heartbeat(heartbeat), 0, 7);
    }
    ChitchatMessage::Syn {
        cluster_id: node.cluster_id().to_string(),
        digest,
    }
}

fn digest_of(message: &ChitchatMessage) -> &Digest {
    match message {
        ChitchatMessage::Syn { digest, .. } | ChitchatMessage::SynAck { digest, .. } => digest,
        other => panic!("no digest in {other:?}"),
    }
}

fn members(node: &Chitchat) -> HashSet<ChitchatId> {
    node.node_states().keys().cloned().collect()
}

/// One round of `from` gossiping with `to`: Syn, SynAck, Ack.
fn handshake(from: &mut Chitchat, to: &mut Chitchat) {
    let syn = from.create_syn_message();
    let syn_ack = to.process_message(syn).unwrap();
    if let Some(ack) = from.process_message(syn_ack) {
        assert!(to.process_message(ack).is_none());
    }
}

/// A round later: the clock moves, both nodes judge liveness, as the server does each round.
async fn next_round(nodes: &mut [&mut Chitchat]) {
    tokio::time::advance(INTERVAL).await;
    for node in nodes.iter_mut() {
        node.update_self_heartbeat();
        node.update_nodes_liveness();
    }
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_fake_digest_entries_make_no_member() {
    let mut victim = node(1);
    for heartbeat in [1, 2] {
        let syn = fake_syn(&victim, 0, 1_300, heartbeat);
        let syn_ack = victim.process_message(syn).unwrap();
        assert_eq!(
            digest_of(&syn_ack).node_digests.len(),
            1,
            "only the victim itself"
        );
        victim.update_nodes_liveness();
    }
    assert_eq!(
        members(&victim),
        HashSet::from([victim.self_chitchat_id().clone()])
    );
    assert_eq!(
        victim.unconfirmed_nodes().count(),
        MAX_NEW_NODES_PER_MESSAGE * 2
    );
    assert_eq!(victim.live_nodes().count(), 1);
    assert_eq!(victim.dead_nodes().count(), 0);
    assert_eq!(
        digest_of(&victim.create_syn_message()).node_digests.len(),
        1
    );
    let stats = victim.unconfirmed_stats();
    assert_eq!(stats.heard, 2 * MAX_NEW_NODES_PER_MESSAGE as u64);
    // The second Syn lists the first 256 again (no new id) and introduces 256 more.
    let refused = (1_300 - MAX_NEW_NODES_PER_MESSAGE) + (1_300 - 2 * MAX_NEW_NODES_PER_MESSAGE);
    assert_eq!(stats.refused, refused as u64);
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_node_not_seen_live_is_dropped_at_its_deadline() {
    let mut victim = node(1);
    victim.process_message(fake_syn(&victim, 0, 10, 5));
    let ttl = unconfirmed_node_ttl(INTERVAL);
    assert_eq!(ttl, INTERVAL * UNCONFIRMED_NODE_TTL_ROUNDS);
    tokio::time::advance(ttl - Duration::from_millis(1)).await;
    // Still listed, still static: kept until the deadline.
    victim.process_message(fake_syn(&victim, 0, 10, 5));
    victim.update_nodes_liveness();
    assert_eq!(victim.unconfirmed_nodes().count(), 10);
    tokio::time::advance(Duration::from_millis(1)).await;
    victim.update_nodes_liveness();
    assert_eq!(victim.unconfirmed_nodes().count(), 0);
    assert_eq!(victim.unconfirmed_stats().dropped, 10);
    assert_eq!(members(&victim).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_node_seen_live_becomes_a_member() {
    let mut seed = node(1);
    let mut joiner = node(2);
    let joiner_id = joiner.self_chitchat_id().clone();
    let mut rounds = 0;
    while !members(&seed).contains(&joiner_id) {
        handshake(&mut joiner, &mut seed);
        next_round(&mut [&mut seed, &mut joiner]).await;
        rounds += 1;
        assert!(rounds <= 5, "not a member after {rounds} rounds");
    }
    // Its keys came with it, and listeners of the seed heard of them when it was confirmed.
    assert_eq!(seed.node_state(&joiner_id).unwrap().get("name"), Some("n2"));
    assert!(seed.live_nodes().any(|id| *id == joiner_id));
    assert!(
        digest_of(&seed.create_syn_message())
            .node_digests
            .contains_key(&joiner_id)
    );
    assert_eq!(seed.unconfirmed_stats().confirmed, 1);
    println!("a joiner is a member of its seed after {rounds} rounds");
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_node_hears_of_keys_when_confirmed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut seed = node(1);
    let heard = Arc::new(AtomicUsize::new(0));
    let heard_clone = heard.clone();
    seed.subscribe_event("name", move |event| {
        assert_eq!(event.value, "n2");
        heard_clone.fetch_add(1, Ordering::Relaxed);
    })
    .forever();
    let mut joiner = node(2);
    handshake(&mut joiner, &mut seed);
    assert!(
        seed.unconfirmed_node_state(joiner.self_chitchat_id())
            .is_some()
    );
    assert_eq!(
        heard.load(Ordering::Relaxed),
        0,
        "nothing heard while unconfirmed"
    );
    for _ in 0..5 {
        next_round(&mut [&mut seed, &mut joiner]).await;
        handshake(&mut joiner, &mut seed);
    }
    seed.update_nodes_liveness();
    assert!(members(&seed).contains(joiner.self_chitchat_id()));
    assert_eq!(heard.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_nodes_in_all_are_bounded() {
    let mut victim = node(1);
    let messages = MAX_UNCONFIRMED_NODES / MAX_NEW_NODES_PER_MESSAGE + 2;
    for m in 0..messages {
        let first = m * MAX_NEW_NODES_PER_MESSAGE;
        victim.process_message(fake_syn(&victim, first, MAX_NEW_NODES_PER_MESSAGE, 1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(victim.unconfirmed_nodes().count() <= MAX_UNCONFIRMED_NODES);
    }
    // A full table makes room by dropping the oldest static entries: the newest are there.
    let newest = fake_id((messages - 1) * MAX_NEW_NODES_PER_MESSAGE);
    assert!(victim.unconfirmed_nodes().any(|id| *id == newest));
    assert!(!victim.unconfirmed_nodes().any(|id| *id == fake_id(0)));
    assert_eq!(victim.unconfirmed_nodes().count(), MAX_UNCONFIRMED_NODES);

    // Once every one has moved, a new id waits for room rather than replacing one.
    let mut digest = Digest::default();
    for id in victim.unconfirmed_nodes().cloned().collect::<Vec<_>>() {
        digest.add_node(id, Heartbeat(2), 0, 7);
    }
    let cluster_id = victim.cluster_id().to_string();
    for chunk in digest
        .node_digests
        .into_iter()
        .collect::<Vec<_>>()
        .chunks(256)
    {
        let mut part = Digest::default();
        part.node_digests.extend(chunk.iter().cloned());
        victim.process_message(ChitchatMessage::Syn {
            cluster_id: cluster_id.clone(),
            digest: part,
        });
    }
    let refused_before = victim.unconfirmed_stats().refused;
    victim.process_message(fake_syn(&victim, 1_000_000, 1, 1));
    assert!(
        !victim
            .unconfirmed_nodes()
            .any(|id| *id == fake_id(1_000_000))
    );
    assert_eq!(victim.unconfirmed_stats().refused, refused_before + 1);
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_ids_too_long_are_ignored() {
    let mut victim = node(1);
    let mut digest = Digest::default();
    let addr: SocketAddr = ([10, 9, 9, 9], 1).into();
    digest.add_node(
        ChitchatId::new("x".repeat(MAX_NODE_ID_LEN + 1), 0, addr),
        Heartbeat(1),
        0,
        1,
    );
    digest.add_node(
        ChitchatId::new("y".repeat(MAX_NODE_ID_LEN), 0, addr),
        Heartbeat(1),
        0,
        1,
    );
    victim.process_message(ChitchatMessage::Syn {
        cluster_id: victim.cluster_id().to_string(),
        digest,
    });
    let heard: Vec<usize> = victim
        .unconfirmed_nodes()
        .map(|id| id.node_id.len())
        .collect();
    assert_eq!(heard, vec![MAX_NODE_ID_LEN]);
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_node_from_a_delta_keeps_its_keys_until_confirmed() {
    let mut victim = node(1);
    let peer = fake_id(1);
    let mut delta = Delta::default();
    delta.add_node(peer.clone(), 0, 0);
    delta.add_kv(&peer, "key", "value", 1, false);
    // A delta that does not start from nothing says nothing usable about an unknown node.
    let later = fake_id(2);
    delta.add_node(later.clone(), 0, 3);
    delta.add_kv(&later, "key", "value", 4, false);
    victim.process_message(ChitchatMessage::Ack { delta });
    assert_eq!(
        victim.unconfirmed_nodes().cloned().collect::<Vec<_>>(),
        vec![peer.clone()]
    );
    assert_eq!(
        victim.unconfirmed_node_state(&peer).unwrap().get("key"),
        Some("value")
    );
    assert!(victim.node_state(&peer).is_none());
    // A peer asking for everything gets nothing about it.
    let syn_ack = victim
        .process_message(ChitchatMessage::Syn {
            cluster_id: victim.cluster_id().to_string(),
            digest: Digest::default(),
        })
        .unwrap();
    let ChitchatMessage::SynAck { digest, delta } = syn_ack else {
        panic!("a Syn is answered with a SynAck");
    };
    assert!(!digest.node_digests.contains_key(&peer));
    assert!(delta.get(&peer).is_none());
}

/// A node the victim heard of only from an attacker is never passed on: a third node that
/// gossips with the victim hears nothing of it.
#[tokio::test(start_paused = true)]
async fn test_unconfirmed_node_is_not_gossiped_onward() {
    let mut victim = node(1);
    let mut third = node(2);
    for round in 0..10 {
        victim.process_message(fake_syn(&victim, 0, 50, 1 + round % 2));
        handshake(&mut third, &mut victim);
        handshake(&mut victim, &mut third);
        next_round(&mut [&mut victim, &mut third]).await;
    }
    assert!(victim.unconfirmed_nodes().count() > 0);
    assert_eq!(third.unconfirmed_nodes().count(), 0);
    assert_eq!(members(&third).len(), 2);
    assert_eq!(members(&victim).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn test_unconfirmed_recently_collected_node_comes_back_only_with_a_higher_heartbeat() {
    let mut victim = node(1);
    let ghost = fake_id(1);
    victim.cluster_state.node_state_mut_or_init(&ghost);
    victim
        .cluster_state
        .node_state_mut(&ghost)
        .unwrap()
        .try_set_heartbeat(Heartbeat(100));
    victim.cluster_state.remove_node(&ghost);
    let syn_with = |victim: &Chitchat, heartbeat| {
        let mut digest = Digest::default();
        digest.add_node(ghost.clone(), Heartbeat(heartbeat), 0, 1);
        ChitchatMessage::Syn {
            cluster_id: victim.cluster_id().to_string(),
            digest,
        }
    };
    victim.process_message(syn_with(&victim, 100));
    assert_eq!(victim.unconfirmed_nodes().count(), 0);
    victim.process_message(syn_with(&victim, 101));
    assert_eq!(victim.unconfirmed_nodes().count(), 1);
    // Heard of again from a delta (no heartbeat): the collected heartbeat is the floor.
    victim.cluster_state.drop_unconfirmed(&ghost);
    let mut delta = Delta::default();
    delta.add_node(ghost.clone(), 0, 0);
    delta.add_kv(&ghost, "k", "v", 1, false);
    victim.process_message(ChitchatMessage::Ack { delta });
    assert_eq!(
        victim.unconfirmed_node_state(&ghost).unwrap().heartbeat(),
        Heartbeat(100)
    );
}

/// At `MAX_MEMBERS`, a node seen live takes the place of the member that died first.
#[tokio::test(start_paused = true)]
async fn test_unconfirmed_past_max_members_replaces_the_first_dead() {
    let mut victim = node(1);
    let dead = fake_id(0);
    victim.cluster_state.node_state_mut_or_init(&dead);
    let mut allowance = NewNodeAllowance::per_message();
    for heartbeat in 1..=3 {
        victim.report_heartbeat(&dead, Heartbeat(heartbeat), &mut allowance);
        tokio::time::advance(INTERVAL).await;
    }
    tokio::time::advance(INTERVAL * 20).await;
    victim.update_nodes_liveness();
    assert_eq!(
        victim.dead_nodes().cloned().collect::<Vec<_>>(),
        vec![dead.clone()]
    );
    for i in 1..MAX_MEMBERS - 1 {
        victim.cluster_state.node_state_mut_or_init(&fake_id(i));
    }
    assert_eq!(victim.node_states().len(), MAX_MEMBERS);
    let newcomer = fake_id(MAX_MEMBERS + 1);
    for heartbeat in 1..=4 {
        let mut allowance = NewNodeAllowance::per_message();
        victim.report_heartbeat(&newcomer, Heartbeat(heartbeat), &mut allowance);
        tokio::time::advance(INTERVAL).await;
    }
    victim.update_nodes_liveness();
    assert!(victim.node_state(&newcomer).is_some());
    assert!(victim.node_state(&dead).is_none());
    assert_eq!(victim.node_states().len(), MAX_MEMBERS);
}

/// Members of a cluster of `size`, as `node` would hold them after gossip: short ids, five
/// small keys each, all live.
async fn fill_with_live_members(node: &mut Chitchat, size: usize) -> Vec<ChitchatId> {
    let ids: Vec<ChitchatId> = (0..size)
        .map(|i| {
            let addr: SocketAddr = ([10, 1, (i >> 8) as u8, i as u8], 7946).into();
            ChitchatId::new(format!("node-{i:04}"), 1_760_000_000_000 + i as u64, addr)
        })
        .collect();
    for id in &ids {
        let state = node.cluster_state.node_state_mut_or_init(id);
        state.set("fingerprint", "5f2b9c".repeat(10));
        state.set("protocol", "3");
        state.set("app_version", "1.0");
        state.set("start_ms", "1760000000000");
        state.set("state", "active");
    }
    for heartbeat in 1..=3 {
        let mut allowance = NewNodeAllowance::per_message();
        for id in &ids {
            node.report_heartbeat(id, Heartbeat(heartbeat), &mut allowance);
        }
        tokio::time::advance(INTERVAL).await;
    }
    node.update_nodes_liveness();
    assert_eq!(node.live_nodes().count(), size + 1);
    ids
}

/// A new node that only talks to its seed (one SynAck a round, the slowest case) learns a
/// 1,000-node cluster: the rounds until every node is a member and until it holds every
/// node's keys.
#[tokio::test(start_paused = true)]
async fn test_a_new_node_learns_a_large_cluster_from_its_seed() {
    let mut seed = node(1);
    let cluster = fill_with_live_members(&mut seed, 998).await;
    let mut joiner = node(2);
    let (mut all_members_at, mut all_keys_at) = (None, None);
    for round in 1..=40 {
        handshake(&mut joiner, &mut seed);
        next_round(&mut [&mut seed, &mut joiner]).await;
        // The seed's members stay live: their heartbeats move in its digest every round.
        let mut allowance = NewNodeAllowance::per_message();
        for id in &cluster {
            let heartbeat = seed.node_state(id).unwrap().heartbeat().0 + 1;
            seed.report_heartbeat(id, Heartbeat(heartbeat), &mut allowance);
        }
        let known = joiner.node_states().len();
        if known == 1_000 && all_members_at.is_none() {
            all_members_at = Some(round);
        }
        let complete = joiner
            .node_states()
            .iter()
            .filter(|(id, state)| {
                seed.node_state(id)
                    .is_some_and(|at_seed| at_seed.max_version() == state.max_version())
            })
            .count();
        if complete == 1_000 && all_keys_at.is_none() {
            all_keys_at = Some(round);
            break;
        }
    }
    let all_members_at = all_members_at.expect("the joiner never had every member");
    let all_keys_at = all_keys_at.expect("the joiner never had every node's keys");
    println!(
        "1,000 nodes from the seed alone: all members after {all_members_at} rounds, all keys \
         after {all_keys_at} rounds"
    );
    // 999 others at 256 a message: 4 SynAcks, and 2 more rounds to see the last ones live.
    // The keys come as fast as deltas can carry them (about 64 nodes a SynAck next to a
    // 1,000-entry digest), as in the release.
    assert!(all_members_at <= 7, "{all_members_at} rounds");
    assert!(all_keys_at <= 20, "{all_keys_at} rounds");
    assert_eq!(seed.node_states().len(), 1_000);
}

/// Whatever the number of members, a node's SynAck leaves room for a delta and its messages
/// fit a datagram: a big digest is cut, it never mutes the node.
#[tokio::test(start_paused = true)]
async fn test_digest_is_cut_to_leave_room_for_a_delta() {
    for size in [500, 1_500, 3_000] {
        let mut victim = node(1);
        fill_with_live_members(&mut victim, size).await;
        let syn = victim.create_syn_message();
        assert!(
            syn.serialized_len() <= MAX_UDP_DATAGRAM_PAYLOAD_SIZE,
            "{size} members"
        );
        assert!(
            digest_of(&syn)
                .node_digests
                .contains_key(victim.self_chitchat_id())
        );
        let syn_ack = victim
            .process_message(ChitchatMessage::Syn {
                cluster_id: victim.cluster_id().to_string(),
                digest: Digest::default(),
            })
            .unwrap();
        let bytes = syn_ack.serialize_to_vec();
        assert!(
            bytes.len() <= MAX_UDP_DATAGRAM_PAYLOAD_SIZE,
            "{size}: {} bytes",
            bytes.len()
        );
        let ChitchatMessage::SynAck { digest, delta } = &syn_ack else {
            panic!("a Syn is answered with a SynAck");
        };
        assert!(digest.node_digests.contains_key(victim.self_chitchat_id()));
        let room = MAX_UDP_DATAGRAM_PAYLOAD_SIZE - MESSAGE_HEADER_LEN - digest.serialized_len();
        assert!(
            room >= MIN_DELTA_BUDGET,
            "{size} members: {room} bytes left for the delta"
        );
        assert!(
            !delta.node_deltas.is_empty(),
            "{size} members: an empty delta"
        );
        if size <= 1_000 {
            assert_eq!(digest.node_digests.len(), size + 1, "everything fits");
        }
    }
}

/// A cut digest starts from a random place, so every member's heartbeat gets out.
#[tokio::test(start_paused = true)]
async fn test_a_cut_digest_gives_every_member_its_turn() {
    let mut victim = node(1);
    let members = fill_with_live_members(&mut victim, 2_000).await;
    let mut seen: HashSet<ChitchatId> = HashSet::new();
    for _ in 0..20 {
        let syn = victim.create_syn_message();
        let digest = digest_of(&syn);
        assert!(digest.node_digests.len() < 2_000);
        seen.extend(digest.node_digests.keys().cloned());
    }
    assert!(members.iter().all(|id| seen.contains(id)));
}

/// A cluster id longer than the room left for a delta still leaves a Syn within a datagram.
#[tokio::test(start_paused = true)]
async fn test_a_long_cluster_id_keeps_the_syn_within_a_datagram() {
    let mut config = node_config(1);
    config.cluster_id = "c".repeat(60_000);
    let seeds = watch::channel(Default::default()).1;
    let mut victim = Chitchat::with_chitchat_id_and_seeds(config, seeds, Vec::new());
    fill_with_live_members(&mut victim, 500).await;
    let syn = victim.create_syn_message();
    assert!(syn.serialized_len() <= MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
    assert!(
        digest_of(&syn)
            .node_digests
            .contains_key(victim.self_chitchat_id())
    );
}

/// The application's catch-up (`reset_node_state_if_update`) vouches for a node: it becomes a
/// member at once, and is unconfirmed no more.
#[tokio::test(start_paused = true)]
async fn test_unconfirmed_node_reset_by_the_application_becomes_a_member() {
    let mut victim = node(1);
    let peer = fake_id(1);
    victim.process_message(fake_syn(&victim, 1, 1, 5));
    assert_eq!(victim.unconfirmed_nodes().count(), 1);
    victim.reset_node_state_if_update(&peer, std::iter::empty(), 3, 0);
    assert!(victim.node_state(&peer).is_some());
    assert_eq!(victim.unconfirmed_nodes().count(), 0);
    tokio::time::advance(unconfirmed_node_ttl(INTERVAL)).await;
    victim.update_nodes_liveness();
    assert!(victim.node_state(&peer).is_some());
}

fn free_udp_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a loopback port");
    socket.local_addr().expect("a bound socket has an address")
}

/// The wire is the release's, and so is what a plain chitchat 0.11.2 node needs to be seen:
/// two copy nodes and one crates.io 0.11.2 node, over real UDP, each see the others live with
/// their keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_copy_nodes_and_a_plain_chitchat_0_11_2_node_see_each_other() {
    use chitchat_upstream as upstream;

    let interval = Duration::from_millis(100);
    let detector = || FailureDetectorConfig {
        initial_interval: interval,
        ..Default::default()
    };
    let (seed_addr, plain_addr, other_addr) = (free_udp_addr(), free_udp_addr(), free_udp_addr());
    let copy_config = |name: &str, addr: SocketAddr| ChitchatConfig {
        chitchat_id: ChitchatId::new(name.to_string(), 1, addr),
        cluster_id: "mixed".to_string(),
        gossip_interval: interval,
        listen_addr: addr,
        seed_nodes: vec![seed_addr.to_string()],
        failure_detector_config: detector(),
        marked_for_deletion_grace_period: Duration::from_secs(3_600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let key = |name: &str| vec![("name".to_string(), name.to_string())];
    let transport = crate::transport::UdpTransport;
    let seed = crate::spawn_chitchat(copy_config("copy-seed", seed_addr), key("seed"), &transport)
        .await
        .unwrap();
    let other = crate::spawn_chitchat(
        copy_config("copy-other", other_addr),
        key("other"),
        &transport,
    )
    .await
    .unwrap();
    let plain_config = upstream::ChitchatConfig {
        chitchat_id: upstream::ChitchatId::new("plain".to_string(), 1, plain_addr),
        cluster_id: "mixed".to_string(),
        gossip_interval: interval,
        listen_addr: plain_addr,
        seed_nodes: vec![seed_addr.to_string()],
        failure_detector_config: upstream::FailureDetectorConfig {
            initial_interval: interval,
            ..Default::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3_600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let plain = upstream::spawn_chitchat(
        plain_config,
        key("plain"),
        &upstream::transport::UdpTransport,
    )
    .await
    .unwrap();

    let names = ["copy-other", "copy-seed", "plain"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen: Vec<Vec<String>> = Vec::new();
        for handle in [&seed, &other] {
            let chitchat = handle.chitchat();
            let chitchat = chitchat.lock().await;
            let mut live: Vec<String> = chitchat
                .live_nodes()
                .filter(|id| {
                    chitchat
                        .node_state(id)
                        .is_some_and(|s| s.get("name").is_some())
                })
                .map(|id| id.node_id.to_string())
                .collect();
            live.sort();
            seen.push(live);
        }
        {
            let chitchat = plain.chitchat();
            let chitchat = chitchat.lock().await;
            let mut live: Vec<String> = chitchat
                .live_nodes()
                .filter(|id| {
                    chitchat
                        .node_state(id)
                        .is_some_and(|s| s.get("name").is_some())
                })
                .map(|id| id.node_id.to_string())
                .collect();
            live.sort();
            seen.push(live);
        }
        if seen.iter().all(|live| live == &names) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: {seen:?}"
        );
        tokio::time::sleep(interval).await;
    }
    seed.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    plain.shutdown().await.unwrap();
}
