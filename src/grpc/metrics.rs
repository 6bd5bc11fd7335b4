//! Per-RPC server metrics, as a tower layer over every gRPC service (the payments service,
//! health, reflection): `o2o_grpc_server_requests_total{method,code}` and
//! `o2o_grpc_server_duration_seconds{method}` (the shape of go-grpc-middleware's
//! `grpc_server_handled_total` and OpenTelemetry's `rpc.server.duration`).
//!
//! The code is the call's `grpc-status`: from the response headers for an error answered
//! without a body (trailers-only), else from the trailers. A server-streaming call is counted
//! when its response headers are sent (an open `StreamNotifications` may last hours, and a
//! counter that moves only when it ends would hide it), with the code `ok` and the time to
//! those headers. `method` is `package.Service/Method` for the methods this server has and
//! `unknown` for anything else, so a scanner cannot grow the label set.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// Every method this server answers, as `package.Service/Method`, and whether its response
/// is a stream.
const METHODS: &[(&str, bool)] = &[
    ("o2o.v1.O2OPayments/GeneratePaymentCode", false),
    ("o2o.v1.O2OPayments/GetStatus", false),
    ("o2o.v1.O2OPayments/StreamNotifications", true),
    ("grpc.health.v1.Health/Check", false),
    ("grpc.health.v1.Health/Watch", true),
    (
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        true,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        true,
    ),
];

/// The unary methods and codes whose counters exist from start-up, so that an alert on a
/// rate works before the first such call.
pub const PRESET: &[(&str, &[tonic::Code])] = &[
    (
        "o2o.v1.O2OPayments/GeneratePaymentCode",
        &[
            tonic::Code::Ok,
            tonic::Code::InvalidArgument,
            tonic::Code::Unavailable,
            tonic::Code::Internal,
        ],
    ),
    (
        "o2o.v1.O2OPayments/GetStatus",
        &[
            tonic::Code::Ok,
            tonic::Code::NotFound,
            tonic::Code::Unavailable,
            tonic::Code::Internal,
        ],
    ),
    ("o2o.v1.O2OPayments/StreamNotifications", &[tonic::Code::Ok]),
];

/// `method` label of a request path, and whether the method streams its response.
fn method_of(path: &str) -> (&'static str, bool) {
    let name = path.strip_prefix('/').unwrap_or(path);
    METHODS
        .iter()
        .find(|(m, _)| *m == name)
        .map_or(("unknown", false), |&(m, s)| (m, s))
}

/// The `code` label: the canonical gRPC code name in lowercase snake case (`ok`,
/// `invalid_argument`, `unavailable`…), the style of every label value of this sidecar.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The `grpc-status` of a header map, if it has one.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.trim().parse().ok()?))
}

/// Records one finished (or, for streams, started) call, on the metrics and on its span.
fn record(method: &'static str, code: tonic::Code, started: Instant, span: &tracing::Span) {
    crate::telemetry::record_grpc_status(span, code);
    metrics::counter!(
        "o2o_grpc_server_requests_total",
        "method" => method,
        "code" => code_label(code)
    )
    .increment(1);
    metrics::histogram!("o2o_grpc_server_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
}

/// Registers the [`PRESET`] counters at zero.
pub fn preset() {
    for (method, codes) in PRESET {
        for code in *codes {
            metrics::counter!(
                "o2o_grpc_server_requests_total",
                "method" => *method,
                "code" => code_label(*code)
            )
            .increment(0);
        }
    }
}

/// Applies [`RpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// Counts and times every call (see the module doc).
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let (method, streaming) = method_of(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            // Polled inside the call's span (tonic enters it around the response future).
            let span = tracing::Span::current();
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    // The transport turns this into an error of its own; count it as such.
                    record(method, tonic::Code::Unknown, started, &span);
                    return Err(e);
                }
            };
            let pending = if let Some(code) = status_in(response.headers()) {
                record(method, code, started, &span);
                None
            } else if streaming {
                record(method, tonic::Code::Ok, started, &span);
                None
            } else {
                Some(Pending {
                    method,
                    started,
                    span,
                })
            };
            Ok(response.map(|body| {
                let inner = tonic::body::Body::new(body);
                match pending {
                    None => inner,
                    Some(pending) => tonic::body::Body::new(MeteredBody {
                        inner,
                        pending: Some(pending),
                    }),
                }
            }))
        })
    }
}

/// A unary call whose code is still to come, in its trailers.
#[derive(Debug)]
struct Pending {
    method: &'static str,
    started: Instant,
    /// The call's span, kept open until the code is known.
    span: tracing::Span,
}

/// A unary response body that records its call when the trailers pass (or, if the body ends
/// or is dropped without them, as `cancelled`: the peer went away or the stream was reset).
struct MeteredBody {
    inner: tonic::body::Body,
    pending: Option<Pending>,
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(pending) = this.pending.take()
        {
            let code = status_in(trailers).unwrap_or(tonic::Code::Unknown);
            record(pending.method, code, pending.started, &pending.span);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            record(
                pending.method,
                tonic::Code::Cancelled,
                pending.started,
                &pending.span,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes() {
        assert_eq!(
            method_of("/o2o.v1.O2OPayments/GetStatus"),
            ("o2o.v1.O2OPayments/GetStatus", false)
        );
        assert_eq!(
            method_of("/o2o.v1.O2OPayments/StreamNotifications"),
            ("o2o.v1.O2OPayments/StreamNotifications", true)
        );
        assert_eq!(method_of("/wp-login.php"), ("unknown", false));
        assert_eq!(code_label(tonic::Code::InvalidArgument), "invalid_argument");
        let mut h = http::HeaderMap::new();
        assert_eq!(status_in(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status_in(&h), Some(tonic::Code::Unavailable));
    }
}
