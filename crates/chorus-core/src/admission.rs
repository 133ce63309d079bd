//! Who may hold a connection to the agent's local listeners (the Unix socket and the metrics
//! port), and how an accept loop waits after an error. Pure: the agent feeds in peer uids,
//! descriptor limits and the time, and carries out the answers.
//!
//! Every open connection costs the agent a file descriptor. The limits below keep all of them
//! together under the process's descriptor limit, so a flood of idle connections is refused
//! one by one instead of exhausting descriptors; and a reserve of socket slots that only root
//! and the agent's own user may take means the operator can always run `chorus status` or
//! `chorus leave`, whoever holds the other slots.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Unix-socket connections open at once for everyone (watchers included). One more is
/// answered with a one-line JSON error and closed, unless its user may take a reserved slot.
pub const MAX_CLIENTS: usize = 128;
/// Unix-socket slots beyond [`MAX_CLIENTS`] that only root and the agent's own user may take,
/// for short requests (`status`, `leave`): a `watch` in a reserved slot is refused.
pub const RESERVED_CLIENTS: usize = 8;
/// Unix-socket connections one user other than root and the agent's own may hold; one more
/// is refused, so one local user cannot take every slot from the others.
pub const MAX_CLIENTS_PER_UID: usize = 32;
/// Metrics connections served at once; one more is answered `503 Service Unavailable` and
/// closed (as many again may be lingering in their refusal, so the metrics endpoint holds
/// at most twice this many descriptors).
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// Descriptors kept free for everything else the agent opens (gossip sockets, the data dir,
/// task pipes, log files). When the descriptor limit is too low for this and the limits
/// above, [`Budget::for_fd_limit`] shrinks the listeners' limits to fit.
pub const FD_HEADROOM: u64 = 64;

/// How many connections each local listener may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub socket: SocketLimits,
    /// Metrics connections served at once (and refused at once, lingering).
    pub metrics: usize,
}

/// The Unix socket's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Slots anyone may take.
    pub normal: usize,
    /// Slots only privileged users (root, the agent's own uid) may take once the normal ones
    /// are full.
    pub reserved: usize,
    /// Normal slots one unprivileged uid may hold.
    pub per_uid: usize,
}

impl Budget {
    /// The full limits.
    pub const FULL: Budget = Budget {
        socket: SocketLimits {
            normal: MAX_CLIENTS,
            reserved: RESERVED_CLIENTS,
            per_uid: MAX_CLIENTS_PER_UID,
        },
        metrics: MAX_METRICS_CONNECTIONS,
    };

    /// The limits that fit a process allowed `fd_limit` open descriptors: the full ones when
    /// they fit beside [`FD_HEADROOM`], else smaller ones, the reserve kept first. Each limit
    /// stays at least 1.
    pub fn for_fd_limit(fd_limit: u64) -> Budget {
        let full = Budget::FULL;
        let wanted = (full.socket.normal + full.socket.reserved + 2 * full.metrics) as u64;
        let available = fd_limit.saturating_sub(FD_HEADROOM);
        if available >= wanted {
            return full;
        }
        // Fits in usize: it is below `wanted`.
        let available = available as usize;
        let reserved = (available / 4).clamp(1, RESERVED_CLIENTS);
        let rest = available.saturating_sub(reserved);
        let metrics = (rest / 16).clamp(1, MAX_METRICS_CONNECTIONS);
        let normal = rest.saturating_sub(2 * metrics).clamp(1, MAX_CLIENTS);
        Budget {
            socket: SocketLimits {
                normal,
                reserved,
                per_uid: (normal / 4).clamp(1, MAX_CLIENTS_PER_UID),
            },
            metrics,
        }
    }
}

/// A slot held by one connection; give it back with [`Slots::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A normal slot held by root or the agent's own user (no per-uid share).
    Privileged,
    /// A normal slot counted against this uid's share (`None`: credentials unknown).
    User(Option<u32>),
    /// A reserved slot (privileged users only).
    Reserved,
}

impl Slot {
    /// Whether this connection may `watch`: a watch lasts, and the reserve is for requests
    /// that end.
    pub fn may_watch(&self) -> bool {
        !matches!(self, Slot::Reserved)
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot this user may take is held.
    Full { limit: usize },
    /// This (unprivileged) user holds its share already.
    UserFull { uid: Option<u32>, limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full { limit } => write!(
                f,
                "the agent is serving its limit of {limit} connections; try again later"
            ),
            Refusal::UserFull { uid, limit } => {
                let who = uid.map_or_else(|| "an unknown uid".to_string(), |u| format!("uid {u}"));
                write!(
                    f,
                    "{who} already holds {limit} connections to the agent, its limit; close some"
                )
            }
        }
    }
}

/// The Unix socket's slots in use.
#[derive(Debug)]
pub struct Slots {
    limits: SocketLimits,
    normal: usize,
    reserved: usize,
    /// Normal slots held per unprivileged uid (`None`: credentials unknown).
    by_uid: HashMap<Option<u32>, usize>,
}

impl Slots {
    pub fn new(limits: SocketLimits) -> Slots {
        Slots {
            limits,
            normal: 0,
            reserved: 0,
            by_uid: HashMap::new(),
        }
    }

    /// A slot for a new connection from `uid`; `privileged` is true for root and the agent's
    /// own uid. Privileged users take a normal slot while there is one, then a reserved one;
    /// the others take normal slots up to their share.
    pub fn admit(&mut self, uid: Option<u32>, privileged: bool) -> Result<Slot, Refusal> {
        if privileged {
            if self.normal < self.limits.normal {
                self.normal += 1;
                return Ok(Slot::Privileged);
            }
            if self.reserved < self.limits.reserved {
                self.reserved += 1;
                return Ok(Slot::Reserved);
            }
            return Err(Refusal::Full {
                limit: self.limits.normal + self.limits.reserved,
            });
        }
        if self.normal >= self.limits.normal {
            return Err(Refusal::Full {
                limit: self.limits.normal,
            });
        }
        let held = self.by_uid.entry(uid).or_insert(0);
        if *held >= self.limits.per_uid {
            return Err(Refusal::UserFull {
                uid,
                limit: self.limits.per_uid,
            });
        }
        *held += 1;
        self.normal += 1;
        Ok(Slot::User(uid))
    }

    /// Gives a slot from [`Slots::admit`] back.
    pub fn release(&mut self, slot: Slot) {
        match slot {
            Slot::Reserved => self.reserved = self.reserved.saturating_sub(1),
            Slot::Privileged => self.normal = self.normal.saturating_sub(1),
            Slot::User(uid) => {
                self.normal = self.normal.saturating_sub(1);
                if let Some(held) = self.by_uid.get_mut(&uid) {
                    *held = held.saturating_sub(1);
                    if *held == 0 {
                        self.by_uid.remove(&uid);
                    }
                }
            }
        }
    }

    /// Connections held now: (normal, reserved).
    pub fn in_use(&self) -> (usize, usize) {
        (self.normal, self.reserved)
    }
}

/// First wait after an accept error.
pub const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between accept attempts while they keep failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Accept errors are logged at most once per this interval (with how many there were), so a
/// persistent error (out of descriptors) cannot fill the disk with log lines.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// How an accept loop waits after errors: [`ACCEPT_BACKOFF_FIRST`] doubling up to
/// [`ACCEPT_BACKOFF_MAX`], back to the start after a success.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// Wait after the next error; zero until the first one.
    next: Duration,
    log: LogEvery,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new()
    }
}

/// What to do after an accept error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterError {
    /// Wait this long before accepting again.
    pub wait: Duration,
    /// Log this error, with the number of errors (this one included) since the last log line;
    /// `None`: stay quiet.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    pub fn new() -> AcceptBackoff {
        AcceptBackoff {
            next: Duration::ZERO,
            log: LogEvery::new(ACCEPT_ERROR_LOG_EVERY),
        }
    }

    /// An accept failed at `now`.
    pub fn failed(&mut self, now: Instant) -> AfterError {
        self.next = if self.next.is_zero() {
            ACCEPT_BACKOFF_FIRST
        } else {
            self.next.saturating_mul(2).min(ACCEPT_BACKOFF_MAX)
        };
        AfterError {
            wait: self.next,
            log: self.log.happened(now),
        }
    }

    /// An accept succeeded: the next error waits [`ACCEPT_BACKOFF_FIRST`] again (the log
    /// interval still holds).
    pub fn succeeded(&mut self) {
        self.next = Duration::ZERO;
    }
}

/// Says when a repeated event is worth a log line: the first time, then at most once per
/// interval, with how many happened since the last line.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl LogEvery {
    pub fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// The event happened at `now`: `Some(count since the last line, this one included)` when
    /// it is to be logged.
    pub fn happened(&mut self, now: Instant) -> Option<u64> {
        self.unlogged = self.unlogged.saturating_add(1);
        let due = self
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        due.then(|| {
            self.last_logged = Some(now);
            std::mem::take(&mut self.unlogged)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_budget_fits_a_common_limit_and_small_limits_shrink_it() {
        assert_eq!(Budget::for_fd_limit(1024), Budget::FULL);
        assert_eq!(Budget::for_fd_limit(u64::MAX), Budget::FULL);
        // 256 (the limit the descriptor exhaustion was seen with) fits the full budget.
        assert_eq!(Budget::for_fd_limit(256), Budget::FULL);
        let small = Budget::for_fd_limit(FD_HEADROOM + 40);
        assert_eq!(small.socket.reserved, 8);
        assert_eq!(small.metrics, 2);
        assert_eq!(small.socket.normal, 28);
        assert_eq!(small.socket.per_uid, 7);
        let total = |b: Budget| (b.socket.normal + b.socket.reserved + 2 * b.metrics) as u64;
        for limit in [FD_HEADROOM + 4, FD_HEADROOM + 40, 200, 231] {
            assert!(
                total(Budget::for_fd_limit(limit)) <= limit - FD_HEADROOM,
                "{limit}"
            );
        }
        // Below the headroom every limit is 1: the agent still serves, one at a time.
        let tiny = Budget::for_fd_limit(10);
        assert_eq!(
            (
                tiny.socket.normal,
                tiny.socket.reserved,
                tiny.metrics,
                tiny.socket.per_uid
            ),
            (1, 1, 1, 1)
        );
    }

    fn limits() -> SocketLimits {
        SocketLimits {
            normal: 4,
            reserved: 2,
            per_uid: 2,
        }
    }

    #[test]
    fn one_user_gets_its_share_and_no_more() {
        let mut slots = Slots::new(limits());
        let a = slots.admit(Some(1000), false).unwrap();
        slots.admit(Some(1000), false).unwrap();
        assert_eq!(
            slots.admit(Some(1000), false),
            Err(Refusal::UserFull {
                uid: Some(1000),
                limit: 2
            })
        );
        // Another user still gets in.
        slots.admit(Some(1001), false).unwrap();
        // A slot given back can be taken again.
        slots.release(a);
        slots.admit(Some(1000), false).unwrap();
        assert_eq!(slots.in_use(), (3, 0));
    }

    #[test]
    fn the_reserve_is_for_privileged_users_only_and_not_for_watching() {
        let mut slots = Slots::new(limits());
        for uid in [1, 2, 3, 4] {
            let slot = slots.admit(Some(uid), false).unwrap();
            assert!(slot.may_watch());
        }
        assert_eq!(slots.admit(Some(5), false), Err(Refusal::Full { limit: 4 }));
        let reserved = slots.admit(Some(0), true).unwrap();
        assert_eq!(reserved, Slot::Reserved);
        assert!(!reserved.may_watch());
        slots.admit(Some(0), true).unwrap();
        assert_eq!(slots.admit(Some(0), true), Err(Refusal::Full { limit: 6 }));
        assert_eq!(slots.in_use(), (4, 2));
        slots.release(reserved);
        assert_eq!(slots.admit(Some(0), true), Ok(Slot::Reserved));
    }

    #[test]
    fn privileged_users_have_no_per_uid_share() {
        let mut slots = Slots::new(limits());
        for _ in 0..4 {
            assert_eq!(slots.admit(Some(0), true), Ok(Slot::Privileged));
        }
        assert_eq!(slots.admit(Some(0), true), Ok(Slot::Reserved));
    }

    #[test]
    fn releasing_more_than_was_taken_does_not_wrap() {
        let mut slots = Slots::new(limits());
        slots.release(Slot::Reserved);
        slots.release(Slot::User(Some(7)));
        slots.release(Slot::Privileged);
        assert_eq!(slots.in_use(), (0, 0));
        assert!(slots.admit(Some(7), false).is_ok());
    }

    #[test]
    fn accept_errors_back_off_to_a_second_and_log_once_per_interval() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::new();
        let mut waits = Vec::new();
        let mut logs = Vec::new();
        let mut now = start;
        for _ in 0..20 {
            let step = backoff.failed(now);
            waits.push(step.wait.as_millis() as u64);
            logs.push(step.log);
            now += step.wait;
        }
        assert_eq!(&waits[..9], &[10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // The first error is logged at once; the next line comes 10 s later, counting them.
        assert_eq!(logs[0], Some(1));
        let later: Vec<_> = logs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_some())
            .collect();
        assert_eq!(later.len(), 2, "{logs:?}");
        let (i, count) = later[1];
        // 10 + 20 + .. + 640 = 1270 ms, then 1 s steps: the 17th error comes at 10.27 s and
        // is logged with the 16 errors since the first line.
        assert_eq!((i, *count), (16, Some(16)));
        backoff.succeeded();
        assert_eq!(backoff.failed(now).wait, ACCEPT_BACKOFF_FIRST);
    }
}
