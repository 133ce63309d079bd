//! systemd's notify protocol (sd_notify(3)), for a unit with `Type=notify`.
//!
//! With `NOTIFY_SOCKET` set the agent sends:
//! - `READY=1` once its socket serves and it has either joined a peer (another member is
//!   alive) or found that it is the first node: it has no seed but itself, or `--expect 1`,
//!   or it is one of its own seeds (or a seed is a host name it cannot tell is its own) and no
//!   other seed answered within [`FIRST_NODE_WAIT_ROUNDS`] gossip rounds. A single-node install
//!   never hangs in `activating`; a node whose seeds are all other addresses waits for one of
//!   them (systemd's `TimeoutStartSec` bounds that wait).
//! - `STATUS=` with members alive / roster, the side when not the majority, and the leader,
//!   sent again whenever that text changes.
//! - `WATCHDOG=1` when `WATCHDOG_USEC` is set (and `WATCHDOG_PID`, if set, is this process),
//!   from the agent loop itself at a quarter of the interval: a loop that stops turning stops
//!   the pings, and systemd restarts the agent.
//! - `STOPPING=1` when a graceful stop begins.
//!
//! Without `NOTIFY_SOCKET` nothing is sent. A failed send is logged once at DEBUG: the
//! manager being gone is no reason to stop serving.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus_core::node::NodeStatus;
use chorus_core::quorum::Partition;
use sd_notify::NotifyState;

use crate::config::AgentConfig;

/// A node that is one of its own seeds and hears from no other seed within this many gossip
/// rounds takes itself for the first node and reports ready.
pub const FIRST_NODE_WAIT_ROUNDS: u32 = 10;

/// Whether the service manager listens, and what was last told.
pub struct Notifier {
    enabled: bool,
    ready: bool,
    first: FirstNode,
    started: Instant,
    status: String,
    watchdog_every: Option<Duration>,
    last_watchdog: Option<Instant>,
    send_failed: bool,
}

/// How this node tells that it is the first of its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstNode {
    /// No seed but itself, or `--expect 1`: ready at once.
    Alone,
    /// One of its own seeds, with others: ready after this long without a peer.
    AfterWaiting(Duration),
    /// Every seed is another node: ready only once one of them is alive.
    Never,
}

impl FirstNode {
    /// From the seeds (as given), this node's own addresses and names (node id, host name;
    /// `localhost` always), and `--expect`. No name is resolved: a host-name seed that is not
    /// one of the own names may or may not be this node, so it waits as an own seed does.
    pub fn judge(
        seeds: &[String],
        own: &[SocketAddr],
        own_names: &[String],
        expect: usize,
        gossip_interval: Duration,
    ) -> FirstNode {
        let (mut others, mut unsure) = (0, 0);
        for seed in seeds {
            match seed.parse::<SocketAddr>() {
                Ok(addr) if own.contains(&addr) => {}
                Ok(_) => others += 1,
                Err(_) => {
                    let own_name = seed.rsplit_once(':').is_some_and(|(host, port)| {
                        let port = port.parse::<u16>().ok();
                        own.iter().any(|a| Some(a.port()) == port)
                            && (host.eq_ignore_ascii_case("localhost")
                                || own_names.iter().any(|n| n.eq_ignore_ascii_case(host)))
                    });
                    if !own_name {
                        unsure += 1;
                    }
                }
            }
        }
        if expect == 1 || others + unsure == 0 {
            FirstNode::Alone
        } else if others < seeds.len() {
            FirstNode::AfterWaiting(gossip_interval.saturating_mul(FIRST_NODE_WAIT_ROUNDS))
        } else {
            FirstNode::Never
        }
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once, at start.
    pub fn from_env(config: &AgentConfig, advertise: SocketAddr, started: Instant) -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        let mut own_names = vec![config.node_id.clone()];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            own_names.push(host.trim().to_string());
        }
        let first = FirstNode::judge(
            &config.seeds,
            &[advertise, config.listen],
            &own_names,
            config.expect,
            config.gossip_interval,
        );
        Notifier::new(enabled, first, watchdog, started)
    }

    pub fn new(
        enabled: bool,
        first: FirstNode,
        watchdog: Option<Duration>,
        started: Instant,
    ) -> Notifier {
        Notifier {
            enabled,
            ready: false,
            first,
            started,
            status: String::new(),
            watchdog_every: watchdog.map(|w| w / 4),
            last_watchdog: None,
            send_failed: false,
        }
    }

    /// Whether `READY=1` is due: the socket serves (the caller only calls once it does) and
    /// the node has a peer or is the first node.
    pub fn is_ready(&self, now: Instant, status: &NodeStatus) -> bool {
        status.alive >= 2
            || match self.first {
                FirstNode::Alone => true,
                FirstNode::AfterWaiting(wait) => {
                    now.saturating_duration_since(self.started) >= wait
                }
                FirstNode::Never => false,
            }
    }

    /// One turn of the agent loop, at `now`, which left the node at `status`.
    pub fn turned(&mut self, now: Instant, status: &NodeStatus) {
        if !self.enabled {
            return;
        }
        let mut states = Vec::new();
        let text = status_line(status);
        if text != self.status {
            self.status = text;
            states.push(NotifyState::Status(&self.status));
        }
        if !self.ready && self.is_ready(now, status) {
            self.ready = true;
            states.push(NotifyState::Ready);
            tracing::info!(status = %self.status, "ready: told the service manager");
        }
        if let Some(every) = self.watchdog_every {
            if self
                .last_watchdog
                .is_none_or(|t| now.saturating_duration_since(t) >= every)
            {
                self.last_watchdog = Some(now);
                states.push(NotifyState::Watchdog);
            }
        }
        if !states.is_empty() {
            let result = send(&states);
            self.sent(result);
        }
    }

    /// A graceful stop begins.
    pub fn stopping(&mut self) {
        if self.enabled {
            let result = send(&[NotifyState::Stopping]);
            self.sent(result);
        }
    }

    fn sent(&mut self, result: std::io::Result<()>) {
        if let Err(e) = result {
            if !self.send_failed {
                self.send_failed = true;
                tracing::debug!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
            }
        }
    }
}

/// Sends `states` to `NOTIFY_SOCKET` without ever waiting: the send runs on the agent loop,
/// and a service manager that does not read (or a full socket queue) must not stop the loop
/// (sd_notify's own send blocks). What cannot be sent now is dropped; the next turn sends the
/// current state again when it changes, and the next watchdog ping in a quarter interval.
fn send(states: &[NotifyState<'_>]) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.connect(path)?;
    let mut message = String::new();
    for state in states {
        let _ = writeln!(message, "{state}");
    }
    socket.send(message.as_bytes()).map(drop)
}

/// `WATCHDOG_USEC` as an interval, when it is set, positive, and meant for this process
/// (`WATCHDOG_PID` unset or this pid), as sd_watchdog_enabled(3) reads them.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec = usec?.trim().parse::<u64>().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(own_pid) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// The `STATUS=` text: "3/3 members alive, leader web1 (epoch 4)".
pub fn status_line(status: &NodeStatus) -> String {
    let side = match status.partition {
        Partition::Majority => String::new(),
        other => format!(" ({} side)", other.as_str()),
    };
    let leader = match &status.leader {
        Some(l) => format!("leader {l} (epoch {})", status.epoch),
        None => "no leader".to_string(),
    };
    format!(
        "{}/{} members alive{side}, {leader}",
        status.alive, status.roster
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::member::NodeState;

    fn status(alive: usize, roster: usize, leader: Option<&str>) -> NodeStatus {
        NodeStatus {
            node_id: "n1".into(),
            cluster: "c".into(),
            fingerprint: String::new(),
            app_version: String::new(),
            alive,
            roster,
            quorum: true,
            partition: Partition::Majority,
            leader: leader.map(Into::into),
            epoch: 2,
            state: NodeState::Active,
            raft: Default::default(),
        }
    }

    #[test]
    fn the_first_node_is_judged_from_its_seeds_and_expect() {
        let own: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let listen: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        let round = Duration::from_millis(400);
        let names = ["web1".to_string(), "web1.example.com".to_string()];
        let judge = |seeds: &[&str], expect| {
            let seeds: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
            FirstNode::judge(&seeds, &[own, listen], &names, expect, round)
        };
        let waits = FirstNode::AfterWaiting(round * FIRST_NODE_WAIT_ROUNDS);
        assert_eq!(judge(&[], 0), FirstNode::Alone);
        assert_eq!(judge(&["10.0.0.1:7946"], 0), FirstNode::Alone);
        assert_eq!(
            judge(&["WEB1.example.com:7946", "localhost:7946"], 0),
            FirstNode::Alone
        );
        assert_eq!(judge(&["10.0.0.2:7946"], 1), FirstNode::Alone);
        assert_eq!(judge(&["10.0.0.1:7946", "10.0.0.2:7946"], 3), waits);
        // A name that may be this node (or not) waits; so does an own name on another port.
        assert_eq!(judge(&["10.0.0.2:7946", "web3:7946"], 0), waits);
        assert_eq!(judge(&["web1:7000", "10.0.0.2:7946"], 0), waits);
        assert_eq!(
            judge(&["10.0.0.2:7946", "10.0.0.3:7946"], 0),
            FirstNode::Never
        );
    }

    #[test]
    fn ready_with_a_peer_or_as_the_first_node() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(4);
        let waiting = Notifier::new(true, FirstNode::AfterWaiting(wait), None, t0);
        assert!(!waiting.is_ready(t0, &status(1, 1, None)));
        assert!(waiting.is_ready(t0, &status(2, 2, None)));
        assert!(waiting.is_ready(t0 + wait, &status(1, 1, None)));
        let never = Notifier::new(true, FirstNode::Never, None, t0);
        assert!(!never.is_ready(t0 + wait * 100, &status(1, 3, None)));
        assert!(never.is_ready(t0, &status(2, 3, None)));
        assert!(Notifier::new(true, FirstNode::Alone, None, t0).is_ready(t0, &status(1, 1, None)));
    }

    #[test]
    fn the_watchdog_follows_sd_watchdog_enabled() {
        let d = Duration::from_secs(30);
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), Some(d));
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), Some(d));
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn the_status_line_names_counts_side_and_leader() {
        assert_eq!(
            status_line(&status(3, 3, Some("web1"))),
            "3/3 members alive, leader web1 (epoch 2)"
        );
        let mut minority = status(1, 3, None);
        minority.partition = Partition::Minority;
        assert_eq!(
            status_line(&minority),
            "1/3 members alive (minority side), no leader"
        );
    }
}
