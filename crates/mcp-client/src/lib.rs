//! A Rust client for `mcp.McpService`, used by the `mcp-gateway` CLI, the
//! integration tests, the benchmarks and by users.
//!
//! It is a thin layer over the tonic stub: it owns connection set-up and the
//! small conveniences every caller wants (building a [`CommandRequest`],
//! following a task's output to the end). Errors keep the server's
//! [`tonic::Status`] intact so callers can match on the code.

#![forbid(unsafe_code)]

use mcp_proto::mcp_service_client::McpServiceClient;
pub use mcp_proto::{
    ApproveTaskRequest, ListTasksRequest, ListTasksResponse, RejectTaskRequest, TaskInfo,
};
pub use mcp_proto::{
    CommandRequest, DeleteFileRequest, DeleteFileResponse, HealthRequest, HealthResponse,
    OutputChunkType, ReadFileRequest, ReadFileResponse, SandboxConfig, TaskCreatedResponse,
    TaskOutputChunk, TaskStatus, TaskStatusRequest, TaskStatusResponse, WriteFileRequest,
    WriteFileResponse,
};
use thiserror::Error;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod connect;
pub use connect::{ConnectOptions, Credential, Credentials, TlsOptions};

/// The generated stub with the credential interceptor.
pub type Stub = McpServiceClient<InterceptedService<Channel, Credentials>>;

/// The address the gateway listens on by default.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8081";

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("endpoint {endpoint:?} is not a valid URI")]
    BadEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// TLS or credential options that cannot be used.
    #[error("{what}")]
    Tls {
        what: String,
        #[source]
        source: Option<std::io::Error>,
    },
}

impl ClientError {
    /// The gRPC status the server answered with, if it answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Status(s) => Some(s),
            ClientError::BadEndpoint { .. }
            | ClientError::Connect { .. }
            | ClientError::Tls { .. } => None,
        }
    }
}

/// A connected client. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Stub,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`; a bare `host:port` gets
    /// `http://`) without credentials; see [`Client::connect_with`].
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, &ConnectOptions::default()).await
    }

    /// The generated stub, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut Stub {
        &mut self.inner
    }

    /// A request for `command args…` with everything else defaulted.
    pub fn command<I, S>(command: &str, args: I) -> CommandRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandRequest {
            command: command.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    pub async fn health(&mut self) -> Result<HealthResponse, ClientError> {
        Ok(self.inner.health(HealthRequest {}).await?.into_inner())
    }

    pub async fn execute(
        &mut self,
        req: CommandRequest,
    ) -> Result<TaskCreatedResponse, ClientError> {
        Ok(self.inner.execute_command(req).await?.into_inner())
    }

    pub async fn run(&mut self, req: CommandRequest) -> Result<TaskStatusResponse, ClientError> {
        Ok(self.inner.run_command(req).await?.into_inner())
    }

    pub async fn status(&mut self, task_id: &str) -> Result<TaskStatusResponse, ClientError> {
        let req = TaskStatusRequest {
            task_id: task_id.to_owned(),
        };
        Ok(self.inner.get_task_status(req).await?.into_inner())
    }

    pub async fn cancel(&mut self, task_id: &str) -> Result<TaskStatusResponse, ClientError> {
        let req = TaskStatusRequest {
            task_id: task_id.to_owned(),
        };
        Ok(self.inner.cancel_task(req).await?.into_inner())
    }

    /// Approves a task waiting for approval, with the caller's credentials
    /// or an approval `token`.
    pub async fn approve(
        &mut self,
        task_id: &str,
        token: Option<String>,
        comment: &str,
    ) -> Result<TaskStatusResponse, ClientError> {
        let req = ApproveTaskRequest {
            task_id: task_id.to_owned(),
            token,
            comment: comment.to_owned(),
        };
        Ok(self.inner.approve_task(req).await?.into_inner())
    }

    /// Rejects a task waiting for approval.
    pub async fn reject(
        &mut self,
        task_id: &str,
        token: Option<String>,
        reason: &str,
    ) -> Result<TaskStatusResponse, ClientError> {
        let req = RejectTaskRequest {
            task_id: task_id.to_owned(),
            reason: reason.to_owned(),
            token,
        };
        Ok(self.inner.reject_task(req).await?.into_inner())
    }

    /// One page of the caller's tenant's tasks.
    pub async fn list_tasks(
        &mut self,
        req: ListTasksRequest,
    ) -> Result<ListTasksResponse, ClientError> {
        Ok(self.inner.list_tasks(req).await?.into_inner())
    }

    /// The live output stream of a task; it ends after the exit-code chunk.
    pub async fn stream(
        &mut self,
        task_id: &str,
    ) -> Result<tonic::Streaming<TaskOutputChunk>, ClientError> {
        let req = TaskStatusRequest {
            task_id: task_id.to_owned(),
        };
        Ok(self.inner.stream_task_output(req).await?.into_inner())
    }

    /// Reads a task's whole output stream into a list of chunks.
    pub async fn collect_output(
        &mut self,
        task_id: &str,
    ) -> Result<Vec<TaskOutputChunk>, ClientError> {
        let mut stream = self.stream(task_id).await?;
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    pub async fn read_file(&mut self, path: &str) -> Result<ReadFileResponse, ClientError> {
        let req = ReadFileRequest {
            path: path.to_owned(),
        };
        Ok(self.inner.read_file(req).await?.into_inner())
    }

    pub async fn write_file(
        &mut self,
        req: WriteFileRequest,
    ) -> Result<WriteFileResponse, ClientError> {
        Ok(self.inner.write_file(req).await?.into_inner())
    }

    pub async fn delete_file(
        &mut self,
        path: &str,
        recursive: bool,
    ) -> Result<DeleteFileResponse, ClientError> {
        let req = DeleteFileRequest {
            path: path.to_owned(),
            recursive,
        };
        Ok(self.inner.delete_file(req).await?.into_inner())
    }
}
