//! Raw quinn clients that hold a valid cluster certificate: what a key
//! holder (a rogue member) can do beyond what `QuicTransport` does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chorus_net::tls::TLS_SERVER_NAME;
use chorus_net::{ClusterCa, Hello, HelloTemplate, NodeIdentity, TlsMode};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream};

use super::DEADLINE;

/// A raw quinn client on `ip` holding a certificate of `ca` minted for `node`.
pub fn client_at(ca: &ClusterCa, node: &str, ip: IpAddr) -> Endpoint {
    client_with(NodeIdentity::mint(ca, node).unwrap(), ip)
}

/// A raw quinn client on `ip` presenting `identity`.
pub fn client_with(identity: NodeIdentity, ip: IpAddr) -> Endpoint {
    let tls = TlsMode::Mutual(identity).client_config().unwrap();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// A raw quinn client on 127.0.0.1 holding a certificate minted for `node`.
pub fn client(ca: &ClusterCa, node: &str) -> Endpoint {
    client_at(ca, node, [127, 0, 0, 1].into())
}

/// Connects `endpoint` to `target` and swaps hellos, claiming `claimed` as
/// node id; returns the connection and the target's hello. Panics on any
/// failure before the hello was swapped.
pub async fn hello_as(
    ca: &ClusterCa,
    endpoint: &Endpoint,
    claimed: &str,
    target: SocketAddr,
) -> (Connection, Hello) {
    let gossip_addr = endpoint.local_addr().unwrap();
    hello_claiming(ca, endpoint, claimed, gossip_addr, target).await
}

/// [`hello_as`], announcing `gossip_addr` as the gossip address.
pub async fn hello_claiming(
    ca: &ClusterCa,
    endpoint: &Endpoint,
    claimed: &str,
    gossip_addr: SocketAddr,
    target: SocketAddr,
) -> (Connection, Hello) {
    let (conn, mut recv) = send_hello(ca, endpoint, claimed, gossip_addr, target).await;
    let reply = recv
        .read_to_end(chorus_net::quic::MAX_HELLO_SIZE)
        .await
        .unwrap();
    (conn, Hello::decode(&reply).unwrap())
}

/// Connects and sends a hello claiming `claimed` at `gossip_addr`; returns
/// the connection and the stream the target's hello comes on.
pub async fn send_hello(
    ca: &ClusterCa,
    endpoint: &Endpoint,
    claimed: &str,
    gossip_addr: SocketAddr,
    target: SocketAddr,
) -> (Connection, RecvStream) {
    let conn = tokio::time::timeout(DEADLINE, endpoint.connect(target, TLS_SERVER_NAME).unwrap())
        .await
        .expect("handshake timed out")
        .expect("handshake failed");
    let hello =
        HelloTemplate::new(ca.cluster_name(), claimed, "fingerprint-1").to_hello(gossip_addr);
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello.encode().unwrap()).await.unwrap();
    send.finish().unwrap();
    (conn, recv)
}

/// Connects and passes the hello like a real member `node` on `ip` would.
pub async fn member_at(
    ca: &ClusterCa,
    node: &str,
    ip: IpAddr,
    target: SocketAddr,
) -> (Endpoint, Connection) {
    let endpoint = client_at(ca, node, ip);
    let (conn, _) = hello_as(ca, &endpoint, node, target).await;
    (endpoint, conn)
}

/// [`member_at`] on 127.0.0.1.
pub async fn member(ca: &ClusterCa, node: &str, target: SocketAddr) -> (Endpoint, Connection) {
    member_at(ca, node, [127, 0, 0, 1].into(), target).await
}
