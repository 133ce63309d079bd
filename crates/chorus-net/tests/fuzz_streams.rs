//! Fuzzing what a peer's streams and datagrams are taken for: arbitrary
//! bodies, with or without the Raft marker, sent by a key holder over QUIC
//! and by anyone over UDP, are each either delivered as one Raft message
//! (the marker, then at least one byte), delivered as gossip (what the wire
//! decoder accepts) or counted as garbage, and never bring the node down.
//!
//! Cases per property: `CHORUS_FUZZ_CASES` (default [`DEFAULT_CASES`]).

mod common;

use std::net::SocketAddr;

use chitchat::transport::{Socket, Transport};
use chorus_net::wire::{self, RAFT_MARKER};
use chorus_net::{
    ClusterCa, CountingUdpTransport, NetCounters, NetStats, PeerChannel, PeerMessage, QuicTransport,
};
use common::raw::member;
use common::{eventually, free_addr, quic_config, syn, DEADLINE};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

/// Cases per property when `CHORUS_FUZZ_CASES` is not set.
const DEFAULT_CASES: u32 = 256;

fn cases() -> u32 {
    std::env::var("CHORUS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Bodies: arbitrary bytes, the same after the marker, and valid gossip
/// with bytes changed.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let gossip = wire::encode(&syn("fuzz")).unwrap();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(any::<u8>(), 0..2048).prop_map(|tail| {
            let mut body = vec![RAFT_MARKER];
            body.extend(tail);
            body
        }),
        (any::<usize>(), any::<u8>()).prop_map(move |(at, byte)| {
            let mut body = gossip.clone();
            let at = at % body.len();
            body[at] = byte;
            body
        }),
    ]
}

/// What a body must be taken for.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Raft(Vec<u8>),
    Gossip,
    Garbage,
}

fn fate(body: &[u8]) -> Fate {
    match body.split_first() {
        Some((&RAFT_MARKER, [])) | None => Fate::Garbage,
        Some((&RAFT_MARKER, message)) => Fate::Raft(message.to_vec()),
        Some(_) if wire::decode(body).is_ok() => Fate::Gossip,
        Some(_) => Fate::Garbage,
    }
}

fn outcomes(stats: &NetStats) -> (u64, u64, u64) {
    (
        stats.raft_messages_received,
        stats.messages_received,
        stats.garbage_received,
    )
}

/// Waits until one body more was handled, and checks it was handled as
/// `fate` says.
async fn check(
    counters: &NetCounters,
    before: (u64, u64, u64),
    body: &[u8],
    messages: &mut Receiver<PeerMessage>,
) {
    eventually("the body handled", || {
        outcomes(&counters.snapshot()) != before
    })
    .await;
    let (raft, gossip, garbage) = before;
    let expected = match fate(body) {
        Fate::Raft(message) => {
            let received = timeout(DEADLINE, messages.recv()).await.unwrap().unwrap();
            assert_eq!(received.bytes, message);
            (raft + 1, gossip, garbage)
        }
        Fate::Gossip => (raft, gossip + 1, garbage),
        Fate::Garbage => (raft, gossip, garbage + 1),
    };
    assert_eq!(outcomes(&counters.snapshot()), expected, "{body:02x?}");
}

/// Reads gossip as chitchat would, so that the inbox never fills.
fn drain(mut socket: Box<dyn Socket>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = socket.recv().await;
        }
    })
}

#[test]
fn fuzz_peer_streams_are_raft_gossip_or_garbage() {
    let runtime = Runtime::new().unwrap();
    let ca = ClusterCa::generate("fuzz-streams").unwrap();
    let counters = NetCounters::new();
    let (channel, messages) = PeerChannel::new(counters.clone());
    // The runner's closure is `Fn`: the receiver is borrowed through a lock.
    let messages = tokio::sync::Mutex::new(messages);
    let config = quic_config(&ca, "target")
        .with_counters(counters.clone())
        .with_peer_channel(channel);
    let transport = QuicTransport::new(config);
    let addr = free_addr();
    let (reader, _endpoint, conn) = runtime.block_on(async {
        let socket = transport.open(addr).await.unwrap();
        let (endpoint, conn) = member(&ca, "fuzzer", addr).await;
        (drain(socket), endpoint, conn)
    });
    let mut runner = TestRunner::new(Config::with_cases(cases()));
    runner
        .run(&body(), |body| {
            runtime.block_on(async {
                let before = outcomes(&counters.snapshot());
                let mut stream = conn.open_uni().await.unwrap();
                stream.write_all(&body).await.unwrap();
                stream.finish().unwrap();
                check(&counters, before, &body, &mut *messages.lock().await).await;
            });
            Ok(())
        })
        .unwrap();
    reader.abort();
}

#[test]
fn fuzz_peer_datagrams_are_raft_gossip_or_garbage() {
    let runtime = Runtime::new().unwrap();
    let counters = NetCounters::new();
    let (channel, messages) = PeerChannel::new(counters.clone());
    // The runner's closure is `Fn`: the receiver is borrowed through a lock.
    let messages = tokio::sync::Mutex::new(messages);
    let transport = CountingUdpTransport::new(counters.clone()).with_peer_channel(channel);
    let addr: SocketAddr = free_addr();
    let (reader, raw) = runtime.block_on(async {
        let socket = transport.open(addr).await.unwrap();
        let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (drain(socket), raw)
    });
    let mut runner = TestRunner::new(Config::with_cases(cases()));
    runner
        .run(&body(), |body| {
            runtime.block_on(async {
                let before = outcomes(&counters.snapshot());
                raw.send_to(&body, addr).await.unwrap();
                check(&counters, before, &body, &mut *messages.lock().await).await;
            });
            Ok(())
        })
        .unwrap();
    reader.abort();
}
