//! The `chorus` binary: finding it, running client commands, and agents as real processes
//! that are always stopped ([`KillOnDrop`]), even when a test fails half way.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_addr, wait_until, GOSSIP_INTERVAL};

/// The `chorus` binary. Cargo sets `CARGO_BIN_EXE_chorus` only for tests of the package that
/// owns the binary, so this looks beside the test executable (`target/<profile>/deps/..`)
/// and then in the workspace's target dir. `scripts/test.sh` builds it first; by hand:
/// `cargo build -p chorus-cli`.
pub fn chorus_bin() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(p) = option_env!("CARGO_BIN_EXE_chorus") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_chorus") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/tests-<hash> -> target/<profile>/chorus
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("chorus"));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    candidates.push(target.join("debug/chorus"));
    candidates.push(target.join("release/chorus"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "cannot find the chorus binary (looked at {candidates:?}); \
                 build it first: cargo build -p chorus-cli (scripts/test.sh does)"
            )
        })
}

/// Runs `chorus ARGS` to completion (a client command).
pub async fn chorus(args: &[&str]) -> Output {
    tokio::process::Command::new(chorus_bin())
        .args(args)
        .env_remove("CHORUS_SOCKET")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run chorus")
}

/// stdout and stderr of a finished command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A child process that is killed (SIGKILL) and reaped when dropped. If the test is failing,
/// the process's log is printed so the failure explains itself.
pub struct KillOnDrop {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl KillOnDrop {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> KillOnDrop {
        let file = std::fs::File::create(&log).expect("create a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        KillOnDrop {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the child process")
    }

    /// `kill -9`.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends a signal by name (`TERM`, `INT`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits (polling, with a deadline) for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let what = format!("{} exits", self.name);
        wait_until(&what, within, || {
            let polled = self.child.try_wait();
            async move {
                match polled {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("still running".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log());
        }
    }
}

/// A cluster key written by `chorus keygen`, in a temporary directory.
pub struct KeyFile {
    pub path: PathBuf,
    _dir: TempDir,
}

impl KeyFile {
    pub fn keygen(cluster: &str) -> KeyFile {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("cluster.pem");
        let out = Command::new(chorus_bin())
            .arg("keygen")
            .arg("--out")
            .arg(&path)
            .args(["--cluster", cluster])
            .output()
            .expect("run chorus keygen");
        assert!(out.status.success(), "chorus keygen: {}", describe(&out));
        KeyFile { path, _dir: dir }
    }
}

/// `chorus ARGS` (an agent) as a [`KillOnDrop`] logging to `log`.
fn agent_process(name: &str, args: &[OsString], log: PathBuf) -> KillOnDrop {
    let mut command = Command::new(chorus_bin());
    command
        .env_remove("CHORUS_SOCKET")
        .env("RUST_LOG", "info,chitchat=warn")
        .args(args);
    KillOnDrop::spawn(name, command, log)
}

/// A `chorus agent` process on a loopback port, with its data dir and socket in a temporary
/// directory. It gossips as deployed: QUIC with mutual TLS, certificate minted from `key`.
pub struct ProcAgent {
    pub node_id: String,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub process: KillOnDrop,
    /// The `chorus agent` arguments, for [`ProcAgent::start_again`].
    args: Vec<OsString>,
    /// How many times the process was started (names its log file).
    starts: u32,
    // Dropped after the process (fields drop in order), so the agent never loses its dir.
    _dir: TempDir,
}

impl ProcAgent {
    /// Starts `chorus agent` with the test gossip interval and `extra` flags.
    pub fn spawn(
        node_id: &str,
        cluster: &str,
        key: &KeyFile,
        seeds: &[SocketAddr],
        extra: &[&str],
    ) -> ProcAgent {
        ProcAgent::spawn_with_interval(node_id, cluster, key, seeds, GOSSIP_INTERVAL, extra)
    }

    /// Like [`ProcAgent::spawn`], with another gossip interval than the tests' default.
    pub fn spawn_with_interval(
        node_id: &str,
        cluster: &str,
        key: &KeyFile,
        seeds: &[SocketAddr],
        gossip_interval: Duration,
        extra: &[&str],
    ) -> ProcAgent {
        let dir = tempfile::Builder::new()
            .prefix("chorus-proc-")
            .tempdir()
            .expect("create a temporary directory");
        let addr = free_addr();
        let socket = dir.path().join("agent.sock");
        let mut command = Command::new(chorus_bin());
        command
            .arg("agent")
            .args(["--node-id", node_id, "--cluster", cluster])
            .args(["--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(&socket)
            .args([
                "--gossip-interval",
                &format!("{}ms", gossip_interval.as_millis()),
            ])
            .args(["--app-version", super::agent::APP_VERSION])
            .arg("--cluster-key")
            .arg(&key.path)
            .args(extra);
        for seed in seeds {
            command.args(["--seed", &seed.to_string()]);
        }
        let args: Vec<OsString> = command.get_args().map(OsStr::to_os_string).collect();
        let process = agent_process(node_id, &args, dir.path().join("agent.log"));
        ProcAgent {
            node_id: node_id.to_string(),
            addr,
            socket,
            process,
            args,
            starts: 1,
            _dir: dir,
        }
    }

    /// SIGTERM, then waits for the process to exit (a graceful stop: it publishes `left`).
    pub async fn stop(&mut self, within: Duration) -> ExitStatus {
        self.process.signal("TERM");
        self.process.wait_exit(within).await
    }

    /// Starts the agent again after it exited (or was killed): same node id, address, flags,
    /// data dir and socket, as a service manager would. Each run logs to its own file.
    pub fn start_again(&mut self) {
        self.starts += 1;
        let log = self._dir.path().join(format!("agent-{}.log", self.starts));
        self.process = agent_process(&self.node_id, &self.args, log);
    }

    /// Sets `flag` (one that takes a value and was given once, such as `--app-version`) for
    /// the next [`ProcAgent::start_again`]: an operator editing the unit before a restart.
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        let at = self
            .args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{} was started without {flag}", self.node_id));
        self.args[at + 1] = value.into();
    }

    /// The agent's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    pub fn socket_arg(&self) -> &str {
        self.socket.to_str().expect("temporary paths are UTF-8")
    }
}
