use super::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use raft::{GetEntriesContext, Storage};

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn voters(n: u64) -> ConfState {
    ConfState::from(((1..=n).collect::<Vec<_>>(), vec![]))
}

fn snapshot(index: u64, term: u64, conf_state: ConfState, data: &[u8]) -> Snapshot {
    let mut s = Snapshot {
        data: data.to_vec().into(),
        ..Default::default()
    };
    let meta = s.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf_state);
    s
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(DIR).join(LOG_FILE)
}

fn reopen(dir: &Path) -> RaftDisk {
    RaftLog::open(dir).expect("reopen").1
}

/// raft-rs' `MemStorage` fed the same writes, and the last snapshot message (MemStorage keeps
/// only its metadata).
struct Reference {
    storage: MemStorage,
    snapshot: Snapshot,
}

impl Reference {
    fn new() -> Reference {
        Reference {
            storage: MemStorage::new(),
            snapshot: Snapshot::default(),
        }
    }

    fn first(&self) -> u64 {
        self.storage.first_index().unwrap()
    }

    fn last(&self) -> u64 {
        self.storage.last_index().unwrap()
    }

    fn entries_from(&self, low: u64) -> Vec<Entry> {
        let last = self.last();
        if low > last {
            return Vec::new();
        }
        self.storage
            .entries(low, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    /// What the Raft node does with a Ready: `apply_snapshot`, `append`, `set_hardstate`, and
    /// `set_conf_state` when it changed membership.
    fn apply(&mut self, w: &RaftWrite) {
        let mut core = self.storage.wl();
        if let Some(s) = &w.snapshot {
            core.apply_snapshot(s.clone()).unwrap();
            self.snapshot = s.clone();
        }
        core.append(&w.entries).unwrap();
        if let Some(hs) = &w.hard_state {
            core.set_hardstate(hs.clone());
        }
        if let Some(cs) = &w.conf_state {
            core.set_conf_state(cs.clone());
        }
    }

    /// MemStorage has no operation that stores a snapshot the node made of itself, so the
    /// reference becomes a MemStorage started from that snapshot, the entries after it, the hard
    /// state (commit raised to the snapshot, as `RaftLog::compact` does) and the conf state.
    fn compact(&mut self, s: &Snapshot) {
        let index = s.get_metadata().index;
        let state = self.storage.initial_state().unwrap();
        let entries = self.entries_from(index + 1);
        let mut hs = state.hard_state;
        hs.commit = hs.commit.max(index);
        let fresh = MemStorage::new();
        {
            let mut core = fresh.wl();
            core.apply_snapshot(s.clone()).unwrap();
            core.append(&entries).unwrap();
            core.set_hardstate(hs);
            core.set_conf_state(state.conf_state);
        }
        self.storage = fresh;
        self.snapshot = s.clone();
    }

    /// `disk` holds, field for field, what this MemStorage holds, and a MemStorage started
    /// from `disk` answers every `Storage` call as this one does.
    fn assert_matches(&self, disk: &RaftDisk) {
        let state = self.storage.initial_state().unwrap();
        assert_eq!(disk.hard_state, state.hard_state, "hard state");
        assert_eq!(disk.conf_state, state.conf_state, "conf state");
        assert_eq!(disk.entries, self.entries_from(self.first()), "entries");
        assert_eq!(disk.snapshot, self.snapshot, "snapshot");
        let restored = disk
            .to_mem_storage()
            .expect("a MemStorage from the disk state");
        let again = restored.initial_state().unwrap();
        assert_eq!(again.hard_state, state.hard_state);
        assert_eq!(again.conf_state, state.conf_state);
        let (first, last) = (self.first(), self.last());
        assert_eq!(restored.first_index().unwrap(), first);
        assert_eq!(restored.last_index().unwrap(), last);
        for i in first.saturating_sub(1)..=last {
            assert_eq!(
                restored.term(i).ok(),
                self.storage.term(i).ok(),
                "term({i})"
            );
        }
        if last >= first {
            let ctx = || GetEntriesContext::empty(false);
            assert_eq!(
                restored.entries(first, last + 1, None, ctx()).unwrap(),
                self.storage.entries(first, last + 1, None, ctx()).unwrap()
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A Ready: maybe a snapshot at `first_index + offset` (stale below 0), `count` entries
    /// starting `back` places before the end (overwriting a suffix), maybe hard and conf state.
    Write {
        snapshot: Option<(i8, u8, u8)>,
        back: u8,
        count: u8,
        term: u8,
        size: u16,
        hard_state: Option<(u8, u8, u8)>,
        conf_state: Option<u8>,
    },
    /// Entries that leave a gap: refused.
    Gap(u8),
    /// A snapshot the node made of itself at some index between the stored one and the end.
    Compact(u8, u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let write = (
        proptest::option::weighted(0.15, (-2i8..5, any::<u8>(), any::<u8>())),
        any::<u8>(),
        0u8..5,
        1u8..6,
        0u16..400,
        proptest::option::of((any::<u8>(), 0u8..4, any::<u8>())),
        proptest::option::weighted(0.2, 1u8..6),
    )
        .prop_map(
            |(snapshot, back, count, term, size, hard_state, conf_state)| Op::Write {
                snapshot,
                back,
                count,
                term,
                size,
                hard_state,
                conf_state,
            },
        );
    prop_oneof![
        8 => write,
        1 => (0u8..3).prop_map(Op::Gap),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(at, data)| Op::Compact(at, data)),
        2 => Just(Op::Reopen),
    ]
}

fn run_ops(ops: Vec<Op>, compact_at: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut reference = Reference::new();
    let (mut log, disk) = RaftLog::open(dir.path()).unwrap();
    log.set_compact_at(compact_at);
    reference.assert_matches(&disk);
    for op in ops {
        match op {
            Op::Write {
                snapshot: snap,
                back,
                count,
                term,
                size,
                hard_state: hs,
                conf_state: cs,
            } => {
                let (mut first, mut last) = (reference.first(), reference.last());
                let mut w = RaftWrite::default();
                let mut stale = false;
                if let Some((offset, t, d)) = snap {
                    let index = u64::try_from(first as i64 + i64::from(offset)).unwrap_or(0);
                    stale = index < first;
                    let conf = voters(u64::from(d % 5) + 1);
                    w.snapshot = Some(snapshot(index, u64::from(t) + 1, conf, &[d]));
                    if !stale {
                        (first, last) = (index + 1, index);
                    }
                }
                let span = last + 1 - first;
                let start = last + 1 - u64::from(back) % (span + 1);
                w.entries = (0..u64::from(count))
                    .map(|k| {
                        let data = vec![(start + k) as u8; usize::from(size)];
                        entry(start + k, u64::from(term), &data)
                    })
                    .collect();
                w.hard_state =
                    hs.map(|(t, v, c)| hard_state(u64::from(t), u64::from(v), u64::from(c)));
                w.conf_state = cs.map(|n| voters(u64::from(n)));
                let result = log.write(&w);
                if stale {
                    assert!(
                        matches!(result, Err(RaftLogError::Rejected(_))),
                        "{result:?}"
                    );
                } else {
                    result.unwrap();
                    reference.apply(&w);
                }
            }
            Op::Gap(gap) => {
                let len = log.file_len();
                let start = reference.last() + 2 + u64::from(gap);
                let w = RaftWrite {
                    entries: vec![entry(start, 1, b"gap")],
                    ..Default::default()
                };
                let result = log.write(&w);
                assert!(
                    matches!(result, Err(RaftLogError::Rejected(_))),
                    "{result:?}"
                );
                assert_eq!(log.file_len(), len);
            }
            Op::Compact(at, data) => {
                let low = reference.snapshot.get_metadata().index.max(1);
                let last = reference.last();
                if last < low {
                    continue;
                }
                let index = low + u64::from(at) % (last - low + 1);
                let term = reference.storage.term(index).unwrap();
                let conf = reference.storage.initial_state().unwrap().conf_state;
                let s = snapshot(index, term, conf, &[data; 3]);
                log.compact(&s).unwrap();
                reference.compact(&s);
            }
            Op::Reopen => {
                drop(log);
                let (again, disk) = RaftLog::open(dir.path()).unwrap();
                log = again;
                log.set_compact_at(compact_at);
                reference.assert_matches(&disk);
            }
        }
    }
    drop(log);
    reference.assert_matches(&reopen(dir.path()));
    assert!(!dir.path().join(DIR).join(TEMP_FILE).exists());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random Readys (snapshots, stale snapshots, suffix overwrites, hard and conf states),
    /// refused gaps, compactions and reopens: after every reopen the log holds what MemStorage
    /// holds, and a MemStorage started from it answers the same. A small rewrite threshold
    /// makes size-triggered rewrites happen too.
    #[test]
    fn reopened_log_equals_memstorage_after_random_writes(
        ops in proptest::collection::vec(op(), 1..40),
        compact_at in 512u64..8192,
    ) {
        run_ops(ops, compact_at);
    }
}

/// A log with a few writes; returns the offsets where each record starts and the state after
/// each write.
fn sample_log(dir: &Path) -> (Vec<u64>, Vec<RaftDisk>) {
    let (mut log, _) = RaftLog::open(dir).unwrap();
    let writes = [
        RaftWrite {
            conf_state: Some(voters(3)),
            ..Default::default()
        },
        RaftWrite {
            entries: (1..=4).map(|i| entry(i, 1, b"first")).collect(),
            hard_state: Some(hard_state(1, 1, 0)),
            ..Default::default()
        },
        RaftWrite {
            snapshot: Some(snapshot(3, 1, voters(3), b"state machine at 3")),
            entries: vec![entry(4, 2, b"after the snapshot")],
            hard_state: Some(hard_state(2, 2, 3)),
            ..Default::default()
        },
        RaftWrite {
            entries: vec![entry(4, 3, b"new leader"), entry(5, 3, b"more")],
            hard_state: Some(hard_state(3, 3, 4)),
            conf_state: Some(voters(5)),
            ..Default::default()
        },
    ];
    let mut starts = Vec::new();
    let mut states = Vec::new();
    let mut reference = Reference::new();
    for w in &writes {
        starts.push(log.file_len());
        log.write(w).unwrap();
        reference.apply(w);
        let disk = reopen_copy(dir);
        reference.assert_matches(&disk);
        states.push(disk);
    }
    starts.push(log.file_len());
    (starts, states)
}

/// Opens a copy of the log in `dir` (so the original stays as it is).
fn reopen_copy(dir: &Path) -> RaftDisk {
    let copy = tempfile::tempdir().unwrap();
    fs::create_dir_all(copy.path().join(DIR)).unwrap();
    fs::copy(log_path(dir), log_path(copy.path())).unwrap();
    reopen(copy.path())
}

/// A crash while the last write was going to disk: whatever prefix of its record made it, open
/// succeeds with the state before that write, cuts the file back to where the record started,
/// and the log takes writes again.
#[test]
fn every_cut_of_the_last_record_reopens_to_the_state_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (starts, states) = sample_log(dir.path());
    let full = fs::read(log_path(dir.path())).unwrap();
    let (last_start, end) = (starts[starts.len() - 2], starts[starts.len() - 1]);
    let before = &states[states.len() - 2];
    let crash = tempfile::tempdir().unwrap();
    fs::create_dir_all(crash.path().join(DIR)).unwrap();
    for cut in last_start..end {
        fs::write(log_path(crash.path()), &full[..cut as usize]).unwrap();
        let (log, disk) = RaftLog::open(crash.path()).unwrap();
        assert_eq!(&disk, before, "cut at {cut}");
        assert_eq!(log.file_len(), last_start);
        assert_eq!(
            fs::metadata(log_path(crash.path())).unwrap().len(),
            last_start
        );
    }
    // Cut in the middle of the record, then write again: the new write follows the good ones.
    fs::write(log_path(crash.path()), &full[..(last_start + 7) as usize]).unwrap();
    let (mut log, _) = RaftLog::open(crash.path()).unwrap();
    let again = RaftWrite {
        hard_state: Some(hard_state(9, 0, 4)),
        ..Default::default()
    };
    log.write(&again).unwrap();
    let mut expected = before.clone();
    expected.hard_state = hard_state(9, 0, 4);
    assert_eq!(reopen(crash.path()), expected);
    // The whole record: the state after it.
    fs::write(log_path(crash.path()), &full).unwrap();
    assert_eq!(&reopen(crash.path()), states.last().unwrap());
}

/// A crash can leave zeros where the data of the last write should be (the file length reached
/// the disk, the data did not): that is a torn tail too.
#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (starts, states) = sample_log(dir.path());
    let mut bytes = fs::read(log_path(dir.path())).unwrap();
    let end = *starts.last().unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 5000));
    fs::write(log_path(dir.path()), &bytes).unwrap();
    let (log, disk) = RaftLog::open(dir.path()).unwrap();
    assert_eq!(&disk, states.last().unwrap());
    assert_eq!(log.file_len(), end);
    // Zeros in place of the last record's second half, the file at its full length.
    let last_start = starts[starts.len() - 2];
    let mut bytes = fs::read(log_path(dir.path())).unwrap();
    let mid = ((last_start + end) / 2) as usize;
    bytes[mid..].fill(0);
    fs::write(log_path(dir.path()), &bytes).unwrap();
    assert_eq!(&reopen(dir.path()), &states[states.len() - 2]);
}

/// A damaged record with intact records after it is corruption, not a crash: every flipped byte
/// in any record but the last makes open fail, naming the file and the damaged record's
/// offset, and leaves the file as it was.
#[test]
fn a_flipped_byte_before_intact_records_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (starts, _) = sample_log(dir.path());
    let path = log_path(dir.path());
    let full = fs::read(&path).unwrap();
    let last_start = starts[starts.len() - 2];
    for at in MAGIC.len() as u64..last_start {
        let mut bytes = full.clone();
        bytes[at as usize] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let record = *starts.iter().filter(|s| **s <= at).max().unwrap();
        match RaftLog::open(dir.path()) {
            Err(RaftLogError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, record, "flip at {at}");
            }
            other => panic!("flip at {at}: {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), bytes, "the file is left as it is");
    }
    let mut bytes = full.clone();
    bytes[0] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        RaftLog::open(dir.path()),
        Err(RaftLogError::NotALog { .. })
    ));
    let err = {
        let mut bytes = full.clone();
        bytes[starts[1] as usize + HEADER_LEN + 2] ^= 1;
        fs::write(&path, &bytes).unwrap();
        RaftLog::open(dir.path()).unwrap_err().to_string()
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(&format!("offset {}", starts[1])), "{err}");
}

/// The documented limit: damage to the last record cannot be told from a torn write, so it is
/// dropped as one (the state before that write).
#[test]
fn a_flipped_byte_in_the_last_record_drops_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let (starts, states) = sample_log(dir.path());
    let path = log_path(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let last_start = starts[starts.len() - 2];
    bytes[last_start as usize + HEADER_LEN + 3] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(reopen(dir.path()), states[states.len() - 2]);
}

/// A rewrite interrupted before its rename leaves the temporary file, complete or cut anywhere:
/// open keeps the old log and removes it.
#[test]
fn an_interrupted_rewrite_leaves_the_old_log_and_open_removes_the_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, states) = sample_log(dir.path());
    let old = states.last().unwrap();
    // The file a compaction would have renamed into place.
    let other = tempfile::tempdir().unwrap();
    fs::create_dir_all(other.path().join(DIR)).unwrap();
    fs::copy(log_path(dir.path()), log_path(other.path())).unwrap();
    let (mut log, _) = RaftLog::open(other.path()).unwrap();
    log.compact(&snapshot(4, 3, voters(5), b"compacted"))
        .unwrap();
    let rewritten = fs::read(log_path(other.path())).unwrap();
    let tmp = dir.path().join(DIR).join(TEMP_FILE);
    for cut in (0..=rewritten.len()).step_by(7).chain([rewritten.len()]) {
        fs::write(&tmp, &rewritten[..cut]).unwrap();
        let disk = reopen(dir.path());
        assert_eq!(&disk, old, "temp file cut at {cut}");
        assert!(!tmp.exists(), "the temp file is removed");
    }
    // Once renamed, the new file is the log.
    let mut compacted = old.clone();
    compacted.snapshot = snapshot(4, 3, voters(5), b"compacted");
    compacted.entries.retain(|e| e.index > 4);
    assert_eq!(reopen(other.path()), compacted);
}

/// A fresh directory gets a log with only the magic; an unrelated file is refused untouched.
#[test]
fn a_fresh_dir_starts_empty_and_a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, disk) = RaftLog::open(&dir.path().join("nested")).unwrap();
    assert_eq!(disk, RaftDisk::default());
    assert_eq!(log.file_len(), MAGIC.len() as u64);
    drop(log);
    assert_eq!(reopen(&dir.path().join("nested")), RaftDisk::default());
    for bytes in [&b""[..], b"chraft", b"{\"json\": true}"] {
        fs::write(log_path(&dir.path().join("nested")), bytes).unwrap();
        assert!(matches!(
            RaftLog::open(&dir.path().join("nested")),
            Err(RaftLogError::NotALog { .. })
        ));
        assert_eq!(
            fs::read(log_path(&dir.path().join("nested"))).unwrap(),
            bytes
        );
    }
}

/// A record header (with a good checksum) that claims more than MAX_RECORD bytes is refused
/// before anything is read or allocated for it; a write that would need such a record is
/// refused before anything is written.
#[test]
fn records_over_the_limit_are_refused_on_read_and_on_write() {
    let dir = tempfile::tempdir().unwrap();
    RaftLog::open(dir.path()).unwrap();
    for len in [MAX_RECORD as u32 + 1, u32::MAX] {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.push(RECORD_WRITE);
        let header_crc = crc32fast::hash(&bytes[MAGIC.len()..]);
        bytes.extend_from_slice(&header_crc.to_le_bytes());
        bytes.extend_from_slice(b"short");
        fs::write(log_path(dir.path()), &bytes).unwrap();
        match RaftLog::open(dir.path()) {
            Err(RaftLogError::RecordTooLong { offset, len: l, .. }) => {
                assert_eq!(offset, MAGIC.len() as u64);
                assert_eq!(l, u64::from(len));
            }
            other => panic!("{other:?}"),
        }
    }
    fs::remove_file(log_path(dir.path())).unwrap();
    let (mut log, _) = RaftLog::open(dir.path()).unwrap();
    let small = RaftWrite {
        entries: vec![entry(1, 1, b"small")],
        ..Default::default()
    };
    log.write(&small).unwrap();
    let len = log.file_len();
    let huge = RaftWrite {
        entries: vec![entry(2, 1, &vec![7u8; MAX_WRITE])],
        ..Default::default()
    };
    assert!(matches!(
        log.write(&huge),
        Err(RaftLogError::TooLarge { .. })
    ));
    let huge_snapshot = snapshot(1, 1, voters(1), &vec![7u8; MAX_WRITE]);
    assert!(matches!(
        log.compact(&huge_snapshot),
        Err(RaftLogError::TooLarge { .. })
    ));
    assert_eq!(log.file_len(), len);
    log.write(&RaftWrite {
        entries: vec![entry(2, 1, b"next")],
        ..Default::default()
    })
    .unwrap();
    drop(log);
    assert_eq!(reopen(dir.path()).entries.len(), 2);
}

/// What MemStorage refuses or panics on is refused whole: nothing written, the log unchanged
/// and still usable.
#[test]
fn writes_that_break_the_log_rules_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = RaftLog::open(dir.path()).unwrap();
    log.write(&RaftWrite {
        entries: (1..=5).map(|i| entry(i, 1, b"e")).collect(),
        hard_state: Some(hard_state(1, 1, 5)),
        ..Default::default()
    })
    .unwrap();
    log.compact(&snapshot(2, 1, voters(1), b"at 2")).unwrap();
    let len = log.file_len();
    let before = reopen_copy(dir.path());
    let refused = [
        // A gap after the last index.
        RaftWrite {
            entries: vec![entry(7, 1, b"gap")],
            ..Default::default()
        },
        // Overwriting compacted entries.
        RaftWrite {
            entries: vec![entry(2, 2, b"compacted")],
            ..Default::default()
        },
        // Not contiguous.
        RaftWrite {
            entries: vec![entry(6, 1, b"a"), entry(8, 1, b"b")],
            ..Default::default()
        },
        // A stale snapshot, with a hard state that must not be written either.
        RaftWrite {
            snapshot: Some(snapshot(2, 1, voters(1), b"stale")),
            hard_state: Some(hard_state(9, 9, 9)),
            ..Default::default()
        },
    ];
    for w in &refused {
        let result = log.write(w);
        assert!(
            matches!(result, Err(RaftLogError::Rejected(_))),
            "{result:?}"
        );
        assert_eq!(log.file_len(), len);
    }
    let stored = snapshot(2, 1, voters(1), b"at 2");
    for bad in [
        snapshot(0, 0, voters(1), b""),
        snapshot(1, 1, voters(1), b"older than the stored one"),
        snapshot(6, 1, voters(1), b"past the end"),
        snapshot(4, 7, voters(1), b"wrong term"),
    ] {
        let result = log.compact(&bad);
        assert!(
            matches!(result, Err(RaftLogError::Rejected(_))),
            "{result:?}"
        );
    }
    drop(log);
    let disk = reopen(dir.path());
    assert_eq!(disk, before);
    assert_eq!(disk.snapshot, stored);
    assert_eq!(disk.first_index(), 3);
}

/// `compact` keeps the entries above the snapshot (a snapshot in a Ready drops them all) and
/// raises a lagging durable commit index to it, so raft can start from the result.
#[test]
fn compact_keeps_later_entries_and_raises_a_lagging_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = RaftLog::open(dir.path()).unwrap();
    log.write(&RaftWrite {
        entries: (1..=6).map(|i| entry(i, 2, b"e")).collect(),
        hard_state: Some(hard_state(2, 1, 3)),
        conf_state: Some(voters(3)),
        ..Default::default()
    })
    .unwrap();
    log.compact(&snapshot(4, 2, voters(3), b"applied to 4"))
        .unwrap();
    let disk = reopen(dir.path());
    assert_eq!(disk.snapshot.get_metadata().index, 4);
    assert_eq!(
        disk.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        [5, 6]
    );
    assert_eq!(disk.hard_state, hard_state(2, 1, 4));
    assert_eq!(disk.conf_state, voters(3));
    let storage = disk.to_mem_storage().unwrap();
    assert_eq!(storage.first_index().unwrap(), 5);
    assert_eq!(storage.term(4).unwrap(), 2);
}

/// Size-triggered rewrites keep a log whose live state is small small, however many writes.
#[test]
fn a_log_past_its_size_is_rewritten_with_only_its_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = RaftLog::open(dir.path()).unwrap();
    log.set_compact_at(4096);
    let mut reference = Reference::new();
    let mut largest = 0;
    for i in 0..150u64 {
        // An uncommitted suffix rewritten over and over, and a hard state each time.
        let w = RaftWrite {
            entries: vec![entry(1 + i % 3, i, &[i as u8; 100])],
            hard_state: Some(hard_state(i, 1, 0)),
            ..Default::default()
        };
        log.write(&w).unwrap();
        reference.apply(&w);
        largest = largest.max(log.file_len());
    }
    assert!(largest < 4096 + 300, "the file reached {largest} bytes");
    drop(log);
    reference.assert_matches(&reopen(dir.path()));
}

/// raft-rs itself: a single-voter RawNode elects itself and commits proposals, every Ready goes
/// through the log, then a new RawNode starts from what the log kept (before and after a
/// compaction) with the same term, vote, commit and log, and commits more.
#[test]
fn a_raft_node_restarts_from_what_the_log_kept() {
    use raft::{Config, RawNode};

    fn drive(node: &mut RawNode<MemStorage>, log: &mut RaftLog) {
        while node.has_ready() {
            let mut rd = node.ready();
            let w = RaftWrite {
                snapshot: (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone()),
                entries: rd.entries().clone(),
                hard_state: rd.hs().cloned(),
                conf_state: None,
            };
            log.write(&w).unwrap();
            {
                let mut core = node.mut_store().wl();
                if let Some(s) = &w.snapshot {
                    core.apply_snapshot(s.clone()).unwrap();
                }
                core.append(&w.entries).unwrap();
                if let Some(hs) = &w.hard_state {
                    core.set_hardstate(hs.clone());
                }
            }
            assert!(rd.take_persisted_messages().is_empty());
            let light = node.advance(rd);
            if let Some(commit) = light.commit_index() {
                let hs = {
                    let mut core = node.mut_store().wl();
                    core.mut_hard_state().commit = commit;
                    core.hard_state().clone()
                };
                log.write(&RaftWrite {
                    hard_state: Some(hs),
                    ..Default::default()
                })
                .unwrap();
            }
            node.advance_apply();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let (mut log, _) = RaftLog::open(dir.path()).unwrap();
    let conf = voters(1);
    log.write(&RaftWrite {
        conf_state: Some(conf.clone()),
        ..Default::default()
    })
    .unwrap();
    let config = Config {
        id: 1,
        ..Config::default()
    };
    let mut node = RawNode::new(&config, MemStorage::new_with_conf_state(conf), &logger).unwrap();
    node.campaign().unwrap();
    drive(&mut node, &mut log);
    for i in 0..5u8 {
        node.propose(vec![], vec![i]).unwrap();
        drive(&mut node, &mut log);
    }
    let (term, commit, last) = (
        node.raft.term,
        node.raft.raft_log.committed,
        node.raft.raft_log.last_index(),
    );
    assert_eq!(commit, last);
    drop(log);

    let (mut log, disk) = RaftLog::open(dir.path()).unwrap();
    let restored = disk.to_mem_storage().unwrap();
    assert_eq!(
        restored.initial_state().unwrap().hard_state,
        node.store().initial_state().unwrap().hard_state
    );
    let mut again = RawNode::new(&config, restored, &logger).unwrap();
    assert_eq!(again.raft.term, term);
    assert_eq!(again.raft.vote, 1);
    assert_eq!(again.raft.raft_log.committed, commit);
    assert_eq!(again.raft.raft_log.last_index(), last);
    again.campaign().unwrap();
    drive(&mut again, &mut log);
    assert!(again.raft.term > term);
    again.propose(vec![], b"after restart".to_vec()).unwrap();
    drive(&mut again, &mut log);
    let commit = again.raft.raft_log.committed;
    assert_eq!(commit, again.raft.raft_log.last_index());

    // The node snapshots its applied state; the log compacts to it and raft starts from that.
    let term_at = again.store().term(commit).unwrap();
    log.compact(&snapshot(commit, term_at, voters(1), b"state"))
        .unwrap();
    drop(log);
    let (mut log, disk) = RaftLog::open(dir.path()).unwrap();
    assert!(disk.entries.is_empty());
    let config = Config {
        applied: commit,
        ..config
    };
    let mut third = RawNode::new(&config, disk.to_mem_storage().unwrap(), &logger).unwrap();
    assert_eq!(third.raft.raft_log.committed, commit);
    third.campaign().unwrap();
    drive(&mut third, &mut log);
    third.propose(vec![], b"after compaction".to_vec()).unwrap();
    drive(&mut third, &mut log);
    assert_eq!(
        third.raft.raft_log.committed,
        third.raft.raft_log.last_index()
    );
    drop(log);
    assert_eq!(
        reopen(dir.path()).last_index(),
        third.raft.raft_log.last_index()
    );
}

const KILL_DIR_ENV: &str = "CHORUS_RAFTLOG_KILL_DIR";

/// The child of `kill_9_never_loses_an_acknowledged_write`: a no-op unless the parent set
/// `KILL_DIR_ENV`. It appends one entry per write (index `i`, data `i` then padding), with a
/// hard state whose commit is `i`, compacts every 40 writes and rewrites at 32 KiB, and prints
/// `ack i` once each write has returned.
#[test]
fn kill_9_child() {
    let Some(dir) = std::env::var_os(KILL_DIR_ENV) else {
        return;
    };
    let (mut log, disk) = RaftLog::open(Path::new(&dir)).unwrap();
    log.set_compact_at(32 << 10);
    let mut out = io::stdout().lock();
    let mut i = disk.last_index() + 1;
    loop {
        let mut data = i.to_le_bytes().to_vec();
        data.resize(8 + (i as usize * 37) % 900, 0xab);
        log.write(&RaftWrite {
            entries: vec![entry(i, 1, &data)],
            hard_state: Some(hard_state(1, 1, i)),
            ..Default::default()
        })
        .unwrap();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
        if i % 40 == 0 {
            log.compact(&snapshot(i - 5, 1, voters(1), &i.to_le_bytes()))
                .unwrap();
        }
        i += 1;
    }
}

/// A real crash of the writing process: a child writes in a loop and reports each write that
/// returned; the parent SIGKILLs it at a random moment, 20 times, and after each kill every
/// acknowledged write is in the reopened log (entries, commit index), with no temp file left.
#[test]
fn kill_9_never_loses_an_acknowledged_write() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut total = 0u64;
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "raftlog::tests::kill_9_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.strip_prefix("ack ") {
                    acked.push(i.parse::<u64>().unwrap());
                    if acked.len() == 1 {
                        let _ = first_tx.send(());
                    }
                }
            }
            acked
        });
        let started = first_rx.recv_timeout(Duration::from_secs(30)).is_ok();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(started, "round {round}: the child acknowledged nothing");
        let newest = *acked.last().unwrap();
        total += acked.len() as u64;
        let tmp_left = dir.path().join(DIR).join(TEMP_FILE).exists();
        let started_at = Instant::now();
        let disk = reopen(dir.path());
        let reopen_ms = started_at.elapsed().as_millis();
        assert!(disk.last_index() >= newest, "round {round}: lost {newest}");
        assert!(disk.hard_state.commit >= newest, "round {round}");
        let kept_from = disk.first_index();
        for e in &disk.entries {
            assert_eq!(e.data[..8], e.index.to_le_bytes(), "round {round}");
        }
        assert!(kept_from <= newest + 1);
        assert!(!dir.path().join(DIR).join(TEMP_FILE).exists());
        eprintln!(
            "round {round}: {} acked (newest {newest}), log ends at {}, killed mid-rewrite: {tmp_left}, reopened in {reopen_ms} ms",
            acked.len(),
            disk.last_index()
        );
    }
    assert!(total > 20);
}

proptest! {
    // `CHORUS_FUZZ_CASES` cases, as every `fuzz_` harness (scripts/fuzz.sh runs them longer).
    #![proptest_config(ProptestConfig { cases: crate::api::fuzz_cases(), ..ProptestConfig::default() })]

    /// Any bytes as the log file, with or without the magic in front: open returns an error or
    /// a state raft can start from, never a panic.
    #[test]
    fn fuzz_any_file_opens_or_errors(
        magic in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        let mut file = if magic { MAGIC.to_vec() } else { Vec::new() };
        file.extend_from_slice(&bytes);
        fs::write(log_path(dir.path()), &file).unwrap();
        if let Ok((_, disk)) = RaftLog::open(dir.path()) {
            disk.to_mem_storage().unwrap();
        }
    }

    /// Arbitrary payloads in intact frames (so the checksums pass and the decoder sees them):
    /// an error or a state, never a panic.
    #[test]
    fn fuzz_intact_records_with_any_payload_open_or_error(
        records in proptest::collection::vec(
            (proptest::option::weighted(0.8, Just(RECORD_WRITE)),
             proptest::collection::vec(any::<u8>(), 0..300)),
            1..4,
        ),
        parts in proptest::collection::vec((1u8..5, proptest::collection::vec(any::<u8>(), 0..60)), 0..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        let mut file = MAGIC.to_vec();
        // One record of well-framed parts with arbitrary protobuf bytes.
        let mut payload = Vec::new();
        for (kind, bytes) in &parts {
            payload.push(*kind);
            payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            payload.extend_from_slice(bytes);
        }
        push_record(&mut file, &payload, MAX_WRITE).unwrap();
        for (kind, payload) in &records {
            let start = file.len();
            push_record(&mut file, payload, MAX_WRITE).unwrap();
            file[start + 8] = kind.unwrap_or(9);
            let header_crc = crc32fast::hash(&file[start..start + 9]);
            file[start + 9..start + 13].copy_from_slice(&header_crc.to_le_bytes());
        }
        fs::write(log_path(dir.path()), &file).unwrap();
        if let Ok((_, disk)) = RaftLog::open(dir.path()) {
            disk.to_mem_storage().unwrap();
        }
    }

    /// A real log, then flipped bytes, a cut and garbage: an error or a state, never a panic;
    /// a cut alone always opens.
    #[test]
    fn fuzz_damaged_real_log_opens_or_errors(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
        cut in any::<prop::sample::Index>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        log.set_compact_at(u64::MAX);
        log.write(&RaftWrite { conf_state: Some(voters(3)), ..Default::default() }).unwrap();
        log.write(&RaftWrite {
            entries: (1..=3).map(|i| entry(i, 1, b"x")).collect(),
            hard_state: Some(hard_state(1, 1, 2)),
            ..Default::default()
        }).unwrap();
        drop(log);
        let full = fs::read(log_path(dir.path())).unwrap();
        let mut bytes = full[..cut.index(full.len() + 1)].to_vec();
        if bytes.len() >= MAGIC.len() {
            fs::write(log_path(dir.path()), &bytes).unwrap();
            RaftLog::open(dir.path()).unwrap();
        }
        for (at, mask) in &flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
        }
        bytes.extend_from_slice(&garbage);
        fs::write(log_path(dir.path()), &bytes).unwrap();
        if let Ok((_, disk)) = RaftLog::open(dir.path()) {
            disk.to_mem_storage().unwrap();
        }
    }
}
