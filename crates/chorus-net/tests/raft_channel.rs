//! The peer channel for Raft messages, over real sockets on 127.0.0.1: QUIC
//! (identity, size limits, isolation from gossip, socket reopen, garbage),
//! faults (a partition cuts Raft too) and UDP (round trip, size cap, garbage).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::Transport;
use chorus_net::quic::{QuicTuning, RAFT_QUEUE_CAPACITY};
use chorus_net::wire::RAFT_MARKER;
use chorus_net::{
    ClusterCa, CountingUdpTransport, FaultController, FaultyTransport, NetCounters, NetStats,
    PeerChannel, PeerMessage, PeerTransport, QuicTransport, MAX_RAFT_MESSAGE_SIZE, MAX_UDP_PAYLOAD,
};
use common::raw::member;
use common::{deliver, eventually, fast_tuning, free_addr, quic_config, reopen, DEADLINE};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

const QUIET: Duration = Duration::from_millis(300);

/// A QUIC transport for `node` with a peer channel, and its receiver.
fn quic_peer(ca: &ClusterCa, node: &str) -> (QuicTransport, Receiver<PeerMessage>) {
    quic_peer_tuned(ca, node, fast_tuning())
}

fn quic_peer_tuned(
    ca: &ClusterCa,
    node: &str,
    tuning: QuicTuning,
) -> (QuicTransport, Receiver<PeerMessage>) {
    let counters = NetCounters::new();
    let (channel, messages) = PeerChannel::new(counters.clone());
    let config = quic_config(ca, node)
        .with_tuning(tuning)
        .with_counters(counters)
        .with_peer_channel(channel);
    (QuicTransport::new(config), messages)
}

/// A UDP transport with a peer channel, and its receiver.
fn udp_peer() -> (CountingUdpTransport, Receiver<PeerMessage>) {
    let counters = NetCounters::new();
    let (channel, messages) = PeerChannel::new(counters.clone());
    let transport = CountingUdpTransport::new(counters).with_peer_channel(channel);
    (transport, messages)
}

fn channel(transport: &impl PeerTransport) -> PeerChannel {
    transport.peer_channel().expect("a peer channel").clone()
}

/// The next message, failing the test after the deadline.
async fn next(messages: &mut Receiver<PeerMessage>) -> PeerMessage {
    timeout(DEADLINE, messages.recv())
        .await
        .expect("no Raft message before the deadline")
        .expect("the channel lives as long as the transport")
}

/// Asserts nothing arrives within `quiet` (a negative check, not a sync).
async fn assert_no_message(messages: &mut Receiver<PeerMessage>, quiet: Duration) {
    if let Ok(received) = timeout(quiet, messages.recv()).await {
        panic!("unexpected Raft message: {received:?}");
    }
}

/// Sends `bytes` until a message arrives: the first may go while the
/// connection is being set up and be dropped (Raft resends the same way).
async fn send_until_received(
    from: &PeerChannel,
    to: SocketAddr,
    bytes: &[u8],
    messages: &mut Receiver<PeerMessage>,
) -> PeerMessage {
    for _ in 0..40 {
        from.send(to, bytes.to_vec());
        if let Ok(Some(message)) = timeout(Duration::from_millis(250), messages.recv()).await {
            return message;
        }
    }
    panic!("the Raft message never arrived");
}

fn stats(transport: &QuicTransport) -> NetStats {
    transport.counters().snapshot()
}

/// A payload whose bytes are not all alike.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_message_arrives_with_the_senders_node_id_and_gossip_address() {
    let ca = ClusterCa::generate("raft").unwrap();
    let (a, _from_b) = quic_peer(&ca, "a");
    let (b, mut from_a) = quic_peer(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _socket_a = a.open(addr_a).await.unwrap();
    let _socket_b = b.open(addr_b).await.unwrap();

    let message = send_until_received(&channel(&a), addr_b, b"vote for me", &mut from_a).await;
    assert_eq!(message.from_node.as_deref(), Some("a"));
    assert_eq!(message.from_addr, addr_a);
    assert_eq!(message.bytes, b"vote for me");
    let (sent, received) = (stats(&a), stats(&b));
    assert!(sent.raft_messages_sent >= 1);
    assert_eq!(received.raft_messages_received, 1);
    assert_eq!(received.raft_bytes_received, 11);
    // Raft is not gossip: chitchat saw nothing.
    assert_eq!(received.messages_received, 0);
    assert_eq!(received.garbage_received, 0);
}

#[tokio::test]
async fn a_two_mib_message_arrives_whole() {
    let ca = ClusterCa::generate("raft-big").unwrap();
    let (a, _from_b) = quic_peer(&ca, "a");
    let (b, mut from_a) = quic_peer(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _socket_a = a.open(addr_a).await.unwrap();
    let _socket_b = b.open(addr_b).await.unwrap();

    let snapshot = payload(2 * 1024 * 1024);
    let message = send_until_received(&channel(&a), addr_b, &snapshot, &mut from_a).await;
    assert_eq!(message.bytes.len(), snapshot.len());
    assert!(message.bytes == snapshot);
    assert!(
        stats(&b).buffered_bytes >= snapshot.len() as u64,
        "held while unread"
    );
    // Copies sent while the first was under way go with the receiver.
    drop(message);
    drop(from_a);
    eventually("the budget given back", || stats(&b).buffered_bytes == 0).await;
}

#[tokio::test]
async fn an_oversized_message_is_dropped_by_the_sender_and_stopped_by_the_receiver() {
    let ca = ClusterCa::generate("raft-over").unwrap();
    let (a, _from_b) = quic_peer(&ca, "a");
    let (b, mut from_a) = quic_peer(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _socket_a = a.open(addr_a).await.unwrap();
    let _socket_b = b.open(addr_b).await.unwrap();

    // Ours never leaves.
    channel(&a).send(addr_b, vec![0; MAX_RAFT_MESSAGE_SIZE + 1]);
    assert_eq!(stats(&a).raft_dropped, 1);
    assert_eq!(stats(&a).raft_messages_sent, 0);

    // A key holder's is stopped at the limit and counted.
    let (_endpoint, conn) = member(&ca, "rogue", addr_b).await;
    let mut stream = conn.open_uni().await.unwrap();
    let chunk = vec![7u8; 1024 * 1024];
    let _ = stream.write_all(&[RAFT_MARKER]).await;
    for _ in 0..=MAX_RAFT_MESSAGE_SIZE / chunk.len() {
        if stream.write_all(&chunk).await.is_err() {
            break; // stopped
        }
    }
    let _ = stream.finish();
    eventually("the oversized stream counted", || {
        stats(&b).garbage_received == 1
    })
    .await;
    assert!(stats(&b).raft_bytes_received >= MAX_RAFT_MESSAGE_SIZE as u64);
    assert_no_message(&mut from_a, QUIET).await;
    eventually("its buffer freed", || stats(&b).buffered_bytes == 0).await;
}

#[tokio::test]
async fn a_raft_flood_does_not_hold_gossip_back() {
    let ca = ClusterCa::generate("raft-flood").unwrap();
    let (a, _from_b) = quic_peer(&ca, "a");
    let (b, mut from_a) = quic_peer(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    deliver(&mut socket_a, addr_a, &mut socket_b, addr_b, "warm-up").await;

    // Far more than the Raft queue holds, and bigger than gossip messages;
    // nobody reads them on the other side, so they also fill its inbox.
    let raft_a = channel(&a);
    let block = payload(256 * 1024);
    for _ in 0..4 * RAFT_QUEUE_CAPACITY {
        raft_a.send(addr_b, block.clone());
    }
    assert!(stats(&a).raft_dropped > 0, "the Raft queue is bounded");
    for round in 0..5 {
        deliver(
            &mut socket_a,
            addr_a,
            &mut socket_b,
            addr_b,
            &format!("gossip-{round}"),
        )
        .await;
    }
    // And Raft still got through.
    let message = next(&mut from_a).await;
    assert_eq!(message.bytes.len(), block.len());
}

#[tokio::test]
async fn the_channel_follows_a_reopened_socket() {
    let ca = ClusterCa::generate("raft-reopen").unwrap();
    let (a, _from_b) = quic_peer(&ca, "a");
    let (b, mut from_a) = quic_peer(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let raft_a = channel(&a);
    assert!(!raft_a.is_attached());
    raft_a.send(addr_b, b"too early".to_vec());
    assert_eq!(
        stats(&a).raft_dropped,
        1,
        "no socket yet: dropped and counted"
    );

    let socket_a = a.open(addr_a).await.unwrap();
    let _socket_b = b.open(addr_b).await.unwrap();
    assert!(raft_a.is_attached());
    send_until_received(&raft_a, addr_b, b"first", &mut from_a).await;

    drop(socket_a);
    assert!(!raft_a.is_attached());
    let dropped = stats(&a).raft_dropped;
    raft_a.send(addr_b, b"while closed".to_vec());
    assert_eq!(stats(&a).raft_dropped, dropped + 1);

    let _socket_a = reopen(&a, addr_a).await;
    assert!(raft_a.is_attached());
    let message = send_until_received(&raft_a, addr_b, b"after reopen", &mut from_a).await;
    assert_eq!(message.bytes, b"after reopen");
    assert_eq!(message.from_addr, addr_a);
}

#[tokio::test]
async fn a_partition_cuts_raft_as_well_as_gossip() {
    let ca = ClusterCa::generate("raft-faults").unwrap();
    let controller = FaultController::new(3);
    let (a, _from_b) = quic_peer(&ca, "a");
    let a = FaultyTransport::new(a, controller.clone());
    let (b, mut from_a) = quic_peer(&ca, "b");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _socket_a = a.open(addr_a).await.unwrap();
    let _socket_b = b.open(addr_b).await.unwrap();
    let raft_a = channel(&a);
    send_until_received(&raft_a, addr_b, b"before", &mut from_a).await;

    controller.partition([("left", vec![addr_a]), ("right", vec![addr_b])]);
    let cut = controller.stats().dropped_partition;
    raft_a.send(addr_b, b"across the partition".to_vec());
    assert_eq!(controller.stats().dropped_partition, cut + 1);
    assert_no_message(&mut from_a, QUIET).await;

    controller.heal();
    let message = send_until_received(&raft_a, addr_b, b"healed", &mut from_a).await;
    assert_eq!(message.bytes, b"healed");

    // Delays apply too: the message comes, later.
    controller.set_delay(Duration::from_millis(100));
    raft_a.send(addr_b, b"delayed".to_vec());
    assert_eq!(next(&mut from_a).await.bytes, b"delayed");
    assert!(controller.stats().delayed >= 1);
}

#[tokio::test]
async fn garbage_streams_are_counted_and_never_delivered() {
    let ca = ClusterCa::generate("raft-garbage").unwrap();
    let (b, mut from_rogue) = quic_peer(&ca, "b");
    let addr_b = free_addr();
    let _socket_b = b.open(addr_b).await.unwrap();
    let (endpoint, conn) = member(&ca, "rogue", addr_b).await;

    // Empty, a marker alone, bytes no gossip message starts with.
    for body in [&[][..], &[RAFT_MARKER][..], &[0x00, 0xff, 0x13][..]] {
        let mut stream = conn.open_uni().await.unwrap();
        stream.write_all(body).await.unwrap();
        stream.finish().unwrap();
    }
    eventually("three garbage streams", || stats(&b).garbage_received == 3).await;
    // Opaque bytes after the marker are the engine's to judge: delivered.
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&[RAFT_MARKER, 1, 2, 3]).await.unwrap();
    stream.finish().unwrap();
    let message = next(&mut from_rogue).await;
    assert_eq!(message.bytes, [1, 2, 3]);
    assert_eq!(message.from_node.as_deref(), Some("rogue"));
    assert_eq!(message.from_addr, endpoint.local_addr().unwrap());
    assert_eq!(stats(&b).garbage_received, 3);
}

#[tokio::test]
async fn without_a_channel_raft_is_dropped_and_counted() {
    let ca = ClusterCa::generate("raft-none").unwrap();
    let b = common::quic(&ca, "b");
    assert!(b.peer_channel().is_none());
    let addr_b = free_addr();
    let _socket_b = b.open(addr_b).await.unwrap();
    let (_endpoint, conn) = member(&ca, "a", addr_b).await;
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&[RAFT_MARKER, 9]).await.unwrap();
    stream.finish().unwrap();
    eventually("dropped", || b.counters().snapshot().raft_dropped == 1).await;
}

#[tokio::test]
async fn udp_carries_raft_beside_gossip_unauthenticated() {
    let (a, _from_b) = udp_peer();
    let (b, mut from_a) = udp_peer();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    let raft_a = channel(&a);

    raft_a.send(addr_b, b"append".to_vec());
    // Gossip on the same socket still reads as gossip.
    socket_a.send(addr_b, common::syn("udp")).await.unwrap();
    assert_eq!(
        common::recv(&mut socket_b).await,
        (addr_a, common::syn("udp"))
    );
    let message = next(&mut from_a).await;
    assert_eq!(message.from_node, None);
    assert_eq!(message.from_addr, addr_a);
    assert_eq!(message.bytes, b"append");
    // From here on, chitchat's recv only has to run.
    let reading = tokio::spawn(async move {
        let _ = socket_b.recv().await;
        socket_b
    });

    // The largest that fits goes; one byte more is dropped and counted.
    let fits = payload(MAX_UDP_PAYLOAD - 1);
    raft_a.send(addr_b, fits.clone());
    assert_eq!(next(&mut from_a).await.bytes.len(), fits.len());
    raft_a.send(addr_b, payload(MAX_UDP_PAYLOAD));
    let sent = a.counters().snapshot();
    assert_eq!(sent.raft_dropped, 1);
    assert_eq!(sent.raft_messages_sent, 2);
    assert_eq!(sent.raft_bytes_sent, 6 + fits.len() as u64);
    assert_eq!(b.counters().snapshot().messages_received, 1);

    // A closed socket takes nothing.
    drop(socket_a);
    raft_a.send(addr_b, b"closed".to_vec());
    assert_eq!(a.counters().snapshot().raft_dropped, 2);
    reading.abort();
}

#[tokio::test]
async fn udp_garbage_is_counted_and_never_panics() {
    let (b, mut from_any) = udp_peer();
    let addr_b = free_addr();
    let mut socket_b = b.open(addr_b).await.unwrap();
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for datagram in [&[][..], &[RAFT_MARKER][..], &[0x00, 0xff][..]] {
        raw.send_to(datagram, addr_b).await.unwrap();
    }
    raw.send_to(&[RAFT_MARKER, 4, 5], addr_b).await.unwrap();
    // chitchat's recv drives the socket; nothing it reads is gossip.
    let reading = tokio::spawn(async move {
        let _ = socket_b.recv().await;
    });
    let message = next(&mut from_any).await;
    assert_eq!(message.bytes, [4, 5]);
    assert_eq!(message.from_addr, raw.local_addr().unwrap());
    eventually("three garbage datagrams", || {
        b.counters().snapshot().garbage_received == 3
    })
    .await;
    reading.abort();
}

#[tokio::test]
async fn a_partition_cuts_raft_over_udp() {
    let controller = FaultController::new(5);
    let (a, _from_b) = udp_peer();
    let a = FaultyTransport::new(a, controller.clone());
    let (b, mut from_a) = udp_peer();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _socket_a = a.open(addr_a).await.unwrap();
    let mut socket_b = b.open(addr_b).await.unwrap();
    let reading = tokio::spawn(async move {
        let _ = socket_b.recv().await;
    });
    controller.isolate(addr_b);
    channel(&a).send(addr_b, b"cut".to_vec());
    assert_eq!(controller.stats().dropped_partition, 1);
    controller.rejoin(addr_b);
    channel(&a).send(addr_b, b"through".to_vec());
    assert_eq!(next(&mut from_a).await.bytes, b"through");
    reading.abort();
}
