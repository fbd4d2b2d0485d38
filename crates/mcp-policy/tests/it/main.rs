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
use mcp_policy::{PolicyEngine, PolicyError, PolicyInput, RequestContext};
use serde::Deserialize;
use tempfile::TempDir;

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
