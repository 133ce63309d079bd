//! The data dir: what an agent remembers across restarts (generation, roster, drain state).
//!
//! Every write is atomic: a temporary file in the same directory, fsync, rename over the old
//! file, fsync of the directory. A crash leaves the old file or the new one, never half of one.
//!
//! One agent at a time: [`DataDir::open`] takes an exclusive `flock` on `LOCK_FILE` before it
//! reads or writes anything, and holds it for the agent's life (the kernel drops it when the
//! process dies, however it dies). A second agent on the same directory is refused before it
//! can touch the state of the first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use chorus_core::member::NodeState;
use chorus_core::roster::RosterEntry;
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
/// Held locked (`flock`, exclusive) by the agent using the directory; holds its pid, for the
/// message a second agent gets.
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir file {path} is corrupt ({reason}); move it away to start afresh")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "data dir {path} is in use by another agent{holder}; give each agent its own --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
}

/// What is persisted. New fields must be `#[serde(default)]` so older files still load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub node_id: String,
    pub generation: u64,
    #[serde(default)]
    pub roster: Vec<RosterEntry>,
    #[serde(default)]
    pub state: Option<NodeState>,
    /// Written by versions that elected over gossip; read and ignored (the epoch is now the
    /// Raft term, which Raft persists).
    #[serde(default, skip_serializing)]
    pub epoch: u64,
    /// This data dir's identity in Raft (never 0 once started): a wiped data dir is a new
    /// member, never an old one that forgot its votes.
    #[serde(default)]
    pub raft_id: u64,
}

/// An open data dir, locked for this agent while any clone of it lives.
#[derive(Debug, Clone)]
pub struct DataDir {
    dir: PathBuf,
    _lock: Arc<Flock<File>>,
}

impl DataDir {
    /// Creates the directory if needed and locks it; fails with [`DataDirError::Locked`]
    /// while another agent holds it.
    pub fn open(dir: &Path) -> Result<DataDir, DataDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let holder = if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                };
                return Err(DataDirError::Locked {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(&lock_path)(errno.into())),
        };
        // The pid is only for the message above; the lock itself is the flock.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        Ok(DataDir {
            dir: dir.to_path_buf(),
            _lock: Arc::new(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn load(&self) -> Result<Option<PersistedState>, DataDirError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DataDirError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DataDirError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    pub fn save(&self, state: &PersistedState) -> Result<(), DataDirError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| DataDirError::Corrupt {
            path: self.dir.join(STATE_FILE),
            reason: format!("cannot encode: {e}"),
        })?;
        write_atomic(&self.dir, STATE_FILE, &bytes)
    }

    /// Loads the previous state and records this start: the generation always grows, even if
    /// the clock went back or the file was lost (it never goes below the wall clock in ms).
    pub fn begin_generation(
        &self,
        node_id: &str,
        now_unix_ms: u64,
    ) -> Result<PersistedState, DataDirError> {
        let mut state = self.load()?.unwrap_or_default();
        if !state.node_id.is_empty() && state.node_id != node_id {
            // Raft knows this data dir as the other node: taking it over would speak for it.
            if self.dir.join(crate::raftlog::DIR).exists() {
                return Err(DataDirError::Corrupt {
                    path: self.dir.join(STATE_FILE),
                    reason: format!(
                        "this data dir holds the Raft state of node {:?}: start {:?} on it, or give {node_id:?} a data dir of its own",
                        state.node_id, state.node_id
                    ),
                });
            }
            // Another node's roster is not ours to inherit; its generation still only grows.
            state.roster.clear();
            state.state = None;
            state.raft_id = 0;
        }
        while state.raft_id == 0 {
            state.raft_id = rand::random();
        }
        state.node_id = node_id.to_string();
        // A generation at the top of its range cannot grow: refuse to start rather than wrap.
        state.generation = state
            .generation
            .checked_add(1)
            .ok_or_else(|| DataDirError::Corrupt {
                path: self.dir.join(STATE_FILE),
                reason: "the generation cannot grow any more".into(),
            })?
            .max(now_unix_ms);
        self.save(&state)?;
        Ok(state)
    }
}

pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DataDirError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { path, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_grows_on_every_start_even_with_a_clock_going_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(tmp.path()).unwrap();
        let a = dd.begin_generation("n1", 1_000).unwrap().generation;
        let b = dd.begin_generation("n1", 500).unwrap().generation;
        let c = dd.begin_generation("n1", 5_000).unwrap().generation;
        assert_eq!(a, 1_000);
        assert_eq!(b, 1_001);
        assert_eq!(c, 5_000);
    }

    #[test]
    fn roster_survives_a_reload_and_no_temp_file_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(tmp.path()).unwrap();
        let mut s = dd.begin_generation("n1", 1).unwrap();
        s.roster.push(RosterEntry {
            node_id: "n2".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        });
        dd.save(&s).unwrap();
        assert_eq!(dd.load().unwrap().unwrap().roster, s.roster);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, vec![LOCK_FILE.to_string(), STATE_FILE.to_string()]);
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_lives_and_allowed_after() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path()).unwrap();
        let clone = first.clone();
        match DataDir::open(tmp.path()) {
            Err(DataDirError::Locked { holder, .. }) => {
                assert_eq!(holder, format!(" (pid {})", std::process::id()))
            }
            other => panic!("second open: {other:?}"),
        }
        drop(first);
        assert!(
            matches!(DataDir::open(tmp.path()), Err(DataDirError::Locked { .. })),
            "a clone still holds it"
        );
        drop(clone);
        DataDir::open(tmp.path()).expect("free once every clone is gone");
    }

    #[test]
    fn a_generation_that_cannot_grow_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(tmp.path()).unwrap();
        let mut s = dd.begin_generation("n1", 1).unwrap();
        s.generation = u64::MAX;
        dd.save(&s).unwrap();
        assert!(matches!(
            dd.begin_generation("n1", 1),
            Err(DataDirError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_roster() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(STATE_FILE), b"{not json").unwrap();
        let dd = DataDir::open(tmp.path()).unwrap();
        assert!(matches!(dd.load(), Err(DataDirError::Corrupt { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::api::fuzz_cases()))]

        /// Whatever bytes the state file holds, loading it never panics: it is a state or
        /// a one-line `Corrupt` error.
        #[test]
        fn fuzz_state_file_loads_or_is_corrupt(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join(STATE_FILE), &bytes).unwrap();
            let dd = DataDir::open(tmp.path()).unwrap();
            match dd.load() {
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(!e.to_string().contains('\n')),
            }
        }
    }
}
