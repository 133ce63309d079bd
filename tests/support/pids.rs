//! Processes a test does not own (a task's, a guard's), seen through `/proc`: whether a pid
//! is still alive, and the pids a task wrote to a file.

use std::path::Path;
use std::time::Duration;

use super::wait_until;

/// Whether `pid` is a live process: `kill -0` would succeed and it is not a zombie (a
/// zombie has ended; only its parent's `wait` is missing).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')', as comm may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is stopped (SIGSTOP): state `T`.
pub fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "T"))
        })
        .unwrap_or(false)
}

/// The whitespace-separated pids in `file`, once it holds a complete line.
pub fn read(file: &Path) -> Result<Vec<u32>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if !text.ends_with('\n') {
        return Err(format!("{} is not complete yet: {text:?}", file.display()));
    }
    text.split_whitespace()
        .map(|p| p.parse().map_err(|_| format!("not a pid: {p:?}")))
        .collect()
}

/// Waits (at most `within`) until the pids in `file` are written, and returns them.
pub async fn written(file: &Path, within: Duration) -> Vec<u32> {
    wait_until(
        &format!("pids written to {}", file.display()),
        within,
        || async { read(file) },
    )
    .await
}

/// Waits (at most `within`) until none of `pids` is alive.
pub async fn all_gone(pids: &[u32], within: Duration) {
    wait_until(&format!("processes {pids:?} are gone"), within, || async {
        match pids.iter().find(|p| alive(**p)) {
            Some(p) => Err(format!("{p} still alive")),
            None => Ok(()),
        }
    })
    .await
}
