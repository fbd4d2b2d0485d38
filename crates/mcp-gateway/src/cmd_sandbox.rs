//! `mcp-gateway sandbox …`: the operator's view of the sandbox on this host.
//!
//! `sandbox check` reports what the host offers (bubblewrap version, user
//! namespaces, seccomp, cgroup mode and controllers, landlock ABI, the
//! size of the mount table every sandbox start pays for) and
//! which configured profiles can be enforced, by really starting one
//! sandbox per profile with its seccomp filter, cgroup and limits, exactly
//! as `serve` does at startup, and how the configured per-sandbox uid
//! range (`sandbox.uid_range`) and warm pool (`[sandbox.pool]`) would be
//! used. It exits 1 when any profile cannot be enforced or the pool would
//! be refused, which is when `serve` would refuse to start.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use mcp_sandbox::{HostOptions, Profiles};

use crate::config::{self, Overrides};

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Report what this host offers the sandbox, which profiles can be
    /// enforced here, and the uid range and warm pool configured; exit 1
    /// when a profile cannot be enforced or the pool would be refused.
    Check {
        /// Config file [default: /etc/mcp-gateway/config.toml when it exists].
        #[arg(long, env = "MCP_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Where the gateway's workspaces and files live.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Directory of sandbox profiles (*.toml).
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `sandbox` subcommand. Problems of the host are reported and make
/// the exit code 1; only a configuration that cannot be read is an error.
pub async fn run(cmd: SandboxCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Check {
            config: file,
            data_dir,
            profiles,
            json,
        } => {
            let cfg = config::load(
                file.as_deref(),
                &Overrides {
                    data_dir,
                    profiles,
                    ..Overrides::default()
                },
            )?;
            let profiles = match Profiles::load_dir(&cfg.profiles_dir) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("sandbox profiles: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let report = mcp_sandbox::probe_host(
                cfg.sandbox_settings(),
                profiles,
                &HostOptions {
                    uid_range: cfg.sandbox_uid_range,
                    pool: crate::sandbox_pool::settings(&cfg.sandbox_pool)?,
                },
            )
            .await;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&report)?)
            } else {
                report.to_string()
            };
            // A closed pipe (`| head`) is not an error worth a panic.
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
            Ok(if report.passes() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
