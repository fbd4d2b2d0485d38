//! JWT bearer tokens: HS256 with a shared secret, RS256 and ES256 with the
//! public keys of a JWKS file. `iss`, `aud`, `exp` are required and checked,
//! `nbf` is checked when present, with a small leeway for clock skew. The
//! token's `alg` only picks among the keys configured for that algorithm,
//! so a token cannot choose its own verification (no `none`, no HS256
//! signed with a public key).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mcp_core::{AuthMethod, Principal};
use secrecy::{ExposeSecret, SecretBox};
use serde_json::{Map, Value};

/// What `[auth.jwt]` says about tokens, besides keys.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub id_claim: String,
    pub tenant_claim: String,
    pub roles_claim: String,
}

struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens and maps their claims to a [`Principal`].
pub struct JwtVerifier {
    settings: JwtSettings,
    hs256: Option<SecretBox<[u8]>>,
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .field("hs256", &self.hs256.as_ref().map(|_| "[redacted]"))
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| (k.kid.clone(), k.alg))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a token was refused; for the log only, never for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtFailure {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no configured key verifies this token (kid {0:?})")]
    NoKey(Option<String>),
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer is not the configured one")]
    Issuer,
    #[error("token audience does not include the configured one")]
    Audience,
    #[error("token lacks claim {0:?}")]
    MissingClaim(String),
    #[error("token was refused: {0}")]
    Other(String),
}

impl JwtVerifier {
    /// Builds a verifier from the HS256 secret and/or the text of a JWKS
    /// file; the error says which key of the set is unusable and why.
    pub fn new(
        settings: JwtSettings,
        hs256: Option<SecretBox<[u8]>>,
        jwks: Option<&str>,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(text) = jwks {
            let set: JwkSet =
                serde_json::from_str(text).map_err(|e| format!("is not a JWKS document: {e}"))?;
            if set.keys.is_empty() {
                return Err("holds no keys".to_owned());
            }
            for (i, jwk) in set.keys.iter().enumerate() {
                let kid = jwk.common.key_id.clone();
                let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
                    | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec))
                    | (None, AlgorithmParameters::EllipticCurve(ec))
                        if ec.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    (a, _) => {
                        return Err(format!(
                            "key {i} (kid {kid:?}): only RS256 (RSA) and ES256 (P-256) keys are accepted, got {a:?}"
                        ));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("key {i} (kid {kid:?}) is unusable: {e}"))?;
                keys.push(PublicKey { kid, alg, key });
            }
        }
        Ok(Self {
            settings,
            hs256,
            keys,
        })
    }

    /// Verifies `token` and maps its claims to a principal.
    pub fn verify(&self, token: &str) -> Result<Principal, JwtFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtFailure::Malformed)?;
        let hs_key;
        let key = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(secret) => {
                    hs_key = DecodingKey::from_secret(secret.expose_secret());
                    &hs_key
                }
                None => return Err(JwtFailure::Algorithm("HS256".to_owned())),
            },
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let mut candidates = self.keys.iter().filter(|k| k.alg == alg);
                let found = match &header.kid {
                    Some(kid) => candidates.find(|k| k.kid.as_deref() == Some(kid)),
                    None => {
                        let first = candidates.next();
                        // Without a kid the key must be unambiguous.
                        if candidates.next().is_some() {
                            None
                        } else {
                            first
                        }
                    }
                };
                &found
                    .ok_or_else(|| JwtFailure::NoKey(header.kid.clone()))?
                    .key
            }
            other => return Err(JwtFailure::Algorithm(format!("{other:?}"))),
        };
        let s = &self.settings;
        let mut v = Validation::new(header.alg);
        v.leeway = s.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&s.issuer]);
        v.set_audience(&[&s.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => JwtFailure::Signature,
                    ErrorKind::ExpiredSignature => JwtFailure::Expired,
                    ErrorKind::ImmatureSignature => JwtFailure::NotYetValid,
                    ErrorKind::InvalidIssuer => JwtFailure::Issuer,
                    ErrorKind::InvalidAudience => JwtFailure::Audience,
                    ErrorKind::MissingRequiredClaim(c) => JwtFailure::MissingClaim(c.clone()),
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_) => JwtFailure::Malformed,
                    other => JwtFailure::Other(format!("{other:?}")),
                }
            })?;
        let claims = data.claims;
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| JwtFailure::MissingClaim(name.to_owned()))
        };
        let id = text(&s.id_claim)?;
        let tenant = text(&s.tenant_claim)?;
        let roles = match claims.get(&s.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| JwtFailure::MissingClaim(s.roles_claim.clone()))?,
            Some(_) => return Err(JwtFailure::MissingClaim(s.roles_claim.clone())),
        };
        Ok(Principal {
            id,
            tenant,
            roles,
            auth: AuthMethod::Jwt,
        })
    }
}
