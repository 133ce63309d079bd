//! Version fingerprints and the compatibility policy.
//!
//! A fingerprint is a hash of (chorus protocol version, application version, the bytes of every
//! fingerprint file). It travels with the application version and one short hash per file, so a
//! node that refuses another can say *what* differs, not only that something does.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the chorus gossip schema, hello and wire encoding. Nodes with different protocols
/// never mix. 3: gossip messages travel in chorus-net's compact wire form, which a node of 2
/// cannot read.
pub const PROTOCOL_VERSION: u32 = 3;

/// Hex characters of a file hash carried in gossip: enough to tell files apart, short on the wire.
const FILE_HASH_HEX: usize = 12;
/// Hex characters of the whole fingerprint shown to operators.
const FINGERPRINT_HEX: usize = 16;

/// What a node declares about its version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Hash of everything below, hex, [`FINGERPRINT_HEX`] characters.
    pub digest: String,
    pub protocol: u32,
    pub app_version: String,
    /// `(file name, short content hash)`, sorted by name.
    pub files: Vec<(String, String)>,
}

impl Fingerprint {
    /// Computes the fingerprint from the file *contents*; `files` is `(name, bytes)`.
    /// Only the name (not the directory) is part of the hash, so hosts may keep the files in
    /// different places.
    pub fn compute(protocol: u32, app_version: &str, files: &[(String, Vec<u8>)]) -> Fingerprint {
        let mut file_hashes: Vec<(String, String)> = files
            .iter()
            .map(|(name, bytes)| {
                let hash = hex::encode(Sha256::digest(bytes));
                (name.clone(), hash[..FILE_HASH_HEX].to_string())
            })
            .collect();
        file_hashes.sort();
        let mut hasher = Sha256::new();
        hasher.update(b"chorus-fingerprint\0");
        hasher.update(protocol.to_le_bytes());
        hasher.update((app_version.len() as u64).to_le_bytes());
        hasher.update(app_version.as_bytes());
        for (name, hash) in &file_hashes {
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(hash.as_bytes());
        }
        let digest = hex::encode(hasher.finalize())[..FINGERPRINT_HEX].to_string();
        Fingerprint {
            digest,
            protocol,
            app_version: app_version.to_string(),
            files: file_hashes,
        }
    }

    /// The `files` gossip value: `name=hash` pairs joined by `;`.
    pub fn files_value(&self) -> String {
        self.files
            .iter()
            .map(|(n, h)| format!("{n}={h}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Parses a `files` gossip value; junk pairs are skipped (a peer's garbage is not our error,
    /// and a skipped pair makes the fingerprints differ, which is the safe outcome).
    pub fn parse_files_value(value: &str) -> Vec<(String, String)> {
        value
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect()
    }
}

/// How strictly fingerprints must agree (`--compat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompatPolicy {
    /// Every node must carry the same fingerprint (OpenMRS: all nodes run exactly one version).
    #[default]
    Exact,
    /// Same major application version and same files: allows rolling upgrades.
    AppMajor,
}

impl std::str::FromStr for CompatPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(CompatPolicy::Exact),
            "app-major" => Ok(CompatPolicy::AppMajor),
            other => Err(format!(
                "unknown compat policy {other:?} (expected exact or app-major)"
            )),
        }
    }
}

impl fmt::Display for CompatPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompatPolicy::Exact => "exact",
            CompatPolicy::AppMajor => "app-major",
        })
    }
}

/// Why a peer's fingerprint is refused. The `Display` text is what operators read in
/// `alert=version_rejected` lines and in `members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mismatch {
    Protocol { ours: u32, theirs: u32 },
    AppVersion { ours: String, theirs: String },
    FileDiffers { file: String },
    FileMissing { file: String, missing_on: Side },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Us,
    Them,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Protocol { ours, theirs } => {
                write!(f, "protocol version {theirs} (ours {ours})")
            }
            Mismatch::AppVersion { ours, theirs } => {
                write!(f, "app version {theirs:?} (ours {ours:?})")
            }
            Mismatch::FileDiffers { file } => write!(f, "fingerprint file {file:?} differs"),
            Mismatch::FileMissing { file, missing_on } => match missing_on {
                Side::Us => write!(f, "fingerprint file {file:?} is not on this node"),
                Side::Them => write!(f, "fingerprint file {file:?} is missing on that node"),
            },
        }
    }
}

/// The major component of an application version: `"v2.14.1"` -> `"2"`.
pub fn app_major(version: &str) -> &str {
    let v = version.trim().trim_start_matches(['v', 'V']);
    v.split(['.', '-', '+']).next().unwrap_or(v)
}

impl CompatPolicy {
    /// Decides whether `theirs` may join a cluster where this node runs `ours`. `Ok` leaves the
    /// roster alone; `Err` means the peer is `rejected`: never alive, never counted.
    pub fn check(self, ours: &Fingerprint, theirs: &Fingerprint) -> Result<(), Mismatch> {
        if ours.protocol != theirs.protocol {
            return Err(Mismatch::Protocol {
                ours: ours.protocol,
                theirs: theirs.protocol,
            });
        }
        let versions_agree = match self {
            CompatPolicy::Exact => ours.app_version == theirs.app_version,
            CompatPolicy::AppMajor => {
                app_major(&ours.app_version) == app_major(&theirs.app_version)
            }
        };
        if !versions_agree {
            return Err(Mismatch::AppVersion {
                ours: ours.app_version.clone(),
                theirs: theirs.app_version.clone(),
            });
        }
        for (name, hash) in &ours.files {
            match theirs.files.iter().find(|(n, _)| n == name) {
                None => {
                    return Err(Mismatch::FileMissing {
                        file: name.clone(),
                        missing_on: Side::Them,
                    })
                }
                Some((_, h)) if h != hash => {
                    return Err(Mismatch::FileDiffers { file: name.clone() })
                }
                Some(_) => {}
            }
        }
        if let Some((name, _)) = theirs
            .files
            .iter()
            .find(|(n, _)| !ours.files.iter().any(|(o, _)| o == n))
        {
            return Err(Mismatch::FileMissing {
                file: name.clone(),
                missing_on: Side::Us,
            });
        }
        // Same inputs give the same digest; a differing digest with equal parts means the peer
        // hashes differently (a bug or a forgery): refuse under `exact`.
        if self == CompatPolicy::Exact && ours.digest != theirs.digest {
            return Err(Mismatch::AppVersion {
                ours: ours.app_version.clone(),
                theirs: theirs.app_version.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(app: &str, files: &[(&str, &[u8])]) -> Fingerprint {
        let files: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect();
        Fingerprint::compute(PROTOCOL_VERSION, app, &files)
    }

    #[test]
    fn same_inputs_same_digest_in_any_file_order() {
        let a = fp("1.0", &[("a.xml", b"x"), ("b.xml", b"y")]);
        let b = fp("1.0", &[("b.xml", b"y"), ("a.xml", b"x")]);
        assert_eq!(a, b);
        assert_eq!(a.digest.len(), FINGERPRINT_HEX);
    }

    #[test]
    fn exact_refuses_other_app_version_and_says_so() {
        let err = CompatPolicy::Exact
            .check(&fp("2.1.0", &[]), &fp("2.2.0", &[]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "app version \"2.2.0\" (ours \"2.1.0\")".to_string()
        );
    }

    #[test]
    fn app_major_allows_minor_upgrade_but_not_major() {
        let p = CompatPolicy::AppMajor;
        assert!(p.check(&fp("2.1.0", &[]), &fp("v2.3.7", &[])).is_ok());
        assert!(p.check(&fp("2.1.0", &[]), &fp("3.0.0", &[])).is_err());
    }

    #[test]
    fn differing_file_is_named() {
        let err = CompatPolicy::AppMajor
            .check(
                &fp("1", &[("web.xml", b"a")]),
                &fp("1", &[("web.xml", b"b")]),
            )
            .unwrap_err();
        assert_eq!(
            err,
            Mismatch::FileDiffers {
                file: "web.xml".into()
            }
        );
        assert!(err.to_string().contains("web.xml"));
    }

    #[test]
    fn missing_file_on_either_side_is_named() {
        let with = fp("1", &[("schema.sql", b"a")]);
        let without = fp("1", &[]);
        assert!(matches!(
            CompatPolicy::Exact.check(&with, &without),
            Err(Mismatch::FileMissing {
                missing_on: Side::Them,
                ..
            })
        ));
        assert!(matches!(
            CompatPolicy::Exact.check(&without, &with),
            Err(Mismatch::FileMissing {
                missing_on: Side::Us,
                ..
            })
        ));
    }

    #[test]
    fn a_node_of_protocol_2_is_refused() {
        let ours = Fingerprint::compute(PROTOCOL_VERSION, "1", &[]);
        let theirs = Fingerprint::compute(2, "1", &[]);
        assert_eq!(
            CompatPolicy::AppMajor.check(&ours, &theirs),
            Err(Mismatch::Protocol { ours: 3, theirs: 2 })
        );
    }

    #[test]
    fn other_protocol_is_refused_under_any_policy() {
        let ours = fp("1", &[]);
        let mut theirs = ours.clone();
        theirs.protocol += 1;
        for p in [CompatPolicy::Exact, CompatPolicy::AppMajor] {
            assert!(matches!(
                p.check(&ours, &theirs),
                Err(Mismatch::Protocol { .. })
            ));
        }
    }

    #[test]
    fn files_value_round_trips() {
        let a = fp("1", &[("a", b"1"), ("b", b"2")]);
        assert_eq!(Fingerprint::parse_files_value(&a.files_value()), a.files);
        assert!(Fingerprint::parse_files_value("").is_empty());
    }

    proptest! {
        #[test]
        fn check_is_reflexive_and_symmetric(
            app_a in "[0-9]{1,2}\\.[0-9]{1,2}", app_b in "[0-9]{1,2}\\.[0-9]{1,2}",
            fa in proptest::collection::vec(any::<u8>(), 0..8),
            fb in proptest::collection::vec(any::<u8>(), 0..8),
            exact in any::<bool>(),
        ) {
            let p = if exact { CompatPolicy::Exact } else { CompatPolicy::AppMajor };
            let a = fp(&app_a, &[("f", &fa)]);
            let b = fp(&app_b, &[("f", &fb)]);
            prop_assert!(p.check(&a, &a).is_ok());
            prop_assert_eq!(p.check(&a, &b).is_ok(), p.check(&b, &a).is_ok());
            if exact {
                prop_assert_eq!(p.check(&a, &b).is_ok(), a.digest == b.digest);
            }
        }

        #[test]
        fn parse_files_value_never_panics(s in ".*") {
            let _ = Fingerprint::parse_files_value(&s);
        }
    }
}
