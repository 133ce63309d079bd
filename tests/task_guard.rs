//! `chorus task-guard` on its own, driven as the agent drives it (a deadline on the command
//! line, renewals and `stop` on stdin), with commands that note their pids, the signals they
//! get, and traps that ignore SIGTERM. The guard's rules are unit-tested in
//! `chorus_agent::tasks::guard`; these check the process plumbing: process groups, signals,
//! the closed pipe, the parent-death signal, exit statuses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chorus_agent::tasks::guard::{mono_after, mono_now, Message, EXIT_NOT_STARTED, EXIT_STOPPED};
use tempfile::TempDir;

use crate::support::bin::chorus_bin;
use crate::support::{pids, wait_until, SLOW};

/// What a busy 2-core machine may add to a signal's delivery and a poll (50 ms) in these
/// measurements.
const SLACK: Duration = Duration::from_secs(1);

/// A guard process with its stdin held by the test. Dropping it closes stdin (the guard then
/// kills its command's group) and reaps it, killing it if it does not exit.
struct GuardProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
}

impl GuardProc {
    /// `chorus task-guard` whose deadline is `deadline_in` from now (`None`: already a
    /// second past), running `sh -c script`, with this test process as its agent.
    fn start(dir: &Path, deadline_in: Option<Duration>, grace: &str, script: &str) -> GuardProc {
        GuardProc::start_for(dir, deadline_in, grace, std::process::id(), script)
    }

    fn start_for(
        dir: &Path,
        deadline_in: Option<Duration>,
        grace: &str,
        agent_pid: u32,
        script: &str,
    ) -> GuardProc {
        let deadline = match deadline_in {
            Some(d) => mono_after(mono_now(), d).unwrap(),
            None => mono_now() - 1_000_000_000,
        };
        let stderr = dir.join(format!("guard-{}.err", rand_suffix()));
        let mut child = Command::new(chorus_bin())
            .args(["task-guard", "--grace", grace])
            .args(["--deadline-ns", &deadline.to_string()])
            .args(["--agent-pid", &agent_pid.to_string()])
            .args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start chorus task-guard");
        let stdin = child.stdin.take();
        GuardProc {
            child,
            stdin,
            stderr,
        }
    }

    fn send(&mut self, message: Message) {
        let pipe = self.stdin.as_mut().expect("stdin still open");
        pipe.write_all(message.encode().as_bytes())
            .expect("write to the guard");
    }

    async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_until("the guard exits", within, || {
            let polled = child.try_wait();
            async move {
                match polled {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("still running".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for GuardProc {
    fn drop(&mut self) {
        self.stdin = None;
        let give_up = Instant::now() + Duration::from_secs(5);
        while Instant::now() < give_up {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A command that writes its pid to `pid`, notes each SIGTERM in `terms` and goes on.
fn term_ignoring_loop(pid: &Path, terms: &Path) -> String {
    format!(
        "trap 'echo term >> {terms}' TERM; echo $$ > {pid}; while :; do sleep 0.05; done",
        terms = terms.display(),
        pid = pid.display()
    )
}

/// Waits until `file` exists and returns how long after `since` it was seen.
async fn seen_after(file: &Path, since: Instant, within: Duration) -> Duration {
    wait_until(&format!("{} exists", file.display()), within, || async {
        if file.exists() {
            Ok(since.elapsed())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("chorus-guard-")
        .tempdir()
        .unwrap()
}

#[tokio::test]
async fn the_commands_status_passes_through() {
    let dir = tmp();
    let mut g = GuardProc::start(dir.path(), Some(SLOW), "1s", "exit 3");
    assert_eq!(g.exit_within(SLOW).await.code(), Some(3), "{}", g.stderr());
    let mut g = GuardProc::start(dir.path(), Some(SLOW), "1s", "kill -9 $$");
    assert_eq!(g.exit_within(SLOW).await.code(), Some(128 + 9));
    assert_eq!(g.stderr(), "");
}

#[tokio::test]
async fn nothing_starts_past_the_deadline_or_without_its_agent() {
    let dir = tmp();
    let marker = dir.path().join("started");
    let script = format!("touch {}", marker.display());
    // The deadline passed a second ago.
    let mut g = GuardProc::start(dir.path(), None, "1s", &script);
    assert_eq!(
        g.exit_within(SLOW).await.code(),
        Some(EXIT_NOT_STARTED.into())
    );
    assert!(g.stderr().contains("the lease ran out"), "{}", g.stderr());
    // Its agent is not its parent (gone before the parent-death signal was set).
    let mut g = GuardProc::start_for(dir.path(), Some(SLOW), "1s", 1, &script);
    assert_eq!(
        g.exit_within(SLOW).await.code(),
        Some(EXIT_NOT_STARTED.into())
    );
    assert!(g.stderr().contains("is gone"), "{}", g.stderr());
    assert!(!marker.exists(), "a command started");
}

#[tokio::test]
async fn at_the_deadline_sigterm_then_sigkill_after_the_grace() {
    let dir = tmp();
    let (pid_file, terms) = (dir.path().join("pid"), dir.path().join("terms"));
    let deadline = Duration::from_secs(1);
    let grace = Duration::from_secs(1);
    let started = Instant::now();
    let mut g = GuardProc::start(
        dir.path(),
        Some(deadline),
        "1s",
        &term_ignoring_loop(&pid_file, &terms),
    );
    let pid = pids::written(&pid_file, SLOW).await;
    let term_at = seen_after(&terms, started, SLOW).await;
    pids::all_gone(&pid, SLOW).await;
    let dead_at = started.elapsed();
    println!("guard: SIGTERM seen {term_at:?}, the command gone {dead_at:?} after start (deadline {deadline:?}, grace {grace:?})");
    assert!(
        term_at >= deadline && term_at <= deadline + SLACK,
        "SIGTERM at {term_at:?}"
    );
    assert!(
        dead_at >= deadline + grace && dead_at <= deadline + grace + SLACK,
        "SIGKILL at {dead_at:?}"
    );
    assert_eq!(g.exit_within(SLOW).await.code(), Some(EXIT_STOPPED.into()));
    assert!(
        g.stderr().contains("the lease deadline passed"),
        "{}",
        g.stderr()
    );
}

#[tokio::test]
async fn renewals_keep_it_running_and_stop_gives_the_grace() {
    let dir = tmp();
    let (pid_file, terms) = (dir.path().join("pid"), dir.path().join("terms"));
    let lease = Duration::from_millis(500);
    let mut g = GuardProc::start(
        dir.path(),
        Some(lease),
        "1s",
        &term_ignoring_loop(&pid_file, &terms),
    );
    let pid = pids::written(&pid_file, SLOW).await;
    // Renewed every 100 ms for four leases: it outlives its first deadline.
    let renewing = Instant::now();
    while renewing.elapsed() < lease * 4 {
        g.send(Message::Renew(mono_after(mono_now(), lease).unwrap()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pids::alive(pid[0]), "killed while renewed: {}", g.stderr());
    assert!(!terms.exists(), "SIGTERM while renewed: {}", g.stderr());
    let stopped = Instant::now();
    g.send(Message::Stop);
    let term_at = seen_after(&terms, stopped, SLOW).await;
    // Renewals after the stop change nothing.
    g.send(Message::Renew(mono_after(mono_now(), SLOW).unwrap()));
    pids::all_gone(&pid, SLOW).await;
    let dead_at = stopped.elapsed();
    println!("guard: stop -> SIGTERM seen {term_at:?}, the command gone {dead_at:?}");
    assert!(term_at <= SLACK, "SIGTERM at {term_at:?}");
    assert!(
        dead_at >= Duration::from_secs(1) && dead_at <= Duration::from_secs(1) + SLACK,
        "SIGKILL at {dead_at:?}"
    );
    assert_eq!(g.exit_within(SLOW).await.code(), Some(EXIT_STOPPED.into()));
}

#[tokio::test]
async fn a_closed_stdin_kills_the_whole_group_at_once() {
    let dir = tmp();
    let pid_file = dir.path().join("pids");
    // Ignores SIGTERM, and leaves a child of its own in the group.
    let script = format!(
        "trap '' TERM; sleep 600 & echo $$ $! > {}; wait",
        pid_file.display()
    );
    let mut g = GuardProc::start(dir.path(), Some(SLOW), "30s", &script);
    let pids = pids::written(&pid_file, SLOW).await;
    assert_eq!(pids.len(), 2);
    let closed = Instant::now();
    g.stdin = None;
    pids::all_gone(&pids, SLACK).await;
    println!(
        "guard: stdin closed -> group gone in {:?}",
        closed.elapsed()
    );
    assert_eq!(g.exit_within(SLOW).await.code(), Some(EXIT_STOPPED.into()));
    assert!(g.stderr().contains("the agent is gone"), "{}", g.stderr());
}

#[tokio::test]
async fn its_parent_dying_kills_the_group_even_with_stdin_open() {
    let dir = tmp();
    let pid_file = dir.path().join("pid");
    let err = dir.path().join("guard.err");
    let deadline = mono_after(mono_now(), SLOW).unwrap();
    // The guard's parent is this sh (its "agent"); the pipe to its stdin stays open here, so
    // only the parent-death signal can tell it the parent is gone.
    let script = r#"exec 3<&0
"$0" task-guard --grace 30s --deadline-ns "$1" --agent-pid $$ -- /bin/sh -c "trap '' TERM; echo \$\$ > '$2'; exec sleep 600" <&3 2>"$3" &
wait"#;
    let mut parent = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(chorus_bin())
        .arg(deadline.to_string())
        .arg(&pid_file)
        .arg(&err)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start sh");
    let _open_pipe = parent.stdin.take();
    let pid = pids::written(&pid_file, SLOW).await;
    let killed = Instant::now();
    parent.kill().unwrap();
    parent.wait().unwrap();
    pids::all_gone(&pid, SLACK).await;
    println!(
        "guard: parent killed -> command gone in {:?}",
        killed.elapsed()
    );
    let err = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(err.contains("the agent is gone"), "{err}");
}
