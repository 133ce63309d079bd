//! Builds the gossip transport the configuration asks for: QUIC with mutual TLS (the default),
//! or counted plain UDP. The hello policy plugs core's fingerprint rules into the handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use chitchat::transport::Transport;
use chorus_core::fingerprint::{CompatPolicy, Fingerprint};
use chorus_core::identity::Holders;
use chorus_net::{
    ClusterCa, CountingUdpTransport, Hello, HelloTemplate, NetCounters, NodeIdentity, PeerChannel,
    PeerMessage, QuicConfig, QuicTransport, RejectedPeer, TlsMode,
};
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::config::{AgentConfig, Security, TransportKind};

/// Refusals waiting for the agent loop; more are dropped (each is also logged by the transport
/// side that saw it, and the next attempt reports again).
pub const REFUSAL_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "no cluster key: run `chorus keygen --out cluster.pem`, copy it to every node and start \
         with --cluster-key cluster.pem (or --ca-cert/--cert/--key from your own PKI; \
         --insecure for experiments only)"
    )]
    NoKey,
    #[error("cannot read {path}: {reason}")]
    Key { path: String, reason: String },
    #[error(
        "the cluster key {path} was made for cluster {key_cluster:?}, but this agent is \
         --cluster {cluster:?}: start it with --cluster {key_cluster} (or use the key made for \
         {cluster:?})"
    )]
    ClusterMismatch {
        path: String,
        key_cluster: String,
        cluster: String,
    },
}

pub struct BuiltTransport {
    pub transport: Arc<dyn Transport>,
    pub counters: NetCounters,
    pub refusals: mpsc::Receiver<RejectedPeer>,
    pub insecure: bool,
    /// Sends Raft messages to peers by gossip address, over whichever socket `transport` has
    /// open (QUIC: authenticated streams after the hello; UDP: unauthenticated datagrams, no
    /// large snapshots, for experiments).
    pub peer_channel: PeerChannel,
    /// The Raft messages peers sent.
    pub peer_messages: mpsc::Receiver<PeerMessage>,
}

/// The text carried in the hello's fingerprint field: the whole fingerprint, so the peer can
/// apply the compatibility policy and say what differs.
pub fn hello_fingerprint(fp: &Fingerprint) -> String {
    serde_json::to_string(fp).expect("fingerprints always serialize")
}

/// The hello policy: same cluster, same protocol, compatible fingerprint.
pub fn hello_policy(
    cluster: String,
    protocol: u32,
    ours: Fingerprint,
    compat: CompatPolicy,
) -> impl Fn(&Hello) -> Result<(), String> + Send + Sync + 'static {
    move |peer: &Hello| {
        if peer.cluster != cluster {
            return Err(format!(
                "cluster name {:?} (ours {cluster:?})",
                peer.cluster
            ));
        }
        if peer.protocol != protocol {
            return Err(format!("wire protocol {} (ours {protocol})", peer.protocol));
        }
        let theirs: Fingerprint = serde_json::from_str(&peer.fingerprint)
            .map_err(|_| "unreadable version fingerprint".to_string())?;
        compat.check(&ours, &theirs).map_err(|m| m.to_string())
    }
}

fn read(path: &std::path::Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|e| TransportError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn tls_mode(config: &AgentConfig) -> Result<TlsMode, TransportError> {
    let key_err = |path: &std::path::Path, e: chorus_net::TlsError| TransportError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    match &config.security {
        None => Err(TransportError::NoKey),
        Some(Security::Insecure) => Ok(TlsMode::Insecure),
        Some(Security::ClusterKey(path)) => {
            let ca = ClusterCa::from_pem(&read(path)?).map_err(|e| key_err(path, e))?;
            // Every peer would refuse it at the hello ("cluster name"): say so at start.
            if ca.cluster_name() != config.cluster {
                return Err(TransportError::ClusterMismatch {
                    path: path.display().to_string(),
                    key_cluster: ca.cluster_name().to_string(),
                    cluster: config.cluster.clone(),
                });
            }
            let identity =
                NodeIdentity::mint(&ca, &config.node_id).map_err(|e| key_err(path, e))?;
            Ok(TlsMode::Mutual(identity))
        }
        Some(Security::Pki { ca, cert, key }) => {
            let identity = NodeIdentity::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
                .map_err(|e| key_err(cert, e))?;
            Ok(TlsMode::Mutual(identity))
        }
    }
}

/// `holders` is where each live node id is held, kept current by the agent loop: a hello
/// claiming one of them from another address is refused as a node-id conflict.
pub fn build(
    config: &AgentConfig,
    advertise: SocketAddr,
    fingerprint: &Fingerprint,
    holders: Arc<RwLock<Holders>>,
) -> Result<BuiltTransport, TransportError> {
    let counters = NetCounters::new();
    let (tx, refusals) = mpsc::channel(REFUSAL_QUEUE);
    let (peer_channel, peer_messages) = PeerChannel::new(counters.clone());
    match config.transport {
        TransportKind::Udp => Ok(BuiltTransport {
            transport: Arc::new(
                CountingUdpTransport::new(counters.clone()).with_peer_channel(peer_channel.clone()),
            ),
            counters,
            refusals,
            insecure: true,
            peer_channel,
            peer_messages,
        }),
        TransportKind::Quic => {
            let tls = tls_mode(config)?;
            let insecure = matches!(tls, TlsMode::Insecure);
            let hello = HelloTemplate::new(
                config.cluster.clone(),
                config.node_id.clone(),
                hello_fingerprint(fingerprint),
            );
            let policy = hello_policy(
                config.cluster.clone(),
                hello.protocol,
                fingerprint.clone(),
                config.compat,
            );
            let quic = QuicConfig::new(tls, hello)
                .with_policy(policy)
                .with_claim_check(move |peer, at| holders.read().check_claim(&peer.node_id, at))
                .with_reject_observer(move |peer| {
                    let _ = tx.try_send(peer);
                })
                .with_counters(counters.clone())
                .with_advertise_addr(advertise)
                .with_peer_channel(peer_channel.clone());
            Ok(BuiltTransport {
                transport: Arc::new(QuicTransport::new(quic)),
                counters,
                refusals,
                insecure,
                peer_channel,
                peer_messages,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(cluster: &str, fp: &Fingerprint) -> Hello {
        HelloTemplate::new(cluster, "peer", hello_fingerprint(fp))
            .to_hello("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn the_transport_carries_the_largest_raft_envelope() {
        let largest = chorus_core::consensus::envelope::MAX_ENVELOPE_BYTES;
        assert!(largest <= chorus_net::MAX_RAFT_MESSAGE_SIZE);
    }

    #[test]
    fn policy_names_what_differs() {
        let ours = Fingerprint::compute(1, "2.0", &[]);
        let protocol = HelloTemplate::new("prod", "me", "").protocol;
        let policy = hello_policy("prod".into(), protocol, ours.clone(), CompatPolicy::Exact);
        assert!(policy(&hello("prod", &ours)).is_ok());
        let err = policy(&hello("test", &ours)).unwrap_err();
        assert!(err.contains("cluster name"), "{err}");
        let err = policy(&hello("prod", &Fingerprint::compute(1, "2.1", &[]))).unwrap_err();
        assert!(err.contains("app version \"2.1\""), "{err}");
        let mut junk = hello("prod", &ours);
        junk.fingerprint = "garbage".into();
        assert!(policy(&junk).is_err());
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn a_cluster_key_made_for_another_cluster_name_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.pem");
        std::fs::write(&path, ClusterCa::generate("shop").unwrap().to_pem()).unwrap();
        let config = |cluster: &str| {
            Settings {
                node_id: Some("n1".into()),
                cluster: Some(cluster.into()),
                cluster_key: Some(path.clone()),
                ..Settings::default()
            }
            .validate()
            .unwrap()
        };
        assert!(tls_mode(&config("shop")).is_ok());
        let err = tls_mode(&config("prod")).unwrap_err().to_string();
        assert!(
            err.contains("was made for cluster \"shop\"") && err.contains("--cluster \"prod\""),
            "{err}"
        );
    }
}
