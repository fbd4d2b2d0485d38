use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_client::{Client, CommandRequest, TaskStatus, TaskStatusResponse};
use mcp_gateway::config::RawConfig;
use mcp_gateway::server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn require_bwrap() {
    assert!(
        Path::new("/usr/bin/bwrap").is_file(),
        "these tests run real sandboxes: install bubblewrap (apt-get install bubblewrap, or run scripts/bootstrap.sh)"
    );
}

/// Installs the gateway's telemetry (logs to nowhere, no trace export) as
/// the process-wide subscriber, once, before any test emits an event. With
/// it every callsite is registered against a subscriber that wants it;
/// tests that scope their own subscriber to their thread then see every
/// span and event, instead of racing with callsite-interest caching.
pub fn global_telemetry() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (dispatch, _) =
            mcp_gateway::telemetry::dispatch(&crate::metrics::settings(), std::io::sink, None)
                .unwrap();
        tracing::dispatcher::set_global_default(dispatch).unwrap();
    });
}

/// A raw config for a test gateway whose data lives in `data`.
pub fn test_config(data: &Path) -> RawConfig {
    let mut raw = RawConfig::default();
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.replica_id = "test".into();
    raw.server.shutdown_grace_secs = 0;
    raw.storage.data_dir = data.to_path_buf();
    raw.policy.dir = repo().join("policies");
    raw.sandbox.profiles_dir = repo().join("sandbox-profiles");
    raw
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub client: Client,
    pub data: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestGateway {
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut gw = Self::start_with(test_config(tmp.path())).await;
        gw._tmp = Some(tmp);
        gw
    }

    pub async fn start_with(raw: RawConfig) -> Self {
        global_telemetry();
        require_bwrap();
        let data = raw.storage.data_dir.clone();
        let cfg = raw.validate().unwrap();
        let gateway = server::build(&cfg).await.unwrap();
        let (addr, listener) = server::bind(&cfg).await.unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server::serve(&cfg, gateway, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let client = Client::connect(&format!("http://{addr}")).await.unwrap();
        Self {
            addr,
            client,
            data,
            stop: Some(stop),
            handle: Some(handle),
            _tmp: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

pub fn cmd(command: &str, args: &[&str]) -> CommandRequest {
    Client::command(command, args.iter().copied())
}

pub fn state(r: &TaskStatusResponse) -> TaskStatus {
    TaskStatus::try_from(r.task_info.as_ref().unwrap().status).unwrap()
}

/// Polls until the task is in a terminal state.
pub async fn wait_terminal(client: &mut Client, id: &str) -> TaskStatusResponse {
    for _ in 0..600 {
        let r = client.status(id).await.unwrap();
        if !matches!(
            state(&r),
            TaskStatus::TaskCreated | TaskStatus::TaskQueued | TaskStatus::TaskRunning
        ) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not finish");
}

pub fn code_of<T: std::fmt::Debug>(r: Result<T, mcp_client::ClientError>) -> (tonic::Code, String) {
    let e = r.expect_err("expected an error status");
    let s = e.status().expect("expected a gRPC status").clone();
    (s.code(), s.message().to_owned())
}
