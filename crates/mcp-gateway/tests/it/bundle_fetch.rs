//! Policy bundles from a URL: a real HTTP server on 127.0.0.1:0 serves
//! signed bundles built from the shipped policies; the gateway downloads,
//! verifies and polls them, keeps the last good revision through every
//! kind of failure and falls back to its cached copy only at start-up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mcp_gateway::config::Config;
use mcp_gateway::error::StartError;
use mcp_gateway::server;
use mcp_policy::PolicyService;

use crate::harness::{global_telemetry, repo, require_bwrap, test_config};

/// Signed bundles of the shipped policies, built once per test run.
struct Bundles {
    dir: PathBuf,
    v1: Vec<u8>,
    v2: Vec<u8>,
    /// v3, signed with a key the gateway does not trust.
    forged: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("these tests sign bundles with openssl: install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bundles() -> &'static Bundles {
    static BUNDLES: OnceLock<Bundles> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bundle-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        for name in ["trusted", "other"] {
            let key = dir.join(format!("{name}.key"));
            openssl(&["genpkey", "-algorithm", "ed25519", "-out", &s(&key)]);
            openssl(&[
                "pkey",
                "-in",
                &s(&key),
                "-pubout",
                "-out",
                &s(&dir.join(format!("{name}.pub"))),
            ]);
        }
        let build = |revision: &str, key: &str| {
            let out = dir.join(format!("{revision}.tar.gz"));
            let key = mcp_policy::read_signing_key(&dir.join(format!("{key}.key"))).unwrap();
            mcp_policy::build_bundle(&repo().join("policies"), &out, revision, Some(&key)).unwrap();
            std::fs::read(out).unwrap()
        };
        Bundles {
            v1: build("v1", "trusted"),
            v2: build("v2", "trusted"),
            forged: build("v3", "other"),
            dir,
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The body with its ETag; `304` when `If-None-Match` matches it.
    Serve,
    /// `500 Internal Server Error`.
    Fail,
    /// An endless stream of zeros without a `Content-Length`.
    Huge,
}

#[derive(Debug)]
struct Served {
    mode: Mode,
    body: Vec<u8>,
    etag: String,
    /// Requests answered since the mode or body last changed.
    answered: usize,
    not_modified: usize,
    authorization: Vec<String>,
}

type Shared = Arc<Mutex<Served>>;

async fn bundle(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = s.lock().unwrap();
    s.answered += 1;
    if let Some(a) = headers.get(AUTHORIZATION) {
        let a = a.to_str().unwrap().to_owned();
        s.authorization.push(a);
    }
    match s.mode {
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response(),
        Mode::Huge => {
            // 65 MiB, one MiB at a time, more than the 64 MiB cap.
            let chunks = (0..65).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20])));
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        Mode::Serve => {
            if headers
                .get(IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == s.etag.as_bytes())
            {
                s.not_modified += 1;
                return StatusCode::NOT_MODIFIED.into_response();
            }
            ([(ETAG, s.etag.clone())], s.body.clone()).into_response()
        }
    }
}

/// The bundle server, on 127.0.0.1:0.
struct BundleServer {
    url: String,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl BundleServer {
    async fn start(body: &[u8], etag: &str) -> Self {
        let state = Arc::new(Mutex::new(Served {
            mode: Mode::Serve,
            body: body.to_vec(),
            etag: etag.to_owned(),
            answered: 0,
            not_modified: 0,
            authorization: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/bundles/prod.tar.gz", axum::routing::get(bundle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            url: format!("http://{addr}/bundles/prod.tar.gz"),
            state,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    fn set(&self, mode: Mode, body: &[u8], etag: &str) {
        let mut s = self.state.lock().unwrap();
        s.mode = mode;
        s.body = body.to_vec();
        s.etag = etag.to_owned();
        s.answered = 0;
        s.not_modified = 0;
    }

    /// Waits until `enough` says the server has seen enough requests.
    async fn wait(&self, what: &str, enough: impl Fn(&Served) -> bool) {
        for _ in 0..3000 {
            if enough(&self.state.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the bundle server never saw {what}");
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

/// A validated config fetching `url` with the trusted key, a bearer token
/// and polls every 20 ms.
fn config(data: &Path, url: &str) -> Config {
    std::fs::create_dir_all(data).unwrap();
    let token = data.join("bundle-token");
    std::fs::write(&token, "bundle-reader-token\n").unwrap();
    let mut raw = test_config(data);
    raw.policy.bundle = PathBuf::from(url);
    raw.policy.bundle_public_key = bundles().dir.join("trusted.pub");
    raw.policy.bundle_token_file = token;
    let mut cfg = raw.validate().unwrap();
    let fetch = cfg.policy_bundle_fetch.as_mut().expect("a URL bundle");
    fetch.poll = Duration::from_millis(20);
    cfg
}

async fn wait_revision(svc: &PolicyService, prefix: &str) -> String {
    for _ in 0..3000 {
        let rev = svc.revision();
        if rev.starts_with(prefix) {
            return rev;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the revision never became {prefix}…: {}", svc.revision());
}

#[tokio::test]
async fn a_bundle_url_is_polled_and_every_failure_keeps_the_last_good_revision() {
    global_telemetry();
    require_bwrap();
    let b = bundles();
    let srv = BundleServer::start(&b.v1, "\"v1\"").await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &srv.url);
    let cache = tmp.path().join("policy-bundle/bundle.tar.gz");
    assert_eq!(cfg.policies_dir, cache);

    let gw = server::build(&cfg).await.unwrap();
    let svc = gw.policy_service();
    let v1 = svc.revision();
    assert!(v1.starts_with("v1+"), "{v1}");
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        b.v1,
        "the good bundle is cached"
    );
    assert_eq!(
        srv.state
            .lock()
            .unwrap()
            .authorization
            .first()
            .map(String::as_str),
        Some("Bearer bundle-reader-token")
    );

    // Unchanged: 304 on If-None-Match keeps the revision, nothing fails.
    srv.wait("two 304s", |s| s.not_modified >= 2).await;
    assert_eq!(svc.revision(), v1);
    assert_eq!(svc.stats().reload_failures, 0);

    // A new bundle is picked up on the next poll, and cached.
    srv.set(Mode::Serve, &b.v2, "\"v2\"");
    let v2 = wait_revision(&svc, "v2+").await;
    assert_ne!(v2, v1);
    assert_eq!(gw.policy_revision(), v2);
    srv.wait("a 304 for v2", |s| s.not_modified >= 1).await;
    assert_eq!(std::fs::read(&cache).unwrap(), b.v2);
    let failures = svc.stats().reload_failures;
    assert_eq!(failures, 0);

    // Each failure keeps v2 serving and is counted. Polls run one after
    // another: once the server has answered twice, the first answer has
    // been handled.
    let mut before = failures;
    for (mode, body, what) in [
        (Mode::Fail, &b.v2, "HTTP 500"),
        (Mode::Huge, &b.v2, "an oversized body"),
        (Mode::Serve, &b.forged, "a bundle signed with another key"),
    ] {
        srv.set(mode, body, "\"v3\"");
        srv.wait(what, |s| s.answered >= 2).await;
        let now = svc.stats().reload_failures;
        assert!(now > before, "{what}: failures {before} -> {now}");
        assert_eq!(svc.revision(), v2, "{what}");
        assert_eq!(
            std::fs::read(&cache).unwrap(),
            b.v2,
            "{what}: the cache keeps v2"
        );
        before = now;
    }
    // The failures reach the metrics.
    let text = gw.metrics_text().unwrap();
    assert!(
        text.lines().any(|l| l
            .strip_prefix("mcp_policy_reloads_total{outcome=\"failed\"} ")
            .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n >= before))),
        "{text}"
    );

    // Fixed on the server: the next poll brings it in.
    srv.set(Mode::Serve, &b.v1, "\"v1-again\"");
    assert_eq!(wait_revision(&svc, "v1+").await, v1);
    drop(gw);
    srv.stop().await;
}

#[tokio::test]
async fn start_up_with_the_server_down_needs_a_cached_bundle() {
    global_telemetry();
    require_bwrap();
    let b = bundles();
    let tmp = tempfile::tempdir().unwrap();

    // Nothing listens there, nothing is cached: the gateway refuses.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = format!("http://127.0.0.1:{port}/bundles/prod.tar.gz");
    let fresh = tmp.path().join("fresh");
    match server::build(&config(&fresh, &down)).await {
        Err(StartError::BundleFetch(e)) => {
            let why = mcp_gateway::bundle_fetch::reason(&e);
            assert!(why.contains("cannot reach the bundle server"), "{why}");
        }
        Err(other) => panic!("expected a bundle fetch error, got {other}"),
        Ok(_) => panic!("the gateway started without any policy"),
    }

    // A forged bundle at start is refused just the same.
    let srv = BundleServer::start(&b.forged, "\"v3\"").await;
    match server::build(&config(&fresh, &srv.url)).await {
        Err(StartError::BundleFetch(e)) => {
            let why = mcp_gateway::bundle_fetch::reason(&e);
            assert!(why.contains("signature check failed"), "{why}");
        }
        Err(other) => panic!("expected a bundle fetch error, got {other}"),
        Ok(_) => panic!("the gateway started on a forged bundle"),
    }
    assert!(!fresh.join("policy-bundle/bundle.tar.gz").exists());

    // One good start caches v1; with the server gone the next start
    // serves the cached copy.
    let data = tmp.path().join("cached");
    srv.set(Mode::Serve, &b.v1, "\"v1\"");
    let gw = server::build(&config(&data, &srv.url)).await.unwrap();
    let v1 = gw.policy_revision();
    assert!(v1.starts_with("v1+"), "{v1}");
    drop(gw);
    let url = srv.url.clone();
    srv.stop().await;

    let gw = server::build(&config(&data, &url)).await.unwrap();
    let svc = gw.policy_service();
    assert_eq!(svc.revision(), v1, "started from the cache");
    // Polling goes on and counts the server's absence.
    for _ in 0..3000 {
        if svc.stats().reload_failures > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(svc.stats().reload_failures > 0);
    assert_eq!(svc.revision(), v1);
}
