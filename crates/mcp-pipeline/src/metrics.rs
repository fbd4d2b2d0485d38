//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text
//! format.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client): every
//! [`Gateway`](crate::Gateway) owns its own [`Registry`], so two
//! gateways in one process (the integration tests) never mix their numbers,
//! and label sets are typed structs, so a label can only take values from the
//! small fixed sets spelled out here (api, method, status code name, outcome,
//! decision, profile) — never a task id, a command or a path.
//!
//! Names follow `mcp_<name>_<unit>[_total]`; counters are registered without
//! `_total`, which the OpenMetrics encoder appends.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
    method: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiMethodLabels {
    api: &'static str,
    method: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A store write, by operation (`record_decision`, `insert_task`,
/// `set_state`, `finish`): a fixed set named in the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreOpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

/// Where a task of a pooled profile ran: `pooled` or `cold`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolRunLabels {
    sandbox: &'static str,
}

/// A policy reload's outcome: `ok` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

/// Why a policy evaluation failed closed (`mcp_policy::FailureKind`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Profiles are named by the operator's `sandbox-profiles/*.toml`: a small,
/// fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ProfileLabels {
    pub(crate) profile: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, for request and evaluation durations: 1 ms … 60 s.
fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Seconds, for policy evaluation: 10 µs … 1 s.
fn eval_histogram() -> Histogram {
    Histogram::new([
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05, 0.1, 0.25, 1.0,
    ])
}

/// Milliseconds, for whole tasks: 5 ms … 10 min (the largest timeout).
fn task_ms_histogram() -> Histogram {
    Histogram::new([
        5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
        60000.0, 300000.0, 600000.0,
    ])
}

/// Sandbox start-up time by profile. Process-wide rather than per gateway
/// because it is fed by a `tracing` layer ([`crate::telemetry`]) that sees
/// `mcp-sandbox`'s spans, and a subscriber is process-wide; every gateway's
/// registry exposes this one family.
pub(crate) static SANDBOX_SPAWN: LazyLock<HistogramFamily<ProfileLabels>> =
    LazyLock::new(|| Family::new_with_constructor(seconds_histogram as fn() -> Histogram));

/// Records one sandbox start-up (bwrap command built, workspace prepared,
/// process spawned).
pub fn observe_sandbox_spawn(profile: &str, took: Duration) {
    SANDBOX_SPAWN
        .get_or_create(&ProfileLabels {
            profile: profile.to_owned(),
        })
        .observe(took.as_secs_f64());
}

/// The gateway's metrics. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: Family<ApiLabels, Counter>,
    api_duration: HistogramFamily<ApiMethodLabels>,
    task_latency: HistogramFamily<OutcomeLabels>,
    task_outcomes: Family<OutcomeLabels, Counter>,
    policy_decisions: Family<DecisionLabels, Counter>,
    policy_eval: Histogram,
    store_write: HistogramFamily<StoreOpLabels>,
    tasks_running: Gauge,
    tasks_queued: Gauge,
    task_slots: Gauge,
    task_queue_capacity: Gauge,
    policy_revision: Family<RevisionLabels, Gauge>,
    policy_reloads: Family<ReloadLabels, Counter>,
    policy_eval_failures: Family<FailureLabels, Counter>,
    shadow_disagreements: Counter,
    pool_runs: Family<PoolRunLabels, Counter>,
    pool_ready: Gauge,
    audit_records: Counter,
    audit_commits: Counter,
    /// Serialises scrapes while they bring the mirrored counters up to the
    /// policy service's own totals (two scrapes must not both add a delta).
    mirror: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "mcp_api_requests",
            "Requests answered, by front door (grpc, rest), operation and status (gRPC code name)",
            api_requests.clone(),
        );
        let api_duration: HistogramFamily<ApiMethodLabels> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "mcp_api_request_duration_seconds",
            "Time to answer a request (for streams: to the first response), by front door and operation",
            api_duration.clone(),
        );
        let task_latency: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(task_ms_histogram);
        registry.register(
            "mcp_task_latency_ms",
            "Time from a task's acceptance to its stored end, in milliseconds, by outcome",
            task_latency.clone(),
        );
        let task_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mcp_task_outcomes",
            "Tasks that reached a terminal state, by outcome (completed, failed, cancelled, timed_out)",
            task_outcomes.clone(),
        );
        let policy_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "mcp_policy_decisions",
            "Stored policy decisions, by decision (allow, deny)",
            policy_decisions.clone(),
        );
        let policy_eval = eval_histogram();
        registry.register(
            "mcp_policy_eval_duration_seconds",
            "Time to evaluate the policy for one request",
            policy_eval.clone(),
        );
        let store_write: HistogramFamily<StoreOpLabels> =
            Family::new_with_constructor(eval_histogram as fn() -> Histogram);
        registry.register(
            "mcp_store_write_duration_seconds",
            "Time of one store write on a request's path, by operation",
            store_write.clone(),
        );
        registry.register(
            "mcp_sandbox_spawn_duration_seconds",
            "Time to start a sandbox (workspace prepared, bubblewrap spawned), by profile",
            SANDBOX_SPAWN.clone(),
        );
        let tasks_running = Gauge::default();
        registry.register(
            "mcp_tasks_running",
            "Tasks holding a running slot",
            tasks_running.clone(),
        );
        let tasks_queued = Gauge::default();
        registry.register(
            "mcp_tasks_queued",
            "Tasks waiting for a running slot",
            tasks_queued.clone(),
        );
        let task_slots = Gauge::default();
        registry.register(
            "mcp_task_slots",
            "Tasks that may run at once (limits.max_running_tasks); saturation is mcp_tasks_running / mcp_task_slots",
            task_slots.clone(),
        );
        let task_queue_capacity = Gauge::default();
        registry.register(
            "mcp_task_queue_capacity",
            "Tasks that may wait for a slot (limits.max_queued_tasks); beyond it requests get RESOURCE_EXHAUSTED",
            task_queue_capacity.clone(),
        );
        let policy_revision = Family::<RevisionLabels, Gauge>::default();
        registry.register(
            "mcp_policy_revision_info",
            "The revision (content hash) of the loaded policy set; always 1",
            policy_revision.clone(),
        );
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "mcp_policy_reloads",
            "Policy reloads by outcome; on `failed` the previous revision kept serving",
            policy_reloads.clone(),
        );
        let policy_eval_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "mcp_policy_eval_failures",
            "Policy evaluations that failed closed (denied), by kind: conflict (rules disagreed), error (a builtin failed), timeout, undefined, malformed (decision shape), input (refused before evaluation)",
            policy_eval_failures.clone(),
        );
        let shadow_disagreements = Counter::default();
        registry.register(
            "mcp_policy_shadow_disagreements",
            "Requests on which the shadow policy set's outcome (allow, or profile) differed from the active one's",
            shadow_disagreements.clone(),
        );
        let pool_runs = Family::<PoolRunLabels, Counter>::default();
        registry.register(
            "mcp_sandbox_pool_runs",
            "Tasks of profiles with a warm pool, by where they ran (`pooled`, or `cold` when no waiting sandbox fitted)",
            pool_runs.clone(),
        );
        let pool_ready = Gauge::default();
        registry.register(
            "mcp_sandbox_pool_ready",
            "Pre-started sandboxes waiting for a task, over all profiles and tenants",
            pool_ready.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "mcp_audit_records",
            "Audit records appended, each on disk before its request was answered",
            audit_records.clone(),
        );
        let audit_commits = Counter::default();
        registry.register(
            "mcp_audit_commits",
            "Transactions (fsyncs) that wrote the audit records; records per commit is the group commit's batch size",
            audit_commits.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("mcp_build_info", "The gateway's version; always 1", build);
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            api_requests,
            api_duration,
            task_latency,
            task_outcomes,
            policy_decisions,
            policy_eval,
            store_write,
            tasks_running,
            tasks_queued,
            task_slots,
            task_queue_capacity,
            policy_revision,
            policy_reloads,
            policy_eval_failures,
            shadow_disagreements,
            pool_runs,
            pool_ready,
            audit_records,
            audit_commits,
            mirror: std::sync::Mutex::new(()),
        }
    }

    /// Counts one answered request. `api` (the front door), `method` and
    /// `status` come from fixed sets (front door names, operation names,
    /// gRPC code names).
    pub fn observe_api(
        &self,
        api: &'static str,
        method: &'static str,
        status: &'static str,
        took: Duration,
    ) {
        self.api_requests
            .get_or_create(&ApiLabels {
                api,
                method,
                status,
            })
            .inc();
        self.api_duration
            .get_or_create(&ApiMethodLabels { api, method })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn observe_task(&self, outcome: &'static str, took: Duration) {
        let labels = OutcomeLabels { outcome };
        self.task_outcomes.get_or_create(&labels).inc();
        self.task_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64() * 1000.0);
    }

    pub(crate) fn observe_decision(&self, allow: bool) {
        let decision = if allow { "allow" } else { "deny" };
        self.policy_decisions
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    pub(crate) fn observe_policy_eval(&self, took: Duration) {
        self.policy_eval.observe(took.as_secs_f64());
    }

    /// Records one store write (`op` is one of a fixed set of names).
    pub(crate) fn observe_store_write(&self, op: &'static str, took: Duration) {
        self.store_write
            .get_or_create(&StoreOpLabels { op })
            .observe(took.as_secs_f64());
    }

    /// Encodes everything in the OpenMetrics text format, after setting the
    /// gauges that are read rather than counted.
    pub fn encode(&self, snapshot: &Snapshot<'_>) -> Result<String, std::fmt::Error> {
        self.tasks_running
            .set(i64::try_from(snapshot.running).unwrap_or(i64::MAX));
        self.tasks_queued
            .set(i64::try_from(snapshot.queued).unwrap_or(i64::MAX));
        self.task_slots
            .set(i64::try_from(snapshot.slots).unwrap_or(i64::MAX));
        self.task_queue_capacity
            .set(i64::try_from(snapshot.queue_capacity).unwrap_or(i64::MAX));
        // One series: the current revision. A reload replaces it.
        self.policy_revision.clear();
        self.policy_revision
            .get_or_create(&RevisionLabels {
                revision: snapshot.policy_revision.to_owned(),
            })
            .set(1);
        {
            // The policy service counts; these counters mirror its totals.
            let _one_scrape = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
            let catch_up = |c: &Counter, total: u64| {
                c.inc_by(total.saturating_sub(c.get()));
            };
            catch_up(
                &self
                    .policy_reloads
                    .get_or_create(&ReloadLabels { outcome: "ok" }),
                snapshot.policy.reloads,
            );
            catch_up(
                &self
                    .policy_reloads
                    .get_or_create(&ReloadLabels { outcome: "failed" }),
                snapshot.policy.reload_failures,
            );
            for kind in mcp_policy::FailureKind::ALL {
                catch_up(
                    &self.policy_eval_failures.get_or_create(&FailureLabels {
                        kind: kind.as_str(),
                    }),
                    snapshot.policy.eval_failures_of(kind),
                );
            }
            catch_up(
                &self.shadow_disagreements,
                snapshot.policy.shadow_disagreements,
            );
            catch_up(
                &self
                    .pool_runs
                    .get_or_create(&PoolRunLabels { sandbox: "pooled" }),
                snapshot.pool_runs,
            );
            catch_up(
                &self
                    .pool_runs
                    .get_or_create(&PoolRunLabels { sandbox: "cold" }),
                snapshot.pool_cold_runs,
            );
            catch_up(&self.audit_records, snapshot.audit_records);
            catch_up(&self.audit_commits, snapshot.audit_commits);
        }
        self.pool_ready
            .set(i64::try_from(snapshot.pool_ready).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Values read from the gateway at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub running: usize,
    pub queued: usize,
    pub slots: usize,
    pub queue_capacity: usize,
    pub policy_revision: &'a str,
    /// Totals of the policy service since start: reloads, shadow
    /// disagreements, evaluations that failed closed by kind.
    pub policy: mcp_policy::ServiceStats,
    /// Warm pool totals since start, and sandboxes waiting now.
    pub pool_runs: u64,
    pub pool_cold_runs: u64,
    pub pool_ready: usize,
    /// Audit records appended and the commits that wrote them, since start.
    pub audit_records: u64,
    pub audit_commits: u64,
}

/// The standard `process_*` metrics, read from `/proc/self` on each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A scrape must not fail because /proc is unreadable (e.g. a
        // restricted container); the process metrics are then just absent.
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second().max(1) as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let page = procfs::page_size();
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                (stat.rss.saturating_mul(page)) as f64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as f64,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                n as f64,
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The metric family names an OpenMetrics text exposition declares
/// (`# TYPE name kind` lines), with the sample-name suffixes each kind
/// adds; for tests and the dashboard check.
pub fn exported_names(exposition: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in exposition.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.push(name.to_owned());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

#[cfg(test)]
mod tests;
