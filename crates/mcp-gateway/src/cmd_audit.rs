//! `mcp-gateway audit …`: check the audit trail and export it.
//!
//! `audit verify` reads the database read-only and checks that sequence
//! numbers are contiguous from 1, every record links to its predecessor's
//! hash, every record matches its own hash, and every signed checkpoint
//! matches the chain and carries a valid Ed25519 signature of the given
//! key. It prints the first bad sequence number and exits 1 on any
//! problem; 0 when the trail is intact; 2 when it cannot be read.
//!
//! `audit export --since` writes records as JSON lines for a SIEM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mcp_audit::{Verifier, VerifyingKey, verifying_key_from_pem};
use mcp_store::{AuditLog, MAX_AUDIT_PAGE};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{self, Overrides};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain and the signed checkpoints; name the first bad
    /// sequence number and exit 1 if anything was changed.
    Verify {
        #[command(flatten)]
        db: DbArgs,
        /// Public key (PEM, SPKI) that checks checkpoint signatures
        /// [default: the public half of `[audit] signing_key`].
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Write audit records as JSON lines to stdout.
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// Only records at or after this time: a duration back from now
        /// (`15m`, `24h`, `7days`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Which database to read.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Config file [default: /etc/mcp-gateway/config.toml when it exists].
    #[arg(long, env = "MCP_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// The SQLite database file [default: from the configuration].
    #[arg(long)]
    database: Option<PathBuf>,
    /// Where the database lives (`<data-dir>/gateway.db`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// What `audit` knows from the configuration.
struct Located {
    db: PathBuf,
    key: Option<VerifyingKey>,
}

fn locate(args: &DbArgs, public_key: Option<&Path>) -> anyhow::Result<Located> {
    let read_key = |p: &Path| -> anyhow::Result<VerifyingKey> {
        let pem = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read key file {}", p.display()))?;
        verifying_key_from_pem(&pem).with_context(|| format!("key file {}", p.display()))
    };
    let explicit_key = public_key.map(read_key).transpose()?;
    if let Some(db) = &args.database {
        return Ok(Located {
            db: db.clone(),
            key: explicit_key,
        });
    }
    let cfg = config::load(
        args.config.as_deref(),
        &Overrides {
            data_dir: args.data_dir.clone(),
            ..Overrides::default()
        },
    )?;
    let url = &cfg.database_url;
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .filter(|p| !p.is_empty() && !p.starts_with(":memory:"))
        .with_context(|| format!("storage.database_url {url:?} is not a SQLite file"))?;
    let key = match explicit_key {
        Some(k) => Some(k),
        None => cfg.audit.signing_key.as_deref().map(read_key).transpose()?,
    };
    Ok(Located {
        db: PathBuf::from(path),
        key,
    })
}

/// Runs an `audit` subcommand.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { db, public_key } => {
            let at = locate(&db, public_key.as_deref())?;
            verify(&at).await
        }
        AuditCommand::Export { db, since } => {
            let at = locate(&db, None)?;
            let since = since.as_deref().map(parse_since).transpose()?;
            export(&at.db, since).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn verify(at: &Located) -> anyhow::Result<ExitCode> {
    let log = AuditLog::open_read_only(&at.db)
        .await
        .with_context(|| format!("cannot open {}", at.db.display()))?;
    let mut v = Verifier::new(log.checkpoints().await?, at.key);
    let mut after = 0;
    loop {
        let page = log.records(after, None, MAX_AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if let Err(f) = v.push(r) {
                println!("audit trail BROKEN at seq {}: {f}", f.seq);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    match v.finish() {
        Ok(report) => {
            println!(
                "audit trail intact: {} records, last seq {}, {} checkpoints {}, {} records after the last checkpoint",
                report.records,
                report.last_seq,
                report.checkpoints,
                if report.signatures_checked {
                    "with valid signatures"
                } else {
                    "(signatures NOT checked: no public key)"
                },
                report.unanchored
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            println!("audit trail BROKEN at seq {}: {f}", f.seq);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--since`: a duration back from now, or an RFC 3339 time; Unix ms.
fn parse_since(s: &str) -> anyhow::Result<i64> {
    let at = if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        t
    } else if let Ok(d) = humantime::parse_duration(s) {
        OffsetDateTime::now_utc() - d
    } else {
        bail!("--since {s:?} is neither a duration (24h) nor an RFC 3339 time");
    };
    Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

async fn export(db: &Path, since_ms: Option<i64>) -> anyhow::Result<()> {
    let log = AuditLog::open_read_only(db)
        .await
        .with_context(|| format!("cannot open {}", db.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let page = log.records(after, since_ms, MAX_AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
