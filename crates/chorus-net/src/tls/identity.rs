//! [`NodeIdentity`]: a node's certificate, key and trusted CAs.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;

use super::{
    der_to_pem, parse_certs, parse_key, provider, read_pem_file, root_store, CertificateNames,
    ClusterCa, TlsError, TLS_SERVER_NAME,
};

/// A node's TLS identity: leaf certificate chain, private key, and the CA
/// certificates its peers must chain to.
#[derive(Clone)]
pub struct NodeIdentity {
    node_id: Option<String>,
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Mints a fresh leaf for `node_id`, signed by `ca`: a new ECDSA P-256
    /// key, common name and DNS SAN `node_id` (plus [`TLS_SERVER_NAME`]),
    /// usable as both TLS server and client.
    ///
    /// `node_id` must be non-empty printable ASCII (it goes into an X.509
    /// name); an IP-address-looking id becomes an IP SAN.
    pub fn mint(ca: &ClusterCa, node_id: &str) -> Result<NodeIdentity, TlsError> {
        if node_id.is_empty() || !node_id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(TlsError::Certificate {
                what: "node",
                detail: format!(
                    "node id {node_id:?} cannot go into a certificate: \
                     use non-empty printable ASCII without spaces"
                ),
            });
        }
        let key = KeyPair::generate()?;
        let mut sans = vec![TLS_SERVER_NAME.to_string()];
        if node_id != TLS_SERVER_NAME {
            sans.push(node_id.to_string());
        }
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, ca.issuer(), ca.key())?;
        Ok(NodeIdentity {
            node_id: Some(node_id.to_string()),
            roots: vec![ca.cert_der().clone()],
            chain: vec![cert.der().clone()],
            key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
        })
    }

    /// Loads an identity from an existing PKI: `ca_cert` (one or more trusted
    /// CA certificates), `cert` (the leaf, optionally followed by
    /// intermediates) and `key` (PKCS#8, PKCS#1 or SEC1), all PEM files.
    ///
    /// Checks that the key matches the leaf and that the leaf chains to one
    /// of the CAs and may serve as both TLS server and client (extended key
    /// usages `serverAuth` and `clientAuth`).
    pub fn from_pem_files(
        ca_cert: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<NodeIdentity, TlsError> {
        Self::from_pem(
            &read_pem_file("CA certificate", ca_cert)?,
            &read_pem_file("certificate", cert)?,
            &read_pem_file("private key", key)?,
        )
    }

    /// Same as [`NodeIdentity::from_pem_files`], from PEM text.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<NodeIdentity, TlsError> {
        let roots = parse_certs("CA certificate", ca_pem)?;
        let chain = parse_certs("certificate", cert_pem)?;
        let key = parse_key("private key", key_pem)?;
        let identity = NodeIdentity {
            node_id: None,
            roots,
            chain,
            key: Arc::new(key),
        };
        identity.check()?;
        Ok(identity)
    }

    /// Key matches leaf, leaf chains to a root.
    fn check(&self) -> Result<(), TlsError> {
        let provider = provider();
        // Also checks that the key belongs to the leaf.
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => TlsError::Pem {
                what: "private key",
                detail: format!("the key does not belong to the certificate ({err})"),
            },
            other => TlsError::Rustls(other),
        })?;
        let roots = self.roots()?;
        let leaf = ParsedCertificate::try_from(&self.chain[0])?;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &self.chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|err| TlsError::Certificate {
            what: "node",
            detail: format!("does not chain to the given CA for TLS server use: {err}"),
        })?;
        WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()?
            .verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now())
            .map_err(|err| TlsError::Certificate {
                what: "node",
                detail: format!("does not chain to the given CA for TLS client use: {err}"),
            })?;
        Ok(())
    }

    /// The names the leaf vouches for.
    pub fn names(&self) -> Result<CertificateNames, TlsError> {
        CertificateNames::of(&self.chain[0])
    }

    /// Checks that the leaf vouches for `node_id` (its common name or one of
    /// its DNS/IP SANs): peers refuse a hello claiming any other id.
    pub fn check_node_id(&self, node_id: &str) -> Result<(), TlsError> {
        let names = self.names()?;
        if names.vouch_for(node_id) {
            return Ok(());
        }
        Err(TlsError::Certificate {
            what: "node",
            detail: format!(
                "it names {names}, not node id {node_id:?}: the node id must be the \
                 certificate's common name or one of its DNS or IP subject alternative names"
            ),
        })
    }

    /// The node id the leaf was minted for (`None` when loaded from files).
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The leaf (and intermediates), PEM.
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The private key, PEM (PKCS#8 for minted identities).
    pub fn key_pem(&self) -> String {
        let tag = match &*self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        der_to_pem(tag, self.key.secret_der())
    }

    /// The trusted CA certificates, PEM.
    pub fn ca_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }

    pub(crate) fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        root_store(&self.roots).map(Arc::new)
    }

    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsMode;

    #[test]
    fn minted_identity_builds_both_configs() {
        let ca = ClusterCa::generate("blue").unwrap();
        let id = NodeIdentity::mint(&ca, "node-1").unwrap();
        assert_eq!(id.node_id(), Some("node-1"));
        let mode = TlsMode::Mutual(id.clone());
        mode.server_config().unwrap();
        mode.client_config().unwrap();
        TlsMode::Insecure.server_config().unwrap();
        TlsMode::Insecure.client_config().unwrap();
        // The PEM views load back through the existing-PKI path.
        NodeIdentity::from_pem(&id.ca_pem(), &id.cert_pem(), &id.key_pem()).unwrap();
    }

    #[test]
    fn the_leaf_must_vouch_for_the_node_id() {
        let ca = ClusterCa::generate("blue").unwrap();
        let id = NodeIdentity::mint(&ca, "node-1").unwrap();
        id.check_node_id("node-1").unwrap();
        let err = id.check_node_id("node-2").unwrap_err().to_string();
        assert!(
            err.contains("\"node-1\"") && err.contains("not node id \"node-2\""),
            "{err}"
        );
        // Loaded from files, the same leaf vouches for the same id.
        let loaded = NodeIdentity::from_pem(&id.ca_pem(), &id.cert_pem(), &id.key_pem()).unwrap();
        loaded.check_node_id("node-1").unwrap();
        assert!(loaded.check_node_id(TLS_SERVER_NAME).is_err());
    }

    #[test]
    fn bad_node_ids_are_refused() {
        let ca = ClusterCa::generate("blue").unwrap();
        assert!(NodeIdentity::mint(&ca, "").is_err());
        assert!(NodeIdentity::mint(&ca, "nœud").is_err());
        assert!(NodeIdentity::mint(&ca, "a b").is_err());
        NodeIdentity::mint(&ca, "node_1").unwrap();
    }

    #[test]
    fn loading_checks_key_and_chain() {
        let ca = ClusterCa::generate("blue").unwrap();
        let other_ca = ClusterCa::generate("blue").unwrap();
        let a = NodeIdentity::mint(&ca, "a").unwrap();
        let b = NodeIdentity::mint(&ca, "b").unwrap();
        let err = NodeIdentity::from_pem(&a.ca_pem(), &a.cert_pem(), &b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err =
            NodeIdentity::from_pem(other_ca.cert_pem(), &a.cert_pem(), &a.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not chain"), "{err}");
        let err = NodeIdentity::from_pem("nope", &a.cert_pem(), &a.key_pem()).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let err = NodeIdentity::from_pem(&a.ca_pem(), &a.cert_pem(), &a.cert_pem()).unwrap_err();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn a_leaf_that_cannot_be_a_client_is_refused() {
        let ca = ClusterCa::generate("blue").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["server-only".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, ca.issuer(), ca.key()).unwrap();
        let err =
            NodeIdentity::from_pem(ca.cert_pem(), &cert.pem(), &key.serialize_pem()).unwrap_err();
        assert!(err.to_string().contains("TLS client use"), "{err}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = NodeIdentity::from_pem_files(
            Path::new("/nonexistent/ca.pem"),
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
        assert!(msg.contains("CA certificate"), "{msg}");
    }
}
