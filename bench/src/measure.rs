//! What every system is measured with: this process's CPU time and RSS from `/proc`, the
//! loopback byte counter, free loopback ports, and small statistics.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / ticks_per_s)
}

/// The host's 1-minute load average: other programs competing for the cores.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Resident set size of a process (`self` or a pid), in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes sent on the loopback interface so far, by every process of the host (IP and UDP
/// headers included): the only view of what QUIC really puts on the wire.
pub fn loopback_tx_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (name, rest) = l.split_once(':')?;
                if name.trim() != "lo" {
                    return None;
                }
                // receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
                rest.split_whitespace().nth(8)?.parse().ok()
            })
        })
        .unwrap_or(0)
}

/// Moves this process into a network namespace of its own with `lo` up, so the loopback
/// counter counts this run's packets only (and no other program can take its ports). Needs
/// root or user namespaces; without them the run shares the host's loopback. Call it while
/// the process has one thread: a namespace belongs to the thread that enters it.
pub fn isolate_network() -> bool {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `n` loopback addresses whose UDP ports are free now (all held at once while choosing, so
/// they differ; another process could still take one before the node binds it).
pub fn free_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let held: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    held.iter()
        .map(|s| s.local_addr().map_err(Into::into))
        .collect()
}

/// Spreads node launches evenly over one gossip (or probe) period, so the nodes do not all
/// gossip in the same instant of every period, as nodes started by hand never do. (Launched
/// together, their rounds stay in lockstep and every result comes in whole periods.)
pub struct Launches {
    first: tokio::time::Instant,
    step: Duration,
}

impl Launches {
    pub fn over(period: Duration, n: usize) -> Launches {
        Launches {
            first: tokio::time::Instant::now(),
            step: period / n.max(1) as u32,
        }
    }

    /// Waits for node `i`'s turn.
    pub async fn turn(&self, i: usize) {
        tokio::time::sleep_until(self.first + self.step * i as u32).await;
    }
}

/// The seeds node `i` joins through: the first three nodes, itself excluded.
pub fn seeds_for(i: usize, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    addrs
        .iter()
        .enumerate()
        .take(3)
        .filter(|(j, _)| *j != i)
        .map(|(_, a)| *a)
        .collect()
}

/// Median of the values (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Minimum, median and maximum of a set of durations, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let median = median(values)?;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Spread { min, median, max })
    }
}

/// The `q`-quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let s = Spread::of(&[2.0, 5.0, 1.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 5.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.99), 5.0);
    }

    #[test]
    fn proc_readers_see_this_process() {
        assert!(rss_kib("self") > 0);
        // Busy until the kernel has charged a tick (bounded: the machine may be busy).
        let spin = std::time::Instant::now();
        while cpu_time() == Duration::ZERO && spin.elapsed() < Duration::from_secs(5) {}
        assert!(cpu_time() > Duration::ZERO);
        let addrs = free_addrs(3).unwrap();
        assert_eq!(seeds_for(1, &addrs), vec![addrs[0], addrs[2]]);
    }
}
