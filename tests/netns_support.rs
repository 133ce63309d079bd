//! A network-namespace lab for real partition tests: one namespace per agent, joined by a
//! bridge that lives in a namespace of its own (the host's namespace gets no new interface,
//! route or address), partitions made with blackhole routes (`tc netem` is not available).
//!
//! Layout for a lab named `chorusnt-<pid>-<tag>`:
//! ```text
//!   <prefix>-hub:  br0 (bridge) + v1..vN (veth ends, enslaved to br0); no address
//!   <prefix>-nI:   eth0 (other end of vI) = 10.77.0.I/24, lo; `chorus agent` nI on :7946
//! ```
//! [`Lab`] owns the namespaces and the agents. Dropping it (also while a test panics) kills
//! the agents, then deletes every namespace; the veths and the bridge go with them. A lab left
//! behind by a test process that was killed (`kill -9`, so no `Drop`) is deleted by the next
//! run: its name carries the pid of the process that made it (the agents still running in
//! it are killed then). Agents are started under `setpriv --pdeathsig KILL` when util-linux's
//! `setpriv` is installed, so they die with the test process even then.
//!
//! Every external command has a time limit, and every wait polls a condition with a deadline
//! ([`wait_for`]); nothing sleeps to synchronise.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tempfile::TempDir;

/// The first three octets of every lab address (each lab has its own bridge, so two labs may
/// use the same addresses without seeing each other).
pub const SUBNET: &str = "10.77.0";
/// The gossip port of every agent (each has its own namespace).
pub const PORT: u16 = 7946;
/// Prefix of every namespace a lab makes: `chorusnt-<pid>-<tag>-...`.
const NAME_PREFIX: &str = "chorusnt-";
/// Limit for one `ip` or `chorus` client command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`wait_for`] re-checks.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok` and returns that value; fails the test at the deadline
/// with `what` and the last thing seen.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match check() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting until {what}; last seen: {seen}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Result<Output, String> {
    let shown = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("{shown}: {e}")),
        Err(_) => {
            // The waiting thread has not reaped it, so the pid is still this child's.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!("{shown} did not finish within {limit:?}"))
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `ip ARGS`, bounded in time.
fn ip(args: &[&str]) -> Result<Output, String> {
    let mut c = Command::new("ip");
    c.args(args);
    run_bounded(c, COMMAND_TIMEOUT)
}

/// `ip ARGS`, failing the test unless it succeeds.
fn ip_ok(args: &[&str]) -> Output {
    match ip(args) {
        Ok(out) if out.status.success() => out,
        Ok(out) => panic!("ip {}: {}", args.join(" "), describe(&out)),
        Err(e) => panic!("ip {}: {e}", args.join(" ")),
    }
}

fn netns_list() -> Vec<String> {
    match ip(&["netns", "list"]) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills what runs in a namespace and deletes it.
fn delete_netns(name: &str) -> Result<(), String> {
    if let Ok(out) = ip(&["netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    match ip(&["netns", "delete", name]) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(describe(&out)),
        Err(e) => Err(e),
    }
}

/// Deletes the labs of test processes that no longer exist (killed before their `Drop`).
fn delete_stale_labs() {
    for name in netns_list() {
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: deleting {name}, left behind by process {pid}");
            if let Err(e) = delete_netns(&name) {
                eprintln!("netns: cannot delete {name}: {e}");
            }
        }
    }
}

pub use crate::support::bin::chorus_bin;

/// Runs `chorus ARGS` (a client command, from the host's namespace: the Unix socket is a
/// file, which every namespace shares).
pub fn chorus(args: &[&str]) -> Result<Output, String> {
    let mut c = Command::new(chorus_bin());
    c.args(args).env_remove("CHORUS_SOCKET");
    run_bounded(c, COMMAND_TIMEOUT)
}

/// `chorus status --json`: the fields these tests read.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub node_id: String,
    pub alive: usize,
    pub roster: usize,
    pub quorum: bool,
    pub partition: String,
    pub leader: Option<String>,
    pub epoch: u64,
    pub is_leader: bool,
}

/// One JSON log line that carries an `alert` field.
#[derive(Debug, Clone)]
pub struct AlertLine {
    pub alert: String,
    /// Seconds since the Unix epoch, from the line's `timestamp`.
    pub time: f64,
    pub line: serde_json::Value,
}

impl AlertLine {
    /// The alert's own fields (the `details` object of the log line).
    pub fn details(&self) -> serde_json::Value {
        self.line
            .get("details")
            .filter(|d| d.is_object())
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Parses an RFC 3339 UTC time as tracing-subscriber writes it (`2025-01-31T12:34:56.123456Z`)
/// into Unix seconds.
pub fn parse_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// A `chorus agent` running in its namespace. Killed by [`Lab`]'s `Drop`.
pub struct Agent {
    pub node_id: String,
    pub addr: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Agent {
    pub fn socket_arg(&self) -> &str {
        self.socket.to_str().expect("temporary paths are UTF-8")
    }

    /// `chorus status --json`.
    pub fn status(&self) -> Result<Status, String> {
        let out = chorus(&["status", "--json", "--socket", self.socket_arg()])?;
        if !out.status.success() {
            return Err(format!("{}: status: {}", self.node_id, describe(&out)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: status is not the expected JSON: {e}", self.node_id))
    }

    /// Every alert line of the agent's JSON log so far.
    pub fn alerts(&self) -> Vec<AlertLine> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let alert = v.get("alert")?.as_str()?.to_string();
                let time = v.get("timestamp")?.as_str().and_then(parse_utc)?;
                Some(AlertLine {
                    alert,
                    time,
                    line: v,
                })
            })
            .collect()
    }

    /// The time of every log line whose message is `message`.
    pub fn messages(&self, message: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("message").and_then(|m| m.as_str()) == Some(message))
            .filter_map(|v| v.get("timestamp")?.as_str().and_then(parse_utc))
            .collect()
    }

    /// The alerts of one kind.
    pub fn alerts_of(&self, kind: &str) -> Vec<AlertLine> {
        self.alerts()
            .into_iter()
            .filter(|a| a.alert == kind)
            .collect()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Namespaces, bridge and agents of one test.
pub struct Lab {
    prefix: String,
    /// Namespaces made so far, hub first; deleted in reverse order by `Drop`.
    made: Vec<String>,
    /// Blackholed (from, to) node-index pairs, 0-based.
    blackholes: BTreeSet<(usize, usize)>,
    /// Whether agents are started under `setpriv --pdeathsig KILL` (util-linux).
    pdeathsig: bool,
    pub agents: Vec<Agent>,
    /// Shared files of the test (cluster key, task output) and one directory per agent.
    pub dir: TempDir,
}

/// Why a lab could not be made in this environment (the test then skips).
pub struct Skip(pub String);

impl Lab {
    /// Makes `n` namespaces `nI` with address 10.77.0.I, joined by a bridge. Returns `Skip`
    /// when `ip` is missing or namespaces cannot be made here (not root, no CAP_SYS_ADMIN).
    pub fn new(tag: &str, n: usize) -> Result<Lab, Skip> {
        assert!((1..=250).contains(&n));
        match ip(&["-V"]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Err(Skip(format!("`ip -V` failed: {}", describe(&out)))),
            Err(e) => return Err(Skip(format!("iproute2 `ip` is not usable: {e}"))),
        }
        delete_stale_labs();
        let dir = tempfile::Builder::new()
            .prefix("chorus-netns-")
            .tempdir()
            .expect("create a temporary directory");
        let prefix = format!("{NAME_PREFIX}{}-{tag}", std::process::id());
        let hub = format!("{prefix}-hub");
        match ip(&["netns", "add", &hub]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("not permitted") || err.contains("Permission denied") {
                    return Err(Skip(format!(
                        "`ip netns add` is not permitted here (these tests need root): {}",
                        describe(&out)
                    )));
                }
                panic!("ip netns add {hub}: {}", describe(&out));
            }
            Err(e) => panic!("ip netns add {hub}: {e}"),
        }
        // From here on a failure panics, and `Drop` removes what was made.
        let mut lab = Lab {
            prefix,
            made: vec![hub.clone()],
            blackholes: BTreeSet::new(),
            pdeathsig: which("setpriv").is_some(),
            agents: Vec::new(),
            dir,
        };
        ip_ok(&["-n", &hub, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = lab.ns(i - 1);
            ip_ok(&["netns", "add", &ns]);
            lab.made.push(ns.clone());
            let veth = format!("v{i}");
            ip_ok(&[
                "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip_ok(&["-n", &hub, "link", "set", &veth, "master", "br0"]);
            ip_ok(&["-n", &hub, "link", "set", &veth, "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            ip_ok(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.ip(i - 1)),
                "dev",
                "eth0",
            ]);
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        Ok(lab)
    }

    /// Namespace of node index `i` (0-based; node `n{i+1}`).
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }

    /// Address of node index `i`.
    pub fn ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    pub fn gossip_addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Runs `ip ARGS` inside node `i`'s namespace (to read its routes, ping, ...).
    pub fn ip_in(&self, i: usize, args: &[&str]) -> Output {
        let ns = self.ns(i);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        ip_ok(&all)
    }

    /// Starts `chorus agent` as node index `i` in its namespace, seeded with every other node
    /// of `peers`, with its log (JSON) in `<dir>/nI/agent.log`.
    pub fn start_agent(&mut self, i: usize, peers: usize, extra: &[String]) {
        let node_id = format!("n{}", i + 1);
        let home = self.dir.path().join(&node_id);
        std::fs::create_dir_all(&home).expect("create the agent's directory");
        let socket = home.join("agent.sock");
        let log = home.join("agent.log");
        let addr = self.gossip_addr(i);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(i)]);
        if self.pdeathsig {
            command.args(["setpriv", "--pdeathsig", "KILL", "--"]);
        }
        command
            .arg(chorus_bin())
            .env_remove("CHORUS_SOCKET")
            .env("RUST_LOG", "info,chitchat=warn,quinn=warn,rustls=warn")
            .arg("agent")
            .args(["--node-id", &node_id, "--cluster", "netns"])
            .args(["--listen", &addr])
            .arg("--data-dir")
            .arg(home.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(["--log-format", "json"])
            .args(extra);
        for j in (0..peers).filter(|&j| j != i) {
            command.args(["--seed", &self.gossip_addr(j)]);
        }
        let file = std::fs::File::create(&log).expect("create the agent's log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {node_id}: {e}"));
        self.agents.push(Agent {
            node_id,
            addr,
            socket,
            log,
            child,
        });
    }

    /// Drops every packet between the groups `a` and `b` (node indices), in both directions,
    /// with blackhole routes in each namespace toward the other side's addresses.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    if self.blackholes.insert((from, to)) {
                        let dest = format!("{}/32", self.ip(to));
                        self.ip_in(from, &["route", "add", "blackhole", &dest]);
                    }
                }
            }
        }
    }

    /// Removes every blackhole route.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.blackholes) {
            let dest = format!("{}/32", self.ip(to));
            self.ip_in(from, &["route", "del", "blackhole", &dest]);
        }
    }

    /// Prints the alert lines and the end of each agent's log (for a failing test).
    fn dump_logs(&self) {
        for a in &self.agents {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} ({}): alerts -----", a.node_id, a.addr);
            for l in lines.iter().filter(|l| l.contains("\"alert\"")) {
                eprintln!("{l}");
            }
            eprintln!("----- {}: last lines -----", a.node_id);
            for l in &lines[lines.len().saturating_sub(15)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for a in &mut self.agents {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        for ns in self.made.iter().rev() {
            if let Err(e) = delete_netns(ns) {
                eprintln!("netns: cannot delete {ns}: {e}");
            }
        }
        let left: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        if !left.is_empty() {
            eprintln!("netns: namespaces left behind: {left:?}");
        }
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Reads a whole file, or "" if it does not exist yet.
pub fn read_or_empty(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
