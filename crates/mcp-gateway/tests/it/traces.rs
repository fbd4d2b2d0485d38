//! Traces reach an OTLP collector with the documented spans and parent/child
//! links, continuing the caller's W3C `traceparent`; JSON log lines parse and
//! carry the request id and trace id.
//!
//! These run the real binary, configured the way an operator would (the
//! `OTEL_*` variables, `log.format = json`): a tracing subscriber is
//! process-wide, and the test process already has one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;

use crate::harness::{ServedBinary, cmd};

/// A received span, reduced to what the test checks.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .any(|a| a.key == "service.name");
            assert!(service, "spans carry service.name");
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start_collector() -> (String, Collector) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), collector)
}

fn spans_of(c: &Collector, trace: &str) -> Vec<Got> {
    c.0.lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect()
}

#[tokio::test]
async fn one_request_produces_linked_spans_at_the_collector() {
    let (endpoint, collector) = start_collector().await;
    let gw = ServedBinary::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "mcp-gateway-under-test"),
    ])
    .await;
    let http = reqwest::Client::new();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let remote_parent = "00f067aa0ba902b7";
    let resp = http
        .post(gw.url("/v1/run"))
        .header("traceparent", format!("00-{trace}-{remote_parent}-01"))
        .json(&json!({"command": "echo", "args": ["traced"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let task: Value = resp.json().await.unwrap();
    assert_eq!(task["result"]["stdout"], "traced\n");
    // The task's record links back to the trace.
    let tp = task["metadata"]["traceparent"].as_str().unwrap().to_owned();
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");

    // gRPC metadata is honoured the same way.
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    let mut client = mcp_client::Client::connect(&gw.url("")).await.unwrap();
    let mut req = tonic::Request::new(cmd("true", &[]));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace2}-b7ad6b7169203331-01").parse().unwrap(),
    );
    client.raw().run_command(req).await.unwrap();
    gw.stop().await;

    let spans = spans_of(&collector, trace);
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let one = |name: &str| -> &Got {
        let v: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(v.len(), 1, "one {name} span: {spans:#?}");
        v[0]
    };
    let parent_name = |s: &Got| by_id.get(s.parent.as_str()).map(|p| p.name.clone());

    let request = one("request");
    assert_eq!(
        request.parent, remote_parent,
        "request continues the caller's span"
    );
    assert_eq!(parent_name(one("authn")).as_deref(), Some("request"));
    assert_eq!(parent_name(one("policy.eval")).as_deref(), Some("request"));
    assert_eq!(parent_name(one("task")).as_deref(), Some("request"));
    assert_eq!(parent_name(one("sandbox.run")).as_deref(), Some("task"));
    assert_eq!(
        parent_name(one("sandbox.spawn")).as_deref(),
        Some("sandbox.run")
    );
    let writes: Vec<Option<String>> = spans
        .iter()
        .filter(|s| s.name == "store.write")
        .map(parent_name)
        .collect();
    assert!(
        writes.iter().any(|p| p.as_deref() == Some("request")),
        "decision and task insert under the request: {writes:?}"
    );
    assert!(
        writes.iter().any(|p| p.as_deref() == Some("task")),
        "the task's end under the task: {writes:?}"
    );
    // The record's traceparent names the request span.
    assert!(tp.contains(&request.span_id), "{tp} vs {request:?}");

    let grpc = spans_of(&collector, trace2);
    let req2 = grpc
        .iter()
        .find(|s| s.name == "request")
        .unwrap_or_else(|| panic!("no gRPC request span: {grpc:#?}"));
    assert_eq!(req2.parent, "b7ad6b7169203331");
    assert!(grpc.iter().any(|s| s.name == "sandbox.spawn"));
}

#[tokio::test]
async fn json_log_lines_parse_and_carry_request_and_trace_ids() {
    let gw = ServedBinary::start(&[]).await;
    let http = reqwest::Client::new();
    let marker = format!("argv-marker-{}", uuid::Uuid::now_v7());
    let resp = http
        .post(gw.url("/v1/run"))
        .json(&json!({"command": "rm", "args": ["-rf", marker]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let resp = http
        .post(gw.url("/v1/run"))
        .json(&json!({"command": "echo", "args": [marker]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let lines = gw.stop().await;

    let lines: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l[key].is_string(), "{key} missing: {l}");
        }
        if l["span"].is_string() {
            assert!(
                l["trace_id"].is_string(),
                "a line inside a span has a trace id: {l}"
            );
        }
        if matches!(l["level"].as_str(), Some("INFO" | "WARN" | "ERROR")) {
            assert!(
                !l.to_string().contains(&marker),
                "argv logged at {}: {l}",
                l["level"]
            );
        }
    }
    let denied = lines
        .iter()
        .find(|l| l["message"] == "command denied")
        .unwrap_or_else(|| panic!("no 'command denied' line in {lines:?}"));
    assert_eq!(denied["request_id"], request_id.as_str(), "{denied}");
    assert_eq!(denied["trace_id"].as_str().unwrap().len(), 32, "{denied}");
    assert!(
        lines.iter().any(|l| l["message"] == "serving"),
        "start-up lines are JSON too"
    );
}
