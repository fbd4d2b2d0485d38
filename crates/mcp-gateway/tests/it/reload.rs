//! Live policy operation: a changed policy directory is picked up without a
//! restart, a broken one is rejected while the previous revision keeps
//! serving, and every decision lands in the decision log with its input.

use std::path::Path;
use std::time::Duration;

use mcp_store::{DecisionQuery, TaskStore};
use tonic::Code;

use crate::harness::{TestGateway, cmd, code_of, repo, test_config};

fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(repo().join("policies"))
        .unwrap()
        .flatten()
    {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn wait_revision_change(gw: &mut TestGateway, from: &str) -> String {
    for _ in 0..200 {
        let rev = gw.client.health().await.unwrap().policy_revision;
        if rev != from {
            return rev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("policy revision did not change from {from}");
}

#[tokio::test]
async fn policy_changes_apply_without_restart_and_broken_sets_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    copy_policies(&policies);
    let mut raw = test_config(&tmp.path().join("data"));
    raw.policy.dir = policies.clone();
    let mut gw = TestGateway::start_with(raw).await;

    let rev0 = gw.client.health().await.unwrap().policy_revision;
    assert_eq!(rev0.len(), 12, "{rev0:?}");
    let r = gw.client.run(cmd("echo", &["before"])).await.unwrap();
    assert_eq!(r.result.unwrap().stdout, "before\n");

    // A security engineer closes echo for a maintenance window.
    std::fs::write(
        policies.join("maintenance.rego"),
        "package mcp\n\ndeny contains \"echo is closed for maintenance\" if {\n\tinput.request.command.name == \"echo\"\n}\n",
    )
    .unwrap();
    let rev1 = wait_revision_change(&mut gw, &rev0).await;
    let (code, msg) = code_of(gw.client.run(cmd("echo", &["during"])).await);
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("maintenance"), "{msg}");

    // A broken file is rejected; revision rev1 keeps serving.
    std::fs::write(
        policies.join("broken.rego"),
        "package mcp\n\ndeny contains x if {\n",
    )
    .unwrap();
    // The rejection is counted (once per file event the watcher saw); wait
    // for it rather than for a fixed time.
    let rest = crate::rest::Rest::new(&gw);
    let failed_reloads = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("mcp_policy_reloads_total{outcome=\"failed\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut text = String::new();
    for _ in 0..100 {
        text = rest.get("/metrics").await.text().await.unwrap();
        if failed_reloads(&text) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed_reloads(&text) >= 1, "{text}");
    assert_eq!(gw.client.health().await.unwrap().policy_revision, rev1);
    let (code, _) = code_of(gw.client.run(cmd("echo", &["still closed"])).await);
    assert_eq!(code, Code::PermissionDenied);
    let r = gw.client.run(cmd("ls", &["/"])).await.unwrap();
    assert_eq!(r.result.unwrap().exit_code, 0, "ls is still allowed");

    // Fixing the directory brings the next revision in.
    std::fs::remove_file(policies.join("broken.rego")).unwrap();
    std::fs::remove_file(policies.join("maintenance.rego")).unwrap();
    let rev2 = wait_revision_change(&mut gw, &rev1).await;
    assert_eq!(rev2, rev0, "the revision is a content hash");
    let r = gw.client.run(cmd("echo", &["after"])).await.unwrap();
    assert_eq!(r.result.unwrap().stdout, "after\n");

    // Every decision above is in the decision log, with the revision that
    // made it and the (masked) input.
    let store = mcp_store::SqliteStore::open(&tmp.path().join("data/gateway.db"))
        .await
        .unwrap();
    let log = store
        .list_decisions(&DecisionQuery {
            with_input: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let revisions: std::collections::BTreeSet<_> = log
        .iter()
        .map(|e| e.record.policy_revision.clone())
        .collect();
    assert!(
        revisions.contains(&rev0) && revisions.contains(&rev1),
        "{revisions:?}"
    );
    let denied = log
        .iter()
        .find(|e| !e.record.allow && e.record.policy_revision == rev1)
        .expect("a denial by the maintenance revision");
    let input = denied.details.input.as_ref().expect("input kept");
    assert_eq!(input["request"]["command"]["name"], "echo");
    gw.stop().await;
}
