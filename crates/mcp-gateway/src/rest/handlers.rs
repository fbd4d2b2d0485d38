//! One handler per REST operation. Each turns JSON into a domain request,
//! calls the same [`Gateway`](mcp_pipeline::Gateway) method the gRPC door
//! calls, and turns the answer back into JSON. No decisions are made here.

use std::convert::Infallible;
use std::future::Future;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use mcp_core::{ChunkKind, OutputChunk};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use super::AppState;
use super::extract::{ApiBytes, ApiCaller, ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode};
use super::list_query::{ApiListQuery, metadata_filter};
use super::types::{
    DeleteQuery, ErrorBody, ExecuteBody, FileDeleted, FileWritten, Health, ListQuery, NoQuery,
    OutputEvent, Ready, Task, TaskCreated, TaskList, WriteQuery,
};
use crate::error::GatewayError;
use mcp_pipeline::Gateway;

/// A task's JSON, with its approval's reason and expiry while it waits
/// for one (every REST answer that shows a task goes through here).
pub(crate) async fn task_view(gw: &Gateway, rec: mcp_core::TaskRecord) -> Task {
    let approval = gw.pending_approval(&rec).await;
    Task::from(rec).with_approval(approval)
}

/// Runs a pipeline call to its end even if the client goes away (hyper
/// drops a request's future when its connection closes), so a request
/// that was decided is also recorded and started.
pub(super) async fn detached<T: Send + 'static>(
    fut: impl Future<Output = Result<T, GatewayError>> + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::spawn(fut.in_current_span())
        .await
        .unwrap_or_else(|e| {
            Err(GatewayError::Internal {
                what: format!("request task failed: {e}"),
            })
        })
}

/// Starts a command and answers as soon as it is stored, like gRPC
/// `ExecuteCommand`.
#[utoipa::path(
    post,
    path = "/v1/execute",
    operation_id = "ExecuteCommand",
    tag = "tasks",
    request_body = ExecuteBody,
    responses(
        (status = 202, description = "The task is stored and will run (or waits for approval); `Location` names it", body = TaskCreated),
        (status = 400, description = "Invalid or malformed request (2001, 2004)", body = ErrorBody),
        (status = 403, description = "Denied by policy (3001)", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for a different request (2102)", body = ErrorBody),
        (status = 413, description = "Body too large (2005)", body = ErrorBody),
        (status = 415, description = "Not JSON (2006)", body = ErrorBody),
        (status = 429, description = "Too many tasks waiting (4003) or a tenant quota used up (4101)", body = ErrorBody),
        (status = 503, description = "Store or sandbox unavailable, shutting down, busy (4001, 5002, 5003, 5005)", body = ErrorBody),
    )
)]
pub(crate) async fn execute(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    _: ApiQuery<NoQuery>,
    headers: axum::http::HeaderMap,
    ApiJson(mut body): ApiJson<ExecuteBody>,
) -> Result<Response, ApiError> {
    let gw = app.gateway.clone();
    let c = caller.clone();
    let key = body.idempotency_key.take().or_else(|| {
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let started = detached(async move { gw.execute_idempotent(&c, body.into(), key).await })
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    let location = format!("/v1/tasks/{}", started.id);
    let mut resp = (StatusCode::ACCEPTED, Json(TaskCreated::from(started))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Runs a command and answers when it has finished, like gRPC `RunCommand`.
/// A non-zero exit is a result (200), not an error.
#[utoipa::path(
    post,
    path = "/v1/run",
    operation_id = "RunCommand",
    tag = "tasks",
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "The finished task", body = Task),
        (status = 400, description = "Invalid or malformed request (2001, 2004)", body = ErrorBody),
        (status = 403, description = "Denied by policy (3001)", body = ErrorBody),
        (status = 413, description = "Body too large (2005)", body = ErrorBody),
        (status = 415, description = "Not JSON (2006)", body = ErrorBody),
        (status = 429, description = "Too many tasks waiting (4003) or a tenant quota used up (4101)", body = ErrorBody),
        (status = 503, description = "Store or sandbox unavailable, shutting down, busy", body = ErrorBody),
        (status = 504, description = "No answer in time; the task goes on (5004)", body = ErrorBody),
    )
)]
pub(crate) async fn run(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    _: ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<ExecuteBody>,
) -> Result<Json<Task>, ApiError> {
    let gw = app.gateway.clone();
    let c = caller.clone();
    let rec = detached(async move { gw.run(&c, body.into()).await })
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    Ok(Json(task_view(&app.gateway, rec).await))
}

/// One page of the caller's tasks, newest first. Only the caller's tenant
/// is ever listed.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    operation_id = "ListTasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskList),
        (status = 400, description = "A malformed filter (2004) or cursor (2002)", body = ErrorBody),
    )
)]
pub(crate) async fn list_tasks(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiListQuery(q): ApiListQuery,
) -> Result<Json<TaskList>, ApiError> {
    let filter = mcp_pipeline::ListFilter {
        metadata: metadata_filter(&q.metadata).map_err(|e| ApiError::new(e, &caller))?,
        state: q.status,
        since: q.since,
        until: q.until,
        cursor: q.cursor,
        limit: q.limit,
    };
    let (tasks, next) = app
        .gateway
        .list(&caller, filter)
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    let mut views = Vec::with_capacity(tasks.len());
    for rec in tasks {
        views.push(task_view(&app.gateway, rec).await);
    }
    Ok(Json(TaskList {
        tasks: views,
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// A task's state and, once finished, its result, like gRPC `GetTaskStatus`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    operation_id = "GetTaskStatus",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (UUIDv7)")),
    responses(
        (status = 200, description = "The task", body = Task),
        (status = 400, description = "Not a task id (2002)", body = ErrorBody),
        (status = 404, description = "No such task (6001)", body = ErrorBody),
    )
)]
pub(crate) async fn get_task(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(id): ApiPath,
    _: ApiQuery<NoQuery>,
) -> Result<Json<Task>, ApiError> {
    let rec = app
        .gateway
        .status(&caller, &id)
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    Ok(Json(task_view(&app.gateway, rec).await))
}

/// Cancels a queued or running task and answers with its final record,
/// like gRPC `CancelTask`.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    operation_id = "CancelTask",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (UUIDv7)")),
    responses(
        (status = 200, description = "The cancelled task", body = Task),
        (status = 400, description = "Not a task id (2002)", body = ErrorBody),
        (status = 404, description = "No such task (6001)", body = ErrorBody),
        (status = 409, description = "Already finished (2008)", body = ErrorBody),
        (status = 422, description = "Run by another replica (2011)", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_task(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(id): ApiPath,
    _: ApiQuery<NoQuery>,
) -> Result<Json<Task>, ApiError> {
    let gw = app.gateway.clone();
    let c = caller.clone();
    let rec = detached(async move { gw.cancel(&c, &id).await })
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    Ok(Json(task_view(&app.gateway, rec).await))
}

/// The task's output as Server-Sent Events, like gRPC `StreamTaskOutput`:
/// replayed from the start, then followed live; the `exit_code` event is
/// always the last. A finished task replays its stored (capped) output.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/output",
    operation_id = "StreamTaskOutput",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (UUIDv7)")),
    responses(
        (status = 200, description = "Events named `stdout`, `stderr`, `event` and finally `exit_code`; each `data` is an OutputEvent", content_type = "text/event-stream", body = OutputEvent),
        (status = 400, description = "Not a task id (2002)", body = ErrorBody),
        (status = 404, description = "No such task (6001)", body = ErrorBody),
    )
)]
pub(crate) async fn task_output(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(id): ApiPath,
    _: ApiQuery<NoQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let output = app
        .gateway
        .output(&caller, &id)
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    let (tx, rx) = mpsc::channel::<OutputChunk>(64);
    tokio::spawn(output.follow(tx, |c| c).in_current_span());
    let mut seq = 0usize;
    let events = ReceiverStream::new(rx).map(move |c| {
        seq += 1;
        Ok(sse_event(seq, c))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn sse_event(seq: usize, c: OutputChunk) -> Event {
    let kind = match c.kind {
        ChunkKind::Stdout => "stdout",
        ChunkKind::Stderr => "stderr",
        ChunkKind::Event => "event",
        ChunkKind::ExitCode => "exit_code",
    };
    let data = String::from_utf8_lossy(&c.data).into_owned();
    let exit_code = (c.kind == ChunkKind::ExitCode)
        .then(|| data.trim().parse::<i32>().ok())
        .flatten();
    let body = OutputEvent {
        data,
        timestamp_ms: c.timestamp_ms,
        exit_code,
    };
    Event::default()
        .event(kind)
        .id(seq.to_string())
        .data(serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned()))
}

/// A file from the caller's files root (what commands see under `/files`),
/// like gRPC `ReadFile`. The body is the raw content.
#[utoipa::path(
    get,
    path = "/v1/files/{path}",
    operation_id = "ReadFile",
    tag = "files",
    params(("path" = String, Path, description = "Relative to the files root, or absolute under /files; may contain `/`")),
    responses(
        (status = 200, description = "The content; `Content-Type` guessed from the name", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Path leaves the files root (2003) or is invalid (2001)", body = ErrorBody),
        (status = 403, description = "Denied by policy (3001)", body = ErrorBody),
        (status = 404, description = "No such file (6002)", body = ErrorBody),
        (status = 409, description = "Is a directory (2009)", body = ErrorBody),
        (status = 422, description = "Larger than the limit (2010)", body = ErrorBody),
    )
)]
pub(crate) async fn read_file(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(path): ApiPath,
    _: ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    let (clean, content) = app
        .gateway
        .read_file(&caller, &path)
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    let mime = mime_guess::from_path(&clean).first_or_octet_stream();
    let mut resp = content.into_response();
    if let Ok(v) = HeaderValue::from_str(mime.essence_str()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Writes the request body to a file, like gRPC `WriteFile`.
#[utoipa::path(
    put,
    path = "/v1/files/{path}",
    operation_id = "WriteFile",
    tag = "files",
    params(("path" = String, Path, description = "Relative to the files root, or absolute under /files; may contain `/`"), WriteQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The new content"),
    responses(
        (status = 200, description = "Written", body = FileWritten),
        (status = 400, description = "Path leaves the files root (2003), bad mode (2001, 2004)", body = ErrorBody),
        (status = 403, description = "Denied by policy (3001)", body = ErrorBody),
        (status = 409, description = "Parent missing or not a directory (2009)", body = ErrorBody),
        (status = 413, description = "Content above limits.max_file_bytes (2005)", body = ErrorBody),
    )
)]
pub(crate) async fn write_file(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(path): ApiPath,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiBytes(content): ApiBytes,
) -> Result<Json<FileWritten>, ApiError> {
    let mode = match q.mode.as_deref() {
        None | Some("") => 0,
        Some(m) => u32::from_str_radix(m, 8).map_err(|_| {
            ApiError::new(
                GatewayError::MalformedRequest {
                    field: Some("mode".to_owned()),
                    reason: format!("{m:?} is not an octal mode like 644"),
                },
                &caller,
            )
        })?,
    };
    let gw = app.gateway.clone();
    let c = caller.clone();
    let p = path.clone();
    let (_, n) =
        detached(async move { gw.write_file(&c, &p, &content, q.create_dirs, mode).await })
            .await
            .map_err(|e| ApiError::new(e, &caller))?;
    Ok(Json(FileWritten {
        path,
        bytes_written: n,
    }))
}

/// Deletes a file (or, with `recursive`, a directory), like gRPC
/// `DeleteFile`.
#[utoipa::path(
    delete,
    path = "/v1/files/{path}",
    operation_id = "DeleteFile",
    tag = "files",
    params(("path" = String, Path, description = "Relative to the files root, or absolute under /files; may contain `/`"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted", body = FileDeleted),
        (status = 400, description = "Path leaves the files root (2003) or is the root (2001)", body = ErrorBody),
        (status = 403, description = "Denied by policy (3001)", body = ErrorBody),
        (status = 404, description = "No such file (6002)", body = ErrorBody),
        (status = 409, description = "Directory not empty (2009)", body = ErrorBody),
    )
)]
pub(crate) async fn delete_file(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(path): ApiPath,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<FileDeleted>, ApiError> {
    let gw = app.gateway.clone();
    let c = caller.clone();
    let p = path.clone();
    detached(async move { gw.delete_file(&c, &p, q.recursive).await })
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    Ok(Json(FileDeleted {
        path,
        deleted: true,
    }))
}

/// Liveness: the process is up and answering.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "Health",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn health(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: app.gateway.uptime().as_secs(),
    })
}

/// Readiness: the store answers, a sandbox starts (checked at most every
/// 30 s), a policy set is loaded and the gateway is not shutting down.
#[utoipa::path(
    get,
    path = "/ready",
    operation_id = "Ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready; the failing checks say why", body = Ready),
    )
)]
pub(crate) async fn ready(State(app): State<AppState>) -> Response {
    let r = Ready::from(app.gateway.readiness().await);
    if r.ready {
        return (StatusCode::OK, Json(r)).into_response();
    }
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(r)).into_response();
    // The body is the readiness report, not the error document.
    resp.extensions_mut()
        .insert(ErrorCode(tonic::Code::Unavailable));
    resp
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "Metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
pub(crate) async fn metrics(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
) -> Result<Response, ApiError> {
    let text = app
        .gateway
        .metrics_text()
        .map_err(|e| ApiError::new(e, &caller))?;
    Ok((
        [(header::CONTENT_TYPE, mcp_pipeline::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "OpenApi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi.as_str().to_owned(),
    )
        .into_response()
}
