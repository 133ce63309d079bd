//! `chorus agent`: flags -> settings (over the config file) -> a running agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chorus_agent::config::{parse_tag, ConfigFile, Settings, TaskSettings};
use chorus_agent::datadir::DataDirError;
use chorus_agent::{logging, AgentError, Exit, Stop, TransportChoice};

/// Exit code of `--panic-exit` when quorum is lost.
pub const PANIC_EXIT_CODE: u8 = 3;
/// Exit code of a bad flag, config file or setting, and of a data dir another agent holds.
pub const USAGE_EXIT_CODE: u8 = 2;
/// Exit code of an agent whose gossip loop ended twice within a minute: restarting it at once
/// would not help (a supervisor should wait, then start it again).
pub const GOSSIP_EXIT_CODE: u8 = 4;
/// Exit code of an agent refused because a live agent holds its node id: restarting it with
/// the same id cannot help while the other lives (`RestartPreventExitStatus=5` under systemd).
pub const NODE_ID_CONFLICT_EXIT_CODE: u8 = 5;
use clap::Args;

/// Agent flags; each may also be set in the `--config` TOML file under the same name
/// (flags win).
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// TOML config file with the same settings as the flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id [default: host name].
    #[arg(long)]
    node_id: Option<String>,
    /// Address to gossip on [default: 0.0.0.0:7946].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Address peers dial to reach this node [default: the listen address, or the local
    /// address of the route to the first seed].
    #[arg(long, value_name = "ADDR:PORT")]
    advertise: Option<String>,
    /// A peer to join through (repeatable).
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Cluster name; agents of other clusters are refused [default: chorus].
    #[arg(long)]
    cluster: Option<String>,
    /// The application's version, part of the version fingerprint.
    #[arg(long)]
    app_version: Option<String>,
    /// A file whose bytes are part of the version fingerprint (repeatable).
    #[arg(long = "fingerprint-file", value_name = "PATH")]
    fingerprint_files: Vec<PathBuf>,
    /// Fingerprint policy: exact or app-major [default: exact].
    #[arg(long)]
    compat: Option<String>,
    /// Where the generation and roster are kept.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Unix socket to serve [default: /run/chorus/chorus.sock as root, else
    /// $XDG_RUNTIME_DIR/chorus.sock, else /tmp/chorus-$UID/chorus.sock, its directory
    /// created 0700]. Only a stale socket at the path is ever replaced.
    #[arg(long, env = "CHORUS_SOCKET")]
    socket: Option<PathBuf>,
    /// Start a new cluster only once N nodes (this one included) have found each other
    /// [default: the number of distinct seeds, this node counted once]. Give more than half
    /// of the nodes that start together; `--expect 1` lets a node start alone.
    #[arg(long, value_name = "N")]
    expect: Option<usize>,
    /// At most N nodes vote in Raft (odd); the others follow [default: 5].
    #[arg(long, value_name = "N")]
    voters: Option<usize>,
    /// A tag k=v (repeatable), e.g. read_only=true.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// Time between gossip rounds, e.g. 1s [default: 400ms].
    #[arg(long)]
    gossip_interval: Option<String>,
    /// text or json [default: text].
    #[arg(long)]
    log_format: Option<String>,
    /// Cluster CA (from `chorus keygen`) to mint this node's certificate from.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// CA certificate of an existing PKI.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// This node's certificate, signed by --ca-cert.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Run without TLS verification (experiments only).
    #[arg(long)]
    insecure: bool,
    /// Gossip transport: quic or udp.
    #[arg(long)]
    transport: Option<String>,
    /// Remove members dead this long from the roster (only with quorum) [default: 10m].
    #[arg(long)]
    reap_after: Option<String>,
    /// Command run when this node loses quorum, with CHORUS_REACHABLE and CHORUS_UNREACHABLE.
    #[arg(long, value_name = "COMMAND")]
    on_split_brain: Option<String>,
    /// Exit with code 3 when this node loses quorum, instead of running on as a minority.
    #[arg(long)]
    panic_exit: bool,
    /// Serve Prometheus metrics (GET /metrics) and health (GET /health) on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<String>,
    /// A task run on the leader only, once per period (repeatable), e.g.
    /// backup=1h:/usr/local/bin/backup.
    #[arg(long = "task", value_name = "NAME=EVERY:COMMAND")]
    tasks: Vec<String>,
}

impl AgentArgs {
    /// The merged settings, checked: a bad value from the config file is named by the file's
    /// path, line and key, one from a flag by the flag.
    fn config(self) -> anyhow::Result<chorus_agent::AgentConfig> {
        let file = match &self.config {
            Some(path) => Some(ConfigFile::read(path)?),
            None => None,
        };
        let tags = self
            .tags
            .iter()
            .map(|t| parse_tag(t))
            .collect::<Result<_, _>>()?;
        let flags = Settings {
            node_id: self.node_id,
            listen: self.listen,
            advertise: self.advertise,
            seeds: self.seeds,
            cluster: self.cluster,
            app_version: self.app_version,
            fingerprint_files: self.fingerprint_files,
            compat: self.compat,
            data_dir: self.data_dir,
            socket: self.socket,
            expect: self.expect,
            voters: self.voters,
            tags,
            gossip_interval: self.gossip_interval,
            log_format: self.log_format,
            cluster_key: self.cluster_key,
            ca_cert: self.ca_cert,
            cert: self.cert,
            key: self.key,
            insecure: self.insecure.then_some(true),
            transport: self.transport,
            reap_after: self.reap_after,
            on_split_brain: self.on_split_brain,
            panic_exit: self.panic_exit.then_some(true),
            metrics_addr: self.metrics_addr,
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskSettings::parse_flag(t))
                .collect::<Result<_, _>>()?,
        };
        let settings = flags.clone().over(
            file.as_ref()
                .map(|f| f.settings.clone())
                .unwrap_or_default(),
        );
        settings.validate().map_err(|e| match &file {
            Some(file) => file.attribute(&flags, e).into(),
            None => e.into(),
        })
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // A bad setting is a usage error (exit 2), like a bad flag.
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chorus: {e:#}");
            return Ok(ExitCode::from(USAGE_EXIT_CODE));
        }
    };
    logging::init(config.log_format);
    match chorus_agent::fdlimit::raise_nofile_limit() {
        Ok(raised) if raised.after > raised.before => tracing::debug!(
            from = raised.before,
            to = raised.after,
            hard = raised.hard,
            "raised the open-file limit"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("{e}; connection limits shrink to fit"),
    }
    let exit = match chorus_agent::run(config, TransportChoice::FromConfig, shutdown_signal()).await
    {
        Err(AgentError::Panic) => return Ok(ExitCode::from(PANIC_EXIT_CODE)),
        Err(e @ AgentError::DataDir(DataDirError::Locked { .. })) => {
            eprintln!("chorus: {e}");
            return Ok(ExitCode::from(USAGE_EXIT_CODE));
        }
        Err(e @ AgentError::GossipDied(_)) => {
            eprintln!("chorus: {e}");
            return Ok(ExitCode::from(GOSSIP_EXIT_CODE));
        }
        Err(e @ AgentError::NodeIdConflict { .. }) => {
            eprintln!("chorus: {e}");
            return Ok(ExitCode::from(NODE_ID_CONFLICT_EXIT_CODE));
        }
        other => other.context("agent failed")?,
    };
    match exit {
        Exit::Left | Exit::Shutdown | Exit::Crashed => Ok(ExitCode::SUCCESS),
    }
}

/// SIGTERM or SIGINT: a graceful stop. SIGHUP (the unit's `ExecReload`) is taken and logged
/// rather than left to its default action, which would end the agent without a word.
async fn shutdown_signal() -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers the default action (exit) still stops the process.
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: leaving"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: leaving"); break; }
            _ = hup.recv() => tracing::warn!(
                "SIGHUP: this agent does not reread its config at runtime yet; nothing changed (restart it to apply a new config)"
            ),
        }
    }
    Stop::Graceful
}
