//! Errors of the gateway and the one place they become error numbers, gRPC
//! statuses and HTTP statuses.

use axum::http;
pub use mcp_pipeline::GatewayError;
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
    Audit(#[from] mcp_pipeline::audit::AuditStartError),
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

/// Where a [`GatewayError`] lands in the front doors' vocabulary: its error
/// number (kept by the pipeline), gRPC code and HTTP status, and the gRPC
/// status a client sees. The one mapping of errors to statuses.
pub trait ErrorStatus {
    /// The error number, gRPC code and HTTP status of this error.
    fn mapping(&self) -> ErrorMapping;
    /// The gRPC code of this error.
    fn code(&self) -> Code;
    /// The status a client sees (see [`mapping`]).
    fn to_status(&self, request_id: &str) -> tonic::Status;
}

impl ErrorStatus for GatewayError {
    fn mapping(&self) -> ErrorMapping {
        mapping(self)
    }

    fn code(&self) -> Code {
        mapping(self).grpc
    }

    fn to_status(&self, request_id: &str) -> tonic::Status {
        to_status(self, request_id)
    }
}

/// The gRPC code and HTTP status of each variant, with its error number.
/// Exhaustive on purpose: a new variant does not compile until someone
/// decides where it lands, and `docs/api/errors.md` lists the same table
/// (a test walks every variant through it).
pub fn mapping(e: &GatewayError) -> ErrorMapping {
    let (grpc, http) = match e {
        GatewayError::Unauthenticated => (Code::Unauthenticated, 401),
        GatewayError::InvalidRequest(_) => (Code::InvalidArgument, 400),
        GatewayError::BadTaskId(_) => (Code::InvalidArgument, 400),
        GatewayError::PathEscapes { .. } => (Code::InvalidArgument, 400),
        GatewayError::MalformedRequest { .. } => (Code::InvalidArgument, 400),
        GatewayError::BodyTooLarge { .. } => (Code::ResourceExhausted, 413),
        GatewayError::UnsupportedMediaType { .. } => (Code::InvalidArgument, 415),
        GatewayError::MethodNotAllowed { .. } => (Code::Unimplemented, 405),
        GatewayError::TaskFinished { .. } => (Code::FailedPrecondition, 409),
        GatewayError::FileConflict { .. } => (Code::FailedPrecondition, 409),
        GatewayError::FileTooLarge { .. } => (Code::FailedPrecondition, 422),
        GatewayError::Unsupported { .. } => (Code::FailedPrecondition, 422),
        GatewayError::Denied { .. } => (Code::PermissionDenied, 403),
        GatewayError::Sandbox(_) => (Code::Unavailable, 503),
        GatewayError::FileIo(_) => (Code::Internal, 500),
        GatewayError::Overloaded { .. } => (Code::ResourceExhausted, 429),
        GatewayError::Internal { .. } => (Code::Internal, 500),
        GatewayError::Store(_) => (Code::Unavailable, 503),
        GatewayError::ShuttingDown => (Code::Unavailable, 503),
        GatewayError::RequestTimeout { .. } => (Code::DeadlineExceeded, 504),
        GatewayError::Busy { .. } => (Code::Unavailable, 503),
        GatewayError::Unimplemented { .. } => (Code::Unimplemented, 501),
        GatewayError::TaskNotFound { .. } => (Code::NotFound, 404),
        GatewayError::FileNotFound { .. } => (Code::NotFound, 404),
        GatewayError::RouteNotFound { .. } => (Code::NotFound, 404),
        GatewayError::NotPendingApproval { .. } => (Code::FailedPrecondition, 409),
        GatewayError::IdempotencyKeyReused => (Code::AlreadyExists, 409),
        GatewayError::SelfApproval { .. } => (Code::PermissionDenied, 403),
        GatewayError::ApprovalTokenInvalid { .. } => (Code::PermissionDenied, 403),
        GatewayError::QuotaExceeded { .. } => (Code::ResourceExhausted, 429),
    };
    m(e.number(), grpc, http)
}

/// The status a client sees, carrying the request id in the message and
/// in the `x-request-id` metadata, and the error number in
/// `x-error-code`.
fn to_status(e: &GatewayError, request_id: &str) -> tonic::Status {
    let msg = if e.is_public() {
        format!("{e} (request id {request_id})")
    } else {
        format!("{e}; see the gateway log for request id {request_id}")
    };
    let mapping = mapping(e);
    let mut status = tonic::Status::new(mapping.grpc, msg);
    if let Ok(v) = request_id.parse() {
        status.metadata_mut().insert("x-request-id", v);
    }
    status.metadata_mut().insert(
        "x-error-code",
        tonic::metadata::MetadataValue::from(mapping.number),
    );
    if let Some(secs) = e.retry_after_secs() {
        status
            .metadata_mut()
            .insert("retry-after", tonic::metadata::MetadataValue::from(secs));
    }
    status
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
