//! A command's way in: validate → resolve → decide → admit → record, and
//! the launch of its worker while the record is being stored; and the
//! start of an approved task, which joins the same path at admission.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use mcp_core::{ExecRequest, ObligationSet, TaskId, TaskRecord, TaskState, now};
use mcp_policy::PolicyInput;
use mcp_store::StoreWrite;
use tracing::{Instrument, debug, info};

use crate::admit::Admission;
use crate::approval::approval_obligation;
use crate::audit::exec_line;
use crate::error::GatewayError;
use crate::gateway::{DEFAULT_PROFILE, Gateway};
use crate::plan::{Caller, Started, TaskPlan};
use crate::record::DecisionEntry;
use crate::worker::{Launch, Prepared};

impl Gateway {
    /// Decides and starts a command; returns once the task is stored.
    pub async fn execute(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecRequest,
    ) -> Result<Started, GatewayError> {
        self.execute_as(caller, req, TaskId::new()).await
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
        let valid = req.validate(&self.settings.limits)?;
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
        // An approval nobody can give fails closed before anything is
        // recorded as allowed.
        if decision.allow
            && let Err(reason) = approval_obligation(&details.obligations)
        {
            decision = self.fail_closed(reason);
        }
        // Secret values are read only once policy allowed them, and never
        // enter the request before the task is stored (see `secrets`).
        let mut prepared = None;
        if decision.allow {
            match self.prepare(&details.obligations, &valid.env).await {
                Ok(p) => prepared = Some(p),
                Err(reason) => decision = self.fail_closed(reason),
            }
        }
        let summary = valid.command.clone();
        // Admission (limits, rate, CPU budget, approval, a slot) is decided
        // before anything is stored, so that the decision, its audit record
        // and the task it creates are stored together; a denial or a
        // refusal is stored with the decision alone, then answered. The
        // audit record hashes the request as admitted (clamped).
        let (admitted, audit) = match (argv0, prepared) {
            (Some(argv0), Some(prepared)) if decision.allow => {
                let mut plan = TaskPlan {
                    id,
                    caller: caller.clone(),
                    request: valid,
                    argv0,
                    profile,
                    obligations: details.obligations.clone(),
                };
                let admitted = self.admit(&mut plan, &decision).await;
                let audit = exec_line(&plan.request, Some(&plan.argv0));
                (admitted.map(|a| (plan, a, prepared)), audit)
            }
            (argv0, _) => {
                let audit = exec_line(&valid, argv0.as_deref());
                let reasons = if decision.allow {
                    // The policy allowed a command that does not resolve;
                    // nothing can run.
                    vec![format!(
                        "command {:?} was not found in the sandbox",
                        valid.command
                    )]
                } else {
                    decision.deny_reasons.clone()
                };
                (Err(GatewayError::Denied { reasons }), audit)
            }
        };
        let accepted = Instant::now();
        // A task that runs now is launched while it is being stored: its
        // sandbox is set up meanwhile, and its command waits for the gate,
        // which opens once the decision, its audit record and the task are
        // on disk, and stays shut if they cannot be stored (then nothing
        // ran and the worker writes nothing). The commit's fsync is off the
        // task's path instead of before it.
        let (write, open, launched) = match admitted {
            Ok((plan, Admission::Run(permit), prepared)) => {
                let record = self.new_record(&plan, TaskState::Created);
                let created_at = record.created_at;
                let write = StoreWrite::InsertTask(record.clone());
                // Registered before it is stored, so a task visible in the
                // store is either live here or finished.
                let live = self.live.register(id);
                live.set_record(record);
                let (open, opened) = tokio::sync::oneshot::channel();
                let launch = Launch {
                    live,
                    accepted,
                    permit,
                    gate: Some(opened),
                };
                self.start(&plan, prepared, launch);
                (Some(write), Some(open), Ok((true, created_at)))
            }
            Ok((_, Admission::Pending { task, approval }, _)) => {
                let created_at = task.created_at;
                let write = StoreWrite::InsertPending {
                    task: *task,
                    approval,
                };
                (Some(write), None, Ok((false, created_at)))
            }
            Err(e) => (None, None, Err(e)),
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
                    let entry = DecisionEntry {
                        caller: &caller,
                        kind: "command",
                        summary: &summary,
                        decision: &decision,
                        task_id: decision.allow.then_some(id),
                    };
                    let stored = gateway
                        .record_decision_audited(
                            entry,
                            &details,
                            Self::exec_entry(&decision, id, audit),
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

    /// Runs an approved task: the same admission to run as a fresh one
    /// (CPU budget, quota slot, queue), then it moves out of
    /// `pending_approval` (only one approval wins) and its worker starts.
    /// `Ok(false)` when it was no longer pending.
    pub(crate) async fn start_approved(
        self: &Arc<Self>,
        mut plan: TaskPlan,
        approver: &str,
    ) -> Result<bool, GatewayError> {
        if self.closing.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        // The decision's redact rules and the secrets it allowed, as at
        // `execute`; secret values were never stored with the pending task.
        let prepared = self
            .prepare(&plan.obligations, &plan.request.env)
            .await
            .map_err(|reason| GatewayError::Denied {
                reasons: vec![reason],
            })?;
        let permit = self.admit_run(&mut plan).await?;
        let id = plan.id;
        let tenant = &plan.caller.principal.tenant;
        let live = self.live.register(id);
        match self
            .store
            .claim_pending(tenant, id, &self.settings.replica_id, approver, now())
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
        let launch = Launch {
            live,
            accepted: Instant::now(),
            permit,
            gate: None,
        };
        self.start(&plan, prepared, launch);
        Ok(true)
    }

    /// The task's redaction rules (configured, plus the `redact`
    /// obligation) and the secrets `env` refers to, whose values join the
    /// rules; `Err` is a public reason to deny with.
    async fn prepare(
        &self,
        obligations: &ObligationSet,
        env: &BTreeMap<String, String>,
    ) -> Result<Prepared, String> {
        let mut redactor = self.task_redactor(obligations)?;
        let settings = self.audit.secrets.get().cloned().unwrap_or_default();
        let secret_env = crate::secrets::resolve(&settings, env).await?;
        for v in secret_env.values() {
            redactor.add_literal(v.as_bytes());
        }
        Ok(Prepared {
            redactor,
            secret_env,
        })
    }
}
