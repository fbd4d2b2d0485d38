//! The warm pool: a pooled sandbox serves one task of one tenant and is
//! gone after it, the stub runs nothing it was not handed, and pooled
//! sandboxes die with the gateway. The escape suite runs against pooled
//! sandboxes too (`pooled.rs`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcp_core::{NetworkAccess, ResourceLimits};
use mcp_sandbox::{EXIT_PROTOCOL, Ending, PoolSettings, RunSpec, Sandbox};
use tokio_util::sync::CancellationToken;

use super::{Harness, profiles_dir, text};

const STUB: &str = env!("CARGO_BIN_EXE_mcp-sandbox-stub");

/// Enables a pool of `size` per profile and tenant for every profile.
pub(crate) fn enable(sandbox: &Sandbox, size: usize) {
    let sizes = sandbox
        .profiles()
        .names()
        .into_iter()
        .map(|n| (n.to_owned(), size))
        .collect();
    sandbox
        .enable_pool(PoolSettings {
            sizes,
            max_total: 64,
            stub: PathBuf::from(STUB),
            stub_args: Vec::new(),
        })
        .unwrap();
}

/// Whether `spec` can be served by a pooled sandbox (no network, no
/// denied paths, no cgroup limits of its own).
pub(crate) fn fits(spec: &RunSpec) -> bool {
    spec.network == NetworkAccess::None
        && spec.denied_paths.is_empty()
        && spec.limits.memory_bytes == 0
        && spec.limits.pids == 0
        && spec.limits.cpu_limit == 0.0
        && spec.limits.io_weight == 0
}

fn pooled() -> Harness {
    Harness::with_profiles_pooled(1 << 20, &profiles_dir(), true)
}

const PROBE: &str = "readlink /proc/self/ns/pid; ls -A /workspace; touch /workspace/mark; \
                     ls -A /files; echo secret > /files/mine-$(cat /proc/sys/kernel/random/uuid)";

/// Two tasks in a row each get a sandbox of their own: a new pid namespace
/// and an empty workspace.
#[tokio::test]
async fn a_pooled_sandbox_serves_one_task() {
    let h = pooled();
    let (a, _) = h.run(h.sh(PROBE)).await;
    let (b, _) = h.run(h.sh(PROBE)).await;
    assert_eq!(a.ending, Ending::Exited(0), "{}", text(&a.result.stderr));
    assert_eq!(b.ending, Ending::Exited(0), "{}", text(&b.result.stderr));
    let a_out = text(&a.result.stdout);
    let b_out = text(&b.result.stdout);
    let a_ns = a_out.lines().next().unwrap();
    let b_ns = b_out.lines().next().unwrap();
    assert!(a_ns.starts_with("pid:["), "{a_out}");
    assert_ne!(a_ns, b_ns, "the second task ran in the first one's sandbox");
    assert!(!b_out.contains("mark"), "the workspace was reused: {b_out}");
    assert_eq!(h.sandbox.pool_stats().pooled_runs, 2);
}

/// A pool fills per tenant: a sandbox started for one tenant never runs a
/// task of another, and each tenant sees only its own files.
#[tokio::test]
async fn pools_never_cross_tenants() {
    let h = pooled();
    h.sandbox.prewarm("default", "acme").await.unwrap();
    let (a, _) = h.run(h.sh(PROBE)).await;
    assert_eq!(a.ending, Ending::Exited(0), "{}", text(&a.result.stderr));
    assert_eq!(h.sandbox.pool_stats().pooled_runs, 1);

    // Tenant "other" has no pool yet: acme's refilled sandbox is not used.
    let mut spec = h.sh(PROBE);
    spec.tenant = "other".into();
    h.sandbox.prewarm("default", "acme").await.unwrap();
    let before = h.sandbox.pool_stats();
    assert_eq!(before.ready, 1, "{before:?}");
    let ignore = |_| {};
    let cold = h
        .sandbox
        .run(spec.clone(), &ignore, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(cold.ending, Ending::Exited(0));
    assert_eq!(
        h.sandbox.pool_stats().pooled_runs,
        1,
        "ran in acme's sandbox"
    );

    // Now "other" has its own pooled sandbox, with its own files.
    spec.task_id = mcp_core::TaskId::new();
    let (o, _) = h.run(spec).await;
    assert_eq!(h.sandbox.pool_stats().pooled_runs, 2);
    let o_out = text(&o.result.stdout);
    assert!(o_out.contains("mine-"), "other's own earlier file: {o_out}");
    let acme_files: Vec<_> = std::fs::read_dir(h.files_root().join("acme"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for f in &acme_files {
        assert!(!o_out.contains(f.as_str()), "acme's {f} visible to other");
    }
}

/// The task's env, cwd and rlimits reach the command through the stub;
/// nothing of the stub's own state does.
#[tokio::test]
async fn env_cwd_and_rlimits_are_the_tasks() {
    let h = pooled();
    let mut spec = h.sh("pwd; echo \"v=$MY_VAR\"; ulimit -t; ulimit -n; ls -l /proc/self/fd/0");
    spec.env.insert("MY_VAR".into(), "x y".into());
    spec.cwd = "a/b/".into();
    spec.timeout = Duration::from_secs(3);
    let (out, _) = h.run(spec).await;
    let s = text(&out.result.stdout);
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.first().copied(), Some("/workspace/a/b"), "{s}");
    assert_eq!(lines.get(1).copied(), Some("v=x y"), "{s}");
    // RLIMIT_CPU: min(cpu_time_secs, timeout) + 1, as for a cold sandbox.
    assert_eq!(lines.get(2).copied(), Some("4"), "{s}");
    assert_eq!(lines.get(3).copied(), Some("1024"), "{s}");
    assert!(
        lines.get(4).is_some_and(|l| l.ends_with("/dev/null")),
        "{s}"
    );
}

/// A command that does not exist fails as it does in a cold sandbox.
#[tokio::test]
async fn a_missing_command_fails_like_a_cold_one() {
    let h = pooled();
    let mut spec = h.sh("true");
    spec.argv = vec!["/usr/bin/no-such-command".into()];
    let (out, _) = h.run(spec.clone()).await;
    let cold = Harness::new();
    spec.task_id = mcp_core::TaskId::new();
    let (c, _) = cold.run(spec).await;
    assert_eq!(out.ending, c.ending);
    assert_eq!(out.result.exit_code, 1);
    assert!(text(&out.result.stderr).contains("execvp /usr/bin/no-such-command"));
}

/// Timeout and cancellation kill a pooled sandbox as they kill a cold one,
/// and the pool is not used for what it cannot enforce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancel_and_fallbacks() {
    let h = pooled();
    let mut spec = h.sh("sleep 30");
    spec.timeout = Duration::from_millis(300);
    let (out, _) = h.run(spec).await;
    assert_eq!(out.ending, Ending::TimedOut);

    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let (out, _) = h.run_with(h.sh("sleep 30"), cancel).await.unwrap();
    assert_eq!(out.ending, Ending::Cancelled);
    assert_eq!(h.sandbox.pool_stats().pooled_runs, 2);

    // Own cgroup limits: cold, and the limit holds.
    let mut spec = h.sh("echo ok");
    spec.limits = ResourceLimits {
        pids: 8,
        ..ResourceLimits::default()
    };
    h.sandbox.prewarm("default", "acme").await.unwrap();
    let (out, _) = h.run(spec).await;
    assert_eq!(out.ending, Ending::Exited(0));
    let stats = h.sandbox.pool_stats();
    assert_eq!(stats.pooled_runs, 2, "{stats:?}");
    assert!(stats.cold_runs >= 1, "{stats:?}");
}

/// The wire form of an order, written out here so the test pins it.
fn order(argv: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [1u64 << 30, 64, 256, 1 << 20, 10] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    let s = |p: &mut Vec<u8>, x: &str| {
        p.extend_from_slice(&u32::try_from(x.len()).unwrap().to_le_bytes());
        p.extend_from_slice(x.as_bytes());
    };
    s(&mut p, "");
    p.extend_from_slice(&u32::try_from(argv.len()).unwrap().to_le_bytes());
    for a in argv {
        s(&mut p, a);
    }
    p.extend_from_slice(&1u32.to_le_bytes());
    s(&mut p, "PATH");
    s(&mut p, "/usr/bin:/bin");
    let mut m = b"MCPSTUB1".to_vec();
    m.extend_from_slice(&u32::try_from(p.len()).unwrap().to_le_bytes());
    m.extend_from_slice(&p);
    m
}

/// Runs the stub on the host with `send` written to its channel (then the
/// channel closed); returns its exit code and stderr.
fn stub_with(send: &[u8]) -> (Option<i32>, String) {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let child = Command::new(STUB)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(ws.path())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 1];
    ours.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"R");
    let _ = ours.write_all(send);
    drop(ours);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stderr))
}

/// The stub executes nothing unless it got one whole, well-formed order:
/// a closed channel, garbage, a truncated or padded order make it exit
/// with EXIT_PROTOCOL, and the command in the order never ran.
#[test]
fn the_stub_runs_nothing_but_a_whole_order() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let marker_s = marker.to_str().unwrap();
    let good = order(&["/usr/bin/touch", marker_s]);
    let mut padded = good.clone();
    padded.push(0);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let relative = order(&["touch", marker_s]);
    let cases: [(&str, &[u8]); 6] = [
        ("closed channel", b""),
        (
            "garbage",
            b"\x00\xffnot an order at all, not even close......",
        ),
        ("truncated", &good[..good.len() - 3]),
        ("trailing byte", &padded),
        ("bad magic", &bad_magic),
        ("relative argv[0]", &relative),
    ];
    for (what, bytes) in cases {
        let (code, stderr) = stub_with(bytes);
        assert_eq!(code, Some(i32::from(EXIT_PROTOCOL)), "{what}: {stderr}");
        assert!(stderr.contains("nothing was run"), "{what}: {stderr}");
        assert!(!marker.exists(), "{what}: the command ran");
    }
    let (code, stderr) = stub_with(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(marker.exists(), "the whole order did not run");
}

const DIE_ENV: &str = "MCP_SANDBOX_POOL_TEST_DIE";

/// A gateway that dies (SIGKILL, no cleanup) takes its pooled sandboxes
/// with it: they are spawned with the same parent-death signal as cold
/// ones. The test re-runs itself as the gateway that dies.
#[test]
fn pooled_sandboxes_die_with_the_gateway() {
    if std::env::var(DIE_ENV).is_ok() {
        let h = pooled();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(h.sandbox.prewarm("default", "acme")).unwrap();
        println!("TMP-DIR={}", h.tmp.path().display());
        for d in h.sandbox.enforcement().cgroup_dirs {
            println!("GW-DIR={}", d.display());
            for task in std::fs::read_dir(&d).unwrap().flatten() {
                let procs = std::fs::read_to_string(task.path().join("cgroup.procs"));
                for pid in procs.unwrap_or_default().lines() {
                    println!("PID={pid}");
                }
            }
        }
        // SIGKILL ourselves: no destructor, no cleanup runs.
        let _ = std::io::stdout().flush();
        unsafe_free_sigkill();
    }
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(&exe)
        .args([
            "--exact",
            "pool::pooled_sandboxes_die_with_the_gateway",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIE_ENV, "1")
        .output()
        .unwrap();
    let stdout = text(&child.stdout);
    let pids: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PID="))
        .map(str::to_owned)
        .collect();
    assert!(
        !pids.is_empty(),
        "the dying gateway had no pooled sandbox: {stdout}\n{}",
        text(&child.stderr)
    );
    let alive = || -> Vec<String> {
        pids.iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| !r.trim_start().starts_with('Z'))
                })
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alive().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = alive();
    for d in stdout.lines().filter_map(|l| l.strip_prefix("GW-DIR=")) {
        // The next gateway would sweep these; do it here.
        if let Ok(tasks) = std::fs::read_dir(d) {
            for t in tasks.flatten() {
                let _ = std::fs::remove_dir(t.path());
            }
        }
        let _ = std::fs::remove_dir(d);
    }
    for tmp in stdout.lines().filter_map(|l| l.strip_prefix("TMP-DIR=")) {
        let _ = std::fs::remove_dir_all(tmp);
    }
    assert!(
        left.is_empty(),
        "pooled sandboxes outlived the gateway: {left:?}"
    );
}

/// Ends this process with SIGKILL (no destructors), without `unsafe`.
fn unsafe_free_sigkill() -> ! {
    let _ = Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(60));
    panic!("still alive after SIGKILL");
}

/// The settings are checked when the pool is enabled.
#[test]
fn bad_pool_settings_are_refused() {
    let h = Harness::new();
    let bad = PoolSettings {
        sizes: BTreeMap::from([("nope".to_owned(), 1), ("default".to_owned(), 1000)]),
        max_total: 0,
        stub: PathBuf::from("/nonexistent/stub"),
        stub_args: Vec::new(),
    };
    let err = h.sandbox.enable_pool(bad).unwrap_err().to_string();
    for want in [
        "unknown profile \"nope\"",
        "above 64",
        "max_total",
        "/nonexistent/stub",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    enable(&h.sandbox, 1);
    let again = h.sandbox.enable_pool(PoolSettings {
        sizes: BTreeMap::new(),
        max_total: 1,
        stub: PathBuf::from(STUB),
        stub_args: Vec::new(),
    });
    assert!(again.unwrap_err().to_string().contains("already enabled"));
}

/// Pooled sandboxes start in a lean mount namespace too, even with a stub
/// outside the gateway's own files (this test's `mcp-sandbox-stub`).
#[tokio::test]
async fn pooled_sandboxes_start_in_a_lean_mount_namespace() {
    let h = pooled();
    let spec = h.sh("true");
    h.sandbox
        .prewarm(&spec.profile, &spec.tenant)
        .await
        .unwrap();
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    // Pooled bubblewraps of this process (other tests' too, which use the
    // same stub, all covered): the stub as the sandbox sees it
    // (`--ro-bind-fd` puts it there).
    let waiting = super::bwrap_children_mnt_ns("/.mcp-sandbox-stub");
    assert!(
        !waiting.is_empty(),
        "no pooled bubblewrap of ours is waiting"
    );
    for ns in &waiting {
        assert_ne!(
            *ns, ours,
            "a pooled bubblewrap started in the gateway's mount namespace"
        );
    }
    let (out, _) = h.run(spec).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(h.sandbox.pool_stats().pooled_runs, 1);
}

/// A claimed sandbox is replaced after its task, not while it runs (a
/// bwrap start beside it would compete with it for the CPU), as long as
/// another one is waiting; a pool left empty by a claim starts its
/// replacement at once.
#[tokio::test]
async fn a_claimed_sandbox_is_replaced_after_its_task_unless_the_pool_ran_dry() {
    for (size, replaced_during) in [(2usize, false), (1, true)] {
        let h = Harness::with_profiles(1 << 20, &profiles_dir());
        enable(&h.sandbox, size);
        h.sandbox.prewarm("default", "acme").await.unwrap();
        let spec = h.sh("echo started; sleep 0.6");
        let sandbox = h.sandbox.clone();
        let run = tokio::spawn(async move {
            let ignore = |_: mcp_core::OutputChunk| {};
            sandbox.run(spec, &ignore, CancellationToken::new()).await
        });
        // The claim happened: fewer ready than the size.
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.sandbox.pool_stats().pooled_runs == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let during = h.sandbox.pool_stats();
        assert_eq!(during.pooled_runs, 1, "size {size}: {during:?}");
        let replacing = during.starting + during.ready >= size;
        assert_eq!(
            replacing, replaced_during,
            "size {size}, during the task: {during:?}"
        );
        let out = run.await.unwrap().unwrap();
        assert_eq!(
            out.ending,
            Ending::Exited(0),
            "{}",
            text(&out.result.stderr)
        );
        // After it, the pool is topped up either way.
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.sandbox.pool_stats().ready < size && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            h.sandbox.pool_stats().ready,
            size,
            "size {size}: not refilled"
        );
    }
}
