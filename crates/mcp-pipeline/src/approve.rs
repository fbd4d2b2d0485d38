//! The approve/reject step (`ApproveTask` / `RejectTask`): who approves
//! (the caller, or the approver an approval token names), the checks
//! (not the requester, `data.mcp.approve`), the decision log, then a
//! rejected task ends and an approved one starts like a fresh one
//! (`Gateway::start_approved`). See [`crate::approval`] for the flow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_core::{AuthMethod, Decision, Obligations, Principal, TaskId, TaskRecord, TaskState, now};
use mcp_store::DecisionDetails;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::approval::{
    APPROVE_RULE, MAX_TEXT, STORED_RUN_VERSION, StoredRun, Verdict, VerdictRequest, approve_input,
    not_pending, verify_token,
};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::plan::Caller;
use crate::record::DecisionEntry;

impl Gateway {
    /// Approves or rejects a pending task and answers with its record. The
    /// request is audited (action `approve` / `reject`) with its outcome.
    pub async fn decide_approval(
        self: &Arc<Self>,
        caller: &Caller,
        verdict: Verdict,
        req: VerdictRequest,
    ) -> Result<TaskRecord, GatewayError> {
        let task_id = req.task_id.clone();
        let answer = decide_unaudited(self, caller, verdict, req).await;
        self.audit_answer(caller, verdict.as_str(), Some(&task_id), answer)
            .await
    }

    /// What a client is shown about a pending task: the obligation's reason
    /// and the expiry (RFC 3339). `None` for tasks not waiting for approval.
    pub async fn pending_approval(&self, rec: &TaskRecord) -> Option<(String, String)> {
        if rec.state != TaskState::PendingApproval {
            return None;
        }
        let a = self.store.get_approval(&rec.tenant, rec.id).await.ok()??;
        let reason = a.details.get("reason")?.as_str()?.to_owned();
        Some((reason, mcp_core::rfc3339(a.expires_at)))
    }
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
    let settings = &gw.settings.approval;
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
                .store
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
        .store
        .get_task(&tenant, id)
        .await
        .map_err(GatewayError::Store)?
        .ok_or(GatewayError::TaskNotFound { id })?;
    let approval = gw
        .store
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
    let judged = Judged {
        approver: &approver,
        verdict,
        rec: &rec,
        run: &run,
    };
    if approver.id == rec.principal {
        let why = "the requester cannot approve or reject its own task";
        record(gw, caller, &judged, (false, Duration::ZERO), why).await?;
        return Err(GatewayError::SelfApproval { id });
    }

    let (allowed, latency) = evaluate(gw, &judged);
    let why = if allowed {
        ""
    } else {
        "data.mcp.approve is not true"
    };
    record(gw, caller, &judged, (allowed, latency), why).await?;
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
                .store
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
            let now_resolved = gw
                .sandbox
                .resolve_command(&run.profile, &run.request.command);
            if now_resolved.as_deref() != Some(run.argv0.as_str()) {
                let reason = "not run: the command resolves differently than when it was approved";
                gw.store
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
            let plan = run.into_plan(id, caller.source.clone(), rec.metadata.clone());
            let started = gw.start_approved(plan, &approver.id).await?;
            if !started {
                return Err(not_pending(&gw.status_in(&tenant, id).await?));
            }
            info!(task_id = %id, "task approved");
        }
    }
    gw.status_in(&tenant, id).await
}

async fn expire(gw: &Gateway, tenant: &str, id: TaskId) -> Result<(), GatewayError> {
    gw.store
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

/// One approve or reject under judgement: who, which verdict, on which
/// task, as it was stored.
#[derive(Debug, Clone, Copy)]
struct Judged<'a> {
    approver: &'a Principal,
    verdict: Verdict,
    rec: &'a TaskRecord,
    run: &'a StoredRun,
}

impl Judged<'_> {
    /// The input of `data.mcp.approve`; `with_args` for the evaluation, not
    /// for the log (args can hold anything the requester typed).
    fn input(&self, with_args: bool) -> serde_json::Value {
        approve_input(self.approver, self.verdict, self.rec, self.run, with_args)
    }
}

/// Evaluates `data.mcp.approve`; anything but `true` (an error, undefined,
/// another value) refuses. Answers whether it allowed, and the latency.
fn evaluate(gw: &Gateway, judged: &Judged<'_>) -> (bool, Duration) {
    let _span = tracing::info_span!("policy.eval", rule = "data.mcp.approve").entered();
    let started = Instant::now();
    let engine = gw.policy_service().engine();
    let input = judged.input(true);
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
async fn record(
    gw: &Gateway,
    caller: &Caller,
    judged: &Judged<'_>,
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
        input: Some(judged.input(false)),
        latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        ..DecisionDetails::default()
    };
    let mut as_approver = caller.clone();
    as_approver.principal = judged.approver.clone();
    let summary = format!("{} {}", judged.verdict.as_str(), judged.rec.id);
    let entry = DecisionEntry {
        caller: &as_approver,
        kind: "approval",
        summary: &summary,
        decision: &decision,
        task_id: Some(judged.rec.id),
    };
    gw.record_decision(entry, &details).await
}
