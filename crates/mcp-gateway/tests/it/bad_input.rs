//! Every kind of bad input gets a precise status, runs nothing, and leaves
//! the server up.

use tonic::Code;

use crate::harness::{TestGateway, cmd, code_of};

#[tokio::test]
async fn bad_command_requests_get_precise_statuses() {
    let mut gw = TestGateway::start().await;
    let big = "x".repeat(200 * 1024);
    let mut cases: Vec<(&str, mcp_client::CommandRequest, Code, &str)> = vec![
        (
            "empty command",
            cmd("", &[]),
            Code::InvalidArgument,
            "command must not be empty",
        ),
        (
            "blank command",
            cmd("   ", &[]),
            Code::InvalidArgument,
            "command must not be empty",
        ),
        (
            "NUL in command",
            cmd("ec\0ho", &[]),
            Code::InvalidArgument,
            "command contains a NUL byte",
        ),
        (
            "NUL in args",
            cmd("echo", &["ok", "a\0b"]),
            Code::InvalidArgument,
            "args[1] contains a NUL byte",
        ),
    ];
    let mut r = cmd("echo", &[]);
    r.env.insert("X".into(), "a\0b".into());
    cases.push((
        "NUL in env value",
        r,
        Code::InvalidArgument,
        "env[X] contains a NUL byte",
    ));
    cases.push((
        "args too large",
        cmd("echo", &[&big]),
        Code::InvalidArgument,
        "args is too long",
    ));
    let mut r = cmd("echo", &[]);
    for i in 0..100 {
        r.env.insert(format!("V{i}"), "1".into());
    }
    cases.push((
        "too many env vars",
        r,
        Code::InvalidArgument,
        "too many env",
    ));
    let mut r = cmd("echo", &[]);
    r.env.insert("BAD-NAME".into(), "1".into());
    cases.push((
        "bad env name",
        r,
        Code::InvalidArgument,
        "not a valid variable name",
    ));
    let mut r = cmd("echo", &[]);
    r.env.insert("LD_PRELOAD".into(), "/files/evil.so".into());
    cases.push(("LD_PRELOAD", r, Code::PermissionDenied, "LD_PRELOAD"));
    let mut r = cmd("echo", &[]);
    r.env.insert("LD_LIBRARY_PATH".into(), "/files".into());
    cases.push((
        "LD_LIBRARY_PATH",
        r,
        Code::PermissionDenied,
        "LD_LIBRARY_PATH",
    ));
    for cwd in ["../etc", "/etc", "a/../../b", "/workspace/../etc"] {
        let mut r = cmd("ls", &[]);
        r.cwd = Some(cwd.into());
        cases.push((
            "cwd outside the workspace",
            r,
            Code::InvalidArgument,
            "must stay inside /workspace",
        ));
    }
    let mut r = cmd("sleep", &["1"]);
    r.timeout = 100_000;
    cases.push((
        "timeout above maximum",
        r,
        Code::InvalidArgument,
        "above the maximum",
    ));
    cases.push((
        "unknown command",
        cmd("rm", &["-rf", "/"]),
        Code::PermissionDenied,
        "not in the allowed command list",
    ));
    cases.push((
        "relative path",
        cmd("./evil.sh", &[]),
        Code::PermissionDenied,
        "could not be resolved",
    ));
    cases.push((
        "find -exec",
        cmd("find", &["/", "-exec", "id", ";"]),
        Code::PermissionDenied,
        "-exec",
    ));
    let mut r = cmd("echo", &[]);
    r.sandbox_config = Some(mcp_client::SandboxConfig {
        network_access: 1,
        ..Default::default()
    });
    cases.push(("host network", r, Code::PermissionDenied, "network access"));
    let mut r = cmd("ls", &[]);
    r.sandbox_config = Some(mcp_client::SandboxConfig {
        rw_paths: vec!["/etc".into()],
        ..Default::default()
    });
    cases.push((
        "extra rw host path",
        r,
        Code::PermissionDenied,
        "extra host paths",
    ));
    let mut r = cmd("ls", &[]);
    r.sandbox_config = Some(mcp_client::SandboxConfig {
        ro_paths: vec!["relative/path".into()],
        ..Default::default()
    });
    cases.push((
        "relative sandbox path",
        r,
        Code::InvalidArgument,
        "must be an absolute path",
    ));

    for (name, req, want, needle) in cases {
        let (code, msg) = code_of(gw.client.execute(req).await);
        assert_eq!(code, want, "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
        assert!(msg.contains("request id"), "{name}: {msg}");
    }
    // Nothing above ran, and the server is still up.
    assert_eq!(gw.client.health().await.unwrap().status, "SERVING");
    assert!(
        std::fs::read_dir(gw.data.join("sockets"))
            .unwrap()
            .next()
            .is_none(),
        "a workspace was created for a refused request"
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_task_ids_get_precise_statuses() {
    let mut gw = TestGateway::start().await;
    for bad in [
        "",
        "not-a-uuid",
        "../../etc/passwd",
        "0190b1a2-0000-7000-8000-00000000000",
    ] {
        let (code, msg) = code_of(gw.client.status(bad).await);
        assert_eq!(code, Code::InvalidArgument, "{bad}: {msg}");
        let (code, _) = code_of(gw.client.cancel(bad).await);
        assert_eq!(code, Code::InvalidArgument, "{bad}");
        let (code, _) = code_of(gw.client.stream(bad).await);
        assert_eq!(code, Code::InvalidArgument, "{bad}");
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let (code, msg) = code_of(gw.client.status(&unknown).await);
    assert_eq!(code, Code::NotFound, "{msg}");
    assert!(msg.contains(&unknown), "{msg}");
    let (code, _) = code_of(gw.client.cancel(&unknown).await);
    assert_eq!(code, Code::NotFound);
    let (code, _) = code_of(gw.client.stream(&unknown).await);
    assert_eq!(code, Code::NotFound);

    let done = gw.client.run(cmd("true", &[])).await.unwrap();
    let id = done.task_info.unwrap().task_id;
    let (code, msg) = code_of(gw.client.cancel(&id).await);
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("already finished (completed)"), "{msg}");
    assert_eq!(gw.client.health().await.unwrap().status, "SERVING");
    gw.stop().await;
}
