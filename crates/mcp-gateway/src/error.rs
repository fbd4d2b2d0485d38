//! Errors of the gateway and the one place they become error numbers, gRPC
//! statuses and HTTP statuses.

use axum::http;
use mcp_core::{TaskId, TaskIdError, TaskState, ValidationError};
use thiserror::Error;
use tonic::Code;

/// A configuration that cannot be used; lists every problem found.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
    Invalid { problems: Vec<String> },
}

/// Start-up failures of `serve`.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load policies")]
    Policy(#[from] mcp_policy::PolicyError),
    #[error("cannot fetch the policy bundle")]
    BundleFetch(#[from] crate::bundle_fetch::FetchError),
    #[error("cannot set up the sandbox")]
    Sandbox(#[from] mcp_sandbox::SandboxError),
    #[error("cannot set up the files root")]
    Files(#[from] mcp_sandbox::FileError),
    #[error("cannot open the store")]
    Store(#[from] mcp_store::StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditStartError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reap tasks interrupted by the previous run")]
    Recover(#[source] Box<GatewayError>),
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot set up TLS")]
    Tls(#[from] crate::auth::TlsError),
}

/// Why a request did not succeed. Variants name the broken rule; the one
/// mapping to error number, gRPC code and HTTP status is
/// [`GatewayError::mapping`]. Some variants only arise at the HTTP front door
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

/// Where a [`GatewayError`] lands in each front door's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMapping {
    /// The stable error number: 1xxx authentication, 2xxx input, 3xxx
    /// policy, 4xxx sandbox, 5xxx internal, 6xxx not found.
    pub number: u16,
    pub grpc: Code,
    pub http: http::StatusCode,
}

const fn m(number: u16, grpc: Code, http: u16) -> ErrorMapping {
    let http = match http::StatusCode::from_u16(http) {
        Ok(s) => s,
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    ErrorMapping { number, grpc, http }
}

impl GatewayError {
    /// The error number, gRPC code and HTTP status of each variant.
    /// Exhaustive on purpose: a new variant does not compile until someone
    /// decides where it lands, and `docs/api/errors.md` lists the same
    /// table (a test walks every variant through it).
    pub fn mapping(&self) -> ErrorMapping {
        match self {
            GatewayError::Unauthenticated => m(1001, Code::Unauthenticated, 401),
            GatewayError::InvalidRequest(_) => m(2001, Code::InvalidArgument, 400),
            GatewayError::BadTaskId(_) => m(2002, Code::InvalidArgument, 400),
            GatewayError::PathEscapes { .. } => m(2003, Code::InvalidArgument, 400),
            GatewayError::MalformedRequest { .. } => m(2004, Code::InvalidArgument, 400),
            GatewayError::BodyTooLarge { .. } => m(2005, Code::ResourceExhausted, 413),
            GatewayError::UnsupportedMediaType { .. } => m(2006, Code::InvalidArgument, 415),
            GatewayError::MethodNotAllowed { .. } => m(2007, Code::Unimplemented, 405),
            GatewayError::TaskFinished { .. } => m(2008, Code::FailedPrecondition, 409),
            GatewayError::FileConflict { .. } => m(2009, Code::FailedPrecondition, 409),
            GatewayError::FileTooLarge { .. } => m(2010, Code::FailedPrecondition, 422),
            GatewayError::Unsupported { .. } => m(2011, Code::FailedPrecondition, 422),
            GatewayError::Denied { .. } => m(3001, Code::PermissionDenied, 403),
            GatewayError::Sandbox(_) => m(4001, Code::Unavailable, 503),
            GatewayError::FileIo(_) => m(4002, Code::Internal, 500),
            GatewayError::Overloaded { .. } => m(4003, Code::ResourceExhausted, 429),
            GatewayError::Internal { .. } => m(5001, Code::Internal, 500),
            GatewayError::Store(_) => m(5002, Code::Unavailable, 503),
            GatewayError::ShuttingDown => m(5003, Code::Unavailable, 503),
            GatewayError::RequestTimeout { .. } => m(5004, Code::DeadlineExceeded, 504),
            GatewayError::Busy { .. } => m(5005, Code::Unavailable, 503),
            GatewayError::Unimplemented { .. } => m(5006, Code::Unimplemented, 501),
            GatewayError::TaskNotFound { .. } => m(6001, Code::NotFound, 404),
            GatewayError::FileNotFound { .. } => m(6002, Code::NotFound, 404),
            GatewayError::RouteNotFound { .. } => m(6003, Code::NotFound, 404),
            GatewayError::NotPendingApproval { .. } => m(2101, Code::FailedPrecondition, 409),
            GatewayError::IdempotencyKeyReused => m(2102, Code::AlreadyExists, 409),
            GatewayError::SelfApproval { .. } => m(3101, Code::PermissionDenied, 403),
            GatewayError::ApprovalTokenInvalid { .. } => m(3102, Code::PermissionDenied, 403),
            GatewayError::QuotaExceeded { .. } => m(4101, Code::ResourceExhausted, 429),
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

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        self.mapping().grpc
    }

    /// Whether the message may reach the client. Internal details (paths on
    /// the host, database errors) never do; the request id does.
    fn is_public(&self) -> bool {
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

    /// The status a client sees, carrying the request id in the message and
    /// in the `x-request-id` metadata, and the error number in
    /// `x-error-code`.
    pub fn to_status(&self, request_id: &str) -> tonic::Status {
        let msg = if self.is_public() {
            format!("{self} (request id {request_id})")
        } else {
            format!("{self}; see the gateway log for request id {request_id}")
        };
        let mapping = self.mapping();
        let mut status = tonic::Status::new(mapping.grpc, msg);
        if let Ok(v) = request_id.parse() {
            status.metadata_mut().insert("x-request-id", v);
        }
        status.metadata_mut().insert(
            "x-error-code",
            tonic::metadata::MetadataValue::from(mapping.number),
        );
        if let Some(secs) = self.retry_after_secs() {
            status
                .metadata_mut()
                .insert("retry-after", tonic::metadata::MetadataValue::from(secs));
        }
        status
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

/// The canonical name of a gRPC code (`PERMISSION_DENIED`), as the REST
/// error shape and the `status` label of `mcp_api_requests_total` spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
