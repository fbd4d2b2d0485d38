use super::*;

#[test]
fn every_documented_operation_has_its_own_metric_label() {
    let doc = openapi();
    let mut seen = Vec::new();
    for (path, item) in &doc.paths.paths {
        // The OpenAPI path of the file routes stands for axum's wildcard.
        let route = path.replace("{path}", "{*path}");
        let ops = [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let label = operation(&method, Some(&route));
            assert_eq!(
                Some(label),
                op.operation_id.as_deref(),
                "{method} {path}: the metric label is the operationId"
            );
            seen.push(label);
        }
    }
    seen.sort_unstable();
    let n = seen.len();
    seen.dedup();
    assert_eq!(n, seen.len(), "operation ids are unique");
    assert_eq!(n, 15, "{seen:?}");
    assert_eq!(operation(&Method::GET, None), "unmatched");
    assert_eq!(operation(&Method::PATCH, Some("/v1/run")), "unmatched");
}

#[test]
fn the_document_is_openapi_3_1_with_the_error_shape() {
    let v: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(v["info"]["version"], env!("CARGO_PKG_VERSION"));
    let err = &v["components"]["schemas"]["ErrorDetail"]["properties"];
    for field in ["code", "status", "message", "request_id", "details"] {
        assert!(err[field].is_object(), "ErrorDetail.{field}: {err}");
    }
    // Request bodies refuse unknown fields, and say so.
    assert_eq!(
        v["components"]["schemas"]["ExecuteBody"]["additionalProperties"],
        false
    );
}

#[test]
fn only_probes_and_scrapes_skip_the_concurrency_limit() {
    for op in ["Health", "Ready", "Metrics"] {
        assert!(is_exempt(op));
    }
    for op in [
        "ExecuteCommand",
        "RunCommand",
        "StreamTaskOutput",
        "WriteFile",
        "unmatched",
    ] {
        assert!(!is_exempt(op), "{op}");
    }
}
