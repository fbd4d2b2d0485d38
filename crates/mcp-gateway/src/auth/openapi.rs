//! The REST API's security in its OpenAPI document: an API key
//! (`x-api-key`) or a bearer token (a JWT, or an API key) on every
//! operation except the public ones (an empty requirement: no credentials),
//! and a documented 401 everywhere else.

use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{OpenApi, RefOr, Response};

/// Adds the security schemes, the document-wide requirement, the public
/// exceptions and the 401 answers.
pub fn document(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "apiKey",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "An API key (`mcp-gateway auth new-key`); also accepted as `authorization: Bearer <key>`.",
        ))),
    );
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT (HS256, RS256 or ES256; iss, aud, exp checked) or an API key.",
                ))
                .build(),
        ),
    );
    doc.security = Some(vec![
        SecurityRequirement::new("apiKey", Vec::<String>::new()),
        SecurityRequirement::new("bearer", Vec::<String>::new()),
    ]);
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let public = op
                .operation_id
                .as_deref()
                .is_some_and(super::rest_is_public);
            if public {
                // An empty requirement: no credentials needed.
                op.security = Some(vec![SecurityRequirement::default()]);
            } else {
                op.responses.responses.insert(
                    "401".to_owned(),
                    RefOr::T(Response::new(
                        "Missing or invalid credentials (code 1001, UNAUTHENTICATED); `WWW-Authenticate: Bearer`.",
                    )),
                );
            }
        }
    }
}
