//! Approval of tasks the policy marked `require_approval`.
//!
//! Flow: `execute` stores the task in `pending_approval` with a
//! [`StoredRun`] (everything needed to run it later, exactly as the policy
//! saw it) and an expiry; nothing runs. `ApproveTask` / `RejectTask`
//! (gRPC, REST, `mcp-gateway task approve|reject`) come from an approver
//! who
//! - is authenticated by the request's credentials, or is named by an
//!   approval token the request carries ([`ApprovalClaims`]: HS256 with
//!   `[approval] token_secret`, bound to one task and one approver
//!   principal, short-lived, single use: its `jti` is stored and a replay
//!   is refused). The carrier of a token (a chat bot, a link handler) only
//!   needs to be of the same tenant;
//! - is not the requester;
//! - is allowed by policy: `data.mcp.approve` must be `true` for the input
//!   `{action, approver, task, obligation}` (see `policies/approve.rego`).
//!
//! Each approve/reject is written to the decision log (kind `approval`).
//! An approved task runs what was stored: the command is resolved again in
//! the stored profile and must give the same binary, or the task fails
//! without running. A rejected task ends `rejected` with the approver and
//! the reason; a task nobody decides ends `expired` after `[approval]
//! ttl_secs` (swept every `sweep_interval_secs`, also at start-up, so the
//! expiry holds across restarts). The requester may cancel a pending task
//! (`cancelled`).
//!
//! Invariants: a pending task never holds env values resolved from secrets
//! (only what the client sent); only one decision wins (the store moves a
//! task out of `pending_approval` with a guarded update); another tenant's
//! task answers `NOT_FOUND`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mcp_core::{
    AuthMethod, Decision, NetworkAccess, Obligations, Principal, ResourceLimits, SandboxRequest,
    TaskId, TaskRecord, TaskState, ValidExec, now,
};
use mcp_store::DecisionDetails;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::error::GatewayError;
use crate::gateway::{Caller, Gateway};

/// The audience of approval tokens; other JWTs signed with the same secret
/// are not approval tokens.
pub const TOKEN_AUDIENCE: &str = "mcp-gateway/approval";

/// The rule that decides whether an approver may approve or reject.
pub const APPROVE_RULE: &str = "approve";

/// `[approval]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApproval {
    /// How long a task waits for approval before it expires.
    pub ttl_secs: u64,
    /// How often expired approvals are swept.
    pub sweep_interval_secs: u64,
    /// HS256 secret of approval tokens; empty = tokens are refused.
    pub token_secret: String,
    /// The longest lifetime (`exp - iat`) a token may have.
    pub token_max_ttl_secs: u64,
}

impl std::fmt::Debug for RawApproval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawApproval")
            .field("ttl_secs", &self.ttl_secs)
            .field("sweep_interval_secs", &self.sweep_interval_secs)
            .field("token_secret", &"<redacted>")
            .field("token_max_ttl_secs", &self.token_max_ttl_secs)
            .finish()
    }
}

impl Default for RawApproval {
    fn default() -> Self {
        Self {
            ttl_secs: 3600,
            sweep_interval_secs: 10,
            token_secret: String::new(),
            token_max_ttl_secs: 900,
        }
    }
}

/// An HS256 secret; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(Vec<u8>);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

impl TokenSecret {
    /// The secret's bytes, for signing.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Validated `[approval]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    pub ttl: Duration,
    pub sweep_interval: Duration,
    pub token_secret: Option<TokenSecret>,
    pub token_max_ttl: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        RawApproval::default().validate(&mut Vec::new())
    }
}

/// The shortest token secret accepted (HS256 wants at least the hash size).
const MIN_SECRET_BYTES: usize = 32;

impl RawApproval {
    pub fn validate(&self, problems: &mut Vec<String>) -> ApprovalSettings {
        if self.ttl_secs == 0 {
            problems.push("approval.ttl_secs must be at least 1".to_owned());
        }
        if self.sweep_interval_secs == 0 {
            problems.push("approval.sweep_interval_secs must be at least 1".to_owned());
        }
        if self.token_max_ttl_secs == 0 {
            problems.push("approval.token_max_ttl_secs must be at least 1".to_owned());
        }
        let token_secret = if self.token_secret.is_empty() {
            None
        } else {
            if self.token_secret.len() < MIN_SECRET_BYTES {
                problems.push(format!(
                    "approval.token_secret must be at least {MIN_SECRET_BYTES} bytes"
                ));
            }
            Some(TokenSecret(self.token_secret.as_bytes().to_vec()))
        };
        ApprovalSettings {
            ttl: Duration::from_secs(self.ttl_secs),
            sweep_interval: Duration::from_secs(self.sweep_interval_secs),
            token_secret,
            token_max_ttl: Duration::from_secs(self.token_max_ttl_secs),
        }
    }
}

/// The claims of an approval token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalClaims {
    /// The approver's principal id.
    pub sub: String,
    /// The approver's tenant (the task's tenant).
    pub tenant: String,
    /// The approver's roles, as the minting party vouches for them.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The one task this token may approve or reject.
    pub task: String,
    /// Unique id; the token is refused once this id was used.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub aud: String,
}

/// Signs an approval token (for `mcp-gateway task approval-token` and tests).
pub fn mint_token(secret: &[u8], claims: &ApprovalClaims) -> Result<String, GatewayError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| GatewayError::Internal {
        what: "cannot sign an approval token".to_owned(),
    })
}

/// New claims for `approver` on `task`, valid for `ttl` from now.
pub fn new_claims(approver: &Principal, task: TaskId, ttl: Duration) -> ApprovalClaims {
    let iat = now().unix_timestamp();
    ApprovalClaims {
        sub: approver.id.clone(),
        tenant: approver.tenant.clone(),
        roles: approver.roles.clone(),
        task: task.to_string(),
        jti: uuid::Uuid::now_v7().to_string(),
        iat,
        exp: iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        aud: TOKEN_AUDIENCE.to_owned(),
    }
}

/// Verifies a token's signature, audience, expiry and lifetime, and that it
/// names `task`. Every failure is the same [`GatewayError::ApprovalTokenInvalid`]
/// apart from a short reason.
fn verify_token(
    settings: &ApprovalSettings,
    token: &str,
    task: TaskId,
) -> Result<ApprovalClaims, GatewayError> {
    let bad = |reason: &'static str| GatewayError::ApprovalTokenInvalid { reason };
    let Some(secret) = &settings.token_secret else {
        return Err(bad("approval tokens are not configured on this gateway"));
    };
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[TOKEN_AUDIENCE]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    v.leeway = 5;
    let data =
        jsonwebtoken::decode::<ApprovalClaims>(token, &DecodingKey::from_secret(&secret.0), &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => bad("the token has expired"),
                _ => bad("the token is not a valid approval token"),
            })?;
    let c = data.claims;
    let max = i64::try_from(settings.token_max_ttl.as_secs()).unwrap_or(i64::MAX);
    if c.exp.saturating_sub(c.iat) > max {
        return Err(bad(
            "the token's lifetime is longer than approval.token_max_ttl_secs",
        ));
    }
    if c.task != task.to_string() {
        return Err(bad("the token is for another task"));
    }
    if c.jti.is_empty() || c.sub.is_empty() || c.tenant.is_empty() {
        return Err(bad("the token lacks jti, sub or tenant"));
    }
    Ok(c)
}

/// What a pending task keeps so that it can run once approved. The shape is
/// versioned: a gateway refuses to run a stored approval it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRun {
    pub version: u32,
    /// From the `require_approval` obligation.
    pub roles: Vec<String>,
    pub reason: String,
    /// The command as requested (resolved again at approval).
    pub command: String,
    /// The absolute path the policy judged.
    pub argv0: String,
    pub args: Vec<String>,
    /// Env as the client sent it (never values resolved from secrets).
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub timeout_secs: u64,
    pub network: NetworkAccess,
    pub limits: ResourceLimits,
    pub denied_paths: Vec<String>,
    pub rw_paths: Vec<String>,
    pub ro_paths: Vec<String>,
    pub profile: String,
    /// The decision that required approval.
    pub decision_id: String,
    pub policy_revision: String,
    /// Every obligation of that decision (redact, network, …), enforced
    /// again when the task runs.
    #[serde(default)]
    pub obligations: serde_json::Map<String, serde_json::Value>,
    /// Who asked: the task runs as this principal.
    pub requester: Principal,
}

const STORED_RUN_VERSION: u32 = 1;

impl StoredRun {
    pub fn new(
        obligation: &mcp_policy::ApprovalObligation,
        valid: &ValidExec,
        argv0: &str,
        profile: &str,
        decision: &Decision,
        details: &DecisionDetails,
        caller: &Caller,
    ) -> Self {
        Self {
            version: STORED_RUN_VERSION,
            roles: obligation.roles.clone(),
            reason: obligation.reason.clone(),
            command: valid.command.clone(),
            argv0: argv0.to_owned(),
            args: valid.args.clone(),
            env: valid.env.clone(),
            cwd: valid.cwd.clone(),
            timeout_secs: valid.timeout.as_secs(),
            network: valid.sandbox.network,
            limits: valid.sandbox.limits,
            denied_paths: valid.sandbox.denied_paths.clone(),
            rw_paths: valid.sandbox.rw_paths.clone(),
            ro_paths: valid.sandbox.ro_paths.clone(),
            profile: profile.to_owned(),
            decision_id: caller.request_id.to_string(),
            policy_revision: decision.policy_revision.clone(),
            obligations: details.obligations.clone(),
            requester: caller.principal.clone(),
        }
    }

    /// The validated request to run, as it was approved.
    pub fn valid_exec(&self, metadata: BTreeMap<String, String>) -> ValidExec {
        ValidExec {
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            timeout: Duration::from_secs(self.timeout_secs),
            metadata,
            sandbox: SandboxRequest {
                enabled: true,
                network: self.network,
                limits: self.limits,
                rw_paths: self.rw_paths.clone(),
                ro_paths: self.ro_paths.clone(),
                denied_paths: self.denied_paths.clone(),
            },
        }
    }
}

/// The `require_approval` obligation of a decision, from its decision-log
/// details (`Ok(None)` when absent; `Err` when malformed or without roles:
/// an approval nobody can give fails closed).
pub fn approval_obligation(
    details: &DecisionDetails,
) -> Result<Option<mcp_policy::ApprovalObligation>, String> {
    let Some(v) = details.obligations.get("require_approval") else {
        return Ok(None);
    };
    let o: mcp_policy::ApprovalObligation = serde_json::from_value(v.clone())
        .map_err(|e| format!("obligation require_approval is malformed: {e}"))?;
    if o.roles.is_empty() {
        return Err("obligation require_approval names no role that may approve".to_owned());
    }
    Ok(Some(o))
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
}

/// An approve or reject request as a front door received it.
#[derive(Debug, Clone, Default)]
pub struct VerdictRequest {
    pub task_id: String,
    pub token: Option<String>,
    /// The approver's comment (approve) or reason (reject).
    pub text: String,
}

/// The longest comment or reason kept.
const MAX_TEXT: usize = 1024;

/// Approves or rejects a pending task and answers with its record. The
/// request is audited (action `approve` / `reject`) with its outcome.
pub async fn decide(
    gw: &Arc<Gateway>,
    caller: &Caller,
    verdict: Verdict,
    req: VerdictRequest,
) -> Result<TaskRecord, GatewayError> {
    let task_id = req.task_id.clone();
    let answer = decide_unaudited(gw, caller, verdict, req).await;
    gw.audit_answer(caller, verdict.as_str(), Some(&task_id), answer)
        .await
}

async fn decide_unaudited(
    gw: &Arc<Gateway>,
    caller: &Caller,
    verdict: Verdict,
    req: VerdictRequest,
) -> Result<TaskRecord, GatewayError> {
    let id: TaskId = req.task_id.parse()?;
    if req.text.len() > MAX_TEXT {
        return Err(GatewayError::MalformedRequest {
            field: Some(
                if verdict == Verdict::Approve {
                    "comment"
                } else {
                    "reason"
                }
                .to_owned(),
            ),
            reason: format!("longer than {MAX_TEXT} bytes"),
        });
    }
    let settings = gw.approval_settings();
    let approver = match req.token.as_deref().filter(|t| !t.is_empty()) {
        None => caller.principal.clone(),
        Some(token) => {
            let c = verify_token(settings, token, id)?;
            // The token names the approver (its signature binds the
            // principal); whoever carries it (a chat bot, a link) must at
            // least belong to the same tenant when it is authenticated.
            if caller.principal.auth != AuthMethod::None && caller.principal.tenant != c.tenant {
                return Err(GatewayError::ApprovalTokenInvalid {
                    reason: "the token was issued for another tenant",
                });
            }
            let exp = OffsetDateTime::from_unix_timestamp(c.exp).unwrap_or_else(|_| now());
            let first = gw
                .store()
                .use_token(&c.jti, id, now(), exp)
                .await
                .map_err(GatewayError::Store)?;
            if !first {
                warn!(task_id = %id, "approval token replayed");
                return Err(GatewayError::ApprovalTokenInvalid {
                    reason: "the token was already used",
                });
            }
            Principal {
                id: c.sub,
                tenant: c.tenant,
                roles: c.roles,
                auth: AuthMethod::Jwt,
            }
        }
    };

    // Everything is looked up in the approver's tenant: another tenant's
    // task is not found, exactly like a task that does not exist.
    let tenant = approver.tenant.clone();
    let rec = gw
        .store()
        .get_task(&tenant, id)
        .await
        .map_err(GatewayError::Store)?
        .ok_or(GatewayError::TaskNotFound { id })?;
    let approval = gw
        .store()
        .get_approval(&tenant, id)
        .await
        .map_err(GatewayError::Store)?;
    let (Some(approval), TaskState::PendingApproval) = (approval, rec.state) else {
        return Err(not_pending(&rec));
    };
    let run: StoredRun = match serde_json::from_value(approval.details.clone()) {
        Ok(
            r @ StoredRun {
                version: STORED_RUN_VERSION,
                ..
            },
        ) => r,
        _ => {
            warn!(task_id = %id, "stored approval cannot be read by this gateway");
            return Err(GatewayError::Internal {
                what: "stored approval cannot be read".to_owned(),
            });
        }
    };
    if approval.expires_at <= now() {
        expire(gw, &tenant, id).await?;
        return Err(GatewayError::TaskFinished {
            id,
            state: TaskState::Expired,
        });
    }
    if approver.id == rec.principal {
        let why = "the requester cannot approve or reject its own task";
        record(
            gw,
            caller,
            &approver,
            verdict,
            &rec,
            &run,
            (false, Duration::ZERO),
            why,
        )
        .await?;
        return Err(GatewayError::SelfApproval { id });
    }

    let (allowed, latency) = evaluate(gw, &approver, verdict, &rec, &run);
    let why = if allowed {
        ""
    } else {
        "data.mcp.approve is not true"
    };
    record(
        gw,
        caller,
        &approver,
        verdict,
        &rec,
        &run,
        (allowed, latency),
        why,
    )
    .await?;
    if !allowed {
        info!(task_id = %id, verdict = verdict.as_str(), "approver refused by policy");
        return Err(GatewayError::Denied {
            reasons: vec![format!(
                "principal {:?} may not {} this task (data.mcp.approve)",
                approver.id,
                verdict.as_str()
            )],
        });
    }

    match verdict {
        Verdict::Reject => {
            let reason = if req.text.trim().is_empty() {
                format!("rejected by {}", approver.id)
            } else {
                format!("rejected by {}: {}", approver.id, req.text.trim())
            };
            let done = gw
                .store()
                .finish_pending(
                    &tenant,
                    id,
                    TaskState::Rejected,
                    now(),
                    &reason,
                    Some(&approver.id),
                )
                .await
                .map_err(GatewayError::Store)?;
            if !done {
                return Err(not_pending(&gw.status_in(&tenant, id).await?));
            }
            gw.metrics()
                .observe_task(TaskState::Rejected.as_str(), Duration::ZERO);
            info!(task_id = %id, "task rejected");
        }
        Verdict::Approve => {
            // What was approved is what runs: the command must resolve to
            // the same binary in the stored profile now.
            let now_resolved = gw.sandbox().resolve_command(&run.profile, &run.command);
            if now_resolved.as_deref() != Some(run.argv0.as_str()) {
                let reason = "not run: the command resolves differently than when it was approved";
                gw.store()
                    .finish_pending(
                        &tenant,
                        id,
                        TaskState::Failed,
                        now(),
                        reason,
                        Some(&approver.id),
                    )
                    .await
                    .map_err(GatewayError::Store)?;
                return Err(GatewayError::Denied {
                    reasons: vec![reason.to_owned()],
                });
            }
            let requester = Caller::new(run.requester.clone(), caller.source.clone());
            let valid = run.valid_exec(rec.metadata.clone());
            let started = gw
                .start_approved(
                    &requester,
                    id,
                    &approver.id,
                    run.profile.clone(),
                    run.argv0.clone(),
                    valid,
                    &run.obligations,
                )
                .await?;
            if !started {
                return Err(not_pending(&gw.status_in(&tenant, id).await?));
            }
            info!(task_id = %id, "task approved");
        }
    }
    gw.status_in(&tenant, id).await
}

fn not_pending(rec: &TaskRecord) -> GatewayError {
    if rec.state.is_terminal() {
        GatewayError::TaskFinished {
            id: rec.id,
            state: rec.state,
        }
    } else {
        GatewayError::NotPendingApproval {
            id: rec.id,
            state: rec.state,
        }
    }
}

async fn expire(gw: &Gateway, tenant: &str, id: TaskId) -> Result<(), GatewayError> {
    gw.store()
        .finish_pending(
            tenant,
            id,
            TaskState::Expired,
            now(),
            mcp_store::APPROVAL_EXPIRED,
            None,
        )
        .await
        .map_err(GatewayError::Store)?;
    Ok(())
}

/// The input of `data.mcp.approve`.
fn approve_input(
    approver: &Principal,
    verdict: Verdict,
    rec: &TaskRecord,
    run: &StoredRun,
    with_args: bool,
) -> serde_json::Value {
    let mut task = serde_json::json!({
        "id": rec.id.to_string(),
        "tenant": rec.tenant,
        "principal": rec.principal,
        "command": run.argv0,
        "profile": run.profile,
        "metadata": rec.metadata,
        "created_at": mcp_core::rfc3339(rec.created_at),
    });
    if with_args && let Some(obj) = task.as_object_mut() {
        obj.insert("args".to_owned(), serde_json::json!(run.args));
    }
    serde_json::json!({
        "action": verdict.as_str(),
        "approver": approver,
        "task": task,
        "obligation": {
            "roles": run.roles,
            "reason": run.reason,
            // Each policy's demand; approve.rego wants one role of each.
            "requirements": run
                .obligations
                .get("require_approval")
                .and_then(|o| o.get("requirements"))
                .cloned()
                .unwrap_or_else(|| serde_json::json!([])),
        },
    })
}

/// Evaluates `data.mcp.approve`; anything but `true` (an error, undefined,
/// another value) refuses. Answers whether it allowed, and the latency.
fn evaluate(
    gw: &Gateway,
    approver: &Principal,
    verdict: Verdict,
    rec: &TaskRecord,
    run: &StoredRun,
) -> (bool, Duration) {
    let _span = tracing::info_span!("policy.eval", rule = "data.mcp.approve").entered();
    let started = Instant::now();
    let engine = gw.policy_service().engine();
    let input = approve_input(approver, verdict, rec, run, true);
    let allowed = match engine.eval_rule(APPROVE_RULE, &input) {
        Ok(value) => value == Some(serde_json::Value::Bool(true)),
        Err(error) => {
            tracing::error!(%error, revision = %engine.revision(), "data.mcp.approve failed, refusing");
            false
        }
    };
    (allowed, started.elapsed())
}

/// Writes the approve/reject decision to the decision log.
#[allow(clippy::too_many_arguments)]
async fn record(
    gw: &Gateway,
    caller: &Caller,
    approver: &Principal,
    verdict: Verdict,
    rec: &TaskRecord,
    run: &StoredRun,
    (allowed, latency): (bool, Duration),
    why: &str,
) -> Result<(), GatewayError> {
    let decision = Decision {
        allow: allowed,
        deny_reasons: if allowed {
            Vec::new()
        } else {
            vec![why.to_owned()]
        },
        warnings: Vec::new(),
        obligations: Obligations::default(),
        policy_revision: gw.policy_revision(),
    };
    let details = DecisionDetails {
        // Args can hold anything the requester typed; the log keeps the rest.
        input: Some(approve_input(approver, verdict, rec, run, false)),
        latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        ..DecisionDetails::default()
    };
    let mut as_approver = caller.clone();
    as_approver.principal = approver.clone();
    gw.record_decision(
        &as_approver,
        "approval",
        &format!("{} {}", verdict.as_str(), rec.id),
        &decision,
        &details,
        Some(rec.id),
    )
    .await
}

/// What a client is shown about a pending task: the obligation's reason
/// and the expiry (RFC 3339). `None` for tasks not waiting for approval.
pub async fn shown(gw: &Gateway, rec: &TaskRecord) -> Option<(String, String)> {
    if rec.state != TaskState::PendingApproval {
        return None;
    }
    let a = gw.store().get_approval(&rec.tenant, rec.id).await.ok()??;
    let reason = a.details.get("reason")?.as_str()?.to_owned();
    Some((reason, mcp_core::rfc3339(a.expires_at)))
}

/// Expires overdue approvals now and then every `interval` until `stop`.
pub async fn sweep(
    store: Arc<dyn mcp_store::TaskStore>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match store.expire_pending(now()).await {
            Ok(0) => {}
            Ok(n) => info!(count = n, "pending approvals expired"),
            Err(e) => warn!(error = %e, "cannot expire pending approvals"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;
