//! `chorus task-guard` (hidden): the watchdog between the agent and one task run.
//!
//! The agent starts it with the lease deadline; it starts the command in a process group of
//! its own and reads renewals from stdin (chorus_agent::tasks::guard has the wire and the
//! rules). It needs no help from the agent to stop the run: at the deadline it signals the
//! group itself, so a stopped (SIGSTOP) or dead agent cannot keep a run alive. This file is
//! only plumbing: three threads turn stdin, signals and the command's exit into inputs of the
//! pure [`Watchdog`], and its actions into `killpg`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

use anyhow::{bail, Context};
use chorus_agent::tasks::guard::{
    mono_now, Action, Input, Message, MonoNs, Watchdog, EXIT_NOT_STARTED, EXIT_STOPPED,
    MAX_LINE_BYTES,
};
use clap::Args;
use nix::sys::prctl;
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{getppid, Pid};

/// The parent-death signal: "the agent is gone", like the end of stdin.
const PARENT_DEATH_SIGNAL: Signal = Signal::SIGHUP;

/// `chorus task-guard --grace D --deadline-ns T --agent-pid P -- COMMAND...`
#[derive(Args, Debug)]
pub struct GuardArgs {
    /// SIGTERM to SIGKILL, e.g. 2s.
    #[arg(long, value_parser = parse_grace)]
    grace: Duration,
    /// The lease deadline, CLOCK_MONOTONIC nanoseconds.
    #[arg(long)]
    deadline_ns: MonoNs,
    /// The agent that renews this guard: if it is not the parent any more, nothing starts.
    #[arg(long)]
    agent_pid: i32,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// What the threads report to the main loop.
enum Event {
    Input(Input),
    /// The command exited; it is not reaped yet, so its process group id stays valid.
    Exited,
}

pub fn run(args: GuardArgs) -> ExitCode {
    match guard(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say(&format!("{e:#}"));
            ExitCode::from(EXIT_NOT_STARTED)
        }
    }
}

/// One line on stderr (the agent logs it with the run). Never panics: the agent, and so the
/// pipe, may be gone.
fn say(what: &str) {
    let _ = writeln!(std::io::stderr(), "chorus task-guard: {what}");
}

fn guard(args: GuardArgs) -> anyhow::Result<u8> {
    // Signals go to one thread that waits for them: blocked here, before any other thread
    // exists, so every thread inherits the mask. (std clears the mask in the command.)
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, PARENT_DEATH_SIGNAL] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;
    prctl::set_pdeathsig(PARENT_DEATH_SIGNAL).context("cannot set the parent-death signal")?;
    // The agent may have died before the line above: then nothing would ever signal us.
    if getppid() != Pid::from_raw(args.agent_pid) {
        bail!(
            "the agent ({}) is gone: the task was not started",
            args.agent_pid
        );
    }
    let mut dog = Watchdog::new(args.deadline_ns, args.grace);
    let now = mono_now();
    if !dog.may_start(now) {
        bail!(
            "the lease ran out {} ms ago: the task was not started",
            now.saturating_sub(args.deadline_ns) / 1_000_000
        );
    }
    let (program, rest) = args.command.split_first().context("no command to run")?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    let group = match i32::try_from(child.id()) {
        Ok(pid) => Pid::from_raw(pid),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the command's pid does not fit a pid_t: killed it");
        }
    };
    if let Err(e) = watch(group, &mut dog, signals) {
        // Unwatched, the run would have no deadline: it ends here.
        say(&format!("{e:#}: SIGKILL to the task"));
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        return Ok(EXIT_STOPPED);
    }
    // The run is over: what it left in its group does not outlive it. The leader is still a
    // zombie here, so the group id cannot have been reused.
    let _ = killpg(group, Signal::SIGKILL);
    let status = child.wait().context("cannot reap the task")?;
    Ok(match dog.stopped() {
        Some(_) => EXIT_STOPPED,
        None => exit_code(status),
    })
}

/// Feeds the watchdog until the command (the leader of `group`) has exited, and carries out
/// its actions.
fn watch(group: Pid, dog: &mut Watchdog, signals: SigSet) -> anyhow::Result<()> {
    let (events, inbox) = mpsc::channel();
    spawn_stdin_reader(events.clone()).context("cannot start the stdin reader")?;
    spawn_signal_waiter(signals, events.clone()).context("cannot start the signal waiter")?;
    spawn_exit_waiter(group, events).context("cannot start the exit waiter")?;
    loop {
        let event = match dog.next_wake() {
            Some(at) => inbox.recv_timeout(Duration::from_nanos(at.saturating_sub(mono_now()))),
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let now = mono_now();
        let action = match event {
            Ok(Event::Input(input)) => dog.on_input(now, input),
            Err(RecvTimeoutError::Timeout) => dog.on_time(now),
            // The exit waiter ended: the command exited (or cannot be waited for, and the
            // reap says how it ended).
            Ok(Event::Exited) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let signal = match action {
            Action::Nothing => continue,
            Action::Terminate => Signal::SIGTERM,
            Action::Kill => Signal::SIGKILL,
        };
        if let Some(why) = dog.stopped() {
            say(&format!("{}: {signal} to the task", why.describe()));
        }
        let _ = killpg(group, signal);
    }
}

/// The command's status as an exit code: its own, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(u8::MAX),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        (None, None) => u8::MAX,
    }
}

/// stdin -> messages; its end means the agent is gone.
fn spawn_stdin_reader(events: Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new().spawn(move || {
        let mut stdin = BufReader::new(std::io::stdin().lock());
        let mut line = Vec::new();
        loop {
            line.clear();
            let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX);
            let input = match (&mut stdin).take(limit).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => Input::AgentGone,
                Ok(_) => Message::parse(&line).map_or(Input::Garbled, Input::Message),
            };
            if events.send(Event::Input(input)).is_err() || input == Input::AgentGone {
                return;
            }
        }
    })?;
    Ok(())
}

/// SIGTERM / SIGINT -> stop; the parent-death signal -> the agent is gone.
fn spawn_signal_waiter(signals: SigSet, events: Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new().spawn(move || loop {
        let input = match signals.wait() {
            Ok(PARENT_DEATH_SIGNAL) => Input::AgentGone,
            Ok(_) => Input::Signalled,
            Err(_) => return,
        };
        if events.send(Event::Input(input)).is_err() {
            return;
        }
    })?;
    Ok(())
}

/// The command's exit, without reaping it (WNOWAIT): only the main thread reaps, after its
/// last `killpg`.
fn spawn_exit_waiter(pid: Pid, events: Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new().spawn(move || {
        let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let _ = events.send(Event::Exited);
    })?;
    Ok(())
}
