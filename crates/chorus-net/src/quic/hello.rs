//! The hello: who a peer is, exchanged right after the TLS handshake.
//!
//! Wire format: one bidirectional stream opened by the dialer. The dialer
//! writes its [`Hello`] and finishes its side; the acceptor reads it, writes
//! its own and finishes. Each side then runs its policy on the other's hello.
//! A refusing side waits (briefly) until its own hello is acknowledged, then
//! closes the connection with [`CLOSE_HELLO_REJECTED`](super::CLOSE_HELLO_REJECTED)
//! and the reason (UTF-8) as close bytes, so the refused side learns both who
//! refused it and why. Hellos are bincode 2 (standard config, serde), at most
//! [`MAX_HELLO_SIZE`] bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Version of the chorus wire protocol (hello + envelopes), sent in every
/// hello. The default policy refuses peers speaking another version.
/// 2: envelopes hold the [`wire`](crate::wire) form, not chitchat's bytes.
/// 3: a stream starting with [`RAFT_MARKER`](crate::wire::RAFT_MARKER)
/// carries a Raft message (a version-2 peer would count it as garbage).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest encoded hello accepted, in bytes (room for a fingerprint listing
/// a few hundred files).
pub const MAX_HELLO_SIZE: usize = 16 * 1024;

/// Longest close reason sent, in bytes (longer reasons are cut).
pub const MAX_REASON_LEN: usize = 512;

/// What a node says about itself when a connection opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Cluster name.
    pub cluster: String,
    /// Node id.
    pub node_id: String,
    /// Wire protocol version, [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Version fingerprint (opaque here; the agent's policy compares them).
    pub fingerprint: String,
    /// The address chitchat should reply to: the node's gossip (listen or
    /// advertised) address. An unspecified IP is replaced by the
    /// connection's source IP.
    pub gossip_addr: SocketAddr,
}

/// The local fields of a [`Hello`]; the transport adds the gossip address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloTemplate {
    /// Cluster name.
    pub cluster: String,
    /// Node id.
    pub node_id: String,
    /// Wire protocol version.
    pub protocol: u32,
    /// Version fingerprint.
    pub fingerprint: String,
}

impl HelloTemplate {
    /// A template speaking [`PROTOCOL_VERSION`].
    pub fn new(
        cluster: impl Into<String>,
        node_id: impl Into<String>,
        fingerprint: impl Into<String>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            node_id: node_id.into(),
            protocol: PROTOCOL_VERSION,
            fingerprint: fingerprint.into(),
        }
    }

    /// The full hello for a node reachable at `gossip_addr`.
    pub fn to_hello(&self, gossip_addr: SocketAddr) -> Hello {
        Hello {
            cluster: self.cluster.clone(),
            node_id: self.node_id.clone(),
            protocol: self.protocol,
            fingerprint: self.fingerprint.clone(),
            gossip_addr,
        }
    }
}

/// Decides whether a peer may stay, given its hello. `Err(reason)` refuses it;
/// the reason is sent to the peer and given to both sides' observers.
pub type HelloPolicy = Arc<dyn Fn(&Hello) -> Result<(), String> + Send + Sync>;

/// Decides whether a peer may hold the node id of its hello, given the
/// gossip address it is reached at: `Err(reason)` when another live agent
/// holds that id. Runs after the identity check and before the policy; a
/// refusal closes with [`CLOSE_NODE_ID_CONFLICT`](super::CLOSE_NODE_ID_CONFLICT),
/// so the refused side knows it is the one to give way.
pub type ClaimCheck = Arc<dyn Fn(&Hello, SocketAddr) -> Result<(), String> + Send + Sync>;

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The hello policy (cluster, protocol, fingerprint).
    Policy,
    /// The certificate does not name the node id of the hello.
    Identity,
    /// Another live agent holds the node id of the hello.
    NodeIdConflict,
}

/// Told about every refusal, on both sides. Called from a network task: it
/// must be quick and must not block.
pub type RejectObserver = Arc<dyn Fn(RejectedPeer) + Send + Sync>;

/// A peer refused at hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedPeer {
    /// The other node's id, from its hello (empty if it never arrived).
    pub node_id: String,
    /// The other node's gossip address (its source address if unknown).
    pub addr: SocketAddr,
    /// Why, in words, as written by the refusing side.
    pub reason: String,
    /// `true` if we refused them, `false` if they refused us.
    pub by_us: bool,
    /// Which check refused.
    pub kind: RefusalKind,
}

/// Errors decoding or encoding a hello.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Bytes that are not a hello.
    #[error("undecodable hello: {0}")]
    Decode(String),
    /// Bytes after the hello.
    #[error("undecodable hello: {0} trailing bytes")]
    Trailing(usize),
    /// A local hello too large to send.
    #[error("hello cannot be encoded: {0}")]
    Encode(String),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_HELLO_SIZE>()
}

impl Hello {
    /// Encodes the hello (bincode 2, standard config).
    pub fn encode(&self) -> Result<Vec<u8>, HelloError> {
        let bytes = bincode::serde::encode_to_vec(self, bincode_config())
            .map_err(|err| HelloError::Encode(err.to_string()))?;
        if bytes.len() > MAX_HELLO_SIZE {
            return Err(HelloError::Encode(format!(
                "{} bytes, more than {MAX_HELLO_SIZE}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Decodes exactly one hello from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        let (hello, used): (Hello, usize) =
            bincode::serde::decode_from_slice(bytes, bincode_config())
                .map_err(|err| HelloError::Decode(err.to_string()))?;
        if used != bytes.len() {
            return Err(HelloError::Trailing(bytes.len() - used));
        }
        Ok(hello)
    }
}

/// The default policy: the peer must be in the same cluster and speak the
/// same protocol version. Fingerprints are not compared.
pub fn default_policy(local: &HelloTemplate) -> HelloPolicy {
    let cluster = local.cluster.clone();
    let protocol = local.protocol;
    Arc::new(move |peer: &Hello| {
        if peer.cluster != cluster {
            return Err(format!(
                "cluster name differs: ours {cluster:?}, theirs {:?}",
                peer.cluster
            ));
        }
        if peer.protocol != protocol {
            return Err(format!(
                "protocol version differs: ours {protocol}, theirs {}",
                peer.protocol
            ));
        }
        Ok(())
    })
}

/// Cuts `reason` to at most [`MAX_REASON_LEN`] bytes on a char boundary.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        HelloTemplate::new("blue", "node-1", "fp1").to_hello(([127, 0, 0, 1], 7000).into())
    }

    #[test]
    fn round_trip() {
        let h = hello();
        assert_eq!(Hello::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn rejects_garbage_trailing_and_huge() {
        assert!(Hello::decode(b"").is_err());
        assert!(Hello::decode(&[0xff; 64]).is_err());
        let mut bytes = hello().encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            Hello::decode(&bytes),
            Err(HelloError::Trailing(1))
        ));
        let mut big = hello();
        big.fingerprint = "x".repeat(MAX_HELLO_SIZE);
        assert!(big.encode().is_err());
        // A length prefix announcing a huge string is refused, not allocated.
        let mut lying = vec![0xfd];
        lying.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Hello::decode(&lying).is_err());
    }

    #[test]
    fn default_policy_checks_cluster_and_protocol() {
        let local = HelloTemplate::new("blue", "me", "fp-a");
        let policy = default_policy(&local);
        let mut peer = hello();
        peer.fingerprint = "fp-other".into();
        assert!(policy(&peer).is_ok());
        peer.cluster = "green".into();
        let reason = policy(&peer).unwrap_err();
        assert!(
            reason.contains("\"blue\"") && reason.contains("\"green\""),
            "{reason}"
        );
        peer.cluster = "blue".into();
        peer.protocol = 99;
        assert!(policy(&peer).unwrap_err().contains("99"));
    }

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        let long = "é".repeat(MAX_REASON_LEN);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_reason("short"), "short");
    }
}
