//! [`QuicTransport`]: chitchat gossip over QUIC with mutual TLS.
//!
//! One quinn endpoint per opened socket both listens and dials. Files:
//! - `hello.rs`: the [`Hello`] exchanged after the TLS handshake, policies.
//! - `admission.rs`: which connection attempts may start a handshake
//!   (address validation under load, per-source limits, known peers first).
//! - `handshake.rs`: running the hello on a fresh connection (both roles),
//!   checking the peer's identity, classifying and reporting failures.
//! - `links.rs`: the registry of established connections, by peer address.
//! - `budget.rs`: the byte budget for what peers make us buffer.
//! - `serve.rs`: serving an established connection (one unidirectional
//!   stream per envelope, budgeted, size- and time-limited, by stream kind).
//! - `shared.rs`: state shared by the socket's tasks (registry, admission,
//!   budget, refusal backoff, counters).
//! - `outbox.rs`: per-peer bounded send queues, one per lane (gossip, Raft),
//!   and the tasks that dial and write them.
//! - `socket.rs`: the chitchat `Socket`: accept loop, `send`, `recv`, drop.
//!
//! # Behaviour
//!
//! - Each chitchat message travels on its own unidirectional stream holding
//!   exactly the message's [`wire`](crate::wire) encoding; streams over
//!   [`MAX_MESSAGE_SIZE`] are stopped and counted as garbage. A peer may have
//!   at most [`MAX_CONCURRENT_UNI_STREAMS`] streams open per connection.
//! - Raft messages ([`PeerChannel`](crate::PeerChannel), when the config has
//!   one) travel on the same connections, which carry streams only after the
//!   hello, so their sender is authenticated: one unidirectional stream per
//!   message, [`RAFT_MARKER`](crate::wire::RAFT_MARKER) then the message, at
//!   most [`MAX_RAFT_MESSAGE_SIZE`](crate::MAX_RAFT_MESSAGE_SIZE) after the
//!   marker, within [`QuicTuning::raft_stream_timeout`]. They have their own
//!   per-peer queue ([`RAFT_QUEUE_CAPACITY`], [`RAFT_QUEUE_BYTES`]) and their
//!   own receive budget (`RAFT_*` in `budget.rs`), so a flood of one kind
//!   cannot starve the other. Without a channel, received Raft messages are
//!   counted in `raft_dropped`.
//! - What peers make us buffer is budgeted per connection and per socket
//!   ([`MAX_BUFFERED_PER_CONNECTION`], [`CONNECTION_FLOOR`],
//!   [`SHARED_BUFFER_POOL`]); a stream the budget cannot hold is stopped
//!   (`streams_over_budget`), one not finished within
//!   [`QuicTuning::stream_read_timeout`] too (`streams_timed_out`), and its
//!   buffer freed. The `buffered_bytes` gauge shows what is held.
//! - Connection attempts are admitted by the rules of `admission.rs`: under
//!   load ([`RETRY_ABOVE_PENDING`]) unvalidated sources get a QUIC Retry
//!   (`handshakes_retried`); known peers have [`RESERVED_FOR_KNOWN`] of the
//!   [`MAX_PENDING_HANDSHAKES`] slots to themselves; other source IPs are
//!   held to [`MAX_PENDING_PER_SOURCE`] slots and
//!   [`HANDSHAKE_RATE_PER_SOURCE`] starts a second (`handshakes_throttled`);
//!   an attempt finding no slot is refused (`handshakes_refused`).
//! - In mutual TLS, each side checks that the peer's certificate vouches for
//!   the node id of its hello ([`crate::tls::CertificateNames`]); a mismatch
//!   closes the connection with [`CLOSE_IDENTITY_MISMATCH`], is counted
//!   (`identity_mismatches`) and reported as a refusal under the name the
//!   certificate proves.
//! - A [`ClaimCheck`], when set, then judges whether the peer may hold the
//!   node id of its hello at its address (another live agent may hold it);
//!   a refusal closes with [`CLOSE_NODE_ID_CONFLICT`] and is reported with
//!   [`RefusalKind::NodeIdConflict`] on both sides.
//! - Connections are keyed by the peer's gossip address: the one we dialed,
//!   or the one an accepting side learnt from the dialer's hello. Either kind
//!   carries traffic both ways, so a node that dialed us gets its replies on
//!   the same connection. A peer address holds at most
//!   [`MAX_CONNECTIONS_PER_PEER`] (one per role; a newer one replaces the
//!   older, closed with [`CLOSE_SUPERSEDED`]), the socket at most
//!   [`MAX_CONNECTIONS`] (more are closed with [`CLOSE_BUSY`] and counted in
//!   `connections_refused`).
//! - `send` never waits: it appends to the peer's queue
//!   ([`PEER_QUEUE_CAPACITY`], oldest dropped) served by a per-peer task that
//!   dials when needed (connect timeout, exponential backoff after failures,
//!   longer backoff after a hello refusal). Messages that cannot be sent, or
//!   waited over [`QuicTuning::max_message_age`], are counted in
//!   `dropped_sends`.
//! - `connected_peers` (chitchat's `Socket` method, in chorus's copy) lists the
//!   peers with a live connection or a dial in progress. Gossip prefers them,
//!   so a fresh cluster sets up a few connections per node, not a full mesh,
//!   while it starts (vendor/chitchat/CHORUS.md, change 6).
//! - Received messages wait for chitchat in a bounded inbox; one that waited
//!   over `max_message_age` is dropped unread (`stale_received`).
//! - `recv` never fails: bad peers, bad streams and I/O errors are counted and
//!   logged, never returned (an error would stop chitchat's gossip loop).
//! - Dropping the socket closes every connection; the UDP port is released
//!   once quinn's endpoint driver has wound down (shortly after, not
//!   synchronously).

mod admission;
mod budget;
mod handshake;
mod hello;
mod links;
mod outbox;
mod serve;
mod shared;
mod socket;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use tokio::time::Instant;

use crate::counters::NetCounters;
use crate::peer::PeerChannel;
use crate::tls::TlsMode;

/// A received Raft message's share of its connection's budget.
pub(crate) type Held = budget::Reservation;

pub use admission::{
    HANDSHAKE_BURST_PER_SOURCE, HANDSHAKE_RATE_PER_SOURCE, KNOWN_PEER_TTL, MAX_KNOWN_PEERS,
    MAX_PENDING_PER_SOURCE, MAX_TRACKED_SOURCES, RESERVED_FOR_KNOWN, RETRY_ABOVE_PENDING,
};
pub use budget::{
    CONNECTION_FLOOR, MAX_BUFFERED_BYTES, MAX_BUFFERED_PER_CONNECTION,
    MAX_RAFT_BUFFERED_PER_CONNECTION, RAFT_BUFFER_POOL, RAFT_CONNECTION_FLOOR, SHARED_BUFFER_POOL,
};
pub use hello::{
    default_policy, ClaimCheck, Hello, HelloError, HelloPolicy, HelloTemplate, RefusalKind,
    RejectObserver, RejectedPeer, MAX_HELLO_SIZE, MAX_REASON_LEN, PROTOCOL_VERSION,
};
pub use links::MAX_CONNECTIONS_PER_PEER;

/// Largest gossip message accepted on a stream, in wire bytes (chitchat
/// itself stays under ~65 KB; the margin is for future use). Decoded, a
/// message may not exceed [`MAX_PLAIN_SIZE`](crate::wire::MAX_PLAIN_SIZE).
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Unidirectional streams a peer may have open at once on one connection;
/// QUIC flow control makes it wait for one to end before opening another.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 16;

/// Bytes a peer may send on one stream ahead of our reading (QUIC flow
/// control; credit returns as we read, so a larger message still passes).
pub const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;

/// Bytes a peer may send on one connection, all streams together, ahead of
/// our reading: what quinn may hold for a connection besides our budget.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Established connections a socket holds at once (dialed and accepted);
/// one more that passes the hello is closed with [`CLOSE_BUSY`].
pub const MAX_CONNECTIONS: usize = 512;

/// Connection attempts quinn queues for the accept loop; further ones are
/// dropped unanswered (the loop decides each at once, so this only fills
/// when the node is starved of CPU).
pub const MAX_INCOMING_QUEUE: usize = 256;

/// Bytes quinn buffers for all queued attempts beyond their first packet;
/// further packets are dropped (and retransmitted by honest peers).
pub const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;

/// Messages queued per peer before the oldest are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 64;

/// Raft messages queued per peer before the oldest are dropped (a leader
/// sends each follower a few appends and heartbeats per tick).
pub const RAFT_QUEUE_CAPACITY: usize = 256;

/// Raft bytes queued per peer before the oldest messages are dropped: a
/// snapshot and the appends behind it.
pub const RAFT_QUEUE_BYTES: usize = 2 * crate::peer::MAX_RAFT_MESSAGE_SIZE;

/// Decoded messages waiting for chitchat's `recv` (stream readers wait when
/// it is full, which back-pressures peers through QUIC flow control).
pub const INBOX_CAPACITY: usize = 256;

/// Handshakes (TLS + hello) in progress at once on the accepting side;
/// further connection attempts are refused until some finish
/// ([`RESERVED_FOR_KNOWN`] of them only known peers may take).
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Application close code: normal shutdown of the local socket.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: refused at hello; the close reason says why.
pub const CLOSE_HELLO_REJECTED: u32 = 0x4348_0001;
/// Application close code: the hello was malformed or did not arrive in time.
pub const CLOSE_HELLO_INVALID: u32 = 0x4348_0002;
/// Application close code: the peer's certificate does not vouch for the
/// node id of its hello; the close reason says what it names.
pub const CLOSE_IDENTITY_MISMATCH: u32 = 0x4348_0003;
/// Application close code: the connection passed the hello but the node
/// holds [`MAX_CONNECTIONS`], or another node holds the claimed address.
pub const CLOSE_BUSY: u32 = 0x4348_0004;
/// Application close code: the peer opened a newer connection in the same role.
pub const CLOSE_SUPERSEDED: u32 = 0x4348_0005;
/// Application close code: another live agent holds the node id of the
/// hello; the close reason names the address it is alive at.
pub const CLOSE_NODE_ID_CONFLICT: u32 = 0x4348_0006;
/// Stream stop code: envelope over [`MAX_MESSAGE_SIZE`] (gossip) or
/// [`MAX_RAFT_MESSAGE_SIZE`](crate::MAX_RAFT_MESSAGE_SIZE) (Raft).
pub const STOP_TOO_LARGE: u32 = 0x4348_0010;
/// Stream stop code: no buffer budget left for the stream.
pub const STOP_OVER_BUDGET: u32 = 0x4348_0011;
/// Stream stop code: not finished within [`QuicTuning::stream_read_timeout`].
pub const STOP_TIMED_OUT: u32 = 0x4348_0012;

/// Timeouts and backoffs; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct QuicTuning {
    /// QUIC + TLS handshake limit, dialing or accepting (default 5 s). Messages
    /// queued behind a slow dial are shed after `max_message_age` anyway, so a
    /// longer limit only spares a handshake already paid for from being thrown
    /// away and redone when the machine is busy.
    pub connect_timeout: Duration,
    /// Hello exchange limit (default 5 s).
    pub hello_timeout: Duration,
    /// Connections with no traffic for this long close (default 30 s).
    pub idle_timeout: Duration,
    /// QUIC keep-alive; `None` (default) lets idle connections close.
    pub keep_alive_interval: Option<Duration>,
    /// A message waiting longer than this to be sent, or to be read by
    /// chitchat, is dropped (default 1 s): gossip repeats every round, and
    /// answering a round that is over costs work and helps nobody.
    pub max_message_age: Duration,
    /// Limit to open a stream and hand it a message (default 5 s).
    pub write_timeout: Duration,
    /// Limit to receive a whole stream once it opened (default 5 s); a
    /// stream still unfinished is stopped and its buffer freed.
    pub stream_read_timeout: Duration,
    /// First pause after a failed dial (default 1 s), doubling each failure…
    pub dial_backoff_min: Duration,
    /// …up to this (default 10 s).
    pub dial_backoff_max: Duration,
    /// No dialing to a peer for this long after a hello refusal (default 30 s).
    pub reject_backoff: Duration,
    /// A peer's send task exits after this long without messages (default 60 s).
    pub peer_idle: Duration,
    /// Authentication failures are logged at most once per peer per this
    /// interval (default 60 s).
    pub auth_warn_interval: Duration,
    /// Limit to write, and to receive, one Raft stream (default 30 s): a
    /// snapshot of several MiB behind QUIC flow control takes seconds on a
    /// distant link, and Raft messages, unlike gossip, are not repeated
    /// every round.
    pub raft_stream_timeout: Duration,
}

impl QuicTuning {
    /// Whether a message queued at `since` is past [`Self::max_message_age`].
    pub(crate) fn is_late(&self, since: Instant) -> bool {
        since.elapsed() > self.max_message_age
    }
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: None,
            max_message_age: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
            stream_read_timeout: Duration::from_secs(5),
            dial_backoff_min: Duration::from_secs(1),
            dial_backoff_max: Duration::from_secs(10),
            reject_backoff: Duration::from_secs(30),
            peer_idle: Duration::from_secs(60),
            auth_warn_interval: Duration::from_secs(60),
            raft_stream_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a [`QuicTransport`] needs.
#[derive(Clone)]
pub struct QuicConfig {
    /// How peers are authenticated.
    pub tls: TlsMode,
    /// Our hello, minus the gossip address.
    pub hello: HelloTemplate,
    /// The gossip address announced in hellos; defaults to the bound address.
    pub advertise_addr: Option<SocketAddr>,
    /// Judges peers' hellos; defaults to [`default_policy`].
    pub policy: HelloPolicy,
    /// Told about refusals, both ways; defaults to doing nothing.
    pub on_reject: RejectObserver,
    /// Refuses a hello claiming a node id another live agent holds; none
    /// by default.
    pub claim_check: Option<ClaimCheck>,
    /// Where traffic is counted.
    pub counters: NetCounters,
    /// Timeouts and backoffs.
    pub tuning: QuicTuning,
    /// Carries Raft messages; `None` (default): none are sent, and those
    /// received are dropped and counted.
    pub peer_channel: Option<PeerChannel>,
}

impl fmt::Debug for QuicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConfig")
            .field("tls", &self.tls)
            .field("hello", &self.hello)
            .field("advertise_addr", &self.advertise_addr)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl QuicConfig {
    /// A configuration with the default policy, no observer, fresh counters.
    pub fn new(tls: TlsMode, hello: HelloTemplate) -> Self {
        Self {
            policy: default_policy(&hello),
            tls,
            hello,
            advertise_addr: None,
            on_reject: Arc::new(|_| {}),
            claim_check: None,
            counters: NetCounters::new(),
            tuning: QuicTuning::default(),
            peer_channel: None,
        }
    }

    /// Replaces the hello policy.
    pub fn with_policy(
        mut self,
        policy: impl Fn(&Hello) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Sets the node-id claim check.
    pub fn with_claim_check(
        mut self,
        check: impl Fn(&Hello, SocketAddr) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.claim_check = Some(Arc::new(check));
        self
    }

    /// Sets the refusal observer.
    pub fn with_reject_observer(
        mut self,
        observer: impl Fn(RejectedPeer) + Send + Sync + 'static,
    ) -> Self {
        self.on_reject = Arc::new(observer);
        self
    }

    /// Records into `counters`.
    pub fn with_counters(mut self, counters: NetCounters) -> Self {
        self.counters = counters;
        self
    }

    /// Announces `addr` as our gossip address.
    pub fn with_advertise_addr(mut self, addr: SocketAddr) -> Self {
        self.advertise_addr = Some(addr);
        self
    }

    /// Replaces timeouts and backoffs.
    pub fn with_tuning(mut self, tuning: QuicTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Carries Raft messages for `channel` (made with the same counters as
    /// [`Self::with_counters`], so that all counts land in one place).
    pub fn with_peer_channel(mut self, channel: PeerChannel) -> Self {
        self.peer_channel = Some(channel);
        self
    }
}

/// chitchat [`Transport`] over QUIC. Each `open` binds its own endpoint.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    config: QuicConfig,
}

impl QuicTransport {
    /// A transport using `config`.
    pub fn new(config: QuicConfig) -> Self {
        Self { config }
    }

    /// The counters this transport records into.
    pub fn counters(&self) -> &NetCounters {
        &self.config.counters
    }

    /// The channel carrying Raft messages, if the config has one.
    pub fn peer_channel(&self) -> Option<&PeerChannel> {
        self.config.peer_channel.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &QuicConfig {
        &self.config
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = socket::QuicSocket::open(&self.config, listen_addr).await?;
        Ok(Box::new(socket))
    }
}
