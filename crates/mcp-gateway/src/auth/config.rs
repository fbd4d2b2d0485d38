//! The `[auth]` and `[tls]` sections: raw serde structs and their
//! validation into [`AuthSettings`] and [`TlsSettings`]. Secrets (the HS256
//! key) and key sets (JWKS) are read here, at start-up, so a gateway that
//! starts can verify every credential it was told to accept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretBox;
use serde::{Deserialize, Serialize};

use super::api_key::{ApiKeyEntry, KeyHash};
use super::jwt::{JwtSettings, JwtVerifier};
use super::mtls::{CertRule, NameKind};

/// `[auth]`: the credentials the gateway accepts. Any method configured
/// makes credentials mandatory on every API call (health, readiness and
/// metrics excepted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// `[[auth.api_keys]]`: keys stored only as hashes.
    pub api_keys: Vec<RawApiKey>,
    /// `[auth.jwt]`: bearer tokens.
    pub jwt: Option<RawJwt>,
    /// `[[auth.mtls]]`: client certificates (needs `[tls] client_ca`) mapped
    /// to principals; the first matching rule wins.
    pub mtls: Vec<RawCertRule>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApiKey {
    /// Names the principal (`principal.id`); unique.
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    /// `sha256:<64 hex digits>`, as `mcp-gateway auth hash-key` prints it.
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwt {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (the token's `aud` must contain it).
    pub audience: String,
    /// File holding the HS256 secret (surrounding whitespace is trimmed).
    pub hs256_secret_file: PathBuf,
    /// Name of an environment variable holding the HS256 secret.
    pub hs256_secret_env: String,
    /// A JWKS document (`{"keys": [...]}`) with the RS256/ES256 public keys.
    pub jwks_file: PathBuf,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim naming the principal.
    pub id_claim: String,
    /// Claim naming the tenant; a token without it is refused.
    pub tenant_claim: String,
    /// Claim listing the roles: an array of strings or a space-separated
    /// string; absent = no roles.
    pub roles_claim: String,
}

impl Default for RawJwt {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            hs256_secret_file: PathBuf::new(),
            hs256_secret_env: String::new(),
            jwks_file: PathBuf::new(),
            leeway_secs: 30,
            id_claim: "sub".to_owned(),
            tenant_claim: "tenant".to_owned(),
            roles_claim: "roles".to_owned(),
        }
    }
}

/// Maps a verified client certificate to a principal. Exactly one of
/// `san_uri`, `san_dns`, `cn` is set; a trailing `*` matches any suffix
/// (e.g. `spiffe://example.org/ns/ci/*`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCertRule {
    pub san_uri: String,
    pub san_dns: String,
    pub cn: String,
    /// The principal id; empty = the matched name itself.
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
}

/// `[tls]`: serve TLS on `server.listen` (both gRPC and REST). The
/// certificate and key are reloaded when their files change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain; empty = no TLS.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs that sign client certificates; enables mTLS.
    pub client_ca: PathBuf,
    /// With `client_ca`: refuse the TLS handshake of a client without a
    /// certificate (otherwise it may still present an API key or token).
    pub require_client_cert: bool,
    /// Reload the certificate and key when their files change.
    pub watch: bool,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            require_client_cert: false,
            watch: true,
        }
    }
}

/// Validated `[auth]`.
#[derive(Debug, Default)]
pub struct AuthSettings {
    pub api_keys: Vec<ApiKeyEntry>,
    pub jwt: Option<JwtVerifier>,
    pub mtls: Vec<CertRule>,
    /// `server.insecure_no_auth` on a non-loopback listener with no method
    /// configured: the gateway serves anyone and says so.
    pub insecure: bool,
}

impl AuthSettings {
    /// Whether any authentication method is configured.
    pub fn is_configured(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_some() || !self.mtls.is_empty()
    }
}

/// Validated `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    pub watch: bool,
}

/// Validates `[auth]`, `[tls]` and the loopback rule together, pushing every
/// problem found onto `problems`.
pub fn validate(
    auth: &RawAuth,
    tls: &RawTls,
    listen: Option<SocketAddr>,
    insecure_no_auth: bool,
    problems: &mut Vec<String>,
) -> (AuthSettings, Option<TlsSettings>) {
    let api_keys = api_keys(&auth.api_keys, problems);
    let jwt = auth.jwt.as_ref().and_then(|j| jwt(j, problems));
    let tls = tls_settings(tls, problems);
    let mtls = cert_rules(&auth.mtls, problems);
    if !mtls.is_empty() && tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
        problems.push("auth.mtls rules need [tls] cert, key and client_ca".to_owned());
    }
    let settings = AuthSettings {
        api_keys,
        jwt,
        mtls,
        insecure: false,
    };
    let configured = settings.is_configured() || auth.jwt.is_some();
    let insecure = match listen {
        Some(a) if !a.ip().is_loopback() && !configured => {
            if !insecure_no_auth {
                problems.push(format!(
                    "server.listen {a} is not a loopback address and no authentication is configured \
                     ([[auth.api_keys]], [auth.jwt] or [[auth.mtls]]); configure one, listen on \
                     127.0.0.1, or set server.insecure_no_auth = true to serve anyone anyway"
                ));
            }
            insecure_no_auth
        }
        _ => false,
    };
    (
        AuthSettings {
            insecure,
            ..settings
        },
        tls,
    )
}

fn api_keys(raw: &[RawApiKey], problems: &mut Vec<String>) -> Vec<ApiKeyEntry> {
    let mut out = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (i, k) in raw.iter().enumerate() {
        let at = format!("auth.api_keys[{i}]");
        if k.id.trim().is_empty() {
            problems.push(format!("{at}.id must not be empty"));
        } else if !ids.insert(k.id.as_str()) {
            problems.push(format!("{at}.id {:?} is used twice", k.id));
        }
        if k.tenant.trim().is_empty() {
            problems.push(format!("{at}.tenant must not be empty"));
        }
        match KeyHash::parse(&k.hash) {
            Ok(hash) => out.push(ApiKeyEntry {
                id: k.id.clone(),
                tenant: k.tenant.clone(),
                roles: k.roles.clone(),
                hash,
            }),
            Err(reason) => problems.push(format!("{at}.hash {reason}")),
        }
    }
    out
}

fn jwt(raw: &RawJwt, problems: &mut Vec<String>) -> Option<JwtVerifier> {
    let before = problems.len();
    if raw.issuer.trim().is_empty() {
        problems.push("auth.jwt.issuer must not be empty".to_owned());
    }
    if raw.audience.trim().is_empty() {
        problems.push("auth.jwt.audience must not be empty".to_owned());
    }
    for (name, v) in [
        ("id_claim", &raw.id_claim),
        ("tenant_claim", &raw.tenant_claim),
        ("roles_claim", &raw.roles_claim),
    ] {
        if v.trim().is_empty() {
            problems.push(format!("auth.jwt.{name} must not be empty"));
        }
    }
    if raw.leeway_secs > 300 {
        problems.push(format!(
            "auth.jwt.leeway_secs {} is above 300; clocks that far apart need fixing",
            raw.leeway_secs
        ));
    }
    let secret = hs256_secret(raw, problems);
    let jwks = if raw.jwks_file.as_os_str().is_empty() {
        None
    } else {
        match std::fs::read_to_string(&raw.jwks_file) {
            Ok(text) => Some((raw.jwks_file.clone(), text)),
            Err(e) => {
                problems.push(format!(
                    "auth.jwt.jwks_file {}: {e}",
                    raw.jwks_file.display()
                ));
                None
            }
        }
    };
    if secret.is_none() && jwks.is_none() && problems.len() == before {
        problems.push(
            "auth.jwt needs a key: hs256_secret_file, hs256_secret_env or jwks_file".to_owned(),
        );
    }
    if problems.len() != before {
        return None;
    }
    let settings = JwtSettings {
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway: Duration::from_secs(raw.leeway_secs),
        id_claim: raw.id_claim.clone(),
        tenant_claim: raw.tenant_claim.clone(),
        roles_claim: raw.roles_claim.clone(),
    };
    match JwtVerifier::new(settings, secret, jwks.as_ref().map(|(_, t)| t.as_str())) {
        Ok(v) => Some(v),
        Err(reason) => {
            let file = jwks
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default();
            problems.push(format!("auth.jwt.jwks_file {file}: {reason}"));
            None
        }
    }
}

fn hs256_secret(raw: &RawJwt, problems: &mut Vec<String>) -> Option<SecretBox<[u8]>> {
    let from_file = !raw.hs256_secret_file.as_os_str().is_empty();
    let from_env = !raw.hs256_secret_env.is_empty();
    let value = match (from_file, from_env) {
        (false, false) => return None,
        (true, true) => {
            problems
                .push("auth.jwt: set hs256_secret_file or hs256_secret_env, not both".to_owned());
            return None;
        }
        (true, false) => match std::fs::read(&raw.hs256_secret_file) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(format!(
                    "auth.jwt.hs256_secret_file {}: {e}",
                    raw.hs256_secret_file.display()
                ));
                return None;
            }
        },
        (false, true) => match std::env::var(&raw.hs256_secret_env) {
            Ok(v) => v.into_bytes(),
            Err(_) => {
                problems.push(format!(
                    "auth.jwt.hs256_secret_env names {:?}, which is not set",
                    raw.hs256_secret_env
                ));
                return None;
            }
        },
    };
    let trimmed = value.trim_ascii();
    // RFC 7518 §3.2: an HS256 key must have at least 256 bits.
    if trimmed.len() < 32 {
        problems.push(format!(
            "auth.jwt HS256 secret is {} bytes; it must be at least 32",
            trimmed.len()
        ));
        return None;
    }
    Some(SecretBox::new(trimmed.into()))
}

fn cert_rules(raw: &[RawCertRule], problems: &mut Vec<String>) -> Vec<CertRule> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("auth.mtls[{i}]");
        let set: Vec<(NameKind, &String)> = [
            (NameKind::SanUri, &r.san_uri),
            (NameKind::SanDns, &r.san_dns),
            (NameKind::Cn, &r.cn),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        let [(kind, pattern)] = set.as_slice() else {
            problems.push(format!("{at} must set exactly one of san_uri, san_dns, cn"));
            continue;
        };
        if pattern.trim_end_matches('*').contains('*') {
            problems.push(format!("{at}: {pattern:?} may hold `*` only at its end"));
            continue;
        }
        if r.tenant.trim().is_empty() {
            problems.push(format!("{at}.tenant must not be empty"));
            continue;
        }
        out.push(CertRule {
            kind: *kind,
            pattern: (*pattern).clone(),
            id: (!r.id.is_empty()).then(|| r.id.clone()),
            tenant: r.tenant.clone(),
            roles: r.roles.clone(),
        });
    }
    out
}

fn tls_settings(raw: &RawTls, problems: &mut Vec<String>) -> Option<TlsSettings> {
    let set = |p: &Path| !p.as_os_str().is_empty();
    match (set(&raw.cert), set(&raw.key)) {
        (false, false) => {
            if set(&raw.client_ca) {
                problems.push("tls.client_ca needs tls.cert and tls.key".to_owned());
            }
            return None;
        }
        (true, false) | (false, true) => {
            problems.push("tls.cert and tls.key go together".to_owned());
            return None;
        }
        (true, true) => {}
    }
    for (name, p) in [
        ("cert", &raw.cert),
        ("key", &raw.key),
        ("client_ca", &raw.client_ca),
    ] {
        if set(p) && !p.is_file() {
            problems.push(format!("tls.{name} {} is not a file", p.display()));
        }
    }
    if raw.require_client_cert && !set(&raw.client_ca) {
        problems.push("tls.require_client_cert needs tls.client_ca".to_owned());
    }
    Some(TlsSettings {
        cert: raw.cert.clone(),
        key: raw.key.clone(),
        client_ca: set(&raw.client_ca).then(|| raw.client_ca.clone()),
        require_client_cert: raw.require_client_cert,
        watch: raw.watch,
    })
}
