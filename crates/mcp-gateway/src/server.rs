//! Assembles a gateway from a [`Config`] and serves it: policy, sandbox,
//! files root and store are opened (and checked) before the listener binds,
//! so a gateway that starts is a gateway that can work.
//!
//! One listener serves both front doors. HTTP/1.1 and HTTP/2 (cleartext,
//! prior knowledge) are accepted on the same port; each request is steered
//! by its `content-type`: `application/grpc*` goes to the tonic services
//! (`mcp.McpService`, `grpc.health.v1.Health`, server reflection), anything
//! else to the REST router. Before steering, every request is
//! authenticated ([`crate::auth`]): the outcome travels in its extensions;
//! a gRPC call without valid credentials is answered `UNAUTHENTICATED`
//! here, a REST one by the REST front middleware (so it gets the REST error
//! shape). The listener is plain TCP or TLS (`[tls]`, optionally mTLS).

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use axum::serve::Listener;
use mcp_policy::{EngineOptions, PolicyService, ServiceOptions};
use mcp_proto::mcp_service_server::McpServiceServer;
use mcp_sandbox::{FilesRoot, Profiles, Sandbox};
use tokio::net::TcpListener;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;
use tracing::{info, warn};

use crate::auth::tls::{PlainListener, TlsListener};
use crate::auth::{self, Authenticator, Peer};
use crate::config::Config;
use crate::error::{ErrorStatus, GatewayError, StartError, code_name};
use crate::grpc::GrpcService;
use crate::rest::{self, RestSettings};
use mcp_pipeline::{Gateway, PipelineSettings};

/// Largest gRPC message accepted or sent (file contents travel in one message).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Builds the gateway: loads and compiles policies, loads profiles, checks
/// that a real sandbox starts, opens the store and reaps tasks a previous
/// run left unfinished.
pub async fn build(cfg: &Config) -> Result<Arc<Gateway>, StartError> {
    let policy_options = ServiceOptions {
        engine: EngineOptions {
            // limits and require_approval: enforced by quota/approval.
            enforced: [
                mcp_policy::ObligationKind::Profile,
                mcp_policy::ObligationKind::Limits,
                mcp_policy::ObligationKind::RequireApproval,
                // network: enforced by the egress proxy (pipeline::egress).
                mcp_policy::ObligationKind::Network,
                // redact: output, stream and audit redaction (audit, live).
                mcp_policy::ObligationKind::Redact,
            ]
            .into_iter()
            .chain(EngineOptions::default().enforced)
            .collect(),
            bundle_key: crate::cmd_policy::bundle_key(cfg.policy_bundle_key.as_deref())?,
            ..EngineOptions::default()
        },
        reload_requires_passing_tests: cfg.policy_reload_requires_tests,
        shadow_dir: cfg.policy_shadow_dir.clone(),
    };
    // A bundle URL: the first download (or the cached last good bundle)
    // lands at `cfg.policies_dir` before the service starts from it.
    let bundle_fetcher = match &cfg.policy_bundle_fetch {
        Some(settings) => {
            let mut fetcher = crate::bundle_fetch::BundleFetcher::new(settings.clone())?;
            fetcher.prepare(&policy_options.engine).await?;
            Some(fetcher)
        }
        None => None,
    };
    let policy = Arc::new(PolicyService::start(&cfg.policies_dir, policy_options)?);
    if let Some(fetcher) = bundle_fetcher {
        // Ends when the policy service (the gateway) is dropped.
        drop(fetcher.spawn(Arc::downgrade(&policy)));
    }
    info!(revision = %policy.revision(), shadow = ?policy.shadow_revision(), dir = %cfg.policies_dir.display(), "policies loaded");
    let watcher = if cfg.policy_watch {
        Some(policy.watch()?)
    } else {
        None
    };

    let profiles = Profiles::load_dir(&cfg.profiles_dir)?;
    let settings = cfg.sandbox_settings();
    let run_as = settings.run_as;
    let sandbox = Sandbox::new(settings, profiles)?;
    // Sandbox inits outlive the bwrap we wait for by a moment; adopt and
    // reap them instead of leaving zombies to PID 1 (the gateway itself in
    // the container image).
    if let Err(e) = mcp_sandbox::adopt_orphans() {
        warn!(error = %e, "cannot adopt orphaned sandbox processes; PID 1 must reap them");
    }
    match (cfg.sandbox_uid_range, run_as) {
        (Some(range), Some(_)) => sandbox.set_uid_range(range)?,
        (Some(_), None) => {
            warn!("sandbox.uid_range ignored: the gateway is not root and cannot switch users");
        }
        (None, _) => {}
    }
    crate::sandbox_pool::enable(&sandbox, &cfg.sandbox_pool)?;
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
            approval: cfg.approval.clone(),
            quotas: cfg.quotas.clone(),
        },
    );
    gateway.keep_policy_watcher(watcher);
    if let Some(forwarder) = &cfg.egress_forwarder {
        gateway.set_egress_forwarder(forwarder.clone());
    }
    gateway.set_redactor(cfg.redactor.clone());
    gateway.set_secrets(cfg.secrets.clone());
    gateway.set_audit_log(mcp_pipeline::audit::open(&cfg.audit, &cfg.database_url).await?);
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
    if cfg.auth.insecure {
        warn!(listen = %cfg.listen, "serving a non-loopback address WITHOUT AUTHENTICATION (server.insecure_no_auth = true): anyone who can reach it can run commands");
    }
    let app = app(cfg, gateway.clone()).await?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let listener = match &cfg.tls {
        Some(t) => AnyListener::Tls(TlsListener::new(listener, t)?),
        None => AnyListener::Plain(PlainListener(listener)),
    };
    info!(
        listen = %local,
        version = env!("CARGO_PKG_VERSION"),
        tls = cfg.tls.is_some(),
        client_certs = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        authentication = cfg.auth.is_configured(),
        "serving"
    );
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
    let serve = async move {
        match listener {
            AnyListener::Tls(l) => serve_on(l, app, signal).await,
            AnyListener::Plain(l) => serve_on(l, app, signal).await,
        }
    };
    let reload_on_hangup = tokio::spawn(reload_on_sighup(gateway.clone()));
    let (result, ()) = tokio::join!(serve, drain);
    reload_on_hangup.abort();
    info!("listener closed; draining tasks");
    gateway.shutdown(cfg.shutdown_grace).await;
    info!("stopped");
    result.map_err(StartError::Serve)
}

/// The listener [`serve`] runs: the two are different types to axum.
enum AnyListener {
    Plain(PlainListener),
    Tls(TlsListener),
}

/// Serves `app` on `listener` until `signal`; every request carries its
/// [`Peer`] as connect info.
async fn serve_on<L>(
    listener: L,
    app: axum::Router,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = Peer>,
    Peer: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(signal)
        .into_future()
        .await
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
        gateway.clone(),
        RestSettings {
            http: cfg.http.clone(),
            max_file_bytes: cfg.request_limits.max_file_bytes,
            max_task_timeout: cfg.request_limits.max_timeout,
        },
    );
    let authenticator = Arc::new(Authenticator::new(cfg.auth.clone()));
    let steer = tower::service_fn(move |mut req: Request| {
        let grpc = grpc.clone();
        let rest = rest.clone();
        let gateway = gateway.clone();
        let started = std::time::Instant::now();
        let peer = req
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0.clone());
        if let Some(p) = &peer {
            // The front doors read the peer address as axum's connect info.
            req.extensions_mut().insert(ConnectInfo(p.addr));
        }
        let outcome = authenticator
            .authenticate(req.headers(), peer.as_ref().and_then(|p| p.cert.as_deref()));
        let refused = outcome.0.as_ref().err().cloned();
        req.extensions_mut().insert(outcome);
        let insecure = authenticator.insecure();
        async move {
            let resp: Response = if is_grpc(&req) {
                if let Some(failure) = refused
                    && !auth::grpc_is_public(req.uri().path())
                {
                    let request_id = uuid::Uuid::now_v7().to_string();
                    auth::log_failure(
                        &failure,
                        &request_id,
                        peer.map(|p| p.addr.to_string()).as_deref(),
                    );
                    return Ok(steer_answer(
                        &gateway,
                        grpc_method(req.uri().path()),
                        GatewayError::Unauthenticated,
                        &request_id,
                        started,
                    ));
                }
                // tonic's `Request::remote_addr` reads its own connect info.
                if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
                    let info = TcpConnectInfo {
                        local_addr: None,
                        remote_addr: Some(*peer),
                    };
                    req.extensions_mut().insert(info);
                }
                let deadline = grpc_deadline(req.headers());
                let method = grpc_method(req.uri().path());
                let call = grpc.oneshot(req);
                match deadline {
                    None => call.await?,
                    Some(limit) => match tokio::time::timeout(limit, call).await {
                        Ok(resp) => resp?,
                        // As at the REST door: the answer is given up on,
                        // not the work; a task the call had started goes on
                        // and can be followed by id.
                        Err(_) => {
                            let request_id = uuid::Uuid::now_v7().to_string();
                            info!(request_id, method, ?limit, "gRPC deadline exceeded");
                            let error = GatewayError::RequestTimeout { limit };
                            steer_answer(&gateway, method, error, &request_id, started)
                        }
                    },
                }
            } else {
                let ready = req.uri().path() == "/ready";
                let mut resp = rest.oneshot(req).await?;
                if insecure && ready {
                    resp.headers_mut().insert(
                        axum::http::header::WARNING,
                        axum::http::HeaderValue::from_static(auth::INSECURE_WARNING),
                    );
                }
                resp
            };
            Ok::<_, Infallible>(resp)
        }
    });
    Ok(axum::Router::new().fallback_service(steer))
}

/// A gRPC call answered here instead of by tonic (refused before it
/// reached it, or past its deadline): counted like tonic's answers.
fn steer_answer(
    gateway: &Gateway,
    method: &'static str,
    error: GatewayError,
    request_id: &str,
    started: std::time::Instant,
) -> Response {
    gateway.metrics().observe_api(
        crate::grpc::API,
        method,
        code_name(error.code()),
        started.elapsed(),
    );
    error.to_status(request_id).into_http()
}

/// The `method` label of a gRPC call refused before it reached tonic, or
/// answered by the gateway itself when its deadline passed.
fn grpc_method(path: &str) -> &'static str {
    match path.strip_prefix("/mcp.McpService/").unwrap_or_default() {
        "Health" => "Health",
        "ExecuteCommand" => "ExecuteCommand",
        "RunCommand" => "RunCommand",
        "GetTaskStatus" => "GetTaskStatus",
        "StreamTaskOutput" => "StreamTaskOutput",
        "CancelTask" => "CancelTask",
        "ListTasks" => "ListTasks",
        "ApproveTask" => "ApproveTask",
        "RejectTask" => "RejectTask",
        "ReadFile" => "ReadFile",
        "WriteFile" => "WriteFile",
        "DeleteFile" => "DeleteFile",
        _ => "unmatched",
    }
}

/// The deadline a gRPC client sent (`grpc-timeout`: at most eight digits
/// and a unit, `H` `M` `S` `m` `u` `n`; gRPC over HTTP/2). It bounds the
/// time to the answer: all of a unary call (`RunCommand` included), the
/// start of a streamed one, as tonic's own server does. A malformed value
/// is ignored, also as tonic does.
fn grpc_deadline(headers: &axum::http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests;
