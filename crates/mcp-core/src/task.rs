use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use uuid::Uuid;

/// A task id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(Uuid);

/// A task id string that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("task id {0:?} is not a valid UUID")]
pub struct TaskIdError(pub String);

impl TaskId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = TaskIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated form: ids are compared as strings in
        // the store, so "urn:uuid:…" or braces would miss.
        if s.len() != 36 {
            return Err(TaskIdError(s.chars().take(64).collect()));
        }
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| TaskIdError(s.chars().take(64).collect()))
    }
}

/// The life cycle of a task. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Created,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    /// The policy requires approval; nothing runs until someone approves.
    PendingApproval,
    /// Nobody approved or rejected it within the approval TTL (terminal).
    Expired,
    /// An approver rejected it (terminal).
    Rejected,
}

impl TaskState {
    pub const ALL: [TaskState; 10] = [
        TaskState::Created,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::TimedOut,
        TaskState::PendingApproval,
        TaskState::Expired,
        TaskState::Rejected,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed
                | TaskState::Failed
                | TaskState::Cancelled
                | TaskState::TimedOut
                | TaskState::Expired
                | TaskState::Rejected
        )
    }

    /// The stable name used in the store and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
            TaskState::PendingApproval => "pending_approval",
            TaskState::Expired => "expired",
            TaskState::Rejected => "rejected",
        }
    }
}

impl FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Command,
    File,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Command => "command",
            TaskKind::File => "file",
        }
    }
}

impl FromStr for TaskKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "command" => Ok(TaskKind::Command),
            "file" => Ok(TaskKind::File),
            other => Err(format!("unknown task kind {other:?}")),
        }
    }
}

/// Resources a finished command used, as far as the kernel reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub cpu_time_ms: u64,
    pub max_memory_kb: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// What a finished command produced. Output is capped; the flags say whether
/// anything was cut.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The exit status, or 128 + signal number when killed by a signal.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub usage: ResourceUsage,
    pub execution_time_ms: u64,
}

/// Everything the gateway remembers about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub kind: TaskKind,
    pub state: TaskState,
    pub tenant: String,
    pub principal: String,
    /// The command as approved (argv\[0\]); kept for listing and audit.
    pub command: String,
    pub args: Vec<String>,
    pub profile: Option<String>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub metadata: BTreeMap<String, String>,
    pub result: Option<TaskResult>,
    /// Why a task failed, was cancelled or timed out (e.g. `interrupted`).
    pub failure_reason: Option<String>,
    /// Which gateway replica owns (runs) the task.
    pub owner: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkKind {
    Stdout,
    Stderr,
    ExitCode,
    Event,
}

/// One piece of live output. `ExitCode` chunks carry the decimal exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub kind: ChunkKind,
    pub data: Vec<u8>,
    pub timestamp_ms: i64,
}

impl OutputChunk {
    pub fn new(kind: ChunkKind, data: Vec<u8>) -> Self {
        let ts = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Self {
            kind,
            data,
            timestamp_ms: i64::try_from(ts).unwrap_or(i64::MAX),
        }
    }
}
