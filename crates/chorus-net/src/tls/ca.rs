//! [`ClusterCa`]: the cluster's certificate authority.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{der_to_pem, parse_certs, TlsError};

/// What the key block of a cluster key file must be called.
const KEY_TAG: &str = "PRIVATE KEY";

/// A cluster certificate authority: a self-signed CA certificate and its key.
///
/// Whoever holds it can mint member identities, so the PEM from
/// [`ClusterCa::to_pem`] is a secret. The certificate's common name is the
/// cluster name. Validity uses rcgen's defaults (1975 to 4096): rotating the
/// cluster key is how membership is revoked.
#[derive(Clone)]
pub struct ClusterCa {
    cluster_name: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: Arc<KeyPair>,
    /// rcgen's view of the CA, used only as the issuer when signing leaves.
    issuer: Arc<rcgen::Certificate>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA (ECDSA P-256) for `cluster_name`.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, cluster_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "chorus cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster_name: cluster_name.to_string(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key: Arc::new(key),
            issuer: Arc::new(cert),
        })
    }

    /// Loads a CA written by [`ClusterCa::to_pem`]: one `CERTIFICATE` block
    /// and one PKCS#8 `PRIVATE KEY` block, in any order. Checks that the
    /// certificate is a CA and that the key belongs to it.
    pub fn from_pem(pem_text: &str) -> Result<ClusterCa, TlsError> {
        const WHAT: &str = "cluster key";
        let certs = parse_certs(WHAT, pem_text)?;
        if certs.len() != 1 {
            return Err(TlsError::Pem {
                what: WHAT,
                detail: format!("expected one CERTIFICATE block, found {}", certs.len()),
            });
        }
        let cert_der = certs.into_iter().next().expect("one certificate");
        let blocks = pem::parse_many(pem_text).map_err(|err| TlsError::Pem {
            what: WHAT,
            detail: err.to_string(),
        })?;
        let key_block = blocks
            .iter()
            .find(|block| block.tag() == KEY_TAG)
            .ok_or_else(|| TlsError::Pem {
                what: WHAT,
                detail: format!("no {KEY_TAG} block (PKCS#8) found"),
            })?;
        let key = KeyPair::from_pem(&pem::encode(key_block)).map_err(|err| TlsError::Pem {
            what: WHAT,
            detail: format!("unusable private key: {err}"),
        })?;

        let invalid = |detail: String| TlsError::Certificate { what: "CA", detail };
        let (_, parsed) = X509Certificate::from_der(&cert_der)
            .map_err(|err| invalid(format!("cannot parse: {err}")))?;
        if !parsed.is_ca() {
            return Err(invalid("not a CA certificate".to_string()));
        }
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(TlsError::Pem {
                what: WHAT,
                detail: "the private key does not belong to the certificate".to_string(),
            });
        }
        let cluster_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let params = CertificateParams::from_ca_cert_der(&cert_der)?;
        // Re-signing only rebuilds rcgen's issuer handle (subject, key id);
        // the certificate we trust and hand out stays the original.
        let issuer = params.self_signed(&key)?;
        let cert_pem = der_to_pem("CERTIFICATE", &cert_der);
        Ok(ClusterCa {
            cluster_name,
            cert_der,
            cert_pem,
            key: Arc::new(key),
            issuer: Arc::new(issuer),
        })
    }

    /// Certificate and private key, PEM, in one string (a secret!).
    pub fn to_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key.serialize_pem())
    }

    /// The CA certificate alone, PEM (safe to distribute).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The cluster name (the certificate's common name).
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    pub(crate) fn issuer(&self) -> &rcgen::Certificate {
        &self.issuer
    }

    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_certificate_and_name() {
        let ca = ClusterCa::generate("blue").unwrap();
        let pem = ca.to_pem();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(pem.contains("BEGIN PRIVATE KEY"));
        let back = ClusterCa::from_pem(&pem).unwrap();
        assert_eq!(back.cluster_name(), "blue");
        assert_eq!(back.cert_der(), ca.cert_der());
        assert_eq!(back.to_pem(), pem);
    }

    #[test]
    fn malformed_pem_is_a_clear_error() {
        let err = ClusterCa::from_pem("hello").unwrap_err();
        assert!(
            err.to_string().contains("malformed cluster key PEM"),
            "{err}"
        );

        let ca = ClusterCa::generate("blue").unwrap();
        let only_cert = ca.cert_pem().to_string();
        let err = ClusterCa::from_pem(&only_cert).unwrap_err();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");

        let other = ClusterCa::generate("blue").unwrap();
        let mismatched = format!("{}{}", ca.cert_pem(), other.key().serialize_pem());
        let err = ClusterCa::from_pem(&mismatched).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        let garbled = ca.to_pem().replace("MI", "XX");
        assert!(ClusterCa::from_pem(&garbled).is_err());
    }
}
