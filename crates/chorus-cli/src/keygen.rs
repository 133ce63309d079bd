//! `chorus keygen`: a new cluster CA, written once, readable by its owner only.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chorus_net::ClusterCa;

pub fn run(out: &Path, cluster: &str) -> anyhow::Result<ExitCode> {
    let ca = ClusterCa::generate(cluster).context("cannot generate the cluster CA")?;
    // create_new: an existing key is never replaced (every node of a cluster shares it), and the
    // file is complete before it is renamed into place, so it is never seen half-written.
    if out.exists() {
        anyhow::bail!(
            "{} already exists: refusing to replace a cluster key",
            out.display()
        );
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A missing directory (`/etc/chorus` on a fresh host) is made, private: the file holds
    // the CA's private key.
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    let tmp = dir.join(format!(".chorus-keygen-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(ca.to_pem().as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, out)?;
        std::fs::remove_file(&tmp)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", out.display()));
    }
    println!(
        "wrote cluster CA for {cluster:?} to {}; copy it to every node and start agents with --cluster-key {}",
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
