//! The audit trail as the pipeline uses it: one record per request (after
//! the decision, before anything runs) and one per task end, appended to
//! the store's [`AuditLog`] durably before the answer is sent. If the
//! append fails the request fails with `UNAVAILABLE` (`store_unavailable`)
//! and nothing runs.
//!
//! [`Gateway::audit`] is the generic entry point (approve/reject records
//! use it); the pipeline calls the helpers below with a line each.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcp_audit::{AuditEvent, DecisionSummary, Signer, sha256_hex};
use mcp_core::redact::Redactor;
use mcp_core::{Decision, TaskId, TaskResult, TaskState, now};
use mcp_store::{AuditLog, AuditOptions, StoreWrite};
use tracing::{Instrument, error, info_span, warn};

use crate::error::GatewayError;
use crate::gateway::{Caller, Gateway};

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
    log: OnceLock<Arc<AuditLog>>,
    /// Whether `log` is in the task store's database, so that a record and
    /// the store writes it accompanies commit in one transaction.
    shared: OnceLock<bool>,
    redactor: OnceLock<Redactor>,
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

fn now_ms() -> i64 {
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

/// Longest command excerpt kept in a record.
const MAX_COMMAND_CHARS: usize = 1024;

fn excerpt(redactor: &Redactor, text: &str) -> String {
    let red = redactor.redact(text);
    if red.chars().count() <= MAX_COMMAND_CHARS {
        return red.into_owned();
    }
    let mut s: String = red.chars().take(MAX_COMMAND_CHARS).collect();
    s.push_str("…[truncated]");
    s
}

fn outcome_of<T>(r: &Result<T, GatewayError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error:{}", e.number()),
    }
}

impl Gateway {
    /// Sets the audit log (once, at start-up, before serving).
    pub fn set_audit_log(&self, log: Option<Arc<AuditLog>>) {
        if let Some(log) = log {
            let _ = self.audit.shared.set(self.store().shares_database(&log));
            let _ = self.audit.log.set(log);
        }
    }

    /// The audit log, if auditing is on.
    pub fn audit_log(&self) -> Option<&Arc<AuditLog>> {
        self.audit.log.get()
    }

    /// The audit log when it shares the task store's database (see
    /// [`AuditLog::append_with`]).
    pub(crate) fn shared_audit_log(&self) -> Option<&Arc<AuditLog>> {
        self.audit_log()
            .filter(|_| self.audit.shared.get().copied().unwrap_or(false))
    }

    /// Appends one record for `caller`'s request; `Err(Store)` (503) when
    /// the record cannot be stored, and the caller must then stop.
    pub async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        entry: AuditEntry<'_>,
    ) -> Result<(), GatewayError> {
        let Some(log) = self.audit_log() else {
            return Ok(());
        };
        match log.append(self.audit_event(caller, action, entry)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                error!(error = %e, request_id = %caller.request_id, action, "cannot append the audit record; refusing the request");
                Err(GatewayError::Store(e))
            }
        }
    }

    /// The record of `caller`'s request, ready to append.
    pub(crate) fn audit_event(
        &self,
        caller: &Caller,
        action: &str,
        entry: AuditEntry<'_>,
    ) -> AuditEvent {
        let redactor = self.redactor();
        AuditEvent {
            at_ms: now_ms(),
            request_id: caller.request_id.to_string(),
            trace_id: crate::trace::current_traceparent()
                .and_then(|tp| tp.split('-').nth(1).map(str::to_owned)),
            principal: caller.principal.id.clone(),
            tenant: caller.principal.tenant.clone(),
            action: action.to_owned(),
            decision: entry.decision.map(|d| DecisionSummary {
                revision: d.policy_revision.clone(),
                allow: d.allow,
                reasons: d
                    .deny_reasons
                    .iter()
                    .map(|r| excerpt(&redactor, r))
                    .collect(),
            }),
            task_id: entry.task_id,
            command: entry.command.map(|c| excerpt(&redactor, &c)),
            input_sha256: entry.input_sha256,
            output_sha256: entry.output_sha256,
            outcome: entry.outcome,
            latency_us: u64::try_from(caller.received.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// Records a request that has been answered (`status`, `list`,
    /// `cancel`, `output`) with its outcome, and passes the answer on, or
    /// `UNAVAILABLE` when the record cannot be stored.
    pub(crate) async fn audit_answer<T>(
        &self,
        caller: &Caller,
        action: &str,
        task_id: Option<&str>,
        answer: Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        let entry = AuditEntry {
            task_id: task_id.map(|t| t.chars().take(64).collect()),
            outcome: outcome_of(&answer),
            ..AuditEntry::default()
        };
        self.audit(caller, action, entry).await?;
        answer
    }

    /// The record of a command's decision, written before anything runs.
    pub(crate) fn exec_entry<'a>(
        decision: &'a Decision,
        id: TaskId,
        valid: &mcp_core::ValidExec,
        argv0: Option<&str>,
    ) -> (&'static str, AuditEntry<'a>) {
        let mut line = argv0.unwrap_or(&valid.command).to_owned();
        for a in &valid.args {
            line.push(' ');
            line.push_str(a);
        }
        let entry = AuditEntry {
            decision: Some(decision),
            task_id: decision.allow.then(|| id.to_string()),
            command: Some(line),
            input_sha256: Some(input_sha256(valid)),
            output_sha256: None,
            outcome: if decision.allow { "allowed" } else { "denied" }.to_owned(),
        };
        ("execute", entry)
    }

    /// The record of a file request's decision, written before the file is
    /// touched.
    pub(crate) fn file_entry<'a>(
        op: mcp_core::FileOp,
        decision: &'a Decision,
        valid: &mcp_core::ValidFile,
    ) -> (&'static str, AuditEntry<'a>) {
        let action = match op {
            mcp_core::FileOp::Read => "read_file",
            mcp_core::FileOp::Write => "write_file",
            mcp_core::FileOp::Delete => "delete_file",
        };
        let entry = AuditEntry {
            decision: Some(decision),
            command: Some(valid.path.clone()),
            input_sha256: Some(input_sha256(valid)),
            outcome: if decision.allow { "allowed" } else { "denied" }.to_owned(),
            ..AuditEntry::default()
        };
        (action, entry)
    }

    /// The record of a task's end, with the SHA-256 of its output.
    fn task_end_event(
        id: TaskId,
        principal: &str,
        tenant: &str,
        state: TaskState,
        result: Option<&TaskResult>,
        output_sha256: Option<String>,
    ) -> AuditEvent {
        let outcome = match result {
            Some(r) if state == TaskState::Completed => format!("completed:{}", r.exit_code),
            _ => state.as_str().to_owned(),
        };
        AuditEvent {
            at_ms: now_ms(),
            request_id: id.to_string(),
            trace_id: None,
            principal: principal.to_owned(),
            tenant: tenant.to_owned(),
            action: "task_end".to_owned(),
            decision: None,
            task_id: Some(id.to_string()),
            command: None,
            input_sha256: None,
            output_sha256,
            outcome,
            latency_us: result.map_or(0, |r| r.execution_time_ms.saturating_mul(1000)),
        }
    }

    /// Stores a task's end (`finish`) and its audit record: in one
    /// transaction when the audit log shares the store's database, else
    /// (or when that transaction fails) the end and then the record, each
    /// retried, because the task has already run. Answers the completion
    /// time stored, `None` when the end could not be stored. A record that
    /// cannot be appended is logged (it is then missing, which `audit
    /// verify` cannot see; the task row still is in the store).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_audited(
        &self,
        id: TaskId,
        principal: &str,
        tenant: &str,
        state: TaskState,
        result: Option<&Arc<TaskResult>>,
        reason: Option<&str>,
        output_sha256: Option<String>,
    ) -> Option<time::OffsetDateTime> {
        let shared_result = result;
        let result = result.map(|r| &**r);
        let event = Self::task_end_event(id, principal, tenant, state, result, output_sha256);
        if let Some(log) = self.shared_audit_log() {
            let completed_at = now();
            let write = StoreWrite::Finish {
                id,
                state,
                completed_at,
                result: shared_result.cloned(),
                failure_reason: reason.map(str::to_owned),
            };
            match self
                .timed_write(
                    "audited_finish",
                    log.append_with(event.clone(), vec![write])
                        .instrument(info_span!("store.write", op = "audited_finish")),
                )
                .await
            {
                Ok(_) => return Some(completed_at),
                Err(e) => {
                    error!(error = %e, task_id = %id, "cannot store the end of a task with its audit record; storing them apart");
                }
            }
        }
        let stored = self.finish(id, state, result, reason).await;
        let Some(log) = self.audit_log() else {
            return stored;
        };
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            match log.append(event.clone()).await {
                Ok(_) => return stored,
                Err(e) => {
                    error!(error = %e, task_id = %id, attempt, "cannot append the audit record of a task end");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        stored
    }

    /// Signs a checkpoint over the tail at shutdown.
    pub(crate) async fn audit_shutdown(&self) {
        if let Some(log) = self.audit_log()
            && let Err(e) = log.checkpoint_if_due(now_ms(), true).await
        {
            error!(error = %e, "cannot write the final audit checkpoint");
        }
    }

    /// Sets the configured redaction rules (once, at start-up); the
    /// built-in rules apply without it.
    pub fn set_redactor(&self, r: Redactor) {
        let _ = self.audit.redactor.set(r);
    }

    /// The rules for one task: the configured ones and the policy's
    /// `redact` obligation (each pattern compiled once, then cached). A bad
    /// pattern is `Err` with a reason: the request is denied.
    pub(crate) fn task_redactor(
        &self,
        details: &mcp_store::DecisionDetails,
    ) -> Result<Redactor, String> {
        let mut r = self.redactor();
        let Some(patterns) = details.obligations.get("redact") else {
            return Ok(r);
        };
        let Some(patterns) = patterns.as_array() else {
            return Err("obligation redact is not a list of regexes".to_owned());
        };
        let mut compiled = Vec::with_capacity(patterns.len());
        for p in patterns {
            let Some(p) = p.as_str() else {
                return Err("obligation redact is not a list of regexes".to_owned());
            };
            compiled
                .push(mcp_core::redact::compile_cached(p).map_err(|e| format!("obligation {e}"))?);
        }
        r.add_compiled(compiled);
        Ok(r)
    }

    /// The redaction rules for audit excerpts and output.
    pub(crate) fn redactor(&self) -> Redactor {
        self.audit.redactor.get().cloned().unwrap_or_default()
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
