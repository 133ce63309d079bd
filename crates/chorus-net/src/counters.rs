//! Transport counters shared between a transport and whoever reports on it.
//!
//! [`NetCounters`] is a cheap handle (an `Arc` of atomics): clone it into the
//! transport and keep a copy to call [`NetCounters::snapshot`] from a status
//! endpoint. All counters only ever grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Point-in-time copy of [`NetCounters`], ready to be serialized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// Gossip payload bytes handed to the network (envelope bytes only, no
    /// UDP/QUIC/TLS overhead, no hello).
    pub bytes_sent: u64,
    /// Gossip payload bytes read from the network, including undecodable ones.
    pub bytes_received: u64,
    /// Gossip messages handed to the network.
    pub messages_sent: u64,
    /// Gossip messages decoded and delivered to chitchat.
    pub messages_received: u64,
    /// Messages given to `send` that never reached the network: queue
    /// overflow, peer unreachable or in backoff, write failure, oversized.
    pub dropped_sends: u64,
    /// Envelopes (datagrams or streams) that could not be decoded, or were
    /// over the size limit.
    pub garbage_received: u64,
    /// Messages received but dropped unread because they waited too long
    /// for chitchat (QUIC only; over UDP the socket buffer sheds them).
    pub stale_received: u64,
    /// Connections that failed TLS authentication or the hello protocol.
    pub failed_handshakes: u64,
    /// Peers refused at hello, by us or by them.
    pub rejected_peers: u64,
    /// Connections that passed TLS and the hello, dialed or accepted (QUIC
    /// only): each cost a handshake.
    pub connections_opened: u64,
}

#[derive(Debug, Default)]
struct Inner {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    dropped_sends: AtomicU64,
    garbage_received: AtomicU64,
    stale_received: AtomicU64,
    failed_handshakes: AtomicU64,
    rejected_peers: AtomicU64,
    connections_opened: AtomicU64,
}

/// Shared, lock-free transport counters. Cloning shares the same counters.
#[derive(Debug, Clone, Default)]
pub struct NetCounters {
    inner: Arc<Inner>,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl NetCounters {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies the current values.
    pub fn snapshot(&self) -> NetStats {
        let i = &self.inner;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            bytes_sent: load(&i.bytes_sent),
            bytes_received: load(&i.bytes_received),
            messages_sent: load(&i.messages_sent),
            messages_received: load(&i.messages_received),
            dropped_sends: load(&i.dropped_sends),
            garbage_received: load(&i.garbage_received),
            stale_received: load(&i.stale_received),
            failed_handshakes: load(&i.failed_handshakes),
            rejected_peers: load(&i.rejected_peers),
            connections_opened: load(&i.connections_opened),
        }
    }

    /// One message of `len` bytes went out.
    pub(crate) fn sent(&self, len: usize) {
        bump(&self.inner.bytes_sent, len as u64);
        bump(&self.inner.messages_sent, 1);
    }

    /// `len` bytes came in (decodable or not).
    pub(crate) fn received_bytes(&self, len: usize) {
        bump(&self.inner.bytes_received, len as u64);
    }

    /// One message was decoded and delivered.
    pub(crate) fn received_message(&self) {
        bump(&self.inner.messages_received, 1);
    }

    pub(crate) fn dropped_send(&self) {
        bump(&self.inner.dropped_sends, 1);
    }

    pub(crate) fn garbage(&self) {
        bump(&self.inner.garbage_received, 1);
    }

    pub(crate) fn stale_received(&self) {
        bump(&self.inner.stale_received, 1);
    }

    pub(crate) fn failed_handshake(&self) {
        bump(&self.inner.failed_handshakes, 1);
    }

    pub(crate) fn rejected_peer(&self) {
        bump(&self.inner.rejected_peers, 1);
    }

    pub(crate) fn connection_opened(&self) {
        bump(&self.inner.connections_opened, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_and_snapshot_serializes() {
        let a = NetCounters::new();
        let b = a.clone();
        b.sent(10);
        b.sent(5);
        b.received_bytes(7);
        b.received_message();
        b.dropped_send();
        b.garbage();
        b.stale_received();
        b.failed_handshake();
        b.rejected_peer();
        b.connection_opened();
        let s = a.snapshot();
        assert_eq!(
            s,
            NetStats {
                bytes_sent: 15,
                bytes_received: 7,
                messages_sent: 2,
                messages_received: 1,
                dropped_sends: 1,
                garbage_received: 1,
                stale_received: 1,
                failed_handshakes: 1,
                rejected_peers: 1,
                connections_opened: 1,
            }
        );
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["bytes_sent"], 15);
    }
}
