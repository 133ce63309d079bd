//! Bringing a connection up: TLS handshake, hello, judgement, reporting.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{
    Connection, ConnectionError, Endpoint, Incoming, ReadError, ReadToEndError, RecvStream,
    SendStream, VarInt, WriteError,
};
use tokio::time::timeout;
use tracing::debug;

use super::hello::{truncate_reason, Hello, RejectedPeer, MAX_HELLO_SIZE};
use super::shared::Shared;
use super::{CLOSE_HELLO_INVALID, CLOSE_HELLO_REJECTED};
use crate::tls::TLS_SERVER_NAME;

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Dialer,
    Acceptor,
}

/// Why a connection did not come up.
#[derive(Debug)]
enum Failure {
    /// Refused at hello, by us or by the peer.
    Refused {
        by_us: bool,
        peer: Option<Hello>,
        reason: String,
    },
    /// TLS authentication failed (either side refused the other's certificate).
    Auth(ConnectionError),
    /// The hello was malformed, too large or late.
    BadHello(String),
    /// The connection went away (timeout, reset, shutdown): nothing to report.
    Lost(String),
}

/// Whether a QUIC error code carries a TLS alert (0x100..=0x1ff).
fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Whether `err` is a TLS-level refusal, detected by us or by the peer.
fn is_auth_failure(err: &ConnectionError) -> bool {
    match err {
        ConnectionError::TransportError(e) => is_crypto_code(e.code),
        ConnectionError::ConnectionClosed(close) => is_crypto_code(close.error_code),
        _ => false,
    }
}

fn from_connection_error(err: ConnectionError) -> Failure {
    match &err {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_HELLO_REJECTED) =>
        {
            Failure::Refused {
                by_us: false,
                peer: None,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_HELLO_INVALID) =>
        {
            Failure::BadHello(format!(
                "peer found our hello invalid: {}",
                String::from_utf8_lossy(&close.reason)
            ))
        }
        _ if is_auth_failure(&err) => Failure::Auth(err),
        _ => Failure::Lost(err.to_string()),
    }
}

fn from_write_error(err: WriteError) -> Failure {
    match err {
        WriteError::ConnectionLost(err) => from_connection_error(err),
        other => Failure::Lost(other.to_string()),
    }
}

async fn read_hello(conn: &Connection, recv: &mut RecvStream) -> Result<Hello, Failure> {
    let bytes = match recv.read_to_end(MAX_HELLO_SIZE).await {
        Ok(bytes) => bytes,
        Err(ReadToEndError::TooLong) => {
            conn.close(VarInt::from_u32(CLOSE_HELLO_INVALID), b"hello too large");
            return Err(Failure::BadHello("hello too large".to_string()));
        }
        Err(ReadToEndError::Read(ReadError::ConnectionLost(err))) => {
            return Err(from_connection_error(err))
        }
        Err(ReadToEndError::Read(err)) => return Err(Failure::Lost(err.to_string())),
    };
    Hello::decode(&bytes).map_err(|err| {
        conn.close(VarInt::from_u32(CLOSE_HELLO_INVALID), b"undecodable hello");
        Failure::BadHello(err.to_string())
    })
}

/// Swaps hellos; returns our (finished) send half and the peer's hello.
async fn swap(
    shared: &Shared,
    conn: &Connection,
    role: Role,
) -> Result<(SendStream, Hello), Failure> {
    match role {
        Role::Dialer => {
            let (mut send, mut recv) = conn.open_bi().await.map_err(from_connection_error)?;
            send.write_all(&shared.local_hello)
                .await
                .map_err(from_write_error)?;
            let _ = send.finish();
            let peer = read_hello(conn, &mut recv).await?;
            Ok((send, peer))
        }
        Role::Acceptor => {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(from_connection_error)?;
            let peer = read_hello(conn, &mut recv).await?;
            send.write_all(&shared.local_hello)
                .await
                .map_err(from_write_error)?;
            let _ = send.finish();
            Ok((send, peer))
        }
    }
}

/// Runs the hello on a fresh connection and applies our policy.
async fn hello(shared: &Shared, conn: &Connection, role: Role) -> Result<Hello, Failure> {
    let (send, peer) = match timeout(shared.tuning.hello_timeout, swap(shared, conn, role)).await {
        Ok(swapped) => swapped?,
        Err(_elapsed) => {
            conn.close(VarInt::from_u32(CLOSE_HELLO_INVALID), b"no hello in time");
            return Err(Failure::BadHello("no hello in time".to_string()));
        }
    };
    if let Err(reason) = (shared.policy)(&peer) {
        let reason = truncate_reason(&reason).to_string();
        // Let our hello reach the peer before closing (closing discards
        // unsent stream data), so it knows who refused it.
        let _ = timeout(shared.tuning.hello_timeout, send.stopped()).await;
        conn.close(VarInt::from_u32(CLOSE_HELLO_REJECTED), reason.as_bytes());
        return Err(Failure::Refused {
            by_us: true,
            peer: Some(peer),
            reason,
        });
    }
    Ok(peer)
}

/// The gossip address to use for a peer that announced `announced` and
/// connects from `remote`: an unspecified IP is replaced by the source IP.
fn normalize(announced: SocketAddr, remote: SocketAddr) -> SocketAddr {
    if announced.ip().is_unspecified() {
        SocketAddr::new(remote.ip(), announced.port())
    } else {
        announced
    }
}

fn report(shared: &Shared, addr: SocketAddr, failure: Failure) {
    match failure {
        Failure::Refused {
            by_us,
            peer,
            reason,
        } => shared.report_refusal(RejectedPeer {
            node_id: peer.map(|p| p.node_id).unwrap_or_default(),
            addr,
            reason,
            by_us,
        }),
        Failure::Auth(err) => shared.report_auth_failure(addr, "TLS handshake refused", &err),
        Failure::BadHello(detail) => shared.report_bad_hello(addr, &detail),
        Failure::Lost(detail) => debug!(peer=%addr, "connection lost during hello: {detail}"),
    }
}

/// Dials `to`, runs the hello and, on success, registers and serves the
/// connection. Failures are counted and reported here.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    to: SocketAddr,
) -> Option<Connection> {
    let _dialing = shared.dialing(to);
    let connecting = match endpoint.connect(to, TLS_SERVER_NAME) {
        Ok(connecting) => connecting,
        Err(err) => {
            debug!(peer=%to, error=%err, "cannot dial");
            return None;
        }
    };
    let conn = match timeout(shared.tuning.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            report(shared, to, from_connection_error(err));
            return None;
        }
        Err(_elapsed) => {
            debug!(peer=%to, "connect timed out");
            return None;
        }
    };
    match hello(shared, &conn, Role::Dialer).await {
        Ok(peer) => {
            shared.adopt(to, conn.clone(), peer);
            Some(conn)
        }
        Err(failure) => {
            report(shared, to, failure);
            None
        }
    }
}

/// Accepts an incoming connection attempt, runs the hello and, on success,
/// registers and serves the connection under the peer's gossip address.
pub(crate) async fn accept(shared: Arc<Shared>, incoming: Incoming) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            debug!(peer=%remote, error=%err, "incoming connection failed");
            return;
        }
    };
    let conn = match timeout(shared.tuning.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            report(&shared, remote, from_connection_error(err));
            return;
        }
        Err(_elapsed) => {
            debug!(peer=%remote, "incoming handshake timed out");
            return;
        }
    };
    match hello(&shared, &conn, Role::Acceptor).await {
        Ok(peer) => {
            let addr = normalize(peer.gossip_addr, remote);
            shared.adopt(addr, conn, peer);
        }
        Err(failure) => {
            let addr = match &failure {
                Failure::Refused {
                    peer: Some(peer), ..
                } => normalize(peer.gossip_addr, remote),
                _ => remote,
            };
            report(&shared, addr, failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_codes_are_auth_failures() {
        assert!(is_crypto_code(quinn::TransportErrorCode::crypto(42)));
        assert!(!is_crypto_code(
            quinn::TransportErrorCode::PROTOCOL_VIOLATION
        ));
    }

    #[test]
    fn unspecified_announced_ip_takes_the_source_ip() {
        let remote: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        assert_eq!(
            normalize("0.0.0.0:7000".parse().unwrap(), remote),
            "10.1.2.3:7000".parse().unwrap()
        );
        assert_eq!(
            normalize("10.9.9.9:7000".parse().unwrap(), remote),
            "10.9.9.9:7000".parse().unwrap()
        );
    }
}
