//! Transports for chorus gossip, all implementing chitchat's
//! [`Transport`](chitchat::transport::Transport) trait.
//!
//! # Module map
//!
//! | module | job |
//! |---|---|
//! | `counters` | [`NetCounters`] (shared atomics) and their [`NetStats`] snapshot |
//! | `udp` | [`CountingUdpTransport`]: plain UDP, counted, `recv` never fails |
//! | [`tls`] | [`ClusterCa`], [`NodeIdentity`], [`TlsMode`]: cluster PKI and rustls configs |
//! | [`quic`] | [`QuicTransport`]: QUIC + mutual TLS + [`Hello`], per-peer queues; limits and close codes |
//! | `fault` | [`FaultyTransport`] + [`FaultController`]: partitions, drops, delays for tests |
//! | `peer` | [`PeerChannel`], [`PeerMessage`]: opaque Raft messages beside gossip, per transport |
//! | `memory` | [`MemoryNet`]: chitchat's in-memory transport plus in-memory Raft, for in-process tests |
//! | [`wire`] | the bytes on the wire: chitchat's encoding with a compact digest |
//!
//! # Rules every transport here keeps
//!
//! - `Socket::recv` never returns an error: chitchat's gossip loop stops for
//!   good on the first one. Garbage and I/O errors are counted and skipped.
//! - `Socket::send` never blocks the gossip loop on a slow or dead peer.
//! - Whatever goes on a network is [`wire::encode`]'s form of the message,
//!   never plain chitchat bytes; byte counters count those wire bytes.
//!
//! See `docs/chitchat.md` for why chorus builds its own copy of chitchat 0.11.2 (`vendor/chitchat`).

mod counters;
mod fault;
mod memory;
mod peer;
pub mod quic;
pub mod tls;
mod udp;
pub mod wire;

pub use counters::{NetCounters, NetStats};
pub use fault::{FaultController, FaultStats, FaultyTransport};
pub use memory::{MemoryNet, MemoryTransport};
pub use peer::{
    PeerChannel, PeerMessage, PeerTransport, MAX_RAFT_MESSAGE_SIZE, PEER_INBOX_CAPACITY,
};
pub use quic::{
    default_policy, ClaimCheck, Hello, HelloError, HelloPolicy, HelloTemplate, QuicConfig,
    QuicTransport, QuicTuning, RefusalKind, RejectObserver, RejectedPeer, PROTOCOL_VERSION,
};
pub use tls::{CertificateNames, ClusterCa, NodeIdentity, TlsError, TlsMode};
pub use udp::{CountingUdpTransport, MAX_UDP_PAYLOAD};
