//! [`FaultyTransport`]: network faults on demand, for tests.
//!
//! Wrap any chitchat [`Transport`] (typically chitchat's in-memory
//! `ChannelTransport`, see [`FaultyTransport::in_memory`]) and steer it with a
//! shared [`FaultController`]:
//!
//! - **partition**: named groups of addresses; messages between addresses of
//!   different groups are dropped (addresses in no group reach everyone);
//! - **isolate / rejoin**: cut one address off from everyone;
//! - **heal**: remove partitions and isolations;
//! - **drop rate**: drop a fraction of all messages, from a seeded RNG so a
//!   run is reproducible;
//! - **delay**: hold every message for a fixed duration (`tokio::time`, so a
//!   paused test clock drives it).
//!
//! Decisions are made when a message is sent, from (sender's listen address,
//! destination). Raft messages of the wrapped transport's
//! [`PeerChannel`](crate::PeerChannel) (QUIC, UDP or [`MemoryNet`](crate::MemoryNet);
//! chitchat's bare in-memory transport has none) go through the same decisions: a partition cuts Raft
//! as well as gossip, and a delayed Raft message is sent by a task of its own. A delayed message is delivered later even if a partition
//! appears meanwhile. Delayed messages are handed to the inner socket by the
//! wrapper's own `send`/`recv`, which chitchat calls continuously.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::ChitchatMessage;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, sleep_until, Instant};

use crate::peer::{PeerSink, PeerTransport};

/// What the controller has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Messages passed on (at once or after the delay).
    pub delivered: u64,
    /// Of those, messages that were held for the delay.
    pub delayed: u64,
    /// Messages dropped by a partition or an isolation.
    pub dropped_partition: u64,
    /// Messages dropped at random.
    pub dropped_random: u64,
}

#[derive(Debug)]
struct FaultState {
    groups: HashMap<SocketAddr, String>,
    isolated: HashSet<SocketAddr>,
    drop_rate: f64,
    delay: Duration,
    rng: StdRng,
    stats: FaultStats,
}

/// Fate of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Deliver,
    Delay(Duration),
    Drop,
}

/// Shared switchboard for [`FaultyTransport`]s. Clones control the same
/// faults. Starts with a healthy network.
#[derive(Debug, Clone)]
pub struct FaultController {
    state: Arc<Mutex<FaultState>>,
}

impl Default for FaultController {
    fn default() -> Self {
        Self::new(0)
    }
}

impl FaultController {
    /// A healthy network whose random drops follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(FaultState {
                groups: HashMap::new(),
                isolated: HashSet::new(),
                drop_rate: 0.0,
                delay: Duration::ZERO,
                rng: StdRng::seed_from_u64(seed),
                stats: FaultStats::default(),
            })),
        }
    }

    /// Replaces the partition: each `(name, addresses)` is a group; messages
    /// between different groups are dropped.
    pub fn partition<N, G>(&self, groups: impl IntoIterator<Item = (N, G)>)
    where
        N: Into<String>,
        G: IntoIterator<Item = SocketAddr>,
    {
        let mut state = self.state.lock();
        state.groups.clear();
        for (name, addrs) in groups {
            let name = name.into();
            for addr in addrs {
                state.groups.insert(addr, name.clone());
            }
        }
    }

    /// The group `addr` is in, if any.
    pub fn group_of(&self, addr: SocketAddr) -> Option<String> {
        self.state.lock().groups.get(&addr).cloned()
    }

    /// Cuts `addr` off: nothing from or to it gets through.
    pub fn isolate(&self, addr: SocketAddr) {
        self.state.lock().isolated.insert(addr);
    }

    /// Undoes [`FaultController::isolate`] for `addr`.
    pub fn rejoin(&self, addr: SocketAddr) {
        self.state.lock().isolated.remove(&addr);
    }

    /// Removes all partitions and isolations (drop rate and delay stay).
    pub fn heal(&self) {
        let mut state = self.state.lock();
        state.groups.clear();
        state.isolated.clear();
    }

    /// Drops each message with probability `rate` (clamped to 0..=1).
    pub fn set_drop_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.state.lock().drop_rate = rate;
    }

    /// Holds every message for `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Back to a healthy network: heal, no drops, no delay.
    pub fn reset(&self) {
        self.heal();
        self.set_drop_rate(0.0);
        self.set_delay(Duration::ZERO);
    }

    /// Whether partitions and isolations let `from` reach `to` (ignores
    /// random drops).
    pub fn can_reach(&self, from: SocketAddr, to: SocketAddr) -> bool {
        reachable(&self.state.lock(), from, to)
    }

    /// What happened so far.
    pub fn stats(&self) -> FaultStats {
        self.state.lock().stats
    }

    fn decide(&self, from: SocketAddr, to: SocketAddr) -> Verdict {
        let mut state = self.state.lock();
        if !reachable(&state, from, to) {
            state.stats.dropped_partition += 1;
            return Verdict::Drop;
        }
        let rate = state.drop_rate;
        if rate > 0.0 && state.rng.gen_bool(rate) {
            state.stats.dropped_random += 1;
            return Verdict::Drop;
        }
        state.stats.delivered += 1;
        if state.delay.is_zero() {
            Verdict::Deliver
        } else {
            state.stats.delayed += 1;
            Verdict::Delay(state.delay)
        }
    }
}

fn reachable(state: &FaultState, from: SocketAddr, to: SocketAddr) -> bool {
    if state.isolated.contains(&from) || state.isolated.contains(&to) {
        return false;
    }
    match (state.groups.get(&from), state.groups.get(&to)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// A [`Transport`] whose sends go through a [`FaultController`].
#[derive(Debug, Clone)]
pub struct FaultyTransport<T = ChannelTransport> {
    inner: T,
    controller: FaultController,
}

impl FaultyTransport<ChannelTransport> {
    /// chitchat's in-memory transport, with faults.
    pub fn in_memory(controller: FaultController) -> Self {
        Self::new(ChannelTransport::default(), controller)
    }
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, controller: FaultController) -> Self {
        Self { inner, controller }
    }

    /// The controller steering this transport.
    pub fn controller(&self) -> &FaultController {
        &self.controller
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: PeerTransport> PeerTransport for FaultyTransport<T> {
    /// The wrapped transport's channel, whose sends the faults apply to.
    fn peer_channel(&self) -> Option<&crate::PeerChannel> {
        self.inner.peer_channel()
    }
}

/// Raft sends of one socket, through the controller.
struct FaultySink {
    addr: SocketAddr,
    controller: FaultController,
    inner: Arc<dyn PeerSink>,
}

impl PeerSink for FaultySink {
    fn send(&self, to: SocketAddr, bytes: Vec<u8>) {
        match self.controller.decide(self.addr, to) {
            Verdict::Drop => {}
            Verdict::Deliver => self.inner.send(to, bytes),
            Verdict::Delay(delay) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let inner = self.inner.clone();
                    runtime.spawn(async move {
                        sleep(delay).await;
                        inner.send(to, bytes);
                    });
                }
                // No runtime to wait on: late is better than lost.
                Err(_) => self.inner.send(to, bytes),
            },
        }
    }
}

#[async_trait]
impl<T: Transport + PeerTransport> Transport for FaultyTransport<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        if let Some(channel) = self.inner.peer_channel() {
            // The socket just opened registered its sink: put the faults in front.
            channel.wrap(|sink| {
                Arc::new(FaultySink {
                    addr: listen_addr,
                    controller: self.controller.clone(),
                    inner: sink,
                })
            });
        }
        Ok(Box::new(FaultySocket {
            addr: listen_addr,
            inner,
            controller: self.controller.clone(),
            held: BinaryHeap::new(),
            seq: 0,
        }))
    }
}

/// A message waiting out its delay.
struct Held {
    due: Instant,
    seq: u64,
    to: SocketAddr,
    message: ChitchatMessage,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Reversed: the max-heap's top is the earliest due (then oldest) message.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct FaultySocket {
    addr: SocketAddr,
    inner: Box<dyn Socket>,
    controller: FaultController,
    held: BinaryHeap<Held>,
    seq: u64,
}

impl FaultySocket {
    /// Sends every held message whose delay is over.
    async fn release_due(&mut self) {
        let now = Instant::now();
        while self.held.peek().is_some_and(|held| held.due <= now) {
            let held = self.held.pop().expect("peeked");
            let _ = self.inner.send(held.to, held.message).await;
        }
    }
}

#[async_trait]
impl Socket for FaultySocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.release_due().await;
        match self.controller.decide(self.addr, to) {
            Verdict::Drop => Ok(()),
            Verdict::Deliver => self.inner.send(to, message).await,
            Verdict::Delay(delay) => {
                self.seq += 1;
                self.held.push(Held {
                    due: Instant::now() + delay,
                    seq: self.seq,
                    to,
                    message,
                });
                Ok(())
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            self.release_due().await;
            let Some(due) = self.held.peek().map(|held| held.due) else {
                return self.inner.recv().await;
            };
            tokio::select! {
                received = self.inner.recv() => return received,
                _ = sleep_until(due) => {}
            }
        }
    }

    fn connected_peers(&self) -> Option<HashSet<SocketAddr>> {
        self.inner.connected_peers()
    }
}
