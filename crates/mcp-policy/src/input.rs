use std::collections::BTreeMap;

use mcp_core::{NetworkAccess, Principal, SandboxRequest, ValidExec, ValidFile};
use serde::{Deserialize, Serialize};

/// Facts about the request that are not part of what the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    /// When the gateway received the request, RFC 3339.
    pub time: String,
    /// The peer address, when known.
    pub source: Option<String>,
    pub request_id: String,
}

/// The `input` document a policy sees. Its JSON shape is the contract with
/// the policy authors and is documented in `policies/README.md`.
///
/// It carries names, never secrets: environment variable *values* and file
/// contents are left out on purpose, so nothing sensitive can leak through a
/// policy's deny reasons or a decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub principal: Principal,
    pub request: RequestInput,
    pub context: RequestContext,
}

/// `input.request`: what is asked. Exactly one of `command` / `file` is set,
/// matching `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// `"command"` or `"file"`. A string rather than an enum so a policy can
    /// be tested against kinds the gateway does not send (yet).
    pub kind: String,
    #[serde(default)]
    pub command: Option<CommandInput>,
    #[serde(default)]
    pub file: Option<FileInput>,
    /// What the client asked of the sandbox; `null` for file requests.
    #[serde(default)]
    pub sandbox: Option<SandboxInput>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `input.request.command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandInput {
    /// The command as the client wrote it (`ls`, `/usr/bin/ls`).
    pub name: String,
    /// The absolute path the gateway resolved `name` to, or `null` when it
    /// found no such binary.
    pub resolved_path: Option<String>,
    pub args: Vec<String>,
    /// Names of the requested environment variables, sorted. Values are
    /// never given to policy.
    pub env_names: Vec<String>,
    /// Relative to the workspace; empty for the workspace itself.
    pub cwd: String,
    #[serde(default)]
    pub timeout_secs: u64,
}

/// `input.request.file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// Clean path relative to the tenant's files root.
    pub path: String,
    /// `"read"`, `"write"` or `"delete"`.
    pub op: String,
    pub mode: u32,
    pub recursive: bool,
}

/// `input.request.sandbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxInput {
    /// `"none"`, `"host"` or `"restricted"`.
    pub network: String,
    pub limits: LimitsInput,
    pub rw_paths: Vec<String>,
    pub ro_paths: Vec<String>,
    pub denied_paths: Vec<String>,
}

/// `input.request.sandbox.limits`; zero means "not set".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    pub cpu_limit: f32,
    pub memory_bytes: u64,
    pub pids: u32,
    pub io_weight: u32,
}

impl PolicyInput {
    /// The input for a command request. `resolved_path` is where the gateway
    /// found the binary on its allowed search path, `None` when it did not.
    pub fn command(
        principal: &Principal,
        req: &ValidExec,
        resolved_path: Option<&str>,
        ctx: &RequestContext,
    ) -> PolicyInput {
        PolicyInput {
            principal: principal.clone(),
            request: RequestInput {
                kind: "command".to_owned(),
                command: Some(CommandInput {
                    name: req.command.clone(),
                    resolved_path: resolved_path.map(str::to_owned),
                    args: req.args.clone(),
                    // BTreeMap keys are already sorted and unique.
                    env_names: req.env.keys().cloned().collect(),
                    cwd: req.cwd.clone(),
                    timeout_secs: req.timeout.as_secs(),
                }),
                file: None,
                sandbox: Some(SandboxInput::from(&req.sandbox)),
                metadata: req.metadata.clone(),
            },
            context: ctx.clone(),
        }
    }

    /// The input for a file operation.
    pub fn file(principal: &Principal, req: &ValidFile, ctx: &RequestContext) -> PolicyInput {
        PolicyInput {
            principal: principal.clone(),
            request: RequestInput {
                kind: "file".to_owned(),
                command: None,
                file: Some(FileInput {
                    path: req.path.clone(),
                    op: req.op.as_str().to_owned(),
                    mode: req.mode,
                    recursive: req.recursive,
                }),
                sandbox: None,
                metadata: BTreeMap::new(),
            },
            context: ctx.clone(),
        }
    }
}

impl From<&SandboxRequest> for SandboxInput {
    fn from(sb: &SandboxRequest) -> Self {
        SandboxInput {
            network: network_name(sb.network).to_owned(),
            limits: LimitsInput {
                cpu_limit: sb.limits.cpu_limit,
                memory_bytes: sb.limits.memory_bytes,
                pids: sb.limits.pids,
                io_weight: sb.limits.io_weight,
            },
            rw_paths: sb.rw_paths.clone(),
            ro_paths: sb.ro_paths.clone(),
            denied_paths: sb.denied_paths.clone(),
        }
    }
}

fn network_name(n: NetworkAccess) -> &'static str {
    match n {
        NetworkAccess::None => "none",
        NetworkAccess::Host => "host",
        NetworkAccess::Restricted => "restricted",
    }
}
