//! chorus-core: every decision chorus makes, as pure functions and one sans-I/O state machine.
//!
//! It never does I/O, never reads a clock (time is an argument), never spawns a task, and depends
//! on no async runtime, transport or gossip library. The agent feeds it what gossip says and
//! carries out the [`node::Effect`]s it returns; tests drive it with a fake clock.
//!
//! # Layout
//! - [`admission`]: who may hold a connection to the local socket and metrics port, and how
//!   an accept loop backs off after errors.
//! - [`fingerprint`]: version fingerprints and the `--compat` policy (who is refused and why).
//! - [`member`]: the gossip schema (keys a node publishes) and the `members` row.
//! - [`view`]: from gossip observations to one status per node id.
//! - [`roster`]: the persisted set of known members that quorum is counted against.
//! - [`quorum`]: majority / minority / forming, with the keep-majority tie-break.
//! - [`split`]: failures and quorum changes -> `split_brain_suspected`, `quorum_lost`, ...
//! - [`leader`]: the quorum lease over gossip that elects one leader with a fencing epoch.
//! - [`consensus`]: Raft among a few voters: the leader, its lease and fencing epoch.
//! - [`load`]: when load is worth re-publishing.
//! - [`placement`]: `pick`: which node takes the next new session.
//! - [`alert`]: what happened, as data (the agent logs it as `alert=<kind>`).
//! - [`node`]: the state machine tying these together: `handle_*` in, `poll_effect` out.
#![forbid(unsafe_code)]

pub mod admission;
pub mod alert;
pub mod consensus;
pub mod fingerprint;
pub mod identity;
pub mod leader;
pub mod load;
pub mod member;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod roster;
pub mod split;
pub mod view;

pub use fingerprint::PROTOCOL_VERSION;
