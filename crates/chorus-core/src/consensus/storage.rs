//! raft-rs's in-memory log plus the state machine's bytes for snapshots, and the two shapes of
//! durable data the agent writes and reads back ([`RaftWrite`], [`RaftDisk`]).
//!
//! The node keeps the whole log in memory (it is small: membership changes and one empty entry
//! per election); the agent mirrors every [`RaftWrite`] to the data dir before anything that
//! depends on it leaves the node, and hands back a [`RaftDisk`] at start.

use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// One Ready's durable changes, to be written in this order before the messages that follow it
/// are sent: a snapshot replaces everything up to its index (and every entry), entries replace
/// every entry at or after their first index, the hard state replaces the old one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftWrite {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

impl RaftWrite {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}

/// What the data dir held at start: the last snapshot (empty if none), the entries after it
/// and the hard state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftDisk {
    pub snapshot: Snapshot,
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
}

impl RaftDisk {
    /// Applies one write as the data dir must: the reference for the agent's log and the
    /// simulator's disk.
    pub fn apply(&mut self, w: &RaftWrite) {
        if let Some(snap) = &w.snapshot {
            self.snapshot = snap.clone();
            self.entries.clear();
            let meta = snap.get_metadata();
            if self.hard_state.term < meta.term {
                self.hard_state.term = meta.term;
            }
            self.hard_state.commit = meta.index;
        }
        if let Some(first) = w.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(&w.entries);
        }
        if let Some(hs) = &w.hard_state {
            self.hard_state = hs.clone();
        }
    }

    /// Whether this node has ever been part of a cluster.
    pub fn is_initialized(&self) -> bool {
        !self
            .snapshot
            .get_metadata()
            .get_conf_state()
            .voters
            .is_empty()
            || self.snapshot.get_metadata().index > 0
            || !self.entries.is_empty()
    }
}

/// raft-rs's [`MemStorage`] whose snapshots carry the state machine as of the index they name.
#[derive(Clone, Default)]
pub struct NodeStorage {
    mem: MemStorage,
    /// The applied index and the encoded state machine at it.
    applied: Arc<Mutex<(u64, Vec<u8>)>>,
}

impl NodeStorage {
    pub fn new() -> NodeStorage {
        NodeStorage::default()
    }

    pub fn mem(&self) -> &MemStorage {
        &self.mem
    }

    /// The state machine after applying up to `index`.
    pub fn set_applied(&self, index: u64, state: Vec<u8>) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = (index, state);
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.mem.wl().set_conf_state(cs);
    }

    /// Rebuilds the log from what the data dir held. Errors only on a log raft-rs itself
    /// would refuse (a gap, entries below the snapshot): the caller reports it.
    pub fn restore(disk: &RaftDisk) -> Result<NodeStorage, String> {
        let storage = NodeStorage::new();
        {
            let mut core = storage.mem.wl();
            if !disk.snapshot.is_empty() {
                core.apply_snapshot(disk.snapshot.clone())
                    .map_err(|e| format!("snapshot: {e}"))?;
            }
            let first = disk.snapshot.get_metadata().index + 1;
            let mut expected = first;
            for e in &disk.entries {
                if e.index != expected {
                    return Err(format!(
                        "entry {} where {expected} was expected (snapshot at {})",
                        e.index,
                        first - 1
                    ));
                }
                expected = expected.saturating_add(1);
            }
            core.append(&disk.entries)
                .map_err(|e| format!("entries: {e}"))?;
            core.set_hardstate(disk.hard_state.clone());
        }
        if !disk.snapshot.is_empty() {
            storage.set_applied(
                disk.snapshot.get_metadata().index,
                disk.snapshot.get_data().to_vec(),
            );
        }
        Ok(storage)
    }
}

impl Storage for NodeStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// A snapshot at the applied index, with the state machine's bytes; while the commit index
    /// runs ahead of what was applied, none (raft-rs asks again later).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut snap = self.mem.snapshot(request_index, to)?;
        let (index, data) = self
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if snap.get_metadata().index != index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        snap.data = data.into();
        Ok(snap)
    }
}
