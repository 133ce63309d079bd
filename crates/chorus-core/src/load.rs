//! When to re-publish load.
//!
//! Every published change is a new version that every node must fetch, so load is sent only
//! when it moved meaningfully, or, if it drifted a little, at most every `max_interval`.
//! A change in the session count is always meaningful: placement and drain depend on it.

use std::time::{Duration, Instant};

use crate::member::Load;

#[derive(Clone, Debug)]
pub struct LoadPolicy {
    /// Never publish cpu/mem drift more often than this.
    pub min_interval: Duration,
    /// Publish any drift at least this often.
    pub max_interval: Duration,
    /// A cpu change at least this large is meaningful.
    pub cpu_delta: f64,
    /// A memory change at least this large is meaningful.
    pub mem_delta: f64,
}

impl Default for LoadPolicy {
    fn default() -> Self {
        LoadPolicy {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
            cpu_delta: 0.10,
            mem_delta: 0.05,
        }
    }
}

#[derive(Debug)]
pub struct LoadTracker {
    policy: LoadPolicy,
    current: Load,
    published: Option<(Load, Instant)>,
}

impl LoadTracker {
    pub fn new(policy: LoadPolicy) -> LoadTracker {
        LoadTracker {
            policy,
            current: Load::default(),
            published: None,
        }
    }

    pub fn current(&self) -> Load {
        self.current
    }

    pub fn set_sample(&mut self, cpu: f64, mem: f64) {
        self.current.cpu = if cpu.is_finite() { cpu.max(0.0) } else { 0.0 };
        self.current.mem = if mem.is_finite() {
            mem.clamp(0.0, 1.0)
        } else {
            0.0
        };
    }

    pub fn set_sessions(&mut self, sessions: u64) {
        self.current.sessions = sessions;
    }

    /// Returns the load to publish now, if any, and records it as published.
    pub fn poll_publish(&mut self, now: Instant) -> Option<Load> {
        let due = match self.published {
            None => true,
            Some((last, at)) => {
                let since = now.saturating_duration_since(at);
                let shown = |v: f64| (v * 100.0).round();
                let drifted = shown(last.cpu) != shown(self.current.cpu)
                    || shown(last.mem) != shown(self.current.mem);
                last.sessions != self.current.sessions
                    || (since >= self.policy.min_interval
                        && ((self.current.cpu - last.cpu).abs() >= self.policy.cpu_delta
                            || (self.current.mem - last.mem).abs() >= self.policy.mem_delta))
                    || (since >= self.policy.max_interval && drifted)
            }
        };
        if due {
            self.published = Some((self.current, now));
            Some(self.current)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_is_published_then_small_drift_waits_for_max_interval() {
        let t0 = Instant::now();
        let mut t = LoadTracker::new(LoadPolicy::default());
        t.set_sample(0.5, 0.5);
        assert!(t.poll_publish(t0).is_some());
        t.set_sample(0.52, 0.51);
        assert!(t.poll_publish(t0 + Duration::from_secs(2)).is_none());
        assert!(t.poll_publish(t0 + Duration::from_secs(5)).is_some());
        assert!(
            t.poll_publish(t0 + Duration::from_secs(20)).is_none(),
            "no change, no publish"
        );
    }

    #[test]
    fn big_change_is_published_after_min_interval() {
        let t0 = Instant::now();
        let mut t = LoadTracker::new(LoadPolicy::default());
        t.set_sample(0.1, 0.1);
        t.poll_publish(t0);
        t.set_sample(0.9, 0.1);
        assert!(t.poll_publish(t0 + Duration::from_millis(200)).is_none());
        assert_eq!(
            t.poll_publish(t0 + Duration::from_secs(1)).map(|l| l.cpu),
            Some(0.9)
        );
    }

    #[test]
    fn session_change_is_published_at_once() {
        let t0 = Instant::now();
        let mut t = LoadTracker::new(LoadPolicy::default());
        t.poll_publish(t0);
        t.set_sessions(3);
        assert_eq!(t.poll_publish(t0).map(|l| l.sessions), Some(3));
    }

    #[test]
    fn junk_samples_are_clamped() {
        let mut t = LoadTracker::new(LoadPolicy::default());
        t.set_sample(f64::NAN, 7.0);
        assert_eq!(t.current().cpu, 0.0);
        assert_eq!(t.current().mem, 1.0);
    }
}
