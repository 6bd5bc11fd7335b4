//! OpenTelemetry and logs: the caller's W3C `traceparent` becomes the parent of the sidecar's
//! spans; the RPC span follows the gRPC server conventions (kind SERVER, `rpc.*`, the gRPC
//! status code, Error only for server faults); each DOKU request is a CLIENT child with the
//! HTTP client attributes; a notification's span links to the trace that created its payment;
//! no span carries the secret key or a signature; JSON log lines carry `trace_id` and `span_id`
//! at the top level.
//!
//! Its own test binary: it installs a global `tracing` subscriber, which must not race with
//! other tests' callsite registration.

use std::sync::{Arc, Mutex};

use opentelemetry::{
    Value,
    trace::{SpanKind, Status, TraceId},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tonic::Request;
use tracing_subscriber::prelude::*;

use o2o_sidecar::testing::{InProcessSidecar, request};

/// Log output captured by the JSON layer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_parent<T>(message: T, trace_id: &str, span: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{span}-01").parse().unwrap(),
    );
    req
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// Whether `span` is `ancestor` or below it.
fn descends_from(spans: &[SpanData], span: &SpanData, ancestor: &SpanData) -> bool {
    let mut current = span;
    loop {
        if current.span_context == ancestor.span_context {
            return true;
        }
        match spans
            .iter()
            .find(|s| s.span_context.span_id() == current.parent_span_id)
        {
            Some(parent) => current = parent,
            None => return false,
        }
    }
}

#[tokio::test]
async fn rpc_spans_follow_the_grpc_conventions_and_logs_carry_their_ids() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = Captured::default();
    let writer = logs.clone();
    // As `telemetry::init` builds it, with the default `RUST_LOG`.
    let filter = || o2o_sidecar::telemetry::filter(None);
    let subscriber = tracing_subscriber::registry()
        .with(o2o_sidecar::telemetry::otel_layer(&provider).with_filter(filter()))
        .with(o2o_sidecar::telemetry::json_layer(move || writer.clone()).with_filter(filter()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut h = InProcessSidecar::start().await;
    let h_sim_url = h.doku_url.clone();
    let ok_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let bad_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let down_trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    h.grpc
        .generate_payment_code(with_parent(
            request("INV-OTEL-1", 10_000),
            ok_trace,
            "00f067aa0ba902b7",
        ))
        .await
        .unwrap();
    // A caller's mistake: INVALID_ARGUMENT.
    let err = h
        .grpc
        .generate_payment_code(with_parent(
            request("INV-OTEL-2", 0),
            bad_trace,
            "00f067aa0ba902b8",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A server fault: DOKU down, UNAVAILABLE.
    h.fault(json!({"target": "payment_code", "kind": "status", "status": 503}))
        .await;
    let err = h
        .grpc
        .generate_payment_code(with_parent(
            request("INV-OTEL-3", 10_000),
            down_trace,
            "00f067aa0ba902b9",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    h.clear_faults().await;
    // The first payment is paid: its notification starts a trace of its own.
    let mut stream = h
        .grpc
        .stream_notifications(o2o_sidecar::grpc::pb::StreamNotificationsRequest {
            resume_token: o2o_sidecar::grpc::stream::resume_token(0),
            invoice_numbers: vec!["INV-OTEL-1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    h.pay("INV-OTEL-1").await;
    let paid = stream.message().await.unwrap().unwrap();
    assert_eq!(paid.notification.unwrap().invoice_number, "INV-OTEL-1");
    drop(stream);
    h.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let rpc = |trace: &str| -> SpanData {
        let id = TraceId::from_hex(trace).unwrap();
        let names: Vec<_> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == id)
            .map(|s| s.name.to_string())
            .collect();
        spans
            .iter()
            .find(|s| {
                s.span_context.trace_id() == id
                    && s.name == "o2o.v1.O2OPayments/GeneratePaymentCode"
            })
            .unwrap_or_else(|| panic!("no RPC span in trace {trace}: {names:?}"))
            .clone()
    };

    let ok = rpc(ok_trace);
    assert_eq!(ok.span_kind, SpanKind::Server);
    assert_eq!(attr(&ok, "rpc.system"), Some(Value::from("grpc")));
    assert_eq!(
        attr(&ok, "rpc.service"),
        Some(Value::from("o2o.v1.O2OPayments"))
    );
    assert_eq!(
        attr(&ok, "rpc.method"),
        Some(Value::from("GeneratePaymentCode"))
    );
    assert_eq!(attr(&ok, "rpc.grpc.status_code"), Some(Value::I64(0)));
    assert_eq!(ok.status, Status::Unset);
    for noise in [
        "busy_ns",
        "idle_ns",
        "thread.name",
        "thread.id",
        "code.file.path",
    ] {
        assert_eq!(attr(&ok, noise), None, "{noise} on the span");
    }
    let ok_names: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == ok.span_context.trace_id())
        .map(|s| s.name.to_string())
        .collect();
    // The DOKU request: a CLIENT child of the RPC span, with the HTTP client conventions.
    let client = spans
        .iter()
        .find(|s| {
            s.span_context.trace_id() == ok.span_context.trace_id()
                && s.span_kind == SpanKind::Client
        })
        .unwrap_or_else(|| panic!("no CLIENT span in the caller's trace: {ok_names:?}"));
    assert_eq!(
        client.name,
        "POST /indomaret-online-to-offline/v2/payment-code"
    );
    assert!(descends_from(&spans, client, &ok), "under the RPC span");
    let sim: reqwest::Url = h_sim_url.parse().unwrap();
    assert_eq!(
        attr(client, "http.request.method"),
        Some(Value::from("POST"))
    );
    assert_eq!(
        attr(client, "url.full"),
        Some(Value::from(format!(
            "{}/indomaret-online-to-offline/v2/payment-code",
            h_sim_url.trim_end_matches('/')
        )))
    );
    assert_eq!(
        attr(client, "server.address"),
        Some(Value::from(sim.host_str().unwrap().to_owned()))
    );
    assert_eq!(
        attr(client, "server.port"),
        Some(Value::I64(i64::from(sim.port().unwrap())))
    );
    assert_eq!(
        attr(client, "http.response.status_code"),
        Some(Value::I64(200))
    );
    assert_eq!(attr(client, "error.type"), None);
    assert_eq!(attr(client, "http.request.resend_count"), None);
    assert_eq!(client.status, Status::Unset);

    let bad = rpc(bad_trace);
    assert_eq!(attr(&bad, "rpc.grpc.status_code"), Some(Value::I64(3)));
    assert_eq!(bad.status, Status::Unset, "a caller's mistake is no error");

    let down = rpc(down_trace);
    assert_eq!(attr(&down, "rpc.grpc.status_code"), Some(Value::I64(14)));
    assert!(
        matches!(down.status, Status::Error { .. }),
        "{:?}",
        down.status
    );
    // One CLIENT span per attempt: each a 503 with the status Error, the retries counted.
    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.span_context.trace_id() == down.span_context.trace_id()
                && s.span_kind == SpanKind::Client
        })
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 3, "one span per attempt (max_attempts 3)");
    for (i, attempt) in attempts.iter().enumerate() {
        assert!(descends_from(&spans, attempt, &down), "under the RPC span");
        assert_eq!(
            attr(attempt, "http.response.status_code"),
            Some(Value::I64(503))
        );
        assert_eq!(attr(attempt, "error.type"), Some(Value::from("503")));
        assert!(matches!(attempt.status, Status::Error { .. }));
        let resends = (i > 0).then(|| Value::I64(i64::try_from(i).unwrap()));
        assert_eq!(attr(attempt, "http.request.resend_count"), resends);
    }

    // The notification's span: a trace of its own, linked to the span (in the RPC) that
    // created the payment.
    let notification = spans
        .iter()
        .find(|s| s.name == "notification")
        .unwrap_or_else(|| panic!("no notification span"));
    assert_ne!(
        notification.span_context.trace_id(),
        ok.span_context.trace_id()
    );
    assert_eq!(notification.links.len(), 1, "{:?}", notification.links);
    let linked = &notification.links[0].span_context;
    let creating = spans
        .iter()
        .find(|s| s.span_context.span_id() == linked.span_id())
        .unwrap_or_else(|| panic!("the link names no exported span: {linked:?}"));
    assert_eq!(linked.trace_id(), ok.span_context.trace_id());
    assert!(
        descends_from(&spans, creating, &ok),
        "the notification links into the creating call"
    );

    // No span, attribute or span event carries the key or a complete signature.
    let exported = format!("{spans:?}");
    assert!(
        !exported.contains(o2o_sidecar::testing::SECRET),
        "a span holds the key"
    );
    assert!(
        !exported.contains("HMACSHA256="),
        "a span holds a signature"
    );

    // JSON log lines inside the RPC carry its trace and span ids at the top level.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let issued = lines
        .iter()
        .find(|l| l["message"] == "payment code issued" && l["trace_id"] == ok_trace)
        .unwrap_or_else(|| panic!("no 'payment code issued' line with trace_id:\n{text}"));
    let span_id = issued["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16, "{issued}");
    assert!(
        spans
            .iter()
            .any(|s| s.span_context.span_id().to_string() == span_id),
        "span_id {span_id} is no exported span"
    );
}
