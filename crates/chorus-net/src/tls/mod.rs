//! Cluster PKI and rustls configuration.
//!
//! - [`ClusterCa`] (`ca.rs`): the cluster's certificate authority, stored as
//!   one PEM file (certificate + private key).
//! - [`NodeIdentity`] (`identity.rs`): a node's leaf certificate and key plus
//!   the CA certificates it trusts; minted from a [`ClusterCa`] or loaded from
//!   an existing PKI.
//! - `verify.rs`: the two custom server-certificate verifiers.
//! - [`CertificateNames`] (`names.rs`): which node ids a leaf vouches for.
//! - [`TlsMode`] (here): mutual TLS or insecure, and the rustls configs built
//!   from it.
//!
//! # Verification policy
//!
//! In [`TlsMode::Mutual`] both sides present a certificate and both verify
//! the other's chain against the trusted CA certificates; the server requires
//! a client certificate (`WebPkiClientVerifier`). A dialer dials an address,
//! not a name, so it checks **the chain only**: any leaf signed by the
//! cluster CA is a cluster member, whatever its names. The TLS server name
//! sent is always [`TLS_SERVER_NAME`] (minted leaves also carry it as a SAN,
//! so stock tools can verify them by name). Leaves must allow both the
//! `serverAuth` and `clientAuth` extended key usages, since every node both
//! dials and accepts. Which node a peer is comes from the hello that follows,
//! and both sides check that the peer's certificate vouches for the node id
//! its hello claims ([`CertificateNames`]: the leaf's common name or one of
//! its DNS/IP SANs); a node refuses to start with a certificate that does not
//! vouch for its own node id.
//!
//! [`TlsMode::Insecure`] uses a throw-away self-signed certificate, does not
//! ask for client certificates and accepts any server certificate (handshake
//! signatures are still checked). Mutual and insecure nodes cannot talk.

mod ca;
mod identity;
mod names;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use ca::ClusterCa;
pub use identity::NodeIdentity;
pub use names::CertificateNames;

/// ALPN protocol identifier spoken by chorus agents.
pub const ALPN: &[u8] = b"chorus/1";

/// TLS server name used by dialers, and included in every minted leaf's SANs.
pub const TLS_SERVER_NAME: &str = "chorus";

/// Everything that can go wrong building or loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// What the file should hold ("CA certificate", "private key", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// PEM text that could not be parsed, or lacks a required block.
    #[error("malformed {what} PEM: {detail}")]
    Pem {
        /// What the PEM should hold.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A certificate that could not be parsed or is unfit for its role.
    #[error("invalid {what} certificate: {detail}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Certificate generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. no usable CA).
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// How a transport authenticates its peers.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// Mutual TLS: both sides prove membership with a CA-signed certificate.
    Mutual(NodeIdentity),
    /// No authentication at all (ephemeral self-signed certificate). For
    /// experiments only.
    Insecure,
}

/// The crypto provider used everywhere (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMode {
    /// rustls server configuration: TLS 1.3, ALPN `chorus/1`, and in mutual
    /// mode a mandatory client certificate verified against the CA.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut config = match self {
            TlsMode::Mutual(identity) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider)
                        .build()?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(identity.cert_chain(), identity.key())?
            }
            TlsMode::Insecure => {
                let (chain, key) = ephemeral_cert()?;
                builder.with_no_client_auth().with_single_cert(chain, key)?
            }
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// rustls client configuration: TLS 1.3, ALPN `chorus/1`, and in mutual
    /// mode our certificate offered and the server's chain verified against
    /// the CA (names are not checked, see the module docs).
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous();
        let mut config = match self {
            TlsMode::Mutual(identity) => {
                let verifier = verify::ChainOnlyVerifier::new(identity.roots()?, provider)?;
                builder
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_client_auth_cert(identity.cert_chain(), identity.key())?
            }
            TlsMode::Insecure => builder
                .with_custom_certificate_verifier(Arc::new(verify::AcceptAnyServer::new(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Whether this is [`TlsMode::Insecure`].
    pub fn is_insecure(&self) -> bool {
        matches!(self, TlsMode::Insecure)
    }
}

/// A throw-away self-signed certificate for insecure mode.
fn ephemeral_cert() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec![TLS_SERVER_NAME.to_string()])?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((vec![cert.der().clone()], key_der))
}

/// Parses every `CERTIFICATE` block of `pem_text`; errors if there is none.
pub(crate) fn parse_certs(
    what: &'static str,
    pem_text: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let blocks = pem::parse_many(pem_text).map_err(|err| TlsError::Pem {
        what,
        detail: err.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = blocks
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            detail: "no CERTIFICATE block found".to_string(),
        });
    }
    Ok(certs)
}

/// Parses the single private key block (PKCS#8, PKCS#1 or SEC1) of `pem_text`.
pub(crate) fn parse_key(
    what: &'static str,
    pem_text: &str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let blocks = pem::parse_many(pem_text).map_err(|err| TlsError::Pem {
        what,
        detail: err.to_string(),
    })?;
    let mut keys = blocks.into_iter().filter_map(|block| {
        let der = block.contents().to_vec();
        match block.tag() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(der.into())),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(der.into())),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(der.into())),
            _ => None,
        }
    });
    let key = keys.next().ok_or_else(|| TlsError::Pem {
        what,
        detail: "no PRIVATE KEY block found".to_string(),
    })?;
    if keys.next().is_some() {
        return Err(TlsError::Pem {
            what,
            detail: "more than one private key".to_string(),
        });
    }
    Ok(key)
}

/// Reads a PEM file, naming it in the error.
pub(crate) fn read_pem_file(
    what: &'static str,
    path: &std::path::Path,
) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// PEM-encodes `der` under `tag`, with `\n` line endings.
pub(crate) fn der_to_pem(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config)
}

/// A root store holding `certs`.
pub(crate) fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|err| TlsError::Certificate {
                what: "CA",
                detail: err.to_string(),
            })?;
    }
    Ok(roots)
}
