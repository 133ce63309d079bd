//! Split-brain detection: turning member failures and quorum changes into a few loud alerts.
//!
//! Rules (each pinned by a test below or in `tests/scenarios.rs`):
//! - failures are held for `window` from the first one: one failure becomes `node_failed`,
//!   several become a single `split_brain_suspected` naming them all
//!   (`several_failures_in_a_window_are_one_split_alert`, `one_failure_is_only_node_failed`);
//! - losing quorum (after having had it) raises `quorum_lost` at once, naming the reachable and
//!   unreachable members, and asks for the split-brain hook once per loss; regaining it raises
//!   `quorum_regained`;
//! - a split episode (opened by either alert) remembers both sides; when every member of the
//!   other side still in the roster is up again it raises `split_brain_healed` with its length.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::alert::Alert;
use crate::member::NodeId;
use crate::quorum::QuorumAssessment;

/// What the detector asks of the node.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitOutput {
    Alert(Alert),
    /// Quorum was just lost: run `--on-split-brain` (or exit, with `--panic-exit`).
    Panic {
        reachable: Vec<NodeId>,
        unreachable: Vec<NodeId>,
    },
}

#[derive(Debug, Clone)]
struct Episode {
    since: Instant,
    ours: BTreeSet<NodeId>,
    theirs: BTreeSet<NodeId>,
}

#[derive(Debug)]
pub struct SplitDetector {
    window: Duration,
    pending: Vec<(NodeId, std::net::SocketAddr)>,
    pending_since: Option<Instant>,
    had_quorum: bool,
    ever_had_quorum: bool,
    episode: Option<Episode>,
}

impl SplitDetector {
    pub fn new(window: Duration) -> SplitDetector {
        SplitDetector {
            window,
            pending: Vec::new(),
            pending_since: None,
            had_quorum: false,
            ever_had_quorum: false,
            episode: None,
        }
    }

    /// A member went from up to dead.
    pub fn on_failure(&mut self, now: Instant, node: &str, addr: std::net::SocketAddr) {
        self.pending_since.get_or_insert(now);
        self.pending.push((node.to_string(), addr));
    }

    /// When the held failures must be reported.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.window)
    }

    /// Whether quorum was lost and not regained since.
    pub fn in_minority(&self) -> bool {
        self.ever_had_quorum && !self.had_quorum
    }

    /// Whether [`SplitDetector::poll`] with this quorum would do nothing: no failure held, no
    /// episode open, quorum as it was. The caller may then skip building the sides.
    pub fn idle(&self, quorum: &QuorumAssessment) -> bool {
        self.pending.is_empty() && self.episode.is_none() && self.had_quorum == quorum.quorum
    }

    /// Called after every view update with the members up now (this node included).
    pub fn poll(
        &mut self,
        now: Instant,
        roster: &BTreeSet<NodeId>,
        up: &BTreeSet<NodeId>,
        quorum: &QuorumAssessment,
    ) -> Vec<SplitOutput> {
        let mut out = Vec::new();
        let reachable: Vec<NodeId> = roster.intersection(up).cloned().collect();

        // A member that came back before the window closed was a blip, not a failure.
        self.pending.retain(|(n, _)| !up.contains(n));
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        if self.next_deadline().is_some_and(|d| now >= d) {
            let failed = std::mem::take(&mut self.pending);
            // The split began at the first failure, not when the window closed.
            let first_failure = self.pending_since.take().unwrap_or(now);
            if failed.len() == 1 {
                let (node, addr) = failed.into_iter().next().expect("one failure");
                out.push(SplitOutput::Alert(Alert::NodeFailed { node, addr }));
            } else {
                let lost: Vec<NodeId> = failed.into_iter().map(|(n, _)| n).collect();
                self.open_episode(first_failure, &reachable, &lost);
                out.push(SplitOutput::Alert(Alert::SplitBrainSuspected {
                    lost,
                    reachable: reachable.clone(),
                }));
            }
        }

        if self.had_quorum && !quorum.quorum {
            let unreachable: Vec<NodeId> = roster.difference(up).cloned().collect();
            self.open_episode(now, &reachable, &unreachable);
            out.push(SplitOutput::Alert(Alert::QuorumLost {
                reachable: reachable.clone(),
                unreachable: unreachable.clone(),
            }));
            out.push(SplitOutput::Panic {
                reachable: reachable.clone(),
                unreachable,
            });
        } else if !self.had_quorum && quorum.quorum && self.ever_had_quorum {
            out.push(SplitOutput::Alert(Alert::QuorumRegained {
                reachable: reachable.clone(),
            }));
        }
        self.had_quorum = quorum.quorum;
        self.ever_had_quorum |= quorum.quorum;

        if let Some(ep) = &mut self.episode {
            ep.theirs.retain(|n| roster.contains(n));
            if ep.theirs.is_empty() {
                // Everyone on the other side was forgotten or reaped: nothing left to heal.
                self.episode = None;
            } else if ep.theirs.iter().all(|n| up.contains(n)) {
                let ep = self.episode.take().expect("episode");
                out.push(SplitOutput::Alert(Alert::SplitBrainHealed {
                    duration_ms: now.saturating_duration_since(ep.since).as_millis() as u64,
                    ours: ep.ours.into_iter().collect(),
                    theirs: ep.theirs.into_iter().collect(),
                }));
            }
        }
        out
    }

    fn open_episode(&mut self, now: Instant, ours: &[NodeId], theirs: &[NodeId]) {
        let ep = self.episode.get_or_insert_with(|| Episode {
            since: now,
            ours: BTreeSet::new(),
            theirs: BTreeSet::new(),
        });
        ep.ours.extend(ours.iter().cloned());
        ep.theirs.extend(theirs.iter().cloned());
        for n in &ep.theirs {
            ep.ours.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::assess;

    fn set(ids: &[&str]) -> BTreeSet<NodeId> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn kinds(out: &[SplitOutput]) -> Vec<&'static str> {
        out.iter()
            .map(|o| match o {
                SplitOutput::Alert(a) => a.kind(),
                SplitOutput::Panic { .. } => "panic",
            })
            .collect()
    }

    const W: Duration = Duration::from_secs(2);
    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn one_failure_is_only_node_failed() {
        let t0 = Instant::now();
        let roster = set(&["a", "b", "c", "d", "e"]);
        let mut d = SplitDetector::new(W);
        let all = roster.clone();
        d.poll(t0, &roster, &all, &assess(&roster, &all, 0));
        d.on_failure(t0, "e", addr());
        let up = set(&["a", "b", "c", "d"]);
        assert!(d
            .poll(t0 + W / 2, &roster, &up, &assess(&roster, &up, 0))
            .is_empty());
        let out = d.poll(t0 + W, &roster, &up, &assess(&roster, &up, 0));
        assert_eq!(kinds(&out), vec!["node_failed"]);
    }

    #[test]
    fn several_failures_in_a_window_are_one_split_alert_and_heal_is_reported() {
        let t0 = Instant::now();
        let roster = set(&["a", "b", "c", "d", "e"]);
        let mut d = SplitDetector::new(W);
        d.poll(t0, &roster, &roster, &assess(&roster, &roster, 0));
        d.on_failure(t0, "a", addr());
        d.on_failure(t0 + W / 4, "b", addr());
        let up = set(&["c", "d", "e"]);
        let out = d.poll(t0 + W, &roster, &up, &assess(&roster, &up, 0));
        assert_eq!(kinds(&out), vec!["split_brain_suspected"]);
        let healed = d.poll(t0 + W * 10, &roster, &roster, &assess(&roster, &roster, 0));
        match &healed[..] {
            [SplitOutput::Alert(Alert::SplitBrainHealed {
                duration_ms,
                ours,
                theirs,
            })] => {
                assert_eq!(
                    *duration_ms,
                    (W * 10).as_millis() as u64,
                    "from the first failure"
                );
                assert_eq!(ours, &vec!["c".to_string(), "d".into(), "e".into()]);
                assert_eq!(theirs, &vec!["a".to_string(), "b".into()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minority_loses_quorum_once_and_asks_for_the_hook_once() {
        let t0 = Instant::now();
        let roster = set(&["a", "b", "c", "d", "e"]);
        let mut d = SplitDetector::new(W);
        d.poll(t0, &roster, &roster, &assess(&roster, &roster, 0));
        let up = set(&["a", "b"]);
        let out = d.poll(t0, &roster, &up, &assess(&roster, &up, 0));
        assert_eq!(kinds(&out), vec!["quorum_lost", "panic"]);
        assert!(d.in_minority());
        assert!(d
            .poll(t0 + W, &roster, &up, &assess(&roster, &up, 0))
            .is_empty());
        let out = d.poll(t0 + W * 2, &roster, &roster, &assess(&roster, &roster, 0));
        assert_eq!(kinds(&out), vec!["quorum_regained", "split_brain_healed"]);
    }

    #[test]
    fn a_node_that_never_had_quorum_raises_no_quorum_lost() {
        let t0 = Instant::now();
        let roster = set(&["a", "b", "c"]);
        let up = set(&["a"]);
        let mut d = SplitDetector::new(W);
        assert!(d
            .poll(t0, &roster, &up, &assess(&roster, &up, 0))
            .is_empty());
    }

    #[test]
    fn an_idle_detector_has_nothing_to_say() {
        let t0 = Instant::now();
        let roster = set(&["a", "b", "c"]);
        let up = set(&["a"]);
        let mut d = SplitDetector::new(W);
        let all = assess(&roster, &roster, 0);
        assert!(!d.idle(&all), "quorum is new");
        d.poll(t0, &roster, &roster, &all);
        assert!(d.idle(&all));
        assert!(d.poll(t0 + W, &roster, &up, &all).is_empty());
        d.on_failure(t0 + W, "c", addr());
        assert!(!d.idle(&all), "a failure is held");
        let out = d.poll(t0 + W * 2, &roster, &set(&["a", "b"]), &all);
        assert_eq!(kinds(&out), vec!["node_failed"]);
        assert!(d.idle(&all));
        let lost = assess(&roster, &up, 0);
        assert!(!d.idle(&lost));
        d.poll(t0 + W * 3, &roster, &up, &lost);
        assert!(!d.idle(&lost), "an episode is open");
    }

    #[test]
    fn a_blip_shorter_than_the_window_is_not_reported() {
        let t0 = Instant::now();
        let roster = set(&["a", "b", "c"]);
        let mut d = SplitDetector::new(W);
        d.poll(t0, &roster, &roster, &assess(&roster, &roster, 0));
        d.on_failure(t0, "c", addr());
        assert!(d
            .poll(t0 + W, &roster, &roster, &assess(&roster, &roster, 0))
            .is_empty());
    }
}
