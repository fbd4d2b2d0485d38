use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_client::{
    Client, CommandRequest, ConnectOptions, Credential, TaskStatus, TaskStatusResponse,
};
use mcp_gateway::auth::api_key::KeyHash;
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

/// A gateway served in this process on a loopback port, whatever its
/// listener (cleartext or TLS); [`TestGateway`] adds a cleartext client.
pub struct Server {
    pub addr: SocketAddr,
    pub data: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(raw: RawConfig) -> Self {
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
        Self {
            addr,
            data,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops serving and waits until the server has shut down.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub client: Client,
    pub data: PathBuf,
    server: Server,
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
        let server = Server::start(raw).await;
        let client = Client::connect(&format!("http://{}", server.addr))
            .await
            .unwrap();
        Self {
            addr: server.addr,
            client,
            data: server.data.clone(),
            server,
            _tmp: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.server.stop().await;
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

/// A gateway binary serving on a free port, its stderr lines collected.
pub struct ServedBinary {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    data: tempfile::TempDir,
}

impl ServedBinary {
    /// Starts `mcp-gateway serve` with a fresh data dir and waits for its
    /// "serving" log line.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), env).await
    }

    /// Like [`ServedBinary::start`], with the data in `data`.
    pub async fn start_in(data: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let dir = data.path().to_path_buf();
        Self::start_at(data, &dir, None, env).await
    }

    /// Started from inside `cwd` with `--data-dir data`, as `make run` starts
    /// it from the repository with the embedded defaults' relative paths.
    pub async fn start_relative(cwd: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let dir = cwd.path().to_path_buf();
        Self::start_at(cwd, Path::new("data"), Some(&dir), env).await
    }

    async fn start_at(
        data: tempfile::TempDir,
        data_arg: &Path,
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        require_bwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_arg)
            .arg("--policies")
            .arg(repo().join("policies"))
            .arg("--profiles")
            .arg(repo().join("sandbox-profiles"))
            .env_remove("MCP_GATEWAY_CONFIG")
            .env_remove("RUST_LOG")
            .env("MCP_GATEWAY_SERVER__REPLICA_ID", "test")
            .env("MCP_GATEWAY_SERVER__SHUTDOWN_GRACE_SECS", "0")
            .env("MCP_GATEWAY_LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                let mut ready = Some(ready_tx);
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if l.contains("\"serving\"")
                        && let Some(tx) = ready.take()
                    {
                        let _ = tx.send(());
                    }
                    lines.lock().unwrap().push(l);
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .expect("the gateway did not start")
            .unwrap();
        Self {
            child,
            port,
            lines,
            data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM, as a service manager stops it; the gateway then drains and
    /// flushes its spans. Returns its log lines.
    pub async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let status = tokio::task::spawn_blocking(move || self.child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "the gateway exited with {status}");
        // The reader thread sees EOF right after the exit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.lines.lock().unwrap().clone()
    }
}

impl ServedBinary {
    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        self.url("")
    }

    /// SIGKILL, as a crash: no draining. Hands back the data dir.
    pub async fn kill(mut self) -> tempfile::TempDir {
        self.child.kill().unwrap();
        let mut child = self.child;
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        self.data
    }
}

// Principals of two tenants and a policy that requires approval on request
// (used by `approval` and `quotas`).

/// Decides every command allowed, with `require_approval` when the
/// metadata asks for it and `limits` when it asks for those. Only the
/// decision is hand-written; `approve.rego` is the shipped file.
const TEST_POLICY: &str = r#"package mcp

default decision := {"allow": false, "deny_reasons": ["only commands"], "warnings": [], "obligations": {}}

decision := {"allow": true, "deny_reasons": [], "warnings": [], "obligations": obligations} if {
	input.request.kind == "command"
}

base := {"profile": "default"}

approval := {"require_approval": {"roles": ["ops"], "reason": "needs an operator"}} if {
	input.request.metadata.needs_approval == "yes"
} else := {"require_approval": {
	"roles": ["ops", "security"],
	"reason": "needs ops; needs security",
	"requirements": [
		{"roles": ["ops"], "reason": "needs ops"},
		{"roles": ["security"], "reason": "needs security"},
	],
}} if {
	input.request.metadata.needs_approval == "two-teams"
} else := {}

limits := {"limits": {"timeout_secs": 1, "pids": 16}} if {
	input.request.metadata.limits == "tight"
} else := {}

obligations := object.union(object.union(base, approval), limits)
"#;

pub const SECRET: &str = "approval-secret-of-at-least-32-bytes!";

/// (id, tenant, roles, key) of the test principals.
pub const PRINCIPALS: &[(&str, &str, &[&str], &str)] = &[
    ("alice", "acme", &["dev"], "key-alice-0001"),
    ("bob", "acme", &["ops"], "key-bob-0002"),
    ("carol", "acme", &["dev"], "key-carol-0003"),
    ("bot", "acme", &[], "key-bot-0004"),
    ("mallory", "other", &["ops"], "key-mallory-0005"),
    ("dave", "acme", &["ops", "security"], "key-dave-0006"),
];

/// A policy directory with [`TEST_POLICY`] and the shipped approve.rego.
pub fn policy_dir(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("policies");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("main.rego"), TEST_POLICY).unwrap();
    std::fs::copy(repo().join("policies/approve.rego"), p.join("approve.rego")).unwrap();
    p
}

/// A config with API keys for [`PRINCIPALS`], the test policy and a token secret.
pub fn config(data: &Path) -> RawConfig {
    let mut raw = test_config(data);
    raw.policy.dir = policy_dir(data);
    raw.policy.watch = false;
    raw.auth.api_keys = PRINCIPALS
        .iter()
        .map(
            |(id, tenant, roles, key)| mcp_gateway::auth::config::RawApiKey {
                id: (*id).to_owned(),
                tenant: (*tenant).to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                hash: KeyHash::of(key).to_string(),
            },
        )
        .collect();
    raw.approval.token_secret = SECRET.to_owned();
    raw
}

/// A client authenticated as `id`.
pub async fn client_as(gw: &TestGateway, id: &str) -> Client {
    let key = PRINCIPALS.iter().find(|p| p.0 == id).map(|p| p.3).unwrap();
    Client::connect_with(
        &gw.endpoint(),
        &ConnectOptions {
            credential: Some(Credential::ApiKey(key.to_owned())),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

pub fn needing_approval(command: &str, args: &[&str]) -> CommandRequest {
    let mut r = cmd(command, args);
    r.metadata.insert("needs_approval".into(), "yes".into());
    r
}
