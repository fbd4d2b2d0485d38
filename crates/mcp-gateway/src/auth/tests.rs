use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{EncodingKey, Header};
use mcp_core::AuthMethod;
use secrecy::SecretBox;
use serde_json::json;

use super::api_key::{ApiKeyEntry, KeyHash, find, new_key};
use super::config::AuthSettings;
use super::jwt::{JwtFailure, JwtSettings, JwtVerifier};
use super::mtls::{CertRule, ClientCert, NameKind};
use super::{Authenticator, Failure};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn entry(id: &str, key: &str) -> ApiKeyEntry {
    ApiKeyEntry {
        id: id.into(),
        tenant: format!("t-{id}"),
        roles: vec!["runner".into()],
        hash: KeyHash::of(key),
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(
        JwtSettings {
            issuer: "https://issuer.test".into(),
            audience: "mcp".into(),
            leeway: Duration::from_secs(5),
            id_claim: "sub".into(),
            tenant_claim: "org".into(),
            roles_claim: "scope".into(),
        },
        Some(SecretBox::new(SECRET.into())),
        None,
    )
    .unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn token(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn good_claims() -> serde_json::Value {
    json!({"sub": "alice", "org": "acme", "scope": "run read", "iss": "https://issuer.test", "aud": "mcp", "exp": now() + 600})
}

#[test]
fn key_hashes_parse_print_and_compare() {
    let key = new_key().unwrap();
    assert!(key.starts_with("mcpk_") && key.len() == 5 + 64, "{key}");
    let h = KeyHash::of(&key);
    let printed = h.to_string();
    assert!(printed.starts_with("sha256:"));
    assert_eq!(KeyHash::parse(&printed).unwrap(), h);
    assert!(KeyHash::parse("md5:00").is_err());
    assert!(KeyHash::parse("sha256:abcd").is_err());
    assert_ne!(new_key().unwrap(), key, "two keys are different");
}

#[test]
fn find_picks_the_entry_of_the_presented_key_only() {
    let entries = vec![entry("a", "key-a"), entry("b", "key-b")];
    assert_eq!(find(&entries, "key-b").unwrap().id, "b");
    assert!(find(&entries, "key-c").is_none());
    assert!(find(&entries, "").is_none());
}

#[test]
fn jwt_maps_claims_and_refuses_each_broken_rule() {
    let v = verifier();
    let p = v.verify(&token(good_claims(), SECRET)).unwrap();
    assert_eq!((p.id.as_str(), p.tenant.as_str()), ("alice", "acme"));
    assert_eq!(p.roles, vec!["run", "read"]);
    assert_eq!(p.auth, AuthMethod::Jwt);

    let with = |k: &str, val: serde_json::Value| {
        let mut c = good_claims();
        c[k] = val;
        c
    };
    let cases = [
        (
            token(good_claims(), b"another-secret-another-secret-xx"),
            JwtFailure::Signature,
        ),
        (
            token(with("exp", json!(now() - 600)), SECRET),
            JwtFailure::Expired,
        ),
        (
            token(with("nbf", json!(now() + 600)), SECRET),
            JwtFailure::NotYetValid,
        ),
        (
            token(with("iss", json!("https://evil.test")), SECRET),
            JwtFailure::Issuer,
        ),
        (
            token(with("aud", json!("other")), SECRET),
            JwtFailure::Audience,
        ),
        (
            token(with("org", json!(null)), SECRET),
            JwtFailure::MissingClaim("org".into()),
        ),
        ("not.a.jwt".to_owned(), JwtFailure::Malformed),
    ];
    for (t, want) in cases {
        assert_eq!(v.verify(&t).unwrap_err(), want);
    }
    // Within the leeway an expired token still passes.
    assert!(
        v.verify(&token(with("exp", json!(now() - 2)), SECRET))
            .is_ok()
    );
    // A token may not pick an algorithm without a configured key.
    let es = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS384),
        &good_claims(),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert!(matches!(v.verify(&es), Err(JwtFailure::Algorithm(_))));
}

#[test]
fn cert_rules_match_exact_and_prefix_names_first_rule_wins() {
    let rules = vec![
        CertRule {
            kind: NameKind::SanUri,
            pattern: "spiffe://example.org/ns/ci/*".into(),
            id: None,
            tenant: "ci".into(),
            roles: vec![],
        },
        CertRule {
            kind: NameKind::Cn,
            pattern: "ops-bot".into(),
            id: Some("ops".into()),
            tenant: "ops".into(),
            roles: vec!["admin".into()],
        },
    ];
    let spiffe = ClientCert {
        cn: Some("ops-bot".into()),
        dns: vec![],
        uris: vec!["spiffe://example.org/ns/ci/sa/builder".into()],
    };
    let p = spiffe.principal(&rules).unwrap();
    assert_eq!(p.id, "spiffe://example.org/ns/ci/sa/builder");
    assert_eq!(p.tenant, "ci");
    let cn = ClientCert {
        cn: Some("ops-bot".into()),
        ..ClientCert::default()
    };
    assert_eq!(cn.principal(&rules).unwrap().id, "ops");
    let other = ClientCert {
        cn: Some("ops-bot-2".into()),
        ..ClientCert::default()
    };
    assert!(other.principal(&rules).is_none());
}

#[test]
fn authenticator_reads_both_headers_and_refuses_bad_ones() {
    let auth = Authenticator::new(Arc::new(AuthSettings {
        api_keys: vec![entry("a", "key-a")],
        jwt: Some(verifier()),
        ..AuthSettings::default()
    }));
    let h = |name: &'static str, v: &str| {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    };
    let ok = |m: HeaderMap| auth.authenticate(&m, None).0;
    assert_eq!(ok(h("x-api-key", "key-a")).unwrap().id, "a");
    assert_eq!(ok(h("authorization", "Bearer key-a")).unwrap().id, "a");
    assert_eq!(
        ok(h("authorization", "bearer key-a")).unwrap().auth,
        AuthMethod::ApiKey
    );
    let jwt = format!("Bearer {}", token(good_claims(), SECRET));
    assert_eq!(ok(h("authorization", &jwt)).unwrap().id, "alice");
    assert_eq!(ok(HeaderMap::new()).unwrap_err(), Failure::Missing);
    assert_eq!(
        ok(h("x-api-key", "key-b")).unwrap_err(),
        Failure::UnknownKey
    );
    assert_eq!(
        ok(h("authorization", "Basic a2V5LWE=")).unwrap_err(),
        Failure::BadHeader
    );
    // No method configured: everyone is the anonymous principal.
    let open = Authenticator::new(Arc::new(AuthSettings::default()));
    assert_eq!(
        open.authenticate(&HeaderMap::new(), None).0.unwrap().auth,
        AuthMethod::None
    );
}

#[test]
fn config_validation_names_every_problem() {
    use super::config::{RawAuth, RawCertRule, RawJwt, RawTls, validate};
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "too-short\n").unwrap();
    let auth = RawAuth {
        api_keys: vec![
            super::config::RawApiKey {
                id: "a".into(),
                tenant: "t".into(),
                roles: vec![],
                hash: KeyHash::of("k").to_string(),
            },
            super::config::RawApiKey {
                id: "a".into(),
                tenant: String::new(),
                roles: vec![],
                hash: "sha256:xyz".into(),
            },
        ],
        jwt: Some(RawJwt {
            issuer: "https://i".into(),
            audience: "a".into(),
            hs256_secret_file: short,
            ..RawJwt::default()
        }),
        mtls: vec![RawCertRule {
            cn: "x".into(),
            san_dns: "y".into(),
            tenant: "t".into(),
            ..RawCertRule::default()
        }],
    };
    let tls = RawTls {
        cert: dir.path().join("missing.crt"),
        ..RawTls::default()
    };
    let mut problems = Vec::new();
    validate(&auth, &tls, "0.0.0.0:1".parse().ok(), false, &mut problems);
    let all = problems.join("\n");
    for want in [
        "auth.api_keys[1].id \"a\" is used twice",
        "auth.api_keys[1].tenant must not be empty",
        "auth.api_keys[1].hash must have 64 hex digits",
        "HS256 secret is 9 bytes; it must be at least 32",
        "auth.mtls[0] must set exactly one of san_uri, san_dns, cn",
        "tls.cert and tls.key go together",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // Keys are configured, so the non-loopback address itself is fine.
    assert!(!all.contains("not a loopback address"), "{all}");

    // Nothing configured: loopback is fine, another address is refused
    // unless acknowledged, and then it is marked insecure.
    let mut p = Vec::new();
    let (s, _) = validate(
        &RawAuth::default(),
        &RawTls::default(),
        "127.0.0.1:1".parse().ok(),
        false,
        &mut p,
    );
    assert!(p.is_empty() && !s.insecure, "{p:?}");
    let (_, _) = validate(
        &RawAuth::default(),
        &RawTls::default(),
        "0.0.0.0:1".parse().ok(),
        false,
        &mut p,
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("insecure_no_auth"), "{p:?}");
    let mut p = Vec::new();
    let (s, _) = validate(
        &RawAuth::default(),
        &RawTls::default(),
        "0.0.0.0:1".parse().ok(),
        true,
        &mut p,
    );
    assert!(p.is_empty() && s.insecure, "{p:?}");
}
