//! Integration tests: the real server on 127.0.0.1:0 with the shipped
//! policies and profiles, real bubblewrap and a real SQLite file, driven over
//! gRPC with mcp-client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod approval;
mod audit;
mod auth;
mod bad_input;
mod bundle_fetch;
mod cli;
mod commands;
mod egress;
mod errors;
mod files;
mod harness;
mod metrics;
mod pool;
mod quotas;
mod reload;
mod rest;
mod restart;
mod secrets;
mod traces;
