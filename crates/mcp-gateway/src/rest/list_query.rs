//! The query of `GET /v1/tasks`: [`ListQuery`], whose `metadata` filter is
//! the one repeated parameter (`metadata=team:infra&metadata=batch:b1`).
//! A task matches when its metadata holds every pair, as with the
//! `metadata` map of gRPC `ListTasks`.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::extract::{ApiError, parse_query};
use super::types::ListQuery;
use crate::error::GatewayError;

/// The name of the repeated parameter.
const METADATA: &str = "metadata";

/// [`ListQuery`] from the query string; unknown parameters are refused
/// like [`super::extract::ApiQuery`] does.
#[derive(Debug)]
pub struct ApiListQuery(pub ListQuery);

impl<S: Send + Sync> FromRequestParts<S> for ApiListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let (metadata, rest) = split_metadata(parts.uri.query().unwrap_or_default());
        let mut q: ListQuery = parse_query(&rest, &parts.extensions)?;
        q.metadata = metadata;
        Ok(ApiListQuery(q))
    }
}

/// The (decoded) values of every `metadata` parameter, and the query
/// string without them (which a serde struct can read: no key repeats).
pub(crate) fn split_metadata(query: &str) -> (Vec<String>, String) {
    let mut metadata = Vec::new();
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == METADATA {
            metadata.push(v.into_owned());
        } else {
            rest.append_pair(&k, &v);
        }
    }
    (metadata, rest.finish())
}

/// The `key:value` pairs as the filter of [`mcp_pipeline::ListFilter`]:
/// split at the first `:` (so a value may hold `:`, a key may not); the key
/// must not be empty, the value may; a key given twice is refused.
pub(crate) fn metadata_filter(values: &[String]) -> Result<BTreeMap<String, String>, GatewayError> {
    let bad = |reason: String| GatewayError::MalformedRequest {
        field: Some(METADATA.to_owned()),
        reason,
    };
    let mut filter = BTreeMap::new();
    for v in values {
        let shown = || v.chars().take(100).collect::<String>();
        let Some((key, value)) = v.split_once(':') else {
            return Err(bad(format!("{:?} is not `key:value`", shown())));
        };
        if key.is_empty() {
            return Err(bad(format!("{:?} has an empty key", shown())));
        }
        if filter.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(bad(format!(
                "key {:?} is given more than once",
                key.chars().take(100).collect::<String>()
            )));
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests;
