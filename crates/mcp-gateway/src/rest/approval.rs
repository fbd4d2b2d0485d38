//! REST twins of `ApproveTask` and `RejectTask`:
//! `POST /v1/tasks/{id}/approve` and `POST /v1/tasks/{id}/reject`. The
//! logic is [`mcp_pipeline::Gateway::decide_approval`], shared with gRPC.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::extract::{ApiCaller, ApiError, ApiJson, ApiPath, ApiQuery};
use super::handlers::{detached, task_view};
use super::types::{ErrorBody, NoQuery, Task};
use mcp_pipeline::Caller;
use mcp_pipeline::{Verdict, VerdictRequest};

/// Approves a task waiting for approval.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApproveBody {
    /// An approval token (HS256, minted out of band for this task and one
    /// approver) instead of the caller's own identity.
    pub token: Option<String>,
    /// Kept in the decision log.
    pub comment: String,
}

/// Rejects a task waiting for approval.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RejectBody {
    pub token: Option<String>,
    /// Why; stored as the task's `failure_reason`.
    pub reason: String,
}

/// Approves a task in `pending_approval`; it then runs exactly what was
/// approved. The approver must be allowed by `data.mcp.approve` and may not
/// be the requester.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/approve",
    operation_id = "ApproveTask",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (UUIDv7)")),
    request_body = ApproveBody,
    responses(
        (status = 200, description = "The approved task (created, queued or running)", body = Task),
        (status = 400, description = "Not a task id or a malformed body (2002, 2004)", body = ErrorBody),
        (status = 403, description = "Approver refused by policy, self-approval, bad or replayed token (3001, 3101, 3102)", body = ErrorBody),
        (status = 404, description = "No such task (6001)", body = ErrorBody),
        (status = 409, description = "Not waiting for approval, or already ended (2101, 2008)", body = ErrorBody),
        (status = 429, description = "Tenant quota used up (4101)", body = ErrorBody),
    )
)]
pub(crate) async fn approve_task(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(id): ApiPath,
    _: ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> Result<Json<Task>, ApiError> {
    let req = VerdictRequest {
        task_id: id,
        token: body.token,
        text: body.comment,
    };
    answer(app, caller, Verdict::Approve, req).await
}

/// Rejects a task in `pending_approval`; it ends `rejected` with the reason.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/reject",
    operation_id = "RejectTask",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (UUIDv7)")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "The rejected task", body = Task),
        (status = 400, description = "Not a task id or a malformed body (2002, 2004)", body = ErrorBody),
        (status = 403, description = "Approver refused by policy, self-approval, bad or replayed token (3001, 3101, 3102)", body = ErrorBody),
        (status = 404, description = "No such task (6001)", body = ErrorBody),
        (status = 409, description = "Not waiting for approval, or already ended (2101, 2008)", body = ErrorBody),
    )
)]
pub(crate) async fn reject_task(
    State(app): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(id): ApiPath,
    _: ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<RejectBody>,
) -> Result<Json<Task>, ApiError> {
    let req = VerdictRequest {
        task_id: id,
        token: body.token,
        text: body.reason,
    };
    answer(app, caller, Verdict::Reject, req).await
}

/// Decides like gRPC and answers with the task. Detached like the other
/// state-changing handlers: a verdict that was recorded is also carried
/// out when the client goes away.
async fn answer(
    app: AppState,
    caller: Caller,
    verdict: Verdict,
    req: VerdictRequest,
) -> Result<Json<Task>, ApiError> {
    let gw = app.gateway.clone();
    let c = caller.clone();
    let rec = detached(async move { gw.decide_approval(&c, verdict, req).await })
        .await
        .map_err(|e| ApiError::new(e, &caller))?;
    Ok(Json(task_view(&app.gateway, rec).await))
}
