//! Integration tests: real bubblewrap, real processes, real files. A missing
//! bubblewrap fails these tests with a message saying what to install.

// This whole crate is test code; clippy's allow-*-in-tests only covers
// `#[test]` functions, not the helpers they share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcp_core::{ChunkKind, FileOp, NetworkAccess, OutputChunk, ResourceLimits, TaskId, ValidFile};
use mcp_sandbox::{
    Ending, FileError, FilesRoot, HostOptions, PoolSettings, Profile, Profiles, RunOutcome,
    RunSpec, Sandbox, SandboxError, SandboxSettings, UidRange,
};
use tokio_util::sync::CancellationToken;

const BWRAP: &str = "/usr/bin/bwrap";

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox-profiles")
}

fn host_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap()
}

mod escape;
mod gated;
mod pool;
mod pooled;
mod uids;

/// Whether the escape suite at `escape` runs against pooled sandboxes
/// (`pooled::escape` is the same suite with this `true`).
const POOLED: bool = false;

/// A sandbox with its sockets and files roots under `base`.
fn sandbox_in(base: &Path, max_output_bytes: usize) -> Sandbox {
    sandbox_with(base, max_output_bytes, &profiles_dir())
}

/// Like [`sandbox_in`], with the profiles of `profiles`.
fn sandbox_with(base: &Path, max_output_bytes: usize, profiles: &Path) -> Sandbox {
    assert!(
        Path::new(BWRAP).exists(),
        "these tests need bubblewrap at {BWRAP}: apt-get install bubblewrap"
    );
    // The sandbox user must be able to reach its workspace below here.
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711)).unwrap();
    let settings = SandboxSettings {
        bwrap: BWRAP.into(),
        run_as: SandboxSettings::default_run_as(),
        sockets_dir: base.join("sockets"),
        files_root: base.join("files"),
        max_output_bytes,
    };
    let profiles = Profiles::load_dir(profiles).unwrap();
    Sandbox::new(settings, profiles).unwrap_or_else(|e| {
        panic!(
            "{e}\nthese tests need bubblewrap 0.8+, seccomp and cgroups (run as root, or in a \
             delegated cgroup v2 subtree); `mcp-gateway sandbox check` says what is missing"
        )
    })
}

struct Harness {
    tmp: tempfile::TempDir,
    sandbox: Sandbox,
    /// Runs through [`Harness::run`] use a pooled sandbox whenever the
    /// spec allows it (asserted), else a cold one.
    pooled: bool,
    /// The names (workspace and cgroup) of the pooled sandboxes used.
    used: Mutex<Vec<String>>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_max_output(1 << 20)
    }

    fn with_max_output(max_output_bytes: usize) -> Harness {
        Harness::with_profiles(max_output_bytes, &profiles_dir())
    }

    fn with_profiles(max_output_bytes: usize, profiles: &Path) -> Harness {
        assert!(
            Path::new(BWRAP).exists(),
            "these tests need bubblewrap at {BWRAP}: apt-get install bubblewrap"
        );
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = sandbox_with(tmp.path(), max_output_bytes, profiles);
        Harness {
            tmp,
            sandbox,
            pooled: false,
            used: Mutex::new(Vec::new()),
        }
    }

    /// Like [`Harness::with_profiles`], with a warm pool of one sandbox per
    /// profile and tenant when `pooled`.
    fn with_profiles_pooled(max_output_bytes: usize, profiles: &Path, pooled: bool) -> Harness {
        let mut h = Harness::with_profiles(max_output_bytes, profiles);
        if pooled {
            pool::enable(&h.sandbox, 1);
            h.pooled = true;
        }
        h
    }

    /// The pooled sandboxes used by [`Harness::run`] so far.
    fn used_pooled(&self) -> Vec<String> {
        self.used.lock().unwrap().clone()
    }

    /// The sandboxes that have a task cgroup now: named after their task,
    /// or a pooled one after the id it was started with. Empty on a host
    /// without cgroups.
    fn sandbox_names(&self) -> Vec<String> {
        let dirs = self.sandbox.enforcement().cgroup_dirs;
        dirs.first()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where the task cgroup of `task` is (in the first hierarchy): it
    /// exists from the sandbox's set-up until its host state is released.
    fn task_cgroup(&self, task: TaskId) -> PathBuf {
        let dirs = self.sandbox.enforcement().cgroup_dirs;
        let first = dirs.first().expect("the sandbox tests need task cgroups");
        first.join(task.to_string())
    }

    fn sockets(&self) -> PathBuf {
        self.tmp.path().join("sockets")
    }

    fn files_root(&self) -> PathBuf {
        self.tmp.path().join("files")
    }

    fn spec(&self, cmd: &str, args: &[&str]) -> RunSpec {
        let argv0 = self
            .sandbox
            .resolve_command("default", cmd)
            .unwrap_or_else(|| panic!("{cmd} not found in the default profile"));
        let mut argv = vec![argv0];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        acme_spec(argv, Duration::from_secs(30))
    }

    fn sh(&self, script: &str) -> RunSpec {
        self.spec("sh", &["-c", script])
    }

    async fn run(&self, spec: RunSpec) -> (RunOutcome, Vec<OutputChunk>) {
        self.run_with(spec, CancellationToken::new()).await.unwrap()
    }

    async fn run_with(
        &self,
        spec: RunSpec,
        cancel: CancellationToken,
    ) -> Result<(RunOutcome, Vec<OutputChunk>), SandboxError> {
        let chunks = Mutex::new(Vec::new());
        let on_output = |c: OutputChunk| chunks.lock().unwrap().push(c);
        let expect_pooled = self.pooled && pool::fits(&spec);
        if expect_pooled {
            self.sandbox
                .prewarm(&spec.profile, &spec.tenant)
                .await
                .unwrap();
        }
        let before = self.sandbox.pool_stats().pooled_runs;
        let waiting = self.sandbox_names();
        let outcome = self.sandbox.run(spec, &on_output, cancel).await?;
        if expect_pooled && !waiting.is_empty() {
            // The pooled sandbox the run used: its cgroup is removed in
            // the background right after the run.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let now = self.sandbox_names();
                let gone: Vec<String> = waiting
                    .iter()
                    .filter(|n| !now.contains(n))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    self.used.lock().unwrap().extend(gone);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no pooled sandbox's cgroup went with the run: {waiting:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if expect_pooled {
            assert_eq!(
                self.sandbox.pool_stats().pooled_runs,
                before + 1,
                "the run did not use a pooled sandbox"
            );
        }
        Ok((outcome, chunks.into_inner().unwrap()))
    }
}

/// A task of tenant `acme` in the default profile, with nothing else set.
fn acme_spec(argv: Vec<String>, timeout: Duration) -> RunSpec {
    RunSpec {
        task_id: TaskId::new(),
        tenant: "acme".to_owned(),
        profile: "default".to_owned(),
        argv,
        env: BTreeMap::new(),
        cwd: String::new(),
        timeout,
        network: NetworkAccess::None,
        limits: ResourceLimits::default(),
        denied_paths: Vec::new(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn streamed(chunks: &[OutputChunk], kind: ChunkKind) -> Vec<u8> {
    chunks
        .iter()
        .filter(|c| c.kind == kind)
        .flat_map(|c| c.data.clone())
        .collect()
}

/// Processes whose command line contains `needle`.
fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = text(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

// ---------------------------------------------------------------- commands

#[tokio::test]
async fn echo_prints_and_exits_zero() {
    let h = Harness::new();
    let (out, chunks) = h.run(h.spec("echo", &["hello", "world"])).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(out.result.exit_code, 0);
    assert_eq!(text(&out.result.stdout), "hello world\n");
    assert_eq!(streamed(&chunks, ChunkKind::Stdout), b"hello world\n");
    assert!(out.result.stderr.is_empty(), "{}", text(&out.result.stderr));
    assert!(!chunks.iter().any(|c| c.kind == ChunkKind::ExitCode));
}

/// As root, bubblewrap starts in the lean mount namespace (only what the
/// sandboxes are built from), not in the gateway's own: its start-up cost
/// then does not grow with the host's mount table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bubblewrap_starts_in_the_lean_mount_namespace() {
    assert!(host_is_root(), "the sandbox tests run as root");
    let h = Harness::new();
    assert!(h.sandbox.lean_mounts().is_some_and(|n| n > 0));
    let marker = format!("lean-ns-{}", TaskId::new());
    let sandbox = h.sandbox.clone();
    let spec = h.sh(&format!("sleep 2 # {marker}"));
    let run = tokio::spawn(async move {
        let ignore = |_: OutputChunk| {};
        sandbox.run(spec, &ignore, CancellationToken::new()).await
    });
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut outer = Vec::new();
    for _ in 0..200 {
        outer = bwrap_children_mnt_ns(&marker);
        if !outer.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!outer.is_empty(), "no bubblewrap of ours is running");
    for ns in outer {
        assert_ne!(
            ns, ours,
            "bubblewrap started in the gateway's mount namespace"
        );
    }
    let out = run.await.unwrap().unwrap();
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_send_and_concurrent() {
    let h = Harness::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let sandbox = h.sandbox.clone();
        let spec = h.sh(&format!("sleep 0.2; echo {i}"));
        // tokio::spawn needs a Send + 'static future.
        tasks.push(tokio::spawn(async move {
            let ignore = |_: OutputChunk| {};
            sandbox.run(spec, &ignore, CancellationToken::new()).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        assert_eq!(text(&out.result.stdout), format!("{i}\n"));
    }
}

#[tokio::test]
async fn false_exits_one() {
    let h = Harness::new();
    let (out, _) = h.run(h.spec("false", &[])).await;
    assert_eq!(out.ending, Ending::Exited(1));
    assert_eq!(out.result.exit_code, 1);
}

#[tokio::test]
async fn shell_exit_code_is_passed_through() {
    let h = Harness::new();
    let (out, _) = h.run(h.sh("exit 7")).await;
    assert_eq!(out.ending, Ending::Exited(7));
    assert_eq!(out.result.exit_code, 7);
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_and_streamed_in_order() {
    let h = Harness::new();
    let (out, chunks) = h
        .run(h.sh("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done"))
        .await;
    assert_eq!(out.ending, Ending::Exited(0));
    assert_eq!(text(&out.result.stdout), "out1\nout2\nout3\n");
    assert_eq!(text(&out.result.stderr), "err1\nerr2\nerr3\n");
    assert_eq!(streamed(&chunks, ChunkKind::Stdout), out.result.stdout);
    assert_eq!(streamed(&chunks, ChunkKind::Stderr), out.result.stderr);
    // Streamed live: with the sleeps, each line arrives as its own chunk.
    assert!(
        chunks
            .iter()
            .filter(|c| c.kind == ChunkKind::Stdout)
            .count()
            >= 2
    );
    assert!(!out.result.stdout_truncated && !out.result.stderr_truncated);
}

#[tokio::test]
async fn timeout_kills_the_whole_tree_promptly() {
    let h = Harness::new();
    let marker = format!("31.{}1", std::process::id());
    let mut spec = h.sh(&format!("echo started; sleep {marker} & sleep {marker}"));
    spec.timeout = Duration::from_secs(1);
    let task = spec.task_id;
    let started = Instant::now();
    let (out, _) = h.run(spec).await;
    let took = started.elapsed();
    assert_eq!(out.ending, Ending::TimedOut);
    assert_eq!(out.result.exit_code, 128 + 9);
    assert_eq!(
        text(&out.result.stdout),
        "started\n",
        "partial output is kept"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let left = processes_matching(&format!("sleep {marker}"));
    assert!(left.is_empty(), "processes survived the timeout: {left:?}");
    assert!(!h.sockets().join(task.to_string()).exists());
}

#[tokio::test]
async fn cancel_kills_and_reports_cancelled() {
    let h = Harness::new();
    let marker = format!("32.{}1", std::process::id());
    let spec = h.sh(&format!("sleep {marker}"));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let (out, _) = h.run_with(spec, cancel).await.unwrap();
    assert_eq!(out.ending, Ending::Cancelled);
    assert_eq!(out.result.exit_code, 137);
    assert!(processes_matching(&format!("sleep {marker}")).is_empty());
}

/// Killing while bubblewrap is still setting up (before it has armed its
/// own parent-death signal in the sandbox's init) must not leave anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_startup_leaves_nothing() {
    let h = Harness::new();
    let mut markers = Vec::new();
    let mut runs = Vec::new();
    for i in 0..24 {
        let marker = format!("35.{}{i}", std::process::id());
        let spec = h.sh(&format!("sleep {marker}"));
        let cancel = CancellationToken::new();
        let sandbox = h.sandbox.clone();
        let trigger = cancel.clone();
        // Spread the cancel over bwrap's first milliseconds.
        let delay = Duration::from_micros(500 * (i % 12));
        runs.push(tokio::spawn(async move {
            let killer = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                trigger.cancel();
            });
            let ignore = |_: OutputChunk| {};
            let out = sandbox.run(spec, &ignore, cancel).await;
            killer.await.unwrap();
            out
        }));
        markers.push(marker);
    }
    for r in runs {
        let out = r.await.unwrap().unwrap();
        assert_eq!(out.ending, Ending::Cancelled);
    }
    let survivors = || -> Vec<String> {
        markers
            .iter()
            .flat_map(|m| processes_matching(&format!("sleep {m}")))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !survivors().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(survivors(), Vec::<String>::new());
}

#[tokio::test]
async fn dropping_the_run_future_kills_reaps_and_cleans_up() {
    let h = Harness::new();
    let marker = format!("33.{}1", std::process::id());
    let spec = h.sh(&format!("sleep {marker}"));
    let ws = h.task_cgroup(spec.task_id);
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        h.run_with(spec, CancellationToken::new()),
    )
    .await;
    assert!(dropped.is_err(), "the run should still be going");
    // The detached reaper finishes in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (ws.exists() || !processes_matching(&format!("sleep {marker}")).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(processes_matching(&format!("sleep {marker}")).is_empty());
    assert!(!ws.exists(), "task cgroup left behind");
}

const ORPHAN_ENV: &str = "MCP_SANDBOX_IT_DIE_AFTER_MS";

/// A gateway that dies while its sandboxes run takes them with it. The test
/// re-runs itself as a child process that starts a sandbox and exits
/// (without any cleanup) a moment after the command started.
#[test]
fn gateway_death_kills_its_sandboxes() {
    if let Ok(arg) = std::env::var(ORPHAN_ENV) {
        // Child role: "<delay ms> <marker> <base dir>".
        let mut parts = arg.splitn(3, ' ');
        let delay: u64 = parts.next().unwrap().parse().unwrap();
        let marker = parts.next().unwrap().to_owned();
        let base = PathBuf::from(parts.next().unwrap());
        let sandbox = sandbox_in(&base, 1024);
        let argv0 = sandbox.resolve_command("default", "sh").unwrap();
        let script = format!("echo ready; sleep {marker} & sleep {marker}");
        let spec = acme_spec(vec![argv0, "-c".into(), script], Duration::from_secs(60));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let exit_soon = move |_: OutputChunk| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                std::process::exit(0);
            });
        };
        let out = rt.block_on(sandbox.run(spec, &exit_soon, CancellationToken::new()));
        panic!("the sandbox outlived the exit timer: {out:?}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut markers = Vec::new();
    for (i, delay) in [0u64, 20, 100, 300].into_iter().enumerate() {
        let marker = format!("34.{}{i}", std::process::id());
        let base = tmp.path().join(i.to_string());
        std::fs::create_dir(&base).unwrap();
        let status = std::process::Command::new(&exe)
            .args([
                "--exact",
                "gateway_death_kills_its_sandboxes",
                "--test-threads=1",
            ])
            .env(ORPHAN_ENV, format!("{delay} {marker} {}", base.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child with delay {delay} ms: {status}");
        markers.push(marker);
    }
    let survivors = || -> Vec<String> {
        markers
            .iter()
            .flat_map(|m| processes_matching(&format!("sleep {m}")))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !survivors().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(survivors(), Vec::<String>::new());
}

// --------------------------------------------------------------- isolation

#[tokio::test]
async fn host_environment_is_invisible() {
    let h = Harness::new();
    let pkg = std::env::var("CARGO_PKG_NAME")
        .expect("cargo test sets CARGO_PKG_NAME in the test process");
    assert_eq!(pkg, "mcp-sandbox");
    let mut spec = h.sh("env; echo; echo environ-bytes=$(cat /proc/1/environ | wc -c)");
    spec.env.insert("REQUEST_VAR".into(), "from-request".into());
    let (out, _) = h.run(spec).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    let stdout = text(&out.result.stdout);
    assert!(!stdout.contains("CARGO_PKG_NAME"), "{stdout}");
    let profile = h.sandbox.profiles().get("default").unwrap();
    for (k, v) in std::env::vars() {
        if !profile.env.contains_key(&k) {
            assert!(
                !stdout.contains(&format!("{k}={v}\n")),
                "host {k} leaked: {stdout}"
            );
        }
    }
    assert!(stdout.contains("REQUEST_VAR=from-request\n"), "{stdout}");
    assert!(stdout.contains("HOME=/workspace\n"), "{stdout}");
    assert!(stdout.contains("LANG=C.UTF-8\n"), "{stdout}");
    assert!(stdout.contains("environ-bytes=0\n"), "{stdout}");
}

#[tokio::test]
async fn command_is_unprivileged_without_capabilities() {
    let h = Harness::new();
    let (out, _) = h
        .run(h.sh("id -u; grep -E '^(CapEff|CapPrm|CapBnd):' /proc/self/status; hostname"))
        .await;
    let stdout = text(&out.result.stdout);
    let mut lines = stdout.lines();
    let uid = lines.next().unwrap();
    if host_is_root() {
        assert_eq!(uid, "65534", "{stdout}");
    }
    assert_ne!(uid, "0", "{stdout}");
    for cap in ["CapEff", "CapPrm", "CapBnd"] {
        assert!(
            stdout.contains(&format!("{cap}:\t0000000000000000")),
            "{stdout}"
        );
    }
    assert!(stdout.ends_with("sandbox\n"), "{stdout}");
}

fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn no_network_unless_the_profile_allows_host() {
    let h = Harness::new();
    let (out, _) = h.run(h.spec("cat", &["/proc/net/dev"])).await;
    assert_eq!(interfaces(&text(&out.result.stdout)), vec!["lo".to_owned()]);

    let mut spec = h.spec("true", &[]);
    spec.network = NetworkAccess::Host;
    let err = h
        .run_with(spec, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::NetworkNotAllowed { ref profile } if profile == "default"));

    let mut spec = h.spec("cat", &["/proc/net/dev"]);
    spec.profile = "build".into();
    spec.network = NetworkAccess::Host;
    let (out, _) = h.run(spec).await;
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(interfaces(&text(&out.result.stdout)), host);
}

#[tokio::test]
async fn restricted_network_needs_an_egress_binding_and_a_profile_allowing_it() {
    let h = Harness::new();
    let mut spec = h.spec("true", &[]);
    spec.network = NetworkAccess::Restricted;
    let err = h
        .run_with(spec.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::NetworkNotAllowed { ref profile } if profile == "default"),
        "{err}"
    );
    // Without the gateway's egress proxy bound in, there is no way out.
    for profile in ["network-restricted", "build"] {
        spec.profile = profile.into();
        spec.task_id = TaskId::new();
        let err = h
            .run_with(spec.clone(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, SandboxError::Unsupported { .. }),
            "{profile}: {err}"
        );
    }
    // Without network, the network-restricted profile runs like default.
    let mut spec = h.spec("true", &[]);
    spec.profile = "network-restricted".into();
    let (out, _) = h.run(spec).await;
    assert_eq!(out.ending, Ending::Exited(0));
}

#[tokio::test]
async fn system_is_read_only() {
    let h = Harness::new();
    let (out, _) = h.run(h.sh("touch /usr/pwned")).await;
    assert_ne!(out.result.exit_code, 0);
    assert!(
        text(&out.result.stderr).contains("Read-only file system"),
        "{}",
        text(&out.result.stderr)
    );
    assert!(!Path::new("/usr/pwned").exists());
}

#[tokio::test]
async fn tmp_is_private_to_each_run() {
    let h = Harness::new();
    let (out, _) = h.run(h.sh("echo x > /tmp/marker && ls -A /tmp")).await;
    assert_eq!(text(&out.result.stdout), "marker\n");
    let (out, _) = h.run(h.sh("ls -A /tmp; test -e /tmp/marker")).await;
    assert_eq!(out.result.exit_code, 1);
    assert_eq!(text(&out.result.stdout), "");
    // Size-capped: 64 MiB in the default profile.
    let (out, _) = h.run(h.sh("head -c 70000000 /dev/zero > /tmp/big")).await;
    assert_ne!(out.result.exit_code, 0);
    assert!(
        text(&out.result.stderr).contains("No space left"),
        "{}",
        text(&out.result.stderr)
    );
}

#[tokio::test]
async fn workspace_is_writable_private_and_removed() {
    let h = Harness::new();
    let spec = h.sh("echo hi > f && cat f && pwd && stat -c %a .");
    let ws = h.sockets().join(spec.task_id.to_string());
    let (out, _) = h.run(spec).await;
    assert_eq!(
        text(&out.result.stdout),
        "hi\n/workspace\n700\n",
        "{}",
        text(&out.result.stderr)
    );
    assert!(!ws.exists());
    assert_eq!(std::fs::read_dir(h.sockets()).unwrap().count(), 0);
    assert_eq!(
        std::fs::metadata(h.sockets()).unwrap().permissions().mode() & 0o777,
        0o711
    );
}

#[tokio::test]
async fn cwd_subdirectory_is_created_and_used() {
    let h = Harness::new();
    let mut spec = h.sh("pwd; touch made-here");
    spec.cwd = "a/b".into();
    let (out, _) = h.run(spec).await;
    assert_eq!(
        text(&out.result.stdout),
        "/workspace/a/b\n",
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(out.result.exit_code, 0);

    let mut spec = h.sh("pwd");
    spec.cwd = "../etc".into();
    let err = h
        .run_with(spec, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::BadCwd { .. }), "{err}");
}

#[tokio::test]
async fn output_is_capped_but_drained() {
    let h = Harness::with_max_output(1000);
    let (out, chunks) = h
        .run(h.sh("head -c 200000 /dev/zero | tr '\\0' a; echo done >&2"))
        .await;
    assert_eq!(out.ending, Ending::Exited(0));
    assert_eq!(out.result.stdout.len(), 1000);
    assert!(out.result.stdout_truncated);
    assert!(!out.result.stderr_truncated);
    assert_eq!(text(&out.result.stderr), "done\n");
    assert_eq!(streamed(&chunks, ChunkKind::Stdout).len(), 1000);
    let events: Vec<String> = chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Event)
        .map(|c| text(&c.data))
        .collect();
    assert_eq!(events, vec!["stdout truncated at 1000 bytes".to_owned()]);
}

#[tokio::test]
async fn denied_paths_are_masked() {
    let h = Harness::new();
    let mut spec = h.sh(
        "cat /etc/passwd; echo passwd-rc=$?; ls -A /usr/share/doc | wc -l; \
         touch /usr/share/doc/x; echo touch-rc=$?; head -c 4 /usr/bin/sh | wc -c",
    );
    spec.denied_paths = vec![
        "/etc/passwd".into(),
        "/usr/share/doc".into(),
        "/does/not/exist".into(),
    ];
    let (out, _) = h.run(spec).await;
    let stdout = text(&out.result.stdout);
    // The file is /dev/null on a nodev mount: unreadable. The directory is
    // an empty read-only tmpfs. Everything else is untouched.
    assert_eq!(
        stdout,
        "passwd-rc=1\n0\ntouch-rc=1\n4\n",
        "{}",
        text(&out.result.stderr)
    );

    // A symlinked alias is masked too: /bin/cat -> /usr/bin/cat.
    let mut spec = h.sh("/usr/bin/cat /etc/hostname >/dev/null; echo rc=$?");
    spec.denied_paths = vec!["/bin/cat".into()];
    let (out, _) = h.run(spec).await;
    assert_ne!(text(&out.result.stdout), "rc=0\n");

    let mut spec = h.spec("true", &[]);
    spec.denied_paths = vec!["/proc/self".into()];
    let err = h
        .run_with(spec, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::BadDeniedPath { .. }), "{err}");
}

/// (soft, hard) of each limit of `cat /proc/self/limits` output, by name.
fn limits(out: &str) -> BTreeMap<String, (String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let (name, rest) = l.split_at(26.min(l.len()));
            let mut v = rest.split_whitespace();
            Some((
                name.trim().to_owned(),
                (v.next()?.to_owned(), v.next()?.to_owned()),
            ))
        })
        .collect()
}

#[tokio::test]
async fn rlimits_come_from_the_profile_and_requests_only_lower_them() {
    let h = Harness::new();
    let check = |out: &RunOutcome, want: &[(&str, &str)]| {
        let got = limits(&text(&out.result.stdout));
        for (name, value) in want {
            let v = (value.to_string(), value.to_string());
            assert_eq!(got.get(*name), Some(&v), "{name}: {got:?}");
        }
    };
    let (out, _) = h.run(h.spec("cat", &["/proc/self/limits"])).await;
    check(
        &out,
        &[
            ("Max open files", "1024"),
            // pids.max bounds the task; RLIMIT_NPROC, counted per uid, is
            // only a backstop (64 x pids) so tasks cannot starve each other.
            ("Max processes", "16384"),
            ("Max address space", "1073741824"),
            ("Max file size", "268435456"),
            ("Max core file size", "0"),
            ("Max cpu time", "31"),
        ],
    );

    let mut spec = h.spec("cat", &["/proc/self/limits"]);
    spec.timeout = Duration::from_secs(5);
    spec.limits = ResourceLimits {
        memory_bytes: 512 << 20,
        pids: 100,
        ..Default::default()
    };
    let (out, _) = h.run(spec.clone()).await;
    check(
        &out,
        &[
            ("Max processes", "6400"),
            ("Max address space", "536870912"),
            ("Max cpu time", "6"),
        ],
    );

    spec.task_id = TaskId::new();
    spec.limits.pids = 100_000;
    spec.limits.memory_bytes = 1 << 40;
    let (out, _) = h.run(spec).await;
    check(
        &out,
        &[
            ("Max processes", "16384"),
            ("Max address space", "1073741824"),
        ],
    );
}

#[tokio::test]
async fn resource_usage_is_reported() {
    let h = Harness::new();
    let (out, _) =
        h.run(h.sh(
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; head -c 1000000 /dev/zero > f",
        ))
        .await;
    assert_eq!(out.ending, Ending::Exited(0));
    let u = out.result.usage;
    assert!(u.cpu_time_ms > 0, "{u:?}");
    assert!(u.max_memory_kb > 0, "{u:?}");
    assert!(
        out.result.execution_time_ms >= u.cpu_time_ms / 2,
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn unknown_profile_and_bad_tenant_are_errors() {
    let h = Harness::new();
    let mut spec = h.spec("true", &[]);
    spec.profile = "nope".into();
    let err = h
        .run_with(spec, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::UnknownProfile { ref name } if name == "nope"));

    for tenant in ["", "../x", "a/b", ".sandbox-check", &"t".repeat(65)] {
        let mut spec = h.spec("true", &[]);
        spec.tenant = tenant.into();
        let err = h
            .run_with(spec, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, SandboxError::BadTenant { .. }),
            "{tenant:?}: {err}"
        );
    }
    let mut spec = h.spec("true", &[]);
    spec.argv = vec!["true".into()];
    let err = h
        .run_with(spec, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::BadArgv { .. }), "{err}");
    // Nothing was left behind by the refused runs.
    assert_eq!(std::fs::read_dir(h.sockets()).unwrap().count(), 0);
}

#[tokio::test]
async fn files_root_is_shared_with_the_tenant_only() {
    let h = Harness::new();
    let files = FilesRoot::new(h.files_root(), SandboxSettings::default_run_as(), 1 << 20).unwrap();
    let f = |path: &str| ValidFile {
        path: path.into(),
        op: FileOp::Write,
        mode: 0o644,
        recursive: false,
    };
    files
        .write("acme", &f("in.txt"), b"from gateway", false)
        .await
        .unwrap();
    let (out, _) = h
        .run(h.sh("cat /files/in.txt; echo from sandbox > /files/out.txt; ls /files"))
        .await;
    assert_eq!(
        text(&out.result.stdout),
        "from gatewayin.txt\nout.txt\n",
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(
        files.read("acme", &f("out.txt")).await.unwrap(),
        b"from sandbox\n"
    );

    let mut spec = h.sh("ls -A /files");
    spec.tenant = "other".into();
    let (out, _) = h.run(spec).await;
    assert_eq!(text(&out.result.stdout), "");
}

/// The seccomp allowlist and read-only root must not break ordinary work:
/// threads (glibc falls back from clone3 to clone), multiprocessing with
/// POSIX semaphores in /dev/shm, subprocesses, unix sockets, sqlite,
/// temporary files and a compiler-style read-write loop in /workspace.
#[tokio::test]
async fn ordinary_programs_still_work() {
    let h = Harness::new();
    let script = r#"
import multiprocessing, threading, subprocess, socket, sqlite3, tempfile, os, hashlib
def sq(x):
    return x * x
t = threading.Thread(target=lambda: None); t.start(); t.join()
with multiprocessing.Pool(2) as p:
    assert p.map(sq, range(5)) == [0, 1, 4, 9, 16]
lock = multiprocessing.Lock(); lock.acquire(); lock.release()
assert subprocess.run(["ls", "/usr"], capture_output=True).returncode == 0
a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
db = sqlite3.connect(os.path.join(tempfile.mkdtemp(), "t.db")); db.execute("create table t(x)"); db.commit()
open("/workspace/data.bin", "wb").write(os.urandom(1 << 20))
print(hashlib.sha256(open("/workspace/data.bin", "rb").read()).hexdigest()[:4] != "", "ok")
"#;
    let (out, _) = h.run(h.spec("python3", &["-c", script])).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(text(&out.result.stdout), "True ok\n");
    let (out, _) = h
        .run(h.sh("tar czf /tmp/py.tgz -C /usr/share/common-licenses . 2>/dev/null; tar tzf /tmp/py.tgz | wc -l"))
        .await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
}

#[tokio::test]
async fn host_report_names_the_profiles_it_cannot_enforce() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = tmp.path().join("profiles");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(
        profiles_dir().join("default.toml"),
        dir.join("default.toml"),
    )
    .unwrap();
    let broken = std::fs::read_to_string(profiles_dir().join("build.toml"))
        .unwrap()
        .replace(
            r#"ro_bind = ["/usr"]"#,
            r#"ro_bind = ["/usr", "/no-such-dir-here"]"#,
        );
    std::fs::write(dir.join("broken.toml"), broken).unwrap();
    let settings = SandboxSettings {
        bwrap: BWRAP.into(),
        run_as: SandboxSettings::default_run_as(),
        sockets_dir: tmp.path().join("w"),
        files_root: tmp.path().join("f"),
        max_output_bytes: 1024,
    };
    let report = mcp_sandbox::probe_host(
        settings.clone(),
        Profiles::load_dir(&dir).unwrap(),
        &HostOptions::default(),
    )
    .await;
    for (name, f) in [
        ("bubblewrap", &report.bwrap),
        ("user namespaces", &report.user_namespaces),
        ("seccomp", &report.seccomp),
        ("cgroups", &report.cgroups),
    ] {
        assert!(f.ok, "this host lacks {name}: {}", f.detail);
    }
    let verdicts: Vec<(&str, bool)> = report
        .profiles
        .iter()
        .map(|p| (p.name.as_str(), p.enforceable))
        .collect();
    assert_eq!(verdicts, vec![("broken", false), ("default", true)]);
    assert!(
        report.profiles[0].problems[0].contains("/no-such-dir-here"),
        "{report}"
    );
    assert!(!report.all_enforceable());
    let text = report.to_string();
    assert!(
        text.contains("broken               NOT ENFORCEABLE"),
        "{text}"
    );
    assert!(text.contains("default              enforceable"), "{text}");
    assert_eq!((&report.uid_range, &report.pool), (&None, &None));
    assert!(
        text.contains("uid range        not set: every sandbox runs as one uid"),
        "{text}"
    );
    assert!(
        text.contains("warm pool        off: every sandbox starts cold"),
        "{text}"
    );

    // With only enforceable profiles, the uid range and the warm pool
    // decide: reported as `serve` would use them.
    std::fs::remove_file(dir.join("broken.toml")).unwrap();
    let stub = tmp.path().join("stub");
    std::fs::write(&stub, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pool = |sizes: &[(&str, usize)], stub: &Path| PoolSettings {
        sizes: sizes.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        max_total: 8,
        stub: stub.to_owned(),
        stub_args: Vec::new(),
    };
    let probe = |options: HostOptions| {
        let settings = settings.clone();
        let dir = dir.clone();
        async move {
            mcp_sandbox::probe_host(settings, Profiles::load_dir(&dir).unwrap(), &options).await
        }
    };
    let good = probe(HostOptions {
        uid_range: Some(UidRange {
            start: 200_000,
            count: 8,
        }),
        pool: Some(pool(&[("default", 2)], &stub)),
    })
    .await;
    assert!(good.passes(), "{good}");
    let range = good.uid_range.clone().unwrap();
    assert_eq!((range.start, range.end, range.count), (200_000, 200_007, 8));
    assert_eq!(range.used, host_is_root(), "{good}");
    assert!(range.problems.is_empty(), "{good}");
    let p = good.pool.clone().unwrap();
    assert_eq!(p.sizes, BTreeMap::from([("default".to_owned(), 2)]));
    assert_eq!(p.max_total, 8);
    assert_eq!(p.stub, stub.display().to_string());
    let text = good.to_string();
    let usage = if host_is_root() {
        "one per sandbox"
    } else {
        "NOT USED (not root)"
    };
    assert!(
        text.contains(&format!("uid range        200000-200007: 8 uids, {usage}")),
        "{text}"
    );
    // 8 waiting sandboxes could hold all 8 uids (only said when used).
    assert_eq!(
        text.contains("the warm pool may hold up to 8 waiting sandboxes"),
        host_is_root(),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "warm pool        default=2 per (profile, tenant); at most 8 in all; stub {}",
            stub.display()
        )),
        "{text}"
    );

    // What `serve` would refuse fails the check, naming it.
    let not_executable = tmp.path().join("not-a-stub");
    std::fs::write(&not_executable, "").unwrap();
    let bad = probe(HostOptions {
        uid_range: None,
        pool: Some(pool(&[("default", 1), ("nosuch", 1)], &not_executable)),
    })
    .await;
    assert!(bad.all_enforceable() && !bad.passes(), "{bad}");
    let problems = bad.pool.clone().unwrap().problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("unknown profile \"nosuch\""),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("is not an executable file"),
        "{problems:?}"
    );
    assert!(
        bad.to_string().contains("    problem: unknown profile"),
        "{bad}"
    );
    if let Some((uid, _)) = SandboxSettings::default_run_as() {
        let clash = probe(HostOptions {
            uid_range: Some(UidRange {
                start: uid - 1,
                count: 4,
            }),
            pool: None,
        })
        .await;
        assert!(!clash.passes(), "{clash}");
        assert!(
            clash.uid_range.unwrap().problems[0].contains("contains the run_as uid"),
            "the range holds the run_as uid"
        );
    }
}

#[tokio::test]
async fn check_passes_on_a_working_host() {
    let h = Harness::new();
    h.sandbox.check().await.unwrap();
}

#[tokio::test]
async fn raw_command_is_the_same_sandbox() {
    let h = Harness::new();
    let spec = h.sh("id -u; pwd");
    let (cmd, guard) = h.sandbox.raw_command(&spec).unwrap();
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with("/workspace\n"), "{stdout}");
    assert!(!stdout.starts_with("0\n"), "{stdout}");
    // Nothing of the task on the host's disk, and its cgroup goes with
    // the guard.
    assert_eq!(std::fs::read_dir(h.sockets()).unwrap().count(), 0);
    let task = spec.task_id.to_string();
    assert!(h.sandbox_names().contains(&task));
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.sandbox_names().contains(&task) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !h.sandbox_names().contains(&task),
        "task cgroup left behind"
    );
}

/// This process's children named bwrap: pid, `/proc/<pid>/stat` and
/// cmdline (NULs as spaces). A child that exits while we look is left out.
fn bwrap_children() -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in list.split_whitespace() {
            let (Ok(stat), Ok(cmdline)) = (
                std::fs::read_to_string(format!("/proc/{pid}/stat")),
                std::fs::read(format!("/proc/{pid}/cmdline")),
            ) else {
                continue;
            };
            if stat.contains("(bwrap) ") {
                found.push((pid.to_owned(), stat, text(&cmdline).replace('\0', " ")));
            }
        }
    }
    found
}

/// The mount namespaces of this process's bwrap children whose command
/// line contains `needle`.
pub(crate) fn bwrap_children_mnt_ns(needle: &str) -> Vec<PathBuf> {
    bwrap_children()
        .into_iter()
        .filter(|(_, _, cmdline)| cmdline.contains(needle))
        .filter_map(|(pid, _, _)| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok())
        .collect()
}

/// This process's children that are zombies named bwrap.
fn bwrap_zombie_children() -> Vec<String> {
    bwrap_children()
        .into_iter()
        .filter(|(_, stat, _)| stat.contains("(bwrap) Z"))
        .map(|(pid, _, _)| pid)
        .collect()
}

#[tokio::test]
async fn orphaned_sandbox_inits_are_adopted_and_reaped() {
    mcp_sandbox::adopt_orphans().unwrap();
    let before = mcp_sandbox::orphans_reaped();
    let h = Harness::new();
    for _ in 0..5 {
        let (out, _) = h.run(h.sh("echo hi")).await;
        assert_eq!(out.result.exit_code, 0);
    }
    // Each sandbox's pid-namespace init outlived the bwrap we waited for
    // and was reparented to this process: the reaper thread collects them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let zombies = bwrap_zombie_children();
        let reaped = mcp_sandbox::orphans_reaped() - before;
        if zombies.is_empty() && reaped >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans reaped: {reaped}, bwrap zombies left: {zombies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------- setup and profiles

#[test]
fn missing_bwrap_fails_with_install_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = SandboxSettings {
        bwrap: tmp.path().join("no-bwrap"),
        run_as: SandboxSettings::default_run_as(),
        sockets_dir: tmp.path().join("w"),
        files_root: tmp.path().join("f"),
        max_output_bytes: 1,
    };
    let err = Sandbox::new(settings, Profiles::load_dir(&profiles_dir()).unwrap()).unwrap_err();
    assert!(matches!(err, SandboxError::BwrapMissing { .. }));
    assert!(
        err.to_string().contains("apt-get install bubblewrap"),
        "{err}"
    );
}

#[test]
fn root_gateway_never_runs_sandboxes_as_root() {
    // What this test proves (a root gateway refuses to start sandboxes as
    // uid/gid 0) only exists for a root gateway: fail loudly elsewhere
    // rather than pass without checking it.
    assert!(
        host_is_root(),
        "this test checks the root gateway's uid drop: run the sandbox tests as root (CI does)"
    );
    assert_eq!(SandboxSettings::default_run_as(), Some((65534, 65534)));
    let tmp = tempfile::tempdir().unwrap();
    for run_as in [None, Some((0, 0)), Some((1000, 0))] {
        let settings = SandboxSettings {
            bwrap: BWRAP.into(),
            run_as,
            sockets_dir: tmp.path().join("w"),
            files_root: tmp.path().join("f"),
            max_output_bytes: 1,
        };
        let err = Sandbox::new(settings, Profiles::load_dir(&profiles_dir()).unwrap()).unwrap_err();
        assert!(matches!(err, SandboxError::RunAsRoot), "{run_as:?}: {err}");
    }
}

#[test]
fn every_profile_file_parses_and_validates() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(profiles_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let profile = Profile::from_toml(&name, &text)
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            assert_eq!(profile.name, name);
            assert!(profile.env.contains_key("PATH"));
            names.push(name);
        }
    }
    names.sort();
    let profiles = Profiles::load_dir(&profiles_dir()).unwrap();
    assert_eq!(profiles.names(), names);
    assert!(names.contains(&"default".to_owned()) && names.contains(&"build".to_owned()));
    let default = profiles.get("default").unwrap();
    assert!(!default.network.allow_host);
    assert_eq!(default.limits.pids, 256);
    assert_eq!(default.filesystem.tmp_size_bytes, 64 << 20);
}

#[test]
fn load_dir_reports_every_bad_file_and_needs_default() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("one.toml"), "description = 1").unwrap();
    std::fs::write(tmp.path().join("two.toml"), "not toml [").unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "ignored").unwrap();
    let err = Profiles::load_dir(tmp.path()).unwrap_err();
    let SandboxError::BadProfile { problems } = err else {
        panic!("{err}");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("one.toml: "), "{problems:?}");
    assert!(problems[1].starts_with("two.toml: "), "{problems:?}");
    assert!(
        problems[2].contains("no profile named \"default\""),
        "{problems:?}"
    );
}

#[test]
fn resolve_command_searches_the_sandbox_path() {
    let h = Harness::new();
    let sb = &h.sandbox;
    assert_eq!(
        sb.resolve_command("default", "echo").as_deref(),
        Some("/usr/bin/echo")
    );
    assert_eq!(
        sb.resolve_command("default", "/usr/bin/echo").as_deref(),
        Some("/usr/bin/echo")
    );
    assert_eq!(
        sb.resolve_command("default", "/bin/sh").as_deref(),
        Some("/bin/sh")
    );
    assert!(sb.resolve_command("default", "python3").is_some());
    for none in [
        "./x.sh",
        "bin/echo",
        "/etc/passwd",
        "/usr/bin",
        "/usr/bin/../bin/echo",
        "no-such-command-here",
        "/workspace/x.sh",
        "",
        ".",
    ] {
        assert_eq!(sb.resolve_command("default", none), None, "{none:?}");
    }
    assert_eq!(sb.resolve_command("nope", "echo"), None);
}

// ---------------------------------------------------------------- FilesRoot

struct Files {
    tmp: tempfile::TempDir,
    files: FilesRoot,
}

const SECRET: &[u8] = b"top secret";

/// A files root with tenants `acme` and `other`, an `outside` directory next
/// to it, and links planted in `acme` the way a sandboxed command could.
fn files_fixture(max_read: u64) -> Files {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("acme")).unwrap();
    std::fs::create_dir_all(root.join("other")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    std::fs::write(root.join("other/secret.txt"), SECRET).unwrap();
    let acme = root.join("acme");
    symlink(outside.join("secret.txt"), acme.join("abs-link")).unwrap();
    symlink("../../outside/secret.txt", acme.join("rel-link")).unwrap();
    symlink("../other/secret.txt", acme.join("tenant-link")).unwrap();
    symlink(&outside, acme.join("dir-link")).unwrap();
    symlink("/etc/shadow", acme.join("shadow")).unwrap();
    let files = FilesRoot::new(root, SandboxSettings::default_run_as(), max_read).unwrap();
    Files { tmp, files }
}

impl Files {
    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }
    fn acme(&self) -> PathBuf {
        self.tmp.path().join("root/acme")
    }
}

fn vf(path: &str, op: FileOp) -> ValidFile {
    ValidFile {
        path: path.into(),
        op,
        mode: 0o640,
        recursive: false,
    }
}

#[tokio::test]
async fn files_write_read_round_trip_with_mode_and_owner() {
    let fx = files_fixture(1 << 20);
    let n = fx
        .files
        .write("acme", &vf("a.txt", FileOp::Write), b"hello", false)
        .await
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(
        fx.files
            .read("acme", &vf("a.txt", FileOp::Read))
            .await
            .unwrap(),
        b"hello"
    );
    let meta = std::fs::metadata(fx.acme().join("a.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    if host_is_root() {
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
    // Overwrite truncates.
    fx.files
        .write("acme", &vf("a.txt", FileOp::Write), b"hi", false)
        .await
        .unwrap();
    assert_eq!(
        fx.files
            .read("acme", &vf("a.txt", FileOp::Read))
            .await
            .unwrap(),
        b"hi"
    );
    // A new tenant's directory is created on first write.
    fx.files
        .write("newco", &vf("x", FileOp::Write), b"1", false)
        .await
        .unwrap();
    assert!(fx.tmp.path().join("root/newco/x").is_file());
}

#[tokio::test]
async fn files_parent_dirs_only_with_create_dirs() {
    let fx = files_fixture(1 << 20);
    let f = vf("a/b/c.txt", FileOp::Write);
    let err = fx.files.write("acme", &f, b"x", false).await.unwrap_err();
    assert!(matches!(err, FileError::ParentMissing { .. }), "{err}");
    fx.files.write("acme", &f, b"x", true).await.unwrap();
    let dir_meta = std::fs::metadata(fx.acme().join("a/b")).unwrap();
    if host_is_root() {
        assert_eq!(dir_meta.uid(), 65534);
    }
    let err = fx
        .files
        .write("acme", &vf("a/b/c.txt/d", FileOp::Write), b"x", false)
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::NotADirectory { .. }), "{err}");
}

#[tokio::test]
async fn files_read_refuses_dirs_missing_and_large_files() {
    let fx = files_fixture(10);
    std::fs::create_dir(fx.acme().join("d")).unwrap();
    let err = fx
        .files
        .read("acme", &vf("d", FileOp::Read))
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::IsADirectory { .. }), "{err}");
    let err = fx
        .files
        .read("acme", &vf("missing", FileOp::Read))
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::NotFound { .. }), "{err}");
    let err = fx
        .files
        .read("nobody-here", &vf("x", FileOp::Read))
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::NotFound { .. }), "{err}");
    fx.files
        .write("acme", &vf("big", FileOp::Write), b"01234567890", false)
        .await
        .unwrap();
    let err = fx
        .files
        .read("acme", &vf("big", FileOp::Read))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FileError::TooLarge {
                size: 11,
                max: 10,
                ..
            }
        ),
        "{err}"
    );
    let err = fx
        .files
        .write("acme", &vf("d", FileOp::Write), b"x", false)
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::IsADirectory { .. }), "{err}");
}

#[tokio::test]
async fn files_fifo_does_not_hang_the_gateway() {
    let fx = files_fixture(1 << 20);
    let status = std::process::Command::new("mkfifo")
        .arg(fx.acme().join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        fx.files.read("acme", &vf("fifo", FileOp::Read)),
    )
    .await
    .expect("read of a FIFO must not block");
    assert!(matches!(read, Err(FileError::Io { .. })), "{read:?}");
    let write = tokio::time::timeout(
        Duration::from_secs(5),
        fx.files
            .write("acme", &vf("fifo", FileOp::Write), b"x", false),
    )
    .await
    .expect("write to a FIFO must not block");
    assert!(write.is_err(), "{write:?}");
}

#[tokio::test]
async fn planted_symlinks_never_lead_outside_the_tenant() {
    let fx = files_fixture(1 << 20);
    for link in [
        "abs-link",
        "rel-link",
        "tenant-link",
        "shadow",
        "dir-link/secret.txt",
    ] {
        let err = fx
            .files
            .read("acme", &vf(link, FileOp::Read))
            .await
            .unwrap_err();
        assert!(
            matches!(err, FileError::Escape { .. }),
            "read {link}: {err}"
        );
        let err = fx
            .files
            .write("acme", &vf(link, FileOp::Write), b"pwned", false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FileError::Escape { .. }),
            "write {link}: {err}"
        );
    }
    let err = fx
        .files
        .write(
            "acme",
            &vf("dir-link/new.txt", FileOp::Write),
            b"pwned",
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::Escape { .. }), "{err}");
    let err = fx
        .files
        .delete("acme", &vf("dir-link/secret.txt", FileOp::Delete))
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::Escape { .. }), "{err}");

    // Deleting a link removes the link, never its target.
    fx.files
        .delete("acme", &vf("abs-link", FileOp::Delete))
        .await
        .unwrap();
    assert!(std::fs::symlink_metadata(fx.acme().join("abs-link")).is_err());
    // A recursive delete does not descend through links.
    std::fs::create_dir(fx.acme().join("tree")).unwrap();
    symlink(fx.outside(), fx.acme().join("tree/out")).unwrap();
    let mut f = vf("tree", FileOp::Delete);
    f.recursive = true;
    fx.files.delete("acme", &f).await.unwrap();
    assert!(!fx.acme().join("tree").exists());

    // Nothing outside was read, written or removed.
    assert_eq!(
        std::fs::read(fx.outside().join("secret.txt")).unwrap(),
        SECRET
    );
    assert_eq!(std::fs::read_dir(fx.outside()).unwrap().count(), 1);
    assert_eq!(
        std::fs::read(fx.tmp.path().join("root/other/secret.txt")).unwrap(),
        SECRET
    );
}

#[tokio::test]
async fn dotdot_and_bad_tenants_are_refused_even_if_unvalidated() {
    let fx = files_fixture(1 << 20);
    for path in ["../other/secret.txt", "a/../../x", "/etc/passwd", ""] {
        let err = fx
            .files
            .read("acme", &vf(path, FileOp::Read))
            .await
            .unwrap_err();
        assert!(matches!(err, FileError::Escape { .. }), "{path:?}: {err}");
    }
    for tenant in ["..", "", "a/b", "."] {
        let err = fx
            .files
            .read(tenant, &vf("x", FileOp::Read))
            .await
            .unwrap_err();
        assert!(
            matches!(err, FileError::BadTenant { .. }),
            "{tenant:?}: {err}"
        );
    }
}

#[tokio::test]
async fn files_delete_files_and_directories() {
    let fx = files_fixture(1 << 20);
    fx.files
        .write("acme", &vf("d/e/f.txt", FileOp::Write), b"x", true)
        .await
        .unwrap();
    let mut d = vf("d", FileOp::Delete);
    let err = fx.files.delete("acme", &d).await.unwrap_err();
    assert!(matches!(err, FileError::DirectoryNotEmpty { .. }), "{err}");
    fx.files
        .delete("acme", &vf("d/e/f.txt", FileOp::Delete))
        .await
        .unwrap();
    assert!(!fx.acme().join("d/e/f.txt").exists());
    d.recursive = true;
    fx.files.delete("acme", &d).await.unwrap();
    assert!(!fx.acme().join("d").exists());
    let err = fx
        .files
        .delete("acme", &vf("d", FileOp::Delete))
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::NotFound { .. }), "{err}");
    std::fs::create_dir(fx.acme().join("empty")).unwrap();
    fx.files
        .delete("acme", &vf("empty", FileOp::Delete))
        .await
        .unwrap();
    assert!(!fx.acme().join("empty").exists());
}
