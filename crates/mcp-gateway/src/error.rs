//! Errors of the gateway and the one place they become gRPC statuses.

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
    #[error("cannot set up the sandbox")]
    Sandbox(#[from] mcp_sandbox::SandboxError),
    #[error("cannot set up the files root")]
    Files(#[from] mcp_sandbox::FileError),
    #[error("cannot open the store")]
    Store(#[from] mcp_store::StoreError),
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
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Why a request did not succeed. Variants name the broken rule; the
/// mapping to gRPC codes is [`GatewayError::code`].
#[derive(Debug, Error)]
pub enum GatewayError {
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
}

impl GatewayError {
    /// The gRPC code for each variant. Exhaustive on purpose: a new variant
    /// does not compile until someone decides its code.
    pub fn code(&self) -> Code {
        match self {
            GatewayError::InvalidRequest(_) => Code::InvalidArgument,
            GatewayError::BadTaskId(_) => Code::InvalidArgument,
            GatewayError::PathEscapes { .. } => Code::InvalidArgument,
            GatewayError::Denied { .. } => Code::PermissionDenied,
            GatewayError::TaskNotFound { .. } => Code::NotFound,
            GatewayError::FileNotFound { .. } => Code::NotFound,
            GatewayError::TaskFinished { .. } => Code::FailedPrecondition,
            GatewayError::FileConflict { .. } => Code::FailedPrecondition,
            GatewayError::FileTooLarge { .. } => Code::FailedPrecondition,
            GatewayError::Unsupported { .. } => Code::FailedPrecondition,
            GatewayError::Overloaded { .. } => Code::ResourceExhausted,
            GatewayError::ShuttingDown => Code::Unavailable,
            GatewayError::Sandbox(_) => Code::Unavailable,
            GatewayError::Store(_) => Code::Unavailable,
            GatewayError::FileIo(_) => Code::Internal,
        }
    }

    /// Whether the message may reach the client. Internal details (paths on
    /// the host, database errors) never do; the request id does.
    fn is_public(&self) -> bool {
        !matches!(
            self,
            GatewayError::Sandbox(_) | GatewayError::Store(_) | GatewayError::FileIo(_)
        )
    }

    /// The status a client sees, carrying the request id in the message and
    /// in the `x-request-id` metadata.
    pub fn to_status(&self, request_id: &str) -> tonic::Status {
        let msg = if self.is_public() {
            format!("{self} (request id {request_id})")
        } else {
            format!("{self}; see the gateway log for request id {request_id}")
        };
        let mut status = tonic::Status::new(self.code(), msg);
        if let Ok(v) = request_id.parse() {
            status.metadata_mut().insert("x-request-id", v);
        }
        status
    }
}
