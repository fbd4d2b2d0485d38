//! Tenancy, per-tenant quotas and idempotency against the real server, with
//! the API-key principals and the test policy of [`crate::harness::config`].

use std::time::Duration;

use mcp_client::{ListTasksRequest, TaskStatus};
use tonic::Code;

use crate::harness::{
    TestGateway, client_as, cmd, code_of, config, needing_approval, state, wait_terminal,
};

fn error_number(r: Result<impl std::fmt::Debug, mcp_client::ClientError>) -> (Code, String) {
    let e = r.expect_err("expected an error status");
    let s = e.status().unwrap();
    let num = s
        .metadata()
        .get("x-error-code")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (s.code(), num)
}

/// [`config`] with `quota` for tenant `acme`.
fn with_quota(
    data: &std::path::Path,
    quota: mcp_pipeline::quota::RawTenantQuota,
) -> mcp_gateway::config::RawConfig {
    let mut raw = config(data);
    raw.quotas.tenants.insert("acme".into(), quota);
    raw
}

#[tokio::test]
async fn another_tenants_task_is_not_found_by_every_rpc() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut mallory = client_as(&gw, "mallory").await;
    let done = alice.run(cmd("echo", &["secret"])).await.unwrap();
    let finished = done.task_info.unwrap().task_id;
    let waiting = alice
        .execute(needing_approval("echo", &["x"]))
        .await
        .unwrap()
        .task_id;
    let random = uuid::Uuid::now_v7().to_string();

    for id in [&finished, &waiting, &random] {
        let want = (Code::NotFound, "6001".to_owned());
        assert_eq!(error_number(mallory.status(id).await), want, "status {id}");
        assert_eq!(error_number(mallory.cancel(id).await), want, "cancel {id}");
        assert_eq!(error_number(mallory.stream(id).await), want, "stream {id}");
        assert_eq!(
            error_number(mallory.approve(id, None, "").await),
            want,
            "approve {id}"
        );
        assert_eq!(
            error_number(mallory.reject(id, None, "").await),
            want,
            "reject {id}"
        );
    }
    let listed = mallory
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap();
    assert!(listed.tasks.is_empty(), "{:?}", listed.tasks);
    // The owner sees both; the task it ran is untouched.
    let mine = alice.list_tasks(ListTasksRequest::default()).await.unwrap();
    assert_eq!(mine.tasks.len(), 2);
    assert_eq!(
        state(&alice.status(&finished).await.unwrap()),
        TaskStatus::TaskCompleted
    );
    gw.stop().await;
}

#[tokio::test]
async fn list_tasks_filters_and_pages_within_the_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut bob = client_as(&gw, "bob").await;
    for i in 0..3 {
        let mut r = cmd("echo", &[&i.to_string()]);
        r.metadata.insert("batch".into(), "b1".into());
        alice.run(r).await.unwrap();
    }
    alice.run(cmd("echo", &["other"])).await.unwrap();
    let pending = alice
        .execute(needing_approval("echo", &["p"]))
        .await
        .unwrap()
        .task_id;
    // bob is in the same tenant: he sees them too.
    let page = bob
        .list_tasks(ListTasksRequest {
            metadata: [("batch".to_owned(), "b1".to_owned())].into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 2);
    assert!(!page.next_page_token.is_empty());
    let rest = bob
        .list_tasks(ListTasksRequest {
            metadata: [("batch".to_owned(), "b1".to_owned())].into(),
            page_size: 2,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.tasks.len(), 1);
    let waiting = bob
        .list_tasks(ListTasksRequest {
            status: Some(TaskStatus::TaskPendingApproval as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        waiting
            .tasks
            .iter()
            .map(|t| t.task_id.clone())
            .collect::<Vec<_>>(),
        vec![pending]
    );
    let (code, _) = code_of(
        bob.list_tasks(ListTasksRequest {
            since: "yesterday".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_task_quota_is_enforced_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = with_quota(
        tmp.path(),
        mcp_pipeline::quota::RawTenantQuota {
            max_concurrent_tasks: 1,
            ..Default::default()
        },
    );
    let gw = TestGateway::start_with(raw).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut mallory = client_as(&gw, "mallory").await;
    let first = alice.execute(cmd("sleep", &["30"])).await.unwrap().task_id;
    let e = alice.execute(cmd("echo", &["x"])).await.unwrap_err();
    let s = e.status().unwrap();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("concurrent tasks"), "{}", s.message());
    assert_eq!(
        s.metadata().get("retry-after").unwrap().to_str().unwrap(),
        "1"
    );
    // Another tenant is not affected.
    mallory.run(cmd("echo", &["fine"])).await.unwrap();
    // When the running task ends, the tenant may run again.
    alice.cancel(&first).await.unwrap();
    let mut ok = None;
    for _ in 0..100 {
        match alice.run(cmd("echo", &["again"])).await {
            Ok(r) => {
                ok = Some(r);
                break;
            }
            Err(e) if e.status().map(|s| s.code()) == Some(Code::ResourceExhausted) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        ok.expect("quota recovered").result.unwrap().stdout,
        "again\n"
    );
    gw.stop().await;
}

#[tokio::test]
async fn tasks_per_minute_are_refused_with_retry_after_over_grpc_and_http() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = config(tmp.path());
    raw.quotas.default.tasks_per_minute = 2;
    let gw = TestGateway::start_with(raw).await;
    let mut alice = client_as(&gw, "alice").await;
    alice.run(cmd("true", &[])).await.unwrap();
    alice.run(cmd("true", &[])).await.unwrap();
    let e = alice.execute(cmd("true", &[])).await.unwrap_err();
    let s = e.status().unwrap();
    assert_eq!(s.code(), Code::ResourceExhausted);
    let secs: u64 = s
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&secs), "{secs}");

    let http = reqwest::Client::new()
        .post(format!("{}/v1/execute", gw.endpoint()))
        .header("x-api-key", "key-alice-0001")
        .json(&serde_json::json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 429);
    let ra: u64 = http.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&ra), "{ra}");
    let body: serde_json::Value = http.json().await.unwrap();
    assert_eq!(body["error"]["code"], 4101);
    assert_eq!(body["error"]["details"]["quota"], "tasks per minute");
    gw.stop().await;
}

/// Charges `cpu_ms` of CPU time to `tenant` as a task that finished now,
/// written straight into the gateway's database (what a long-running
/// earlier task would have left there).
async fn charge_cpu(data: &std::path::Path, tenant: &str, cpu_ms: u64) {
    use mcp_core::{ResourceUsage, TaskId, TaskKind, TaskRecord, TaskResult, TaskState};
    let store = mcp_store::SqliteStore::open(&data.join("gateway.db"))
        .await
        .unwrap();
    let now = mcp_core::now();
    let rec = TaskRecord {
        id: TaskId::new(),
        kind: TaskKind::Command,
        state: TaskState::Completed,
        tenant: tenant.into(),
        principal: "earlier".into(),
        command: "/usr/bin/true".into(),
        args: vec![],
        profile: Some("default".into()),
        created_at: now,
        started_at: Some(now),
        completed_at: Some(now),
        metadata: Default::default(),
        result: Some(TaskResult {
            usage: ResourceUsage {
                cpu_time_ms: cpu_ms,
                ..Default::default()
            },
            ..Default::default()
        }),
        failure_reason: None,
        owner: "elsewhere".into(),
    };
    mcp_store::TaskStore::insert_task(&store, &rec)
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_tenant_over_its_cpu_budget_is_refused_and_its_running_work_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = with_quota(
        tmp.path(),
        mcp_pipeline::quota::RawTenantQuota {
            cpu_seconds_per_hour: 60,
            ..Default::default()
        },
    );
    let gw = TestGateway::start_with(raw).await;
    let mut alice = client_as(&gw, "alice").await;
    let sleeper = alice.execute(cmd("sleep", &["60"])).await.unwrap().task_id;
    // All but 0.1 CPU-second of the hour's budget is used; a burner's
    // timeout is clamped to the (rounded up) second left and its busy loops
    // use up the rest.
    charge_cpu(tmp.path(), "acme", 59_900).await;
    let burner = cmd("sh", &["-c", "while :; do :; done & while :; do :; done"]);
    let mut refused = None;
    for _ in 0..20 {
        match alice.run(burner.clone()).await {
            Ok(r) => assert_eq!(state(&r), TaskStatus::TaskTimedOut),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the CPU budget was never enforced");
    let s = refused.status().unwrap();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(
        s.message().contains("CPU-seconds per hour"),
        "{}",
        s.message()
    );
    assert!(s.metadata().get("retry-after").is_some());
    // The tenant's running work was killed, with the reason.
    let killed = wait_terminal(&mut alice, &sleeper).await;
    assert_eq!(state(&killed), TaskStatus::TaskCancelled);
    let reason = killed.task_info.unwrap().failure_reason.unwrap();
    assert!(reason.contains("CPU budget"), "{reason}");
    // Another tenant is not affected.
    let mut mallory = client_as(&gw, "mallory").await;
    mallory.run(cmd("true", &[])).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn idempotent_repeats_return_the_same_task_even_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut carol = client_as(&gw, "carol").await;
    let mut req = cmd("echo", &["once"]);
    req.idempotency_key = "deploy-42".into();
    let first = alice.execute(req.clone()).await.unwrap().task_id;
    let again = alice.execute(req.clone()).await.unwrap().task_id;
    assert_eq!(first, again);
    // The key can also come as metadata.
    let mut by_header = tonic::Request::new({
        let mut r = req.clone();
        r.idempotency_key.clear();
        r
    });
    by_header
        .metadata_mut()
        .insert("idempotency-key", "deploy-42".parse().unwrap());
    let third = alice
        .raw()
        .execute_command(by_header)
        .await
        .unwrap()
        .into_inner()
        .task_id;
    assert_eq!(first, third);
    // Same key, different request: refused.
    let mut changed = req.clone();
    changed.args = vec!["twice".into()];
    let (code, _) = code_of(alice.execute(changed).await);
    assert_eq!(code, Code::AlreadyExists);
    // Another principal's key is its own.
    let other = carol.execute(req.clone()).await.unwrap().task_id;
    assert_ne!(other, first);
    let done = wait_terminal(&mut alice, &first).await;
    assert_eq!(done.result.unwrap().stdout, "once\n");
    let listed = alice.list_tasks(ListTasksRequest::default()).await.unwrap();
    assert_eq!(listed.tasks.len(), 2, "ran once per principal");
    gw.stop().await;

    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    assert_eq!(alice.execute(req).await.unwrap().task_id, first);
    gw.stop().await;
}

/// `GET /v1/tasks` as `key`'s principal.
async fn rest_list(gw: &TestGateway, key: &str, query: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/tasks{query}", gw.endpoint()))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn rest_lists_filter_by_metadata_like_grpc_within_the_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let mut run = async |pairs: &[(&str, &str)]| {
        let mut r = cmd("true", &[]);
        for (k, v) in pairs {
            r.metadata.insert((*k).into(), (*v).into());
        }
        alice.run(r).await.unwrap().task_info.unwrap().task_id
    };
    let b1 = run(&[("batch", "b1")]).await;
    let b1_infra = run(&[("batch", "b1"), ("team", "infra")]).await;
    let colon = run(&[("url", "http://x:1/"), ("team", "")]).await;
    run(&[("batch", "b2")]).await;
    run(&[]).await;
    // Another tenant's task with the same metadata is never listed.
    let mut mallory = client_as(&gw, "mallory").await;
    let mut theirs = cmd("true", &[]);
    theirs.metadata.insert("batch".into(), "b1".into());
    mallory.run(theirs).await.unwrap();

    let bob = "key-bob-0002";
    for (query, want) in [
        ("?metadata=batch:b1", vec![b1_infra.clone(), b1.clone()]),
        (
            "?metadata=batch%3Ab1&metadata=team:infra",
            vec![b1_infra.clone()],
        ),
        ("?metadata=team:infra&metadata=batch:b2", vec![]),
        // Split at the first `:`; an empty value is a value.
        ("?metadata=url:http://x:1/", vec![colon.clone()]),
        ("?metadata=team:", vec![colon.clone()]),
        ("?metadata=batch:b1&limit=1", vec![b1_infra.clone()]),
    ] {
        let (status, page) = rest_list(&gw, bob, query).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(ids(&page), want, "{query}");
        // The same filter through gRPC gives the same tasks.
        let grpc = alice
            .list_tasks(ListTasksRequest {
                metadata: grpc_filter(query),
                page_size: if query.contains("limit=1") { 1 } else { 0 },
                ..Default::default()
            })
            .await
            .unwrap();
        let grpc_ids: Vec<String> = grpc.tasks.into_iter().map(|t| t.task_id).collect();
        assert_eq!(grpc_ids, want, "gRPC {query}");
    }
    let (_, theirs) = rest_list(&gw, "key-mallory-0005", "?metadata=batch:b1").await;
    assert_eq!(ids(&theirs).len(), 1, "{theirs}");
    assert!(!ids(&theirs).contains(&b1), "{theirs}");

    for query in [
        "?metadata=batch",
        "?metadata=:b1",
        "?metadata=batch:b1&metadata=batch:b2",
    ] {
        let (status, body) = rest_list(&gw, bob, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], 2004, "{query}: {body}");
        assert_eq!(body["error"]["details"]["field"], "metadata", "{query}");
    }
    // Other parameters are still checked strictly.
    let (status, body) = rest_list(&gw, bob, "?metadata=batch:b1&metdata=x:y").await;
    assert_eq!(status, 400, "{body}");
    gw.stop().await;
}

/// The `metadata` pairs of a REST list query, as the gRPC filter map.
fn grpc_filter(query: &str) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .filter(|(k, _)| k == "metadata")
        .map(|(_, v)| {
            let (key, value) = v.split_once(':').unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_task_view_shows_a_pending_approvals_reason_and_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(config(tmp.path())).await;
    let mut alice = client_as(&gw, "alice").await;
    let done = alice.run(cmd("true", &[])).await.unwrap();
    let done = done.task_info.unwrap();
    assert_eq!(done.approval_reason, None);
    // RunCommand answers at once with the pending task.
    let ran = alice.run(needing_approval("echo", &["run"])).await.unwrap();
    assert_eq!(state(&ran), TaskStatus::TaskPendingApproval);
    let ran = ran.task_info.unwrap();
    assert_eq!(ran.approval_reason.as_deref(), Some("needs an operator"));
    let expires = ran.approval_expires_at.clone().unwrap();
    assert!(
        time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{expires}"
    );
    let pending = ran.task_id.clone();

    // gRPC ListTasks entries carry what GetTaskStatus shows.
    let status = alice.status(&pending).await.unwrap().task_info.unwrap();
    assert_eq!(
        status.approval_expires_at.as_deref(),
        Some(expires.as_str())
    );
    let listed = alice.list_tasks(ListTasksRequest::default()).await.unwrap();
    let by_id = |id: &str| {
        listed
            .tasks
            .iter()
            .find(|t| t.task_id == id)
            .cloned()
            .unwrap()
    };
    let entry = by_id(&pending);
    assert_eq!(entry.approval_reason.as_deref(), Some("needs an operator"));
    assert_eq!(entry.approval_expires_at.as_deref(), Some(expires.as_str()));
    let entry = by_id(&done.task_id);
    assert_eq!(
        (entry.approval_reason, entry.approval_expires_at),
        (None, None)
    );

    // REST: the list, the task, and a run that needs approval.
    let (code, page) = rest_list(&gw, "key-bob-0002", "").await;
    assert_eq!(code, 200, "{page}");
    let tasks = page["tasks"].as_array().unwrap();
    let json_of = |id: &str| tasks.iter().find(|t| t["task_id"] == id).unwrap().clone();
    let t = json_of(&pending);
    assert_eq!(t["status"], "pending_approval", "{t}");
    assert_eq!(t["approval_reason"], "needs an operator", "{t}");
    assert_eq!(t["approval_expires_at"], expires.as_str(), "{t}");
    let t = json_of(&done.task_id);
    assert!(t["approval_reason"].is_null(), "{t}");
    assert!(t["approval_expires_at"].is_null(), "{t}");
    let http = reqwest::Client::new();
    let t: serde_json::Value = http
        .get(format!("{}/v1/tasks/{pending}", gw.endpoint()))
        .header("x-api-key", "key-alice-0001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["approval_reason"], "needs an operator", "{t}");
    assert_eq!(t["approval_expires_at"], expires.as_str(), "{t}");
    let t: serde_json::Value = http
        .post(format!("{}/v1/run", gw.endpoint()))
        .header("x-api-key", "key-alice-0001")
        .json(&serde_json::json!({
            "command": "echo",
            "metadata": {"needs_approval": "yes"},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["status"], "pending_approval", "{t}");
    assert_eq!(t["approval_reason"], "needs an operator", "{t}");
    assert!(t["approval_expires_at"].is_string(), "{t}");

    // `mcp-gateway task status` prints them too.
    let out = tokio::task::spawn_blocking({
        let (id, endpoint) = (pending.clone(), gw.endpoint());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
                .args(["task", "status", &id, "--endpoint", &endpoint])
                .env_remove("MCP_GATEWAY_CONFIG")
                .env_remove("MCP_GATEWAY_TOKEN")
                .env_remove("MCP_GATEWAY_ENDPOINT")
                .env("MCP_GATEWAY_API_KEY", "key-alice-0001")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["approval_reason"], "needs an operator", "{v}");
    assert_eq!(v["approval_expires_at"], expires.as_str(), "{v}");

    // Once it no longer waits, no view shows an approval to wait for.
    let cancelled = alice.cancel(&pending).await.unwrap();
    assert_eq!(state(&cancelled), TaskStatus::TaskCancelled);
    let info = cancelled.task_info.unwrap();
    assert_eq!(
        (info.approval_reason, info.approval_expires_at),
        (None, None)
    );
    gw.stop().await;
}
