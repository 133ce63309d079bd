//! chorus-agent: the daemon. It runs a chitchat node, turns what gossip says into core
//! observations, carries out the effects chorus-core decides, and serves the local Unix socket.
//!
//! It decides nothing itself: every rule (who is alive, who is refused, quorum, when to
//! publish) is in chorus-core, where a test with a fake clock can reach it.
//!
//! # Layout
//! - [`config`]: flags + TOML file -> a checked [`config::AgentConfig`].
//! - [`agent`]: [`agent::run`], the one loop that owns the core `Node`.
//! - [`gossip`]: chitchat settings.
//! - [`observe`]: chitchat state -> core observations, kept between ticks. chitchat is the
//!   outside world here: it reads tokio's clock and holds a tokio mutex, so the agent takes the
//!   lock briefly, copies what core needs and lets go.
//! - [`publish`]: core's state -> the view the socket and the metrics answer from.
//! - [`server`] / [`client`] / [`api`]: the socket protocol, both ends; [`socket_path`]: a
//!   safe place for the socket (a private directory for the default path, nothing but a
//!   stale socket ever removed); `accept`: accept loops that back off on errors.
//! - [`fdlimit`]: the open-file limit, raised at start.
//! - [`datadir`]: generation, roster and drain state, written atomically.
//! - [`raftlog`]: the durable Raft log (entries, hard state, snapshot), fsynced per Ready.
//! - [`sysload`]: host cpu and memory from `/proc`.
//! - [`logging`]: tracing setup and the `alert=<kind>` events.
//! - [`tasks`]: scheduled tasks, run on the leader with the fencing epoch.
//! - [`hooks`]: the `--on-split-brain` command.
//! - [`transport`]: QUIC with mutual TLS (or counted UDP), with the fingerprint hello policy.
//! - [`metrics`]: Prometheus text format on `--metrics-addr`; [`health`]: `GET /health` there.
//! - [`notify`]: systemd's notify protocol (`READY=1`, `STATUS=`, `STOPPING=1`, `WATCHDOG=1`).
#![forbid(unsafe_code)]

mod accept;
pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod datadir;
pub mod fdlimit;
pub mod gossip;
pub mod health;
pub mod hooks;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod publish;
pub mod raftdisk;
pub mod raftlog;
pub mod server;
pub mod socket_path;
pub mod sysload;
pub mod tasks;
pub mod transport;

pub use agent::{run, AgentError, Exit, Stop, TransportChoice};
pub use config::{AgentConfig, Settings};
