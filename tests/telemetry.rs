//! OpenTelemetry: the caller's W3C `traceparent` becomes the parent of the sidecar's spans, so
//! the sidecar's work appears in the caller's trace.
//!
//! Its own test binary: it installs a global `tracing` subscriber, which must not race with
//! other tests' callsite registration.

// The integration tests' harness; this binary uses only part of it.
#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic::Request;
use tracing_subscriber::prelude::*;

use harness::{Harness, request};

#[tokio::test]
async fn the_callers_trace_id_is_on_the_sidecars_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(o2o_sidecar::telemetry::otel_layer(&provider));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut h = Harness::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = Request::new(request("INV-OTEL-1", 10_000));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    h.grpc.generate_payment_code(req).await.unwrap();
    h.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let ours: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == TraceId::from_hex(trace_id).unwrap())
        .map(|s| s.name.to_string())
        .collect();
    assert!(
        ours.iter().any(|n| n.contains("GeneratePaymentCode")),
        "no RPC span in the caller's trace: {ours:?}"
    );
    assert!(
        ours.iter().any(|n| n == "doku.call"),
        "no DOKU call span in the caller's trace: {ours:?}"
    );
}
