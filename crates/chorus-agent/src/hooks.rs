//! The split-brain hook (`--on-split-brain COMMAND`): the "cluster panic" of the OpenMRS notes.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Longest a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the hook in the background with `CHORUS_REACHABLE` and `CHORUS_UNREACHABLE`
/// (comma-separated node ids) in its environment; its exit code is logged.
pub fn spawn_split_brain_hook(
    command: String,
    node_id: String,
    reachable: Vec<String>,
    unreachable: Vec<String>,
) {
    tokio::spawn(async move {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&command)
            .env("CHORUS_NODE_ID", &node_id)
            .env("CHORUS_REACHABLE", reachable.join(","))
            .env("CHORUS_UNREACHABLE", unreachable.join(","))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, hook = %command, "split-brain hook could not start");
                return;
            }
        };
        match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                tracing::warn!(hook = %command, exit_code = ?out.status.code(), "split-brain hook finished")
            }
            Ok(Err(e)) => tracing::error!(hook = %command, error = %e, "split-brain hook failed"),
            Err(_) => {
                tracing::error!(hook = %command, timeout_s = HOOK_TIMEOUT.as_secs(), "split-brain hook timed out and was killed")
            }
        }
    });
}
