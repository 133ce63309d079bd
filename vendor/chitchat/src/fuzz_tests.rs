//! Fuzzing of what a peer can send (chorus change 11, CHORUS.md): chitchat's message and delta
//! decoders, and a `Chitchat` instance fed decoded hostile messages.
//!
//! Each property runs `CHORUS_FUZZ_CASES` cases (default [`DEFAULT_FUZZ_CASES`], a few seconds
//! in all; set it higher to fuzz longer). Every test here is named `fuzz_*`, so
//! `CHORUS_FUZZ_CASES=100000 cargo test --workspace fuzz_` runs every harness.
//!
//! What they assert:
//! - no input panics, however mangled (bit flips, truncations, splices, huge length prefixes);
//! - decoding allocates within bounds: a digest holds at most one entry per
//!   [`MIN_DIGEST_ENTRY_LEN`] input bytes, a delta at most [`MAX_INFLATED_STREAM`] bytes of
//!   keys and values in at most one operation per [`MIN_DELTA_OP_LEN`] inflated bytes;
//! - valid messages round-trip, byte for byte;
//! - a `Chitchat` fed any of it keeps its limits: its messages fit a datagram, its own state
//!   is its own, unconfirmed nodes, members and node states stay within their bounds.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use tokio::sync::watch;

use crate::delta::{Delta, DeltaSerializer};
use crate::digest::Digest;
use crate::serialize::{Deserializable, Serializable};
use crate::{
    Chitchat, ChitchatConfig, ChitchatId, ChitchatMessage, Heartbeat, MAX_INFLATED_STREAM,
    MAX_MEMBERS, MAX_NODE_STATE_BYTES, MAX_UDP_DATAGRAM_PAYLOAD_SIZE, MAX_UNCONFIRMED_NODES,
    VersionedValue,
};

/// Cases per property when `CHORUS_FUZZ_CASES` is not set.
const DEFAULT_FUZZ_CASES: u32 = 64;

/// The smallest digest entry: empty node id (2), generation (8), IPv4 address (7), heartbeat,
/// last GC version and max version (24).
const MIN_DIGEST_ENTRY_LEN: usize = 41;

/// The smallest delta operation that adds to a decoded delta: a key-value with an empty key
/// and value (tag 1, two lengths 4, version 8, status 1).
const MIN_DELTA_OP_LEN: usize = 14;

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
        // Regressions are kept as named seeds below, not in files next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The issue 14 SynAck (chorus-wire verbatim SynAck `0xC0 0x01`), as chitchat's own bytes:
/// a delta setting the key "é" on node "evil". Its first character is two bytes long.
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
        &1u64.to_le_bytes(),
        &0u64.to_le_bytes(),
        &1u64.to_le_bytes(),
    ]
    .concat();
    let ops = [
        &[0u8][..],
        &cid,
        &0u64.to_le_bytes(),
        &0u64.to_le_bytes(),
        &[1],
        &s("é"),
        &s("x"),
        &1u64.to_le_bytes(),
        &[0],
    ]
    .concat();
    let delta = [&[2u8][..], &(ops.len() as u16).to_le_bytes(), &ops, &[0]].concat();
    [&[0x53, 0xB0, 0, 1][..], &digest, &delta].concat()
}

/// A Syn listing `count` made-up nodes, as the issue's flood did with 1,300.
fn fake_digest_syn(cluster_id: &str, count: usize, heartbeat: u64) -> ChitchatMessage {
    let mut digest = Digest::default();
    for i in 0..count {
        let addr: SocketAddr = ([10, 66, (i >> 8) as u8, i as u8], 7946).into();
        digest.add_node(
            ChitchatId::new(format!("fake-{i}"), 1, addr),
            Heartbeat(heartbeat),
            0,
            1,
        );
    }
    ChitchatMessage::Syn {
        cluster_id: cluster_id.to_string(),
        digest,
    }
}

// ----- strategies -----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("é".to_string()),
        Just("éa:b".to_string()),
        Just("\u{1F600}".to_string()),
        Just("ü\u{10FFFF}".to_string()),
        "[a-zé\u{1F600}:_]{0,8}",
        ".{0,12}",
        (1..400usize).prop_map(|len| "k".repeat(len)),
    ]
}

fn wide_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 63),
        0..64u64,
        any::<u64>(),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        Just(IpAddr::from([127, 0, 0, 1])),
        any::<[u8; 4]>().prop_map(IpAddr::from),
        Just(IpAddr::from(Ipv6Addr::LOCALHOST)),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn chitchat_id() -> impl Strategy<Value = ChitchatId> {
    let node_id = prop_oneof![
        text(),
        Just("node-1".to_string()),
        Just("node-2".to_string()),
        (256..300usize).prop_map(|len| "n".repeat(len)),
    ];
    (node_id, wide_u64(), socket_addr())
        .prop_map(|(node_id, generation, addr)| ChitchatId::new(node_id, generation, addr))
}

/// One delta operation, written as chitchat writes it, in any order a peer may choose.
#[derive(Debug, Clone)]
enum RawOp {
    Node(ChitchatId, u64, u64),
    KeyValue(String, String, u64, u8),
    SetMaxVersion(u64),
}

impl RawOp {
    fn write(&self, buf: &mut Vec<u8>) {
        match self {
            RawOp::Node(chitchat_id, last_gc_version, from_version) => {
                buf.push(0);
                chitchat_id.serialize(buf);
                last_gc_version.serialize(buf);
                from_version.serialize(buf);
            }
            RawOp::KeyValue(key, value, version, status) => {
                buf.push(1);
                key.serialize(buf);
                value.serialize(buf);
                version.serialize(buf);
                buf.push(*status);
            }
            RawOp::SetMaxVersion(max_version) => {
                buf.push(2);
                max_version.serialize(buf);
            }
        }
    }
}

fn raw_op(ids: Vec<ChitchatId>) -> impl Strategy<Value = RawOp> {
    prop_oneof![
        2 => (prop::sample::select(ids), wide_u64(), wide_u64())
            .prop_map(|(id, gc, from)| RawOp::Node(id, gc, from)),
        5 => (text(), text(), wide_u64(), 0..4u8)
            .prop_map(|(key, value, version, status)| RawOp::KeyValue(key, value, version, status)),
        1 => wide_u64().prop_map(RawOp::SetMaxVersion),
    ]
}

/// Raw operations cut into blocks of the given sizes, each stored plain or zstd-compressed.
fn raw_delta_bytes(ops: &[RawOp], cuts: &[(usize, bool)]) -> Vec<u8> {
    let mut plain = Vec::new();
    for op in ops {
        op.write(&mut plain);
    }
    let mut out = Vec::new();
    let mut rest = &plain[..];
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let &(size, compressed) = cuts.next().unwrap_or(&(1_000, false));
        let (block, tail) = rest.split_at(size.clamp(1, 60_000).min(rest.len()));
        rest = tail;
        let frame = compressed
            .then(|| zstd::bulk::compress(block, 3).ok())
            .flatten()
            .filter(|frame| frame.len() <= usize::from(u16::MAX));
        match frame {
            Some(frame) => {
                out.push(1);
                (frame.len() as u16).serialize(&mut out);
                out.extend_from_slice(&frame);
            }
            None => {
                out.push(2);
                (block.len() as u16).serialize(&mut out);
                out.extend_from_slice(block);
            }
        }
    }
    out.push(0);
    out
}

/// The ids a delta may be about: the victim itself, its members, or nodes it never heard of.
fn delta_id() -> impl Strategy<Value = ChitchatId> {
    prop_oneof![
        1 => Just(victim_id()),
        2 => (1..=3u16).prop_map(member_id),
        3 => chitchat_id(),
    ]
}

/// A version step: mostly small, sometimes a leap to the extremes.
fn version_step() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1..4u64, 1 => Just(u64::MAX / 2), 1 => any::<u64>()]
}

/// Deltas shaped as chitchat writes them (a node, its keys in increasing versions, maybe a
/// max version of any value), or operations in any order.
fn hostile_delta_ops() -> impl Strategy<Value = Vec<RawOp>> {
    let node = (
        delta_id(),
        wide_u64(),
        prop_oneof![3 => Just(0u64), 1 => wide_u64()],
        prop::collection::vec((text(), text(), version_step(), 0..3u8), 0..6),
        prop::option::of(wide_u64()),
    )
        .prop_map(|(id, last_gc, from, kvs, set_max)| {
            let mut ops = vec![RawOp::Node(id, last_gc, from)];
            let mut version = from;
            for (key, value, step, status) in kvs {
                version = version.saturating_add(step);
                ops.push(RawOp::KeyValue(key, value, version, status));
            }
            ops.extend(set_max.map(RawOp::SetMaxVersion));
            ops
        });
    prop_oneof![
        3 => prop::collection::vec(node, 0..5).prop_map(|nodes| nodes.concat()),
        1 => prop::collection::vec(delta_id(), 1..4)
            .prop_flat_map(|ids| prop::collection::vec(raw_op(ids), 0..24)),
    ]
}

fn hostile_delta_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        hostile_delta_ops(),
        prop::collection::vec((1..3_000usize, any::<bool>()), 1..4),
    )
        .prop_map(|(ops, cuts)| raw_delta_bytes(&ops, &cuts))
}

/// A delta as chitchat's own serializer writes it: nodes with increasing versions.
fn valid_delta() -> impl Strategy<Value = Delta> {
    let node = (
        chitchat_id(),
        wide_u64(),
        0..1_000u64,
        prop::collection::vec((text(), text(), 1..5u64, any::<bool>()), 0..6),
        any::<bool>(),
    );
    (
        prop::collection::vec(node, 0..5),
        prop_oneof![Just(65_000usize), 100..5_000usize],
    )
        .prop_map(|(nodes, mtu)| {
            let mut serializer = DeltaSerializer::with_mtu(mtu);
            let mut seen = std::collections::HashSet::new();
            'nodes: for (id, last_gc, from, kvs, set_max) in nodes {
                if !seen.insert(id.clone()) || !serializer.try_add_node(id, last_gc, from) {
                    continue;
                }
                let mut version = from;
                for (key, value, step, deleted) in kvs {
                    version = version.saturating_add(step);
                    let status = if deleted {
                        crate::DeletionStatus::Deleted(tokio::time::Instant::now())
                    } else {
                        crate::DeletionStatus::Set
                    };
                    let versioned = VersionedValue {
                        value,
                        version,
                        status,
                    };
                    if !serializer.try_add_kv(&key, versioned) {
                        continue 'nodes;
                    }
                }
                if set_max {
                    let _ = serializer.try_set_max_version(version.saturating_add(1));
                }
            }
            serializer.finish()
        })
}

fn digest() -> impl Strategy<Value = Digest> {
    prop::collection::btree_map(chitchat_id(), (wide_u64(), wide_u64(), wide_u64()), 0..30)
        .prop_map(|entries| {
            let mut digest = Digest::default();
            for (id, (heartbeat, last_gc, max)) in entries {
                digest.add_node(id, Heartbeat(heartbeat), last_gc, max);
            }
            digest
        })
}

fn valid_message() -> impl Strategy<Value = ChitchatMessage> {
    prop_oneof![
        (text(), digest())
            .prop_map(|(cluster_id, digest)| ChitchatMessage::Syn { cluster_id, digest }),
        (digest(), valid_delta())
            .prop_map(|(digest, delta)| ChitchatMessage::SynAck { digest, delta }),
        valid_delta().prop_map(|delta| ChitchatMessage::Ack { delta }),
        Just(()).prop_map(|()| ChitchatMessage::BadCluster),
    ]
}

/// A change a network or an attacker may make to a message.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    /// A copy of one part of the message put at another place.
    Splice(Index, Index, Index),
    /// `0xFFFF` written over two bytes: a length prefix at its largest.
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
            let part: Vec<u8> = bytes[from..from + part_len.index(len - from) + 1].to_vec();
            let to = to.index(len + 1);
            bytes.splice(to..to, part);
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

// ----- checks -----

/// What a decoded message holds: digest entries, delta operations and their string bytes.
fn decoded_size(message: &ChitchatMessage) -> (usize, usize, usize) {
    let (digest, delta) = match message {
        ChitchatMessage::Syn { digest, .. } => (Some(digest), None),
        ChitchatMessage::SynAck { digest, delta } => (Some(digest), Some(delta)),
        ChitchatMessage::Ack { delta } => (None, Some(delta)),
        _ => (None, None),
    };
    let entries = digest.map_or(0, |digest| digest.node_digests.len());
    let (mut ops, mut string_bytes) = (0, 0);
    for node_delta in delta.iter().flat_map(|delta| &delta.node_deltas) {
        ops += 1 + node_delta.key_values.len();
        string_bytes += node_delta.chitchat_id.node_id.len();
        for kv in &node_delta.key_values {
            string_bytes += kv.key.len() + kv.value.len();
        }
    }
    (entries, ops, string_bytes)
}

/// Decodes `bytes` as a peer's message: never a panic, allocation within the bounds of the
/// module doc, and whatever decodes can be written again.
fn decode_within_bounds(bytes: &[u8]) -> Option<ChitchatMessage> {
    let message = ChitchatMessage::deserialize(&mut &bytes[..]).ok()?;
    if matches!(message, ChitchatMessage::PanicForTest) {
        // Type 255 exists in test builds only, to make a node panic on purpose.
        return None;
    }
    let (entries, ops, string_bytes) = decoded_size(&message);
    assert!(
        entries <= bytes.len() / MIN_DIGEST_ENTRY_LEN,
        "{entries} digest entries from {} bytes",
        bytes.len()
    );
    assert!(
        ops <= MAX_INFLATED_STREAM / MIN_DELTA_OP_LEN + 1,
        "{ops} delta operations"
    );
    assert!(
        string_bytes <= MAX_INFLATED_STREAM,
        "{string_bytes} bytes of strings"
    );
    let written = message.serialize_to_vec();
    let read_again = ChitchatMessage::deserialize(&mut &written[..]).expect("written again, read");
    assert_eq!(decoded_size(&read_again), decoded_size(&message));
    Some(message)
}

fn victim_id() -> ChitchatId {
    ChitchatConfig::for_test(7_000).chitchat_id
}

fn member_id(port: u16) -> ChitchatId {
    ChitchatId::new(format!("node-{port}"), 1, ([127, 0, 0, 1], port).into())
}

/// The node under attack: three members besides itself, listeners on several prefixes.
fn victim() -> (Chitchat, Arc<AtomicUsize>) {
    let mut config = ChitchatConfig::for_test(7_000);
    config.cluster_id = "fuzz".to_string();
    let seeds = watch::channel(Default::default()).1;
    let mut chitchat = Chitchat::with_chitchat_id_and_seeds(
        config,
        seeds,
        vec![
            ("name".to_string(), "victim".to_string()),
            ("é".to_string(), "mine".to_string()),
        ],
    );
    for port in 1..=3 {
        let id = member_id(port);
        let state = chitchat.cluster_state.node_state_mut_or_init(&id);
        state.set("name", format!("node-{port}"));
        state.set("é", "x");
    }
    let events = Arc::new(AtomicUsize::new(0));
    for prefix in ["", "é", "a", "\u{1F600}", "name"] {
        let events = events.clone();
        chitchat
            .subscribe_event(prefix, move |_| {
                events.fetch_add(1, Ordering::Relaxed);
            })
            .forever();
    }
    (chitchat, events)
}

/// Feeds `message` to `victim` and checks every limit it keeps.
fn feed(victim: &mut Chitchat, message: ChitchatMessage) {
    let self_before: BTreeMap<String, String> = victim
        .cluster_state
        .node_state(victim.self_chitchat_id())
        .unwrap()
        .key_values()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    if let Some(reply) = victim.process_message(message) {
        let len = reply.serialize_to_vec().len();
        assert!(
            len <= MAX_UDP_DATAGRAM_PAYLOAD_SIZE,
            "a reply of {len} bytes"
        );
    }
    let syn_len = victim.create_syn_message().serialize_to_vec().len();
    assert!(
        syn_len <= MAX_UDP_DATAGRAM_PAYLOAD_SIZE,
        "a Syn of {syn_len} bytes"
    );
    assert!(victim.unconfirmed_nodes().count() <= MAX_UNCONFIRMED_NODES);
    assert!(victim.node_states().len() <= MAX_MEMBERS);
    let self_id = victim.self_chitchat_id().clone();
    let self_after: BTreeMap<String, String> = victim
        .node_state(&self_id)
        .unwrap()
        .key_values()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    assert_eq!(
        self_after, self_before,
        "a peer changed the node's own keys"
    );
    let states = victim
        .node_states()
        .iter()
        .filter(|(id, _)| **id != self_id)
        .map(|(_, state)| state)
        .chain(
            victim
                .unconfirmed_nodes()
                .filter_map(|id| victim.unconfirmed_node_state(id)),
        );
    for state in states {
        let bytes: usize = state
            .key_values_including_deleted()
            .map(|(key, value)| key.len() + value.value.len())
            .sum();
        assert!(
            bytes <= MAX_NODE_STATE_BYTES,
            "a node state of {bytes} bytes"
        );
    }
}

/// A hostile message, decoded from bytes as a socket would.
fn hostile_message() -> impl Strategy<Value = Vec<u8>> {
    let header = |message_type: u8| vec![0x53, 0xB0, 0, message_type];
    prop_oneof![
        // Valid messages, mangled.
        3 => (valid_message(), prop::collection::vec(mutation(), 0..4)).prop_map(
            |(message, mutations)| {
                let mut bytes = message.serialize_to_vec();
                for mutation in &mutations {
                    mutate(&mut bytes, mutation);
                }
                bytes
            }
        ),
        // Deltas in any order of operations, keys of any kind, versions at the extremes.
        3 => (digest(), hostile_delta_bytes(), any::<bool>()).prop_map(move |(digest, delta, syn_ack)| {
            if syn_ack {
                [header(1), digest.serialize_to_vec(), delta].concat()
            } else {
                [header(2), delta].concat()
            }
        }),
        // Digests of many unknown nodes.
        1 => (1..2_000usize, wide_u64()).prop_map(|(count, heartbeat)| {
            fake_digest_syn("fuzz", count, heartbeat).serialize_to_vec()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => Just(issue_14_multibyte_key_syn_ack()),
    ]
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
}

// ----- regressions, always run -----

#[test]
fn fuzz_regression_issue_14_multibyte_key_syn_ack() {
    paused_runtime().block_on(async {
        let bytes = issue_14_multibyte_key_syn_ack();
        let message = decode_within_bounds(&bytes).expect("the issue's SynAck is well formed");
        let (mut victim, events) = victim();
        feed(&mut victim, message);
        // The node behind the key is only heard of: once it were confirmed, its key "é" would
        // reach the listeners. Confirm it by hand to run the listeners on it.
        let evil: Vec<ChitchatId> = victim.unconfirmed_nodes().cloned().collect();
        assert_eq!(evil.len(), 1);
        let before = events.load(Ordering::Relaxed);
        assert!(victim.cluster_state.confirm(&evil[0]));
        // "" and "é" match the key "é".
        assert_eq!(events.load(Ordering::Relaxed), before + 2);
    });
}

#[test]
fn fuzz_regression_issue_14_fake_digest_flood() {
    paused_runtime().block_on(async {
        let (mut victim, _) = victim();
        for heartbeat in [1, 2] {
            let bytes = fake_digest_syn("fuzz", 1_300, heartbeat).serialize_to_vec();
            let message = decode_within_bounds(&bytes).expect("the flood is well formed");
            feed(&mut victim, message);
        }
        assert_eq!(victim.node_states().len(), 4);
        let syn = victim.create_syn_message();
        let ChitchatMessage::Syn { digest, .. } = &syn else {
            panic!("a Syn");
        };
        assert_eq!(
            digest.node_digests.len(),
            4,
            "the fakes stay out of the digest"
        );
    });
}

// ----- properties -----

proptest! {
    #![proptest_config(fuzz_config())]

    /// Any bytes: no panic, bounded decoding.
    #[test]
    fn fuzz_message_decoder_on_arbitrary_bytes(
        message_type in 0..5u8,
        body in prop::collection::vec(any::<u8>(), 0..2_000),
    ) {
        let bytes = [&[0x53, 0xB0, 0, message_type][..], &body].concat();
        decode_within_bounds(&bytes);
        decode_within_bounds(&body);
    }

    /// Valid messages, mangled: no panic, bounded decoding.
    #[test]
    fn fuzz_message_decoder_on_mutated_messages(
        message in valid_message(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut bytes = message.serialize_to_vec();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        decode_within_bounds(&bytes);
    }

    /// Valid messages round-trip, byte for byte.
    #[test]
    fn fuzz_valid_messages_round_trip(message in valid_message()) {
        let bytes = message.serialize_to_vec();
        prop_assert_eq!(bytes.len(), message.serialized_len());
        let decoded = decode_within_bounds(&bytes).expect("a valid message decodes");
        prop_assert_eq!(&decoded, &message);
        prop_assert_eq!(decoded.serialize_to_vec(), bytes);
    }

    /// Deltas of operations in any order, plain or compressed blocks of any size: no panic,
    /// bounded decoding, and what decodes is written and read again unchanged.
    #[test]
    fn fuzz_delta_decoder(
        delta in hostile_delta_bytes(),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        let mut bytes = delta;
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        if let Ok(delta) = Delta::deserialize(&mut &bytes[..]) {
            let written = delta.serialize_to_vec();
            let read_again = Delta::deserialize(&mut &written[..]).expect("written, read again");
            prop_assert_eq!(read_again.node_deltas, delta.node_deltas);
        }
    }

    /// A `Chitchat` fed decoded hostile messages, time passing in between: no panic, and every
    /// limit it keeps holds after each message.
    #[test]
    fn fuzz_process_message_with_hostile_input(
        messages in prop::collection::vec((hostile_message(), 0..3_000u64), 1..8),
    ) {
        paused_runtime().block_on(async {
            let (mut victim, _) = victim();
            for (bytes, pause_ms) in messages {
                if let Some(message) = decode_within_bounds(&bytes) {
                    feed(&mut victim, message);
                }
                tokio::time::advance(Duration::from_millis(pause_ms)).await;
                victim.update_nodes_liveness();
                victim.gc_keys_marked_for_deletion();
                assert!(victim.unconfirmed_nodes().count() <= MAX_UNCONFIRMED_NODES);
            }
        });
    }
}
