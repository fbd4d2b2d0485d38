//! `cargo xtask bench`: the numbers of `docs/PERFORMANCE.md`, in one run on
//! one machine.
//!
//! Rows, all with `echo bench` in the `default` profile:
//! - the floor: a bare fork+exec, and the same sandbox spawned directly with
//!   the exact bwrap argv, seccomp filter and workspace the gateway would use
//!   (`Sandbox::raw_command`, no gateway);
//! - what joining a v2 task cgroup adds to a spawn, the old way (the child
//!   writes `cgroup.procs`) and the new (cloned into it), measured in this
//!   host's v2 hierarchy even where its sandboxes use v1 ones;
//! - the gateway (a release `mcp-gateway serve`, a separate process with the
//!   shipped policies and profiles and a fresh SQLite file), `RunCommand` over
//!   gRPC: sequential, then closed-loop at each concurrency;
//! - an open-loop run at a fixed rate (the SLO: 100/s for 5 minutes), and a
//!   ramp of fixed rates to find the highest one sustained with zero errors;
//! - the policy and store time per task from the gateway's own histograms
//!   (`mcp_policy_eval_duration_seconds`, `mcp_store_write_duration_seconds`,
//!   sum and count before/after the sequential row) and their share of it;
//! - RSS and open file descriptors of the gateway process (`/proc/<pid>`):
//!   idle, after a warm-up, after N tasks and after N more (a leak grows in
//!   both halves, warm-up only in the first), with the growth and the
//!   anonymous, file-backed and shared parts of RSS.
//!
//! `--quick` (or `MCP_BENCH_QUICK=1`) shrinks every phase so the whole run
//! takes about a minute; its figures are a smoke test, not results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_client::Client;

pub const USAGE: &str = "cargo xtask bench [--quick] [--n N] [--concurrency C[,C…]] \
[--rate R] [--rate-secs S] [--ramp-secs S] [--tasks N] [--gateway-env K=V]… [--compare-env K=V]… \
[--gateway-bin PATH] [--compare-bin PATH]";

/// What one run does. The defaults are the full run of issue 8.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Calls per latency row (sequential, each concurrency, raw, floor).
    pub n: usize,
    pub concurrency: Vec<usize>,
    /// The open-loop SLO row: `rate` calls/s for `rate_secs`.
    pub rate: f64,
    pub rate_secs: u64,
    /// Seconds per step of the throughput ramp.
    pub ramp_secs: u64,
    /// Tasks between the warm RSS/fd reading and the one after them.
    pub tasks: usize,
    /// Extra environment of the gateway (`MCP_GATEWAY_…`), every run.
    pub gateway_env: Vec<(String, String)>,
    /// If set, the gateway rows run a second time with these variables added
    /// (e.g. the warm pool on), and both are printed.
    pub compare_env: Vec<(String, String)>,
    /// A prebuilt gateway to bench instead of building this tree's.
    pub gateway_bin: Option<PathBuf>,
    /// A second prebuilt gateway (e.g. before a change), benched after the
    /// first with the same settings.
    pub compare_bin: Option<PathBuf>,
}

impl Opts {
    fn full() -> Self {
        Opts {
            n: 300,
            concurrency: vec![4, 16, 64],
            rate: 100.0,
            rate_secs: 300,
            ramp_secs: 10,
            tasks: 10_000,
            gateway_env: Vec::new(),
            compare_env: Vec::new(),
            gateway_bin: None,
            compare_bin: None,
        }
    }

    fn quick() -> Self {
        Opts {
            n: 60,
            concurrency: vec![4, 16, 64],
            rate: 100.0,
            rate_secs: 5,
            ramp_secs: 2,
            tasks: 300,
            gateway_env: Vec::new(),
            compare_env: Vec::new(),
            gateway_bin: None,
            compare_bin: None,
        }
    }

    pub fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let args: Vec<String> = args.collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("MCP_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut o = if quick { Self::quick() } else { Self::full() };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--quick" => {}
                "--n" => o.n = val()?.parse()?,
                "--concurrency" => {
                    o.concurrency = val()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--rate" => o.rate = val()?.parse()?,
                "--rate-secs" => o.rate_secs = val()?.parse()?,
                "--ramp-secs" => o.ramp_secs = val()?.parse()?,
                "--tasks" => o.tasks = val()?.parse()?,
                "--gateway-env" => o.gateway_env.push(kv(&val()?)?),
                "--compare-env" => o.compare_env.push(kv(&val()?)?),
                "--gateway-bin" => o.gateway_bin = Some(val()?.into()),
                "--compare-bin" => o.compare_bin = Some(val()?.into()),
                other => bail!("unknown bench flag {other}\nusage: {USAGE}"),
            }
        }
        if o.n == 0 || o.concurrency.contains(&0) || o.rate <= 0.0 {
            bail!("--n, --concurrency and --rate must be positive");
        }
        Ok(o)
    }
}

fn kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
}

/// How far apart the v2 cgroup join spawns are: a `cgroup.procs` write
/// waits for an RCU grace period unless another write came just before.
const JOIN_GAP: Duration = Duration::from_millis(20);

fn stats(mut v: Vec<Duration>) -> Stats {
    if v.is_empty() {
        return Stats {
            p50: Duration::ZERO,
            p90: Duration::ZERO,
            p99: Duration::ZERO,
            mean: Duration::ZERO,
        };
    }
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

fn header() {
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>8} {:>10} {:>7} {:>6}",
        "(milliseconds)", "p50", "p90", "p99", "mean", "throughput", "errors", "steal"
    );
}

fn row(name: &str, s: &Stats, throughput: Option<f64>, errors: Option<usize>, steal: f64) {
    println!(
        "{name:<40} {:>8} {:>8} {:>8} {:>8} {:>10} {:>7} {:>5.1}%",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.mean),
        throughput.map_or("-".to_owned(), |t| format!("{t:.0}/s")),
        errors.map_or("-".to_owned(), |e| e.to_string()),
        steal,
    );
}

/// The host's aggregate CPU counters (the `cpu` line of /proc/stat, in
/// ticks). On a virtual machine, `steal` is time the hypervisor gave our
/// vCPUs' turn to someone else: a phase with a high share ran on less CPU
/// than the machine has, and its figures are not comparable with one
/// without.
#[derive(Clone, Copy, Default)]
struct HostCpu {
    total: u64,
    steal: u64,
}

impl HostCpu {
    fn now() -> Self {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user, so it is left out.
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(Self {
            total: v.iter().sum(),
            steal: *v.get(7)?,
        })
    }

    /// Percentage of the host's CPU time stolen between `self` and `later`.
    fn steal_pct(&self, later: &Self) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * later.steal.saturating_sub(self.steal) as f64 / total as f64
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn main(o: &Opts) -> anyhow::Result<()> {
    let root = crate::repo();
    let bin = match &o.gateway_bin {
        Some(b) => b.clone(),
        None => {
            eprintln!("building the release gateway…");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet", "-p", "mcp-gateway"])
                .current_dir(&root)
                .status()?;
            if !status.success() {
                bail!("cargo build --release failed");
            }
            root.join("target/release/mcp-gateway")
        }
    };
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    eprintln!("floor and raw bwrap ({} runs each)…", o.n);
    let cpu0 = HostCpu::now();
    let bare = time_n(o.n, || {
        Command::new("/usr/bin/echo")
            .arg("bench")
            .stdout(Stdio::null())
            .status()
            .map(|_| ())
    })?;
    let cpu1 = HostCpu::now();
    let raw = RawBwrap::new(&root, tmp.path())?;
    let raw_s = stats(raw.latencies(o.n)?);
    let cpu2 = HostCpu::now();
    // The sandbox's own ceiling: no gateway can sustain more sandboxed
    // tasks per second than bwrap itself on these cores.
    let raw_conc = 2 * num_cpus();
    eprintln!("raw bwrap throughput ({raw_conc} threads)…");
    let raw_tput = raw.throughput(raw_conc, o.n.max(raw_conc))?;
    let raw_tput_steal = cpu2.steal_pct(&HostCpu::now());
    // This host's sandboxes may use v1 hierarchies (hybrid), production's
    // are v2: what joining a v2 task cgroup adds to a spawn, measured
    // apart, spaced as requests at a modest rate would be.
    let join_n = o.n.min(100);
    eprintln!("joining a v2 cgroup ({join_n} spawns each way, {JOIN_GAP:?} apart)…");
    let cpu3 = HostCpu::now();
    let join = mcp_sandbox::v2_join_latencies(join_n, JOIN_GAP);
    let join_steal = cpu3.steal_pct(&HostCpu::now());

    let mut variants = vec![(bin.clone(), o.gateway_env.clone())];
    if !o.compare_env.is_empty() {
        let mut env = o.gateway_env.clone();
        env.extend(o.compare_env.iter().cloned());
        variants.push((bin.clone(), env));
    }
    if let Some(other) = &o.compare_bin {
        variants.push((other.clone(), o.gateway_env.clone()));
    }
    let mut reports = Vec::new();
    for (i, (bin, env)) in variants.iter().enumerate() {
        let name = format!("gateway {}", bin.display());
        // What the previous phase left to the kernel (namespaces and
        // cgroups torn down in the background) would otherwise slow the
        // first rows of this one: a variant benched first came out 10-30 %
        // slower than the same binary benched second.
        settle();
        eprintln!("{name} {env:?}");
        let dir = tmp.path().join(format!("gw{i}"));
        let report = rt.block_on(gateway_phases(&root, bin, &dir, env, o))?;
        reports.push((name, env.clone(), report));
    }

    println!();
    println!(
        "mcp-gateway bench: `echo bench`, {} cores, load average now {}{}",
        num_cpus(),
        loadavg(),
        if o.n < 100 {
            "  (quick run: smoke figures)"
        } else {
            ""
        }
    );
    header();
    row(
        "fork+exec echo (floor)",
        &stats(bare),
        None,
        None,
        cpu0.steal_pct(&cpu1),
    );
    row(
        "raw bwrap, same argv+seccomp (no gw)",
        &raw_s,
        None,
        None,
        cpu1.steal_pct(&cpu2),
    );
    println!(
        "raw bwrap, {raw_conc} threads back to back: {raw_tput:.0} tasks/s (the sandbox's ceiling here; \
         steal {raw_tput_steal:.1}%)"
    );
    println!();
    match join {
        Ok(j) => {
            println!(
                "joining a v2 task cgroup: spawn of /bin/true (clone to exec), {JOIN_GAP:?} apart"
            );
            let clone_into = stats(j.clone_into);
            let procs = stats(j.procs_write);
            row(
                "  no cgroup (baseline)",
                &stats(j.none),
                None,
                None,
                join_steal,
            );
            row(
                "  child writes cgroup.procs (before)",
                &procs,
                None,
                None,
                join_steal,
            );
            row(
                "  clone3 CLONE_INTO_CGROUP (now)",
                &clone_into,
                None,
                None,
                join_steal,
            );
            println!(
                "  saved per sandbox start on a v2 host: {} ms at p50, {} ms at p99",
                ms(procs.p50.saturating_sub(clone_into.p50)),
                ms(procs.p99.saturating_sub(clone_into.p99)),
            );
        }
        Err(e) => println!("joining a v2 task cgroup: not measured here ({e})"),
    }
    for (name, env, r) in &reports {
        println!();
        println!(
            "{name}{}",
            if env.is_empty() {
                String::new()
            } else {
                format!(" {env:?}")
            }
        );
        r.print(&raw_s, raw_tput, o);
    }
    Ok(())
}

/// Waits until the 1-minute load average is below the number of cores
/// (at most 60 s, at least 5 s).
fn settle() {
    let cores = num_cpus() as f64;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    while started.elapsed() < Duration::from_secs(60) {
        let one = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if one < cores {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One open-loop or closed-loop row.
struct Row {
    name: String,
    lat: Vec<Duration>,
    throughput: f64,
    errors: usize,
    /// Share of the host's CPU stolen by the hypervisor during the row.
    steal: f64,
}

struct Mem {
    rss_kib: u64,
    /// VmRSS split as the kernel counts it: anonymous memory (the heap,
    /// stacks: what a leak grows), file-backed pages (the binary's code and
    /// mapped files, faulted in as code paths are first used) and shared
    /// memory (SQLite's WAL index).
    anon_kib: u64,
    file_kib: u64,
    shmem_kib: u64,
    fds: usize,
    cpu: Cpu,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Growth from `a` to `b`, in per cent.
fn growth(a: u64, b: u64) -> f64 {
    100.0 * (b as f64 - a as f64) / a as f64
}

impl Mem {
    /// This reading, taken after `label`, and its growth since `from`, with
    /// RSS split into its anonymous, file-backed and shared parts.
    fn print_growth(&self, label: &str, from: &Mem) {
        println!(
            "  after {label}  RSS {:>7.1} MiB  fds {:>4}   growth RSS {:+.1}%  fds {:+.1}% (target ≤ 5%)",
            mib(self.rss_kib),
            self.fds,
            growth(from.rss_kib, self.rss_kib),
            growth(from.fds as u64, self.fds as u64),
        );
        println!(
            "    of which anon {:.1} → {:.1} MiB ({:+.1}%), file {:.1} → {:.1} MiB, shmem {:.1} → {:.1} MiB",
            mib(from.anon_kib),
            mib(self.anon_kib),
            growth(from.anon_kib, self.anon_kib),
            mib(from.file_kib),
            mib(self.file_kib),
            mib(from.shmem_kib),
            mib(self.shmem_kib),
        );
    }
}

/// CPU time of the gateway process (all its threads) and of the children
/// it reaped (the bwrap processes), in clock ticks of /proc/<pid>/stat.
#[derive(Clone, Copy)]
struct Cpu {
    user: u64,
    system: u64,
    children: u64,
}

impl Cpu {
    /// `USER_HZ`: /proc reports times in 1/100 s on every Linux ABI.
    const TICK: f64 = 0.01;

    /// Milliseconds per task between `self` and `later`: (gateway user,
    /// gateway system, reaped children).
    fn per_task_ms(&self, later: &Self, tasks: usize) -> (f64, f64, f64) {
        let ms =
            |a: u64, b: u64| (b.saturating_sub(a)) as f64 * Self::TICK * 1e3 / tasks.max(1) as f64;
        (
            ms(self.user, later.user),
            ms(self.system, later.system),
            ms(self.children, later.children),
        )
    }
}

struct Report {
    rows: Vec<Row>,
    seq_mean: Duration,
    seq_p50: Duration,
    policy: Hist,
    store: BTreeMap<String, Hist>,
    /// Over the concurrent, open-loop and ramp phases.
    loaded_policy: Hist,
    loaded_store: Hist,
    seq_tasks: f64,
    sustained: Option<(f64, f64)>,
    ramp: Vec<(f64, f64, usize, Duration, f64)>,
    idle: Mem,
    warm: Mem,
    after: Mem,
    /// After as many tasks again: a leak grows as much in the second half
    /// as in the first, bounded warm-up (caches and pools reaching their
    /// working size) mostly in the first.
    after2: Mem,
    after_tasks: usize,
    end: Mem,
}

impl Report {
    fn print(&self, raw: &Stats, raw_tput: f64, o: &Opts) {
        header();
        for r in &self.rows {
            row(
                &r.name,
                &stats(r.lat.clone()),
                Some(r.throughput),
                Some(r.errors),
                r.steal,
            );
        }
        println!(
            "gateway/raw bwrap at p50: {:.2}×   (target ≤ 1.20×; overhead {} ms)",
            self.seq_p50.as_secs_f64() / raw.p50.as_secs_f64(),
            ms(self.seq_p50.saturating_sub(raw.p50))
        );
        println!();
        println!("throughput ramp (open loop, {} s per step):", o.ramp_secs);
        for (offered, achieved, errors, p99, steal) in &self.ramp {
            println!(
                "  offered {offered:>6.0}/s  completed {achieved:>6.0}/s  errors {errors:>5}  p99 {:>8} ms  steal {steal:>4.1}%",
                ms(*p99)
            );
        }
        match self.sustained {
            Some((offered, achieved)) => println!(
                "max sustained with zero errors: {achieved:.0} tasks/s (offered {offered:.0}/s)   \
                 (target ≥ 400/s; {:.0}% of raw bwrap's {raw_tput:.0}/s)",
                100.0 * achieved / raw_tput
            ),
            None => println!("max sustained with zero errors: none of the ramp's rates"),
        }
        println!();
        let per_task = |h: &Hist| h.sum / self.seq_tasks;
        let e2e = self.seq_mean.as_secs_f64();
        let share = |s: f64| 100.0 * s / e2e;
        println!(
            "where the sequential time goes (gateway histograms, mean per task of {:.0}; e2e mean {} ms):",
            self.seq_tasks,
            ms(self.seq_mean)
        );
        let policy = per_task(&self.policy);
        println!(
            "  policy decision   {:>8.3} ms/task ({:.1}%)  mean {:.3} ms/decision, p50 ≤ {}, p99 ≤ {}",
            policy * 1e3,
            share(policy),
            self.policy.mean() * 1e3,
            self.policy.quantile(0.5),
            self.policy.quantile(0.99),
        );
        let mut store_total = 0.0;
        for (op, h) in &self.store {
            let t = per_task(h);
            store_total += t;
            println!(
                "  store {op:<16}{:>8.3} ms/task ({:.1}%)  {:.2} writes/task, mean {:.3} ms, p50 ≤ {}, p99 ≤ {}",
                t * 1e3,
                share(t),
                h.count / self.seq_tasks,
                h.mean() * 1e3,
                h.quantile(0.5),
                h.quantile(0.99),
            );
        }
        println!(
            "  store, all writes {:>8.3} ms/task ({:.1}%)",
            store_total * 1e3,
            share(store_total)
        );
        println!(
            "  under load (concurrent, open-loop and ramp phases): policy mean {:.3} ms (p99 ≤ {}), \
             store write mean {:.3} ms (p99 ≤ {})",
            self.loaded_policy.mean() * 1e3,
            self.loaded_policy.quantile(0.99),
            self.loaded_store.mean() * 1e3,
            self.loaded_store.quantile(0.99),
        );
        println!();
        println!("gateway process (/proc/<pid>):");
        println!(
            "  idle:                RSS {:>7.1} MiB  fds {:>4}   (target RSS ≤ 30 MiB)",
            mib(self.idle.rss_kib),
            self.idle.fds
        );
        println!(
            "  after warm-up:       RSS {:>7.1} MiB  fds {:>4}",
            mib(self.warm.rss_kib),
            self.warm.fds
        );
        self.after
            .print_growth(&format!("{:>6} tasks:", self.after_tasks), &self.warm);
        self.after2
            .print_growth(&format!("{:>6} more: ", self.after_tasks), &self.after);
        println!(
            "  at the end:          RSS {:>7.1} MiB  fds {:>4}",
            mib(self.end.rss_kib),
            self.end.fds
        );
        let (user, system, children) = self.warm.cpu.per_task_ms(&self.after.cpu, self.after_tasks);
        println!(
            "  CPU per task over the {} tasks: gateway {:.2} ms (user {:.2}, system {:.2}); \
             reaped children (bwrap and the sandbox inits it adopts) {:.2} ms",
            self.after_tasks,
            user + system,
            user,
            system,
            children
        );
    }
}

async fn gateway_phases(
    root: &Path,
    bin: &Path,
    dir: &Path,
    env: &[(String, String)],
    o: &Opts,
) -> anyhow::Result<Report> {
    let mut gw = Gateway::start(root, bin, dir, env)?;
    let r = phases(&gw, o).await;
    gw.stop();
    r
}

async fn phases(gw: &Gateway, o: &Opts) -> anyhow::Result<Report> {
    // Let start-up work (policy compile, sandbox self-check) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = gw.mem()?;
    let clients = connect(&gw.endpoint, 4).await?;
    let mut client = clients[0].clone();
    for _ in 0..20 {
        run_echo(&mut client).await?;
    }
    // Warm-up at concurrency, so that the store's connection pool, the
    // runtime's threads and the allocator's arenas have grown to their
    // working size before the leak check's baseline.
    let warmup = closed_loop(&clients, 16, 200).await;
    if warmup.errors > 0 {
        bail!("{} errors while warming up", warmup.errors);
    }
    let warm = gw.mem()?;

    let after = leak_run(gw, &clients, o.tasks, "leak check").await?;
    let after2 = leak_run(gw, &clients, o.tasks, "leak check, second half").await?;
    // The leak check's sandboxes leave namespace and cgroup teardown to the
    // kernel; without a pause the sequential rows (and the ratio to the raw
    // row, measured on a settled machine) came out up to 30 % slower.
    tokio::task::spawn_blocking(settle).await?;

    eprintln!("  sequential ({})…", o.n);
    let m0 = gw.metrics()?;
    let cpu0 = HostCpu::now();
    let t0 = Instant::now();
    let mut seq = Vec::with_capacity(o.n);
    for _ in 0..o.n {
        let t = Instant::now();
        run_echo(&mut client).await?;
        seq.push(t.elapsed());
    }
    let seq_wall = t0.elapsed();
    let m1 = gw.metrics()?;
    let policy = m1
        .hist("mcp_policy_eval_duration_seconds", "")
        .minus(&m0.hist("mcp_policy_eval_duration_seconds", ""));
    let mut store = BTreeMap::new();
    for op in [
        "audited_decision",
        "record_decision",
        "insert_task",
        "set_state",
        "audited_finish",
        "finish",
    ] {
        let label = format!("op=\"{op}\"");
        let h = m1
            .hist("mcp_store_write_duration_seconds", &label)
            .minus(&m0.hist("mcp_store_write_duration_seconds", &label));
        if h.count > 0.0 {
            store.insert(op.to_owned(), h);
        }
    }
    let seq_s = stats(seq.clone());
    let mut rows = vec![Row {
        name: "gateway RunCommand, sequential".into(),
        lat: seq,
        throughput: o.n as f64 / seq_wall.as_secs_f64(),
        errors: 0,
        steal: cpu0.steal_pct(&HostCpu::now()),
    }];
    let mut best_closed: f64 = rows[0].throughput;
    for &c in &o.concurrency {
        eprintln!("  concurrency {c}…");
        let mut r = closed_loop(&clients, c, o.n.max(4 * c)).await;
        r.name = format!("gateway RunCommand, concurrency {c}");
        if r.errors == 0 {
            best_closed = best_closed.max(r.throughput);
        }
        rows.push(r);
    }
    eprintln!("  open loop {} /s for {} s…", o.rate, o.rate_secs);
    let (mut slo, _) = open_loop(&clients, o.rate, Duration::from_secs(o.rate_secs)).await;
    slo.name = format!("gateway open loop {:.0}/s, {} s", o.rate, o.rate_secs);
    rows.push(slo);

    // Ramp: from 60 % of the best closed-loop throughput up in 10 % steps
    // until a step fails (errors, or completions fall behind the offer).
    let mut ramp = Vec::new();
    let mut sustained = None;
    for step in 0..10 {
        let rate = (best_closed * (0.6 + 0.1 * f64::from(step))).max(10.0);
        eprintln!("  ramp {rate:.0}/s…");
        let (r, achieved) = open_loop(&clients, rate, Duration::from_secs(o.ramp_secs)).await;
        let p99 = stats(r.lat.clone()).p99;
        ramp.push((rate, achieved, r.errors, p99, r.steal));
        if r.errors == 0 && achieved >= 0.95 * rate {
            sustained = Some((rate, achieved));
        } else {
            break;
        }
    }
    let end = gw.mem()?;
    let m2 = gw.metrics()?;
    let loaded_policy = m2
        .hist("mcp_policy_eval_duration_seconds", "")
        .minus(&m1.hist("mcp_policy_eval_duration_seconds", ""));
    let loaded_store = m2
        .hist("mcp_store_write_duration_seconds", "")
        .minus(&m1.hist("mcp_store_write_duration_seconds", ""));
    Ok(Report {
        loaded_policy,
        loaded_store,
        rows,
        seq_mean: seq_s.mean,
        seq_p50: seq_s.p50,
        policy,
        store,
        seq_tasks: o.n as f64,
        sustained,
        ramp,
        idle,
        warm,
        after,
        after2,
        after_tasks: o.tasks,
        end,
    })
}

async fn connect(endpoint: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Client::connect(endpoint).await?);
    }
    Ok(v)
}

/// `total` calls from `conc` workers, each waiting for its answer before
/// the next call; workers share `clients` (HTTP/2 connections) round-robin.
/// `tasks` tasks at concurrency 16, then the gateway's reading.
async fn leak_run(
    gw: &Gateway,
    clients: &[Client],
    tasks: usize,
    what: &str,
) -> anyhow::Result<Mem> {
    eprintln!("  {tasks} tasks at concurrency 16 ({what})…");
    let run = closed_loop(clients, 16, tasks).await;
    if run.errors > 0 {
        eprintln!("  warning: {} errors in the {what}", run.errors);
    }
    gw.mem()
}

async fn closed_loop(clients: &[Client], conc: usize, total: usize) -> Row {
    let cpu0 = HostCpu::now();
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for w in 0..conc {
        let mut c = clients[w % clients.len()].clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                match run_echo(&mut c).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for h in handles {
        match h.await {
            Ok((l, e)) => {
                lat.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let wall = t0.elapsed();
    Row {
        name: String::new(),
        throughput: lat.len() as f64 / wall.as_secs_f64(),
        lat,
        errors,
        steal: cpu0.steal_pct(&HostCpu::now()),
    }
}

/// Calls started at a fixed `rate` for `dur` whatever the answers (open
/// loop, so a slow gateway builds a backlog instead of slowing the offer).
/// Returns the row and the completion rate over the offer's window (answers
/// that arrive after it do not count towards the rate).
async fn open_loop(clients: &[Client], rate: f64, dur: Duration) -> (Row, f64) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate * dur.as_secs_f64()).round() as usize;
    let cpu0 = HostCpu::now();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let mut c = clients[i % clients.len()].clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = run_echo(&mut c).await;
            (r.is_ok(), t.elapsed(), Instant::now())
        }));
    }
    let window_end = t0 + dur;
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    let mut in_window = 0usize;
    for h in handles {
        match h.await {
            Ok((true, l, done)) => {
                lat.push(l);
                if done <= window_end + Duration::from_millis(200) {
                    in_window += 1;
                }
            }
            Ok((false, ..)) | Err(_) => errors += 1,
        }
    }
    let achieved = in_window as f64 / dur.as_secs_f64();
    (
        Row {
            name: String::new(),
            throughput: achieved,
            lat,
            errors,
            steal: cpu0.steal_pct(&HostCpu::now()),
        },
        achieved,
    )
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

/// The exact bwrap command the sandbox would spawn (argv, seccomp program
/// through its memfd, empty environment, uid, workspace, task cgroup), run
/// directly.
struct RawBwrap {
    sandbox: mcp_sandbox::Sandbox,
    argv0: String,
}

impl RawBwrap {
    fn new(root: &Path, tmp: &Path) -> anyhow::Result<Self> {
        use mcp_sandbox::{Profiles, Sandbox, SandboxSettings};
        let profiles = Profiles::load_dir(&root.join("sandbox-profiles"))?;
        let sandbox = Sandbox::new(
            SandboxSettings {
                bwrap: PathBuf::from("/usr/bin/bwrap"),
                run_as: SandboxSettings::default_run_as(),
                sockets_dir: tmp.join("raw-sockets"),
                files_root: tmp.join("raw-files"),
                max_output_bytes: 1 << 20,
            },
            profiles,
        )?;
        let argv0 = sandbox
            .resolve_command("default", "echo")
            .context("echo not found in the default profile")?;
        Ok(Self { sandbox, argv0 })
    }

    /// One `echo bench` in a fresh sandbox, to its exit.
    fn once(&self) -> std::io::Result<()> {
        let spec = mcp_sandbox::RunSpec {
            task_id: mcp_core::TaskId::new(),
            tenant: "default".into(),
            profile: "default".into(),
            argv: vec![self.argv0.clone(), "bench".into()],
            env: Default::default(),
            cwd: String::new(),
            timeout: Duration::from_secs(30),
            network: mcp_core::NetworkAccess::None,
            limits: Default::default(),
            denied_paths: Vec::new(),
        };
        let (cmd, _guard) = self
            .sandbox
            .raw_command(&spec)
            .map_err(std::io::Error::other)?;
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "raw bwrap failed: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Sequential latencies of [`RawBwrap::once`].
    fn latencies(&self, n: usize) -> anyhow::Result<Vec<Duration>> {
        time_n(n, || self.once())
    }

    /// Sandboxes per second with `threads` threads running [`RawBwrap::once`]
    /// back to back, `total` in all (after one warm-up run each). Each
    /// thread outlives the commands it spawns (`--die-with-parent`).
    fn throughput(&self, threads: usize, total: usize) -> anyhow::Result<f64> {
        let per_thread = total.div_ceil(threads);
        let barrier = std::sync::Barrier::new(threads + 1);
        let started = std::thread::scope(|scope| -> anyhow::Result<Instant> {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let barrier = &barrier;
                    scope.spawn(move || -> std::io::Result<()> {
                        let warm = self.once();
                        barrier.wait();
                        warm?;
                        (0..per_thread).try_for_each(|_| self.once())
                    })
                })
                .collect();
            barrier.wait();
            let started = Instant::now();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a raw bwrap thread panicked"))??;
            }
            Ok(started)
        })?;
        Ok((per_thread * threads) as f64 / started.elapsed().as_secs_f64())
    }
}

/// A served release gateway.
struct Gateway {
    child: Child,
    endpoint: String,
    addr: String,
}

impl Gateway {
    fn start(
        root: &Path,
        bin: &Path,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", &addr])
            .arg("--data-dir")
            .arg(dir)
            .arg("--policies")
            .arg(root.join("policies"))
            .arg("--profiles")
            .arg(root.join("sandbox-profiles"))
            // As the systemd unit, the image and the Helm chart run it.
            .env("MALLOC_ARENA_MAX", "2")
            .env("MCP_GATEWAY_LOG__FORMAT", "json")
            .env("MCP_GATEWAY_LOG__LEVEL", "warn,mcp_gateway::server=info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("\"serving\"") => break,
                Some(Ok(l)) => eprintln!("  gateway: {l}"),
                _ => bail!("the gateway exited before serving"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe; show warnings.
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if l.contains("\"WARN\"") || l.contains("\"ERROR\"") {
                    eprintln!("  gateway: {l}");
                }
            }
        });
        Ok(Gateway {
            child,
            endpoint: format!("http://{addr}"),
            addr,
        })
    }

    fn mem(&self) -> anyhow::Result<Mem> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {key} in /proc/<pid>/status"))
        };
        let rss_kib = kib("VmRSS:")?;
        let (anon_kib, file_kib, shmem_kib) =
            (kib("RssAnon:")?, kib("RssFile:")?, kib("RssShmem:")?);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may contain spaces): state
        // is field 3, utime 14, stime 15, cutime 16, cstime 17.
        let fields: Vec<u64> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .map(|f| f.parse().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        let cpu = Cpu {
            user: field(14),
            system: field(15),
            children: field(16) + field(17),
        };
        Ok(Mem {
            rss_kib,
            anon_kib,
            file_kib,
            shmem_kib,
            fds,
            cpu,
        })
    }

    /// `GET /metrics` over plain HTTP/1.1 (the REST door).
    fn metrics(&self) -> anyhow::Result<Exposition> {
        let mut s = std::net::TcpStream::connect(&self.addr)?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        if !body.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics: {}", body.lines().next().unwrap_or_default());
        }
        Ok(Exposition(body))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus histogram's cumulative buckets, sum and count.
#[derive(Debug, Default, Clone)]
struct Hist {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Hist {
    fn minus(&self, before: &Hist) -> Hist {
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - b)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }

    /// The upper bound of the bucket holding quantile `q`, as text.
    fn quantile(&self, q: f64) -> String {
        let want = q * self.count;
        for (le, c) in &self.buckets {
            if *c >= want {
                return if le.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    format!("{:.3} ms", le * 1e3)
                };
            }
        }
        "-".to_owned()
    }
}

struct Exposition(String);

impl Exposition {
    /// The series of `name` whose labels contain `label` (all if empty).
    fn hist(&self, name: &str, label: &str) -> Hist {
        let mut h = Hist::default();
        for line in self.0.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            if !labels.contains(label) {
                continue;
            }
            if metric == format!("{name}_sum") {
                h.sum += v;
            } else if metric == format!("{name}_count") {
                h.count += v;
            } else if metric == format!("{name}_bucket") {
                let le = labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|l| {
                        if l == "+Inf" {
                            Some(f64::INFINITY)
                        } else {
                            l.parse().ok()
                        }
                    });
                if let Some(le) = le {
                    match h.buckets.iter_mut().find(|(l, _)| *l == le) {
                        Some((_, c)) => *c += v,
                        None => h.buckets.push((le, v)),
                    }
                }
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }
}

#[cfg(test)]
mod tests;
