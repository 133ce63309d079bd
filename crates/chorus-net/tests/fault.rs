//! FaultyTransport: partitions, isolation, healing, random drops, delays.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::{Socket, Transport};
use chorus_net::{FaultController, FaultyTransport};
use common::{assert_silent, syn};
use tokio::time::Instant;

const QUIET: Duration = Duration::from_millis(100);

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

async fn open(transport: &FaultyTransport, port: u16) -> Box<dyn Socket> {
    transport.open(addr(port)).await.unwrap()
}

async fn delivered(from: &mut Box<dyn Socket>, to_port: u16, to: &mut Box<dyn Socket>) -> bool {
    from.send(addr(to_port), syn("probe")).await.unwrap();
    tokio::time::timeout(QUIET, to.recv()).await.is_ok()
}

#[tokio::test]
async fn partition_drops_between_groups_and_heal_restores() {
    let controller = FaultController::new(1);
    let transport = FaultyTransport::in_memory(controller.clone());
    let (mut a, mut b, mut c, mut d) = (
        open(&transport, 1).await,
        open(&transport, 2).await,
        open(&transport, 3).await,
        open(&transport, 4).await,
    );
    controller.partition([("left", vec![addr(1), addr(2)]), ("right", vec![addr(3)])]);
    assert_eq!(controller.group_of(addr(1)).as_deref(), Some("left"));
    assert!(delivered(&mut a, 2, &mut b).await, "same group");
    assert!(!delivered(&mut a, 3, &mut c).await, "across groups");
    assert!(
        !delivered(&mut c, 1, &mut a).await,
        "across groups, other way"
    );
    // Not in any group: reaches and is reached by everyone.
    assert!(delivered(&mut d, 3, &mut c).await);
    assert!(delivered(&mut a, 4, &mut d).await);
    assert_eq!(controller.stats().dropped_partition, 2);

    controller.heal();
    assert!(delivered(&mut a, 3, &mut c).await);
    assert!(delivered(&mut c, 1, &mut a).await);
}

#[tokio::test]
async fn isolate_cuts_one_node_off_until_it_rejoins() {
    let controller = FaultController::new(1);
    let transport = FaultyTransport::in_memory(controller.clone());
    let (mut a, mut b) = (open(&transport, 1).await, open(&transport, 2).await);
    controller.isolate(addr(2));
    assert!(!controller.can_reach(addr(1), addr(2)));
    assert!(!delivered(&mut a, 2, &mut b).await);
    assert!(!delivered(&mut b, 1, &mut a).await);
    controller.rejoin(addr(2));
    assert!(delivered(&mut a, 2, &mut b).await);
    controller.isolate(addr(1));
    controller.heal();
    assert!(delivered(&mut b, 1, &mut a).await);
}

#[tokio::test]
async fn drop_rate_drops_about_that_fraction_reproducibly() {
    async fn run(seed: u64) -> u64 {
        let controller = FaultController::new(seed);
        let transport = FaultyTransport::in_memory(controller.clone());
        let (mut a, _b) = (open(&transport, 1).await, open(&transport, 2).await);
        controller.set_drop_rate(0.3);
        for _ in 0..2_000 {
            a.send(addr(2), syn("x")).await.unwrap();
        }
        let stats = controller.stats();
        assert_eq!(stats.dropped_random + stats.delivered, 2_000);
        stats.dropped_random
    }
    let dropped = run(42).await;
    assert!(
        (500..700).contains(&dropped),
        "dropped {dropped} of 2000 at 30%"
    );
    assert_eq!(run(42).await, dropped, "same seed, same drops");

    let controller = FaultController::new(3);
    controller.set_drop_rate(7.0); // clamped to 1
    let transport = FaultyTransport::in_memory(controller.clone());
    let (mut a, mut b) = (open(&transport, 1).await, open(&transport, 2).await);
    assert!(!delivered(&mut a, 2, &mut b).await);
    controller.reset();
    assert!(delivered(&mut a, 2, &mut b).await);
}

#[tokio::test(start_paused = true)]
async fn delay_holds_messages_for_the_configured_time() {
    let controller = FaultController::new(1);
    let transport = FaultyTransport::in_memory(controller.clone());
    let (mut a, mut b) = (open(&transport, 1).await, open(&transport, 2).await);
    controller.set_delay(Duration::from_secs(5));
    let sent_at = Instant::now();
    a.send(addr(2), syn("late")).await.unwrap();
    // The sender's socket releases held messages while chitchat polls it.
    let pump = tokio::spawn(async move {
        let _ = a.recv().await;
    });
    let (from, message) = b.recv().await.unwrap();
    assert_eq!((from, message), (addr(1), syn("late")));
    assert!(sent_at.elapsed() >= Duration::from_secs(5));
    assert!(sent_at.elapsed() < Duration::from_secs(6));
    assert_eq!(controller.stats().delayed, 1);
    pump.abort();
}

#[tokio::test]
async fn without_faults_nothing_is_lost() {
    let controller = FaultController::default();
    let transport = FaultyTransport::in_memory(controller.clone());
    let (mut a, mut b) = (open(&transport, 1).await, open(&transport, 2).await);
    for _ in 0..50 {
        a.send(addr(2), syn("x")).await.unwrap();
    }
    for _ in 0..50 {
        b.recv().await.unwrap();
    }
    assert_silent(&mut b, QUIET).await;
    assert_eq!(controller.stats().delivered, 50);
}
