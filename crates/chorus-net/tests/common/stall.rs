//! Handshake flooders: real QUIC clients (no certificate needed) that start
//! a handshake and then go silent, so that the server holds it open for as
//! long as it lets a handshake wait.
//!
//! A flooder's UDP socket passes its packets until the server answers with
//! anything but a Retry; from then on everything it sends is swallowed. One
//! that does not answer Retries models a sender with a forged source address
//! (it never sees the answer).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use chorus_net::tls::TLS_SERVER_NAME;
use chorus_net::TlsMode;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Endpoint, EndpointConfig, Runtime, TokioRuntime, UdpPoller};

/// A UDP socket that goes mute once the server answers.
struct Muting {
    inner: Arc<dyn AsyncUdpSocket>,
    answers_retry: bool,
    mute: AtomicBool,
}

impl fmt::Debug for Muting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Muting")
            .field("mute", &self.mute)
            .finish_non_exhaustive()
    }
}

/// Whether a datagram is a QUIC v1 Retry (long header, type 3).
fn is_retry(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xf0 == 0xf0)
}

impl AsyncUdpSocket for Muting {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.mute.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &polled {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(*count) {
                let datagram = &buf[..meta.len.min(buf.len())];
                if !(self.answers_retry && is_retry(datagram)) {
                    self.mute.store(true, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// One flooder: its endpoint and the handshake it started (both must live
/// as long as the flood, or dropping them would close the handshake).
pub struct Flooder {
    _endpoint: Endpoint,
    _connecting: quinn::Connecting,
}

/// Starts a handshake from a fresh port on `ip` to `target`, then goes mute.
pub fn start(ip: IpAddr, target: SocketAddr, answers_retry: bool) -> io::Result<Flooder> {
    let runtime = Arc::new(TokioRuntime);
    let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let inner = runtime.wrap_udp_socket(socket)?;
    let muting = Arc::new(Muting {
        inner,
        answers_retry,
        mute: AtomicBool::new(false),
    });
    let mut endpoint =
        Endpoint::new_with_abstract_socket(EndpointConfig::default(), None, muting, runtime)?;
    // No certificate: the handshake never gets that far.
    let tls = TlsMode::Insecure.client_config().unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).unwrap(),
    )));
    let connecting = endpoint
        .connect(target, TLS_SERVER_NAME)
        .map_err(io::Error::other)?;
    Ok(Flooder {
        _endpoint: endpoint,
        _connecting: connecting,
    })
}
