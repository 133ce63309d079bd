//! [`MemoryNet`]: chitchat's in-memory transport with an in-memory network
//! for [`PeerChannel`]s, so that in-process tests carry Raft without
//! sockets. Wrap each node's [`MemoryTransport`] in a
//! [`FaultyTransport`](crate::FaultyTransport) and its partitions, drops and
//! delays apply to Raft as to gossip.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::ChitchatMessage;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::debug;

use crate::counters::NetCounters;
use crate::peer::{PeerChannel, PeerMessage, PeerSink, PeerTransport, Registration};

/// A node reachable on the in-memory network.
struct Reachable {
    node_id: Option<String>,
    channel: PeerChannel,
    /// Which open socket put it there, so a replaced socket does not
    /// remove its successor.
    socket: u64,
}

#[derive(Default)]
struct Nodes {
    by_addr: HashMap<SocketAddr, Reachable>,
    sockets: u64,
}

/// One in-memory network: chitchat's channel transport for gossip, and the
/// open sockets' peer channels by gossip address for Raft. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryNet {
    chitchat: ChannelTransport,
    nodes: Arc<Mutex<Nodes>>,
}

impl MemoryNet {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport for one node, whose Raft messages say they come from
    /// `node_id`, and the receiver of the Raft messages sent to it.
    pub fn node(
        &self,
        node_id: Option<String>,
        counters: NetCounters,
    ) -> (MemoryTransport, mpsc::Receiver<PeerMessage>) {
        let (channel, messages) = PeerChannel::new(counters);
        let transport = MemoryTransport {
            net: self.clone(),
            node_id,
            channel,
        };
        (transport, messages)
    }
}

/// One node's transport on a [`MemoryNet`]: chitchat's in-memory gossip and
/// a [`PeerChannel`] whose messages reach the nodes open on the network.
#[derive(Clone)]
pub struct MemoryTransport {
    net: MemoryNet,
    node_id: Option<String>,
    channel: PeerChannel,
}

impl PeerTransport for MemoryTransport {
    fn peer_channel(&self) -> Option<&PeerChannel> {
        Some(&self.channel)
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.net.chitchat.open(listen_addr).await?;
        let socket = {
            let mut nodes = self.net.nodes.lock();
            nodes.sockets = nodes.sockets.wrapping_add(1);
            let socket = nodes.sockets;
            nodes.by_addr.insert(
                listen_addr,
                Reachable {
                    node_id: self.node_id.clone(),
                    channel: self.channel.clone(),
                    socket,
                },
            );
            socket
        };
        let registration = self.channel.attach(Arc::new(MemorySink {
            from: listen_addr,
            nodes: Arc::downgrade(&self.net.nodes),
            counters: self.channel.counters().clone(),
        }));
        Ok(Box::new(MemorySocket {
            inner,
            addr: listen_addr,
            socket,
            nodes: self.net.nodes.clone(),
            _registration: registration,
        }))
    }
}

/// Delivers a node's Raft messages straight to the receiving node's channel.
struct MemorySink {
    from: SocketAddr,
    nodes: Weak<Mutex<Nodes>>,
    counters: NetCounters,
}

impl PeerSink for MemorySink {
    fn send(&self, to: SocketAddr, bytes: Vec<u8>) {
        let Some(nodes) = self.nodes.upgrade() else {
            self.counters.raft_dropped();
            return;
        };
        let (from_node, target) = {
            let nodes = nodes.lock();
            let from_node = nodes
                .by_addr
                .get(&self.from)
                .and_then(|sender| sender.node_id.clone());
            let target = nodes.by_addr.get(&to).map(|node| node.channel.clone());
            (from_node, target)
        };
        let Some(target) = target else {
            debug!(peer=%to, "no node open there: Raft message dropped");
            self.counters.raft_dropped();
            return;
        };
        let len = bytes.len();
        target.deliver(PeerMessage::new(from_node, self.from, bytes));
        target.counters().raft_received_bytes(len);
        self.counters.raft_sent(len);
    }
}

/// chitchat's in-memory socket, and the node's place on the network.
struct MemorySocket {
    inner: Box<dyn Socket>,
    addr: SocketAddr,
    socket: u64,
    nodes: Arc<Mutex<Nodes>>,
    _registration: Registration,
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        let mut nodes = self.nodes.lock();
        if nodes
            .by_addr
            .get(&self.addr)
            .is_some_and(|node| node.socket == self.socket)
        {
            nodes.by_addr.remove(&self.addr);
        }
    }
}

#[async_trait]
impl Socket for MemorySocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.inner.send(to, message).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inner.recv().await
    }

    fn connected_peers(&self) -> Option<HashSet<SocketAddr>> {
        self.inner.connected_peers()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;
    use crate::{FaultController, FaultyTransport};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn raft_crosses_the_memory_net_unless_partitioned() {
        let net = MemoryNet::new();
        let controller = FaultController::new(1);
        let (a, _to_a) = net.node(Some("a".into()), NetCounters::new());
        let a = FaultyTransport::new(a, controller.clone());
        let (b, mut to_b) = net.node(Some("b".into()), NetCounters::new());
        let _socket_a = a.open(addr(1)).await.unwrap();
        let socket_b = b.open(addr(2)).await.unwrap();
        let raft_a = a.peer_channel().unwrap().clone();

        raft_a.send(addr(2), b"hi".to_vec());
        let message = timeout(Duration::from_secs(5), to_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (message.from_node.as_deref(), message.from_addr),
            (Some("a"), addr(1))
        );
        assert_eq!(message.bytes, b"hi");

        controller.isolate(addr(2));
        raft_a.send(addr(2), b"cut".to_vec());
        assert_eq!(controller.stats().dropped_partition, 1);
        controller.heal();

        // A node that closed its socket is unreachable.
        drop(socket_b);
        raft_a.send(addr(2), b"gone".to_vec());
        assert_eq!(raft_a.counters().snapshot().raft_dropped, 1);
        assert!(to_b.try_recv().is_err());
    }
}
