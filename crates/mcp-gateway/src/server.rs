//! Assembles a gateway from a [`Config`] and serves it: policy, sandbox,
//! files root and store are opened (and checked) before the listener binds,
//! so a gateway that starts is a gateway that can work.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mcp_policy::PolicyEngine;
use mcp_proto::mcp_service_server::McpServiceServer;
use mcp_sandbox::{FilesRoot, Profiles, Sandbox, SandboxSettings};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::StartError;
use crate::grpc::GrpcService;
use crate::pipeline::{Gateway, PipelineSettings};

/// Largest gRPC message accepted or sent (file contents travel in one message).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Builds the gateway: loads and compiles policies, loads profiles, checks
/// that a real sandbox starts, opens the store and reaps tasks a previous
/// run left unfinished.
pub async fn build(cfg: &Config) -> Result<Arc<Gateway>, StartError> {
    let policy = PolicyEngine::load(&cfg.policies_dir)?;
    info!(revision = policy.revision(), dir = %cfg.policies_dir.display(), "policies loaded");

    let profiles = Profiles::load_dir(&cfg.profiles_dir)?;
    let run_as = SandboxSettings::default_run_as().map(|_| (cfg.sandbox_uid, cfg.sandbox_gid));
    let sandbox = Sandbox::new(
        SandboxSettings {
            bwrap: cfg.bwrap.clone(),
            run_as,
            workspaces_dir: cfg.workspaces_dir.clone(),
            files_root: cfg.files_root.clone(),
            max_output_bytes: cfg.max_output_bytes,
        },
        profiles,
    )?;
    sandbox.check().await?;
    info!(profiles = ?sandbox.profiles().names(), run_as = ?run_as, "sandbox ready");

    let files = FilesRoot::new(
        cfg.files_root.clone(),
        run_as,
        u64::try_from(cfg.request_limits.max_file_bytes).unwrap_or(u64::MAX),
    )?;
    let store = mcp_store::open_store(&cfg.database_url).await?;

    let gateway = Gateway::new(
        policy,
        sandbox,
        files,
        store,
        PipelineSettings {
            limits: cfg.request_limits.clone(),
            max_running: cfg.max_running_tasks,
            max_queued: cfg.max_queued_tasks,
            replica_id: cfg.replica_id.clone(),
        },
    );
    gateway
        .recover()
        .await
        .map_err(|e| StartError::Recover(Box::new(e)))?;
    Ok(gateway)
}

/// Binds the configured address (port 0 picks a free one) and returns it
/// with the listener, so callers (tests) learn the port before serving.
pub async fn bind(cfg: &Config) -> Result<(SocketAddr, TcpListener), StartError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.listen,
        source,
    })?;
    Ok((addr, listener))
}

/// Serves `mcp.McpService`, the standard gRPC health service and server
/// reflection on `listener` until `shutdown` resolves, then drains tasks.
pub async fn serve(
    cfg: &Config,
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    if cfg.insecure_no_auth && !cfg.listen.ip().is_loopback() {
        warn!(listen = %cfg.listen, "serving a non-loopback address WITHOUT AUTHENTICATION (server.insecure_no_auth = true): anyone who can reach it can run commands");
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<McpServiceServer<GrpcService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mcp_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(StartError::Reflection)?;
    let service = McpServiceServer::new(GrpcService::new(gateway.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), version = env!("CARGO_PKG_VERSION"), "serving");
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    info!("listener closed; draining tasks");
    gateway.shutdown(cfg.shutdown_grace).await;
    info!("stopped");
    result.map_err(StartError::Serve)
}
