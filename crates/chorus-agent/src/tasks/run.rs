//! One run of a task, through its guard: the lease checked before the spawn, renewals and the
//! stop written to the guard's stdin, output kept for the log.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

use super::guard::{mono_after, mono_now, Message, MonoNs, EXIT_NOT_STARTED, EXIT_STOPPED};
use super::{now, GuardSettings, Lease, MAX_OUTPUT_BYTES};
use crate::config::TaskSpec;

/// Most a write to the guard's stdin may take. A guard that does not read for that long is
/// stuck: its stdin is closed, which makes it kill the run at once if it ever reads again.
const GUARD_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a stop, the guard must have exited within the grace plus this; if not, its stdin is
/// closed (it kills at once), and after this again it is killed itself and an error logged.
const GUARD_EXIT_SLACK: Duration = Duration::from_secs(1);
/// How long the output pipes may stay open after the guard exited (a process that left the
/// run's group holds them): then the output read so far is dropped and the run ends.
const OUTPUT_WAIT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// What every run of one leadership shares.
pub(super) struct RunContext {
    pub node_id: Arc<str>,
    pub epoch: u64,
    pub guard: Arc<GuardSettings>,
}

/// What the task loop does after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Still leading: wait for the next period.
    Continue,
    /// Leadership is over: the loop ends.
    Done,
}

/// Why the agent asked the guard to stop the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Timeout,
    LeaseLost,
}

/// Runs the command once through its guard, unless the lease has already run out.
pub(super) async fn run_once(
    spec: &TaskSpec,
    ctx: &RunContext,
    lease: &mut watch::Receiver<Lease>,
) -> Next {
    // The lease, checked immediately before the spawn; the guard checks it once more
    // before it starts the command, on the monotonic clock.
    let deadline = match *lease.borrow_and_update() {
        Lease::Gone => return Next::Done,
        Lease::Held { deadline } => deadline,
    };
    let Some(mono_deadline) = start_deadline(deadline, now(), mono_now()) else {
        tracing::warn!(task = %spec.name, epoch = ctx.epoch, "the lease ran out before this run: not started");
        return Next::Continue;
    };
    let mut child = match spawn_guard(spec, ctx, mono_deadline) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(task = %spec.name, guard = %ctx.guard.program.display(), error = %e, "task could not start");
            return Next::Continue;
        }
    };
    tracing::info!(task = %spec.name, epoch = ctx.epoch, guard_pid = child.id(), "task started");
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_bounded(s)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_bounded(s)));

    let (status, stop) = supervise(spec, ctx, &mut child, &mut stdin, lease).await;
    drop(stdin);
    let out = collect(stdout).await;
    let err = collect(stderr).await;
    let code = status.and_then(|s| s.code());
    let (task, epoch) = (&spec.name, ctx.epoch);
    let (out, err) = (out.trim_end(), err.trim_end());
    match code {
        Some(0) => {
            tracing::info!(task = %task, epoch, exit_code = ?code, stdout = %out, stderr = %err, "task finished")
        }
        Some(c) if c == i32::from(EXIT_NOT_STARTED) => {
            tracing::warn!(task = %task, epoch, stdout = %out, stderr = %err, "task not started by its guard")
        }
        // The guard's stderr says why: the lease deadline (the agent did not renew in time),
        // the agent's stop, or the agent gone.
        Some(c) if c == i32::from(EXIT_STOPPED) => {
            tracing::warn!(task = %task, epoch, asked = ?stop, stdout = %out, stderr = %err, "task stopped by its guard")
        }
        _ => {
            tracing::warn!(task = %task, epoch, exit_code = ?code, stdout = %out, stderr = %err, "task failed")
        }
    }
    let gone = stop == Some(StopCause::LeaseLost)
        || *lease.borrow() == Lease::Gone
        || lease.has_changed().is_err();
    if gone {
        Next::Done
    } else {
        Next::Continue
    }
}

/// The deadline to give a new run's guard, if one may start now: strictly before the
/// deadline, on the monotonic clock (`mono_now` read at `now`).
fn start_deadline(deadline: Instant, now: Instant, mono_now: MonoNs) -> Option<MonoNs> {
    let left = deadline.checked_duration_since(now)?;
    if left.is_zero() {
        return None;
    }
    mono_after(mono_now, left)
}

/// A renewed deadline on the monotonic clock; one already past stays in the past.
fn renewal(deadline: Instant, now: Instant, mono_now: MonoNs) -> Option<MonoNs> {
    match deadline.checked_duration_since(now) {
        Some(left) => mono_after(mono_now, left),
        None => u64::try_from(now.duration_since(deadline).as_nanos())
            .ok()
            .and_then(|ago| mono_now.checked_sub(ago)),
    }
}

fn spawn_guard(spec: &TaskSpec, ctx: &RunContext, deadline: MonoNs) -> std::io::Result<Child> {
    let mut cmd = Command::new(&ctx.guard.program);
    cmd.arg("task-guard")
        .arg("--grace")
        .arg(humantime::format_duration(ctx.guard.grace).to_string())
        .arg("--deadline-ns")
        .arg(deadline.to_string())
        .arg("--agent-pid")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(["/bin/sh", "-c", &spec.command])
        .env("CHORUS_TASK", &spec.name)
        .env("CHORUS_NODE_ID", &*ctx.node_id)
        .env("CHORUS_LEADER_EPOCH", ctx.epoch.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a signal to the agent's group (a terminal's ^Z or ^C) does not stop
        // the watchdog. Not killed on drop: if this future is dropped, the closed stdin
        // makes the guard kill the run, whereas killing the guard would orphan it.
        .process_group(0);
    cmd.spawn()
}

/// Passes renewals on until the guard exits; on lease loss or the task's timeout asks it to
/// stop, and escalates (bounded) if it does not end. Returns its status and why it was
/// stopped by the agent, if it was.
async fn supervise(
    spec: &TaskSpec,
    ctx: &RunContext,
    child: &mut Child,
    stdin: &mut Option<ChildStdin>,
    lease: &mut watch::Receiver<Lease>,
) -> (Option<ExitStatus>, Option<StopCause>) {
    let timeout = sleep_or_forever(spec.timeout);
    tokio::pin!(timeout);
    let mut stop: Option<StopCause> = None;
    let mut escalate_at: Option<tokio::time::Instant> = None;
    let mut escalated = false;
    loop {
        tokio::select! {
            // An exit that is already there is reported as it happened, before a lease
            // change that came at the same time (an agent woken from SIGSTOP sees both).
            biased;
            status = child.wait() => return (status.ok(), stop),
            changed = lease.changed(), if stop.is_none() => {
                let message = match (changed, *lease.borrow_and_update()) {
                    (Ok(()), Lease::Held { deadline }) => renewal(deadline, now(), mono_now())
                        .map_or(Message::Stop, Message::Renew),
                    _ => Message::Stop,
                };
                if message == Message::Stop {
                    tracing::warn!(task = %spec.name, epoch = ctx.epoch, "lease lost while the task runs: stopping it");
                    stop = Some(StopCause::LeaseLost);
                }
                send(stdin, message).await;
            }
            _ = &mut timeout, if stop.is_none() => {
                tracing::warn!(task = %spec.name, timeout_s = spec.timeout.unwrap_or_default().as_secs(), "task timed out: stopping it");
                stop = Some(StopCause::Timeout);
                send(stdin, Message::Stop).await;
            }
            _ = sleep_until_or_forever(escalate_at) => {
                if escalated {
                    tracing::error!(task = %spec.name, guard_pid = child.id(), "the task's guard does not exit: killing it (its command may be left running)");
                    let _ = child.start_kill();
                    escalate_at = None;
                } else {
                    tracing::warn!(task = %spec.name, guard_pid = child.id(), "the task's guard did not end the run in its grace: closing its pipe");
                    *stdin = None;
                    escalated = true;
                    escalate_at = in_time(GUARD_EXIT_SLACK);
                }
            }
        }
        if stop.is_some() && escalate_at.is_none() && !escalated {
            escalate_at = in_time(ctx.guard.grace.saturating_add(GUARD_EXIT_SLACK));
        }
    }
}

/// Writes one message; a guard that is gone or does not read gets its stdin closed.
async fn send(stdin: &mut Option<ChildStdin>, message: Message) {
    let Some(pipe) = stdin else {
        return;
    };
    let line = message.encode();
    let written = tokio::time::timeout(GUARD_WRITE_TIMEOUT, pipe.write_all(line.as_bytes())).await;
    if !matches!(written, Ok(Ok(()))) {
        *stdin = None;
    }
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// `d` from now on tokio's clock; `None` (never) past its end.
fn in_time(d: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(d)
}

async fn sleep_until_or_forever(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The output a reader kept, if the pipe closes soon after the guard exited.
async fn collect(reader: Option<tokio::task::JoinHandle<String>>) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    match tokio::time::timeout(OUTPUT_WAIT_AFTER_EXIT, &mut reader).await {
        Ok(out) => out.unwrap_or_default(),
        Err(_) => {
            reader.abort();
            "(output dropped: a process outside the run's group still holds the pipe)".into()
        }
    }
}

async fn read_bounded(mut r: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_starts_only_strictly_before_its_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(start_deadline(t0 + s, t0, 100), Some(1_000_000_100));
        assert_eq!(start_deadline(t0, t0, 100), None);
        assert_eq!(start_deadline(t0, t0 + s, 100), None);
        // An unreadable clock (the end of time) starts nothing.
        assert_eq!(start_deadline(t0 + s, t0, MonoNs::MAX), None);
    }

    #[test]
    fn renewals_translate_past_and_future_deadlines() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let base = 10_000_000_000;
        assert_eq!(renewal(t0 + s, t0, base), Some(base + 1_000_000_000));
        assert_eq!(renewal(t0, t0 + s, base), Some(base - 1_000_000_000));
        assert_eq!(renewal(t0, t0 + s, 5), None);
    }
}
