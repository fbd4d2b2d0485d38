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
//! This module holds the settings, tokens, what is stored and the expiry
//! sweep; the approve/reject step itself is `approve`.
//!
//! Invariants: a pending task never holds env values resolved from secrets
//! (only what the client sent); only one decision wins (the store moves a
//! task out of `pending_approval` with a guarded update); another tenant's
//! task answers `NOT_FOUND`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mcp_core::{
    ApprovalObligation, Decision, ObligationSet, Principal, TaskId, TaskRecord, ValidExec, now,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::GatewayError;
use crate::plan::{Caller, TaskPlan};

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
pub(crate) fn verify_token(
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

/// What a pending task keeps so that it can run once approved: the
/// admitted request itself (its [`TaskPlan`] less what is rebuilt at
/// approval), the obligation that held it, and the decision. The shape is
/// versioned: a gateway refuses to run a stored approval it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRun {
    pub version: u32,
    /// From the `require_approval` obligation.
    pub roles: Vec<String>,
    pub reason: String,
    /// The request as admitted: limits clamped, env as the client sent it
    /// (never values resolved from secrets). Its command is resolved again
    /// at approval. Its metadata is the task's, kept in the task's row.
    #[serde(flatten, with = "stored_request")]
    pub request: ValidExec,
    /// The absolute path the policy judged.
    pub argv0: String,
    pub profile: String,
    /// The decision that required approval.
    pub decision_id: String,
    pub policy_revision: String,
    /// Every obligation of that decision (redact, network, …), enforced
    /// again when the task runs.
    #[serde(default)]
    pub obligations: ObligationSet,
    /// Who asked: the task runs as this principal.
    pub requester: Principal,
}

pub(crate) const STORED_RUN_VERSION: u32 = 1;

impl StoredRun {
    /// What `plan`, held by `obligation`, keeps while it waits.
    pub fn new(obligation: &ApprovalObligation, plan: &TaskPlan, decision: &Decision) -> Self {
        Self {
            version: STORED_RUN_VERSION,
            roles: obligation.roles.clone(),
            reason: obligation.reason.clone(),
            request: plan.request.clone(),
            argv0: plan.argv0.clone(),
            profile: plan.profile.clone(),
            decision_id: plan.caller.request_id.to_string(),
            policy_revision: decision.policy_revision.clone(),
            obligations: plan.obligations.clone(),
            requester: plan.caller.principal.clone(),
        }
    }

    /// The plan to run task `id` as approved: as its requester (from
    /// `source`, the approval's peer), with the task's `metadata`.
    pub fn into_plan(
        self,
        id: TaskId,
        source: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> TaskPlan {
        let mut request = self.request;
        request.metadata = metadata;
        TaskPlan {
            id,
            caller: Caller::new(self.requester, source),
            request,
            argv0: self.argv0,
            profile: self.profile,
            obligations: self.obligations,
        }
    }
}

/// The stored shape of a pending request (version 1): the request's fields
/// side by side with the rest of the [`StoredRun`], the timeout in seconds,
/// no metadata. Only here does the request become JSON.
mod stored_request {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use mcp_core::{NetworkAccess, ResourceLimits, SandboxRequest, ValidExec};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct Out<'a> {
        command: &'a str,
        args: &'a [String],
        env: &'a BTreeMap<String, String>,
        cwd: &'a str,
        timeout_secs: u64,
        network: NetworkAccess,
        limits: ResourceLimits,
        denied_paths: &'a [String],
        rw_paths: &'a [String],
        ro_paths: &'a [String],
    }

    #[derive(Deserialize)]
    struct In {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: String,
        timeout_secs: u64,
        network: NetworkAccess,
        limits: ResourceLimits,
        denied_paths: Vec<String>,
        rw_paths: Vec<String>,
        ro_paths: Vec<String>,
    }

    pub fn serialize<S: Serializer>(r: &ValidExec, s: S) -> Result<S::Ok, S::Error> {
        Out {
            command: &r.command,
            args: &r.args,
            env: &r.env,
            cwd: &r.cwd,
            timeout_secs: r.timeout.as_secs(),
            network: r.sandbox.network,
            limits: r.sandbox.limits,
            denied_paths: &r.sandbox.denied_paths,
            rw_paths: &r.sandbox.rw_paths,
            ro_paths: &r.sandbox.ro_paths,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ValidExec, D::Error> {
        let r = In::deserialize(d)?;
        Ok(ValidExec {
            command: r.command,
            args: r.args,
            env: r.env,
            cwd: r.cwd,
            timeout: Duration::from_secs(r.timeout_secs),
            metadata: BTreeMap::new(),
            sandbox: SandboxRequest {
                enabled: true,
                network: r.network,
                limits: r.limits,
                rw_paths: r.rw_paths,
                ro_paths: r.ro_paths,
                denied_paths: r.denied_paths,
            },
        })
    }
}

/// The `require_approval` obligation of a decision (`Ok(None)` when
/// absent); `Err` when it names no role: an approval nobody can give fails
/// closed.
pub fn approval_obligation(
    obligations: &ObligationSet,
) -> Result<Option<&ApprovalObligation>, String> {
    match &obligations.require_approval {
        Some(o) if o.roles.is_empty() => {
            Err("obligation require_approval names no role that may approve".to_owned())
        }
        o => Ok(o.as_ref()),
    }
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
pub(crate) const MAX_TEXT: usize = 1024;

pub(crate) fn not_pending(rec: &TaskRecord) -> GatewayError {
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

/// The input of `data.mcp.approve`.
pub(crate) fn approve_input(
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
        obj.insert("args".to_owned(), serde_json::json!(run.request.args));
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
                .require_approval
                .as_ref()
                .map_or(&[][..], |o| o.requirements.as_slice()),
        },
    })
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
