//! The client commands: one request to the local agent, then a table or JSON.

use std::process::ExitCode;

use anyhow::bail;
use chorus_agent::api::{Request, Response};
use chorus_core::member::Status;

use crate::render;
use crate::ClientOpts;

/// `KEY=VALUE` for `--tag` and `--exclude-tag`; clap names the flag, so the message does not.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    chorus_agent::config::parse_tag(s).map_err(|e| match e {
        chorus_agent::config::ConfigError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    })
}

async fn call(opts: &ClientOpts, request: Request) -> anyhow::Result<Response> {
    match opts.connect().await?.call(&request).await? {
        Response::Error { message } => bail!("{message}"),
        other => Ok(other),
    }
}

fn unexpected(r: Response) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer from the agent: {r:?}")
}

pub async fn members(
    opts: &ClientOpts,
    status: Option<Status>,
    tags: &[(String, String)],
) -> anyhow::Result<ExitCode> {
    let Response::Members { mut members } = call(opts, Request::Members).await? else {
        bail!("unexpected answer from the agent");
    };
    members.retain(|m| {
        status.is_none_or(|s| m.status == s) && tags.iter().all(|(k, v)| m.tags.get(k) == Some(v))
    });
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
    } else {
        print!("{}", render::members_table(&members));
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch_status(opts: &ClientOpts) -> anyhow::Result<chorus_agent::api::StatusReport> {
    match call(opts, Request::Status).await? {
        Response::Status { status } => Ok(status),
        other => Err(unexpected(other)),
    }
}

pub async fn leader(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    let status = fetch_status(opts).await?;
    let leader = status.node.leader.clone();
    if opts.json {
        println!(
            "{}",
            serde_json::json!({ "leader": leader, "epoch": status.node.epoch })
        );
    } else if let Some(l) = &leader {
        println!("{l} (epoch {})", status.node.epoch);
    } else {
        eprintln!(
            "no leader (quorum: {}, partition: {})",
            status.node.quorum,
            status.node.partition.as_str()
        );
    }
    Ok(if leader.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Silent by design: `chorus is-leader && run-job` in a cron line.
pub async fn is_leader(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    let status = fetch_status(opts).await?;
    Ok(if status.is_leader {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn forget(opts: &ClientOpts, node: String) -> anyhow::Result<ExitCode> {
    done(opts, Request::Forget { node }).await
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 10m)"))
}

/// How often `drain --wait` looks at the session count.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Exit code of `drain --wait` when the timeout passes with sessions left.
const DRAIN_TIMEOUT_EXIT: u8 = 2;

pub async fn drain(
    opts: &ClientOpts,
    wait: bool,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    let code = done(opts, Request::Drain).await?;
    if !wait {
        return Ok(code);
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let Response::Members { members } = call(opts, Request::Members).await? else {
            bail!("unexpected answer from the agent");
        };
        let sessions = members
            .iter()
            .find(|m| m.is_self)
            .map_or(0, |m| m.load.sessions);
        if sessions == 0 {
            if !opts.json {
                println!("drained: 0 sessions");
            }
            return Ok(ExitCode::SUCCESS);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            eprintln!("chorus: drain timed out with {sessions} sessions left");
            return Ok(ExitCode::from(DRAIN_TIMEOUT_EXIT));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

pub async fn pick(
    opts: &ClientOpts,
    tags: Vec<(String, String)>,
    exclude_tags: Vec<(String, String)>,
) -> anyhow::Result<ExitCode> {
    match call(opts, Request::Pick { tags, exclude_tags }).await? {
        Response::Picked { member } => {
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&member)?);
            } else {
                println!("{} {}", member.node_id, member.addr);
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

pub async fn resume(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    done(opts, Request::Resume).await
}

pub async fn status(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    match call(opts, Request::Status).await? {
        Response::Status { status } => {
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render::status_text(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

async fn done(opts: &ClientOpts, request: Request) -> anyhow::Result<ExitCode> {
    match call(opts, request).await? {
        Response::Done { message } => {
            if opts.json {
                println!("{}", serde_json::json!({ "ok": true, "message": message }));
            } else {
                println!("{message}");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

pub async fn load(opts: &ClientOpts, sessions: u64) -> anyhow::Result<ExitCode> {
    done(opts, Request::Load { sessions }).await
}

pub async fn leave(opts: &ClientOpts, permanent: bool) -> anyhow::Result<ExitCode> {
    let request = if permanent {
        Request::LeavePermanently
    } else {
        Request::Leave
    };
    done(opts, request).await
}

pub async fn watch(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    let mut client = opts.connect().await?;
    match client.call(&Request::Watch).await? {
        Response::Watching => {}
        Response::Error { message } => bail!("{message}"),
        other => return Err(unexpected(other)),
    }
    loop {
        match client.next_response().await {
            Ok(Response::Event { event }) => {
                if opts.json {
                    println!("{}", serde_json::to_string(&event)?);
                } else {
                    println!("{}", render::event_line(&event));
                }
            }
            Ok(Response::Error { message }) => eprintln!("chorus: {message}"),
            Ok(other) => return Err(unexpected(other)),
            // The agent stopped: one line and a failure, so a script or a supervisor running
            // `watch` notices that its events ended.
            Err(_) => bail!(
                "the agent at {} stopped; no more events",
                opts.socket().display()
            ),
        }
    }
}
