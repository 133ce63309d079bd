//! QuicTransport against hostile input: UDP garbage, bad hellos, stream
//! floods, oversized streams. After each, a normal peer must still get
//! through and nothing bad may have been delivered.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::{Socket, Transport};
use chitchat::Serializable;
use chorus_net::quic::{
    CLOSE_BUSY, CLOSE_HELLO_INVALID, CLOSE_IDENTITY_MISMATCH, CLOSE_SUPERSEDED,
    MAX_CONCURRENT_UNI_STREAMS, MAX_HELLO_SIZE, MAX_MESSAGE_SIZE, STOP_TOO_LARGE,
};
use chorus_net::tls::TLS_SERVER_NAME;
use chorus_net::{
    ClusterCa, Hello, HelloTemplate, NodeIdentity, QuicConfig, QuicTransport, TlsMode,
};
use common::{
    assert_silent, eventually, free_addr, quic, raw, recv, syn, wire, Refusals, DEADLINE,
};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, ConnectionError, Endpoint, VarInt, WriteError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUIET: Duration = Duration::from_millis(300);

/// A target node and a well-behaved peer.
struct Scene {
    ca: ClusterCa,
    target: QuicTransport,
    target_addr: SocketAddr,
    target_socket: Box<dyn Socket>,
    friend_addr: SocketAddr,
    friend_socket: Box<dyn Socket>,
}

impl Scene {
    async fn new(name: &str) -> Scene {
        let ca = ClusterCa::generate(name).unwrap();
        let target = quic(&ca, "target");
        let (target_addr, friend_addr) = (free_addr(), free_addr());
        let target_socket = target.open(target_addr).await.unwrap();
        let friend_socket = quic(&ca, "friend").open(friend_addr).await.unwrap();
        Scene {
            ca,
            target,
            target_addr,
            target_socket,
            friend_addr,
            friend_socket,
        }
    }

    /// The friend's message arrives, and nothing else does.
    async fn friend_gets_through(&mut self, tag: &str) {
        self.friend_socket
            .send(self.target_addr, syn(tag))
            .await
            .unwrap();
        let received = recv(&mut self.target_socket).await;
        assert_eq!(received, (self.friend_addr, syn(tag)));
        assert_silent(&mut self.target_socket, QUIET).await;
    }
}

use common::raw::{client as raw_client, member as raw_member};

#[tokio::test]
async fn udp_garbage_and_truncated_packets_are_harmless() {
    let mut scene = Scene::new("garbage").await;
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = StdRng::seed_from_u64(7);

    // Random datagrams, some dressed up as QUIC v1 long-header packets.
    for i in 0..500 {
        let len = rng.gen_range(0..1500);
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 2 == 0 && len >= 5 {
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        raw.send_to(&datagram, scene.target_addr).await.unwrap();
    }

    // A real client Initial, captured through a fake server, replayed
    // truncated and corrupted.
    let fake_server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = raw_client(&scene.ca, "replayer");
    let connecting = client
        .connect(fake_server.local_addr().unwrap(), TLS_SERVER_NAME)
        .unwrap();
    let mut initial = vec![0u8; 2048];
    let (len, _) = tokio::time::timeout(DEADLINE, fake_server.recv_from(&mut initial))
        .await
        .unwrap()
        .unwrap();
    initial.truncate(len);
    drop(connecting);
    for cut in [1, 2, 5, 6, 7, 20, 50, 100, 600, len / 2, len - 1] {
        raw.send_to(&initial[..cut], scene.target_addr)
            .await
            .unwrap();
    }
    for _ in 0..50 {
        let mut corrupted = initial.clone();
        let at = rng.gen_range(0..len);
        corrupted[at] ^= 1 << rng.gen_range(0..8);
        raw.send_to(&corrupted, scene.target_addr).await.unwrap();
    }
    // And the untouched Initial, twice, from a socket that then goes away.
    raw.send_to(&initial, scene.target_addr).await.unwrap();
    raw.send_to(&initial, scene.target_addr).await.unwrap();
    drop(raw);

    scene.friend_gets_through("after-garbage").await;
    let stats = scene.target.counters().snapshot();
    assert_eq!(stats.messages_received, 1);
}

#[tokio::test]
async fn a_garbage_hello_is_a_failed_handshake() {
    let mut scene = Scene::new("bad-hello").await;
    let endpoint = raw_client(&scene.ca, "liar");
    let conn = endpoint
        .connect(scene.target_addr, TLS_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff; 100]).await.unwrap();
    send.finish().unwrap();
    match tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(CLOSE_HELLO_INVALID))
        }
        other => panic!("unexpected close: {other}"),
    }
    assert_eq!(scene.target.counters().snapshot().failed_handshakes, 1);
    scene.friend_gets_through("after-bad-hello").await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_hello_timeout() {
    let mut scene = Scene::new("silent").await;
    let endpoint = raw_client(&scene.ca, "mute");
    let conn = endpoint
        .connect(scene.target_addr, TLS_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    // Uni streams before any hello are not read.
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&wire(&syn("sneaky"))).await.unwrap();
    stream.finish().unwrap();
    match tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(CLOSE_HELLO_INVALID))
        }
        other => panic!("unexpected close: {other}"),
    }
    scene.friend_gets_through("after-silence").await;
    assert_eq!(scene.target.counters().snapshot().messages_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_garbage_streams_do_not_hurt() {
    let mut scene = Scene::new("streams").await;
    let (_endpoint, conn) = raw_member(&scene.ca, "flooder", scene.target_addr).await;
    for i in 0..1_000u32 {
        let mut stream = tokio::time::timeout(DEADLINE, conn.open_uni())
            .await
            .expect("stream credit never came back")
            .unwrap();
        // 0xff: no wire format (a short enough message could be valid).
        stream.write_all(&[0xff]).await.unwrap();
        stream.write_all(&i.to_le_bytes()).await.unwrap();
        stream.finish().unwrap();
    }
    // chitchat's own encoding, as a peer without the compact wire format sends it.
    let mut stream = conn.open_uni().await.unwrap();
    stream
        .write_all(&syn("plain").serialize_to_vec())
        .await
        .unwrap();
    stream.finish().unwrap();
    let counters = scene.target.counters().clone();
    eventually("1001 garbage streams counted", || {
        counters.snapshot().garbage_received == 1_001
    })
    .await;
    scene.friend_gets_through("after-flood").await;
    // The flooder's connection still works for a valid message.
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&wire(&syn("valid"))).await.unwrap();
    stream.finish().unwrap();
    assert_eq!(recv(&mut scene.target_socket).await.1, syn("valid"));
}

#[tokio::test]
async fn stalled_streams_are_capped_per_connection() {
    let mut scene = Scene::new("stalled").await;
    let (_endpoint, conn) = raw_member(&scene.ca, "staller", scene.target_addr).await;
    let mut open = Vec::new();
    // Open streams and never finish them: only the limit's worth opens.
    for _ in 0..1_000 {
        match tokio::time::timeout(Duration::from_millis(200), conn.open_uni()).await {
            Ok(stream) => {
                let mut stream = stream.unwrap();
                stream.write_all(b"partial").await.unwrap();
                open.push(stream);
            }
            Err(_no_credit) => break,
        }
    }
    assert_eq!(open.len(), MAX_CONCURRENT_UNI_STREAMS as usize);
    scene.friend_gets_through("while-stalled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_stream_is_stopped_and_dropped() {
    let mut scene = Scene::new("huge").await;
    let (_endpoint, conn) = raw_member(&scene.ca, "hog", scene.target_addr).await;
    // A valid message followed by 10 MB.
    let mut huge = wire(&syn("huge"));
    huge.resize(10 * 1024 * 1024, 0x42);
    let mut stream = conn.open_uni().await.unwrap();
    let written = tokio::time::timeout(DEADLINE, stream.write_all(&huge))
        .await
        .expect("the write neither finished nor was stopped");
    assert!(
        matches!(written, Err(WriteError::Stopped(code)) if code == VarInt::from_u32(STOP_TOO_LARGE)),
        "{written:?}"
    );
    let counters = scene.target.counters().clone();
    eventually("the oversized stream counted", || {
        counters.snapshot().garbage_received == 1
    })
    .await;
    assert!(counters.snapshot().bytes_received <= MAX_MESSAGE_SIZE as u64);
    scene.friend_gets_through("after-huge").await;
}

/// Waits for `conn` to close and returns its application close code and reason.
async fn close_of(conn: &Connection) -> (u32, String) {
    match tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => (
            u32::try_from(close.error_code.into_inner()).unwrap(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test]
async fn a_key_holder_claiming_another_node_id_is_refused_by_the_acceptor() {
    let ca = ClusterCa::generate("impostor").unwrap();
    let refusals = Refusals::default();
    let target = QuicTransport::new(
        common::quic_config(&ca, "target").with_reject_observer(refusals.observer()),
    );
    let (target_addr, friend_addr) = (free_addr(), free_addr());
    let mut target_socket = target.open(target_addr).await.unwrap();
    let mut friend_socket = quic(&ca, "friend").open(friend_addr).await.unwrap();

    // A certificate minted for "rogue", a hello claiming to be "friend".
    let endpoint = raw_client(&ca, "rogue");
    let (conn, _) = raw::hello_as(&ca, &endpoint, "friend", target_addr).await;
    let (code, reason) = close_of(&conn).await;
    assert_eq!(code, CLOSE_IDENTITY_MISMATCH);
    assert!(
        reason.contains("\"friend\"") && reason.contains("\"rogue\""),
        "{reason}"
    );
    let stats = target.counters().snapshot();
    assert_eq!((stats.identity_mismatches, stats.rejected_peers), (1, 1));
    // Reported under the name the certificate proves, not the claimed one.
    let refused = refusals.list();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].node_id, "rogue");
    assert!(refused[0].by_us);
    assert_eq!(refused[0].addr, endpoint.local_addr().unwrap());

    // The real friend is not affected.
    friend_socket
        .send(target_addr, syn("genuine"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut target_socket).await,
        (friend_addr, syn("genuine"))
    );
    assert_eq!(target.counters().snapshot().identity_mismatches, 1);
}

#[tokio::test]
async fn a_key_holder_answering_as_another_node_is_refused_by_the_dialer() {
    let ca = ClusterCa::generate("impostor-server").unwrap();
    let refusals = Refusals::default();
    let dialer = QuicTransport::new(
        common::quic_config(&ca, "dialer").with_reject_observer(refusals.observer()),
    );
    let mut dialer_socket = dialer.open(free_addr()).await.unwrap();

    // A raw server holding a certificate for "rogue" that says it is "friend".
    let rogue = NodeIdentity::mint(&ca, "rogue").unwrap();
    let server_tls = TlsMode::Mutual(rogue).server_config().unwrap();
    let server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).unwrap()));
    let server = Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server.local_addr().unwrap();
    dialer_socket.send(server_addr, syn("x")).await.unwrap();
    let conn = tokio::time::timeout(DEADLINE, server.accept())
        .await
        .unwrap()
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let their_hello = Hello::decode(&recv.read_to_end(MAX_HELLO_SIZE).await.unwrap()).unwrap();
    assert_eq!(their_hello.node_id, "dialer");
    let lie =
        HelloTemplate::new(ca.cluster_name(), "friend", "fingerprint-1").to_hello(server_addr);
    send.write_all(&lie.encode().unwrap()).await.unwrap();
    send.finish().unwrap();

    let (code, reason) = close_of(&conn).await;
    assert_eq!(code, CLOSE_IDENTITY_MISMATCH);
    assert!(reason.contains("\"friend\""), "{reason}");
    let counters = dialer.counters().clone();
    eventually("the dialer to count the mismatch", || {
        counters.snapshot().identity_mismatches == 1
    })
    .await;
    let refused = refusals.list();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].node_id.as_str(), refused[0].by_us),
        ("rogue", true)
    );
    assert_silent(&mut dialer_socket, QUIET).await;
}

#[tokio::test]
async fn a_certificate_that_does_not_name_the_node_id_cannot_open() {
    let ca = ClusterCa::generate("misnamed").unwrap();
    let identity = NodeIdentity::mint(&ca, "web1.example.com").unwrap();
    let transport = QuicTransport::new(QuicConfig::new(
        TlsMode::Mutual(identity),
        HelloTemplate::new("misnamed", "web1", "fp"),
    ));
    let err = format!("{:#}", transport.open(free_addr()).await.err().unwrap());
    assert!(
        err.contains("\"web1.example.com\"") && err.contains("not node id \"web1\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_peer_address_holds_one_accepted_connection_and_cannot_be_taken() {
    let mut scene = Scene::new("links").await;
    // The friend holds a connection to the target.
    scene.friend_gets_through("first").await;

    // Reconnecting replaces the previous connection instead of adding one.
    let endpoint = raw_client(&scene.ca, "again");
    let (first, _) = raw::hello_as(&scene.ca, &endpoint, "again", scene.target_addr).await;
    let (second, _) = raw::hello_as(&scene.ca, &endpoint, "again", scene.target_addr).await;
    assert_eq!(close_of(&first).await.0, CLOSE_SUPERSEDED);
    assert!(second.close_reason().is_none());

    // Another node cannot claim the friend's gossip address.
    let thief = raw_client(&scene.ca, "thief");
    let (stolen, _their_hello) = raw::send_hello(
        &scene.ca,
        &thief,
        "thief",
        scene.friend_addr,
        scene.target_addr,
    )
    .await;
    let (code, reason) = close_of(&stolen).await;
    assert_eq!(code, CLOSE_BUSY, "{reason}");
    assert!(reason.contains("\"friend\""), "{reason}");
    assert_eq!(scene.target.counters().snapshot().connections_refused, 1);
    // The friend's replies still go to the friend.
    scene
        .target_socket
        .send(scene.friend_addr, syn("to-friend"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut scene.friend_socket).await,
        (scene.target_addr, syn("to-friend"))
    );
    assert!(second.close_reason().is_none());
}
