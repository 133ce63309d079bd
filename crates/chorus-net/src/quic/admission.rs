//! Who may start a handshake: the admission of incoming connection attempts.
//!
//! Sans-I/O: [`Admission::decide`] looks at an attempt's source address and
//! whether QUIC validated it, and answers with a [`Verdict`]; the accept loop
//! carries it out on quinn's `Incoming`. Time is passed in.
//!
//! Every handshake holds a slot from the decision until its TLS handshake and
//! hello end, whichever way. The rules, in order:
//!
//! 1. Under load ([`RETRY_ABOVE_PENDING`] handshakes in progress) an attempt
//!    whose source address is not validated gets a QUIC Retry: it costs no
//!    slot, and only a sender that receives at its source address can come
//!    back, with a token, and be judged by the rules below.
//! 2. Known peers (addresses that held a connection past the hello within
//!    [`KNOWN_PEER_TTL`]) may take any slot, including the
//!    [`RESERVED_FOR_KNOWN`] that others may not, and skip the per-source
//!    limits: a member that restarts during a flood gets back in.
//! 3. Any other source IP (an IPv6 source by its /64) may hold at most
//!    [`MAX_PENDING_PER_SOURCE`] slots and start handshakes at
//!    [`HANDSHAKE_RATE_PER_SOURCE`] per second (a token bucket of
//!    [`HANDSHAKE_BURST_PER_SOURCE`]); past either it is throttled.
//! 4. An attempt that finds no slot open to it is refused.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::MAX_PENDING_HANDSHAKES;

/// Handshakes in progress from which attempts with an unvalidated source
/// address are answered with a Retry instead of a slot. Below it a Retry
/// would only cost peers a round trip.
pub const RETRY_ABOVE_PENDING: usize = 8;

/// Handshake slots only known peers may take; unknown sources together hold
/// at most `MAX_PENDING_HANDSHAKES - RESERVED_FOR_KNOWN` and are refused
/// beyond.
pub const RESERVED_FOR_KNOWN: usize = 16;

/// Handshakes one unknown source IP may have in progress at once; further
/// attempts from it are throttled until one ends.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// Handshakes per second one unknown source IP may start, on average;
/// attempts over the rate are throttled.
pub const HANDSHAKE_RATE_PER_SOURCE: u64 = 10;

/// Handshakes one unknown source IP may start at once after a quiet spell
/// (the token bucket's size).
pub const HANDSHAKE_BURST_PER_SOURCE: u64 = 20;

/// Source IPs with their own token bucket. Sources whose bucket is full
/// (quiet ones) are forgotten first, losing nothing; when every tracked
/// source is busy, new sources share one overflow bucket and slot count, so
/// that many addresses cannot each start with a full bucket.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// How long an address counts as a known peer after its last connection
/// (opened or closed) that passed the hello.
pub const KNOWN_PEER_TTL: Duration = Duration::from_secs(15 * 60);

/// Known peer addresses remembered; when full, expired ones go first, then
/// the longest unseen.
pub const MAX_KNOWN_PEERS: usize = 2048;

/// Token bucket units per token, so that refills need no fractions.
const MILLI: u64 = 1000;

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Start the handshake; the slot is held until it ends.
    Accept(Slot),
    /// Answer with a Retry (address validation); no slot is held.
    Retry,
    /// The source is over its rate or its share of slots: refuse.
    Throttle,
    /// No slot is open to this source: refuse.
    Refuse,
}

/// A handshake slot, given back with [`Admission::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Taken by a known peer.
    Known,
    /// Taken by an unknown source (`None`: the overflow source).
    Unknown(Option<SourceKey>),
}

/// The unit an unknown source is limited by: an IPv4 address or an IPv6 /64
/// (a single host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey(IpAddr);

impl SourceKey {
    pub(crate) fn of(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !u128::from(u64::MAX);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

/// A token bucket counted in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    updated: Instant,
}

impl Bucket {
    const CAPACITY: u64 = HANDSHAKE_BURST_PER_SOURCE * MILLI;

    fn full(now: Instant) -> Self {
        Self {
            milli_tokens: Self::CAPACITY,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ms = now.saturating_duration_since(self.updated).as_millis();
        // HANDSHAKE_RATE_PER_SOURCE tokens per second = that many milli-tokens per ms.
        let gained = u64::try_from(elapsed_ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(HANDSHAKE_RATE_PER_SOURCE);
        self.milli_tokens = self.milli_tokens.saturating_add(gained).min(Self::CAPACITY);
        self.updated = now;
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.milli_tokens >= Self::CAPACITY
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        match self.milli_tokens.checked_sub(MILLI) {
            Some(left) => {
                self.milli_tokens = left;
                true
            }
            None => false,
        }
    }
}

/// An unknown source's bucket and the slots it holds.
#[derive(Debug, Clone, Copy)]
struct Source {
    bucket: Bucket,
    pending: usize,
}

impl Source {
    fn new(now: Instant) -> Self {
        Self {
            bucket: Bucket::full(now),
            pending: 0,
        }
    }
}

/// The admission state of one socket.
#[derive(Debug)]
pub(crate) struct Admission {
    pending_known: usize,
    pending_unknown: usize,
    /// Known peer addresses and when they were last seen.
    known: HashMap<SocketAddr, Instant>,
    sources: HashMap<SourceKey, Source>,
    overflow: Source,
}

impl Admission {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            pending_known: 0,
            pending_unknown: 0,
            known: HashMap::new(),
            sources: HashMap::new(),
            overflow: Source::new(now),
        }
    }

    /// Handshakes in progress.
    pub(crate) fn pending(&self) -> usize {
        self.pending_known.saturating_add(self.pending_unknown)
    }

    /// Judges an attempt from `remote`; `validated` says whether QUIC has
    /// validated the address (a Retry token came back), `may_retry` whether
    /// a Retry is still allowed.
    pub(crate) fn decide(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        validated: bool,
        may_retry: bool,
    ) -> Verdict {
        let pending = self.pending();
        if pending >= RETRY_ABOVE_PENDING && !validated && may_retry {
            return Verdict::Retry;
        }
        if self.is_known(remote, now) {
            if pending >= MAX_PENDING_HANDSHAKES {
                return Verdict::Refuse;
            }
            self.pending_known = self.pending_known.saturating_add(1);
            return Verdict::Accept(Slot::Known);
        }
        let open_to_unknown = MAX_PENDING_HANDSHAKES.saturating_sub(RESERVED_FOR_KNOWN);
        let key = self.track(SourceKey::of(remote), now);
        let source = match key {
            Some(key) => self.sources.get_mut(&key).expect("tracked just now"),
            None => &mut self.overflow,
        };
        if source.pending >= MAX_PENDING_PER_SOURCE || !source.bucket.take(now) {
            return Verdict::Throttle;
        }
        if self.pending_unknown >= open_to_unknown || pending >= MAX_PENDING_HANDSHAKES {
            return Verdict::Refuse;
        }
        source.pending = source.pending.saturating_add(1);
        self.pending_unknown = self.pending_unknown.saturating_add(1);
        Verdict::Accept(Slot::Unknown(key))
    }

    /// Gives a slot back.
    pub(crate) fn release(&mut self, slot: Slot) {
        match slot {
            Slot::Known => self.pending_known = self.pending_known.saturating_sub(1),
            Slot::Unknown(key) => {
                self.pending_unknown = self.pending_unknown.saturating_sub(1);
                let source = match key {
                    Some(key) => self.sources.get_mut(&key),
                    None => Some(&mut self.overflow),
                };
                // A source holding a slot is never forgotten, so it is there.
                if let Some(source) = source {
                    source.pending = source.pending.saturating_sub(1);
                }
            }
        }
    }

    /// Records that `addr` held a connection that passed the hello.
    pub(crate) fn note_peer(&mut self, addr: SocketAddr, now: Instant) {
        if self.known.len() >= MAX_KNOWN_PEERS && !self.known.contains_key(&addr) {
            self.known
                .retain(|_, seen| now.saturating_duration_since(*seen) < KNOWN_PEER_TTL);
            if self.known.len() >= MAX_KNOWN_PEERS {
                let oldest = self.known.iter().min_by_key(|(_, seen)| **seen);
                if let Some((&oldest, _)) = oldest {
                    self.known.remove(&oldest);
                }
            }
        }
        self.known.insert(addr, now);
    }

    fn is_known(&self, addr: SocketAddr, now: Instant) -> bool {
        self.known
            .get(&addr)
            .is_some_and(|seen| now.saturating_duration_since(*seen) < KNOWN_PEER_TTL)
    }

    /// The key under which `key`'s source is tracked: its own, or `None` for
    /// the overflow source when the table is full of busy sources.
    fn track(&mut self, key: SourceKey, now: Instant) -> Option<SourceKey> {
        if self.sources.contains_key(&key) {
            return Some(key);
        }
        if self.sources.len() >= MAX_TRACKED_SOURCES {
            self.sources
                .retain(|_, source| source.pending > 0 || !source.bucket.is_full(now));
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                return None;
            }
        }
        self.sources.insert(key, Source::new(now));
        Some(key)
    }
}

/// A held slot; dropping it gives the slot back.
pub(crate) struct SlotGuard {
    admission: Arc<Mutex<Admission>>,
    slot: Slot,
}

impl SlotGuard {
    pub(crate) fn new(admission: Arc<Mutex<Admission>>, slot: Slot) -> Self {
        Self { admission, slot }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.admission.lock().release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_held_to_its_share_and_its_rate() {
        let now = Instant::now();
        let mut a = Admission::new(now);
        let flooder = addr("10.0.0.1:1000");
        let mut slots = Vec::new();
        for _ in 0..MAX_PENDING_PER_SOURCE {
            match a.decide(now, flooder, true, false) {
                Verdict::Accept(slot) => slots.push(slot),
                other => panic!("{other:?}"),
            }
        }
        // Other ports of the same IP are the same source.
        assert_eq!(
            a.decide(now, addr("10.0.0.1:2000"), true, false),
            Verdict::Throttle
        );
        for slot in slots {
            a.release(slot);
        }
        // The burst allows HANDSHAKE_BURST_PER_SOURCE starts, then the rate.
        let mut started = MAX_PENDING_PER_SOURCE as u64;
        while let Verdict::Accept(slot) = a.decide(now, flooder, true, false) {
            a.release(slot);
            started += 1;
            assert!(started <= HANDSHAKE_BURST_PER_SOURCE, "no limit");
        }
        assert_eq!(started, HANDSHAKE_BURST_PER_SOURCE);
        let later = now + Duration::from_millis(1000 / HANDSHAKE_RATE_PER_SOURCE);
        assert!(matches!(
            a.decide(later, flooder, true, false),
            Verdict::Accept(_)
        ));
        assert_eq!(a.decide(later, flooder, true, false), Verdict::Throttle);
        // Another IP is not affected.
        assert!(matches!(
            a.decide(later, addr("10.0.0.2:1000"), true, false),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn known_peers_get_the_reserve_when_unknown_sources_fill_the_rest() {
        let now = Instant::now();
        let mut a = Admission::new(now);
        let member = addr("10.9.9.9:7000");
        a.note_peer(member, now);
        let open_to_unknown = MAX_PENDING_HANDSHAKES - RESERVED_FOR_KNOWN;
        let mut unknown = 0;
        for ip in 0..=255u8 {
            let remote = SocketAddr::from(([10, 1, 0, ip], 4433));
            for _ in 0..MAX_PENDING_PER_SOURCE {
                if let Verdict::Accept(_) = a.decide(now, remote, true, false) {
                    unknown += 1;
                }
            }
        }
        assert_eq!(unknown, open_to_unknown);
        assert_eq!(
            a.decide(now, addr("10.2.0.1:1"), true, false),
            Verdict::Refuse
        );
        // A known member still gets in, skipping the per-source limits...
        for _ in 0..RESERVED_FOR_KNOWN {
            assert_eq!(
                a.decide(now, member, true, false),
                Verdict::Accept(Slot::Known)
            );
        }
        // ...until every slot is taken.
        assert_eq!(a.decide(now, member, true, false), Verdict::Refuse);
        a.release(Slot::Known);
        assert_eq!(
            a.decide(now, member, true, false),
            Verdict::Accept(Slot::Known)
        );
        // Knowledge expires.
        let much_later = now + KNOWN_PEER_TTL;
        a.release(Slot::Known);
        assert!(!a.is_known(member, much_later));
    }

    #[test]
    fn under_load_unvalidated_sources_are_retried_first() {
        let now = Instant::now();
        let mut a = Admission::new(now);
        let member = addr("10.9.9.9:7000");
        a.note_peer(member, now);
        for i in 0..RETRY_ABOVE_PENDING {
            let remote = SocketAddr::from(([10, 1, 0, i as u8], 1));
            assert!(matches!(
                a.decide(now, remote, false, true),
                Verdict::Accept(_)
            ));
        }
        // Known or not: an address that may be spoofed proves itself first.
        assert_eq!(a.decide(now, member, false, true), Verdict::Retry);
        assert_eq!(
            a.decide(now, addr("10.3.0.1:1"), false, true),
            Verdict::Retry
        );
        assert_eq!(
            a.decide(now, member, true, false),
            Verdict::Accept(Slot::Known)
        );
        assert!(matches!(
            a.decide(now, addr("10.3.0.1:1"), true, false),
            Verdict::Accept(Slot::Unknown(Some(_)))
        ));
        assert_eq!(a.pending(), RETRY_ABOVE_PENDING + 2);
    }

    #[test]
    fn the_source_table_is_bounded_and_busy_sources_share_the_overflow() {
        let now = Instant::now();
        let mut a = Admission::new(now);
        let ip = |i: usize| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1));
        // Each new source spends a token and gives its slot back: tracked, not full.
        for i in 0..MAX_TRACKED_SOURCES {
            let Verdict::Accept(slot) = a.decide(now, ip(i), true, false) else {
                panic!("source {i} refused");
            };
            a.release(slot);
        }
        assert_eq!(a.sources.len(), MAX_TRACKED_SOURCES);
        let Verdict::Accept(slot) = a.decide(now, ip(MAX_TRACKED_SOURCES), true, false) else {
            panic!("overflow refused");
        };
        assert_eq!(slot, Slot::Unknown(None));
        a.release(slot);
        // The overflow bucket is shared: new sources cannot each get a burst.
        let mut overflow_starts = 1;
        for i in MAX_TRACKED_SOURCES + 1..MAX_TRACKED_SOURCES + 100 {
            if let Verdict::Accept(slot) = a.decide(now, ip(i), true, false) {
                a.release(slot);
                overflow_starts += 1;
            }
        }
        assert_eq!(overflow_starts, HANDSHAKE_BURST_PER_SOURCE);
        // Once quiet sources refill, they are forgotten and room is made.
        let later = now + Duration::from_secs(HANDSHAKE_BURST_PER_SOURCE);
        assert!(matches!(
            a.decide(later, ip(MAX_TRACKED_SOURCES + 500), true, false),
            Verdict::Accept(Slot::Unknown(Some(_)))
        ));
        assert_eq!(a.sources.len(), 1);
    }

    #[test]
    fn ipv6_sources_are_limited_by_their_64() {
        let a = SourceKey::of(addr("[2001:db8:1:2:aaaa::1]:1"));
        let b = SourceKey::of(addr("[2001:db8:1:2:bbbb::2]:9"));
        let c = SourceKey::of(addr("[2001:db8:1:3::1]:1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            SourceKey::of(addr("[::ffff:10.0.0.1]:1")),
            SourceKey::of(addr("10.0.0.1:2"))
        );
    }

    #[test]
    fn the_known_table_is_bounded() {
        let now = Instant::now();
        let mut a = Admission::new(now);
        for i in 0..MAX_KNOWN_PEERS + 10 {
            let at = now + Duration::from_millis(i as u64);
            a.note_peer(SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1)), at);
        }
        assert_eq!(a.known.len(), MAX_KNOWN_PEERS);
        // The longest unseen went first.
        assert!(!a.known.contains_key(&SocketAddr::from(([10, 0, 0, 0], 1))));
    }
}
