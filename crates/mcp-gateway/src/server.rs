//! Assembles a gateway from a [`Config`] and serves it: policy, sandbox,
//! files root and store are opened (and checked) before the listener binds,
//! so a gateway that starts is a gateway that can work.
//!
//! One listener serves both front doors. HTTP/1.1 and HTTP/2 (cleartext,
//! prior knowledge) are accepted on the same port; each request is steered
//! by its `content-type`: `application/grpc*` goes to the tonic services
//! (`mcp.McpService`, `grpc.health.v1.Health`, server reflection), anything
//! else to the REST router.

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use axum::serve::ListenerExt as _;
use mcp_policy::{EngineOptions, PolicyService, ServiceOptions};
use mcp_proto::mcp_service_server::McpServiceServer;
use mcp_sandbox::{FilesRoot, Profiles, Sandbox, SandboxSettings};
use tokio::net::TcpListener;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::StartError;
use crate::grpc::GrpcService;
use crate::pipeline::{Gateway, PipelineSettings};
use crate::rest::{self, RestSettings};

/// Largest gRPC message accepted or sent (file contents travel in one message).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Builds the gateway: loads and compiles policies, loads profiles, checks
/// that a real sandbox starts, opens the store and reaps tasks a previous
/// run left unfinished.
pub async fn build(cfg: &Config) -> Result<Arc<Gateway>, StartError> {
    let policy = Arc::new(PolicyService::start(
        &cfg.policies_dir,
        ServiceOptions {
            engine: EngineOptions::default(),
            reload_requires_passing_tests: cfg.policy_reload_requires_tests,
            shadow_dir: cfg.policy_shadow_dir.clone(),
        },
    )?);
    info!(revision = %policy.revision(), shadow = ?policy.shadow_revision(), dir = %cfg.policies_dir.display(), "policies loaded");
    let watcher = if cfg.policy_watch {
        Some(policy.watch()?)
    } else {
        None
    };

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
            environment: cfg.policy_environment.clone(),
        },
    );
    gateway.keep_policy_watcher(watcher);
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

/// Serves the gRPC services and the REST API on `listener` until
/// `shutdown` resolves, then drains tasks.
pub async fn serve(
    cfg: &Config,
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if cfg.insecure_no_auth && !cfg.listen.ip().is_loopback() {
        warn!(listen = %cfg.listen, "serving a non-loopback address WITHOUT AUTHENTICATION (server.insecure_no_auth = true): anyone who can reach it can run commands");
    }
    let app = app(cfg, gateway.clone()).await?;
    info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), version = env!("CARGO_PKG_VERSION"), "serving");
    let listener = listener.tap_io(|tcp| {
        // Small gRPC and SSE frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    // Draining starts with the signal, beside the server's own graceful
    // shutdown: open output streams end only when their tasks do, and the
    // grace period is what bounds the tasks.
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        info!("shutdown requested; draining");
        let _ = signalled.send(());
    };
    let drain = {
        let gateway = gateway.clone();
        let grace = cfg.shutdown_grace;
        async move {
            if on_signal.await.is_ok() {
                gateway.shutdown(grace).await;
            }
        }
    };
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal);
    let reload_on_hangup = tokio::spawn(reload_on_sighup(gateway.clone()));
    let (result, ()) = tokio::join!(serve.into_future(), drain);
    reload_on_hangup.abort();
    info!("listener closed; draining tasks");
    gateway.shutdown(cfg.shutdown_grace).await;
    info!("stopped");
    result.map_err(StartError::Serve)
}

/// Reloads the policy set on every SIGHUP. A broken set is rejected (with
/// file:line errors in the log) and the previous revision keeps serving.
async fn reload_on_sighup(gateway: Arc<Gateway>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        warn!("cannot listen for SIGHUP; policy reload only by file watching");
        return;
    };
    while hangup.recv().await.is_some() {
        let svc = gateway.policy_service();
        match tokio::task::spawn_blocking(move || svc.reload()).await {
            Ok(Ok(revision)) => info!(revision = %revision, "policies reloaded on SIGHUP"),
            Ok(Err(e)) => {
                warn!(error = %e, "policy reload rejected; the previous revision keeps serving")
            }
            Err(e) => warn!(error = %e, "policy reload task failed"),
        }
    }
}

/// Both front doors behind one service: gRPC (with the standard health
/// service and reflection) and REST, steered by `content-type`.
pub async fn app(cfg: &Config, gateway: Arc<Gateway>) -> Result<axum::Router, StartError> {
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
    let grpc = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(service)
        .prepare()
        .into_axum_router();
    let rest = rest::router(
        gateway,
        RestSettings {
            http: cfg.http.clone(),
            max_file_bytes: cfg.request_limits.max_file_bytes,
            max_task_timeout: cfg.request_limits.max_timeout,
        },
    );
    let steer = tower::service_fn(move |mut req: Request| {
        let grpc = grpc.clone();
        let rest = rest.clone();
        async move {
            let resp: Response = if is_grpc(&req) {
                // tonic's `Request::remote_addr` reads its own connect info.
                if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
                    let info = TcpConnectInfo {
                        local_addr: None,
                        remote_addr: Some(*peer),
                    };
                    req.extensions_mut().insert(info);
                }
                grpc.oneshot(req).await?
            } else {
                rest.oneshot(req).await?
            };
            Ok::<_, Infallible>(resp)
        }
    });
    Ok(axum::Router::new().fallback_service(steer))
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}
