use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Where the per-task workspace appears inside the sandbox; it is the
/// command's working directory.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where the tenant's files root (what `ReadFile`/`WriteFile` see) appears
/// inside the sandbox.
pub const FILES_MOUNT: &str = "/files";

/// Network access a request asks for. Policy decides whether it gets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkAccess {
    #[default]
    None,
    Host,
    Restricted,
}

/// Resource limits a request asks for. Zero means "not set": the profile's
/// limit applies. A request can only tighten a profile's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// CPU cores (fractional).
    pub cpu_limit: f32,
    pub memory_bytes: u64,
    pub pids: u32,
    pub io_weight: u32,
}

/// The sandbox part of a request, as the client sent it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxRequest {
    /// Ignored: every command runs sandboxed. Kept so policy can see what was asked.
    pub enabled: bool,
    pub network: NetworkAccess,
    pub limits: ResourceLimits,
    pub rw_paths: Vec<String>,
    pub ro_paths: Vec<String>,
    pub denied_paths: Vec<String>,
}

/// A command execution request exactly as a front door received it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Seconds; 0 means the configured default.
    pub timeout_secs: u32,
    pub metadata: BTreeMap<String, String>,
    pub sandbox: SandboxRequest,
}

/// Size limits applied to every request before policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_command_bytes: usize,
    pub max_args: usize,
    pub max_args_bytes: usize,
    pub max_env: usize,
    pub max_env_bytes: usize,
    pub max_metadata: usize,
    pub max_metadata_bytes: usize,
    pub max_sandbox_paths: usize,
    pub max_file_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(600),
            max_command_bytes: 4096,
            max_args: 1024,
            max_args_bytes: 128 * 1024,
            max_env: 64,
            max_env_bytes: 32 * 1024,
            max_metadata: 32,
            max_metadata_bytes: 8 * 1024,
            max_sandbox_paths: 32,
            max_file_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A command request that passed validation: sizes within limits, no NUL
/// bytes, a clean relative `cwd`, a concrete timeout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidExec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Relative to [`WORKSPACE_MOUNT`]; empty for the workspace itself.
    pub cwd: String,
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    pub metadata: BTreeMap<String, String>,
    pub sandbox: SandboxRequest,
}

mod duration_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl ExecRequest {
    /// Checks every rule that does not need policy: emptiness, NUL bytes,
    /// sizes, env names, `cwd` confinement and the timeout ceiling.
    pub fn validate(self, limits: &RequestLimits) -> Result<ValidExec, ValidationError> {
        if self.command.trim().is_empty() {
            return Err(ValidationError::EmptyCommand);
        }
        no_nul("command", &self.command)?;
        max_len("command", self.command.len(), limits.max_command_bytes)?;

        max_count("args", self.args.len(), limits.max_args)?;
        let mut total = 0usize;
        for (i, arg) in self.args.iter().enumerate() {
            no_nul(&format!("args[{i}]"), arg)?;
            total = total.saturating_add(arg.len());
        }
        max_len("args", total, limits.max_args_bytes)?;

        max_count("env", self.env.len(), limits.max_env)?;
        let mut total = 0usize;
        for (name, value) in &self.env {
            no_nul("env name", name)?;
            if !is_env_name(name) {
                return Err(ValidationError::BadEnvName { name: name.clone() });
            }
            no_nul(&format!("env[{name}]"), value)?;
            total = total.saturating_add(name.len() + value.len());
        }
        max_len("env", total, limits.max_env_bytes)?;

        max_count("metadata", self.metadata.len(), limits.max_metadata)?;
        let mut total = 0usize;
        for (k, v) in &self.metadata {
            no_nul("metadata key", k)?;
            no_nul(&format!("metadata[{k}]"), v)?;
            total = total.saturating_add(k.len() + v.len());
        }
        max_len("metadata", total, limits.max_metadata_bytes)?;

        let cwd = match self.cwd.as_deref() {
            None | Some("") => String::new(),
            Some(raw) => {
                no_nul("cwd", raw)?;
                confine(raw, WORKSPACE_MOUNT).ok_or_else(|| {
                    ValidationError::CwdOutsideWorkspace {
                        cwd: raw.to_owned(),
                        root: WORKSPACE_MOUNT,
                    }
                })?
            }
        };

        let timeout = match self.timeout_secs {
            0 => limits.default_timeout,
            s => {
                let requested = Duration::from_secs(u64::from(s));
                if requested > limits.max_timeout {
                    return Err(ValidationError::TimeoutTooLarge {
                        requested: u64::from(s),
                        max: limits.max_timeout.as_secs(),
                    });
                }
                requested
            }
        };

        let sb = &self.sandbox;
        for (field, paths) in [
            ("rw_paths", &sb.rw_paths),
            ("ro_paths", &sb.ro_paths),
            ("denied_paths", &sb.denied_paths),
        ] {
            max_count(field, paths.len(), limits.max_sandbox_paths)?;
            for p in paths {
                no_nul(field, p)?;
                if !is_clean_absolute(p) {
                    return Err(ValidationError::BadSandboxPath {
                        field: field.to_owned(),
                        path: p.clone(),
                    });
                }
            }
        }
        let l = &sb.limits;
        if !l.cpu_limit.is_finite() || l.cpu_limit < 0.0 {
            return Err(ValidationError::BadLimit {
                field: "cpu_limit",
                reason: format!("{} is not a non-negative number", l.cpu_limit),
            });
        }
        if l.io_weight > 10_000 {
            return Err(ValidationError::BadLimit {
                field: "io_weight",
                reason: format!("{} is above 10000", l.io_weight),
            });
        }

        Ok(ValidExec {
            command: self.command,
            args: self.args,
            env: self.env,
            cwd,
            timeout,
            metadata: self.metadata,
            sandbox: self.sandbox,
        })
    }
}

/// A file operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    Read,
    Write,
    Delete,
}

impl FileOp {
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
            FileOp::Delete => "delete",
        }
    }
}

/// A file request as received: `path` is relative to the files root, or
/// absolute under [`FILES_MOUNT`] (the same file as a command sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub path: String,
    pub op: FileOp,
    pub content_len: usize,
    pub mode: u32,
    pub recursive: bool,
}

/// A file request whose path is a clean relative path inside the files root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidFile {
    /// Relative to the tenant's files root, never empty, no `..`.
    pub path: String,
    pub op: FileOp,
    /// Permission bits for writes; 0o644 when the request said 0.
    pub mode: u32,
    pub recursive: bool,
}

impl FileRequest {
    pub fn validate(self, limits: &RequestLimits) -> Result<ValidFile, ValidationError> {
        no_nul("path", &self.path)?;
        max_len("path", self.path.len(), 4096)?;
        if self.path.is_empty() {
            return Err(ValidationError::EmptyPath);
        }
        let path =
            confine(&self.path, FILES_MOUNT).ok_or_else(|| ValidationError::PathOutsideRoot {
                path: self.path.clone(),
            })?;
        if path.is_empty() {
            return Err(ValidationError::RootOperation {
                op: match self.op {
                    FileOp::Read => "read",
                    FileOp::Write => "written",
                    FileOp::Delete => "deleted",
                },
            });
        }
        if self.mode & !0o777 != 0 {
            return Err(ValidationError::BadMode { mode: self.mode });
        }
        if self.content_len > limits.max_file_bytes {
            return Err(ValidationError::ContentTooLarge {
                len: self.content_len,
                max: limits.max_file_bytes,
            });
        }
        Ok(ValidFile {
            path,
            op: self.op,
            mode: if self.mode == 0 { 0o644 } else { self.mode },
            recursive: self.recursive,
        })
    }
}

fn no_nul(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.contains('\0') {
        return Err(ValidationError::NulByte {
            field: field.to_owned(),
        });
    }
    Ok(())
}

fn max_len(field: &str, len: usize, max: usize) -> Result<(), ValidationError> {
    if len > max {
        return Err(ValidationError::TooLong {
            field: field.to_owned(),
            len,
            max,
        });
    }
    Ok(())
}

fn max_count(field: &str, count: usize, max: usize) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::TooMany {
            field: field.to_owned(),
            count,
            max,
        });
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn is_clean_absolute(p: &str) -> bool {
    let path = Path::new(p);
    path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
}

/// Turns `raw` (relative, or absolute under `mount`) into a clean relative
/// path with no `..`, `.` or empty components. `None` when it would leave
/// the mount. `..` is refused outright rather than resolved: a path that
/// needs it is either an escape attempt or a mistake.
fn confine(raw: &str, mount: &str) -> Option<String> {
    let rel = if raw.starts_with('/') {
        let rest = raw.strip_prefix(mount)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    } else {
        raw
    };
    let mut parts = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}
