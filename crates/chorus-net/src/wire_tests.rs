//! The public API cannot build a chitchat digest (`Digest::add_node` is
//! test-only), but chitchat decodes one: these tests write chitchat's bytes by
//! hand and let chitchat parse them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig, INFLATED_BLOCK_MAX,
    MAX_INFLATED_STREAM,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::sample::Index;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Heartbeat, last GC version, max version.
type Counters = [u64; 3];
type Digest = BTreeMap<ChitchatId, Counters>;

const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
/// A delta with no blocks: chitchat's encoding of an empty delta.
const EMPTY_DELTA: [u8; 1] = [0];

fn plain_digest(digest: &Digest) -> Vec<u8> {
    let mut buf = Vec::new();
    (digest.len() as u16).serialize(&mut buf);
    for (id, counters) in digest {
        id.serialize(&mut buf);
        for value in counters {
            value.serialize(&mut buf);
        }
    }
    buf
}

fn plain_message(message_type: u8, digest: &[u8], rest: &[u8]) -> Vec<u8> {
    [&PLAIN_HEADER[..], &[message_type], digest, rest].concat()
}

fn plain_syn(digest: &Digest, cluster: &str) -> Vec<u8> {
    plain_message(SYN, &plain_digest(digest), &cluster.serialize_to_vec())
}

fn plain_syn_ack(digest: &Digest) -> Vec<u8> {
    plain_message(SYN_ACK, &plain_digest(digest), &EMPTY_DELTA)
}

/// chitchat's own reading of `plain`, trailing bytes refused as [`decode`] does.
fn chitchat_reads(plain: &[u8]) -> anyhow::Result<ChitchatMessage> {
    let mut cursor = plain;
    let message = ChitchatMessage::deserialize(&mut cursor)?;
    ensure!(cursor.is_empty(), "trailing bytes");
    Ok(message)
}

/// `plain` must be chitchat's canonical encoding of its message.
fn assert_round_trip(plain: &[u8]) -> Vec<u8> {
    let message = chitchat_reads(plain).unwrap();
    let encoded = encode(&message).unwrap();
    assert!(encoded.len() + 2 <= plain.len());
    let decoded = decode(&encoded).unwrap();
    assert_eq!(decoded.serialize_to_vec(), plain);
    assert_eq!(decoded, message);
    encoded
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[derive(Clone, Copy, Debug)]
enum Ids {
    /// `n042`
    Short,
    /// `omero-web-042.prod.example.org`
    Long,
}

#[derive(Clone, Copy, Debug)]
enum Addrs {
    /// 10.0.0.5:7000, 10.0.0.5:7001, ... (many nodes on one host)
    OneIpManyPorts,
    /// 10.1.0.10:7280, 10.1.0.11:7280, ... (one node per host)
    OnePortManyIps,
}

/// 100 nodes started within five minutes of each other, up for a while.
fn realistic_digest(ids: Ids, addrs: Addrs) -> Digest {
    let mut rng = StdRng::seed_from_u64(42);
    let started_ms = 1_760_000_000_000u64;
    (0..100u16)
        .map(|i| {
            let node_id = match ids {
                Ids::Short => format!("n{i:03}"),
                Ids::Long => format!("omero-web-{i:03}.prod.example.org"),
            };
            let gossip_addr = match addrs {
                Addrs::OneIpManyPorts => addr([10, 0, 0, 5], 7000 + i),
                Addrs::OnePortManyIps => addr([10, 1, 0, 10 + i as u8], 7280),
            };
            let generation = started_ms + rng.gen_range(0..300_000);
            let counters = [rng.gen_range(1_000..10_000), 0, rng.gen_range(50..3_000)];
            (ChitchatId::new(node_id, generation, gossip_addr), counters)
        })
        .collect()
}

#[test]
fn realistic_digests_shrink_at_least_3_5_times() {
    for ids in [Ids::Short, Ids::Long] {
        for addrs in [Addrs::OneIpManyPorts, Addrs::OnePortManyIps] {
            let digest = realistic_digest(ids, addrs);
            let plain = plain_syn(&digest, "prod");
            let encoded = assert_round_trip(&plain);
            assert_eq!(encoded[0], FORMAT_COMPACT);
            let plain_digest = plain_digest(&digest).len();
            // Same cluster id on both sides; the headers differ by 2 bytes.
            let compact_digest = encoded.len() - (plain.len() - plain_digest - 2);
            let ratio = plain_digest as f64 / compact_digest as f64;
            println!(
                "{ids:?} ids, {addrs:?}: digest {plain_digest} -> {compact_digest} bytes \
                 ({ratio:.2}x), Syn {} -> {} bytes",
                plain.len(),
                encoded.len()
            );
            assert!(ratio >= 3.5, "{ids:?}/{addrs:?}: only {ratio:.2}x");
        }
    }
}

#[test]
fn messages_without_digest_lose_only_the_header() {
    for plain in [
        plain_message(ACK, &[], &EMPTY_DELTA),
        plain_message(BAD_CLUSTER, &[], &[]),
        plain_syn(&Digest::new(), ""),
        plain_syn_ack(&Digest::new()),
    ] {
        let encoded = assert_round_trip(&plain);
        assert!(encoded.len() <= plain.len() - 2);
    }
}

#[test]
fn a_digest_that_does_not_compact_stays_verbatim() {
    // Every counter jumps by about 2^63: 10-byte varints against 8-byte fields.
    let digest: Digest = (0..50u64)
        .map(|i| {
            let wild = if i % 2 == 0 { 0 } else { u64::MAX / 2 };
            let id = ChitchatId::new(format!("{i:02}"), wild, addr([10, 0, 0, 1], 1));
            (id, [wild; 3])
        })
        .collect();
    let plain = plain_syn(&digest, "c");
    let encoded = assert_round_trip(&plain);
    assert_eq!(encoded[0], FORMAT_VERBATIM);
    assert_eq!(encoded.len(), plain.len() - 2);
}

#[test]
fn extremes_round_trip() {
    let digest: Digest = [
        (ChitchatId::new("", 0, addr([0, 0, 0, 0], 0)), [0, 0, 0]),
        (
            ChitchatId::new("a", u64::MAX, addr([255; 4], u16::MAX)),
            [u64::MAX; 3],
        ),
        (
            ChitchatId::new("aé", 0, addr(Ipv6Addr::LOCALHOST, 0)),
            [0, u64::MAX, 1],
        ),
        (
            ChitchatId::new("aé\u{1F600}", 1 << 63, addr([0xff; 16], 1)),
            [1 << 63, 0, u64::MAX],
        ),
        (
            ChitchatId::new("b".repeat(usize::from(u16::MAX)), 7, addr([1; 16], 7)),
            [1, 2, 3],
        ),
        (
            ChitchatId::new("b".repeat(300), 7, addr([1, 1, 1, 1], 7)),
            [1, 2, 3],
        ),
    ]
    .into_iter()
    .collect();
    assert_round_trip(&plain_syn(&digest, "cluster"));
    assert_round_trip(&plain_syn_ack(&digest));
}

#[test]
fn a_plain_chitchat_message_is_refused_by_name() {
    let plain = plain_syn(&realistic_digest(Ids::Short, Addrs::OneIpManyPorts), "c");
    let err = decode(&plain).unwrap_err().to_string();
    assert!(err.contains("plain chitchat message"), "{err}");
}

#[test]
fn every_truncation_is_an_error() {
    let plain = plain_syn(&realistic_digest(Ids::Long, Addrs::OnePortManyIps), "c");
    let encoded = assert_round_trip(&plain);
    for len in 0..encoded.len() {
        assert!(decode(&encoded[..len]).is_err(), "prefix of {len} bytes");
    }
    let mut trailing = encoded;
    trailing.push(0);
    assert!(decode(&trailing).is_err());
}

fn error_of(compact_bytes: &[u8]) -> String {
    format!("{:#}", decode(compact_bytes).unwrap_err())
}

/// A compact Syn whose entries are given raw, with an empty cluster id after.
fn compact_syn(count: u64, entries: &[u8]) -> Vec<u8> {
    let mut bytes = vec![FORMAT_COMPACT, SYN];
    put_varint(&mut bytes, count);
    bytes.extend_from_slice(entries);
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

/// An entry whose id keeps `prefix` bytes of the previous one and replaces
/// the next `removed` with `inserted`; address as given by `flags` and
/// `octets`; port, GC version and every number unchanged.
fn compact_entry(
    prefix: u64,
    removed: usize,
    inserted: &[u8],
    flags: u8,
    octets: &[u8],
) -> Vec<u8> {
    let mut entry = vec![flags | SAME_PORT | SAME_LAST_GC_VERSION];
    put_varint(&mut entry, prefix);
    put_nibbles(&mut entry, removed, inserted.len());
    entry.extend_from_slice(inserted);
    entry.push(0); // generation
    entry.extend_from_slice(octets);
    entry.extend_from_slice(&[0, 0]); // heartbeat, max version
    entry
}

#[test]
fn hand_written_compact_digest_decodes() {
    let mut entries = compact_entry(0, 0, b"node-1.example.org", 0, &[10, 0, 0, 1]);
    entries.extend(compact_entry(5, 1, b"2", 3, &[2]));
    entries.extend(compact_entry(5, 1, b"3", 4, &[]));
    let decoded = decode(&compact_syn(3, &entries)).unwrap();
    let ChitchatMessage::Syn { cluster_id, .. } = &decoded else {
        panic!("{decoded:?}");
    };
    assert!(cluster_id.is_empty());
    let plain = decoded.serialize_to_vec();
    for id in ["node-1", "node-2", "node-3"] {
        let needle = format!("{id}.example.org");
        assert!(plain.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
    let ips = [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 2]];
    for ip in ips {
        assert!(plain.windows(5).any(|w| w == [&[4][..], &ip].concat()));
    }
}

#[test]
fn long_shared_prefixes_cannot_expand_past_the_cap() {
    // 65,535 entries each repeating a 65,535-byte id would be 4 GiB of chitchat bytes.
    let long_id = vec![b'a'; usize::from(u16::MAX)];
    let mut entries = compact_entry(0, 0, &long_id, 0, &[10, 0, 0, 1]);
    for _ in 0..30 {
        entries.extend(compact_entry(u64::from(u16::MAX), 0, b"", 4, &[]));
    }
    let err = error_of(&compact_syn(u64::from(u16::MAX), &entries));
    assert!(err.contains("expands past"), "{err}");
}

/// chitchat's delta block types.
const BLOCK_END: u8 = 0;
const BLOCK_COMPRESSED: u8 = 1;

/// A delta of `blocks` compressed blocks, each a 19-byte frame of 64 KiB of zeros.
fn zero_bomb_delta(blocks: usize) -> Vec<u8> {
    let frame = zstd::bulk::compress(&[0; INFLATED_BLOCK_MAX], 3).unwrap();
    let mut delta = Vec::new();
    for _ in 0..blocks {
        delta.push(BLOCK_COMPRESSED);
        delta.extend((frame.len() as u16).to_le_bytes());
        delta.extend_from_slice(&frame);
    }
    delta.push(BLOCK_END);
    delta
}

#[test]
fn a_delta_that_would_inflate_past_the_cap_is_refused() {
    let blocks = MAX_INFLATED_STREAM / INFLATED_BLOCK_MAX;
    let digest = plain_digest(&realistic_digest(Ids::Short, Addrs::OnePortManyIps));
    let bomb_delta = zero_bomb_delta(blocks + 1);
    assert!(bomb_delta.len() < 4096, "{} bytes", bomb_delta.len());
    for message_type in [ACK, SYN_ACK] {
        let digest = if message_type == ACK {
            &[][..]
        } else {
            &digest
        };
        let bomb = plain_message(message_type, digest, &bomb_delta);
        let err = format!("{:#}", decode(&compact(&bomb).unwrap()).unwrap_err());
        assert!(err.contains("expands past"), "{err}");
        // At the cap, chitchat gets to judge it (and refuses zeros as a delta).
        let at_cap = plain_message(message_type, digest, &zero_bomb_delta(blocks));
        let err = format!("{:#}", decode(&compact(&at_cap).unwrap()).unwrap_err());
        assert!(err.contains("invalid chitchat message"), "{err}");
    }
}

#[test]
fn hostile_digests_are_refused_with_a_reason() {
    let first = compact_entry(0, 0, b"abc", 0, &[10, 0, 0, 1]);
    let then = |entry: Vec<u8>| compact_syn(2, &[first.clone(), entry].concat());
    let mut huge_insert = vec![SAME_PORT | SAME_LAST_GC_VERSION, 0, 0x0f];
    put_varint(&mut huge_insert, u64::MAX);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (compact_syn(1 << 16, &first), "at most 65535"),
        (
            then(compact_entry(4, 0, b"", 4, &[])),
            "keeps 4 bytes of a previous id of 3",
        ),
        (
            then(compact_entry(1, 3, b"", 4, &[])),
            "removes 3 bytes after 1 from a previous id of 3",
        ),
        (
            compact_syn(1, &compact_entry(0, 0, &vec![b'x'; 1 << 16], 0, &[1; 4])),
            "over 65535",
        ),
        (compact_syn(1, &huge_insert), "over 65535"),
        (
            then(compact_entry(0, 0, b"", IPV6 | 1, &[1; 15])),
            "another family",
        ),
        (
            compact_syn(1, &compact_entry(0, 0, b"", 2, &[1, 1])),
            "another family",
        ),
        (
            compact_syn(1, &compact_entry(0, 0, b"", 17, &[])),
            "shares 17 octets",
        ),
        (
            compact_syn(1, &compact_entry(0, 0, b"", 5, &[])),
            "shares 5 octets",
        ),
        (compact_syn(1, &[0xff; 11]), "varint over 64 bits"),
        (
            compact_syn(1, &[&[0][..], &[0x80; 9], &[2]].concat()),
            "varint over 64 bits",
        ),
        (compact_syn(2, &first), "entry 1"),
        (vec![0x00, SYN], "unknown wire format 0x00"),
        (vec![FORMAT_VERBATIM, 9], "unknown message type 9"),
        (vec![FORMAT_COMPACT, ACK, 0], "has no digest"),
        (vec![FORMAT_COMPACT], "no message type"),
        (vec![], "empty message"),
    ];
    for (bytes, expected) in cases {
        let err = error_of(&bytes);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}

#[test]
fn varints_and_zigzag_round_trip_at_the_extremes() {
    for value in [0, 1, 127, 128, 16_383, 16_384, u64::MAX - 1, u64::MAX] {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, value);
        let mut reader = Reader(&bytes);
        assert_eq!(reader.varint().unwrap(), value);
        assert!(reader.0.is_empty());
    }
    for value in [0, 1, -1, i64::MIN, i64::MAX] {
        assert_eq!(unzigzag(zigzag(value)), value);
    }
    assert_eq!(zigzag(-1), 1);
    assert_eq!(zigzag(1), 2);
}

/// One message a node sent: chitchat's bytes, and its wire round trip.
struct Sent {
    plain: Vec<u8>,
    round_trip: anyhow::Result<ChitchatMessage>,
}

/// Captures what real chitchat nodes send, checking each message's wire round trip.
#[derive(Default, Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<Sent>>>,
}

struct RecordingTransport {
    inner: ChannelTransport,
    recorder: Recorder,
}

struct RecordingSocket {
    inner: Box<dyn Socket>,
    recorder: Recorder,
}

#[async_trait]
impl Transport for RecordingTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(RecordingSocket {
            inner: self.inner.open(listen_addr).await?,
            recorder: self.recorder.clone(),
        }))
    }
}

#[async_trait]
impl Socket for RecordingSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let sent = Sent {
            plain: message.serialize_to_vec(),
            round_trip: encode(&message).and_then(|bytes| decode(&bytes)),
        };
        self.recorder.seen.lock().push(sent);
        self.inner.send(to, message).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inner.recv().await
    }
}

/// chitchat's block type for a zstd-compressed block.
const ZSTD_BLOCK: u8 = 1;

/// The delta bytes of a plain Ack or SynAck (empty for other messages).
fn delta_of(plain: &[u8]) -> &[u8] {
    let mut body = Reader(&plain[4..]);
    match plain[3] {
        ACK => body.0,
        SYN_ACK => {
            compact_digest(&mut body, &mut Vec::new()).unwrap();
            body.0
        }
        _ => &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_real_chitchat_nodes_round_trip() {
    let recorder = Recorder::default();
    let transport = RecordingTransport {
        inner: ChannelTransport::default(),
        recorder: recorder.clone(),
    };
    let addrs: Vec<SocketAddr> = (0..3).map(|i| addr([10, 0, 0, 1], 7000 + i)).collect();
    let mut handles = Vec::new();
    for (i, listen_addr) in addrs.iter().enumerate() {
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                format!("node-{i}"),
                1_760_000_000_000 + i as u64,
                *listen_addr,
            ),
            cluster_id: "wire".to_string(),
            gossip_interval: Duration::from_millis(20),
            listen_addr: *listen_addr,
            seed_nodes: vec![addrs[0].to_string()],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        // A long repetitive value makes chitchat compress its delta blocks.
        let keys = vec![
            ("name".to_string(), format!("node-{i}")),
            ("blob".to_string(), "chorus ".repeat(500)),
        ];
        handles.push(spawn_chitchat(config, keys, &transport).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut converged = true;
        for handle in &handles {
            converged &= handle.chitchat().lock().await.live_nodes().count() == 3;
        }
        if converged {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no convergence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = std::mem::take(&mut *recorder.seen.lock());
    let mut types = [0usize; 4];
    let mut compressed_deltas = 0;
    for Sent { plain, round_trip } in &seen {
        let decoded = round_trip.as_ref().expect("wire round trip failed");
        assert_eq!(&decoded.serialize_to_vec(), plain);
        assert_eq!(decoded, &chitchat_reads(plain).unwrap());
        types[usize::from(plain[3])] += 1;
        compressed_deltas += usize::from(delta_of(plain).first() == Some(&ZSTD_BLOCK));
    }
    assert!(types[0] > 0 && types[1] > 0 && types[2] > 0, "{types:?}");
    assert!(compressed_deltas > 0, "no compressed delta seen");
}

fn node_id() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "n", "node-", "omero-web-", "é"]),
        "[a-c0-9é]{0,6}",
    )
        .prop_map(|(prefix, rest)| format!("{prefix}{rest}"))
}

fn wide_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(1 << 63),
        0..2_000u64,
        any::<u64>(),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        Just(IpAddr::from([10, 0, 0, 1])),
        Just(IpAddr::from([10, 0, 0, 2])),
        any::<[u8; 4]>().prop_map(IpAddr::from),
        Just(IpAddr::from(Ipv6Addr::LOCALHOST)),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ];
    let port = prop_oneof![Just(0u16), Just(u16::MAX), 7_000..7_010u16, any::<u16>()];
    (ip, port).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn chitchat_id() -> impl Strategy<Value = ChitchatId> {
    (node_id(), wide_u64(), socket_addr())
        .prop_map(|(node_id, generation, addr)| ChitchatId::new(node_id, generation, addr))
}

fn digest() -> impl Strategy<Value = Digest> {
    prop::collection::btree_map(chitchat_id(), prop::array::uniform3(wide_u64()), 0..40)
}

/// A valid delta in chitchat's encoding, cut into uncompressed blocks of
/// `block` bytes (chitchat joins blocks before parsing operations).
fn delta() -> impl Strategy<Value = Vec<u8>> {
    let key_values = prop::collection::vec(("[a-z:]{0,6}", ".{0,12}", 0..3u8), 0..4);
    let node = (
        chitchat_id(),
        wide_u64(),
        wide_u64(),
        key_values,
        wide_u64(),
    );
    (prop::collection::vec(node, 0..4), 1..200usize).prop_map(|(nodes, block)| {
        let mut ops = Vec::new();
        for (i, (id, last_gc_version, from_version, key_values, max_version)) in
            nodes.into_iter().enumerate()
        {
            // Node ids must not repeat within a delta.
            let id = ChitchatId::new(
                format!("{}#{i}", id.node_id),
                id.generation_id,
                id.gossip_advertise_addr,
            );
            ops.push(0);
            id.serialize(&mut ops);
            last_gc_version.serialize(&mut ops);
            from_version.serialize(&mut ops);
            if key_values.is_empty() {
                ops.push(2);
                max_version.serialize(&mut ops);
            }
            for (version, (key, value, status)) in key_values.into_iter().enumerate() {
                ops.push(1);
                key.serialize(&mut ops);
                value.serialize(&mut ops);
                (version as u64 + 1).serialize(&mut ops);
                ops.push(status);
            }
        }
        let mut stream = Vec::new();
        for chunk in ops.chunks(block) {
            stream.push(2);
            (chunk.len() as u16).serialize(&mut stream);
            stream.extend_from_slice(chunk);
        }
        stream.push(0);
        stream
    })
}

/// Cases per fuzz property when `CHORUS_FUZZ_CASES` is not set: the whole harness runs in a
/// few seconds; set it higher to fuzz longer.
const DEFAULT_FUZZ_CASES: u32 = 256;

/// Cases per property: `CHORUS_FUZZ_CASES`, or [`DEFAULT_FUZZ_CASES`].
fn fuzz_cases() -> u32 {
    std::env::var("CHORUS_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_FUZZ_CASES)
}

fn fuzz_config() -> ProptestConfig {
    ProptestConfig {
        cases: fuzz_cases(),
        // Regressions are kept as named tests (`fuzz_regression_*`), not in files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The smallest compact digest entry: flags, kept prefix, edit lengths, generation,
/// heartbeat and max version, one byte each (address, port and GC version shared).
const MIN_COMPACT_ENTRY_LEN: usize = 6;

/// Decodes `bytes` as a peer's datagram: never a panic, and the decoded message within its
/// bounds: the rebuilt chitchat bytes within [`MAX_PLAIN_SIZE`], at most one digest entry per
/// [`MIN_COMPACT_ENTRY_LEN`] wire bytes, a delta of at most `MAX_INFLATED_STREAM` bytes of
/// keys and values. Whatever decodes is encoded again into a message that decodes the same.
fn decode_within_bounds(bytes: &[u8]) -> Option<ChitchatMessage> {
    if let Ok(plain) = expand(bytes) {
        assert!(plain.len() <= MAX_PLAIN_SIZE, "{} plain bytes", plain.len());
    }
    let message = decode(bytes).ok()?;
    let (entries, delta_bytes) = decoded_size(&message.serialize_to_vec());
    assert!(
        entries <= bytes.len() / MIN_COMPACT_ENTRY_LEN,
        "{entries} digest entries from {} bytes",
        bytes.len()
    );
    assert!(
        delta_bytes <= MAX_INFLATED_STREAM,
        "a delta of {delta_bytes} bytes"
    );
    let again = decode(&encode(&message).expect("a decoded message encodes")).unwrap();
    assert_eq!(again.serialize_to_vec(), message.serialize_to_vec());
    Some(message)
}

/// Digest entries and inflated delta bytes of a plain chitchat message.
fn decoded_size(plain: &[u8]) -> (usize, usize) {
    let mut body = Reader(&plain[4..]);
    let entries = match plain[3] {
        SYN | SYN_ACK => usize::from(body.u16().unwrap()),
        _ => 0,
    };
    let delta = match plain[3] {
        ACK | SYN_ACK => delta_of(plain),
        _ => &[],
    };
    let mut inflated = 0;
    let mut blocks = Reader(delta);
    while let Ok(block_type) = blocks.u8() {
        let Ok(len) = blocks.u16() else { break };
        let Ok(block) = blocks.take(len.into()) else {
            break;
        };
        inflated += match block_type {
            ZSTD_BLOCK => zstd::bulk::decompress(block, INFLATED_BLOCK_MAX).map_or(0, |b| b.len()),
            _ => block.len(),
        };
    }
    (entries, inflated)
}

/// A change a network or an attacker may make to a datagram.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    /// A copy of one part of the message put at another place.
    Splice(Index, Index, Index),
    /// A ten-byte varint (count, prefix, edit length or difference at its largest).
    HugeVarint(Index),
    /// `0xFFFF` over two bytes: a chitchat length prefix at its largest.
    HugeLength(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(from, len, to)| Mutation::Splice(from, len, to)),
        any::<Index>().prop_map(Mutation::HugeVarint),
        any::<Index>().prop_map(Mutation::HugeLength),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit(at, bit) => bytes[at.index(len)] ^= 1 << bit,
        Mutation::SetByte(at, byte) => bytes[at.index(len)] = *byte,
        Mutation::Truncate(at) => bytes.truncate(at.index(len)),
        Mutation::Insert(at, inserted) => {
            let at = at.index(len + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Splice(from, part_len, to) => {
            let from = from.index(len);
            let part = bytes[from..from + part_len.index(len - from) + 1].to_vec();
            let to = to.index(len + 1);
            bytes.splice(to..to, part);
        }
        Mutation::HugeVarint(at) => {
            let at = at.index(len + 1);
            let varint = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
            bytes.splice(at..at, varint);
        }
        Mutation::HugeLength(at) => {
            let at = at.index(len);
            bytes[at] = 0xFF;
            if at + 1 < len {
                bytes[at + 1] = 0xFF;
            }
        }
    }
}

/// A message of any type with a digest and a delta, valid or not, and its plain bytes.
fn plain_message_of_any_type() -> impl Strategy<Value = Vec<u8>> {
    (digest(), delta(), ".{0,20}", 0..4u8).prop_map(|(digest, delta, cluster, message_type)| {
        let digest = plain_digest(&digest);
        match message_type {
            SYN => plain_message(SYN, &digest, &cluster.serialize_to_vec()),
            SYN_ACK => plain_message(SYN_ACK, &digest, &delta),
            ACK => plain_message(ACK, &[], &delta),
            _ => plain_message(BAD_CLUSTER, &[], &[]),
        }
    })
}

/// The issue 14 datagram, byte for byte as its Python reproduction sends it: a verbatim
/// SynAck whose delta sets the key "é" (a two-byte first character) on node "evil".
fn issue_14_multibyte_key_syn_ack() -> Vec<u8> {
    fn s(text: &str) -> Vec<u8> {
        [&(text.len() as u16).to_le_bytes()[..], text.as_bytes()].concat()
    }
    let cid = [
        s("evil"),
        1u64.to_le_bytes().to_vec(),
        vec![4, 127, 0, 0, 1],
        17019u16.to_le_bytes().to_vec(),
    ]
    .concat();
    let digest = [
        &1u16.to_le_bytes()[..],
        &cid,
        &[1, 0, 0, 0, 0, 0, 0, 0],
        &[0; 8],
        &[1, 0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    let ops = [
        &[0][..],
        &cid,
        &[0; 16],
        &[1],
        &s("é"),
        &s("x"),
        &1u64.to_le_bytes(),
        &[0],
    ]
    .concat();
    let delta = [&[2][..], &(ops.len() as u16).to_le_bytes(), &ops, &[0]].concat();
    [&[FORMAT_VERBATIM, SYN_ACK][..], &digest, &delta].concat()
}

/// The issue 14 flood: a Syn listing 1,300 made-up nodes, in the compact form.
fn issue_14_fake_digest_syn() -> Vec<u8> {
    let digest: Digest = (0..1_300u32)
        .map(|i| {
            let id = ChitchatId::new(
                format!("fake-{i}"),
                1,
                addr([10, 66, (i >> 8) as u8, i as u8], 7946),
            );
            (id, [1, 0, 1])
        })
        .collect();
    compact(&plain_syn(&digest, "c")).unwrap()
}

#[test]
fn fuzz_regression_issue_14_multibyte_key_syn_ack() {
    let bytes = issue_14_multibyte_key_syn_ack();
    let message = decode_within_bounds(&bytes).expect("the issue's SynAck is well formed");
    let ChitchatMessage::SynAck { .. } = &message else {
        panic!("a SynAck: {message:?}");
    };
    // What chitchat is handed carries the key as sent (in an uncompressed block).
    let plain = expand(&bytes).unwrap();
    let key = [&2u16.to_le_bytes()[..], "é".as_bytes()].concat();
    assert!(plain.windows(key.len()).any(|w| w == key));
}

#[test]
fn fuzz_regression_issue_14_fake_digest_flood() {
    let bytes = issue_14_fake_digest_syn();
    assert!(
        bytes.len() <= crate::MAX_UDP_PAYLOAD,
        "one datagram: {} bytes",
        bytes.len()
    );
    decode_within_bounds(&bytes).expect("the flood is well formed");
    let (entries, _) = decoded_size(&decode(&bytes).unwrap().serialize_to_vec());
    assert_eq!(entries, 1_300);
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Valid digests, in Syns and SynAcks, round-trip byte for byte.
    #[test]
    fn fuzz_wire_valid_digests_round_trip(
        digest in digest(),
        cluster in ".{0,20}",
        syn in any::<bool>(),
    ) {
        let plain = if syn { plain_syn(&digest, &cluster) } else { plain_syn_ack(&digest) };
        assert_round_trip(&plain);
    }

    /// Byte-exact transcoding, and decode agreeing with chitchat on every
    /// message, valid or not (deltas and trailing junk included).
    #[test]
    fn fuzz_wire_decode_agrees_with_chitchat(
        digest in digest(),
        delta in delta(),
        cluster in ".{0,20}",
        message_type in 0..4u8,
        junk in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let digest = plain_digest(&digest);
        let mut plain = match message_type {
            SYN => plain_message(SYN, &digest, &cluster.serialize_to_vec()),
            SYN_ACK => plain_message(SYN_ACK, &digest, &delta),
            ACK => plain_message(ACK, &[], &delta),
            _ => plain_message(BAD_CLUSTER, &[], &[]),
        };
        plain.extend_from_slice(&junk);
        let encoded = compact(&plain).unwrap();
        prop_assert!(encoded.len() + 2 <= plain.len());
        prop_assert_eq!(&expand(&encoded).unwrap(), &plain);
        match (decode(&encoded), chitchat_reads(&plain)) {
            (Ok(ours), Ok(theirs)) => prop_assert_eq!(ours, theirs),
            (Err(_), Err(_)) => {}
            (ours, theirs) => prop_assert!(false, "ours {ours:?}, chitchat's {theirs:?}"),
        }
    }

    /// Any bytes, after a valid or random format byte: no panic, bounded decoding.
    #[test]
    fn fuzz_wire_decoder_on_arbitrary_bytes(
        format in prop_oneof![Just(FORMAT_COMPACT), Just(FORMAT_VERBATIM), any::<u8>()],
        message_type in 0..5u8,
        body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let bytes = [&[format, message_type][..], &body].concat();
        decode_within_bounds(&bytes);
        decode_within_bounds(&body);
    }

    /// Encoded messages of every type (digests, deltas, junk after them), mangled: bit flips,
    /// truncations, splices, huge varints and length prefixes. No panic, bounded decoding.
    #[test]
    fn fuzz_wire_decoder_on_mutated_messages(
        plain in plain_message_of_any_type(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut bytes = compact(&plain).unwrap();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        decode_within_bounds(&bytes);
    }

    /// The issue's datagrams, mangled.
    #[test]
    fn fuzz_wire_decoder_on_mutated_attacks(
        flood in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut bytes = if flood {
            issue_14_fake_digest_syn()
        } else {
            issue_14_multibyte_key_syn_ack()
        };
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        decode_within_bounds(&bytes);
    }
}

#[test]
fn the_raft_marker_is_never_gossip() {
    assert!(![FORMAT_COMPACT, FORMAT_VERBATIM, PLAIN_HEADER[0]].contains(&RAFT_MARKER));
    for tail in [&[][..], &[0][..], &[FORMAT_VERBATIM, 0, 0x53, 0xB0][..]] {
        let mut bytes = vec![RAFT_MARKER];
        bytes.extend_from_slice(tail);
        assert!(decode(&bytes).is_err());
    }
}
