//! [`CertificateNames`]: which node ids a certificate vouches for.
//!
//! A node's hello names its node id; in mutual TLS the id must be one the
//! CA signed into the node's leaf certificate: its subject common name, or
//! one of its DNS or IP subject alternative names. The SAN
//! [`TLS_SERVER_NAME`] is in every minted leaf, so it proves no identity
//! (a node whose id is literally that name is vouched for by its common
//! name). DNS names compare exactly (node ids are case-sensitive); an id that
//! parses as an IP address matches an IP SAN of the same value.

use std::fmt;
use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{TlsError, TLS_SERVER_NAME};

/// Names shown in an error message before the rest are elided.
const NAMES_SHOWN: usize = 8;

/// The identities a certificate vouches for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// Subject common names.
    pub common_names: Vec<String>,
    /// DNS subject alternative names, without [`TLS_SERVER_NAME`].
    pub dns: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<IpAddr>,
}

impl CertificateNames {
    /// Reads the names of the certificate `der`.
    pub fn of(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let invalid = |detail: String| TlsError::Certificate {
            what: "peer",
            detail,
        };
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|err| invalid(format!("cannot parse: {err}")))?;
        let mut names = CertificateNames {
            common_names: cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_string)
                .collect(),
            ..CertificateNames::default()
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|err| invalid(format!("unreadable subject alternative names: {err}")))?;
        for name in san.iter().flat_map(|san| &san.value.general_names) {
            match name {
                GeneralName::DNSName(dns) if *dns != TLS_SERVER_NAME => {
                    names.dns.push((*dns).to_string())
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        names.ips.push(ip);
                    }
                }
                _ => {}
            }
        }
        Ok(names)
    }

    /// Whether the certificate vouches for `node_id`.
    pub fn vouch_for(&self, node_id: &str) -> bool {
        if self.common_names.iter().any(|cn| cn == node_id) {
            return true;
        }
        if self.dns.iter().any(|dns| dns == node_id) {
            return true;
        }
        node_id
            .parse::<IpAddr>()
            .is_ok_and(|ip| self.ips.contains(&ip))
    }

    /// The name that best says who holds the certificate: its first common
    /// name, else its first DNS name, else its first IP (empty if none).
    pub fn principal(&self) -> String {
        self.common_names
            .first()
            .or(self.dns.first())
            .cloned()
            .or_else(|| self.ips.first().map(IpAddr::to_string))
            .unwrap_or_default()
    }

    fn all(&self) -> impl Iterator<Item = String> + '_ {
        self.common_names
            .iter()
            .chain(&self.dns)
            .cloned()
            .chain(self.ips.iter().map(IpAddr::to_string))
    }
}

impl fmt::Display for CertificateNames {
    /// The names, quoted and comma-separated, at most [`NAMES_SHOWN`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.all().count();
        if total == 0 {
            return f.write_str("no name");
        }
        for (i, name) in self.all().take(NAMES_SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        if total > NAMES_SHOWN {
            write!(f, " and {} more", total - NAMES_SHOWN)?;
        }
        Ok(())
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;
    use crate::tls::{ClusterCa, NodeIdentity};

    fn leaf(common_name: Option<&str>, sans: Vec<SanType>) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_minted_leaf_vouches_for_its_node_id_only() {
        let ca = ClusterCa::generate("blue").unwrap();
        let id = NodeIdentity::mint(&ca, "node-1").unwrap();
        let names = CertificateNames::of(&id.cert_chain()[0]).unwrap();
        assert!(names.vouch_for("node-1"));
        assert!(!names.vouch_for("node-2"));
        assert!(!names.vouch_for(TLS_SERVER_NAME), "shared by every leaf");
        assert_eq!(names.principal(), "node-1");
        // A node called like the shared SAN is vouched for by its common name.
        let id = NodeIdentity::mint(&ca, TLS_SERVER_NAME).unwrap();
        let names = CertificateNames::of(&id.cert_chain()[0]).unwrap();
        assert!(names.vouch_for(TLS_SERVER_NAME));
        // An IP-looking id becomes an IP SAN and matches by value.
        let id = NodeIdentity::mint(&ca, "fd00::1").unwrap();
        let names = CertificateNames::of(&id.cert_chain()[0]).unwrap();
        assert!(names.vouch_for("fd00:0::1"));
    }

    #[test]
    fn operator_certificates_vouch_for_their_cn_and_sans() {
        let der = leaf(
            Some("web1"),
            vec![
                SanType::DnsName("web1.example.com".try_into().unwrap()),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
            ],
        );
        let names = CertificateNames::of(&der).unwrap();
        for id in ["web1", "web1.example.com", "10.0.0.1"] {
            assert!(names.vouch_for(id), "{id}");
        }
        for id in ["WEB1", "web2", "example.com", "10.0.0.2", ""] {
            assert!(!names.vouch_for(id), "{id}");
        }
        assert_eq!(
            names.to_string(),
            "\"web1\", \"web1.example.com\", \"10.0.0.1\""
        );
        let nameless = CertificateNames::of(&leaf(None, vec![])).unwrap();
        assert_eq!(nameless.to_string(), "no name");
        assert_eq!(nameless.principal(), "");
        assert!(!nameless.vouch_for(""));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(CertificateNames::of(&CertificateDer::from(vec![0x30, 0x03, 1, 2])).is_err());
        assert!(CertificateNames::of(&CertificateDer::from(Vec::new())).is_err());
    }
}
