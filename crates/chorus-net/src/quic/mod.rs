//! [`QuicTransport`]: chitchat gossip over QUIC with mutual TLS.
//!
//! One quinn endpoint per opened socket both listens and dials. Files:
//! - `hello.rs`: the [`Hello`] exchanged after the TLS handshake, policies.
//! - `handshake.rs`: running the hello on a fresh connection (both roles),
//!   classifying and reporting failures.
//! - `shared.rs`: state shared by the socket's tasks (connection registry,
//!   refusal backoff, counters) and serving an established connection (one
//!   unidirectional stream per envelope, size-limited).
//! - `outbox.rs`: per-peer bounded send queues and the tasks that dial and
//!   write them.
//! - `socket.rs`: the chitchat `Socket`: accept loop, `send`, `recv`, drop.
//!
//! # Behaviour
//!
//! - Each chitchat message travels on its own unidirectional stream holding
//!   exactly the message's [`wire`](crate::wire) encoding; streams over
//!   [`MAX_MESSAGE_SIZE`] are stopped and counted as garbage. A peer may have
//!   at most [`MAX_CONCURRENT_UNI_STREAMS`] streams open per connection.
//! - Connections are keyed by the peer's gossip address: the one we dialed,
//!   or the one an accepting side learnt from the dialer's hello. Either kind
//!   carries traffic both ways, so a node that dialed us gets its replies on
//!   the same connection.
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

mod handshake;
mod hello;
mod outbox;
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
use crate::tls::TlsMode;

pub use hello::{
    default_policy, Hello, HelloError, HelloPolicy, HelloTemplate, RejectObserver, RejectedPeer,
    MAX_HELLO_SIZE, MAX_REASON_LEN, PROTOCOL_VERSION,
};

/// Largest gossip message accepted on a stream, in wire bytes (chitchat
/// itself stays under ~65 KB; the margin is for future use). Decoded, a
/// message may not exceed [`MAX_PLAIN_SIZE`](crate::wire::MAX_PLAIN_SIZE).
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Unidirectional streams a peer may have open at once on one connection.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 64;

/// Messages queued per peer before the oldest are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 64;

/// Decoded messages waiting for chitchat's `recv` (stream readers wait when
/// it is full, which back-pressures peers through QUIC flow control).
pub const INBOX_CAPACITY: usize = 256;

/// Handshakes (TLS + hello) in progress at once on the accepting side;
/// further connection attempts are refused until some finish.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Application close code: normal shutdown of the local socket.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: refused at hello; the close reason says why.
pub const CLOSE_HELLO_REJECTED: u32 = 0x4348_0001;
/// Application close code: the hello was malformed or did not arrive in time.
pub const CLOSE_HELLO_INVALID: u32 = 0x4348_0002;
/// Stream stop code: envelope over [`MAX_MESSAGE_SIZE`].
pub const STOP_TOO_LARGE: u32 = 0x4348_0010;

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
    /// Limit to receive a whole envelope once its stream opened (default 10 s).
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
            stream_read_timeout: Duration::from_secs(10),
            dial_backoff_min: Duration::from_secs(1),
            dial_backoff_max: Duration::from_secs(10),
            reject_backoff: Duration::from_secs(30),
            peer_idle: Duration::from_secs(60),
            auth_warn_interval: Duration::from_secs(60),
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
    /// Where traffic is counted.
    pub counters: NetCounters,
    /// Timeouts and backoffs.
    pub tuning: QuicTuning,
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
            counters: NetCounters::new(),
            tuning: QuicTuning::default(),
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
