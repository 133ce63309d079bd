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
