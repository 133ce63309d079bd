//! `chorus completions SHELL` and `chorus man`: shell completions and manual pages generated
//! from the clap definitions, so they cannot drift from the flags the binary takes. The
//! package (`packaging/`) ships their output; nothing here is written by hand.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = without_hidden_commands();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "chorus", &mut out);
    write_stdout(&out)
}

/// The command line without its hidden subcommands (the task guard): clap_complete would
/// offer them, clap_mangen already leaves them out.
fn without_hidden_commands() -> clap::Command {
    let full = Cli::command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let mut cmd = clap::Command::new("chorus")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .subcommands(visible);
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// Prints chorus(1) on stdout, or with `out_dir` writes chorus.1 and a page for every visible
/// subcommand (chorus-agent.1, chorus-members.1, ...) there.
pub fn man(out_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the manual pages to {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut out = Vec::new();
            // As generate_to renders chorus.1, so both are the same page.
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("cannot render the manual page")?;
            write_stdout(&out)
        }
    }
}

/// Writes `bytes` to stdout; a closed pipe (`chorus man | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_subcommands_and_the_hidden_guard_is_left_out() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut without_hidden_commands(), "chorus", &mut out);
            let text = String::from_utf8(out).expect("UTF-8");
            for word in ["members", "drain", "metrics-addr", "completions"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
            assert!(
                !text.contains("task-guard"),
                "{shell} completes the hidden task-guard"
            );
        }
    }

    #[test]
    fn the_man_pages_cover_every_visible_subcommand() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        man(Some(dir.path())).expect("write the pages");
        let mut pages: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read the pages")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        pages.sort();
        for page in [
            "chorus.1",
            "chorus-agent.1",
            "chorus-members.1",
            "chorus-completions.1",
        ] {
            assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("task-guard")), "{pages:?}");
        let agent = std::fs::read_to_string(dir.path().join("chorus-agent.1")).expect("read");
        assert!(agent.contains("metrics\\-addr"), "{agent}");
    }
}
