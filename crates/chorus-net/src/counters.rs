//! Transport counters shared between a transport and whoever reports on it.
//!
//! [`NetCounters`] is a cheap handle (an `Arc` of atomics): clone it into the
//! transport and keep a copy to call [`NetCounters::snapshot`] from a status
//! endpoint. All counters only ever grow; `buffered_bytes` is the one gauge.

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
    /// Connection attempts answered with a QUIC Retry (address validation)
    /// because many handshakes were in progress (QUIC only).
    pub handshakes_retried: u64,
    /// Connection attempts refused because their source IP was over its
    /// handshake rate or its share of the handshake slots (QUIC only).
    pub handshakes_throttled: u64,
    /// Connection attempts refused because every handshake slot open to the
    /// source was taken (QUIC only).
    pub handshakes_refused: u64,
    /// Connections closed right after the hello because the node already
    /// holds its maximum number of connections (QUIC only).
    pub connections_refused: u64,
    /// Peers whose hello claimed a node id their certificate does not name
    /// (QUIC with mutual TLS; also counted in `rejected_peers`).
    pub identity_mismatches: u64,
    /// Incoming streams stopped because the connection or the node had no
    /// buffer budget left for them (QUIC only).
    pub streams_over_budget: u64,
    /// Incoming streams stopped because they did not finish within
    /// `QuicTuning::stream_read_timeout` (QUIC only).
    pub streams_timed_out: u64,
    /// Gauge: bytes held right now for incoming streams being read, for
    /// received messages waiting for chitchat and for received Raft messages
    /// not yet dropped by their reader (QUIC only).
    pub buffered_bytes: u64,
    /// Raft messages handed to the network (see [`PeerChannel`](crate::PeerChannel)).
    #[serde(default)]
    pub raft_messages_sent: u64,
    /// Raft messages received and queued for the consensus engine.
    #[serde(default)]
    pub raft_messages_received: u64,
    /// Raft payload bytes handed to the network (the stream-kind or datagram
    /// marker byte not included).
    #[serde(default)]
    pub raft_bytes_sent: u64,
    /// Raft payload bytes read from the network, oversized ones included.
    #[serde(default)]
    pub raft_bytes_received: u64,
    /// Raft messages dropped on either side: no open socket, oversized, the
    /// peer's queue full, the peer unreachable, a failed or late write, or
    /// the engine's inbox full.
    #[serde(default)]
    pub raft_dropped: u64,
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
    handshakes_retried: AtomicU64,
    handshakes_throttled: AtomicU64,
    handshakes_refused: AtomicU64,
    connections_refused: AtomicU64,
    identity_mismatches: AtomicU64,
    streams_over_budget: AtomicU64,
    streams_timed_out: AtomicU64,
    buffered_bytes: AtomicU64,
    raft_messages_sent: AtomicU64,
    raft_messages_received: AtomicU64,
    raft_bytes_sent: AtomicU64,
    raft_bytes_received: AtomicU64,
    raft_dropped: AtomicU64,
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
            handshakes_retried: load(&i.handshakes_retried),
            handshakes_throttled: load(&i.handshakes_throttled),
            handshakes_refused: load(&i.handshakes_refused),
            connections_refused: load(&i.connections_refused),
            identity_mismatches: load(&i.identity_mismatches),
            streams_over_budget: load(&i.streams_over_budget),
            streams_timed_out: load(&i.streams_timed_out),
            buffered_bytes: load(&i.buffered_bytes),
            raft_messages_sent: load(&i.raft_messages_sent),
            raft_messages_received: load(&i.raft_messages_received),
            raft_bytes_sent: load(&i.raft_bytes_sent),
            raft_bytes_received: load(&i.raft_bytes_received),
            raft_dropped: load(&i.raft_dropped),
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

    pub(crate) fn handshake_retried(&self) {
        bump(&self.inner.handshakes_retried, 1);
    }

    pub(crate) fn handshake_throttled(&self) {
        bump(&self.inner.handshakes_throttled, 1);
    }

    pub(crate) fn handshake_refused(&self) {
        bump(&self.inner.handshakes_refused, 1);
    }

    pub(crate) fn connection_refused(&self) {
        bump(&self.inner.connections_refused, 1);
    }

    pub(crate) fn identity_mismatch(&self) {
        bump(&self.inner.identity_mismatches, 1);
    }

    pub(crate) fn stream_over_budget(&self) {
        bump(&self.inner.streams_over_budget, 1);
    }

    pub(crate) fn stream_timed_out(&self) {
        bump(&self.inner.streams_timed_out, 1);
    }

    /// One Raft message of `len` payload bytes went out.
    pub(crate) fn raft_sent(&self, len: usize) {
        bump(&self.inner.raft_bytes_sent, len as u64);
        bump(&self.inner.raft_messages_sent, 1);
    }

    /// `len` Raft payload bytes came in (deliverable or not).
    pub(crate) fn raft_received_bytes(&self, len: usize) {
        bump(&self.inner.raft_bytes_received, len as u64);
    }

    /// One Raft message was queued for the engine.
    pub(crate) fn raft_received_message(&self) {
        bump(&self.inner.raft_messages_received, 1);
    }

    pub(crate) fn raft_dropped(&self) {
        bump(&self.inner.raft_dropped, 1);
    }

    /// `len` more bytes are buffered.
    pub(crate) fn buffered(&self, len: u64) {
        bump(&self.inner.buffered_bytes, len);
    }

    /// `len` buffered bytes were freed. Callers free only what they added,
    /// so the gauge cannot go below zero; it saturates if one ever did.
    pub(crate) fn unbuffered(&self, len: u64) {
        let _ =
            self.inner
                .buffered_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    Some(held.saturating_sub(len))
                });
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
        b.handshake_retried();
        b.handshake_throttled();
        b.handshake_refused();
        b.connection_refused();
        b.identity_mismatch();
        b.stream_over_budget();
        b.stream_timed_out();
        b.buffered(10);
        b.unbuffered(4);
        b.raft_sent(3);
        b.raft_received_bytes(9);
        b.raft_received_message();
        b.raft_dropped();
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
                handshakes_retried: 1,
                handshakes_throttled: 1,
                handshakes_refused: 1,
                connections_refused: 1,
                identity_mismatches: 1,
                streams_over_budget: 1,
                streams_timed_out: 1,
                buffered_bytes: 6,
                raft_messages_sent: 1,
                raft_messages_received: 1,
                raft_bytes_sent: 3,
                raft_bytes_received: 9,
                raft_dropped: 1,
            }
        );
        b.unbuffered(100);
        assert_eq!(a.snapshot().buffered_bytes, 0);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["bytes_sent"], 15);
        // A snapshot from before the Raft counters still reads.
        let mut old = json.as_object().unwrap().clone();
        old.retain(|key, _| !key.starts_with("raft_"));
        let read: NetStats = serde_json::from_value(old.into()).unwrap();
        assert_eq!(read.raft_dropped, 0);
    }
}
