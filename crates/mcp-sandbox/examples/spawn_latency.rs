//! Cold spawn vs pooled claim: `Sandbox::run` latency of `echo` (p50/p90/
//! p99), sequentially, with and without the warm pool. Needs root (or a
//! delegated cgroup), bubblewrap and the stub:
//!
//! ```text
//! cargo build --release -p mcp-sandbox --example spawn_latency --bin mcp-sandbox-stub
//! target/release/examples/spawn_latency [runs] [target/release/mcp-sandbox-stub]
//! ```
//!
//! "pooled, waiting" measures a run that finds its sandbox ready (the pool
//! is refilled before each run, outside the timing); "pooled, back to back"
//! runs without pause, so the refill competes with the next run, as under
//! sustained load.
//!
//! `MCP_SANDBOX_PROFILES=DIR` loads the profiles from `DIR` instead of the
//! repository's `sandbox-profiles/` (e.g. copies with `require_cgroup =
//! false`, to measure as an unprivileged user without a delegated cgroup).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_core::{NetworkAccess, ResourceLimits, TaskId};
use mcp_sandbox::{PoolSettings, Profiles, RunSpec, Sandbox, SandboxSettings};
use tokio_util::sync::CancellationToken;

fn sandbox(base: &Path) -> anyhow::Result<Sandbox> {
    let profiles = std::env::var_os("MCP_SANDBOX_PROFILES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox-profiles"),
        PathBuf::from,
    );
    let settings = SandboxSettings {
        bwrap: "/usr/bin/bwrap".into(),
        run_as: SandboxSettings::default_run_as(),
        sockets_dir: base.join("sockets"),
        files_root: base.join("files"),
        max_output_bytes: 1 << 20,
    };
    std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    Ok(Sandbox::new(settings, Profiles::load_dir(&profiles)?)?)
}

fn spec(sb: &Sandbox) -> anyhow::Result<RunSpec> {
    Ok(RunSpec {
        task_id: TaskId::new(),
        tenant: "bench".into(),
        profile: "default".into(),
        argv: vec![
            sb.resolve_command("default", "echo").context("no echo")?,
            "hi".into(),
        ],
        env: BTreeMap::new(),
        cwd: String::new(),
        timeout: Duration::from_secs(30),
        network: NetworkAccess::None,
        limits: ResourceLimits::default(),
        denied_paths: Vec::new(),
    })
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let at = |q: f64| {
        // Rounded index into the sorted samples.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((d.len() - 1) as f64 * q).round() as usize;
        d.get(i).map_or(0.0, |x| x.as_secs_f64() * 1000.0)
    };
    println!(
        "{name:<24} n={:<5} p50={:.2} ms  p90={:.2} ms  p99={:.2} ms",
        d.len(),
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

async fn run_once(sb: &Sandbox) -> anyhow::Result<Duration> {
    let s = spec(sb)?;
    let t = Instant::now();
    let out = sb.run(s, &|_| {}, CancellationToken::new()).await?;
    let d = t.elapsed();
    if out.result.stdout != b"hi\n" {
        bail!("unexpected output {:?}", out.result);
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let stub = args.next().map_or_else(
        || {
            std::env::current_exe()
                .map(|e| e.with_file_name("../mcp-sandbox-stub"))
                .unwrap_or_default()
        },
        PathBuf::from,
    );

    let tmp = tempfile::tempdir()?;
    let cold = sandbox(tmp.path())?;
    for _ in 0..10 {
        run_once(&cold).await?;
    }
    let mut d = Vec::new();
    for _ in 0..runs {
        d.push(run_once(&cold).await?);
    }
    report("cold", d);

    let tmp2 = tempfile::tempdir()?;
    let pooled = sandbox(tmp2.path())?;
    pooled.enable_pool(PoolSettings {
        sizes: BTreeMap::from([("default".to_owned(), 2)]),
        max_total: 8,
        stub,
        stub_args: Vec::new(),
    })?;
    let mut d = Vec::new();
    for i in 0..runs + 10 {
        pooled.prewarm("default", "bench").await?;
        let t = run_once(&pooled).await?;
        if i >= 10 {
            d.push(t);
        }
    }
    report("pooled, waiting", d);
    let mut d = Vec::new();
    for _ in 0..runs {
        d.push(run_once(&pooled).await?);
    }
    report("pooled, back to back", d);
    println!("{:?}", pooled.pool_stats());
    Ok(())
}
