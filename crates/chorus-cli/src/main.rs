//! `chorus`: the agent and the commands that talk to it.
//!
//! Exit codes: 0 success (or "yes"), 1 failure (or "no": `leader` with no leader, a missing
//! agent), 2 bad usage (and a data dir another agent holds), 3 the agent exited on quorum loss
//! (`--panic-exit`), 4 the agent's gossip loop stopped twice within a minute.

mod agent_cmd;
mod keygen;
mod manuals;
mod memory;
mod query;
mod render;
mod task_guard;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// `chorus --version`: the crate version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CHORUS_GIT_COMMIT"),
    ")"
);

/// chorus: peer-to-peer cluster membership, split-brain detection and leader election.
#[derive(Parser, Debug)]
#[command(name = "chorus", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The agent's Unix socket [default: /run/chorus/chorus.sock as root,
    /// else $XDG_RUNTIME_DIR/chorus.sock, else /tmp/chorus-$UID/chorus.sock]
    #[arg(long, env = "CHORUS_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Also trust an agent run by this user (name or uid); by default only an agent run by
    /// yourself or root is answered, so another user's socket at the path is refused.
    #[arg(long, env = "CHORUS_SOCKET_OWNER", global = true, value_name = "USER",
          value_parser = chorus_agent::client::parse_user)]
    socket_owner: Option<u32>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

impl ClientOpts {
    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(chorus_agent::api::default_socket_path)
    }

    /// A connection to the agent, checked to be served by a user this command trusts.
    async fn connect(
        &self,
    ) -> Result<chorus_agent::client::Client, chorus_agent::client::ClientError> {
        chorus_agent::client::Client::connect_to_agent_of(&self.socket(), self.socket_owner).await
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent.
    Agent(Box<agent_cmd::AgentArgs>),
    /// Write a new cluster CA (certificate and key) for --cluster-key.
    Keygen {
        /// Where to write it (mode 0600); an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Cluster name written into the CA certificate.
        #[arg(long, default_value = "chorus")]
        cluster: String,
    },
    /// Table of members: id, address, status, state, version, load, leader mark.
    Members {
        /// Only members with this status (alive, suspect, dead, left, rejected).
        #[arg(long)]
        status: Option<chorus_core::member::Status>,
        /// Only members carrying this tag (repeatable).
        #[arg(long = "tag", value_name = "K=V", value_parser = query::parse_tag)]
        tags: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// This node: id, cluster, fingerprint, alive/roster counts, quorum, partition, leader.
    Status {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Report the application's active session count.
    Load {
        /// Number of active sessions (0 or more).
        #[arg(long, allow_negative_numbers = true, value_parser = parse_sessions)]
        sessions: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Leave the cluster gracefully and stop the agent.
    Leave {
        /// Leave for good: this node is first removed from the Raft voters (committed by a
        /// majority; a restart is otherwise not a removal).
        #[arg(long)]
        permanent: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stream events: joins, failures, leaves, alerts (one JSON object a line with --json).
    Watch {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The current leader and its fencing epoch (exit 1 if there is none).
    Leader {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Exit 0 if this node is the leader now, else 1; prints nothing.
    IsLeader {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove a dead node from the roster at once.
    Forget {
        /// The node id to forget.
        node: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The node that should take a new session: alive, active, least loaded.
    Pick {
        /// Only nodes carrying this tag (repeatable).
        #[arg(long = "tag", value_name = "K=V", value_parser = query::parse_tag)]
        tags: Vec<(String, String)>,
        /// Never nodes carrying this tag (repeatable), e.g. read_only=true.
        #[arg(long = "exclude-tag", value_name = "K=V", value_parser = query::parse_tag)]
        exclude_tags: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stop taking new sessions (hands leadership over).
    Drain {
        /// Return only when the application reports 0 sessions (exit 2 on timeout).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 10m [default: wait forever].
        #[arg(long, value_parser = query::parse_duration)]
        timeout: Option<std::time::Duration>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Take new sessions again after a drain.
    Resume {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a shell completion script, e.g. `chorus completions bash > /etc/bash_completion.d/chorus`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command to a directory.
    Man {
        /// Write chorus.1 and chorus-COMMAND.1 for every command into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// The agent's watchdog around one task run (internal: started by the agent).
    #[command(hide = true)]
    TaskGuard(task_guard::GuardArgs),
}

/// `--sessions`: a whole number, 0 or more. Negative numbers reach this parser (rather than
/// being taken for a flag) so that `--sessions -1` gets this message too.
fn parse_sessions(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "expected a whole number of sessions, 0 or more".to_string())
}

/// The agent mostly waits on sockets: two workers keep a slow request from delaying gossip,
/// and more would only add stacks and allocator arenas on a many-core host.
const MAX_WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The guard and the generated documents are small and synchronous: no runtime, no
    // worker threads.
    let command = match cli.command {
        Command::TaskGuard(args) => return task_guard::run(args),
        Command::Completions { shell } => return finish(manuals::completions(shell)),
        Command::Man { out_dir } => return finish(manuals::man(out_dir.as_deref())),
        other => other,
    };
    if matches!(command, Command::Agent(_)) {
        memory::use_one_malloc_arena();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            MAX_WORKER_THREADS
                .min(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
        )
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chorus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Agent(args) => agent_cmd::run(*args).await,
            Command::Keygen { out, cluster } => keygen::run(&out, &cluster),
            Command::Members {
                status,
                tags,
                client,
            } => query::members(&client, status, &tags).await,
            Command::Status { client } => query::status(&client).await,
            Command::Load { sessions, client } => query::load(&client, sessions).await,
            Command::Leave { permanent, client } => query::leave(&client, permanent).await,
            Command::Watch { client } => query::watch(&client).await,
            Command::Leader { client } => query::leader(&client).await,
            Command::IsLeader { client } => query::is_leader(&client).await,
            Command::Forget { node, client } => query::forget(&client, node).await,
            Command::Pick {
                tags,
                exclude_tags,
                client,
            } => query::pick(&client, tags, exclude_tags).await,
            Command::Drain {
                wait,
                timeout,
                client,
            } => query::drain(&client, wait, timeout).await,
            Command::Resume { client } => query::resume(&client).await,
            Command::TaskGuard(_) | Command::Completions { .. } | Command::Man { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    finish(result)
}

/// The exit code of a command, with its error on stderr as one line.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chorus: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_task_guard_is_hidden_and_takes_its_command_after_a_double_dash() {
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("task-guard"), "{help}");
        let guard = |rest: &[&str]| {
            let mut args = vec!["chorus", "task-guard", "--grace", "2s"];
            args.extend_from_slice(&["--deadline-ns", "5", "--agent-pid", "1"]);
            args.extend_from_slice(rest);
            Cli::try_parse_from(args)
        };
        assert!(guard(&["--", "/bin/sh", "-c", "echo --x"]).is_ok());
        assert!(guard(&["/bin/sh"]).is_err());
        assert!(guard(&["--"]).is_err());
    }

    #[test]
    fn bad_session_counts_are_usage_errors() {
        for bad in ["-1", "abc", ""] {
            assert!(
                Cli::try_parse_from(["chorus", "load", "--sessions", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["chorus", "members", "--tag", "noequals"]).is_err());
        assert!(Cli::try_parse_from(["chorus", "members", "--status", "sleepy"]).is_err());
    }
}
