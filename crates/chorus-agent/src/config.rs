//! Agent settings: flags and the TOML file merge into [`Settings`]; [`Settings::validate`]
//! turns them into a checked [`AgentConfig`] without touching the system (keys, sockets and
//! files are opened later, by the agent).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_core::fingerprint::CompatPolicy;
use serde::Deserialize;

/// Longest node id, cluster name or tag key: they are gossiped on every round.
pub const MAX_ID_LEN: usize = 64;
/// Longest tag value.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Largest config file read; a bigger one is refused (a real one is a few hundred bytes; this
/// keeps a mistaken `--config /dev/zero` or a huge file from filling memory).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("malformed config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A bad value that came from the config file, named as the file's key.
    #[error("config file {path}, line {line}, key {key}: {reason}", path = .path.display())]
    InvalidInFile {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
}

/// A config file as read: its settings and text, to name a bad value by file, line and key.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub settings: Settings,
    text: String,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let (settings, text) = Settings::read_toml_file(path)?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            settings,
            text,
        })
    }

    /// Names `err` as this file's key when the bad value came from the file: `flags` did not
    /// set it and the file did. Any other error is returned as it is.
    pub fn attribute(&self, flags: &Settings, err: ConfigError) -> ConfigError {
        let ConfigError::Invalid { field, reason } = err else {
            return err;
        };
        let from_file = |s: &Settings| s.sets(field);
        if !from_file(&self.settings) || from_file(flags) {
            return ConfigError::Invalid { field, reason };
        }
        let key = file_key(field);
        let line = key_line(&self.text, key).unwrap_or(1);
        ConfigError::InvalidInFile {
            path: self.path.clone(),
            line,
            key: key.to_string(),
            reason,
        }
    }
}

/// The config file's key for a flag named in an error (`--seed` -> `seeds`).
fn file_key(field: &str) -> &str {
    match field {
        "--seed" => "seeds",
        "--fingerprint-file" => "fingerprint-files",
        "--tag" => "tags",
        "--task" => "task",
        other => other.strip_prefix("--").unwrap_or(other),
    }
}

/// The 1-based line where `key` is set (`key = ..`) or its table starts (`[key]`,
/// `[[key]]`).
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let table = l.trim_start_matches('[').trim_end().trim_end_matches(']');
            if l.starts_with('[') {
                return table.trim() == key;
            }
            l.strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The key a parse error at byte `at` is about: the key of that line (`key = ...`), under
/// the table the line is in (`tags.zone`), if the line sets one.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = before[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim().to_string());
    // Raw file text: control characters are escaped to keep the error one line.
    Some(crate::api::one_line(&match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    }))
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Every setting, each optional, as the flags or the config file give them. The file uses the
/// flag names (`node-id = "a"`, `seeds = ["10.0.0.1:7946"]`, `[tags]`).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub node_id: Option<String>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    #[serde(default)]
    pub seeds: Vec<String>,
    pub cluster: Option<String>,
    pub app_version: Option<String>,
    #[serde(default)]
    pub fingerprint_files: Vec<PathBuf>,
    pub compat: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub expect: Option<usize>,
    pub voters: Option<usize>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub gossip_interval: Option<String>,
    pub log_format: Option<String>,
    pub cluster_key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub transport: Option<String>,
    pub reap_after: Option<String>,
    pub on_split_brain: Option<String>,
    pub panic_exit: Option<bool>,
    pub metrics_addr: Option<String>,
    /// `[[task]]` tables in the file; `--task NAME=EVERY:COMMAND` flags.
    #[serde(default, rename = "task")]
    pub tasks: Vec<TaskSettings>,
}

/// One scheduled task as written in the config file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TaskSettings {
    pub name: String,
    /// Period, e.g. `1h`, `30s`.
    pub every: String,
    pub command: String,
    /// Random delay added to each run, up to this much, e.g. `10s`.
    pub jitter: Option<String>,
    /// A run still going after this is stopped (SIGTERM, then SIGKILL).
    pub timeout: Option<String>,
    /// Only a writable node (not `read_only=true`) may run it.
    #[serde(default, alias = "requires_writable")]
    pub requires_writable: bool,
}

impl TaskSettings {
    /// `NAME=EVERY:COMMAND`, as given to `--task`.
    pub fn parse_flag(s: &str) -> Result<TaskSettings, ConfigError> {
        let bad = || {
            invalid(
                "--task",
                format!("{s:?}: expected NAME=EVERY:COMMAND, e.g. backup=1h:/usr/local/bin/backup"),
            )
        };
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let (every, command) = rest.split_once(':').ok_or_else(bad)?;
        Ok(TaskSettings {
            name: name.to_string(),
            every: every.to_string(),
            command: command.to_string(),
            ..TaskSettings::default()
        })
    }

    fn validate(self) -> Result<TaskSpec, ConfigError> {
        check_tag(&self.name, "").map_err(|_| {
            invalid(
                "--task",
                format!(
                    "task name {:?}: use ASCII letters, digits and - _ .",
                    self.name
                ),
            )
        })?;
        let every = parse_duration("--task", &self.every)?;
        if every < Duration::from_secs(1) {
            return Err(invalid(
                "--task",
                format!("task {}: period must be at least 1s", self.name),
            ));
        }
        if self.command.trim().is_empty() {
            return Err(invalid(
                "--task",
                format!("task {}: empty command", self.name),
            ));
        }
        let jitter = self
            .jitter
            .as_deref()
            .map(|j| parse_duration("--task", j))
            .transpose()?
            .unwrap_or_default();
        if jitter >= every {
            return Err(invalid(
                "--task",
                format!("task {}: jitter must be shorter than the period", self.name),
            ));
        }
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| parse_duration("--task", t))
            .transpose()?;
        Ok(TaskSpec {
            name: self.name,
            every,
            command: self.command,
            jitter,
            timeout,
            requires_writable: self.requires_writable,
        })
    }
}

/// A checked scheduled task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub name: String,
    pub every: Duration,
    pub command: String,
    pub jitter: Duration,
    pub timeout: Option<Duration>,
    pub requires_writable: bool,
}

impl Settings {
    pub fn from_toml_file(path: &Path) -> Result<Settings, ConfigError> {
        Settings::read_toml_file(path).map(|(settings, _)| settings)
    }

    /// The file's settings and its text.
    fn read_toml_file(path: &Path) -> Result<(Settings, String), ConfigError> {
        use std::io::Read;
        let read_error = |reason: String| ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| read_error(e.to_string()))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(read_error(format!(
                "larger than {MAX_CONFIG_BYTES} bytes; is this the config file?"
            )));
        }
        let settings = Settings::from_toml(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok((settings, text))
    }

    /// Whether these settings give a value for the flag named `field` in an error.
    fn sets(&self, field: &str) -> bool {
        match field {
            "--node-id" => self.node_id.is_some(),
            "--listen" => self.listen.is_some(),
            "--advertise" => self.advertise.is_some(),
            "--seed" => !self.seeds.is_empty(),
            "--cluster" => self.cluster.is_some(),
            "--app-version" => self.app_version.is_some(),
            "--fingerprint-file" => !self.fingerprint_files.is_empty(),
            "--compat" => self.compat.is_some(),
            "--gossip-interval" => self.gossip_interval.is_some(),
            "--tag" => !self.tags.is_empty(),
            "--log-format" => self.log_format.is_some(),
            "--cluster-key" => self.cluster_key.is_some(),
            "--insecure" => self.insecure.is_some(),
            "--transport" => self.transport.is_some(),
            "--reap-after" => self.reap_after.is_some(),
            "--task" => !self.tasks.is_empty(),
            "--on-split-brain" => self.on_split_brain.is_some(),
            "--metrics-addr" => self.metrics_addr.is_some(),
            _ => false,
        }
    }

    /// Parses a config file's text. The error is one line, with the line it is about.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| {
            let message = crate::api::one_line(e.message());
            match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count().saturating_add(1);
                    match key_at(text, span.start) {
                        Some(key) => format!("line {line}, key {key}: {message}"),
                        None => format!("line {line}: {message}"),
                    }
                }
                None => message,
            }
        })
    }

    /// `self` (the flags) wins over `file`; lists given as flags replace the file's; tags merge
    /// key by key.
    pub fn over(self, file: Settings) -> Settings {
        let mut tags = file.tags;
        tags.extend(self.tags);
        Settings {
            node_id: self.node_id.or(file.node_id),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            seeds: if self.seeds.is_empty() {
                file.seeds
            } else {
                self.seeds
            },
            cluster: self.cluster.or(file.cluster),
            app_version: self.app_version.or(file.app_version),
            fingerprint_files: if self.fingerprint_files.is_empty() {
                file.fingerprint_files
            } else {
                self.fingerprint_files
            },
            compat: self.compat.or(file.compat),
            data_dir: self.data_dir.or(file.data_dir),
            socket: self.socket.or(file.socket),
            expect: self.expect.or(file.expect),
            voters: self.voters.or(file.voters),
            tags,
            gossip_interval: self.gossip_interval.or(file.gossip_interval),
            log_format: self.log_format.or(file.log_format),
            cluster_key: self.cluster_key.or(file.cluster_key),
            ca_cert: self.ca_cert.or(file.ca_cert),
            cert: self.cert.or(file.cert),
            key: self.key.or(file.key),
            insecure: self.insecure.or(file.insecure),
            transport: self.transport.or(file.transport),
            reap_after: self.reap_after.or(file.reap_after),
            on_split_brain: self.on_split_brain.or(file.on_split_brain),
            panic_exit: self.panic_exit.or(file.panic_exit),
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            tasks: if self.tasks.is_empty() {
                file.tasks
            } else {
                self.tasks
            },
        }
    }

    /// Checks every value and fills in defaults. Touches nothing outside the process except
    /// reading the host name for the default node id.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let node_id = match self.node_id {
            Some(id) => id,
            None => default_node_id()
                .ok_or_else(|| invalid("--node-id", "no host name to default to; set --node-id"))?,
        };
        check_id("--node-id", &node_id)?;
        let cluster = self.cluster.unwrap_or_else(|| "chorus".to_string());
        check_id("--cluster", &cluster)?;

        let listen: SocketAddr = self
            .listen
            .as_deref()
            .unwrap_or("0.0.0.0:7946")
            .parse()
            .map_err(|_| invalid("--listen", "expected ADDR:PORT, e.g. 0.0.0.0:7946"))?;
        let advertise = self
            .advertise
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("--advertise", format!("{a:?} is not ADDR:PORT")))
            })
            .transpose()?;
        if let Some(a) = advertise {
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(invalid(
                    "--advertise",
                    "must be a concrete address and port peers can dial",
                ));
            }
        }
        for seed in &self.seeds {
            check_seed(seed)?;
        }
        let compat: CompatPolicy = self
            .compat
            .as_deref()
            .unwrap_or("exact")
            .parse()
            .map_err(|e: String| invalid("--compat", e))?;
        let gossip_interval = match self.gossip_interval {
            Some(s) => parse_duration("--gossip-interval", &s)?,
            None => DEFAULT_GOSSIP_INTERVAL,
        };
        if gossip_interval < Duration::from_millis(10) || gossip_interval > Duration::from_secs(60)
        {
            return Err(invalid("--gossip-interval", "must be between 10ms and 60s"));
        }
        for (k, v) in &self.tags {
            check_tag(k, v)?;
        }
        let log_format = match self.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "--log-format",
                    format!("{other:?}: expected text or json"),
                ))
            }
        };
        let app_version = self.app_version.unwrap_or_default();
        if app_version.len() > MAX_TAG_VALUE_LEN || app_version.chars().any(char::is_control) {
            return Err(invalid(
                "--app-version",
                "too long or has control characters",
            ));
        }
        let security = match (
            self.cluster_key,
            self.ca_cert,
            self.cert,
            self.key,
            self.insecure.unwrap_or(false),
        ) {
            (Some(k), None, None, None, false) => Some(Security::ClusterKey(k)),
            (None, Some(ca), Some(cert), Some(key), false) => Some(Security::Pki { ca, cert, key }),
            (None, None, None, None, true) => Some(Security::Insecure),
            (None, None, None, None, false) => None,
            (_, _, _, _, true) => {
                return Err(invalid(
                    "--insecure",
                    "cannot be combined with --cluster-key or certificates",
                ))
            }
            (Some(_), ..) => {
                return Err(invalid(
                    "--cluster-key",
                    "cannot be combined with --ca-cert/--cert/--key",
                ))
            }
            _ => {
                return Err(invalid(
                    "--ca-cert/--cert/--key",
                    "all three are needed together",
                ))
            }
        };
        let transport = match self.transport.as_deref().unwrap_or("quic") {
            "udp" => TransportKind::Udp,
            "quic" => TransportKind::Quic,
            other => {
                return Err(invalid(
                    "--transport",
                    format!("{other:?}: expected quic or udp"),
                ))
            }
        };
        let reap_after = match self.reap_after {
            Some(s) => parse_duration("--reap-after", &s)?,
            None => DEFAULT_REAP_AFTER,
        };
        let voters = self.voters.unwrap_or(DEFAULT_VOTERS);
        if voters.is_multiple_of(2) || !(1..=MAX_VOTERS).contains(&voters) {
            return Err(invalid(
                "--voters",
                format!("{voters}: expected an odd number from 1 to {MAX_VOTERS} (an even number tolerates no more failures than the odd one below it)"),
            ));
        }
        let mut tasks = Vec::new();
        for t in self.tasks {
            let t = t.validate()?;
            if tasks.iter().any(|o: &TaskSpec| o.name == t.name) {
                return Err(invalid("--task", format!("two tasks named {}", t.name)));
            }
            tasks.push(t);
        }
        if self
            .on_split_brain
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(invalid("--on-split-brain", "empty command"));
        }
        let metrics_addr = self
            .metrics_addr
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("--metrics-addr", format!("{a:?} is not ADDR:PORT")))
            })
            .transpose()?;
        Ok(AgentConfig {
            metrics_addr,
            reap_after,
            voters,
            on_split_brain: self.on_split_brain,
            panic_exit: self.panic_exit.unwrap_or(false),
            tasks,
            task_guard: None,
            node_id,
            cluster,
            listen,
            advertise,
            seeds: self.seeds,
            app_version,
            fingerprint_files: self.fingerprint_files,
            compat,
            data_dir: self.data_dir.unwrap_or_else(default_data_dir),
            default_socket: self.socket.is_none(),
            socket: self.socket.unwrap_or_else(crate::api::default_socket_path),
            expect: self.expect.unwrap_or(0),
            tags: self.tags,
            gossip_interval,
            log_format,
            security,
            transport,
        })
    }
}

/// Short rounds are what make failure detection and value spread fast; the compact digest
/// (chorus-net's `wire`) keeps their traffic under plain chitchat's at 1 s (docs/benchmarks.md).
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(400);
pub const DEFAULT_REAP_AFTER: Duration = Duration::from_secs(10 * 60);
/// Raft voters by default: a majority survives two failures.
pub const DEFAULT_VOTERS: usize = 5;
/// More voters make every commit wait for more acknowledgements and buy little.
pub const MAX_VOTERS: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Quic,
    Udp,
}

/// Where the agent's TLS identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Mint a leaf certificate from the cluster CA at start (`--cluster-key`).
    ClusterKey(PathBuf),
    /// An existing PKI (`--ca-cert/--cert/--key`).
    Pki {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    /// No verification (`--insecure`): experiments only.
    Insecure,
}

/// Checked settings, ready to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    pub cluster: String,
    pub listen: SocketAddr,
    /// `None`: derived at start from the listen address or the route to the first seed.
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub app_version: String,
    pub fingerprint_files: Vec<PathBuf>,
    pub compat: CompatPolicy,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// `socket` is the default path, not one the operator chose: its directory must be this
    /// user's own (`server::bind`).
    pub default_socket: bool,
    pub expect: usize,
    pub tags: BTreeMap<String, String>,
    pub gossip_interval: Duration,
    pub log_format: LogFormat,
    pub security: Option<Security>,
    pub transport: TransportKind,
    pub reap_after: Duration,
    /// At most this many nodes vote in Raft (`--voters`, odd).
    pub voters: usize,
    /// Run when quorum is lost (the "cluster panic" hook).
    pub on_split_brain: Option<String>,
    /// Exit instead when quorum is lost.
    pub panic_exit: bool,
    pub tasks: Vec<TaskSpec>,
    /// The `chorus` binary that guards task runs (`chorus task-guard`); `None`: the agent's
    /// own binary. Not a flag: an in-process agent (a test) names the real binary here.
    pub task_guard: Option<PathBuf>,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
}

pub fn parse_duration(field: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| invalid(field, format!("{s:?}: {e} (e.g. 500ms, 2s, 10m)")))
}

fn check_id(field: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
    {
        return Err(invalid(
            field,
            format!("{id:?}: use ASCII letters, digits and - _ . : @"),
        ));
    }
    Ok(())
}

/// Tag keys become gossip keys: ASCII only (chitchat panics on a key that starts with a
/// multi-byte character).
pub fn check_tag(key: &str, value: &str) -> Result<(), ConfigError> {
    if key.is_empty()
        || key.len() > MAX_ID_LEN
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "--tag",
            format!("key {key:?}: use 1 to {MAX_ID_LEN} ASCII letters, digits and - _ ."),
        ));
    }
    if value.len() > MAX_TAG_VALUE_LEN || value.chars().any(char::is_control) {
        return Err(invalid(
            "--tag",
            format!("value of {key:?} is too long or has control characters"),
        ));
    }
    Ok(())
}

/// `k=v` as given to `--tag`.
pub fn parse_tag(s: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| invalid("--tag", format!("{s:?}: expected KEY=VALUE")))?;
    check_tag(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

fn check_seed(seed: &str) -> Result<(), ConfigError> {
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match seed.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid("--seed", format!("{seed:?}: expected HOST:PORT"))),
    }
}

fn default_node_id() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn default_data_dir() -> PathBuf {
    if crate::api::running_as_root() {
        return PathBuf::from("/var/lib/chorus");
    }
    match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) => PathBuf::from(dir).join("chorus"),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/state/chorus"))
            .unwrap_or_else(|| PathBuf::from("/tmp/chorus-state")),
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::api::{fuzz_cases, mutate};
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    /// The README's example, a valid file.
    const EXAMPLE: &str = r#"node-id = "web1"
cluster = "shop"
listen = "10.0.0.1:7946"
seeds = ["10.0.0.1:7946", "10.0.0.2:7946"]
app-version = "5.2.1"
cluster-key = "/etc/chorus/cluster.pem"
data-dir = "/var/lib/chorus"
gossip-interval = "400ms"
metrics-addr = "127.0.0.1:9464"

[tags]
zone = "a"

[[task]]
name = "cleanup"
every = "1h"
command = "/usr/local/bin/cleanup"
jitter = "1m"
"#;

    /// What the agent does with a config file's text: settings that validate or not, or
    /// one error line; never a panic.
    fn check(text: &str) -> Result<(), TestCaseError> {
        match Settings::from_toml(text) {
            Ok(settings) => {
                if let Err(e) = settings.validate() {
                    let line = e.to_string();
                    prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
                }
            }
            Err(reason) => {
                prop_assert!(!reason.is_empty());
                prop_assert!(!reason.chars().any(char::is_control), "{:?}", reason);
            }
        }
        Ok(())
    }

    /// TOML-ish text: lines of known and unknown keys with values of every TOML type, table
    /// headers, and junk.
    fn tomlish() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("node-id".to_string()),
            Just("listen".into()),
            Just("seeds".into()),
            Just("gossip-interval".into()),
            Just("expect".into()),
            Just("insecure".into()),
            Just("tags".into()),
            Just("task".into()),
            Just("metrics-addr".into()),
            "[a-z\\-\\.\"é]{1,12}",
        ];
        let value = prop_oneof![
            any::<String>().prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("1e400".to_string()),
            Just("[1, \"a\", [true]]".into()),
            Just("{ name = \"x\", every = \"1s\", command = \"true\" }".into()),
            Just("\"\"\"multi\nline\"\"\"".into()),
            "[ -~]{0,20}",
        ];
        let line = prop_oneof![
            (key.clone(), value).prop_map(|(k, v)| format!("{k} = {v}")),
            key.clone().prop_map(|k| format!("[{k}]")),
            key.prop_map(|k| format!("[[{k}]]")),
            any::<String>(),
        ];
        vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    /// A valid file and what it must load as.
    fn valid() -> impl Strategy<Value = (String, String, Vec<u16>, BTreeMap<String, String>, u64)> {
        (
            "[a-z][a-z0-9\\-]{0,20}",
            "[a-z][a-z0-9_]{0,10}",
            vec(1u16.., 0..4),
            btree_map("[a-z][a-z0-9_\\-]{0,10}", "[a-zA-Z0-9 ._]{0,20}", 0..4),
            10u64..60_000,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        #[test]
        fn fuzz_config_loader_arbitrary_text(text in any::<String>()) {
            check(&text)?;
        }

        #[test]
        fn fuzz_config_loader_tomlish_text(text in tomlish()) {
            check(&text)?;
        }

        #[test]
        fn fuzz_config_loader_mutated_example(
            edits in vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
        ) {
            let text = mutate(EXAMPLE.as_bytes().to_vec(), &edits);
            check(&String::from_utf8_lossy(&text))?;
        }

        #[test]
        fn fuzz_config_loader_valid_configs_load(
            (node, cluster, ports, tags, interval_ms) in valid(),
        ) {
            let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let mut text = format!(
                "node-id = {node:?}\ncluster = {cluster:?}\nseeds = {seeds:?}\ngossip-interval = \"{interval_ms}ms\"\n[tags]\n"
            );
            for (k, v) in &tags {
                text.push_str(&format!("{k} = {v:?}\n"));
            }
            let config = Settings::from_toml(&text)
                .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?
                .validate()
                .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert_eq!(config.node_id, node);
            prop_assert_eq!(config.cluster, cluster);
            prop_assert_eq!(config.seeds, seeds);
            prop_assert_eq!(config.tags, tags);
            prop_assert_eq!(config.gossip_interval, Duration::from_millis(interval_ms));
        }
    }

    #[test]
    fn fuzz_config_loader_seeds() {
        let deep_array = format!("seeds = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_table = format!("x = {}{}", "{ a = ".repeat(50_000), "}".repeat(50_000));
        let dotted = format!("{} = 1", vec!["a"; 50_000].join("."));
        for text in [
            EXAMPLE,
            deep_array.as_str(),
            deep_table.as_str(),
            dotted.as_str(),
            "\"node\\nid\" = 1",
            "node-id = \"a\"\nnode-id = \"b\"",
            "expect = -1",
            "expect = 99999999999999999999",
            "[tags]\n\"é\" = \"x\"",
            "\u{feff}node-id = \"a\"",
        ] {
            check(text).unwrap();
        }
        let ok = Settings::from_toml(EXAMPLE).unwrap().validate().unwrap();
        assert_eq!(ok.tasks[0].name, "cleanup");
        let err = Settings::from_toml("cluster = \"c\"\n\"node\\nid\" = 1").unwrap_err();
        assert!(
            err.starts_with("line 2, key node\\nid: unknown field `node\\nid`"),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_config_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        let line = "# padding padding padding padding padding padding padding padding\n";
        std::fs::write(
            &path,
            line.repeat(MAX_CONFIG_BYTES as usize / line.len() + 1),
        )
        .unwrap();
        match Settings::from_toml_file(&path) {
            Err(ConfigError::Read { reason, .. }) => {
                assert!(reason.contains("larger than"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings {
            node_id: Some("n1".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = base().validate().unwrap();
        assert_eq!(c.cluster, "chorus");
        assert_eq!(c.listen, "0.0.0.0:7946".parse().unwrap());
        assert_eq!(c.compat, CompatPolicy::Exact);
        assert_eq!(c.gossip_interval, DEFAULT_GOSSIP_INTERVAL);
    }

    #[test]
    fn flags_win_over_file_and_tags_merge() {
        let file = Settings::from_toml(
            "node-id = \"file\"\ncluster = \"c\"\nseeds = [\"127.0.0.1:1\"]\n[tags]\nzone = \"a\"\nread_only = \"true\"\n",
        )
        .unwrap();
        let mut flags = Settings {
            node_id: Some("flag".into()),
            ..Settings::default()
        };
        flags.tags.insert("zone".into(), "b".into());
        let c = flags.over(file).validate().unwrap();
        assert_eq!(c.node_id, "flag");
        assert_eq!(c.cluster, "c");
        assert_eq!(c.seeds, vec!["127.0.0.1:1".to_string()]);
        assert_eq!(c.tags.get("zone").unwrap(), "b");
        assert_eq!(c.tags.get("read_only").unwrap(), "true");
    }

    #[test]
    fn a_malformed_value_names_its_line_and_key() {
        let err = Settings::from_toml("cluster = \"c\"\nexpect = \"three\"\n").unwrap_err();
        assert!(err.starts_with("line 2, key expect: invalid type"), "{err}");
        let err = Settings::from_toml("cluster = \"c\"\n[tags]\nzone = 1\n").unwrap_err();
        assert!(err.starts_with("line 3, key tags.zone:"), "{err}");
    }

    #[test]
    fn a_bad_value_from_the_file_is_named_as_a_file_key_and_a_flag_as_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "node-id = \"n1\"\n# how often to gossip\ngossip-interval = \"fast\"\nseeds = [\"nope\"]\n",
        )
        .unwrap();
        let file = ConfigFile::read(&path).unwrap();
        let named = |flags: Settings| {
            let err = flags
                .clone()
                .over(file.settings.clone())
                .validate()
                .unwrap_err();
            file.attribute(&flags, err).to_string()
        };
        // The file's seeds are checked first: a list from the file names its key.
        let err = named(Settings::default());
        let expected = format!("config file {}, line 4, key seeds: ", path.display());
        assert!(err.starts_with(&expected), "{err}");
        // With the seeds given as flags, the file's interval is the file's.
        let seeds = vec!["127.0.0.1:1".to_string()];
        let err = named(Settings {
            seeds: seeds.clone(),
            ..Settings::default()
        });
        let expected = format!(
            "config file {}, line 3, key gossip-interval: ",
            path.display()
        );
        assert!(err.starts_with(&expected), "{err}");
        assert!(!err.contains("--gossip-interval"), "{err}");
        // Given as a flag, the same mistake is the flag's.
        let err = named(Settings {
            seeds,
            gossip_interval: Some("fast".into()),
            ..Settings::default()
        });
        assert!(err.starts_with("invalid --gossip-interval:"), "{err}");
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = Settings::from_toml("nodeid = \"x\"").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    listen: Some("nope".into()),
                    ..base()
                },
                "--listen",
            ),
            (
                Settings {
                    advertise: Some("0.0.0.0:1".into()),
                    ..base()
                },
                "--advertise",
            ),
            (
                Settings {
                    seeds: vec!["noport".into()],
                    ..base()
                },
                "--seed",
            ),
            (
                Settings {
                    compat: Some("loose".into()),
                    ..base()
                },
                "--compat",
            ),
            (
                Settings {
                    gossip_interval: Some("fast".into()),
                    ..base()
                },
                "--gossip-interval",
            ),
            (
                Settings {
                    gossip_interval: Some("1ms".into()),
                    ..base()
                },
                "--gossip-interval",
            ),
            (
                Settings {
                    node_id: Some("bad id".into()),
                    ..base()
                },
                "--node-id",
            ),
            (
                Settings {
                    node_id: Some("é".into()),
                    ..base()
                },
                "--node-id",
            ),
            (
                Settings {
                    log_format: Some("xml".into()),
                    ..base()
                },
                "--log-format",
            ),
            (
                Settings {
                    insecure: Some(true),
                    cluster_key: Some("k".into()),
                    ..base()
                },
                "--insecure",
            ),
            (
                Settings {
                    cert: Some("c".into()),
                    ..base()
                },
                "--ca-cert/--cert/--key",
            ),
        ];
        for (settings, field) in cases {
            match settings.clone().validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{settings:?}"),
                other => panic!("{settings:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn tasks_come_from_flags_or_the_file() {
        let file = Settings::from_toml(
            "[[task]]\nname = \"backup\"\nevery = \"1h\"\ncommand = \"run-backup\"\njitter = \"1m\"\ntimeout = \"10m\"\nrequires-writable = true\n",
        )
        .unwrap();
        let c = base().over(file).validate().unwrap();
        assert_eq!(c.tasks[0].every, Duration::from_secs(3600));
        assert!(c.tasks[0].requires_writable);
        let flag = TaskSettings::parse_flag("clean=30s:rm -rf /tmp/x").unwrap();
        assert_eq!(flag.command, "rm -rf /tmp/x");
        let c = Settings {
            tasks: vec![flag],
            ..base()
        }
        .validate()
        .unwrap();
        assert_eq!(c.tasks[0].every, Duration::from_secs(30));
        for bad in ["noequals", "x=1h", "x=soon:cmd", "x=100ms:cmd", "x=1h: "] {
            let r = TaskSettings::parse_flag(bad).and_then(|t| {
                Settings {
                    tasks: vec![t],
                    ..base()
                }
                .validate()
                .map(|_| ())
            });
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_must_be_ascii_keys() {
        assert!(parse_tag("read_only=true").is_ok());
        assert!(parse_tag("=x").is_err());
        assert!(parse_tag("noequals").is_err());
        assert!(parse_tag("ключ=v").is_err());
        assert!(parse_tag("k=a\nb").is_err());
    }
}
