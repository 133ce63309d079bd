//! Helpers shared by every test: free loopback ports, [`wait_until`], test logging, in-process
//! agents ([`agent`]), their recorded `watch` events ([`events`]), the `chorus` binary
//! ([`bin`]) and other processes' pids ([`pids`]).
//!
//! Synchronisation is always "poll a condition until a deadline" ([`wait_until`]), never a
//! bare sleep: a slow machine only makes a test slower, never wrong.

pub mod agent;
pub mod bin;
pub mod events;
pub mod pids;

use std::collections::HashSet;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// Gossip interval of every test agent: fast, with room for a busy 2-core CI machine (a node
/// is shown `suspect` after 4 intervals without a heartbeat).
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(150);

/// How long a cluster may take to converge, or to notice a crash, before a test fails.
/// Generous: a deadline only matters when something is broken.
pub const SLOW: Duration = Duration::from_secs(40);

/// How often [`wait_until`] re-checks its condition.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok`, and returns that value. `check` returns `Err(what it
/// saw)` while the condition does not hold; at the deadline the test fails with `what` and
/// the last thing seen. A `check` that hangs is cut off by the same deadline.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("(never checked)");
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => last = seen,
            Err(_) => last = format!("the last check was still running: {last}"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting until {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A loopback address with a port that is free now: the kernel picks it (bind port 0) and
/// this process never hands the same port out twice, so concurrent tests cannot collide.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP port");
        let addr = socket.local_addr().expect("a bound socket has an address");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out
            .get_or_insert_with(HashSet::new)
            .insert(addr.port())
        {
            return addr;
        }
    }
}

/// Sends the agents' logs to the test harness, which shows them only for failing tests.
/// `RUST_LOG` refines the level.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,chitchat=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
