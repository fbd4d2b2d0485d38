//! What the steps of a request pass along: the [`Caller`], and for a
//! command that may run, its [`TaskPlan`] (the admitted request), instead
//! of long argument lists; and what `execute` answers, [`Started`].

use std::collections::BTreeMap;
use std::time::Instant;

use mcp_core::{ObligationSet, Principal, TaskId, TaskState, ValidExec};
use mcp_sandbox::RunSpec;
use time::OffsetDateTime;
use uuid::Uuid;

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

/// A command the policy allowed, on its way to a sandbox: the validated
/// request (its limits and timeout clamped by admission), the binary the
/// policy judged, the profile it runs in, the decision's obligations and
/// the caller it runs for. A fresh request and an approved one (rebuilt
/// from its [`crate::approval::StoredRun`]) are both a plan and take the
/// same path from admission on.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub id: TaskId,
    /// Whose task it is; an approved task runs as its requester.
    pub caller: Caller,
    /// As validated, then clamped; env as the client sent it (secret
    /// references, never their values).
    pub request: ValidExec,
    /// The resolved absolute path the policy judged; argv\[0\].
    pub argv0: String,
    pub profile: String,
    pub obligations: ObligationSet,
}

impl TaskPlan {
    /// What the sandbox runs: the plan, with the secret values `secret_env`
    /// added to its environment (they exist only here and in the sandbox).
    pub(crate) fn run_spec(&self, secret_env: BTreeMap<String, String>) -> RunSpec {
        let r = &self.request;
        let mut argv = Vec::with_capacity(r.args.len() + 1);
        argv.push(self.argv0.clone());
        argv.extend(r.args.iter().cloned());
        let mut env = r.env.clone();
        env.extend(secret_env);
        RunSpec {
            task_id: self.id,
            tenant: self.caller.principal.tenant.clone(),
            profile: self.profile.clone(),
            argv,
            env,
            cwd: r.cwd.clone(),
            timeout: r.timeout,
            network: r.sandbox.network,
            limits: r.sandbox.limits,
            denied_paths: r.sandbox.denied_paths.clone(),
        }
    }
}

/// What `execute` answers: the task exists and will run (or waits for
/// approval).
#[derive(Debug, Clone)]
pub struct Started {
    pub id: TaskId,
    pub state: TaskState,
    pub created_at: OffsetDateTime,
}
