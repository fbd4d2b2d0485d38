//! `/metrics`: the documented metrics appear and move after requests through
//! both doors; every query of the Grafana dashboards and the Prometheus
//! rules names a metric the gateway exports.

use std::path::Path;

use mcp_gateway::telemetry::LogFormat;
use mcp_gateway::telemetry::TelemetrySettings;
use mcp_pipeline::metrics::exported_names;
use serde_json::{Value, json};

use crate::harness::{TestGateway, cmd, repo};
use crate::rest::Rest;

/// The value of one series (`name{labels}` exactly as exposed), 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub fn settings() -> TelemetrySettings {
    TelemetrySettings {
        log_format: LogFormat::Json,
        log_level: "info".into(),
        otlp_endpoint: None,
        service_name: "mcp-gateway-test".into(),
        sample_ratio: 1.0,
    }
}

async fn scrape(rest: &Rest) -> String {
    let resp = rest.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    resp.text().await.unwrap()
}

#[tokio::test]
async fn metrics_appear_and_move_after_requests_through_both_doors() {
    // The process-wide telemetry (see the harness) feeds the sandbox spawn
    // histogram.
    let mut gw = TestGateway::start().await;
    let rest = Rest::new(&gw);
    let before = scrape(&rest).await;

    let r = rest
        .post_json("/v1/run", &json!({"command": "echo", "args": ["hi"]}))
        .await;
    assert_eq!(r.status(), 200);
    gw.client.run(cmd("echo", &["hi"])).await.unwrap();
    gw.client
        .execute(cmd("rm", &["-rf", "/"]))
        .await
        .unwrap_err();
    let after = scrape(&rest).await;

    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved(r#"mcp_api_requests_total{api="rest",method="RunCommand",status="OK"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"mcp_api_requests_total{api="grpc",method="RunCommand",status="OK"}"#),
        1.0
    );
    assert_eq!(
        moved(
            r#"mcp_api_requests_total{api="grpc",method="ExecuteCommand",status="PERMISSION_DENIED"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"mcp_api_request_duration_seconds_count{api="rest",method="RunCommand"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"mcp_task_outcomes_total{outcome="completed"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"mcp_task_latency_ms_count{outcome="completed"}"#),
        2.0
    );
    assert!(moved(r#"mcp_task_latency_ms_sum{outcome="completed"}"#) > 0.0);
    assert_eq!(
        moved(r#"mcp_policy_decisions_total{decision="allow"}"#),
        2.0
    );
    assert_eq!(moved(r#"mcp_policy_decisions_total{decision="deny"}"#), 1.0);
    assert_eq!(moved("mcp_policy_eval_duration_seconds_count"), 3.0);
    // Every decision is stored (allowed or not) with its audit record and,
    // for a task, the task's insert, in one transaction; each task is marked
    // running, and finished with its `task_end` record in one transaction.
    for (op, n) in [
        ("audited_decision", 3.0),
        ("record_decision", 0.0),
        ("insert_task", 0.0),
        ("set_state", 2.0),
        ("audited_finish", 2.0),
        ("finish", 0.0),
    ] {
        assert_eq!(
            moved(&format!(
                r#"mcp_store_write_duration_seconds_count{{op="{op}"}}"#
            )),
            n,
            "{after}"
        );
    }
    // Process-wide (other tests' sandboxes count too): at least ours.
    assert!(
        moved(r#"mcp_sandbox_spawn_duration_seconds_count{profile="default"}"#) >= 2.0,
        "{after}"
    );
    assert_eq!(sample(&after, "mcp_tasks_running"), 0.0);
    assert_eq!(sample(&after, "mcp_tasks_queued"), 0.0);
    assert!(
        after.contains("mcp_policy_revision_info{revision=\""),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            &format!(
                "mcp_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(sample(&after, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&after, "process_open_fds") > 0.0);
    // Labels come from fixed sets: no task id, command or path.
    assert!(!after.contains("echo"), "a command leaked into a label");
    gw.stop().await;
}

/// Metric names in PromQL text: identifiers starting `mcp_`/`process_`
/// (recording-rule names contain `:` and are skipped).
fn metric_names(promql: &str) -> Vec<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| (t.starts_with("mcp_") || t.starts_with("process_")) && !t.contains(':'))
        .map(str::to_owned)
        .collect()
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboards_and_alerts_only_query_metrics_the_gateway_exports() {
    let mut gw = TestGateway::start().await;
    let rest = Rest::new(&gw);
    gw.client.run(cmd("true", &[])).await.unwrap();
    let exported = exported_names(&scrape(&rest).await);

    let dir = repo().join("deploy/grafana");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut found = Vec::new();
        exprs(&v, &mut found);
        assert!(!found.is_empty(), "{} has no queries", path.display());
        check(&path, &found, &exported);
    }
    assert!(dashboards >= 2, "overview and performance dashboards");

    let alerts = repo().join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&alerts).unwrap();
    check(&alerts, &[text], &exported);
    gw.stop().await;
}

fn check(path: &Path, exprs: &[String], exported: &[String]) {
    let mut seen = 0;
    for e in exprs {
        for name in metric_names(e) {
            seen += 1;
            assert!(
                exported.contains(&name),
                "{} queries {name}, which the gateway does not export",
                path.display()
            );
        }
    }
    assert!(seen > 0, "{} names no metric", path.display());
}
