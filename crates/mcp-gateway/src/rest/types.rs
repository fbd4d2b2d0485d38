//! The JSON documents of the REST API and their conversion from and to the
//! domain types. Request bodies refuse unknown fields, so a typo is a 400
//! naming the field rather than a silently ignored setting.

use std::collections::BTreeMap;

use mcp_core::{
    ExecRequest, NetworkAccess, ResourceLimits, SandboxRequest, TaskKind, TaskRecord, TaskState,
    rfc3339,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use mcp_pipeline::{Readiness, Started};

/// A command to run; the JSON twin of the gRPC `CommandRequest`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// A name looked up on the sandbox profile's `PATH`, or an absolute path
    /// inside the sandbox.
    #[schema(example = "echo")]
    pub command: String,
    #[serde(default)]
    #[schema(example = json!(["hello", "world"]))]
    pub args: Vec<String>,
    /// Environment of the command (the sandbox starts with an empty one).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to (or under) `/workspace`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Wall-clock limit in seconds; 0 or absent = the gateway's default.
    #[serde(default)]
    pub timeout_secs: u32,
    /// Free-form labels stored with the task.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub sandbox: SandboxBody,
    /// Repeats with the same key by the same principal within the
    /// configured window answer the first task instead of running again
    /// (the `Idempotency-Key` header is used when this is absent).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// What the command asks of its sandbox; policy decides whether it gets it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxBody {
    pub network: Network,
    pub limits: LimitsBody,
    pub rw_paths: Vec<String>,
    pub ro_paths: Vec<String>,
    pub denied_paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    #[default]
    None,
    Host,
    Restricted,
}

/// Limits a request asks for; 0 = the profile's. A request can only tighten
/// a profile's limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsBody {
    pub cpu_limit: f32,
    pub memory_bytes: u64,
    pub pids: u32,
    pub io_weight: u32,
}

impl From<ExecuteBody> for ExecRequest {
    fn from(b: ExecuteBody) -> Self {
        ExecRequest {
            command: b.command,
            args: b.args,
            env: b.env,
            cwd: b.cwd,
            timeout_secs: b.timeout_secs,
            metadata: b.metadata,
            sandbox: SandboxRequest {
                // As a gRPC request without `sandbox_config`: the flag is ignored.
                enabled: false,
                network: match b.sandbox.network {
                    Network::None => NetworkAccess::None,
                    Network::Host => NetworkAccess::Host,
                    Network::Restricted => NetworkAccess::Restricted,
                },
                limits: ResourceLimits {
                    cpu_limit: b.sandbox.limits.cpu_limit,
                    memory_bytes: b.sandbox.limits.memory_bytes,
                    pids: b.sandbox.limits.pids,
                    io_weight: b.sandbox.limits.io_weight,
                },
                rw_paths: b.sandbox.rw_paths,
                ro_paths: b.sandbox.ro_paths,
                denied_paths: b.sandbox.denied_paths,
            },
        }
    }
}

/// A task's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Created,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    /// Waiting for an approver (`POST /v1/tasks/{id}/approve`).
    PendingApproval,
    /// Nobody approved it in time.
    Expired,
    /// An approver rejected it.
    Rejected,
}

impl From<TaskState> for TaskStatus {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Created => TaskStatus::Created,
            TaskState::Queued => TaskStatus::Queued,
            TaskState::Running => TaskStatus::Running,
            TaskState::Completed => TaskStatus::Completed,
            TaskState::Failed => TaskStatus::Failed,
            TaskState::Cancelled => TaskStatus::Cancelled,
            TaskState::TimedOut => TaskStatus::TimedOut,
            TaskState::PendingApproval => TaskStatus::PendingApproval,
            TaskState::Expired => TaskStatus::Expired,
            TaskState::Rejected => TaskStatus::Rejected,
        }
    }
}

/// The task exists and will run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskCreated {
    /// UUIDv7.
    pub task_id: String,
    pub status: TaskStatus,
    /// RFC 3339.
    pub created_at: String,
}

impl From<Started> for TaskCreated {
    fn from(s: Started) -> Self {
        TaskCreated {
            task_id: s.id.to_string(),
            status: s.state.into(),
            created_at: rfc3339(s.created_at),
        }
    }
}

/// Everything the gateway remembers about a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub task_id: String,
    /// `command` or `file`.
    pub kind: String,
    pub status: TaskStatus,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// The sandbox profile the task ran in.
    pub profile: Option<String>,
    /// Why a task failed, was cancelled or timed out.
    pub failure_reason: Option<String>,
    /// The request's metadata, plus `traceparent`: the W3C trace context of
    /// the request that created the task.
    pub metadata: BTreeMap<String, String>,
    /// Present once the command ran.
    pub result: Option<TaskResultBody>,
    /// While the task is `pending_approval`: why the policy requires
    /// approval.
    pub approval_reason: Option<String>,
    /// While the task is `pending_approval`: when it expires unless
    /// approved or rejected (RFC 3339).
    pub approval_expires_at: Option<String>,
}

impl Task {
    /// The task with what [`mcp_pipeline::Gateway::pending_approval`] found: the approval's
    /// reason and expiry.
    pub fn with_approval(mut self, approval: Option<(String, String)>) -> Self {
        (self.approval_reason, self.approval_expires_at) = approval.unzip();
        self
    }
}

/// What a finished command produced. Output is capped and decoded as UTF-8
/// (invalid bytes replaced); the flags say whether anything was cut.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskResultBody {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub execution_time_ms: u64,
    pub resource_usage: ResourceUsageBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResourceUsageBody {
    pub cpu_time_ms: u64,
    pub max_memory_kb: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

impl From<TaskRecord> for Task {
    fn from(t: TaskRecord) -> Self {
        Task {
            task_id: t.id.to_string(),
            kind: match t.kind {
                TaskKind::Command => "command",
                TaskKind::File => "file",
            }
            .to_owned(),
            status: t.state.into(),
            created_at: rfc3339(t.created_at),
            started_at: t.started_at.map(rfc3339),
            completed_at: t.completed_at.map(rfc3339),
            profile: t.profile,
            failure_reason: t.failure_reason,
            metadata: t.metadata,
            result: t.result.map(|r| TaskResultBody {
                exit_code: r.exit_code,
                stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
                stdout_truncated: r.stdout_truncated,
                stderr_truncated: r.stderr_truncated,
                execution_time_ms: r.execution_time_ms,
                resource_usage: ResourceUsageBody {
                    cpu_time_ms: r.usage.cpu_time_ms,
                    max_memory_kb: r.usage.max_memory_kb,
                    io_read_bytes: r.usage.io_read_bytes,
                    io_write_bytes: r.usage.io_write_bytes,
                },
            }),
            approval_reason: None,
            approval_expires_at: None,
        }
    }
}

/// The `data` of one Server-Sent Event of `GET /v1/tasks/{id}/output`. The
/// event's name (`stdout`, `stderr`, `event`, `exit_code`) says what it is;
/// `exit_code` is always the last event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputEvent {
    /// The output, decoded as UTF-8 (invalid bytes replaced); for `event`
    /// a message such as why the task ended; for `exit_code` the code as text.
    pub data: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Only on the `exit_code` event: the command's exit code (128 + signal
    /// when it was killed, e.g. 137 after a cancel or timeout; -1 when it
    /// never ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Query of `PUT /v1/files/{path}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Create missing parent directories.
    pub create_dirs: bool,
    /// Permission bits in octal, e.g. `644` or `0600`; absent = 0644.
    pub mode: Option<String>,
}

/// Query of `DELETE /v1/files/{path}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete a directory with everything in it.
    pub recursive: bool,
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this state, e.g. `running` or `TASK_COMPLETED`.
    pub status: Option<String>,
    /// Only tasks created at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only tasks created before this RFC 3339 time.
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// Only tasks whose metadata holds this `key:value` pair (split at the
    /// first `:`); repeat the parameter to require several pairs, e.g.
    /// `metadata=team:infra&metadata=batch:b1`.
    #[param(style = Form, explode)]
    pub metadata: Vec<String>,
}

/// One page of `GET /v1/tasks`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// No query parameters are accepted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    /// The path as given.
    pub path: String,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileDeleted {
    /// The path as given.
    pub path: String,
    pub deleted: bool,
}

/// Liveness: the process answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
}

/// One dependency's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Readiness: 200 when every check passes, 503 otherwise (same body).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    pub store: Check,
    pub sandbox: Check,
    pub policy: Check,
    /// The content hash of the loaded policy set.
    pub policy_revision: String,
    /// False once shutdown began.
    pub accepting: bool,
}

impl From<Readiness> for Ready {
    fn from(r: Readiness) -> Self {
        let check = |r: Result<(), String>| Check {
            ok: r.is_ok(),
            error: r.err(),
        };
        Ready {
            ready: r.is_ready(),
            policy: Check {
                ok: !r.policy_revision.is_empty(),
                error: r
                    .policy_revision
                    .is_empty()
                    .then(|| "no policy set loaded".to_owned()),
            },
            store: check(r.store),
            sandbox: check(r.sandbox),
            policy_revision: r.policy_revision,
            accepting: r.accepting,
        }
    }
}

/// The one error shape of the REST API; `docs/api/errors.md` lists every
/// `code`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable error number: 1xxx authentication, 2xxx input, 3xxx policy,
    /// 4xxx sandbox, 5xxx internal, 6xxx not found.
    #[schema(example = 3001)]
    pub code: u16,
    /// The gRPC code name the same error has on the gRPC API.
    #[schema(example = "PERMISSION_DENIED")]
    pub status: String,
    pub message: String,
    /// Quote it when asking an operator: the gateway's log has the details.
    pub request_id: String,
    /// Machine-readable facts (`field`, `reasons`, `task_id`, `path`, …).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}
