//! The replicated state machine: what every voter agrees on, applied from committed entries.
//!
//! Today it holds the cluster's identity and who the voters are (with the node id and address
//! each voter's Raft id stands for); locks join it later. It travels in Raft snapshots and in
//! the context of membership changes, encoded with bincode under a size limit, so a hostile or
//! corrupt blob is an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// Largest encoded state machine accepted from a snapshot.
pub const MAX_STATE_BYTES: usize = 8 * 1024 * 1024;
/// Largest encoded membership-change context accepted.
pub const MAX_CONTEXT_BYTES: usize = 1024;

/// Who a Raft id is: the node id and gossip address it was added with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node_id: NodeId,
    pub addr: SocketAddr,
}

/// The applied state: equal on every member that applied the same prefix of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Chosen at bootstrap; two clusters never share one (a node never joins a second).
    pub cluster_id: u64,
    /// Every Raft id in the configuration, voter or not yet, with who it is.
    pub members: BTreeMap<u64, MemberInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} does not decode: {reason}")]
    Malformed { what: &'static str, reason: String },
}

fn config<const N: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<N>()
}

impl ClusterState {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a map of strings and addresses cannot fail; the limit only guards decoding.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<ClusterState, DecodeError> {
        decode(
            bytes,
            "the cluster state",
            config::<MAX_STATE_BYTES>(),
            MAX_STATE_BYTES,
        )
    }

    /// The node id of a Raft id, when it is a member.
    pub fn node_of(&self, raft_id: u64) -> Option<&str> {
        self.members.get(&raft_id).map(|m| m.node_id.as_str())
    }

    /// The Raft id a node id is a member under.
    pub fn raft_id_of(&self, node_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.node_id == node_id)
            .map(|(id, _)| *id)
    }
}

/// The context a membership change carries: who the added Raft id is.
pub fn encode_context(info: &MemberInfo) -> Vec<u8> {
    bincode::serde::encode_to_vec(info, bincode::config::standard()).unwrap_or_default()
}

pub fn decode_context(bytes: &[u8]) -> Result<MemberInfo, DecodeError> {
    decode(
        bytes,
        "a membership change context",
        config::<MAX_CONTEXT_BYTES>(),
        MAX_CONTEXT_BYTES,
    )
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    cfg: impl bincode::config::Config,
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    match bincode::serde::decode_from_slice(bytes, cfg) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok((_, used)) => Err(DecodeError::Malformed {
            what,
            reason: format!("{} trailing bytes", bytes.len() - used),
        }),
        Err(e) => Err(DecodeError::Malformed {
            what,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(i: u8) -> MemberInfo {
        MemberInfo {
            node_id: format!("n{i}"),
            addr: SocketAddr::from(([127, 0, 0, i], 7000 + u16::from(i))),
        }
    }

    #[test]
    fn state_and_context_round_trip() {
        let mut s = ClusterState {
            cluster_id: 42,
            ..ClusterState::default()
        };
        s.members.insert(7, info(1));
        s.members.insert(9, info(2));
        assert_eq!(ClusterState::decode(&s.encode()).unwrap(), s);
        assert_eq!(decode_context(&encode_context(&info(3))).unwrap(), info(3));
        assert_eq!(s.raft_id_of("n2"), Some(9));
        assert_eq!(s.node_of(7), Some("n1"));
    }

    proptest! {
        /// Whatever bytes arrive as a snapshot or a context, decoding returns a value or an
        /// error; it never panics and never allocates past the limit.
        #[test]
        fn fuzz_state_and_context_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = ClusterState::decode(&bytes);
            let _ = decode_context(&bytes);
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // A map length of 2^62 in bincode's varint form.
        let mut bytes = vec![0x2a, 0xfd];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(ClusterState::decode(&bytes).is_err());
        let big = vec![0u8; MAX_CONTEXT_BYTES + 1];
        assert!(matches!(
            decode_context(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
