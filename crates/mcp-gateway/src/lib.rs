//! The mcp-security-gateway server: front doors, authentication, the
//! listener, configuration and telemetry, over the request pipeline
//! (`mcp-pipeline`). The `mcp-gateway` binary is a thin CLI over
//! this library.
//!
//! Invariants:
//! - the pipeline ([`mcp_pipeline::Gateway`]) is the only path from a request to
//!   a sandbox; front doors ([`grpc`], [`rest`]) only translate;
//! - nothing runs unless the policy allowed it and the decision was stored;
//! - errors become error numbers, gRPC statuses and HTTP statuses in exactly
//!   one place, [`error::mapping`].

#![forbid(unsafe_code)]

pub mod auth;
pub mod bundle_fetch;
pub mod cmd_audit;
pub mod cmd_policy;
pub mod cmd_sandbox;
pub mod config;
pub mod error;
pub mod grpc;
pub mod rest;
pub mod sandbox_pool;
pub mod server;
pub mod telemetry;
