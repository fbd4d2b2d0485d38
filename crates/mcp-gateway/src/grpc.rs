//! The gRPC front door: `mcp.McpService`. Converts wire messages to domain
//! requests, calls the [`Gateway`], and converts answers and errors back.
//! No decisions are made here. Each call gets a `request` span (continuing
//! the caller's W3C `traceparent`) and is counted in
//! `mcp_api_requests_total{api="grpc"}`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use mcp_core::{
    ChunkKind, ExecRequest, NetworkAccess, OutputChunk, ResourceLimits, SandboxRequest, TaskKind,
    TaskRecord, TaskState, rfc3339,
};
use mcp_proto as pb;
use pb::mcp_service_server::McpService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use crate::error::{ErrorStatus, GatewayError, code_name};
use crate::telemetry;
use mcp_pipeline::{Caller, Gateway};

/// This front door's name in `mcp_api_requests_total{api}`.
pub const API: &str = "grpc";

#[derive(Debug, Clone)]
pub struct GrpcService {
    gateway: Arc<Gateway>,
}

impl GrpcService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

/// The principal of a request, as [`crate::server`] authenticated it
/// ([`crate::auth`]); calls without valid credentials were answered
/// `UNAUTHENTICATED` there and never reach this service.
fn caller<T>(req: &Request<T>) -> Caller {
    let _authn = info_span!("authn").entered();
    // Served by tonic's own server the peer is in `remote_addr`; served
    // beside REST on one listener it is axum's connect info.
    let peer = req.remote_addr().or_else(|| {
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0)
    });
    Caller::new(
        crate::auth::principal(req.extensions()).unwrap_or_else(|_| crate::auth::nobody()),
        peer.map(|a| a.to_string()),
    )
}

/// One call in progress: who calls, its span, when it began.
struct Call {
    caller: Caller,
    span: tracing::Span,
    method: &'static str,
    started: Instant,
}

impl GrpcService {
    /// Opens the `request` span (child of the caller's `traceparent`, if
    /// any) and authenticates inside it.
    fn begin<T>(&self, method: &'static str, req: &Request<T>) -> Call {
        let span = telemetry::request_span("grpc", method, telemetry::extract_grpc(req.metadata()));
        let caller = span.in_scope(|| caller(req));
        span.record("request_id", tracing::field::display(caller.request_id));
        span.record("principal", caller.principal.id.as_str());
        Call {
            caller,
            span,
            method,
            started: Instant::now(),
        }
    }

    /// Counts the answer and turns an error into the client's status.
    fn end<R>(&self, call: &Call, result: Result<R, GatewayError>) -> Result<R, Status> {
        let status = match &result {
            Ok(_) => "OK",
            Err(e) => code_name(e.code()),
        };
        self.gateway
            .metrics()
            .observe_api(API, call.method, status, call.started.elapsed());
        result.map_err(|e| e.to_status(&call.caller.request_id.to_string()))
    }

    /// `ApproveTask` / `RejectTask`: the verdict, shared with REST, and the
    /// task as it is afterwards.
    async fn verdict(
        &self,
        call: Call,
        verdict: mcp_pipeline::Verdict,
        req: mcp_pipeline::VerdictRequest,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let result = self
            .gateway
            .decide_approval(&call.caller, verdict, req)
            .instrument(call.span.clone())
            .await;
        let rec = self.end(&call, result)?;
        Ok(Response::new(task_answer(&self.gateway, rec).await))
    }
}

pub fn exec_request(r: pb::CommandRequest) -> ExecRequest {
    let sb = r.sandbox_config.unwrap_or_default();
    let limits = sb.resource_limits.unwrap_or_default();
    ExecRequest {
        command: r.command,
        args: r.args,
        env: r.env.into_iter().collect(),
        cwd: r.cwd,
        timeout_secs: r.timeout,
        metadata: r.metadata.into_iter().collect(),
        sandbox: SandboxRequest {
            enabled: sb.enabled,
            network: match pb::NetworkAccess::try_from(sb.network_access) {
                Ok(pb::NetworkAccess::NetworkNone) => NetworkAccess::None,
                Ok(pb::NetworkAccess::NetworkHost) => NetworkAccess::Host,
                // An unknown value asks for something we do not know how to
                // give; treat it as the strictest thing that is not "none" so
                // policy and the sandbox refuse it.
                Ok(pb::NetworkAccess::NetworkRestricted) | Err(_) => NetworkAccess::Restricted,
            },
            limits: ResourceLimits {
                cpu_limit: limits.cpu_limit,
                memory_bytes: limits.memory_limit,
                pids: limits.pids_limit,
                io_weight: limits.io_weight,
            },
            rw_paths: sb.rw_paths,
            ro_paths: sb.ro_paths,
            denied_paths: sb.denied_paths,
        },
    }
}

pub fn task_status(s: TaskState) -> pb::TaskStatus {
    match s {
        TaskState::Created => pb::TaskStatus::TaskCreated,
        TaskState::Queued => pb::TaskStatus::TaskQueued,
        TaskState::Running => pb::TaskStatus::TaskRunning,
        TaskState::Completed => pb::TaskStatus::TaskCompleted,
        TaskState::Failed => pb::TaskStatus::TaskFailed,
        TaskState::Cancelled => pb::TaskStatus::TaskCancelled,
        TaskState::TimedOut => pb::TaskStatus::TaskTimedOut,
        TaskState::PendingApproval => pb::TaskStatus::TaskPendingApproval,
        TaskState::Expired => pb::TaskStatus::TaskExpired,
        TaskState::Rejected => pb::TaskStatus::TaskRejected,
    }
}

pub fn status_response(t: TaskRecord) -> pb::TaskStatusResponse {
    let result = t.result.map(|r| pb::TaskResult {
        exit_code: r.exit_code,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        resource_usage: Some(pb::ResourceUsage {
            cpu_time_ms: r.usage.cpu_time_ms,
            max_memory_kb: r.usage.max_memory_kb,
            io_read_bytes: r.usage.io_read_bytes,
            io_write_bytes: r.usage.io_write_bytes,
        }),
        execution_time_ms: r.execution_time_ms,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
    });
    pb::TaskStatusResponse {
        task_info: Some(pb::TaskInfo {
            task_id: t.id.to_string(),
            task_type: match t.kind {
                TaskKind::Command => pb::TaskType::TaskCommand,
                TaskKind::File => pb::TaskType::TaskFile,
            } as i32,
            status: task_status(t.state) as i32,
            created_at: rfc3339(t.created_at),
            started_at: t.started_at.map(rfc3339),
            completed_at: t.completed_at.map(rfc3339),
            metadata: t.metadata.into_iter().collect(),
            failure_reason: t.failure_reason,
            profile: t.profile,
            approval_reason: None,
            approval_expires_at: None,
        }),
        result,
    }
}

/// [`status_response`] with the approval's reason and expiry while the
/// task waits for one: every answer that shows a task goes through here.
async fn task_answer(gw: &Gateway, t: TaskRecord) -> pb::TaskStatusResponse {
    let approval = gw.pending_approval(&t).await;
    let mut resp = status_response(t);
    if let Some(info) = resp.task_info.as_mut() {
        (info.approval_reason, info.approval_expires_at) = approval.unzip();
    }
    resp
}

fn chunk(task_id: &str, c: OutputChunk) -> pb::TaskOutputChunk {
    pb::TaskOutputChunk {
        task_id: task_id.to_owned(),
        r#type: match c.kind {
            ChunkKind::Stdout => pb::OutputChunkType::ChunkStdout,
            ChunkKind::Stderr => pb::OutputChunkType::ChunkStderr,
            ChunkKind::ExitCode => pb::OutputChunkType::ChunkExitCode,
            ChunkKind::Event => pb::OutputChunkType::ChunkEvent,
        } as i32,
        data: c.data,
        timestamp_ms: c.timestamp_ms,
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::TaskOutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl McpService for GrpcService {
    async fn health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let call = self.begin("Health", &req);
        let resp = pb::HealthResponse {
            status: "SERVING".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.gateway.uptime().as_secs(),
            policy_revision: self.gateway.policy_revision(),
        };
        self.end(&call, Ok(Response::new(resp)))
    }

    async fn execute_command(
        &self,
        req: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::TaskCreatedResponse>, Status> {
        let call = self.begin("ExecuteCommand", &req);
        let header_key = req
            .metadata()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut r = req.into_inner();
        let key = Some(std::mem::take(&mut r.idempotency_key))
            .filter(|k| !k.is_empty())
            .or(header_key);
        let result = self
            .gateway
            .execute_idempotent(&call.caller, exec_request(r), key)
            .instrument(call.span.clone())
            .await;
        let started = self.end(&call, result)?;
        Ok(Response::new(pb::TaskCreatedResponse {
            task_id: started.id.to_string(),
            status: task_status(started.state) as i32,
            created_at: rfc3339(started.created_at),
        }))
    }

    async fn run_command(
        &self,
        req: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let call = self.begin("RunCommand", &req);
        let result = self
            .gateway
            .run(&call.caller, exec_request(req.into_inner()))
            .instrument(call.span.clone())
            .await;
        let rec = self.end(&call, result)?;
        Ok(Response::new(task_answer(&self.gateway, rec).await))
    }

    async fn get_task_status(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let call = self.begin("GetTaskStatus", &req);
        let result = self
            .gateway
            .status(&call.caller, &req.get_ref().task_id)
            .instrument(call.span.clone())
            .await;
        let rec = self.end(&call, result)?;
        Ok(Response::new(task_answer(&self.gateway, rec).await))
    }

    type StreamTaskOutputStream = ChunkStream;

    async fn stream_task_output(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<Self::StreamTaskOutputStream>, Status> {
        let call = self.begin("StreamTaskOutput", &req);
        let task_id = req.into_inner().task_id;
        let result = self
            .gateway
            .output(&call.caller, &task_id)
            .instrument(call.span.clone())
            .await;
        let output = self.end(&call, result)?;
        let (tx, rx) = mpsc::channel(64);
        // Its own span: the follower may outlive the call's.
        let span = info_span!("output", task_id = %task_id);
        tokio::spawn(
            async move { output.follow(tx, |c| Ok(chunk(&task_id, c))).await }.instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let call = self.begin("CancelTask", &req);
        let result = self
            .gateway
            .cancel(&call.caller, &req.get_ref().task_id)
            .instrument(call.span.clone())
            .await;
        let rec = self.end(&call, result)?;
        Ok(Response::new(task_answer(&self.gateway, rec).await))
    }

    async fn read_file(
        &self,
        req: Request<pb::ReadFileRequest>,
    ) -> Result<Response<pb::ReadFileResponse>, Status> {
        let call = self.begin("ReadFile", &req);
        let path = req.into_inner().path;
        let result = self
            .gateway
            .read_file(&call.caller, &path)
            .instrument(call.span.clone())
            .await;
        let (clean, content) = self.end(&call, result)?;
        let mime_type = mime_guess::from_path(&clean)
            .first_or_octet_stream()
            .essence_str()
            .to_owned();
        Ok(Response::new(pb::ReadFileResponse {
            path,
            content,
            mime_type,
            error: None,
        }))
    }

    async fn write_file(
        &self,
        req: Request<pb::WriteFileRequest>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let call = self.begin("WriteFile", &req);
        let r = req.into_inner();
        let result = self
            .gateway
            .write_file(&call.caller, &r.path, &r.content, r.create_dirs, r.mode)
            .instrument(call.span.clone())
            .await;
        let (_, n) = self.end(&call, result)?;
        Ok(Response::new(pb::WriteFileResponse {
            path: r.path,
            bytes_written: n,
            error: None,
        }))
    }

    async fn delete_file(
        &self,
        req: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let call = self.begin("DeleteFile", &req);
        let r = req.into_inner();
        let result = self
            .gateway
            .delete_file(&call.caller, &r.path, r.recursive)
            .instrument(call.span.clone())
            .await;
        self.end(&call, result)?;
        Ok(Response::new(pb::DeleteFileResponse {
            path: r.path,
            success: true,
            error: None,
        }))
    }

    async fn approve_task(
        &self,
        req: Request<pb::ApproveTaskRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let call = self.begin("ApproveTask", &req);
        let r = req.into_inner();
        let req = mcp_pipeline::VerdictRequest {
            task_id: r.task_id,
            token: r.token,
            text: r.comment,
        };
        self.verdict(call, mcp_pipeline::Verdict::Approve, req)
            .await
    }

    async fn reject_task(
        &self,
        req: Request<pb::RejectTaskRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let call = self.begin("RejectTask", &req);
        let r = req.into_inner();
        let req = mcp_pipeline::VerdictRequest {
            task_id: r.task_id,
            token: r.token,
            text: r.reason,
        };
        self.verdict(call, mcp_pipeline::Verdict::Reject, req).await
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let call = self.begin("ListTasks", &req);
        let r = req.into_inner();
        let state = match r.status.map(pb::TaskStatus::try_from) {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s.as_str_name().to_owned())),
            Some(Err(_)) => Err(GatewayError::MalformedRequest {
                field: Some("status".to_owned()),
                reason: "is not a TaskStatus value".to_owned(),
            }),
        };
        let result = match state {
            Ok(state) => {
                self.gateway
                    .list(
                        &call.caller,
                        mcp_pipeline::ListFilter {
                            state,
                            since: Some(r.since),
                            until: Some(r.until),
                            cursor: Some(r.page_token),
                            limit: (r.page_size != 0).then_some(r.page_size),
                            metadata: r.metadata.into_iter().collect(),
                        },
                    )
                    .instrument(call.span.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        let (tasks, next) = self.end(&call, result)?;
        let mut infos = Vec::with_capacity(tasks.len());
        for t in tasks {
            infos.extend(task_answer(&self.gateway, t).await.task_info);
        }
        Ok(Response::new(pb::ListTasksResponse {
            tasks: infos,
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }
}
