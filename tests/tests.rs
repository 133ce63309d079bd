//! chorus-tests: the workspace's cross-crate tests, in one test binary (one link, one run).
//!
//! Where tests go:
//! - `cluster.rs`: several agents in this process (`chorus_agent::run` over chitchat's
//!   in-memory transport, or QUIC): convergence, version refusal, crash, graceful stop,
//!   restart.
//! - `process.rs`: real `chorus agent` processes driven through the `chorus` command and
//!   its `--json` output, read into structs defined in the test, so a renamed field fails.
//! - `bad_input.rs`: junk on the socket and on the gossip port; requests from other users.
//! - `netns.rs`: real partitions between agents in network namespaces (root only,
//!   `#[ignore]`d; `scripts/test.sh` runs them); its lab is `netns_support.rs`.
//! - `support/`: helpers: `wait_until` (poll with a deadline, never a bare sleep), free
//!   loopback ports, in-process agents (`support::agent`), the binary and `KillOnDrop`
//!   (`support::bin`).
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
mod netns;
mod process;
