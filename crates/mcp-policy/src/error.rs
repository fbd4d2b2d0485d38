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
    /// Two rule bodies (or two iterations of one) gave a complete rule, a
    /// function or a partial object key different values: OPA's
    /// `eval_conflict_error`. The message names the rule and where, never
    /// values, so it may be shown.
    #[error("eval_conflict_error: {0}")]
    Conflict(String),
    #[error("evaluation of data.mcp.decision ran out of time: {0}")]
    Timeout(String),
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
            DecisionError::Conflict(message) => {
                format!("eval_conflict_error: {}", short_locations(message))
            }
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

impl DecisionError {
    /// What kind of failure this is, for metrics and callers.
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            DecisionError::Conflict(_) => FailureKind::Conflict,
            DecisionError::Eval(_) => FailureKind::Error,
            DecisionError::Timeout(_) => FailureKind::Timeout,
            DecisionError::Undefined => FailureKind::Undefined,
            DecisionError::Input(_) => FailureKind::Input,
            DecisionError::Decode(_)
            | DecisionError::NotObject
            | DecisionError::UnknownKey(_)
            | DecisionError::AllowNotBool(_)
            | DecisionError::NotStrings { .. }
            | DecisionError::ObligationsNotObject
            | DecisionError::Obligation { .. }
            | DecisionError::AllowWithReasons(_) => FailureKind::Malformed,
        }
    }
}

/// Why an evaluation failed closed, by kind: what
/// `mcp_policy_eval_failures_total` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// Rules disagreed (`eval_conflict_error`).
    Conflict,
    /// A builtin or the evaluator failed (strict builtin errors).
    Error,
    /// The evaluation ran past its time limit.
    Timeout,
    /// `data.mcp.decision` was undefined.
    Undefined,
    /// The decision had a shape the gateway does not understand.
    Malformed,
    /// The input was refused before evaluation (too large, too deep, not
    /// encodable).
    Input,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Conflict,
        FailureKind::Error,
        FailureKind::Timeout,
        FailureKind::Undefined,
        FailureKind::Malformed,
        FailureKind::Input,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Conflict => "conflict",
            FailureKind::Error => "error",
            FailureKind::Timeout => "timeout",
            FailureKind::Undefined => "undefined",
            FailureKind::Malformed => "malformed",
            FailureKind::Input => "input",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `message` with every `…/dir/file.rego:line:col` shortened to
/// `file.rego:line:col`: the policy directory's path is the host's business.
pub(crate) fn short_locations(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(".rego:") {
        let (head, tail) = rest.split_at(at);
        let start = head
            .rfind(|c: char| c.is_whitespace() || c == '(' || c == ',')
            .map_or(0, |i| i + 1);
        let token = &head[start..];
        out.push_str(&head[..start]);
        out.push_str(token.rsplit('/').next().unwrap_or(token));
        out.push_str(".rego:");
        rest = &tail[".rego:".len()..];
    }
    out.push_str(rest);
    out
}

/// The policy location (`file:line:col`) a regorus evaluation error points
/// at, without the rest of the message (which may quote input values).
pub(crate) fn eval_location(detail: &str) -> &str {
    detail
        .lines()
        .find_map(|l| l.trim().strip_prefix("-->"))
        .map_or("an unknown location", str::trim)
}
