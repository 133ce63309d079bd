//! Serving an established connection: each unidirectional stream the peer
//! opens is read within the connection's byte budget and a deadline, then
//! handled by its kind.
//!
//! Every stream is gossip today ([`StreamKind::Gossip`]). Another kind gets a
//! variant, a way to tell it from the stream (a first byte, once the wire
//! protocol has one) in [`StreamKind::of`], and its arm in [`serve_stream`];
//! reading stays the same budgeted, time-limited [`read_stream`].

use std::net::SocketAddr;
use std::sync::Arc;

use chitchat::Serializable;
use quinn::{Connection, ConnectionError, ReadError, RecvStream, VarInt};
use tokio::time::{timeout, Instant};
use tracing::debug;

use super::budget::{ConnectionBudget, Reservation};
use super::handshake::refusal_kind;
use super::hello::{Hello, RejectedPeer};
use super::shared::{Arrival, Shared};
use super::{MAX_MESSAGE_SIZE, STOP_OVER_BUDGET, STOP_TIMED_OUT, STOP_TOO_LARGE};
use crate::wire;

/// Most bytes taken from quinn per read: what a stream may hold unbudgeted
/// between a read and its reservation.
const READ_CHUNK: usize = 64 * 1024;

/// What a unidirectional stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// One chitchat message in its [`wire`] form.
    Gossip,
}

impl StreamKind {
    /// The kind of a stream just opened by the peer.
    fn of(_stream: &RecvStream) -> Self {
        StreamKind::Gossip
    }

    /// Largest stream of this kind.
    fn size_limit(self) -> usize {
        match self {
            StreamKind::Gossip => MAX_MESSAGE_SIZE,
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
    budget: Arc<ConnectionBudget>,
) {
    loop {
        match conn.accept_uni().await {
            Ok(stream) => {
                tokio::spawn(serve_stream(shared.clone(), stream, addr, budget.clone()));
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

/// Reads one stream and hands it to its kind's handler. A stream that is
/// too large, over budget or late is stopped with its own code, counted, and
/// its buffer freed.
async fn serve_stream(
    shared: Arc<Shared>,
    mut stream: RecvStream,
    from: SocketAddr,
    budget: Arc<ConnectionBudget>,
) {
    let kind = StreamKind::of(&stream);
    let read = timeout(
        shared.tuning.stream_read_timeout,
        read_stream(&mut stream, &budget, kind.size_limit()),
    )
    .await;
    // The reading is not the waiting: a big envelope on a slow link may take a while.
    let received = Instant::now();
    let (bytes, reservation) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(Unread::TooLarge)) => {
            debug!(peer=%from, limit=kind.size_limit(), "oversized stream stopped");
            shared.counters.received_bytes(kind.size_limit());
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
    }
}

/// Reads `stream` to its end, at most `limit` bytes, taking budget for the
/// buffer before it grows. The returned reservation holds the buffer's bytes.
async fn read_stream(
    stream: &mut RecvStream,
    budget: &Arc<ConnectionBudget>,
    limit: usize,
) -> Result<(Vec<u8>, Reservation), Unread> {
    let mut reservation = budget.reserve();
    let mut buffer: Vec<u8> = Vec::new();
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
