//! The operator-facing edges: `check-config`, `sandbox check`, `--version`, and server
//! reflection (what lets grpcurl work without the .proto).

use std::process::Command;

use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::harness::{TestGateway, repo};

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"));
    // Keep a developer's /etc config or environment out of the test.
    c.env_remove("MCP_GATEWAY_CONFIG");
    c
}

/// `mcp-gateway check-config` of `config` (or the built-in defaults) with
/// the policy directory `policies` and the shipped sandbox profiles; more
/// flags can be added before running it.
pub(crate) fn check_config(
    config: Option<&std::path::Path>,
    policies: &std::path::Path,
) -> Command {
    let mut c = gateway();
    c.arg("check-config");
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    c.arg("--policies")
        .arg(policies)
        .arg("--profiles")
        .arg(repo().join("sandbox-profiles"));
    c
}

#[test]
fn check_config_accepts_the_shipped_defaults() {
    let out = check_config(None, &repo().join("policies"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains("policy revision"), "{stdout}");
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"0.0.0.0:1\"\n[sandbox]\nuid = 0\n[limits]\nmax_output_bytes = 0\n",
    )
    .unwrap();
    let out = check_config(Some(&cfg), &repo().join("policies"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "not a loopback address",
        "must not be 0",
        "max_output_bytes",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[test]
fn check_config_reports_a_broken_policy_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("broken.rego"),
        "package mcp\n\ndecision := {\"allow\": true\n",
    )
    .unwrap();
    let out = check_config(None, tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.rego"), "{stderr}");
}

#[test]
fn version_flag_prints_the_crate_version() {
    let out = gateway().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("mcp-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn reflection_lists_the_service_for_grpcurl() {
    let gw = TestGateway::start().await;
    let channel = tonic::transport::Endpoint::from_shared(gw.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"mcp.McpService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    gw.stop().await;
}

#[test]
fn sandbox_check_reports_the_uid_range_and_the_warm_pool() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // The sandbox user must reach its workspace below here.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let root = is_root();
    let check = |pool: &str, json: bool| {
        let cfg = tmp.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[policy]\ndir = \"{}\"\n[sandbox]\nprofiles_dir = \"{}\"\nuid_range = {{ start = 300000, count = 64 }}\n[sandbox.pool]\n{pool}\n",
                repo().join("policies").display(),
                repo().join("sandbox-profiles").display(),
            ),
        )
        .unwrap();
        let mut c = gateway();
        c.args(["sandbox", "check", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(tmp.path());
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };

    let out = check("sizes = { default = 2 }\nmax_total = 4", true);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let range = &v["uid_range"];
    assert_eq!(range["start"], 300000, "{v}");
    assert_eq!(range["end"], 300063, "{v}");
    assert_eq!(range["count"], 64, "{v}");
    assert_eq!(range["used"], root, "{v}");
    assert_eq!(v["pool"]["sizes"], serde_json::json!({"default": 2}), "{v}");
    assert_eq!(v["pool"]["max_total"], 4, "{v}");
    // The default stub is this very executable, as with `serve`.
    let stub = std::fs::canonicalize(env!("CARGO_BIN_EXE_mcp-gateway")).unwrap();
    let got = std::fs::canonicalize(v["pool"]["stub"].as_str().unwrap()).unwrap();
    assert_eq!(got, stub, "{v}");
    assert_eq!(v["pool"]["problems"], serde_json::json!([]), "{v}");
    // The mount table every sandbox start pays for: this host's, counted.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let detail = v["mount_table"]["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("{mounts} mounts")), "{v}");

    let out = check("sizes = { default = 2 }\nmax_total = 4", false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("uid range        300000-300063: 64 uids"),
        "{text}"
    );
    assert!(
        text.contains("warm pool        default=2 per (profile, tenant); at most 4 in all"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "mount table      {:<3} {mounts} mounts{}",
            "ok",
            // Root or not: an unprivileged gateway builds it in a user
            // namespace of its own.
            "; bubblewrap starts in a lean namespace of "
        )),
        "{text}"
    );

    // A pool `serve` would refuse fails the check, naming the problem.
    let out = check("sizes = { nosuch = 1 }", false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("problem: unknown profile \"nosuch\""),
        "{text}"
    );
}

/// An unprivileged gateway (as the shipped unit and image run it) builds
/// its lean mount namespace inside a user namespace of its own, and real
/// sandboxes start in it: `sandbox check`, which runs `true` in every
/// profile's sandbox, passes as uid 65534 and reports the lean table.
#[test]
fn an_unprivileged_gateway_starts_bubblewrap_in_a_lean_namespace() {
    use std::os::unix::fs::PermissionsExt;
    assert!(is_root(), "needs root to become another user");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Copies the unprivileged user can reach wherever the checkout is.
    let bin = dir.join("mcp-gateway");
    std::fs::copy(env!("CARGO_BIN_EXE_mcp-gateway"), &bin).unwrap();
    for sub in ["policies", "sandbox-profiles"] {
        let ok = Command::new("cp")
            .arg("-r")
            .arg(repo().join(sub))
            .arg(dir.join(sub))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    // No delegated cgroup for uid 65534 here: accept rlimits only, as an
    // operator without one would.
    for entry in std::fs::read_dir(dir.join("sandbox-profiles")).unwrap() {
        let path = entry.unwrap().path();
        let toml = std::fs::read_to_string(&path).unwrap();
        let toml = toml.replacen("\n[limits]\n", "\n[limits]\nrequire_cgroup = false\n", 1);
        std::fs::write(&path, toml).unwrap();
    }
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[policy]\ndir = \"{}\"\n[sandbox]\nprofiles_dir = \"{}\"\n",
            dir.join("policies").display(),
            dir.join("sandbox-profiles").display(),
        ),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .env_remove("MCP_GATEWAY_CONFIG")
        .args(["sandbox", "check", "--json", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = v["mount_table"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("bubblewrap starts in a lean namespace of"),
        "{v}"
    );
    // Every profile ran `true` in a real sandbox started there.
    for p in v["profiles"].as_array().unwrap() {
        assert_eq!(p["enforceable"], true, "{v}");
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap()
}
