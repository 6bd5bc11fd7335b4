//! Traces from the real binary reach an OTLP collector over both transports (gRPC and
//! HTTP/protobuf), under the service name from `OTEL_SERVICE_NAME`, with the caller's trace as
//! parent and the gRPC server conventions on the RPC span.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, routing::post};
use o2o_sidecar::grpc::pb::{GetStatusRequest, o2o_payments_client::O2oPaymentsClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
    trace::v1::span::SpanKind,
};
use prost::Message as _;

use crate::dev::Dev;

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

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
async fn collector(protocol: &str, received: Received) -> String {
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

async fn exports_over(protocol: &str) {
    o2o_sidecar::install_tls_provider();
    let received: Received = Arc::default();
    let endpoint = collector(protocol, received.clone()).await;
    let service = format!("o2o-otlp-test-{}", protocol.replace('/', "-"));
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(
        tmp.path(),
        &["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", &service),
            ("RUST_LOG", "info"), // spans are INFO: RUST_LOG filters traces too
        ],
    )
    .await;
    let grpc = dev.addr("gRPC (o2o.v1.O2OPayments)");
    let mut client = O2oPaymentsClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let trace_id = "7bf92f3577b34da6a3ce929d0e0e4739";
    let mut request = tonic::Request::new(GetStatusRequest {
        invoice_number: "INV-OTLP-UNKNOWN".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let err = client.get_status(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    drop(client);
    // A graceful stop flushes the batch before the process exits.
    let status = dev.stop().await;
    assert!(status.success(), "{status}");

    let received = received.lock().unwrap();
    let resource_spans: Vec<_> = received.iter().flat_map(|r| &r.resource_spans).collect();
    assert!(!resource_spans.is_empty(), "{protocol}: nothing exported");
    let ours = resource_spans
        .iter()
        .filter(|rs| {
            rs.resource.as_ref().is_some_and(|r| {
                r.attributes
                    .iter()
                    .any(|kv| kv.key == "service.name" && string(&kv.value) == Some(&service))
            })
        })
        .flat_map(|rs| rs.scope_spans.iter().flat_map(|ss| &ss.spans))
        .collect::<Vec<_>>();
    let rpc = ours
        .iter()
        .find(|s| s.name == "o2o.v1.O2OPayments/GetStatus")
        .unwrap_or_else(|| {
            let names: Vec<_> = ours.iter().map(|s| &s.name).collect();
            panic!("{protocol}: no RPC span under {service}: {names:?}")
        });
    assert_eq!(hex(&rpc.trace_id), trace_id, "the caller's trace");
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    let attr = |k: &str| {
        rpc.attributes
            .iter()
            .find(|kv| kv.key == k)
            .map(|kv| &kv.value)
    };
    assert_eq!(attr("rpc.system").and_then(string), Some("grpc"));
    assert_eq!(attr("rpc.grpc.status_code").and_then(int), Some(5));
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
