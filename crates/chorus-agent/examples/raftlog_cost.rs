//! What one durable Raft write costs (wall time, fsync included), and what a rewrite costs.
//!
//! `cargo run --release -p chorus-agent --example raftlog_cost [-- DIR WRITES]`
//!
//! DIR (default: the system temp dir) must be on the disk the data dir will use: fsync on a
//! tmpfs costs nothing. Each kind of write runs WRITES times (default 500) in a fresh log:
//! a hard state alone (a commit index moving), one 128-byte entry with a hard state (a leader
//! appending a proposal), and ten 1 KiB entries with a hard state (a follower catching up).
//! Then one rewrite of a log of 10,000 128-byte entries (what a compaction writes and fsyncs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chorus_agent::raftlog::{RaftLog, RaftWrite};
use raft::eraftpb::{Entry, HardState, Snapshot};

fn entry(index: u64, len: usize) -> Entry {
    Entry {
        index,
        term: 1,
        data: vec![0x5a; len].into(),
        ..Default::default()
    }
}

fn hard_state(commit: u64) -> HardState {
    HardState {
        term: 1,
        vote: 1,
        commit,
        ..Default::default()
    }
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().map(|d| us(*d)).sum::<f64>() / times.len() as f64;
    let at = |q: f64| us(times[((times.len() - 1) as f64 * q) as usize]);
    println!(
        "{what:<34} n={:<5} mean {mean:>8.0} us  p50 {:>8.0}  p90 {:>8.0}  p99 {:>8.0}  max {:>8.0}",
        times.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let writes: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(500);
    println!("raft log write cost in {}", base.display());

    type Make = fn(u64) -> RaftWrite;
    let kinds: [(&str, Make); 3] = [
        ("hard state only", |i| RaftWrite {
            hard_state: Some(hard_state(i)),
            ..Default::default()
        }),
        ("1 x 128 B entry + hard state", |i| RaftWrite {
            entries: vec![entry(i, 128)],
            hard_state: Some(hard_state(i)),
            ..Default::default()
        }),
        ("10 x 1 KiB entries + hard state", |i| RaftWrite {
            entries: (0..10).map(|k| entry(10 * (i - 1) + k + 1, 1024)).collect(),
            hard_state: Some(hard_state(10 * i)),
            ..Default::default()
        }),
    ];
    for (what, make) in kinds {
        let dir = tempfile::Builder::new()
            .prefix("raftlog-cost")
            .tempdir_in(&base)?;
        let (mut log, _) = RaftLog::open(dir.path())?;
        let mut times = Vec::new();
        for i in 1..=writes {
            let w = make(i);
            let started = Instant::now();
            log.write(&w)?;
            times.push(started.elapsed());
        }
        report(what, times);
    }

    let dir = tempfile::Builder::new()
        .prefix("raftlog-cost")
        .tempdir_in(&base)?;
    let (mut log, _) = RaftLog::open(dir.path())?;
    log.set_compact_at(u64::MAX);
    log.write(&RaftWrite {
        entries: (1..=10_000).map(|i| entry(i, 128)).collect(),
        hard_state: Some(hard_state(10_000)),
        ..Default::default()
    })?;
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 1;
    snapshot.mut_metadata().term = 1;
    let started = Instant::now();
    log.compact(&snapshot)?;
    report(
        &format!("rewrite of {} bytes", log.file_len()),
        vec![started.elapsed()],
    );
    Ok(())
}
