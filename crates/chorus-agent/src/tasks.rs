//! Scheduled tasks: run on the leader only, once per period, with the fencing epoch, and
//! bound to the leader's lease.
//!
//! The runner is driven by whoever holds the lease (today the gossip election in
//! `agent.rs`): [`TaskRunner::lead`] when leadership begins, [`TaskRunner::renew`] on every
//! tick while the lease holds, [`TaskRunner::stop`] when it is lost. Three rules keep a run
//! inside the lease:
//! - no run starts before `start_not_before` (the old leader's lease plus the grace), and the
//!   lease is checked immediately before every spawn, by the runner and again by the guard:
//!   a run never starts at or after its deadline;
//! - each run goes through a guard process (`chorus task-guard`, [`guard`]) that the agent
//!   renews over a pipe with the deadline as an absolute `CLOCK_MONOTONIC` time; at the
//!   deadline the guard sends SIGTERM to the run's process group and SIGKILL a grace later,
//!   even when the agent is stopped (SIGSTOP) and cannot act;
//! - when the agent dies the pipe closes and the guard kills the group at once.
//!
//! Periods are aligned to the wall clock (a 1 h task runs at the top of each hour, plus its
//! jitter), so a leadership change never makes a period run twice: the new leader waits for
//! the next boundary.

pub mod guard;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TaskSpec;

/// Time a run gets between SIGTERM and SIGKILL when the lease is lost or runs out. A new
/// leader waits for the old lease plus this grace before it starts anything.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);
/// What [`TaskRunner::stop_and_wait`] allows beyond the grace for runs to be reaped.
pub const STOP_WAIT_SLACK: Duration = Duration::from_secs(1);
/// Output kept from each stream of a run for the log; the rest is dropped.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// The guard program by default: the running agent's own binary, even after an upgrade
/// replaced the file on disk, so both ends of the pipe always speak the same protocol.
pub const DEFAULT_GUARD_PROGRAM: &str = "/proc/self/exe";

/// How runs are guarded.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// The `chorus` binary, run as `PROGRAM task-guard ...`.
    pub program: PathBuf,
    /// SIGTERM to SIGKILL.
    pub grace: Duration,
}

impl Default for GuardSettings {
    fn default() -> GuardSettings {
        GuardSettings {
            program: PathBuf::from(DEFAULT_GUARD_PROGRAM),
            grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// The lease as the runs see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// Valid until `deadline` (tokio's clock), unless renewed.
    Held { deadline: Instant },
    /// Leadership is over: runs are stopped, loops end.
    Gone,
}

/// Starts and stops the task loops as leadership comes and goes.
pub struct TaskRunner {
    specs: Arc<Vec<TaskSpec>>,
    node_id: Arc<str>,
    writable: bool,
    guard: Arc<GuardSettings>,
    leading: Option<Leading>,
    /// Loops told to stop whose run may still be ending (a grace at most).
    stopping: Vec<JoinHandle<()>>,
    /// When the last [`TaskRunner::stop`] was asked.
    stopped_at: Option<Instant>,
}

struct Leading {
    epoch: u64,
    lease: watch::Sender<Lease>,
    loops: Vec<JoinHandle<()>>,
}

impl TaskRunner {
    pub fn new(specs: Vec<TaskSpec>, node_id: String, writable: bool) -> TaskRunner {
        TaskRunner {
            specs: Arc::new(specs),
            node_id: node_id.into(),
            writable,
            guard: Arc::new(GuardSettings::default()),
            leading: None,
            stopping: Vec::new(),
            stopped_at: None,
        }
    }

    /// Another guard program or grace (tests run the `chorus` binary from their own).
    pub fn with_guard(mut self, guard: GuardSettings) -> TaskRunner {
        self.guard = Arc::new(guard);
        self
    }

    pub fn guard(&self) -> &GuardSettings {
        &self.guard
    }

    /// This node leads with `epoch` and a lease valid until `lease_deadline`; no run starts
    /// before `start_not_before`. Leading again with the same epoch only renews.
    pub fn lead(&mut self, epoch: u64, lease_deadline: Instant, start_not_before: Instant) {
        if self.leading.as_ref().is_some_and(|l| l.epoch == epoch) {
            self.renew(lease_deadline);
            return;
        }
        self.stop();
        if self.specs.is_empty() {
            return;
        }
        // Runs of an earlier leadership of this node may still be in their grace: the new
        // ones wait until those must have ended.
        self.stopping.retain(|h| !h.is_finished());
        let start_not_before = match self.stopped_at {
            Some(at) if !self.stopping.is_empty() => {
                start_not_before.max(at.checked_add(self.guard.grace).unwrap_or(at))
            }
            _ => start_not_before,
        };
        let (lease, lease_rx) = watch::channel(Lease::Held {
            deadline: lease_deadline,
        });
        let mut loops = Vec::new();
        for spec in self.specs.iter() {
            if spec.requires_writable && !self.writable {
                tracing::warn!(task = %spec.name, "task needs a writable node; this node is read-only: not run here");
                continue;
            }
            loops.push(tokio::spawn(task_loop(
                spec.clone(),
                run::RunContext {
                    node_id: self.node_id.clone(),
                    epoch,
                    guard: self.guard.clone(),
                },
                start_not_before,
                lease_rx.clone(),
            )));
        }
        let now = now();
        tracing::info!(
            epoch,
            tasks = loops.len(),
            lease_ms = lease_deadline.saturating_duration_since(now).as_millis() as u64,
            starts_in_ms = start_not_before.saturating_duration_since(now).as_millis() as u64,
            "leader: scheduled tasks started"
        );
        self.leading = Some(Leading {
            epoch,
            lease,
            loops,
        });
    }

    /// The lease holds until `lease_deadline`: runs in progress are renewed.
    pub fn renew(&mut self, lease_deadline: Instant) {
        if let Some(leading) = &self.leading {
            leading.lease.send_replace(Lease::Held {
                deadline: lease_deadline,
            });
        }
    }

    /// The lease is lost or leadership is gone: every run gets SIGTERM now and SIGKILL after
    /// the grace; the loops end on their own.
    pub fn stop(&mut self) {
        if let Some(leading) = self.leading.take() {
            leading.lease.send_replace(Lease::Gone);
            self.stopped_at = Some(now());
            self.stopping.retain(|h| !h.is_finished());
            self.stopping.extend(leading.loops);
            tracing::info!(epoch = leading.epoch, "not leader: scheduled tasks stopped");
        }
    }

    /// The epoch this runner leads with, if it leads.
    pub fn leading(&self) -> Option<u64> {
        self.leading.as_ref().map(|l| l.epoch)
    }

    /// [`TaskRunner::stop`], then waits (at most the grace plus [`STOP_WAIT_SLACK`]) for
    /// every run to have ended, so that a graceful exit gives runs their grace. Returns
    /// whether they all ended; those that did not are killed by their guards when the
    /// agent's end closes their pipes.
    pub async fn stop_and_wait(&mut self) -> bool {
        self.stop();
        let loops = std::mem::take(&mut self.stopping);
        let within = self.guard.grace.saturating_add(STOP_WAIT_SLACK);
        tokio::time::timeout(within, async {
            for l in loops {
                let _ = l.await;
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for TaskRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next start time of a task after `now_ms` (Unix ms): the next multiple of its period.
pub fn next_boundary_ms(now_ms: u64, every: Duration) -> u64 {
    let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
    (now_ms / every).saturating_add(1).saturating_mul(every)
}

/// The first period boundary after `now_ms` that is not before `not_before_ms` (Unix ms).
pub fn next_start_ms(now_ms: u64, not_before_ms: u64, every: Duration) -> u64 {
    next_boundary_ms(now_ms.max(not_before_ms.saturating_sub(1)), every)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// tokio's clock, as the agent's, so that a test with a paused clock drives the schedule.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn task_loop(
    spec: TaskSpec,
    ctx: run::RunContext,
    start_not_before: Instant,
    mut lease: watch::Receiver<Lease>,
) {
    loop {
        let now_ms = unix_ms();
        let hold_ms = start_not_before
            .saturating_duration_since(now())
            .as_millis();
        let not_before_ms = now_ms.saturating_add(u64::try_from(hold_ms).unwrap_or(u64::MAX));
        let jitter_ms = match u64::try_from(spec.jitter.as_millis()) {
            Ok(0) | Err(_) => 0,
            Ok(j) => rand::thread_rng().gen_range(0..j),
        };
        let start_ms = next_start_ms(now_ms, not_before_ms, spec.every).saturating_add(jitter_ms);
        let wait = Duration::from_millis(start_ms.saturating_sub(now_ms));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = lease.wait_for(|l| *l == Lease::Gone) => return,
        }
        if run::run_once(&spec, &ctx, &mut lease).await == run::Next::Done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// A stand-in for the guard that only records that it was started, and when.
    fn recording_guard(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let program = dir.join(name);
        let marker = dir.join(format!("{name}.runs"));
        let script = format!("#!/bin/sh\ndate +%s.%N >> '{}'\n", marker.display());
        std::fs::write(&program, script).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        (program, marker)
    }

    fn runs(marker: &Path) -> Vec<f64> {
        std::fs::read_to_string(marker)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }

    fn unix_s() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[tokio::test]
    async fn no_run_starts_at_or_after_the_deadline_nor_before_start_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TaskSpec {
            name: "t".into(),
            every: Duration::from_secs(1),
            command: "true".into(),
            jitter: Duration::ZERO,
            timeout: None,
            requires_writable: false,
        };
        let runner = |program: PathBuf| {
            TaskRunner::new(vec![spec.clone()], "n1".into(), true).with_guard(GuardSettings {
                program,
                grace: DEFAULT_STOP_GRACE,
            })
        };
        let (expired_guard, expired_runs) = recording_guard(dir.path(), "expired");
        let (live_guard, live_runs) = recording_guard(dir.path(), "live");
        let mut expired = runner(expired_guard);
        let mut live = runner(live_guard);
        let t0 = now();
        let hold = Duration::from_millis(1500);
        let not_before = unix_s() + hold.as_secs_f64();
        // The lease ends now: at its deadline nothing may start.
        expired.lead(1, t0, t0);
        live.lead(1, t0 + Duration::from_secs(3600), t0 + hold);

        // Both loops wake at the same wall-clock boundaries: two runs of the live one mean
        // the expired one passed two boundaries too.
        let give_up = Instant::now() + Duration::from_secs(20);
        while runs(&live_runs).len() < 2 {
            assert!(Instant::now() < give_up, "the live runner never ran twice");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            runs(&expired_runs),
            Vec::<f64>::new(),
            "a run started past its deadline"
        );
        let first = runs(&live_runs)[0];
        assert!(
            first >= not_before,
            "a run started at {first}, before start_not_before {not_before}"
        );
        live.stop();
        expired.stop();
    }

    #[test]
    fn boundaries_are_aligned_to_the_period() {
        let h = Duration::from_secs(3600);
        assert_eq!(next_boundary_ms(0, h), 3_600_000);
        assert_eq!(next_boundary_ms(3_599_999, h), 3_600_000);
        assert_eq!(next_boundary_ms(3_600_000, h), 7_200_000);
        assert_eq!(next_boundary_ms(u64::MAX, h), u64::MAX);
    }

    #[test]
    fn the_first_start_waits_for_start_not_before() {
        let s = Duration::from_secs(1);
        // Already allowed: the next boundary.
        assert_eq!(next_start_ms(10_500, 0, s), 11_000);
        assert_eq!(next_start_ms(10_500, 10_900, s), 11_000);
        // A boundary exactly at start_not_before is allowed.
        assert_eq!(next_start_ms(10_500, 11_000, s), 11_000);
        // Later boundaries are skipped until it.
        assert_eq!(next_start_ms(10_500, 11_001, s), 12_000);
        assert_eq!(next_start_ms(10_500, 13_400, s), 14_000);
    }
}
