//! foca 2, a SWIM implementation: one task per node drives the sans-I/O `Foca` state machine
//! over a plain tokio UDP socket, with its own timer queue. Configuration:
//! `Config::new_lan(N)` (foca's LAN profile, derived from memberlist: 1 s probe period,
//! suspicion 4 x log10(N) probe periods, periodic gossip to 3 members every 200 ms).
//! The value phase uses foca's custom broadcasts. Packets are encoded with bincode 2 (standard
//! config) through foca's serde derives, as foca 1's removed `BincodeCodec` did.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{
    BroadcastHandler, Codec, Config, Foca, Header, Invalidates, Member, Notification, Runtime,
    Timer,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::measure;
use crate::scenario::{Cluster, NetTotals, Probe};

/// Largest datagram read; foca's packets are at most `max_packet_size` (1400).
const RECV_BUFFER: usize = 2048;
/// A node that has not joined yet announces itself again this often.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// A node: its address plus a counter bumped on rejoin (as in foca's UDP example), so a node
/// wrongly declared down comes back under a new identity instead of staying defunct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    addr: SocketAddr,
    bump: u64,
}

impl foca::Identity for Id {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Id {
            addr: self.addr,
            bump: self.bump.wrapping_add(1),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// foca's wire format: bincode 2 with the standard config over foca's serde derives, written
/// to and read from foca's buffers as foca 1's `BincodeCodec` did (foca 2 dropped it). When an
/// item does not fit, the write fails part way and foca truncates the packet back itself.
#[derive(Debug, Clone, Copy, Default)]
struct Bincode;

#[derive(Debug)]
enum CodecError {
    Encode(bincode::error::EncodeError),
    Decode(bincode::error::DecodeError),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Encode(e) => write!(f, "bincode encode: {e}"),
            CodecError::Decode(e) => write!(f, "bincode decode: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl Bincode {
    fn encode<T: Serialize>(item: &T, buf: impl BufMut) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(item, &mut buf.writer(), bincode::config::standard())
            .map(|_| ())
            .map_err(CodecError::Encode)
    }

    fn decode<T: for<'de> Deserialize<'de>>(buf: impl Buf) -> Result<T, CodecError> {
        bincode::serde::decode_from_std_read(&mut buf.reader(), bincode::config::standard())
            .map_err(CodecError::Decode)
    }
}

impl Codec<Id> for Bincode {
    type Error = CodecError;

    fn encode_header(&mut self, header: &Header<Id>, buf: impl BufMut) -> Result<(), CodecError> {
        Bincode::encode(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<Id>, CodecError> {
        Bincode::decode(buf)
    }

    fn encode_member(&mut self, member: &Member<Id>, buf: impl BufMut) -> Result<(), CodecError> {
        Bincode::encode(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<Id>, CodecError> {
        Bincode::decode(buf)
    }
}

/// What one node knows, shared with the benchmark.
#[derive(Debug, Default)]
struct View {
    up: HashSet<SocketAddr>,
    down: HashSet<SocketAddr>,
    /// MemberDown notifications so far.
    downs: u64,
    active: bool,
    /// origin node index -> (version, value)
    values: HashMap<u16, (u64, u64)>,
}

type Shared = Arc<Mutex<View>>;

fn lock(view: &Shared) -> MutexGuard<'_, View> {
    view.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Counters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
}

/// The custom broadcast: origin (u16), version (u64), value (u64), big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ValueKey {
    origin: u16,
    version: u64,
}

impl Invalidates for ValueKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.origin == other.origin && self.version > other.version
    }
}

fn encode_value(origin: u16, version: u64, value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
    out
}

#[derive(Debug)]
struct BadBroadcast;

impl std::fmt::Display for BadBroadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed value broadcast")
    }
}

impl std::error::Error for BadBroadcast {}

struct Values(Shared);

impl BroadcastHandler<Id> for Values {
    type Key = ValueKey;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Id>,
    ) -> Result<Option<ValueKey>, BadBroadcast> {
        let field = |r: std::ops::Range<usize>| data.get(r).ok_or(BadBroadcast);
        let origin = u16::from_be_bytes(field(0..2)?.try_into().map_err(|_| BadBroadcast)?);
        let version = u64::from_be_bytes(field(2..10)?.try_into().map_err(|_| BadBroadcast)?);
        let value = u64::from_be_bytes(field(10..18)?.try_into().map_err(|_| BadBroadcast)?);
        let mut view = lock(&self.0);
        if view.values.get(&origin).is_some_and(|(v, _)| *v >= version) {
            return Ok(None);
        }
        view.values.insert(origin, (version, value));
        Ok(Some(ValueKey { origin, version }))
    }
}

/// Timers in deadline order (ties in submission order).
#[derive(Default)]
struct Timers {
    queue: BinaryHeap<Reverse<(Instant, u64, Timer<Id>)>>,
    seq: u64,
}

impl Timers {
    fn next_deadline(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer<Id>> {
        if self.next_deadline()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse((_, _, t))| t)
    }
}

/// foca's window on the world for one call: sends go straight to the socket (never
/// blocking), timers into the queue, notifications into the shared view.
struct Io<'a> {
    socket: &'a UdpSocket,
    timers: &'a mut Timers,
    view: &'a Shared,
    counters: &'a Counters,
}

impl Runtime<Id> for Io<'_> {
    fn notify(&mut self, notification: Notification<'_, Id>) {
        let mut view = lock(self.view);
        match notification {
            Notification::MemberUp(id) => {
                view.up.insert(id.addr);
                view.down.remove(&id.addr);
            }
            Notification::MemberDown(id) => {
                view.up.remove(&id.addr);
                view.down.insert(id.addr);
                view.downs += 1;
            }
            Notification::Active => view.active = true,
            Notification::Idle | Notification::Defunct => view.active = false,
            _ => {}
        }
    }

    fn send_to(&mut self, to: Id, data: &[u8]) {
        if self.socket.try_send_to(data, to.addr).is_ok() {
            self.counters
                .bytes_sent
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn submit_after(&mut self, event: Timer<Id>, after: Duration) {
        self.timers.seq += 1;
        self.timers
            .queue
            .push(Reverse((Instant::now() + after, self.timers.seq, event)));
    }
}

enum Command {
    Broadcast(Vec<u8>),
}

struct Node {
    addr: SocketAddr,
    view: Shared,
    commands: mpsc::Sender<Command>,
    task: Option<JoinHandle<()>>,
}

pub struct SwimCluster {
    nodes: Vec<Node>,
    counters: Arc<Counters>,
    /// MemberDown notifications counted before the steady window.
    downs_before: u64,
    value_version: u64,
}

impl SwimCluster {
    pub async fn start(n: usize) -> anyhow::Result<SwimCluster> {
        let addrs = measure::free_addrs(n)?;
        let counters = Arc::new(Counters::default());
        let size = NonZeroU32::new(n.try_into()?).ok_or_else(|| anyhow::anyhow!("no nodes"))?;
        let mut nodes = Vec::with_capacity(n);
        let config = Config::new_lan(size);
        let launches = measure::Launches::over(config.probe_period, n);
        for (i, addr) in addrs.iter().enumerate() {
            launches.turn(i).await;
            let socket = UdpSocket::bind(addr).await?;
            let view = Shared::default();
            let (commands, rx) = mpsc::channel(16);
            let foca = Foca::with_custom_broadcast(
                Id {
                    addr: *addr,
                    bump: 0,
                },
                config.clone(),
                SmallRng::seed_from_u64(i as u64 + 1),
                Bincode,
                Values(view.clone()),
            );
            let seeds = measure::seeds_for(i, &addrs);
            let task = tokio::spawn(run_node(
                foca,
                socket,
                seeds,
                view.clone(),
                counters.clone(),
                rx,
            ));
            nodes.push(Node {
                addr: *addr,
                view,
                commands,
                task: Some(task),
            });
        }
        Ok(SwimCluster {
            nodes,
            counters,
            downs_before: 0,
            value_version: 0,
        })
    }

    fn downs(&self) -> u64 {
        self.nodes.iter().map(|n| lock(&n.view).downs).sum()
    }
}

type SwimFoca = Foca<Id, Bincode, SmallRng, Values>;

async fn run_node(
    mut foca: SwimFoca,
    socket: UdpSocket,
    seeds: Vec<SocketAddr>,
    view: Shared,
    counters: Arc<Counters>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut timers = Timers::default();
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut reannounce = tokio::time::interval(REANNOUNCE_EVERY);
    loop {
        let next_timer = timers.next_deadline();
        let sleep = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now));
        let mut io = Io {
            socket: &socket,
            timers: &mut timers,
            view: &view,
            counters: &counters,
        };
        // Errors are foca refusing one packet or event (as its example does, they are ignored).
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((len, _)) = received {
                    counters.bytes_received.fetch_add(len as u64, Ordering::Relaxed);
                    counters.messages_received.fetch_add(1, Ordering::Relaxed);
                    let _ = foca.handle_data(&buf[..len], &mut io);
                }
            }
            _ = sleep, if next_timer.is_some() => {
                let now = Instant::now();
                while let Some(timer) = io.timers.pop_due(now) {
                    let _ = foca.handle_timer(timer, &mut io);
                }
            }
            _ = reannounce.tick() => {
                if !lock(&view).active {
                    for seed in &seeds {
                        let _ = foca.announce(Id { addr: *seed, bump: 0 }, &mut io);
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Command::Broadcast(data)) => {
                    let _ = foca.add_broadcast(&data);
                }
                None => return,
            },
        }
    }
}

impl Cluster for SwimCluster {
    fn size(&self) -> usize {
        self.nodes.len()
    }

    async fn check(&mut self, observers: &[usize], probe: &Probe) -> Vec<bool> {
        let n = self.nodes.len();
        observers
            .iter()
            .map(|&o| {
                let node = &self.nodes[o];
                if node.task.is_none() {
                    return false;
                }
                let view = lock(&node.view);
                match probe {
                    // foca lists the others, not itself.
                    Probe::AllAlive | Probe::AllUp => view.up.len() == n - 1,
                    Probe::Dead(v) => view.down.contains(&self.nodes[*v].addr),
                    Probe::Value { origin, value } => view
                        .values
                        .get(&(*origin as u16))
                        .is_some_and(|(_, v)| v == value),
                }
            })
            .collect()
    }

    async fn set_value(&mut self, origin: usize, value: u64) -> anyhow::Result<()> {
        self.value_version += 1;
        let data = encode_value(origin.try_into()?, self.value_version, value);
        self.nodes[origin]
            .commands
            .send(Command::Broadcast(data))
            .await
            .map_err(|_| anyhow::anyhow!("node {origin} is stopped"))
    }

    async fn kill(&mut self, node: usize) {
        if let Some(task) = self.nodes[node].task.take() {
            task.abort();
            let _ = task.await;
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
        self.downs_before = self.downs();
    }

    async fn failures(&mut self) -> u64 {
        self.downs().saturating_sub(self.downs_before)
    }

    async fn shutdown(mut self) {
        for node in &mut self.nodes {
            if let Some(task) = node.task.take() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16, bump: u64) -> Id {
        Id {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bump,
        }
    }

    #[test]
    fn the_codec_reads_back_what_it_writes_one_item_at_a_time() {
        let header = Header {
            src: id(7001, 2),
            src_incarnation: 3,
            dst: id(7002, 0),
            message: foca::Message::PingReq {
                target: id(7003, 1),
                probe_number: 9,
            },
        };
        let members = [Member::alive(id(7004, 0)), Member::down(id(7005, 5))];
        let mut buf = Vec::new();
        Bincode.encode_header(&header, &mut buf).unwrap();
        for member in &members {
            Bincode.encode_member(member, &mut buf).unwrap();
        }
        let mut data = &buf[..];
        assert_eq!(Bincode.decode_header(&mut data).unwrap(), header);
        for member in &members {
            assert_eq!(&Bincode.decode_member(&mut data).unwrap(), member);
        }
        assert!(data.is_empty());

        let mut small = [0u8; 4];
        assert!(Bincode.encode_header(&header, &mut small[..]).is_err());
        assert!(Bincode.decode_header(&buf[..4]).is_err());
    }

    #[test]
    fn value_broadcasts_are_kept_once_and_newer_ones_replace_them() {
        let view = Shared::default();
        let mut values = Values(view.clone());
        let key = values.receive_item(&encode_value(3, 1, 42), None).unwrap();
        assert_eq!(
            key,
            Some(ValueKey {
                origin: 3,
                version: 1
            })
        );
        assert_eq!(
            values.receive_item(&encode_value(3, 1, 42), None).unwrap(),
            None
        );
        let newer = values
            .receive_item(&encode_value(3, 2, 7), None)
            .unwrap()
            .unwrap();
        assert!(newer.invalidates(&ValueKey {
            origin: 3,
            version: 1
        }));
        assert_eq!(lock(&view).values.get(&3), Some(&(2, 7)));
        assert!(values.receive_item(&[1, 2, 3], None).is_err());
    }
}
