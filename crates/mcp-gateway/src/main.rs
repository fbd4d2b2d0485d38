//! `mcp-gateway`: the server and its command-line client in one binary.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use mcp_client::{Client, ClientError, DEFAULT_ENDPOINT, OutputChunkType, TaskStatus};
use mcp_gateway::config::{self, Overrides};
use mcp_gateway::{server, telemetry};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
#[command(
    name = "mcp-gateway",
    version,
    about = "Run commands safely: Rego policy + bubblewrap sandbox behind gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServerArgs),
    /// Run a command through a gateway and stream its output; exits with its exit code.
    Exec(ExecArgs),
    /// Inspect or cancel a task.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Validate the configuration, policies and profiles without starting.
    CheckConfig(ServerArgs),
    /// Test, evaluate, check and replay policies; export the decision log.
    #[command(subcommand)]
    Policy(mcp_gateway::cmd_policy::PolicyCommand),
    /// Report what this host offers the sandbox and which profiles it can enforce.
    #[command(subcommand)]
    Sandbox(mcp_gateway::cmd_sandbox::SandboxCommand),
    /// Verify the audit trail's chain and signed checkpoints; export it.
    #[command(subcommand)]
    Audit(mcp_gateway::cmd_audit::AuditCommand),
    /// Make API keys and the hashes the config stores.
    #[command(subcommand)]
    Auth(mcp_gateway::auth::cli::AuthCommand),
    /// Print a shell completion script (used by packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print a man page in roff: mcp-gateway(1), or that of a subcommand,
    /// e.g. `man task status` for mcp-gateway-task-status(1) (used by packaging).
    #[command(hide = true)]
    Man { subcommand: Vec<String> },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Config file [default: /etc/mcp-gateway/config.toml when it exists].
    #[arg(long, env = "MCP_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8081.
    #[arg(long)]
    listen: Option<String>,
    /// Where the database, workspaces and files live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory of *.rego policies.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Directory of sandbox profiles (*.toml).
    #[arg(long)]
    profiles: Option<PathBuf>,
}

impl ServerArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            policies: self.policies.clone(),
            profiles: self.profiles.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct Endpoint {
    /// Gateway address.
    #[arg(long, env = "MCP_GATEWAY_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// API key, sent as `x-api-key` (prefer the environment variable: a
    /// flag shows in `ps`).
    #[arg(
        long,
        env = "MCP_GATEWAY_API_KEY",
        hide_env_values = true,
        conflicts_with = "token"
    )]
    api_key: Option<String>,
    /// JWT bearer token, sent as `authorization: Bearer`.
    #[arg(long, env = "MCP_GATEWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) that signed the gateway's; turns on TLS.
    #[arg(long, env = "MCP_GATEWAY_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "MCP_GATEWAY_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(long, env = "MCP_GATEWAY_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

impl Endpoint {
    /// Connects with the credential and TLS options given.
    async fn connect(&self) -> Result<Client, ClientError> {
        let credential = match (&self.api_key, &self.token) {
            (Some(k), _) => Some(mcp_client::Credential::ApiKey(k.clone())),
            (None, Some(t)) => Some(mcp_client::Credential::Token(t.clone())),
            (None, None) => None,
        };
        let tls = (self.ca.is_some() || self.cert.is_some()).then(|| mcp_client::TlsOptions {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: None,
        });
        Client::connect_with(
            &self.endpoint,
            &mcp_client::ConnectOptions { credential, tls },
        )
        .await
    }
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Wall-clock timeout in seconds [default: the gateway's].
    #[arg(long)]
    timeout: Option<u32>,
    /// Working directory inside /workspace.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the command, NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Network access of the sandbox: `restricted` reaches what the network
    /// policy allows, through the gateway's egress proxy.
    #[arg(long, value_enum, default_value_t = Network::None)]
    network: Network,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    argv: Vec<String>,
}

/// `exec --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Network {
    /// No network (only the sandbox's own loopback).
    None,
    /// Egress through the gateway's proxy, each connection decided by policy.
    Restricted,
    /// The host's network (profiles with `allow_host` only).
    Host,
}

impl Network {
    fn access(self) -> mcp_proto::NetworkAccess {
        match self {
            Network::None => mcp_proto::NetworkAccess::NetworkNone,
            Network::Restricted => mcp_proto::NetworkAccess::NetworkRestricted,
            Network::Host => mcp_proto::NetworkAccess::NetworkHost,
        }
    }
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Print a task's status and result as JSON.
    Status {
        id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Cancel a queued or running task (or withdraw one pending approval).
    Cancel {
        id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Approve a task waiting for approval; it then runs.
    Approve {
        id: String,
        /// An approval token naming the approver (the caller only carries it).
        #[arg(long)]
        approval_token: Option<String>,
        /// Kept in the decision log.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Reject a task waiting for approval.
    Reject {
        id: String,
        /// An approval token naming the approver (the caller only carries it).
        #[arg(long)]
        approval_token: Option<String>,
        /// Why; stored as the task's failure reason.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Print an approval token for one task and one approver, signed with
    /// `[approval] token_secret` of the gateway's configuration.
    ApprovalToken {
        id: String,
        /// The approver's principal id.
        #[arg(long)]
        approver: String,
        #[arg(long)]
        tenant: String,
        /// The approver's roles (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds (at most `approval.token_max_ttl_secs`).
        #[arg(long, default_value_t = 300)]
        ttl_secs: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// Exit codes of `exec` when the command itself did not produce one,
/// following `timeout(1)` and container runtimes.
const EXIT_TOOL_ERROR: u8 = 125;
const EXIT_DENIED: u8 = 126;
const EXIT_TIMED_OUT: u8 = 124;
const EXIT_CANCELLED: u8 = 130;

fn main() -> ExitCode {
    // Inside a pooled sandbox this binary is the stub that executes the
    // task's command: no CLI parsing, no runtime, nothing else.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == mcp_sandbox::STUB_SUBCOMMAND)
    {
        return mcp_sandbox::stub_main();
    }
    // Inside a restricted-network sandbox this binary first runs as the
    // egress forwarder (loopback port -> the task's proxy socket), which
    // then runs the command and exits with its status.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == mcp_egress::forward::SUBCOMMAND)
    {
        let code = mcp_egress::forward::main_with(std::env::args_os().skip(1));
        return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_TOOL_ERROR));
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-gateway: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_TOOL_ERROR);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => run_serve(args).await,
            Command::CheckConfig(args) => check_config(args),
            Command::Exec(args) => run_exec(args).await,
            Command::Task(cmd) => run_task(cmd).await,
            Command::Policy(cmd) => Ok(mcp_gateway::cmd_policy::run(cmd).await?),
            Command::Sandbox(cmd) => mcp_gateway::cmd_sandbox::run(cmd).await,
            Command::Audit(cmd) => mcp_gateway::cmd_audit::run(cmd).await,
            Command::Auth(cmd) => match mcp_gateway::auth::cli::run(&cmd) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(anyhow::anyhow!(e)),
            },
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "mcp-gateway",
                    &mut std::io::stdout(),
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { subcommand } => {
                // Built, so that subcommands carry their page names
                // (mcp-gateway-task-status) and full usage lines.
                let mut cmd = Cli::command();
                cmd.build();
                for name in &subcommand {
                    cmd = cmd
                        .find_subcommand(name)
                        .with_context(|| format!("no subcommand {name:?}"))?
                        .clone();
                }
                clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcp-gateway: {e:#}");
            ExitCode::from(EXIT_TOOL_ERROR)
        }
    }
}

async fn run_serve(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(args.config.as_deref(), &args.overrides())?;
    let telemetry = telemetry::init_with(&cfg.telemetry)?;
    let gateway = server::build(&cfg).await?;
    let (_, listener) = server::bind(&cfg).await?;
    server::serve(&cfg, gateway, listener, shutdown_signal()).await?;
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn check_config(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(args.config.as_deref(), &args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut problems = Vec::new();
    let loaded =
        mcp_gateway::cmd_policy::bundle_key(cfg.policy_bundle_key.as_deref()).and_then(|key| {
            let options = mcp_policy::EngineOptions {
                bundle_key: key,
                ..mcp_policy::EngineOptions::default()
            };
            mcp_policy::PolicyEngine::load_with(&cfg.policies_dir, options)
        });
    let revision = match loaded {
        Ok(p) => p.revision().to_owned(),
        // Offline: a bundle URL is fetched at start; nothing cached yet.
        Err(_) if cfg.policy_bundle_fetch.is_some() && !cfg.policies_dir.exists() => {
            "(fetched from policy.bundle at start)".to_owned()
        }
        Err(e) => {
            problems.push(format!("policies: {e}"));
            String::new()
        }
    };
    let profiles = match mcp_sandbox::Profiles::load_dir(&cfg.profiles_dir) {
        Ok(p) => p.names().join(", "),
        Err(e) => {
            problems.push(format!("profiles: {e}"));
            String::new()
        }
    };
    if !cfg.bwrap.is_file() {
        problems.push(format!(
            "sandbox.bwrap {} not found; install bubblewrap",
            cfg.bwrap.display()
        ));
    }
    if !problems.is_empty() {
        eprintln!("invalid configuration:\n  - {}", problems.join("\n  - "));
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "configuration ok: listen {}, database {}, policy revision {revision}, profiles [{profiles}], authentication {}",
        cfg.listen,
        cfg.database_url,
        mcp_gateway::auth::describe(&cfg.auth, cfg.tls.as_ref())
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.endpoint.connect().await?;
    let mut argv = args.argv.into_iter();
    let command = argv.next().context("no command given")?;
    let mut req = Client::command(&command, argv);
    req.timeout = args.timeout.unwrap_or(0);
    req.cwd = args.cwd;
    req.env = args.env.into_iter().collect();
    if args.network != Network::None {
        req.sandbox_config = Some(mcp_client::SandboxConfig {
            network_access: args.network.access().into(),
            ..Default::default()
        });
    }

    let created = match client.execute(req).await {
        Ok(c) => c,
        Err(e) => return Ok(report_error(&e)),
    };
    let id = created.task_id;
    let mut stream = client.stream(&id).await?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut exit_code: Option<i32> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(chunk) = msg? else { break };
                match OutputChunkType::try_from(chunk.r#type) {
                    Ok(OutputChunkType::ChunkStdout) => { stdout.write_all(&chunk.data).await?; stdout.flush().await?; }
                    Ok(OutputChunkType::ChunkStderr) => { stderr.write_all(&chunk.data).await?; stderr.flush().await?; }
                    Ok(OutputChunkType::ChunkExitCode) => {
                        exit_code = String::from_utf8_lossy(&chunk.data).trim().parse().ok();
                    }
                    Ok(OutputChunkType::ChunkEvent) | Err(_) => {
                        eprintln!("mcp-gateway: {}", String::from_utf8_lossy(&chunk.data));
                    }
                }
            }
            _ = &mut ctrl_c => {
                eprintln!("mcp-gateway: cancelling task {id}");
                let _ = client.cancel(&id).await;
                return Ok(ExitCode::from(EXIT_CANCELLED));
            }
        }
    }
    // The exit-code chunk already says how the command ended; the status
    // only refines timed-out and cancelled. If the gateway went away after
    // the stream ended, the exit code still stands.
    let state = client
        .status(&id)
        .await
        .ok()
        .and_then(|status| status.task_info)
        .and_then(|t| TaskStatus::try_from(t.status).ok());
    Ok(match state {
        Some(TaskStatus::TaskTimedOut) => ExitCode::from(EXIT_TIMED_OUT),
        Some(TaskStatus::TaskCancelled) => ExitCode::from(EXIT_CANCELLED),
        _ => match exit_code {
            Some(c) if (0..=255).contains(&c) => ExitCode::from(c as u8),
            _ => ExitCode::from(EXIT_TOOL_ERROR),
        },
    })
}

fn report_error(e: &ClientError) -> ExitCode {
    eprintln!("mcp-gateway: {e}");
    match e.status().map(|s| s.code()) {
        Some(tonic::Code::PermissionDenied) => ExitCode::from(EXIT_DENIED),
        _ => ExitCode::from(EXIT_TOOL_ERROR),
    }
}

async fn run_task(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    let res = match cmd {
        TaskCommand::Status { id, endpoint } => endpoint.connect().await?.status(&id).await,
        TaskCommand::Cancel { id, endpoint } => endpoint.connect().await?.cancel(&id).await,
        TaskCommand::Approve {
            id,
            approval_token,
            comment,
            endpoint,
        } => {
            let mut client = endpoint.connect().await?;
            client.approve(&id, approval_token, &comment).await
        }
        TaskCommand::Reject {
            id,
            approval_token,
            reason,
            endpoint,
        } => {
            let mut client = endpoint.connect().await?;
            client.reject(&id, approval_token, &reason).await
        }
        TaskCommand::ApprovalToken {
            id,
            approver,
            tenant,
            roles,
            ttl_secs,
            server,
        } => {
            let cfg = config::load(server.config.as_deref(), &server.overrides())?;
            let Some(secret) = &cfg.approval.token_secret else {
                anyhow::bail!("approval.token_secret is not set in the configuration");
            };
            let task: mcp_core::TaskId = id.parse()?;
            let principal = mcp_core::Principal {
                id: approver,
                tenant,
                roles,
                auth: mcp_core::AuthMethod::Jwt,
            };
            let claims = mcp_pipeline::approval::new_claims(
                &principal,
                task,
                std::time::Duration::from_secs(ttl_secs),
            );
            println!(
                "{}",
                mcp_pipeline::approval::mint_token(secret.expose(), &claims)?
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    match res {
        Ok(r) => {
            println!("{}", status_json(&r));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report_error(&e)),
    }
}

fn status_json(r: &mcp_client::TaskStatusResponse) -> String {
    let info = r.task_info.clone().unwrap_or_default();
    let status = TaskStatus::try_from(info.status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| info.status.to_string());
    let mut v = serde_json::json!({
        "task_id": info.task_id,
        "status": status,
        "created_at": info.created_at,
        "started_at": info.started_at,
        "completed_at": info.completed_at,
        "failure_reason": info.failure_reason,
        "profile": info.profile,
        "metadata": info.metadata,
        "approval_reason": info.approval_reason,
        "approval_expires_at": info.approval_expires_at,
    });
    if let Some(res) = &r.result {
        v["result"] = serde_json::json!({
            "exit_code": res.exit_code,
            "stdout": res.stdout,
            "stderr": res.stderr,
            "stdout_truncated": res.stdout_truncated,
            "stderr_truncated": res.stderr_truncated,
            "execution_time_ms": res.execution_time_ms,
            "resource_usage": res.resource_usage.as_ref().map(|u| serde_json::json!({
                "cpu_time_ms": u.cpu_time_ms,
                "max_memory_kb": u.max_memory_kb,
                "io_read_bytes": u.io_read_bytes,
                "io_write_bytes": u.io_write_bytes,
            })),
        });
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
