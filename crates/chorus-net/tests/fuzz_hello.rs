//! Fuzzing the hello decoder, the first bytes an authenticated peer sends:
//! arbitrary bytes and mutated valid hellos never panic and allocate at most
//! a small multiple of their input, and valid hellos round-trip.
//!
//! Cases per property: `CHORUS_FUZZ_CASES` (default [`DEFAULT_CASES`]); a
//! longer run sets it higher.

use std::net::{IpAddr, SocketAddr};

use chorus_net::quic::MAX_HELLO_SIZE;
use chorus_net::{Hello, HelloError, HelloTemplate};
use proptest::prelude::*;

/// Cases per property when `CHORUS_FUZZ_CASES` is not set.
const DEFAULT_CASES: u32 = 256;

/// Bytes a decode may allocate beyond [`ALLOCATION_PER_INPUT_BYTE`] per
/// input byte, whatever the input claims about its lengths: what its length
/// prefixes claim, which bincode's limit caps at [`MAX_HELLO_SIZE`] in all,
/// and 4 KiB for error messages and small buffers.
const ALLOCATION_SLACK: usize = MAX_HELLO_SIZE + 4 * 1024;

/// Bytes a decode may allocate per input byte: its strings are copies of
/// input bytes, and growth of a buffer at most doubles it.
const ALLOCATION_PER_INPUT_BYTE: usize = 4;

fn cases() -> u32 {
    std::env::var("CHORUS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Decodes `bytes`, asserting the allocation bounds; returns the result.
fn decode_bounded(bytes: &[u8]) -> Result<Hello, HelloError> {
    let mut decoded = None;
    let allocated = allocation_counter::measure(|| decoded = Some(Hello::decode(bytes)));
    let bound = bytes
        .len()
        .saturating_mul(ALLOCATION_PER_INPUT_BYTE)
        .saturating_add(ALLOCATION_SLACK);
    assert!(
        allocated.bytes_total <= bound as u64,
        "{allocated:?} for {} input bytes",
        bytes.len()
    );
    decoded.expect("measured")
}

/// `hello` encoded and decoded again.
fn reencoded(hello: &Hello) -> Hello {
    Hello::decode(&hello.encode().unwrap()).unwrap()
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    // serde carries an address's IP and port only (no IPv6 flow or scope).
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        ".{0,40}",
        ".{0,40}",
        any::<u32>(),
        ".{0,400}",
        socket_addr(),
    )
        .prop_map(
            |(cluster, node_id, protocol, fingerprint, gossip_addr)| Hello {
                cluster,
                node_id,
                protocol,
                fingerprint,
                gossip_addr,
            },
        )
}

/// A change to an encoded hello.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    Overwrite {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    Truncate {
        len: usize,
    },
    /// A bincode varint length announcing far more than there is.
    Lie {
        at: usize,
        tag: u8,
        value: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), 0xfbu8..=0xfd, any::<u64>()).prop_map(|(at, tag, value)| Mutation::Lie {
            at,
            tag,
            value
        }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let position = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
    match mutation {
        Mutation::FlipBit { at, bit } => {
            if !bytes.is_empty() {
                let i = position(*at, bytes.len());
                bytes[i] ^= 1 << bit;
            }
        }
        Mutation::Overwrite { at, byte } => {
            if !bytes.is_empty() {
                let i = position(*at, bytes.len());
                bytes[i] = *byte;
            }
        }
        Mutation::Insert { at, bytes: new } => {
            let i = position(*at, bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Remove { at, len } => {
            let i = position(*at, bytes.len());
            let end = i.saturating_add(*len).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate { len } => bytes.truncate(position(*len, bytes.len() + 1)),
        Mutation::Lie { at, tag, value } => {
            let i = position(*at, bytes.len() + 1);
            let mut lie = vec![*tag];
            match tag {
                0xfb => lie.extend_from_slice(&(*value as u16).to_le_bytes()),
                0xfc => lie.extend_from_slice(&(*value as u32).to_le_bytes()),
                _ => lie.extend_from_slice(&value.to_le_bytes()),
            }
            bytes.splice(i..i, lie);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn fuzz_hello_arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2 * MAX_HELLO_SIZE),
    ) {
        let _ = decode_bounded(&bytes);
    }

    #[test]
    fn fuzz_hello_valid_hellos_round_trip(hello in hello()) {
        let bytes = hello.encode().unwrap();
        prop_assert!(bytes.len() <= MAX_HELLO_SIZE);
        prop_assert_eq!(decode_bounded(&bytes).unwrap(), hello);
    }

    #[test]
    fn fuzz_hello_mutated_hellos_never_panic(
        hello in hello(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let original = hello.encode().unwrap();
        let mut bytes = original.clone();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        match decode_bounded(&bytes) {
            // A mutation may land on bytes that still decode (bincode also
            // takes non-minimal varints); what decodes is a hello that
            // round-trips.
            Ok(decoded) => prop_assert_eq!(reencoded(&decoded), decoded),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }
}

/// Hand-made hostile inputs, checked on every run whatever the case count.
#[test]
fn fuzz_hello_seed_corpus() {
    let valid = HelloTemplate::new("blue", "node-1", "fingerprint")
        .to_hello(([127, 0, 0, 1], 7000).into())
        .encode()
        .unwrap();
    let mut seeds: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff; 64],
        // A string announced as u64::MAX, u32::MAX, u16::MAX bytes long.
        [&[0xfd][..], &u64::MAX.to_le_bytes()].concat(),
        [&[0xfc][..], &u32::MAX.to_le_bytes()].concat(),
        [&[0xfb][..], &u16::MAX.to_le_bytes()].concat(),
        // A cluster name of exactly the limit, then nothing.
        [
            &[0xfb][..],
            &(MAX_HELLO_SIZE as u16).to_le_bytes(),
            &vec![b'a'; MAX_HELLO_SIZE],
        ]
        .concat(),
        // Invalid UTF-8 in the node id.
        [&[4][..], b"blue", &[2, 0xc3, 0x28]].concat(),
        // A socket address of an unknown kind.
        [&valid[..valid.len() - 7], &[9, 1, 2, 3, 4, 0x1b, 0x58]].concat(),
    ];
    // Every truncation of a valid hello, and every single-byte corruption.
    seeds.extend((0..valid.len()).map(|len| valid[..len].to_vec()));
    for i in 0..valid.len() {
        for byte in [0x00, 0x7f, 0xfb, 0xfc, 0xfd, 0xff] {
            let mut corrupted = valid.clone();
            corrupted[i] = byte;
            seeds.push(corrupted);
        }
    }
    let mut trailing = valid.clone();
    trailing.push(0);
    seeds.push(trailing);
    for seed in &seeds {
        if let Ok(decoded) = decode_bounded(seed) {
            assert_eq!(reencoded(&decoded), decoded);
        }
    }
    assert!(decode_bounded(&valid).is_ok());
    assert!(matches!(
        decode_bounded(&seeds[seeds.len() - 1]),
        Err(HelloError::Trailing(1))
    ));
}
