//! The client commands: one request to the local agent, then a table or JSON.

use std::process::ExitCode;

use anyhow::bail;
use chorus_agent::api::{Request, Response};
use chorus_agent::client::{self, Client};
use chorus_core::member::Status;

use crate::render;
use crate::ClientOpts;

pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    chorus_agent::config::parse_tag(s).map_err(|e| e.to_string())
}

async fn call(opts: &ClientOpts, request: Request) -> anyhow::Result<Response> {
    match client::call(&opts.socket(), &request).await? {
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

pub async fn drain(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    done(opts, Request::Drain).await
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

pub async fn leave(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    done(opts, Request::Leave).await
}

pub async fn watch(opts: &ClientOpts) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&opts.socket()).await?;
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
            // The agent stopped: the stream ends, as `tail -f` of a removed file would.
            Err(_) => return Ok(ExitCode::SUCCESS),
        }
    }
}
