//! The pipeline's shared state, [`Gateway`]: one per process, shared by
//! every front door. The steps of a request (`execute`, `admit`, `record`,
//! `worker`, `tasks`, `files`, `approve`) are `impl Gateway` blocks in
//! modules of their own; this module holds the state, its set-up and what
//! is read about it (readiness, metrics), and imports none of the steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mcp_core::RequestLimits;
use mcp_policy::PolicyService;
use mcp_sandbox::{FilesRoot, Sandbox};
use mcp_store::TaskStore;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::approval::ApprovalSettings;
use crate::audit::AuditSlot;
use crate::egress::registry::EgressState;
use crate::error::GatewayError;
use crate::live::LiveTasks;
use crate::metrics::{Metrics, Snapshot};
use crate::quota::{QuotaSettings, Quotas};
use crate::secrets::SecretsSettings;

/// How long a sandbox self-check answers `/ready` before it is run again
/// (each check starts a real sandbox).
const SANDBOX_CHECK_TTL: Duration = Duration::from_secs(30);
/// How long a readiness probe waits for the store or the sandbox.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The profile used when the policy names none.
pub const DEFAULT_PROFILE: &str = "default";

/// What `GET /ready` reports: whether each dependency is usable now.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `Err` carries a public, detail-free reason; details go to the log.
    pub store: Result<(), String>,
    pub sandbox: Result<(), String>,
    pub policy_revision: String,
    /// False once shutdown began.
    pub accepting: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.store.is_ok()
            && self.sandbox.is_ok()
            && !self.policy_revision.is_empty()
            && self.accepting
    }
}

/// Settings of the pipeline that come from configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub limits: RequestLimits,
    pub max_running: usize,
    pub max_queued: usize,
    pub replica_id: String,
    /// Environment tags handed to policy (`input.context.environment`).
    pub environment: std::collections::BTreeMap<String, String>,
    /// `[approval]`: TTL of pending approvals, approval tokens.
    pub approval: ApprovalSettings,
    /// `[quotas]`: per-tenant quotas, the idempotency window.
    pub quotas: QuotaSettings,
}

/// The gateway's shared state; one per process, shared by all front doors.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) policy: Arc<PolicyService>,
    pub(crate) sandbox: Sandbox,
    pub(crate) files: FilesRoot,
    pub(crate) store: Arc<dyn TaskStore>,
    pub(crate) settings: PipelineSettings,
    pub(crate) live: LiveTasks,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) queued: AtomicUsize,
    pub(crate) started: Instant,
    pub(crate) closing: CancellationToken,
    pub(crate) workers: TaskTracker,
    pub(crate) metrics: Metrics,
    pub(crate) sandbox_check: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Watches the policy directory for the gateway's lifetime.
    pub(crate) policy_watcher: std::sync::Mutex<Option<mcp_policy::PolicyWatcher>>,
    /// Egress proxies of restricted-network tasks (`egress`).
    pub(crate) egress: EgressState,
    /// Per-tenant quota ledger (`quota`).
    pub(crate) quotas: Arc<Quotas>,
    /// The audit log and redaction rules (`audit`).
    pub(crate) audit: AuditSlot,
}

impl Gateway {
    pub fn new(
        policy: Arc<PolicyService>,
        sandbox: Sandbox,
        files: FilesRoot,
        store: Arc<dyn TaskStore>,
        settings: PipelineSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            sandbox,
            files,
            store,
            slots: Arc::new(Semaphore::new(settings.max_running)),
            quotas: Quotas::new(settings.quotas.clone()),
            audit: AuditSlot::default(),
            settings,
            live: LiveTasks::default(),
            queued: AtomicUsize::new(0),
            started: Instant::now(),
            closing: CancellationToken::new(),
            workers: TaskTracker::new(),
            metrics: Metrics::new(),
            sandbox_check: tokio::sync::Mutex::new(None),
            policy_watcher: std::sync::Mutex::new(None),
            egress: EgressState::default(),
        })
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn policy_revision(&self) -> String {
        self.policy.revision()
    }

    /// Keeps the policy directory watcher alive as long as the gateway.
    pub fn keep_policy_watcher(&self, watcher: Option<mcp_policy::PolicyWatcher>) {
        *self
            .policy_watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = watcher;
    }

    /// The policy service, for reloads (SIGHUP) and its statistics.
    pub fn policy_service(&self) -> Arc<PolicyService> {
        self.policy.clone()
    }

    /// The gateway's Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics exposition (OpenMetrics text), gauges read now.
    pub fn metrics_text(&self) -> Result<String, GatewayError> {
        let running = self
            .settings
            .max_running
            .saturating_sub(self.slots.available_permits());
        let stats = self.policy.stats();
        let pool = self.sandbox.pool_stats();
        let (audit_records, audit_commits) =
            self.audit_log().map_or((0, 0), |log| log.append_stats());
        self.metrics
            .encode(&Snapshot {
                running,
                queued: self.queued.load(Ordering::Relaxed),
                slots: self.settings.max_running,
                queue_capacity: self.settings.max_queued,
                policy_revision: &self.policy.revision(),
                policy: stats,
                pool_runs: pool.pooled_runs,
                pool_cold_runs: pool.cold_runs,
                pool_ready: pool.ready,
                audit_records,
                audit_commits,
            })
            .map_err(|_| GatewayError::Internal {
                what: "cannot encode metrics".to_owned(),
            })
    }

    /// Whether the store answers, the sandbox starts and a policy set is
    /// loaded. The sandbox check starts a real sandbox, so its answer is
    /// reused for [`SANDBOX_CHECK_TTL`].
    pub async fn readiness(&self) -> Readiness {
        let store = match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                warn!(error = %e, "readiness: store ping failed");
                Err("store unavailable; see the gateway log".to_owned())
            }
            Err(_) => {
                warn!("readiness: store ping timed out");
                Err("store did not answer in time".to_owned())
            }
        };
        let sandbox = {
            let mut cached = self.sandbox_check.lock().await;
            match &*cached {
                Some((at, r)) if at.elapsed() < SANDBOX_CHECK_TTL => r.clone(),
                _ => {
                    let r = match tokio::time::timeout(READY_TIMEOUT, self.sandbox.check()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => {
                            warn!(error = %e, "readiness: sandbox check failed");
                            Err("sandbox unavailable; see the gateway log".to_owned())
                        }
                        Err(_) => {
                            warn!("readiness: sandbox check timed out");
                            Err("sandbox did not start in time".to_owned())
                        }
                    };
                    *cached = Some((Instant::now(), r.clone()));
                    r
                }
            }
        };
        Readiness {
            store,
            sandbox,
            policy_revision: self.policy.revision(),
            accepting: !self.closing.is_cancelled(),
        }
    }

    /// Sets `[secrets]` (once, at start-up).
    pub fn set_secrets(&self, settings: SecretsSettings) {
        let _ = self.audit.secrets.set(settings);
    }

    /// Stops taking work, lets running tasks finish for `grace`, then
    /// cancels the rest and waits until every task's end is stored.
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.cancel();
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait())
            .await
            .is_err()
        {
            warn!(
                running = self.live.len(),
                "grace period over; cancelling running tasks"
            );
            self.live.cancel_all("gateway shutting down");
            self.workers.wait().await;
        }
        self.audit_shutdown().await;
    }
}
