//! Logging and tracing through `tracing`: human-readable text or one JSON object per line
//! (filtered by `RUST_LOG`, default `info`), and OpenTelemetry spans exported over OTLP/gRPC when
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! A caller's W3C `traceparent` becomes the parent of the sidecar's span for that RPC
//! ([`grpc_span`]); the span records `trace_id` so JSON log lines carry it too.

use std::io::IsTerminal as _;

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*, registry::LookupSpan};

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

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("o2o-sidecar"))
}

/// Installs the global subscriber (and, when configured, the OTLP exporter). Logs go to
/// stderr; stdout stays free for `dev`'s banner. Must be called inside the tokio runtime
/// (the OTLP exporter's channel lives there).
pub fn init(format: LogFormat) -> Telemetry {
    let provider = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("o2o-sidecar").build())
                    .build(),
            ),
            Err(e) => {
                eprintln!("o2o-sidecar: OTLP exporter not started: {e}");
                None
            }
        }
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = provider.as_ref().map(otel_layer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        // Colour only on a terminal, so that a log file or a test can parse the lines.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Telemetry { provider }
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

/// The span of one gRPC request: named after the RPC path, child of the caller's
/// `traceparent` when it sent one, carrying `trace_id` and the caller's `x-request-id`.
pub fn grpc_span(req: &http::Request<()>) -> tracing::Span {
    let headers = req.headers();
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %req.uri().path(),
        rpc = %req.uri().path(),
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
