//! Bounds on what one gRPC connection may hold: calls in flight, counted until the response
//! body ends (so a `StreamNotifications` counts for as long as it is open, not only until
//! its headers are sent, which is all that tower's `ConcurrencyLimit` would count).
//!
//! Each accepted connection carries its own [`CallSlots`] (see [`crate::listen`]) into the
//! request extensions through tonic's [`Connected`]; [`CallLimitLayer`] takes a slot per
//! call and answers `RESOURCE_EXHAUSTED` at once when none is free.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http_body::{Frame, SizeHint};
use tokio::{net::TcpStream, sync::OwnedSemaphorePermit};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use super::status::to_status;
use crate::{
    error::Error,
    listen::{BoundedListener, CallSlots, Guarded},
};

/// What tonic learns about a gRPC connection: its addresses and its call slots.
#[derive(Debug, Clone)]
pub struct GrpcConnInfo {
    /// Local and peer address.
    pub tcp: TcpConnectInfo,
    /// The connection's call slots.
    pub slots: Option<Arc<CallSlots>>,
}

impl Connected for Guarded<TcpStream> {
    type ConnectInfo = GrpcConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        GrpcConnInfo {
            tcp: self.get_ref().connect_info(),
            slots: self.calls().cloned(),
        }
    }
}

/// The gRPC listener's connections, each with room for `calls_per_connection` calls in
/// flight, for tonic's `serve_with_incoming`.
pub fn incoming(
    listener: BoundedListener,
    calls_per_connection: usize,
) -> impl futures::Stream<Item = std::io::Result<Guarded<TcpStream>>> {
    futures::stream::unfold(listener, move |mut listener| async move {
        let (conn, _) = listener.next().await;
        let slots = Arc::new(CallSlots::new(calls_per_connection));
        Some((Ok(conn.with_calls(slots)), listener))
    })
}

/// Applies [`CallLimit`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLimitLayer;

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimit { inner }
    }
}

/// Takes one of the connection's call slots for each call, held by the response body.
#[derive(Debug, Clone)]
pub struct CallLimit<S> {
    inner: S,
}

fn slots_of<B>(request: &http::Request<B>) -> Option<Arc<CallSlots>> {
    let ext = request.extensions();
    ext.get::<GrpcConnInfo>()
        .or_else(|| {
            ext.get::<TlsConnectInfo<GrpcConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(|info| info.slots.clone())
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for CallLimit<S>
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
        let permit = match slots_of(&request) {
            None => None,
            Some(slots) => match slots.try_take() {
                Some(permit) => Some(permit),
                None => {
                    metrics::counter!("o2o_grpc_calls_refused_total", "reason" => "connection_limit")
                        .increment(1);
                    let status = to_status(Error::TooManyCalls {
                        limit: slots.capacity(),
                    });
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                let inner = tonic::body::Body::new(body);
                match permit {
                    None => inner,
                    Some(slot) => tonic::body::Body::new(SlotBody { inner, _slot: slot }),
                }
            }))
        })
    }
}

/// A response body that frees its call slot when it is dropped (tonic drops it once it
/// has ended, or when the peer reset the stream).
struct SlotBody {
    inner: tonic::body::Body,
    _slot: OwnedSemaphorePermit,
}

impl http_body::Body for SlotBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
