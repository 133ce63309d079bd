//! The client side of the socket, used by the `chorus` command and by tests.
//!
//! Before it sends anything, a client checks who serves the socket (the peer's credentials,
//! SO_PEERCRED, taken by the kernel when the agent listened): this user, root, or the agent
//! user named with `--socket-owner`. A socket another user put at the path first (in `/tmp`)
//! would otherwise answer `is-leader` with "yes" and `drain` with a fake "ok".

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

use crate::api::{effective_uid, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent at {} (is `chorus agent` running?)", .0.display())]
    NoAgent(PathBuf),
    /// The socket (or its directory) is there but not open to this user: not "no agent".
    #[error("permission denied on {} ({hint})", .path.display())]
    PermissionDenied { path: PathBuf, hint: String },
    #[error(
        "refusing the agent at {path}: it is served by uid {served_by}, not by {trusted}; \
         another user may have put it there (if the agent runs as that user, pass --socket-owner {served_by})",
        path = .path.display()
    )]
    Untrusted {
        path: PathBuf,
        served_by: u32,
        trusted: String,
    },
    #[error("cannot tell who serves {}: {reason}", .path.display())]
    UnknownServer { path: PathBuf, reason: String },
    #[error("lost the agent at {path}: {reason}", path = .0.display(), reason = .1)]
    Io(PathBuf, String),
    #[error("the agent sent an answer this chorus does not understand: {0}")]
    BadResponse(String),
}

/// What to tell a user who may not open the socket at `path`: the socket's group and mode
/// (the agent makes it 0660, so its group's members may connect), or the directory that is
/// closed to them.
fn permission_denied(path: &Path) -> ClientError {
    use std::os::unix::fs::MetadataExt;
    let hint = match std::fs::metadata(path) {
        Ok(meta) => {
            let gid = meta.gid();
            let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .map_or_else(|| gid.to_string(), |g| g.name);
            format!(
                "the socket is group {group}, mode {:04o}: add yourself to {group} or use sudo",
                meta.mode() & 0o7777
            )
        }
        Err(_) => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            format!(
                "its directory {} is not open to you: ask the agent's owner, or use sudo",
                dir.display()
            )
        }
    };
    ClientError::PermissionDenied {
        path: path.to_path_buf(),
        hint,
    }
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to an agent run by this user or root.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        Client::connect_to_agent_of(path, None).await
    }

    /// Connects to an agent run by this user, root, or `agent_uid`.
    pub async fn connect_to_agent_of(
        path: &Path,
        agent_uid: Option<u32>,
    ) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                permission_denied(path)
            } else {
                ClientError::NoAgent(path.to_path_buf())
            }
        })?;
        let served_by = stream
            .peer_cred()
            .map_err(|e| ClientError::UnknownServer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?
            .uid();
        let me = effective_uid();
        if served_by != 0 && served_by != me && Some(served_by) != agent_uid {
            let mut trusted = format!("this user (uid {me}) or root");
            if let Some(uid) = agent_uid {
                trusted = format!("uid {uid}, {trusted}");
            }
            return Err(ClientError::Untrusted {
                path: path.to_path_buf(),
                served_by,
                trusted,
            });
        }
        let (read, writer) = stream.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Sends one request and reads one response. An agent at its connection limit answers
    /// with one error line and closes before it reads the request: that line is the answer
    /// even when sending the request failed.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(request).expect("requests always serialize");
        line.push(b'\n');
        if let Err(sending) = self.send_raw(&line).await {
            return match self.next_response().await {
                Ok(refusal @ Response::Error { .. }) => Ok(refusal),
                _ => Err(sending),
            };
        }
        self.next_response().await
    }

    /// Writes bytes as they are (tests send junk this way).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Io(self.path.clone(), e.to_string()))
    }

    /// Reads the next response line (`watch` sends many).
    pub async fn next_response(&mut self) -> Result<Response, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| ClientError::Io(self.path.clone(), e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Io(
                self.path.clone(),
                "connection closed".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| ClientError::BadResponse(format!("{e}: {}", line.trim())))
    }
}

/// One request on a fresh connection to an agent run by this user or root.
pub async fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    Client::connect(path).await?.call(request).await
}

/// A user for `--socket-owner`: a name from the user database or a numeric uid.
pub fn parse_user(user: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("no user named {user:?}")),
        Err(e) => Err(format!("cannot look up user {user:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_names_or_uids() {
        assert_eq!(parse_user("0"), Ok(0));
        assert_eq!(parse_user("root"), Ok(0));
        assert_eq!(parse_user("4000000000"), Ok(4_000_000_000));
        assert!(parse_user("no-such-user-here")
            .unwrap_err()
            .contains("no user named"));
    }
}
