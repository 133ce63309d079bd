//! Per-peer send queues, and the tasks that drain them.
//!
//! A socket has one [`Outbox`] per [`Lane`]: gossip and Raft queue and write
//! apart, so a snapshot being written never holds gossip back, and a gossip
//! burst never pushes Raft messages out of a queue. Both take the same
//! connections; a per-peer gate keeps them from dialing the same peer twice.
//!
//! `push` is synchronous and never waits: it appends to the peer's bounded
//! queue (dropping the oldest message when full) and wakes the peer's task,
//! spawning it if needed. The task takes a live connection (ours or one the
//! peer opened), dials when there is none (unless the peer is backing off),
//! and writes each message on its own stream. A task with nothing to do for
//! a while exits.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{timeout, Instant};
use tracing::debug;

use super::handshake::dial;
use super::shared::Shared;
use super::{QuicTuning, PEER_QUEUE_CAPACITY, RAFT_QUEUE_BYTES, RAFT_QUEUE_CAPACITY};
use crate::wire::RAFT_MARKER;

/// What an outbox carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// chitchat messages in their wire form.
    Gossip,
    /// Opaque Raft messages, each written after [`RAFT_MARKER`].
    Raft,
}

impl Lane {
    /// Messages a peer's queue holds before the oldest is dropped.
    fn capacity(self) -> usize {
        match self {
            Lane::Gossip => PEER_QUEUE_CAPACITY,
            Lane::Raft => RAFT_QUEUE_CAPACITY,
        }
    }

    /// Bytes a peer's queue holds before the oldest messages are dropped
    /// (gossip messages are small and few: the count bounds them).
    fn max_bytes(self) -> usize {
        match self {
            Lane::Gossip => usize::MAX,
            Lane::Raft => RAFT_QUEUE_BYTES,
        }
    }

    fn write_timeout(self, tuning: &QuicTuning) -> Duration {
        match self {
            Lane::Gossip => tuning.write_timeout,
            Lane::Raft => tuning.raft_stream_timeout,
        }
    }

    /// What the stream starts with before the message.
    fn marker(self) -> &'static [u8] {
        match self {
            Lane::Gossip => &[],
            Lane::Raft => &[RAFT_MARKER],
        }
    }

    fn count_sent(self, shared: &Shared, len: usize) {
        match self {
            Lane::Gossip => shared.counters.sent(len),
            Lane::Raft => shared.counters.raft_sent(len),
        }
    }

    fn count_dropped(self, shared: &Shared) {
        match self {
            Lane::Gossip => shared.counters.dropped_send(),
            Lane::Raft => shared.counters.raft_dropped(),
        }
    }
}

struct PeerQueue {
    messages: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes of `messages`.
    bytes: usize,
    wake: Arc<Notify>,
    task: AbortHandle,
}

/// All per-peer queues of one socket for one lane.
pub(crate) struct Outbox {
    lane: Lane,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    peers: Mutex<HashMap<SocketAddr, PeerQueue>>,
    /// Set when the socket goes: later pushes are dropped instead of
    /// spawning tasks for a closed endpoint.
    closed: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(lane: Lane, endpoint: Endpoint, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            lane,
            endpoint,
            shared,
            peers: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues `message` for `to`. Never waits.
    pub(crate) fn push(self: &Arc<Self>, to: SocketAddr, message: Vec<u8>) {
        if self.closed.load(Ordering::Acquire) {
            self.lane.count_dropped(&self.shared);
            return;
        }
        let mut peers = self.peers.lock();
        let queue = peers.entry(to).or_insert_with(|| {
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(self.clone().run(to, wake.clone())).abort_handle();
            PeerQueue {
                messages: VecDeque::with_capacity(4),
                bytes: 0,
                wake,
                task,
            }
        });
        let (capacity, max_bytes) = (self.lane.capacity(), self.lane.max_bytes());
        while !queue.messages.is_empty()
            && (queue.messages.len() >= capacity
                || queue.bytes.saturating_add(message.len()) > max_bytes)
        {
            if let Some((_, dropped)) = queue.messages.pop_front() {
                queue.bytes = queue.bytes.saturating_sub(dropped.len());
            }
            self.lane.count_dropped(&self.shared);
        }
        queue.bytes = queue.bytes.saturating_add(message.len());
        queue.messages.push_back((Instant::now(), message));
        queue.wake.notify_one();
    }

    /// The oldest message still worth sending: one that waited longer than
    /// `max_message_age` (behind a slow dial) belongs to a gossip round that
    /// is over.
    fn pop(&self, to: SocketAddr) -> Option<Vec<u8>> {
        let mut peers = self.peers.lock();
        let queue = peers.get_mut(&to)?;
        while let Some((queued, message)) = queue.messages.pop_front() {
            queue.bytes = queue.bytes.saturating_sub(message.len());
            if !self.shared.tuning.is_late(queued) {
                return Some(message);
            }
            self.lane.count_dropped(&self.shared);
        }
        None
    }

    /// Removes the peer's queue if it is empty; true if removed.
    fn retire_if_idle(&self, to: SocketAddr) -> bool {
        let mut peers = self.peers.lock();
        match peers.get(&to) {
            Some(queue) if queue.messages.is_empty() => {
                peers.remove(&to);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Stops every peer task and forgets the queues.
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for (_, queue) in self.peers.lock().drain() {
            queue.task.abort();
        }
    }

    /// The peer task: drains `to`'s queue until idle.
    async fn run(self: Arc<Self>, to: SocketAddr, wake: Arc<Notify>) {
        let mut backoff = Backoff::new(
            self.shared.tuning.dial_backoff_min,
            self.shared.tuning.dial_backoff_max,
        );
        loop {
            let Some(message) = self.pop(to) else {
                match timeout(self.shared.tuning.peer_idle, wake.notified()).await {
                    Ok(()) => continue,
                    Err(_idle) if self.retire_if_idle(to) => return,
                    Err(_idle) => continue,
                }
            };
            let lane = self.lane;
            let Some(conn) = self.connection(to, &mut backoff).await else {
                lane.count_dropped(&self.shared);
                continue;
            };
            let len = message.len();
            let written = write(&conn, lane.marker(), &message);
            match timeout(lane.write_timeout(&self.shared.tuning), written).await {
                Ok(Ok(())) => lane.count_sent(&self.shared, len),
                Ok(Err(err)) => {
                    debug!(peer=%to, ?lane, error=%err, "send failed");
                    lane.count_dropped(&self.shared);
                }
                Err(_elapsed) => {
                    debug!(peer=%to, ?lane, "send timed out");
                    lane.count_dropped(&self.shared);
                }
            }
        }
    }

    /// A live connection to `to`: an existing one, or a fresh dial unless
    /// the peer is backing off.
    async fn connection(&self, to: SocketAddr, backoff: &mut Backoff) -> Option<Connection> {
        if let Some(conn) = self.shared.connection(to) {
            backoff.reset();
            return Some(conn);
        }
        if backoff.waiting() || self.shared.is_refused(to) {
            return None;
        }
        // The other lane may be dialing this peer: wait for its dial, then
        // take its connection rather than open a second one.
        let gate = self.shared.dial_gate(to);
        let _turn = gate.lock().await;
        if let Some(conn) = self.shared.connection(to) {
            backoff.reset();
            return Some(conn);
        }
        if self.shared.is_refused(to) {
            return None;
        }
        match dial(&self.shared, &self.endpoint, to).await {
            Some(conn) => {
                backoff.reset();
                Some(conn)
            }
            None => {
                backoff.failed();
                None
            }
        }
    }
}

/// One message, one unidirectional stream: the lane's marker, then the message.
async fn write(conn: &Connection, marker: &[u8], message: &[u8]) -> anyhow::Result<()> {
    let mut stream = conn.open_uni().await?;
    stream.write_all(marker).await?;
    stream.write_all(message).await?;
    stream.finish()?;
    Ok(())
}

/// Exponential dial backoff.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    until: Option<Instant>,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
            until: None,
        }
    }

    fn waiting(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    fn failed(&mut self) {
        self.until = Some(Instant::now() + self.current);
        self.current = (self.current * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.current = self.min;
        self.until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        assert!(!b.waiting());
        b.failed();
        assert!(b.waiting());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!b.waiting());
        b.failed();
        b.failed();
        b.failed();
        assert_eq!(b.current, Duration::from_secs(4));
        b.reset();
        assert!(!b.waiting());
        assert_eq!(b.current, Duration::from_secs(1));
    }
}
