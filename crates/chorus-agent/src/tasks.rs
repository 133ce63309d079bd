//! Scheduled tasks: run on the leader only, once per period, with the fencing epoch.
//!
//! Periods are aligned to the wall clock (a 1 h task runs at the top of each hour, plus its
//! jitter), so a leadership change never makes a period run twice: the new leader waits for the
//! next boundary. When leadership is lost, a run still going gets SIGTERM, then SIGKILL after
//! [`STOP_GRACE`]; the command runs in its own process group so its children are stopped too.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TaskSpec;

/// Time a task gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Output kept from each stream of a run for the log; the rest is dropped.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// Starts and stops the task loops as leadership comes and goes.
pub struct TaskRunner {
    specs: Arc<Vec<TaskSpec>>,
    node_id: String,
    writable: bool,
    running: Option<(watch::Sender<bool>, Vec<JoinHandle<()>>)>,
}

impl TaskRunner {
    pub fn new(specs: Vec<TaskSpec>, node_id: String, writable: bool) -> TaskRunner {
        TaskRunner {
            specs: Arc::new(specs),
            node_id,
            writable,
            running: None,
        }
    }

    /// This node became leader with `epoch`.
    pub fn start(&mut self, epoch: u64) {
        self.stop();
        if self.specs.is_empty() {
            return;
        }
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for spec in self.specs.iter() {
            if spec.requires_writable && !self.writable {
                tracing::warn!(task = %spec.name, "task needs a writable node; this node is read-only: not run here");
                continue;
            }
            handles.push(tokio::spawn(task_loop(
                spec.clone(),
                self.node_id.clone(),
                epoch,
                cancel_rx.clone(),
            )));
        }
        tracing::info!(
            epoch,
            tasks = handles.len(),
            "leader: scheduled tasks started"
        );
        self.running = Some((cancel_tx, handles));
    }

    /// Leadership was lost: runs in progress are signalled; the loops end on their own.
    pub fn stop(&mut self) {
        if let Some((cancel, _handles)) = self.running.take() {
            let _ = cancel.send(true);
            tracing::info!("not leader: scheduled tasks stopped");
        }
    }
}

impl Drop for TaskRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next start time of a task after `now_ms` (Unix ms): the next multiple of its period.
pub fn next_boundary_ms(now_ms: u64, every: Duration) -> u64 {
    let every = every.as_millis().max(1) as u64;
    (now_ms / every + 1) * every
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn task_loop(spec: TaskSpec, node_id: String, epoch: u64, mut cancel: watch::Receiver<bool>) {
    loop {
        let now = unix_ms();
        let jitter_ms = if spec.jitter.is_zero() {
            0
        } else {
            rand::thread_rng().gen_range(0..spec.jitter.as_millis() as u64)
        };
        let wait = Duration::from_millis(next_boundary_ms(now, spec.every) - now + jitter_ms);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.changed() => return,
        }
        if *cancel.borrow() {
            return;
        }
        if !run_once(&spec, &node_id, epoch, &mut cancel).await {
            return;
        }
    }
}

/// Runs the command once; returns false if leadership was lost meanwhile.
async fn run_once(
    spec: &TaskSpec,
    node_id: &str,
    epoch: u64,
    cancel: &mut watch::Receiver<bool>,
) -> bool {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .env("CHORUS_TASK", &spec.name)
        .env("CHORUS_NODE_ID", node_id)
        .env("CHORUS_LEADER_EPOCH", epoch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(task = %spec.name, error = %e, "task could not start");
            return true;
        }
    };
    tracing::info!(task = %spec.name, epoch, pid = child.id(), "task started");
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_bounded(s)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_bounded(s)));
    let timeout = spec.timeout.unwrap_or(Duration::MAX);
    let mut still_leader = true;
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = sleep_or_forever(timeout) => {
            tracing::warn!(task = %spec.name, timeout_s = timeout.as_secs(), "task timed out: stopping it");
            terminate(&mut child).await
        }
        _ = cancel.changed() => {
            still_leader = false;
            tracing::warn!(task = %spec.name, epoch, "leadership lost while the task runs: stopping it");
            terminate(&mut child).await
        }
    };
    let out = match stdout {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    };
    let err = match stderr {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    };
    let code = status.and_then(|s| s.code());
    match status.map(|s| s.success()) {
        Some(true) => {
            tracing::info!(task = %spec.name, epoch, exit_code = ?code, stdout = %out.trim_end(), stderr = %err.trim_end(), "task finished")
        }
        _ => {
            tracing::warn!(task = %spec.name, epoch, exit_code = ?code, stdout = %out.trim_end(), stderr = %err.trim_end(), "task failed")
        }
    }
    still_leader
}

async fn sleep_or_forever(d: Duration) {
    if d == Duration::MAX {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(d).await;
}

/// SIGTERM to the task's process group, SIGKILL after [`STOP_GRACE`].
async fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok();
    };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(pid, "task ignored SIGTERM: SIGKILL");
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await.ok()
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
    fn boundaries_are_aligned_to_the_period() {
        let h = Duration::from_secs(3600);
        assert_eq!(next_boundary_ms(0, h), 3_600_000);
        assert_eq!(next_boundary_ms(3_599_999, h), 3_600_000);
        assert_eq!(next_boundary_ms(3_600_000, h), 7_200_000);
    }

    #[tokio::test]
    async fn a_run_gets_its_environment_and_losing_leadership_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spec = TaskSpec {
            name: "t".into(),
            every: Duration::from_secs(1),
            command: format!(
                "echo \"$CHORUS_TASK $CHORUS_NODE_ID $CHORUS_LEADER_EPOCH\" > {}; exec sleep 30",
                out.display()
            ),
            jitter: Duration::ZERO,
            timeout: None,
            requires_writable: false,
        };
        let (tx, mut rx) = watch::channel(false);
        let run = tokio::spawn(async move { run_once(&spec, "n1", 7, &mut rx).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&out).map_or(true, |s| s.is_empty()) {
            assert!(std::time::Instant::now() < deadline, "task never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "t n1 7");
        tx.send(true).unwrap();
        let still_leader = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert!(!still_leader);
    }
}
