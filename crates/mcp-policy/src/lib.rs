//! Policy decisions for mcp-security-gateway, written in Rego and evaluated
//! in-process by [`regorus`].
//!
//! [`PolicyEngine::load`] reads a policy directory (the shipped one is
//! `policies/`) once; [`PolicyEngine::decide`] then answers each request by
//! evaluating `data.mcp.decision` against a [`PolicyInput`] and returns a
//! [`mcp_core::Decision`]. [`PolicyEngine::run_tests`] runs the Rego unit tests
//! (`*_test.rego`, rules named `test_*`) that ship beside the policies.
//!
//! Invariants:
//! - this is the only crate that uses `regorus`;
//! - policies are parsed and analysed once, at load: a policy that does not
//!   compile is a load error with its file and position, never a surprise at
//!   the first request, and requests never re-parse;
//! - `decide` fails closed: an evaluation error, a time-out, an undefined
//!   decision or a decision of the wrong shape is a denial, never an allow;
//!   an obligation the gateway does not understand turns an allow into a
//!   denial;
//! - every evaluation is bounded in wall-clock time
//!   ([`DEFAULT_EVAL_TIME_LIMIT`]), so a runaway policy cannot hang a request;
//! - the input document carries environment variable names, never values,
//!   and nothing here logs the input.

mod decision;
mod engine;
mod error;
mod input;
mod testing;

pub use engine::{DEFAULT_EVAL_TIME_LIMIT, PolicyEngine};
pub use error::PolicyError;
pub use input::{
    CommandInput, FileInput, LimitsInput, PolicyInput, RequestContext, RequestInput, SandboxInput,
};
pub use testing::TestOutcome;

#[cfg(test)]
mod tests;
