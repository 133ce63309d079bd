//! Bringing a connection up: TLS handshake, hello, identity check,
//! judgement, reporting.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{
    Connection, ConnectionError, Endpoint, Incoming, ReadError, ReadToEndError, RecvStream,
    SendStream, VarInt, WriteError,
};
use rustls::pki_types::CertificateDer;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::hello::{truncate_reason, Hello, RefusalKind, RejectedPeer, MAX_HELLO_SIZE};
use super::links::Role;
use super::shared::Shared;
use super::{
    CLOSE_HELLO_INVALID, CLOSE_HELLO_REJECTED, CLOSE_IDENTITY_MISMATCH, CLOSE_NODE_ID_CONFLICT,
};
use crate::tls::{CertificateNames, TLS_SERVER_NAME};

/// Why a connection did not come up.
#[derive(Debug)]
enum Failure {
    /// Refused at hello, by us or by the peer.
    Refused {
        by_us: bool,
        peer: Option<Hello>,
        reason: String,
        kind: RefusalKind,
    },
    /// We refused a peer whose hello claims a node id its certificate does
    /// not vouch for.
    Impostor {
        peer: Hello,
        /// Who the certificate says the peer is (empty if it names no one).
        certified: String,
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

/// Which check of the peer refused us, from its close code; `None` for a
/// close that is not a refusal.
pub(crate) fn refusal_kind(code: VarInt) -> Option<RefusalKind> {
    if code == VarInt::from_u32(CLOSE_HELLO_REJECTED) {
        Some(RefusalKind::Policy)
    } else if code == VarInt::from_u32(CLOSE_IDENTITY_MISMATCH) {
        Some(RefusalKind::Identity)
    } else if code == VarInt::from_u32(CLOSE_NODE_ID_CONFLICT) {
        Some(RefusalKind::NodeIdConflict)
    } else {
        None
    }
}

fn from_connection_error(err: ConnectionError) -> Failure {
    if let ConnectionError::ApplicationClosed(close) = &err {
        if let Some(kind) = refusal_kind(close.error_code) {
            return Failure::Refused {
                by_us: false,
                peer: None,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
                kind,
            };
        }
    }
    match &err {
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

/// A peer whose certificate does not vouch for the node id of its hello.
struct Mismatch {
    /// Who the certificate says the peer is (empty if it names no one).
    certified: String,
    reason: String,
}

/// The leaf certificate the peer presented.
fn peer_leaf(conn: &Connection) -> Option<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}

/// Checks that the peer's certificate vouches for the node id it claims.
fn check_identity(conn: &Connection, peer: &Hello) -> Result<(), Mismatch> {
    let Some(leaf) = peer_leaf(conn) else {
        return Err(Mismatch {
            certified: String::new(),
            reason: "no certificate".to_string(),
        });
    };
    let names = CertificateNames::of(&leaf).map_err(|err| Mismatch {
        certified: String::new(),
        reason: err.to_string(),
    })?;
    if names.vouch_for(&peer.node_id) {
        return Ok(());
    }
    Err(Mismatch {
        certified: names.principal(),
        reason: format!(
            "node id {:?} is not in its certificate, which names {names}",
            peer.node_id
        ),
    })
}

/// Closes `conn` with `code` and `reason` once our hello has reached the
/// peer (closing discards unsent stream data), so it knows who refused it.
async fn refuse(shared: &Shared, conn: &Connection, send: SendStream, code: u32, reason: &str) {
    let _ = timeout(shared.tuning.hello_timeout, send.stopped()).await;
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Runs the hello on a fresh connection, checks the peer's identity and its
/// claim to its node id, and applies our policy. `remote` is the address we
/// dialed, or the source of an accepted connection.
async fn hello(
    shared: &Shared,
    conn: &Connection,
    role: Role,
    remote: SocketAddr,
) -> Result<Hello, Failure> {
    let (send, peer) = match timeout(shared.tuning.hello_timeout, swap(shared, conn, role)).await {
        Ok(swapped) => swapped?,
        Err(_elapsed) => {
            conn.close(VarInt::from_u32(CLOSE_HELLO_INVALID), b"no hello in time");
            return Err(Failure::BadHello("no hello in time".to_string()));
        }
    };
    if shared.check_identity {
        if let Err(mismatch) = check_identity(conn, &peer) {
            let reason = truncate_reason(&mismatch.reason).to_string();
            refuse(shared, conn, send, CLOSE_IDENTITY_MISMATCH, &reason).await;
            return Err(Failure::Impostor {
                peer,
                certified: mismatch.certified,
                reason,
            });
        }
    }
    if let Some(check) = &shared.claim_check {
        // A dialed peer is where we reached it; an accepting side has only the
        // address the hello announces.
        let at = match role {
            Role::Dialer => remote,
            Role::Acceptor => normalize(peer.gossip_addr, remote),
        };
        if let Err(reason) = check(&peer, at) {
            let reason = truncate_reason(&reason).to_string();
            refuse(shared, conn, send, CLOSE_NODE_ID_CONFLICT, &reason).await;
            return Err(Failure::Refused {
                by_us: true,
                peer: Some(peer),
                reason,
                kind: RefusalKind::NodeIdConflict,
            });
        }
    }
    if let Err(reason) = (shared.policy)(&peer) {
        let reason = truncate_reason(&reason).to_string();
        refuse(shared, conn, send, CLOSE_HELLO_REJECTED, &reason).await;
        return Err(Failure::Refused {
            by_us: true,
            peer: Some(peer),
            reason,
            kind: RefusalKind::Policy,
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
            kind,
        } => shared.report_refusal(RejectedPeer {
            node_id: peer.map(|p| p.node_id).unwrap_or_default(),
            addr,
            reason,
            by_us,
            kind,
        }),
        Failure::Impostor {
            peer,
            certified,
            reason,
        } => {
            // Reported under the name the certificate proves: the claimed id
            // may be another, innocent node's.
            warn!(peer=%addr, claimed=%peer.node_id, certified=%certified,
                "refused a peer claiming a node id its certificate does not name: {reason}");
            shared.counters.identity_mismatch();
            shared.report_refusal(RejectedPeer {
                node_id: certified,
                addr,
                reason,
                by_us: true,
                kind: RefusalKind::Identity,
            });
        }
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
    match hello(shared, &conn, Role::Dialer, to).await {
        Ok(peer) => shared
            .adopt(to, Role::Dialer, conn.clone(), peer)
            .then_some(conn),
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
    match hello(&shared, &conn, Role::Acceptor, remote).await {
        Ok(peer) => {
            let addr = normalize(peer.gossip_addr, remote);
            shared.adopt(addr, Role::Acceptor, conn, peer);
        }
        Err(failure) => {
            let addr = match &failure {
                Failure::Refused {
                    peer: Some(peer), ..
                } => normalize(peer.gossip_addr, remote),
                // The gossip address of a peer that lies about its id is
                // not believed either.
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
