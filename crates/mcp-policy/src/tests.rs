use serde_json::json;

use crate::decision::from_value;
use crate::engine::revision;
use crate::testing::{rule_prefix, test_candidates};

#[test]
fn engine_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<crate::PolicyEngine>();
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
