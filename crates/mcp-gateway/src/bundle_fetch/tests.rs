#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::RawPolicy;

fn raw(bundle: &str) -> RawPolicy {
    RawPolicy {
        bundle: PathBuf::from(bundle),
        ..RawPolicy::default()
    }
}

fn check(policy: &RawPolicy) -> (Option<FetchSettings>, Vec<String>) {
    let mut problems = Vec::new();
    let settings = validate(
        &policy.bundle_fetch(),
        Path::new("/var/lib/mcp"),
        &mut problems,
    );
    (settings, problems)
}

#[test]
fn a_local_bundle_is_no_url() {
    let (settings, problems) = check(&raw("/etc/mcp-gateway/policies.tar.gz"));
    assert_eq!(settings, None);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!is_url(Path::new("https.tar.gz")));
    assert!(is_url(Path::new("HTTPS://example.com/b.tar.gz")));
}

#[test]
fn https_urls_get_defaults_and_a_cache_in_the_data_dir() {
    let (settings, problems) = check(&raw(
        "https://bundles.example.com/prod/bundle.tar.gz?sig=abc",
    ));
    assert!(problems.is_empty(), "{problems:?}");
    let s = settings.unwrap();
    assert_eq!(s.poll, Duration::from_secs(DEFAULT_POLL_SECS));
    assert_eq!(s.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
    assert_eq!(
        s.cache,
        Path::new("/var/lib/mcp/policy-bundle/bundle.tar.gz")
    );
    assert_eq!(s.token_file, None);
    assert_eq!(s.ca_file, None);
    // Logs never show the query string, where pre-signed URLs keep secrets.
    assert_eq!(
        shown(&s.url),
        "https://bundles.example.com/prod/bundle.tar.gz"
    );
}

#[test]
fn plain_http_is_for_loopback_unless_allowed() {
    for ok in [
        "http://127.0.0.1:8181/b.tar.gz",
        "http://localhost/b.tar.gz",
        "http://[::1]:9/b.tar.gz",
    ] {
        let (settings, problems) = check(&raw(ok));
        assert!(problems.is_empty(), "{ok}: {problems:?}");
        assert!(settings.is_some(), "{ok}");
    }
    let (settings, problems) = check(&raw("http://bundles.example.com/b.tar.gz"));
    assert_eq!(settings, None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("policy.bundle_allow_http"),
        "{problems:?}"
    );
    // Through the whole config: that one problem, no "is not a file".
    let dir = tempfile::tempdir().unwrap();
    let mut whole = crate::config::RawConfig::default();
    whole.storage.data_dir = dir.path().to_owned();
    whole.sandbox.profiles_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sandbox-profiles");
    whole.policy.bundle = PathBuf::from("http://bundles.example.com/b.tar.gz");
    match whole.validate() {
        Err(crate::error::ConfigError::Invalid { problems }) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("plain http"), "{problems:?}");
        }
        other => panic!("expected one problem, got {other:?}"),
    }
    let mut allowed = raw("http://bundles.example.com/b.tar.gz");
    allowed.bundle_allow_http = true;
    let (settings, problems) = check(&allowed);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(settings.is_some());
}

#[test]
fn bad_settings_are_all_reported() {
    let mut p = raw("https://user:secret@bundles.example.com/b.tar.gz");
    p.bundle_poll_secs = 0;
    p.bundle_timeout_secs = MAX_TIMEOUT_SECS + 1;
    p.bundle_token_file = PathBuf::from("/nonexistent/token");
    p.bundle_ca_file = PathBuf::from("/nonexistent/ca.pem");
    let (settings, problems) = check(&p);
    assert_eq!(settings, None);
    let all = problems.join("\n");
    assert_eq!(problems.len(), 5, "{all}");
    assert!(all.contains("must not carry credentials"), "{all}");
    assert!(!all.contains("secret"), "the password is not echoed: {all}");
    assert!(
        all.contains("policy.bundle_poll_secs 0 is not between 1 and 86400"),
        "{all}"
    );
    assert!(all.contains("policy.bundle_timeout_secs 601"), "{all}");
    assert!(
        all.contains("policy.bundle_token_file /nonexistent/token is not a file"),
        "{all}"
    );
    assert!(
        all.contains("policy.bundle_ca_file /nonexistent/ca.pem is not a file"),
        "{all}"
    );

    let mut p = raw("https://");
    p.bundle_poll_secs = MAX_POLL_SECS + 1;
    let (settings, problems) = check(&p);
    assert_eq!(settings, None);
    assert!(!problems.is_empty());
}

fn settings_in(dir: &Path, url: &str) -> FetchSettings {
    let mut problems = Vec::new();
    let s = validate(&raw(url).bundle_fetch(), dir, &mut problems).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    s
}

#[tokio::test]
async fn the_bearer_token_is_read_trimmed_and_marked_sensitive() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  s3cr3t-token\n").unwrap();
    let mut s = settings_in(dir.path(), "http://127.0.0.1:1/b.tar.gz");
    s.token_file = Some(token.clone());
    let fetcher = BundleFetcher::new(s).unwrap();
    let value = fetcher.bearer().unwrap().unwrap();
    assert_eq!(value.to_str().unwrap(), "Bearer s3cr3t-token");
    assert!(value.is_sensitive());
    assert!(dir.path().join(CACHE_DIR).is_dir(), "the cache dir is made");

    std::fs::write(&token, "\n").unwrap();
    match fetcher.bearer() {
        Err(FetchError::BadToken { problem, .. }) => assert_eq!(problem, "is empty"),
        other => panic!("expected BadToken, got {other:?}"),
    }
    std::fs::write(&token, "a\rb").unwrap();
    assert!(matches!(fetcher.bearer(), Err(FetchError::BadToken { .. })));
    std::fs::write(&token, vec![b'a'; 20_000]).unwrap();
    assert!(matches!(fetcher.bearer(), Err(FetchError::BadToken { .. })));
}

#[tokio::test]
async fn https_needs_a_usable_ca() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let mut s = settings_in(dir.path(), "https://127.0.0.1:1/b.tar.gz");
    s.ca_file = Some(empty);
    match BundleFetcher::new(s) {
        Err(FetchError::NoRoots { what }) => assert!(what.contains("empty.pem"), "{what}"),
        other => panic!("expected NoRoots, got {other:?}"),
    }
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, ca.cert.pem()).unwrap();
    let mut s = settings_in(dir.path(), "https://127.0.0.1:1/b.tar.gz");
    s.ca_file = Some(pem);
    assert!(BundleFetcher::new(s).is_ok());
}

#[tokio::test]
async fn a_refused_connection_is_a_request_error_with_its_cause() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let fetcher = BundleFetcher::new(settings_in(
        dir.path(),
        &format!("http://127.0.0.1:{port}/b.tar.gz"),
    ))
    .unwrap();
    let err = fetcher.fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Request { .. }), "{err:?}");
    let why = reason(&err);
    assert!(
        why.starts_with(&format!(
            "cannot reach the bundle server at http://127.0.0.1:{port}/b.tar.gz: "
        )),
        "{why}"
    );
}

#[test]
#[allow(clippy::result_large_err)]
fn a_url_in_the_config_file_is_fetched_into_the_data_dir() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "gw.toml",
            "[storage]\ndata_dir = \"state\"\n\n[policy]\nbundle = \"https://bundles.example.com/prod.tar.gz\"\nbundle_poll_secs = 5\nbundle_timeout_secs = 7\n",
        )?;
        jail.set_env("MCP_GATEWAY_POLICY__BUNDLE_ALLOW_HTTP", "true");
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let overrides = crate::config::Overrides {
            profiles: Some(repo.join("sandbox-profiles")),
            ..Default::default()
        };
        let cfg = crate::config::load(Some(Path::new("gw.toml")), &overrides)
            .map_err(|e| e.to_string())?;
        let fetch = cfg.policy_bundle_fetch.expect("a URL bundle");
        assert_eq!(fetch.url, "https://bundles.example.com/prod.tar.gz");
        assert_eq!(fetch.poll, Duration::from_secs(5));
        assert_eq!(fetch.timeout, Duration::from_secs(7));
        assert_eq!(
            cfg.policies_dir,
            Path::new("state/policy-bundle/bundle.tar.gz")
        );
        Ok(())
    });
}

/// A server on 127.0.0.1:0 answering every path with `handler`.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/b.tar.gz")
}

#[tokio::test]
async fn downloads_are_capped_while_streaming_bounded_in_time_and_need_200() {
    use axum::body::Body;
    use axum::response::IntoResponse;
    use axum::routing::get;

    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = served.clone();
    let router = axum::Router::new()
        .route(
            "/b.tar.gz",
            get(|| async { ([(ETAG, "\"e1\"")], "bundle bytes").into_response() }),
        )
        .route(
            "/huge",
            get(move || {
                let counter = counter.clone();
                async move {
                    // Endless, without Content-Length: only the streaming
                    // check can stop it.
                    let chunks = futures::stream::repeat_with(move || {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20]))
                    });
                    Body::from_stream(chunks).into_response()
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .route("/cached", get(|| async { StatusCode::NOT_MODIFIED }));
    let base = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let at = |path: &str| {
        let mut s = settings_in(dir.path(), &base.replace("/b.tar.gz", path));
        s.timeout = Duration::from_millis(200);
        BundleFetcher::new(s).unwrap()
    };

    let fetcher = at("/b.tar.gz");
    match fetcher.fetch().await.unwrap() {
        Fetched::New(path, etag) => {
            assert_eq!(std::fs::read(&path).unwrap(), b"bundle bytes");
            assert_eq!(etag.unwrap(), "\"e1\"");
        }
        Fetched::Unchanged => panic!("nothing was cached yet"),
    }

    let mut huge = at("/huge");
    huge.settings.timeout = Duration::from_secs(60);
    let err = huge.fetch().await.unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { max, .. } if max == MAX_DOWNLOAD_BYTES),
        "{err:?}"
    );
    assert!(!huge.incoming().exists(), "the partial download is removed");
    let sent = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 1024, "the download stopped early, not at {sent} MiB");

    let err = at("/slow").fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");

    let err = at("/gone").fetch().await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status, .. } if status == StatusCode::NOT_FOUND),
        "{err:?}"
    );
    assert!(
        reason(&err).ends_with("answered HTTP 404 Not Found"),
        "{}",
        reason(&err)
    );

    // 304 is an answer only to a conditional request.
    let mut cached = at("/cached");
    let err = cached.fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Status { .. }), "{err:?}");
    cached.etag = Some(HeaderValue::from_static("\"e1\""));
    assert!(matches!(cached.fetch().await.unwrap(), Fetched::Unchanged));
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

#[tokio::test]
async fn https_verifies_the_server_against_the_configured_ca() {
    use hyper_util::rt::TokioIo;

    let (ca_cert, issuer) = ca("bundle test CA");
    let (other_cert, _) = ca("another CA");
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"tls bundle")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}/b.tar.gz", addr.port());
    let with_ca = |cert: &rcgen::Certificate, file: &str| {
        let pem = dir.path().join(file);
        std::fs::write(&pem, cert.pem()).unwrap();
        let mut s = settings_in(dir.path(), &url);
        s.ca_file = Some(pem);
        BundleFetcher::new(s).unwrap()
    };
    match with_ca(&ca_cert, "ca.pem").fetch().await.unwrap() {
        Fetched::New(path, _) => assert_eq!(std::fs::read(path).unwrap(), b"tls bundle"),
        Fetched::Unchanged => panic!("expected the bundle"),
    }
    let err = with_ca(&other_cert, "other.pem").fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Request { .. }), "{err:?}");
    let why = reason(&err);
    assert!(why.contains("UnknownIssuer"), "{why}");
}
