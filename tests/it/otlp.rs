//! Traces from the real binary reach an OTLP collector over both transports (gRPC and
//! HTTP/protobuf), under the service name from `OTEL_SERVICE_NAME`, with the caller's trace as
//! parent, the gRPC server conventions on the RPC span, the HTTP client conventions on the DOKU
//! call, and the notification's span linked to the trace that created the payment; `RUST_LOG`
//! filters what is exported.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, routing::post};
use o2o_sidecar::grpc::pb::{
    GetStatusRequest, StreamNotificationsRequest, o2o_payments_client::O2oPaymentsClient,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;

use crate::dev::Dev;

/// What a test collector received.
pub(crate) type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

struct GrpcCollector(Received);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    received.lock().unwrap().push(request);
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// Starts a collector for `protocol` on port 0; returns its endpoint.
pub(crate) async fn collector(protocol: &str, received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match protocol {
        "grpc" => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(GrpcCollector(received)))
                    .serve_with_incoming(incoming),
            );
        }
        _ => {
            let app = Router::new()
                .route("/v1/traces", post(http_export))
                .with_state(received);
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    format!("http://{addr}")
}

fn string(v: &Option<AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Option<AnyValue>) -> Option<i64> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// Spans exported under `service`, from every request received.
fn spans_of(received: &Received, service: &str) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter(|rs| {
            rs.resource.as_ref().is_some_and(|r| {
                r.attributes
                    .iter()
                    .any(|kv| kv.key == "service.name" && string(&kv.value) == Some(service))
            })
        })
        .flat_map(|rs| rs.scope_spans.iter().flat_map(|ss| ss.spans.clone()))
        .collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Option<AnyValue>> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| &kv.value)
}

fn with_parent<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

/// A sidecar in dev mode exporting to a collector for `protocol`, with `RUST_LOG` as given
/// (empty: the default).
async fn dev_exporting(
    protocol: &str,
    rust_log: &str,
    tmp: &std::path::Path,
) -> (Dev, Received, String) {
    o2o_sidecar::install_tls_provider();
    let received: Received = Arc::default();
    let endpoint = collector(protocol, received.clone()).await;
    let service = format!("o2o-otlp-test-{}", protocol.replace('/', "-"));
    let dev = Dev::start(
        tmp,
        &["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", &service),
            ("RUST_LOG", rust_log),
        ],
    )
    .await;
    (dev, received, service)
}

/// A payment created under the caller's trace, its DOKU call, and its notification, as a
/// collector receives them: the RPC span (SERVER, `rpc.*`), the DOKU request (CLIENT, `http.*`)
/// in the caller's trace, and the notification's span in a trace of its own linked to the
/// creating one.
async fn exports_over(protocol: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // The default RUST_LOG exports the sidecar's spans.
    let (dev, received, service) = dev_exporting(protocol, "", tmp.path()).await;
    let grpc = dev.addr("gRPC (o2o.v1.O2OPayments)");
    let sim = dev.addr("DOKU simulator");
    let mut client = O2oPaymentsClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let trace_id = "7bf92f3577b34da6a3ce929d0e0e4739";
    let err = client
        .get_status(with_parent(
            GetStatusRequest {
                invoice_number: "INV-OTLP-UNKNOWN".into(),
                ..Default::default()
            },
            &format!("00-{trace_id}-00f067aa0ba902b7-01"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let created_trace = "8bf92f3577b34da6a3ce929d0e0e473a";
    client
        .generate_payment_code(with_parent(
            o2o_sidecar::testing::request("INV-OTLP-1", 10_000),
            &format!("00-{created_trace}-00f067aa0ba902b8-01"),
        ))
        .await
        .unwrap();
    let mut stream = client
        .stream_notifications(StreamNotificationsRequest {
            resume_token: o2o_sidecar::grpc::stream::resume_token(0),
            invoice_numbers: vec!["INV-OTLP-1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let paid = reqwest::Client::new()
        .post(format!("http://{sim}/_sim/payments/INV-OTLP-1/pay"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.status());
    let event = stream.message().await.unwrap().unwrap();
    assert_eq!(event.notification.unwrap().invoice_number, "INV-OTLP-1");
    drop(stream);
    drop(client);
    // A graceful stop flushes the batch before the process exits.
    let status = dev.stop().await;
    assert!(status.success(), "{status}");

    let ours = spans_of(&received, &service);
    let names: Vec<_> = ours.iter().map(|s| &s.name).collect();
    assert!(
        !ours.is_empty(),
        "{protocol}: nothing exported under {service}"
    );
    let rpc = ours
        .iter()
        .find(|s| s.name == "o2o.v1.O2OPayments/GetStatus")
        .unwrap_or_else(|| panic!("{protocol}: no RPC span under {service}: {names:?}"));
    assert_eq!(hex(&rpc.trace_id), trace_id, "the caller's trace");
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(attr(rpc, "rpc.system").and_then(string), Some("grpc"));
    assert_eq!(attr(rpc, "rpc.grpc.status_code").and_then(int), Some(5));

    // The DOKU request, in the caller's trace.
    let doku = ours
        .iter()
        .find(|s| hex(&s.trace_id) == created_trace && s.kind == SpanKind::Client as i32)
        .unwrap_or_else(|| panic!("{protocol}: no CLIENT span in the caller's trace: {names:?}"));
    assert_eq!(
        doku.name,
        "POST /indomaret-online-to-offline/v2/payment-code"
    );
    assert_eq!(
        attr(doku, "http.request.method").and_then(string),
        Some("POST")
    );
    assert_eq!(
        attr(doku, "url.full").and_then(string),
        Some(format!("http://{sim}/indomaret-online-to-offline/v2/payment-code").as_str())
    );
    assert_eq!(
        attr(doku, "server.address").and_then(string),
        Some(sim.ip().to_string().as_str())
    );
    assert_eq!(
        attr(doku, "server.port").and_then(int),
        Some(i64::from(sim.port()))
    );
    assert_eq!(
        attr(doku, "http.response.status_code").and_then(int),
        Some(200)
    );

    // The notification: its own trace, linked to the call that created the payment.
    let notification = ours
        .iter()
        .find(|s| s.name == "notification")
        .unwrap_or_else(|| panic!("{protocol}: no notification span: {names:?}"));
    assert_ne!(hex(&notification.trace_id), created_trace);
    assert_eq!(notification.links.len(), 1, "{:?}", notification.links);
    let link = &notification.links[0];
    assert_eq!(
        hex(&link.trace_id),
        created_trace,
        "linked to the creating trace"
    );
    assert!(
        ours.iter()
            .any(|s| s.span_id == link.span_id && hex(&s.trace_id) == created_trace),
        "the link names a span of the creating call"
    );
}

/// `RUST_LOG` filters the exported spans as it filters the log: at `warn`, the sidecar's INFO
/// spans are not exported.
#[tokio::test]
async fn rust_log_filters_the_exported_spans() {
    let tmp = tempfile::tempdir().unwrap();
    let (dev, received, service) = dev_exporting("grpc", "warn", tmp.path()).await;
    let grpc = dev.addr("gRPC (o2o.v1.O2OPayments)");
    let mut client = O2oPaymentsClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .generate_payment_code(o2o_sidecar::testing::request("INV-OTLP-WARN", 10_000))
        .await
        .unwrap();
    drop(client);
    let status = dev.stop().await;
    assert!(status.success(), "{status}");
    let names: Vec<_> = spans_of(&received, &service)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.is_empty(), "exported at RUST_LOG=warn: {names:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn traces_reach_a_collector_over_otlp_grpc() {
    exports_over("grpc").await;
}

#[tokio::test]
async fn traces_reach_a_collector_over_otlp_http() {
    exports_over("http/protobuf").await;
}
