//! [`CountingUdpTransport`]: chitchat's plain UDP transport, with counters and
//! a `recv` that never gives up.
//!
//! It behaves like `chitchat::transport::UdpTransport` (one datagram per
//! message, 65,507 bytes at most) but:
//! - datagrams hold the [`wire`](crate::wire) form, not chitchat's own bytes
//!   (never longer, so whatever chitchat sized for a datagram still fits);
//! - every byte and message is counted in a [`NetCounters`];
//! - undecodable datagrams are counted as garbage and skipped;
//! - no I/O error ever escapes `recv` (an error there would end chitchat's
//!   gossip loop for good), and `send` failures are counted, not returned.
//!
//! # Raft over UDP
//!
//! With a [`PeerChannel`] ([`CountingUdpTransport::with_peer_channel`]), Raft
//! messages share the gossip socket: one datagram each,
//! [`RAFT_MARKER`](crate::wire::RAFT_MARKER) then the message. The marker is
//! not a byte a [`wire`](crate::wire) message starts with, so the two never
//! mix. This is for experiments only:
//! - nothing is authenticated: anyone who can reach the port can send Raft
//!   messages, [`PeerMessage::from_node`] is `None` and `from_addr` is the
//!   datagram's (spoofable) source;
//! - a message over [`MAX_UDP_PAYLOAD`] minus the marker (a large snapshot,
//!   or appends of many entries) is dropped and counted in `raft_dropped`, so
//!   a follower that needs such a snapshot never catches up;
//! - a datagram is sent only if the socket can take it at once; if not, it
//!   is dropped and counted, like any datagram lost on the way.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::ChitchatMessage;
use tracing::{debug, warn};

use crate::counters::NetCounters;
use crate::peer::{PeerChannel, PeerMessage, PeerSink, Registration};
use crate::wire::{self, RAFT_MARKER};

/// Largest payload a UDP datagram can carry over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Pause after a receive error, so a persistent error cannot spin a core.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Gossip over plain UDP, counted. Cheap to clone; clones share counters
/// and the peer channel.
#[derive(Debug, Clone, Default)]
pub struct CountingUdpTransport {
    counters: NetCounters,
    peer_channel: Option<PeerChannel>,
}

impl CountingUdpTransport {
    /// A transport recording into `counters`.
    pub fn new(counters: NetCounters) -> Self {
        Self {
            counters,
            peer_channel: None,
        }
    }

    /// Carries Raft messages for `channel` (made with the same counters):
    /// see the module docs for what UDP does not give them.
    pub fn with_peer_channel(mut self, channel: PeerChannel) -> Self {
        self.peer_channel = Some(channel);
        self
    }

    /// The counters this transport records into.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    /// The channel carrying Raft messages, if any.
    pub fn peer_channel(&self) -> Option<&PeerChannel> {
        self.peer_channel.as_ref()
    }
}

#[async_trait]
impl Transport for CountingUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let bound = std::net::UdpSocket::bind(listen_addr)
            .with_context(|| format!("failed to bind {listen_addr}/udp for gossip"))?;
        bound
            .set_nonblocking(true)
            .context("non-blocking gossip socket")?;
        // Raft sends go through a plain handle on the same socket: tokio's
        // `try_send_to` refuses until its reactor has seen the socket
        // writable, which would drop the first messages of a fresh socket.
        let raft_handle = Arc::new(bound.try_clone().context("gossip socket handle")?);
        let socket = tokio::net::UdpSocket::from_std(bound).context("gossip socket")?;
        let registration = self.peer_channel.as_ref().map(|channel| {
            channel.attach(Arc::new(UdpRaftSink {
                socket: Arc::downgrade(&raft_handle),
                counters: self.counters.clone(),
            }))
        });
        Ok(Box::new(CountingUdpSocket {
            socket,
            _raft_handle: raft_handle,
            counters: self.counters.clone(),
            peer_channel: self.peer_channel.clone(),
            buf_recv: vec![0u8; MAX_UDP_PAYLOAD + 1].into_boxed_slice(),
            _registration: registration,
        }))
    }
}

struct CountingUdpSocket {
    socket: tokio::net::UdpSocket,
    /// The handle Raft sends use; the sink holds it weakly, so that the
    /// socket closes when this drops.
    _raft_handle: Arc<std::net::UdpSocket>,
    counters: NetCounters,
    peer_channel: Option<PeerChannel>,
    buf_recv: Box<[u8]>,
    /// This socket's place in the peer channel, taken out when it drops.
    _registration: Option<Registration>,
}

/// Sends Raft datagrams on the gossip socket while it is open.
struct UdpRaftSink {
    socket: Weak<std::net::UdpSocket>,
    counters: NetCounters,
}

impl PeerSink for UdpRaftSink {
    fn send(&self, to: SocketAddr, bytes: Vec<u8>) {
        let fits = bytes
            .len()
            .checked_add(1)
            .is_some_and(|len| len <= MAX_UDP_PAYLOAD);
        if bytes.is_empty() || !fits {
            debug!(%to, len = bytes.len(), "Raft message empty or over the UDP payload limit, dropped");
            self.counters.raft_dropped();
            return;
        }
        let Some(socket) = self.socket.upgrade() else {
            self.counters.raft_dropped();
            return;
        };
        let mut datagram = Vec::with_capacity(bytes.len() + 1);
        datagram.push(RAFT_MARKER);
        datagram.extend_from_slice(&bytes);
        // Non-blocking: a datagram the socket cannot take now is lost.
        match socket.send_to(&datagram, to) {
            Ok(_) => self.counters.raft_sent(bytes.len()),
            Err(err) => {
                debug!(%to, error=%err, "UDP Raft send failed");
                self.counters.raft_dropped();
            }
        }
    }
}

impl CountingUdpSocket {
    /// Hands a Raft datagram's message (after the marker) to the channel.
    fn deliver_raft(&self, from: SocketAddr, len: usize) {
        let message = self.buf_recv.get(1..len).unwrap_or_default();
        self.counters.raft_received_bytes(message.len());
        if message.is_empty() {
            debug!(%from, "empty Raft datagram dropped");
            self.counters.garbage();
            return;
        }
        match &self.peer_channel {
            Some(channel) => {
                channel.deliver(PeerMessage::new(None, from, message.to_vec()));
            }
            None => self.counters.raft_dropped(),
        }
    }
}

#[async_trait]
impl Socket for CountingUdpSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let bytes = match wire::encode_within(&message, MAX_UDP_PAYLOAD) {
            Ok(bytes) => bytes,
            Err(err) => {
                warn!(to=%to, error=%err, "gossip message dropped");
                self.counters.dropped_send();
                return Ok(());
            }
        };
        let len = bytes.len();
        match self.socket.send_to(&bytes, to).await {
            Ok(_) => self.counters.sent(len),
            Err(err) => {
                debug!(to=%to, error=%err, "UDP send failed");
                self.counters.dropped_send();
            }
        }
        Ok(())
    }

    /// Cancel-safe: the only await point is `recv_from` (or the error pause).
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf_recv).await {
                Ok(received) => received,
                Err(err) => {
                    debug!(error=%err, "UDP recv error, ignored");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                }
            };
            if self.buf_recv.get(..len).and_then(<[u8]>::first) == Some(&RAFT_MARKER) {
                self.deliver_raft(from, len);
                continue;
            }
            self.counters.received_bytes(len);
            match wire::decode(&self.buf_recv[..len]) {
                Ok(message) => {
                    self.counters.received_message();
                    return Ok((from, message));
                }
                Err(err) => {
                    debug!(from=%from, len, error=%err, "undecodable gossip datagram dropped");
                    self.counters.garbage();
                }
            }
        }
    }
}
