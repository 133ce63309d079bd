//! The byte budget for what peers make us hold: incoming streams being read
//! and received messages waiting for chitchat.
//!
//! Bytes are taken before they are buffered, and given back when the buffer
//! goes (a [`Reservation`] gives back what it holds when dropped, so a
//! stopped, timed-out or cancelled read frees its budget with its buffer).
//! Each connection may hold [`MAX_BUFFERED_PER_CONNECTION`] bytes. Its first
//! [`CONNECTION_FLOOR`] bytes are its own, so that a peer always has room for
//! a gossip message whatever others do; the rest is borrowed from one pool of
//! [`SHARED_BUFFER_POOL`] bytes for the whole socket. A take that would pass
//! either limit fails, and the caller stops the stream.
//!
//! With at most [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS) connections, the
//! socket holds at most [`MAX_BUFFERED_BYTES`] this way. A connection that
//! closes stops its reads at once; only its messages already waiting for
//! chitchat keep their share, for at most `QuicTuning::max_message_age`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::MAX_CONNECTIONS;
use crate::counters::NetCounters;

/// Bytes one connection may have buffered; a stream that would take it over
/// is stopped ([`STOP_OVER_BUDGET`](super::STOP_OVER_BUDGET)). Twice the
/// largest message, so that one may wait for chitchat while the next arrives.
pub const MAX_BUFFERED_PER_CONNECTION: usize = 2 * super::MAX_MESSAGE_SIZE;

/// Bytes of each connection's budget that are its own, not borrowed from the
/// shared pool: room for any gossip message (chitchat keeps them under
/// 64 KiB) even when the pool is empty.
pub const CONNECTION_FLOOR: usize = 128 * 1024;

/// Bytes all connections of a socket may borrow beyond their floor; when it
/// is empty, streams that need more than their connection's floor are stopped.
pub const SHARED_BUFFER_POOL: usize = 32 * 1024 * 1024;

/// Raft's share of each connection's budget, like [`CONNECTION_FLOOR`] for
/// gossip: room for votes, heartbeats and their answers (well under 1 KiB
/// each) whatever other peers' snapshots take from [`RAFT_BUFFER_POOL`].
pub const RAFT_CONNECTION_FLOOR: usize = 32 * 1024;

/// Bytes one connection may have buffered for Raft: two of the largest
/// messages, so that one may wait for the engine while the next arrives.
pub const MAX_RAFT_BUFFERED_PER_CONNECTION: usize = 2 * crate::peer::MAX_RAFT_MESSAGE_SIZE;

/// Bytes all connections of a socket may borrow beyond their Raft floor:
/// two snapshots in flight at once. Raft streams draw on this pool, not on
/// gossip's, so snapshots never stop gossip streams and gossip never stops
/// Raft's.
pub const RAFT_BUFFER_POOL: usize = 24 * 1024 * 1024;

/// The most a socket buffers for peers: every connection at its gossip and
/// Raft floors plus both shared pools (136 MiB; gossip alone, 96 MiB).
pub const MAX_BUFFERED_BYTES: usize = MAX_CONNECTIONS * (CONNECTION_FLOOR + RAFT_CONNECTION_FLOOR)
    + SHARED_BUFFER_POOL
    + RAFT_BUFFER_POOL;

/// A socket's shared pool; bytes in use are reported to the counters' gauge.
pub(crate) struct BufferPool {
    free: AtomicUsize,
    floor: usize,
    per_connection: usize,
    counters: NetCounters,
}

impl BufferPool {
    /// The production limits.
    pub(crate) fn new(counters: NetCounters) -> Arc<Self> {
        Self::with_limits(
            counters,
            SHARED_BUFFER_POOL,
            CONNECTION_FLOOR,
            MAX_BUFFERED_PER_CONNECTION,
        )
    }

    /// The production limits for Raft streams.
    pub(crate) fn raft(counters: NetCounters) -> Arc<Self> {
        Self::with_limits(
            counters,
            RAFT_BUFFER_POOL,
            RAFT_CONNECTION_FLOOR,
            MAX_RAFT_BUFFERED_PER_CONNECTION,
        )
    }

    fn with_limits(
        counters: NetCounters,
        shared: usize,
        floor: usize,
        per_connection: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            free: AtomicUsize::new(shared),
            floor,
            per_connection,
            counters,
        })
    }

    fn borrow(&self, n: usize) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(n)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.free.fetch_add(n, Ordering::AcqRel);
    }

    /// A fresh budget for one connection.
    pub(crate) fn connection(self: &Arc<Self>) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget {
            pool: self.clone(),
            held: Mutex::new(Held::default()),
        })
    }
}

#[derive(Debug, Default)]
struct Held {
    /// Bytes held by the connection's reservations.
    used: usize,
    /// Of which borrowed from the pool (always `used - floor`, or 0).
    borrowed: usize,
}

/// One connection's share of the budget.
pub(crate) struct ConnectionBudget {
    pool: Arc<BufferPool>,
    held: Mutex<Held>,
}

impl ConnectionBudget {
    /// An empty reservation against this connection.
    pub(crate) fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let pool = &self.pool;
        let mut held = self.held.lock();
        let Some(used) = held.used.checked_add(n) else {
            return false;
        };
        if used > pool.per_connection {
            return false;
        }
        let borrowed = used.saturating_sub(pool.floor);
        let more = borrowed.saturating_sub(held.borrowed);
        if more > 0 && !pool.borrow(more) {
            return false;
        }
        held.used = used;
        held.borrowed = borrowed;
        pool.counters.buffered(n as u64);
        true
    }

    fn give_back(&self, n: usize) {
        let pool = &self.pool;
        let mut held = self.held.lock();
        held.used = held.used.saturating_sub(n);
        let borrowed = held.used.saturating_sub(pool.floor);
        pool.give_back(held.borrowed.saturating_sub(borrowed));
        held.borrowed = borrowed;
        pool.counters.unbuffered(n as u64);
    }
}

/// Bytes taken from a connection's budget; dropping it gives them back.
pub(crate) struct Reservation {
    budget: Arc<ConnectionBudget>,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds exactly `bytes`: takes the difference, or gives it back. False
    /// (and nothing changed) if the budget cannot give that much.
    pub(crate) fn resize(&mut self, bytes: usize) -> bool {
        if bytes > self.bytes {
            if !self.budget.take(bytes - self.bytes) {
                return false;
            }
        } else {
            self.budget.give_back(self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_keeps_its_floor_when_the_pool_is_empty() {
        let counters = NetCounters::new();
        let pool = BufferPool::with_limits(counters.clone(), 100, 10, 60);
        let (hog, other) = (pool.connection(), pool.connection());
        let mut big = hog.reserve();
        // Over the per-connection limit: refused, nothing taken.
        assert!(!big.resize(61));
        assert_eq!(counters.snapshot().buffered_bytes, 0);
        assert!(big.resize(60));
        let hog2 = pool.connection();
        let mut second = hog2.reserve();
        // 2 x 50 borrowed: the pool is empty.
        assert!(second.resize(60));
        let mut small = other.reserve();
        assert!(small.resize(10), "the floor is not borrowed");
        assert!(!small.resize(11), "the pool is empty");
        assert_eq!(counters.snapshot().buffered_bytes, 130);
        // Shrinking gives the borrowed part back.
        assert!(big.resize(5));
        assert!(small.resize(40));
        drop(big);
        drop(second);
        drop(small);
        assert_eq!(counters.snapshot().buffered_bytes, 0);
        assert_eq!(pool.free.load(Ordering::Acquire), 100);
    }

    #[test]
    fn reservations_of_one_connection_add_up() {
        let pool = BufferPool::with_limits(NetCounters::new(), 1000, 10, 60);
        let conn = pool.connection();
        let (mut a, mut b) = (conn.reserve(), conn.reserve());
        assert!(a.resize(40));
        assert!(!b.resize(21));
        assert!(b.resize(20));
        assert_eq!(a.bytes() + b.bytes(), 60);
        drop(a);
        assert!(b.resize(60));
        assert_eq!(pool.free.load(Ordering::Acquire), 950);
    }
}
