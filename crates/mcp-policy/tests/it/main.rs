//! Integration tests of mcp-policy: the shipped policies evaluated for real
//! through regorus, plus the engine's fail-closed and loading behaviour.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mcp_core::{
    Decision, ExecRequest, FileOp, FileRequest, NetworkAccess, Principal, RequestLimits,
};
use mcp_policy::{
    EngineOptions, FailureKind, InputLimits, MASKED, McpToolInput, ObligationKind, PolicyEngine,
    PolicyError, PolicyInput, PolicyService, RequestContext, ServiceOptions, TestOptions,
};
use serde::Deserialize;
use tempfile::TempDir;

mod bundle;
mod conflicts;

fn policies_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    // Canonical, so failure messages show a readable path.
    dir.canonicalize().unwrap_or(dir)
}

fn ctx() -> RequestContext {
    RequestContext {
        time: "2025-06-01T12:00:00Z".to_owned(),
        source: Some("127.0.0.1:40000".to_owned()),
        request_id: "req-it".to_owned(),
    }
}

fn exec(command: &str, args: &[&str]) -> ExecRequest {
    ExecRequest {
        command: command.to_owned(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn command_input(req: ExecRequest, resolved: Option<&str>) -> Result<PolicyInput> {
    let valid = req.validate(&RequestLimits::default())?;
    Ok(PolicyInput::command(
        &Principal::anonymous(),
        &valid,
        resolved,
        &ctx(),
    ))
}

fn ls_input() -> Result<PolicyInput> {
    command_input(exec("ls", &["-la"]), Some("/usr/bin/ls"))
}

/// A temporary policy directory holding `files`.
fn policy_dir(files: &[(&str, &str)]) -> Result<TempDir> {
    let dir = tempfile::tempdir()?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

fn load(files: &[(&str, &str)]) -> Result<(TempDir, PolicyEngine)> {
    let dir = policy_dir(files)?;
    let engine = PolicyEngine::load(dir.path())?;
    Ok((dir, engine))
}

fn assert_failed_closed(d: &Decision, engine: &PolicyEngine) {
    assert!(!d.allow, "{d:?}");
    assert_eq!(d.deny_reasons, vec!["policy evaluation failed".to_owned()]);
    assert_eq!(d.obligations, Default::default());
    assert_eq!(d.policy_revision, engine.revision());
}

// ---- the shipped policies ----------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    input: PolicyInput,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    allow: bool,
    deny_reasons_contain: Vec<String>,
    profile: Option<String>,
}

fn check_case(engine: &PolicyEngine, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let case: Case = serde_json::from_str(&text).context("case file does not parse")?;
    let d = engine.decide(&case.input);
    let ctx = || format!("{}: got {d:?}", case.description);

    ensure!(d.allow == case.expect.allow, "allow differs; {}", ctx());
    ensure!(
        d.obligations.profile == case.expect.profile,
        "profile differs; {}",
        ctx()
    );
    ensure!(
        d.obligations.unknown.is_empty(),
        "unknown obligations; {}",
        ctx()
    );
    ensure!(
        d.policy_revision == engine.revision(),
        "revision; {}",
        ctx()
    );
    if case.expect.allow {
        ensure!(d.deny_reasons.is_empty(), "allowed with reasons; {}", ctx());
    } else {
        // A deny case must name its reason, or it would also pass when the
        // engine merely failed closed.
        ensure!(
            !case.expect.deny_reasons_contain.is_empty(),
            "deny case names no expected reason"
        );
    }
    for want in &case.expect.deny_reasons_contain {
        ensure!(
            d.deny_reasons.iter().any(|r| r.contains(want.as_str())),
            "no deny reason contains {want:?}; {}",
            ctx()
        );
    }
    Ok(())
}

#[test]
fn every_policy_case_file_gets_its_expected_decision() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(policies_dir().join("cases"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();

    let failures: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            check_case(&engine, p)
                .err()
                .map(|e| format!("{}: {e:#}", p.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
    assert!(paths.len() >= 15, "only {} case files", paths.len());
    Ok(())
}

/// Requests are decided on regorus' bytecode VM; `policy test` and
/// `--explain` run the interpreter. Both must agree on every case, mask
/// included, or a policy tested green could decide differently live.
#[test]
fn bytecode_vm_and_interpreter_agree_on_every_case() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    assert!(engine.compiled(), "the shipped policies must run on the VM");
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(policies_dir().join("cases"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            inputs.push((path.display().to_string(), case["input"].clone()));
        }
    }
    // The mask rule's inputs: a secret-looking metadata key, an MCP tool
    // call, and a kind no policy handles.
    let mut secret = serde_json::to_value(ls_input()?)?;
    secret["request"]["metadata"] = serde_json::json!({"api_token": "x", "ticket": "OPS-1"});
    inputs.push(("metadata secret".to_owned(), secret));
    let mut tool = serde_json::to_value(ls_input()?)?;
    tool["request"]["kind"] = "mcp_tool".into();
    tool["request"]["mcp_tool"] =
        serde_json::json!({"server": "gh", "name": "create_issue", "arguments": {"a": 1}});
    inputs.push(("mcp tool".to_owned(), tool));
    let mut odd = serde_json::to_value(ls_input()?)?;
    odd["request"]["kind"] = "teleport".into();
    inputs.push(("unknown kind".to_owned(), odd));

    for (name, input) in &inputs {
        let vm = engine.evaluate_json(input);
        let interpreted = engine.evaluate_json_interpreted(input);
        assert_eq!(vm.failure, None, "{name}");
        assert_eq!(vm.decision, interpreted.decision, "{name}");
        assert_eq!(vm.obligations, interpreted.obligations, "{name}");
        assert_eq!(vm.mask, interpreted.mask, "{name}");
    }
    assert!(inputs.len() >= 18);
    assert!(
        inputs
            .iter()
            .any(|(_, i)| !engine.evaluate_json(i).mask.is_empty()),
        "no input exercised the mask"
    );
    Ok(())
}

/// A set the VM compiler does not accept (`with` in a policy rule) is
/// still loaded and decided, on the interpreter.
#[test]
fn a_set_the_vm_cannot_compile_is_decided_on_the_interpreter() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        r#"package mcp
allowed if input.request.kind == "file"
decision := {"allow": a, "deny_reasons": [], "warnings": [], "obligations": {}} if {
    a := allowed with input.request.kind as "file"
}"#,
    )])?;
    assert!(!engine.compiled());
    let d = engine.decide(&ls_input()?);
    assert!(d.allow, "{d:?}");
    Ok(())
}

#[test]
fn every_rego_unit_test_passes() -> Result<()> {
    let outcomes = PolicyEngine::run_tests(&policies_dir())?;
    assert!(!outcomes.is_empty(), "no test_* rules found");
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "failing Rego tests: {failed:#?}");
    // Each policy file has tests beside it.
    for prefix in [
        "test_listed_command",
        "test_ordinary_files",
        "test_unknown_request_kind",
    ] {
        assert!(
            outcomes.iter().any(|o| o.name.starts_with(prefix)),
            "{prefix}* missing"
        );
    }
    Ok(())
}

#[test]
fn command_input_built_from_a_validated_request_is_allowed() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    let d = engine.decide(&ls_input()?);
    assert!(d.allow, "{d:?}");
    assert_eq!(d.obligations.profile.as_deref(), Some("default"));
    assert!(d.deny_reasons.is_empty());

    let mut req = exec("ls", &[]);
    req.sandbox.network = NetworkAccess::Host;
    let d = engine.decide(&command_input(req, Some("/usr/bin/ls"))?);
    assert!(!d.allow);
    assert_eq!(
        d.deny_reasons,
        vec![r#"network access "host" is not granted"#]
    );
    Ok(())
}

#[test]
fn file_input_built_from_a_validated_request_is_decided() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    let decide = |path: &str| -> Result<Decision> {
        let req = FileRequest {
            path: path.to_owned(),
            op: FileOp::Read,
            content_len: 0,
            mode: 0,
            recursive: false,
        }
        .validate(&RequestLimits::default())?;
        Ok(engine.decide(&PolicyInput::file(&Principal::anonymous(), &req, &ctx())))
    };
    assert!(decide("/files/docs/readme.md")?.allow);
    let d = decide("app/.env")?;
    assert!(!d.allow);
    assert_eq!(
        d.deny_reasons,
        vec![r#"path "app/.env" looks like a credential file"#]
    );
    Ok(())
}

#[test]
fn input_document_carries_env_names_but_never_values() -> Result<()> {
    let mut req = exec("env", &[]);
    req.env
        .insert("API_TOKEN".to_owned(), "s3cret-value".to_owned());
    let input = command_input(req, Some("/usr/bin/env"))?;
    let json = serde_json::to_value(&input)?;
    assert_eq!(
        json["request"]["command"]["env_names"],
        serde_json::json!(["API_TOKEN"])
    );
    assert_eq!(json["request"]["kind"], "command");
    assert_eq!(json["request"]["command"]["resolved_path"], "/usr/bin/env");
    assert_eq!(json["request"]["sandbox"]["network"], "none");
    assert_eq!(json["principal"]["auth"], "none");
    assert_eq!(json["context"]["request_id"], "req-it");
    assert!(!json.to_string().contains("s3cret-value"));
    Ok(())
}

#[test]
fn decide_is_safe_from_many_threads_on_one_engine() -> Result<()> {
    let engine = Arc::new(PolicyEngine::load(&policies_dir())?);
    let allowed = ls_input()?;
    let denied = command_input(exec("rm", &["-rf", "/"]), Some("/usr/bin/rm"))?;
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let (allowed, denied) = (allowed.clone(), denied.clone());
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let want = (i + t) % 2 == 0;
                        let d = engine.decide(if want { &allowed } else { &denied });
                        d.allow == want
                    })
                    .filter(|ok| *ok)
                    .count()
            })
        })
        .collect();
    for h in handles {
        let correct = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?;
        assert_eq!(correct, 50);
    }
    Ok(())
}

// ---- loading ------------------------------------------------------------

#[test]
fn parse_error_names_the_file_and_line() -> Result<()> {
    let dir = policy_dir(&[
        ("good.rego", "package mcp\n\nx := 1\n"),
        (
            "broken.rego",
            "package mcp\n\nallow if {\n\tinput.x ==\n}\n",
        ),
    ])?;
    match PolicyEngine::load(dir.path()) {
        Err(PolicyError::Parse { path, message }) => {
            assert_eq!(path, dir.path().join("broken.rego"));
            assert!(message.contains("broken.rego:5:"), "{message}");
            let shown = PolicyError::Parse { path, message }.to_string();
            assert!(shown.contains("broken.rego"), "{shown}");
        }
        other => bail!("expected a parse error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn analysis_error_is_reported_at_load_with_file_and_line() -> Result<()> {
    // `y` is never bound: an unsafe variable, found by analysis, not parsing.
    let dir = policy_dir(&[("unsafe.rego", "package mcp\n\nallow if {\n\ty > 1\n}\n")])?;
    match PolicyEngine::load(dir.path()) {
        Err(PolicyError::Compile { dir: d, message }) => {
            assert_eq!(d, dir.path());
            assert!(message.contains("unsafe.rego:4:"), "{message}");
        }
        other => bail!("expected a compile error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn directory_without_policies_is_refused() -> Result<()> {
    let dir = policy_dir(&[
        ("only_test.rego", "package mcp_test\n\ntest_x if true\n"),
        ("notes.txt", "not a policy"),
    ])?;
    assert!(matches!(
        PolicyEngine::load(dir.path()),
        Err(PolicyError::NoPolicies { .. })
    ));
    let missing = dir.path().join("missing");
    assert!(matches!(
        PolicyEngine::load(&missing),
        Err(PolicyError::Read { path, .. }) if path == missing
    ));
    Ok(())
}

#[test]
fn test_files_are_not_loaded_for_decisions() -> Result<()> {
    // A *_test.rego that would break the decision must not be loaded by `load`.
    let (_dir, engine) = load(&[
        (
            "main.rego",
            "package mcp\n\ndecision := {\"allow\": true}\n",
        ),
        (
            "main_test.rego",
            "package mcp\n\ndecision := {\"allow\": false}\n",
        ),
    ])?;
    assert!(engine.decide(&ls_input()?).allow);
    Ok(())
}

#[test]
fn data_json_is_loaded_beside_the_policies() -> Result<()> {
    let (_dir, engine) = load(&[
        (
            "main.rego",
            "package mcp\n\ndecision := {\"allow\": input.request.command.name in data.trusted}\n",
        ),
        ("data.json", r#"{"trusted": ["ls"]}"#),
    ])?;
    assert!(engine.decide(&ls_input()?).allow);
    let bad = policy_dir(&[("main.rego", "package mcp\n"), ("data.json", "[1, 2]")])?;
    assert!(matches!(
        PolicyEngine::load(bad.path()),
        Err(PolicyError::Data { .. })
    ));
    Ok(())
}

#[test]
fn revision_is_stable_and_follows_the_content() -> Result<()> {
    let files = [
        ("a.rego", "package mcp\n\nx := 1\n"),
        ("b.rego", "package mcp\n\ndecision := {\"allow\": false}\n"),
    ];
    let (_d1, e1) = load(&files)?;
    let (_d2, e2) = load(&files)?;
    assert_eq!(e1.revision(), e2.revision());
    assert_eq!(e1.revision().len(), 12);
    assert!(e1.revision().chars().all(|c| c.is_ascii_hexdigit()));

    let (_d3, e3) = load(&[
        files[0],
        ("b.rego", "package mcp\n\ndecision := {\"allow\": true}\n"),
    ])?;
    assert_ne!(e1.revision(), e3.revision());
    // Renaming a file changes the revision too.
    let (_d4, e4) = load(&[("c.rego", files[0].1), files[1]])?;
    assert_ne!(e1.revision(), e4.revision());
    // So does data.
    let (_d5, e5) = load(&[files[0], files[1], ("data.json", "{}")])?;
    assert_ne!(e1.revision(), e5.revision());
    Ok(())
}

// ---- failing closed -----------------------------------------------------

#[test]
fn allow_that_is_not_a_boolean_denies() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        "package mcp\n\ndecision := {\"allow\": \"true\", \"deny_reasons\": []}\n",
    )])?;
    assert_failed_closed(&engine.decide(&ls_input()?), &engine);
    Ok(())
}

#[test]
fn missing_decision_rule_denies() -> Result<()> {
    let (_dir, engine) = load(&[("main.rego", "package mcp\n\nallow := true\n")])?;
    assert_failed_closed(&engine.decide(&ls_input()?), &engine);
    Ok(())
}

#[test]
fn undefined_decision_denies() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        "package mcp\n\ndecision := {\"allow\": true} if input.never\n",
    )])?;
    assert_failed_closed(&engine.decide(&ls_input()?), &engine);
    Ok(())
}

#[test]
fn allow_with_deny_reasons_denies() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        "package mcp\n\ndecision := {\"allow\": true, \"deny_reasons\": [\"but no\"]}\n",
    )])?;
    assert_failed_closed(&engine.decide(&ls_input()?), &engine);
    Ok(())
}

#[test]
fn evaluation_error_denies() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        "package mcp\n\ndecision := {\"allow\": to_number(\"not a number\") > 0}\n",
    )])?;
    assert_failed_closed(&engine.decide(&ls_input()?), &engine);
    Ok(())
}

#[test]
fn unknown_obligation_is_reported_and_denies() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        r#"package mcp

decision := {
	"allow": true,
	"deny_reasons": [],
	"warnings": ["watched"],
	"obligations": {"profile": "strict", "record_session": true},
}
"#,
    )])?;
    let d = engine.decide(&ls_input()?);
    assert!(!d.allow);
    assert_eq!(d.obligations.unknown, vec!["record_session".to_owned()]);
    assert_eq!(d.obligations.profile.as_deref(), Some("strict"));
    assert_eq!(d.warnings, vec!["watched".to_owned()]);
    assert!(
        d.deny_reasons.iter().any(|r| r.contains("record_session")),
        "{d:?}"
    );
    Ok(())
}

#[test]
fn runaway_policy_is_cut_off_and_denies() -> Result<()> {
    // 2000^3 iterations: hours without a time limit.
    let (_dir, engine) = load(&[(
        "main.rego",
        r#"package mcp

n := numbers.range(1, 2000)

decision := {"allow": count([1 | some a in n; some b in n; some c in n]) > 0}
"#,
    )])?;
    let engine = engine.with_eval_time_limit(Duration::from_millis(50));
    let input = ls_input()?;
    let (tx, rx) = mpsc::channel();
    // The thread is left behind if the limit does not work; the test then
    // fails instead of hanging.
    std::thread::spawn(move || {
        let _ = tx.send(engine.decide(&input));
    });
    let d = rx
        .recv_timeout(Duration::from_secs(60))
        .context("evaluation was not cut off within 60s")?;
    assert!(!d.allow);
    assert_eq!(d.deny_reasons, vec!["policy evaluation failed".to_owned()]);
    Ok(())
}

// ---- Rego test runner ---------------------------------------------------

#[test]
fn run_tests_reports_passes_failures_and_errors() -> Result<()> {
    let dir = policy_dir(&[
        (
            "main.rego",
            "package mcp\n\ndefault allow := false\n\nallow if input.ok\n",
        ),
        (
            "main_test.rego",
            r#"package mcp.tests

test_allows_ok if data.mcp.allow with input as {"ok": true}

test_denies_by_default if not data.mcp.allow

test_wrong_expectation if data.mcp.allow

test_errors if to_number("x") > 0

# Mentions of test_not_a_rule in comments are ignored.
helper := data.mcp.test_not_a_rule
"#,
        ),
    ])?;
    let outcomes = PolicyEngine::run_tests(dir.path())?;
    let names: Vec<_> = outcomes
        .iter()
        .map(|o| (o.package.as_str(), o.name.as_str(), o.passed))
        .collect();
    assert_eq!(
        names,
        vec![
            ("mcp.tests", "test_allows_ok", true),
            ("mcp.tests", "test_denies_by_default", true),
            ("mcp.tests", "test_wrong_expectation", false),
            ("mcp.tests", "test_errors", false),
        ]
    );
    assert_eq!(outcomes[2].error.as_deref(), Some("undefined"));
    assert!(
        outcomes[3]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("to_number")),
        "{:?}",
        outcomes[3].error
    );
    Ok(())
}

#[test]
fn run_tests_reports_broken_test_files_as_load_errors() -> Result<()> {
    let dir = policy_dir(&[
        ("main.rego", "package mcp\n"),
        ("main_test.rego", "package mcp_test\n\ntest_x if {\n"),
    ])?;
    assert!(matches!(
        PolicyEngine::run_tests(dir.path()),
        Err(PolicyError::Parse { path, .. }) if path.ends_with("main_test.rego")
    ));
    Ok(())
}

// ---- evaluation details --------------------------------------------------

#[test]
fn evaluate_reports_revision_latency_and_the_typed_obligations() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    let e = engine.evaluate(&ls_input()?);
    assert!(e.decision.allow, "{:?}", e.decision);
    assert_eq!(e.revision, engine.revision());
    assert_eq!(e.obligations.profile.as_deref(), Some("default"));
    assert!(e.mask.is_empty(), "{:?}", e.mask);
    assert!(e.failure.is_none());
    assert!(e.latency > Duration::ZERO);
    Ok(())
}

fn approval_policy() -> Vec<(&'static str, &'static str)> {
    vec![(
        "main.rego",
        r#"package mcp

decision := {"allow": true, "obligations": {"profile": "default", "require_approval": {"roles": ["lead"], "reason": "write"}}}
"#,
    )]
}

#[test]
fn unenforced_known_obligations_deny_unless_the_caller_enforces_them() -> Result<()> {
    let dir = policy_dir(&approval_policy())?;
    let engine = PolicyEngine::load(dir.path())?;
    let e = engine.evaluate(&ls_input()?);
    assert!(!e.decision.allow);
    assert_eq!(e.decision.obligations.unknown, vec!["require_approval"]);
    assert_eq!(
        e.obligations.require_approval.map(|a| a.roles),
        Some(vec!["lead".to_owned()])
    );

    let mut options = EngineOptions::default();
    options.enforced.insert(ObligationKind::RequireApproval);
    let engine = PolicyEngine::load_with(dir.path(), options)?;
    let e = engine.evaluate(&ls_input()?);
    assert!(e.decision.allow, "{:?}", e.decision);
    assert!(e.decision.obligations.unknown.is_empty());
    Ok(())
}

#[test]
fn wrong_decision_shape_fails_closed_and_tells_the_author_what_is_expected() -> Result<()> {
    let (_dir, engine) = load(&[("main.rego", "package mcp\n\ndecision := true\n")])?;
    let e = engine.evaluate(&ls_input()?);
    assert_failed_closed(&e.decision, &engine);
    let failure = e.failure.context("no failure reported")?;
    assert_eq!(failure.kind, FailureKind::Malformed);
    let why = failure.detail;
    assert!(why.contains("not an object"), "{why}");
    assert!(
        why.contains(r#"{"allow": bool, "deny_reasons": [string]"#),
        "{why}"
    );

    let (_dir, engine) = load(&[("main.rego", "package mcp\n\nallow := true\n")])?;
    let failure = engine
        .evaluate(&ls_input()?)
        .failure
        .context("no failure reported")?;
    assert_eq!(failure.kind, FailureKind::Undefined);
    assert!(
        failure
            .detail
            .contains("undefined: define it in package mcp"),
        "{failure}"
    );
    Ok(())
}

#[test]
fn huge_and_deeply_nested_inputs_are_denied_before_evaluation() -> Result<()> {
    let options = EngineOptions {
        input_limits: InputLimits {
            max_bytes: 4096,
            max_depth: 8,
        },
        ..EngineOptions::default()
    };
    let engine = PolicyEngine::load_with(&policies_dir(), options)?;

    let big = command_input(exec("echo", &[&"x".repeat(5000)]), Some("/usr/bin/echo"))?;
    let d = engine.evaluate(&big).decision;
    assert!(!d.allow);
    assert!(
        d.deny_reasons[0].starts_with("input document is ")
            && d.deny_reasons[0].ends_with("over the limit of 4096"),
        "{d:?}"
    );

    let mut nested = serde_json::json!("leaf");
    for _ in 0..10 {
        nested = serde_json::json!({ "a": nested });
    }
    let tool = PolicyInput::mcp_tool(
        &Principal::anonymous(),
        McpToolInput {
            server: "s".into(),
            name: "n".into(),
            arguments: nested.clone(),
        },
        &ctx(),
    );
    let d = engine.evaluate(&tool).decision;
    assert_eq!(
        d.deny_reasons,
        vec!["input document nests deeper than 8 levels"]
    );
    let d = engine.evaluate_json(&nested).decision;
    assert_eq!(
        d.deny_reasons,
        vec!["input document nests deeper than 8 levels"]
    );
    Ok(())
}

#[test]
fn raw_json_inputs_are_decided_like_typed_ones() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    let input = ls_input()?;
    let raw = serde_json::to_value(&input)?;
    assert_eq!(engine.evaluate_json(&raw).decision, engine.decide(&input));
    // A document of another shape is the policy's to judge: denied, not an error.
    let d = engine
        .evaluate_json(&serde_json::json!({"hello": "world"}))
        .decision;
    assert!(!d.allow);
    assert_eq!(d.deny_reasons, vec![r#"request kind "" is not handled"#]);
    Ok(())
}

#[test]
fn the_log_mask_and_redaction_shape_the_logged_input() -> Result<()> {
    let engine = PolicyEngine::load(&policies_dir())?;
    let mut req = exec("echo", &["--password=hunter2", "hello"]);
    req.metadata.insert("ticket".into(), "OPS-1".into());
    req.metadata.insert("api_token".into(), "s3cret".into());
    let input = command_input(req, Some("/usr/bin/echo"))?;
    let e = engine.evaluate(&input);
    assert!(e.decision.allow, "{:?}", e.decision);
    assert_eq!(e.mask, vec!["/request/metadata/api_token".to_owned()]);
    let logged = e.logged_input(&input);
    assert_eq!(logged["request"]["metadata"]["api_token"], MASKED);
    assert_eq!(logged["request"]["metadata"]["ticket"], "OPS-1");
    assert_eq!(
        logged["request"]["command"]["args"],
        serde_json::json!(["--password=<masked>", "hello"])
    );
    assert!(!logged.to_string().contains("hunter2"));
    assert!(!logged.to_string().contains("s3cret"));
    // The mask is part of the evaluated set: the input keeps its shape.
    let back: PolicyInput = serde_json::from_value(logged)?;
    assert_eq!(back.request.kind, "command");
    Ok(())
}

#[test]
fn a_broken_mask_rule_masks_the_whole_input() -> Result<()> {
    let (_dir, engine) = load(&[
        (
            "main.rego",
            "package mcp\n\ndecision := {\"allow\": true}\n",
        ),
        ("log.rego", "package mcp.log\n\nmask := 42\n"),
    ])?;
    let input = ls_input()?;
    let e = engine.evaluate(&input);
    assert!(e.decision.allow);
    assert_eq!(e.mask, vec![String::new()]);
    assert_eq!(e.logged_input(&input), serde_json::json!(MASKED));
    Ok(())
}

#[test]
fn explain_shows_rules_and_print_output() -> Result<()> {
    let (_dir, engine) = load(&[(
        "main.rego",
        "package mcp\n\nname := input.request.command.name\n\ndecision := {\"allow\": true} if {\n\tprint(\"deciding\", name)\n}\n",
    )])?;
    let x = engine.explain(&serde_json::to_value(ls_input()?)?);
    assert!(x.evaluated.decision.allow);
    assert_eq!(x.rules["name"], "ls");
    assert_eq!(x.rules["decision"]["allow"], true);
    assert!(
        x.prints.iter().any(|p| p.contains("deciding ls")),
        "{:?}",
        x.prints
    );
    let lines: Vec<u32> = x.lines.iter().flat_map(|(_, l)| l.clone()).collect();
    assert!(lines.contains(&6), "{:?}", x.lines);
    Ok(())
}

// ---- check and tests with coverage ----------------------------------------

#[test]
fn check_reports_every_broken_file_with_line_and_column() -> Result<()> {
    let dir = policy_dir(&[
        ("a.rego", "package mcp\n\nallow if {\n\tinput.x ==\n}\n"),
        ("b.rego", "package mcp\n\nx := [1,\n"),
        ("c_test.rego", "package mcp_test\n\ntest_y if {\n"),
        ("ok.rego", "package mcp\n\ny := 1\n"),
        ("data.json", "{\n  \"a\": [1,\n}\n"),
    ])?;
    let found = mcp_policy::check(dir.path());
    let names: Vec<String> = found
        .iter()
        .map(|d| {
            let file = d.path.file_name().map(|n| n.to_string_lossy().into_owned());
            format!("{}:{}", file.unwrap_or_default(), d.line)
        })
        .collect();
    assert_eq!(found.len(), 4, "{names:?}");
    for want in ["a.rego:5", "b.rego:", "c_test.rego:", "data.json:3"] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "{want} missing from {names:?}"
        );
    }
    assert!(found.iter().all(|d| d.col > 0), "{found:?}");
    assert!(found[0].to_string().contains("a.rego:5:"), "{}", found[0]);

    let unsafe_var = policy_dir(&[("u.rego", "package mcp\n\nallow if {\n\ty > 1\n}\n")])?;
    let found = mcp_policy::check(unsafe_var.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].line, found[0].path.ends_with("u.rego")),
        (4, true)
    );

    assert!(mcp_policy::check(&policies_dir()).is_empty());
    Ok(())
}

#[test]
fn run_tests_filters_by_regex_and_measures_coverage() -> Result<()> {
    let report = PolicyEngine::run_tests_with(
        &policies_dir(),
        &TestOptions {
            filter: Some("gate_tenant".into()),
            coverage: true,
        },
    )?;
    assert_eq!(report.outcomes.len(), 2, "{:?}", report.outcomes);
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| o.name.starts_with("test_gate_tenant"))
    );
    let partial = report.coverage.as_ref().map(|c| c.percent()).unwrap_or(0.0);

    let full = PolicyEngine::run_tests_with(
        &policies_dir(),
        &TestOptions {
            filter: None,
            coverage: true,
        },
    )?;
    assert_eq!(full.failed(), 0);
    let coverage = full.coverage.context("no coverage")?;
    assert!(
        coverage
            .files
            .iter()
            .all(|f| !f.path.ends_with("_test.rego"))
    );
    // Every policy file of the directory, whoever added it.
    let policy_files = std::fs::read_dir(policies_dir())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".rego") && !n.ends_with("_test.rego"))
        .count();
    assert_eq!(
        coverage.files.len(),
        policy_files,
        "{:?}",
        coverage.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    assert!(
        coverage.percent() > partial,
        "{} <= {partial}",
        coverage.percent()
    );
    assert!(
        coverage.percent() >= 90.0,
        "shipped policies are {:.1}% covered",
        coverage.percent()
    );

    assert!(matches!(
        PolicyEngine::run_tests_with(
            &policies_dir(),
            &TestOptions {
                filter: Some("(".into()),
                coverage: false
            }
        ),
        Err(PolicyError::Filter { .. })
    ));
    Ok(())
}

// ---- the live service -------------------------------------------------------

const ALLOW_ALL: &str =
    "package mcp\n\ndecision := {\"allow\": true, \"obligations\": {\"profile\": \"default\"}}\n";
const DENY_ALL: &str =
    "package mcp\n\ndecision := {\"allow\": false, \"deny_reasons\": [\"closed\"]}\n";

#[test]
fn reload_swaps_a_good_set_and_keeps_serving_on_a_broken_one() -> Result<()> {
    let dir = policy_dir(&[("main.rego", ALLOW_ALL)])?;
    let service = PolicyService::start(dir.path(), ServiceOptions::default())?;
    let first = service.revision();
    assert!(service.decide(&ls_input()?).decision.allow);

    std::fs::write(dir.path().join("main.rego"), DENY_ALL)?;
    let second = service.reload()?;
    assert_ne!(second, first);
    assert_eq!(service.revision(), second);
    let e = service.decide(&ls_input()?);
    assert_eq!(
        (e.decision.allow, e.revision.as_str()),
        (false, second.as_str())
    );

    std::fs::write(
        dir.path().join("main.rego"),
        "package mcp\n\ndecision := {\n",
    )?;
    match service.reload() {
        Err(PolicyError::Parse { message, .. }) => {
            assert!(message.contains("main.rego:4:"), "{message}")
        }
        other => bail!("expected a parse error, got {other:?}"),
    }
    assert_eq!(service.revision(), second);
    assert!(!service.decide(&ls_input()?).decision.allow);
    let stats = service.stats();
    assert_eq!((stats.reloads, stats.reload_failures), (1, 1));
    Ok(())
}

#[test]
fn reload_can_require_passing_tests() -> Result<()> {
    let dir = policy_dir(&[
        ("main.rego", ALLOW_ALL),
        (
            "main_test.rego",
            "package mcp_test\n\ntest_allows if data.mcp.decision.allow\n",
        ),
    ])?;
    let options = ServiceOptions {
        reload_requires_passing_tests: true,
        ..ServiceOptions::default()
    };
    let service = PolicyService::start(dir.path(), options.clone())?;
    let before = service.revision();
    std::fs::write(dir.path().join("main.rego"), DENY_ALL)?;
    match service.reload() {
        Err(PolicyError::TestsFailed { failed, .. }) => {
            assert_eq!(failed.len(), 1);
            assert!(failed[0].starts_with("mcp_test.test_allows"), "{failed:?}");
        }
        other => bail!("expected failing tests, got {other:?}"),
    }
    assert_eq!(service.revision(), before);
    // At start a failing set is refused outright.
    assert!(matches!(
        PolicyService::start(dir.path(), options),
        Err(PolicyError::TestsFailed { .. })
    ));
    Ok(())
}

#[test]
fn shadow_set_is_evaluated_but_not_enforced_and_disagreements_are_counted() -> Result<()> {
    let active = policy_dir(&[("main.rego", ALLOW_ALL)])?;
    let candidate = policy_dir(&[("main.rego", DENY_ALL)])?;
    let service = PolicyService::start(
        active.path(),
        ServiceOptions {
            shadow_dir: Some(candidate.path().to_owned()),
            ..ServiceOptions::default()
        },
    )?;
    let e = service.decide(&ls_input()?);
    assert!(e.decision.allow);
    let shadow = e.shadow.context("no shadow decision")?;
    assert!(!shadow.allow);
    assert_eq!(Some(shadow.policy_revision), service.shadow_revision());
    service.decide(&ls_input()?);
    assert_eq!(service.stats().shadow_disagreements, 2);

    // Agreement is not counted.
    std::fs::write(
        candidate.path().join("main.rego"),
        ALLOW_ALL.replace("true", "true "),
    )?;
    service.reload()?;
    let e = service.decide(&ls_input()?);
    assert_eq!(e.shadow.map(|s| s.allow), Some(true));
    assert_eq!(service.stats().shadow_disagreements, 2);
    Ok(())
}

#[test]
fn watcher_reloads_after_a_change_on_disk() -> Result<()> {
    let dir = policy_dir(&[("main.rego", ALLOW_ALL)])?;
    let service = Arc::new(PolicyService::start(dir.path(), ServiceOptions::default())?);
    let before = service.revision();
    let _watcher = service.watch_with(Duration::from_millis(50))?;
    std::fs::write(dir.path().join("main.rego"), DENY_ALL)?;
    // Real inotify: poll for the reload, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while service.revision() == before {
        ensure!(std::time::Instant::now() < deadline, "no reload within 20s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!service.decide(&ls_input()?).decision.allow);

    // A broken write is rejected; the revision stays.
    let good = service.revision();
    std::fs::write(dir.path().join("main.rego"), "package mcp\n\nx := \n")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while service.stats().reload_failures == 0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "no failed reload within 20s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(service.revision(), good);
    Ok(())
}

#[test]
fn data_file_option_replaces_data_json() -> Result<()> {
    let dir = policy_dir(&[
        (
            "main.rego",
            "package mcp\n\ndecision := {\"allow\": data.open}\n",
        ),
        ("data.json", r#"{"open": false}"#),
        ("other.json", r#"{"open": true}"#),
    ])?;
    assert!(!PolicyEngine::load(dir.path())?.decide(&ls_input()?).allow);
    let options = EngineOptions {
        data_file: Some(dir.path().join("other.json")),
        ..EngineOptions::default()
    };
    assert!(
        PolicyEngine::load_with(dir.path(), options)?
            .decide(&ls_input()?)
            .allow
    );
    Ok(())
}

// ---- the documented input schema -------------------------------------------

/// Checks that every object in `doc` only has keys `schema` declares and all
/// it requires: enough to keep `docs/policy/input.schema.json` and
/// `PolicyInput` from drifting apart.
fn conforms(doc: &serde_json::Value, schema: &serde_json::Value, at: &str) -> Result<()> {
    let (Some(obj), Some(props)) = (
        doc.as_object(),
        schema.get("properties").and_then(|p| p.as_object()),
    ) else {
        return Ok(());
    };
    for key in obj.keys() {
        ensure!(props.contains_key(key), "{at}/{key} is not in the schema");
    }
    for req in schema
        .get("required")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let req = req.as_str().unwrap_or_default();
        ensure!(
            obj.contains_key(req),
            "{at}/{req} is required by the schema"
        );
    }
    for (key, value) in obj {
        let sub = &props[key];
        conforms(value, sub, &format!("{at}/{key}"))?;
        if let (Some(items), Some(sub_items)) = (value.as_array(), sub.get("items")) {
            for item in items {
                conforms(item, sub_items, &format!("{at}/{key}/*"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn every_input_the_gateway_builds_matches_the_documented_schema() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/policy/input.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut inputs = vec![
        ls_input()?,
        PolicyInput::network(
            &Principal::anonymous(),
            mcp_policy::NetworkInput {
                host: "api.github.com".into(),
                port: 443,
                protocol: "tcp".into(),
                resolved_ips: vec!["140.82.112.6".into()],
                addresses: vec![mcp_policy::AddressInput {
                    ip: "140.82.112.6".into(),
                    class: "public".into(),
                    internal: false,
                    form: None,
                }],
            },
            &ctx(),
        ),
        PolicyInput::mcp_tool(
            &Principal::anonymous(),
            McpToolInput {
                server: "github".into(),
                name: "create_issue".into(),
                arguments: serde_json::json!({"title": "x"}),
            },
            &ctx(),
        )
        .with_environment(&[("env".to_owned(), "prod".to_owned())].into())
        .with_trace_id(Some("4bf92f3577b34da6a3ce929d0e0e4736".into())),
    ];
    for entry in std::fs::read_dir(policies_dir().join("cases"))? {
        let text = std::fs::read_to_string(entry?.path())?;
        let case: serde_json::Value = serde_json::from_str(&text)?;
        inputs.push(serde_json::from_value(case["input"].clone())?);
    }
    for input in &inputs {
        conforms(&serde_json::to_value(input)?, &schema, "")?;
    }
    // And the schema is strict where the type is.
    let mut extra = serde_json::to_value(ls_input()?)?;
    extra["context"]["surprise"] = serde_json::json!(1);
    assert!(conforms(&extra, &schema, "").is_err());
    Ok(())
}
