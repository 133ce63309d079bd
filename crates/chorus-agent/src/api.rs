//! The socket protocol shared by the agent and the `chorus` command: one JSON [`Request`] per
//! line in, one JSON [`Response`] per line out (`watch` keeps answering with events).

use std::path::PathBuf;

use chorus_core::alert::Alert;
use chorus_core::member::{Member, NodeState};
use chorus_core::node::NodeStatus;
use serde::{Deserialize, Serialize};

/// A request line longer than this is answered with an error and skipped.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Members,
    Status,
    /// The application reports its session count.
    Load {
        sessions: u64,
    },
    /// Leave the cluster gracefully and stop the agent.
    Leave,
    /// Leave for good: out of the Raft voters first (committed by a majority), then leave.
    LeavePermanently,
    /// Stream alerts until the client hangs up.
    Watch,
    /// Remove a dead node from the roster.
    Forget {
        node: String,
    },
    /// Stop taking new sessions (and hand leadership over).
    Drain,
    /// Take new sessions again.
    Resume,
    /// The node that should take the next new session, from this node's view.
    Pick {
        #[serde(default)]
        tags: Vec<(String, String)>,
        #[serde(default)]
        exclude_tags: Vec<(String, String)>,
    },
}

impl Request {
    /// Parses one request line strictly: an object with a known `cmd` and only that command's
    /// fields (serde ignores extra fields on field-less variants of a tagged enum, so they are
    /// checked here: a typo must not be silently ignored). The error is one line ([`one_line`]).
    pub fn parse(line: &str) -> Result<Request, String> {
        let invalid = |e: &dyn std::fmt::Display| one_line(&format!("invalid request: {e}"));
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| invalid(&e))?;
        if !value.is_object() {
            return Err("invalid request: expected a JSON object like {\"cmd\":\"status\"}".into());
        }
        let request: Request = serde_json::from_value(value.clone()).map_err(|e| invalid(&e))?;
        let known = serde_json::to_value(&request).expect("requests always serialize");
        if let (Some(given), Some(known)) = (value.as_object(), known.as_object()) {
            if let Some(extra) = given.keys().find(|k| !known.contains_key(*k)) {
                return Err(invalid(&format!("unknown field {extra:?}")));
            }
        }
        Ok(request)
    }

    /// Requests that change the agent's state are refused to other users than the agent's own
    /// and root.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Members | Request::Status | Request::Watch | Request::Pick { .. } => false,
            Request::Load { .. }
            | Request::Leave
            | Request::LeavePermanently
            | Request::Forget { .. }
            | Request::Drain
            | Request::Resume => true,
        }
    }
}

/// `status`: core's view of this node plus what the agent measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub node: NodeStatus,
    pub generation: u64,
    /// This node leads now (what `is-leader` answers).
    pub is_leader: bool,
    pub addr: String,
    pub uptime_s: u64,
    pub net: serde_json::Value,
}

/// One `watch` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who observed it.
    pub observer: String,
    #[serde(flatten)]
    pub alert: Alert,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Members {
        members: Vec<Member>,
    },
    Picked {
        member: Member,
    },
    Status {
        status: StatusReport,
    },
    Done {
        message: String,
    },
    /// `watch`: sent once when the subscription is in place, so a client knows no later event
    /// will be missed.
    Watching,
    Event {
        event: WatchEvent,
    },
    Error {
        message: String,
    },
}

/// State reported by `drain`/`resume` and shown by `status`.
pub fn state_name(state: NodeState) -> &'static str {
    state.as_str()
}

pub fn running_as_root() -> bool {
    effective_uid() == 0
}

pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Where the agent and the commands meet without `--socket`: `/run/chorus/chorus.sock` as
/// root, else `$XDG_RUNTIME_DIR/chorus.sock`, else `/tmp/chorus-$UID/chorus.sock`. The last
/// lives in a directory of its own because `/tmp` is shared: another user could create a
/// socket at a fixed name there first, but not inside a directory this user owns (the agent
/// refuses one that another user made, `server::bind`).
pub fn default_socket_path() -> PathBuf {
    if running_as_root() {
        return PathBuf::from("/run/chorus/chorus.sock");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("chorus.sock");
    }
    PathBuf::from(format!("/tmp/chorus-{}/chorus.sock", effective_uid()))
}

/// Longest error message a request gets back: serde's messages quote the bad input, which
/// may be most of a 64 KiB line.
pub const MAX_ERROR_CHARS: usize = 300;

/// `message` made fit for one line of a terminal: control characters (a newline in a quoted
/// bad value) escaped, cut at [`MAX_ERROR_CHARS`].
pub fn one_line(message: &str) -> String {
    let mut out = String::new();
    for (i, c) in message.chars().enumerate() {
        if i == MAX_ERROR_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How many cases each `fuzz_` test runs: `CHORUS_FUZZ_CASES`, else a few hundred (seconds
/// in CI; `scripts/fuzz.sh` sets it high for a long run).
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("CHORUS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

/// Byte-level damage for the `fuzz_` tests: each (position, byte, kind) flips, inserts,
/// deletes or duplicates at a position taken modulo the length.
#[cfg(test)]
pub(crate) fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, kind) in edits {
        let len = bytes.len();
        let i = if len == 0 { 0 } else { at % len };
        match kind % 4 {
            0 if len > 0 => bytes[i] ^= byte | 1,
            1 => bytes.insert(i, byte),
            2 if len > 0 => {
                bytes.remove(i);
            }
            _ => {
                let end = (i + 1 + byte as usize % 8).min(len);
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
        }
    }
    bytes
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = Request> {
        let tags = || vec((any::<String>(), any::<String>()), 0..4);
        prop_oneof![
            Just(Request::Members),
            Just(Request::Status),
            any::<u64>().prop_map(|sessions| Request::Load { sessions }),
            Just(Request::Leave),
            Just(Request::LeavePermanently),
            Just(Request::Watch),
            any::<String>().prop_map(|node| Request::Forget { node }),
            Just(Request::Drain),
            Just(Request::Resume),
            (tags(), tags()).prop_map(|(tags, exclude_tags)| Request::Pick { tags, exclude_tags }),
        ]
    }

    /// What the server does with a line: a request, or one error line.
    fn check(line: &str) -> Result<(), TestCaseError> {
        match Request::parse(line) {
            Ok(request) => {
                let again = serde_json::to_string(&request).unwrap();
                prop_assert_eq!(Request::parse(&again), Ok(request));
            }
            Err(message) => {
                prop_assert!(!message.is_empty());
                prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                prop_assert!(message.chars().count() <= MAX_ERROR_CHARS + 1);
                let answer = serde_json::to_string(&Response::Error { message }).unwrap();
                prop_assert!(!answer.contains('\n'));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        #[test]
        fn fuzz_request_parser_valid_requests_round_trip(request in request()) {
            let line = serde_json::to_string(&request).unwrap();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(Request::parse(&line), Ok(request));
        }

        #[test]
        fn fuzz_request_parser_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
            check(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn fuzz_request_parser_mutated_requests(
            request in request(),
            edits in vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        ) {
            let line = serde_json::to_vec(&request).unwrap();
            check(&String::from_utf8_lossy(&mutate(line, &edits)))?;
        }

        #[test]
        fn fuzz_request_parser_json_shaped_junk(
            cmd in prop_oneof![Just("members".to_string()), Just("load".into()), Just("pick".into()), any::<String>()],
            fields in vec((any::<String>(), any::<i128>()), 0..4),
            nested in 0usize..200,
        ) {
            let mut object = serde_json::Map::new();
            object.insert("cmd".into(), cmd.into());
            for (k, v) in fields {
                object.insert(k, serde_json::json!(v.to_string()));
            }
            let line = format!(
                "{}{}{}",
                "[".repeat(nested),
                serde_json::Value::Object(object),
                "]".repeat(nested)
            );
            check(&line)?;
        }
    }

    #[test]
    fn fuzz_request_parser_seeds() {
        // Inputs that once broke or could break a parser: deep nesting, a newline inside a
        // quoted command (serde echoes it), huge numbers, a lone surrogate escape.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let long_cmd = format!("{{\"cmd\":\"{}\"}}", "x".repeat(60_000));
        for line in [
            deep.as_str(),
            long_cmd.as_str(),
            "{\"cmd\":\"a\\nb\"}",
            "{\"cmd\":\"load\",\"sessions\":1e400}",
            "{\"cmd\":\"load\",\"sessions\":18446744073709551616}",
            "{\"cmd\":\"forget\",\"node\":\"\\ud800\"}",
            "{\"cmd\":\"pick\",\"tags\":[[\"a\"]]}",
            "",
            "\u{0}",
        ] {
            check(line).unwrap();
        }
        let err = Request::parse(&long_cmd).unwrap_err();
        assert!(err.ends_with('…'), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_shape() {
        assert_eq!(
            serde_json::to_string(&Request::Members).unwrap(),
            r#"{"cmd":"members"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"load","sessions":3}"#).unwrap(),
            Request::Load { sessions: 3 }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"load","sessions":-1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }

    #[test]
    fn strict_parse_refuses_extra_fields_and_non_objects() {
        assert_eq!(Request::parse(r#"{"cmd":"members"}"#), Ok(Request::Members));
        assert!(Request::parse(r#"{"cmd":"members","status":"alive"}"#)
            .unwrap_err()
            .contains("unknown field \"status\""));
        assert!(Request::parse(r#"["members"]"#).is_err());
        assert!(Request::parse(r#"{"cmd":"pick"}"#).is_ok());
        assert!(Request::parse("not json").is_err());
    }
}
