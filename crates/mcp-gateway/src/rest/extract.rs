//! The REST error response and extractors whose rejections use it.
//!
//! axum's own `Json`/`Query`/`Path` reject with plain-text bodies; these
//! answer with the one error shape and name the offending field (the JSON
//! path, from `serde_path_to_error`).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{ErrorStatus, GatewayError, code_name};
use crate::rest::types::{ErrorBody, ErrorDetail};
use mcp_pipeline::Caller;

/// Marks a response as an API error and carries its gRPC code, for the
/// `status` label of `mcp_api_requests_total` and so the front middleware
/// leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) tonic::Code);

/// The body-size limit of the current operation (set by the front
/// middleware), so a rejection can say what the limit is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// A [`GatewayError`] on its way to a REST client.
#[derive(Debug)]
pub struct ApiError {
    pub error: GatewayError,
    pub request_id: String,
}

impl ApiError {
    pub fn new(error: GatewayError, caller: &Caller) -> Self {
        Self {
            error,
            request_id: caller.request_id.to_string(),
        }
    }

    fn from_parts(error: GatewayError, parts_request_id: Option<String>) -> Self {
        Self {
            error,
            request_id: parts_request_id.unwrap_or_default(),
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        let m = self.error.mapping();
        ErrorBody {
            error: ErrorDetail {
                code: m.number,
                status: code_name(m.grpc).to_owned(),
                message: self.error.public_message(),
                request_id: self.request_id.clone(),
                details: self.error.details(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let m = self.error.mapping();
        let mut resp = (m.http, axum::Json(self.body())).into_response();
        let headers = resp.headers_mut();
        if matches!(
            self.error,
            GatewayError::Overloaded { .. }
                | GatewayError::Busy { .. }
                | GatewayError::ShuttingDown
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let GatewayError::QuotaExceeded {
            retry_after_secs, ..
        } = self.error
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if matches!(self.error, GatewayError::Unauthenticated) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(crate::auth::WWW_AUTHENTICATE),
            );
        }
        resp.extensions_mut().insert(ErrorCode(m.grpc));
        resp
    }
}

fn request_id(ext: &axum::http::Extensions) -> Option<String> {
    ext.get::<Caller>().map(|c| c.request_id.to_string())
}

/// Turns a `serde_path_to_error` failure into the error naming the field.
fn malformed<E: std::fmt::Display>(
    what: &str,
    e: serde_path_to_error::Error<E>,
    syntax: bool,
) -> GatewayError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    GatewayError::MalformedRequest {
        field: known_field(path),
        reason: if syntax {
            format!("{what} is not valid JSON: {inner}")
        } else {
            format!("{inner}")
        },
    }
}

/// A `serde_path_to_error` path naming a field; `.` is the document itself
/// and `?` an unknown position (a syntax error).
fn known_field(path: String) -> Option<String> {
    (!matches!(path.as_str(), "" | "." | "?")).then_some(path)
}

/// A JSON body of type `T`, strictly: `Content-Type` must be JSON when
/// given, unknown fields are refused, trailing data too.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let rid = request_id(req.extensions());
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
                return Err(ApiError::from_parts(
                    GatewayError::UnsupportedMediaType {
                        got: ct.chars().take(100).collect(),
                        expected: "application/json",
                    },
                    rid,
                ));
            }
        }
        let bytes = read_body(req, state, limit, rid.clone()).await?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let syntax = matches!(
                e.inner().classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            );
            ApiError::from_parts(malformed("request body", e, syntax), rid.clone())
        })?;
        de.end().map_err(|e| {
            ApiError::from_parts(
                GatewayError::MalformedRequest {
                    field: None,
                    reason: format!("request body is not valid JSON: {e}"),
                },
                rid.clone(),
            )
        })?;
        Ok(ApiJson(value))
    }
}

/// The raw request body, bounded by the operation's limit.
#[derive(Debug)]
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let rid = request_id(req.extensions());
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        Ok(ApiBytes(read_body(req, state, limit, rid).await?))
    }
}

async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
    rid: Option<String>,
) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|r| {
        let e = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::BodyTooLarge { max: limit }
        } else {
            GatewayError::MalformedRequest {
                field: None,
                reason: "the request body could not be read".to_owned(),
            }
        };
        ApiError::from_parts(e, rid)
    })
}

/// A query string of type `T`; unknown parameters are refused.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default(), &parts.extensions).map(ApiQuery)
    }
}

/// Parses a query string strictly into `T`, as [`ApiQuery`] does; `ext`
/// are the request's extensions (for the request id of an error).
pub(crate) fn parse_query<T: DeserializeOwned>(
    query: &str,
    ext: &axum::http::Extensions,
) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::from_parts(
            GatewayError::MalformedRequest {
                field: known_field(path),
                reason: format!("query string: {inner}"),
            },
            request_id(ext),
        )
    })
}

/// The current request's [`Caller`], put there by the front middleware.
#[derive(Debug, Clone)]
pub struct ApiCaller(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(ApiCaller)
            .ok_or_else(|| {
                ApiError::from_parts(
                    GatewayError::Internal {
                        what: "request reached a handler without a caller".to_owned(),
                    },
                    None,
                )
            })
    }
}

/// The wildcard or single path parameter of a route, percent-decoded.
#[derive(Debug)]
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r| {
                ApiError::from_parts(
                    GatewayError::MalformedRequest {
                        field: Some("path".to_owned()),
                        reason: r.body_text(),
                    },
                    request_id(&parts.extensions),
                )
            })
    }
}
