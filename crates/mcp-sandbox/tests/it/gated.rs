//! Gated runs: the sandbox is set up while the task's approval is being
//! stored, and its command runs only once the gate opens.

use std::path::Path;
use std::time::{Duration, Instant};

use mcp_core::OutputChunk;
use mcp_sandbox::{Ending, RunSpec};
use tokio_util::sync::CancellationToken;

use crate::{Harness, acme_spec, processes_matching, sandbox_in, text};

/// A command that leaves `marker` in the tenant's files and then sleeps
/// under a name the test can look for.
fn marking(h: &Harness, marker: &str) -> RunSpec {
    h.sh(&format!(
        "echo ran > /files/{marker}; echo out; sleep 0.{marker}"
    ))
}

async fn wait_gone(task_cgroup: &Path, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while (task_cgroup.exists() || !processes_matching(&format!("sleep 0.{marker}")).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!task_cgroup.exists(), "task cgroup left behind");
    assert!(processes_matching(&format!("sleep 0.{marker}")).is_empty());
}

#[tokio::test]
async fn the_command_runs_only_once_the_gate_opens() {
    let h = Harness::new();
    let marker = format!("41{}", std::process::id());
    let spec = marking(&h, &marker);
    let ws = h.task_cgroup(spec.task_id);
    let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
    let sandbox = h.sandbox.clone();
    let run = tokio::spawn(async move {
        let ignore = |_: OutputChunk| {};
        let gate = async move { rx.await.unwrap_or(false) };
        sandbox
            .run_gated(spec, gate, &ignore, CancellationToken::new())
            .await
    });
    // The sandbox is being set up (its task cgroup exists) but its
    // command has not run.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ws.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ws.exists(), "no sandbox was started before the gate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = h.files_root().join("acme").join(&marker);
    assert!(!file.exists(), "the command ran before its gate opened");
    assert!(!run.is_finished());

    tx.send(true).unwrap();
    let out = run
        .await
        .unwrap()
        .unwrap()
        .expect("an opened gate runs the command");
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(text(&out.result.stdout), "out\n");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ran\n");
    wait_gone(&ws, &marker).await;
}

#[tokio::test]
async fn a_closed_gate_runs_nothing_and_leaves_nothing() {
    let h = Harness::new();
    for (i, wait) in [0u64, 100].into_iter().enumerate() {
        let marker = format!("42{}{i}", std::process::id());
        let spec = marking(&h, &marker);
        let ws = h.task_cgroup(spec.task_id);
        let gate = async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            false
        };
        let ignore = |_: OutputChunk| {};
        let out = h
            .sandbox
            .run_gated(spec, gate, &ignore, CancellationToken::new())
            .await
            .unwrap();
        assert!(out.is_none(), "a closed gate reported a run: {out:?}");
        wait_gone(&ws, &marker).await;
        assert!(!h.files_root().join("acme").join(&marker).exists());
    }
}

const LOST_GATE_ENV: &str = "MCP_SANDBOX_IT_LOSE_GATE_AFTER_MS";
const SWEEP_ENV: &str = "MCP_SANDBOX_IT_SWEEP_IN";

/// A gateway that dies while a sandbox waits for its gate (its approval
/// not yet stored) never runs the command: the lost writer does not
/// release bubblewrap. The waiting sandbox outlives that gateway (bubblewrap
/// dropped its parent-death signal while it set up) and the next gateway
/// sweeps it with the dead one's cgroups. The test re-runs itself as child
/// processes: three that start a gated run and exit without cleanup, then
/// one that only starts a sandbox (the next gateway).
#[test]
fn a_gateway_that_dies_before_the_gate_opens_runs_nothing() {
    if let Ok(base) = std::env::var(SWEEP_ENV) {
        let _next = sandbox_in(Path::new(&base), 1024);
        return;
    }
    if let Ok(arg) = std::env::var(LOST_GATE_ENV) {
        // Child role: "<delay ms> <marker> <base dir>".
        let mut parts = arg.splitn(3, ' ');
        let delay: u64 = parts.next().unwrap().parse().unwrap();
        let marker = parts.next().unwrap().to_owned();
        let base = std::path::PathBuf::from(parts.next().unwrap());
        let sandbox = sandbox_in(&base, 1024);
        let argv0 = sandbox.resolve_command("default", "sh").unwrap();
        let script = format!("echo ran > /files/{marker}; sleep 0.{marker}");
        let spec = acme_spec(vec![argv0, "-c".into(), script], Duration::from_secs(60));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let gate = async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            std::process::exit(0)
        };
        let ignore = |_: OutputChunk| {};
        let out = rt.block_on(sandbox.run_gated(spec, gate, &ignore, CancellationToken::new()));
        panic!("the gate resolved: {out:?}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = |var: &str, value: String| {
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "gated::a_gateway_that_dies_before_the_gate_opens_runs_nothing",
                "--test-threads=1",
            ])
            .env(var, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    };
    let mut checks = Vec::new();
    for (i, delay) in [0u64, 30, 300].into_iter().enumerate() {
        let marker = format!("43{}{i}", std::process::id());
        let base = tmp.path().join(i.to_string());
        std::fs::create_dir(&base).unwrap();
        let status = child(
            LOST_GATE_ENV,
            format!("{delay} {marker} {}", base.display()),
        );
        assert!(status.success(), "child with delay {delay} ms: {status}");
        checks.push((marker, base));
    }
    // Give a released command time to show itself.
    std::thread::sleep(Duration::from_millis(500));
    let ran = |marker: &str, base: &Path| base.join("files").join("acme").join(marker).exists();
    for (marker, base) in &checks {
        assert!(
            !ran(marker, base),
            "the command ran after its gateway died before the gate opened"
        );
    }
    let next = tmp.path().join("next");
    std::fs::create_dir(&next).unwrap();
    assert!(child(SWEEP_ENV, next.display().to_string()).success());
    let left = || -> Vec<String> {
        checks
            .iter()
            .flat_map(|(m, _)| processes_matching(&format!("sleep 0.{m}")))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        left(),
        Vec::<String>::new(),
        "the next gateway did not sweep them"
    );
    for (marker, base) in &checks {
        assert!(!ran(marker, base), "the sweep released a command");
    }
}
