//! The request pipeline of mcp-security-gateway: validate → resolve →
//! decide → admit (limits, quotas, idempotency, approval hold) → record →
//! run → finish, plus task queries, cancel, approval decisions and file
//! operations. It knows no front door: gRPC, REST and MCP translate their
//! wire requests into domain requests and a [`Caller`] and call
//! [`Gateway`]; nothing here depends on tonic, axum, hyper or prost
//! (`tests/it` checks the dependency tree).
//!
//! Invariants:
//! - [`Gateway`] is the only path from a request to a sandbox;
//! - nothing runs unless the policy allowed it and the decision was stored;
//! - a failure of the policy engine, the store or the sandbox denies or
//!   fails the request, never lets it through;
//! - every accepted task reaches a terminal state in the store;
//! - each request's outcome is a [`GatewayError`] with a stable number; what
//!   it becomes on the wire is the front door's business.

pub mod approval;
pub mod audit;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod live;
pub mod metrics;
pub mod quota;
pub mod secrets;
pub mod trace;

pub use error::GatewayError;
pub use gateway::{
    Caller, DEFAULT_PROFILE, Gateway, ListFilter, Output, PipelineSettings, Readiness, Started,
};
