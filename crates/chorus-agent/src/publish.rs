//! What the socket and the metrics answer from, published after every tick.
//!
//! On most ticks nothing a reader sees has changed but the uptime and the traffic counters.
//! So the members list is rebuilt only when core says a row changed, and then shares the rows
//! that did not; the per-peer heartbeat ages, which move on every tick, reach the metrics once
//! a second (a scrape is rarely more frequent, and an age is a coarse signal anyway).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_core::member::Member;
use chorus_core::node::Node;
use chorus_net::NetStats;

use crate::api::StatusReport;
use crate::metrics::Metrics;
use crate::server::ApiView;

/// How often the heartbeat ages of the metrics are refreshed.
pub const HEARTBEAT_AGES_EVERY: Duration = Duration::from_secs(1);

pub struct ViewPublisher {
    started: Instant,
    generation: u64,
    addr: String,
    /// The members as last published, and the revision of core's view they show.
    members: Arc<[Arc<Member>]>,
    revision: Option<u64>,
    ages_refreshed: Option<Instant>,
}

impl ViewPublisher {
    pub fn new(started: Instant, generation: u64, advertise: SocketAddr) -> ViewPublisher {
        ViewPublisher {
            started,
            generation,
            addr: advertise.to_string(),
            members: Arc::new([]),
            revision: None,
            ages_refreshed: None,
        }
    }

    /// The view after a tick, and the metrics brought up to date with it.
    pub fn publish(
        &mut self,
        node: &Node,
        metrics: &Metrics,
        now: Instant,
        net: Option<NetStats>,
    ) -> Arc<ApiView> {
        let status = StatusReport {
            node: node.status(),
            generation: self.generation,
            is_leader: node.leading().is_some(),
            addr: self.addr.clone(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            net: net
                .as_ref()
                .and_then(|n| serde_json::to_value(n).ok())
                .unwrap_or(serde_json::Value::Null),
        };
        metrics.update_status(&status.node, status.is_leader);
        let revision = node.members_revision();
        if self.revision != Some(revision) {
            self.members = node.shared_members().cloned().collect();
            self.revision = Some(revision);
            metrics.update_members(self.members.iter().map(|m| &**m));
        }
        if self
            .ages_refreshed
            .is_none_or(|at| now.saturating_duration_since(at) >= HEARTBEAT_AGES_EVERY)
        {
            self.ages_refreshed = Some(now);
            metrics.update_heartbeat_ages(node.heartbeat_ages(now));
        }
        if let Some(net) = net {
            metrics.update_net(net);
        }
        Arc::new(ApiView {
            members: self.members.clone(),
            status,
        })
    }
}
