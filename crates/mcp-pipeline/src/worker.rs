//! The worker of an accepted task: waits for a running slot (`queued`),
//! runs the sandbox (`running`, with the task's egress proxy when its
//! network is restricted), and stores its end with the `task_end` audit
//! record; then releases the tenant's quota slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use mcp_core::redact::Redactor;
use mcp_core::{ChunkKind, OutputChunk, TaskState};
use mcp_sandbox::{Ending, RunSpec};
use tracing::{Instrument, debug, error, info_span};

use crate::audit::output_sha256;
use crate::gateway::Gateway;
use crate::live::LiveTask;
use crate::plan::TaskPlan;
use crate::quota::QuotaPermit;
use crate::record::TaskEnd;

/// What a task needs beside its plan before it can start: its redaction
/// rules (configured, the `redact` obligation, the secret values) and the
/// secret values its environment names. Resolved only once policy allowed
/// the request.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub redactor: Redactor,
    pub secret_env: BTreeMap<String, String>,
}

/// A task admitted to start: its live output (registered before the task
/// is stored, so a stored task is either live here or finished), when it
/// was accepted, its quota slot, and for a task launched while it is being
/// stored, the gate its command waits for.
#[derive(Debug)]
pub(crate) struct Launch {
    pub live: Arc<LiveTask>,
    pub accepted: Instant,
    pub permit: QuotaPermit,
    pub gate: Option<tokio::sync::oneshot::Receiver<bool>>,
}

/// Everything the worker owns.
#[derive(Debug)]
struct Worker {
    spec: RunSpec,
    principal: String,
    live: Arc<LiveTask>,
    accepted: Instant,
    quota_permit: QuotaPermit,
    gate: Option<tokio::sync::oneshot::Receiver<bool>>,
}

/// Opens (`true`) once a task launched while being stored is on disk;
/// shared by the `running` write and the sandbox.
pub(crate) type Gate = Shared<BoxFuture<'static, bool>>;

impl Gateway {
    /// Runs one accepted task to its end and stores the outcome. With a
    /// `gate` (see [`Gateway::launch`]) its sandbox starts at once and its
    /// command waits for it; a shut gate ends the worker without a trace.
    async fn work(self: Arc<Self>, run: Worker) {
        let Worker {
            spec,
            principal,
            live,
            accepted,
            quota_permit,
            gate,
        } = run;
        let id = spec.task_id;
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
        let output_sha256 = result.as_ref().map(output_sha256);
        // Shared with the store write, not copied; ours again once it is done.
        let result = result.map(|r| Arc::new(live.redact_result(r)));
        let stored = self
            .finish_audited(TaskEnd {
                id,
                principal: &principal,
                tenant: &tenant,
                state,
                result: result.as_ref(),
                reason: reason.as_deref(),
                output_sha256: output_sha256.as_deref(),
            })
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
        self.after_task(&tenant).await;
        debug!(state = state.as_str(), exit_code = code, "task finished");
    }

    /// Starts the worker of `plan`'s task, a stored one, or with `gate` one
    /// being stored, which runs nothing and writes nothing unless the gate
    /// opens (`true`). The task's output is redacted with `prepared`'s
    /// rules, and its environment gets the secret values it resolved.
    /// Restricted network: the task's connections are decided against the
    /// plan's caller and network obligation.
    pub(crate) fn start(self: &Arc<Self>, plan: &TaskPlan, prepared: Prepared, run: Launch) {
        let Prepared {
            redactor,
            secret_env,
        } = prepared;
        run.live.set_redactor(redactor);
        let spec = plan.run_spec(secret_env);
        self.egress.register(&spec, &plan.caller, &plan.obligations);
        let worker = Worker {
            spec,
            principal: plan.caller.principal.id.clone(),
            live: run.live,
            accepted: run.accepted,
            quota_permit: run.permit,
            gate: run.gate,
        };
        let this = self.clone();
        let span = info_span!("task", task_id = %plan.id, request_id = %plan.caller.request_id);
        self.workers
            .spawn(async move { this.work(worker).await }.instrument(span));
    }
}
