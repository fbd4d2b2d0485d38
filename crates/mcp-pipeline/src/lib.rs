//! The request pipeline of mcp-security-gateway: validate → resolve →
//! decide → admit (limits, quotas, idempotency, approval hold) → record →
//! run → finish, plus task queries, cancel, approval decisions and file
//! operations. It knows no front door: gRPC, REST (and later MCP) turn
//! their wire requests into domain requests and a [`Caller`] and call
//! [`Gateway`]; nothing here depends on tonic, axum, hyper or prost
//! (`tests/it` reads the dependency tree and fails if it does).
//!
//! Modules by step: [`execute`] (a command's way in), [`admit`],
//! [`decide`], [`record`] (decision log, audit, task writes), [`worker`]
//! (the run and its end), [`tasks`] (status, list, cancel, output),
//! [`files`], [`approve`] (approve/reject), [`egress`] (restricted
//! network); what they pass along is in [`plan`] ([`Caller`],
//! [`TaskPlan`]). The shared state is [`gateway`]; [`approval`],
//! [`quota`], [`audit`], [`secrets`], [`live`], [`metrics`], [`trace`] and
//! [`error`] are leaves the steps use, and import no step (a test checks
//! that the modules' imports have no cycle).
//!
//! Invariants:
//! - [`Gateway`] is the only path from a request to a sandbox;
//! - nothing runs unless the policy allowed it and the decision was stored;
//! - a failure of the policy engine, the store or the sandbox denies or
//!   fails the request, never lets it through;
//! - every accepted task reaches a terminal state in the store
//!   (completed, failed, cancelled, timed out), including on shutdown;
//! - the policy's obligations stay typed ([`mcp_core::ObligationSet`])
//!   from the decision to the sandbox; only the store turns them into JSON;
//! - each failure is a [`GatewayError`] with a stable number; what it
//!   becomes on the wire is the front door's business.

#![forbid(unsafe_code)]

pub mod admit;
pub mod approval;
pub mod approve;
pub mod audit;
pub mod decide;
pub mod egress;
pub mod error;
pub mod execute;
pub mod files;
pub mod gateway;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod quota;
pub mod record;
pub mod secrets;
pub mod tasks;
pub mod trace;
pub mod worker;

pub use approval::{Verdict, VerdictRequest};
pub use error::GatewayError;
pub use gateway::{DEFAULT_PROFILE, Gateway, PipelineSettings, Readiness};
pub use plan::{Caller, Started, TaskPlan};
pub use tasks::{ListFilter, Output};
