//! One node id, one live agent.
//!
//! A node id names one member. A second agent that starts with the id of a live member (a
//! copied config file, cloned VMs sharing a host name) must not become that member: every
//! agent that knows the live one refuses the claimant at its hello, and the claimant, told
//! why, stops. Only a live agent holds its id: a restart at the same address is the same
//! node (the old process is gone: the port was free), and so is a start at another address
//! once the old agent is dead or has left.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::member::{Member, NodeId, Status};

/// Where each live node id is held: every member shown `alive` (this node included). A
/// `suspect` member is not counted: its heartbeat has stopped, so it may be the one that
/// crashed and is now restarting elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders(BTreeMap<NodeId, SocketAddr>);

impl Holders {
    /// Only this node.
    pub fn only(self_id: &str, self_addr: SocketAddr) -> Holders {
        Holders(BTreeMap::from([(self_id.to_string(), self_addr)]))
    }

    /// The live members among `members`.
    pub fn of<'a>(members: impl Iterator<Item = &'a Member>) -> Holders {
        Holders(
            members
                .filter(|m| m.status == Status::Alive)
                .map(|m| (m.node_id.clone(), m.addr))
                .collect(),
        )
    }

    pub fn get(&self, node_id: &str) -> Option<SocketAddr> {
        self.0.get(node_id).copied()
    }

    /// Whether a peer may hold `node_id`, reached at `at`: `Err(reason)` when a live agent
    /// at another address holds it. The reason names that address
    /// ([`held_at_in_reason`] reads it back on the refused side).
    pub fn check_claim(&self, node_id: &str, at: SocketAddr) -> Result<(), String> {
        match self.get(node_id) {
            Some(held) if held != at => Err(format!(
                "node id {node_id:?} is held by a live agent at {held}; the agent at {at} \
                 must use another --node-id"
            )),
            _ => Ok(()),
        }
    }
}

/// The address a [`Holders::check_claim`] refusal names, if it is one.
pub fn held_at_in_reason(reason: &str) -> Option<SocketAddr> {
    let (_, rest) = reason.split_once("held by a live agent at ")?;
    let addr = rest.split([';', ' ']).next()?;
    addr.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn member(id: &str, port: u16, status: Status) -> Member {
        Member::unseen(id, addr(port), status, None)
    }

    #[test]
    fn a_live_id_claimed_from_another_address_is_a_conflict_naming_both() {
        let holders = Holders::of(
            [
                member("web1", 1, Status::Alive),
                member("web2", 2, Status::Suspect),
                member("web3", 3, Status::Dead),
                member("web4", 4, Status::Left),
            ]
            .iter(),
        );
        let reason = holders.check_claim("web1", addr(9)).unwrap_err();
        assert!(
            reason.contains("127.0.0.1:1") && reason.contains("127.0.0.1:9"),
            "{reason}"
        );
        assert_eq!(held_at_in_reason(&reason), Some(addr(1)));
        // The same address is a restart; a suspect, dead, left or unknown id is free.
        assert!(holders.check_claim("web1", addr(1)).is_ok());
        for id in ["web2", "web3", "web4", "web5"] {
            assert!(holders.check_claim(id, addr(9)).is_ok(), "{id}");
        }
    }

    #[test]
    fn this_node_holds_its_own_id() {
        let holders = Holders::only("me", addr(1));
        assert!(holders.check_claim("me", addr(2)).is_err());
        assert!(holders.check_claim("me", addr(1)).is_ok());
    }

    #[test]
    fn other_reasons_name_no_holder() {
        assert_eq!(held_at_in_reason("app version \"2\" (ours \"1\")"), None);
        assert_eq!(held_at_in_reason("held by a live agent at nowhere"), None);
    }
}
