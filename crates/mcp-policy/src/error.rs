use std::path::PathBuf;

use thiserror::Error;

/// Why a policy directory could not be loaded. Every variant names the
/// directory or file at fault; a loaded engine never returns these at request
/// time (a failed evaluation is a deny, see [`crate::PolicyEngine::decide`]).
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("policy directory {dir} holds no *.rego policy files")]
    NoPolicies { dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file name {path} is not valid UTF-8")]
    NonUtf8Name { path: PathBuf },
    /// A file failed to parse. `message` carries regorus' `file:line:col`
    /// location and the offending source line.
    #[error("policy {path} does not parse: {message}")]
    Parse { path: PathBuf, message: String },
    /// The parsed policy set failed analysis (unsafe variables, recursion,
    /// conflicting imports, ...). `message` carries the `file:line:col` of the
    /// offending rule.
    #[error("policies in {dir} do not compile: {message}")]
    Compile { dir: PathBuf, message: String },
    #[error("policy data {path} is invalid: {message}")]
    Data { path: PathBuf, message: String },
    /// `reload_requires_passing_tests` is set and the new set's Rego tests
    /// fail; `failed` names each failing test (`package.rule: why`).
    #[error("policies in {dir} fail {} test(s): {}", failed.len(), failed.join("; "))]
    TestsFailed { dir: PathBuf, failed: Vec<String> },
    /// The policy directory cannot be watched for changes.
    #[error("cannot watch policy directory {dir}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// A test filter (`-r REGEX`) is not a valid regular expression.
    #[error("test filter {pattern:?} is not a valid regex")]
    Filter {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// A policy bundle is malformed, too large, holds a path that leaves
    /// it, or fails its signature check.
    #[error("policy bundle {path} is refused: {reason}")]
    Bundle { path: PathBuf, reason: String },
    /// The coverage report could not be produced.
    #[error("coverage of {dir} cannot be computed: {message}")]
    Coverage { dir: PathBuf, message: String },
}

/// Why a policy evaluation did not yield a usable decision. These never leave
/// the crate: [`crate::PolicyEngine::decide`] logs them and fails closed.
/// Shape errors quote [`crate::DECISION_SHAPE`] so that the author of a
/// broken policy reads what is expected in the log or in `policy eval`.
#[derive(Debug, Error)]
pub(crate) enum DecisionError {
    #[error("input document cannot be encoded: {0}")]
    Input(String),
    #[error("evaluation of data.mcp.decision failed: {0}")]
    Eval(String),
    #[error("data.mcp.decision is undefined: define it in package mcp as {shape}", shape = crate::DECISION_SHAPE)]
    Undefined,
    #[error("data.mcp.decision cannot be decoded: {0}")]
    Decode(String),
    #[error("data.mcp.decision is not an object; expected {shape}", shape = crate::DECISION_SHAPE)]
    NotObject,
    #[error("data.mcp.decision has unknown key {0:?}; expected {shape}", shape = crate::DECISION_SHAPE)]
    UnknownKey(String),
    #[error("data.mcp.decision.allow is {0}, not a boolean; expected {shape}", shape = crate::DECISION_SHAPE)]
    AllowNotBool(String),
    #[error("data.mcp.decision.{field} must be an array of strings (or a set of strings)")]
    NotStrings { field: &'static str },
    #[error("data.mcp.decision.obligations must be an object; expected {shape}", shape = crate::DECISION_SHAPE)]
    ObligationsNotObject,
    #[error("data.mcp.decision.obligations.{name} is {got}; expected {expected}")]
    Obligation {
        name: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error(
        "data.mcp.decision allows the request but also gives {0} deny reason(s); allow must be false when deny_reasons is not empty"
    )]
    AllowWithReasons(usize),
}

impl DecisionError {
    /// The error without anything that may have come from the input: regorus
    /// quotes argument values in builtin errors (`Got "..." instead`), and
    /// argv must not be logged at error level. Keeps the policy location.
    pub(crate) fn redacted(&self) -> String {
        match self {
            DecisionError::Input(_) => "input document cannot be encoded".to_owned(),
            DecisionError::Decode(_) => "data.mcp.decision cannot be decoded".to_owned(),
            DecisionError::Eval(detail) => {
                format!(
                    "evaluation of data.mcp.decision failed at {}",
                    eval_location(detail)
                )
            }
            other => other.to_string(),
        }
    }
}

/// The policy location (`file:line:col`) a regorus evaluation error points
/// at, without the rest of the message (which may quote input values).
pub(crate) fn eval_location(detail: &str) -> &str {
    detail
        .lines()
        .find_map(|l| l.trim().strip_prefix("-->"))
        .map_or("an unknown location", str::trim)
}
