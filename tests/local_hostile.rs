//! Hostile local users against a real `chorus agent` process: another user squatting the
//! default socket path, `--socket` aimed at a file, floods of idle connections on the metrics
//! port and the socket, and `watch` clients that vanish. Each attack is really carried out:
//! the other users are other uids (this test runs as root and drops to them with `setpriv`),
//! and their part is played by this test binary run again as a helper
//! ([`helper_for_another_user`]).

use std::ffi::OsString;
use std::io::{BufRead, BufReader as StdBufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::support::bin::{chorus_bin, describe, KillOnDrop};
use crate::support::{free_addr, wait_until, SLOW};

/// Tells the test binary, run again as another user, to play a part instead of testing.
const HELPER_ENV: &str = "CHORUS_TEST_HELPER";

/// Uids no account uses, different for each run of this test binary (several engineers'
/// tests may share the machine and `/tmp`): `first_uid() + k`.
fn first_uid() -> u32 {
    3_000_000_000 + std::process::id() * 32
}

/// Whether users can be switched here: root, and `setpriv` can run this test binary as
/// another uid.
fn can_switch_users() -> bool {
    if chorus_agent::api::effective_uid() != 0 {
        return false;
    }
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    as_user(first_uid() + 31, &exe)
        .args([
            "--list",
            "--exact",
            "local_hostile::helper_for_another_user",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `program` run as `uid` (and gid `uid`, no supplementary groups), with no socket in the
/// environment: the default path is what a cron job of that user would get.
fn as_user(uid: u32, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program)
        .env_remove("CHORUS_SOCKET")
        .env_remove("CHORUS_SOCKET_OWNER")
        .env_remove("XDG_RUNTIME_DIR");
    command
}

/// `chorus ARGS` as `uid`, to completion.
async fn chorus_as(uid: u32, args: &[&str]) -> Output {
    tokio::process::Command::from(as_user(uid, &chorus_bin()))
        .args(args)
        .output()
        .await
        .expect("run setpriv chorus")
}

/// This test binary as `uid`, playing `part` (see [`helper_for_another_user`]); its output
/// goes to `log`.
fn helper(uid: u32, part: &str, log: PathBuf) -> KillOnDrop {
    let exe = std::env::current_exe().expect("the test binary");
    let mut command = as_user(uid, &exe);
    command
        .args([
            "--exact",
            "local_hostile::helper_for_another_user",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, part);
    KillOnDrop::spawn(&format!("helper {part} as {uid}"), command, log)
}

/// Waits until a helper's log says `word` (the test harness writes its own words on the same
/// line), and returns what follows it on that line.
async fn helper_says(helper: &KillOnDrop, word: &str) -> String {
    wait_until(&format!("{} says {word}", helper.name), SLOW, || async {
        let log = helper.log();
        log.lines()
            .find_map(|l| l.split_once(word).map(|(_, rest)| rest.trim().to_string()))
            .ok_or(log)
    })
    .await
}

/// Not a test: the part another user plays, when this binary is run again as that user with
/// [`HELPER_ENV`] set (it does nothing otherwise). Parts:
/// - `squat:PATH`: creates PATH's directory (mode 0777) and a socket at PATH (0777) that
///   answers every line with `{"type":"done","message":"ok"}`, as an attacker would; prints
///   `squatting`, then `request` for each line it is sent.
/// - `hold:PATH:N`: opens N connections to PATH and keeps them, idle; prints `holding K`.
///
/// It runs until it is killed.
#[test]
#[ignore = "a helper run by the other tests in this module as another user"]
fn helper_for_another_user() {
    let Ok(part) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut held = Vec::new();
    if let Some(path) = part.strip_prefix("squat:") {
        let path = PathBuf::from(path);
        let dir = path.parent().expect("a socket path has a directory");
        std::fs::create_dir_all(dir).expect("create the squatted directory");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("squat the path");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        println!("squatting");
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone a stream");
                for line in StdBufReader::new(stream).lines() {
                    if line.is_err() {
                        return;
                    }
                    println!("request");
                    let fake = b"{\"type\":\"done\",\"message\":\"ok\"}\n";
                    if writer.write_all(fake).is_err() {
                        return;
                    }
                }
            });
        }
    } else if let Some(rest) = part.strip_prefix("hold:") {
        let (path, n) = rest.rsplit_once(':').expect("hold:PATH:N");
        let n: usize = n.parse().expect("a count");
        for _ in 0..n {
            if let Ok(c) = std::os::unix::net::UnixStream::connect(path) {
                held.push(c);
            }
        }
        println!("holding {}", held.len());
    }
    loop {
        std::thread::park();
    }
}

/// A directory other uids can enter (tempdirs are 0700).
fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Removes a directory when dropped, even when the test fails half way.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The arguments of a lone agent with its data dir in `dir`; `socket` is `--socket`.
fn agent_args(node: &str, dir: &Path, socket: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["agent", "--node-id", node, "--cluster", "local-hostile"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(["--listen".into(), free_addr().to_string().into()]);
    args.extend(["--data-dir".into(), dir.join("data").into_os_string()]);
    args.extend(["--expect".into(), "1".into(), "--insecure".into()]);
    args.extend(["--gossip-interval".into(), "150ms".into()]);
    if let Some(socket) = socket {
        args.extend(["--socket".into(), socket.as_os_str().to_owned()]);
    }
    args
}

/// A `chorus agent` process started by `command` (args already given), logging to
/// `dir/name.log`.
fn spawn(name: &str, mut command: Command, dir: &Path) -> KillOnDrop {
    command
        .env("RUST_LOG", "info,chitchat=warn")
        .env_remove("CHORUS_SOCKET");
    KillOnDrop::spawn(name, command, dir.join(format!("{name}.log")))
}

async fn wait_serving(agent: &KillOnDrop, socket: &Path) {
    let socket = socket.to_str().unwrap().to_string();
    wait_until(&format!("{} serves {socket}", agent.name), SLOW, || async {
        let out = crate::support::bin::chorus(&["status", "--socket", &socket]).await;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}; log: {}", describe(&out), agent.log()))
        }
    })
    .await;
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_squatting_the_default_socket_is_refused_by_agent_and_client() {
    if !can_switch_users() {
        eprintln!("skipped: needs root and setpriv to act as other users");
        return;
    }
    let (victim, squatter) = (first_uid(), first_uid() + 1);
    let private_dir = PathBuf::from(format!("/tmp/chorus-{victim}"));
    let _cleanup = RemoveOnDrop(private_dir.clone());
    let default_socket = private_dir.join("chorus.sock");
    let work = open_tempdir("chorus-squat-");

    // The squatter makes the victim's default socket first, world-writable.
    let fake = helper(
        squatter,
        &format!("squat:{}", default_socket.display()),
        work.path().join("squatter.log"),
    );
    helper_says(&fake, "squatting").await;
    assert_eq!(std::fs::metadata(&private_dir).unwrap().uid(), squatter);

    // The victim's commands refuse the squatter's socket, at the default path or named, and
    // send it nothing.
    let named = ["drain", "--socket", default_socket.to_str().unwrap()];
    for args in [
        &["is-leader"][..],
        &["drain"],
        &["status", "--json"],
        &named,
    ] {
        let out = chorus_as(victim, args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let said = stderr(&out);
        assert!(
            said.contains(&format!(
                "refusing the agent at {}: it is served by uid {squatter}, not by this user (uid {victim}) or root",
                default_socket.display()
            )),
            "{args:?}: {said}"
        );
        assert_eq!(said.lines().count(), 1, "{said}");
    }
    assert!(
        !fake.log().contains("request"),
        "the squatter got a request: {}",
        fake.log()
    );
    // What the check prevents: told to trust that user, `drain` takes the fake "ok".
    let out = chorus_as(victim, &["drain", "--socket-owner", &squatter.to_string()]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // The victim's agent refuses the squatted directory with one clear line.
    let data = work.path().join("victim");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(victim), Some(victim)).unwrap();
    let args = agent_args("victim", &data, None);
    let mut command = as_user(victim, &chorus_bin());
    command.args(&args);
    let mut agent = spawn("victim", command, work.path());
    let status = agent.wait_exit(SLOW).await;
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "refusing the socket directory {}: it is owned by uid {squatter}, not by this user (uid {victim})",
            private_dir.display()
        )),
        "{log}"
    );

    // With the squatter gone, the victim's agent makes its own private directory and its
    // commands find it at the default path.
    drop(fake);
    std::fs::remove_dir_all(&private_dir).unwrap();
    let mut command = as_user(victim, &chorus_bin());
    command.args(&args);
    let _agent = spawn("victim-again", command, work.path());
    wait_until(
        "the victim's agent serves its default socket",
        SLOW,
        || async {
            let out = chorus_as(victim, &["status", "--json"]).await;
            if out.status.success() {
                Ok(())
            } else {
                Err(describe(&out))
            }
        },
    )
    .await;
    let dir = std::fs::symlink_metadata(&private_dir).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (victim, 0o700));
    let socket = std::fs::symlink_metadata(&default_socket).unwrap();
    assert_eq!((socket.uid(), socket.mode() & 0o7777), (victim, 0o660));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_flag_naming_a_regular_file_is_refused_and_the_file_survives() {
    let work = tempfile::tempdir().unwrap();
    let precious = work.path().join("notes.txt");
    std::fs::write(&precious, "do not delete").unwrap();
    let mut command = Command::new(chorus_bin());
    command.args(agent_args("n1", work.path(), Some(&precious)));
    let mut agent = spawn("n1", command, work.path());
    let status = agent.wait_exit(SLOW).await;
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "refusing to replace {}: it is a regular file, not a socket",
            precious.display()
        )),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "do not delete");
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces), from field 3 on.
    let after = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// A loopback TCP address free now.
fn free_tcp_addr() -> SocketAddr {
    loop {
        let addr = free_addr();
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ): 100 on Linux.
const TICKS_PER_SECOND: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_on_the_metrics_port_and_the_socket_leave_status_answering_without_spinning() {
    if !can_switch_users() {
        eprintln!("skipped: needs root and setpriv to act as other users");
        return;
    }
    let work = open_tempdir("chorus-flood-");
    let socket = work.path().join("agent.sock");
    let metrics = free_tcp_addr();
    // The descriptor limit the exhaustion was seen with, hard as well as soft: the agent
    // cannot raise it, and its connection limits must fit inside it.
    let mut command = Command::new("prlimit");
    command
        .arg("--nofile=256:256")
        .arg(chorus_bin())
        .args(agent_args("n1", work.path(), Some(&socket)))
        .args(["--metrics-addr", &metrics.to_string()]);
    let agent = spawn("n1", command, work.path());
    wait_serving(&agent, &socket).await;
    // Let other users reach the socket: the slots, not the file mode, must hold them off.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    // 300 idle socket connections from 10 other users, 30 each.
    let holders: Vec<KillOnDrop> = (0..10)
        .map(|k| {
            helper(
                first_uid() + 2 + k,
                &format!("hold:{}:30", socket.display()),
                work.path().join(format!("holder-{k}.log")),
            )
        })
        .collect();
    for h in &holders {
        assert_eq!(helper_says(h, "holding").await, "30");
    }
    // 400 idle TCP connections to the metrics port.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(
            TcpStream::connect(metrics)
                .await
                .expect("connect to metrics"),
        );
    }

    // The agent does not spin: well under a tenth of a core over a second, as idle.
    let pid = agent.pid();
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - ticks;
    let window = started.elapsed().as_secs_f64();
    assert!(
        (used as f64) < 0.3 * window * TICKS_PER_SECOND as f64,
        "the agent used {used} ticks of CPU in {window:.2} s with idle connections open"
    );

    // Every normal slot is held: one more user is refused at once with a clear line...
    let out = chorus_as(
        first_uid() + 20,
        &["status", "--socket", socket.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("serving its limit of 128 connections"),
        "{}",
        describe(&out)
    );
    // ... while root (the agent's own user) gets a reserved slot and an answer.
    let asked = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::bin::chorus(&["status", "--socket", socket.to_str().unwrap()]),
    )
    .await
    .expect("chorus status answers within 5 s");
    assert!(out.status.success(), "{}", describe(&out));
    eprintln!(
        "status answered in {:?} with 300 idle socket and 400 idle metrics connections open; \
         the agent used {used} CPU ticks in {window:.2} s",
        asked.elapsed()
    );
    // A scraper beyond the metrics limit is told so.
    let mut extra = TcpStream::connect(metrics).await.unwrap();
    extra
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");

    // The idle connections are closed after the request timeout; scrapes work again and
    // count the refusals.
    let body = wait_until("metrics answer again", SLOW, || async {
        let mut s = TcpStream::connect(metrics)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer).await;
        if answer.starts_with("HTTP/1.1 200") {
            Ok(answer)
        } else {
            Err(answer)
        }
    })
    .await;
    let refused = |listener: &str| -> f64 {
        let key = format!("chorus_local_connections_refused_total{{listener=\"{listener}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {body}"))
    };
    assert!(refused("metrics") >= 384.0, "{body}");
    assert!(refused("socket") >= 172.0, "{body}");
    assert!(agent.log().lines().count() < 200, "{}", agent.log());
    drop(idle);
    drop(holders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_clients_that_vanish_leave_no_descriptors_behind() {
    let work = tempfile::tempdir().unwrap();
    let socket = work.path().join("agent.sock");
    let mut command = Command::new(chorus_bin());
    command.args(agent_args("n1", work.path(), Some(&socket)));
    let agent = spawn("n1", command, work.path());
    wait_serving(&agent, &socket).await;
    let pid = agent.pid();
    let before = open_fds(pid);

    // 300 watchers that connect, see the watch start, and vanish (a quiet cluster: no event
    // ever comes to show them gone).
    for i in 0..300 {
        let mut stream = UnixStream::connect(&socket).await.expect("connect");
        stream.write_all(b"{\"cmd\":\"watch\"}\n").await.unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(&mut stream);
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("watcher {i} got no answer"))
            .unwrap();
        assert!(line.contains("\"watching\""), "watcher {i}: {line}");
    }
    // Real `chorus watch` processes killed while they wait for events, one at a time: each
    // is freed before the next starts, so its connection shows as one more descriptor.
    for i in 0..20 {
        let settled = wait_until(
            &format!("the descriptors settle before chorus watch {i}"),
            Duration::from_secs(10),
            || async {
                let now = open_fds(pid);
                if now <= before {
                    Ok(now)
                } else {
                    Err(format!("{now} open descriptors, {before} at start"))
                }
            },
        )
        .await;
        let mut watch = tokio::process::Command::new(chorus_bin())
            .args(["watch", "--socket", socket.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chorus watch");
        wait_until(&format!("chorus watch {i} connects"), SLOW, || async {
            let now = open_fds(pid);
            if now > settled {
                Ok(())
            } else {
                Err(format!("{now} descriptors"))
            }
        })
        .await;
        watch.kill().await.expect("kill chorus watch");
    }
    let after = wait_until(
        "the agent's descriptors are back near their count at start",
        Duration::from_secs(10),
        || async {
            let now = open_fds(pid);
            if now <= before + 5 {
                Ok(now)
            } else {
                Err(format!("{now} open descriptors, {before} at start"))
            }
        },
    )
    .await;
    eprintln!("descriptors: {before} at start, {after} after 320 vanished watchers");
    let out = crate::support::bin::chorus(&["status", "--socket", socket.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_the_user_may_not_open_says_permission_denied_not_no_agent() {
    if !can_switch_users() {
        eprintln!("skipped: needs root and setpriv to act as other users");
        return;
    }
    let outsider = first_uid() + 2;
    // The agent runs as root with its socket (root's group, mode 0660) in an open directory.
    let work = open_tempdir("chorus-perm-");
    let socket = work.path().join("agent.sock");
    let mut command = Command::new(chorus_bin());
    command.args(agent_args("perm", work.path(), Some(&socket)));
    let agent = spawn("perm", command, work.path());
    wait_serving(&agent, &socket).await;
    let path = socket.to_str().unwrap();
    let out = chorus_as(outsider, &["status", "--socket", path]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let expected = format!(
        "chorus: permission denied on {path} (the socket is group root, mode 0660: add \
         yourself to root or use sudo)"
    );
    assert_eq!(stderr(&out).trim(), expected, "{}", describe(&out));

    // A socket in a directory closed to the user names the directory.
    let closed = tempfile::Builder::new()
        .prefix("chorus-perm-closed-")
        .tempdir()
        .unwrap();
    let hidden = closed.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hidden).unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = chorus_as(outsider, &["status", "--socket", hidden.to_str().unwrap()]).await;
    let text = stderr(&out);
    assert!(
        text.contains("permission denied on")
            && text.contains(&format!(
                "its directory {} is not open to you",
                closed.path().display()
            )),
        "{}",
        describe(&out)
    );
}
