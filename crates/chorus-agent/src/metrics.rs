//! Prometheus metrics (`--metrics-addr`): the health an operator alerts on, in text format.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `chorus_members{status}` | gauge | members by status (alive, suspect, dead, left, rejected) |
//! | `chorus_roster_size` | gauge | members quorum is counted against |
//! | `chorus_quorum` | gauge | 1 if this node sees a majority of the roster |
//! | `chorus_partition{side}` | gauge | 1 for the side this node is on (majority, minority, forming) |
//! | `chorus_leader_epoch` | gauge | fencing epoch of the leader this node sees |
//! | `chorus_is_leader` | gauge | 1 on the leader |
//! | `chorus_alerts_total{kind}` | counter | alerts raised, by kind |
//! | `chorus_net_bytes_sent_total`, `..._received_total` | counter | gossip payload bytes |
//! | `chorus_net_messages_sent_total`, `..._received_total` | counter | gossip messages |
//! | `chorus_net_dropped_sends_total` | counter | messages dropped before the network |
//! | `chorus_net_garbage_received_total` | counter | undecodable input from the network |
//! | `chorus_net_stale_received_total` | counter | messages dropped unread: they waited too long for chitchat (QUIC) |
//! | `chorus_net_failed_handshakes_total` | counter | TLS or hello failures |
//! | `chorus_net_rejected_peers_total` | counter | peers refused at hello |
//! | `chorus_net_connections_opened_total` | counter | connections set up, dialed or accepted: one TLS handshake each (QUIC) |
//! | `chorus_net_handshakes_retried_total` | counter | connection attempts answered with a QUIC Retry (address validation) under load |
//! | `chorus_net_handshakes_throttled_total` | counter | connection attempts refused: their source IP was over its handshake rate or share |
//! | `chorus_net_handshakes_refused_total` | counter | connection attempts refused: no handshake slot free |
//! | `chorus_net_connections_refused_total` | counter | connections closed after the hello: too many connections, or the address is another node's |
//! | `chorus_net_identity_mismatches_total` | counter | peers whose hello claimed a node id their certificate does not name |
//! | `chorus_net_streams_over_budget_total` | counter | incoming streams stopped: no buffer budget left |
//! | `chorus_net_streams_timed_out_total` | counter | incoming streams stopped: not finished in time |
//! | `chorus_net_buffered_bytes` | gauge | bytes held for incoming streams, for messages waiting for chitchat and for received Raft messages |
//! | `chorus_net_raft_messages_sent_total`, `..._received_total` | counter | Raft messages sent, and received and queued for the consensus engine |
//! | `chorus_net_raft_bytes_sent_total`, `..._received_total` | counter | Raft payload bytes |
//! | `chorus_net_raft_dropped_total` | counter | Raft messages dropped: no socket, oversized, queue full, peer unreachable, inbox full |
//! | `chorus_peer_heartbeat_age_seconds{peer}` | gauge | time since the peer's heartbeat last moved: the input of the phi detector (chitchat keeps phi itself private); refreshed once a second |
//! | `chorus_tick_duration_seconds` | histogram | one agent round: read gossip, decide, act |
//! | `chorus_local_connections_refused_total{listener}` | counter | connections to the Unix socket (`socket`) or this endpoint (`metrics`) refused at their limit |
//!
//! Every labelled series an alerting rule may use exists from the start, at 0: each member
//! status, each partition side, each listener, and each alert kind (chorus-core's
//! `alert::KINDS`), as Prometheus conventions ask (a rule on a missing series never fires).
//!
//! `GET /health` on the same address answers whether the agent is fit to serve ([`crate::health`]).
//!
//! The endpoint serves at most `MAX_METRICS_CONNECTIONS` (chorus-core's `admission`) at once
//! and answers one more `503 Service Unavailable`; a request not complete within
//! [`HTTP_REQUEST_TIMEOUT`] is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_core::member::{Member, Status};
use chorus_core::node::NodeStatus;
use chorus_core::quorum::Partition;
use chorus_net::NetStats;
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use chorus_core::admission::{AcceptBackoff, Budget, LogEvery};

use crate::accept::accept_next;
use crate::health::Health;

type Labels = Vec<(String, String)>;

/// Longest HTTP request head read from a scraper; what follows is not read.
const MAX_HTTP_REQUEST: usize = 8 * 1024;
/// A scraper's request head must arrive, and the answer be taken, within this long of the
/// connection opening; else the connection is closed, so idle or slow connections cannot hold
/// the endpoint's few slots.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused scraper's connection stays open after its 503 (see `refuse_busy`).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// The listeners whose refusals are counted.
const LISTENERS: [&str; 2] = ["socket", "metrics"];

const STATUSES: [Status; 5] = [
    Status::Alive,
    Status::Suspect,
    Status::Dead,
    Status::Left,
    Status::Rejected,
];
const PARTITIONS: [Partition; 3] = [Partition::Majority, Partition::Minority, Partition::Forming];

pub struct Metrics {
    registry: Registry,
    /// One per [`STATUSES`], held rather than looked up by label on every tick.
    members: [Gauge; 5],
    roster: Gauge,
    quorum: Gauge,
    /// One per [`PARTITIONS`].
    partition: [Gauge; 3],
    leader_epoch: Gauge,
    is_leader: Gauge,
    alerts: Family<Labels, Counter>,
    heartbeat_age: Family<Labels, Gauge<f64, AtomicU64>>,
    peer_ages: Mutex<PeerAges>,
    tick: Histogram,
    net: [Counter; NET_COUNTERS],
    last_net: Mutex<NetStats>,
    buffered_bytes: Gauge,
    /// One per [`LISTENERS`].
    refused: [Counter; 2],
    /// What `GET /health` answers from, kept up to date by [`Metrics::tick`] and
    /// [`Metrics::update_status`].
    pub health: Health,
}

/// One counter per field of [`NetStats`] but the gauge `buffered_bytes`.
const NET_COUNTERS: usize = 22;

/// The heartbeat-age gauge of each peer, held so that a refresh looks no label up, with the
/// refresh that last set it.
#[derive(Default)]
struct PeerAges {
    refresh: u64,
    gauges: HashMap<String, (Gauge<f64, AtomicU64>, u64)>,
}

/// Each [`NetStats`] field as its counter's name, help and value. The pattern names every
/// field, so a field added to `NetStats` does not compile until it is exported here.
fn net_counters(s: &NetStats) -> [(&'static str, &'static str, u64); NET_COUNTERS] {
    let NetStats {
        bytes_sent,
        bytes_received,
        messages_sent,
        messages_received,
        dropped_sends,
        garbage_received,
        stale_received,
        failed_handshakes,
        rejected_peers,
        connections_opened,
        handshakes_retried,
        handshakes_throttled,
        handshakes_refused,
        connections_refused,
        identity_mismatches,
        streams_over_budget,
        streams_timed_out,
        buffered_bytes: _,
        raft_messages_sent,
        raft_messages_received,
        raft_bytes_sent,
        raft_bytes_received,
        raft_dropped,
    } = *s;
    [
        ("net_bytes_sent", "Gossip payload bytes sent", bytes_sent),
        (
            "net_bytes_received",
            "Gossip payload bytes received",
            bytes_received,
        ),
        ("net_messages_sent", "Gossip messages sent", messages_sent),
        (
            "net_messages_received",
            "Gossip messages received",
            messages_received,
        ),
        (
            "net_dropped_sends",
            "Messages dropped before reaching the network",
            dropped_sends,
        ),
        (
            "net_garbage_received",
            "Undecodable input from the network",
            garbage_received,
        ),
        (
            "net_stale_received",
            "Messages dropped unread: they waited too long for chitchat",
            stale_received,
        ),
        (
            "net_failed_handshakes",
            "TLS or hello failures",
            failed_handshakes,
        ),
        (
            "net_rejected_peers",
            "Peers refused at hello",
            rejected_peers,
        ),
        (
            "net_connections_opened",
            "Connections set up, dialed or accepted (one TLS handshake each)",
            connections_opened,
        ),
        (
            "net_handshakes_retried",
            "Connection attempts answered with a QUIC Retry (address validation) under load",
            handshakes_retried,
        ),
        (
            "net_handshakes_throttled",
            "Connection attempts refused: their source IP was over its handshake rate or share",
            handshakes_throttled,
        ),
        (
            "net_handshakes_refused",
            "Connection attempts refused: no handshake slot free",
            handshakes_refused,
        ),
        (
            "net_connections_refused",
            "Connections closed after the hello: too many, or the address is another node's",
            connections_refused,
        ),
        (
            "net_identity_mismatches",
            "Peers whose hello claimed a node id their certificate does not name",
            identity_mismatches,
        ),
        (
            "net_streams_over_budget",
            "Incoming streams stopped: no buffer budget left",
            streams_over_budget,
        ),
        (
            "net_streams_timed_out",
            "Incoming streams stopped: not finished in time",
            streams_timed_out,
        ),
        (
            "net_raft_messages_sent",
            "Raft messages sent",
            raft_messages_sent,
        ),
        (
            "net_raft_messages_received",
            "Raft messages received and queued for the consensus engine",
            raft_messages_received,
        ),
        (
            "net_raft_bytes_sent",
            "Raft payload bytes sent",
            raft_bytes_sent,
        ),
        (
            "net_raft_bytes_received",
            "Raft payload bytes received",
            raft_bytes_received,
        ),
        (
            "net_raft_dropped",
            "Raft messages dropped: no socket, oversized, queue full, peer unreachable, inbox full",
            raft_dropped,
        ),
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chorus");
        let members = Family::<Labels, Gauge>::default();
        registry.register("members", "Members by status", members.clone());
        let members = STATUSES.map(|s| {
            members
                .get_or_create(&vec![("status".into(), s.as_str().into())])
                .clone()
        });
        let roster = Gauge::default();
        registry.register(
            "roster_size",
            "Members quorum is counted against",
            roster.clone(),
        );
        let quorum = Gauge::default();
        registry.register(
            "quorum",
            "1 if this node sees a majority of the roster",
            quorum.clone(),
        );
        let partition = Family::<Labels, Gauge>::default();
        registry.register(
            "partition",
            "1 for the side this node is on",
            partition.clone(),
        );
        let partition = PARTITIONS.map(|p| {
            partition
                .get_or_create(&vec![("side".into(), p.as_str().into())])
                .clone()
        });
        let leader_epoch = Gauge::default();
        registry.register(
            "leader_epoch",
            "Fencing epoch of the leader this node sees",
            leader_epoch.clone(),
        );
        let is_leader = Gauge::default();
        registry.register("is_leader", "1 on the leader", is_leader.clone());
        let alerts = Family::<Labels, Counter>::default();
        registry.register("alerts", "Alerts raised, by kind", alerts.clone());
        for kind in chorus_core::alert::KINDS {
            drop(alerts.get_or_create(&vec![("kind".into(), kind.into())]));
        }
        let heartbeat_age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "peer_heartbeat_age_seconds",
            "Seconds since the peer's heartbeat last moved (the phi detector's input)",
            heartbeat_age.clone(),
        );
        let tick = Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5]);
        registry.register(
            "tick_duration_seconds",
            "One agent round: read gossip, decide, act",
            tick.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "local_connections_refused",
            "Connections to the Unix socket or the metrics endpoint refused at their limit",
            refused.clone(),
        );
        let refused = LISTENERS.map(|l| {
            refused
                .get_or_create(&vec![("listener".into(), l.into())])
                .clone()
        });
        let net: [Counter; NET_COUNTERS] = Default::default();
        for ((name, help, _), c) in net_counters(&NetStats::default()).into_iter().zip(&net) {
            registry.register(name, help, c.clone());
        }
        let buffered_bytes = Gauge::default();
        registry.register(
            "net_buffered_bytes",
            "Bytes held for incoming streams and for messages waiting for chitchat",
            buffered_bytes.clone(),
        );
        Metrics {
            registry,
            members,
            roster,
            quorum,
            partition,
            leader_epoch,
            is_leader,
            alerts,
            heartbeat_age,
            peer_ages: Mutex::new(PeerAges::default()),
            tick,
            net,
            last_net: Mutex::new(NetStats::default()),
            buffered_bytes,
            refused,
            health: Health::default(),
        }
    }

    pub fn alert(&self, kind: &str) {
        self.alerts
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc();
    }

    /// A connection to `listener` (`socket` or `metrics`) was refused at its limit.
    pub fn refused(&self, listener: &str) {
        if let Some(i) = LISTENERS.iter().position(|l| *l == listener) {
            self.refused[i].inc();
        }
    }

    /// One turn of the agent loop, which took `took`.
    pub fn tick(&self, took: Duration) {
        self.tick.observe(took.as_secs_f64());
        self.health.turned(tokio::time::Instant::now().into_std());
    }

    /// The gauges that follow the node's status.
    pub fn update_status(&self, status: &NodeStatus, is_leader: bool) {
        self.roster.set(status.roster as i64);
        self.quorum.set(status.quorum as i64);
        for (p, gauge) in PARTITIONS.iter().zip(&self.partition) {
            gauge.set((*p == status.partition) as i64);
        }
        self.leader_epoch.set(status.epoch as i64);
        self.is_leader.set(is_leader as i64);
        self.health.update(status);
    }

    /// Members by status.
    pub fn update_members<'a>(&self, members: impl IntoIterator<Item = &'a Member>) {
        let mut counts = [0i64; 5];
        for m in members {
            if let Some(i) = STATUSES.iter().position(|s| *s == m.status) {
                counts[i] += 1;
            }
        }
        for (gauge, n) in self.members.iter().zip(counts) {
            gauge.set(n);
        }
    }

    /// Replaces the per-peer heartbeat ages (peers not listed are dropped).
    pub fn update_heartbeat_ages<'a>(&self, ages: impl IntoIterator<Item = (&'a str, Duration)>) {
        let peer_label = |peer: &str| vec![("peer".to_string(), peer.to_string())];
        let mut held = self.peer_ages.lock();
        held.refresh += 1;
        let refresh = held.refresh;
        for (peer, age) in ages {
            if let Some((gauge, at)) = held.gauges.get_mut(peer) {
                gauge.set(age.as_secs_f64());
                *at = refresh;
                continue;
            }
            let gauge = self.heartbeat_age.get_or_create_owned(&peer_label(peer));
            gauge.set(age.as_secs_f64());
            held.gauges.insert(peer.to_string(), (gauge, refresh));
        }
        held.gauges.retain(|peer, (_, at)| {
            let listed = *at == refresh;
            if !listed {
                self.heartbeat_age.remove(&peer_label(peer));
            }
            listed
        });
    }

    /// Adds the traffic since the last call to the counters; sets the gauge.
    pub fn update_net(&self, now: NetStats) {
        self.buffered_bytes
            .set(i64::try_from(now.buffered_bytes).unwrap_or(i64::MAX));
        let mut last = self.last_net.lock();
        let deltas = net_counters(&now).into_iter().zip(net_counters(&last));
        for (c, ((_, _, new), (_, _, old))) in self.net.iter().zip(deltas) {
            c.inc_by(new.saturating_sub(old));
        }
        *last = now;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Binds the metrics listener; errors (address in use) are the caller's to report.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` (and `/`) until the task is aborted; aborting it also ends the open
/// connections (they live in a `JoinSet` it owns).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics at http://{addr}/metrics and health at http://{addr}/health");
    }
    let limit = Budget::for_fd_limit(crate::fdlimit::current_nofile_limit()).metrics;
    let permits = Arc::new(Semaphore::new(limit));
    let refusing = Arc::new(Semaphore::new(limit));
    let mut backoff = AcceptBackoff::new();
    let mut refusals = LogEvery::new(Duration::from_secs(10));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = accept_next("metrics", &mut backoff, || listener.accept()).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused("metrics");
            if let Some(count) = refusals.happened(tokio::time::Instant::now().into_std()) {
                tracing::warn!(%peer, refused = count, limit, "metrics connection refused: too many open");
            }
            // Refusals linger too, so they are bounded as well; beyond that the connection
            // is closed without a word.
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                connections.spawn(async move {
                    let _permit = permit;
                    refuse_busy(stream).await;
                });
            }
            continue;
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            if tokio::time::timeout(HTTP_REQUEST_TIMEOUT, answer(stream, &metrics))
                .await
                .is_ok()
            {
                tracing::trace!(
                    took_us = started.elapsed().as_micros() as u64,
                    "metrics scraped"
                );
            }
        });
    }
}

/// Answers `503 Service Unavailable` and closes: the write side first, then, after reading
/// what the client still sends for at most [`REFUSAL_LINGER`], the rest. Closing at once
/// would reset a connection whose request is still arriving, and the reset can destroy the
/// answer before the client reads it.
async fn refuse_busy(mut stream: TcpStream) {
    let body = "too many connections to the metrics endpoint; try again later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut ignored = [0u8; 1024];
        while stream.read(&mut ignored).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HTTP_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let get = line.starts_with("GET ");
    let (status, body, ctype) = if get && (path == "/metrics" || path == "/") {
        (
            "200 OK",
            metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else if get && path == "/health" {
        let (status, body) = metrics
            .health
            .answer(tokio::time::Instant::now().into_std());
        (status, body, "application/json")
    } else {
        (
            "404 Not Found",
            "not found: try GET /metrics or GET /health\n".to_string(),
            "text/plain",
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::admission::MAX_METRICS_CONNECTIONS;

    async fn start() -> (SocketAddr, Arc<Metrics>, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(serve(listener, metrics.clone()));
        (addr, metrics, task)
    }

    /// Sends `GET /metrics` on `stream` and reads the whole answer.
    async fn get(mut stream: TcpStream) -> String {
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer
    }

    #[test]
    fn every_alerting_series_exists_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for kind in chorus_core::alert::KINDS {
            let line = format!("chorus_alerts_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        for status in STATUSES {
            let line = format!("chorus_members{{status=\"{}\"}} 0", status.as_str());
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        for side in PARTITIONS {
            let line = format!("chorus_partition{{side=\"{}\"}} 0", side.as_str());
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
    }

    /// Sends `GET path` and reads the whole answer.
    async fn get_path(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer
    }

    #[tokio::test]
    async fn health_is_503_until_the_loop_turns_on_the_majority_side() {
        let (addr, metrics, _task) = start().await;
        let unhealthy = get_path(addr, "/health").await;
        assert!(
            unhealthy.starts_with("HTTP/1.1 503 Service Unavailable"),
            "{unhealthy}"
        );
        assert!(
            unhealthy.contains("Content-Type: application/json"),
            "{unhealthy}"
        );
        let status = NodeStatus {
            node_id: "n1".into(),
            cluster: "c".into(),
            fingerprint: String::new(),
            app_version: String::new(),
            alive: 1,
            roster: 1,
            quorum: true,
            partition: Partition::Majority,
            leader: None,
            epoch: 0,
            state: chorus_core::member::NodeState::Active,
            raft: Default::default(),
        };
        metrics.update_status(&status, false);
        metrics.tick(Duration::from_micros(10));
        let healthy = get_path(addr, "/health").await;
        assert!(healthy.starts_with("HTTP/1.1 200 OK"), "{healthy}");
        let body = healthy.split("\r\n\r\n").nth(1).unwrap_or_default();
        let report: serde_json::Value = serde_json::from_str(body).expect(body);
        assert_eq!(report["healthy"], true);
        assert_eq!(report["partition"], "majority");
        let missing = get_path(addr, "/nothing").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_beyond_the_limit_get_503_and_idle_ones_are_closed() {
        let (addr, metrics, _task) = start().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_METRICS_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The next scraper is turned away at once, with a reason.
        let started = tokio::time::Instant::now();
        let refused = get(TcpStream::connect(addr).await.unwrap()).await;
        assert!(
            refused.starts_with("HTTP/1.1 503 Service Unavailable"),
            "{refused}"
        );
        assert!(started.elapsed() < HTTP_REQUEST_TIMEOUT);
        assert!(metrics
            .render()
            .contains("chorus_local_connections_refused_total{listener=\"metrics\"} 1"));
        // The idle ones are closed after the timeout, and scrapes are served again.
        for mut stream in idle {
            let mut buf = [0u8; 16];
            let closed = tokio::time::timeout(HTTP_REQUEST_TIMEOUT * 2, stream.read(&mut buf))
                .await
                .expect("an idle connection is closed");
            assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        }
        let ok = get(TcpStream::connect(addr).await.unwrap()).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dribbled_byte_by_byte_is_cut_off_at_the_deadline() {
        let (addr, _metrics, _task) = start().await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let dribble = async {
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
                .iter()
                .cycle()
                .take(10_000)
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(HTTP_REQUEST_TIMEOUT * 3, dribble).await;
        let mut buf = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await;
        assert!(
            matches!(end, Ok(Ok(0)) | Ok(Err(_))),
            "still open after {:?}: {end:?}",
            started.elapsed()
        );
    }
}
