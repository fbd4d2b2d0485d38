//! The store operations on a request's path, SQLite against PostgreSQL:
//! - `decision_commit`: the audited commit of an allowed command, one audit
//!   record carrying the decision and the new task (`append_with`), as the
//!   gateway commits before it releases a sandbox;
//! - `set_state`: created → running;
//! - `finish`: running → completed with an outcome.
//!
//! One operation at a time (latency, not throughput). SQLite is a file in a
//! temporary directory (WAL; the audit connection `synchronous = FULL`);
//! PostgreSQL is a fresh database on the server `MCP_TEST_DATABASE_URL`
//! names (`eval "$(scripts/pg-test-cluster.sh start)"`, over its unix socket;
//! start it with `MCP_PG_TEST_FSYNC=on` to compare durable commits, the
//! test cluster's default is fsync off). Without that variable only SQLite
//! is measured, and the bench says so.
//!
//! `cargo bench -p mcp-store --bench ops` prints p50/p99 per operation
//! before criterion's own report.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use mcp_audit::AuditEvent;
use mcp_core::{TaskId, TaskKind, TaskRecord, TaskResult, TaskState};
use mcp_store::{
    AuditLog, AuditOptions, DecisionDetails, DecisionRecord, StoreWrite, TaskStore, open_store,
};
use time::OffsetDateTime;

struct Backend {
    name: &'static str,
    store: Arc<dyn TaskStore>,
    audit: Arc<AuditLog>,
    _dir: Option<tempfile::TempDir>,
}

fn task() -> TaskRecord {
    TaskRecord {
        id: TaskId::new(),
        kind: TaskKind::Command,
        state: TaskState::Created,
        tenant: "acme".into(),
        principal: "alice".into(),
        command: "/usr/bin/echo".into(),
        args: vec!["bench".into()],
        profile: Some("default".into()),
        created_at: mcp_store::stored_time(OffsetDateTime::now_utc()),
        started_at: None,
        completed_at: None,
        metadata: Default::default(),
        result: None,
        failure_reason: None,
        owner: "bench".into(),
    }
}

fn decision_commit(t: &TaskRecord) -> (AuditEvent, Vec<StoreWrite>) {
    let record = DecisionRecord {
        id: uuid::Uuid::now_v7(),
        at: t.created_at,
        tenant: t.tenant.clone(),
        principal: t.principal.clone(),
        kind: "command".into(),
        summary: "echo".into(),
        allow: true,
        deny_reasons: Vec::new(),
        policy_revision: "sha256:bench".into(),
        task_id: Some(t.id),
    };
    let details = DecisionDetails {
        input: Some(
            serde_json::json!({"request": {"command": {"name": "echo", "args": ["bench"]}}}),
        ),
        latency_us: 300,
        profile: Some("default".into()),
        ..DecisionDetails::default()
    };
    let event = AuditEvent {
        at_ms: 1_700_000_000_000,
        request_id: record.id.to_string(),
        trace_id: None,
        principal: t.principal.clone(),
        tenant: t.tenant.clone(),
        action: "run_command".into(),
        decision: None,
        task_id: Some(t.id.to_string()),
        command: Some("echo".into()),
        input_sha256: None,
        output_sha256: None,
        outcome: "allowed".into(),
        latency_us: 0,
    };
    let writes = vec![
        StoreWrite::Decision {
            record,
            details: Arc::new(details),
        },
        StoreWrite::InsertTask(t.clone()),
    ];
    (event, writes)
}

async fn backends() -> anyhow::Result<Vec<Backend>> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut out = vec![Backend {
        name: "sqlite",
        store: open_store(&url).await?,
        audit: Arc::new(AuditLog::open(&url, AuditOptions::default()).await?),
        _dir: Some(dir),
    }];
    match std::env::var("MCP_TEST_DATABASE_URL") {
        Ok(server) if !server.is_empty() => {
            use sqlx::Connection;
            let name = format!("mcp_bench_{}", uuid::Uuid::now_v7().simple());
            let mut admin = sqlx::PgConnection::connect(&server).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
            let url = with_database(&server, &name);
            out.push(Backend {
                name: "postgres",
                store: open_store(&url).await?,
                audit: Arc::new(AuditLog::open(&url, AuditOptions::default()).await?),
                _dir: None,
            });
        }
        _ => eprintln!(
            "MCP_TEST_DATABASE_URL is not set: measuring SQLite only \
             (eval \"$(scripts/pg-test-cluster.sh start)\" for PostgreSQL)"
        ),
    }
    Ok(out)
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let query_start = rest[path_start..]
        .find('?')
        .map_or(rest.len(), |q| path_start + q);
    format!(
        "{scheme}://{}/{name}{}",
        &rest[..path_start],
        &rest[query_start..]
    )
}

/// Runs `n` of one operation on fresh tasks, each prepared by `prepare`
/// (not timed); the time of each.
async fn timed(b: &Backend, op: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    let result = TaskResult::default();
    for _ in 0..n {
        let t = task();
        if op != "decision_commit" {
            b.store.insert_task(&t).await?;
        }
        if op == "finish" {
            b.store
                .set_state(t.id, TaskState::Running, OffsetDateTime::now_utc())
                .await?;
        }
        let started = Instant::now();
        match op {
            "decision_commit" => {
                let (event, writes) = decision_commit(&t);
                black_box(b.audit.append_with(event, writes).await?);
            }
            "set_state" => {
                b.store
                    .set_state(t.id, TaskState::Running, OffsetDateTime::now_utc())
                    .await?
            }
            _ => {
                b.store
                    .finish(
                        t.id,
                        TaskState::Completed,
                        OffsetDateTime::now_utc(),
                        Some(&result),
                        None,
                    )
                    .await?
            }
        }
        times.push(started.elapsed());
    }
    Ok(times)
}

const OPS: [&str; 3] = ["decision_commit", "set_state", "finish"];

fn ops(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        eprintln!("cannot start a tokio runtime");
        return;
    };
    let backends = match rt.block_on(backends()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot open the stores: {e:#}");
            return;
        }
    };
    for b in &backends {
        for op in OPS {
            match rt.block_on(timed(b, op, 1000)) {
                Ok(mut times) => {
                    times.sort_unstable();
                    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
                    println!(
                        "{:<8} {:<16} p50 {:>8.3} ms  p99 {:>8.3} ms",
                        b.name,
                        op,
                        pick(0.5).as_secs_f64() * 1e3,
                        pick(0.99).as_secs_f64() * 1e3
                    );
                }
                Err(e) => eprintln!("{} {op}: {e:#}", b.name),
            }
        }
    }
    let mut group = c.benchmark_group("store");
    for b in &backends {
        for op in OPS {
            group.bench_function(format!("{}/{op}", b.name), |bench| {
                bench.iter_custom(|iters| {
                    rt.block_on(async {
                        let n = usize::try_from(iters).unwrap_or(usize::MAX);
                        timed(b, op, n)
                            .await
                            .map(|t| t.into_iter().sum())
                            .unwrap_or(Duration::MAX)
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = ops
}
criterion::criterion_main!(benches);
