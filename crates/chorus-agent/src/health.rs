//! `GET /health` on the metrics address: whether this agent is fit to serve, for a load
//! balancer, a Kubernetes probe or a monitoring check that reads a status code rather than a
//! metric.
//!
//! `200 OK` when the agent loop has turned within [`HEALTH_STALE_AFTER`] and this node is on
//! the majority side of the cluster; `503 Service Unavailable` otherwise (a stuck loop, a
//! minority side, a cluster still forming). The body is one JSON object either way:
//!
//! ```json
//! {"healthy":true,"loop_turning":true,"last_turn_ms_ago":120,"partition":"majority",
//!  "quorum":true,"alive":3,"roster":3,"leader":"web1","reasons":[]}
//! ```

use std::time::{Duration, Instant};

use chorus_core::node::NodeStatus;
use chorus_core::quorum::Partition;
use parking_lot::Mutex;
use serde::Serialize;

/// The agent loop turns at least every 500 ms (and on every request); one that has not turned
/// for this long is stuck (a lock never released, a blocked runtime), whatever the last view
/// said.
pub const HEALTH_STALE_AFTER: Duration = Duration::from_secs(5);

/// What `/health` answers from: the last turn of the agent loop and what it saw.
#[derive(Default)]
pub struct Health {
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    last_turn: Option<Instant>,
    status: Option<NodeStatus>,
}

/// The `/health` body.
#[derive(Debug, Serialize, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    pub loop_turning: bool,
    /// Milliseconds since the agent loop last turned; `null` before its first turn.
    pub last_turn_ms_ago: Option<u64>,
    pub partition: Option<Partition>,
    pub quorum: bool,
    pub alive: usize,
    pub roster: usize,
    pub leader: Option<String>,
    /// Why it is not healthy, one sentence each; empty when healthy.
    pub reasons: Vec<String>,
}

impl Health {
    /// The agent loop turned at `now` (tokio's clock, as the loop's).
    pub fn turned(&self, now: Instant) {
        self.inner.lock().last_turn = Some(now);
    }

    /// What the loop saw on its last turn.
    pub fn update(&self, status: &NodeStatus) {
        let mut seen = self.inner.lock();
        if seen.status.as_ref() != Some(status) {
            seen.status = Some(status.clone());
        }
    }

    pub fn report(&self, now: Instant) -> HealthReport {
        let seen = self.inner.lock();
        let ago = seen.last_turn.map(|t| now.saturating_duration_since(t));
        let loop_turning = ago.is_some_and(|a| a <= HEALTH_STALE_AFTER);
        let status = seen.status.as_ref();
        let partition = status.map(|s| s.partition);
        let mut reasons = Vec::new();
        match ago {
            None => reasons.push("the agent loop has not turned yet".to_string()),
            Some(a) if !loop_turning => reasons.push(format!(
                "the agent loop has not turned for {} ms",
                a.as_millis()
            )),
            Some(_) => {}
        }
        match partition {
            Some(Partition::Majority) => {}
            Some(p) => reasons.push(format!("this node is on the {} side", p.as_str())),
            None => reasons.push("no view of the cluster yet".to_string()),
        }
        HealthReport {
            healthy: reasons.is_empty(),
            loop_turning,
            last_turn_ms_ago: ago.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
            partition,
            quorum: status.is_some_and(|s| s.quorum),
            alive: status.map_or(0, |s| s.alive),
            roster: status.map_or(0, |s| s.roster),
            leader: status.and_then(|s| s.leader.clone()),
            reasons,
        }
    }

    /// The HTTP status line and JSON body of `GET /health`.
    pub fn answer(&self, now: Instant) -> (&'static str, String) {
        let report = self.report(now);
        let status = if report.healthy {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        let mut body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_string());
        body.push('\n');
        (status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::member::NodeState;

    fn status(partition: Partition) -> NodeStatus {
        NodeStatus {
            node_id: "n1".into(),
            cluster: "c".into(),
            fingerprint: String::new(),
            app_version: String::new(),
            alive: 2,
            roster: 3,
            quorum: partition == Partition::Majority,
            partition,
            leader: Some("n2".into()),
            epoch: 4,
            state: NodeState::Active,
            raft: Default::default(),
        }
    }

    #[test]
    fn healthy_only_on_the_majority_side_while_the_loop_turns() {
        let health = Health::default();
        let t0 = Instant::now();
        let (code, body) = health.answer(t0);
        assert_eq!(code, "503 Service Unavailable");
        assert!(body.contains("\"healthy\":false"), "{body}");

        health.turned(t0);
        health.update(&status(Partition::Majority));
        let (code, body) = health.answer(t0 + Duration::from_millis(300));
        assert_eq!(code, "200 OK", "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["last_turn_ms_ago"], 300);
        assert_eq!(report["leader"], "n2");
        assert_eq!(report["reasons"].as_array().map(Vec::len), Some(0));

        // A loop that stopped turning is unhealthy even though its last view was good.
        let (code, body) = health.answer(t0 + HEALTH_STALE_AFTER + Duration::from_millis(1));
        assert_eq!(code, "503 Service Unavailable");
        assert!(body.contains("has not turned for"), "{body}");

        for side in [Partition::Minority, Partition::Forming] {
            health.turned(t0);
            health.update(&status(side));
            let (code, body) = health.answer(t0);
            assert_eq!(code, "503 Service Unavailable");
            assert!(
                body.contains(&format!("the {} side", side.as_str())),
                "{body}"
            );
        }
    }
}
