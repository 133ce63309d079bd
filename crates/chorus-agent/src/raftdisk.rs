//! The Raft log in the data dir, in the shapes chorus-core's consensus speaks: what a start
//! reads back ([`RaftStore::open`]) and each durable write it asks for ([`RaftStore::write`]).
//! The bytes on disk and their crash safety are [`crate::raftlog`]'s.

use std::path::{Path, PathBuf};

use chorus_core::consensus::{RaftDisk, RaftWrite};

use crate::raftlog::{self, RaftLog, RaftLogError};

/// The open Raft log of this data dir.
pub struct RaftStore {
    dir: PathBuf,
    log: RaftLog,
}

impl RaftStore {
    /// Opens (or creates) `<data dir>/raft/log` and reads back what is durable.
    pub fn open(data_dir: &Path) -> Result<(RaftStore, RaftDisk), RaftLogError> {
        let (log, disk) = RaftLog::open(data_dir)?;
        let store = RaftStore {
            dir: data_dir.to_path_buf(),
            log,
        };
        Ok((store, to_core(disk)))
    }

    /// Makes `w` durable (fsync) before it returns `Ok`.
    pub fn write(&mut self, w: &RaftWrite) -> Result<(), RaftLogError> {
        self.log.write(&raftlog::RaftWrite {
            snapshot: w.snapshot.clone(),
            entries: w.entries.clone(),
            hard_state: w.hard_state.clone(),
            conf_state: None,
        })
    }

    /// Reopens the log after a failed write (the log refuses writes until reopened) and reads
    /// back what reached the disk.
    pub fn reload(&mut self) -> Result<RaftDisk, RaftLogError> {
        let (log, disk) = RaftLog::open(&self.dir)?;
        self.log = log;
        Ok(to_core(disk))
    }
}

fn to_core(disk: raftlog::RaftDisk) -> RaftDisk {
    RaftDisk {
        snapshot: disk.snapshot,
        entries: disk.entries,
        hard_state: disk.hard_state,
    }
}
