//! [`PeerChannel`]: opaque consensus (Raft) messages between peers, beside
//! gossip but never through it.
//!
//! The channel does not know what the bytes mean: the consensus engine
//! encodes and checks its own envelope. What the channel guarantees:
//!
//! - [`PeerChannel::send`] never waits and never fails: a message that cannot
//!   go (no socket open, oversized, the peer's queue full, the peer
//!   unreachable) is dropped and counted in `raft_dropped`. Raft resends what
//!   it still needs.
//! - Received messages arrive on one bounded receiver
//!   ([`PEER_INBOX_CAPACITY`]); when it is full, new ones are dropped and
//!   counted, so a slow engine never stalls a connection.
//! - The channel follows the transport's current socket. chitchat opens the
//!   socket through `Transport::open`, and the agent may reopen it (a restarted
//!   gossip loop); each socket registers its sender in the channel's slot when
//!   it opens and takes it out when it drops. The receiver outlives sockets.
//!
//! Per transport:
//!
//! - **QUIC** ([`QuicTransport`](crate::QuicTransport)): each message is one
//!   unidirectional stream, on the connections gossip uses, opened only
//!   after the hello: it starts with [`RAFT_MARKER`](crate::wire::RAFT_MARKER)
//!   and is limited to [`MAX_RAFT_MESSAGE_SIZE`]. Raft has its own per-peer
//!   send queue and its own receive budget, so neither kind starves the
//!   other. [`PeerMessage::from_node`] is the node id the peer's certificate
//!   vouches for (mutual TLS); under insecure TLS nothing is authenticated
//!   and it is `None`.
//! - **UDP** ([`CountingUdpTransport`](crate::CountingUdpTransport)): each
//!   message is one datagram on the gossip socket, starting with
//!   [`RAFT_MARKER`](crate::wire::RAFT_MARKER). Nothing is authenticated
//!   (`from_node` is `None`, anyone who can send a datagram can send Raft), and
//!   a message over [`MAX_UDP_PAYLOAD`](crate::MAX_UDP_PAYLOAD) minus the
//!   marker (a large snapshot) is dropped and counted: UDP is for experiments.
//! - **In memory** ([`MemoryNet`](crate::MemoryNet), for in-process tests):
//!   messages go straight to the channel of the node open at the address.
//! - **Faults** ([`FaultyTransport`](crate::FaultyTransport)) over any of
//!   these: Raft messages go through the same partitions, drops and delays
//!   as gossip.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::debug;

use crate::counters::NetCounters;
use crate::quic::Held;

/// Largest Raft message carried (QUIC), in bytes: a snapshot of the
/// consensus state machine (8 MiB) with its envelope, with room to spare.
/// Over UDP the datagram size is the limit.
pub const MAX_RAFT_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// Received messages waiting for the consensus engine; more are dropped.
pub const PEER_INBOX_CAPACITY: usize = 1024;

/// An opaque consensus message that arrived.
pub struct PeerMessage {
    /// The node id the peer authenticated as: its certificate vouches for the
    /// node id of its hello (QUIC with mutual TLS). `None` when nothing
    /// authenticates peers (UDP, insecure QUIC).
    pub from_node: Option<String>,
    /// The peer's gossip address (QUIC: the address its connection is
    /// registered under; UDP: the datagram's source).
    pub from_addr: SocketAddr,
    /// The message, as the peer's engine wrote it.
    pub bytes: Vec<u8>,
    /// The message's share of its connection's receive budget (QUIC), given
    /// back when the message is dropped: what waits in the receiver counts
    /// against what peers may make us hold.
    _held: Option<Held>,
}

impl PeerMessage {
    /// A message not charged to any budget (tests, simulators, relays).
    pub fn new(from_node: Option<String>, from_addr: SocketAddr, bytes: Vec<u8>) -> Self {
        Self {
            from_node,
            from_addr,
            bytes,
            _held: None,
        }
    }

    pub(crate) fn held(
        from_node: Option<String>,
        from_addr: SocketAddr,
        bytes: Vec<u8>,
        held: Held,
    ) -> Self {
        Self {
            _held: Some(held),
            ..Self::new(from_node, from_addr, bytes)
        }
    }
}

impl fmt::Debug for PeerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerMessage")
            .field("from_node", &self.from_node)
            .field("from_addr", &self.from_addr)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A transport that may carry a [`PeerChannel`]: how a wrapper (faults) or
/// a caller holding only the transport finds its channel.
pub trait PeerTransport {
    /// The channel this transport's sockets carry, if any.
    fn peer_channel(&self) -> Option<&PeerChannel>;
}

impl PeerTransport for chitchat::transport::ChannelTransport {
    /// chitchat's in-memory transport carries no Raft.
    fn peer_channel(&self) -> Option<&PeerChannel> {
        None
    }
}

impl PeerTransport for crate::QuicTransport {
    fn peer_channel(&self) -> Option<&PeerChannel> {
        crate::QuicTransport::peer_channel(self)
    }
}

impl PeerTransport for crate::CountingUdpTransport {
    fn peer_channel(&self) -> Option<&PeerChannel> {
        crate::CountingUdpTransport::peer_channel(self)
    }
}

/// Where an open socket takes Raft messages to send.
pub(crate) trait PeerSink: Send + Sync {
    /// Queues `bytes` for `to`; never waits. Counts what it drops.
    fn send(&self, to: SocketAddr, bytes: Vec<u8>);
}

/// The sink of the socket open now, with the registration it belongs to.
struct Slot {
    registration: u64,
    sink: Arc<dyn PeerSink>,
}

struct Inner {
    slot: Mutex<Option<Slot>>,
    /// Registrations so far: tells a socket's own registration from a
    /// later socket's.
    registrations: Mutex<u64>,
    inbox: mpsc::Sender<PeerMessage>,
    counters: NetCounters,
}

/// Cloneable handle to send consensus messages to peers by gossip address;
/// see the module docs. Clones share the socket slot, the receiver and the
/// counters.
#[derive(Clone)]
pub struct PeerChannel {
    inner: Arc<Inner>,
}

impl fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChannel")
            .field("attached", &self.is_attached())
            .finish_non_exhaustive()
    }
}

impl PeerChannel {
    /// A channel counting into `counters` (give the transport the same
    /// ones), and the receiver of what arrives.
    pub fn new(counters: NetCounters) -> (Self, mpsc::Receiver<PeerMessage>) {
        let (inbox, messages) = mpsc::channel(PEER_INBOX_CAPACITY);
        let channel = Self {
            inner: Arc::new(Inner {
                slot: Mutex::new(None),
                registrations: Mutex::new(0),
                inbox,
                counters,
            }),
        };
        (channel, messages)
    }

    /// Sends `bytes` to the peer whose gossip address is `to`. Never waits;
    /// drops and counts (`raft_dropped`) what cannot go.
    pub fn send(&self, to: SocketAddr, bytes: Vec<u8>) {
        let sink = self
            .inner
            .slot
            .lock()
            .as_ref()
            .map(|slot| slot.sink.clone());
        match sink {
            Some(sink) => sink.send(to, bytes),
            None => {
                debug!(peer=%to, "no gossip socket open: Raft message dropped");
                self.inner.counters.raft_dropped();
            }
        }
    }

    /// Whether a socket is open to carry messages.
    pub fn is_attached(&self) -> bool {
        self.inner.slot.lock().is_some()
    }

    /// The counters the channel records into.
    pub fn counters(&self) -> &NetCounters {
        &self.inner.counters
    }

    /// Makes `sink` the one sends go to, until the returned registration
    /// drops (or a later socket registers).
    pub(crate) fn attach(&self, sink: Arc<dyn PeerSink>) -> Registration {
        let registration = {
            let mut count = self.inner.registrations.lock();
            *count = count.wrapping_add(1);
            *count
        };
        *self.inner.slot.lock() = Some(Slot { registration, sink });
        Registration {
            channel: self.clone(),
            registration,
        }
    }

    /// Replaces the current sink by `wrap` of it (a fault layer), keeping
    /// its registration: the socket underneath still takes it out.
    pub(crate) fn wrap(&self, wrap: impl FnOnce(Arc<dyn PeerSink>) -> Arc<dyn PeerSink>) {
        let mut slot = self.inner.slot.lock();
        if let Some(current) = slot.take() {
            *slot = Some(Slot {
                registration: current.registration,
                sink: wrap(current.sink),
            });
        }
    }

    /// Queues a received message for the engine, or drops and counts it when
    /// the receiver is full or gone. Never waits: the connection's reader
    /// moves on at once.
    pub(crate) fn deliver(&self, message: PeerMessage) {
        let counters = &self.inner.counters;
        match self.inner.inbox.try_send(message) {
            Ok(()) => counters.raft_received_message(),
            Err(TrySendError::Full(message)) => {
                debug!(peer=%message.from_addr, "Raft inbox full: message dropped");
                counters.raft_dropped();
            }
            Err(TrySendError::Closed(_)) => counters.raft_dropped(),
        }
    }
}

/// A socket's place in its channel's slot; dropping it empties the slot
/// unless a later socket has taken it.
pub(crate) struct Registration {
    channel: PeerChannel,
    registration: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slot = self.channel.inner.slot.lock();
        if slot
            .as_ref()
            .is_some_and(|current| current.registration == self.registration)
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Tally(AtomicUsize);

    impl PeerSink for Tally {
        fn send(&self, _to: SocketAddr, _bytes: Vec<u8>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn sends_follow_the_current_socket_and_drop_without_one() {
        let counters = NetCounters::new();
        let (channel, _messages) = PeerChannel::new(counters.clone());
        channel.send(addr(), vec![1]);
        assert_eq!(counters.snapshot().raft_dropped, 1);

        let (first, second) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let first_registration = channel.attach(first.clone());
        channel.send(addr(), vec![1]);
        // A reopened socket registers before the old one is dropped.
        let second_registration = channel.attach(second.clone());
        drop(first_registration);
        assert!(channel.is_attached(), "the old socket leaves the new one");
        channel.clone().send(addr(), vec![1]);
        assert_eq!(first.0.load(Ordering::Relaxed), 1);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
        drop(second_registration);
        assert!(!channel.is_attached());
        channel.send(addr(), vec![1]);
        assert_eq!(counters.snapshot().raft_dropped, 2);
    }

    #[test]
    fn a_full_or_closed_receiver_drops_and_counts() {
        let counters = NetCounters::new();
        let (channel, messages) = PeerChannel::new(counters.clone());
        for _ in 0..PEER_INBOX_CAPACITY + 3 {
            channel.deliver(PeerMessage::new(None, addr(), vec![7]));
        }
        let stats = counters.snapshot();
        assert_eq!(stats.raft_messages_received, PEER_INBOX_CAPACITY as u64);
        assert_eq!(stats.raft_dropped, 3);
        drop(messages);
        channel.deliver(PeerMessage::new(None, addr(), vec![7]));
        assert_eq!(counters.snapshot().raft_dropped, 4);
    }
}
