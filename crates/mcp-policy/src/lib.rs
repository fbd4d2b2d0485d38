//! Policy decisions for mcp-security-gateway, written in Rego and evaluated
//! in-process by [`regorus`].
//!
//! [`PolicyEngine::load`] reads a policy directory (the shipped one is
//! `policies/`) once; [`PolicyEngine::decide`] then answers each request by
//! evaluating `data.mcp.decision` against a [`PolicyInput`] and returns a
//! [`mcp_core::Decision`]; [`PolicyEngine::evaluate`] also returns the typed
//! [`ObligationSet`], the decision-log mask and the latency.
//! [`PolicyService`] holds the active engine for a running gateway: atomic
//! hot reload, a directory watcher and an optional shadow (candidate) set.
//! [`PolicyEngine::run_tests_with`] runs the Rego unit tests (`*_test.rego`,
//! rules named `test_*`) with line coverage, [`check`] reports every error of
//! a directory, and [`Evaluated::logged_input`] is what the decision log keeps.
//!
//! Invariants:
//! - this is the only crate that uses `regorus`;
//! - policies are parsed and analysed once, at load: a policy that does not
//!   compile is a load error with its file and position, never a surprise at
//!   the first request, and requests never re-parse;
//! - `decide` fails closed: an evaluation error (every builtin error is
//!   one: strict builtin errors, in every rule), a conflict between rule
//!   outputs (OPA's `eval_conflict_error`; regorus would leave the rule
//!   undefined, see docs/upstream/regorus.md), a time-out, an undefined
//!   decision or a decision of the wrong shape is a denial, never an allow;
//!   an obligation the caller does not enforce
//!   ([`EngineOptions::enforced`]) turns an allow into a denial;
//! - every evaluation is bounded: the input by size and depth
//!   ([`InputLimits`]) before it reaches the evaluator, the evaluation in
//!   wall-clock time ([`DEFAULT_EVAL_TIME_LIMIT`]), so a runaway policy or a
//!   hostile input cannot hang a request;
//! - a reload swaps a completely compiled (and, if asked, tested) set in one
//!   atomic store; a broken set never replaces a working one;
//! - the input document carries environment variable names, never values,
//!   and nothing here logs the input or argv above debug level.

#![forbid(unsafe_code)]

mod bundle;
mod check;
mod decision;
mod engine;
mod error;
mod input;
mod mask;
mod rego_value;
mod service;
mod testing;
mod vm;

pub use bundle::{
    BuiltBundle, MAX_BUNDLE_BYTES, MAX_BUNDLE_FILES, Manifest, build as build_bundle,
    read_signing_key, read_verifying_key,
};
pub use check::{Diagnostic, check, lint};
pub use decision::{
    ApprovalObligation, ApprovalRequirement, DECISION_SHAPE, Destination, LimitsObligation,
    ObligationKind, ObligationSet,
};
/// The public key bundles are verified with ([`EngineOptions::bundle_key`]).
pub use ed25519_dalek::VerifyingKey as BundleKey;
pub use engine::{
    DEFAULT_EVAL_TIME_LIMIT, EngineOptions, Evaluated, Explanation, Failure, InputLimits,
    MASK_RULE, PolicyEngine,
};
pub use error::{FailureKind, PolicyError};
pub use input::{
    AddressInput, CommandInput, ContextInput, FileInput, INPUT_VERSION, LimitsInput, McpToolInput,
    NetworkInput, PolicyInput, RequestContext, RequestInput, SandboxInput,
};
pub use mask::{MASKED, masked_value};
pub use service::{PolicyService, PolicyWatcher, ServiceOptions, ServiceStats, WATCH_DEBOUNCE};
pub use testing::{CoverageReport, FileCoverage, TestOptions, TestOutcome, TestReport};

#[cfg(test)]
mod tests;
