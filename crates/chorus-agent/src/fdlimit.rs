//! The process's open-file limit. Every socket client, metrics scraper and gossip peer costs a
//! descriptor, and the soft limit a service starts with is often far below what the hard limit
//! allows (1024 against 524288 under systemd), so the agent raises it at start; the local
//! listeners then size their connection limits to it (`chorus_core::admission::Budget`).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Highest soft limit the agent raises itself to. It needs a few hundred descriptors; a much
/// higher soft limit would only be inherited by the tasks and hooks it runs, and some
/// programs walk every possible descriptor at start.
pub const MAX_SOFT_NOFILE: u64 = 65_536;

/// The soft limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (at most [`MAX_SOFT_NOFILE`]); never
/// lowers it. The error is one line, for a warning: the agent runs on with the limit it has.
pub fn raise_nofile_limit() -> Result<Raised, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    let target = hard.min(MAX_SOFT_NOFILE);
    if soft >= target {
        return Ok(Raised {
            before: soft,
            after: soft,
            hard,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(|e| {
        format!("cannot raise the open-file limit from {soft} to {target} (hard limit {hard}): {e}")
    })?;
    Ok(Raised {
        before: soft,
        after: target,
        hard,
    })
}

/// The soft open-file limit now; [`MAX_SOFT_NOFILE`] if it cannot be read (the listeners'
/// limits are then their full values).
pub fn current_nofile_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(MAX_SOFT_NOFILE, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_and_reaches_the_hard_limit_or_the_cap() {
        let before = current_nofile_limit();
        let raised = raise_nofile_limit().expect("raise the open-file limit");
        assert_eq!(raised.before, before);
        assert!(raised.after >= before);
        assert_eq!(raised.after, before.max(raised.hard.min(MAX_SOFT_NOFILE)));
        assert_eq!(current_nofile_limit(), raised.after);
    }
}
