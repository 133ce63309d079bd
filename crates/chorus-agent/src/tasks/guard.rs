//! The task guard's rules and wire, shared by both ends: the agent writes [`Message`]s, the
//! `chorus task-guard` process (crates/chorus-cli/src/task_guard.rs) reads them and feeds
//! [`Watchdog`], which says when to signal the run's process group.
//!
//! Times are absolute `CLOCK_MONOTONIC` nanoseconds ([`MonoNs`]): the agent and the guard read
//! the same clock, so a deadline computed in the agent means the same instant in the guard,
//! and no message has to arrive in time for it to hold. The watchdog is pure (time is an
//! argument) so that every rule has a unit test; the process around it only moves bytes and
//! signals.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Absolute `CLOCK_MONOTONIC` time in nanoseconds (about 584 years of uptime fit).
pub type MonoNs = u64;

/// Exit status of the guard when it stopped the command itself (lease deadline, a stop from
/// the agent, the agent gone, a signal to the guard), as `timeout(1)` uses 124.
pub const EXIT_STOPPED: u8 = 124;
/// Exit status of the guard when it did not start the command: the deadline had already
/// passed, the agent was already gone, or the command could not be started. The reason is
/// one line on stderr.
pub const EXIT_NOT_STARTED: u8 = 125;

/// Longest line the agent sends (`renew` and 20 digits); a longer line is garbled, and a
/// garbled line stops the run (the guard can no longer trust its lease).
pub const MAX_LINE_BYTES: usize = 64;

/// What the agent tells the guard, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The lease now runs until this time.
    Renew(MonoNs),
    /// Leadership is gone: SIGTERM now, SIGKILL after the grace.
    Stop,
}

impl Message {
    /// The line, newline included.
    pub fn encode(self) -> String {
        match self {
            Message::Renew(at) => format!("renew {at}\n"),
            Message::Stop => "stop\n".to_string(),
        }
    }

    /// One line as read, newline included. Anything else than what [`Message::encode`]
    /// writes is an error.
    pub fn parse(line: &[u8]) -> Result<Message, String> {
        let text = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.strip_suffix('\n'))
            .ok_or_else(|| format!("not a line of text: {:?}", String::from_utf8_lossy(line)))?;
        match text.split_once(' ') {
            None if text == "stop" => Ok(Message::Stop),
            Some(("renew", at)) if !at.is_empty() && at.bytes().all(|b| b.is_ascii_digit()) => at
                .parse()
                .map(Message::Renew)
                .map_err(|_| format!("deadline out of range: {at}")),
            _ => Err(format!("unknown message: {text:?}")),
        }
    }
}

/// The current `CLOCK_MONOTONIC` time. If the clock cannot be read (it always can on Linux)
/// the answer is `MonoNs::MAX`: every deadline has passed, so a failure stops runs rather
/// than letting them outlive their lease.
pub fn mono_now() -> MonoNs {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|t| {
            let secs = u64::try_from(t.tv_sec()).ok()?;
            let nanos = u64::try_from(t.tv_nsec()).ok()?;
            secs.checked_mul(1_000_000_000)?.checked_add(nanos)
        })
        .unwrap_or(MonoNs::MAX)
}

/// `now + d` on the monotonic clock, `None` if it does not fit.
pub fn mono_after(now: MonoNs, d: Duration) -> Option<MonoNs> {
    u64::try_from(d.as_nanos())
        .ok()
        .and_then(|d| now.checked_add(d))
}

/// What happens to the watched run, from an input or the passing of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Nothing,
    /// SIGTERM to the process group.
    Terminate,
    /// SIGKILL to the process group.
    Kill,
}

/// What the guard hears besides the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Message(Message),
    /// A line that is not a [`Message`].
    Garbled,
    /// SIGTERM or SIGINT to the guard itself: stop the run as the agent's `stop` would.
    Signalled,
    /// stdin closed or the parent-death signal came: nobody is left to renew or to stop the
    /// run gracefully.
    AgentGone,
}

/// Why the guard stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    LeaseExpired,
    StopAsked,
    Garbled,
    Signalled,
    AgentGone,
}

impl Why {
    pub fn describe(self) -> &'static str {
        match self {
            Why::LeaseExpired => "the lease deadline passed without a renewal",
            Why::StopAsked => "the agent asked to stop",
            Why::Garbled => "the agent sent a garbled message",
            Why::Signalled => "the guard was signalled",
            Why::AgentGone => "the agent is gone",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running { deadline: MonoNs },
    Terminating { kill_at: MonoNs, why: Why },
    Killed { why: Why },
}

/// The deadline bookkeeping of one run. Rules:
/// - the command may start only before the deadline;
/// - at the deadline (not renewed in time) it gets SIGTERM, and SIGKILL at deadline + grace;
/// - a stop (the agent's, a signal, a garbled line) gets SIGTERM now and SIGKILL at
///   `min(now, deadline) + grace`: whatever happens, nothing runs past deadline + grace;
/// - the agent gone: SIGKILL at once;
/// - a renewal after the deadline revives nothing, and stopping is never undone.
#[derive(Debug, Clone)]
pub struct Watchdog {
    phase: Phase,
    grace: Duration,
}

impl Watchdog {
    pub fn new(deadline: MonoNs, grace: Duration) -> Watchdog {
        Watchdog {
            phase: Phase::Running { deadline },
            grace,
        }
    }

    /// Whether the command may start at `now`: strictly before the deadline.
    pub fn may_start(&self, now: MonoNs) -> bool {
        matches!(self.phase, Phase::Running { deadline } if now < deadline)
    }

    /// The time passed `now`: what to do.
    pub fn on_time(&mut self, now: MonoNs) -> Action {
        match self.phase {
            Phase::Running { deadline } if now >= deadline => {
                self.terminate(now, deadline, Why::LeaseExpired)
            }
            Phase::Terminating { kill_at, why } if now >= kill_at => {
                self.phase = Phase::Killed { why };
                Action::Kill
            }
            _ => Action::Nothing,
        }
    }

    /// `input` arrived at `now`: what to do. The clock is looked at first, so a renewal that
    /// comes after the deadline finds the run already stopping.
    pub fn on_input(&mut self, now: MonoNs, input: Input) -> Action {
        let timed = self.on_time(now);
        let asked = match (self.phase, input) {
            (Phase::Killed { .. }, _) => Action::Nothing,
            (Phase::Running { .. } | Phase::Terminating { .. }, Input::AgentGone) => {
                let why = self.stopped().unwrap_or(Why::AgentGone);
                self.phase = Phase::Killed { why };
                Action::Kill
            }
            (Phase::Running { .. }, Input::Message(Message::Renew(deadline))) => {
                self.phase = Phase::Running { deadline };
                self.on_time(now)
            }
            (Phase::Running { deadline }, Input::Message(Message::Stop)) => {
                self.terminate(now, deadline, Why::StopAsked)
            }
            (Phase::Running { deadline }, Input::Garbled) => {
                self.terminate(now, deadline, Why::Garbled)
            }
            (Phase::Running { deadline }, Input::Signalled) => {
                self.terminate(now, deadline, Why::Signalled)
            }
            (Phase::Terminating { .. }, _) => Action::Nothing,
        };
        timed.max(asked)
    }

    /// When [`Watchdog::on_time`] has something to do next, if ever.
    pub fn next_wake(&self) -> Option<MonoNs> {
        match self.phase {
            Phase::Running { deadline } => Some(deadline),
            Phase::Terminating { kill_at, .. } => Some(kill_at),
            Phase::Killed { .. } => None,
        }
    }

    /// Why the run was stopped, once it was.
    pub fn stopped(&self) -> Option<Why> {
        match self.phase {
            Phase::Running { .. } => None,
            Phase::Terminating { why, .. } | Phase::Killed { why } => Some(why),
        }
    }

    /// SIGTERM now; SIGKILL a grace after the earlier of now and the deadline (at once if
    /// that is already past). A sum that does not fit is the end of time: the deadline's
    /// SIGKILL then comes from the agent gone or the command's own end.
    fn terminate(&mut self, now: MonoNs, deadline: MonoNs, why: Why) -> Action {
        let kill_at = mono_after(now.min(deadline), self.grace).unwrap_or(MonoNs::MAX);
        if now >= kill_at {
            self.phase = Phase::Killed { why };
            Action::Kill
        } else {
            self.phase = Phase::Terminating { kill_at, why };
            Action::Terminate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MonoNs = 1_000_000_000;
    const GRACE: Duration = Duration::from_secs(2);

    fn renew(at: MonoNs) -> Input {
        Input::Message(Message::Renew(at))
    }

    #[test]
    fn messages_round_trip_and_junk_is_refused() {
        for m in [Message::Renew(0), Message::Renew(u64::MAX), Message::Stop] {
            assert_eq!(Message::parse(m.encode().as_bytes()), Ok(m));
            assert!(m.encode().len() <= MAX_LINE_BYTES);
        }
        for bad in [
            &b"renew 1"[..],
            b"renew\n",
            b"renew \n",
            b"renew -1\n",
            b"renew +1\n",
            b"renew 18446744073709551616\n",
            b"renew 1 2\n",
            b"stop now\n",
            b"STOP\n",
            b"\n",
            b"\xff\n",
        ] {
            assert!(Message::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn starts_only_before_the_deadline() {
        let dog = Watchdog::new(10 * S, GRACE);
        assert!(dog.may_start(10 * S - 1));
        assert!(!dog.may_start(10 * S));
        assert!(!dog.may_start(11 * S));
    }

    #[test]
    fn renewed_in_time_it_keeps_running() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_time(9 * S), Action::Nothing);
        assert_eq!(dog.on_input(9 * S, renew(12 * S)), Action::Nothing);
        assert_eq!(dog.next_wake(), Some(12 * S));
        assert_eq!(dog.on_time(11 * S), Action::Nothing);
        assert_eq!(dog.stopped(), None);
    }

    #[test]
    fn at_the_deadline_term_then_kill_after_the_grace() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_time(10 * S), Action::Terminate);
        assert_eq!(dog.stopped(), Some(Why::LeaseExpired));
        assert_eq!(dog.next_wake(), Some(12 * S));
        assert_eq!(dog.on_time(12 * S - 1), Action::Nothing);
        assert_eq!(dog.on_time(12 * S), Action::Kill);
        assert_eq!(dog.next_wake(), None);
        assert_eq!(dog.on_time(100 * S), Action::Nothing);
    }

    #[test]
    fn a_late_wake_still_kills_by_deadline_plus_grace() {
        // The guard itself was scheduled late: SIGKILL is due at deadline + grace, not a
        // grace after it woke.
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_time(11 * S), Action::Terminate);
        assert_eq!(dog.next_wake(), Some(12 * S));
        let mut later = Watchdog::new(10 * S, GRACE);
        assert_eq!(later.on_time(13 * S), Action::Kill);
    }

    #[test]
    fn a_renewal_after_the_deadline_revives_nothing() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_input(10 * S, renew(20 * S)), Action::Terminate);
        assert_eq!(dog.stopped(), Some(Why::LeaseExpired));
        assert_eq!(dog.on_input(11 * S, renew(30 * S)), Action::Nothing);
        assert_eq!(dog.on_time(12 * S), Action::Kill);
    }

    #[test]
    fn a_renewal_to_the_past_stops_at_once() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_input(5 * S, renew(4 * S)), Action::Terminate);
        assert_eq!(dog.next_wake(), Some(6 * S));
    }

    #[test]
    fn stop_gives_the_grace_from_now_but_never_past_the_deadline() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(
            dog.on_input(5 * S, Input::Message(Message::Stop)),
            Action::Terminate
        );
        assert_eq!(dog.stopped(), Some(Why::StopAsked));
        assert_eq!(dog.next_wake(), Some(7 * S));
        assert_eq!(
            dog.on_input(6 * S, Input::Message(Message::Stop)),
            Action::Nothing
        );
        assert_eq!(dog.on_input(6 * S, renew(20 * S)), Action::Nothing);
        assert_eq!(dog.on_time(7 * S), Action::Kill);

        let mut near = Watchdog::new(10 * S, GRACE);
        near.on_input(9 * S, Input::Signalled);
        assert_eq!(near.stopped(), Some(Why::Signalled));
        assert_eq!(near.next_wake(), Some(11 * S));
    }

    #[test]
    fn garbled_input_stops_the_run() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_input(S, Input::Garbled), Action::Terminate);
        assert_eq!(dog.stopped(), Some(Why::Garbled));
    }

    #[test]
    fn the_agent_gone_kills_at_once_whatever_the_phase() {
        let mut dog = Watchdog::new(10 * S, GRACE);
        assert_eq!(dog.on_input(S, Input::AgentGone), Action::Kill);
        assert_eq!(dog.stopped(), Some(Why::AgentGone));
        assert_eq!(dog.on_input(S, Input::AgentGone), Action::Nothing);

        let mut stopping = Watchdog::new(10 * S, GRACE);
        stopping.on_input(S, Input::Message(Message::Stop));
        assert_eq!(stopping.on_input(2 * S, Input::AgentGone), Action::Kill);
        assert_eq!(stopping.stopped(), Some(Why::StopAsked));
        assert_eq!(stopping.next_wake(), None);
    }

    #[test]
    fn sums_past_the_end_of_time_do_not_wrap() {
        let mut dog = Watchdog::new(MonoNs::MAX, Duration::MAX);
        assert!(dog.may_start(MonoNs::MAX - 1));
        assert_eq!(
            dog.on_input(5, Input::Message(Message::Stop)),
            Action::Terminate
        );
        assert_eq!(dog.next_wake(), Some(MonoNs::MAX));
        assert_eq!(mono_after(MonoNs::MAX, Duration::from_nanos(1)), None);
        // An unreadable clock reads as the end of time: every deadline has passed.
        assert!(mono_now() < MonoNs::MAX);
    }
}
