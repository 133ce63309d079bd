//! Memory from half-sent streams: key holders open many connections full of
//! large streams they never finish. What the target holds stays within its
//! buffer budget (its `buffered_bytes` gauge, and this process's resident
//! memory as a second check), is freed once the streams' deadline passes,
//! and a genuine peer gets through meanwhile.
//!
//! Alone in its test binary, so that no other test moves the process's RSS.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chorus_net::quic::{
    CONNECTION_FLOOR, MAX_BUFFERED_BYTES, MAX_BUFFERED_PER_CONNECTION, MAX_CONCURRENT_UNI_STREAMS,
    MAX_MESSAGE_SIZE, SHARED_BUFFER_POOL,
};
use chorus_net::{ClusterCa, NetCounters};
use common::{eventually_within, free_addr, quic, raw, recv, rss_bytes, syn};
use quinn::{Connection, WriteError};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// Connections of the attack, each from its own (minted) node.
const ATTACKERS: usize = 24;

/// Streams each attacker opens: twice what may be open at once, so that it
/// opens more as the target stops the first ones.
const STREAMS_PER_ATTACKER: usize = 2 * MAX_CONCURRENT_UNI_STREAMS as usize;

/// What each stream carries before it stalls: one byte short of the largest
/// message, never finished.
const PAYLOAD: usize = MAX_MESSAGE_SIZE - 1;

/// How long the attack may take to send what its connections may buffer,
/// and the target to free it all: generous, for a machine busy with other
/// builds (QUIC in a debug build moves some tens of MB a second).
const SLOW: Duration = Duration::from_secs(60);

/// The most this process's resident memory may grow during the attack: the
/// target's budget for these connections, quinn's receive windows, the
/// attackers' own send buffers, and slack for the allocator. An unbounded
/// reader of these streams holds 768 MiB.
const RSS_ALLOWANCE: u64 = 192 * 1024 * 1024;

/// Opens [`STREAMS_PER_ATTACKER`] streams on `conn` (or as many as open
/// before the deadline) and returns once all are open; tasks write
/// [`PAYLOAD`] on each and hold them unfinished until `release`.
async fn stall_streams(
    conn: Connection,
    release: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let payload = Arc::new(vec![0x42u8; PAYLOAD]);
    let mut writers = Vec::new();
    for _ in 0..STREAMS_PER_ATTACKER {
        let Ok(Ok(mut stream)) = timeout(common::DEADLINE, conn.open_uni()).await else {
            break;
        };
        let (payload, mut release) = (payload.clone(), release.clone());
        writers.push(tokio::spawn(async move {
            // A stream the target stopped is dropped at once, which frees
            // its place for the next; any other is held open, unfinished.
            if let Ok(Err(WriteError::Stopped(_))) =
                timeout(common::DEADLINE, stream.write_all(&payload)).await
            {
                return;
            }
            let _ = release.wait_for(|released| *released).await;
            drop(stream);
        }));
    }
    writers
}

/// Samples the gauge and the RSS until `done`; returns their maxima.
async fn sample(counters: NetCounters, done: Arc<AtomicBool>, rss_max: Arc<AtomicU64>) -> u64 {
    let mut gauge_max = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Bounded: the test's own deadlines end it well before.
    for _ in 0..10_000 {
        if done.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        gauge_max = gauge_max.max(counters.snapshot().buffered_bytes);
        rss_max.fetch_max(rss_bytes(), Ordering::Relaxed);
    }
    gauge_max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_streams_are_held_to_the_budget_and_freed_after_the_deadline() {
    let ca = ClusterCa::generate("memory").unwrap();
    let target = quic(&ca, "target");
    let deadline = target.config().tuning.stream_read_timeout;
    let (target_addr, friend_addr) = (free_addr(), free_addr());
    let mut target_socket = target.open(target_addr).await.unwrap();
    let mut friend_socket = quic(&ca, "friend").open(friend_addr).await.unwrap();
    let counters = target.counters().clone();

    let rss_before = rss_bytes();
    let rss_max = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(counters.clone(), done.clone(), rss_max.clone()));

    let (release, released) = watch::channel(false);
    let mut endpoints = Vec::new();
    let mut conns = Vec::new();
    let mut attacks = Vec::new();
    for i in 0..ATTACKERS {
        // Four source IPs, so that connecting stays within each IP's
        // handshake rate.
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 4) as u8));
        let (endpoint, conn) = raw::member_at(&ca, &format!("hog-{i}"), ip, target_addr).await;
        endpoints.push(endpoint);
        conns.push(conn.clone());
        attacks.push(tokio::spawn(stall_streams(conn, released.clone())));
    }
    let enough = (ATTACKERS * MAX_BUFFERED_PER_CONNECTION) as u64;
    eventually_within(
        "the attack to send what its connections may buffer",
        SLOW,
        || conns.iter().map(|c| c.stats().udp_tx.bytes).sum::<u64>() >= enough,
    )
    .await;

    // A genuine peer gets through while the attack holds its budget.
    friend_socket
        .send(target_addr, syn("through"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut target_socket).await,
        (friend_addr, syn("through"))
    );

    // Once the attackers' streams are all open, nothing is read from them
    // any more: the deadline frees every byte.
    let mut writers = Vec::new();
    for attack in attacks {
        writers.extend(attack.await.unwrap());
    }
    let quiet_since = Instant::now();
    eventually_within("every buffered byte to be freed", SLOW, || {
        counters.snapshot().buffered_bytes == 0
    })
    .await;
    let freed_after = quiet_since.elapsed();
    let _ = release.send(true);
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let gauge_max = sampler.await.unwrap();
    let rss_growth = rss_max.load(Ordering::Relaxed).saturating_sub(rss_before);
    let stats = counters.snapshot();
    eprintln!(
        "buffered at most {gauge_max} bytes, RSS grew at most {rss_growth} bytes, \
         freed {freed_after:?} after the last stream opened: {stats:?}"
    );

    let budget = (ATTACKERS + 1) * CONNECTION_FLOOR + SHARED_BUFFER_POOL;
    assert!(budget <= MAX_BUFFERED_BYTES);
    assert!(
        gauge_max <= budget as u64,
        "{gauge_max} buffered, budget {budget}"
    );
    assert!(
        rss_growth <= RSS_ALLOWANCE,
        "RSS grew by {rss_growth} bytes"
    );
    // Which limit stops a stream first depends on how fast this machine
    // moves bytes; both free its buffer.
    assert!(stats.streams_over_budget + stats.streams_timed_out > 0);
    assert!(freed_after <= deadline + SLOW);
    drop(endpoints);
}
