//! The request pipeline: validate → decide → record → sandbox → store.
//!
//! It knows nothing about gRPC, HTTP or MCP: every front door turns its wire
//! request into a domain request plus a [`Caller`] and calls a method here.
//! Invariants:
//! - nothing runs unless the policy allowed it and the decision was stored;
//! - a failure of the policy engine, the store or the sandbox denies or fails
//!   the request, never lets it through;
//! - every task that was accepted reaches a terminal state in the store
//!   (completed, failed, cancelled, timed out), including on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use mcp_core::{
    ChunkKind, Decision, ExecRequest, FileOp, FileRequest, OutputChunk, Principal, RequestLimits,
    TaskId, TaskKind, TaskRecord, TaskResult, TaskState, ValidExec, ValidFile, now, rfc3339,
};
use mcp_policy::{ObligationSet, PolicyInput, PolicyService, RequestContext};
use mcp_sandbox::{Ending, FileError, FilesRoot, RunSpec, Sandbox};
use mcp_store::{DecisionDetails, DecisionRecord, StoreWrite, TaskStore};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::error::GatewayError;

mod egress;
use crate::live::{LiveTask, LiveTasks};
use crate::metrics::{Metrics, Snapshot};

/// How long a sandbox self-check answers `/ready` before it is run again
/// (each check starts a real sandbox).
const SANDBOX_CHECK_TTL: Duration = Duration::from_secs(30);
/// How long a readiness probe waits for the store or the sandbox.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The profile used when the policy names none.
pub const DEFAULT_PROFILE: &str = "default";

/// Who is calling and how to refer to this request in logs and errors.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: Uuid,
    pub source: Option<String>,
    /// When the request arrived (audit latency).
    pub received: Instant,
}

impl Caller {
    pub fn new(principal: Principal, source: Option<String>) -> Self {
        Self {
            principal,
            request_id: Uuid::now_v7(),
            source,
            received: Instant::now(),
        }
    }
}

/// Filters of a task listing, as a front door received them.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// A state name (`running`, or `TASK_RUNNING`).
    pub state: Option<String>,
    /// RFC 3339; created at or after.
    pub since: Option<String>,
    /// RFC 3339; created before.
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=100; 50 when absent.
    pub limit: Option<u32>,
    /// Only tasks whose metadata holds every one of these pairs.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// What `execute` answers: the task exists and will run.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: TaskId,
    pub state: TaskState,
    pub created_at: OffsetDateTime,
}

/// Where a task's output comes from: the live buffer while it runs, the store after.
#[derive(Debug)]
pub enum Output {
    Live(Arc<LiveTask>),
    Stored(Box<TaskRecord>),
}

impl Output {
    /// Sends the task's chunks, mapped by `map`, to `tx` until its exit
    /// code, or until the client goes away (the task goes on). Shared by
    /// the gRPC stream and the REST event stream.
    pub(crate) async fn follow<T>(
        self,
        tx: tokio::sync::mpsc::Sender<T>,
        map: impl Fn(OutputChunk) -> T,
    ) {
        let live = match self {
            Output::Stored(rec) => {
                for ch in stored_chunks(*rec) {
                    if tx.send(map(ch)).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Output::Live(live) => live,
        };
        let mut cursor = crate::live::Cursor::default();
        let mut rx = live.subscribe();
        loop {
            let (chunks, done) = live.read_from(&mut cursor);
            for ch in chunks {
                if tx.send(map(ch)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            if rx.changed().await.is_err() {
                warn!("live output ended without finishing");
                return;
            }
        }
    }
}

/// The chunks a finished task replays, for every front door: its stored
/// (capped) stdout and stderr, what ended it, and its exit code.
pub(crate) fn stored_chunks(t: TaskRecord) -> Vec<OutputChunk> {
    let ts = i64::try_from(
        t.completed_at
            .unwrap_or(t.created_at)
            .unix_timestamp_nanos()
            / 1_000_000,
    )
    .unwrap_or(0);
    let mut out = Vec::new();
    let mut push = |kind, data: Vec<u8>| {
        if !data.is_empty() {
            out.push(OutputChunk {
                kind,
                data,
                timestamp_ms: ts,
            });
        }
    };
    let code = match t.result {
        Some(r) => {
            push(ChunkKind::Stdout, r.stdout);
            push(ChunkKind::Stderr, r.stderr);
            r.exit_code
        }
        None => -1,
    };
    if t.state != TaskState::Completed
        && let Some(reason) = t.failure_reason
    {
        push(ChunkKind::Event, reason.into_bytes());
    }
    push(ChunkKind::ExitCode, code.to_string().into_bytes());
    out
}

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
    pub approval: crate::approval::ApprovalSettings,
    /// `[quotas]`: per-tenant quotas, the idempotency window.
    pub quotas: crate::quota::QuotaSettings,
}

/// The gateway's shared state; one per process, shared by all front doors.
#[derive(Debug)]
pub struct Gateway {
    policy: Arc<PolicyService>,
    sandbox: Sandbox,
    files: FilesRoot,
    store: Arc<dyn TaskStore>,
    settings: PipelineSettings,
    live: LiveTasks,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    started: Instant,
    closing: CancellationToken,
    workers: TaskTracker,
    metrics: Metrics,
    sandbox_check: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Watches the policy directory for the gateway's lifetime.
    policy_watcher: std::sync::Mutex<Option<mcp_policy::PolicyWatcher>>,
    /// Egress proxies of restricted-network tasks (`pipeline::egress`).
    egress: egress::EgressState,
    /// Per-tenant quota ledger (`quota`).
    quotas: Arc<crate::quota::Quotas>,
    /// The audit log and redaction rules (`audit`).
    pub(crate) audit: crate::audit::AuditSlot,
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
            quotas: crate::quota::Quotas::new(settings.quotas.clone()),
            audit: crate::audit::AuditSlot::default(),
            settings,
            live: LiveTasks::default(),
            queued: AtomicUsize::new(0),
            started: Instant::now(),
            closing: CancellationToken::new(),
            workers: TaskTracker::new(),
            metrics: Metrics::new(),
            sandbox_check: tokio::sync::Mutex::new(None),
            policy_watcher: std::sync::Mutex::new(None),
            egress: egress::EgressState::default(),
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

    /// Marks tasks this replica left unfinished (it died while they ran) as
    /// failed with reason `interrupted`. Run once at start-up.
    pub async fn recover(&self) -> Result<u64, GatewayError> {
        let n = self
            .store
            .mark_interrupted(&self.settings.replica_id, now())
            .await
            .map_err(GatewayError::Store)?;
        if n > 0 {
            warn!(
                count = n,
                "marked tasks interrupted by the previous run as failed"
            );
        }
        // Pending approvals outlive restarts; their expiry is swept from now on.
        tokio::spawn(crate::approval::sweep(
            self.store.clone(),
            self.settings.approval.sweep_interval,
            self.closing.clone(),
        ));
        Ok(n)
    }

    /// Decides and starts a command; returns once the task is stored.
    pub async fn execute(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecRequest,
    ) -> Result<Started, GatewayError> {
        self.execute_as(caller, req, TaskId::new()).await
    }

    /// [`Gateway::execute`] with an idempotency key: a repeat by the same
    /// principal within the window answers the first request's task.
    pub async fn execute_idempotent(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecRequest,
        key: Option<String>,
    ) -> Result<Started, GatewayError> {
        crate::quota::execute_idempotent(self, caller, req, key).await
    }

    /// [`Gateway::execute`] creating the task with id `id`.
    pub(crate) async fn execute_as(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecRequest,
        id: TaskId,
    ) -> Result<Started, GatewayError> {
        if self.closing.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        let mut valid = req.validate(&self.settings.limits)?;
        let resolved = self
            .sandbox
            .resolve_command(DEFAULT_PROFILE, &valid.command);
        let input = PolicyInput::command(
            &caller.principal,
            &valid,
            resolved.as_deref(),
            &self.context(caller),
        );
        let (mut decision, details) = self.decide(input);
        // Shared with the decision log's write, not copied.
        let details = Arc::new(details);
        let profile = decision
            .obligations
            .profile
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
        let mut argv0 = resolved.clone();
        if decision.allow {
            if self.sandbox.profiles().get(&profile).is_none() {
                decision =
                    self.fail_closed(format!("policy chose unknown sandbox profile {profile:?}"));
            } else if profile != DEFAULT_PROFILE {
                // What policy approved must be what runs: the command has to
                // resolve to the same binary in the chosen profile.
                argv0 = self.sandbox.resolve_command(&profile, &valid.command);
                if argv0 != resolved {
                    decision = self.fail_closed(format!(
                        "command {:?} resolves differently in profile {profile:?}",
                        valid.command
                    ));
                }
            }
        }
        // Obligations the pipeline enforces beyond the profile; a malformed
        // one fails closed before anything is recorded as allowed.
        let obligations = crate::quota::Enforced::read(&details);
        if decision.allow
            && let Err(reason) = &obligations
        {
            decision = self.fail_closed(reason.clone());
        }
        let mut redactor = self.task_redactor(&details).unwrap_or_else(|reason| {
            if decision.allow {
                decision = self.fail_closed(reason);
            }
            self.redactor()
        });
        // Secret values are read only once policy allowed them, and never
        // enter `valid` before the task is stored (see `secrets`).
        let mut secret_env = std::collections::BTreeMap::new();
        if decision.allow {
            match self.resolve_secrets(&valid.env, &mut redactor).await {
                Ok(v) => secret_env = v,
                Err(reason) => decision = self.fail_closed(reason),
            }
        }
        // Admission (limits, rate, CPU budget, approval, a slot) is decided
        // before anything is stored, so that the decision, its audit record
        // and the task it creates are stored together; a denial or a
        // refusal is stored with the decision alone, then answered.
        let admitted = match argv0.as_deref() {
            _ if !decision.allow => Err(GatewayError::Denied {
                reasons: decision.deny_reasons.clone(),
            }),
            // The policy allowed a command that does not resolve; nothing can run.
            None => Err(GatewayError::Denied {
                reasons: vec![format!(
                    "command {:?} was not found in the sandbox",
                    valid.command
                )],
            }),
            Some(argv0) => crate::quota::admit(
                self,
                caller,
                id,
                &mut valid,
                obligations.unwrap_or_default(),
                &decision,
                &details,
                &profile,
                argv0,
            )
            .await
            .and_then(|a| match a {
                crate::quota::Admission::Run(permit) => self.check_queue().map(|()| {
                    let record =
                        self.new_record(id, caller, TaskState::Created, argv0, &profile, &valid);
                    (Some(permit), record, None)
                }),
                crate::quota::Admission::Pending { task, approval } => {
                    Ok((None, *task, Some(approval)))
                }
            }),
        };
        let write = match &admitted {
            Ok((_, task, None)) => Some(StoreWrite::InsertTask(task.clone())),
            Ok((_, task, Some(approval))) => Some(StoreWrite::InsertPending {
                task: task.clone(),
                approval: approval.clone(),
            }),
            Err(_) => None,
        };
        let accepted = Instant::now();
        // A task that runs now is launched while it is being stored: its
        // sandbox is set up meanwhile, and its command waits for the gate,
        // which opens once the decision, its audit record and the task are
        // on disk, and stays shut if they cannot be stored (then nothing
        // ran and the worker writes nothing). The commit's fsync is off the
        // task's path instead of before it.
        let launched = admitted.map(|(permit, record, _)| {
            let created_at = record.created_at;
            let Some(permit) = permit else {
                return (None, created_at);
            };
            // Registered before it is stored, so a task visible in the
            // store is either live here or finished.
            let live = self.live.register(id);
            live.set_redactor(redactor);
            // The record's command is the resolved binary that was approved.
            let argv0 = record.command.clone();
            live.set_record(record);
            let mut run = valid.clone();
            run.env.extend(secret_env);
            let spec = run_spec(id, caller, profile.clone(), argv0, run);
            let (open, opened) = tokio::sync::oneshot::channel();
            self.launch(
                spec,
                caller,
                &details.obligations,
                live,
                accepted,
                permit,
                Some(opened),
            );
            (Some(open), created_at)
        });
        let (open, launched) = match launched {
            Ok((open, created_at)) => {
                let runs = open.is_some();
                (open, Ok((runs, created_at)))
            }
            Err(e) => (None, Err(e)),
        };
        // The commit, and the gate it opens or shuts, run to their end even
        // if this request is dropped meanwhile (a client's deadline, a reset
        // stream): a task stored while its gate stayed shut would stay
        // created, with no worker, until the next start.
        let commit = {
            let gateway = self.clone();
            let caller = caller.clone();
            tokio::spawn(
                async move {
                    let audit_entry = Self::exec_entry(&decision, id, &valid, argv0.as_deref());
                    let stored = gateway
                        .record_decision_audited(
                            &caller,
                            "command",
                            &valid.command,
                            &decision,
                            &details,
                            decision.allow.then_some(id),
                            audit_entry,
                            write,
                        )
                        .await;
                    if let Some(open) = open {
                        let _ = open.send(stored.is_ok());
                        if stored.is_err() {
                            gateway.live.remove(id);
                        }
                    }
                    (stored, decision)
                }
                .in_current_span(),
            )
        };
        // Only a panic ends the spawned commit early; its gate's sender is
        // dropped with it, which shuts the gate.
        let (stored, decision) = commit.await.map_err(|e| GatewayError::Internal {
            what: format!("the commit of task {id} failed: {e}"),
        })?;
        match launched {
            Ok((true, created_at)) => stored.map(|()| Started {
                id,
                state: TaskState::Created,
                created_at,
            }),
            Ok((false, created_at)) => stored.map(|()| {
                info!(task_id = %id, request_id = %caller.request_id, "task waits for approval");
                Started {
                    id,
                    state: TaskState::PendingApproval,
                    created_at,
                }
            }),
            Err(e) => {
                stored?;
                if !decision.allow {
                    info!(request_id = %caller.request_id, "command denied");
                    // Reasons can quote argv, which stays out of info-level logs.
                    debug!(request_id = %caller.request_id, reasons = ?decision.deny_reasons, "deny reasons");
                }
                Err(e)
            }
        }
    }

    /// Like [`Gateway::execute`], but answers when the task has finished.
    pub async fn run(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecRequest,
    ) -> Result<TaskRecord, GatewayError> {
        let started = self.execute(caller, req).await?;
        if let Some(live) = self.live.get(started.id) {
            live.wait_done().await;
            // The worker's copy of what it stored, when it stored the end:
            // the same record a read would return, without the read.
            if let Some(record) = live.stored_record() {
                return Ok(record);
            }
        }
        self.lookup(caller, &started.id.to_string()).await
    }

    pub async fn status(&self, caller: &Caller, id: &str) -> Result<TaskRecord, GatewayError> {
        let answer = self.lookup(caller, id).await;
        self.audit_answer(caller, "status", Some(id), answer).await
    }

    /// [`Gateway::status`] without an audit record, for the pipeline's own looks.
    pub(crate) async fn lookup(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<TaskRecord, GatewayError> {
        self.status_in(&caller.principal.tenant, id.parse()?).await
    }

    /// One page of the caller's tenant's tasks, newest first, and the cursor
    /// of the next page. Never another tenant's tasks.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: ListFilter,
    ) -> Result<(Vec<TaskRecord>, Option<TaskId>), GatewayError> {
        let answer = self.list_tasks(caller, filter).await;
        self.audit_answer(caller, "list", None, answer).await
    }

    async fn list_tasks(
        &self,
        caller: &Caller,
        filter: ListFilter,
    ) -> Result<(Vec<TaskRecord>, Option<TaskId>), GatewayError> {
        let bad = |field: &str, reason: String| GatewayError::MalformedRequest {
            field: Some(field.to_owned()),
            reason,
        };
        let state = match filter.state.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let name = s.trim_start_matches("TASK_").to_ascii_lowercase();
                Some(name.parse::<TaskState>().map_err(|e| bad("status", e))?)
            }
        };
        let time = |field: &str, v: Option<&str>| -> Result<Option<OffsetDateTime>, GatewayError> {
            v.filter(|v| !v.is_empty())
                .map(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| bad(field, format!("{v:?} is not an RFC 3339 time")))
                })
                .transpose()
        };
        let limit = filter.limit.unwrap_or(50);
        if !(1..=mcp_store::MAX_TASK_PAGE).contains(&limit) {
            return Err(bad(
                "limit",
                format!("{limit} is not between 1 and {}", mcp_store::MAX_TASK_PAGE),
            ));
        }
        let query = mcp_store::TaskQuery {
            tenant: caller.principal.tenant.clone(),
            state,
            since: time("since", filter.since.as_deref())?,
            until: time("until", filter.until.as_deref())?,
            before: filter
                .cursor
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(str::parse::<TaskId>)
                .transpose()?,
            limit,
            metadata: filter.metadata,
        };
        let tasks = self
            .store
            .list_tasks(&query)
            .await
            .map_err(GatewayError::Store)?;
        let next = (tasks.len() == limit as usize)
            .then(|| tasks.last().map(|t| t.id))
            .flatten();
        Ok((tasks, next))
    }

    /// Cancels a queued or running task and answers with its final record.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<TaskRecord, GatewayError> {
        let answer = self.cancel_task(caller, id).await;
        self.audit_answer(caller, "cancel", Some(id), answer).await
    }

    async fn cancel_task(&self, caller: &Caller, id: &str) -> Result<TaskRecord, GatewayError> {
        let rec = self.lookup(caller, id).await?;
        if rec.state.is_terminal() {
            return Err(GatewayError::TaskFinished {
                id: rec.id,
                state: rec.state,
            });
        }
        if rec.state == TaskState::PendingApproval {
            // Nothing runs yet: the requester (or anyone of the tenant who
            // may cancel) ends the wait.
            let done = self
                .store
                .finish_pending(
                    &caller.principal.tenant,
                    rec.id,
                    TaskState::Cancelled,
                    now(),
                    "cancelled by client while pending approval",
                    None,
                )
                .await
                .map_err(GatewayError::Store)?;
            if done {
                return self.lookup(caller, id).await;
            }
            let again = self.lookup(caller, id).await?;
            if again.state.is_terminal() {
                return Err(GatewayError::TaskFinished {
                    id: again.id,
                    state: again.state,
                });
            }
            // It was approved meanwhile: cancel it like any running task.
        }
        let Some(live) = self.live.get(rec.id) else {
            // It finished between the two looks, or another replica runs it.
            let again = self.lookup(caller, id).await?;
            return if again.state.is_terminal() {
                Err(GatewayError::TaskFinished {
                    id: again.id,
                    state: again.state,
                })
            } else {
                Err(GatewayError::Unsupported {
                    what: format!("cancelling a task run by replica {:?}", again.owner),
                })
            };
        };
        info!(task_id = %rec.id, request_id = %caller.request_id, "cancel requested");
        live.cancel("cancelled by client");
        live.wait_done().await;
        self.lookup(caller, id).await
    }

    /// The output of a task the caller may see.
    pub async fn output(&self, caller: &Caller, id: &str) -> Result<Output, GatewayError> {
        let answer = self.open_output(caller, id).await;
        self.audit_answer(caller, "output", Some(id), answer).await
    }

    async fn open_output(&self, caller: &Caller, id: &str) -> Result<Output, GatewayError> {
        let rec = self.lookup(caller, id).await?;
        if !rec.state.is_terminal()
            && let Some(live) = self.live.get(rec.id)
        {
            return Ok(Output::Live(live));
        }
        if rec.state.is_terminal() {
            return Ok(Output::Stored(Box::new(rec)));
        }
        // It finished while we looked: read the final record.
        let rec = self.lookup(caller, id).await?;
        Ok(Output::Stored(Box::new(rec)))
    }

    pub async fn read_file(
        &self,
        caller: &Caller,
        path: &str,
    ) -> Result<(String, Vec<u8>), GatewayError> {
        let valid = self
            .decide_file(caller, path, FileOp::Read, 0, 0, false)
            .await?;
        let content = self
            .files
            .read(&caller.principal.tenant, &valid)
            .await
            .map_err(file_error)?;
        Ok((valid.path, content))
    }

    pub async fn write_file(
        &self,
        caller: &Caller,
        path: &str,
        content: &[u8],
        create_dirs: bool,
        mode: u32,
    ) -> Result<(String, u64), GatewayError> {
        let valid = self
            .decide_file(caller, path, FileOp::Write, content.len(), mode, false)
            .await?;
        let n = self
            .files
            .write(&caller.principal.tenant, &valid, content, create_dirs)
            .await
            .map_err(file_error)?;
        Ok((valid.path, n))
    }

    pub async fn delete_file(
        &self,
        caller: &Caller,
        path: &str,
        recursive: bool,
    ) -> Result<String, GatewayError> {
        let valid = self
            .decide_file(caller, path, FileOp::Delete, 0, 0, recursive)
            .await?;
        self.files
            .delete(&caller.principal.tenant, &valid)
            .await
            .map_err(file_error)?;
        Ok(valid.path)
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

    async fn decide_file(
        &self,
        caller: &Caller,
        path: &str,
        op: FileOp,
        content_len: usize,
        mode: u32,
        recursive: bool,
    ) -> Result<ValidFile, GatewayError> {
        let valid = FileRequest {
            path: path.to_owned(),
            op,
            content_len,
            mode,
            recursive,
        }
        .validate(&self.settings.limits)?;
        let input = PolicyInput::file(&caller.principal, &valid, &self.context(caller));
        let (decision, details) = self.decide(input);
        let details = Arc::new(details);
        let summary = format!("{} {}", op.as_str(), valid.path);
        self.record_decision_audited(
            caller,
            "file",
            &summary,
            &decision,
            &details,
            None,
            Self::file_entry(op, &decision, &valid),
            None,
        )
        .await?;
        if !decision.allow {
            return Err(GatewayError::Denied {
                reasons: decision.deny_reasons,
            });
        }
        Ok(valid)
    }

    fn context(&self, caller: &Caller) -> RequestContext {
        RequestContext {
            time: rfc3339(now()),
            source: caller.source.clone(),
            request_id: caller.request_id.to_string(),
        }
    }

    /// Evaluates `input` with the active policy set (and the shadow set,
    /// if configured) and returns the decision with what the decision log
    /// keeps of it: the masked input, latency, profile, obligations.
    fn decide(&self, input: PolicyInput) -> (Decision, DecisionDetails) {
        let (decision, details, _) = self.decide_typed(input);
        (decision, details)
    }

    /// [`Gateway::decide`], with the decision's obligations typed as well
    /// (the egress proxy reads a connection's private grants from them);
    /// empty when the decision failed closed.
    fn decide_typed(&self, input: PolicyInput) -> (Decision, DecisionDetails, ObligationSet) {
        let span = info_span!("policy.eval", revision = tracing::field::Empty);
        let _entered = span.enter();
        let input = input
            .with_environment(&self.settings.environment)
            .with_trace_id(crate::telemetry::current_traceparent());
        let ev = self.policy.decide(&input);
        self.metrics.observe_policy_eval(ev.latency);
        span.record("revision", ev.revision.as_str());
        let details = DecisionDetails {
            input: Some(ev.logged_input(&input)),
            latency_us: u64::try_from(ev.latency.as_micros()).unwrap_or(u64::MAX),
            profile: ev.obligations.profile.clone(),
            obligations: match serde_json::to_value(&ev.obligations) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            },
            warnings: ev.decision.warnings.clone(),
        };
        let decision = ev.decision;
        if decision.allow && !decision.obligations.unknown.is_empty() {
            // An obligation we cannot enforce makes the allow meaningless.
            return (
                self.fail_closed(format!(
                    "policy set obligations the gateway does not understand: {}",
                    decision.obligations.unknown.join(", ")
                )),
                details,
                ObligationSet::default(),
            );
        }
        (decision, details, ev.obligations)
    }

    fn fail_closed(&self, reason: String) -> Decision {
        warn!(reason = %reason, "failing closed");
        Decision::fail_closed(reason, self.policy.revision())
    }

    /// Writes one decision to the decision log; the request is refused when
    /// it cannot be written.
    pub(crate) async fn record_decision(
        &self,
        caller: &Caller,
        kind: &str,
        summary: &str,
        decision: &Decision,
        details: &DecisionDetails,
        task_id: Option<TaskId>,
    ) -> Result<(), GatewayError> {
        let rec = decision_record(caller, kind, summary, decision, task_id);
        self.timed_write(
            "record_decision",
            self.store
                .record_decision_with(&rec, details)
                .instrument(info_span!("store.write", op = "record_decision")),
        )
        .await
        .map_err(|e| {
                error!(error = %e, request_id = %caller.request_id, "cannot store decision; refusing the request");
                GatewayError::Store(e)
            })?;
        self.metrics.observe_decision(decision.allow);
        Ok(())
    }

    /// Stores a request's decision, its audit record (`action`, `entry`)
    /// and the task it creates (`task`: an insert), all or nothing, before
    /// anything runs. One transaction when the audit log shares the store's
    /// database; otherwise decision, audit record and task one after the
    /// other, stopping at the first that fails. The request is refused when
    /// any of them cannot be stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_decision_audited(
        &self,
        caller: &Caller,
        kind: &str,
        summary: &str,
        decision: &Decision,
        details: &Arc<DecisionDetails>,
        task_id: Option<TaskId>,
        audit: (&str, crate::audit::AuditEntry<'_>),
        task: Option<StoreWrite>,
    ) -> Result<(), GatewayError> {
        let (action, entry) = audit;
        let Some(log) = self.shared_audit_log() else {
            self.record_decision(caller, kind, summary, decision, details, task_id)
                .await?;
            self.audit(caller, action, entry).await?;
            if let Some(w) = &task {
                let op = match w {
                    StoreWrite::InsertTask(_) => "insert_task",
                    _ => "insert_pending",
                };
                self.timed_write(op, self.store.apply(w))
                    .await
                    .map_err(GatewayError::Store)?;
            }
            return Ok(());
        };
        let mut writes = vec![StoreWrite::Decision {
            record: decision_record(caller, kind, summary, decision, task_id),
            details: Arc::clone(details),
        }];
        writes.extend(task);
        let event = self.audit_event(caller, action, entry);
        self.timed_write(
            "audited_decision",
            log.append_with(event, writes)
                .instrument(info_span!("store.write", op = "audited_decision")),
        )
        .await
        .map_err(|e| {
            error!(error = %e, request_id = %caller.request_id, "cannot store the decision with its audit record; refusing the request");
            GatewayError::Store(e)
        })?;
        self.metrics.observe_decision(decision.allow);
        Ok(())
    }

    /// Runs one accepted task to its end and stores the outcome. With a
    /// `gate` (see [`Gateway::launch`]) its sandbox starts at once and its
    /// command waits for it; a shut gate ends the worker without a trace.
    #[allow(clippy::too_many_arguments)]
    async fn work(
        self: Arc<Self>,
        id: TaskId,
        principal: String,
        spec: RunSpec,
        live: Arc<LiveTask>,
        accepted: Instant,
        quota_permit: crate::quota::QuotaPermit,
        gate: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) {
        let tenant = spec.tenant.clone();
        let cancel = live.cancel_token();
        let gate: Option<Gate> = gate.map(|g| g.map(|r| r.unwrap_or(false)).boxed().shared());
        let shut = || {
            // Not stored: nothing to write, nothing ran.
            debug!("the task's approval was not stored; its sandbox is discarded");
            self.egress.forget(id);
        };
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // Queued is a stored state: only for a stored task.
                if let Some(g) = &gate
                    && !g.clone().await
                {
                    return shut();
                }
                self.queued.fetch_add(1, Ordering::Relaxed);
                self.set_state(id, TaskState::Queued).await;
                let p = tokio::select! {
                    p = self.slots.clone().acquire_owned() => p.ok(),
                    () = cancel.cancelled() => None,
                };
                self.queued.fetch_sub(1, Ordering::Relaxed);
                p
            }
        };
        if permit.is_none() {
            // Never ran, so `run_sandbox` will not consume the registration.
            self.egress.forget(id);
        }
        let (state, result, reason) = match permit {
            None => (
                TaskState::Cancelled,
                None,
                live.cancel_reason()
                    .or(Some("cancelled while queued".to_owned())),
            ),
            Some(_permit) => {
                let timeout = spec.timeout;
                let on_output = |chunk: OutputChunk| live.push(chunk);
                // The `running` write overlaps the sandbox start rather than
                // preceding it (one store write less on the task's path). Both
                // end before `finish`, and the store never moves a task back,
                // so the states stay ordered. mcp-sandbox opens the
                // `sandbox.run` span itself.
                let opened = gate.clone();
                let running = async {
                    let stored = match opened {
                        Some(g) => g.await,
                        None => true,
                    };
                    match stored {
                        true => self.set_state(id, TaskState::Running).await,
                        false => None,
                    }
                };
                let (running, outcome) =
                    tokio::join!(running, self.run_sandbox(spec, gate, &on_output, cancel));
                if let Some(at) = running {
                    live.record_started(at);
                }
                match outcome {
                    Ok(None) => return shut(),
                    Ok(Some(o)) => {
                        let (state, reason) = match o.ending {
                            Ending::Exited(_) => (TaskState::Completed, None),
                            Ending::Signaled(sig) => {
                                (TaskState::Failed, Some(format!("killed by signal {sig}")))
                            }
                            Ending::TimedOut => (
                                TaskState::TimedOut,
                                Some(format!("timed out after {}s", timeout.as_secs())),
                            ),
                            Ending::Cancelled => (
                                TaskState::Cancelled,
                                live.cancel_reason().or(Some("cancelled".to_owned())),
                            ),
                            Ending::CpuTimeLimit => (
                                TaskState::Failed,
                                Some("killed at its CPU-time limit".to_owned()),
                            ),
                            Ending::OutOfMemory => (
                                TaskState::Failed,
                                Some("killed at its memory limit (out of memory)".to_owned()),
                            ),
                        };
                        (state, Some(o.result), reason)
                    }
                    Err(e) => {
                        error!(error = %e, "sandbox failed");
                        (
                            TaskState::Failed,
                            None,
                            Some(
                                "the sandbox could not run the command; see the gateway log"
                                    .to_owned(),
                            ),
                        )
                    }
                }
            }
        };
        if let Some(r) = &reason
            && state != TaskState::Completed
        {
            live.push(OutputChunk::new(ChunkKind::Event, r.clone().into_bytes()));
        }
        // The audit keeps the hash of the output as produced; the store
        // and every reader get it redacted.
        let output_sha256 = result.as_ref().map(crate::audit::output_sha256);
        // Shared with the store write, not copied; ours again once it is done.
        let result = result.map(|r| Arc::new(live.redact_result(r)));
        let stored = self
            .finish_audited(
                id,
                &principal,
                &tenant,
                state,
                result.as_ref(),
                reason.as_deref(),
                output_sha256,
            )
            .await;
        self.metrics
            .observe_task(state.as_str(), accepted.elapsed());
        let code = result.as_ref().map_or(-1, |r| r.exit_code);
        if let Some(completed_at) = stored {
            live.record_finished(
                state,
                completed_at,
                result.map(Arc::unwrap_or_clone),
                reason,
            );
        }
        live.push(OutputChunk::new(
            ChunkKind::ExitCode,
            code.to_string().into_bytes(),
        ));
        live.finish();
        self.live.remove(id);
        drop(quota_permit);
        crate::quota::after_task(&self, &tenant).await;
        debug!(state = state.as_str(), exit_code = code, "task finished");
    }

    /// Awaits one store write and records its duration
    /// (`mcp_store_write_duration_seconds{op}`).
    pub(crate) async fn timed_write<T>(
        &self,
        op: &'static str,
        write: impl Future<Output = T>,
    ) -> T {
        let t = Instant::now();
        let out = write.await;
        self.metrics.observe_store_write(op, t.elapsed());
        out
    }

    /// Moves a task forward; answers the time stored, or `None` (logged)
    /// when the store refused or failed.
    async fn set_state(&self, id: TaskId, state: TaskState) -> Option<OffsetDateTime> {
        let at = now();
        match self
            .timed_write(
                "set_state",
                self.store
                    .set_state(id, state, at)
                    .instrument(info_span!("store.write", op = "set_state")),
            )
            .await
        {
            Ok(()) => Some(at),
            Err(e) => {
                error!(error = %e, task_id = %id, state = state.as_str(), "cannot store task state");
                None
            }
        }
    }

    /// Stores a task's end. Retries, because a lost final state would leave
    /// a task looking like it runs forever (it is reaped as interrupted at
    /// the next start if every attempt fails). Answers the completion time
    /// stored, or `None` when no attempt succeeded.
    pub(crate) async fn finish(
        &self,
        id: TaskId,
        state: TaskState,
        result: Option<&TaskResult>,
        reason: Option<&str>,
    ) -> Option<OffsetDateTime> {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            let at = now();
            match self
                .timed_write(
                    "finish",
                    self.store
                        .finish(id, state, at, result, reason)
                        .instrument(info_span!("store.write", op = "finish")),
                )
                .await
            {
                Ok(()) => return Some(at),
                Err(e) => {
                    error!(error = %e, task_id = %id, attempt, "cannot store the end of a task");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        None
    }
}

/// What `approval` and `quota` use of the pipeline.
impl Gateway {
    pub(crate) fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    pub(crate) fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub(crate) fn approval_settings(&self) -> &crate::approval::ApprovalSettings {
        &self.settings.approval
    }

    pub(crate) fn quotas(&self) -> &Arc<crate::quota::Quotas> {
        &self.quotas
    }

    /// A task of `tenant` (for callers whose tenant is not the caller's
    /// principal, e.g. an approver with a token).
    pub(crate) async fn status_in(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<TaskRecord, GatewayError> {
        self.store
            .get_task(tenant, id)
            .await
            .map_err(GatewayError::Store)?
            .ok_or(GatewayError::TaskNotFound { id })
    }

    /// Cancels a task running here, if it is.
    pub(crate) fn cancel_live(&self, id: TaskId, reason: &str) {
        if let Some(live) = self.live.get(id) {
            live.cancel(reason);
        }
    }

    /// Runs an approved task: takes the quota slot, moves it out of
    /// `pending_approval` (only one approval wins) and starts its worker.
    /// `Ok(false)` when it was no longer pending.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_approved(
        self: &Arc<Self>,
        requester: &Caller,
        id: TaskId,
        approver: &str,
        profile: String,
        argv0: String,
        mut valid: ValidExec,
        obligations: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, GatewayError> {
        if self.closing.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        // The decision's redact rules and the secrets it allowed, as at
        // `execute`; secret values were never stored with the pending task.
        let details = DecisionDetails {
            obligations: obligations.clone(),
            ..DecisionDetails::default()
        };
        let deny = |reason: String| GatewayError::Denied {
            reasons: vec![reason],
        };
        let mut redactor = self.task_redactor(&details).map_err(deny)?;
        let secret_env = self
            .resolve_secrets(&valid.env, &mut redactor)
            .await
            .map_err(deny)?;
        let tenant = requester.principal.tenant.clone();
        crate::quota::cpu_admit(self, &tenant, &mut valid).await?;
        let permit = self.quotas.acquire(&tenant, id)?;
        self.check_queue()?;
        let live = self.live.register(id);
        match self
            .store
            .claim_pending(&tenant, id, &self.settings.replica_id, approver, now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.live.remove(id);
                return Ok(false);
            }
            Err(e) => {
                self.live.remove(id);
                return Err(GatewayError::Store(e));
            }
        }
        live.set_redactor(redactor);
        valid.env.extend(secret_env);
        let spec = run_spec(id, requester, profile, argv0, valid);
        self.launch(
            spec,
            requester,
            obligations,
            live,
            Instant::now(),
            permit,
            None,
        );
        Ok(true)
    }

    /// The record of a new command task created now, owned by this replica.
    pub(crate) fn new_record(
        &self,
        id: TaskId,
        caller: &Caller,
        state: TaskState,
        argv0: &str,
        profile: &str,
        valid: &ValidExec,
    ) -> TaskRecord {
        let mut metadata = valid.metadata.clone();
        // Links the stored task to the trace of the request that created it.
        if let Some(tp) = crate::telemetry::current_traceparent() {
            metadata.insert("traceparent".to_owned(), tp);
        }
        TaskRecord {
            id,
            kind: TaskKind::Command,
            state,
            tenant: caller.principal.tenant.clone(),
            principal: caller.principal.id.clone(),
            command: argv0.to_owned(),
            args: valid.args.clone(),
            profile: Some(profile.to_owned()),
            // As the store keeps it, so the answers of `execute` and `run`
            // (built in memory) equal what a later read returns.
            created_at: mcp_store::stored_time(now()),
            started_at: None,
            completed_at: None,
            metadata,
            result: None,
            failure_reason: None,
            owner: self.settings.replica_id.clone(),
        }
    }

    /// Refuses a new task when every slot is busy and the queue is full.
    fn check_queue(&self) -> Result<(), GatewayError> {
        let queued = self.queued.load(Ordering::Relaxed);
        if self.slots.available_permits() == 0 && queued >= self.settings.max_queued {
            return Err(GatewayError::Overloaded { queued });
        }
        Ok(())
    }

    /// Starts the worker of a task: a stored one, or with `gate` one being
    /// stored, which runs nothing and writes nothing unless the gate opens
    /// (`true`). Restricted network: the task's connections are decided
    /// against `caller` and the decision's network obligation.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        self: &Arc<Self>,
        spec: RunSpec,
        caller: &Caller,
        obligations: &serde_json::Map<String, serde_json::Value>,
        live: Arc<LiveTask>,
        accepted: Instant,
        permit: crate::quota::QuotaPermit,
        gate: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) {
        let id = spec.task_id;
        let principal = caller.principal.id.clone();
        self.egress.register(&spec, caller, obligations);
        let this = self.clone();
        let span = info_span!("task", task_id = %id, request_id = %caller.request_id);
        self.workers.spawn(
            async move {
                this.work(id, principal, spec, live, accepted, permit, gate)
                    .await
            }
            .instrument(span),
        );
    }
}

/// The decision log's row for `decision`.
fn decision_record(
    caller: &Caller,
    kind: &str,
    summary: &str,
    decision: &Decision,
    task_id: Option<TaskId>,
) -> DecisionRecord {
    DecisionRecord {
        id: caller.request_id,
        at: now(),
        tenant: caller.principal.tenant.clone(),
        principal: caller.principal.id.clone(),
        kind: kind.to_owned(),
        summary: summary.to_owned(),
        allow: decision.allow,
        deny_reasons: decision.deny_reasons.clone(),
        policy_revision: decision.policy_revision.clone(),
        task_id,
    }
}

/// Opens (`true`) once a task launched while being stored is on disk;
/// shared by the `running` write and the sandbox.
pub(crate) type Gate = Shared<BoxFuture<'static, bool>>;

fn run_spec(id: TaskId, caller: &Caller, profile: String, argv0: String, v: ValidExec) -> RunSpec {
    let mut argv = Vec::with_capacity(v.args.len() + 1);
    argv.push(argv0);
    argv.extend(v.args);
    RunSpec {
        task_id: id,
        tenant: caller.principal.tenant.clone(),
        profile,
        argv,
        env: v.env,
        cwd: v.cwd,
        timeout: v.timeout,
        network: v.sandbox.network,
        limits: v.sandbox.limits,
        denied_paths: v.sandbox.denied_paths,
    }
}

/// Maps file-system outcomes to what a client may learn. Host paths and
/// I/O details stay in the log.
fn file_error(e: FileError) -> GatewayError {
    match e {
        FileError::NotFound { path } => GatewayError::FileNotFound { path },
        FileError::IsADirectory { path } => GatewayError::FileConflict {
            path,
            reason: "is a directory",
        },
        FileError::NotADirectory { path } => GatewayError::FileConflict {
            path,
            reason: "a parent is not a directory",
        },
        FileError::DirectoryNotEmpty { path } => GatewayError::FileConflict {
            path,
            reason: "directory is not empty; set recursive to delete it",
        },
        FileError::ParentMissing { path } => GatewayError::FileConflict {
            path,
            reason: "parent directory does not exist; set create_dirs to create it",
        },
        FileError::Escape { path } => GatewayError::PathEscapes { path },
        FileError::TooLarge { path, size, max } => GatewayError::FileTooLarge { path, size, max },
        e @ (FileError::BadTenant { .. } | FileError::Io { .. }) => {
            error!(error = %e, "file operation failed");
            GatewayError::FileIo(e)
        }
    }
}
