//! The chitchat [`Socket`] over a quinn endpoint.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::Socket;
use chitchat::ChitchatMessage;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::Incoming;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::admission::{SlotGuard, Verdict};
use super::handshake;
use super::outbox::{Lane, Outbox};
use super::shared::{Arrival, Shared};
use super::{
    QuicConfig, QuicTuning, CLOSE_SHUTDOWN, CONNECTION_RECEIVE_WINDOW, INBOX_CAPACITY,
    INCOMING_BUFFER_TOTAL, MAX_CONCURRENT_UNI_STREAMS, MAX_HELLO_SIZE, MAX_INCOMING_QUEUE,
    MAX_MESSAGE_SIZE, STREAM_RECEIVE_WINDOW,
};
use crate::peer::{PeerSink, Registration, MAX_RAFT_MESSAGE_SIZE};
use crate::tls::TlsMode;
use crate::wire;

pub(crate) struct QuicSocket {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    raft_outbox: Arc<Outbox>,
    inbox: mpsc::Receiver<Arrival>,
    acceptor: JoinHandle<()>,
    /// This socket's place in the peer channel, taken out when it drops.
    _registration: Option<Registration>,
}

/// Where the peer channel's sends go while this socket is open. Weak, so
/// that a sink still held somewhere (a delayed fault) keeps no socket alive.
struct RaftSink {
    outbox: Weak<Outbox>,
    shared: Arc<Shared>,
}

impl PeerSink for RaftSink {
    fn send(&self, to: SocketAddr, bytes: Vec<u8>) {
        if !is_peer_address(to) {
            debug!(%to, "not a peer address, Raft message dropped");
            self.shared.counters.raft_dropped();
            return;
        }
        if bytes.is_empty() || bytes.len() > MAX_RAFT_MESSAGE_SIZE {
            warn!(%to, len = bytes.len(), limit = MAX_RAFT_MESSAGE_SIZE,
                "Raft message empty or over the limit, dropped");
            self.shared.counters.raft_dropped();
            return;
        }
        match self.outbox.upgrade() {
            Some(outbox) => outbox.push(to, bytes),
            None => self.shared.counters.raft_dropped(),
        }
    }
}

/// Whether `to` can be a peer's gossip address.
fn is_peer_address(to: SocketAddr) -> bool {
    to.port() != 0 && !to.ip().is_unspecified()
}

fn transport_config(tuning: &QuicTuning) -> anyhow::Result<Arc<TransportConfig>> {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS))
        // The hello's stream; nothing else is bidirectional.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(tuning.idle_timeout).context("idle timeout out of range")?,
        ))
        .keep_alive_interval(tuning.keep_alive_interval);
    Ok(Arc::new(transport))
}

impl QuicSocket {
    pub(crate) async fn open(config: &QuicConfig, listen_addr: SocketAddr) -> anyhow::Result<Self> {
        if let TlsMode::Mutual(identity) = &config.tls {
            // Peers would refuse every hello of ours.
            identity
                .check_node_id(&config.hello.node_id)
                .context("TLS identity")?;
        }
        let transport = transport_config(&config.tuning)?;
        let server_tls = config.tls.server_config().context("TLS server setup")?;
        let client_tls = config.tls.client_config().context("TLS client setup")?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server_tls).context("TLS server setup for QUIC")?,
        ));
        server_config
            .transport_config(transport.clone())
            .max_incoming(MAX_INCOMING_QUEUE)
            .incoming_buffer_size(MAX_HELLO_SIZE as u64)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls).context("TLS client setup for QUIC")?,
        ));
        client_config.transport_config(transport);

        let mut endpoint = Endpoint::server(server_config, listen_addr)
            .with_context(|| format!("failed to bind {listen_addr}/udp for gossip (QUIC)"))?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint.local_addr().context("bound address")?;
        let gossip_addr = config.advertise_addr.unwrap_or(local_addr);
        if gossip_addr.ip().is_unspecified() {
            warn!(%gossip_addr, "gossip address has no IP: peers will use our source IP");
        }
        let local_hello = config
            .hello
            .to_hello(gossip_addr)
            .encode()
            .context("local hello")?;

        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let shared = Arc::new(Shared::new(config, local_hello, inbox_tx));
        let outbox = Outbox::new(Lane::Gossip, endpoint.clone(), shared.clone());
        let raft_outbox = Outbox::new(Lane::Raft, endpoint.clone(), shared.clone());
        let registration = config.peer_channel.as_ref().map(|channel| {
            channel.attach(Arc::new(RaftSink {
                outbox: Arc::downgrade(&raft_outbox),
                shared: shared.clone(),
            }))
        });
        let acceptor = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        debug!(%local_addr, %gossip_addr, "QUIC gossip socket open");
        Ok(Self {
            endpoint,
            shared,
            outbox,
            raft_outbox,
            inbox,
            acceptor,
            _registration: registration,
        })
    }
}

/// Admits connection attempts by the rules of `admission.rs`.
async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        admit(&shared, incoming);
    }
}

/// Carries out the admission verdict on one attempt.
fn admit(shared: &Arc<Shared>, incoming: Incoming) {
    let remote = incoming.remote_address();
    let verdict = shared.admission.lock().decide(
        Instant::now(),
        remote,
        incoming.remote_address_validated(),
        incoming.may_retry(),
    );
    match verdict {
        Verdict::Accept(slot) => {
            let slot = SlotGuard::new(shared.admission.clone(), slot);
            let shared = shared.clone();
            tokio::spawn(async move {
                handshake::accept(shared, incoming).await;
                drop(slot);
            });
        }
        Verdict::Retry => match incoming.retry() {
            Ok(()) => shared.counters.handshake_retried(),
            // Only when a Retry was already used, which `decide` rules out.
            Err(err) => {
                shared.counters.handshake_refused();
                err.into_incoming().refuse();
            }
        },
        Verdict::Throttle => {
            debug!(peer=%remote, "too many handshakes from this source, refused");
            shared.counters.handshake_throttled();
            incoming.refuse();
        }
        Verdict::Refuse => {
            debug!(peer=%remote, "no handshake slot free, refused");
            shared.counters.handshake_refused();
            incoming.refuse();
        }
    }
}

#[async_trait]
impl Socket for QuicSocket {
    /// Never waits on the network; see the module docs.
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        if !is_peer_address(to) {
            debug!(%to, "not a peer address, message dropped");
            self.shared.counters.dropped_send();
            return Ok(());
        }
        match wire::encode_within(&message, MAX_MESSAGE_SIZE) {
            Ok(bytes) => self.outbox.push(to, bytes),
            Err(err) => {
                warn!(%to, error=%err, "gossip message dropped");
                self.shared.counters.dropped_send();
            }
        }
        Ok(())
    }

    /// Never fails; cancel-safe. A message that waited longer than
    /// `max_message_age` for chitchat is dropped here: see [`Arrival`].
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        while let Some(arrival) = self.inbox.recv().await {
            // Dropping the arrival's reservation gives its budget back.
            if !self.shared.tuning.is_late(arrival.received) {
                return Ok((arrival.from, arrival.message));
            }
            self.shared.counters.stale_received();
        }
        // `shared` holds a sender for as long as we live: unreachable.
        std::future::pending().await
    }

    fn connected_peers(&self) -> Option<HashSet<SocketAddr>> {
        Some(self.shared.connected_peers())
    }
}

impl Drop for QuicSocket {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.outbox.shutdown();
        self.raft_outbox.shutdown();
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
    }
}
