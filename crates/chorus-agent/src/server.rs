//! The Unix-socket server: JSON lines in, JSON lines out.
//!
//! Reads (`members`, `status`) are answered from the last published [`ApiView`] without
//! waiting for the agent loop; requests that change state are sent to the loop as [`Input`]s
//! and answered when it has acted. The socket is mode 0660 and state-changing requests are
//! refused to other users than the agent's own and root (SO_PEERCRED).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chorus_core::member::Member;
use chorus_core::placement::{self, PickFilter};
use parking_lot::RwLock;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::api::{Request, Response, StatusReport, WatchEvent, MAX_REQUEST_BYTES};

/// Clients served at once; more wait in the kernel's accept queue.
pub const MAX_CLIENTS: usize = 256;

/// What reads are answered from; replaced as a whole after every agent tick.
#[derive(Debug, Clone)]
pub struct ApiView {
    /// Shared with the views before it while no row changed.
    pub members: Arc<[Arc<Member>]>,
    pub status: StatusReport,
}

/// A request the agent loop must act on; the reply goes back on the oneshot.
#[derive(Debug)]
pub enum Input {
    Sessions(u64, oneshot::Sender<Response>),
    /// The receiver resolves once the reply has been written to the client (its sender is
    /// dropped then): the agent waits for it before it exits, or `chorus leave` could see the
    /// connection close without an answer.
    Leave(oneshot::Sender<Response>, oneshot::Receiver<()>),
    Forget(String, oneshot::Sender<Response>),
    SetState(chorus_core::member::NodeState, oneshot::Sender<Response>),
}

/// Everything a connection needs, shared.
#[derive(Clone)]
pub struct ServerState {
    pub view: Arc<RwLock<Arc<ApiView>>>,
    pub events: broadcast::Sender<WatchEvent>,
    pub inputs: mpsc::Sender<Input>,
    /// The agent's own uid: it and root may change state.
    pub owner_uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another agent is already serving {0}")]
    InUse(PathBuf),
    #[error("cannot create socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket (replacing a stale file left by a dead agent, never a live agent's).
pub async fn bind(path: &Path) -> Result<(UnixListener, u32), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    let owner_uid = std::fs::metadata(path).map_err(io)?.uid();
    Ok((listener, owner_uid))
}

/// Serves until the task is aborted; aborting it also ends every open connection (a `watch`
/// client then sees its stream end), because the connections live in a `JoinSet` it owns.
pub async fn serve(listener: UnixListener, state: ServerState) {
    let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "socket accept failed");
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = handle_connection(stream, state).await {
                tracing::debug!(error = %e, "socket client went away");
            }
        });
    }
}

enum Line {
    Text(String),
    TooLong,
    Eof,
}

/// Reads one line of at most [`MAX_REQUEST_BYTES`]; a longer one is consumed and reported, so
/// the connection can go on.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(&buf).into_owned())
            });
        }
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long {
            if buf.len() + part.len() > MAX_REQUEST_BYTES {
                too_long = true;
                buf = Vec::new();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let consumed = done.unwrap_or(chunk.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(&buf).into_owned())
            });
        }
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses always serialize");
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn handle_connection(stream: UnixStream, state: ServerState) -> std::io::Result<()> {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = match read_line(&mut reader).await? {
            Line::Eof => return Ok(()),
            Line::TooLong => Err(format!("request larger than {MAX_REQUEST_BYTES} bytes")),
            Line::Text(text) if text.trim().is_empty() => continue,
            Line::Text(text) => Request::parse(&text),
        };
        let request = match request {
            Ok(r) => r,
            Err(message) => {
                write_response(&mut write, &Response::Error { message }).await?;
                continue;
            }
        };
        if request.changes_state()
            && !matches!(peer_uid, Some(0))
            && peer_uid != Some(state.owner_uid)
        {
            let message = format!(
                "permission denied: only root or uid {} may change this agent's state",
                state.owner_uid
            );
            write_response(&mut write, &Response::Error { message }).await?;
            continue;
        }
        if request == Request::Watch {
            return stream_events(&mut write, &state).await;
        }
        let (written, written_rx) = oneshot::channel::<()>();
        let response = answer(request, &state, written_rx).await;
        write_response(&mut write, &response).await?;
        drop(written);
    }
}

async fn answer(request: Request, state: &ServerState, written: oneshot::Receiver<()>) -> Response {
    let view = state.view.read().clone();
    let (tx, rx) = oneshot::channel();
    let input = match request {
        Request::Members => {
            return Response::Members {
                members: view.members.iter().map(|m| (**m).clone()).collect(),
            }
        }
        Request::Status => {
            return Response::Status {
                status: view.status.clone(),
            }
        }
        Request::Pick { tags, exclude_tags } => {
            let filter = PickFilter { tags, exclude_tags };
            let members = view.members.iter().map(|m| &**m);
            return match placement::pick(members, &filter, &mut rand::thread_rng()) {
                Some(m) => Response::Picked { member: m.clone() },
                None => Response::Error {
                    message: "no node qualifies (alive, active, compatible, matching the tags)"
                        .into(),
                },
            };
        }
        Request::Watch => unreachable!("watch is streamed by the caller"),
        Request::Load { sessions } => Input::Sessions(sessions, tx),
        Request::Leave => Input::Leave(tx, written),
        Request::Forget { node } => Input::Forget(node, tx),
        Request::Drain => Input::SetState(chorus_core::member::NodeState::Draining, tx),
        Request::Resume => Input::SetState(chorus_core::member::NodeState::Active, tx),
    };
    if state.inputs.send(input).await.is_err() {
        return Response::Error {
            message: "the agent is stopping".into(),
        };
    }
    rx.await.unwrap_or(Response::Error {
        message: "the agent is stopping".into(),
    })
}

async fn stream_events<W: AsyncWrite + Unpin>(
    w: &mut W,
    state: &ServerState,
) -> std::io::Result<()> {
    let mut events = state.events.subscribe();
    write_response(w, &Response::Watching).await?;
    loop {
        match events.recv().await {
            Ok(event) => write_response(w, &Response::Event { event }).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let message = format!("watch fell behind: {n} events were skipped");
                write_response(w, &Response::Error { message }).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = BufReader::with_capacity(16, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader).await.unwrap() {
                Line::Eof => return out,
                Line::TooLong => out.push("<too long>".into()),
                Line::Text(t) => out.push(t),
            }
        }
    }

    #[tokio::test]
    async fn oversized_lines_are_skipped_and_the_next_one_is_read() {
        let mut input = vec![b'x'; MAX_REQUEST_BYTES + 10];
        input.extend_from_slice(b"\n{\"cmd\":\"status\"}\nlast");
        assert_eq!(
            lines(&input).await,
            vec![
                "<too long>".to_string(),
                "{\"cmd\":\"status\"}".into(),
                "last".into()
            ]
        );
    }
}
