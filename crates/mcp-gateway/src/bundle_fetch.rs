//! Policy bundles fetched from an `http(s)://` URL (`policy.bundle =
//! "https://…"`), polled every `policy.bundle_poll_secs`.
//!
//! The gateway owns the network I/O; `mcp-policy` only ever reads files.
//! A download is streamed into `<data_dir>/policy-bundle/incoming.tar.gz.part`
//! (at most [`MAX_DOWNLOAD_BYTES`], checked while streaming, within
//! `policy.bundle_timeout_secs`) and handed to
//! [`PolicyService::reload_from`], which verifies and compiles it and only
//! then renames it over `<data_dir>/policy-bundle/bundle.tar.gz`, the file
//! the service serves from. That file therefore always holds the last good
//! bundle and doubles as the start-up cache.
//!
//! Invariants:
//! - any failure (network, HTTP status, size, signature, compile) keeps the
//!   previous revision serving, is logged with its reason and counted in
//!   the service's `reload_failures`;
//! - at start-up a failed first download stops the gateway (fail closed)
//!   unless a cached last good bundle exists, which then serves with a
//!   warning;
//! - `If-None-Match` carries the ETag of the bundle serving now, so a `304`
//!   keeps the revision without a download;
//! - redirects are not followed, credentials are never part of the URL,
//!   the bearer token is sent marked sensitive and never logged, and URLs
//!   are logged without their query string.

use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, ETAG, HeaderValue, IF_NONE_MATCH};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mcp_policy::{EngineOptions, PolicyEngine, PolicyError, PolicyService};
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, error, info, warn};

/// `policy.bundle_poll_secs` by default.
pub const DEFAULT_POLL_SECS: u64 = 60;
/// The longest allowed poll interval (a day).
pub const MAX_POLL_SECS: u64 = 86_400;
/// `policy.bundle_timeout_secs` by default.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// The longest allowed download time.
pub const MAX_TIMEOUT_SECS: u64 = 600;
/// The most bytes a download may have: the bundle reader's own cap on the
/// decompressed content, so no bundle it would accept is cut off here.
pub const MAX_DOWNLOAD_BYTES: u64 = mcp_policy::MAX_BUNDLE_BYTES;
/// The largest bearer token file read.
const MAX_TOKEN_BYTES: u64 = 16 * 1024;
/// Below the data dir: the cached bundle and the download in progress.
pub const CACHE_DIR: &str = "policy-bundle";
/// The last good bundle, the file the policy service serves from.
pub const CACHE_FILE: &str = "bundle.tar.gz";
const INCOMING_FILE: &str = "incoming.tar.gz.part";

/// Validated `policy.bundle*` settings for a bundle URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    pub url: Uri,
    /// Between the end of one poll and the start of the next.
    pub poll: Duration,
    /// For one download: connect, request and the whole body.
    pub timeout: Duration,
    pub token_file: Option<PathBuf>,
    /// `None` = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `<data_dir>/policy-bundle/bundle.tar.gz`.
    pub cache: PathBuf,
}

/// Why a bundle could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read the bundle server CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no usable CA certificate for the bundle server ({what})")]
    NoRoots { what: String },
    #[error("cannot set up TLS for the bundle server")]
    Tls(#[source] rustls::Error),
    #[error("cannot read the bundle token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bundle token file {path} {problem}")]
    BadToken {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("cannot build the bundle request")]
    BuildRequest(#[source] hyper::http::Error),
    #[error("cannot reach the bundle server at {url}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url} did not deliver the bundle within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("the bundle at {url} is larger than {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("reading the bundle from {url} failed")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot write the downloaded bundle to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("the bundle check stopped unexpectedly")]
    Join(#[source] tokio::task::JoinError),
}

/// The error and its sources, for one log field.
pub fn reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// Whether `policy.bundle` names a URL rather than a file.
pub fn is_url(bundle: &Path) -> bool {
    bundle.to_str().is_some_and(|s| {
        let s = s.to_ascii_lowercase();
        s.starts_with("http://") || s.starts_with("https://")
    })
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `url` without its query string, for logs and messages (a pre-signed
/// URL carries its credentials there).
fn shown(url: &Uri) -> String {
    match (url.scheme_str(), url.authority()) {
        (Some(s), Some(a)) => format!("{s}://{a}{}", url.path()),
        _ => url.path().to_owned(),
    }
}

/// The `[policy]` keys of a URL bundle as the file gave them; the config
/// module lends them (`RawPolicy::bundle_fetch`), so that this module needs
/// nothing of the config's.
#[derive(Debug, Clone, Copy)]
pub struct RawFetch<'a> {
    pub bundle: &'a Path,
    pub bundle_poll_secs: u64,
    pub bundle_timeout_secs: u64,
    pub bundle_allow_http: bool,
    pub bundle_token_file: &'a Path,
    pub bundle_ca_file: &'a Path,
}

/// Validates the URL settings of `policy`; `None` when `policy.bundle` is
/// no URL (or is broken, with the problems pushed).
pub fn validate(
    policy: &RawFetch<'_>,
    data_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<FetchSettings> {
    if !is_url(policy.bundle) {
        return None;
    }
    let raw = policy.bundle.to_string_lossy();
    let before = problems.len();
    let url = match raw.parse::<Uri>() {
        Ok(u) => Some(u),
        Err(e) => {
            problems.push(format!("policy.bundle {raw:?} is not a URL: {e}"));
            None
        }
    };
    if let Some(url) = &url {
        let https = url
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let host = url.host().unwrap_or_default();
        if host.is_empty() {
            problems.push(format!("policy.bundle {} has no host", shown(url)));
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            problems.push(
                "policy.bundle must not carry credentials in the URL; use policy.bundle_token_file"
                    .to_owned(),
            );
        }
        if !https && !policy.bundle_allow_http && !is_loopback(host) {
            problems.push(format!(
                "policy.bundle {} is plain http to a non-loopback host; use https, or set policy.bundle_allow_http = true",
                shown(url)
            ));
        }
    }
    if !(1..=MAX_POLL_SECS).contains(&policy.bundle_poll_secs) {
        problems.push(format!(
            "policy.bundle_poll_secs {} is not between 1 and {MAX_POLL_SECS}",
            policy.bundle_poll_secs
        ));
    }
    if !(1..=MAX_TIMEOUT_SECS).contains(&policy.bundle_timeout_secs) {
        problems.push(format!(
            "policy.bundle_timeout_secs {} is not between 1 and {MAX_TIMEOUT_SECS}",
            policy.bundle_timeout_secs
        ));
    }
    let file = |p: &Path, key: &str, problems: &mut Vec<String>| {
        if p.as_os_str().is_empty() {
            None
        } else {
            if !p.is_file() {
                problems.push(format!("policy.{key} {} is not a file", p.display()));
            }
            Some(p.to_owned())
        }
    };
    let token_file = file(policy.bundle_token_file, "bundle_token_file", problems);
    let ca_file = file(policy.bundle_ca_file, "bundle_ca_file", problems);
    if problems.len() > before {
        return None;
    }
    Some(FetchSettings {
        url: url?,
        poll: Duration::from_secs(policy.bundle_poll_secs),
        timeout: Duration::from_secs(policy.bundle_timeout_secs),
        token_file,
        ca_file,
        cache: data_dir.join(CACHE_DIR).join(CACHE_FILE),
    })
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Downloads the bundle and keeps the ETag of the one serving.
#[derive(Debug)]
pub struct BundleFetcher {
    settings: FetchSettings,
    client: HttpsClient,
    etag: Option<HeaderValue>,
}

/// What a download brought.
#[derive(Debug)]
enum Fetched {
    /// `304 Not Modified`: the bundle serving is current.
    Unchanged,
    /// A new bundle in the incoming file, with its ETag.
    New(PathBuf, Option<HeaderValue>),
}

fn tls_config(settings: &FetchSettings) -> Result<rustls::ClientConfig, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    let what = match &settings.ca_file {
        Some(path) => {
            let certs = crate::auth::tls::pem_certs(path).map_err(|source| FetchError::CaFile {
                path: path.clone(),
                source,
            })?;
            roots.add_parsable_certificates(certs);
            format!("policy.bundle_ca_file {}", path.display())
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                warn!(error = %e, "cannot read some system CA certificates");
            }
            roots.add_parsable_certificates(found.certs);
            "the system's CA certificates".to_owned()
        }
    };
    let https = settings
        .url
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    if https && roots.is_empty() {
        return Err(FetchError::NoRoots { what });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(FetchError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl BundleFetcher {
    /// Sets up TLS (failing when no CA certificate is usable for an
    /// `https` URL) and the cache directory.
    pub fn new(settings: FetchSettings) -> Result<Self, FetchError> {
        let tls = tls_config(&settings)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        if let Some(dir) = settings.cache.parent() {
            std::fs::create_dir_all(dir).map_err(|source| FetchError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(Self {
            settings,
            client,
            etag: None,
        })
    }

    fn incoming(&self) -> PathBuf {
        self.settings.cache.with_file_name(INCOMING_FILE)
    }

    fn bearer(&self) -> Result<Option<HeaderValue>, FetchError> {
        let Some(path) = &self.settings.token_file else {
            return Ok(None);
        };
        let read_err = |source| FetchError::TokenFile {
            path: path.clone(),
            source,
        };
        let mut raw = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_end(&mut raw))
            .map_err(read_err)?;
        let bad = |problem| FetchError::BadToken {
            path: path.clone(),
            problem,
        };
        if raw.len() as u64 > MAX_TOKEN_BYTES {
            return Err(bad("is larger than 16 KiB"));
        }
        let token = std::str::from_utf8(&raw)
            .map_err(|_| bad("is not UTF-8"))?
            .trim();
        if token.is_empty() {
            return Err(bad("is empty"));
        }
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| bad("holds characters not allowed in an HTTP header"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// One conditional GET, the body streamed into the incoming file.
    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let url = shown(&self.settings.url);
        let secs = self.settings.timeout.as_secs();
        match tokio::time::timeout(self.settings.timeout, self.download(&url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: url.clone(),
                secs,
            }),
        }
    }

    async fn download(&self, url: &str) -> Result<Fetched, FetchError> {
        let mut request = Request::get(self.settings.url.clone());
        if let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag.clone());
        }
        if let Some(bearer) = self.bearer()? {
            request = request.header(AUTHORIZATION, bearer);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(FetchError::BuildRequest)?;
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| FetchError::Request {
                    url: url.to_owned(),
                    source,
                })?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && self.etag.is_some() {
            return Ok(Fetched::Unchanged);
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status,
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            max: MAX_DOWNLOAD_BYTES,
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_DOWNLOAD_BYTES) {
            return Err(too_large());
        }
        let etag = response.headers().get(ETAG).cloned();
        let path = self.incoming();
        let write_err = |source| FetchError::Write {
            path: path.clone(),
            source,
        };
        let result = async {
            let mut file = tokio::fs::File::create(&path).await.map_err(write_err)?;
            let mut body = response.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|source| FetchError::Body {
                    url: url.to_owned(),
                    source,
                })?;
                if let Ok(data) = frame.into_data() {
                    total = total.saturating_add(data.len() as u64);
                    if total > MAX_DOWNLOAD_BYTES {
                        return Err(too_large());
                    }
                    file.write_all(&data).await.map_err(write_err)?;
                }
            }
            // On disk before it is renamed into place.
            file.sync_all().await.map_err(write_err)
        }
        .await;
        match result {
            Ok(()) => Ok(Fetched::New(path, etag)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }

    /// The first download, at start-up, before the policy service exists:
    /// the bundle must verify and compile with `options`, then becomes the
    /// cached copy the service is started from. When anything fails, a
    /// cached copy of the last good bundle is used with a warning; without
    /// one the gateway does not start.
    pub async fn prepare(&mut self, options: &EngineOptions) -> Result<(), FetchError> {
        let url = shown(&self.settings.url);
        match self.first_download(options).await {
            Ok(revision) => {
                info!(url = %url, revision = %revision, "policy bundle downloaded");
                Ok(())
            }
            Err(err) if self.settings.cache.is_file() => {
                warn!(url = %url, error = %reason(&err), cache = %self.settings.cache.display(), "policy bundle download failed at start; serving the cached copy of the last good bundle");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn first_download(&mut self, options: &EngineOptions) -> Result<String, FetchError> {
        // Unconditional: what is cached may be older than what we last saw.
        self.etag = None;
        let Fetched::New(incoming, etag) = self.fetch().await? else {
            return Err(FetchError::Status {
                url: shown(&self.settings.url),
                status: StatusCode::NOT_MODIFIED,
            });
        };
        let options = options.clone();
        let cache = self.settings.cache.clone();
        let checked = incoming.clone();
        let revision = tokio::task::spawn_blocking(move || {
            let engine = PolicyEngine::load_with(&checked, options)?;
            std::fs::rename(&checked, &cache).map_err(|source| PolicyError::Read {
                path: cache.clone(),
                source,
            })?;
            Ok::<_, PolicyError>(engine.revision().to_owned())
        })
        .await
        .map_err(FetchError::Join)?;
        match revision {
            Ok(revision) => {
                self.etag = etag;
                Ok(revision)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&incoming).await;
                Err(e.into())
            }
        }
    }

    /// One poll: downloads (unless `304`), verifies, compiles and swaps in
    /// the new bundle; returns the new revision, `None` when unchanged.
    /// Every failure is logged and counted, and the previous revision keeps
    /// serving.
    pub async fn poll(
        &mut self,
        service: &Arc<PolicyService>,
    ) -> Result<Option<String>, FetchError> {
        let url = shown(&self.settings.url);
        let (incoming, etag) = match self.fetch().await {
            Ok(Fetched::Unchanged) => {
                debug!(url = %url, "policy bundle unchanged");
                return Ok(None);
            }
            Ok(Fetched::New(incoming, etag)) => (incoming, etag),
            Err(err) => {
                service.count_reload_failure();
                error!(url = %url, error = %reason(&err), revision = %service.revision(), "policy bundle download failed; keeping the previous revision");
                return Err(err);
            }
        };
        let svc = service.clone();
        let checked = incoming.clone();
        match tokio::task::spawn_blocking(move || svc.reload_from(&checked)).await {
            Ok(Ok(revision)) => {
                self.etag = etag;
                Ok(Some(revision))
            }
            // Logged and counted by the service.
            Ok(Err(err)) => {
                let _ = tokio::fs::remove_file(&incoming).await;
                Err(err.into())
            }
            Err(err) => {
                service.count_reload_failure();
                error!(url = %url, error = %err, "policy bundle check stopped unexpectedly; keeping the previous revision");
                Err(FetchError::Join(err))
            }
        }
    }

    /// Polls every `poll` interval until `service` is dropped.
    pub fn spawn(mut self, service: Weak<PolicyService>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.settings.poll).await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                // Errors are logged and counted by poll.
                let _ = self.poll(&service).await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
