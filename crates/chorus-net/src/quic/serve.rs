//! Serving an established connection: each unidirectional stream the peer
//! opens is read within its kind's byte budget, size limit and deadline,
//! then handled by its kind.
//!
//! The first byte of a stream names its kind ([`StreamKind::of`]): a Raft
//! stream starts with [`RAFT_MARKER`], which is not part of the message; any
//! other byte is the first of a gossip message's [`wire`] form (which never
//! starts with the marker). Another kind gets a variant, a marker byte that
//! neither gossip nor Raft starts with, and its arm in [`serve_stream`];
//! reading stays the same budgeted, time-limited [`read_stream`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::Serializable;
use quinn::{Connection, ConnectionError, ReadError, RecvStream, VarInt};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::debug;

use super::budget::{ConnectionBudget, Reservation};
use super::handshake::refusal_kind;
use super::hello::{Hello, RejectedPeer};
use super::shared::{Arrival, Shared};
use super::{QuicTuning, MAX_MESSAGE_SIZE, STOP_OVER_BUDGET, STOP_TIMED_OUT, STOP_TOO_LARGE};
use crate::peer::{PeerMessage, MAX_RAFT_MESSAGE_SIZE};
use crate::wire::{self, RAFT_MARKER};

/// Most bytes taken from quinn per read: what a stream may hold unbudgeted
/// between a read and its reservation.
const READ_CHUNK: usize = 64 * 1024;

/// What a unidirectional stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// One chitchat message in its [`wire`] form.
    Gossip,
    /// [`RAFT_MARKER`], then one opaque Raft message.
    Raft,
}

impl StreamKind {
    /// The kind of a stream whose first byte is `first`.
    pub(crate) fn of(first: u8) -> Self {
        if first == RAFT_MARKER {
            StreamKind::Raft
        } else {
            StreamKind::Gossip
        }
    }

    /// Largest message of this kind (the Raft marker not included).
    fn size_limit(self) -> usize {
        match self {
            StreamKind::Gossip => MAX_MESSAGE_SIZE,
            StreamKind::Raft => MAX_RAFT_MESSAGE_SIZE,
        }
    }

    /// How long a stream of this kind may take to arrive whole.
    fn read_timeout(self, tuning: &QuicTuning) -> Duration {
        match self {
            StreamKind::Gossip => tuning.stream_read_timeout,
            StreamKind::Raft => tuning.raft_stream_timeout,
        }
    }

    /// The bytes of the message that the kind's first byte is part of.
    fn prefix(self, first: u8) -> Option<u8> {
        match self {
            StreamKind::Gossip => Some(first),
            StreamKind::Raft => None,
        }
    }
}

/// A connection's receive budgets, one per kind, so that neither kind's
/// streams can use up what the other needs.
pub(crate) struct Budgets {
    pub(crate) gossip: Arc<ConnectionBudget>,
    pub(crate) raft: Arc<ConnectionBudget>,
}

impl Budgets {
    fn of(&self, kind: StreamKind) -> &Arc<ConnectionBudget> {
        match kind {
            StreamKind::Gossip => &self.gossip,
            StreamKind::Raft => &self.raft,
        }
    }
}

/// How reading a stream ended, when it did not end with its last byte.
#[derive(Debug)]
enum Unread {
    /// Longer than its kind allows.
    TooLarge,
    /// The connection's or the socket's budget could not hold it.
    OverBudget,
    /// The peer reset the stream or the connection went away.
    Lost(ReadError),
}

/// Serves `conn` until it closes: `addr` is the peer's gossip address (the
/// sender chitchat sees), `peer` its hello.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    conn: Connection,
    addr: SocketAddr,
    peer: Hello,
    budgets: Budgets,
) {
    let budgets = Arc::new(budgets);
    // Only mutual TLS makes the hello's node id an authenticated one.
    let from_node: Option<Arc<str>> = shared.check_identity.then(|| peer.node_id.as_str().into());
    loop {
        match conn.accept_uni().await {
            Ok(stream) => {
                let from = Sender {
                    addr,
                    node: from_node.clone(),
                };
                tokio::spawn(serve_stream(shared.clone(), stream, from, budgets.clone()));
            }
            Err(err) => {
                report_close(&shared, addr, &peer, &err);
                break;
            }
        }
    }
    shared.forget(addr, &conn);
}

/// A refusal by the peer after the hello (its policy ran late) goes through
/// the rejection path; any other close is routine.
fn report_close(shared: &Shared, addr: SocketAddr, peer: &Hello, err: &ConnectionError) {
    if let ConnectionError::ApplicationClosed(close) = err {
        if let Some(kind) = refusal_kind(close.error_code) {
            shared.report_refusal(RejectedPeer {
                node_id: peer.node_id.clone(),
                addr,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
                by_us: false,
                kind,
            });
            return;
        }
    }
    debug!(peer=%addr, node_id=%peer.node_id, error=%err, "connection closed");
}

/// Who sent a stream.
struct Sender {
    /// The peer's gossip address.
    addr: SocketAddr,
    /// The node id its certificate vouches for (mutual TLS only).
    node: Option<Arc<str>>,
}

/// The first byte of a stream: `Ok(None)` for an empty stream.
async fn first_byte(stream: &mut RecvStream) -> Result<Option<u8>, ReadError> {
    Ok(stream
        .read_chunk(1, true)
        .await?
        .and_then(|chunk| chunk.bytes.first().copied()))
}

/// Reads one stream and hands it to its kind's handler. A stream that is
/// too large, over budget or late is stopped with its own code, counted, and
/// its buffer freed.
async fn serve_stream(
    shared: Arc<Shared>,
    mut stream: RecvStream,
    sender: Sender,
    budgets: Arc<Budgets>,
) {
    let from = sender.addr;
    let opened = Instant::now();
    // Every kind's deadline is at least gossip's, which bounds the wait for the kind byte.
    let first = match timeout(shared.tuning.stream_read_timeout, first_byte(&mut stream)).await {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => {
            debug!(peer=%from, "empty stream dropped");
            shared.counters.garbage();
            return;
        }
        Ok(Err(err)) => {
            debug!(peer=%from, error=%err, "stream lost");
            return;
        }
        Err(_elapsed) => {
            debug!(peer=%from, "stream not started in time: stopped");
            shared.counters.stream_timed_out();
            let _ = stream.stop(VarInt::from_u32(STOP_TIMED_OUT));
            return;
        }
    };
    let kind = StreamKind::of(first);
    let read = timeout_at(
        opened + kind.read_timeout(&shared.tuning),
        read_stream(
            &mut stream,
            budgets.of(kind),
            kind.size_limit(),
            kind.prefix(first),
        ),
    )
    .await;
    // The reading is not the waiting: a big envelope on a slow link may take a while.
    let received = Instant::now();
    let (bytes, reservation) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(Unread::TooLarge)) => {
            debug!(peer=%from, ?kind, limit=kind.size_limit(), "oversized stream stopped");
            match kind {
                StreamKind::Gossip => shared.counters.received_bytes(kind.size_limit()),
                StreamKind::Raft => shared.counters.raft_received_bytes(kind.size_limit()),
            }
            shared.counters.garbage();
            let _ = stream.stop(VarInt::from_u32(STOP_TOO_LARGE));
            return;
        }
        Ok(Err(Unread::OverBudget)) => {
            debug!(peer=%from, "no buffer budget left: stream stopped");
            shared.counters.stream_over_budget();
            let _ = stream.stop(VarInt::from_u32(STOP_OVER_BUDGET));
            return;
        }
        Ok(Err(Unread::Lost(err))) => {
            debug!(peer=%from, error=%err, "stream lost");
            return;
        }
        Err(_elapsed) => {
            debug!(peer=%from, "stream not finished in time: stopped");
            shared.counters.stream_timed_out();
            let _ = stream.stop(VarInt::from_u32(STOP_TIMED_OUT));
            return;
        }
    };
    match kind {
        StreamKind::Gossip => deliver_gossip(&shared, from, received, &bytes, reservation).await,
        StreamKind::Raft => deliver_raft(&shared, sender, bytes, reservation),
    }
}

/// Reads `stream` to its end, at most `limit` bytes after `prefix` (a byte
/// already read that belongs to the message), taking budget for the buffer
/// before it grows. The returned reservation holds the buffer's bytes.
async fn read_stream(
    stream: &mut RecvStream,
    budget: &Arc<ConnectionBudget>,
    limit: usize,
    prefix: Option<u8>,
) -> Result<(Vec<u8>, Reservation), Unread> {
    let mut reservation = budget.reserve();
    let mut buffer: Vec<u8> = Vec::new();
    if let Some(byte) = prefix {
        if limit == 0 {
            return Err(Unread::TooLarge);
        }
        if !reservation.resize(1) {
            return Err(Unread::OverBudget);
        }
        buffer.reserve_exact(1);
        buffer.push(byte);
    }
    loop {
        let chunk = match stream.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Ok((buffer, reservation)),
            Err(err) => return Err(Unread::Lost(err)),
        };
        let needed = buffer
            .len()
            .checked_add(chunk.len())
            .filter(|needed| *needed <= limit)
            .ok_or(Unread::TooLarge)?;
        if needed > buffer.capacity() {
            // Doubling keeps copies few; the exact size is the fallback when
            // the budget cannot give the double.
            let doubled = buffer.capacity().saturating_mul(2).min(limit).max(needed);
            let capacity = if reservation.resize(doubled) {
                doubled
            } else if reservation.resize(needed) {
                needed
            } else {
                return Err(Unread::OverBudget);
            };
            buffer.reserve_exact(capacity - buffer.len());
        }
        buffer.extend_from_slice(&chunk);
    }
}

/// Hands a Raft message to the peer channel, with its reservation: what
/// waits for the engine stays in the connection's Raft budget.
fn deliver_raft(shared: &Shared, sender: Sender, bytes: Vec<u8>, reservation: Reservation) {
    shared.counters.raft_received_bytes(bytes.len());
    if bytes.is_empty() {
        debug!(peer=%sender.addr, "empty Raft message dropped");
        shared.counters.garbage();
        return;
    }
    let Some(channel) = &shared.peer_channel else {
        debug!(peer=%sender.addr, "no Raft channel: message dropped");
        shared.counters.raft_dropped();
        return;
    };
    let from_node = sender.node.as_deref().map(str::to_string);
    channel.deliver(PeerMessage::held(
        from_node,
        sender.addr,
        bytes,
        reservation,
    ));
}

/// Decodes a gossip envelope and queues it for chitchat. The reservation
/// follows the decoded message (sized to its chitchat encoding) until
/// chitchat takes it.
async fn deliver_gossip(
    shared: &Shared,
    from: SocketAddr,
    received: Instant,
    bytes: &[u8],
    mut reservation: Reservation,
) {
    shared.counters.received_bytes(bytes.len());
    let message = match wire::decode(bytes) {
        Ok(message) => message,
        Err(err) => {
            debug!(peer=%from, len=bytes.len(), error=%err, "undecodable envelope dropped");
            shared.counters.garbage();
            return;
        }
    };
    shared.counters.received_message();
    if !reservation.resize(message.serialized_len()) {
        debug!(peer=%from, "no buffer budget left: decoded message dropped");
        shared.counters.stream_over_budget();
        return;
    }
    let arrival = Arrival {
        received,
        from,
        message,
        _held: reservation,
    };
    // Waits when chitchat lags behind, which back-pressures the peer, but no
    // longer than a message stays worth reading.
    if timeout(shared.tuning.max_message_age, shared.inbox.send(arrival))
        .await
        .is_err()
    {
        shared.counters.stale_received();
    }
}
