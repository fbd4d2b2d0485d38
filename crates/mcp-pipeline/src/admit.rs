//! Admission of an allowed command: the `limits` obligation, the tenant's
//! rate, the approval hold, the CPU budget, the concurrency slot and the
//! queue, and idempotency keys before all of it. Admission writes nothing:
//! what it decides is stored with the decision (`execute`). The ledger it
//! charges is [`crate::quota`].

use std::sync::Arc;
use std::time::Duration;

use mcp_core::{Decision, ExecRequest, TaskId, TaskRecord, TaskState, ValidExec};
use mcp_store::{IdempotencyClaim, IdempotencyKey, PendingApproval};
use tokio::time::Instant;
use tracing::warn;

use crate::approval::StoredRun;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::plan::{Caller, Started, TaskPlan};
use crate::quota::{
    CPU_WINDOW, QuotaPermit, apply_limits, cpu_budget_reason, idempotency_key, request_hash,
    retry_secs,
};

/// What [`Gateway::admit`] decided for an allowed command.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Run it, holding this quota slot.
    Run(QuotaPermit),
    /// It waits for approval: store this task with its approval details
    /// (together with the decision) and answer that it waits.
    Pending {
        task: Box<TaskRecord>,
        approval: PendingApproval,
    },
}

/// How long a repeat waits for the first request's task to be stored.
const IDEMPOTENT_WAIT: Duration = Duration::from_secs(5);

impl Gateway {
    /// Applies the `limits` obligation to `plan`, charges the tenant's rate,
    /// and either prepares the task to be stored as pending approval or
    /// admits it to run now ([`Gateway::admit_run`]).
    pub(crate) async fn admit(
        &self,
        plan: &mut TaskPlan,
        decision: &Decision,
    ) -> Result<Admission, GatewayError> {
        if let Some(l) = &plan.obligations.limits {
            apply_limits(&mut plan.request, l).map_err(|reason| GatewayError::Denied {
                reasons: vec![reason],
            })?;
        }
        self.quotas.charge_rate(&plan.caller.principal.tenant)?;
        if let Some(ob) = &plan.obligations.require_approval {
            let run = StoredRun::new(ob, plan, decision);
            let ttl = time::Duration::try_from(self.settings.approval.ttl)
                .unwrap_or(time::Duration::HOUR);
            let record = self.new_record(plan, TaskState::PendingApproval);
            let details = serde_json::to_value(&run).map_err(|_| GatewayError::Internal {
                what: "cannot encode a pending approval".to_owned(),
            })?;
            let approval = PendingApproval {
                details,
                expires_at: record.created_at + ttl,
                decided_by: None,
            };
            return Ok(Admission::Pending {
                task: Box::new(record),
                approval,
            });
        }
        self.admit_run(plan).await.map(Admission::Run)
    }

    /// Admits `plan` to run now, fresh or approved: the CPU budget (which
    /// clamps its timeout), the tenant's concurrency slot, and the queue.
    pub(crate) async fn admit_run(&self, plan: &mut TaskPlan) -> Result<QuotaPermit, GatewayError> {
        let tenant = &plan.caller.principal.tenant;
        self.cpu_admit(tenant, &mut plan.request).await?;
        let permit = self.quotas.acquire(tenant, plan.id)?;
        self.check_queue()?;
        Ok(permit)
    }

    /// Refuses a tenant over its CPU budget and clamps the task's timeout to
    /// the budget left.
    async fn cpu_admit(&self, tenant: &str, request: &mut ValidExec) -> Result<(), GatewayError> {
        if self.quotas.cpu_budget(tenant).is_none() {
            return Ok(());
        }
        let since = mcp_core::now() - CPU_WINDOW;
        let used = self
            .store
            .cpu_ms_since(tenant, since)
            .await
            .map_err(GatewayError::Store)?;
        if let Some(left) = self.quotas.check_cpu(tenant, used)? {
            request.timeout = request.timeout.min(Duration::from_secs(retry_secs(left)));
        }
        Ok(())
    }

    /// Refuses a new task when every slot is busy and the queue is full.
    pub(crate) fn check_queue(&self) -> Result<(), GatewayError> {
        let queued = self.queued.load(std::sync::atomic::Ordering::Relaxed);
        if self.slots.available_permits() == 0 && queued >= self.settings.max_queued {
            return Err(GatewayError::Overloaded { queued });
        }
        Ok(())
    }

    /// After a task of `tenant` ended: when the tenant is now over its CPU
    /// budget, its other running work on this replica is killed.
    pub(crate) async fn after_task(&self, tenant: &str) {
        let Some(budget) = self.quotas.cpu_budget(tenant) else {
            return;
        };
        let since = mcp_core::now() - CPU_WINDOW;
        let used = match self.store.cpu_ms_since(tenant, since).await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "cannot read the tenant's CPU usage");
                return;
            }
        };
        if used < budget.saturating_mul(1000) {
            return;
        }
        let active = self.quotas.active(tenant);
        if !active.is_empty() {
            warn!(
                tenant,
                killed = active.len(),
                budget_secs = budget,
                "tenant over its CPU budget; killing its running tasks"
            );
        }
        let reason = cpu_budget_reason(budget);
        for id in active {
            self.cancel_live(id, &reason);
        }
    }

    /// [`Gateway::execute`] with an idempotency key: a repeat by the same
    /// principal within the window answers the first request's task.
    pub async fn execute_idempotent(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecRequest,
        key: Option<String>,
    ) -> Result<Started, GatewayError> {
        let Some(key) = idempotency_key(key)? else {
            return self.execute(caller, req).await;
        };
        let p = &caller.principal;
        let hash = request_hash(&req);
        let id = TaskId::new();
        let at = mcp_core::now();
        let window = self.quotas.settings().idempotency_window;
        let claim = self
            .store
            .claim_idempotency_key(
                &IdempotencyKey {
                    tenant: p.tenant.clone(),
                    principal: p.id.clone(),
                    key: key.clone(),
                    request_hash: hash.clone(),
                    task_id: id,
                    at,
                },
                at - window,
            )
            .await
            .map_err(GatewayError::Store)?;
        match claim {
            IdempotencyClaim::New => match self.execute_as(caller, req, id).await {
                Ok(started) => Ok(started),
                Err(e) => {
                    // Nothing was created: the key must not point at nothing.
                    if let Err(re) = self
                        .store
                        .release_idempotency_key(&p.tenant, &p.id, &key, id)
                        .await
                    {
                        warn!(error = %re, "cannot release an idempotency key");
                    }
                    Err(e)
                }
            },
            IdempotencyClaim::Existing {
                request_hash,
                task_id,
            } => {
                if request_hash != hash {
                    return Err(GatewayError::IdempotencyKeyReused);
                }
                let deadline = Instant::now() + IDEMPOTENT_WAIT;
                loop {
                    if let Some(t) = self
                        .store
                        .get_task(&p.tenant, task_id)
                        .await
                        .map_err(GatewayError::Store)?
                    {
                        return Ok(Started {
                            id: t.id,
                            state: t.state,
                            created_at: t.created_at,
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(GatewayError::Busy { limit: 1 });
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
}
