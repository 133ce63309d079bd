//! chitchat's own transport behaviour suite (src/transport/mod.rs tests),
//! run against every chorus transport, plus byte counting.

mod common;

use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::Serializable;
use chorus_net::{ClusterCa, CountingUdpTransport, FaultController, FaultyTransport, NetCounters};
use common::{eventually, free_addr, quic, recv, syn, wire, DEADLINE};
use tokio::time::Instant;

async fn cannot_open_twice(transport: &dyn Transport) {
    let addr = free_addr();
    let _socket = transport.open(addr).await.unwrap();
    assert!(transport.open(addr).await.is_err());
}

/// The port comes back once the socket is dropped (for QUIC, once quinn's
/// driver task has wound down, hence the retry until the deadline).
async fn socket_released_on_drop(transport: &dyn Transport) {
    let addr = free_addr();
    let socket = transport.open(addr).await.unwrap();
    drop(socket);
    let end = Instant::now() + DEADLINE;
    loop {
        match transport.open(addr).await {
            Ok(_socket) => return,
            Err(err) => {
                assert!(Instant::now() < end, "port never released: {err:#}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn recv_waits_for_message(transport: &dyn Transport) {
    let addr1 = free_addr();
    let addr2 = free_addr();
    let mut socket1 = transport.open(addr1).await.unwrap();
    let mut socket2 = transport.open(addr2).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), socket2.recv())
            .await
            .is_err(),
        "recv returned without a message"
    );
    let receiving = tokio::spawn(async move { recv(&mut socket2).await });
    socket1.send(addr2, syn("cluster")).await.unwrap();
    let (from, message) = receiving.await.unwrap();
    assert_eq!(from, addr1);
    assert_eq!(message, syn("cluster"));
}

async fn sending_to_unbound_addr_is_ok(transport: &dyn Transport) {
    let mut socket = transport.open(free_addr()).await.unwrap();
    socket.send(free_addr(), syn("cluster")).await.unwrap();
}

async fn suite(transport: &dyn Transport) {
    cannot_open_twice(transport).await;
    socket_released_on_drop(transport).await;
    recv_waits_for_message(transport).await;
    sending_to_unbound_addr_is_ok(transport).await;
}

/// One message each way between two sockets sharing `counters`.
async fn byte_counts(transport: &dyn Transport, counters: &NetCounters) {
    let before = counters.snapshot();
    let (addr1, addr2) = (free_addr(), free_addr());
    let mut socket1 = transport.open(addr1).await.unwrap();
    let mut socket2 = transport.open(addr2).await.unwrap();
    let len = wire(&syn("cluster")).len() as u64;
    socket1.send(addr2, syn("cluster")).await.unwrap();
    assert_eq!(recv(&mut socket2).await.0, addr1);
    socket2.send(addr1, syn("cluster")).await.unwrap();
    assert_eq!(recv(&mut socket1).await.0, addr2);
    eventually("send counters", || {
        counters.snapshot().messages_sent == before.messages_sent + 2
    })
    .await;
    let after = counters.snapshot();
    assert_eq!(after.bytes_sent - before.bytes_sent, 2 * len);
    assert_eq!(after.bytes_received - before.bytes_received, 2 * len);
    assert_eq!(after.messages_received - before.messages_received, 2);
    assert_eq!(after.garbage_received, before.garbage_received);
}

#[tokio::test]
async fn counting_udp_transport_passes_the_suite() {
    let transport = CountingUdpTransport::default();
    suite(&transport).await;
    byte_counts(&transport, transport.counters()).await;
}

#[tokio::test]
async fn quic_transport_passes_the_suite() {
    let ca = ClusterCa::generate("suite").unwrap();
    let transport = quic(&ca, "node-1");
    suite(&transport).await;
    byte_counts(&transport, transport.counters()).await;
}

#[tokio::test]
async fn faulty_in_memory_transport_passes_the_suite() {
    suite(&FaultyTransport::in_memory(FaultController::new(1))).await;
}

#[tokio::test]
async fn counting_udp_transport_skips_and_counts_garbage() {
    let transport = CountingUdpTransport::default();
    let addr = free_addr();
    let mut socket = transport.open(addr).await.unwrap();
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(b"junk", addr).await.unwrap();
    let mut truncated = wire(&syn("cluster"));
    truncated.truncate(truncated.len() - 2);
    raw.send_to(&truncated, addr).await.unwrap();
    raw.send_to(&[], addr).await.unwrap();
    // A peer without the compact wire format (an older chorus, plain chitchat).
    raw.send_to(&syn("cluster").serialize_to_vec(), addr)
        .await
        .unwrap();
    raw.send_to(&wire(&syn("cluster")), addr).await.unwrap();
    let (from, message) = recv(&mut socket).await;
    assert_eq!(from, raw.local_addr().unwrap());
    assert_eq!(message, syn("cluster"));
    let stats = transport.counters().snapshot();
    assert_eq!(stats.garbage_received, 4);
    assert_eq!(stats.messages_received, 1);
}
