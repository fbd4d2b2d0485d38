use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why the sandbox could not be set up or a command could not be run.
///
/// A command that runs and exits non-zero, is killed by a signal, times out
/// or is cancelled is not an error: it is a [`crate::RunOutcome`].
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap not found or not executable at {path}: install it with `apt-get install bubblewrap`"
    )]
    BwrapMissing { path: PathBuf },
    #[error("cannot read sandbox profiles directory {path}")]
    ProfilesDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid sandbox profiles: {}", problems.join("; "))]
    BadProfile { problems: Vec<String> },
    #[error("unknown sandbox profile {name:?}")]
    UnknownProfile { name: String },
    #[error("tenant {tenant:?} is not a valid tenant name (1-64 of A-Z a-z 0-9 _ -)")]
    BadTenant { tenant: String },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    #[error("sandbox profile {profile:?} does not allow the requested network access")]
    NetworkNotAllowed { profile: String },
    #[error("refusing to run sandboxed commands as root: set run_as to an unprivileged (uid, gid)")]
    RunAsRoot,
    #[error("argv must not be empty and argv[0] must be an absolute path, got {argv0:?}")]
    BadArgv { argv0: String },
    #[error("an argument or environment value contains a NUL byte")]
    NulByte,
    #[error("cwd {cwd:?} must be a clean relative path inside the workspace")]
    BadCwd { cwd: String },
    #[error("denied path {path:?} cannot be masked: {reason}")]
    BadDeniedPath { path: String, reason: String },
    #[error("cannot prepare sandbox directory {path}")]
    Workspace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("all {count} sandbox uids of sandbox.uid_range are in use")]
    UidsExhausted { count: u32 },
    #[error("invalid sandbox uid range: {reason}")]
    BadUidRange { reason: String },
    #[error("invalid warm pool settings: {reason}")]
    BadPool { reason: String },
    #[error("cannot start bubblewrap")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for the sandboxed process")]
    Wait {
        #[source]
        source: io::Error,
    },
    #[error(
        "sandbox self-check of profile {profile:?} failed (exit code {exit_code}): {stderr}; make sure \
         bubblewrap 0.8+ is installed (`apt-get install bubblewrap`), unprivileged user namespaces \
         are enabled (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1), \
         the kernel has seccomp, and the sockets and files directories are reachable by the \
         sandbox user; `mcp-gateway sandbox check` reports each of these"
    )]
    Check {
        profile: String,
        exit_code: i32,
        stderr: String,
    },
    #[error("cannot build the seccomp filter of profile {profile:?}: {reason}")]
    Seccomp { profile: String, reason: String },
    #[error(
        "sandbox profiles cannot be enforced on this host: {}; `mcp-gateway sandbox check` reports what this host offers",
        problems.join("; ")
    )]
    NotEnforceable { problems: Vec<String> },
    #[error("cannot set up the task cgroup at {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a file operation on a tenant's files root failed. Paths are the
/// request's paths relative to the tenant root, never host paths.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path} does not exist")]
    NotFound { path: String },
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("directory {path} is not empty; delete it recursively")]
    DirectoryNotEmpty { path: String },
    #[error("the parent directory of {path} does not exist")]
    ParentMissing { path: String },
    #[error("{path} leads outside the files root")]
    Escape { path: String },
    #[error("{path} is too large: {size} bytes, at most {max} can be read")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("tenant {tenant:?} is not a valid tenant name (1-64 of A-Z a-z 0-9 _ -)")]
    BadTenant { tenant: String },
    #[error("i/o error on {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}
