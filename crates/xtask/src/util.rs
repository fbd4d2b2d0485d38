//! Helpers shared by `dist` and `image`: flags and running tools.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

pub(crate) use crate::repo;

/// Flags of `dist` and `image`.
#[derive(Debug, Default)]
pub struct Opts {
    /// Reuse `<target>/release/mcp-gateway` instead of building it.
    pub no_build: bool,
    /// `image` only: assemble the root file system in this directory and
    /// stop (no OCI image; what the Containerfile uses).
    pub rootfs: Option<PathBuf>,
}

impl Opts {
    pub fn parse(args: impl Iterator<Item = String>, usage: &str) -> anyhow::Result<Opts> {
        let mut opts = Opts::default();
        let mut args = args;
        while let Some(a) = args.next() {
            match a.as_str() {
                "--no-build" => opts.no_build = true,
                "--rootfs" => {
                    opts.rootfs = Some(args.next().context("--rootfs needs a directory")?.into())
                }
                other => bail!("unknown flag {other}\nusage: {usage}"),
            }
        }
        Ok(opts)
    }
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming it.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr is passed through.
pub fn capture(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", out.status);
    }
    Ok(out.stdout)
}

/// `SOURCE_DATE_EPOCH`, else the last commit's time: the same sources give
/// the same timestamps in packages and images.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return Ok(v.trim().parse()?);
    }
    let out = capture(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(repo()),
    )?;
    Ok(String::from_utf8(out)?.trim().parse()?)
}
