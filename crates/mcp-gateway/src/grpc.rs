//! The gRPC front door: `mcp.McpService`. Converts wire messages to domain
//! requests, calls the [`Gateway`], and converts answers and errors back.
//! No decisions are made here.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mcp_core::{
    ChunkKind, ExecRequest, NetworkAccess, OutputChunk, Principal, ResourceLimits, SandboxRequest,
    TaskKind, TaskRecord, TaskState, rfc3339,
};
use mcp_proto as pb;
use pb::mcp_service_server::McpService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span, warn};

use crate::error::GatewayError;
use crate::live::Cursor;
use crate::pipeline::{Caller, Gateway, Output};

#[derive(Debug, Clone)]
pub struct GrpcService {
    gateway: Arc<Gateway>,
}

impl GrpcService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

/// The principal of a request. Authentication arrives with a later release;
/// until then every caller is the anonymous principal of the default tenant,
/// and the server refuses non-loopback listeners unless told otherwise.
fn caller<T>(req: &Request<T>) -> Caller {
    Caller::new(
        Principal::anonymous(),
        req.remote_addr().map(|a| a.to_string()),
    )
}

fn fail(caller: &Caller, e: GatewayError) -> Status {
    e.to_status(&caller.request_id.to_string())
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
        }),
        result,
    }
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

/// The chunks a finished task replays: its stored (capped) stdout and
/// stderr, what ended it, and its exit code.
fn stored_chunks(t: &TaskRecord) -> Vec<OutputChunk> {
    let ts = i64::try_from(
        t.completed_at
            .unwrap_or(t.created_at)
            .unix_timestamp_nanos()
            / 1_000_000,
    )
    .unwrap_or(0);
    let mut out = Vec::new();
    let mut push = |kind, data: Vec<u8>| {
        if !data.is_empty() {
            out.push(OutputChunk {
                kind,
                data,
                timestamp_ms: ts,
            });
        }
    };
    let code = match &t.result {
        Some(r) => {
            push(ChunkKind::Stdout, r.stdout.clone());
            push(ChunkKind::Stderr, r.stderr.clone());
            r.exit_code
        }
        None => -1,
    };
    if t.state != TaskState::Completed
        && let Some(reason) = &t.failure_reason
    {
        push(ChunkKind::Event, reason.clone().into_bytes());
    }
    push(ChunkKind::ExitCode, code.to_string().into_bytes());
    out
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::TaskOutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl McpService for GrpcService {
    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            status: "SERVING".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.gateway.uptime().as_secs(),
        }))
    }

    async fn execute_command(
        &self,
        req: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::TaskCreatedResponse>, Status> {
        let c = caller(&req);
        let span = info_span!("request", request_id = %c.request_id, principal = %c.principal.id, method = "ExecuteCommand");
        let started = self
            .gateway
            .execute(&c, exec_request(req.into_inner()))
            .instrument(span)
            .await
            .map_err(|e| fail(&c, e))?;
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
        let c = caller(&req);
        let span = info_span!("request", request_id = %c.request_id, principal = %c.principal.id, method = "RunCommand");
        let rec = self
            .gateway
            .run(&c, exec_request(req.into_inner()))
            .instrument(span)
            .await
            .map_err(|e| fail(&c, e))?;
        Ok(Response::new(status_response(rec)))
    }

    async fn get_task_status(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let c = caller(&req);
        let rec = self
            .gateway
            .status(&c, &req.get_ref().task_id)
            .await
            .map_err(|e| fail(&c, e))?;
        Ok(Response::new(status_response(rec)))
    }

    type StreamTaskOutputStream = ChunkStream;

    async fn stream_task_output(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<Self::StreamTaskOutputStream>, Status> {
        let c = caller(&req);
        let task_id = req.into_inner().task_id;
        let output = self
            .gateway
            .output(&c, &task_id)
            .await
            .map_err(|e| fail(&c, e))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            match output {
                Output::Stored(rec) => {
                    for ch in stored_chunks(&rec) {
                        if tx.send(Ok(chunk(&task_id, ch))).await.is_err() {
                            return;
                        }
                    }
                }
                Output::Live(live) => {
                    let mut cursor = Cursor::default();
                    let mut rx = live.subscribe();
                    loop {
                        let (chunks, done) = live.read_from(&mut cursor);
                        for ch in chunks {
                            if tx.send(Ok(chunk(&task_id, ch))).await.is_err() {
                                // The client went away; the task goes on.
                                return;
                            }
                        }
                        if done {
                            return;
                        }
                        if rx.changed().await.is_err() {
                            warn!(task_id = %task_id, "live output ended without finishing");
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        let c = caller(&req);
        let rec = self
            .gateway
            .cancel(&c, &req.get_ref().task_id)
            .await
            .map_err(|e| fail(&c, e))?;
        Ok(Response::new(status_response(rec)))
    }

    async fn read_file(
        &self,
        req: Request<pb::ReadFileRequest>,
    ) -> Result<Response<pb::ReadFileResponse>, Status> {
        let c = caller(&req);
        let path = req.into_inner().path;
        let (clean, content) = self
            .gateway
            .read_file(&c, &path)
            .await
            .map_err(|e| fail(&c, e))?;
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
        let c = caller(&req);
        let r = req.into_inner();
        let (_, n) = self
            .gateway
            .write_file(&c, &r.path, &r.content, r.create_dirs, r.mode)
            .await
            .map_err(|e| fail(&c, e))?;
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
        let c = caller(&req);
        let r = req.into_inner();
        self.gateway
            .delete_file(&c, &r.path, r.recursive)
            .await
            .map_err(|e| fail(&c, e))?;
        Ok(Response::new(pb::DeleteFileResponse {
            path: r.path,
            success: true,
            error: None,
        }))
    }
}
