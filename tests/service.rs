//! `chorus agent` as a service: systemd's notify protocol and `/health`, with real agent
//! processes and a datagram socket standing in for systemd.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

use crate::support::bin::{chorus_bin, KeyFile, KillOnDrop};
use crate::support::{free_addr, wait_until, GOSSIP_INTERVAL, SLOW};

/// A stand-in for systemd's notification socket: it records every datagram an agent sends.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    /// Every line received so far, in order.
    lines: Vec<String>,
    _dir: TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind a datagram socket");
        NotifySocket {
            socket,
            path,
            lines: Vec::new(),
            _dir: dir,
        }
    }

    /// Receives datagrams until a line satisfies `wanted`, and returns it; fails the test at
    /// the deadline with every line seen.
    async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut buf = vec![0u8; 4096];
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut found = None;
                    for line in text.lines() {
                        self.lines.push(line.to_string());
                        if found.is_none() && wanted(line) {
                            found = Some(line.to_string());
                        }
                    }
                    if let Some(line) = found {
                        return line;
                    }
                }
                Ok(Err(e)) => panic!("reading the notify socket: {e}"),
                Err(_) => panic!("no {what} within {within:?}; received {:?}", self.lines),
            }
        }
    }

    /// Lines received within `window`, without waiting for any in particular.
    async fn received_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                got.push(line.to_string());
                self.lines.push(line.to_string());
            }
        }
        got
    }
}

/// A temporary directory for agents' data dirs, sockets and logs, and their cluster key.
struct Lab {
    dir: TempDir,
    key: KeyFile,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("create a temporary directory"),
            key: KeyFile::keygen("svc"),
        }
    }

    /// `chorus agent` with the test gossip interval, `NOTIFY_SOCKET` at `notify`, and `env`.
    fn spawn(
        &self,
        node_id: &str,
        addr: SocketAddr,
        seeds: &[SocketAddr],
        notify: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> KillOnDrop {
        let (dir, key) = (self.dir.path(), &self.key);
        let mut command = Command::new(chorus_bin());
        command
            .env_remove("CHORUS_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info,chitchat=warn")
            .env("NOTIFY_SOCKET", notify)
            .envs(env.iter().copied())
            .arg("agent")
            .args(["--node-id", node_id, "--cluster", "svc"])
            .args(["--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("{node_id}-data")))
            .arg("--socket")
            .arg(dir.join(format!("{node_id}.sock")))
            .args([
                "--gossip-interval",
                &format!("{}ms", GOSSIP_INTERVAL.as_millis()),
            ])
            .arg("--cluster-key")
            .arg(&key.path)
            .args(extra);
        for seed in seeds {
            command.args(["--seed", &seed.to_string()]);
        }
        KillOnDrop::spawn(node_id, command, dir.join(format!("{node_id}.log")))
    }
}

/// `GET path` on `addr`: the status code and the body, or why there is none.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {answer:?}"))?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_ready_reports_status_pings_the_watchdog_and_says_stopping() {
    let lab = Lab::new();
    let mut notify = NotifySocket::bind();
    let addr = free_addr();
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let mut agent = lab.spawn(
        "solo",
        addr,
        &[addr],
        &notify.path.clone(),
        &[("WATCHDOG_USEC", "400000")],
        &["--metrics-addr", &metrics_arg],
    );

    // Its only seed is itself: it is the first node, and must not hang in `activating`.
    notify.wait_for("READY=1", SLOW, |l| l == "READY=1").await;
    let status = notify
        .lines
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .cloned()
        .expect("STATUS= comes with or before READY=1");
    assert!(status.contains("1/1 members alive"), "{status}");
    // The log names the metrics address.
    wait_until("the metrics address is logged", SLOW, || {
        let log = agent.log();
        async move {
            if log.contains(&format!("http://{metrics}/health")) {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await;
    let (code, body) = wait_until("/health answers 200", SLOW, || async {
        match http_get(metrics, "/health").await {
            Ok((200, body)) => Ok((200, body)),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(e),
        }
    })
    .await;
    assert_eq!(code, 200);
    let report: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(report["partition"], "majority", "{report}");

    // WATCHDOG=1 at a quarter of WATCHDOG_USEC, while the loop turns.
    for _ in 0..3 {
        notify
            .wait_for("WATCHDOG=1", Duration::from_secs(5), |l| l == "WATCHDOG=1")
            .await;
    }
    // A stopped process pings nothing; it pings again once it runs.
    agent.signal("STOP");
    let _ = notify.received_within(Duration::from_millis(200)).await;
    let while_stopped = notify.received_within(Duration::from_millis(800)).await;
    assert!(
        while_stopped.is_empty(),
        "sent while stopped: {while_stopped:?}"
    );
    agent.signal("CONT");
    notify
        .wait_for("WATCHDOG=1 after SIGCONT", Duration::from_secs(5), |l| {
            l == "WATCHDOG=1"
        })
        .await;

    // `systemctl reload` (ExecReload sends SIGHUP) must not end the agent.
    agent.signal("HUP");
    wait_until("SIGHUP is logged", SLOW, || {
        let log = agent.log();
        async move {
            if log.contains("SIGHUP") {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await;
    notify
        .wait_for("WATCHDOG=1 after SIGHUP", Duration::from_secs(5), |l| {
            l == "WATCHDOG=1"
        })
        .await;
    assert!(agent.exited().is_none(), "SIGHUP ended the agent");

    agent.signal("TERM");
    notify
        .wait_for("STOPPING=1", SLOW, |l| l == "STOPPING=1")
        .await;
    let exit = agent.wait_exit(SLOW).await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_seeds_are_others_is_ready_once_it_has_joined_one() {
    let lab = Lab::new();
    let mut first_notify = NotifySocket::bind();
    let mut second_notify = NotifySocket::bind();
    let first_addr = free_addr();
    let second_addr = free_addr();

    let _second = lab.spawn(
        "second",
        second_addr,
        &[first_addr],
        &second_notify.path.clone(),
        &[],
        &[],
    );
    // Alone, it reports its status but not ready: its only seed is not there yet.
    let status = second_notify
        .wait_for("STATUS=", SLOW, |l| l.starts_with("STATUS="))
        .await;
    assert!(status.contains("1/1 members alive"), "{status}");
    let early = second_notify.received_within(GOSSIP_INTERVAL * 10).await;
    assert!(
        !early.iter().any(|l| l == "READY=1"),
        "ready alone: {early:?}"
    );

    // `--expect 1`: the first node is ready on its own.
    let _first = lab.spawn(
        "first",
        first_addr,
        &[second_addr],
        &first_notify.path.clone(),
        &[],
        &["--expect", "1"],
    );
    first_notify
        .wait_for("READY=1", SLOW, |l| l == "READY=1")
        .await;
    second_notify
        .wait_for("READY=1", SLOW, |l| l == "READY=1")
        .await;
    let status = second_notify
        .lines
        .iter()
        .rev()
        .find(|l| l.starts_with("STATUS="))
        .cloned()
        .unwrap_or_default();
    assert!(status.starts_with("STATUS=2/"), "{status}");
    // No WATCHDOG_USEC, no pings.
    assert!(
        !second_notify.lines.iter().any(|l| l == "WATCHDOG=1"),
        "{:?}",
        second_notify.lines
    );
}

/// The packaged config (packaging/chorus.toml) parses as it ships, and with every commented
/// setting uncommented: a renamed flag cannot leave a key there that the agent refuses.
#[test]
fn the_packaged_config_parses_with_every_setting_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/chorus.toml");
    let shipped = std::fs::read_to_string(&path).expect("read packaging/chorus.toml");
    chorus_agent::Settings::from_toml(&shipped).expect("the shipped config parses");
    let mut uncommented = 0;
    let all: String = shipped
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest == "[[task]]"
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_')
                    }) =>
            {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    // Whichever PKI is commented in, both cannot be parsed as one file; the parser does not
    // check that (validation does), so every key is seen here.
    let settings = chorus_agent::Settings::from_toml(&all)
        .unwrap_or_else(|e| panic!("uncommented config: {e}\n{all}"));
    assert!(uncommented >= 25, "only {uncommented} settings uncommented");
    assert_eq!(settings.tasks.len(), 1, "{all}");
    assert_eq!(settings.tags.get("zone").map(String::as_str), Some("a"));
}

/// `chorus watch` as a supervisor or a script sees it: lines that start with a readable time,
/// and, when its agent stops, one line on stderr and a failure exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_readable_times_and_fails_in_one_line_when_its_agent_stops() {
    use crate::support::bin::ProcAgent;
    use tokio::io::AsyncBufReadExt;

    let key = KeyFile::keygen("svc-watch");
    let mut n1 = ProcAgent::spawn("n1", "svc-watch", &key, &[], &[]);
    wait_until("n1 serves its socket", SLOW, || async {
        let out = crate::support::bin::chorus(&["status", "--socket", n1.socket_arg()]).await;
        if out.status.success() {
            Ok(())
        } else {
            Err(crate::support::bin::describe(&out))
        }
    })
    .await;
    let mut watch = tokio::process::Command::new(chorus_bin())
        .args(["watch", "--socket", n1.socket_arg()])
        .env_remove("CHORUS_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chorus watch");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();

    // n2 joins once the watch runs: its line proves the watch is connected.
    let _n2 = ProcAgent::spawn("n2", "svc-watch", &key, &[n1.addr], &[]);
    let joined = tokio::time::timeout(SLOW, async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.contains("alert=node_joined") => break line,
                Ok(Some(_)) => {}
                other => panic!("watch ended early: {other:?}"),
            }
        }
    })
    .await
    .expect("a node_joined line within the deadline");
    // 2026-01-31T12:00:00.123Z alert=node_joined node n2 joined ...
    let time = joined.split_whitespace().next().unwrap_or_default();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes().get(10) == Some(&b'T'),
        "not an RFC 3339 UTC time: {joined}"
    );

    n1.stop(SLOW).await;
    let out = tokio::time::timeout(SLOW, watch.wait_with_output())
        .await
        .expect("watch exits once its agent stops")
        .expect("wait for chorus watch");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("chorus: the agent at ") && stderr.contains("stopped"),
        "{stderr}"
    );
}
