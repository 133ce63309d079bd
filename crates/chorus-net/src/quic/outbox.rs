//! Per-peer send queues, and the tasks that drain them.
//!
//! `push` is synchronous and never waits: it appends to the peer's bounded
//! queue (dropping the oldest message when full) and wakes the peer's task,
//! spawning it if needed. The task takes a live connection (ours or one the
//! peer opened), dials when there is none (unless the peer is backing off),
//! and writes each message on its own stream. A task with nothing to do for
//! a while exits.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
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
use super::PEER_QUEUE_CAPACITY;

struct PeerQueue {
    messages: VecDeque<(Instant, Vec<u8>)>,
    wake: Arc<Notify>,
    task: AbortHandle,
}

/// All per-peer queues of one socket.
pub(crate) struct Outbox {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    peers: Mutex<HashMap<SocketAddr, PeerQueue>>,
}

impl Outbox {
    pub(crate) fn new(endpoint: Endpoint, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            shared,
            peers: Mutex::default(),
        })
    }

    /// Queues `message` for `to`. Never waits.
    pub(crate) fn push(self: &Arc<Self>, to: SocketAddr, message: Vec<u8>) {
        let mut peers = self.peers.lock();
        let queue = peers.entry(to).or_insert_with(|| {
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(self.clone().run(to, wake.clone())).abort_handle();
            PeerQueue {
                messages: VecDeque::with_capacity(4),
                wake,
                task,
            }
        });
        if queue.messages.len() >= PEER_QUEUE_CAPACITY {
            queue.messages.pop_front();
            self.shared.counters.dropped_send();
        }
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
            if !self.shared.tuning.is_late(queued) {
                return Some(message);
            }
            self.shared.counters.dropped_send();
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
            let Some(conn) = self.connection(to, &mut backoff).await else {
                self.shared.counters.dropped_send();
                continue;
            };
            let len = message.len();
            match timeout(self.shared.tuning.write_timeout, write(&conn, &message)).await {
                Ok(Ok(())) => self.shared.counters.sent(len),
                Ok(Err(err)) => {
                    debug!(peer=%to, error=%err, "send failed");
                    self.shared.counters.dropped_send();
                }
                Err(_elapsed) => {
                    debug!(peer=%to, "send timed out");
                    self.shared.counters.dropped_send();
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

/// One message, one unidirectional stream.
async fn write(conn: &Connection, message: &[u8]) -> anyhow::Result<()> {
    let mut stream = conn.open_uni().await?;
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
