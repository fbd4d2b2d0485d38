use thiserror::Error;

/// Why an incoming request was refused before policy saw it. Each variant names
/// the broken rule and the offending field; the front doors map all of them to
/// `INVALID_ARGUMENT` / HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("command must not be empty")]
    EmptyCommand,
    #[error("{field} contains a NUL byte")]
    NulByte { field: String },
    #[error("{field} is too long: {len} bytes, at most {max} allowed")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("too many {field}: {count}, at most {max} allowed")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    #[error("env name {name:?} is not a valid variable name")]
    BadEnvName { name: String },
    #[error("cwd {cwd:?} must stay inside {root} and may not contain '..'")]
    CwdOutsideWorkspace { cwd: String, root: &'static str },
    #[error("timeout {requested}s is above the maximum of {max}s")]
    TimeoutTooLarge { requested: u64, max: u64 },
    #[error("{field} {path:?} must be an absolute path without '..'")]
    BadSandboxPath { field: String, path: String },
    #[error("resource_limits.{field} is invalid: {reason}")]
    BadLimit { field: &'static str, reason: String },
    #[error("path {path:?} leaves the files root")]
    PathOutsideRoot { path: String },
    #[error("path must not be empty")]
    EmptyPath,
    #[error("the files root itself cannot be {op}")]
    RootOperation { op: &'static str },
    #[error("mode {mode:#o} is invalid: only permission bits 0o777 may be set")]
    BadMode { mode: u32 },
    #[error("content is too large: {len} bytes, at most {max} allowed")]
    ContentTooLarge { len: usize, max: usize },
}
