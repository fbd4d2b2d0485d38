//! `cargo xtask <task>`: development tasks.
//!
//! - `bench [--n N] [--concurrency C]`: end-to-end `RunCommand echo` latency
//!   through a release gateway (a separate process, as in production),
//!   sequential and concurrent, against the same sandbox spawned directly
//!   with the same bwrap argv (no gateway) and a bare fork+exec, all in one
//!   run on one machine. Prints p50/p90/p99, throughput and ratios.
//! - `dist [--no-build]`: one release build, staged with its man page and
//!   completions, packed as `.deb` and `.rpm` into `target/dist/`.
//! - `image [--no-build] [--rootfs DIR]`: the distroless OCI image of the
//!   same staged binary, as an OCI archive in `target/dist/` (root, umoci).

mod dist;
mod image;
mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_client::Client;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("bench") => {
            let mut n = 300usize;
            let mut conc = 16usize;
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--n" => n = args.next().context("--n needs a number")?.parse()?,
                    "--concurrency" => {
                        conc = args
                            .next()
                            .context("--concurrency needs a number")?
                            .parse()?
                    }
                    other => bail!("unknown bench flag {other}"),
                }
            }
            bench(n, conc)
        }
        Some("dist") => dist::main(&util::Opts::parse(args, DIST_USAGE)?),
        Some("image") => image::main(&util::Opts::parse(args, IMAGE_USAGE)?),
        _ => {
            eprintln!("usage: cargo xtask bench [--n N] [--concurrency C]");
            eprintln!("       {DIST_USAGE}");
            eprintln!("       {IMAGE_USAGE}");
            std::process::exit(2);
        }
    }
}

const DIST_USAGE: &str = "cargo xtask dist [--no-build]";
const IMAGE_USAGE: &str = "cargo xtask image [--no-build] [--rootfs DIR]";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let sum: Duration = v.iter().sum();
    Stats {
        p50: pick(0.50),
        p90: pick(0.90),
        p99: pick(0.99),
        mean: sum / v.len() as u32,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, s: &Stats, throughput: Option<f64>) {
    println!(
        "{name:<34} {:>8} {:>8} {:>8} {:>8} {:>10}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.mean),
        throughput.map_or("-".to_owned(), |t| format!("{t:.0}/s"))
    );
}

fn bench(n: usize, conc: usize) -> anyhow::Result<()> {
    let root = repo();
    eprintln!("building the release gateway…");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "mcp-gateway"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. Raw: the exact bwrap command the sandbox would spawn, no gateway.
    let raw = raw_bwrap(&root, tmp.path(), n)?;
    // 2. Floor: a bare fork+exec of the same binary.
    let bare = time_n(n, || {
        Command::new("/usr/bin/echo")
            .arg("bench")
            .stdout(Stdio::null())
            .status()
            .map(|_| ())
    })?;

    // 3. The gateway, end to end over gRPC.
    let (mut child, endpoint) = start_gateway(&root, tmp.path())?;
    let result = rt.block_on(async {
        let mut client = Client::connect(&endpoint).await?;
        for _ in 0..20 {
            run_echo(&mut client).await?; // warm-up
        }
        let mut seq = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            run_echo(&mut client).await?;
            seq.push(t.elapsed());
        }
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for w in 0..conc {
            let mut c = client.clone();
            let per = n / conc + usize::from(w < n % conc);
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    run_echo(&mut c).await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let mut concurrent = Vec::with_capacity(n);
        for h in handles {
            concurrent.extend(h.await??);
        }
        let wall = t0.elapsed();
        anyhow::Ok((seq, concurrent, wall))
    });
    let _ = child.kill();
    let _ = child.wait();
    let (seq, concurrent, wall) = result?;

    println!();
    println!(
        "mcp-gateway bench: {n} × `echo bench`, concurrency {conc}, {} cores",
        num_cpus()
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "(milliseconds)", "p50", "p90", "p99", "mean", "throughput"
    );
    let bare_s = stats(bare);
    let raw_s = stats(raw);
    let seq_s = stats(seq.clone());
    let seq_tp = n as f64 / seq.iter().sum::<Duration>().as_secs_f64();
    let con_s = stats(concurrent);
    row("fork+exec echo (floor)", &bare_s, None);
    row("raw bwrap, same argv (no gateway)", &raw_s, None);
    row("gateway RunCommand, sequential", &seq_s, Some(seq_tp));
    row(
        &format!("gateway RunCommand, concurrency {conc}"),
        &con_s,
        Some(n as f64 / wall.as_secs_f64()),
    );
    println!();
    println!(
        "gateway/raw bwrap at p50: {:.2}×   (target ≤ 1.20×; overhead {} ms)",
        seq_s.p50.as_secs_f64() / raw_s.p50.as_secs_f64(),
        ms(seq_s.p50.saturating_sub(raw_s.p50))
    );
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn run_echo(client: &mut Client) -> anyhow::Result<()> {
    let r = client.run(Client::command("echo", ["bench"])).await?;
    match r.result {
        Some(res) if res.exit_code == 0 => {}
        other => bail!("echo failed: {:?}", other.map(|r| (r.exit_code, r.stderr))),
    }
    Ok(())
}

fn time_n(n: usize, mut f: impl FnMut() -> std::io::Result<()>) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..10 {
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(v)
}

fn raw_bwrap(root: &Path, tmp: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    use mcp_sandbox::{Profiles, RunSpec, Sandbox, SandboxSettings};
    let profiles = Profiles::load_dir(&root.join("sandbox-profiles"))?;
    let sandbox = Sandbox::new(
        SandboxSettings {
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            run_as: SandboxSettings::default_run_as(),
            workspaces_dir: tmp.join("raw-workspaces"),
            files_root: tmp.join("raw-files"),
            max_output_bytes: 1 << 20,
        },
        profiles,
    )?;
    let argv0 = sandbox
        .resolve_command("default", "echo")
        .context("echo not found in the default profile")?;
    time_n(n, || {
        let spec = RunSpec {
            task_id: mcp_core::TaskId::new(),
            tenant: "default".into(),
            profile: "default".into(),
            argv: vec![argv0.clone(), "bench".into()],
            env: Default::default(),
            cwd: String::new(),
            timeout: Duration::from_secs(30),
            network: mcp_core::NetworkAccess::None,
            limits: Default::default(),
            denied_paths: Vec::new(),
        };
        let (mut cmd, _guard) = sandbox.raw_command(&spec).map_err(std::io::Error::other)?;
        let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "raw bwrap failed: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    })
}

fn start_gateway(root: &Path, tmp: &Path) -> anyhow::Result<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(root.join("target/release/mcp-gateway"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(tmp.join("gw"))
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--profiles")
        .arg(root.join("sandbox-profiles"))
        .env("MCP_GATEWAY_LOG__FORMAT", "json")
        .env("MCP_GATEWAY_LOG__LEVEL", "warn,mcp_gateway::server=info")
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start target/release/mcp-gateway")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("\"serving\"") => break,
            Some(Ok(_)) => {}
            _ => bail!("the gateway exited before serving"),
        }
    }
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, format!("http://127.0.0.1:{port}")))
}
