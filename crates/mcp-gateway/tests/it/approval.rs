//! Approval of tasks the policy marks `require_approval`, against the real
//! server: API-key principals of two tenants, a policy set whose decision
//! requires approval when the request's metadata says `needs_approval`, and
//! the shipped `policies/approve.rego` deciding who may approve.

use std::time::Duration;

use mcp_client::{Client, CommandRequest, TaskStatus};
use mcp_pipeline::approval::{ApprovalClaims, mint_token, new_claims};

use crate::harness::{
    PRINCIPALS, SECRET, TestGateway, client_as, cmd, code_of, config, needing_approval, repo,
    state, wait_terminal,
};

async fn pending(client: &mut Client, req: CommandRequest) -> String {
    let created = client.execute(req).await.unwrap();
    assert_eq!(
        TaskStatus::try_from(created.status).unwrap(),
        TaskStatus::TaskPendingApproval
    );
    created.task_id
}

fn principal(id: &str) -> mcp_core::Principal {
    let p = PRINCIPALS.iter().find(|p| p.0 == id).unwrap();
    mcp_core::Principal {
        id: p.0.into(),
        tenant: p.1.into(),
        roles: p.2.iter().map(|r| (*r).to_owned()).collect(),
        auth: mcp_core::AuthMethod::Jwt,
    }
}

fn token_for(id: &str, task: &str) -> String {
    let claims = new_claims(
        &principal(id),
        task.parse().unwrap(),
        Duration::from_secs(60),
    );
    mint_token(SECRET.as_bytes(), &claims).unwrap()
}

#[tokio::test]
async fn an_approved_task_runs_exactly_what_was_requested() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut bob = client_as(&gw, "bob").await;

    let id = pending(&mut alice, needing_approval("echo", &["approved", "run"])).await;
    // Nothing runs while it waits; the reason and expiry are shown.
    let r = alice.status(&id).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskPendingApproval);
    let info = r.task_info.unwrap();
    assert_eq!(info.approval_reason.as_deref(), Some("needs an operator"));
    assert!(info.approval_expires_at.is_some());
    assert!(r.result.is_none());

    let r = bob.approve(&id, None, "looks fine").await.unwrap();
    assert!(matches!(
        state(&r),
        TaskStatus::TaskCreated
            | TaskStatus::TaskQueued
            | TaskStatus::TaskRunning
            | TaskStatus::TaskCompleted
    ));
    let done = wait_terminal(&mut alice, &id).await;
    assert_eq!(state(&done), TaskStatus::TaskCompleted);
    assert_eq!(done.result.unwrap().stdout, "approved run\n");
    // A second approval finds nothing to approve.
    let (code, _) = code_of(bob.approve(&id, None, "").await);
    assert_eq!(code, tonic::Code::FailedPrecondition);
    gw.stop().await;
}

#[tokio::test]
async fn a_rejected_task_ends_rejected_with_the_reason_and_never_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut bob = client_as(&gw, "bob").await;
    let id = pending(&mut alice, needing_approval("echo", &["never"])).await;
    let r = bob
        .reject(&id, None, "not during the freeze")
        .await
        .unwrap();
    assert_eq!(state(&r), TaskStatus::TaskRejected);
    let info = r.task_info.unwrap();
    assert_eq!(
        info.failure_reason.as_deref(),
        Some("rejected by bob: not during the freeze")
    );
    assert!(r.result.is_none(), "nothing ran");
    let (code, _) = code_of(bob.approve(&id, None, "").await);
    assert_eq!(code, tonic::Code::FailedPrecondition);
    gw.stop().await;
}

#[tokio::test]
async fn the_requester_and_approvers_without_the_role_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut carol = client_as(&gw, "carol").await;
    let id = pending(&mut alice, needing_approval("echo", &["x"])).await;

    let (code, msg) = code_of(alice.approve(&id, None, "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(msg.contains("requested it"), "{msg}");
    let (code, _) = code_of(alice.reject(&id, None, "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    let (code, msg) = code_of(carol.approve(&id, None, "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(msg.contains("data.mcp.approve"), "{msg}");
    let (code, _) = code_of(carol.reject(&id, None, "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    // Still waiting; the requester may withdraw it.
    assert_eq!(
        state(&alice.status(&id).await.unwrap()),
        TaskStatus::TaskPendingApproval
    );
    let r = alice.cancel(&id).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskCancelled);
    gw.stop().await;
}

/// Two policies each asked for an approval (the obligation's
/// `requirements`): an approver who meets only one of them is refused,
/// one who meets both approves and the task runs.
#[tokio::test]
async fn an_approver_must_meet_every_approval_requirement() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut bob = client_as(&gw, "bob").await;
    let mut dave = client_as(&gw, "dave").await;

    let mut req = cmd("echo", &["both", "teams"]);
    req.metadata
        .insert("needs_approval".into(), "two-teams".into());
    let id = pending(&mut alice, req).await;
    // bob holds ops only: the security requirement is not met.
    let (code, _) = code_of(bob.approve(&id, None, "ops says yes").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    let r = alice.status(&id).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskPendingApproval);
    // dave holds ops and security.
    dave.approve(&id, None, "both say yes").await.unwrap();
    let done = wait_terminal(&mut alice, &id).await;
    assert_eq!(state(&done), TaskStatus::TaskCompleted);
    assert_eq!(done.result.unwrap().stdout, "both teams\n");
    gw.stop().await;
}

#[tokio::test]
async fn pending_tasks_expire_after_the_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = config(tmp.path());
    raw.approval.ttl_secs = 1;
    raw.approval.sweep_interval_secs = 1;
    let gw = TestGateway::start_with(raw).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut bob = client_as(&gw, "bob").await;
    let id = pending(&mut alice, needing_approval("echo", &["late"])).await;
    let mut last = TaskStatus::TaskPendingApproval;
    for _ in 0..200 {
        last = state(&alice.status(&id).await.unwrap());
        if last != TaskStatus::TaskPendingApproval {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, TaskStatus::TaskExpired);
    let r = alice.status(&id).await.unwrap();
    assert_eq!(
        r.task_info.unwrap().failure_reason.as_deref(),
        Some("approval expired")
    );
    let (code, msg) = code_of(bob.approve(&id, None, "").await);
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("expired"), "{msg}");
    gw.stop().await;
}

#[tokio::test]
async fn approval_tokens_are_bound_single_use_and_replays_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    // The bot only carries the token; bob's identity and roles are in it.
    let mut bot = client_as(&gw, "bot").await;
    let id = pending(&mut alice, needing_approval("echo", &["by token"])).await;
    let other = pending(&mut alice, needing_approval("echo", &["other"])).await;

    // A token for another task, a forged one, and one naming the requester.
    let (code, _) = code_of(bot.approve(&id, Some(token_for("bob", &other)), "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    let mut forged: ApprovalClaims = new_claims(
        &principal("bob"),
        id.parse().unwrap(),
        Duration::from_secs(60),
    );
    forged.roles = vec!["ops".into()];
    let forged = mint_token(b"not the gateway's secret, 32 bytes...", &forged).unwrap();
    let (code, _) = code_of(bot.approve(&id, Some(forged), "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    let (code, _) = code_of(bot.approve(&id, Some(token_for("alice", &id)), "").await);
    assert_eq!(
        code,
        tonic::Code::PermissionDenied,
        "self-approval by token"
    );

    let token = token_for("bob", &id);
    bot.approve(&id, Some(token.clone()), "via chat")
        .await
        .unwrap();
    let done = wait_terminal(&mut alice, &id).await;
    assert_eq!(done.result.unwrap().stdout, "by token\n");
    let (code, msg) = code_of(bot.approve(&id, Some(token), "").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(msg.contains("already used"), "{msg}");
    // Another tenant's principal cannot carry a token of this tenant.
    let mut mallory = client_as(&gw, "mallory").await;
    let (code, _) = code_of(
        mallory
            .approve(&other, Some(token_for("bob", &other)), "")
            .await,
    );
    assert_eq!(code, tonic::Code::PermissionDenied);
    gw.stop().await;
}

#[tokio::test]
async fn a_pending_task_survives_a_restart_and_runs_when_approved() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut req = needing_approval("sh", &["-c", "echo \"$GREETING\" from \"$PWD\""]);
    req.env.insert("GREETING".into(), "hello".into());
    let id = pending(&mut alice, req).await;
    gw.stop().await;

    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut bob = client_as(&gw, "bob").await;
    assert_eq!(
        state(&alice.status(&id).await.unwrap()),
        TaskStatus::TaskPendingApproval,
        "a pending task is not 'interrupted' by a restart"
    );
    bob.approve(&id, None, "").await.unwrap();
    let done = wait_terminal(&mut alice, &id).await;
    assert_eq!(state(&done), TaskStatus::TaskCompleted);
    assert_eq!(done.result.unwrap().stdout, "hello from /workspace\n");
    gw.stop().await;
}

#[tokio::test]
async fn the_limits_obligation_clamps_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut req = cmd("sleep", &["30"]);
    req.timeout = 60;
    req.metadata.insert("limits".into(), "tight".into());
    let r = alice.run(req).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskTimedOut);
    assert_eq!(
        r.task_info.unwrap().failure_reason.as_deref(),
        Some("timed out after 1s")
    );
    gw.stop().await;
}

/// Runs the gateway's CLI (without blocking the runtime the server runs on).
async fn cli(args: &[&str], key: Option<&str>) -> std::process::Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"));
    c.args(args)
        .env_remove("MCP_GATEWAY_CONFIG")
        .env_remove("MCP_GATEWAY_API_KEY")
        .env_remove("MCP_GATEWAY_TOKEN")
        .env_remove("MCP_GATEWAY_ENDPOINT");
    if let Some(k) = key {
        c.env("MCP_GATEWAY_API_KEY", k);
    }
    c.output().await.unwrap()
}

#[tokio::test]
async fn the_cli_approves_rejects_and_mints_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let endpoint = gw.endpoint();
    let a = pending(&mut alice, needing_approval("echo", &["via cli"])).await;
    let b = pending(&mut alice, needing_approval("echo", &["never"])).await;

    let out = cli(
        &["task", "approve", &a, "--endpoint", &endpoint],
        Some("key-bob-0002"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = wait_terminal(&mut alice, &a).await;
    assert_eq!(done.result.unwrap().stdout, "via cli\n");

    // The requester is refused, with a non-zero exit.
    let out = cli(
        &["task", "approve", &b, "--endpoint", &endpoint],
        Some("key-alice-0001"),
    )
    .await;
    assert!(!out.status.success());

    // A token minted from the config file, carried by the bot, rejects.
    let cfg_file = tmp.path().join("config.toml");
    std::fs::write(
        &cfg_file,
        format!(
            "[approval]\ntoken_secret = \"{SECRET}\"\n[policy]\ndir = \"{}\"\n[sandbox]\nprofiles_dir = \"{}\"\n",
            tmp.path().join("policies").display(),
            repo().join("sandbox-profiles").display()
        ),
    )
    .unwrap();
    let out = cli(
        &[
            "task",
            "approval-token",
            &b,
            "--approver",
            "bob",
            "--tenant",
            "acme",
            "--role",
            "ops",
            "--ttl-secs",
            "60",
            "--config",
            cfg_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = cli(
        &[
            "task",
            "reject",
            &b,
            "--approval-token",
            &token,
            "--reason",
            "by chat",
            "--endpoint",
            &endpoint,
        ],
        Some("key-bot-0004"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "TASK_REJECTED");
    assert_eq!(v["failure_reason"], "rejected by bob: by chat");
    gw.stop().await;
}

#[tokio::test]
async fn rest_approves_and_hides_other_tenants_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let id = pending(&mut alice, needing_approval("echo", &["rest"])).await;
    let http = reqwest::Client::new();
    let post = |key: &'static str, verb: &'static str, body: serde_json::Value| {
        http.post(format!("{}/v1/tasks/{id}/{verb}", gw.endpoint()))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    let r = post("key-mallory-0005", "approve", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = post("key-alice-0001", "approve", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 3101);
    let r = post(
        "key-bob-0002",
        "approve",
        serde_json::json!({"comment": "ok"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let done = wait_terminal(&mut alice, &id).await;
    assert_eq!(done.result.unwrap().stdout, "rest\n");
    let r = post(
        "key-bob-0002",
        "reject",
        serde_json::json!({"reason": "late"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    gw.stop().await;
}
