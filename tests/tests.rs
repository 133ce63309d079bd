//! chorus-tests: the workspace's cross-crate tests, in one test binary (one link, one run).
//!
//! Where tests go:
//! - `cluster.rs`: several agents in this process (`chorus_agent::run` over chitchat's
//!   in-memory transport, or QUIC): convergence, version refusal, crash, graceful stop,
//!   restart.
//! - `process.rs`: real `chorus agent` processes driven through the `chorus` command and
//!   its `--json` output, read into structs defined in the test, so a renamed field fails.
//! - `quic.rs`: the deployed transport in process: 10 agents over QUIC + mutual TLS, an agent
//!   with another CA never seen alive.
//! - `bad_input.rs`: junk on the socket and on the gossip port; requests from other users.
//! - `local_hostile.rs`: other local users against a real agent process: a squatted default
//!   socket, `--socket` at a regular file, idle-connection floods on the metrics port and the
//!   socket, vanishing `watch` clients (root only for the parts played by other uids).
//! - `hostile_peer.rs`: attacks of issue 14 sent by a test peer speaking the real gossip wire
//!   to three real `chorus agent` processes, over UDP (`--transport udp`) and over QUIC as a
//!   holder of the cluster key (the real hello; raw quinn where it lies): multi-byte keys,
//!   fake-node floods, a hello claiming another node's id, a handshake flood with unfinished
//!   streams. One test per attack, with its budget (traffic, RSS); shared helpers to build
//!   messages, read a node's digest and check the membership.
//! - `drain.rs`: drain and resume in-process: a draining node is never picked once its state
//!   has spread (the spread time is measured), it stays drained across a restart; bad
//!   `pick`/`drain` flags.
//! - `leader_process.rs`: real processes: `kill -9` of the leader, failover time measured, a
//!   scheduled task's lines show one node per epoch, never interleaved.
//! - `faults.rs`: the agent's own faults: a data dir another agent holds (refused, exit 2,
//!   nothing rewritten), a data dir that refuses writes (no leadership on an unsaved epoch,
//!   `drain` refused), a gossip loop that stops (restarted once in place, then the agent stops).
//! - `metrics.rs`: `--metrics-addr` over real HTTP: every documented metric name, values that
//!   follow a crash.
//! - `rolling.rs`: `scripts/rolling-restart.sh` over three real agents while `pick` is asked
//!   every 50 ms: it never returns the node being restarted.
//! - `safety.rs`: issue 15's misconfigurations with real processes: a second agent with a
//!   live node id (refused, exit 5, the live node untouched, restarts still rejoin), a member
//!   upgraded in place (`rejected` and alerted on both sides under `exact`; a minor bump
//!   accepted under `app-major`), and the smaller traps of the same walk.
//! - `service.rs`: `chorus agent` as a systemd service, with real processes and a datagram
//!   socket for systemd: `READY=1` (alone, or once it has joined a peer), `STATUS=`,
//!   `WATCHDOG=1` only while the process runs, `STOPPING=1`; `/health` and the logged
//!   metrics address.
//! - `partition.rs`: split-brain and leadership on a fault-injecting in-process network
//!   (partitions, crashes, restarts, message loss), on tokio's paused clock: quorum and
//!   split-brain alerts, and a seeded leader checker (`CHORUS_SEED` replays one schedule).
//! - `task_guard.rs`: `chorus task-guard` alone: SIGTERM at the deadline and SIGKILL after
//!   the grace, renewals, `stop`, nothing started past the deadline or without its agent, the
//!   group killed at once when stdin closes or the parent dies.
//! - `task_lease.rs`: tasks bound to the lease with real task processes: the runner with the
//!   real guard (environment, stop = SIGTERM then SIGKILL after the grace, renewals, the
//!   guard alone stopping a run that is not renewed), and real agents: SIGSTOP of the leader
//!   (its task dies at the lease while it is stopped; no old-epoch run after SIGCONT), `kill
//!   -9` of the agent (its task gone within a second).
//! - `netns.rs`: real partitions between agents in network namespaces (root only,
//!   `#[ignore]`d; `scripts/test.sh` runs them); its lab is `netns_support.rs`.
//! - `support/`: helpers: `wait_until` (poll with a deadline, never a bare sleep), free
//!   loopback ports, in-process agents (`support::agent`), their recorded `watch` events
//!   (`support::events`), the binary and `KillOnDrop` (`support::bin`).
//!
//! Pure decision logic is tested in `crates/chorus-core` (unit, property and scenario tests),
//! not here. A new test goes in the file above whose subject it shares; a new subject gets a
//! new module listed here. Tests that take more than about a minute are `#[ignore]`d and run
//! by `cargo test -- --ignored`.
//!
//! Process tests need the `chorus` binary: `scripts/test.sh` builds it first (by hand:
//! `cargo build -p chorus-cli`).

mod support;

mod bad_input;
mod cluster;
mod drain;
mod faults;
mod hostile_peer;
mod leader_process;
mod local_hostile;
mod metrics;
mod netns;
mod partition;
mod process;
mod quic;
mod rolling;
mod safety;
mod service;
mod task_guard;
mod task_lease;
