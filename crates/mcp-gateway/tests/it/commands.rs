use std::time::Duration;

use mcp_client::{OutputChunkType, TaskStatus};
use tonic::Code;

use crate::harness::{TestGateway, cmd, code_of, state, wait_terminal};

#[tokio::test]
async fn health_reports_version_and_standard_health_service_serves() {
    let mut gw = TestGateway::start().await;
    let h = gw.client.health().await.unwrap();
    assert_eq!(h.status, "SERVING");
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));

    let channel = tonic::transport::Endpoint::from_shared(gw.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mcp.McpService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    gw.stop().await;
}

#[tokio::test]
async fn allowed_command_runs_in_the_sandbox_and_is_stored() {
    let mut gw = TestGateway::start().await;
    let r = gw
        .client
        .run(cmd("echo", &["hello", "world"]))
        .await
        .unwrap();
    assert_eq!(state(&r), TaskStatus::TaskCompleted);
    let info = r.task_info.as_ref().unwrap();
    let id: uuid::Uuid = info.task_id.parse().unwrap();
    assert_eq!(id.get_version_num(), 7, "task ids are UUIDv7");
    for ts in [
        Some(&info.created_at),
        info.started_at.as_ref(),
        info.completed_at.as_ref(),
    ] {
        let ts = ts.expect("timestamp set");
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{ts} is not RFC 3339: {e}"));
    }
    assert_eq!(info.profile.as_deref(), Some("default"));
    let res = r.result.unwrap();
    assert_eq!(res.exit_code, 0);
    assert_eq!(res.stdout, "hello world\n");
    assert!(!res.stdout_truncated);

    // The stored record answers GetTaskStatus the same way.
    let again = gw.client.status(&info.task_id).await.unwrap();
    assert_eq!(again.result.unwrap().stdout, "hello world\n");
    gw.stop().await;
}

#[tokio::test]
async fn sandbox_runs_as_unprivileged_user_without_host_env_or_network() {
    let mut gw = TestGateway::start().await;
    let r = gw
        .client
        .run(cmd(
            "python3",
            &[
                "-c",
                "import os,socket\n\
                 print('uid', os.getuid())\n\
                 print('cwd', os.getcwd())\n\
                 print('env', sorted(os.environ))\n\
                 print('ifaces', sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n\
                 print('pid1env', len(open('/proc/1/environ','rb').read()))\n\
                 try:\n  open('/usr/evil','w'); print('usr writable')\nexcept OSError: print('usr read-only')",
            ],
        ))
        .await
        .unwrap();
    let res = r.result.unwrap();
    assert_eq!(res.exit_code, 0, "stderr: {}", res.stderr);
    let out = res.stdout;
    if is_root() {
        assert!(out.contains("uid 65534"), "{out}");
    }
    assert!(out.contains("cwd /workspace"), "{out}");
    assert!(!out.contains("CARGO"), "host env leaked: {out}");
    assert!(out.contains("ifaces ['lo']"), "{out}");
    assert!(
        out.contains("pid1env 0"),
        "bwrap's own env is readable: {out}"
    );
    assert!(out.contains("usr read-only"), "{out}");
    gw.stop().await;
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[tokio::test]
async fn non_zero_exit_is_an_outcome_with_stderr() {
    let mut gw = TestGateway::start().await;
    let r = gw.client.run(cmd("ls", &["/nonexistent"])).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskCompleted);
    let res = r.result.unwrap();
    assert_eq!(res.exit_code, 2);
    assert!(res.stderr.contains("nonexistent"), "{}", res.stderr);
    gw.stop().await;
}

#[tokio::test]
async fn denied_command_runs_nothing_and_decision_is_stored() {
    let mut gw = TestGateway::start().await;
    let err = gw
        .client
        .run(cmd("rm", &["-rf", "/files"]))
        .await
        .unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("\"rm\""), "{}", status.message());
    let request_id: uuid::Uuid = status
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let store = mcp_store::SqliteStore::open(&gw.data.join("gateway.db"))
        .await
        .unwrap();
    use mcp_store::TaskStore;
    let d = store.get_decision(request_id).await.unwrap().unwrap();
    assert!(!d.allow);
    assert_eq!(d.task_id, None);
    assert!(
        d.deny_reasons.iter().any(|r| r.contains("rm")),
        "{:?}",
        d.deny_reasons
    );
    gw.stop().await;
}

#[tokio::test]
async fn timeout_kills_the_command_and_records_timed_out() {
    let mut gw = TestGateway::start().await;
    let mut req = cmd("sleep", &["30"]);
    req.timeout = 1;
    let r = gw.client.run(req).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskTimedOut);
    // RunCommand's answer (the worker's copy) is what the store holds.
    let id = r.task_info.as_ref().unwrap().task_id.clone();
    assert_eq!(gw.client.status(&id).await.unwrap(), r);
    let info = r.task_info.unwrap();
    assert!(info.failure_reason.unwrap().contains("timed out"));
    assert!(r.result.unwrap().execution_time_ms < 25_000);
    gw.stop().await;
}

/// A gRPC client's deadline (`grpc-timeout`) ends its call with
/// DEADLINE_EXCEEDED from the gateway (error 5004); the task the call
/// started goes on and can be followed by id, as at the REST door. The call
/// is framed by hand: tonic's client enforces the same header itself and
/// would give up before the gateway answers.
#[tokio::test]
async fn a_grpc_deadline_ends_the_call_and_the_task_goes_on() {
    let mut gw = TestGateway::start().await;
    let resp = run_command_with_deadline(&gw, cmd("sleep", &["1"]), "200m").await;
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("grpc-status").as_deref(),
        Some("4"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(header("x-error-code").as_deref(), Some("5004"));
    assert!(header("grpc-message").unwrap().contains("200ms"));

    let listed = gw
        .client
        .list_tasks(mcp_client::ListTasksRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.tasks.len(), 1);
    let r = wait_terminal(&mut gw.client, &listed.tasks[0].task_id).await;
    assert_eq!(state(&r), TaskStatus::TaskCompleted);
    assert_eq!(r.result.unwrap().exit_code, 0);
    gw.stop().await;
}

/// `RunCommand` framed by hand with `grpc-timeout: deadline`.
async fn run_command_with_deadline(
    gw: &TestGateway,
    req: mcp_client::CommandRequest,
    deadline: &str,
) -> reqwest::Response {
    let msg = prost::Message::encode_to_vec(&req);
    let mut body = vec![0u8];
    body.extend(u32::try_from(msg.len()).unwrap().to_be_bytes());
    body.extend(msg);
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    http.post(format!("{}/mcp.McpService/RunCommand", gw.endpoint()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", deadline)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A deadline that passes while the task is being stored (here: at once)
/// abandons the answer, not the commit: a task that was stored runs to its
/// end instead of staying created with no worker until the next start.
#[tokio::test]
async fn a_deadline_during_the_commit_leaves_no_task_behind() {
    let mut gw = TestGateway::start().await;
    for _ in 0..10 {
        let resp = run_command_with_deadline(&gw, cmd("echo", &["hi"]), "1n").await;
        assert_eq!(resp.status(), 200);
    }
    let listed = gw
        .client
        .list_tasks(mcp_client::ListTasksRequest::default())
        .await
        .unwrap();
    // A request can also be dropped before it is decided (its body not yet
    // read), but not all of them are: the deadline passes at the first
    // wait, which is the commit once the body is in.
    assert!(!listed.tasks.is_empty());
    for task in &listed.tasks {
        let r = wait_terminal(&mut gw.client, &task.task_id).await;
        assert_eq!(state(&r), TaskStatus::TaskCompleted, "{r:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn cancel_kills_the_process_tree_and_cannot_be_repeated() {
    let mut gw = TestGateway::start().await;
    // A child that would outlive its parent if only the parent were killed.
    let marker = format!("cancel-marker-{}", uuid::Uuid::now_v7());
    let script = format!(
        "import subprocess,time\nsubprocess.Popen(['python3','-c','import time; time.sleep(3600)','{marker}'])\ntime.sleep(0.5)\nprint('started', flush=True)\ntime.sleep(3600)"
    );
    let created = gw
        .client
        .execute(cmd("python3", &["-c", &script]))
        .await
        .unwrap();
    let mut stream = gw.client.stream(&created.task_id).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.data, b"started\n");
    assert!(process_with(&marker), "the child should be running");

    let r = gw.client.cancel(&created.task_id).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskCancelled);
    assert_eq!(
        r.task_info.unwrap().failure_reason.as_deref(),
        Some("cancelled by client")
    );
    // The tree dies with bwrap; give the kernel a moment to tear down the namespace.
    for _ in 0..100 {
        if !process_with(&marker) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process_with(&marker), "grandchild survived the cancel");

    let (code, msg) = code_of(gw.client.cancel(&created.task_id).await);
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("already finished"), "{msg}");
    gw.stop().await;
}

pub fn process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(marker))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn output_streams_live_in_order_and_replays_after_the_end() {
    let mut gw = TestGateway::start().await;
    let script = "import sys,time\nfor i in range(5):\n  print('out', i, flush=True)\n  print('err', i, file=sys.stderr, flush=True)\n  time.sleep(0.05)\nsys.exit(3)";
    let created = gw
        .client
        .execute(cmd("python3", &["-c", script]))
        .await
        .unwrap();
    let chunks = gw.client.collect_output(&created.task_id).await.unwrap();
    let collect = |t: OutputChunkType| -> String {
        chunks
            .iter()
            .filter(|c| c.r#type == t as i32)
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    };
    assert_eq!(
        collect(OutputChunkType::ChunkStdout),
        "out 0\nout 1\nout 2\nout 3\nout 4\n"
    );
    assert_eq!(
        collect(OutputChunkType::ChunkStderr),
        "err 0\nerr 1\nerr 2\nerr 3\nerr 4\n"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last.r#type, OutputChunkType::ChunkExitCode as i32);
    assert_eq!(last.data, b"3");
    assert!(
        chunks
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
    );

    // After the end, the stream replays the stored output.
    let replay = gw.client.collect_output(&created.task_id).await.unwrap();
    let out: String = replay
        .iter()
        .filter(|c| c.r#type == OutputChunkType::ChunkStdout as i32)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    assert_eq!(out, "out 0\nout 1\nout 2\nout 3\nout 4\n");
    assert_eq!(replay.last().unwrap().data, b"3");
    gw.stop().await;
}

#[tokio::test]
async fn output_beyond_the_cap_is_dropped_and_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = crate::harness::test_config(tmp.path());
    raw.limits.max_output_bytes = 1000;
    let mut gw = TestGateway::start_with(raw).await;
    let r = gw
        .client
        .run(cmd("python3", &["-c", "print('x' * 5000)"]))
        .await
        .unwrap();
    let res = r.result.unwrap();
    assert_eq!(res.exit_code, 0);
    assert_eq!(res.stdout.len(), 1000);
    assert!(res.stdout_truncated);
    gw.stop().await;
}

#[tokio::test]
async fn cwd_is_created_inside_the_workspace() {
    let mut gw = TestGateway::start().await;
    let mut req = cmd("pwd", &[]);
    req.cwd = Some("sub/dir".into());
    let r = gw.client.run(req).await.unwrap();
    assert_eq!(r.result.unwrap().stdout, "/workspace/sub/dir\n");
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_tasks_all_complete_and_queue_beyond_the_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = crate::harness::test_config(tmp.path());
    raw.limits.max_running_tasks = 2;
    let gw = TestGateway::start_with(raw).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut c = gw.client.clone();
        handles.push(tokio::spawn(async move {
            c.run(cmd("echo", &[&i.to_string()])).await.unwrap()
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        assert_eq!(r.result.unwrap().stdout, format!("{i}\n"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn queued_task_can_be_cancelled_before_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = crate::harness::test_config(tmp.path());
    raw.limits.max_running_tasks = 1;
    let mut gw = TestGateway::start_with(raw).await;
    let blocker = gw.client.execute(cmd("sleep", &["30"])).await.unwrap();
    let queued = gw.client.execute(cmd("echo", &["never"])).await.unwrap();
    // Wait until the second one is queued behind the first.
    for _ in 0..200 {
        let r = gw.client.status(&queued.task_id).await.unwrap();
        if state(&r) == TaskStatus::TaskQueued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = gw.client.cancel(&queued.task_id).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskCancelled);
    assert!(r.result.is_none(), "a cancelled queued task never ran");
    gw.client.cancel(&blocker.task_id).await.unwrap();
    let done = wait_terminal(&mut gw.client, &blocker.task_id).await;
    assert_eq!(state(&done), TaskStatus::TaskCancelled);
    gw.stop().await;
}

#[tokio::test]
async fn exec_cli_streams_output_and_exits_with_the_command_code() {
    let gw = TestGateway::start().await;
    let bin = env!("CARGO_BIN_EXE_mcp-gateway");
    let ep = gw.endpoint();
    let run = |args: Vec<&str>| {
        let ep = ep.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .arg("exec")
                .arg("--endpoint")
                .arg(ep)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["--", "echo", "via", "cli"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"via cli\n");

    let out = run(vec!["--", "ls", "/nonexistent"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = run(vec!["--", "rm", "-rf", "/"]).await.unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the allowed command list"));

    let out = run(vec!["--timeout", "1", "--", "sleep", "30"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    gw.stop().await;
}
