//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Socket;
use chitchat::{ChitchatId, ChitchatMessage, Deserializable, Serializable};
use chorus_net::{
    ClusterCa, HelloTemplate, NodeIdentity, QuicConfig, QuicTransport, QuicTuning, RejectedPeer,
    TlsMode,
};
use parking_lot::Mutex;
use tokio::time::{timeout, Instant};

/// How long any wait on a condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A 127.0.0.1 UDP address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// A small valid message.
pub fn syn(cluster: &str) -> ChitchatMessage {
    ChitchatMessage::Syn {
        cluster_id: cluster.to_string(),
        digest: Default::default(),
    }
}

/// chitchat's encoding of a `Syn` whose digest lists `nodes` nodes (about 70
/// bytes each): the public API cannot build a large digest, but it can decode
/// one. Counters are scrambled so that the wire form stays large too (3,000
/// nodes: about 130 KB).
pub fn big_syn_bytes(nodes: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&45_139u16.to_le_bytes()); // chitchat magic number
    buf.push(0); // protocol version
    buf.push(0); // Syn
    nodes.serialize(&mut buf);
    let addr: SocketAddr = ([10, 0, 0, 1], 7000).into();
    for i in 0..nodes {
        let scrambled = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let id = ChitchatId::new(format!("node-{i:06}-padding-padding"), scrambled, addr);
        id.serialize(&mut buf);
        for value in [
            scrambled,
            scrambled.rotate_left(17),
            scrambled.rotate_left(31),
        ] {
            value.serialize(&mut buf); // heartbeat, last gc version, max version
        }
    }
    "big-cluster".to_string().serialize(&mut buf);
    buf
}

/// The wire bytes of `message`.
pub fn wire(message: &ChitchatMessage) -> Vec<u8> {
    chorus_net::wire::encode(message).unwrap()
}

/// The message in chitchat's own encoding `bytes`.
pub fn decode(bytes: &[u8]) -> ChitchatMessage {
    let mut cursor = bytes;
    let message = ChitchatMessage::deserialize(&mut cursor).unwrap();
    assert!(cursor.is_empty());
    message
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, DEADLINE, cond).await
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub async fn eventually_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `recv` with the test deadline.
pub async fn recv(socket: &mut Box<dyn Socket>) -> (SocketAddr, ChitchatMessage) {
    timeout(DEADLINE, socket.recv())
        .await
        .expect("no message before the deadline")
        .expect("recv must never fail")
}

/// Asserts nothing arrives within `quiet` (a negative check, not a sync).
pub async fn assert_silent(socket: &mut Box<dyn Socket>, quiet: Duration) {
    if let Ok(received) = timeout(quiet, socket.recv()).await {
        panic!("unexpected message: {received:?}");
    }
}

/// Records every refusal reported to an observer.
#[derive(Clone, Default)]
pub struct Refusals(pub Arc<Mutex<Vec<RejectedPeer>>>);

impl Refusals {
    pub fn observer(&self) -> impl Fn(RejectedPeer) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |rejected| seen.lock().push(rejected)
    }

    pub fn list(&self) -> Vec<RejectedPeer> {
        self.0.lock().clone()
    }
}

/// Short backoffs so tests that retry do not wait for production values.
pub fn fast_tuning() -> QuicTuning {
    QuicTuning {
        dial_backoff_min: Duration::from_millis(50),
        dial_backoff_max: Duration::from_millis(200),
        reject_backoff: Duration::from_millis(200),
        ..QuicTuning::default()
    }
}

/// A mutual-TLS QUIC config for `node` in the CA's cluster.
pub fn quic_config(ca: &ClusterCa, node: &str) -> QuicConfig {
    let identity = NodeIdentity::mint(ca, node).unwrap();
    QuicConfig::new(
        TlsMode::Mutual(identity),
        HelloTemplate::new(ca.cluster_name(), node, "fingerprint-1"),
    )
    .with_tuning(fast_tuning())
}

pub fn quic(ca: &ClusterCa, node: &str) -> QuicTransport {
    quic_tuned(ca, node, fast_tuning())
}

/// [`quic`] with other timeouts.
pub fn quic_tuned(ca: &ClusterCa, node: &str, tuning: QuicTuning) -> QuicTransport {
    QuicTransport::new(quic_config(ca, node).with_tuning(tuning))
}

pub mod raw;
pub mod stall;

/// Reopens `transport` on `addr` after its previous socket there was
/// dropped: quinn releases the port shortly after, not at once.
pub async fn reopen(
    transport: &QuicTransport,
    addr: SocketAddr,
) -> Box<dyn chitchat::transport::Socket> {
    use chitchat::transport::Transport;
    let reopen_by = Instant::now() + DEADLINE;
    loop {
        match transport.open(addr).await {
            Ok(socket) => return socket,
            Err(err) => assert!(Instant::now() < reopen_by, "{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `tag` from `from` (at `from_addr`) to `to` until it arrives, at most
/// 40 tries of 250 ms: the first sends may go while a connection is refused.
pub async fn deliver(
    from: &mut Box<dyn Socket>,
    from_addr: SocketAddr,
    to: &mut Box<dyn Socket>,
    to_addr: SocketAddr,
    tag: &str,
) {
    for _ in 0..40 {
        from.send(to_addr, syn(tag)).await.unwrap();
        if let Ok(received) = timeout(Duration::from_millis(250), to.recv()).await {
            assert_eq!(received.unwrap(), (from_addr, syn(tag)));
            return;
        }
    }
    panic!("{tag:?} never arrived");
}

/// The resident set size of this process, from /proc/self/status.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}
