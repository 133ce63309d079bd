//! The leader's lease: how long this Raft leader may act alone.
//!
//! The leader asks raft-rs for a read index every heartbeat with a fresh context; raft-rs
//! answers (a `ReadState` carrying that context) once a majority of voters has acknowledged a
//! heartbeat sent with it. The lease then runs to `sent + duration`, where `sent` is when the
//! request was made (no later than the heartbeat left). A voter that acknowledged that
//! heartbeat refuses to vote for anyone else for a whole election timeout after it (raft-rs's
//! check-quorum lease, and chorus drops votes for an election timeout after a restart), and
//! every majority that elects a new leader shares a voter with the one that acknowledged. So
//! with `duration` below the election timeout (by the clock-rate margin in [`super::RaftTiming`])
//! the old lease has run out before a new leader can exist.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Read-index requests remembered at once; older ones are forgotten (their answers, if they
/// come, are ignored: a newer request gives a later lease anyway).
pub const MAX_PENDING: usize = 32;

#[derive(Debug)]
pub struct Lease {
    duration: Duration,
    next: u64,
    pending: VecDeque<(u64, Instant)>,
    until: Option<Instant>,
}

impl Lease {
    pub fn new(duration: Duration) -> Lease {
        Lease {
            duration,
            next: 1,
            pending: VecDeque::new(),
            until: None,
        }
    }

    /// A new request sent at `now`: the context to hand raft-rs's `read_index`.
    pub fn request(&mut self, now: Instant) -> Vec<u8> {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((seq, now));
        seq.to_le_bytes().to_vec()
    }

    /// raft-rs confirmed the request with this context (and every earlier one): the lease now
    /// runs to the request's time plus the duration. Returns the new end, if it moved.
    pub fn confirmed(&mut self, ctx: &[u8]) -> Option<Instant> {
        let seq = u64::from_le_bytes(ctx.try_into().ok()?);
        let pos = self.pending.iter().position(|(s, _)| *s == seq)?;
        let (_, sent) = self.pending[pos];
        self.pending.drain(..=pos);
        let until = sent + self.duration;
        if self.until.is_some_and(|u| u >= until) {
            return None;
        }
        self.until = Some(until);
        Some(until)
    }

    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    pub fn valid(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Forgets the lease and every pending request (a new term, a step-down).
    pub fn clear(&mut self) {
        self.until = None;
        self.pending.clear();
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_when_the_request_was_sent() {
        let t0 = Instant::now();
        let mut l = Lease::new(Duration::from_millis(800));
        let a = l.request(t0);
        let b = l.request(t0 + Duration::from_millis(200));
        assert!(!l.valid(t0));
        // The later request confirms the earlier one too.
        assert_eq!(l.confirmed(&b), Some(t0 + Duration::from_millis(1000)));
        assert_eq!(l.confirmed(&a), None, "already answered");
        assert!(l.valid(t0 + Duration::from_millis(999)));
        assert!(!l.valid(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn an_older_answer_never_shortens_and_junk_is_ignored() {
        let t0 = Instant::now();
        let mut l = Lease::new(Duration::from_millis(800));
        let a = l.request(t0);
        let b = l.request(t0 + Duration::from_millis(300));
        l.confirmed(&b);
        assert_eq!(l.confirmed(&a), None);
        assert_eq!(l.until(), Some(t0 + Duration::from_millis(1100)));
        assert_eq!(l.confirmed(b"junk"), None);
        assert_eq!(l.confirmed(&99u64.to_le_bytes()), None);
        l.clear();
        assert!(!l.valid(t0));
    }
}
