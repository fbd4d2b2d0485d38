//! One policy decision with the shipped policies, as the gateway makes it
//! per request: encode the input, clone the prepared engine, evaluate
//! `data.mcp.decision` (and `data.mcp.log.mask`), decode. Compiling the set
//! happens once per revision and is excluded.
//!
//! `cargo bench -p mcp-policy --bench decide` prints, before criterion's
//! own report, the p50/p90/p99 of single decisions and the number of heap
//! allocations per decision (counted by `stats_alloc`'s wrapping global
//! allocator; a reallocation counts once, with its growth in bytes).

use std::alloc::System;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use mcp_core::{ExecRequest, FileOp, FileRequest, Principal, RequestLimits};
use mcp_policy::{PolicyEngine, PolicyInput, RequestContext};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts allocations on top of the system allocator (`stats_alloc`, so
/// that the bench needs no `unsafe` of its own).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn engine() -> PolicyEngine {
    // MCP_BENCH_POLICIES compares another policy set with the same inputs.
    let dir = std::env::var_os("MCP_BENCH_POLICIES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies"),
        std::path::PathBuf::from,
    );
    match PolicyEngine::load(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot load {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}

fn ctx() -> RequestContext {
    RequestContext {
        time: "2025-06-01T12:00:00Z".to_owned(),
        source: Some("127.0.0.1:40000".to_owned()),
        request_id: "0190b3c0-0000-7000-8000-000000000001".to_owned(),
    }
}

fn command(name: &str, args: &[&str]) -> PolicyInput {
    let req = ExecRequest {
        command: name.to_owned(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let Ok(valid) = req.validate(&RequestLimits::default()) else {
        eprintln!("invalid bench request");
        std::process::exit(1);
    };
    PolicyInput::command(
        &Principal::anonymous(),
        &valid,
        Some(&format!("/usr/bin/{name}")),
        &ctx(),
    )
}

fn file_read() -> PolicyInput {
    let Ok(valid) = (FileRequest {
        path: "reports/q1.csv".to_owned(),
        op: FileOp::Read,
        content_len: 0,
        mode: 0,
        recursive: false,
    })
    .validate(&RequestLimits::default()) else {
        eprintln!("invalid bench request");
        std::process::exit(1);
    };
    PolicyInput::file(&Principal::anonymous(), &valid, &ctx())
}

/// Percentiles of single decisions and allocations per decision.
fn report(name: &str, engine: &PolicyEngine, input: &PolicyInput) {
    const WARMUP: usize = 2_000;
    const RUNS: usize = 20_000;
    for _ in 0..WARMUP {
        black_box(engine.evaluate(black_box(input)));
    }
    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    let region = Region::new(GLOBAL);
    for _ in 0..RUNS {
        let started = Instant::now();
        black_box(engine.evaluate(black_box(input)));
        times.push(started.elapsed());
    }
    let change = region.change();
    // A reallocation counts as one allocation of its growth in bytes.
    let allocs = (change.allocations + change.reallocations) / RUNS;
    let bytes = change.bytes_allocated / RUNS;
    times.sort();
    let pct = |p: usize| times[(RUNS * p / 100).min(RUNS - 1)];
    println!(
        "{name:<22} p50 {:>8.1?}  p90 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}  allocations/decision {allocs}  bytes/decision {bytes}",
        pct(50),
        pct(90),
        pct(99),
        times[RUNS - 1],
    );
}

fn decide(c: &mut Criterion) {
    let engine = engine();
    let allowed = command("ls", &["-la", "src"]);
    let denied = command("rm", &["-rf", "/"]);
    let file = file_read();
    let mut group = c.benchmark_group("decide");
    group.bench_function("command_allowed", |b| {
        b.iter(|| engine.evaluate(black_box(&allowed)))
    });
    group.bench_function("command_denied", |b| {
        b.iter(|| engine.evaluate(black_box(&denied)))
    });
    group.bench_function("file_read", |b| {
        b.iter(|| engine.evaluate(black_box(&file)))
    });
    group.finish();
}

criterion_group!(benches, decide);

fn main() {
    // `cargo test --all-targets` runs this in test mode: skip the long
    // percentile runs there.
    // MCP_BENCH_PROFILE=N: only N allowed-command decisions, for
    // `valgrind --tool=callgrind`, whose instruction counts are stable on a
    // noisy machine where wall-clock percentiles are not.
    if let Some(n) = std::env::var("MCP_BENCH_PROFILE")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let engine = engine();
        let input = command("ls", &["-la", "src"]);
        for _ in 0..n {
            black_box(engine.evaluate(black_box(&input)));
        }
        return;
    }
    if std::env::args().any(|a| a == "--bench") {
        let engine = engine();
        println!(
            "one decision with the shipped policies (revision {}):",
            engine.revision()
        );
        report(
            "command allowed (ls)",
            &engine,
            &command("ls", &["-la", "src"]),
        );
        report(
            "command denied (rm)",
            &engine,
            &command("rm", &["-rf", "/"]),
        );
        report("file read", &engine, &file_read());
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
