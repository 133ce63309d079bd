//! A handshake flood at a running transport: handshakes started from many
//! ports of several 127.x addresses, then left hanging, at 40 a second, while
//! a member restarts and must rejoin.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chorus_net::quic::{MAX_PENDING_HANDSHAKES, RESERVED_FOR_KNOWN};
use chorus_net::{ClusterCa, QuicTuning};
use common::{deliver, eventually_within, fast_tuning, free_addr, quic, quic_tuned, reopen, stall};
use tokio::time::Instant;

/// Source addresses of the flood: 127.0.0.1 (the member's own IP) to 127.0.0.8.
const FLOOD_IPS: u8 = 8;

/// One handshake start every 25 ms: 40 a second, the rate that kept a
/// restarted member out for a whole flood.
const FLOOD_INTERVAL: Duration = Duration::from_millis(25);

/// Most handshakes the flood starts (30 s worth).
const MAX_FLOODERS: usize = 1_200;

/// How long the restarted member may take to exchange a message both ways.
const REJOIN_DEADLINE: Duration = Duration::from_secs(10);

/// Starts handshakes at `target` until `stop` is set or [`MAX_FLOODERS`];
/// every fourth flooder does not answer Retries (a forged source address).
async fn flood(target: std::net::SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let mut flooders = Vec::new();
    let mut tick = tokio::time::interval(FLOOD_INTERVAL);
    for i in 0..MAX_FLOODERS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % FLOOD_IPS as usize) as u8));
        flooders.push(stall::start(ip, target, i % 4 != 3).unwrap());
    }
    flooders.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarting_during_a_handshake_flood_rejoins() {
    let ca = ClusterCa::generate("flood").unwrap();
    // A flood handshake is held as long as the target lets one wait: no slot
    // frees during the test, so only admission can let the member in.
    let target = quic_tuned(
        &ca,
        "target",
        QuicTuning {
            connect_timeout: Duration::from_secs(30),
            ..fast_tuning()
        },
    );
    let member = quic(&ca, "member");
    let (target_addr, member_addr) = (free_addr(), free_addr());
    let mut target_socket = target.open(target_addr).await.unwrap();
    let mut member_socket = member.open(member_addr).await.unwrap();
    deliver(
        &mut member_socket,
        member_addr,
        &mut target_socket,
        target_addr,
        "hi",
    )
    .await;
    deliver(
        &mut target_socket,
        target_addr,
        &mut member_socket,
        member_addr,
        "hi back",
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(target_addr, stop.clone()));
    let counters = target.counters().clone();
    // The flood needs about 2 s; a machine busy with other builds may take longer.
    eventually_within(
        "the flood to take every slot open to unknown sources",
        Duration::from_secs(30),
        || counters.snapshot().handshakes_refused > 0,
    )
    .await;

    drop(member_socket);
    let mut member_socket = reopen(&member, member_addr).await;
    let restarted = Instant::now();
    deliver(
        &mut member_socket,
        member_addr,
        &mut target_socket,
        target_addr,
        "back",
    )
    .await;
    deliver(
        &mut target_socket,
        target_addr,
        &mut member_socket,
        member_addr,
        "welcome",
    )
    .await;
    let took = restarted.elapsed();

    stop.store(true, Ordering::Relaxed);
    let flooders = flooding.await.unwrap();
    let stats = target.counters().snapshot();
    eprintln!("rejoined in {took:?} under a flood of {flooders} handshakes: {stats:?}");
    assert!(took < REJOIN_DEADLINE, "rejoining took {took:?}");
    // Unvalidated sources were sent to prove their address, and each IP was
    // held to its share.
    assert!(stats.handshakes_retried > 0);
    assert!(stats.handshakes_throttled > 0);
    // Every flood handshake that got a slot still holds it: unknown sources
    // hold at most what is not reserved, and the rest was turned away.
    let open_to_unknown = (MAX_PENDING_HANDSHAKES - RESERVED_FOR_KNOWN) as u64;
    let turned_away =
        stats.handshakes_retried + stats.handshakes_throttled + stats.handshakes_refused;
    assert!(
        turned_away + open_to_unknown >= flooders as u64,
        "{flooders} flood handshakes, {turned_away} turned away"
    );
}
