//! QuicTransport end to end: large messages, replies, authentication,
//! hello refusals, dead peers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{ChitchatMessage, Serializable};
use chorus_net::quic::PEER_QUEUE_CAPACITY;
use chorus_net::{
    ClusterCa, HelloTemplate, NodeIdentity, QuicConfig, QuicTransport, RefusalKind, TlsMode,
};
use common::{
    assert_silent, big_syn_bytes, decode, eventually, fast_tuning, free_addr, quic, quic_config,
    quic_tuned, recv, syn, wire, Refusals,
};

const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn a_message_over_100_kb_gets_through() {
    let ca = ClusterCa::generate("big").unwrap();
    let (a, b) = (quic(&ca, "a"), quic(&ca, "b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    let bytes = big_syn_bytes(3_000);
    let on_the_wire = wire(&decode(&bytes)).len();
    assert!(on_the_wire > 100_000, "only {on_the_wire} bytes");
    socket_a.send(addr_b, decode(&bytes)).await.unwrap();
    let (from, message) = recv(&mut socket_b).await;
    assert_eq!(from, addr_a);
    assert_eq!(message.serialized_len(), bytes.len());
    assert_eq!(message, decode(&bytes));
    assert_eq!(b.counters().snapshot().bytes_received, on_the_wire as u64);
}

#[tokio::test]
async fn replies_reach_the_sender_gossip_address() {
    let ca = ClusterCa::generate("replies").unwrap();
    let (a, b) = (quic(&ca, "a"), quic(&ca, "b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    for round in 0..3 {
        socket_a
            .send(addr_b, syn(&format!("ping-{round}")))
            .await
            .unwrap();
        let (from, message) = recv(&mut socket_b).await;
        assert_eq!(message, syn(&format!("ping-{round}")));
        socket_b
            .send(from, syn(&format!("pong-{round}")))
            .await
            .unwrap();
        let (from, message) = recv(&mut socket_a).await;
        assert_eq!((from, message), (addr_b, syn(&format!("pong-{round}"))));
    }
    for t in [&a, &b] {
        let stats = t.counters().snapshot();
        assert_eq!(stats.failed_handshakes, 0);
        assert_eq!(stats.dropped_sends, 0);
    }
}

#[tokio::test]
async fn advertised_address_is_what_the_peer_sees() {
    let ca = ClusterCa::generate("adv").unwrap();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    // An unspecified IP is replaced by the connection's source IP.
    let advertised: SocketAddr = ([0, 0, 0, 0], addr_a.port()).into();
    let a = QuicTransport::new(quic_config(&ca, "a").with_advertise_addr(advertised));
    let b = quic(&ca, "b");
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    socket_a.send(addr_b, syn("x")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await.0, addr_a);
}

#[tokio::test]
async fn a_reloaded_cluster_key_mints_compatible_identities() {
    let ca = ClusterCa::generate("reload").unwrap();
    let reloaded = ClusterCa::from_pem(&ca.to_pem()).unwrap();
    let (a, b) = (quic(&ca, "a"), quic(&reloaded, "b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    socket_b.send(addr_a, syn("x")).await.unwrap();
    assert_eq!(recv(&mut socket_a).await.0, addr_b);
    socket_a.send(addr_b, syn("y")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await.0, addr_a);
}

#[tokio::test]
async fn existing_pki_files_work() {
    let ca = ClusterCa::generate("files").unwrap();
    let minted = NodeIdentity::mint(&ca, "a").unwrap();
    let dir = std::env::temp_dir().join(format!("chorus-net-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("a.pem"), dir.join("a.key"));
    std::fs::write(&ca_path, minted.ca_pem()).unwrap();
    std::fs::write(&cert_path, minted.cert_pem()).unwrap();
    std::fs::write(&key_path, minted.key_pem()).unwrap();
    let loaded = NodeIdentity::from_pem_files(&ca_path, &cert_path, &key_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let a = QuicTransport::new(QuicConfig::new(
        TlsMode::Mutual(loaded),
        HelloTemplate::new("files", "a", "fp"),
    ));
    let b = quic(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    socket_a.send(addr_b, syn("x")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await.0, addr_a);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::generate("same-name").unwrap();
    let intruder_ca = ClusterCa::generate("same-name").unwrap();
    let (member, intruder) = (quic(&ca, "member"), quic(&intruder_ca, "intruder"));
    let (addr_m, addr_i) = (free_addr(), free_addr());
    let mut socket_m = member.open(addr_m).await.unwrap();
    let mut socket_i = intruder.open(addr_i).await.unwrap();

    socket_i.send(addr_m, syn("in")).await.unwrap();
    eventually("member to count a failed handshake", || {
        member.counters().snapshot().failed_handshakes >= 1
    })
    .await;
    eventually("intruder to count a failed handshake", || {
        intruder.counters().snapshot().failed_handshakes >= 1
    })
    .await;
    assert_silent(&mut socket_m, QUIET).await;

    // The other direction fails too.
    socket_m.send(addr_i, syn("out")).await.unwrap();
    eventually("the member's dial to fail", || {
        member.counters().snapshot().failed_handshakes >= 2
    })
    .await;
    assert_silent(&mut socket_i, QUIET).await;
    assert_eq!(member.counters().snapshot().messages_received, 0);
    assert_eq!(intruder.counters().snapshot().messages_received, 0);
}

#[tokio::test]
async fn insecure_and_mutual_nodes_cannot_talk_but_insecure_ones_can() {
    let ca = ClusterCa::generate("mixed").unwrap();
    let insecure = || {
        QuicTransport::new(
            QuicConfig::new(
                TlsMode::Insecure,
                HelloTemplate::new("mixed", "loose", "fp"),
            )
            .with_tuning(fast_tuning()),
        )
    };
    let (secure, loose, loose2) = (quic(&ca, "secure"), insecure(), insecure());
    let (addr_s, addr_l, addr_l2) = (free_addr(), free_addr(), free_addr());
    let mut socket_s = secure.open(addr_s).await.unwrap();
    let mut socket_l = loose.open(addr_l).await.unwrap();
    let mut socket_l2 = loose2.open(addr_l2).await.unwrap();

    socket_l.send(addr_s, syn("x")).await.unwrap();
    eventually("secure node to refuse the insecure one", || {
        secure.counters().snapshot().failed_handshakes >= 1
    })
    .await;
    assert_silent(&mut socket_s, QUIET).await;

    socket_l.send(addr_l2, syn("y")).await.unwrap();
    assert_eq!(recv(&mut socket_l2).await, (addr_l, syn("y")));
}

#[tokio::test]
async fn a_different_cluster_is_refused_at_hello_on_both_sides() {
    let ca = ClusterCa::generate("shared-ca").unwrap();
    let (seen_a, seen_b) = (Refusals::default(), Refusals::default());
    let config = |node: &str, cluster: &str, seen: &Refusals| {
        let identity = NodeIdentity::mint(&ca, node).unwrap();
        QuicConfig::new(
            TlsMode::Mutual(identity),
            HelloTemplate::new(cluster, node, "fp"),
        )
        .with_reject_observer(seen.observer())
        .with_tuning(fast_tuning())
    };
    let a = QuicTransport::new(config("a", "blue", &seen_a));
    let b = QuicTransport::new(config("b", "green", &seen_b));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();

    socket_a.send(addr_b, syn("hi")).await.unwrap();
    eventually("both observers", || {
        !seen_a.list().is_empty() && !seen_b.list().is_empty()
    })
    .await;
    let (by_a, by_b) = (seen_a.list()[0].clone(), seen_b.list()[0].clone());
    // Both default policies refuse: each side refuses the other.
    assert!(by_a.by_us && by_b.by_us);
    assert_eq!((by_a.node_id.as_str(), by_a.addr), ("b", addr_b));
    assert_eq!((by_b.node_id.as_str(), by_b.addr), ("a", addr_a));
    for reason in [&by_a.reason, &by_b.reason] {
        assert!(reason.contains("cluster name differs"), "{reason}");
        assert!(
            reason.contains("blue") && reason.contains("green"),
            "{reason}"
        );
    }
    assert_silent(&mut socket_b, QUIET).await;
    assert!(a.counters().snapshot().rejected_peers >= 1);
    assert!(b.counters().snapshot().rejected_peers >= 1);
    assert_eq!(b.counters().snapshot().failed_handshakes, 0);
}

/// `a` accepts anyone; `b` insists on its own fingerprint and refuses `a`,
/// whichever side dials. `a` learns who refused it and why.
async fn refused_side_learns_who_and_why(a_dials: bool) {
    let ca = ClusterCa::generate("fp").unwrap();
    let (seen_a, seen_b) = (Refusals::default(), Refusals::default());
    let a = QuicTransport::new(
        quic_config(&ca, "a")
            .with_policy(|_| Ok(()))
            .with_reject_observer(seen_a.observer()),
    );
    let mut b_config = quic_config(&ca, "b").with_reject_observer(seen_b.observer());
    b_config.hello.fingerprint = "fingerprint-2".to_string();
    let b = QuicTransport::new(b_config.with_policy(|peer| {
        if peer.fingerprint == "fingerprint-2" {
            Ok(())
        } else {
            Err(format!(
                "fingerprint {} is not compatible with fingerprint-2",
                peer.fingerprint
            ))
        }
    }));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();

    if a_dials {
        socket_a.send(addr_b, syn("hi")).await.unwrap();
    } else {
        socket_b.send(addr_a, syn("hi")).await.unwrap();
    }
    eventually("both observers", || {
        !seen_a.list().is_empty() && !seen_b.list().is_empty()
    })
    .await;
    let refused = seen_a.list()[0].clone();
    let refuser = seen_b.list()[0].clone();
    assert!(!refused.by_us && refuser.by_us);
    assert_eq!((refused.node_id.as_str(), refused.addr), ("b", addr_b));
    assert_eq!((refuser.node_id.as_str(), refuser.addr), ("a", addr_a));
    assert_eq!(refused.reason, refuser.reason);
    assert!(
        refused.reason.contains("fingerprint-1 is not compatible"),
        "{}",
        refused.reason
    );
    assert_silent(&mut socket_a, QUIET).await;
    assert_silent(&mut socket_b, QUIET).await;
    assert_eq!(a.counters().snapshot().rejected_peers, 1);
    assert_eq!(b.counters().snapshot().rejected_peers, 1);
}

#[tokio::test]
async fn a_refused_dialer_learns_who_refused_it_and_why() {
    refused_side_learns_who_and_why(true).await;
}

#[tokio::test]
async fn a_refused_acceptor_learns_who_refused_it_and_why() {
    refused_side_learns_who_and_why(false).await;
}

#[tokio::test]
async fn sending_to_a_dead_peer_never_blocks() {
    let ca = ClusterCa::generate("dead").unwrap();
    let a = quic(&ca, "a");
    let b = quic(&ca, "b");
    let (addr_a, addr_b, dead) = (free_addr(), free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        socket_a.send(dead, syn("void")).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "send blocked: {:?}",
        started.elapsed()
    );
    // The queue is bounded: all but a queue's worth were dropped already.
    let dropped = a.counters().snapshot().dropped_sends;
    assert!(
        dropped >= 10_000 - PEER_QUEUE_CAPACITY as u64 - 1,
        "dropped {dropped}"
    );
    // A live peer is unaffected.
    socket_a.send(addr_b, syn("alive")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await, (addr_a, syn("alive")));
}

#[tokio::test]
async fn many_messages_in_a_burst_arrive() {
    let ca = ClusterCa::generate("burst").unwrap();
    let (a, b) = (quic(&ca, "a"), quic(&ca, "b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    // Fewer than the queue holds, so none may be dropped.
    let count = PEER_QUEUE_CAPACITY - 1;
    for i in 0..count {
        socket_a.send(addr_b, syn(&format!("m{i}"))).await.unwrap();
    }
    let mut got: Vec<ChitchatMessage> = Vec::new();
    for _ in 0..count {
        got.push(recv(&mut socket_b).await.1);
    }
    for i in 0..count {
        assert!(got.contains(&syn(&format!("m{i}"))), "m{i} missing");
    }
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again() {
    let ca = ClusterCa::generate("restart").unwrap();
    let (a, b) = (quic(&ca, "a"), quic(&ca, "b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    socket_a.send(addr_b, syn("before")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await, (addr_a, syn("before")));

    drop(socket_b);
    let reopen_by = std::time::Instant::now() + common::DEADLINE;
    let mut socket_b = loop {
        match b.open(addr_b).await {
            Ok(socket) => break socket,
            Err(err) => assert!(std::time::Instant::now() < reopen_by, "{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The old connection is gone (closed by b on shutdown); a redials.
    let mut delivered = false;
    for _ in 0..20 {
        socket_a.send(addr_b, syn("after")).await.unwrap();
        if let Ok(received) =
            tokio::time::timeout(Duration::from_millis(250), socket_b.recv()).await
        {
            assert_eq!(received.unwrap(), (addr_a, syn("after")));
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the restarted peer never got a message");
}

#[tokio::test]
async fn sending_after_the_idle_timeout_redials() {
    let ca = ClusterCa::generate("idle").unwrap();
    let tuning = chorus_net::QuicTuning {
        idle_timeout: Duration::from_millis(200),
        ..fast_tuning()
    };
    let a = quic_tuned(&ca, "a", tuning.clone());
    let b = quic_tuned(&ca, "b", tuning);
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    socket_a.send(addr_b, syn("one")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await, (addr_a, syn("one")));
    // Not a synchronisation: lets the idle timer close the connection.
    tokio::time::sleep(Duration::from_millis(800)).await;
    socket_a.send(addr_b, syn("two")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await, (addr_a, syn("two")));
    assert_eq!(a.counters().snapshot().dropped_sends, 0);
}

/// QUIC sheds load the way a UDP socket buffer does: a message that waited
/// too long, to be sent or to be read by chitchat, is dropped and counted.
#[tokio::test]
async fn messages_that_waited_too_long_are_dropped_on_both_sides() {
    let ca = ClusterCa::generate("stale").unwrap();
    let impatient = chorus_net::QuicTuning {
        max_message_age: Duration::ZERO,
        ..fast_tuning()
    };
    let patient = quic(&ca, "patient");
    let hasty = quic_tuned(&ca, "hasty", impatient);
    let (addr_patient, addr_hasty) = (free_addr(), free_addr());
    let mut socket_patient = patient.open(addr_patient).await.unwrap();
    let mut socket_hasty = hasty.open(addr_hasty).await.unwrap();

    // Received and decoded, then too old by the time chitchat asks for it.
    socket_patient.send(addr_hasty, syn("late")).await.unwrap();
    eventually("the message to be decoded", || {
        hasty.counters().snapshot().messages_received == 1
    })
    .await;
    assert_silent(&mut socket_hasty, QUIET).await;
    assert_eq!(hasty.counters().snapshot().stale_received, 1);
    // Past its age before the send task takes it.
    socket_hasty.send(addr_patient, syn("late")).await.unwrap();
    eventually("the send to be dropped", || {
        hasty.counters().snapshot().dropped_sends == 1
    })
    .await;
    assert_eq!(hasty.counters().snapshot().messages_sent, 0);
    assert_silent(&mut socket_patient, QUIET).await;
}

/// What gossip prefers (chitchat's `Socket::connected_peers`): peers with a connection, dialed
/// or accepted, or a dial in progress; not once the connection is gone.
#[tokio::test]
async fn connected_peers_are_those_a_message_costs_no_handshake() {
    let ca = ClusterCa::generate("connected").unwrap();
    let tuning = chorus_net::QuicTuning {
        connect_timeout: Duration::from_secs(2),
        ..fast_tuning()
    };
    let a = quic_tuned(&ca, "a", tuning);
    let b = quic(&ca, "b");
    let (addr_a, addr_b, silent) = (free_addr(), free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    // Nothing listens on `silent`: its dial counts while it lasts (until the connect timeout).
    let _silent = std::net::UdpSocket::bind(silent).unwrap();
    let connected = |s: &dyn chitchat::transport::Socket| s.connected_peers().unwrap();
    assert!(connected(socket_a.as_ref()).is_empty());

    socket_a.send(addr_b, syn("hello")).await.unwrap();
    assert_eq!(recv(&mut socket_b).await.0, addr_a);
    assert!(connected(socket_a.as_ref()).contains(&addr_b));
    assert!(
        connected(socket_b.as_ref()).contains(&addr_a),
        "the accepting side"
    );

    socket_a.send(silent, syn("void")).await.unwrap();
    eventually("a dial in progress counts", || {
        connected(socket_a.as_ref()).contains(&silent)
    })
    .await;
    eventually("a failed dial does not", || {
        !connected(socket_a.as_ref()).contains(&silent)
    })
    .await;

    drop(socket_b);
    eventually("a closed connection does not", || {
        !connected(socket_a.as_ref()).contains(&addr_b)
    })
    .await;
}

/// `b` holds the node id "a" at `held`; a second "a" from elsewhere is
/// refused as a node-id conflict, whichever side dials, and learns it is one.
async fn a_claim_on_a_held_node_id_is_refused_as_a_conflict(claimant_dials: bool) {
    let ca = ClusterCa::generate("claims").unwrap();
    let (seen_a, seen_b) = (Refusals::default(), Refusals::default());
    let held: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let a = QuicTransport::new(quic_config(&ca, "a").with_reject_observer(seen_a.observer()));
    let b = QuicTransport::new(
        quic_config(&ca, "b")
            .with_reject_observer(seen_b.observer())
            .with_claim_check(move |peer, at| {
                if peer.node_id == "a" && at != held {
                    Err(format!("node id \"a\" is held by a live agent at {held}"))
                } else {
                    Ok(())
                }
            }),
    );
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    if claimant_dials {
        socket_a.send(addr_b, syn("hi")).await.unwrap();
    } else {
        socket_b.send(addr_a, syn("hi")).await.unwrap();
    }
    eventually("both observers", || {
        !seen_a.list().is_empty() && !seen_b.list().is_empty()
    })
    .await;
    let refused = seen_a.list()[0].clone();
    let refuser = seen_b.list()[0].clone();
    assert_eq!(refused.kind, RefusalKind::NodeIdConflict);
    assert_eq!(refuser.kind, RefusalKind::NodeIdConflict);
    assert!(!refused.by_us && refuser.by_us);
    assert_eq!((refuser.node_id.as_str(), refuser.addr), ("a", addr_a));
    assert!(refused.reason.contains("127.0.0.1:9"), "{}", refused.reason);
    assert_silent(&mut socket_a, QUIET).await;
    assert_silent(&mut socket_b, QUIET).await;
}

#[tokio::test]
async fn a_dialer_claiming_a_held_node_id_is_refused_as_a_conflict() {
    a_claim_on_a_held_node_id_is_refused_as_a_conflict(true).await;
}

#[tokio::test]
async fn an_acceptor_claiming_a_held_node_id_is_refused_as_a_conflict() {
    a_claim_on_a_held_node_id_is_refused_as_a_conflict(false).await;
}
