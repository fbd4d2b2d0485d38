use std::collections::BTreeSet;

use mcp_core::Decision;
use serde_json::json;

use crate::decision::{ObligationKind, from_value as decode};
use crate::engine::revision;
use crate::testing::{rule_prefix, test_candidates};

fn from_value(v: &serde_json::Value, revision: &str) -> Result<Decision, String> {
    decode(v, revision, &BTreeSet::from([ObligationKind::Profile]))
        .map(|d| d.decision)
        .map_err(|e| e.to_string())
}

#[test]
fn engine_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<crate::PolicyEngine>();
    assert_send_sync::<crate::PolicyService>();
}

#[test]
fn well_formed_allow_is_decoded() {
    let d = from_value(
        &json!({"allow": true, "deny_reasons": [], "warnings": ["w"], "obligations": {"profile": "default"}}),
        "rev",
    )
    .unwrap();
    assert!(d.allow);
    assert!(d.deny_reasons.is_empty());
    assert_eq!(d.warnings, vec!["w"]);
    assert_eq!(d.obligations.profile.as_deref(), Some("default"));
    assert!(d.obligations.unknown.is_empty());
    assert_eq!(d.policy_revision, "rev");
}

#[test]
fn missing_lists_and_obligations_are_empty() {
    let d = from_value(&json!({"allow": true}), "r").unwrap();
    assert!(d.allow);
    assert!(d.warnings.is_empty());
    assert_eq!(d.obligations, Default::default());
}

#[test]
fn deny_without_reason_gets_one() {
    let d = from_value(&json!({"allow": false, "obligations": {}}), "r").unwrap();
    assert!(!d.allow);
    assert_eq!(d.deny_reasons, vec!["denied by policy"]);
}

#[test]
fn malformed_decisions_are_errors() {
    for bad in [
        json!(true),
        json!([]),
        json!({}),
        json!({"allow": "true"}),
        json!({"allow": 1}),
        json!({"allow": null}),
        json!({"allow": false, "deny_reasons": "no"}),
        json!({"allow": false, "deny_reasons": [1]}),
        json!({"allow": true, "warnings": {"a": 1}}),
        json!({"allow": true, "obligations": []}),
        json!({"allow": true, "obligations": {"profile": 3}}),
        json!({"allow": true, "deny_reasons": ["x"]}),
        json!({"allow": true, "obligation": {"profile": "default"}}),
    ] {
        assert!(from_value(&bad, "r").is_err(), "{bad} was accepted");
    }
}

#[test]
fn unknown_obligations_are_collected_and_deny() {
    let d = from_value(
        &json!({"allow": true, "obligations": {"profile": "p", "b": 1, "a": null}}),
        "r",
    )
    .unwrap();
    assert!(!d.allow);
    assert_eq!(d.obligations.unknown, vec!["a", "b"]);
    assert_eq!(d.deny_reasons.len(), 2);
}

#[test]
fn revision_is_twelve_hex_digits_and_order_independent() {
    let a = revision(&mut [("a.rego", "x"), ("b.rego", "y")]);
    let b = revision(&mut [("b.rego", "y"), ("a.rego", "x")]);
    assert_eq!(a, b);
    assert_eq!(a.len(), 12);
    // Moving bytes between name and contents changes the revision.
    assert_ne!(revision(&mut [("ab", "c")]), revision(&mut [("a", "bc")]));
}

#[test]
fn test_rule_candidates_are_scanned_from_source() {
    let src = "package p\n# test_in_comment\ntest_a if true\n\ttest_b if x.test_c\ntest_a if false\nnot_test_d := 1\n";
    assert_eq!(
        test_candidates(src),
        vec!["test_in_comment", "test_a", "test_b"]
    );
}

#[test]
fn rule_prefix_brackets_non_identifiers() {
    assert_eq!(
        rule_prefix(&["mcp".into(), "tests".into()]),
        "data.mcp.tests"
    );
    assert_eq!(
        rule_prefix(&["graph".into(), "1.0".into()]),
        r#"data.graph["1.0"]"#
    );
}

#[test]
fn redacted_eval_errors_keep_the_location_and_drop_values() {
    let err = crate::error::DecisionError::Eval(
        "--> /p/main.rego:3:5\n  |\n3 | x := trim(input.args)\nerror: `trim` expects string argument. Got `[\"secret\"]` instead".to_owned(),
    );
    let shown = err.redacted();
    assert_eq!(
        shown,
        "evaluation of data.mcp.decision failed at /p/main.rego:3:5"
    );
    assert!(err.to_string().contains("secret"));
}

#[test]
fn known_obligations_are_typed_and_unenforced_ones_deny() {
    let v = json!({"allow": true, "obligations": {
        "profile": "build",
        "limits": {"cpu_limit": 0.5, "memory_bytes": 1024, "pids": 10, "timeout_secs": 5},
        "require_approval": {"roles": ["lead"], "reason": "write scope"},
        "redact": ["sk-[a-z0-9]+"],
        "network": [{"host": "api.github.com", "port": 443}],
    }});
    let only_profile = decode(&v, "r", &BTreeSet::from([ObligationKind::Profile])).unwrap();
    assert!(!only_profile.decision.allow);
    assert_eq!(
        only_profile.decision.obligations.unknown,
        vec!["limits", "network", "redact", "require_approval"]
    );
    assert!(
        only_profile.decision.deny_reasons.contains(
            &r#"obligation "require_approval" is not supported by this gateway"#.to_owned()
        )
    );
    let set = &only_profile.obligations;
    assert_eq!(set.limits.and_then(|l| l.pids), Some(10));
    assert_eq!(
        set.require_approval.as_ref().map(|a| a.roles.clone()),
        Some(vec!["lead".to_owned()])
    );
    let net = set.network.clone().unwrap_or_default();
    assert_eq!(net.len(), 1);
    assert_eq!(net[0].protocol, "tcp");
    assert_eq!(net[0].port, Some(443));

    let all = decode(&v, "r", &ObligationKind::ALL.into_iter().collect()).unwrap();
    assert!(all.decision.allow, "{:?}", all.decision);
    assert!(all.decision.obligations.unknown.is_empty());
}

#[test]
fn null_and_empty_obligations_are_absent() {
    let d = from_value(
        &json!({"allow": true, "obligations": {"profile": "default", "require_approval": null, "redact": []}}),
        "r",
    )
    .unwrap();
    assert!(d.allow, "{d:?}");
}

#[test]
fn malformed_obligations_are_errors_that_name_the_expected_shape() {
    for (bad, name) in [
        (json!({"limits": {"pids": -1}}), "limits"),
        (json!({"limits": {"cpus": 1}}), "limits"),
        (json!({"limits": "small"}), "limits"),
        (
            json!({"require_approval": {"roles": [], "reason": "x"}}),
            "require_approval",
        ),
        (
            json!({"require_approval": {"roles": ["a"]}}),
            "require_approval",
        ),
        (json!({"redact": "x"}), "redact"),
        (json!({"redact": ["("]}), "redact"),
        (
            json!({"network": [{"host": "h", "port": 70000}]}),
            "network",
        ),
        (
            json!({"network": [{"host": "h", "protocol": "icmp"}]}),
            "network",
        ),
        (json!({"profile": 3}), "profile"),
    ] {
        let err = from_value(&json!({"allow": true, "obligations": bad}), "r").unwrap_err();
        assert!(
            err.contains(&format!("obligations.{name} is")) && err.contains("expected"),
            "{err}"
        );
    }
    let err = from_value(&json!([]), "r").unwrap_err();
    assert!(err.contains(r#"{"allow": bool"#), "{err}");
}

#[test]
fn deny_does_not_collect_reasons_for_unenforced_obligations() {
    let d = from_value(
        &json!({"allow": false, "deny_reasons": ["no"], "obligations": {"limits": {}}}),
        "r",
    )
    .unwrap();
    assert_eq!(d.deny_reasons, vec!["no"]);
}

#[test]
fn depth_is_measured_without_deep_recursion() {
    use crate::engine::depth_exceeds;
    assert!(!depth_exceeds(&json!(1), 0));
    assert!(!depth_exceeds(&json!({"a": [1]}), 2));
    assert!(depth_exceeds(&json!({"a": [[1]]}), 2));
    // 100 000 levels: a recursive walk would overflow the stack.
    let mut deep = json!(0);
    for _ in 0..100_000 {
        deep = serde_json::Value::Array(vec![deep]);
    }
    assert!(depth_exceeds(&deep, 32));
    // serde_json's own drop is recursive: leak the value instead of
    // dropping 100 000 levels on a test thread's small stack.
    std::mem::forget(deep);
}

#[test]
fn masking_follows_pointers_with_wildcards_and_escapes() {
    use crate::mask::{MASKED, masked_value};
    let doc = json!({
        "request": {"metadata": {"a/b": "x", "c~d": "y", "keep": "z"}, "args": ["1", "2"]},
        "principal": {"id": "alice"},
    });
    let out = masked_value(
        doc.clone(),
        &[
            "/request/metadata/a~1b".into(),
            "/request/metadata/c~0d".into(),
            "/request/args/*".into(),
            "/missing/x".into(),
            "not-a-pointer".into(),
        ],
        &[],
    );
    assert_eq!(out["request"]["metadata"]["a/b"], MASKED);
    assert_eq!(out["request"]["metadata"]["c~d"], MASKED);
    assert_eq!(out["request"]["metadata"]["keep"], "z");
    assert_eq!(out["request"]["args"], json!([MASKED, MASKED]));
    assert_eq!(out["principal"]["id"], "alice");
    assert_eq!(masked_value(doc, &["".into()], &[]), json!(MASKED));
}

#[test]
fn built_in_redaction_catches_common_secrets() {
    use crate::mask::{built_in_rule_count, redact_str};
    assert_eq!(
        built_in_rule_count(),
        mcp_core::redact::BUILT_IN.len(),
        "a built-in pattern does not compile"
    );
    for (raw, want) in [
        ("--password=hunter2", "--password=<masked>"),
        ("DB_TOKEN: abc123", "DB_TOKEN: <masked>"),
        (
            "Authorization: Bearer eyJhbGciOi.x.y",
            "Authorization: <masked>",
        ),
        ("curl -H 'bearer abc.def'", "curl -H 'Bearer <masked>'"),
        (
            "https://bob:s3cret@example.com/x",
            "https://bob:<masked>@example.com/x",
        ),
        ("AKIAABCDEFGHIJKLMNOP", "<masked>"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "<masked>"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "<masked>",
        ),
    ] {
        assert_eq!(redact_str(raw, &[]).as_deref(), Some(want), "{raw}");
    }
    assert_eq!(redact_str("ls -la /workspace", &[]), None);
    let extra = [regex::Regex::new("sk-[a-z0-9]+").unwrap()];
    assert_eq!(
        redact_str("key sk-abc1 here", &extra).as_deref(),
        Some("key <masked> here")
    );
}

/// The direct serialiser must build exactly the value the JSON text route
/// builds (what the engine used before, and what `policy eval` still reads).
#[test]
fn input_serialised_into_a_rego_value_equals_the_json_route() {
    use std::collections::BTreeMap;

    use mcp_core::{ExecRequest, FileOp, FileRequest, Principal, RequestLimits};

    use crate::input::{McpToolInput, NetworkInput, PolicyInput, RequestContext};

    let ctx = RequestContext {
        time: "2025-06-01T12:00:00Z".to_owned(),
        source: None,
        request_id: "r1".to_owned(),
    };
    let mut exec = ExecRequest {
        command: "ls".to_owned(),
        args: vec!["-la".to_owned(), "sr\"c\u{e9}".to_owned()],
        env: BTreeMap::from([("LANG".to_owned(), "C".to_owned())]),
        metadata: BTreeMap::from([("ticket".to_owned(), "OPS-1".to_owned())]),
        ..Default::default()
    };
    exec.sandbox.limits.cpu_limit = 0.1;
    exec.sandbox.limits.memory_bytes = u64::MAX;
    let exec = exec.validate(&RequestLimits::default()).unwrap();
    let file = FileRequest {
        path: "a/b.txt".to_owned(),
        op: FileOp::Delete,
        content_len: 0,
        mode: 0o640,
        recursive: true,
    }
    .validate(&RequestLimits::default())
    .unwrap();
    let p = Principal::anonymous();
    let inputs = [
        PolicyInput::command(&p, &exec, Some("/usr/bin/ls"), &ctx)
            .with_environment(&BTreeMap::from([("env".to_owned(), "prod".to_owned())]))
            .with_trace_id(Some("0af7651916cd43dd8448eb211c80319c".to_owned())),
        PolicyInput::command(&p, &exec, None, &ctx),
        PolicyInput::file(&p, &file, &ctx),
        PolicyInput::network(
            &p,
            NetworkInput {
                host: "example.com".to_owned(),
                port: 443,
                protocol: "tcp".to_owned(),
                resolved_ips: vec!["93.184.216.34".to_owned()],
                addresses: Vec::new(),
            },
            &ctx,
        ),
        PolicyInput::mcp_tool(
            &p,
            McpToolInput {
                server: "gh".to_owned(),
                name: "create_issue".to_owned(),
                arguments: json!({"n": -3, "f": 2.5, "big": 18446744073709551615u64,
                    "z": null, "b": [true, false, {"x": []}], "s": "\u{1f600}"}),
            },
            &ctx,
        ),
    ];
    for input in &inputs {
        let direct = crate::rego_value::to_rego(input).unwrap();
        let text = serde_json::to_string(input).unwrap();
        let parsed = regorus::Value::from_json_str(&text).unwrap();
        assert_eq!(direct, parsed, "{text}");
    }
}
