//! The audit trail as the pipeline uses it: one record per request (after
//! the decision, before anything runs) and one per task end, appended to
//! the store's [`AuditLog`] durably before the answer is sent. If the
//! append fails the request fails with `UNAVAILABLE` (`store_unavailable`)
//! and nothing runs.
//!
//! This module holds the audit log's settings, its opening, and what a
//! record says ([`AuditEntry`]); the writes are `Gateway::audit` and its
//! siblings in `record`, the one generic entry point beside the pipeline's
//! own records.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcp_audit::{Signer, sha256_hex};
use mcp_core::redact::Redactor;
use mcp_core::{Decision, TaskResult, ValidExec, now};
use mcp_store::{AuditLog, AuditOptions};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::error::GatewayError;

/// `[audit]` of the configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub enabled: bool,
    /// PKCS#8 PEM Ed25519 private key that signs checkpoints; `None` = no
    /// checkpoints (the chain alone still catches edits).
    pub signing_key: Option<PathBuf>,
    /// A checkpoint every this many records (0 = not by count).
    pub checkpoint_every: u64,
    /// A checkpoint at least this often while records arrive (`None` = not by time).
    pub checkpoint_interval: Option<Duration>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            signing_key: None,
            checkpoint_every: 1000,
            checkpoint_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// Why the audit log could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error("cannot load the audit signing key")]
    Key(#[from] mcp_audit::AuditError),
    #[error("cannot open the audit log")]
    Store(#[from] mcp_store::StoreError),
}

/// The gateway's audit log and redaction rules, set once at start-up.
#[derive(Debug, Default)]
pub struct AuditSlot {
    pub(crate) log: OnceLock<Arc<AuditLog>>,
    /// Whether `log` is in the task store's database, so that a record and
    /// the store writes it accompanies commit in one transaction.
    pub(crate) shared: OnceLock<bool>,
    pub(crate) redactor: OnceLock<Redactor>,
    /// `[secrets]` (`secrets`).
    pub(crate) secrets: OnceLock<crate::secrets::SecretsSettings>,
}

/// Opens the audit log beside the task store and starts the checkpoint
/// timer; `None` when auditing is disabled.
pub async fn open(
    settings: &AuditSettings,
    database_url: &str,
) -> Result<Option<Arc<AuditLog>>, AuditStartError> {
    if !settings.enabled {
        warn!("audit trail DISABLED ([audit] enabled = false): requests are not audited");
        return Ok(None);
    }
    let signer = settings
        .signing_key
        .as_deref()
        .map(Signer::load)
        .transpose()?
        .map(Arc::new);
    if signer.is_none() {
        warn!("no audit signing key ([audit] signing_key): no signed checkpoints are written");
    }
    let log = Arc::new(
        AuditLog::open(
            database_url,
            AuditOptions {
                signer,
                checkpoint_every: settings.checkpoint_every,
                checkpoint_interval: settings.checkpoint_interval,
            },
        )
        .await?,
    );
    if let Some(every) = settings.checkpoint_interval {
        // Anchors the tail of a quiet log. Holds only a weak reference, so
        // the timer ends with the gateway.
        let weak = Arc::downgrade(&log);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(log) = weak.upgrade() else { break };
                if let Err(e) = log.checkpoint_if_due(now_ms(), false).await {
                    error!(error = %e, "cannot write an audit checkpoint");
                }
            }
        });
    }
    Ok(Some(log))
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// What one audit record says beyond who asked and when.
#[derive(Debug, Default)]
pub struct AuditEntry<'a> {
    pub decision: Option<&'a Decision>,
    pub task_id: Option<String>,
    /// The command line or path; redacted before it is stored.
    pub command: Option<String>,
    pub input_sha256: Option<String>,
    pub output_sha256: Option<String>,
    pub outcome: String,
}

/// The SHA-256 of a request's full input as JSON (argv, env with values,
/// cwd, limits...), so it can be matched later without being kept.
pub fn input_sha256<T: serde::Serialize>(input: &T) -> String {
    sha256_hex(&serde_json::to_vec(input).unwrap_or_default())
}

/// The SHA-256 of a task's output as captured: stdout, a NUL, stderr.
pub fn output_sha256(r: &TaskResult) -> String {
    use sha2::{Digest, Sha256};
    // Hashed in place: the output is not copied into one buffer first.
    let mut h = Sha256::new();
    h.update(&r.stdout);
    h.update([0]);
    h.update(&r.stderr);
    hex::encode(h.finalize())
}

/// A command's line for its audit record (the resolved binary when there
/// is one, then the arguments) and the SHA-256 of the request as admitted.
pub(crate) fn exec_line(request: &ValidExec, argv0: Option<&str>) -> (String, String) {
    let mut line = argv0.unwrap_or(&request.command).to_owned();
    for a in &request.args {
        line.push(' ');
        line.push_str(a);
    }
    (line, input_sha256(request))
}

/// Longest command excerpt kept in a record.
const MAX_COMMAND_CHARS: usize = 1024;

pub(crate) fn excerpt(redactor: &Redactor, text: &str) -> String {
    let red = redactor.redact(text);
    if red.chars().count() <= MAX_COMMAND_CHARS {
        return red.into_owned();
    }
    let mut s: String = red.chars().take(MAX_COMMAND_CHARS).collect();
    s.push_str("…[truncated]");
    s
}

pub(crate) fn outcome_of<T>(r: &Result<T, GatewayError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error:{}", e.number()),
    }
}

/// The audit trail (`[audit]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    /// Record every request; off only for throwaway setups.
    pub enabled: bool,
    /// PKCS#8 PEM Ed25519 private key that signs checkpoints
    /// (`openssl genpkey -algorithm ed25519 -out audit.pem`); empty = none.
    pub signing_key: PathBuf,
    /// A signed checkpoint every this many records; 0 = not by count.
    pub checkpoint_every: u64,
    /// A signed checkpoint at least this often while records arrive; 0 = not by time.
    pub checkpoint_interval_secs: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            enabled: true,
            signing_key: PathBuf::new(),
            checkpoint_every: 1000,
            checkpoint_interval_secs: 60,
        }
    }
}

/// Validates `[audit]`, adding problems to `problems`. The signing key is
/// loaded once here, so a bad key stops `check-config` and start-up.
pub fn validate(raw: &RawAudit, problems: &mut Vec<String>) -> AuditSettings {
    let signing_key = (!raw.signing_key.as_os_str().is_empty()).then(|| raw.signing_key.clone());
    if raw.enabled
        && let Some(path) = &signing_key
        && let Err(e) = Signer::load(path)
    {
        problems.push(format!("audit.signing_key: {e}"));
    }
    AuditSettings {
        enabled: raw.enabled,
        signing_key,
        checkpoint_every: raw.checkpoint_every,
        checkpoint_interval: (raw.checkpoint_interval_secs > 0)
            .then(|| Duration::from_secs(raw.checkpoint_interval_secs)),
    }
}
