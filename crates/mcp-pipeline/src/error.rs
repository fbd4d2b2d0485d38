//! Why a request did not succeed: [`GatewayError`], shared by every front
//! door. The pipeline gives each variant its stable error number
//! ([`GatewayError::number`], kept in audit records); what a variant becomes
//! in a front door's vocabulary (gRPC code, HTTP status) is decided by the
//! front door's crate (`mcp-gateway`'s `error::mapping`), never here.

use mcp_core::{TaskId, TaskIdError, TaskState, ValidationError};
use thiserror::Error;

/// Why a request did not succeed. Variants name the broken rule; the one
/// mapping to error number, gRPC code and HTTP status is
/// `mcp-gateway`'s `error::mapping` (the number: [`GatewayError::number`]). Some variants only arise at the HTTP front door
/// (a malformed body, an unknown route); they live here so that every front
/// door shares one table (`docs/api/errors.md`).
#[derive(Debug, Error)]
pub enum GatewayError {
    /// No credentials, or credentials that did not verify. One message for
    /// every cause: the log says which, the client learns nothing.
    #[error("authentication required: missing or invalid credentials")]
    Unauthenticated,
    #[error(transparent)]
    InvalidRequest(#[from] ValidationError),
    #[error(transparent)]
    BadTaskId(#[from] TaskIdError),
    #[error("denied by policy: {}", reasons.join("; "))]
    Denied { reasons: Vec<String> },
    #[error("task {id} not found")]
    TaskNotFound { id: TaskId },
    #[error("task {id} has already finished ({})", state.as_str())]
    TaskFinished { id: TaskId, state: TaskState },
    #[error("file {path:?} not found")]
    FileNotFound { path: String },
    #[error("file {path:?}: {reason}")]
    FileConflict { path: String, reason: &'static str },
    #[error("file {path:?} is {size} bytes, above the limit of {max}")]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error("path {path:?} leaves the files root")]
    PathEscapes { path: String },
    #[error("too many tasks waiting ({queued}); retry later")]
    Overloaded { queued: usize },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("sandbox unavailable")]
    Sandbox(#[source] mcp_sandbox::SandboxError),
    #[error("store unavailable")]
    Store(#[source] mcp_store::StoreError),
    #[error("file system error")]
    FileIo(#[source] mcp_sandbox::FileError),
    /// The request (body, query string or path) is not what the operation
    /// takes: not JSON, a wrong type, an unknown or missing field. `field`
    /// is the path to the offending field, when the parser knows it.
    #[error("{}{reason}", field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    MalformedRequest {
        field: Option<String>,
        reason: String,
    },
    #[error("request body is larger than the limit of {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("content type {got:?} is not accepted; send {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{what} is not implemented yet")]
    Unimplemented { what: &'static str },
    /// No answer within the REST door's time limit or the gRPC client's
    /// deadline (`grpc-timeout`).
    #[error("the request took longer than {limit:?}")]
    RequestTimeout { limit: std::time::Duration },
    #[error("too many requests in flight (limit {limit}); retry later")]
    Busy { limit: usize },
    /// A per-tenant quota (`[quotas]`) is used up; retry after the given time.
    #[error("tenant quota exceeded: {quota} (limit {limit}); retry after {retry_after_secs}s")]
    QuotaExceeded {
        quota: &'static str,
        limit: u64,
        retry_after_secs: u64,
    },
    /// The requester of a task cannot approve or reject it.
    #[error("task {id} cannot be approved or rejected by the principal that requested it")]
    SelfApproval { id: TaskId },
    /// An approval token did not verify, was for another task or principal,
    /// expired, or was already used.
    #[error("approval token refused: {reason}")]
    ApprovalTokenInvalid { reason: &'static str },
    /// Approve/reject of a task that is not waiting for approval.
    #[error("task {id} is not waiting for approval ({})", state.as_str())]
    NotPendingApproval { id: TaskId, state: TaskState },
    /// The idempotency key was used by this principal for a different request
    /// within the window.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// A failure of the gateway itself that fits no other variant.
    #[error("internal error")]
    Internal { what: String },
}

impl GatewayError {
    /// The stable error number of each variant: 1xxx authentication, 2xxx
    /// input, 3xxx policy, 4xxx sandbox, 5xxx internal, 6xxx not found.
    /// Exhaustive on purpose: a new variant does not compile until someone
    /// numbers it (and maps it in each front door); `docs/api/errors.md`
    /// lists the same table.
    pub fn number(&self) -> u16 {
        match self {
            GatewayError::Unauthenticated => 1001,
            GatewayError::InvalidRequest(_) => 2001,
            GatewayError::BadTaskId(_) => 2002,
            GatewayError::PathEscapes { .. } => 2003,
            GatewayError::MalformedRequest { .. } => 2004,
            GatewayError::BodyTooLarge { .. } => 2005,
            GatewayError::UnsupportedMediaType { .. } => 2006,
            GatewayError::MethodNotAllowed { .. } => 2007,
            GatewayError::TaskFinished { .. } => 2008,
            GatewayError::FileConflict { .. } => 2009,
            GatewayError::FileTooLarge { .. } => 2010,
            GatewayError::Unsupported { .. } => 2011,
            GatewayError::Denied { .. } => 3001,
            GatewayError::Sandbox(_) => 4001,
            GatewayError::FileIo(_) => 4002,
            GatewayError::Overloaded { .. } => 4003,
            GatewayError::Internal { .. } => 5001,
            GatewayError::Store(_) => 5002,
            GatewayError::ShuttingDown => 5003,
            GatewayError::RequestTimeout { .. } => 5004,
            GatewayError::Busy { .. } => 5005,
            GatewayError::Unimplemented { .. } => 5006,
            GatewayError::TaskNotFound { .. } => 6001,
            GatewayError::FileNotFound { .. } => 6002,
            GatewayError::RouteNotFound { .. } => 6003,
            GatewayError::NotPendingApproval { .. } => 2101,
            GatewayError::IdempotencyKeyReused => 2102,
            GatewayError::SelfApproval { .. } => 3101,
            GatewayError::ApprovalTokenInvalid { .. } => 3102,
            GatewayError::QuotaExceeded { .. } => 4101,
        }
    }

    /// Seconds a client should wait before retrying, for errors that say so
    /// (gRPC metadata `retry-after`, HTTP `Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::QuotaExceeded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            GatewayError::Overloaded { .. } => Some(1),
            _ => None,
        }
    }

    /// Whether the message may reach the client. Internal details (paths on
    /// the host, database errors) never do; the request id does.
    pub fn is_public(&self) -> bool {
        !matches!(
            self,
            GatewayError::Sandbox(_)
                | GatewayError::Store(_)
                | GatewayError::FileIo(_)
                | GatewayError::Internal { .. }
        )
    }

    /// What the client is told, without the request id.
    pub fn public_message(&self) -> String {
        if self.is_public() {
            self.to_string()
        } else {
            format!("{self}; see the gateway log")
        }
    }

    /// Machine-readable facts about the error for the REST `details`
    /// object; never internal details.
    pub fn details(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            GatewayError::InvalidRequest(v) => json!({ "field": validation_field(v) }),
            GatewayError::BadTaskId(_) => json!({ "field": "task_id" }),
            GatewayError::Denied { reasons } => json!({ "reasons": reasons }),
            GatewayError::TaskNotFound { id } => json!({ "task_id": id.to_string() }),
            GatewayError::TaskFinished { id, state } => {
                json!({ "task_id": id.to_string(), "state": state.as_str() })
            }
            GatewayError::FileNotFound { path }
            | GatewayError::FileConflict { path, .. }
            | GatewayError::PathEscapes { path } => json!({ "path": path }),
            GatewayError::FileTooLarge { path, size, max } => {
                json!({ "path": path, "size": size, "max": max })
            }
            GatewayError::Overloaded { queued } => json!({ "queued": queued }),
            GatewayError::MalformedRequest { field, .. } => match field {
                Some(f) => json!({ "field": f }),
                None => json!({}),
            },
            GatewayError::BodyTooLarge { max } => json!({ "max_bytes": max }),
            GatewayError::UnsupportedMediaType { expected, .. } => {
                json!({ "expected": expected })
            }
            GatewayError::RequestTimeout { limit } => json!({ "timeout_secs": limit.as_secs() }),
            GatewayError::Busy { limit } => json!({ "limit": limit }),
            GatewayError::QuotaExceeded {
                quota,
                limit,
                retry_after_secs,
            } => json!({ "quota": quota, "limit": limit, "retry_after_secs": retry_after_secs }),
            GatewayError::SelfApproval { id } => json!({ "task_id": id.to_string() }),
            GatewayError::NotPendingApproval { id, state } => {
                json!({ "task_id": id.to_string(), "state": state.as_str() })
            }
            GatewayError::ApprovalTokenInvalid { .. } | GatewayError::IdempotencyKeyReused => {
                json!({})
            }
            GatewayError::Unauthenticated
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::RouteNotFound { .. }
            | GatewayError::Unimplemented { .. }
            | GatewayError::Unsupported { .. }
            | GatewayError::ShuttingDown
            | GatewayError::Sandbox(_)
            | GatewayError::Store(_)
            | GatewayError::FileIo(_)
            | GatewayError::Internal { .. } => json!({}),
        }
    }
}

/// The request field a validation error is about.
fn validation_field(v: &ValidationError) -> String {
    match v {
        ValidationError::EmptyCommand => "command".to_owned(),
        ValidationError::NulByte { field }
        | ValidationError::TooLong { field, .. }
        | ValidationError::TooMany { field, .. }
        | ValidationError::BadSandboxPath { field, .. } => field.clone(),
        ValidationError::BadEnvName { .. } => "env".to_owned(),
        ValidationError::CwdOutsideWorkspace { .. } => "cwd".to_owned(),
        ValidationError::TimeoutTooLarge { .. } => "timeout".to_owned(),
        ValidationError::BadLimit { field, .. } => format!("resource_limits.{field}"),
        ValidationError::PathOutsideRoot { .. }
        | ValidationError::EmptyPath
        | ValidationError::RootOperation { .. } => "path".to_owned(),
        ValidationError::BadMode { .. } => "mode".to_owned(),
        ValidationError::ContentTooLarge { .. } => "content".to_owned(),
    }
}
