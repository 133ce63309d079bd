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

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::ChitchatMessage;
use tracing::{debug, warn};

use crate::counters::NetCounters;
use crate::wire;

/// Largest payload a UDP datagram can carry over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Pause after a receive error, so a persistent error cannot spin a core.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Gossip over plain UDP, counted. Cheap to clone; clones share counters.
#[derive(Debug, Clone, Default)]
pub struct CountingUdpTransport {
    counters: NetCounters,
}

impl CountingUdpTransport {
    /// A transport recording into `counters`.
    pub fn new(counters: NetCounters) -> Self {
        Self { counters }
    }

    /// The counters this transport records into.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }
}

#[async_trait]
impl Transport for CountingUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind {listen_addr}/udp for gossip"))?;
        Ok(Box::new(CountingUdpSocket {
            socket,
            counters: self.counters.clone(),
            buf_recv: vec![0u8; MAX_UDP_PAYLOAD + 1].into_boxed_slice(),
        }))
    }
}

struct CountingUdpSocket {
    socket: tokio::net::UdpSocket,
    counters: NetCounters,
    buf_recv: Box<[u8]>,
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
