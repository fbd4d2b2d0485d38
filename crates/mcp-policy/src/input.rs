use std::collections::BTreeMap;

use mcp_core::{NetworkAccess, Principal, SandboxRequest, ValidExec, ValidFile};
use serde::{Deserialize, Serialize};

/// The version of the input document described in `docs/policy/input.md`
/// (and `docs/policy/input.schema.json`). It changes only when a field is
/// removed or changes meaning; new optional fields keep the version.
pub const INPUT_VERSION: u32 = 1;

/// Facts about the request that the gateway knows from the call itself. It
/// becomes `input.context` ([`ContextInput`]); the deployment's environment
/// tags and the trace id are added with [`PolicyInput::with_environment`]
/// and [`PolicyInput::with_trace_id`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    /// When the gateway received the request, RFC 3339.
    pub time: String,
    /// The peer address, when known.
    pub source: Option<String>,
    pub request_id: String,
}

/// `input.context`: facts about the request that are not part of what the
/// client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextInput {
    /// When the gateway received the request, RFC 3339. Policies compare
    /// grant expiry with this rather than with the clock, so a replay of a
    /// stored request is judged at the time it was made.
    pub time: String,
    /// The peer address, when known.
    pub source: Option<String>,
    pub request_id: String,
    /// The W3C trace id of the request, when the caller sent `traceparent`.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Tags of the deployment that received the request, such as
    /// `env = "prod"`; from the gateway's configuration.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

impl From<&RequestContext> for ContextInput {
    fn from(ctx: &RequestContext) -> Self {
        ContextInput {
            time: ctx.time.clone(),
            source: ctx.source.clone(),
            request_id: ctx.request_id.clone(),
            trace_id: None,
            environment: BTreeMap::new(),
        }
    }
}

/// The `input` document a policy sees. Its JSON shape is the contract with
/// the policy authors and is documented in `docs/policy/input.md`.
///
/// It carries names, never secrets: environment variable *values* and file
/// contents are left out on purpose, so nothing sensitive can leak through a
/// policy's deny reasons or a decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// [`INPUT_VERSION`]; a document without it is version 1.
    #[serde(default = "input_version")]
    pub version: u32,
    pub principal: Principal,
    pub request: RequestInput,
    pub context: ContextInput,
}

fn input_version() -> u32 {
    INPUT_VERSION
}

/// `input.request`: what is asked. Exactly one of `command`, `file`,
/// `network` and `mcp_tool` is set: the one `kind` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// `"command"`, `"file"`, `"network"` or `"mcp_tool"`. A string rather
    /// than an enum so a policy can be tested against kinds the gateway does
    /// not send (yet).
    pub kind: String,
    #[serde(default)]
    pub command: Option<CommandInput>,
    #[serde(default)]
    pub file: Option<FileInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<McpToolInput>,
    /// What the client asked of the sandbox; `null` unless `kind` is
    /// `command`.
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
    /// Names of the secrets the environment refers to (`secret://NAME`),
    /// sorted; the policy decides whether this principal may have them.
    /// Values are never given to policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
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

/// `input.request.network`: a connection the caller wants to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInput {
    /// The host name or address as asked.
    pub host: String,
    pub port: u16,
    /// `"tcp"` or `"udp"`.
    pub protocol: String,
    /// The addresses `host` resolved to, so that a policy can refuse
    /// private or link-local ranges whatever the name says (DNS rebinding).
    #[serde(default)]
    pub resolved_ips: Vec<String>,
    /// The same addresses as the egress proxy classified them: its
    /// classifier is the only judge of "internal", for the policy and for
    /// the proxy's own guard. An address of `resolved_ips` missing here is
    /// unclassified (an input written by hand, or logged before this field
    /// existed).
    #[serde(default)]
    pub addresses: Vec<AddressInput>,
}

/// One entry of `input.request.network.addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    pub ip: String,
    /// `public`, `loopback`, `private`, `cgnat`, `link-local`, `metadata`,
    /// `unique-local`, `multicast`, `broadcast`, `unspecified` or
    /// `reserved`.
    pub class: String,
    /// Anything but `public`: the proxy refuses it unless the decision
    /// grants exactly this address.
    pub internal: bool,
    /// For an IPv6 address that carries an IPv4 one, the form and that
    /// address (`nat64 of 127.0.0.1`); `null` otherwise.
    #[serde(default)]
    pub form: Option<String>,
}

/// `input.request.mcp_tool`: a call of a tool of an MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolInput {
    /// The MCP server the tool belongs to, as configured in the gateway.
    pub server: String,
    /// The tool name (`create_issue`).
    pub name: String,
    /// The call's arguments as the client sent them: the only free-form part
    /// of the input, so its size and nesting are bounded before evaluation
    /// ([`crate::InputLimits`]).
    #[serde(default)]
    pub arguments: serde_json::Value,
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
        let mut input = PolicyInput::of_kind(principal, "command", ctx);
        input.request.command = Some(CommandInput {
            name: req.command.clone(),
            resolved_path: resolved_path.map(str::to_owned),
            args: req.args.clone(),
            // BTreeMap keys are already sorted and unique.
            env_names: req.env.keys().cloned().collect(),
            cwd: req.cwd.clone(),
            timeout_secs: req.timeout.as_secs(),
            secrets: mcp_core::secrets::names(req.env.values()),
        });
        input.request.sandbox = Some(SandboxInput::from(&req.sandbox));
        input.request.metadata = req.metadata.clone();
        input
    }

    /// The input for a file operation.
    pub fn file(principal: &Principal, req: &ValidFile, ctx: &RequestContext) -> PolicyInput {
        let mut input = PolicyInput::of_kind(principal, "file", ctx);
        input.request.file = Some(FileInput {
            path: req.path.clone(),
            op: req.op.as_str().to_owned(),
            mode: req.mode,
            recursive: req.recursive,
        });
        input
    }

    /// The input for opening a network connection.
    pub fn network(principal: &Principal, net: NetworkInput, ctx: &RequestContext) -> PolicyInput {
        let mut input = PolicyInput::of_kind(principal, "network", ctx);
        input.request.network = Some(net);
        input
    }

    /// The input for calling a tool of an MCP server.
    pub fn mcp_tool(
        principal: &Principal,
        tool: McpToolInput,
        ctx: &RequestContext,
    ) -> PolicyInput {
        let mut input = PolicyInput::of_kind(principal, "mcp_tool", ctx);
        input.request.mcp_tool = Some(tool);
        input
    }

    fn of_kind(principal: &Principal, kind: &str, ctx: &RequestContext) -> PolicyInput {
        PolicyInput {
            version: INPUT_VERSION,
            principal: principal.clone(),
            request: RequestInput {
                kind: kind.to_owned(),
                command: None,
                file: None,
                network: None,
                mcp_tool: None,
                sandbox: None,
                metadata: BTreeMap::new(),
            },
            context: ContextInput::from(ctx),
        }
    }

    /// Sets the deployment's environment tags (`input.context.environment`).
    pub fn with_environment(mut self, tags: &BTreeMap<String, String>) -> PolicyInput {
        self.context.environment.clone_from(tags);
        self
    }

    /// Sets the W3C trace id (`input.context.trace_id`).
    pub fn with_trace_id(mut self, trace_id: Option<String>) -> PolicyInput {
        self.context.trace_id = trace_id;
        self
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
