//! The mcp-security-gateway server: front doors, the request pipeline,
//! configuration and telemetry. The `mcp-gateway` binary is a thin CLI over
//! this library.
//!
//! Invariants:
//! - the pipeline ([`pipeline::Gateway`]) is the only path from a request to
//!   a sandbox; front doors ([`grpc`]) only translate;
//! - nothing runs unless the policy allowed it and the decision was stored;
//! - errors become gRPC statuses in exactly one place,
//!   [`error::GatewayError::code`].

pub mod config;
pub mod error;
pub mod grpc;
pub mod live;
pub mod pipeline;
pub mod server;
pub mod telemetry;
