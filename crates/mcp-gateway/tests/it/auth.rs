//! Authentication against the real server: API keys, JWT (HS256 and ES256
//! from a JWKS file), mTLS, TLS certificate reload, and the loopback rule.
//! Certificates and keys are made at test time with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_client::{Client, ClientError, ConnectOptions, Credential, TlsOptions};
use mcp_gateway::auth::api_key::KeyHash;
use mcp_gateway::auth::config::{RawApiKey, RawCertRule, RawJwt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::harness::{TestGateway, cmd, code_of, repo, require_bwrap, test_config};

const KEY_A: &str = "mcpk_test_key_of_team_a_0000000000000000000000000000000000000000";
const KEY_B: &str = "mcpk_test_key_of_team_b_0000000000000000000000000000000000000000";
const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const ISS: &str = "https://issuer.test";
const AUD: &str = "mcp-gateway";

/// The shipped policies, with extra `(tenant, principal)` pairs granted
/// what the shipped data grants the anonymous principal.
fn policies_with(dir: &Path, principals: &[(&str, &str)]) -> PathBuf {
    let out = dir.join("policies");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(repo().join("policies")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
    }
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data.json")).unwrap()).unwrap();
    let template = data["tenants"]["default"].clone();
    let grant = template["principals"]["anonymous"].clone();
    for (tenant, id) in principals {
        let t = &mut data["tenants"][*tenant];
        if t.is_null() {
            *t = template.clone();
        }
        t["principals"][*id] = grant.clone();
    }
    std::fs::write(out.join("data.json"), data.to_string()).unwrap();
    out
}

fn api_key(id: &str, tenant: &str, key: &str) -> RawApiKey {
    RawApiKey {
        id: id.into(),
        tenant: tenant.into(),
        roles: vec!["runner".into()],
        hash: KeyHash::of(key).to_string(),
    }
}

fn opts(c: Option<Credential>) -> ConnectOptions {
    ConnectOptions {
        credential: c,
        tls: None,
    }
}

/// The message of an UNAUTHENTICATED answer without its request id: every
/// refusal must read the same.
fn unauthenticated<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    let (code, msg) = code_of(r);
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    msg.split(" (request id").next().unwrap().to_owned()
}

async fn rest_status(
    url: &str,
    auth: Option<(&str, String)>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some((h, v)) = auth {
        req = req.header(h, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// The tenant and principal the store recorded for a task.
async fn stored(data: &Path, tenant: &str, id: &str) -> Option<(String, String)> {
    let store = mcp_store::open_store(&format!("sqlite://{}", data.join("gateway.db").display()))
        .await
        .unwrap();
    store
        .get_task(tenant, id.parse().unwrap())
        .await
        .unwrap()
        .map(|t| (t.tenant, t.principal))
}

#[tokio::test]
async fn api_keys_authenticate_grpc_and_rest_and_carry_the_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = test_config(tmp.path());
    raw.policy.dir = policies_with(tmp.path(), &[("team-a", "ci-a"), ("team-b", "ci-b")]);
    raw.auth.api_keys = vec![
        api_key("ci-a", "team-a", KEY_A),
        api_key("ci-b", "team-b", KEY_B),
    ];
    let gw = TestGateway::start_with(raw).await;
    let ep = gw.endpoint();

    // gRPC: missing, unknown and malformed credentials read the same.
    let mut none = Client::connect(&ep).await.unwrap();
    let missing = unauthenticated(none.run(cmd("echo", &["hi"])).await);
    let mut wrong = Client::connect_with(&ep, &opts(Some(Credential::ApiKey("mcpk_nope".into()))))
        .await
        .unwrap();
    assert_eq!(
        unauthenticated(wrong.run(cmd("echo", &["hi"])).await),
        missing
    );
    assert_eq!(
        unauthenticated(wrong.status(&uuid::Uuid::now_v7().to_string()).await),
        missing
    );
    // An unknown key sent as a bearer token is refused the same way.
    let mut bearer_wrong =
        Client::connect_with(&ep, &opts(Some(Credential::Token("mcpk_nope".into()))))
            .await
            .unwrap();
    assert_eq!(
        unauthenticated(bearer_wrong.run(cmd("echo", &["hi"])).await),
        missing
    );

    // A good key runs, and the task belongs to the key's tenant and id.
    let mut a = Client::connect_with(&ep, &opts(Some(Credential::ApiKey(KEY_A.into()))))
        .await
        .unwrap();
    let done = a.run(cmd("echo", &["from-a"])).await.unwrap();
    let id = done.task_info.unwrap().task_id;
    assert_eq!(
        stored(&gw.data, "team-a", &id).await,
        Some(("team-a".to_owned(), "ci-a".to_owned()))
    );
    // The same key as `authorization: Bearer` works too.
    let mut a_bearer = Client::connect_with(&ep, &opts(Some(Credential::Token(KEY_A.into()))))
        .await
        .unwrap();
    a_bearer.status(&id).await.unwrap();
    // Tenant B cannot see tenant A's task.
    let mut b = Client::connect_with(&ep, &opts(Some(Credential::ApiKey(KEY_B.into()))))
        .await
        .unwrap();
    assert_eq!(code_of(b.status(&id).await).0, tonic::Code::NotFound);

    // REST: 401 with WWW-Authenticate and the one error shape.
    let url = format!("{ep}/v1/tasks/{id}");
    for auth in [
        None,
        Some(("x-api-key", "mcpk_nope".to_owned())),
        Some(("authorization", "Basic Zm9vOmJhcg==".to_owned())),
    ] {
        let (status, headers, body) = rest_status(&url, auth.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"mcp-gateway\"");
        assert_eq!(body["error"]["code"], 1001);
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        assert!(
            missing.starts_with(body["error"]["message"].as_str().unwrap()),
            "{body}"
        );
    }
    let (status, _, body) = rest_status(&url, Some(("x-api-key", KEY_A.to_owned()))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) =
        rest_status(&url, Some(("authorization", format!("Bearer {KEY_A}")))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = rest_status(&url, Some(("x-api-key", KEY_B.to_owned()))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Probes and scrapes need no credentials; the refusals are counted.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let resp = reqwest::get(format!("{ep}{path}")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(ep.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let metrics = reqwest::get(format!("{ep}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcp_api_requests_total")
                && l.contains("api=\"grpc\"")
                && l.contains("status=\"UNAUTHENTICATED\"")),
        "{metrics}"
    );

    // The CLI sends the key from --api-key or MCP_GATEWAY_API_KEY (a child
    // process, awaited without blocking the runtime that serves it).
    let exec = async |args: &[&str], env: &[(&str, &str)]| {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
            .arg("exec")
            .args(["--endpoint", &ep])
            .args(args)
            .args(["--", "echo", "via-cli"])
            .env_remove("MCP_GATEWAY_API_KEY")
            .env_remove("MCP_GATEWAY_TOKEN")
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = exec(&["--api-key", KEY_A], &[]).await;
    assert_eq!((code, stdout.trim()), (Some(0), "via-cli"));
    let (code, stdout, _) = exec(&[], &[("MCP_GATEWAY_API_KEY", KEY_B)]).await;
    assert_eq!((code, stdout.trim()), (Some(0), "via-cli"));
    let (code, _, stderr) = exec(&[], &[]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("authentication required"), "{stderr}");
    gw.stop().await;
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims() -> Value {
    json!({"sub": "alice", "tenant": "team-a", "roles": ["runner"], "iss": ISS, "aud": AUD, "exp": now() + 600})
}

fn with(k: &str, v: Value) -> Value {
    let mut c = claims();
    c[k] = v;
    c
}

#[tokio::test]
async fn jwt_hs256_and_es256_tokens_are_checked_over_grpc_and_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let secret_file = tmp.path().join("jwt.secret");
    std::fs::write(&secret_file, format!("{HS_SECRET}\n")).unwrap();
    let es = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = es.public_key_raw();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let (rsa_der, rsa_modulus) = rsa_key(tmp.path());
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }, {
        "kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&rsa_modulus), "e": "AQAB",
    }]});
    let jwks_file = tmp.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();

    let mut raw = test_config(tmp.path());
    raw.policy.dir = policies_with(tmp.path(), &[("team-a", "alice")]);
    raw.auth.jwt = Some(RawJwt {
        issuer: ISS.into(),
        audience: AUD.into(),
        hs256_secret_file: secret_file,
        jwks_file,
        leeway_secs: 5,
        ..RawJwt::default()
    });
    let gw = TestGateway::start_with(raw).await;
    let ep = gw.endpoint();

    let hs = |c: &Value, secret: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let es_key = EncodingKey::from_ec_der(&es.serialize_der());
    let es_tok = |c: &Value, kid: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, c, &es_key).unwrap()
    };
    let other_es = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged_es = {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_ec_der(&other_es.serialize_der()),
        )
        .unwrap()
    };

    let rs_tok = |c: &Value| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("r1".into());
        jsonwebtoken::encode(&h, c, &EncodingKey::from_rsa_der(&rsa_der)).unwrap()
    };
    let good = [
        ("hs256", hs(&claims(), HS_SECRET)),
        ("es256", es_tok(&claims(), "k1")),
        ("rs256", rs_tok(&claims())),
    ];
    let bad = [
        ("expired", hs(&with("exp", json!(now() - 600)), HS_SECRET)),
        (
            "expired es256",
            es_tok(&with("exp", json!(now() - 600)), "k1"),
        ),
        (
            "not yet valid",
            hs(&with("nbf", json!(now() + 600)), HS_SECRET),
        ),
        (
            "wrong audience",
            hs(&with("aud", json!("someone-else")), HS_SECRET),
        ),
        (
            "wrong issuer",
            hs(&with("iss", json!("https://evil.test")), HS_SECRET),
        ),
        (
            "wrong signature",
            hs(&claims(), "a-different-secret-of-32-bytes-or-more"),
        ),
        ("wrong signature es256", forged_es),
        ("unknown kid", es_tok(&claims(), "k2")),
        (
            "wrong audience rs256",
            rs_tok(&with("aud", json!("someone-else"))),
        ),
        (
            "no tenant claim",
            hs(&with("tenant", Value::Null), HS_SECRET),
        ),
    ];

    let mut none = Client::connect(&ep).await.unwrap();
    let missing = unauthenticated(none.run(cmd("echo", &["x"])).await);
    for (what, token) in &bad {
        let mut c = Client::connect_with(&ep, &opts(Some(Credential::Token(token.clone()))))
            .await
            .unwrap();
        assert_eq!(
            unauthenticated(c.run(cmd("echo", &["x"])).await),
            missing,
            "{what}"
        );
        let (status, headers, body) = rest_status(
            &format!("{ep}/v1/tasks"),
            Some(("authorization", format!("Bearer {token}"))),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert!(headers.contains_key("www-authenticate"), "{what}");
    }
    for (what, token) in &good {
        let mut c = Client::connect_with(&ep, &opts(Some(Credential::Token(token.clone()))))
            .await
            .unwrap();
        let done = c
            .run(cmd("echo", &["jwt"]))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let id = done.task_info.unwrap().task_id;
        assert_eq!(
            stored(&gw.data, "team-a", &id).await,
            Some(("team-a".to_owned(), "alice".to_owned())),
            "{what}"
        );
        let (status, _, body) = rest_status(
            &format!("{ep}/v1/tasks/{id}"),
            Some(("authorization", format!("Bearer {token}"))),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
    }
    gw.stop().await;
}

/// A fresh RSA key made by openssl (ring cannot generate RSA keys): its
/// PKCS#1 DER and its modulus.
fn rsa_key(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let pem = dir.join("rsa.pem");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("the RS256 test makes its key with openssl: apt-get install openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let pem_s = pem.to_str().unwrap();
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        pem_s,
    ]);
    let der = run(&["rsa", "-in", pem_s, "-traditional", "-outform", "DER"]);
    let modulus = String::from_utf8(run(&["rsa", "-in", pem_s, "-noout", "-modulus"])).unwrap();
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    (der, hex::decode(hex).unwrap())
}

/// A CA and the leaf certificates it signs, as PEM files in a directory.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Self {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Writes `<file>.crt` and `<file>.key`; returns their paths.
    fn leaf(&self, file: &str, cn: &str, sans: Vec<SanType>) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        // Written beside and renamed, as a deployment tool replaces them.
        std::fs::write(self.dir.join(".tmp.crt"), cert.pem()).unwrap();
        std::fs::write(self.dir.join(".tmp.key"), key.serialize_pem()).unwrap();
        std::fs::rename(self.dir.join(".tmp.key"), &k).unwrap();
        std::fs::rename(self.dir.join(".tmp.crt"), &c).unwrap();
        (c, k)
    }
}

fn server_sans() -> Vec<SanType> {
    vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ]
}

/// A gateway serving TLS (the harness' client speaks cleartext, so this
/// one is served without one).
type TlsGateway = crate::harness::Server;

fn tls_opts(
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    credential: Option<Credential>,
) -> ConnectOptions {
    ConnectOptions {
        credential,
        tls: Some(TlsOptions {
            ca: Some(ca.to_path_buf()),
            cert: client.map(|c| c.0.clone()),
            key: client.map(|c| c.1.clone()),
            domain: Some("localhost".into()),
        }),
    }
}

/// A raw TLS connection: the server's leaf certificate and the status of
/// `GET path` over HTTP/1.1.
async fn tls_get(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    path: &str,
) -> Result<(Vec<u8>, u16), String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // TLS 1.3 reports a refused client certificate only on the first read.
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    Ok((leaf, status))
}

#[tokio::test]
async fn mtls_client_certificates_map_to_principals() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "ca");
    let rogue = Pki::new(tmp.path(), "rogue-ca");
    let server = pki.leaf("server", "localhost", server_sans());
    let spiffe = "spiffe://test.example/ns/ci/sa/builder";
    let client = pki.leaf(
        "client",
        "builder",
        vec![SanType::URI(spiffe.try_into().unwrap())],
    );
    let unmapped = pki.leaf(
        "unmapped",
        "stranger",
        vec![SanType::URI(
            "spiffe://test.example/ns/other/sa/x".try_into().unwrap(),
        )],
    );
    let rogue_client = rogue.leaf(
        "rogue",
        "builder",
        vec![SanType::URI(spiffe.try_into().unwrap())],
    );

    let mut raw = test_config(tmp.path());
    raw.policy.dir = policies_with(tmp.path(), &[("ci", spiffe), ("team-a", "ci-a")]);
    raw.tls.cert = server.0.clone();
    raw.tls.key = server.1.clone();
    raw.tls.client_ca = pki.ca("ca");
    raw.auth.mtls = vec![RawCertRule {
        san_uri: "spiffe://test.example/ns/ci/*".into(),
        tenant: "ci".into(),
        roles: vec!["runner".into()],
        ..RawCertRule::default()
    }];
    raw.auth.api_keys = vec![api_key("ci-a", "team-a", KEY_A)];
    let gw = TlsGateway::start(raw).await;
    let ep = format!("https://127.0.0.1:{}", gw.addr.port());
    let ca = pki.ca("ca");

    // A good certificate: the task is the certificate's principal's.
    let mut good = Client::connect_with(&ep, &tls_opts(&ca, Some(&client), None))
        .await
        .unwrap();
    let done = good.run(cmd("echo", &["mtls"])).await.unwrap();
    let id = done.task_info.unwrap().task_id;
    assert_eq!(
        stored(&gw.data, "ci", &id).await,
        Some(("ci".to_owned(), spiffe.to_owned()))
    );
    // Another tenant's key on the same TLS listener cannot see it.
    let mut key_a = Client::connect_with(
        &ep,
        &tls_opts(&ca, None, Some(Credential::ApiKey(KEY_A.into()))),
    )
    .await
    .unwrap();
    assert_eq!(code_of(key_a.status(&id).await).0, tonic::Code::NotFound);
    // A presented key decides even on a connection with a good certificate.
    let mut cert_and_bad_key = Client::connect_with(
        &ep,
        &tls_opts(
            &ca,
            Some(&client),
            Some(Credential::ApiKey("mcpk_nope".into())),
        ),
    )
    .await
    .unwrap();
    unauthenticated(cert_and_bad_key.status(&id).await);

    // No certificate: TLS works, the call does not.
    let mut no_cert = Client::connect_with(&ep, &tls_opts(&ca, None, None))
        .await
        .unwrap();
    unauthenticated(no_cert.status(&id).await);
    // A certificate that no rule maps.
    let mut stranger = Client::connect_with(&ep, &tls_opts(&ca, Some(&unmapped), None))
        .await
        .unwrap();
    unauthenticated(stranger.status(&id).await);
    // A certificate from an unknown CA fails the handshake.
    let rogue_call = async {
        let mut c = Client::connect_with(&ep, &tls_opts(&ca, Some(&rogue_client), None)).await?;
        c.status(&id).await
    }
    .await;
    assert!(rogue_call.is_err(), "{rogue_call:?}");
    // Cleartext on the TLS port gets nowhere.
    let cleartext = async {
        let mut c = Client::connect(&format!("http://127.0.0.1:{}", gw.addr.port())).await?;
        c.status(&id).await
    }
    .await;
    assert!(cleartext.is_err(), "{cleartext:?}");

    // REST over the same listener.
    let path = format!("/v1/tasks/{id}");
    assert_eq!(
        tls_get(gw.addr, &ca, Some(&client), &path).await.unwrap().1,
        200
    );
    assert_eq!(tls_get(gw.addr, &ca, None, &path).await.unwrap().1, 401);
    assert_eq!(
        tls_get(gw.addr, &ca, Some(&unmapped), &path)
            .await
            .unwrap()
            .1,
        401
    );
    assert_eq!(tls_get(gw.addr, &ca, None, "/ready").await.unwrap().1, 200);
    assert!(
        tls_get(gw.addr, &ca, Some(&rogue_client), &path)
            .await
            .is_err()
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_tls_certificate_is_reloaded_when_its_files_change() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "ca");
    let (cert, key) = pki.leaf("server", "first", server_sans());
    let mut raw = test_config(tmp.path());
    raw.tls.cert = cert.clone();
    raw.tls.key = key.clone();
    raw.auth.api_keys = vec![api_key("ci-a", "team-a", KEY_A)];
    let gw = TlsGateway::start(raw).await;
    let ca = pki.ca("ca");
    let cn = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        c.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (first, status) = tls_get(gw.addr, &ca, None, "/health").await.unwrap();
    assert_eq!((cn(&first).as_str(), status), ("first", 200));

    // A broken key is refused; the old certificate keeps serving.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        cn(&tls_get(gw.addr, &ca, None, "/health").await.unwrap().0),
        "first"
    );

    pki.leaf("server", "second", server_sans());
    let mut served = String::new();
    for _ in 0..100 {
        served = cn(&tls_get(gw.addr, &ca, None, "/health").await.unwrap().0);
        if served == "second" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, "second", "the new certificate is served");
    // gRPC over the reloaded certificate still works.
    let ep = format!("https://127.0.0.1:{}", gw.addr.port());
    let mut c = Client::connect_with(
        &ep,
        &tls_opts(&ca, None, Some(Credential::ApiKey(KEY_A.into()))),
    )
    .await
    .unwrap();
    assert_eq!(
        code_of(c.status(&uuid::Uuid::now_v7().to_string()).await).0,
        tonic::Code::NotFound
    );
    gw.stop().await;
}

fn serve_cmd(data: &Path, listen: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"));
    c.arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data)
        .arg("--policies")
        .arg(repo().join("policies"))
        .arg("--profiles")
        .arg(repo().join("sandbox-profiles"))
        .env_remove("MCP_GATEWAY_CONFIG")
        .env_remove("RUST_LOG")
        .env("MCP_GATEWAY_SERVER__REPLICA_ID", "test")
        .env("MCP_GATEWAY_SERVER__SHUTDOWN_GRACE_SECS", "0")
        .env("MCP_GATEWAY_LOG__FORMAT", "json");
    c
}

#[tokio::test]
async fn a_non_loopback_listener_without_auth_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = serve_cmd(tmp.path(), "0.0.0.0:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "server.listen 0.0.0.0:0 is not a loopback address and no authentication is configured"
        ),
        "{err}"
    );
    assert!(err.contains("insecure_no_auth"), "{err}");
    // With a key configured the same address is accepted (offline check).
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"0.0.0.0:8081\"\n[[auth.api_keys]]\nid = \"ci\"\ntenant = \"default\"\nhash = \"{}\"\n",
            KeyHash::of(KEY_A)
        ),
    )
    .unwrap();
    let out = crate::cli::check_config(Some(&config), &repo().join("policies"))
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("authentication api keys (1)"), "{stdout}");
    // A malformed hash is named.
    std::fs::write(
        &config,
        "[[auth.api_keys]]\nid = \"ci\"\ntenant = \"default\"\nhash = \"plaintext\"\n",
    )
    .unwrap();
    let out = crate::cli::check_config(Some(&config), &repo().join("policies"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("auth.api_keys[0].hash must look like sha256:")
    );
}

#[tokio::test]
async fn insecure_no_auth_serves_and_warns_at_start_and_on_ready() {
    use std::io::{BufRead, BufReader};
    require_bwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = serve_cmd(tmp.path(), &format!("0.0.0.0:{port}"))
        .env("MCP_GATEWAY_SERVER__INSECURE_NO_AUTH", "true")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut tx = Some(tx);
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let serving = l.contains("\"serving\"");
            lines.push(l);
            if serving && let Some(tx) = tx.take() {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("the gateway did not start")
        .unwrap();
    let warned = lines
        .iter()
        .any(|l| l.contains("WITHOUT AUTHENTICATION") && l.contains("\"WARN\""));
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/ready"))
        .await
        .unwrap();
    let warning = resp
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status();
    // Anyone may run commands: that is what the flag says.
    let mut c = Client::connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let ran = c.run(cmd("echo", &["open"])).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(warned, "{lines:#?}");
    assert_eq!(status, StatusCode::OK);
    assert!(
        warning
            .unwrap_or_default()
            .contains("without authentication")
    );
    assert!(ran.is_ok(), "{ran:?}");
}

#[test]
fn auth_new_key_and_hash_key_agree() {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["auth", "new-key"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (key, hash) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(key.starts_with("mcpk_"), "{key}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["auth", "hash-key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hash);
    assert_eq!(hash, KeyHash::of(key).to_string());
}
