//! Bad input never hurts an agent: junk on its socket gets an error line and the connection
//! goes on; junk datagrams on its gossip port are dropped; users other than the agent's own
//! and root cannot change its state.

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chorus_agent::api::{Request, Response, MAX_REQUEST_BYTES};
use chorus_agent::client::Client;
use chorus_core::member::Status;

use crate::support::agent::{member, members, status, AgentSpec, Cluster, Net, TestAgent};
use crate::support::bin::{chorus_bin, describe};
use crate::support::{wait_until, SLOW};

/// Sends `bytes` as they are, expects an error line back, then a valid request on the same
/// connection still works.
async fn junk_then_valid(client: &mut Client, bytes: &[u8], error_says: &str) {
    client.send_raw(bytes).await.expect("send junk");
    match client.next_response().await {
        Ok(Response::Error { message }) => assert!(
            message.contains(error_says),
            "error for {:?}... is {message:?}, expected it to say {error_says:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        ),
        other => panic!(
            "junk {:?}... got {other:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        ),
    }
    match client.call(&Request::Status).await {
        Ok(Response::Status { .. }) => {}
        other => panic!("status after junk got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_socket_lines_get_errors_and_the_agent_keeps_serving() {
    let cluster = Cluster::start("junk-socket", 1).await;
    let agent = &cluster.agents[0];
    let socket = agent.socket();
    let mut client = Client::connect(&socket).await.unwrap();

    junk_then_valid(&mut client, b"this is not json\n", "invalid request").await;
    junk_then_valid(&mut client, b"\xff\xfe\x00garbage\n", "invalid request").await;
    junk_then_valid(&mut client, b"{\"cmd\":\"status\"\n", "invalid request").await;
    // Valid JSON, wrong shape.
    for wrong in [
        &b"{\"cmd\":\"load\",\"sessions\":\"many\"}\n"[..],
        b"{\"cmd\":\"load\",\"sessions\":-1}\n",
        b"{\"cmd\":\"load\"}\n",
        b"{\"cmd\":\"explode\"}\n",
        b"{\"sessions\":3}\n",
        b"[]\n",
        b"null\n",
        b"42\n",
    ] {
        junk_then_valid(&mut client, wrong, "invalid request").await;
    }
    // A 2 MB line: refused by size, read to its end, and the connection goes on.
    let mut huge = b"{\"cmd\":\"load\",\"sessions\":".to_vec();
    huge.resize(2 << 20, b'9');
    huge.extend_from_slice(b"}\n");
    assert!(huge.len() > MAX_REQUEST_BYTES);
    junk_then_valid(&mut client, &huge, "larger than").await;
    let huge_junk = vec![b'x'; 2 << 20];
    junk_then_valid(
        &mut client,
        &[&huge_junk[..], b"\n"].concat(),
        "larger than",
    )
    .await;

    // Several requests in one write are answered in order.
    client
        .send_raw(b"{\"cmd\":\"status\"}\nnope\n{\"cmd\":\"members\"}\n")
        .await
        .unwrap();
    assert!(matches!(
        client.next_response().await,
        Ok(Response::Status { .. })
    ));
    assert!(matches!(
        client.next_response().await,
        Ok(Response::Error { .. })
    ));
    assert!(matches!(
        client.next_response().await,
        Ok(Response::Members { .. })
    ));

    // A client that hangs up in the middle of a line does no harm either.
    let mut quitter = Client::connect(&socket).await.unwrap();
    quitter.send_raw(&huge_junk[..100_000]).await.unwrap();
    drop(quitter);

    // New connections are served, and nothing the junk said was acted on.
    let me = member(&socket, agent.node_id()).await.unwrap();
    assert_eq!(me.status, Status::Alive);
    assert_eq!(me.load.sessions, 0, "junk changed the session count");
    assert!(agent.is_running());
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_datagrams_on_a_udp_gossip_port_are_dropped_and_counted() {
    // `--transport udp` decodes every datagram as a gossip message: junk is counted.
    let mut cluster = Cluster::start_on("junk-udp", 2, Net::Udp).await;
    random_datagrams_do_no_harm(&mut cluster).await;
    let socket = cluster.agent("n1").socket();
    wait_until("n1 counts the junk", SLOW, || async {
        let s = status(&socket).await?;
        match s.net["garbage_received"].as_u64() {
            Some(n) if n > 0 => Ok(()),
            _ => Err(format!("net counters: {}", s.net)),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_datagrams_on_a_quic_gossip_port_do_no_harm() {
    // The deployed transport: junk reaches the QUIC endpoint, never gossip.
    let net = Net::quic("junk-quic");
    let mut cluster = Cluster::start_on("junk-quic", 2, net).await;
    random_datagrams_do_no_harm(&mut cluster).await;
}

/// Sends 600 junk datagrams (0 to 65,507 bytes) to n1's gossip port; then n1 still serves,
/// and a newcomer seeded with n1 joins and everyone converges.
async fn random_datagrams_do_no_harm(cluster: &mut Cluster) {
    cluster.wait_converged().await;
    let target = cluster.agent("n1").addr();

    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut junk = Junk(0x5eed_c0de_1234_5678);
    let mut sent = 0;
    for i in 0..600 {
        let len = match i % 6 {
            0 => 0,
            1 => 1,
            2 => (junk.next() % 64) as usize,
            3 => (junk.next() % 1500) as usize,
            4 => (junk.next() % 65_507) as usize,
            _ => 65_507,
        };
        let mut datagram = junk.bytes(len);
        // Some start like a real gossip message (a valid message tag), some like a QUIC v1
        // Initial packet, to go deeper into the decoders.
        if i % 2 == 0 && !datagram.is_empty() {
            datagram[0] = (junk.next() % 4) as u8;
        } else if i % 6 == 5 && (i / 6) % 2 == 0 {
            datagram[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
        }
        if sender.send_to(&datagram, target).is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 500, "only {sent} junk datagrams could be sent");

    // The attacked agent still gossips: a newcomer seeded with it joins and everyone
    // converges, and its socket still answers.
    let spec = cluster.spec("n3");
    cluster.agents.push(TestAgent::start(spec).await);
    cluster.wait_converged().await;
    for a in &cluster.agents {
        assert!(a.is_running(), "{} stopped", a.node_id());
        assert_eq!(status(&a.socket()).await.unwrap().node.alive, 3);
    }
}

/// Whether `chorus` can be run as uid/gid 65534 here (root, `setpriv`, a reachable binary).
fn can_run_as_nobody() -> bool {
    let root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if !matches!(root, Ok(true)) {
        return false;
    }
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(chorus_bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn chorus_as_nobody(socket: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(chorus_bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("CHORUS_SOCKET")
        .output()
        .await
        .expect("run setpriv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_from_another_user_are_refused() {
    if !can_run_as_nobody() {
        eprintln!("skipped: needs root and setpriv to run chorus as another user");
        return;
    }
    let agent = TestAgent::start(AgentSpec::new("solo", "peercred", &Net::channel())).await;
    let socket = agent.socket();
    // Let the other user reach the socket at all (its directory is private and the socket is
    // 0660 root:root); SO_PEERCRED is what must refuse it.
    std::fs::set_permissions(agent.spec.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    // Reading is allowed.
    let out = chorus_as_nobody(&socket, &["status", "--json"]).await;
    assert!(out.status.success(), "{}", describe(&out));

    // Changing state is not, and changes nothing.
    for args in [&["load", "--sessions", "7"][..], &["leave"]] {
        let out = chorus_as_nobody(&socket, args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("permission denied"), "{args:?}: {stderr}");
    }
    let rows = members(&socket).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].load.sessions, 0);
    assert!(agent.is_running(), "a refused leave stopped the agent");

    // The agent's own user (root here) may.
    let out = crate::support::bin::chorus(&[
        "load",
        "--sessions",
        "7",
        "--socket",
        socket.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    wait_until("the session count is 7", SLOW, || async {
        match member(&socket, "solo").await?.load.sessions {
            7 => Ok(()),
            n => Err(format!("{n} sessions")),
        }
    })
    .await;
}
