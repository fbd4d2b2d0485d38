//! Logs and traces.
//!
//! - Logs: `tracing`, human format on a terminal and JSON lines otherwise (or
//!   as configured). Every JSON line inside a request carries the request's
//!   `request_id`, and every line inside a span its `trace_id` and `span_id`.
//! - Traces: OpenTelemetry over OTLP/gRPC when an endpoint is configured
//!   (`telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_*`). Spans are always
//!   given W3C ids (so logs and task records carry a trace id, and an incoming
//!   `traceparent` is continued) but are recorded and exported only when an
//!   endpoint is set.
//! - `mcp_sandbox_spawn_duration_seconds` and the `sandbox.spawn` span are
//!   derived here from `mcp-sandbox`'s `sandbox.run` span and its
//!   `sandbox started` event, the moment bubblewrap has been spawned.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde_json::{Map, Value};
use thiserror::Error;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// `log.format`: `auto` is JSON unless stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// The service name spans carry when none is configured.
pub const DEFAULT_SERVICE_NAME: &str = "mcp-gateway";

/// How to log and trace; part of the validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// A `tracing` filter; `RUST_LOG` overrides it.
    pub log_level: String,
    /// OTLP/gRPC endpoint (`http://collector:4317`); `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Fraction of new traces recorded (0.0–1.0); a sampled parent is always
    /// followed.
    pub sample_ratio: f64,
}

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The tracer provider behind the installed subscriber; flush it before
/// the process exits so the last spans are not lost.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now. Blocking work runs off the async
    /// threads, because the exporter's connection lives on them.
    pub async fn flush(&self) {
        if let Some(p) = self.provider.clone() {
            let _ = tokio::task::spawn_blocking(move || p.force_flush()).await;
        }
    }

    /// Flushes and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Installs logs and traces for the server as the global subscriber. Must
/// run inside the Tokio runtime (the OTLP exporter's connection lives there).
pub fn init_with(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let (dispatch, telemetry) = dispatch(settings, std::io::stderr, None)?;
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(telemetry)
}

/// Builds the subscriber `settings` describe, writing logs to `writer`.
/// `json` overrides the format's terminal detection (tests capture JSON).
/// Returned rather than installed, so tests choose how to install it.
pub fn dispatch<W>(
    settings: &TelemetrySettings,
    writer: W,
    json: Option<bool>,
) -> Result<(Dispatch, Telemetry), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = json.unwrap_or(match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    });

    let provider = tracer_provider(settings)?;
    let tracer = provider.tracer(DEFAULT_SERVICE_NAME);

    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_threads(false)
        .with_filter(LevelFilter::INFO);
    // Sees info spans everywhere (request and trace ids) and mcp-sandbox's
    // debug `sandbox started` event (spawn timing).
    let ids = IdsLayer {
        tracer,
        dispatch: OnceLock::new(),
    }
    .with_filter(
        Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("mcp_sandbox", LevelFilter::DEBUG),
    );
    let format = if json {
        LineFormat::Json(JsonLines)
    } else {
        LineFormat::Text(tracing_subscriber::fmt::format())
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .event_format(format)
        .with_filter(filter);
    let subscriber = Registry::default().with(otel).with(ids).with(fmt);
    Ok((
        Dispatch::new(subscriber),
        Telemetry {
            provider: Some(provider),
        },
    ))
}

fn tracer_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &settings.otlp_endpoint else {
        // No exporter: spans still get ids (for logs, task records and
        // propagation) but are never recorded.
        return Ok(builder.with_sampler(Sampler::AlwaysOff).build());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            source,
        })?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    Ok(builder
        .with_sampler(sampler)
        .with_batch_exporter(exporter)
        .build())
}

/// Reads W3C `traceparent`/`tracestate` from any header-like map.
struct Headers<'a, F: Fn(&str) -> Option<&'a str>>(F, &'a [&'a str]);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Headers<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.1.to_vec()
    }
}

const TRACE_HEADERS: &[&str] = &["traceparent", "tracestate"];

/// The remote parent an HTTP request names in `traceparent`, if any.
pub fn extract_http(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(
        |k| headers.get(k).and_then(|v| v.to_str().ok()),
        TRACE_HEADERS,
    ))
}

/// The remote parent a gRPC call names in its `traceparent` metadata, if any.
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(
        |k| metadata.get(k).and_then(|v| v.to_str().ok()),
        TRACE_HEADERS,
    ))
}

/// The `request` span of one call, continuing the caller's trace when it
/// sent a valid `traceparent`. `request_id` and `principal` are recorded
/// after authentication.
pub fn request_span(api: &'static str, method: &'static str, parent: Context) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        api,
        method,
        request_id = tracing::field::Empty,
        principal = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if parent.span().span_context().is_valid() {
        // Only fails when no OpenTelemetry layer is installed (tests without
        // telemetry); the span then simply has no remote parent.
        let _ = span.set_parent(parent);
    }
    // As a span field the trace id shows on every human-format line inside
    // the request (JSON lines add it themselves).
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string().as_str());
    }
    span
}

/// Span data kept by [`IdsLayer`].
#[derive(Debug, Clone, Default)]
struct RequestId(Option<String>);

/// When a `sandbox.run` span of mcp-sandbox began, until its sandbox starts.
#[derive(Debug)]
struct SpawnStart {
    at: Instant,
    wall: SystemTime,
    profile: String,
}

/// Gives spans their request id (their own `request_id` field or their
/// parent's) for the log formatter, and times sandbox start-up.
struct IdsLayer {
    tracer: opentelemetry_sdk::trace::SdkTracer,
    /// The subscriber this layer belongs to, for reading OpenTelemetry ids
    /// (inside a layer callback the thread's default dispatcher is not
    /// reachable).
    dispatch: OnceLock<WeakDispatch>,
}

/// The OpenTelemetry ids of a span, recorded when it is first entered
/// (after the front door had a chance to set its remote parent).
#[derive(Debug, Clone)]
struct TraceIds {
    trace_id: String,
    span_id: String,
}

#[derive(Default)]
struct FieldGrab {
    request_id: Option<String>,
    profile: Option<String>,
}

impl Visit for FieldGrab {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "request_id" => self.request_id = Some(value.to_owned()),
            "profile" => self.profile = Some(value.to_owned()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "request_id" => self.request_id = Some(format!("{value:?}")),
            "profile" => self.profile = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S> Layer<S> for IdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut grab = FieldGrab::default();
        attrs.record(&mut grab);
        let inherited = span
            .parent()
            .and_then(|p| p.extensions().get::<RequestId>().cloned())
            .unwrap_or_default();
        let mut ext = span.extensions_mut();
        ext.replace(RequestId(grab.request_id.or(inherited.0)));
        if span.name() == "sandbox.run" && span.metadata().target().starts_with("mcp_sandbox") {
            ext.replace(SpawnStart {
                at: Instant::now(),
                wall: SystemTime::now(),
                profile: grab.profile.unwrap_or_default(),
            });
        }
    }

    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<TraceIds>().is_some() {
            return;
        }
        let Some(cx) = self.otel_context(id) else {
            return;
        };
        let s = cx.span();
        let sc = s.span_context();
        if sc.is_valid() {
            span.extensions_mut().replace(TraceIds {
                trace_id: sc.trace_id().to_string(),
                span_id: sc.span_id().to_string(),
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut grab = FieldGrab::default();
        values.record(&mut grab);
        if let Some(rid) = grab.request_id {
            span.extensions_mut().replace(RequestId(Some(rid)));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        if !event.metadata().target().starts_with("mcp_sandbox") {
            return;
        }
        let mut msg = MessageGrab(false);
        event.record(&mut msg);
        if !msg.0 {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let Some(start) = span.extensions_mut().remove::<SpawnStart>() else {
            return;
        };
        mcp_pipeline::metrics::observe_sandbox_spawn(&start.profile, start.at.elapsed());
        let id = span.id();
        drop(span);
        if let Some(parent) = self.otel_context(&id)
            && parent.span().span_context().is_sampled()
        {
            let mut s = self
                .tracer
                .span_builder("sandbox.spawn")
                .with_start_time(start.wall)
                .with_attributes([KeyValue::new("profile", start.profile)])
                .start_with_context(&self.tracer, &parent);
            s.end_with_timestamp(SystemTime::now());
        }
    }
}

impl IdsLayer {
    /// The OpenTelemetry context of span `id`. The caller must not hold
    /// the span's extensions.
    fn otel_context(&self, id: &Id) -> Option<Context> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        tracing_opentelemetry::get_otel_context(id, &dispatch)
    }
}

/// Whether an event is mcp-sandbox's `sandbox started`.
struct MessageGrab(bool);

impl Visit for MessageGrab {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == "sandbox started" {
            self.0 = true;
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && value == "sandbox started" {
            self.0 = true;
        }
    }
}

/// The log line format: the standard human one, or [`JsonLines`].
enum LineFormat {
    Text(tracing_subscriber::fmt::format::Format),
    Json(JsonLines),
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        match self {
            LineFormat::Text(f) => f.format_event(ctx, writer, event),
            LineFormat::Json(f) => f.format_event(ctx, writer, event),
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `message`, the
/// event's fields, the innermost span's name, and `request_id`, `trace_id`
/// and `span_id` when the event happens inside a (traced) request.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            Value::String(mcp_core::rfc3339(mcp_core::now())),
        );
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        obj.insert("target".into(), Value::String(meta.target().to_owned()));
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        obj.extend(fields.0);
        if let Some(span) = ctx.lookup_current() {
            obj.insert("span".into(), Value::String(span.name().to_owned()));
            let rid = span
                .scope()
                .find_map(|s| s.extensions().get::<RequestId>().and_then(|r| r.0.clone()));
            if let Some(rid) = rid {
                obj.insert("request_id".into(), Value::String(rid));
            }
            // The innermost span the ids layer saw entered (per-layer
            // filters may hide a debug span from it).
            let ids = span
                .scope()
                .find_map(|s| s.extensions().get::<TraceIds>().cloned());
            if let Some(ids) = ids {
                obj.insert("trace_id".into(), Value::String(ids.trace_id));
                obj.insert("span_id".into(), Value::String(ids.span_id));
            }
        }
        let line = serde_json::to_string(&obj).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}
