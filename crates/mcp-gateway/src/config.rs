//! Configuration: defaults < `/etc/mcp-gateway/config.toml` (or `--config`) <
//! `MCP_GATEWAY_*` env < CLI flags. Parsed into [`RawConfig`] (all plain
//! serde), then validated into [`Config`], which cannot hold a bad state.
//! Every problem is reported at once, at start-up, never mid-request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use mcp_core::RequestLimits;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::telemetry::{LogFormat, TelemetrySettings};

/// Where the packaged config lives; read when present and no `--config` is given.
pub const SYSTEM_CONFIG: &str = "/etc/mcp-gateway/config.toml";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub storage: RawStorage,
    pub policy: RawPolicy,
    pub sandbox: RawSandbox,
    pub limits: RawLimits,
    pub log: RawLog,
    pub http: RawHttp,
    pub telemetry: RawTelemetry,
    pub audit: mcp_pipeline::audit::RawAudit,
    pub redaction: RawRedaction,
    pub secrets: mcp_pipeline::secrets::RawSecrets,
    pub auth: crate::auth::RawAuth,
    pub tls: crate::auth::RawTls,
    pub approval: mcp_pipeline::approval::RawApproval,
    pub quotas: mcp_pipeline::quota::RawQuotas,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    /// Serve a non-loopback address although no authentication (`[auth]`)
    /// is configured: anyone who reaches it runs commands. The gateway warns
    /// at start and on `/ready`.
    pub insecure_no_auth: bool,
    /// Names this gateway in the tasks it owns; empty = the host name.
    pub replica_id: String,
    /// Seconds to let running tasks finish on shutdown before cancelling them.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    pub data_dir: PathBuf,
    /// Empty = `sqlite://<data_dir>/gateway.db`.
    pub database_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub dir: PathBuf,
    /// Reload the policy set when a file in `dir` changes (SIGHUP always reloads).
    pub watch: bool,
    /// A reload is accepted only when the new set's `*_test.rego` tests pass.
    pub reload_requires_passing_tests: bool,
    /// A candidate policy set evaluated beside the active one on live
    /// traffic, never enforced; disagreements are logged.
    /// Empty = none.
    pub shadow_dir: PathBuf,
    /// A policy bundle (`.tar.gz`, see `mcp-gateway policy build`) to load
    /// instead of `dir`; watched and reloaded like a directory. Or an
    /// `https://` URL (`http://` for loopback hosts or with
    /// `bundle_allow_http`) polled for new bundles (`bundle_fetch`).
    /// Empty = use `dir`.
    pub bundle: PathBuf,
    /// With a URL `bundle`: seconds between polls (1..=86400).
    pub bundle_poll_secs: u64,
    /// With a URL `bundle`: seconds one download may take (1..=600).
    pub bundle_timeout_secs: u64,
    /// With a URL `bundle`: allow `http://` to a non-loopback host.
    pub bundle_allow_http: bool,
    /// With a URL `bundle`: a file holding a bearer token for the bundle
    /// server (read on every poll). Empty = none.
    pub bundle_token_file: PathBuf,
    /// With an `https://` `bundle`: trust only the CA certificates in this
    /// PEM file. Empty = the system's roots.
    pub bundle_ca_file: PathBuf,
    /// An Ed25519 public key (PEM). When set, a bundle (active or shadow)
    /// loads only when signed with the matching private key.
    pub bundle_public_key: PathBuf,
    /// Environment tags handed to policy as `input.context.environment`
    /// (e.g. `env = "prod"`).
    pub environment: std::collections::BTreeMap<String, String>,
}

impl RawPolicy {
    /// The keys `bundle_fetch` validates.
    pub fn bundle_fetch(&self) -> crate::bundle_fetch::RawFetch<'_> {
        crate::bundle_fetch::RawFetch {
            bundle: &self.bundle,
            bundle_poll_secs: self.bundle_poll_secs,
            bundle_timeout_secs: self.bundle_timeout_secs,
            bundle_allow_http: self.bundle_allow_http,
            bundle_token_file: &self.bundle_token_file,
            bundle_ca_file: &self.bundle_ca_file,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSandbox {
    pub profiles_dir: PathBuf,
    pub bwrap: PathBuf,
    /// uid/gid bubblewrap is started as when the gateway runs as root.
    pub uid: u32,
    pub gid: u32,
    /// Empty = `<data_dir>/files`.
    pub files_root: PathBuf,
    /// The host side of running tasks: the egress proxy sockets of
    /// restricted-network tasks. Empty = `<data_dir>/sockets`.
    pub sockets_dir: PathBuf,
    /// The key's old name, from when tasks had workspaces on disk; still
    /// read so that existing files keep working (`sockets_dir` wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspaces_dir: Option<PathBuf>,
    /// When the gateway runs as root: a uid of its own for every running
    /// sandbox, from this range (group: `gid`); unset = every sandbox is `uid`.
    pub uid_range: Option<RawUidRange>,
    /// The binary bound into restricted-network sandboxes as the egress
    /// forwarder; empty = this executable.
    pub egress_forwarder: PathBuf,
    /// `[sandbox.pool]`: the warm pool (off by default).
    pub pool: crate::sandbox_pool::RawPool,
}

/// `sandbox.uid_range = { start = 200000, count = 1000 }`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUidRange {
    pub start: u32,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    pub max_output_bytes: usize,
    pub max_running_tasks: usize,
    pub max_queued_tasks: usize,
    pub max_command_bytes: usize,
    pub max_args: usize,
    pub max_args_bytes: usize,
    pub max_env: usize,
    pub max_env_bytes: usize,
    pub max_metadata: usize,
    pub max_metadata_bytes: usize,
    pub max_file_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `auto` (human on a terminal, JSON otherwise), `text` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `mcp_gateway=debug,info`.
    pub level: String,
}

/// The REST/JSON front door (served on `server.listen` beside gRPC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    /// Largest JSON request body; file uploads are bounded by
    /// `limits.max_file_bytes` instead.
    pub max_body_bytes: usize,
    /// Time to answer one request (`POST /v1/run` gets the task's timeout
    /// on top; streams are not cut once they started).
    pub request_timeout_secs: u64,
    /// REST requests handled at once; more are refused with 503.
    pub max_concurrent_requests: usize,
}

/// Redaction of output and audit excerpts (`[redaction]`), beside the
/// built-in rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedaction {
    /// Extra regexes; every match is replaced by `<masked>`.
    pub patterns: Vec<String>,
}

/// Traces. `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`),
/// `OTEL_SERVICE_NAME` and `OTEL_TRACES_SAMPLER_ARG` override the file;
/// `MCP_GATEWAY_TELEMETRY__*` overrides those.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; empty = no export.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Fraction of new traces recorded, 0.0–1.0 (a sampled parent is
    /// always followed).
    pub sample_ratio: f64,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            max_concurrent_requests: 256,
        }
    }
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: crate::telemetry::DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: 1.0,
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".to_owned(),
            insecure_no_auth: false,
            replica_id: String::new(),
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            database_url: String::new(),
        }
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            watch: true,
            reload_requires_passing_tests: false,
            shadow_dir: PathBuf::new(),
            bundle: PathBuf::new(),
            bundle_poll_secs: crate::bundle_fetch::DEFAULT_POLL_SECS,
            bundle_timeout_secs: crate::bundle_fetch::DEFAULT_TIMEOUT_SECS,
            bundle_allow_http: false,
            bundle_token_file: PathBuf::new(),
            bundle_ca_file: PathBuf::new(),
            bundle_public_key: PathBuf::new(),
            environment: Default::default(),
        }
    }
}

impl Default for RawSandbox {
    fn default() -> Self {
        Self {
            profiles_dir: PathBuf::from("sandbox-profiles"),
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            uid: 65534,
            gid: 65534,
            files_root: PathBuf::new(),
            sockets_dir: PathBuf::new(),
            workspaces_dir: None,
            uid_range: None,
            egress_forwarder: PathBuf::new(),
            pool: crate::sandbox_pool::RawPool::default(),
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        let r = RequestLimits::default();
        Self {
            default_timeout_secs: r.default_timeout.as_secs(),
            max_timeout_secs: r.max_timeout.as_secs(),
            max_output_bytes: 1024 * 1024,
            max_running_tasks: 64,
            max_queued_tasks: 1024,
            max_command_bytes: r.max_command_bytes,
            max_args: r.max_args,
            max_args_bytes: r.max_args_bytes,
            max_env: r.max_env,
            max_env_bytes: r.max_env_bytes,
            max_metadata: r.max_metadata,
            max_metadata_bytes: r.max_metadata_bytes,
            max_file_bytes: r.max_file_bytes,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "auto".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub insecure_no_auth: bool,
    pub replica_id: String,
    pub shutdown_grace: Duration,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub policies_dir: PathBuf,
    pub policy_watch: bool,
    pub policy_reload_requires_tests: bool,
    pub policy_shadow_dir: Option<PathBuf>,
    /// `policy.bundle_public_key`: bundles must be signed with its key.
    pub policy_bundle_key: Option<PathBuf>,
    /// `policy.bundle` as a URL: where and how often to fetch it;
    /// `policies_dir` is then the cached copy in the data dir.
    pub policy_bundle_fetch: Option<crate::bundle_fetch::FetchSettings>,
    pub policy_environment: std::collections::BTreeMap<String, String>,
    pub profiles_dir: PathBuf,
    pub bwrap: PathBuf,
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// Per-sandbox uids (when root), validated.
    pub sandbox_uid_range: Option<mcp_sandbox::UidRange>,
    /// `None` = this executable.
    pub egress_forwarder: Option<PathBuf>,
    /// The warm sandbox pool, validated.
    pub sandbox_pool: crate::sandbox_pool::RawPool,
    pub files_root: PathBuf,
    pub sockets_dir: PathBuf,
    pub request_limits: RequestLimits,
    pub max_output_bytes: usize,
    pub max_running_tasks: usize,
    pub max_queued_tasks: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub audit: mcp_pipeline::audit::AuditSettings,
    /// `[redaction] patterns`, compiled (built-in rules included).
    pub redactor: mcp_core::redact::Redactor,
    pub secrets: mcp_pipeline::secrets::SecretsSettings,
    /// Validated `[auth]` (holds secrets; shared, never cloned).
    pub auth: std::sync::Arc<crate::auth::AuthSettings>,
    /// `[tls]`; `None` = plain TCP.
    pub tls: Option<crate::auth::TlsSettings>,
    /// `[approval]`.
    pub approval: mcp_pipeline::approval::ApprovalSettings,
    /// `[quotas]`.
    pub quotas: mcp_pipeline::quota::QuotaSettings,
}

/// Limits of the REST front door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
}

/// Values given as command-line flags; `None` leaves lower layers in charge.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub policies: Option<PathBuf>,
    pub profiles: Option<PathBuf>,
}

/// Loads the layered configuration. `file` is `--config`; when `None` the
/// system config is read if it exists.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    load_with_env(file, overrides, Env::prefixed("MCP_GATEWAY_"))
}

fn load_with_env(
    file: Option<&Path>,
    overrides: &Overrides,
    env: Env,
) -> Result<Config, ConfigError> {
    let mut fig = Figment::new().merge(Serialized::defaults(RawConfig::default()));
    match file {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    problems: vec![format!("config file {} does not exist", path.display())],
                });
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        None if Path::new(SYSTEM_CONFIG).is_file() => {
            fig = fig.merge(Toml::file_exact(SYSTEM_CONFIG));
        }
        None => {}
    }
    // The OpenTelemetry variables sit between the file and our own prefix;
    // the more specific traces endpoint wins over the general one.
    for (var, key) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "telemetry.otlp_endpoint",
        ),
        ("OTEL_SERVICE_NAME", "telemetry.service_name"),
        ("OTEL_TRACES_SAMPLER_ARG", "telemetry.sample_ratio"),
    ] {
        fig = fig.merge(Env::raw().only(&[var]).map(move |_| key.into()));
    }
    // `MCP_GATEWAY_ENDPOINT` belongs to the client and `MCP_GATEWAY_CONFIG`
    // names the file; neither is a config key.
    fig = fig.merge(env.ignore(&["endpoint", "config"]).split("__"));
    if let Some(v) = &overrides.listen {
        fig = fig.merge(Serialized::default("server.listen", v));
    }
    if let Some(v) = &overrides.data_dir {
        fig = fig.merge(Serialized::default("storage.data_dir", v));
    }
    if let Some(v) = &overrides.policies {
        fig = fig.merge(Serialized::default("policy.dir", v));
    }
    if let Some(v) = &overrides.profiles {
        fig = fig.merge(Serialized::default("sandbox.profiles_dir", v));
    }
    let raw: RawConfig = fig.extract().map_err(|e| ConfigError::Invalid {
        problems: e.into_iter().map(|e| e.to_string()).collect(),
    })?;
    raw.validate()
}

impl Config {
    /// The sandbox's settings, the same for `serve` and `sandbox check`.
    /// bubblewrap starts as `sandbox.uid`/`gid` only when the gateway is
    /// root (it cannot switch users otherwise).
    pub fn sandbox_settings(&self) -> mcp_sandbox::SandboxSettings {
        mcp_sandbox::SandboxSettings {
            bwrap: self.bwrap.clone(),
            run_as: mcp_sandbox::SandboxSettings::default_run_as()
                .map(|_| (self.sandbox_uid, self.sandbox_gid)),
            sockets_dir: self.sockets_dir.clone(),
            files_root: self.files_root.clone(),
            max_output_bytes: self.max_output_bytes,
        }
    }
}

impl RawConfig {
    /// Validates every field, collecting all problems before failing.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();

        let listen = match self.server.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "server.listen {:?} is not an address like 127.0.0.1:8081",
                    self.server.listen
                ));
                None
            }
        };
        let (auth, tls) = crate::auth::config::validate(
            &self.auth,
            &self.tls,
            listen,
            self.server.insecure_no_auth,
            &mut problems,
        );

        let approval = self.approval.validate(&mut problems);
        let quotas = self.quotas.validate(&mut problems);

        let data_dir = self.storage.data_dir.clone();
        if data_dir.as_os_str().is_empty() {
            problems.push("storage.data_dir must not be empty".to_owned());
        }
        let database_url = if self.storage.database_url.is_empty() {
            format!("sqlite://{}", data_dir.join("gateway.db").display())
        } else {
            self.storage.database_url.clone()
        };

        let bundle_fetch =
            crate::bundle_fetch::validate(&self.policy.bundle_fetch(), &data_dir, &mut problems);
        if crate::bundle_fetch::is_url(&self.policy.bundle) {
            // Fetched at start (server::build); checked by validate above.
        } else if !self.policy.bundle.as_os_str().is_empty() {
            if !self.policy.bundle.is_file() {
                problems.push(format!(
                    "policy.bundle {} is not a file",
                    self.policy.bundle.display()
                ));
            }
        } else if !self.policy.dir.is_dir() {
            problems.push(format!(
                "policy.dir {} is not a directory",
                self.policy.dir.display()
            ));
        }
        if !self.policy.bundle_public_key.as_os_str().is_empty()
            && !self.policy.bundle_public_key.is_file()
        {
            problems.push(format!(
                "policy.bundle_public_key {} is not a file",
                self.policy.bundle_public_key.display()
            ));
        }
        // A directory or a bundle file.
        if !self.policy.shadow_dir.as_os_str().is_empty() && !self.policy.shadow_dir.exists() {
            problems.push(format!(
                "policy.shadow_dir {} is neither a directory nor a bundle",
                self.policy.shadow_dir.display()
            ));
        }
        if !self.sandbox.profiles_dir.is_dir() {
            problems.push(format!(
                "sandbox.profiles_dir {} is not a directory",
                self.sandbox.profiles_dir.display()
            ));
        }
        if self.sandbox.uid == 0 || self.sandbox.gid == 0 {
            problems.push("sandbox.uid and sandbox.gid must not be 0 (root)".to_owned());
        }
        self.sandbox.pool.validate(&mut problems);
        if let Some(r) = self.sandbox.uid_range {
            let range = mcp_sandbox::UidRange {
                start: r.start,
                count: r.count,
            };
            if let Err(e) = range.validate() {
                problems.push(e);
            } else if range.contains(self.sandbox.uid) {
                problems.push(format!(
                    "sandbox.uid_range must not contain sandbox.uid {}",
                    self.sandbox.uid
                ));
            }
        }

        let l = &self.limits;
        if l.default_timeout_secs == 0 {
            problems.push("limits.default_timeout_secs must be at least 1".to_owned());
        }
        if l.default_timeout_secs > l.max_timeout_secs {
            problems.push(format!(
                "limits.default_timeout_secs {} is above limits.max_timeout_secs {}",
                l.default_timeout_secs, l.max_timeout_secs
            ));
        }
        for (name, v) in [
            ("max_output_bytes", l.max_output_bytes),
            ("max_running_tasks", l.max_running_tasks),
            ("max_command_bytes", l.max_command_bytes),
            ("max_args_bytes", l.max_args_bytes),
            ("max_file_bytes", l.max_file_bytes),
        ] {
            if v == 0 {
                problems.push(format!("limits.{name} must be at least 1"));
            }
        }

        let log_format = match self.log.format.as_str() {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!(
                    "log.format {other:?} is not one of auto, text, json"
                ));
                LogFormat::Auto
            }
        };

        let h = &self.http;
        for (name, v) in [
            ("max_body_bytes", h.max_body_bytes),
            ("max_concurrent_requests", h.max_concurrent_requests),
            (
                "request_timeout_secs",
                usize::try_from(h.request_timeout_secs).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                problems.push(format!("http.{name} must be at least 1"));
            }
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            problems.push(format!(
                "telemetry.sample_ratio {} is not between 0.0 and 1.0",
                t.sample_ratio
            ));
        }
        let endpoint = t.otlp_endpoint.trim();
        let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !(endpoint.is_empty() || is_url) {
            problems.push(format!(
                "telemetry.otlp_endpoint {endpoint:?} is not a URL like http://127.0.0.1:4317"
            ));
        }
        if t.service_name.trim().is_empty() {
            problems.push("telemetry.service_name must not be empty".to_owned());
        }

        let audit = mcp_pipeline::audit::validate(&self.audit, &mut problems);
        let secrets = mcp_pipeline::secrets::validate(&self.secrets, &mut problems);
        let redactor = match mcp_core::redact::Redactor::new(&self.redaction.patterns) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("redaction.patterns: {e}"));
                mcp_core::redact::Redactor::default()
            }
        };

        let replica_id = if self.server.replica_id.is_empty() {
            host_name()
        } else {
            self.server.replica_id.clone()
        };

        let (Some(listen), true) = (listen, problems.is_empty()) else {
            return Err(ConfigError::Invalid { problems });
        };
        let or_under = |p: &Path, sub: &str| {
            if p.as_os_str().is_empty() {
                data_dir.join(sub)
            } else {
                p.to_path_buf()
            }
        };
        Ok(Config {
            listen,
            insecure_no_auth: self.server.insecure_no_auth,
            replica_id,
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            files_root: or_under(&self.sandbox.files_root, "files"),
            // An old file's `workspaces_dir` keeps its directory.
            sockets_dir: or_under(
                match &self.sandbox.workspaces_dir {
                    Some(old) if self.sandbox.sockets_dir.as_os_str().is_empty() => old,
                    _ => &self.sandbox.sockets_dir,
                },
                "sockets",
            ),
            data_dir,
            database_url,
            policies_dir: match &bundle_fetch {
                Some(f) => f.cache.clone(),
                None if self.policy.bundle.as_os_str().is_empty() => self.policy.dir,
                None => self.policy.bundle,
            },
            policy_bundle_fetch: bundle_fetch,
            policy_bundle_key: (!self.policy.bundle_public_key.as_os_str().is_empty())
                .then_some(self.policy.bundle_public_key),
            policy_watch: self.policy.watch,
            policy_reload_requires_tests: self.policy.reload_requires_passing_tests,
            policy_shadow_dir: (!self.policy.shadow_dir.as_os_str().is_empty())
                .then_some(self.policy.shadow_dir),
            policy_environment: self.policy.environment,
            profiles_dir: self.sandbox.profiles_dir,
            bwrap: self.sandbox.bwrap,
            sandbox_uid: self.sandbox.uid,
            sandbox_gid: self.sandbox.gid,
            sandbox_uid_range: self.sandbox.uid_range.map(|r| mcp_sandbox::UidRange {
                start: r.start,
                count: r.count,
            }),
            egress_forwarder: (!self.sandbox.egress_forwarder.as_os_str().is_empty())
                .then(|| self.sandbox.egress_forwarder.clone()),
            sandbox_pool: self.sandbox.pool.clone(),
            request_limits: RequestLimits {
                default_timeout: Duration::from_secs(l.default_timeout_secs),
                max_timeout: Duration::from_secs(l.max_timeout_secs),
                max_command_bytes: l.max_command_bytes,
                max_args: l.max_args,
                max_args_bytes: l.max_args_bytes,
                max_env: l.max_env,
                max_env_bytes: l.max_env_bytes,
                max_metadata: l.max_metadata,
                max_metadata_bytes: l.max_metadata_bytes,
                max_sandbox_paths: 32,
                max_file_bytes: l.max_file_bytes,
            },
            max_output_bytes: l.max_output_bytes,
            max_running_tasks: l.max_running_tasks,
            max_queued_tasks: l.max_queued_tasks,
            http: HttpSettings {
                max_body_bytes: self.http.max_body_bytes,
                request_timeout: Duration::from_secs(self.http.request_timeout_secs),
                max_concurrent_requests: self.http.max_concurrent_requests,
            },
            telemetry: TelemetrySettings {
                log_format,
                log_level: self.log.level.clone(),
                otlp_endpoint: Some(self.telemetry.otlp_endpoint.trim().to_owned())
                    .filter(|e| !e.is_empty()),
                service_name: self.telemetry.service_name,
                sample_ratio: self.telemetry.sample_ratio,
            },
            log_format,
            log_level: self.log.level,
            auth: std::sync::Arc::new(auth),
            tls,
            approval,
            quotas,
            audit,
            redactor,
            secrets,
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

#[cfg(test)]
mod tests;
