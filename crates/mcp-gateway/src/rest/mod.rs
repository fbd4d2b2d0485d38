//! The REST/JSON front door, served on the gRPC listener (see
//! [`crate::server`]). It translates JSON ↔ domain types and calls the same
//! [`Gateway`] methods as the gRPC door; the OpenAPI 3.1 document is
//! generated from these handlers (`utoipa`), served at `/openapi.json` and
//! checked in as `docs/api/openapi.json`.
//!
//! Every request passes the front middleware, which:
//! - opens the `request` span (continuing a W3C `traceparent` header) and
//!   authenticates the caller inside an `authn` span;
//! - bounds the request: one concurrency limit for the API (health, readiness
//!   and metrics are exempt, so probes answer under load) and a time limit
//!   (`POST /v1/run` gets the longest task timeout on top); body sizes are
//!   bounded per route (`tower-http`);
//! - gives every error response the one error shape (also those made by
//!   axum or tower-http: unknown route, wrong method, body too large);
//! - counts the request in `mcp_api_requests_total{api="rest"}` and tags the
//!   response with `x-request-id`.

mod approval;
mod extract;
mod handlers;
mod list_query;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{Instrument, info_span};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use extract::ApiError;
use extract::{BodyLimit, ErrorCode};

use crate::config::HttpSettings;
use crate::error::{GatewayError, code_name};
use crate::telemetry;
use mcp_pipeline::{Caller, Gateway};

/// This front door's name in `mcp_api_requests_total{api}`.
pub const API: &str = "rest";

/// What the REST door needs from the configuration.
#[derive(Debug, Clone)]
pub struct RestSettings {
    pub http: HttpSettings,
    /// Upload limit of `PUT /v1/files/{path}` (`limits.max_file_bytes`).
    pub max_file_bytes: usize,
    /// The longest task timeout (`limits.max_timeout_secs`): `POST /v1/run`
    /// may take that long on top of `http.request_timeout_secs`.
    pub max_task_timeout: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    gateway: Arc<Gateway>,
    settings: Arc<RestSettings>,
    slots: Arc<Semaphore>,
    openapi: Arc<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mcp-security-gateway REST API",
        description = "Run commands safely: every request is decided by Rego policy and what is allowed runs in a bubblewrap sandbox. The same operations as the gRPC service `mcp.McpService`, on the same port. Errors share one shape (ErrorBody); docs/api/errors.md lists every code.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(handlers::read_file, handlers::write_file, handlers::delete_file),
    tags(
        (name = "tasks", description = "Run commands and follow their tasks"),
        (name = "files", description = "Files in the caller's files root, seen by commands as /files"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// The routes and their OpenAPI description; body limits per route group.
fn routes(json_max: usize, file_max: usize) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .routes(routes!(handlers::execute))
        .routes(routes!(handlers::run))
        .routes(routes!(handlers::list_tasks))
        .routes(routes!(handlers::get_task))
        .routes(routes!(handlers::task_output))
        .routes(routes!(handlers::cancel_task))
        .routes(routes!(approval::approve_task))
        .routes(routes!(approval::reject_task))
        .routes(routes!(handlers::health))
        .routes(routes!(handlers::ready))
        .routes(routes!(handlers::metrics))
        .routes(routes!(handlers::openapi))
        .layer(RequestBodyLimitLayer::new(json_max));
    // `{*path}` is axum's wildcard; OpenAPI has no such thing, so these are
    // documented as `/v1/files/{path}` through `ApiDoc` instead of `routes!`.
    let files = OpenApiRouter::new()
        .route(
            "/v1/files/{*path}",
            get(handlers::read_file)
                .put(handlers::write_file)
                .delete(handlers::delete_file),
        )
        .layer(RequestBodyLimitLayer::new(file_max));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api)
        .merge(files)
}

/// The OpenAPI 3.1 document of the REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes(1, 1).split_for_parts().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    crate::auth::openapi::document(&mut doc);
    doc
}

/// The OpenAPI document as served and checked in (pretty, newline-terminated).
pub fn openapi_json() -> String {
    let mut s = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    s.push('\n');
    s
}

/// The REST router, ready to serve (state applied).
pub fn router(gateway: Arc<Gateway>, settings: RestSettings) -> axum::Router {
    let state = AppState {
        gateway,
        slots: Arc::new(Semaphore::new(settings.http.max_concurrent_requests)),
        settings: Arc::new(settings),
        openapi: Arc::new(openapi_json()),
    };
    let (router, _) = routes(
        state.settings.http.max_body_bytes,
        state.settings.max_file_bytes,
    )
    .split_for_parts();
    router
        .fallback(not_found)
        // The limits above apply; axum's own 2 MB default must not.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

async fn not_found(extract::ApiCaller(caller): extract::ApiCaller, req: Request) -> ApiError {
    ApiError::new(
        GatewayError::RouteNotFound {
            method: req.method().to_string(),
            path: short_path(req.uri().path()),
        },
        &caller,
    )
}

fn short_path(p: &str) -> String {
    p.chars().take(200).collect()
}

/// The operation a request is for: the `method` label of
/// `mcp_api_requests_total` and the `operationId` in the OpenAPI document.
/// A fixed set; anything else is `unmatched`.
fn operation(method: &Method, route: Option<&str>) -> &'static str {
    let Some(route) = route else {
        return "unmatched";
    };
    match (method.as_str(), route) {
        ("POST", "/v1/execute") => "ExecuteCommand",
        ("POST", "/v1/run") => "RunCommand",
        ("GET", "/v1/tasks") => "ListTasks",
        ("GET", "/v1/tasks/{id}") => "GetTaskStatus",
        ("GET", "/v1/tasks/{id}/output") => "StreamTaskOutput",
        ("POST", "/v1/tasks/{id}/cancel") => "CancelTask",
        ("POST", "/v1/tasks/{id}/approve") => "ApproveTask",
        ("POST", "/v1/tasks/{id}/reject") => "RejectTask",
        ("GET", "/v1/files/{*path}") => "ReadFile",
        ("PUT", "/v1/files/{*path}") => "WriteFile",
        ("DELETE", "/v1/files/{*path}") => "DeleteFile",
        ("GET", "/health") => "Health",
        ("GET", "/ready") => "Ready",
        ("GET", "/metrics") => "Metrics",
        ("GET", "/openapi.json") => "OpenApi",
        _ => "unmatched",
    }
}

/// Operations outside the concurrency limit: probes and scrapes must answer
/// when the API is saturated.
fn is_exempt(op: &str) -> bool {
    matches!(op, "Health" | "Ready" | "Metrics")
}

/// The front middleware; see the module documentation.
async fn front(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let op = operation(req.method(), route.as_deref());
    let span = telemetry::request_span("rest", op, telemetry::extract_http(req.headers()));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    // Authenticated by `server` before steering (see `crate::auth`); a
    // refusal is answered below, after the request id exists.
    let authn = span.in_scope(|| {
        let _authn = info_span!("authn").entered();
        crate::auth::principal(req.extensions())
    });
    let refused = authn.as_ref().err().cloned();
    let caller = Caller::new(authn.unwrap_or_else(|_| crate::auth::nobody()), peer);
    span.record("request_id", tracing::field::display(caller.request_id));
    span.record("principal", caller.principal.id.as_str());

    let s = &app.settings;
    let body_max = if op == "WriteFile" {
        s.max_file_bytes
    } else {
        s.http.max_body_bytes
    };
    let time_limit = if op == "RunCommand" {
        s.http.request_timeout + s.max_task_timeout
    } else {
        s.http.request_timeout
    };
    let method = req.method().clone();
    let path = short_path(req.uri().path());
    req.extensions_mut().insert(caller.clone());
    req.extensions_mut().insert(BodyLimit(body_max));

    let resp = async {
        if let Some(failure) = refused
            && !crate::auth::rest_is_public(op)
        {
            crate::auth::log_failure(
                &failure,
                &caller.request_id.to_string(),
                caller.source.as_deref(),
            );
            return ApiError::new(GatewayError::Unauthenticated, &caller).into_response();
        }
        let _permit = if is_exempt(op) {
            None
        } else {
            match app.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return ApiError::new(
                        GatewayError::Busy {
                            limit: s.http.max_concurrent_requests,
                        },
                        &caller,
                    )
                    .into_response();
                }
            }
        };
        match tokio::time::timeout(time_limit, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(GatewayError::RequestTimeout { limit: time_limit }, &caller)
                .into_response(),
        }
    }
    .instrument(span.clone())
    .await;

    let mut resp = normalize(resp, &caller, method, path, body_max);
    let status = match resp.extensions().get::<ErrorCode>() {
        Some(ErrorCode(code)) => code_name(*code),
        None => "OK",
    };
    app.gateway
        .metrics()
        .observe_api(API, op, status, started.elapsed());
    if let Ok(v) = HeaderValue::from_str(&caller.request_id.to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Gives an error response that did not come from [`ApiError`] (axum's
/// 405, tower-http's 413, …) the one error shape.
fn normalize(
    resp: Response,
    caller: &Caller,
    method: Method,
    path: String,
    body_max: usize,
) -> Response {
    let status = resp.status();
    if resp.extensions().get::<ErrorCode>().is_some() || status.as_u16() < 400 {
        return resp;
    }
    let error = match status {
        StatusCode::NOT_FOUND => GatewayError::RouteNotFound {
            method: method.to_string(),
            path,
        },
        StatusCode::METHOD_NOT_ALLOWED => GatewayError::MethodNotAllowed {
            method: method.to_string(),
            path,
        },
        StatusCode::PAYLOAD_TOO_LARGE => GatewayError::BodyTooLarge { max: body_max },
        s if s.is_client_error() => GatewayError::MalformedRequest {
            field: None,
            reason: format!("request refused ({s})"),
        },
        s => GatewayError::Internal {
            what: format!("unexpected response {s}"),
        },
    };
    ApiError::new(error, caller).into_response()
}

#[cfg(test)]
mod tests;
