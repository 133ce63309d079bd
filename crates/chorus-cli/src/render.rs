//! Human-readable tables and lines.

use std::fmt::Write;

use chorus_agent::api::{StatusReport, WatchEvent};
use chorus_core::member::Member;

pub fn members_table(members: &[Member]) -> String {
    let header = [
        "NODE", "ADDR", "STATUS", "STATE", "VERSION", "CPU", "MEM", "SESS", "LEADER", "TAGS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for m in members {
        let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut status = m.status.to_string();
        if let Some(reason) = &m.reason {
            status = format!("{status} ({reason})");
        }
        rows.push(vec![
            if m.is_self {
                format!("{}*", m.node_id)
            } else {
                m.node_id.clone()
            },
            m.addr.to_string(),
            status,
            m.state.as_str().to_string(),
            m.app_version.clone().unwrap_or_else(|| "-".into()),
            format!("{:.2}", m.load.cpu),
            format!("{:.0}%", m.load.mem * 100.0),
            m.load.sessions.to_string(),
            if m.leader {
                "yes".into()
            } else {
                String::new()
            },
            tags.join(","),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

pub fn status_text(s: &StatusReport) -> String {
    let n = &s.node;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node:        {} ({}, generation {})",
        n.node_id, s.addr, s.generation
    );
    let _ = writeln!(out, "cluster:     {}", n.cluster);
    let _ = writeln!(
        out,
        "version:     {} (fingerprint {})",
        n.app_version, n.fingerprint
    );
    let _ = writeln!(out, "state:       {}", n.state.as_str());
    let _ = writeln!(
        out,
        "members:     {} alive of {} in roster",
        n.alive, n.roster
    );
    let _ = writeln!(
        out,
        "quorum:      {} ({})",
        if n.quorum { "yes" } else { "NO" },
        n.partition.as_str()
    );
    let _ = writeln!(
        out,
        "leader:      {}",
        n.leader
            .as_deref()
            .map_or("none".to_string(), |l| format!("{l} (epoch {})", n.epoch))
    );
    let _ = writeln!(out, "raft:        {}", raft_text(&n.raft));
    let _ = writeln!(out, "uptime:      {}s", s.uptime_s);
    out
}

/// `follower of cluster 3f2a, term 4, commit 12, voters n1 n2 n3`.
fn raft_text(r: &chorus_core::node::RaftStatus) -> String {
    if r.cluster.is_empty() {
        return format!("{} (not in a cluster yet)", r.role.as_str());
    }
    format!(
        "{} of cluster {}, term {}, commit {}, voters {}",
        r.role.as_str(),
        r.cluster,
        r.term,
        r.commit,
        r.voters.join(" ")
    )
}

/// One `chorus watch` line: the time in UTC (RFC 3339, milliseconds), the kind, the sentence.
pub fn event_line(e: &WatchEvent) -> String {
    format!(
        "{} alert={} {}",
        utc_time(e.time_ms),
        e.alert.kind(),
        e.alert
    )
}

/// Milliseconds since the Unix epoch as `2026-01-31T12:00:00.123Z`; a time beyond what the
/// calendar can show (a peer's garbage) stays a number.
pub fn utc_time(ms: u64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(ms))
        .filter(|t| *t < std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn watch_lines_start_with_a_readable_utc_time() {
        let event = WatchEvent {
            time_ms: 1_780_000_000_123,
            observer: "n1".into(),
            alert: chorus_core::alert::Alert::NodeLeft { node: "n2".into() },
        };
        assert_eq!(
            event_line(&event),
            "2026-05-28T20:26:40.123Z alert=node_left node n2 left the cluster"
        );
        assert_eq!(utc_time(u64::MAX), u64::MAX.to_string());
    }
}
