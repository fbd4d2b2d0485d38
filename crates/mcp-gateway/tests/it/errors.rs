//! Every `GatewayError` variant, through both mappings (gRPC status and
//! REST error document), against the matrix in `docs/api/errors.md`.

use std::collections::BTreeSet;

use axum::response::IntoResponse;
use mcp_core::{TaskId, TaskIdError, TaskState, ValidationError};
use mcp_gateway::error::{ErrorStatus, GatewayError, code_name};
use mcp_gateway::rest::ApiError;
use serde_json::Value;

/// One value of every variant. The match in [`variant_index`] has no
/// wildcard, so a new variant fails to compile here until it is added.
fn every_variant() -> Vec<GatewayError> {
    let id = TaskId::new();
    vec![
        GatewayError::Unauthenticated,
        GatewayError::InvalidRequest(ValidationError::EmptyCommand),
        GatewayError::BadTaskId(TaskIdError("nope".into())),
        GatewayError::Denied {
            reasons: vec!["command \"rm\" is not in the allowed command list".into()],
        },
        GatewayError::TaskNotFound { id },
        GatewayError::TaskFinished {
            id,
            state: TaskState::Completed,
        },
        GatewayError::FileNotFound { path: "a".into() },
        GatewayError::FileConflict {
            path: "a".into(),
            reason: "is a directory",
        },
        GatewayError::FileTooLarge {
            path: "a".into(),
            size: 10,
            max: 5,
        },
        GatewayError::PathEscapes {
            path: "../x".into(),
        },
        GatewayError::Overloaded { queued: 1024 },
        GatewayError::Unsupported {
            what: "network_access NETWORK_RESTRICTED".into(),
        },
        GatewayError::ShuttingDown,
        GatewayError::Sandbox(mcp_sandbox::SandboxError::RunAsRoot),
        GatewayError::Store(mcp_store::StoreError::BadUrl {
            url: "sqlite:///secret/host/path.db".into(),
        }),
        GatewayError::FileIo(mcp_sandbox::FileError::BadTenant {
            tenant: "secret-tenant-detail".into(),
        }),
        GatewayError::MalformedRequest {
            field: Some("timeout_secs".into()),
            reason: "invalid type".into(),
        },
        GatewayError::BodyTooLarge { max: 1024 },
        GatewayError::UnsupportedMediaType {
            got: "text/plain".into(),
            expected: "application/json",
        },
        GatewayError::MethodNotAllowed {
            method: "DELETE".into(),
            path: "/v1/run".into(),
        },
        GatewayError::RouteNotFound {
            method: "GET".into(),
            path: "/nope".into(),
        },
        GatewayError::Unimplemented {
            what: "listing tasks",
        },
        GatewayError::RequestTimeout {
            limit: std::time::Duration::from_secs(30),
        },
        GatewayError::Busy { limit: 256 },
        GatewayError::Internal {
            what: "secret internal detail".into(),
        },
        GatewayError::QuotaExceeded {
            quota: "tasks per minute",
            limit: 2,
            retry_after_secs: 30,
        },
        GatewayError::SelfApproval { id },
        GatewayError::ApprovalTokenInvalid {
            reason: "the token was already used",
        },
        GatewayError::NotPendingApproval {
            id,
            state: TaskState::Running,
        },
        GatewayError::IdempotencyKeyReused,
    ]
}

const VARIANTS: usize = 30;

fn variant_index(e: &GatewayError) -> usize {
    match e {
        GatewayError::InvalidRequest(_) => 0,
        GatewayError::BadTaskId(_) => 1,
        GatewayError::Denied { .. } => 2,
        GatewayError::TaskNotFound { .. } => 3,
        GatewayError::TaskFinished { .. } => 4,
        GatewayError::FileNotFound { .. } => 5,
        GatewayError::FileConflict { .. } => 6,
        GatewayError::FileTooLarge { .. } => 7,
        GatewayError::PathEscapes { .. } => 8,
        GatewayError::Overloaded { .. } => 9,
        GatewayError::Unsupported { .. } => 10,
        GatewayError::ShuttingDown => 11,
        GatewayError::Sandbox(_) => 12,
        GatewayError::Store(_) => 13,
        GatewayError::FileIo(_) => 14,
        GatewayError::MalformedRequest { .. } => 15,
        GatewayError::BodyTooLarge { .. } => 16,
        GatewayError::UnsupportedMediaType { .. } => 17,
        GatewayError::MethodNotAllowed { .. } => 18,
        GatewayError::RouteNotFound { .. } => 19,
        GatewayError::Unimplemented { .. } => 20,
        GatewayError::RequestTimeout { .. } => 21,
        GatewayError::Busy { .. } => 22,
        GatewayError::Internal { .. } => 23,
        GatewayError::Unauthenticated => 24,
        GatewayError::QuotaExceeded { .. } => 25,
        GatewayError::SelfApproval { .. } => 26,
        GatewayError::ApprovalTokenInvalid { .. } => 27,
        GatewayError::NotPendingApproval { .. } => 28,
        GatewayError::IdempotencyKeyReused => 29,
    }
}

/// `(code, gRPC status, HTTP status)` rows of the matrix in errors.md.
fn documented() -> BTreeSet<(u16, String, u16)> {
    let md = std::fs::read_to_string(crate::harness::repo().join("docs/api/errors.md")).unwrap();
    md.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | code | name | gRPC | HTTP | meaning |
            let code = cells.get(1)?.trim_matches('`').parse().ok()?;
            let grpc = cells.get(3)?.trim_matches('`').to_owned();
            let http = cells.get(4)?.parse().ok()?;
            Some((code, grpc, http))
        })
        .collect()
}

#[tokio::test]
async fn every_variant_maps_the_same_way_through_both_doors_and_the_docs() {
    let all = every_variant();
    let indices: BTreeSet<usize> = all.iter().map(variant_index).collect();
    assert_eq!(indices.len(), VARIANTS, "every variant exactly once");
    assert_eq!(all.len(), VARIANTS);

    let mut mapped = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for e in all {
        let m = e.mapping();
        let name = format!("{e:?}");
        assert!(
            numbers.insert(m.number),
            "{name}: number {} reused",
            m.number
        );
        let family = m.number / 1000;
        assert!((1..=6).contains(&family), "{name}: {}", m.number);

        // gRPC: the code, the error number and the request id travel.
        let status = e.to_status("0190b1a2-0000-7000-8000-000000000000");
        assert_eq!(status.code(), m.grpc, "{name}");
        assert_eq!(
            status
                .metadata()
                .get("x-error-code")
                .unwrap()
                .to_str()
                .unwrap(),
            m.number.to_string(),
            "{name}"
        );
        assert!(
            status
                .message()
                .contains("0190b1a2-0000-7000-8000-000000000000"),
            "{name}"
        );

        // REST: the HTTP status, the one shape, the same number and code.
        let api = ApiError {
            error: e,
            request_id: "0190b1a2-0000-7000-8000-000000000000".into(),
        };
        let resp = api.into_response();
        assert_eq!(resp.status(), m.http, "{name}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let err = &v["error"];
        assert_eq!(err["code"], m.number, "{name}");
        assert_eq!(err["status"], code_name(m.grpc), "{name}");
        assert_eq!(
            err["request_id"], "0190b1a2-0000-7000-8000-000000000000",
            "{name}"
        );
        assert!(err["details"].is_object(), "{name}");
        let msg = err["message"].as_str().unwrap();
        // Internal details never reach a client through either door.
        for secret in ["secret", "/host/path"] {
            assert!(!msg.contains(secret), "{name} leaks: {msg}");
            assert!(!status.message().contains(secret), "{name} leaks");
            assert!(!err["details"].to_string().contains(secret), "{name}");
        }
        mapped.insert((m.number, code_name(m.grpc).to_owned(), m.http.as_u16()));
    }
    let docs = documented();
    assert_eq!(
        mapped, docs,
        "docs/api/errors.md must list exactly the mapping of GatewayError"
    );
}
