//! The policy tools against the shipped policies, real Rego and a real
//! SQLite decision log.

use std::path::{Path, PathBuf};

use mcp_core::{ExecRequest, FileOp, FileRequest, Principal, RequestLimits, TaskId};
use mcp_policy::{PolicyEngine, PolicyInput, RequestContext};
use mcp_store::{DecisionDetails, DecisionRecord, SqliteStore, TaskStore};

use super::*;

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn ctx() -> RequestContext {
    RequestContext {
        time: "2025-06-01T12:00:00Z".to_owned(),
        source: None,
        request_id: uuid::Uuid::now_v7().to_string(),
    }
}

fn command(name: &str) -> PolicyInput {
    let req = ExecRequest {
        command: name.to_owned(),
        ..Default::default()
    }
    .validate(&RequestLimits::default())
    .unwrap();
    PolicyInput::command(
        &Principal::anonymous(),
        &req,
        Some(&format!("/usr/bin/{name}")),
        &ctx(),
    )
}

fn file_read(path: &str) -> PolicyInput {
    let req = FileRequest {
        path: path.to_owned(),
        op: FileOp::Read,
        content_len: 0,
        mode: 0,
        recursive: false,
    }
    .validate(&RequestLimits::default())
    .unwrap();
    PolicyInput::file(&Principal::anonymous(), &req, &ctx())
}

/// Decides `input` with the shipped policies and stores the decision the way
/// the gateway does: masked input, latency, profile.
async fn record(store: &SqliteStore, engine: &PolicyEngine, input: &PolicyInput, keep: bool) {
    let e = engine.evaluate(input);
    let rec = DecisionRecord {
        id: uuid::Uuid::now_v7(),
        at: mcp_core::now(),
        tenant: input.principal.tenant.clone(),
        principal: input.principal.id.clone(),
        kind: input.request.kind.clone(),
        summary: input
            .request
            .command
            .as_ref()
            .map_or("file".to_owned(), |c| c.name.clone()),
        allow: e.decision.allow,
        deny_reasons: e.decision.deny_reasons.clone(),
        policy_revision: e.revision.clone(),
        task_id: e.decision.allow.then(TaskId::new),
    };
    let details = DecisionDetails {
        input: keep.then(|| e.logged_input(input)),
        latency_us: u64::try_from(e.latency.as_micros()).unwrap(),
        profile: e.obligations.profile.clone(),
        obligations: e.obligations.clone(),
        warnings: e.decision.warnings.clone(),
    };
    store.record_decision_with(&rec, &details).await.unwrap();
}

/// A copy of the shipped policies with `edits` (file, from, to) applied.
fn candidate(edits: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    for (file, from, to) in edits {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    dir
}

async fn seeded() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gateway.db"))
        .await
        .unwrap();
    let engine = PolicyEngine::load(&policies()).unwrap();
    for input in [
        command("ls"),
        command("cat"),
        command("cat"),
        command("rm"),
        file_read("reports/q1.csv"),
    ] {
        record(&store, &engine, &input, true).await;
    }
    // Without an input there is nothing to replay.
    record(&store, &engine, &command("wc"), false).await;
    (dir, store)
}

#[tokio::test]
async fn replay_sorts_stored_requests_by_how_the_candidate_changes_them() {
    let (_db, store) = seeded().await;
    let cand = candidate(&[
        // cat leaves the allowlist and rm joins it.
        (
            "command.rego",
            "\"basename\", \"cat\",",
            "\"basename\", \"rm\",",
        ),
        // File requests move to another profile.
        (
            "main.rego",
            "{\"profile\": \"default\"},\n\tapproval_obligation,",
            "{\"profile\": profile_for_kind},\n\tapproval_obligation,",
        ),
    ]);
    std::fs::write(
        cand.path().join("profile.rego"),
        "package mcp\n\nprofile_for_kind := \"build\" if input.request.kind == \"file\"\n\nelse := \"default\"\n",
    )
    .unwrap();

    let sum = replay_store(cand.path(), &store, DecisionQuery::default(), 1)
        .await
        .unwrap();
    assert_eq!(sum.replayed, 5);
    assert_eq!(sum.allow_to_deny.count, 2);
    assert_eq!(sum.allow_to_deny.examples.len(), 1);
    assert_eq!(sum.allow_to_deny.examples[0]["summary"], "cat");
    assert_eq!(sum.deny_to_allow.count, 1);
    assert_eq!(sum.deny_to_allow.examples[0]["summary"], "rm");
    assert_eq!(sum.profile_changed.count, 1);
    assert_eq!(
        sum.profile_changed.examples[0]["candidate"]["profile"],
        "build"
    );
    assert_eq!(sum.unchanged, 1);
    assert_eq!(sum.changed(), 4);
    assert_eq!(sum.with_masked_values, 0);

    // The unchanged set changes nothing.
    let same = replay_store(&policies(), &store, DecisionQuery::default(), 3)
        .await
        .unwrap();
    assert_eq!((same.replayed, same.unchanged, same.changed()), (5, 5, 0));

    // A tenant filter that matches nothing replays nothing.
    let none = replay_store(
        &policies(),
        &store,
        DecisionQuery {
            tenant: Some("acme".into()),
            ..DecisionQuery::default()
        },
        3,
    )
    .await
    .unwrap();
    assert_eq!(none.replayed, 0);
}

#[tokio::test]
async fn replay_refuses_a_broken_candidate() {
    let (_db, store) = seeded().await;
    let cand = candidate(&[("main.rego", "default allow := false", "default allow := ")]);
    let err = replay_store(cand.path(), &store, DecisionQuery::default(), 1).await;
    assert!(
        matches!(err, Err(PolicyCliError::Policy(PolicyError::Parse { .. }))),
        "{err:?}"
    );
}

#[tokio::test]
async fn export_writes_one_json_line_per_decision() {
    let (_db, store) = seeded().await;
    let mut buf = Vec::new();
    let n = export_lines(&store, DecisionQuery::default(), &mut buf)
        .await
        .unwrap();
    assert_eq!(n, 6);
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["summary"], "ls");
    assert_eq!(lines[0]["result"]["allow"], true);
    assert_eq!(lines[0]["profile"], "default");
    assert_eq!(lines[0]["input"]["request"]["command"]["name"], "ls");
    assert_eq!(lines[3]["result"]["allow"], false);
    assert!(lines[5]["input"].is_null());
    assert!(
        lines
            .iter()
            .all(|l| l["revision"].as_str().map(str::len) == Some(12))
    );
}

#[test]
fn policy_test_exit_code_follows_failures_and_the_coverage_threshold() {
    let args = |threshold: Option<f64>, run: Option<&str>| TestArgs {
        dir: policies(),
        threshold,
        format: Format::Json,
        run: run.map(str::to_owned),
        verbose: false,
    };
    assert_eq!(test(&args(Some(90.0), None)).unwrap(), ExitCode::SUCCESS);
    assert_eq!(test(&args(Some(100.1), None)).unwrap(), ExitCode::FAILURE);
    // A filter that selects nothing is a failure, not a silent pass.
    assert_eq!(
        test(&args(None, Some("no_such_test"))).unwrap(),
        ExitCode::FAILURE
    );

    let broken = candidate(&[(
        "main_test.rego",
        "d.deny_reasons == [`request kind \"teleport\" is not handled`]",
        "d.deny_reasons == []",
    )]);
    let mut failing = args(None, None);
    failing.dir = broken.path().to_owned();
    assert_eq!(test(&failing).unwrap(), ExitCode::FAILURE);
}

#[test]
fn policy_check_exit_code_follows_errors() {
    assert_eq!(check(&policies()), ExitCode::SUCCESS);
    let broken = candidate(&[("gates.rego", "scope_rank := {", "scope_rank := {{")]);
    assert_eq!(check(broken.path()), ExitCode::FAILURE);
}

#[test]
fn durations_and_line_ranges_are_readable() {
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert!(parse_duration("soon").is_err());
    assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3,5,7-8");
    assert_eq!(ranges(&[]), "");
}

/// Keys as an operator makes them with openssl; the bundle as `policy build`
/// writes it; the gateway's loader with the public key configured.
#[test]
fn policy_build_writes_a_signed_bundle_the_gateway_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let private = keys.path().join("bundle.key");
    let public = keys.path().join("bundle.pub");
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl is needed for this test: apt-get install openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);

    let output = keys.path().join("policies.tar.gz");
    let args = BuildArgs {
        dir: policies(),
        output: output.clone(),
        revision: "cli1".to_owned(),
        signing_key: Some(private.clone()),
    };
    assert_eq!(build(&args).unwrap(), ExitCode::SUCCESS);
    let options = EngineOptions {
        bundle_key: Some(mcp_policy::read_verifying_key(&public).unwrap()),
        ..EngineOptions::default()
    };
    let engine = PolicyEngine::load_with(&output, options.clone()).unwrap();
    assert!(engine.revision().starts_with("cli1+"));
    assert!(engine.decide(&command("ls")).allow);

    // A public key file that is no key is refused with its path.
    std::fs::write(&public, "not a key").unwrap();
    assert!(matches!(
        mcp_policy::read_verifying_key(&public),
        Err(PolicyError::Bundle { .. })
    ));
    // Unsigned output cannot pass for signed.
    let unsigned = BuildArgs {
        signing_key: None,
        ..args
    };
    assert_eq!(build(&unsigned).unwrap(), ExitCode::SUCCESS);
    assert!(matches!(
        PolicyEngine::load_with(&output, options),
        Err(PolicyError::Bundle { .. })
    ));
}
