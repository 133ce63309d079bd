//! The durable Raft log: what the node's Raft state (chorus-core, over raft-rs' `MemStorage`)
//! must find again after a restart or a crash.
//!
//! Every `Ready` the Raft node hands the agent a [`RaftWrite`]; [`RaftLog::write`] returns only
//! once it is on disk (fsync), so the agent sends the messages that depend on it after that.
//! At start [`RaftLog::open`] gives back a [`RaftDisk`], which [`RaftDisk::to_mem_storage`]
//! turns into the `MemStorage` the node starts from.
//!
//! # Semantics
//! A write is applied as `MemStorageCore` applies it, in this order: the snapshot
//! (`apply_snapshot`: every entry is dropped, the hard state's commit becomes the snapshot's
//! index and its term the larger of the two, the conf state becomes the snapshot's), the
//! entries (`append`: they replace every entry at their first index and above), the hard state
//! (replaced whole), the conf state (replaced whole, as `set_conf_state` does when the node
//! applies a membership change or bootstraps). A write that `MemStorage` would refuse (a stale
//! snapshot) or panic on (a gap, an overwrite of compacted entries) is refused whole with
//! [`RaftLogError::Rejected`] and nothing is written. [`RaftLog::compact`] stores a snapshot the
//! node made of its own state and drops the entries it covers.
//!
//! # Format
//! One file, `<dir>/raft/log`: the 8-byte magic [`MAGIC`], then records, each
//!
//! ```text
//! len: u32 LE | crc: u32 LE (CRC32 of payload) | type: u8 | hcrc: u32 LE (CRC32 of the 9 bytes before) | payload: len bytes
//! ```
//!
//! The only type is 1, a write; its payload is a sequence of parts `kind: u8 | len: u32 LE |
//! protobuf bytes` (`write_to_bytes` of raft's `eraftpb` messages): at most one snapshot (1),
//! then entries (2), at most one hard state (3), at most one conf state (4), in that order.
//! A file is replayed by applying its records in order from an empty state.
//!
//! # Crash safety
//! - One write is one record, written with one `write` call and then `fdatasync` (which also
//!   makes the file's new length durable). A crash can only damage the record being written,
//!   and that record is the last in the file, since nothing is appended after a failed write
//!   (the log refuses writes until reopened).
//! - On open a damaged record (cut short, a checksum that does not match, or zeros a crash left
//!   in place of data) is a torn tail when no intact record (both checksums good) starts
//!   anywhere after it: the file is truncated there and the state is that before the write that
//!   never returned. When an intact record does follow, the damage is corruption, and `open`
//!   fails naming the file and the offset, leaving the file as it is: acknowledged data is never
//!   dropped silently. The header checksum is what makes the length trustworthy, so a flipped
//!   length cannot make good records after it look like the inside of a torn one.
//! - The log is rewritten (live state only) when it passes [`COMPACT_AT`] bytes (then twice the
//!   size of the last rewrite) and on [`RaftLog::compact`]: into [`TEMP_FILE`], fsync, rename over
//!   [`LOG_FILE`], fsync of the directory. A crash at any point leaves the old file or the new
//!   one, each complete; open removes a leftover temporary file.
//! - The directory `<dir>/raft` is fsynced into `<dir>` when it is created, and the log file is
//!   only ever created by the same rename, so a log file always has its magic.
//!
//! # Limits
//! - A record over [`MAX_RECORD`] bytes is refused on read, and a write over [`MAX_WRITE`] is
//!   refused before anything is written (the difference leaves room for a rewrite's records).
//! - The whole file is read into memory on open, and the live state (entries since the last
//!   [`RaftLog::compact`]) is kept in memory: the node must compact to keep both small.
//! - Damage to the last record that is not a crash (a flipped bit on disk) looks like a torn
//!   tail and drops that record: a checksum cannot tell the two apart.
//! - A write costs one `fdatasync`: about 4 ms at p50 (12 ms at p99) on the 2-core development
//!   VM's ext4 disk, whatever its size up to ten 1 KiB entries (`examples/raftlog_cost.rs`).
//! - Finding out whether damage is a torn tail scans the rest of the file once (a 13-byte
//!   checksum at each offset); that happens only on open after a crash or corruption.
//! - A missing log file is a fresh node: deleting it forgets the node's term and vote, which
//!   lets it vote twice in a term. The agent's data dir lock keeps a second process out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;

/// The directory under the data dir that holds the log.
pub const DIR: &str = "raft";
/// The log file in [`DIR`].
pub const LOG_FILE: &str = "log";
/// Where a rewrite is prepared before it is renamed over [`LOG_FILE`].
pub const TEMP_FILE: &str = "log.tmp";
/// The first bytes of every log file (name and format version 1).
pub const MAGIC: [u8; 8] = *b"chraft\x00\x01";
/// Bytes before a record's payload: length, payload CRC, type, header CRC.
pub const HEADER_LEN: usize = 13;
/// The longest record payload `open` accepts.
pub const MAX_RECORD: usize = 64 << 20;
/// The longest record payload `write` produces; one MiB under [`MAX_RECORD`] so that a rewrite,
/// which puts the hard and conf states beside what a write held alone, still fits.
pub const MAX_WRITE: usize = MAX_RECORD - (1 << 20);
/// The file size past which a write rewrites the log with only its live state.
pub const COMPACT_AT: u64 = 4 << 20;

const RECORD_WRITE: u8 = 1;
const PART_SNAPSHOT: u8 = 1;
const PART_ENTRY: u8 = 2;
const PART_HARD_STATE: u8 = 3;
const PART_CONF_STATE: u8 = 4;
const PART_HEADER_LEN: usize = 5;

/// What went wrong; each variant says what became of the log.
#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    /// A file operation failed. In `open` nothing was loaded; in `write` or `compact` the change
    /// may or may not be durable and the log refuses further writes until it is reopened.
    #[error("raft log {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The log file does not start with [`MAGIC`]; it is left as it is and nothing was loaded.
    #[error("{path} is not a chorus raft log (bad magic); it is left as it is")]
    NotALog { path: PathBuf },
    /// A record before the end of the file is damaged or cannot be replayed; the file is left
    /// as it is and nothing was loaded.
    #[error("raft log {path} is corrupt at offset {offset}: {reason}; the file is left as it is")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An intact record header claims more than [`MAX_RECORD`] bytes; the file is left as it is
    /// and nothing was loaded.
    #[error("raft log {path}: the record at offset {offset} claims {len} bytes, over the {max}-byte limit; the file is left as it is")]
    RecordTooLong {
        path: PathBuf,
        offset: u64,
        len: u64,
        max: usize,
    },
    /// The write or compaction breaks Raft's log rules (what `MemStorage` refuses or panics
    /// on); nothing was written and the log is unchanged.
    #[error("raft write refused, nothing written: {0}")]
    Rejected(String),
    /// The write would make a record over [`MAX_WRITE`] bytes; nothing was written.
    #[error("raft write of about {len} bytes is over the {max}-byte limit; nothing written")]
    TooLarge { len: usize, max: usize },
    /// rust-protobuf could not encode a message; nothing was written.
    #[error("cannot encode a raft message, nothing written: {0}")]
    Encode(#[source] protobuf::ProtobufError),
    /// An earlier write or compaction failed part way; nothing was written. Reopening the log
    /// (restarting the agent) reads what reached the disk.
    #[error("raft log {path} refuses writes after an earlier failure; reopen it")]
    Poisoned { path: PathBuf },
}

/// One Ready's worth of durable changes, in the order they must be applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftWrite {
    /// `Ready::snapshot()` when it is not empty.
    pub snapshot: Option<Snapshot>,
    /// `Ready::entries()`: they replace every entry at their first index and above.
    pub entries: Vec<Entry>,
    /// `Ready::hs()`, or the hard state with a `LightReady`'s commit index.
    pub hard_state: Option<HardState>,
    /// The conf state the node gave `MemStorage` (bootstrap, or `apply_conf_change`'s result).
    pub conf_state: Option<ConfState>,
}

impl RaftWrite {
    fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
    }
}

/// What was durable at the last write, as raft's `MemStorage` needs it to start again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftDisk {
    /// The last snapshot stored (index 0, i.e. `Snapshot::default()`, if none).
    pub snapshot: Snapshot,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Term, vote and commit index, as `MemStorageCore::hard_state` holds them.
    pub hard_state: HardState,
    /// The voters and learners, as `RaftState::conf_state` holds them.
    pub conf_state: ConfState,
}

impl RaftDisk {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// `MemStorage::first_index` of this state.
    pub fn first_index(&self) -> u64 {
        match self.entries.first() {
            Some(e) => e.index,
            None => self.snapshot_index().saturating_add(1),
        }
    }

    /// `MemStorage::last_index` of this state.
    pub fn last_index(&self) -> u64 {
        match self.entries.last() {
            Some(e) => e.index,
            None => self.snapshot_index(),
        }
    }

    /// The term of the entry at `index`, or of the snapshot when `index` is its index.
    fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index() {
            return Some(self.snapshot.get_metadata().term);
        }
        let offset = index.checked_sub(self.first_index())?;
        let offset = usize::try_from(offset).ok()?;
        self.entries.get(offset).map(|e| e.term)
    }

    /// Why `w` cannot be applied to this state, if it cannot: the cases where `MemStorage`
    /// returns an error or panics, and entries that are not contiguous.
    fn check(&self, w: &RaftWrite) -> Result<(), String> {
        let (mut first, mut last) = (self.first_index(), self.last_index());
        if let Some(snapshot) = &w.snapshot {
            let index = snapshot.get_metadata().index;
            if first > index {
                return Err(format!(
                    "the snapshot at index {index} is out of date (the log starts at {first})"
                ));
            }
            first = index
                .checked_add(1)
                .ok_or_else(|| format!("the snapshot index {index} is the largest u64"))?;
            last = index;
        }
        if let Some(head) = w.entries.first() {
            if head.index < first {
                return Err(format!(
                    "entries from index {} would overwrite compacted entries (the log starts at {first})",
                    head.index
                ));
            }
            if head.index > last.saturating_add(1) {
                return Err(format!(
                    "entries from index {} leave a gap after the last index {last}",
                    head.index
                ));
            }
            for (k, e) in w.entries.iter().enumerate() {
                let expected = u64::try_from(k)
                    .ok()
                    .and_then(|k| head.index.checked_add(k));
                if expected != Some(e.index) {
                    return Err(format!(
                        "entries are not contiguous: index {} follows {}",
                        e.index, head.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies a write that [`RaftDisk::check`] accepted, as `MemStorageCore` does.
    fn apply(&mut self, w: RaftWrite) {
        if let Some(snapshot) = w.snapshot {
            let meta = snapshot.get_metadata();
            self.hard_state.term = self.hard_state.term.max(meta.term);
            self.hard_state.commit = meta.index;
            self.conf_state = meta.get_conf_state().clone();
            self.entries.clear();
            self.snapshot = snapshot;
        }
        if let Some(head) = w.entries.first() {
            let keep = head.index.saturating_sub(self.first_index());
            self.entries
                .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            self.entries.extend(w.entries);
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
        if let Some(cs) = w.conf_state {
            self.conf_state = cs;
        }
    }

    /// This state as one write that rebuilds it from nothing.
    fn as_write(&self) -> RaftWrite {
        RaftWrite {
            snapshot: (self.snapshot_index() > 0).then(|| self.snapshot.clone()),
            entries: self.entries.clone(),
            hard_state: Some(self.hard_state.clone()),
            conf_state: Some(self.conf_state.clone()),
        }
    }

    /// The `MemStorage` the Raft node starts from: this snapshot applied, these entries
    /// appended, this hard state and conf state set.
    pub fn to_mem_storage(&self) -> Result<MemStorage, RaftLogError> {
        let w = self.as_write();
        RaftDisk::default()
            .check(&w)
            .map_err(RaftLogError::Rejected)?;
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            if let Some(snapshot) = w.snapshot {
                core.apply_snapshot(snapshot)
                    .map_err(|e| RaftLogError::Rejected(e.to_string()))?;
            }
            core.append(&w.entries)
                .map_err(|e| RaftLogError::Rejected(e.to_string()))?;
            core.set_hardstate(self.hard_state.clone());
            core.set_conf_state(self.conf_state.clone());
        }
        Ok(storage)
    }
}

/// The durable Raft log of one node. See the module doc for the format and the guarantees.
#[derive(Debug)]
pub struct RaftLog {
    dir: PathBuf,
    path: PathBuf,
    /// Open for reading and appending; after a rewrite, the renamed file.
    file: File,
    len: u64,
    state: RaftDisk,
    compact_at: u64,
    rewrite_at: u64,
    poisoned: bool,
}

impl RaftLog {
    /// Opens the log in `dir/raft/` (creating both if missing), drops a torn tail, and returns
    /// the log with the state it holds.
    pub fn open(dir: &Path) -> Result<(RaftLog, RaftDisk), RaftLogError> {
        let raft_dir = dir.join(DIR);
        if !raft_dir.is_dir() {
            let dir_existed = dir.is_dir();
            fs::create_dir_all(&raft_dir).map_err(io_err(&raft_dir, "create directory"))?;
            // The new directory entries must survive a crash like the file in them.
            sync_dir(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !dir_existed && p.is_dir()) {
                sync_dir(parent)?;
            }
        }
        let path = raft_dir.join(LOG_FILE);
        let tmp = raft_dir.join(TEMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(path = %tmp.display(), "raft log: removed an unfinished rewrite");
                sync_dir(&raft_dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp, "remove")(e)),
        }
        let (file, len, state) = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .map_err(io_err(&path, "read"))?;
                let replayed = replay(&path, &bytes)?;
                if let Some(reason) = &replayed.torn {
                    tracing::warn!(
                        path = %path.display(),
                        offset = replayed.good_len,
                        dropped = bytes.len() - replayed.good_len,
                        reason = %reason,
                        "raft log: dropped a torn tail (a write cut short by a crash)"
                    );
                    file.set_len(replayed.good_len as u64)
                        .map_err(io_err(&path, "truncate"))?;
                    file.sync_all().map_err(io_err(&path, "fsync"))?;
                }
                (file, replayed.good_len as u64, replayed.state)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let state = RaftDisk::default();
                let (file, len) = write_atomically(&raft_dir, &state)?;
                (file, len, state)
            }
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let log = RaftLog {
            dir: raft_dir,
            path,
            file,
            len,
            state: state.clone(),
            compact_at: COMPACT_AT,
            rewrite_at: COMPACT_AT,
            poisoned: false,
        };
        Ok((log, state))
    }

    /// Makes `w` durable: on `Ok` it is on disk (fsync) and survives any crash.
    pub fn write(&mut self, w: &RaftWrite) -> Result<(), RaftLogError> {
        self.usable()?;
        if w.is_empty() {
            return Ok(());
        }
        self.state.check(w).map_err(RaftLogError::Rejected)?;
        let mut record = Vec::new();
        encode_write(w, &mut record)?;
        let grown = self.len.saturating_add(record.len() as u64);
        self.state.apply(w.clone());
        if grown > self.rewrite_at {
            self.rewrite()
        } else {
            self.append(&record)
        }
    }

    /// Stores `snapshot`, a snapshot the node made of its own applied state, and drops the
    /// entries at or below its index (`MemStorageCore::compact(index + 1)` drops the same
    /// ones), then rewrites the file. Unlike a snapshot in a write, the entries above it are
    /// kept. The durable commit index is raised to the snapshot's index if it was below (the
    /// node applied those entries, so they are committed; raft refuses to start with a commit
    /// index under its first index).
    pub fn compact(&mut self, snapshot: &Snapshot) -> Result<(), RaftLogError> {
        self.usable()?;
        let meta = snapshot.get_metadata();
        let (index, stored) = (meta.index, self.state.snapshot_index());
        if index == 0 {
            return Err(RaftLogError::Rejected(
                "a snapshot at index 0 covers nothing".into(),
            ));
        }
        if index < stored {
            return Err(RaftLogError::Rejected(format!(
                "the snapshot at index {index} is older than the stored one at {stored}"
            )));
        }
        match self.state.term(index) {
            None => {
                return Err(RaftLogError::Rejected(format!(
                    "the snapshot at index {index} is past the last index {}",
                    self.state.last_index()
                )))
            }
            Some(term) if term != meta.term => {
                return Err(RaftLogError::Rejected(format!(
                    "the snapshot at index {index} has term {} but the log has term {term} there",
                    meta.term
                )))
            }
            Some(_) => {}
        }
        // The rewrite puts the snapshot in a record of its own, which must fit a write's limit.
        let estimate = estimate_snapshot(snapshot);
        if estimate > MAX_WRITE {
            return Err(RaftLogError::TooLarge {
                len: estimate,
                max: MAX_WRITE,
            });
        }
        let mut part = Vec::new();
        push_part(&mut part, PART_SNAPSHOT, snapshot)?;
        if part.len() > MAX_WRITE {
            return Err(RaftLogError::TooLarge {
                len: part.len(),
                max: MAX_WRITE,
            });
        }
        let first = self.state.first_index();
        let drop = usize::try_from(index.saturating_add(1).saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(self.state.entries.len());
        self.state.entries.drain(..drop);
        self.state.snapshot = snapshot.clone();
        self.state.hard_state.commit = self.state.hard_state.commit.max(index);
        self.rewrite()
    }

    /// Sets the size past which a write rewrites the log (default [`COMPACT_AT`]).
    pub fn set_compact_at(&mut self, bytes: u64) {
        self.compact_at = bytes;
        self.rewrite_at = bytes;
    }

    /// The log file's current length in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn usable(&self) -> Result<(), RaftLogError> {
        if self.poisoned {
            return Err(RaftLogError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn append(&mut self, record: &[u8]) -> Result<(), RaftLogError> {
        // fdatasync suffices: it makes the data and the new file length durable.
        let done = self
            .file
            .write_all(record)
            .map_err(io_err(&self.path, "append"))
            .and_then(|()| self.file.sync_data().map_err(io_err(&self.path, "fsync")));
        match done {
            Ok(()) => {
                self.len = self.len.saturating_add(record.len() as u64);
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn rewrite(&mut self) -> Result<(), RaftLogError> {
        match write_atomically(&self.dir, &self.state) {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.rewrite_at = self.compact_at.max(len.saturating_mul(2));
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> RaftLogError {
    let path = path.to_path_buf();
    move |source| RaftLogError::Io { path, op, source }
}

fn sync_dir(dir: &Path) -> Result<(), RaftLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

/// Writes `state` as a complete log file under a temporary name, makes it durable and renames
/// it over the log; returns the file, open for appending, and its length.
fn write_atomically(raft_dir: &Path, state: &RaftDisk) -> Result<(File, u64), RaftLogError> {
    let mut bytes = MAGIC.to_vec();
    encode_state(state, &mut bytes)?;
    let tmp = raft_dir.join(TEMP_FILE);
    let path = raft_dir.join(LOG_FILE);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp, "remove")(e)),
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    file.write_all(&bytes).map_err(io_err(&tmp, "write"))?;
    file.sync_all().map_err(io_err(&tmp, "fsync"))?;
    fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
    sync_dir(raft_dir)?;
    Ok((file, bytes.len() as u64))
}

/// Appends records that rebuild `state` from nothing: the snapshot alone, the entries in
/// chunks of at most [`MAX_WRITE`] bytes, then the hard and conf states (none for an empty
/// state). Each piece was accepted by a write, so each record fits [`MAX_RECORD`].
fn encode_state(state: &RaftDisk, out: &mut Vec<u8>) -> Result<(), RaftLogError> {
    let w = state.as_write();
    if let Some(snapshot) = &w.snapshot {
        let mut payload = Vec::new();
        push_part(&mut payload, PART_SNAPSHOT, snapshot)?;
        push_record(out, &payload, MAX_RECORD)?;
    }
    let mut payload = Vec::new();
    for e in &w.entries {
        let mut part = Vec::new();
        push_part(&mut part, PART_ENTRY, e)?;
        if !payload.is_empty() && payload.len().saturating_add(part.len()) > MAX_WRITE {
            push_record(out, &payload, MAX_RECORD)?;
            payload.clear();
        }
        payload.extend_from_slice(&part);
    }
    if !payload.is_empty() {
        push_record(out, &payload, MAX_RECORD)?;
    }
    if *state == RaftDisk::default() {
        // A fresh log is the magic alone.
        return Ok(());
    }
    let mut payload = Vec::new();
    push_part(&mut payload, PART_HARD_STATE, &state.hard_state)?;
    push_part(&mut payload, PART_CONF_STATE, &state.conf_state)?;
    push_record(out, &payload, MAX_RECORD)
}

/// Appends the one record that holds `w`.
fn encode_write(w: &RaftWrite, out: &mut Vec<u8>) -> Result<(), RaftLogError> {
    // rust-protobuf 2 sizes messages in u32, so an absurd write is refused before it is sized.
    let estimate = w
        .entries
        .iter()
        .map(estimate_entry)
        .fold(
            w.snapshot.as_ref().map_or(0, estimate_snapshot),
            usize::saturating_add,
        )
        .saturating_add(w.conf_state.as_ref().map_or(0, estimate_conf_state));
    if estimate > MAX_WRITE {
        return Err(RaftLogError::TooLarge {
            len: estimate,
            max: MAX_WRITE,
        });
    }
    let mut payload = Vec::new();
    if let Some(snapshot) = &w.snapshot {
        push_part(&mut payload, PART_SNAPSHOT, snapshot)?;
    }
    for e in &w.entries {
        push_part(&mut payload, PART_ENTRY, e)?;
    }
    if let Some(hs) = &w.hard_state {
        push_part(&mut payload, PART_HARD_STATE, hs)?;
    }
    if let Some(cs) = &w.conf_state {
        push_part(&mut payload, PART_CONF_STATE, cs)?;
    }
    push_record(out, &payload, MAX_WRITE)
}

/// An upper bound of an entry's encoded size: its bytes plus its fixed fields and tags.
fn estimate_entry(e: &Entry) -> usize {
    e.data
        .len()
        .saturating_add(e.context.len())
        .saturating_add(64)
}

fn estimate_snapshot(s: &Snapshot) -> usize {
    s.data
        .len()
        .saturating_add(estimate_conf_state(s.get_metadata().get_conf_state()))
        .saturating_add(64)
}

fn estimate_conf_state(cs: &ConfState) -> usize {
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .map(|ids| ids.len().saturating_mul(11))
    .fold(64, usize::saturating_add)
}

fn push_part(out: &mut Vec<u8>, kind: u8, msg: &dyn protobuf::Message) -> Result<(), RaftLogError> {
    let bytes = msg.write_to_bytes().map_err(RaftLogError::Encode)?;
    let len = u32::try_from(bytes.len()).map_err(|_| RaftLogError::TooLarge {
        len: bytes.len(),
        max: MAX_WRITE,
    })?;
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Appends a record holding `payload`, refused over `max` bytes: [`MAX_WRITE`] for a write,
/// [`MAX_RECORD`] for a rewrite, whose records hold what writes held, regrouped.
fn push_record(out: &mut Vec<u8>, payload: &[u8], max: usize) -> Result<(), RaftLogError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= max)
        .ok_or(RaftLogError::TooLarge {
            len: payload.len(),
            max,
        })?;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.push(RECORD_WRITE);
    let header_crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// What one record's bytes at an offset are.
enum Record<'a> {
    Intact {
        kind: u8,
        payload: &'a [u8],
        next: usize,
    },
    /// The header checksum matches but the length is over [`MAX_RECORD`].
    TooLong(u64),
    Damaged(&'static str),
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_record(buf: &[u8], at: usize) -> Record<'_> {
    let rest = buf.get(at..).unwrap_or_default();
    let Some(header) = rest.get(..HEADER_LEN) else {
        return Record::Damaged("the record header is cut short");
    };
    let (Some(len), Some(crc), Some(header_crc)) = (
        read_u32(header, 0),
        read_u32(header, 4),
        read_u32(header, 9),
    ) else {
        return Record::Damaged("the record header is cut short");
    };
    if crc32fast::hash(&header[..9]) != header_crc {
        return Record::Damaged("the record header's checksum does not match");
    }
    let len = u64::from(len);
    let Some(len) = usize::try_from(len).ok().filter(|l| *l <= MAX_RECORD) else {
        return Record::TooLong(len);
    };
    let Some(payload) = HEADER_LEN
        .checked_add(len)
        .and_then(|end| rest.get(HEADER_LEN..end))
    else {
        return Record::Damaged("the record payload is cut short");
    };
    if crc32fast::hash(payload) != crc {
        return Record::Damaged("the record payload's checksum does not match");
    }
    Record::Intact {
        kind: header[8],
        payload,
        next: at + HEADER_LEN + len,
    }
}

/// The offset of the first intact record starting at or after `from`, if any.
fn intact_record_from(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|at| matches!(read_record(buf, *at), Record::Intact { .. }))
}

struct Replayed {
    state: RaftDisk,
    /// Where the last intact record ends.
    good_len: usize,
    /// Why the bytes after `good_len` are a torn tail, when there are any.
    torn: Option<&'static str>,
}

fn replay(path: &Path, buf: &[u8]) -> Result<Replayed, RaftLogError> {
    if buf.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(RaftLogError::NotALog {
            path: path.to_path_buf(),
        });
    }
    let corrupt = |offset: usize, reason: String| RaftLogError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut state = RaftDisk::default();
    let mut at = MAGIC.len();
    while at < buf.len() {
        match read_record(buf, at) {
            Record::Intact {
                kind,
                payload,
                next,
            } => {
                if kind != RECORD_WRITE {
                    return Err(corrupt(at, format!("unknown record type {kind}")));
                }
                let w = decode_write(payload).map_err(|r| corrupt(at, r))?;
                state
                    .check(&w)
                    .map_err(|r| corrupt(at, format!("the record cannot be replayed: {r}")))?;
                state.apply(w);
                at = next;
            }
            Record::TooLong(len) => {
                return Err(RaftLogError::RecordTooLong {
                    path: path.to_path_buf(),
                    offset: at as u64,
                    len,
                    max: MAX_RECORD,
                })
            }
            Record::Damaged(reason) => {
                if let Some(good) = intact_record_from(buf, at + 1) {
                    return Err(corrupt(
                        at,
                        format!("{reason}, and an intact record follows at offset {good}"),
                    ));
                }
                return Ok(Replayed {
                    state,
                    good_len: at,
                    torn: Some(reason),
                });
            }
        }
    }
    Ok(Replayed {
        state,
        good_len: at,
        torn: None,
    })
}

fn decode_write(payload: &[u8]) -> Result<RaftWrite, String> {
    let mut w = RaftWrite::default();
    let mut at = 0;
    let mut last_kind = 0;
    while at < payload.len() {
        let (Some(&kind), Some(len)) = (payload.get(at), read_u32(payload, at + 1)) else {
            return Err(format!("part header at {at} in the record is cut short"));
        };
        let start = at + PART_HEADER_LEN;
        let Some(bytes) = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .and_then(|end| payload.get(start..end))
        else {
            return Err(format!("part at {at} in the record runs past its end"));
        };
        if kind < last_kind || (kind == last_kind && kind != PART_ENTRY) {
            return Err(format!("part of kind {kind} out of order in the record"));
        }
        let bad = |what: &str, e: protobuf::ProtobufError| format!("bad {what} in the record: {e}");
        match kind {
            PART_SNAPSHOT => {
                w.snapshot =
                    Some(Snapshot::parse_from_bytes(bytes).map_err(|e| bad("snapshot", e))?)
            }
            PART_ENTRY => w
                .entries
                .push(Entry::parse_from_bytes(bytes).map_err(|e| bad("entry", e))?),
            PART_HARD_STATE => {
                w.hard_state =
                    Some(HardState::parse_from_bytes(bytes).map_err(|e| bad("hard state", e))?)
            }
            PART_CONF_STATE => {
                w.conf_state =
                    Some(ConfState::parse_from_bytes(bytes).map_err(|e| bad("conf state", e))?)
            }
            _ => return Err(format!("unknown part kind {kind} in the record")),
        }
        last_kind = kind;
        at = start + bytes.len();
    }
    Ok(w)
}

#[cfg(test)]
mod tests;
