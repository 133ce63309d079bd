//! The Unix-socket server: JSON lines in, JSON lines out.
//!
//! Reads (`members`, `status`) are answered from the last published [`ApiView`] without
//! waiting for the agent loop; requests that change state are sent to the loop as [`Input`]s
//! and answered when it has acted. The socket is mode 0660 and state-changing requests are
//! refused to other users than the agent's own and root (SO_PEERCRED).
//!
//! No client can hold the agent's resources for long: a connection takes a slot
//! (`chorus_core::admission::Slots`: a share per user, and a reserve only root and the agent's
//! own user reach, so `chorus status` and `chorus leave` always get in); a request line must
//! be complete within [`REQUEST_TIMEOUT`] and an answer taken within [`WRITE_TIMEOUT`]; a
//! `watch` ends as soon as its client hangs up, not at the next event.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chorus_core::admission::{Budget, LogEvery, Refusal, Slot, Slots, SocketLimits};
use chorus_core::member::Member;
use chorus_core::placement::{self, PickFilter};
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::accept::accept_next;
use crate::api::{Request, Response, StatusReport, WatchEvent, MAX_REQUEST_BYTES};
use crate::metrics::Metrics;
use crate::socket_path::{self, PlaceError};

/// A request line must be complete within this long after the connection opens or the
/// previous answer; else the client gets an error line and the connection is closed, so a
/// client that stays silent or sends half a line cannot hold a slot.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An answer (or a `watch` event) the client does not take within this long closes the
/// connection: a client that never reads cannot hold a slot either.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused connections are logged at most once per this interval, with their count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

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
    /// Leave (`true`: for good, out of the voters first).
    Leave(bool, oneshot::Sender<Response>, oneshot::Receiver<()>),
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
    /// Counts refused connections.
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error("cannot create socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket at `path`, mode 0660. `default_path`: the path was not chosen by the
/// operator, so its directory is checked to be this user's own (created 0700 for a user,
/// 0755 for root's `/run/chorus`, whose socket other users may reach as its mode allows).
/// A stale socket left by a dead agent is replaced; a live agent's socket, and anything
/// that is not a socket, is refused and left alone.
pub async fn bind(path: &Path, default_path: bool) -> Result<(UnixListener, u32), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let me = crate::api::effective_uid();
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if default_path => {
            let mode = if me == 0 { 0o755 } else { 0o700 };
            socket_path::prepare_private_dir(dir, mode, me)?;
        }
        Some(dir) => std::fs::create_dir_all(dir).map_err(io)?,
        None => {}
    }
    socket_path::clear_stale_socket(path).await?;
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    let owner_uid = std::fs::metadata(path).map_err(io)?.uid();
    Ok((listener, owner_uid))
}

/// Gives a connection's slot back when the connection ends, however it ends.
struct SlotGuard {
    slots: Arc<Mutex<Slots>>,
    slot: Slot,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.lock().release(self.slot);
    }
}

/// Serves until the task is aborted; aborting it also ends every open connection (a `watch`
/// client then sees its stream end), because the connections live in a `JoinSet` it owns.
pub async fn serve(listener: UnixListener, state: ServerState) {
    let limits = Budget::for_fd_limit(crate::fdlimit::current_nofile_limit()).socket;
    serve_with(listener, state, limits).await
}

async fn serve_with(listener: UnixListener, state: ServerState, limits: SocketLimits) {
    let slots = Arc::new(Mutex::new(Slots::new(limits)));
    let mut backoff = chorus_core::admission::AcceptBackoff::new();
    let mut refusals = LogEvery::new(REFUSAL_LOG_EVERY);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _) = accept_next("socket", &mut backoff, || listener.accept()).await;
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let privileged = uid == Some(0) || uid == Some(state.owner_uid);
        let admitted = slots.lock().admit(uid, privileged);
        let slot = match admitted {
            Ok(slot) => slot,
            Err(refusal) => {
                state.metrics.refused("socket");
                if let Some(count) = refusals.happened(tokio::time::Instant::now().into_std()) {
                    tracing::warn!(uid, refused = count, "socket connection refused: {refusal}");
                }
                refuse(&stream, refusal);
                continue;
            }
        };
        let guard = SlotGuard {
            slots: slots.clone(),
            slot,
        };
        let state = state.clone();
        connections.spawn(async move {
            let _guard = guard;
            if let Err(e) = handle_connection(stream, state, uid, slot).await {
                tracing::debug!(error = %e, "socket client went away");
            }
        });
    }
}

/// Tells a refused client why in one line, without waiting: a new connection's send buffer
/// is empty, so the line fits; the connection closes when `stream` is dropped.
fn refuse(stream: &UnixStream, refusal: Refusal) {
    let line = response_line(&Response::Error {
        message: refusal.to_string(),
    });
    let _ = stream.try_write(&line);
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

fn response_line(response: &Response) -> Vec<u8> {
    let mut line = serde_json::to_vec(response).expect("responses always serialize");
    line.push(b'\n');
    line
}

/// Writes one answer; a client that does not take it within [`WRITE_TIMEOUT`] is an error
/// (the connection closes).
async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    response: &Response,
) -> std::io::Result<()> {
    let line = response_line(response);
    let write = async {
        w.write_all(&line).await?;
        w.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its answer",
        )),
    }
}

/// What one request line asks for: the request, or the one-line error it is answered with.
fn parse_line(line: Line) -> Option<Result<Request, String>> {
    match line {
        Line::Eof => None,
        Line::TooLong => Some(Err(format!(
            "request larger than {MAX_REQUEST_BYTES} bytes"
        ))),
        Line::Text(text) => Some(Request::parse(&text)),
    }
}

async fn handle_connection(
    stream: UnixStream,
    state: ServerState,
    peer_uid: Option<u32>,
    slot: Slot,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        // Blank lines do not move the deadline: only an answered request does.
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let line = loop {
            match tokio::time::timeout_at(deadline, read_line(&mut reader)).await {
                Err(_) => {
                    let message = format!(
                        "no complete request within {}s: closing the connection",
                        REQUEST_TIMEOUT.as_secs()
                    );
                    return write_response(&mut write, &Response::Error { message }).await;
                }
                Ok(line) => match line? {
                    Line::Text(text) if text.trim().is_empty() => continue,
                    line => break line,
                },
            }
        };
        let request = match parse_line(line) {
            None => return Ok(()),
            Some(Ok(r)) => r,
            Some(Err(message)) => {
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
            if !slot.may_watch() {
                let message = "the agent is at its connection limit: `watch` needs a free \
                               connection, try again later"
                    .to_string();
                write_response(&mut write, &Response::Error { message }).await?;
                continue;
            }
            return stream_events(reader, &mut write, &state).await;
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
        Request::Leave => Input::Leave(false, tx, written),
        Request::LeavePermanently => Input::Leave(true, tx, written),
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

/// Streams events until the client hangs up or the agent stops. The read half is watched at
/// the same time, so a client that goes away frees its connection at once, even when no
/// event comes for hours; what a watcher sends is read and ignored.
async fn stream_events<W: AsyncWrite + Unpin>(
    mut reader: BufReader<OwnedReadHalf>,
    w: &mut W,
    state: &ServerState,
) -> std::io::Result<()> {
    let mut events = state.events.subscribe();
    write_response(w, &Response::Watching).await?;
    let mut ignored = [0u8; 256];
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => write_response(w, &Response::Event { event }).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let message = format!("watch fell behind: {n} events were skipped");
                    write_response(w, &Response::Error { message }).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    /// A server on a socket in a temporary directory, with fixed limits.
    struct TestServer {
        path: PathBuf,
        events: broadcast::Sender<WatchEvent>,
        _inputs: mpsc::Receiver<Input>,
        _task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn status() -> StatusReport {
        StatusReport {
            node: chorus_core::node::NodeStatus {
                node_id: "n1".into(),
                cluster: "c".into(),
                fingerprint: String::new(),
                app_version: String::new(),
                alive: 1,
                roster: 1,
                quorum: true,
                partition: chorus_core::quorum::Partition::Majority,
                leader: None,
                epoch: 0,
                state: chorus_core::member::NodeState::Active,
                raft: Default::default(),
            },
            generation: 1,
            is_leader: false,
            addr: "127.0.0.1:1".into(),
            uptime_s: 0,
            net: serde_json::Value::Null,
        }
    }

    async fn start(limits: SocketLimits) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (listener, owner_uid) = bind(&path, false).await.unwrap();
        let (events, _) = broadcast::channel(16);
        let (inputs, rx) = mpsc::channel(4);
        let state = ServerState {
            view: Arc::new(RwLock::new(Arc::new(ApiView {
                members: Arc::new([]),
                status: status(),
            }))),
            events: events.clone(),
            inputs,
            owner_uid,
            metrics: Arc::new(Metrics::new()),
        };
        TestServer {
            path,
            events,
            _inputs: rx,
            _task: tokio::spawn(serve_with(listener, state, limits)),
            _dir: dir,
        }
    }

    const SMALL: SocketLimits = SocketLimits {
        normal: 2,
        reserved: 1,
        per_uid: 1,
    };

    async fn status_answers(path: &Path) -> Result<(), String> {
        let mut client = Client::connect(path).await.map_err(|e| e.to_string())?;
        match client.call(&Request::Status).await {
            Ok(Response::Status { .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_and_a_half_written_line_are_cut_off() {
        let server = start(SMALL).await;
        let mut silent = Client::connect(&server.path).await.unwrap();
        let mut half = Client::connect(&server.path).await.unwrap();
        half.send_raw(b"{\"cmd\":\"sta").await.unwrap();
        let (blank_read, mut blank_write) = UnixStream::connect(&server.path)
            .await
            .unwrap()
            .into_split();
        let started = tokio::time::Instant::now();
        let cut_off = async {
            for client in [&mut silent, &mut half] {
                match client.next_response().await {
                    Ok(Response::Error { message }) => {
                        assert!(message.contains("no complete request within"), "{message}")
                    }
                    other => panic!("{other:?}"),
                }
                assert!(client.next_response().await.is_err(), "still open");
            }
            let mut blank_lines = BufReader::new(blank_read).lines();
            let line = blank_lines.next_line().await.unwrap().unwrap();
            assert!(line.contains("no complete request within"), "{line}");
            // Closed: the end of the stream, or a reset when a blank line was still unread.
            assert!(
                !matches!(blank_lines.next_line().await, Ok(Some(_))),
                "still open"
            );
        };
        // Blank lines do not keep a connection open either.
        let keep_blank = async {
            for _ in 0..100 {
                tokio::time::sleep(REQUEST_TIMEOUT / 4).await;
                if blank_write.write_all(b"\n").await.is_err() {
                    break;
                }
            }
        };
        let (cut, _) = tokio::join!(
            tokio::time::timeout(REQUEST_TIMEOUT * 3, cut_off),
            keep_blank
        );
        cut.expect("the server closes idle connections");
        assert!(started.elapsed() >= REQUEST_TIMEOUT);
        status_answers(&server.path).await.unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_get_one_error_line_and_the_reserve_is_not_for_watch() {
        let server = start(SMALL).await;
        let _a = Client::connect(&server.path).await.unwrap();
        let _b = Client::connect(&server.path).await.unwrap();
        // The two normal slots are held: this one (the owner) takes the reserve; it may ask
        // for status but not watch.
        let mut reserved = Client::connect(&server.path).await.unwrap();
        assert!(matches!(
            reserved.call(&Request::Status).await,
            Ok(Response::Status { .. })
        ));
        match reserved.call(&Request::Watch).await {
            Ok(Response::Error { message }) => assert!(message.contains("watch"), "{message}"),
            other => panic!("{other:?}"),
        }
        // Everything is held: one line saying why, then the end of the connection.
        let mut refused = Client::connect(&server.path).await.unwrap();
        match refused.next_response().await {
            Ok(Response::Error { message }) => {
                assert!(message.contains("limit of 3 connections"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(refused.next_response().await.is_err());
        drop(reserved);
        status_answers(&server.path).await.unwrap();
    }

    #[tokio::test]
    async fn a_watcher_that_hangs_up_frees_its_slot_without_any_event() {
        let server = start(SMALL).await;
        for round in 0..20 {
            let mut watchers = Vec::new();
            for _ in 0..2 {
                let mut w = Client::connect(&server.path).await.unwrap();
                match w.call(&Request::Watch).await {
                    Ok(Response::Watching) => {}
                    other => panic!("round {round}: {other:?}"),
                }
                watchers.push(w);
            }
            // No event is ever sent: the server must notice the hang-up on its own.
            drop(watchers);
            // The reserve is free again once the normal slots are: a status answers, and
            // the next round's two watchers get normal slots (a reserved one would refuse
            // to watch).
            tokio::time::timeout(Duration::from_secs(10), async {
                while status_answers(&server.path).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("status answers");
        }
        assert_eq!(
            server.events.receiver_count(),
            0,
            "watchers still subscribed"
        );
    }

    #[tokio::test]
    async fn a_watcher_gets_events_and_what_it_sends_is_ignored() {
        let server = start(SMALL).await;
        let mut w = Client::connect(&server.path).await.unwrap();
        assert!(matches!(
            w.call(&Request::Watch).await,
            Ok(Response::Watching)
        ));
        w.send_raw(b"{\"cmd\":\"leave\"}\nanything\n")
            .await
            .unwrap();
        let event = WatchEvent {
            time_ms: 1,
            observer: "n1".into(),
            alert: chorus_core::alert::Alert::NodeLeft { node: "n2".into() },
        };
        server.events.send(event.clone()).unwrap();
        match w.next_response().await {
            Ok(Response::Event { event: got }) => assert_eq!(got, event),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_dropped() {
        let server = start(SMALL).await;
        let mut raw = UnixStream::connect(&server.path).await.unwrap();
        // Ask for status again and again and never read: the answers fill the socket
        // buffers, the server's write waits, and after WRITE_TIMEOUT it gives up on the
        // client, which then finds its connection closed.
        let requests = b"{\"cmd\":\"status\"}\n".repeat(1000);
        let flood = async {
            loop {
                raw.write_all(&requests).await?;
            }
        };
        let ended: std::io::Result<()> = tokio::time::timeout(WRITE_TIMEOUT * 6, flood)
            .await
            .expect("the server closes a connection whose client does not read");
        assert!(ended.is_err());
        status_answers(&server.path).await.unwrap();
    }

    /// Every request a byte stream carries, as the connection loop reads them: each non-blank
    /// line gives one request or one error line.
    async fn answers(input: &[u8], capacity: usize) -> Vec<Result<Request, String>> {
        let mut reader = BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader).await.unwrap() {
                Line::Text(t) if t.trim().is_empty() => continue,
                line => match parse_line(line) {
                    Some(answer) => out.push(answer),
                    None => return out,
                },
            }
        }
    }

    mod fuzz {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::api::fuzz_cases()))]

            #[test]
            fn fuzz_socket_stream_gets_one_answer_per_line(
                chunks in vec(
                    prop_oneof![
                        vec(any::<u8>(), 0..64),
                        Just(b"{\"cmd\":\"status\"}".to_vec()),
                        Just(b"\n".to_vec()),
                        (0usize..3).prop_map(|k| vec![b'y'; MAX_REQUEST_BYTES - 1 + k]),
                    ],
                    0..12,
                ),
                capacity in 1usize..64,
            ) {
                let input = chunks.concat();
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let got = runtime.block_on(answers(&input, capacity));
                let lines: Vec<&[u8]> = input
                    .split(|&b| b == b'\n')
                    .filter(|l| !String::from_utf8_lossy(l).trim().is_empty())
                    .collect();
                prop_assert_eq!(got.len(), lines.len());
                for (line, answer) in lines.iter().zip(&got) {
                    match answer {
                        Ok(request) => {
                            let again = Request::parse(&String::from_utf8_lossy(line));
                            prop_assert_eq!(again.as_ref(), Ok(request));
                        }
                        Err(message) => {
                            prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                            if line.len() > MAX_REQUEST_BYTES {
                                prop_assert!(message.contains("larger than"), "{}", message);
                            }
                        }
                    }
                }
            }
        }
    }

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
