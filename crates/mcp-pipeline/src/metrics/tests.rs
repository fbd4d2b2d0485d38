use std::time::Duration;

use super::*;

fn snapshot() -> Snapshot<'static> {
    Snapshot {
        running: 2,
        queued: 1,
        slots: 4,
        queue_capacity: 8,
        policy_revision: "abc123",
        policy: mcp_policy::ServiceStats::default(),
        pool_runs: 0,
        pool_cold_runs: 0,
        pool_ready: 0,
        audit_records: 0,
        audit_commits: 0,
    }
}

#[test]
fn every_documented_metric_is_exported() {
    let m = Metrics::new();
    m.observe_api("rest", "Health", "OK", Duration::from_millis(3));
    m.observe_task("completed", Duration::from_millis(40));
    m.observe_decision(true);
    m.observe_policy_eval(Duration::from_micros(80));
    m.observe_store_write("finish", Duration::from_micros(300));
    observe_sandbox_spawn("default", Duration::from_millis(7));
    let text = m.encode(&snapshot()).unwrap();
    let names = exported_names(&text);
    for want in [
        "mcp_api_requests_total",
        "mcp_api_request_duration_seconds_bucket",
        "mcp_task_latency_ms_bucket",
        "mcp_task_outcomes_total",
        "mcp_policy_decisions_total",
        "mcp_policy_eval_duration_seconds_count",
        "mcp_store_write_duration_seconds_sum",
        "mcp_sandbox_spawn_duration_seconds_sum",
        "mcp_tasks_running",
        "mcp_tasks_queued",
        "mcp_task_slots",
        "mcp_task_queue_capacity",
        "mcp_policy_revision_info",
        "mcp_policy_eval_failures_total",
        "mcp_audit_records_total",
        "mcp_audit_commits_total",
        "mcp_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from:\n{text}"
        );
    }
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics needs the EOF marker"
    );
}

#[test]
fn gauges_and_labels_show_what_was_observed() {
    let m = Metrics::new();
    m.observe_api(
        "grpc",
        "ExecuteCommand",
        "PERMISSION_DENIED",
        Duration::from_millis(1),
    );
    m.observe_api(
        "grpc",
        "ExecuteCommand",
        "PERMISSION_DENIED",
        Duration::from_millis(1),
    );
    m.observe_decision(false);
    let text = m.encode(&snapshot()).unwrap();
    assert!(
        text.contains(
            "mcp_api_requests_total{api=\"grpc\",method=\"ExecuteCommand\",status=\"PERMISSION_DENIED\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("mcp_policy_decisions_total{decision=\"deny\"} 1"),
        "{text}"
    );
    assert!(text.contains("mcp_tasks_running 2"), "{text}");
    assert!(text.contains("mcp_tasks_queued 1"), "{text}");
    assert!(
        text.contains("mcp_policy_revision_info{revision=\"abc123\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "mcp_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

#[test]
fn a_new_policy_revision_replaces_the_old_series() {
    let m = Metrics::new();
    m.encode(&snapshot()).unwrap();
    let text = m
        .encode(&Snapshot {
            policy_revision: "def456",
            ..snapshot()
        })
        .unwrap();
    assert!(text.contains("revision=\"def456\"} 1"), "{text}");
    assert!(!text.contains("abc123"), "{text}");
}

#[test]
fn task_latency_is_in_milliseconds() {
    let m = Metrics::new();
    m.observe_task("timed_out", Duration::from_millis(1500));
    let text = m.encode(&snapshot()).unwrap();
    assert!(
        text.contains("mcp_task_latency_ms_sum{outcome=\"timed_out\"} 1500"),
        "{text}"
    );
    assert!(
        text.contains("mcp_task_outcomes_total{outcome=\"timed_out\"} 1"),
        "{text}"
    );
}

#[test]
fn policy_reload_and_shadow_counters_follow_the_service_totals() {
    let m = Metrics::new();
    let scrape = |ok, failed, shadow| {
        m.encode(&Snapshot {
            policy: mcp_policy::ServiceStats {
                reloads: ok,
                reload_failures: failed,
                shadow_disagreements: shadow,
                ..Default::default()
            },
            ..snapshot()
        })
        .unwrap()
    };
    let text = scrape(2, 1, 5);
    assert!(
        text.contains("mcp_policy_reloads_total{outcome=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("mcp_policy_reloads_total{outcome=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mcp_policy_shadow_disagreements_total 5"),
        "{text}"
    );
    // A second scrape with the same totals adds nothing; new totals are
    // reached, not added on top.
    let text = scrape(2, 1, 5);
    assert!(
        text.contains("mcp_policy_reloads_total{outcome=\"ok\"} 2"),
        "{text}"
    );
    let text = scrape(3, 4, 5);
    assert!(
        text.contains("mcp_policy_reloads_total{outcome=\"ok\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("mcp_policy_reloads_total{outcome=\"failed\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("mcp_policy_shadow_disagreements_total 5"),
        "{text}"
    );
}

#[test]
fn audit_metrics_show_records_and_the_commits_that_wrote_them() {
    let m = Metrics::new();
    let text = m
        .encode(&Snapshot {
            audit_records: 12,
            audit_commits: 5,
            ..snapshot()
        })
        .unwrap();
    assert!(text.contains("mcp_audit_records_total 12"), "{text}");
    assert!(text.contains("mcp_audit_commits_total 5"), "{text}");
}

#[test]
fn pool_metrics_show_where_tasks_ran_and_what_waits() {
    let m = Metrics::new();
    let text = m
        .encode(&Snapshot {
            pool_runs: 3,
            pool_cold_runs: 1,
            pool_ready: 2,
            ..snapshot()
        })
        .unwrap();
    assert!(
        text.contains("mcp_sandbox_pool_runs_total{sandbox=\"pooled\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("mcp_sandbox_pool_runs_total{sandbox=\"cold\"} 1"),
        "{text}"
    );
    assert!(text.contains("mcp_sandbox_pool_ready 2"), "{text}");
}

#[test]
fn policy_eval_failures_are_counted_by_kind() {
    let m = Metrics::new();
    let mut stats = mcp_policy::ServiceStats::default();
    for (i, kind) in mcp_policy::FailureKind::ALL.into_iter().enumerate() {
        if kind == mcp_policy::FailureKind::Conflict {
            stats.eval_failures[i] = 3;
        }
    }
    let text = m
        .encode(&Snapshot {
            policy: stats,
            ..snapshot()
        })
        .unwrap();
    assert!(
        text.contains("mcp_policy_eval_failures_total{kind=\"conflict\"} 3"),
        "{text}"
    );
    // Every kind is exported from the start, so a rate() has a baseline.
    for kind in mcp_policy::FailureKind::ALL {
        if kind != mcp_policy::FailureKind::Conflict {
            let line = format!("mcp_policy_eval_failures_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&line), "{line} missing: {text}");
        }
    }
}
