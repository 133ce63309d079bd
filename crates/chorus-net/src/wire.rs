//! The bytes chorus transports put on the wire for a chitchat message: chitchat's
//! own encoding with the digest made compact.
//!
//! Every `Syn` and `SynAck` carries the sender's digest, one entry per known
//! node, and chitchat writes each entry at full width (61 bytes for a 20-byte
//! node id over IPv4), so digests dominate gossip traffic. Entries come sorted
//! by `ChitchatId`: neighbours share most of their node id and address, and
//! their counters are close. The compact digest stores each entry as
//! differences from the one before.
//!
//! This is a byte transcoder, not a second serializer: [`encode`] rewrites
//! what chitchat serialized, and [`decode`] rebuilds chitchat's exact bytes
//! and hands them to chitchat's own deserializer. chitchat still validates
//! every message, and the codec can never deliver one chitchat's wire could
//! not.
//!
//! # Format
//!
//! ```text
//! message = format:u8  type:u8  [compact digest]  rest
//! ```
//!
//! - `format`: [`FORMAT_COMPACT`] (the message has a digest, written compact)
//!   or [`FORMAT_VERBATIM`] (everything after `type` is chitchat's bytes: no
//!   digest, or one whose numbers jump too much for differences to pay).
//!   Neither is `0x53`, the first byte of chitchat's magic number, so a plain
//!   chitchat message is refused by name instead of misparsed.
//! - `type`: chitchat's message type (0 Syn, 1 SynAck, 2 Ack, 3 BadCluster).
//! - `rest`: chitchat's bytes after the digest (the Syn's cluster id, the
//!   delta, already block-compressed by chitchat), verbatim.
//!
//! Compact digest: entry count (varint), then per entry, relative to the
//! previous entry (the first one relative to an empty id and zeros):
//!
//! - flags: bit 7: IPv6; bit 6: same port; bit 5: same last GC version;
//!   bits 0-4: leading IP octets shared with the previous IP (which must be of
//!   the same family; a repeated IP shares all of them);
//! - node id as an edit of the previous one: kept prefix length (varint),
//!   then one byte holding the number of bytes removed after the prefix (high
//!   nibble) and inserted in their place (low nibble), a nibble of 15 meaning
//!   "15 plus a varint that follows", then the inserted bytes. Ids such as
//!   `omero-web-042.prod.example.org` differ from their neighbour in the
//!   middle: a prefix alone would repeat the whole domain;
//! - generation: zigzag varint of the (wrapping) difference;
//! - the IP octets that are not shared;
//! - the port, unless the same: zigzag varint of the (wrapping, 16-bit)
//!   difference;
//! - heartbeat: zigzag varint of the difference;
//! - last GC version, unless the same: zigzag varint of the difference;
//! - max version: zigzag varint of the difference.
//!
//! Varints are LEB128. The encoder only picks the compact form when it is
//! smaller, so an encoded message is always at least 2 bytes shorter than
//! chitchat's (whose header is 4 bytes): it fits wherever chitchat's would.

use anyhow::{bail, ensure, Context};
use chitchat::{ChitchatMessage, Deserializable, Serializable};

/// Largest plain chitchat message [`encode`] accepts and [`decode`] rebuilds:
/// QUIC's 1 MiB envelope limit plus slack. The cap is what keeps a small
/// envelope of long shared prefixes from expanding without bound.
pub const MAX_PLAIN_SIZE: usize = (1 << 20) + 1024;

/// Format byte: the digest is compact.
pub const FORMAT_COMPACT: u8 = 0xC1;
/// Format byte: chitchat's bytes follow the message type unchanged.
pub const FORMAT_VERBATIM: u8 = 0xC0;

/// First byte of a Raft message where gossip may arrive too: a QUIC stream
/// or a UDP datagram carrying Raft starts with it, and the Raft bytes follow.
/// It is neither a format byte nor the first byte of chitchat's magic
/// number, so [`decode`] refuses it and nothing [`encode`] writes starts with
/// it: gossip and Raft cannot be taken for one another.
pub const RAFT_MARKER: u8 = 0xD0;

/// chitchat's header: magic number 45139 (little-endian), protocol version 0.
const PLAIN_HEADER: [u8; 3] = [0x53, 0xB0, 0];
const BAD_CLUSTER: u8 = 3;
const IPV6: u8 = 0x80;
const SAME_PORT: u8 = 0x40;
const SAME_LAST_GC_VERSION: u8 = 0x20;
const SHARED_OCTETS: u8 = 0x1f;
/// A length nibble of 15 is continued by a varint.
const NIBBLE_ESCAPE: usize = 15;

/// The wire bytes for `message`. Fails only for a message over
/// [`MAX_PLAIN_SIZE`], which no peer would accept.
pub fn encode(message: &ChitchatMessage) -> anyhow::Result<Vec<u8>> {
    let len = message.serialized_len();
    ensure!(
        len <= MAX_PLAIN_SIZE,
        "gossip message of {len} bytes is over the {MAX_PLAIN_SIZE}-byte limit"
    );
    compact(&message.serialize_to_vec())
}

/// The wire bytes for `message` if they fit in `limit` (a transport's largest envelope).
pub fn encode_within(message: &ChitchatMessage, limit: usize) -> anyhow::Result<Vec<u8>> {
    let bytes = encode(message)?;
    ensure!(
        bytes.len() <= limit,
        "{} bytes, over the transport's {limit}-byte limit",
        bytes.len()
    );
    Ok(bytes)
}

/// The message in `bytes`, as [`encode`] wrote it; anything else is an error.
pub fn decode(bytes: &[u8]) -> anyhow::Result<ChitchatMessage> {
    let plain = expand(bytes)?;
    let mut cursor = plain.as_slice();
    let message = ChitchatMessage::deserialize(&mut cursor).context("invalid chitchat message")?;
    ensure!(
        cursor.is_empty(),
        "{} bytes after the chitchat message",
        cursor.len()
    );
    Ok(message)
}

fn carries_digest(message_type: u8) -> bool {
    // Syn and SynAck.
    message_type <= 1
}

/// chitchat's bytes to wire bytes. Whatever follows a well-formed digest is
/// copied, valid or not: judging it is chitchat's job, on the receiving side.
fn compact(plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (header, body) = plain
        .split_at_checked(PLAIN_HEADER.len() + 1)
        .context("not a chitchat message: too short")?;
    ensure!(
        header[..PLAIN_HEADER.len()] == PLAIN_HEADER,
        "not a chitchat v0 message"
    );
    let message_type = header[PLAIN_HEADER.len()];
    ensure!(
        message_type <= BAD_CLUSTER,
        "unknown chitchat message type {message_type}"
    );
    let mut out = Vec::with_capacity(body.len() + 2);
    if carries_digest(message_type) {
        out.extend([FORMAT_COMPACT, message_type]);
        let mut reader = Reader(body);
        let compacted = compact_digest(&mut reader, &mut out).is_ok();
        let plain_digest_len = body.len() - reader.0.len();
        if compacted && out.len() - 2 < plain_digest_len {
            out.extend_from_slice(reader.0);
            return Ok(out);
        }
        out.clear();
    }
    out.extend([FORMAT_VERBATIM, message_type]);
    out.extend_from_slice(body);
    Ok(out)
}

/// Wire bytes to chitchat's bytes, never more than [`MAX_PLAIN_SIZE`].
fn expand(encoded: &[u8]) -> anyhow::Result<Vec<u8>> {
    if encoded.starts_with(&PLAIN_HEADER[..2]) {
        bail!(
            "plain chitchat message (magic number 45139): the sender predates chorus's \
             compact wire format (chorus protocol 3) or is not chorus"
        );
    }
    let mut reader = Reader(encoded);
    let format = reader.u8().context("empty message")?;
    ensure!(
        format == FORMAT_COMPACT || format == FORMAT_VERBATIM,
        "unknown wire format {format:#04x}"
    );
    let message_type = reader.u8().context("no message type")?;
    ensure!(
        message_type <= BAD_CLUSTER,
        "unknown message type {message_type}"
    );
    let mut plain = Plain(Vec::with_capacity(
        encoded.len().saturating_mul(4).min(MAX_PLAIN_SIZE),
    ));
    plain.put(&PLAIN_HEADER)?;
    plain.put(&[message_type])?;
    if format == FORMAT_COMPACT {
        ensure!(
            carries_digest(message_type),
            "compact format on a message type {message_type}, which has no digest"
        );
        expand_digest(&mut reader, &mut plain).context("bad compact digest")?;
    }
    plain.put(reader.0)?;
    Ok(plain.0)
}

fn compact_digest(plain: &mut Reader, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let count = plain.u16()?;
    put_varint(out, count.into());
    let (mut prev, mut entry) = (Entry::default(), Entry::default());
    for _ in 0..count {
        entry.read_plain(plain)?;
        entry.write_compact(&prev, out);
        std::mem::swap(&mut prev, &mut entry);
    }
    Ok(())
}

fn expand_digest(compact: &mut Reader, plain: &mut Plain) -> anyhow::Result<()> {
    let count = compact.varint()?;
    let count = u16::try_from(count)
        .map_err(|_| anyhow::anyhow!("{count} entries, chitchat allows at most 65535"))?;
    plain.put(&count.to_le_bytes())?;
    // Each entry only changes the previous one, so one running entry will do.
    let mut entry = Entry::default();
    for index in 0..count {
        entry
            .read_compact(compact)
            .with_context(|| format!("entry {index}"))?;
        entry.write_plain(plain)?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Ip {
    octets: [u8; 16],
    /// 4 or 16; 0 before the first entry.
    len: usize,
}

impl Ip {
    fn bytes(&self) -> &[u8] {
        &self.octets[..self.len]
    }
}

/// One digest entry, in chitchat's field order.
#[derive(Debug, Default)]
struct Entry {
    node_id: Vec<u8>,
    generation: u64,
    ip: Ip,
    port: u16,
    heartbeat: u64,
    last_gc_version: u64,
    max_version: u64,
}

impl Entry {
    fn read_plain(&mut self, plain: &mut Reader) -> anyhow::Result<()> {
        let id_len = plain.u16()?;
        self.node_id.clear();
        self.node_id.extend_from_slice(plain.take(id_len.into())?);
        self.generation = plain.u64()?;
        self.ip.len = match plain.u8()? {
            4 => 4,
            6 => 16,
            other => bail!("IP version byte {other}"),
        };
        self.ip.octets[..self.ip.len].copy_from_slice(plain.take(self.ip.len)?);
        self.port = plain.u16()?;
        self.heartbeat = plain.u64()?;
        self.last_gc_version = plain.u64()?;
        self.max_version = plain.u64()?;
        Ok(())
    }

    fn write_compact(&self, prev: &Entry, out: &mut Vec<u8>) {
        let shared_octets = if prev.ip.len == self.ip.len {
            shared_prefix(prev.ip.bytes(), self.ip.bytes())
        } else {
            0
        };
        let mut flags = shared_octets as u8;
        if self.ip.len == 16 {
            flags |= IPV6;
        }
        if self.port == prev.port {
            flags |= SAME_PORT;
        }
        if self.last_gc_version == prev.last_gc_version {
            flags |= SAME_LAST_GC_VERSION;
        }
        out.push(flags);

        let (old, new) = (&prev.node_id, &self.node_id);
        let prefix = shared_prefix(old, new);
        let suffix = shared_suffix(&old[prefix..], &new[prefix..]);
        let inserted = &new[prefix..new.len() - suffix];
        put_varint(out, prefix as u64);
        put_nibbles(out, old.len() - prefix - suffix, inserted.len());
        out.extend_from_slice(inserted);

        put_difference(out, prev.generation, self.generation);
        out.extend_from_slice(&self.ip.bytes()[shared_octets..]);
        if flags & SAME_PORT == 0 {
            let step = self.port.wrapping_sub(prev.port) as i16;
            put_varint(out, zigzag(step.into()));
        }
        put_difference(out, prev.heartbeat, self.heartbeat);
        if flags & SAME_LAST_GC_VERSION == 0 {
            put_difference(out, prev.last_gc_version, self.last_gc_version);
        }
        put_difference(out, prev.max_version, self.max_version);
    }

    /// Turns the previous entry into the next one.
    fn read_compact(&mut self, compact: &mut Reader) -> anyhow::Result<()> {
        let flags = compact.u8()?;
        self.read_node_id(compact)?;
        self.generation = add_difference(self.generation, compact.varint()?);

        let len = if flags & IPV6 != 0 { 16 } else { 4 };
        let shared_octets = usize::from(flags & SHARED_OCTETS);
        ensure!(
            shared_octets <= len,
            "address shares {shared_octets} octets, it has {len}"
        );
        ensure!(
            shared_octets == 0 || self.ip.len == len,
            "address shares octets with a previous address of another family"
        );
        self.ip.len = len;
        self.ip.octets[shared_octets..len].copy_from_slice(compact.take(len - shared_octets)?);
        if flags & SAME_PORT == 0 {
            let step = compact.varint()?;
            ensure!(step <= u64::from(u16::MAX), "port step {step} out of range");
            self.port = self.port.wrapping_add(unzigzag(step) as u16);
        }

        self.heartbeat = add_difference(self.heartbeat, compact.varint()?);
        if flags & SAME_LAST_GC_VERSION == 0 {
            self.last_gc_version = add_difference(self.last_gc_version, compact.varint()?);
        }
        self.max_version = add_difference(self.max_version, compact.varint()?);
        Ok(())
    }

    fn read_node_id(&mut self, compact: &mut Reader) -> anyhow::Result<()> {
        let prefix = compact.varint()?;
        let (removed, inserted) = compact.nibbles()?;
        let old_len = self.node_id.len() as u64;
        ensure!(
            prefix <= old_len,
            "node id keeps {prefix} bytes of a previous id of {old_len}"
        );
        ensure!(
            removed <= old_len - prefix,
            "node id removes {removed} bytes after {prefix} from a previous id of {old_len}"
        );
        let kept = old_len - removed;
        ensure!(
            inserted <= u64::from(u16::MAX) - kept,
            "node id of {kept} + {inserted} bytes, over 65535"
        );
        // All three are now within u16.
        let (prefix, removed) = (prefix as usize, removed as usize);
        let inserted = compact.take(inserted as usize)?;
        self.node_id
            .splice(prefix..prefix + removed, inserted.iter().copied());
        Ok(())
    }

    fn write_plain(&self, plain: &mut Plain) -> anyhow::Result<()> {
        // `read_compact` keeps ids within u16.
        plain.put(&(self.node_id.len() as u16).to_le_bytes())?;
        plain.put(&self.node_id)?;
        plain.put(&self.generation.to_le_bytes())?;
        plain.put(&[if self.ip.len == 16 { 6 } else { 4 }])?;
        plain.put(self.ip.bytes())?;
        plain.put(&self.port.to_le_bytes())?;
        plain.put(&self.heartbeat.to_le_bytes())?;
        plain.put(&self.last_gc_version.to_le_bytes())?;
        plain.put(&self.max_version.to_le_bytes())
    }
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn shared_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Two lengths that are nearly always small, in one byte.
fn put_nibbles(out: &mut Vec<u8>, high: usize, low: usize) {
    out.push((high.min(NIBBLE_ESCAPE) << 4 | low.min(NIBBLE_ESCAPE)) as u8);
    for len in [high, low] {
        if len >= NIBBLE_ESCAPE {
            put_varint(out, (len - NIBBLE_ESCAPE) as u64);
        }
    }
}

/// Maps small differences of either sign to small numbers.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_difference(out: &mut Vec<u8>, prev: u64, next: u64) {
    put_varint(out, zigzag(next.wrapping_sub(prev) as i64));
}

fn add_difference(prev: u64, zigzagged: u64) -> u64 {
    prev.wrapping_add(unzigzag(zigzagged) as u64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The rebuilt chitchat message, refusing to grow past [`MAX_PLAIN_SIZE`].
struct Plain(Vec<u8>);

impl Plain {
    fn put(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        ensure!(
            bytes.len() <= MAX_PLAIN_SIZE - self.0.len(),
            "message expands past {MAX_PLAIN_SIZE} bytes"
        );
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A cursor whose reads fail, never panic, when the input runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> anyhow::Result<&'a [u8]> {
        let Some((head, tail)) = self.0.split_at_checked(len) else {
            bail!("truncated: {len} bytes needed, {} left", self.0.len());
        };
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn nibbles(&mut self) -> anyhow::Result<(u64, u64)> {
        let byte = usize::from(self.u8()?);
        let mut length = |nibble: usize| -> anyhow::Result<u64> {
            Ok(if nibble < NIBBLE_ESCAPE {
                nibble as u64
            } else {
                self.varint()?.saturating_add(NIBBLE_ESCAPE as u64)
            })
        };
        Ok((length(byte >> 4)?, length(byte & 0xf)?))
    }

    fn varint(&mut self) -> anyhow::Result<u64> {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            // The tenth byte holds bit 63 only.
            ensure!(shift < 63 || byte <= 1, "varint over 64 bits");
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint over 64 bits")
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
