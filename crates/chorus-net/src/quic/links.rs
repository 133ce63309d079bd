//! The registry of established connections, by peer gossip address.
//!
//! A peer address has at most two connections ([`MAX_CONNECTIONS_PER_PEER`]):
//! one we dialed and one the peer dialed (both sides may dial at once; either
//! carries traffic both ways). Each is registered with the node id its
//! certificate vouches for. A newer connection in the same role replaces the
//! older one, which the caller closes: the peer restarted, or is opening
//! connections to multiply its budget.
//!
//! An accepting side knows a peer's gossip address only from its hello, so
//! an accepted connection merely claims it, while a dialed one reached it.
//! Hence an accepted connection for an address held by a live connection of
//! another node id is refused, and a dialed connection replaces an accepted
//! one of another node id: a node cannot take over another's address.
//!
//! The socket holds at most [`MAX_CONNECTIONS`] in all; a connection that
//! passes the hello beyond that is closed at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use quinn::Connection;

use super::MAX_CONNECTIONS;

/// Connections one peer gossip address may hold: one dialed by each side.
pub const MAX_CONNECTIONS_PER_PEER: usize = 2;

/// Which end of a connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Dialer,
    Acceptor,
}

/// What the registry needs of a connection (a trait so that the rules can
/// be tested without a network).
pub(crate) trait Conn: Clone {
    /// Unique among the socket's connections.
    fn id(&self) -> usize;
    /// Not closed.
    fn is_live(&self) -> bool;
}

impl Conn for Connection {
    fn id(&self) -> usize {
        self.stable_id()
    }

    fn is_live(&self) -> bool {
        self.close_reason().is_none()
    }
}

/// One registered connection.
struct Link<C> {
    /// Registration order: the later live link is preferred for sending.
    seq: u64,
    /// The node id the peer's certificate vouches for.
    node_id: String,
    conn: C,
}

/// A peer address's connections.
struct PeerLinks<C> {
    dialed: Option<Link<C>>,
    accepted: Option<Link<C>>,
}

impl<C> Default for PeerLinks<C> {
    fn default() -> Self {
        Self {
            dialed: None,
            accepted: None,
        }
    }
}

impl<C: Conn> PeerLinks<C> {
    fn slot(&mut self, role: Role) -> &mut Option<Link<C>> {
        match role {
            Role::Dialer => &mut self.dialed,
            Role::Acceptor => &mut self.accepted,
        }
    }

    fn live(&self) -> impl Iterator<Item = &Link<C>> {
        [&self.dialed, &self.accepted]
            .into_iter()
            .flatten()
            .filter(|link| link.conn.is_live())
    }

    fn is_empty(&self) -> bool {
        self.dialed.is_none() && self.accepted.is_none()
    }
}

/// Why a connection was not registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The socket holds [`MAX_CONNECTIONS`].
    Full,
    /// A live connection of this other node id holds the address.
    Taken(String),
}

/// All established connections of a socket.
pub(crate) struct Links<C = Connection> {
    peers: HashMap<SocketAddr, PeerLinks<C>>,
    /// Registered connections (live or not yet forgotten).
    count: usize,
    /// Registration order, to prefer the later connection.
    next_seq: u64,
}

impl<C> Default for Links<C> {
    fn default() -> Self {
        Self {
            peers: HashMap::new(),
            count: 0,
            next_seq: 0,
        }
    }
}

impl<C: Conn> Links<C> {
    /// The connection to send to `addr` on: the later of the live ones.
    pub(crate) fn live(&self, addr: SocketAddr) -> Option<C> {
        let links = self.peers.get(&addr)?;
        links
            .live()
            .max_by_key(|link| link.seq)
            .map(|link| link.conn.clone())
    }

    /// Peers with at least one live connection.
    pub(crate) fn connected(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers
            .iter()
            .filter(|(_, links)| links.live().next().is_some())
            .map(|(addr, _)| *addr)
    }

    /// Registers `conn`, whose certificate vouches for `node_id`, as
    /// `addr`'s connection in `role`. Returns the connections it replaces,
    /// for the caller to close.
    pub(crate) fn insert(
        &mut self,
        addr: SocketAddr,
        role: Role,
        node_id: &str,
        conn: C,
    ) -> Result<Vec<C>, Refusal> {
        let links = self.peers.entry(addr).or_default();
        if role == Role::Acceptor {
            if let Some(other) = links.live().find(|link| link.node_id != node_id) {
                return Err(Refusal::Taken(other.node_id.clone()));
            }
        }
        let evicts_claim = role == Role::Dialer
            && links
                .accepted
                .as_ref()
                .is_some_and(|link| link.node_id != node_id);
        let replaces = links.slot(role).is_some();
        if !replaces && !evicts_claim && self.count >= MAX_CONNECTIONS {
            if links.is_empty() {
                self.peers.remove(&addr);
            }
            return Err(Refusal::Full);
        }
        let mut evicted = Vec::new();
        if evicts_claim {
            evicted.extend(links.accepted.take());
        }
        let link = Link {
            seq: self.next_seq,
            node_id: node_id.to_string(),
            conn,
        };
        self.next_seq = self.next_seq.saturating_add(1);
        evicted.extend(links.slot(role).replace(link));
        self.count = self.count.saturating_add(1).saturating_sub(evicted.len());
        Ok(evicted.into_iter().map(|link| link.conn).collect())
    }

    /// Forgets `conn` (closed) if it is still registered for `addr`.
    pub(crate) fn remove(&mut self, addr: SocketAddr, conn: &C) {
        let Some(links) = self.peers.get_mut(&addr) else {
            return;
        };
        for role in [Role::Dialer, Role::Acceptor] {
            let slot = links.slot(role);
            if slot
                .as_ref()
                .is_some_and(|link| link.conn.id() == conn.id())
            {
                *slot = None;
                self.count = self.count.saturating_sub(1);
            }
        }
        if links.is_empty() {
            self.peers.remove(&addr);
        }
    }

    /// Registered connections.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Addresses with a live connection, as a set.
    pub(crate) fn connected_set(&self) -> HashSet<SocketAddr> {
        self.connected().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[derive(Debug, Clone)]
    struct Fake {
        id: usize,
        closed: Arc<AtomicBool>,
    }

    impl Fake {
        fn new(id: usize) -> Self {
            Self {
                id,
                closed: Arc::default(),
            }
        }

        fn close(&self) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    impl PartialEq for Fake {
        fn eq(&self, other: &Self) -> bool {
            self.id == other.id
        }
    }

    impl Conn for Fake {
        fn id(&self) -> usize {
            self.id
        }

        fn is_live(&self) -> bool {
            !self.closed.load(Ordering::Relaxed)
        }
    }

    fn ids(conns: Vec<Fake>) -> Vec<usize> {
        conns.into_iter().map(|c| c.id).collect()
    }

    const A: &str = "a";
    const B: &str = "b";

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn one_connection_per_role_and_the_later_is_used() {
        let mut links = Links::default();
        let x = addr(1);
        assert!(ids(links.insert(x, Role::Dialer, A, Fake::new(1)).unwrap()).is_empty());
        assert!(ids(links.insert(x, Role::Acceptor, A, Fake::new(2)).unwrap()).is_empty());
        assert_eq!(links.live(x).unwrap().id, 2);
        // A newer accepted connection of the same node replaces the older.
        assert_eq!(
            ids(links.insert(x, Role::Acceptor, A, Fake::new(3)).unwrap()),
            [2]
        );
        assert_eq!(links.count(), MAX_CONNECTIONS_PER_PEER);
        assert_eq!(links.live(x).unwrap().id, 3);
        // A closed one is not used; forgetting it frees its place.
        let three = links.live(x).unwrap();
        three.close();
        assert_eq!(links.live(x).unwrap().id, 1);
        links.remove(x, &three);
        assert_eq!(links.count(), 1);
        links.remove(x, &Fake::new(99));
        assert_eq!(links.count(), 1);
        links.remove(x, &Fake::new(1));
        assert_eq!(links.count(), 0);
        assert!(links.connected_set().is_empty());
    }

    #[test]
    fn an_accepted_claim_cannot_take_another_nodes_address() {
        let mut links = Links::default();
        let x = addr(1);
        links.insert(x, Role::Acceptor, A, Fake::new(1)).unwrap();
        assert_eq!(
            links.insert(x, Role::Acceptor, B, Fake::new(2)),
            Err(Refusal::Taken(A.to_string()))
        );
        // Dialing the address proves who is there: the claim goes.
        assert_eq!(
            ids(links.insert(x, Role::Dialer, B, Fake::new(3)).unwrap()),
            [1]
        );
        assert_eq!(
            links.insert(x, Role::Acceptor, A, Fake::new(4)),
            Err(Refusal::Taken(B.to_string()))
        );
        assert_eq!(links.count(), 1);
        // Once the holder's connection is closed, another node may claim it.
        links.live(x).unwrap().close();
        assert!(links.insert(x, Role::Acceptor, A, Fake::new(5)).is_ok());
    }

    #[test]
    fn the_socket_holds_at_most_max_connections() {
        let mut links = Links::default();
        for i in 0..MAX_CONNECTIONS {
            let port = u16::try_from(i).unwrap();
            links
                .insert(addr(port), Role::Acceptor, A, Fake::new(i))
                .unwrap();
        }
        let extra = addr(u16::MAX);
        assert_eq!(
            links.insert(extra, Role::Acceptor, A, Fake::new(9_999)),
            Err(Refusal::Full)
        );
        assert_eq!(
            links.insert(extra, Role::Dialer, A, Fake::new(9_999)),
            Err(Refusal::Full)
        );
        assert!(links.live(extra).is_none());
        // Replacing is always possible.
        assert_eq!(
            ids(links
                .insert(addr(0), Role::Acceptor, A, Fake::new(10_000))
                .unwrap()),
            [0]
        );
        assert_eq!(links.count(), MAX_CONNECTIONS);
    }
}
