//! Domain types shared by every crate of mcp-security-gateway.
//!
//! This crate holds the vocabulary of the request pipeline — who asks
//! ([`Principal`]), what they ask for ([`ExecRequest`], [`FileRequest`]), what
//! policy answered ([`Decision`]) and what happened ([`TaskRecord`],
//! [`TaskResult`]) — together with the pure validation rules that turn
//! untrusted wire input into values that cannot hold bad states
//! ([`ExecRequest::validate`]).
//!
//! Invariants:
//! - no I/O: nothing here touches files, sockets, processes or clocks other
//!   than reading the current time for timestamps;
//! - every type that crosses a crate boundary lives here, so the front doors
//!   (gRPC, REST, MCP) and the back ends (policy, sandbox, store) agree on one
//!   model.

#![forbid(unsafe_code)]

mod decision;
mod error;
mod principal;
pub mod redact;
mod request;
pub mod secrets;
mod task;
mod time_fmt;

pub use decision::{
    ApprovalObligation, ApprovalRequirement, Decision, Destination, LimitsObligation,
    ObligationKind, ObligationSet, Obligations,
};
pub use error::ValidationError;
pub use principal::{AuthMethod, Principal};
pub use request::{
    ExecRequest, FILES_MOUNT, FileOp, FileRequest, NetworkAccess, RequestLimits, ResourceLimits,
    SandboxRequest, ValidExec, ValidFile, WORKSPACE_MOUNT,
};
pub use task::{
    ChunkKind, OutputChunk, ResourceUsage, TaskId, TaskIdError, TaskKind, TaskRecord, TaskResult,
    TaskState,
};
pub use time_fmt::{now, rfc3339};

#[cfg(test)]
mod tests;
