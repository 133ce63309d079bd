//! State shared by a socket's tasks, and serving established connections.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use chitchat::ChitchatMessage;
use parking_lot::Mutex;
use quinn::{Connection, ConnectionError, ReadToEndError, RecvStream, VarInt};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tracing::{debug, warn};

use super::hello::{Hello, HelloPolicy, RejectObserver, RejectedPeer};
use super::{QuicTuning, CLOSE_HELLO_REJECTED, MAX_MESSAGE_SIZE, STOP_TOO_LARGE};
use crate::counters::NetCounters;
use crate::wire;

/// A decoded message waiting for chitchat, with when it was fully received.
/// Unlike UDP, whose socket buffer overflows and sheds load, QUIC delivers
/// everything: a node that falls behind would answer rounds long over, each
/// answer costing a delta, and never catch up. Late messages are dropped
/// instead.
pub(crate) type Arrival = (Instant, SocketAddr, ChitchatMessage);

/// Entries kept in the per-address maps before expired ones are pruned.
const PRUNE_THRESHOLD: usize = 1024;

/// A dial in progress, see [`Shared::dialing`].
pub(crate) struct Dialing {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Drop for Dialing {
    fn drop(&mut self) {
        self.shared.dialing.lock().remove(&self.addr);
    }
}

/// Everything the socket's tasks share (but not the endpoint, so that these
/// tasks never keep the UDP port bound).
pub(crate) struct Shared {
    pub(crate) counters: NetCounters,
    pub(crate) tuning: QuicTuning,
    pub(crate) policy: HelloPolicy,
    on_reject: RejectObserver,
    /// Our hello, encoded once.
    pub(crate) local_hello: Vec<u8>,
    inbox: mpsc::Sender<Arrival>,
    /// Established (hello passed) connections by peer gossip address.
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    /// Peers we are dialing now.
    dialing: Mutex<HashSet<SocketAddr>>,
    /// Peers refused at hello (either way): no dialing until the instant.
    refused_until: Mutex<HashMap<SocketAddr, Instant>>,
    /// Last authentication-failure warning per address.
    auth_warned: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Shared {
    pub(crate) fn new(
        counters: NetCounters,
        tuning: QuicTuning,
        policy: HelloPolicy,
        on_reject: RejectObserver,
        local_hello: Vec<u8>,
        inbox: mpsc::Sender<Arrival>,
    ) -> Self {
        Self {
            counters,
            tuning,
            policy,
            on_reject,
            local_hello,
            inbox,
            conns: Mutex::default(),
            dialing: Mutex::default(),
            refused_until: Mutex::default(),
            auth_warned: Mutex::default(),
        }
    }

    /// A live established connection to `addr`, if any.
    pub(crate) fn connection(&self, addr: SocketAddr) -> Option<Connection> {
        let mut conns = self.conns.lock();
        match conns.get(&addr) {
            Some(conn) if conn.close_reason().is_none() => Some(conn.clone()),
            Some(_) => {
                conns.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// Peers with a live connection or a dial in progress: gossip to them
    /// costs no new handshake.
    pub(crate) fn connected_peers(&self) -> HashSet<SocketAddr> {
        // Dials first: one that ends between the two reads is adopted before
        // its mark goes, so it is seen in one or the other.
        let mut peers: HashSet<SocketAddr> = self.dialing.lock().clone();
        peers.extend(
            self.conns
                .lock()
                .iter()
                .filter(|(_, conn)| conn.close_reason().is_none())
                .map(|(addr, _)| *addr),
        );
        peers
    }

    /// Marks `addr` as being dialed until the returned guard drops. A set,
    /// not a count: the outbox dials an address from its one peer task.
    pub(crate) fn dialing(self: &Arc<Self>, addr: SocketAddr) -> Dialing {
        self.dialing.lock().insert(addr);
        Dialing {
            shared: self.clone(),
            addr,
        }
    }

    /// Registers `conn` for `addr` and serves it until it closes.
    pub(crate) fn adopt(self: &Arc<Self>, addr: SocketAddr, conn: Connection, peer: Hello) {
        self.counters.connection_opened();
        self.conns.lock().insert(addr, conn.clone());
        tokio::spawn(serve_connection(self.clone(), conn, addr, peer));
    }

    fn forget(&self, addr: SocketAddr, conn: &Connection) {
        let mut conns = self.conns.lock();
        if conns.get(&addr).map(Connection::stable_id) == Some(conn.stable_id()) {
            conns.remove(&addr);
        }
    }

    /// Whether `addr` was refused recently (no dialing then).
    pub(crate) fn is_refused(&self, addr: SocketAddr) -> bool {
        let mut refused = self.refused_until.lock();
        match refused.get(&addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                refused.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// Counts, backs off from and reports a refusal.
    pub(crate) fn report_refusal(&self, rejected: RejectedPeer) {
        debug!(peer=%rejected.addr, node_id=%rejected.node_id, by_us=rejected.by_us,
            reason=%rejected.reason, "peer refused at hello");
        self.counters.rejected_peer();
        let now = Instant::now();
        {
            let mut refused = self.refused_until.lock();
            if refused.len() >= PRUNE_THRESHOLD {
                refused.retain(|_, until| *until > now);
            }
            refused.insert(rejected.addr, now + self.tuning.reject_backoff);
        }
        (self.on_reject)(rejected);
    }

    /// Counts a failed TLS authentication and warns (rate-limited per peer).
    pub(crate) fn report_auth_failure(&self, addr: SocketAddr, what: &str, err: &ConnectionError) {
        self.counters.failed_handshake();
        if self.should_warn(addr) {
            warn!(peer=%addr, error=%err,
                "authentication failed: {what} (is it a member of this cluster, with a \
                 certificate signed by the cluster CA?)");
        } else {
            debug!(peer=%addr, error=%err, "authentication failed: {what}");
        }
    }

    /// Counts a hello that went wrong (garbage, timeout) and warns (rate-limited).
    pub(crate) fn report_bad_hello(&self, addr: SocketAddr, detail: &str) {
        self.counters.failed_handshake();
        if self.should_warn(addr) {
            warn!(peer=%addr, "hello failed: {detail}");
        } else {
            debug!(peer=%addr, "hello failed: {detail}");
        }
    }

    fn should_warn(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        let interval = self.tuning.auth_warn_interval;
        let mut warned = self.auth_warned.lock();
        if warned.len() >= PRUNE_THRESHOLD {
            warned.retain(|_, at| now.duration_since(*at) < interval);
        }
        match warned.get(&addr) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                warned.insert(addr, now);
                true
            }
        }
    }
}

/// Reads envelopes from `conn` until it closes; `addr` is the peer's gossip
/// address, given to chitchat as the sender.
async fn serve_connection(shared: Arc<Shared>, conn: Connection, addr: SocketAddr, peer: Hello) {
    loop {
        match conn.accept_uni().await {
            Ok(stream) => {
                tokio::spawn(read_envelope(shared.clone(), stream, addr));
            }
            Err(err) => {
                match &err {
                    ConnectionError::ApplicationClosed(close)
                        if close.error_code == VarInt::from_u32(CLOSE_HELLO_REJECTED) =>
                    {
                        shared.report_refusal(RejectedPeer {
                            node_id: peer.node_id.clone(),
                            addr,
                            reason: String::from_utf8_lossy(&close.reason).into_owned(),
                            by_us: false,
                        });
                    }
                    _ => debug!(peer=%addr, node_id=%peer.node_id, error=%err, "connection closed"),
                }
                break;
            }
        }
    }
    shared.forget(addr, &conn);
}

/// Reads one envelope (size- and time-limited), decodes and delivers it.
async fn read_envelope(shared: Arc<Shared>, mut stream: RecvStream, from: SocketAddr) {
    let read = timeout(
        shared.tuning.stream_read_timeout,
        stream.read_to_end(MAX_MESSAGE_SIZE),
    )
    .await;
    // The reading is not the waiting: a big envelope on a slow link may take a while.
    let received = Instant::now();
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadToEndError::TooLong)) => {
            debug!(peer=%from, limit=MAX_MESSAGE_SIZE, "oversized envelope dropped");
            shared.counters.received_bytes(MAX_MESSAGE_SIZE);
            shared.counters.garbage();
            let _ = stream.stop(VarInt::from_u32(STOP_TOO_LARGE));
            return;
        }
        Ok(Err(ReadToEndError::Read(err))) => {
            debug!(peer=%from, error=%err, "envelope lost");
            return;
        }
        Err(_elapsed) => {
            debug!(peer=%from, "envelope not finished in time, dropped");
            shared.counters.garbage();
            return;
        }
    };
    shared.counters.received_bytes(bytes.len());
    match wire::decode(&bytes) {
        Ok(message) => {
            shared.counters.received_message();
            // Waits when chitchat lags behind: that back-pressures the peer.
            let _ = shared.inbox.send((received, from, message)).await;
        }
        Err(err) => {
            debug!(peer=%from, len=bytes.len(), error=%err, "undecodable envelope dropped");
            shared.counters.garbage();
        }
    }
}
