//! Hostile peers against real agents (issue 14): a test peer speaks the real gossip wire
//! (chitchat's messages, written with chorus-net's `wire` encoder) and sends each attack to
//! running `chorus agent --transport udp` processes, which anybody on the network can reach.
//! Every agent must stay up, membership stay correct, and the victim stay heard.
//!
//! Layout: one `async fn` test per attack; the helpers below it build messages
//! ([`plain`]), send them and read replies ([`HostilePeer`]), and start and check agents
//! ([`UdpCluster`]).

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::ChitchatId;
use serde::Deserialize;

use crate::support::bin::{chorus, describe, KeyFile, ProcAgent};
use crate::support::{wait_until, GOSSIP_INTERVAL, SLOW};

/// The issue's crash: a SynAck whose delta sets the key "é" (first character two bytes
/// long) on a node "evil". Sent as the issue's script sends it, then with evil's heartbeat
/// moving, so that evil is seen live and its key reaches the key listeners too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_multibyte_first_character_crashes_no_agent() {
    let mut cluster = UdpCluster::start("hostile-key", 3).await;
    let peer = HostilePeer::bind().await;

    let mut pace = tokio::time::interval(GOSSIP_INTERVAL);
    for _ in 0..5 {
        pace.tick().await;
        for addr in cluster.addrs() {
            peer.send_bytes(addr, &plain::issue_14_datagram()).await;
        }
    }
    // 20 rounds of moving heartbeats: more than the three digests that make a node live.
    for heartbeat in 1..=20 {
        pace.tick().await;
        let syn_ack = plain::syn_ack(
            &[plain::Entry::new(plain::evil(), heartbeat)],
            &[(plain::evil(), vec![("é", "x"), ("\u{1F600}", "y")])],
        );
        for addr in cluster.addrs() {
            peer.send(addr, &syn_ack).await;
        }
    }

    cluster.wait_membership_correct().await;
    // Evil is seen live by now; for a few more rounds, nothing changes.
    cluster.hold_membership_correct(GOSSIP_INTERVAL * 10).await;
}

/// The issue's mute: Syns listing 1,300 made-up nodes grew the victim's own digest past a
/// datagram, and peers saw it dead for minutes. Here fakes come in digests (the issue's two
/// Syns, then a sustained flood) and in deltas with keys; the victim's digest keeps its three
/// real nodes, the fakes reach no other node, and the others keep seeing the victim alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fake_nodes_mutes_no_agent_and_spreads_nowhere() {
    let mut cluster = UdpCluster::start("hostile-flood", 3).await;
    let peer = HostilePeer::bind().await;
    let victim = cluster.agents[0].addr;
    let real: Vec<String> = cluster.node_ids();

    let fakes_in_digests = plain::fake_entries(0, 1_300);
    let fakes_in_deltas: Vec<(ChitchatId, Vec<(&str, &str)>)> = plain::fake_entries(5_000, 300)
        .into_iter()
        .map(|entry| (entry.id, vec![("fp", "f00d"), ("tag:zone", "x")]))
        .collect();
    let mut pace = tokio::time::interval(GOSSIP_INTERVAL / 3);
    // The issue's two Syns, then 60 more messages over about three seconds. A fake's
    // heartbeat moves once at most (1, then 2): it is never seen live.
    for round in 0..62u64 {
        pace.tick().await;
        let heartbeat = 1 + round % 2;
        let digest: Vec<plain::Entry> = fakes_in_digests
            .iter()
            .map(|entry| plain::Entry::new(entry.id.clone(), heartbeat))
            .collect();
        peer.send(victim, &plain::syn(&cluster.name, &digest)).await;
        if round >= 2 {
            peer.send(victim, &plain::syn_ack(&[], &fakes_in_deltas))
                .await;
        }
        if round % 10 == 0 {
            cluster.assert_all_running();
            // The victim's own digest lists the real nodes only: the bound holds mid-flood.
            let digest = peer.digest_of(victim, &cluster.name).await;
            assert_eq!(digest.unwrap(), real, "the victim's digest, mid-flood");
        }
    }

    cluster.assert_all_running();
    for agent in &cluster.agents {
        let digest = peer.digest_of(agent.addr, &cluster.name).await;
        assert_eq!(
            digest.unwrap(),
            real,
            "{}'s digest after the flood",
            agent.node_id
        );
    }
    // Not muted: the others see the victim alive (its heartbeat moves), and nobody lists a
    // fake; so it stays past the deadline of unconfirmed nodes (20 rounds).
    cluster.wait_membership_correct().await;
    cluster.hold_membership_correct(GOSSIP_INTERVAL * 25).await;
    for agent in &cluster.agents {
        let digest = peer.digest_of(agent.addr, &cluster.name).await;
        assert_eq!(
            digest.unwrap(),
            real,
            "{}'s digest at the end",
            agent.node_id
        );
    }
}

// ----- agents -----

/// `chorus members --json`, the fields these tests read.
#[derive(Debug, Deserialize)]
struct MemberRow {
    node_id: String,
    status: String,
}

/// `chorus status --json`, the fields these tests read.
#[derive(Debug, Deserialize)]
struct StatusReport {
    alive: usize,
    roster: usize,
}

/// Real `chorus agent --transport udp` processes `n1`..`nN` on loopback, seeded with `n1`.
struct UdpCluster {
    name: String,
    agents: Vec<ProcAgent>,
    _key: KeyFile,
}

impl UdpCluster {
    /// Starts the agents and waits until each sees all of them alive.
    async fn start(name: &str, size: usize) -> UdpCluster {
        let key = KeyFile::keygen(name);
        let mut agents: Vec<ProcAgent> = Vec::new();
        for i in 1..=size {
            let seeds: Vec<SocketAddr> = agents.first().map(|a| a.addr).into_iter().collect();
            let node_id = format!("n{i}");
            let extra = ["--transport", "udp"];
            agents.push(ProcAgent::spawn(&node_id, name, &key, &seeds, &extra));
        }
        let cluster = UdpCluster {
            name: name.to_string(),
            agents,
            _key: key,
        };
        cluster.wait_membership_correct().await;
        cluster
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.agents.iter().map(|a| a.addr).collect()
    }

    /// The real node ids, sorted.
    fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.agents.iter().map(|a| a.node_id.clone()).collect();
        ids.sort();
        ids
    }

    /// Fails the test if an agent exited.
    fn assert_all_running(&mut self) {
        for agent in &mut self.agents {
            if let Some(status) = agent.process.exited() {
                panic!(
                    "{} exited ({status}):\n{}",
                    agent.node_id,
                    agent.process.log()
                );
            }
        }
    }

    /// Whether every agent lists exactly the real nodes, all alive, and counts them all alive
    /// and in its roster.
    async fn membership(&self) -> Result<(), String> {
        let real = self.node_ids();
        for agent in &self.agents {
            let rows: Vec<MemberRow> = query(agent, "members").await?;
            let mut seen: Vec<String> = rows.iter().map(|r| r.node_id.clone()).collect();
            seen.sort();
            if seen != real || rows.iter().any(|r| r.status != "alive") {
                return Err(format!("{} lists {rows:?}", agent.node_id));
            }
            let status: StatusReport = query(agent, "status").await?;
            if status.alive != real.len() || status.roster != real.len() {
                return Err(format!("{} status {status:?}", agent.node_id));
            }
        }
        Ok(())
    }

    /// Waits until the membership is correct ([`UdpCluster::membership`]).
    async fn wait_membership_correct(&self) {
        let what = format!("every agent sees exactly {:?}, all alive", self.node_ids());
        wait_until(&what, SLOW, || self.membership()).await;
    }

    /// Checks the membership again and again for `period`: it must stay correct, and every
    /// agent up.
    async fn hold_membership_correct(&mut self, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        let mut checks = 0;
        while tokio::time::Instant::now() < until || checks == 0 {
            self.assert_all_running();
            if let Err(seen) = self.membership().await {
                panic!("the membership broke after {checks} good checks: {seen}");
            }
            checks += 1;
        }
        self.assert_all_running();
    }
}

/// `chorus COMMAND --json` on `agent`'s socket, parsed.
async fn query<T: for<'de> Deserialize<'de>>(
    agent: &ProcAgent,
    command: &str,
) -> Result<T, String> {
    let out = chorus(&[command, "--json", "--socket", agent.socket_arg()]).await;
    if !out.status.success() {
        return Err(describe(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", describe(&out)))
}

// ----- the hostile peer -----

/// How long [`HostilePeer::digest_of`] waits for a SynAck.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// A UDP socket speaking the agents' gossip wire.
struct HostilePeer {
    socket: tokio::net::UdpSocket,
}

impl HostilePeer {
    async fn bind() -> HostilePeer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback UDP socket");
        HostilePeer { socket }
    }

    async fn send_bytes(&self, to: SocketAddr, bytes: &[u8]) {
        assert!(
            bytes.len() <= chorus_net::MAX_UDP_PAYLOAD,
            "{} bytes",
            bytes.len()
        );
        self.socket
            .send_to(bytes, to)
            .await
            .expect("send a datagram");
    }

    /// Sends `message` in chorus's wire form (chorus-net's encoder).
    async fn send(&self, to: SocketAddr, message: &chitchat::ChitchatMessage) {
        let bytes = chorus_net::wire::encode(message).expect("encode for the wire");
        self.send_bytes(to, &bytes).await;
    }

    /// The node ids in the digest of `agent` (sorted): it answers an empty Syn with a SynAck
    /// carrying its whole digest.
    async fn digest_of(&self, agent: SocketAddr, cluster: &str) -> Result<Vec<String>, String> {
        self.send(agent, &plain::syn(cluster, &[])).await;
        let mut buf = vec![0u8; chorus_net::MAX_UDP_PAYLOAD + 1];
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await;
            let (len, from) = received
                .map_err(|_| format!("no SynAck from {agent} within {REPLY_WAIT:?}"))?
                .map_err(|e| e.to_string())?;
            if from != agent {
                continue;
            }
            let Ok(message) = chorus_net::wire::decode(&buf[..len]) else {
                continue;
            };
            if let Some(ids) = plain::digest_node_ids(&message) {
                return Ok(ids);
            }
        }
    }
}

/// chitchat messages built from their bytes (the public API cannot build a digest or a delta),
/// and read back.
mod plain {
    use chitchat::{ChitchatId, ChitchatMessage, Deserializable, Serializable};

    /// chitchat's header: magic number, protocol version 0.
    const HEADER: [u8; 3] = [0x53, 0xB0, 0];
    const SYN: u8 = 0;
    const SYN_ACK: u8 = 1;
    const UNCOMPRESSED_BLOCK: u8 = 2;
    const NO_MORE_BLOCKS: u8 = 0;

    /// A digest entry a peer claims.
    pub struct Entry {
        pub id: ChitchatId,
        heartbeat: u64,
    }

    impl Entry {
        pub fn new(id: ChitchatId, heartbeat: u64) -> Entry {
            Entry { id, heartbeat }
        }
    }

    /// The issue's node: `evil`, generation 1, 127.0.0.1:17019.
    pub fn evil() -> ChitchatId {
        ChitchatId::new("evil", 1, ([127, 0, 0, 1], 17019).into())
    }

    /// `count` made-up nodes, numbered from `first`, at loopback addresses nobody listens on
    /// (a node still short of live peers may gossip with nodes it heard of).
    pub fn fake_entries(first: u32, count: u32) -> Vec<Entry> {
        (first..first + count)
            .map(|i| {
                let addr = ([127, 66, (i >> 8) as u8, i as u8], 9).into();
                Entry::new(ChitchatId::new(format!("fake-{i}"), 1, addr), 1)
            })
            .collect()
    }

    /// The issue's datagram, byte for byte as its Python script builds it (wire format
    /// `0xC0`, verbatim: chitchat's bytes follow the message type). The builders below write
    /// the same chitchat bytes.
    pub fn issue_14_datagram() -> Vec<u8> {
        let plain = syn_ack_bytes(&[Entry::new(evil(), 1)], &[(evil(), vec![("é", "x")])]);
        let built = [&[0xC0][..], &plain[3..]].concat();
        let python = {
            fn s(text: &str) -> Vec<u8> {
                [&(text.len() as u16).to_le_bytes()[..], text.as_bytes()].concat()
            }
            let cid = [
                s("evil"),
                1u64.to_le_bytes().to_vec(),
                vec![4, 127, 0, 0, 1],
            ]
            .concat();
            let cid = [cid, 17019u16.to_le_bytes().to_vec()].concat();
            let entry = [1u64, 0, 1].map(u64::to_le_bytes).concat();
            let digest = [&1u16.to_le_bytes()[..], &cid, &entry].concat();
            let ops = [&[0][..], &cid, &[0; 16], &[1], &s("é"), &s("x")].concat();
            let ops = [ops, 1u64.to_le_bytes().to_vec(), vec![0]].concat();
            let delta = [&[2][..], &(ops.len() as u16).to_le_bytes(), &ops, &[0]].concat();
            [&[0xC0, 0x01][..], &digest, &delta].concat()
        };
        assert_eq!(python, built);
        python
    }

    fn digest(entries: &[Entry]) -> Vec<u8> {
        let mut buf = Vec::new();
        (entries.len() as u16).serialize(&mut buf);
        for entry in entries {
            entry.id.serialize(&mut buf);
            entry.heartbeat.serialize(&mut buf);
            0u64.serialize(&mut buf); // last GC version
            1u64.serialize(&mut buf); // max version
        }
        buf
    }

    /// A delta giving each node its keys from nothing (versions 1, 2, ...), in uncompressed
    /// blocks.
    fn delta(nodes: &[(ChitchatId, Vec<(&str, &str)>)]) -> Vec<u8> {
        let mut ops = Vec::new();
        for (id, key_values) in nodes {
            ops.push(0); // node
            id.serialize(&mut ops);
            0u64.serialize(&mut ops); // last GC version
            0u64.serialize(&mut ops); // from version
            for (version, (key, value)) in (1u64..).zip(key_values) {
                ops.push(1); // key-value
                key.serialize(&mut ops);
                value.serialize(&mut ops);
                version.serialize(&mut ops);
                ops.push(0); // set
            }
        }
        let mut buf = Vec::new();
        for block in ops.chunks(usize::from(u16::MAX)) {
            buf.push(UNCOMPRESSED_BLOCK);
            (block.len() as u16).serialize(&mut buf);
            buf.extend_from_slice(block);
        }
        buf.push(NO_MORE_BLOCKS);
        buf
    }

    fn message(bytes: &[u8]) -> ChitchatMessage {
        ChitchatMessage::deserialize(&mut &bytes[..]).expect("a well-formed chitchat message")
    }

    pub fn syn(cluster: &str, entries: &[Entry]) -> ChitchatMessage {
        let bytes = [
            &HEADER[..],
            &[SYN],
            &digest(entries),
            &cluster.serialize_to_vec(),
        ]
        .concat();
        message(&bytes)
    }

    fn syn_ack_bytes(entries: &[Entry], nodes: &[(ChitchatId, Vec<(&str, &str)>)]) -> Vec<u8> {
        [&HEADER[..], &[SYN_ACK], &digest(entries), &delta(nodes)].concat()
    }

    pub fn syn_ack(
        entries: &[Entry],
        nodes: &[(ChitchatId, Vec<(&str, &str)>)],
    ) -> ChitchatMessage {
        message(&syn_ack_bytes(entries, nodes))
    }

    /// The node ids of a Syn's or SynAck's digest, sorted; `None` for other messages.
    pub fn digest_node_ids(message: &ChitchatMessage) -> Option<Vec<String>> {
        let plain = message.serialize_to_vec();
        if plain[3] > SYN_ACK {
            return None;
        }
        let mut body = &plain[4..];
        let count = u16::deserialize(&mut body).ok()?;
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = ChitchatId::deserialize(&mut body).ok()?;
            body = body.get(24..)?; // heartbeat, last GC version, max version
            ids.push(id.node_id.to_string());
        }
        ids.sort();
        Some(ids)
    }
}
