//! Authentication: who is asking, for every front door at once.
//!
//! [`crate::server`] calls [`Authenticator::authenticate`] for every request
//! before steering it to gRPC or REST, and stores the [`Authn`] outcome in
//! the request's extensions; the front doors read the principal from there
//! ([`principal`]). Credentials, in order:
//! - an API key in `x-api-key`, or in `authorization: Bearer` when it is not
//!   a JWT ([`api_key`]);
//! - a JWT in `authorization: Bearer` ([`jwt`]);
//! - the verified client certificate of the TLS connection ([`mtls`]).
//!
//! A credential that is presented must verify: a bad API key is refused
//! even on a connection with a good certificate. Every failure gets the
//! same answer (`UNAUTHENTICATED`, HTTP 401) and the reason goes to the log
//! only. With no method configured every caller is the anonymous principal,
//! which the configuration allows only on loopback (or with
//! `server.insecure_no_auth`). Probes and scrapes never need credentials:
//! `grpc.health.v1.Health`, server reflection, `/health`, `/ready`,
//! `/metrics`, `/openapi.json`.

pub mod api_key;
pub mod cli;
pub mod config;
pub mod jwt;
pub mod mtls;
pub mod openapi;
pub mod tls;

use axum::http::{HeaderMap, header};
use mcp_core::{AuthMethod, Principal};
use tracing::info;

pub use config::{AuthSettings, RawAuth, RawTls, TlsSettings};
pub use tls::{Peer, TlsError};

use self::jwt::JwtFailure;
use self::mtls::ClientCert;

/// Why a request was not authenticated; logged, never sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no credentials")]
    Missing,
    #[error("unknown API key")]
    UnknownKey,
    #[error("credential header is not valid text")]
    BadHeader,
    #[error(transparent)]
    Jwt(#[from] JwtFailure),
    #[error("bearer token given but no JWT verification is configured")]
    JwtNotConfigured,
    #[error("client certificate {0} matches no [[auth.mtls]] rule")]
    CertNotMapped(String),
}

/// The outcome of authenticating one request, kept in its extensions.
#[derive(Debug, Clone)]
pub struct Authn(pub Result<Principal, Failure>);

/// Verifies credentials against the configuration.
#[derive(Debug)]
pub struct Authenticator {
    settings: std::sync::Arc<AuthSettings>,
}

impl Authenticator {
    pub fn new(settings: std::sync::Arc<AuthSettings>) -> Self {
        Self { settings }
    }

    /// Whether credentials are required (any method configured).
    pub fn required(&self) -> bool {
        self.settings.is_configured()
    }

    /// Whether the gateway serves a non-loopback address to anyone.
    pub fn insecure(&self) -> bool {
        self.settings.insecure
    }

    /// Authenticates one request from its headers and its connection's
    /// client certificate.
    pub fn authenticate(&self, headers: &HeaderMap, cert: Option<&ClientCert>) -> Authn {
        Authn(self.principal_of(headers, cert))
    }

    fn principal_of(
        &self,
        headers: &HeaderMap,
        cert: Option<&ClientCert>,
    ) -> Result<Principal, Failure> {
        if !self.required() {
            return Ok(Principal::anonymous());
        }
        let s = &self.settings;
        if let Some(v) = headers.get("x-api-key") {
            let key = v.to_str().map_err(|_| Failure::BadHeader)?.trim();
            return self.api_key(key);
        }
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let v = v.to_str().map_err(|_| Failure::BadHeader)?.trim();
            let Some((scheme, cred)) = v.split_once(' ') else {
                return Err(Failure::BadHeader);
            };
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Failure::BadHeader);
            }
            let cred = cred.trim();
            // A JWT is three base64url parts; API keys have no dots.
            if cred.split('.').count() == 3 {
                return match &s.jwt {
                    Some(v) => v.verify(cred).map_err(Failure::from),
                    None => Err(Failure::JwtNotConfigured),
                };
            }
            return self.api_key(cred);
        }
        if let Some(cert) = cert
            && !s.mtls.is_empty()
        {
            return cert.principal(&s.mtls).ok_or_else(|| {
                Failure::CertNotMapped(
                    cert.uris
                        .first()
                        .or(cert.dns.first())
                        .or(cert.cn.as_ref())
                        .cloned()
                        .unwrap_or_default(),
                )
            });
        }
        Err(Failure::Missing)
    }

    fn api_key(&self, key: &str) -> Result<Principal, Failure> {
        let e = api_key::find(&self.settings.api_keys, key).ok_or(Failure::UnknownKey)?;
        Ok(Principal {
            id: e.id.clone(),
            tenant: e.tenant.clone(),
            roles: e.roles.clone(),
            auth: AuthMethod::ApiKey,
        })
    }
}

/// gRPC services that answer without credentials: the standard health
/// service (for probes and load balancers) and reflection (the schema only).
pub fn grpc_is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// REST operations that answer without credentials (by `operationId`).
pub fn rest_is_public(operation: &str) -> bool {
    matches!(operation, "Health" | "Ready" | "Metrics" | "OpenApi")
}

/// The principal of a request as the front door sees it. A request that did
/// not pass [`crate::server`]'s steering has no outcome and is refused
/// (fail closed).
pub fn principal(ext: &axum::http::Extensions) -> Result<Principal, Failure> {
    match ext.get::<Authn>() {
        Some(Authn(r)) => r.clone(),
        None => Err(Failure::Missing),
    }
}

/// The principal of a request whose authentication failed, should one
/// reach a handler (it cannot through [`crate::server::app`]): no roles and
/// a tenant no file root or policy knows, so nothing is granted.
pub fn nobody() -> Principal {
    Principal {
        id: "unauthenticated".to_owned(),
        tenant: "-".to_owned(),
        roles: Vec::new(),
        auth: AuthMethod::None,
    }
}

/// Logs a refused request: the reason, never the credential.
pub fn log_failure(failure: &Failure, request_id: &str, peer: Option<&str>) {
    info!(
        reason = %failure,
        request_id = %request_id,
        peer = peer.unwrap_or("-"),
        "authentication failed"
    );
}

/// What authentication a configuration turns on, for `check-config` and
/// the start-up log: e.g. `api keys (2), jwt, tls with client certificates`.
pub fn describe(a: &AuthSettings, tls: Option<&TlsSettings>) -> String {
    let mut parts = Vec::new();
    if !a.api_keys.is_empty() {
        parts.push(format!("api keys ({})", a.api_keys.len()));
    }
    if a.jwt.is_some() {
        parts.push("jwt".to_owned());
    }
    if !a.mtls.is_empty() {
        parts.push(format!("mtls rules ({})", a.mtls.len()));
    }
    if parts.is_empty() {
        parts.push(if a.insecure {
            "NONE (insecure_no_auth)".to_owned()
        } else {
            "none (loopback only)".to_owned()
        });
    }
    match tls {
        Some(t) if t.client_ca.is_some() => parts.push("tls with client certificates".to_owned()),
        Some(_) => parts.push("tls".to_owned()),
        None => {}
    }
    parts.join(", ")
}

/// The `WWW-Authenticate` value of a 401 answer (RFC 6750).
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"mcp-gateway\"";

/// The warning header value of `/ready` when serving without auth.
pub const INSECURE_WARNING: &str = "199 mcp-gateway \"serving a non-loopback address without authentication (server.insecure_no_auth)\"";

#[cfg(test)]
mod tests;
