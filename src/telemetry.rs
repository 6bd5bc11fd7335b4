//! Logging and tracing through `tracing`: human-readable text or one JSON object per line
//! (filtered by `RUST_LOG`, default `info`), and OpenTelemetry spans exported over OTLP when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, over
//! gRPC or, with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, over HTTP.
//!
//! A caller's W3C `traceparent` becomes the parent of the sidecar's span for that RPC
//! ([`grpc_span`]). That span follows the OpenTelemetry semantic conventions for gRPC servers:
//! kind `SERVER`, `rpc.system`, `rpc.service`, `rpc.method`, and `rpc.grpc.status_code` with
//! the status Error for server faults only ([`record_grpc_status`], called by
//! [`crate::grpc::metrics`], which sees every call's `grpc-status`).
//!
//! The service name is `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`),
//! else `o2o-sidecar`. Span noise (`busy_ns`/`idle_ns`, `thread.*`, `code.*`) is off.
//!
//! JSON log lines carry the current span's `trace_id` and `span_id` at the top level, the
//! fields Loki, Datadog and Cloud Logging link on. In JSON mode the OpenTelemetry layer is
//! installed even without an exporter, so that every line inside a span has them.
//!
//! `RUST_LOG` (default `info`) filters both outputs, each through its own per-layer filter
//! ([`filter`]): the log lines, and the spans (with the events recorded on them) handed to the
//! exporter. The sidecar's spans are INFO, so the default exports them and `RUST_LOG=warn`
//! exports none; dependencies' DEBUG and TRACE spans are exported only when asked for.
//!
//! A payment keeps the W3C `traceparent` of the call that created it
//! ([`current_traceparent`]); the span of a DOKU notification about it links to that trace
//! ([`link_to`]), since it starts a trace of its own.

use std::{collections::HashMap, io::IsTerminal as _};

use opentelemetry::{
    KeyValue,
    propagation::{Extractor, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields,
        format::{Json, JsonFields, Writer},
        time::SystemTime,
    },
    prelude::*,
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// Keeps the OpenTelemetry pipeline alive; [`Telemetry::shutdown`] flushes pending spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (if any).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("o2o-sidecar: OpenTelemetry shutdown: {e}");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
fn otlp_protocol() -> String {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    .map_or_else(|| "grpc".to_owned(), |v| v.trim().to_owned())
}

/// The OTLP span exporter for the configured protocol: `grpc` (tonic) or `http/protobuf`
/// (reqwest); endpoint, headers and timeout come from the standard `OTEL_EXPORTER_OTLP_*`
/// variables.
fn span_exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    match otlp_protocol().as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string()),
        "http/protobuf" => {
            // reqwest needs the TLS provider even for http://; its blocking client is built
            // off the runtime's threads, where it may not start or drop its own runtime.
            crate::install_tls_provider();
            std::thread::spawn(|| {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("the HTTP exporter's set-up panicked".into()))
        }
        other => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (use grpc or http/protobuf)"
        )),
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`, without the
/// per-span noise (busy/idle times, thread, source location).
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("o2o-sidecar"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
}

/// The resource spans are exported under: what the SDK detected from `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`, with `service.name` defaulting to `o2o-sidecar` (the SDK's own
/// default is `unknown_service`) and `service.version` to the crate's version.
pub fn resource(detected: Resource) -> Resource {
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder_empty().with_attributes(
        detected
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    if !named {
        builder = builder.with_service_name("o2o-sidecar");
    }
    if detected
        .get(&opentelemetry::Key::from_static_str("service.version"))
        .is_none()
    {
        builder = builder.with_attribute(KeyValue::new("service.version", crate::VERSION));
    }
    builder.build()
}

/// Installs the global subscriber (and, when configured, the OTLP exporter). Logs go to
/// stderr; stdout stays free for `dev`'s banner. Must be called inside the tokio runtime
/// (the OTLP exporter's channel lives there).
pub fn init(format: LogFormat) -> Telemetry {
    let provider = if otlp_configured() {
        match span_exporter() {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(Resource::builder().build()))
                    .build(),
            ),
            Err(e) => {
                eprintln!("o2o-sidecar: OTLP exporter not started: {e}");
                None
            }
        }
    } else if format == LogFormat::Json {
        // No export, but span ids for the log lines.
        Some(SdkTracerProvider::builder().build())
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let rust_log = std::env::var("RUST_LOG").ok();
    let otel = provider
        .as_ref()
        .map(|p| otel_layer(p).with_filter(filter(rust_log.as_deref())));
    let registry = tracing_subscriber::registry().with(otel);
    let result = match format {
        // Colour only on a terminal, so that a log file or a test can parse the lines.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(filter(rust_log.as_deref())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(json_layer(std::io::stderr).with_filter(filter(rust_log.as_deref())))
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Telemetry { provider }
}

/// The filter `RUST_LOG` (`directives`) sets on one output, logs or exported spans: `info`
/// when unset or empty; directives that do not parse are skipped (with a warning on stderr),
/// as `EnvFilter` does.
pub fn filter(directives: Option<&str>) -> EnvFilter {
    match directives.map(str::trim).filter(|d| !d.is_empty()) {
        None => EnvFilter::new("info"),
        Some(d) => EnvFilter::builder().parse_lossy(d),
    }
}

/// The W3C `traceparent` of the current span, if it is an OpenTelemetry span (a layer from
/// [`otel_layer`] is installed): stored with a payment as the trace that created it.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Adds to `span` an OpenTelemetry link to the span a W3C `traceparent` names (a payment's
/// creating call, [`current_traceparent`]); a value that does not parse adds nothing.
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let linked = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// The JSON log layer: one object per line, the event's fields at the top level, the current
/// span and its parents in `span`/`spans`, and the current span's `trace_id` and `span_id` at
/// the top level (when an OpenTelemetry layer is installed and the line is inside a span).
pub fn json_layer<S, W>(writer: W) -> impl Layer<S> + use<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .event_format(TraceJson(
            fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true),
        ))
        .fmt_fields(JsonFields::new())
        .with_writer(writer)
}

/// Formats with tracing-subscriber's JSON format, then adds `trace_id` and `span_id`.
struct TraceJson(fmt::format::Format<Json, SystemTime>);

impl<S, N> FormatEvent<S, N> for TraceJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|span| {
            tracing::dispatcher::get_default(|dispatch| {
                let cx = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)?;
                let sc = cx.span().span_context().clone();
                sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
            })
        });
        let trimmed = line.trim_end();
        match (ids, trimmed.strip_suffix('}')) {
            (Some((trace_id, span_id)), Some(body)) if body.len() > 1 => writeln!(
                writer,
                r#"{body},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#
            ),
            _ => writer.write_str(&line),
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one gRPC request, as the OpenTelemetry conventions for gRPC servers name it
/// (`o2o.v1.O2OPayments/GetStatus`, kind SERVER, `rpc.*` attributes), child of the caller's
/// `traceparent` when it sent one, carrying `trace_id` and the caller's `x-request-id`.
/// `rpc.grpc.status_code` and the status are recorded when the call ends
/// ([`record_grpc_status`]).
pub fn grpc_span(req: &http::Request<()>) -> tracing::Span {
    let headers = req.headers();
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = req.uri().path();
    let full = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %full,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        rpc = %path,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let remote = parent.span().span_context().clone();
    if remote.is_valid() {
        // Without an OpenTelemetry layer this is a no-op; the trace id is still recorded.
        let _ = span.set_parent(parent);
        span.record("trace_id", tracing::field::display(remote.trace_id()));
    }
    span
}

/// Whether a gRPC code is the server's fault, which the OpenTelemetry conventions mark as an
/// Error status on a server span: a caller's mistake (INVALID_ARGUMENT, NOT_FOUND,
/// ALREADY_EXISTS, FAILED_PRECONDITION, UNAUTHENTICATED…) leaves it unset.
pub fn is_server_fault(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Records a finished call's gRPC code on its span (`rpc.grpc.status_code`, and status Error
/// for a server fault).
pub fn record_grpc_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if is_server_fault(code) {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_defaults_to_info_for_logs_and_spans() {
        use tracing_subscriber::filter::LevelFilter;
        for unset in [None, Some(""), Some("  ")] {
            assert_eq!(filter(unset).max_level_hint(), Some(LevelFilter::INFO));
        }
        assert_eq!(
            filter(Some("warn")).max_level_hint(),
            Some(LevelFilter::WARN)
        );
        // A directive that does not parse is skipped, the others kept.
        assert_eq!(
            filter(Some("debug,o2o_sidecar=bogus")).max_level_hint(),
            Some(LevelFilter::DEBUG)
        );
    }

    #[test]
    fn a_stored_traceparent_round_trips_into_a_link() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
        let creating = tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_traceparent(), None, "outside any span");
            let creating = tracing::info_span!("creating");
            let stored = creating
                .in_scope(current_traceparent)
                .expect("a traceparent");
            let sc = creating.context().span().span_context().clone();
            assert_eq!(
                stored,
                format!("00-{}-{}-01", sc.trace_id(), sc.span_id()),
                "W3C traceparent of the current span"
            );
            // Garbage adds no link (and does not panic).
            let later = tracing::info_span!("later");
            link_to(&later, "not a traceparent");
            link_to(&later, &stored);
            sc
        });
        let spans = exporter.get_finished_spans().unwrap();
        let later = spans.iter().find(|s| s.name == "later").expect("exported");
        let links: Vec<_> = later
            .links
            .iter()
            .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
            .collect();
        assert_eq!(links, vec![(creating.trace_id(), creating.span_id())]);
    }

    #[test]
    fn server_faults_only() {
        assert!(is_server_fault(tonic::Code::Unavailable));
        assert!(is_server_fault(tonic::Code::Internal));
        assert!(!is_server_fault(tonic::Code::InvalidArgument));
        assert!(!is_server_fault(tonic::Code::NotFound));
        assert!(!is_server_fault(tonic::Code::Ok));
    }

    #[test]
    fn service_name_defaults_but_yields_to_the_environment() {
        let name = |r: &Resource| {
            r.get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|v| v.as_str().into_owned())
        };
        // What the SDK detects when OTEL_SERVICE_NAME is unset.
        let unset = Resource::builder_empty()
            .with_service_name("unknown_service:o2o-sidecar")
            .build();
        assert_eq!(name(&resource(unset)).as_deref(), Some("o2o-sidecar"));
        // OTEL_SERVICE_NAME=payments-sidecar, plus resource attributes kept.
        let set = Resource::builder_empty()
            .with_service_name("payments-sidecar")
            .with_attribute(KeyValue::new("deployment.environment", "prod"))
            .build();
        let r = resource(set);
        assert_eq!(name(&r).as_deref(), Some("payments-sidecar"));
        assert!(
            r.get(&opentelemetry::Key::from_static_str(
                "deployment.environment"
            ))
            .is_some()
        );
        assert!(
            r.get(&opentelemetry::Key::from_static_str("service.version"))
                .is_some()
        );
    }
}
