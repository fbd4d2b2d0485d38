//! Everything the pipeline writes about a request before and after it
//! runs: the decision log (`record_decision`), the audit trail (`audit`,
//! one record per request and per task end, see [`crate::audit`]), the
//! decision, its audit record and the task it creates all or nothing
//! (`record_decision_audited`), a task's states and its end
//! (`finish_audited`). Every write is timed
//! (`mcp_store_write_duration_seconds{op}`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_audit::{AuditEvent, DecisionSummary};
use mcp_core::redact::Redactor;
use mcp_core::{Decision, ObligationSet, TaskId, TaskKind, TaskRecord, TaskResult, TaskState, now};
use mcp_store::{AuditLog, DecisionDetails, DecisionRecord, StoreError, StoreWrite};
use time::OffsetDateTime;
use tracing::{Instrument, error, info_span};

use crate::audit::{AuditEntry, excerpt, input_sha256, now_ms, outcome_of};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::plan::{Caller, TaskPlan};

/// One decision as the pipeline writes it to the decision log: who asked,
/// what kind of request (`command`, `file`, `network`, `approval`), a short
/// summary, the decision and the task it concerns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecisionEntry<'a> {
    pub caller: &'a Caller,
    pub kind: &'static str,
    pub summary: &'a str,
    pub decision: &'a Decision,
    pub task_id: Option<TaskId>,
}

impl DecisionEntry<'_> {
    /// The decision log's row.
    fn record(&self) -> DecisionRecord {
        DecisionRecord {
            id: self.caller.request_id,
            at: now(),
            tenant: self.caller.principal.tenant.clone(),
            principal: self.caller.principal.id.clone(),
            kind: self.kind.to_owned(),
            summary: self.summary.to_owned(),
            allow: self.decision.allow,
            deny_reasons: self.decision.deny_reasons.clone(),
            policy_revision: self.decision.policy_revision.clone(),
            task_id: self.task_id,
        }
    }
}

/// A task's end as it is stored: its outcome, and the SHA-256 of its
/// output as produced (the audit record's; the stored output is redacted).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskEnd<'a> {
    pub id: TaskId,
    pub principal: &'a str,
    pub tenant: &'a str,
    pub state: TaskState,
    pub result: Option<&'a Arc<TaskResult>>,
    pub reason: Option<&'a str>,
    pub output_sha256: Option<&'a str>,
}

impl Gateway {
    /// Writes one decision to the decision log; the request is refused when
    /// it cannot be written.
    pub(crate) async fn record_decision(
        &self,
        entry: DecisionEntry<'_>,
        details: &DecisionDetails,
    ) -> Result<(), GatewayError> {
        let rec = entry.record();
        let written = self
            .timed_write(
                "record_decision",
                self.store
                    .record_decision_with(&rec, details)
                    .instrument(info_span!("store.write", op = "record_decision")),
            )
            .await;
        self.decision_written(&entry, written, false)
    }

    /// The end of both ways of writing a decision: a failure refuses the
    /// request (logged with its request id), a success is counted
    /// (`mcp_policy_decisions_total`).
    fn decision_written<T>(
        &self,
        entry: &DecisionEntry<'_>,
        written: Result<T, StoreError>,
        with_audit: bool,
    ) -> Result<(), GatewayError> {
        if let Err(e) = written {
            error!(error = %e, request_id = %entry.caller.request_id, with_audit, "cannot store the decision; refusing the request");
            return Err(GatewayError::Store(e));
        }
        self.metrics.observe_decision(entry.decision.allow);
        Ok(())
    }

    /// Stores a request's decision, its audit record (`action`, `entry`)
    /// and the task it creates (`task`: an insert), all or nothing, before
    /// anything runs. One transaction when the audit log shares the store's
    /// database; otherwise decision, audit record and task one after the
    /// other, stopping at the first that fails. The request is refused when
    /// any of them cannot be stored.
    pub(crate) async fn record_decision_audited(
        &self,
        decided: DecisionEntry<'_>,
        details: &Arc<DecisionDetails>,
        audit: (&str, AuditEntry<'_>),
        task: Option<StoreWrite>,
    ) -> Result<(), GatewayError> {
        let (action, entry) = audit;
        let caller = decided.caller;
        let Some(log) = self.shared_audit_log() else {
            self.record_decision(decided, details).await?;
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
            record: decided.record(),
            details: Arc::clone(details),
        }];
        writes.extend(task);
        let event = self.audit_event(caller, action, entry);
        let written = self
            .timed_write(
                "audited_decision",
                log.append_with(event, writes)
                    .instrument(info_span!("store.write", op = "audited_decision")),
            )
            .await;
        self.decision_written(&decided, written, true)
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
    pub(crate) async fn set_state(&self, id: TaskId, state: TaskState) -> Option<OffsetDateTime> {
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

    /// The record of `plan`'s task, created now in `state`, owned by this
    /// replica.
    pub(crate) fn new_record(&self, plan: &TaskPlan, state: TaskState) -> TaskRecord {
        let mut metadata = plan.request.metadata.clone();
        // Links the stored task to the trace of the request that created it.
        if let Some(tp) = crate::trace::current_traceparent() {
            metadata.insert("traceparent".to_owned(), tp);
        }
        TaskRecord {
            id: plan.id,
            kind: TaskKind::Command,
            state,
            tenant: plan.caller.principal.tenant.clone(),
            principal: plan.caller.principal.id.clone(),
            command: plan.argv0.clone(),
            args: plan.request.args.clone(),
            profile: Some(plan.profile.clone()),
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

    /// Sets the audit log (once, at start-up, before serving).
    pub fn set_audit_log(&self, log: Option<Arc<AuditLog>>) {
        if let Some(log) = log {
            let _ = self.audit.shared.set(self.store.shares_database(&log));
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

    /// The record of a command's decision, written before anything runs:
    /// `line` and `input_sha256` are [`exec_line`]'s.
    pub(crate) fn exec_entry(
        decision: &Decision,
        id: TaskId,
        (line, input_sha256): (String, String),
    ) -> (&'static str, AuditEntry<'_>) {
        let entry = AuditEntry {
            decision: Some(decision),
            task_id: decision.allow.then(|| id.to_string()),
            command: Some(line),
            input_sha256: Some(input_sha256),
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
    fn task_end_event(end: &TaskEnd<'_>) -> AuditEvent {
        let outcome = match end.result {
            Some(r) if end.state == TaskState::Completed => format!("completed:{}", r.exit_code),
            _ => end.state.as_str().to_owned(),
        };
        AuditEvent {
            at_ms: now_ms(),
            request_id: end.id.to_string(),
            trace_id: None,
            principal: end.principal.to_owned(),
            tenant: end.tenant.to_owned(),
            action: "task_end".to_owned(),
            decision: None,
            task_id: Some(end.id.to_string()),
            command: None,
            input_sha256: None,
            output_sha256: end.output_sha256.map(str::to_owned),
            outcome,
            latency_us: end
                .result
                .map_or(0, |r| r.execution_time_ms.saturating_mul(1000)),
        }
    }

    /// Stores a task's end (`finish`) and its audit record: in one
    /// transaction when the audit log shares the store's database, else
    /// (or when that transaction fails) the end and then the record, each
    /// retried, because the task has already run. Answers the completion
    /// time stored, `None` when the end could not be stored. A record that
    /// cannot be appended is logged (it is then missing, which `audit
    /// verify` cannot see; the task row still is in the store).
    pub(crate) async fn finish_audited(&self, end: TaskEnd<'_>) -> Option<OffsetDateTime> {
        let TaskEnd {
            id, state, reason, ..
        } = end;
        let shared_result = end.result;
        let result = end.result.map(|r| &**r);
        let event = Self::task_end_event(&end);
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
    pub(crate) fn task_redactor(&self, obligations: &ObligationSet) -> Result<Redactor, String> {
        let mut r = self.redactor();
        if obligations.redact.is_empty() {
            return Ok(r);
        }
        let mut compiled = Vec::with_capacity(obligations.redact.len());
        for p in &obligations.redact {
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
