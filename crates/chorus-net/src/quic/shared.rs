//! State shared by a socket's tasks: connection registry, handshake
//! admission, buffer budget, refusal backoff, counters.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use chitchat::ChitchatMessage;
use parking_lot::Mutex;
use quinn::{Connection, ConnectionError, VarInt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::admission::Admission;
use super::budget::{BufferPool, Reservation};
use super::hello::{ClaimCheck, Hello, HelloPolicy, RejectObserver, RejectedPeer};
use super::links::{Links, Refusal, Role};
use super::serve::serve_connection;
use super::serve::Budgets;
use super::{QuicConfig, QuicTuning, CLOSE_BUSY, CLOSE_SUPERSEDED};
use crate::counters::NetCounters;
use crate::peer::PeerChannel;

/// A decoded message waiting for chitchat, with when it was fully received.
/// Unlike UDP, whose socket buffer overflows and sheds load, QUIC delivers
/// everything: a node that falls behind would answer rounds long over, each
/// answer costing a delta, and never catch up. Late messages are dropped
/// instead.
pub(crate) struct Arrival {
    pub(crate) received: Instant,
    pub(crate) from: SocketAddr,
    pub(crate) message: ChitchatMessage,
    /// The message's share of its connection's buffer budget, given back
    /// when chitchat takes the message (or it is dropped).
    pub(crate) _held: Reservation,
}

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
    pub(crate) claim_check: Option<ClaimCheck>,
    /// Our hello, encoded once.
    pub(crate) local_hello: Vec<u8>,
    /// Whether peers' hellos are checked against their certificates (mutual
    /// TLS; insecure peers have no meaningful certificate).
    pub(crate) check_identity: bool,
    pub(crate) inbox: mpsc::Sender<Arrival>,
    /// Who may start a handshake with us.
    pub(crate) admission: Arc<Mutex<Admission>>,
    /// What peers' gossip streams may make us hold.
    buffers: Arc<BufferPool>,
    /// What peers' Raft streams may make us hold.
    raft_buffers: Arc<BufferPool>,
    /// Where received Raft messages go, if anywhere.
    pub(crate) peer_channel: Option<PeerChannel>,
    /// One dial at a time per peer, whichever lane asks: see [`Self::dial_gate`].
    dial_gates: Mutex<HashMap<SocketAddr, Weak<tokio::sync::Mutex<()>>>>,
    /// Established (hello passed) connections by peer gossip address.
    links: Mutex<Links>,
    /// Peers we are dialing now.
    dialing: Mutex<HashSet<SocketAddr>>,
    /// Peers refused at hello (either way): no dialing until the instant.
    refused_until: Mutex<HashMap<SocketAddr, Instant>>,
    /// Last authentication-failure warning per address.
    auth_warned: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Shared {
    /// State for a socket of `config`, whose hello is `local_hello`. Peers' hellos are
    /// checked against their certificates unless `config`'s TLS is insecure (insecure peers
    /// have no meaningful certificate).
    pub(crate) fn new(
        config: &QuicConfig,
        local_hello: Vec<u8>,
        inbox: mpsc::Sender<Arrival>,
    ) -> Self {
        let counters = config.counters.clone();
        Self {
            buffers: BufferPool::new(counters.clone()),
            raft_buffers: BufferPool::raft(counters.clone()),
            peer_channel: config.peer_channel.clone(),
            dial_gates: Mutex::default(),
            counters,
            tuning: config.tuning.clone(),
            policy: config.policy.clone(),
            on_reject: config.on_reject.clone(),
            claim_check: config.claim_check.clone(),
            check_identity: !config.tls.is_insecure(),
            local_hello,
            inbox,
            admission: Arc::new(Mutex::new(Admission::new(Instant::now()))),
            links: Mutex::default(),
            dialing: Mutex::default(),
            refused_until: Mutex::default(),
            auth_warned: Mutex::default(),
        }
    }

    /// A live established connection to `addr`, if any.
    pub(crate) fn connection(&self, addr: SocketAddr) -> Option<Connection> {
        self.links.lock().live(addr)
    }

    /// Peers with a live connection or a dial in progress: gossip to them
    /// costs no new handshake.
    pub(crate) fn connected_peers(&self) -> HashSet<SocketAddr> {
        // Dials first: one that ends between the two reads is adopted before
        // its mark goes, so it is seen in one or the other.
        let mut peers: HashSet<SocketAddr> = self.dialing.lock().clone();
        peers.extend(self.links.lock().connected_set());
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

    /// The gate that dials to `addr` pass one at a time, so the gossip and
    /// Raft lanes never both dial a peer. Gates live as long as someone holds
    /// them; forgotten ones are pruned as the map grows.
    pub(crate) fn dial_gate(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.dial_gates.lock();
        if let Some(gate) = gates.get(&addr).and_then(Weak::upgrade) {
            return gate;
        }
        if gates.len() >= PRUNE_THRESHOLD {
            gates.retain(|_, gate| gate.strong_count() > 0);
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(addr, Arc::downgrade(&gate));
        gate
    }

    /// Registers `conn` (which passed the hello in `role`) for the peer
    /// gossip address `addr` and serves it until it closes. False, with the
    /// connection closed and counted, if the registry refuses it.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        addr: SocketAddr,
        role: Role,
        conn: Connection,
        peer: Hello,
    ) -> bool {
        let inserted = self
            .links
            .lock()
            .insert(addr, role, &peer.node_id, conn.clone());
        let replaced = match inserted {
            Ok(replaced) => replaced,
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::Full => "too many connections".to_string(),
                    Refusal::Taken(holder) => {
                        format!("gossip address {addr} is held by node {holder:?}")
                    }
                };
                debug!(peer=%addr, node_id=%peer.node_id, %reason, "connection refused after hello");
                self.counters.connection_refused();
                conn.close(VarInt::from_u32(CLOSE_BUSY), reason.as_bytes());
                return false;
            }
        };
        for old in replaced {
            old.close(
                VarInt::from_u32(CLOSE_SUPERSEDED),
                b"replaced by a newer connection",
            );
        }
        self.counters.connection_opened();
        self.admission
            .lock()
            .note_peer(conn.remote_address(), Instant::now());
        let budgets = Budgets {
            gossip: self.buffers.connection(),
            raft: self.raft_buffers.connection(),
        };
        tokio::spawn(serve_connection(self.clone(), conn, addr, peer, budgets));
        true
    }

    /// Forgets a closed connection; its address stays known for a while.
    pub(crate) fn forget(&self, addr: SocketAddr, conn: &Connection) {
        self.links.lock().remove(addr, conn);
        self.admission
            .lock()
            .note_peer(conn.remote_address(), Instant::now());
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
