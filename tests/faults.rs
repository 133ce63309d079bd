//! The agent's own faults, with real processes where the kernel is the fault: a data dir that
//! another agent holds, a data dir that refuses writes, a gossip loop that stops.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::ChitchatMessage;
use chorus_core::alert::Alert;
use chorus_core::member::Status;
use tokio::sync::Notify;

use crate::support::agent::{
    member, next_event_matching, status, watch, AgentSpec, Net, TestAgent,
};
use crate::support::bin::{chorus, describe, KeyFile, ProcAgent};
use crate::support::{free_addr, wait_until, SLOW};

/// A second `chorus agent` pointed at a running agent's data dir (another node id, another
/// port and socket, as a mistaken copy of a unit file would) exits 2 with one line, and
/// leaves the running agent's state file as it was.
#[tokio::test]
async fn a_second_agent_on_a_data_dir_is_refused_and_changes_nothing() {
    let key = KeyFile::keygen("dd-lock");
    let first = ProcAgent::spawn("n1", "dd-lock", &key, &[], &["--expect", "1"]);
    let state = first.data_dir().join("state.json");
    wait_until("n1 serves its socket", SLOW, || async {
        chorus(&["status", "--socket", first.socket_arg()])
            .await
            .status
            .success()
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let before = std::fs::read(&state).expect("n1 wrote its state");

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("second.sock");
    let out = tokio::time::timeout(
        SLOW,
        tokio::process::Command::new(crate::support::bin::chorus_bin())
            .args(["agent", "--node-id", "other", "--cluster", "dd-lock"])
            .args(["--listen", &free_addr().to_string()])
            .arg("--data-dir")
            .arg(first.data_dir())
            .arg("--socket")
            .arg(&socket)
            .arg("--cluster-key")
            .arg(&key.path)
            .output(),
    )
    .await
    .expect("the second agent exits at once")
    .expect("run chorus agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(stderr.lines().count(), 1, "one line: {}", describe(&out));
    assert!(
        stderr.contains("in use by another agent")
            && stderr.contains(&first.process.pid().to_string()),
        "{}",
        describe(&out)
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the state file was rewritten"
    );
    assert!(!socket.exists(), "the refused agent created its socket");
    let out = chorus(&["status", "--json", "--socket", first.socket_arg()]).await;
    assert!(
        out.status.success(),
        "n1 after the refusal: {}",
        describe(&out)
    );
}

/// Makes `dir` read-only for every new open (a read-only bind mount over itself) while it
/// lives; files opened before stay as they are.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> Result<ReadOnly, String> {
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .output()
                .map_err(|e| e.to_string())?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        };
        run(&["--bind"])?;
        let guard = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,bind,ro"])?;
        Ok(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// With a data dir that refuses new files (a read-only remount under a running agent), `drain`
/// answers with an error and leaves the node active, and the agent raises
/// `alert=persist_failed` once for the whole run of failures. Once the data dir takes writes
/// again, `drain` works. (The Raft log keeps the file it has open, so Raft itself goes on:
/// what a failed Raft write does is pinned by the raftlog and consensus tests.)
#[tokio::test]
async fn an_unwritable_data_dir_refuses_changes_and_alerts_once() {
    if !nix_is_root() {
        eprintln!("SKIPPED: needs root to mount the data dir read-only");
        return;
    }
    let key = KeyFile::keygen("dd-ro");
    let agent = ProcAgent::spawn("n1", "dd-ro", &key, &[], &["--expect", "1"]);
    let socket = agent.socket_arg().to_string();
    wait_until("n1 serves its socket", SLOW, || async {
        chorus(&["status", "--socket", &socket])
            .await
            .status
            .success()
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let ro = ReadOnly::mount(&agent.data_dir()).expect("mount the data dir read-only");
    for _ in 0..3 {
        let out = chorus(&["drain", "--socket", &socket]).await;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot make this node draining"),
            "{}",
            describe(&out)
        );
    }
    wait_until("n1 alerts persist_failed", SLOW, || async {
        let log = agent.process.log();
        log.contains("alert=persist_failed")
            .then_some(())
            .ok_or_else(|| "no alert yet".to_string())
    })
    .await;
    let out = chorus(&["status", "--json", "--socket", &socket]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["state"], "active", "{status}");
    let log = agent.process.log();
    assert_eq!(
        log.matches("alert=persist_failed").count(),
        1,
        "alerted once per run of failures:\n{log}"
    );

    drop(ro);
    let out = chorus(&["drain", "--socket", &socket]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

fn nix_is_root() -> bool {
    // SAFETY-free: read the effective uid from /proc rather than calling libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// chitchat's in-memory transport whose sockets' `recv` fails when the test says so, as a
/// broken socket would: the gossip loop ends.
#[derive(Clone)]
struct Breakable {
    inner: ChannelTransport,
    broken: Arc<(AtomicBool, Notify)>,
}

impl Breakable {
    fn new(inner: ChannelTransport) -> Breakable {
        Breakable {
            inner,
            broken: Arc::new((AtomicBool::new(false), Notify::new())),
        }
    }

    /// The open socket's next `recv` fails; sockets opened after this work.
    fn break_now(&self) {
        self.broken.0.store(true, Ordering::SeqCst);
        self.broken.1.notify_waiters();
    }
}

struct BreakableSocket {
    inner: Box<dyn Socket>,
    broken: Arc<(AtomicBool, Notify)>,
}

#[async_trait]
impl Transport for Breakable {
    async fn open(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(BreakableSocket {
            inner: self.inner.open(addr).await?,
            broken: self.broken.clone(),
        }))
    }
}

#[async_trait]
impl Socket for BreakableSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.inner.send(to, msg).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        let (flag, notify) = &*self.broken;
        let notified = notify.notified();
        if flag.swap(false, Ordering::SeqCst) {
            anyhow::bail!("injected socket failure");
        }
        tokio::select! {
            received = self.inner.recv() => received,
            _ = notified => {
                flag.store(false, Ordering::SeqCst);
                anyhow::bail!("injected socket failure")
            }
        }
    }
}

/// The gossip loop of a running agent ends (its socket breaks): the agent restarts it in
/// place, same generation, with one `alert=gossip_restarted`, and the others never see the
/// node fail. A second end within a minute stops the agent with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_gossip_loop_is_restarted_once_then_stops_the_agent() {
    let channel = ChannelTransport::default();
    let breakable = Breakable::new(channel.clone());
    let n1 = TestAgent::start(AgentSpec::new(
        "n1",
        "supervise",
        &Net::Channel(channel.clone()),
    ))
    .await;
    let n2_spec = AgentSpec::new("n2", "supervise", &Net::Channel(channel.clone())).seed(n1.addr());
    let n2 = TestAgent::start_on(n2_spec, Arc::new(breakable.clone())).await;
    let generation = status(&n2.socket()).await.unwrap().generation;
    wait_until("n1 sees n2 alive", SLOW, || async {
        let row = member(&n1.socket(), "n2").await?;
        (row.status == Status::Alive)
            .then_some(())
            .ok_or_else(|| format!("{row:?}"))
    })
    .await;

    let mut watcher = watch(&n2.socket()).await;
    breakable.break_now();
    let event = next_event_matching(&mut watcher, SLOW, "gossip_restarted", |a| {
        matches!(a, Alert::GossipRestarted { .. })
    })
    .await;
    assert!(
        matches!(&event.alert, Alert::GossipRestarted { reason } if reason.contains("injected")),
        "{event:?}"
    );
    assert!(n2.is_running());
    assert_eq!(status(&n2.socket()).await.unwrap().generation, generation);
    // Gossip flows again both ways: a change on n2 reaches n1.
    let out = chorus_agent::client::call(
        &n2.socket(),
        &chorus_agent::api::Request::Load { sessions: 7 },
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
    wait_until("n1 sees n2's new session count", SLOW, || async {
        let row = member(&n1.socket(), "n2").await?;
        (row.status == Status::Alive && row.load.sessions == 7)
            .then_some(())
            .ok_or_else(|| format!("{row:?}"))
    })
    .await;

    breakable.break_now();
    wait_until("n2 stops after a second failure", SLOW, || async {
        (!n2.is_running())
            .then_some(())
            .ok_or_else(|| "still running".to_string())
    })
    .await;
    match n2.join().await {
        Err(chorus_agent::AgentError::GossipDied(reason)) => {
            assert!(reason.contains("injected"), "{reason}")
        }
        other => panic!("n2 ended with {other:?}"),
    }
}
