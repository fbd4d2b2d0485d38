//! The conflict corpus: evaluations OPA refuses (`eval_conflict_error`, and
//! builtin errors under `--strict-builtin-errors`) must fail closed here too,
//! on the bytecode VM that decides requests and on the interpreter that
//! `policy test`, `policy eval --explain` and sets the VM refuses use.
//!
//! The cases follow the classes OPA's own conformance suite covers
//! (`v1/test/cases/testdata/v1/`: complete documents, functions, partial
//! object and set documents, `else` chains, `default`, `with`), written
//! against the engine exactly as the gateway uses it. Each case defines
//! `result` in package `mcp`; a harness turns it into a decision whose
//! warning is `json.marshal(result)` (or `"undefined"`), so a case can
//! expect a value, undefined, a conflict or an error. The traps are the
//! cases where a conflict or an error would otherwise read as undefined:
//! `not x`, a `deny` rule that errors, an obligation that disappears.

use anyhow::{Result, ensure};
use mcp_policy::{FailureKind, PolicyEngine};
use serde_json::{Value, json};

use super::load;
use Expect::{Conflict, Error, Undefined};

/// Turns `result` into the decision's only warning.
const HARNESS: &str = r#"package mcp

default outcome := "undefined"

outcome := json.marshal(result)

decision := {"allow": true, "deny_reasons": [], "warnings": [outcome], "obligations": {"profile": "default"}}
"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// `result` is this JSON value.
    Value(&'static str),
    /// `result` is undefined (and that is no error).
    Undefined,
    /// The evaluation fails closed as a conflict.
    Conflict,
    /// The evaluation fails closed as an error.
    Error,
}

struct Case {
    name: &'static str,
    /// `(file name, text)`; each file starts with `package mcp`.
    files: &'static [(&'static str, &'static str)],
    input: Value,
    expect: Expect,
}

fn case(
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    input: Value,
    expect: Expect,
) -> Case {
    Case {
        name,
        files,
        input,
        expect,
    }
}

fn corpus() -> Vec<Case> {
    const TWO_DEFS: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult := 1 if input.a\nresult := 2 if input.b\n",
    )];
    const TWO_FILES: &[(&str, &str)] = &[
        ("a.rego", "package mcp\nresult := \"a\" if input.a\n"),
        ("b.rego", "package mcp\nresult := \"b\" if input.b\n"),
    ];
    const ITERATED: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult := x if {\n\tsome x in input.xs\n}\n",
    )];
    const WITH_DEFAULT: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\ndefault result := 0\nresult := 1 if input.a\nresult := 2 if input.b\n",
    )];
    const ELSE_CHAIN: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult := 1 if input.a\nelse := 2\nresult := 3 if input.b\n",
    )];
    const NOT_OVER_CONFLICT: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nx := 1 if input.a\nx := 2 if input.b\nresult := \"no x\" if not x\nresult := \"x\" if x\n",
    )];
    const COMPARE_CONFLICT: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nx := 1 if input.a\nx := 2 if input.b\ndefault result := false\nresult := true if x < 5\n",
    )];
    const FUNCTION_TWO_DEFS: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nf(n) := \"positive\" if n > 0\nf(n) := \"big\" if n > 10\nresult := f(input.n)\n",
    )];
    const FUNCTION_ITERATED: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nf(xs) := x if {\n\tsome x in xs\n}\nresult := f(input.xs)\n",
    )];
    const FUNCTION_NOT: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nf(n) := true if n > 0\nf(n) := false if n > 10\nresult := \"not f\" if not f(input.n)\n",
    )];
    const PARTIAL_OBJECT: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult[\"k\"] := 1 if input.a\nresult[\"k\"] := 2 if input.b\n",
    )];
    const PARTIAL_OBJECT_ITERATED: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult[k] := v if {\n\tsome pair in input.pairs\n\tk := pair[0]\n\tv := pair[1]\n}\n",
    )];
    const NESTED_REF: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult.a.b := 1 if input.a\nresult.a.b := 2 if input.b\n",
    )];
    const OBJECT_COMPREHENSION: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult := {k: v | some pair in input.pairs; k := pair[0]; v := pair[1]}\n",
    )];
    const PARTIAL_SET: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult contains 1 if input.a\nresult contains 2 if input.b\n",
    )];
    const WITH_INPUT: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nx := 1 if input.a\nx := 2 if input.b\nresult := y if {\n\ty := x with input as {\"a\": true, \"b\": input.b}\n}\n",
    )];
    const DENY_TO_NUMBER: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\ndeny contains \"too many\" if to_number(input.count) > 10\nresult := count(deny) == 0\n",
    )];
    const BAD_REGEX: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\ndeny contains \"matched\" if regex.match(input.re, \"x\")\nresult := count(deny) == 0\n",
    )];
    const ARITHMETIC: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\ndeny contains \"over\" if input.n + 1 > 3\nresult := count(deny) == 0\n",
    )];
    const NOT_OVER_ERROR: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nsafe if startswith(input.s, \"/usr/\")\nresult := \"unsafe\" if not safe\ndefault result := \"safe\"\n",
    )];
    const ERROR_IN_FUNCTION: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nparse(s) := to_number(s)\nresult := parse(input.s)\n",
    )];
    const ERROR_IN_PARTIAL_SET: &[(&str, &str)] = &[(
        "p.rego",
        "package mcp\nresult contains to_number(s) if some s in input.xs\n",
    )];
    const UNDEFINED_REF: &[(&str, &str)] =
        &[("p.rego", "package mcp\nresult := input.missing.deeper\n")];

    vec![
        // Complete documents.
        case(
            "complete rule, two definitions disagree",
            TWO_DEFS,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        case(
            "complete rule, one definition applies",
            TWO_DEFS,
            json!({"a": true}),
            Expect::Value("1"),
        ),
        case(
            "complete rule, no definition applies",
            TWO_DEFS,
            json!({}),
            Undefined,
        ),
        case(
            "complete rule, definitions in two files disagree",
            TWO_FILES,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        case(
            "complete rule, one body yields two values",
            ITERATED,
            json!({"xs": [1, 2]}),
            Conflict,
        ),
        case(
            "complete rule, one body yields one value twice",
            ITERATED,
            json!({"xs": [7, 7]}),
            Expect::Value("7"),
        ),
        case(
            "default does not conflict with a definition",
            WITH_DEFAULT,
            json!({"a": true}),
            Expect::Value("1"),
        ),
        case(
            "default does not hide a conflict",
            WITH_DEFAULT,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        case(
            "default applies when nothing else does",
            WITH_DEFAULT,
            json!({}),
            Expect::Value("0"),
        ),
        // else chains: the chain gives one value; another definition may
        // still disagree with it.
        case(
            "else value conflicts with another definition",
            ELSE_CHAIN,
            json!({"a": false, "b": true}),
            Conflict,
        ),
        case(
            "else chain alone",
            ELSE_CHAIN,
            json!({"a": true}),
            Expect::Value("1"),
        ),
        case(
            "else branch alone",
            ELSE_CHAIN,
            json!({}),
            Expect::Value("2"),
        ),
        // Undefined-versus-false traps.
        case(
            "not over a conflicted rule",
            NOT_OVER_CONFLICT,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        case(
            "not over an undefined rule",
            NOT_OVER_CONFLICT,
            json!({}),
            Expect::Value("\"no x\""),
        ),
        case(
            "comparison over a conflicted rule",
            COMPARE_CONFLICT,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        // Functions.
        case(
            "function, two definitions disagree for one argument",
            FUNCTION_TWO_DEFS,
            json!({"n": 20}),
            Conflict,
        ),
        case(
            "function, one definition applies",
            FUNCTION_TWO_DEFS,
            json!({"n": 5}),
            Expect::Value("\"positive\""),
        ),
        case(
            "function, one body yields two values",
            FUNCTION_ITERATED,
            json!({"xs": ["a", "b"]}),
            Conflict,
        ),
        case(
            "not over a conflicted function",
            FUNCTION_NOT,
            json!({"n": 20}),
            Conflict,
        ),
        // Partial objects and sets.
        case(
            "partial object, one key two values",
            PARTIAL_OBJECT,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        case(
            "partial object, one key",
            PARTIAL_OBJECT,
            json!({"b": true}),
            Expect::Value("{\"k\":2}"),
        ),
        case(
            "partial object, one key two values by iteration",
            PARTIAL_OBJECT_ITERATED,
            json!({"pairs": [["k", 1], ["k", 2]]}),
            Conflict,
        ),
        case(
            "partial object, one key one value twice",
            PARTIAL_OBJECT_ITERATED,
            json!({"pairs": [["k", 1], ["k", 1], ["j", 2]]}),
            Expect::Value("{\"j\":2,\"k\":1}"),
        ),
        case(
            "nested rule ref, two definitions disagree",
            NESTED_REF,
            json!({"a": true, "b": true}),
            Conflict,
        ),
        case(
            "object comprehension, one key two values",
            OBJECT_COMPREHENSION,
            json!({"pairs": [["k", 1], ["k", 2]]}),
            Conflict,
        ),
        case(
            "partial set never conflicts",
            PARTIAL_SET,
            json!({"a": true, "b": true}),
            Expect::Value("[1,2]"),
        ),
        // with
        case(
            "conflict that only arises under with",
            WITH_INPUT,
            json!({"b": true}),
            Conflict,
        ),
        case(
            "with that keeps the rule consistent",
            WITH_INPUT,
            json!({"b": false}),
            Expect::Value("1"),
        ),
        // Builtin errors (strict): a deny rule that errors must not simply
        // not deny.
        case(
            "deny over to_number of a non-number",
            DENY_TO_NUMBER,
            json!({"count": "abc"}),
            Error,
        ),
        case(
            "deny over to_number of a number",
            DENY_TO_NUMBER,
            json!({"count": "12"}),
            Expect::Value("false"),
        ),
        case(
            "deny over a bad regular expression",
            BAD_REGEX,
            json!({"re": "("}),
            Error,
        ),
        case(
            "deny over arithmetic on a string",
            ARITHMETIC,
            json!({"n": "two"}),
            Error,
        ),
        case(
            "not over a builtin type error",
            NOT_OVER_ERROR,
            json!({"s": 42}),
            Error,
        ),
        case(
            "not over a builtin that succeeds",
            NOT_OVER_ERROR,
            json!({"s": "/tmp/x"}),
            Expect::Value("\"unsafe\""),
        ),
        case(
            "error inside a function",
            ERROR_IN_FUNCTION,
            json!({"s": "abc"}),
            Error,
        ),
        case(
            "error inside a partial set",
            ERROR_IN_PARTIAL_SET,
            json!({"xs": ["1", "z"]}),
            Error,
        ),
        case(
            "an undefined reference is not an error",
            UNDEFINED_REF,
            json!({"missing": "flat"}),
            Undefined,
        ),
    ]
}

/// What one evaluation path made of a case, or why it is wrong.
fn check(name: &str, path: &str, ev: &mcp_policy::Evaluated, expect: Expect) -> Result<()> {
    let d = &ev.decision;
    match expect {
        Expect::Value(_) | Undefined => {
            let want = match expect {
                Expect::Value(v) => v,
                _ => "undefined",
            };
            ensure!(
                ev.failure.is_none() && d.allow && d.warnings == vec![want.to_owned()],
                "{name} ({path}): expected {want}, got {d:?} failure {:?}",
                ev.failure
            );
        }
        Conflict | Error => {
            let kind = if expect == Conflict {
                FailureKind::Conflict
            } else {
                FailureKind::Error
            };
            let failure = ev.failure.as_ref().map(|f| f.kind);
            ensure!(
                !d.allow && failure == Some(kind),
                "{name} ({path}): expected a {kind} failure, got {d:?} failure {:?}",
                ev.failure
            );
            let reason = d.deny_reasons.join("; ");
            ensure!(
                reason.starts_with("policy evaluation failed"),
                "{name} ({path}): reason {reason:?}"
            );
            if kind == FailureKind::Conflict {
                // The reason names the rule's place: file and line, with the
                // policy directory's path left out.
                ensure!(
                    reason.contains("eval_conflict_error") && reason.contains(".rego:"),
                    "{name} ({path}): reason {reason:?} names no conflict and place"
                );
                ensure!(
                    !reason.contains('/'),
                    "{name} ({path}): reason {reason:?} shows a host path"
                );
            }
        }
    }
    Ok(())
}

/// Sets regorus' bytecode compiler refuses, so the gateway decides them on
/// the interpreter: `with` inside a rule, and partial object rules with a
/// constant key (`p["k"] := v`).
fn interpreter_only(files: &[(&str, &str)]) -> bool {
    files
        .iter()
        .any(|(_, t)| t.contains(" with ") || t.contains("[\"k\"] :="))
}

fn engine_for(files: &[(&str, &str)]) -> Result<(tempfile::TempDir, PolicyEngine)> {
    let mut all: Vec<(&str, &str)> = vec![("harness.rego", HARNESS)];
    all.extend_from_slice(files);
    load(&all)
}

#[test]
fn every_conflict_and_error_of_the_corpus_fails_closed_on_both_paths() -> Result<()> {
    let mut failures = Vec::new();
    let corpus = corpus();
    for c in &corpus {
        let (_dir, engine) = engine_for(c.files)?;
        let vm = engine.evaluate_json(&c.input);
        let interpreted = engine.evaluate_json_interpreted(&c.input);
        // `with` in a rule keeps a set off the VM; everything else must be
        // decided there, or this test would check the interpreter twice.
        let vm_path = if engine.compiled() {
            "vm"
        } else {
            "interpreter fallback"
        };
        if !engine.compiled() && !interpreter_only(c.files) {
            failures.push(format!("{}: not compiled to bytecode", c.name));
        }
        for (path, ev) in [(vm_path, &vm), ("interpreter", &interpreted)] {
            if let Err(e) = check(c.name, path, ev, c.expect) {
                failures.push(e.to_string());
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases diverge:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The reduced case of the issue: an obligation chosen by `if x` / `if not
/// x` over a conflicted `x` must not quietly lose the obligation.
#[test]
fn a_conflicted_rule_never_drops_an_obligation() -> Result<()> {
    let policy = r#"package mcp
x := 1 if input.a
x := 2 if input.b
decision := {"allow": true, "deny_reasons": [], "warnings": [], "obligations": {"profile": "default", "require_approval": {"roles": ["ops"], "reason": "x"}}} if x
decision := {"allow": true, "deny_reasons": [], "warnings": [], "obligations": {"profile": "default"}} if not x
"#;
    let (_dir, engine) = load(&[("p.rego", policy)])?;
    ensure!(engine.compiled(), "the reduced case must run on the VM");
    let input = json!({"a": true, "b": true});
    for (path, ev) in [
        ("vm", engine.evaluate_json(&input)),
        ("interpreter", engine.evaluate_json_interpreted(&input)),
    ] {
        ensure!(!ev.decision.allow, "{path}: {:?}", ev.decision);
        ensure!(
            ev.failure.as_ref().map(|f| f.kind) == Some(FailureKind::Conflict),
            "{path}: {:?}",
            ev.failure
        );
        let reason = ev.decision.deny_reasons.join("; ");
        // The VM names the rule by path (data.mcp.x), the interpreter as
        // written (rule x); both give the places of the two definitions.
        ensure!(
            (reason.contains("data.mcp.x") || reason.contains("rule x"))
                && reason.contains("p.rego:2")
                && reason.contains("p.rego:3"),
            "{path}: the reason must name the rule and its line: {reason}"
        );
    }
    // One definition alone still carries the obligation.
    let ev = engine.evaluate_json(&json!({"a": true}));
    ensure!(ev.obligations.require_approval.is_some(), "{ev:?}");
    Ok(())
}

// ---- the shipped policies, extended as a security team would -----------

/// A copy of the shipped policies (tests left out) plus `extra` files, with
/// tenant `tenant-s` whose principal `alice` may run any command and whose
/// `read` scope needs an approval by `lead`.
fn shipped_plus(extra: &[(&str, &str)]) -> Result<(tempfile::TempDir, PolicyEngine)> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(super::policies_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            std::fs::copy(&path, dir.path().join(name))?;
        }
    }
    let mut data: Value = serde_json::from_str(&std::fs::read_to_string(
        super::policies_dir().join("data.json"),
    )?)?;
    data["tenants"]["tenant-s"] = json!({
        "enabled": true,
        "projects": {"default": {"enabled": true}},
        "principals": {"alice": {"active": true, "grants": [
            {"tools": ["command:*"], "scope": "write", "expires": null}
        ]}},
        "approval": {"scopes": ["read"], "roles": ["lead"]},
        "network": {"allow": []}
    });
    std::fs::write(dir.path().join("data.json"), data.to_string())?;
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text)?;
    }
    // Enforcing every obligation, as the gateway does.
    let options = mcp_policy::EngineOptions {
        enforced: mcp_policy::ObligationKind::ALL.into_iter().collect(),
        ..Default::default()
    };
    let engine = PolicyEngine::load_with(dir.path(), options)?;
    Ok((dir, engine))
}

fn sleep_input() -> Result<Value> {
    let principal = mcp_core::Principal {
        id: "alice".to_owned(),
        tenant: "tenant-s".to_owned(),
        roles: Vec::new(),
        auth: mcp_core::AuthMethod::ApiKey,
    };
    let mut req = super::exec("sleep", &["1"]);
    req.metadata.insert("count".to_owned(), "abc".to_owned());
    let valid = req.validate(&mcp_core::RequestLimits::default())?;
    let input =
        mcp_policy::PolicyInput::command(&principal, &valid, Some("/usr/bin/sleep"), &super::ctx());
    Ok(serde_json::to_value(input)?)
}

/// The issue's second policy file, as written: the older complete-rule
/// form, beside the tenant's own approval scope. Both demands must reach
/// the obligation; before, the two definitions of `approval` disagreed,
/// regorus left it undefined and `sleep` ran with no approval at all.
const OPS_APPROVAL_COMPLETE: &str = r#"package mcp
approval := {"roles": ["ops"], "reason": "sleep needs an ops approval"} if {
	not gate_failure
	input.request.kind == "command"
	binary == "sleep"
	input.principal.tenant in {"tenant-s", "tenant-x"}
}
"#;

/// The same demand in the composable form policies/README.md documents.
const OPS_APPROVAL: &str = r#"package mcp
approvals contains {"roles": ["ops"], "reason": "sleep needs an ops approval"} if {
	not gate_failure
	input.request.kind == "command"
	binary == "sleep"
}
"#;

const SECURITY_APPROVAL: &str = r#"package mcp
approvals contains {"roles": ["security"], "reason": "every command of tenant-s needs security"} if {
	input.request.kind == "command"
	input.principal.tenant == "tenant-s"
}
"#;

#[test]
fn two_files_adding_approval_requirements_both_take_effect() -> Result<()> {
    for (label, files) in [
        ("composable form", vec![("ops.rego", OPS_APPROVAL)]),
        (
            "older complete form",
            vec![("ops.rego", OPS_APPROVAL_COMPLETE)],
        ),
        (
            "three demands",
            vec![
                ("ops.rego", OPS_APPROVAL),
                ("security.rego", SECURITY_APPROVAL),
            ],
        ),
    ] {
        let (_dir, engine) = shipped_plus(&files)?;
        ensure!(
            engine.compiled(),
            "{label}: the shipped set must run on the VM"
        );
        let input = sleep_input()?;
        for (path, ev) in [
            ("vm", engine.evaluate_json(&input)),
            ("interpreter", engine.evaluate_json_interpreted(&input)),
        ] {
            ensure!(
                ev.decision.allow,
                "{label} ({path}): {:?} {:?}",
                ev.decision,
                ev.failure
            );
            let approval = ev
                .obligations
                .require_approval
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{label} ({path}): no approval obligation"))?;
            let mut demanded: Vec<Vec<String>> = approval
                .requirements
                .iter()
                .map(|r| r.roles.clone())
                .collect();
            demanded.sort();
            let mut want = vec![vec!["lead".to_owned()], vec!["ops".to_owned()]];
            if files.len() == 2 {
                want.push(vec!["security".to_owned()]);
            }
            want.sort();
            ensure!(
                demanded == want,
                "{label} ({path}): requirements {demanded:?}"
            );
            for role in want.iter().flatten() {
                ensure!(
                    approval.roles.contains(role),
                    "{label} ({path}): roles {:?}",
                    approval.roles
                );
            }
        }
    }
    Ok(())
}

/// Two files in the older form that disagree cannot both be honoured in
/// one complete rule: the decision fails closed instead of running
/// unapproved.
#[test]
fn two_files_setting_approval_as_a_complete_rule_fail_closed() -> Result<()> {
    let other = OPS_APPROVAL_COMPLETE.replace("[\"ops\"]", "[\"sre\"]");
    let (_dir, engine) =
        shipped_plus(&[("ops.rego", OPS_APPROVAL_COMPLETE), ("sre.rego", &other)])?;
    let input = sleep_input()?;
    for ev in [
        engine.evaluate_json(&input),
        engine.evaluate_json_interpreted(&input),
    ] {
        ensure!(!ev.decision.allow, "{:?}", ev.decision);
        ensure!(
            ev.failure.as_ref().map(|f| f.kind) == Some(FailureKind::Conflict),
            "{:?}",
            ev.failure
        );
    }
    Ok(())
}

/// A deny rule whose builtin fails denies the request rather than not
/// denying it.
#[test]
fn an_erroring_deny_rule_in_the_shipped_set_fails_closed() -> Result<()> {
    let extra = r#"package mcp
deny contains "too many" if to_number(input.request.metadata.count) > 10
"#;
    let (_dir, engine) = shipped_plus(&[("count.rego", extra)])?;
    let input = sleep_input()?;
    for ev in [
        engine.evaluate_json(&input),
        engine.evaluate_json_interpreted(&input),
    ] {
        ensure!(!ev.decision.allow, "{:?}", ev.decision);
        ensure!(
            ev.failure.as_ref().map(|f| f.kind) == Some(FailureKind::Error),
            "{:?}",
            ev.failure
        );
    }
    // A count that parses is judged by the rule.
    let mut input = input;
    input["request"]["metadata"]["count"] = json!("3");
    let ev = engine.evaluate_json(&input);
    ensure!(
        ev.decision.allow && ev.failure.is_none(),
        "{:?} {:?}",
        ev.decision,
        ev.failure
    );
    Ok(())
}

// ---- policy check's lint ---------------------------------------------------

#[test]
fn lint_warns_about_constant_heads_that_may_conflict_and_only_those() -> Result<()> {
    let ops = r#"package mcp
approval := {"roles": ["ops"], "reason": "sleep"} if input.request.kind == "command"
"#;
    let sre = r#"package mcp
approval := {"roles": ["sre"], "reason": "sleep"} if input.principal.tenant == "t"
"#;
    let dir = super::policy_dir(&[("ops.rego", ops), ("sre.rego", sre)])?;
    let warnings = mcp_policy::lint(dir.path());
    ensure!(warnings.len() == 1, "{warnings:?}");
    let w = &warnings[0];
    ensure!(
        w.message.contains("data.mcp.approval") && w.message.contains("ops.rego:2:1"),
        "{w}"
    );
    ensure!(w.path.ends_with("sre.rego") && w.line == 2, "{w}");

    // Exclusive conditions, equal values, non-constant values: no warning.
    let quiet = r#"package mcp
scope := "read" if input.op == "read"
scope := "write" if input.op != "read"
kind := "a" if input.flag
kind := "b" if not input.flag
level := 1 if input.x == "low"
level := 2 if input.x == "high"
same := true if input.a
same := true if input.b
named := sprintf("%v", [input.a]) if input.a
named := "b" if input.b
"#;
    let dir = super::policy_dir(&[("quiet.rego", quiet)])?;
    let warnings = mcp_policy::lint(dir.path());
    ensure!(warnings.is_empty(), "{warnings:?}");

    // The shipped policies lint clean.
    let warnings = mcp_policy::lint(&super::policies_dir());
    ensure!(warnings.is_empty(), "{warnings:?}");
    Ok(())
}
