//! Plain chitchat: the unmodified crates.io release of 0.11.2 (chorus runs its own copy,
//! `vendor/chitchat`). `spawn_chitchat` with chitchat's own `UdpTransport` (wrapped to count
//! bytes and messages), its default failure detector and the same gossip interval. No keys but
//! the benchmark's value: what chitchat costs by itself.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chitchat_upstream::transport::{Socket, Transport, UdpTransport};
use chitchat_upstream::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage,
    FailureDetectorConfig, Serializable,
};
use tokio::task::JoinHandle;

use crate::measure;
use crate::scenario::{Cluster, NetTotals, Probe};

/// The key the value phase sets.
const VALUE_KEY: &str = "bench";

#[derive(Debug, Default)]
struct Counters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
}

/// chitchat's `UdpTransport` with counters (payload bytes, as chorus counts its own).
struct CountingTransport(Arc<Counters>);

struct CountingSocket {
    inner: Box<dyn Socket>,
    counters: Arc<Counters>,
}

#[async_trait]
impl Transport for CountingTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket {
            inner: UdpTransport.open(listen_addr).await?,
            counters: self.0.clone(),
        }))
    }
}

#[async_trait]
impl Socket for CountingSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let len = msg.serialized_len() as u64;
        self.inner.send(to, msg).await?;
        self.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        let (from, msg) = self.inner.recv().await?;
        let len = msg.serialized_len() as u64;
        self.counters
            .bytes_received
            .fetch_add(len, Ordering::Relaxed);
        self.counters
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        Ok((from, msg))
    }
}

pub struct PlainCluster {
    nodes: Vec<Option<ChitchatHandle>>,
    ids: Vec<ChitchatId>,
    counters: Arc<Counters>,
    failures: Arc<AtomicU64>,
    watchers: Vec<JoinHandle<()>>,
}

/// chitchat's configuration for node `i`: its defaults, with the benchmark's gossip interval.
fn config(i: usize, addrs: &[SocketAddr], gossip_interval: Duration) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("n{i:03}"), 0, addrs[i]),
        cluster_id: "bench".into(),
        gossip_interval,
        listen_addr: addrs[i],
        seed_nodes: measure::seeds_for(i, addrs)
            .iter()
            .map(ToString::to_string)
            .collect(),
        failure_detector_config: FailureDetectorConfig::default(),
        // What chitchat's own `ChitchatConfig::default()` (test-only in 0.11.2) uses.
        marked_for_deletion_grace_period: Duration::from_secs(15 * 60),
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}

impl PlainCluster {
    pub async fn start(n: usize, gossip_interval: Duration) -> anyhow::Result<PlainCluster> {
        let addrs = measure::free_addrs(n)?;
        let counters = Arc::new(Counters::default());
        let transport = CountingTransport(counters.clone());
        let mut nodes = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let launches = measure::Launches::over(gossip_interval, n);
        for i in 0..n {
            launches.turn(i).await;
            let config = config(i, &addrs, gossip_interval);
            ids.push(config.chitchat_id.clone());
            nodes.push(Some(spawn_chitchat(config, Vec::new(), &transport).await?));
        }
        Ok(PlainCluster {
            nodes,
            ids,
            counters,
            failures: Arc::new(AtomicU64::new(0)),
            watchers: Vec::new(),
        })
    }
}

impl Cluster for PlainCluster {
    fn size(&self) -> usize {
        self.nodes.len()
    }

    async fn check(&mut self, observers: &[usize], probe: &Probe) -> Vec<bool> {
        let n = self.nodes.len();
        let mut out = Vec::with_capacity(observers.len());
        for &o in observers {
            let Some(node) = &self.nodes[o] else {
                out.push(false);
                continue;
            };
            let chitchat = node.chitchat();
            let guard = chitchat.lock().await;
            out.push(match probe {
                Probe::AllAlive | Probe::AllUp => guard.live_nodes().count() == n,
                Probe::Dead(v) => !guard.live_nodes().any(|id| *id == self.ids[*v]),
                Probe::Value { origin, value } => {
                    guard
                        .node_state(&self.ids[*origin])
                        .and_then(|s| s.get(VALUE_KEY))
                        == Some(value.to_string().as_str())
                }
            });
        }
        out
    }

    async fn set_value(&mut self, origin: usize, value: u64) -> anyhow::Result<()> {
        let node = self.nodes[origin]
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("node {origin} is stopped"))?;
        node.chitchat()
            .lock()
            .await
            .self_node_state()
            .set(VALUE_KEY, value);
        Ok(())
    }

    async fn kill(&mut self, node: usize) {
        if let Some(handle) = self.nodes[node].take() {
            handle.abort();
        }
    }

    async fn net(&mut self) -> NetTotals {
        let c = &self.counters;
        NetTotals {
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            messages_received: c.messages_received.load(Ordering::Relaxed),
            connections_opened: 0,
            ..NetTotals::default()
        }
    }

    async fn watch_failures(&mut self) {
        self.failures.store(0, Ordering::Relaxed);
        for node in self.nodes.iter().flatten() {
            let mut watcher = node.chitchat().lock().await.live_nodes_watcher();
            let failures = self.failures.clone();
            self.watchers.push(tokio::spawn(async move {
                let mut live: BTreeSet<ChitchatId> = watcher.borrow().keys().cloned().collect();
                while watcher.changed().await.is_ok() {
                    let now: BTreeSet<ChitchatId> = watcher.borrow().keys().cloned().collect();
                    let lost = live.difference(&now).count() as u64;
                    failures.fetch_add(lost, Ordering::Relaxed);
                    live = now;
                }
            }));
        }
    }

    async fn failures(&mut self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    async fn shutdown(mut self) {
        for w in self.watchers.drain(..) {
            w.abort();
        }
        for node in self.nodes.iter_mut() {
            if let Some(handle) = node.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), handle.shutdown()).await;
            }
        }
    }
}
