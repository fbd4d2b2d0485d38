//! Per-tenant quotas, the `limits` obligation, and idempotency keys.
//!
//! - **Concurrent tasks**: accepted, not yet finished tasks of a tenant on
//!   this replica (created, queued, running). A [`QuotaPermit`] is held by
//!   the task's worker and released when its end is stored.
//! - **Tasks per minute**: a token bucket per tenant (capacity = the rate,
//!   refilled continuously), charged when a command is accepted, including
//!   one that then waits for approval.
//! - **CPU-seconds per hour**: a sliding hour over the CPU time stored with
//!   finished tasks (so it survives restarts). A tenant over budget is
//!   refused, and when a finished task pushes it over, its other running
//!   tasks are cancelled with the reason [`cpu_budget_reason`]. A running
//!   task's timeout is clamped to the budget left, so a single-core task
//!   cannot overrun it by more than its own length.
//!
//! Refusals are [`GatewayError::QuotaExceeded`] (`RESOURCE_EXHAUSTED`, HTTP
//! 429) with a retry-after in seconds. The global cap on running sandboxes
//! and its bounded queue stay in the pipeline (`max_running_tasks`,
//! `max_queued_tasks`).
//!
//! Invariants: quota state never holds a command, argv or env; a tenant
//! without quotas configured (and no `[quotas.default]`) is unlimited.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_core::{ExecRequest, TaskId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::GatewayError;

/// How long a CPU-budget window is.
pub const CPU_WINDOW: Duration = Duration::from_secs(3600);

/// One tenant's quotas as configured; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTenantQuota {
    pub max_concurrent_tasks: u32,
    pub tasks_per_minute: u32,
    pub cpu_seconds_per_hour: u64,
}

/// `[quotas]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuotas {
    /// Applies to every tenant without its own entry.
    pub default: RawTenantQuota,
    /// Per-tenant quotas; replaces `default` for that tenant.
    pub tenants: BTreeMap<String, RawTenantQuota>,
    /// How long an idempotency key returns the task it created.
    pub idempotency_window_secs: u64,
}

impl Default for RawQuotas {
    fn default() -> Self {
        Self {
            default: RawTenantQuota::default(),
            tenants: BTreeMap::new(),
            idempotency_window_secs: 24 * 3600,
        }
    }
}

/// Validated `[quotas]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSettings {
    pub default: RawTenantQuota,
    pub tenants: BTreeMap<String, RawTenantQuota>,
    pub idempotency_window: Duration,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        RawQuotas::default().validate(&mut Vec::new())
    }
}

impl RawQuotas {
    /// Validates, adding problems to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) -> QuotaSettings {
        if self.idempotency_window_secs == 0 {
            problems.push("quotas.idempotency_window_secs must be at least 1".to_owned());
        }
        for name in self.tenants.keys() {
            if name.trim().is_empty() {
                problems.push("quotas.tenants: a tenant name must not be empty".to_owned());
            }
        }
        QuotaSettings {
            default: self.default,
            tenants: self.tenants.clone(),
            idempotency_window: Duration::from_secs(self.idempotency_window_secs),
        }
    }
}

impl QuotaSettings {
    pub fn for_tenant(&self, tenant: &str) -> RawTenantQuota {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity),
            at: now,
        }
    }

    /// Takes one token, or answers how long until one is available.
    pub(crate) fn take(&mut self, capacity: u32, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(capacity);
        let per_sec = cap / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

#[derive(Debug, Default)]
struct TenantState {
    /// Accepted, unfinished tasks on this replica.
    active: HashSet<TaskId>,
    bucket: Option<Bucket>,
}

/// The quota ledger of one gateway.
#[derive(Debug)]
pub struct Quotas {
    settings: QuotaSettings,
    tenants: Mutex<HashMap<String, TenantState>>,
}

/// Holds one slot of a tenant's concurrent-task quota; released on drop.
#[derive(Debug)]
pub struct QuotaPermit {
    quotas: Arc<Quotas>,
    tenant: String,
    id: TaskId,
}

impl Drop for QuotaPermit {
    fn drop(&mut self) {
        let mut tenants = self.quotas.lock();
        if let Some(t) = tenants.get_mut(&self.tenant) {
            t.active.remove(&self.id);
        }
    }
}

/// Rounds a wait up to whole seconds, at least 1 (Retry-After is in seconds).
pub fn retry_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// The reason a tenant's running work is killed with.
pub fn cpu_budget_reason(budget_secs: u64) -> String {
    format!("killed: the tenant's CPU budget of {budget_secs} CPU-seconds per hour is used up")
}

impl Quotas {
    pub fn new(settings: QuotaSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &QuotaSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantState>> {
        // Every mutation is a single insert/remove; a poisoned lock is consistent.
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the tenant's concurrency quota and takes a slot for `id`.
    pub fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        id: TaskId,
    ) -> Result<QuotaPermit, GatewayError> {
        let q = self.settings.for_tenant(tenant);
        let mut tenants = self.lock();
        let st = tenants.entry(tenant.to_owned()).or_default();
        if q.max_concurrent_tasks > 0 && st.active.len() >= q.max_concurrent_tasks as usize {
            return Err(GatewayError::QuotaExceeded {
                quota: "concurrent tasks",
                limit: u64::from(q.max_concurrent_tasks),
                // A slot frees when a task ends; there is no better guess.
                retry_after_secs: 1,
            });
        }
        st.active.insert(id);
        Ok(QuotaPermit {
            quotas: self.clone(),
            tenant: tenant.to_owned(),
            id,
        })
    }

    /// Charges one task to the tenant's per-minute rate.
    pub fn charge_rate(&self, tenant: &str) -> Result<(), GatewayError> {
        let q = self.settings.for_tenant(tenant);
        if q.tasks_per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut tenants = self.lock();
        let st = tenants.entry(tenant.to_owned()).or_default();
        let bucket = st
            .bucket
            .get_or_insert_with(|| Bucket::full(q.tasks_per_minute, now));
        bucket
            .take(q.tasks_per_minute, now)
            .map_err(|wait| GatewayError::QuotaExceeded {
                quota: "tasks per minute",
                limit: u64::from(q.tasks_per_minute),
                retry_after_secs: retry_secs(wait),
            })
    }

    /// The tenant's CPU budget in seconds per hour, if it has one.
    pub fn cpu_budget(&self, tenant: &str) -> Option<u64> {
        Some(self.settings.for_tenant(tenant).cpu_seconds_per_hour).filter(|b| *b > 0)
    }

    /// Refuses when `used_ms` (CPU time of the last hour) is at or over the
    /// tenant's budget; otherwise answers the budget left.
    pub fn check_cpu(&self, tenant: &str, used_ms: u64) -> Result<Option<Duration>, GatewayError> {
        let Some(budget) = self.cpu_budget(tenant) else {
            return Ok(None);
        };
        let budget_ms = budget.saturating_mul(1000);
        if used_ms >= budget_ms {
            return Err(GatewayError::QuotaExceeded {
                quota: "CPU-seconds per hour",
                limit: budget,
                // Usage leaves the sliding window gradually; a few minutes is
                // an honest first guess without scanning the hour.
                retry_after_secs: 60,
            });
        }
        Ok(Some(Duration::from_millis(budget_ms - used_ms)))
    }

    /// The tenant's other unfinished tasks on this replica.
    pub fn active(&self, tenant: &str) -> Vec<TaskId> {
        self.lock()
            .get(tenant)
            .map(|t| t.active.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Clamps what a request asked for to the policy's `limits` obligation: a
/// request can only tighten. Zero (unset) request limits become the
/// policy's value.
pub fn apply_limits(
    valid: &mut mcp_core::ValidExec,
    limits: &mcp_policy::LimitsObligation,
) -> Result<(), String> {
    let l = &mut valid.sandbox.limits;
    if let Some(cpu) = limits.cpu_limit {
        if !(cpu.is_finite() && cpu > 0.0) {
            return Err(format!("limits.cpu_limit {cpu} is not a positive number"));
        }
        // f32 is what the sandbox takes; policy values are small numbers.
        #[allow(clippy::cast_possible_truncation)]
        let cpu = cpu as f32;
        if l.cpu_limit == 0.0 || l.cpu_limit > cpu {
            l.cpu_limit = cpu;
        }
    }
    if let Some(mem) = limits.memory_bytes {
        if mem == 0 {
            return Err("limits.memory_bytes must be above 0".to_owned());
        }
        if l.memory_bytes == 0 || l.memory_bytes > mem {
            l.memory_bytes = mem;
        }
    }
    if let Some(pids) = limits.pids {
        if pids == 0 {
            return Err("limits.pids must be above 0".to_owned());
        }
        let pids = u32::try_from(pids).unwrap_or(u32::MAX);
        if l.pids == 0 || l.pids > pids {
            l.pids = pids;
        }
    }
    if let Some(t) = limits.timeout_secs {
        if t == 0 {
            return Err("limits.timeout_secs must be above 0".to_owned());
        }
        valid.timeout = valid.timeout.min(Duration::from_secs(t));
    }
    Ok(())
}

/// A stable hash of a request, to tell a repeat (same key, same request)
/// from a different request that reuses the key. Env values are hashed,
/// never stored.
pub fn request_hash(req: &ExecRequest) -> String {
    let json = serde_json::to_vec(req).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Validates a client's idempotency key; empty means none.
pub fn idempotency_key(raw: Option<String>) -> Result<Option<String>, GatewayError> {
    let Some(k) = raw.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    if k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(|c| c.is_control()) {
        return Err(GatewayError::MalformedRequest {
            field: Some("idempotency_key".to_owned()),
            reason: format!(
                "must be at most {MAX_IDEMPOTENCY_KEY} bytes without control characters"
            ),
        });
    }
    Ok(Some(k))
}

#[cfg(test)]
mod tests;
