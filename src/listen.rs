//! Accepted connections, bounded: what one peer, or many, may hold of a listener.
//!
//! The notification listener faces the internet and the admin listener the cluster, so every
//! listener of the sidecar goes through here:
//!
//! - **`TCP_NODELAY` on every accepted socket.** A handler that awaits (the store, DOKU) sends
//!   its response in more than one write; with Nagle's algorithm on, the second write waits
//!   for the peer's delayed ACK (40 ms on Linux) — a caller making one call at a time would
//!   wait that long for every answer.
//! - **A cap on open connections per listener.** Past it a new connection is accepted and
//!   closed at once (never queued), so a flood on one port cannot take the file descriptors
//!   the store, the key file and the other listeners need.
//! - **An idle timeout per connection** ([`Guarded`]): a connection with no activity for that
//!   long is closed. For HTTP, activity is bytes in either direction; for gRPC, where the
//!   keepalive pings of a live but idle client are bytes too, it is calls in flight.
//! - For HTTP ([`serve_http`]): a bound on the time to send a request's headers (also the
//!   keep-alive wait for the next request), and ([`bounded_body`]) on the time to send the
//!   body, whose size is bounded too. A request with both `Content-Length` and
//!   `Transfer-Encoding` is framed by `Transfer-Encoding` and its connection closed after the
//!   answer (hyper, per RFC 9112 §6.3), so bytes a proxy counted differently are never read
//!   as a second request.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

/// What a listener lets its peers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; past it a new one is closed at once.
    pub max_connections: usize,
    /// A connection without activity for this long is closed.
    pub idle_timeout: Duration,
}

/// What an HTTP listener lets a request take, besides [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The connection's bounds.
    pub conn: Limits,
    /// Longest time to send a request's headers, counted from the end of the previous
    /// request (or from the connection's start).
    pub header_timeout: Duration,
    /// Longest time to send a request's whole body once its headers arrived.
    pub body_timeout: Duration,
}

/// What [`bounded_body`] lets a request body take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Longest time to send the whole body once the headers arrived; beyond it `408`.
    pub timeout: Duration,
    /// Largest body accepted; a larger one is `413`.
    pub max_bytes: usize,
}

/// A TCP listener that enforces [`Limits`] and sets `TCP_NODELAY`.
#[derive(Debug)]
pub struct BoundedListener {
    tcp: TcpListener,
    limits: Limits,
    open: Arc<Semaphore>,
    /// Which listener, for logs and metrics.
    name: &'static str,
}

impl BoundedListener {
    /// Bounds `tcp`; `name` labels its logs and metrics (`grpc`, `notifications`, `admin`).
    pub fn new(tcp: TcpListener, limits: Limits, name: &'static str) -> Self {
        Self {
            tcp,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            name,
        }
    }

    /// The next connection within the cap. Connections past the cap are closed as they
    /// arrive; accept errors (out of descriptors) back off briefly instead of spinning.
    pub async fn next(&mut self) -> (Guarded<TcpStream>, SocketAddr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(listener = self.name, error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.open.clone().try_acquire_owned() else {
                metrics::counter!("o2o_connections_refused_total", "listener" => self.name)
                    .increment(1);
                tracing::debug!(listener = self.name, %addr, "connection cap reached; closed");
                drop(stream);
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(listener = self.name, error = %e, "cannot set TCP_NODELAY");
            }
            return (Guarded::new(stream, permit, self.limits.idle_timeout), addr);
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The calls a connection may have in flight at once (gRPC), and whether any is: while one
/// is, the connection is not idle whatever its bytes do.
#[derive(Debug)]
pub struct CallSlots {
    free: Arc<Semaphore>,
    capacity: usize,
}

impl CallSlots {
    /// Room for `capacity` calls.
    pub fn new(capacity: usize) -> Self {
        Self {
            free: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// A slot for one call, held until the call ends; `None` when all are taken.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.free.clone().try_acquire_owned().ok()
    }

    /// How many calls fit.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn busy(&self) -> bool {
        self.free.available_permits() < self.capacity
    }
}

/// An accepted connection holding its place under the listener's cap (released when it is
/// dropped) and closed with [`io::ErrorKind::TimedOut`] once idle for too long.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_active: Instant,
    idle: Pin<Box<Sleep>>,
    calls: Option<Arc<CallSlots>>,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            _slot: slot,
            idle_timeout,
            last_active: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            calls: None,
        }
    }

    /// Gives the connection call slots, and counts its activity by calls in flight instead
    /// of bytes (gRPC: keepalive pings are bytes).
    pub fn with_calls(mut self, calls: Arc<CallSlots>) -> Self {
        self.calls = Some(calls);
        self
    }

    /// The connection's call slots, if it has any.
    pub fn calls(&self) -> Option<&Arc<CallSlots>> {
        self.calls.as_ref()
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn bytes_moved(&mut self) {
        if self.calls.is_none() {
            self.last_active = Instant::now();
        }
    }

    /// `Ready` once the connection has been idle for the timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.calls.as_ref().is_some_and(|c| c.busy()) {
                self.last_active = Instant::now();
            }
            let deadline = self.last_active + self.idle_timeout;
            if self.idle.deadline() != deadline {
                self.idle.as_mut().reset(deadline);
            }
            if self.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The deadline passed; unless a call started meanwhile, the connection is idle.
            if !self.calls.as_ref().is_some_and(|c| c.busy()) {
                return Poll::Ready(());
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.bytes_moved();
                }
                Poll::Ready(result)
            }
            // Every server polls its connection's read side while it waits for the peer, so
            // the idle deadline is checked (and its timer registered) here.
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.bytes_moved();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.bytes_moved();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish
/// (the caller bounds how long). HTTP/1.1 and HTTP/2 (by preface or ALPN); request headers
/// bounded by `header_timeout`, HTTP/2 connections kept alive by pings.
pub async fn serve_http<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, _addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    // Stop accepting (the listener closes), then let what is in flight finish.
    drop(listener);
    graceful.shutdown().await;
}

/// Middleware: reads the whole request body within [`BodyLimits::timeout`] (else `408`) and
/// at most [`BodyLimits::max_bytes`] (else `413`, at once when `Content-Length` says so). The
/// handler then gets the body already in memory.
pub async fn bounded_body(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, limits.max_bytes);
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            tracing::debug!(error = %e, "cannot read a request body");
            return StatusCode::BAD_REQUEST.into_response();
        }
        Err(_) => {
            metrics::counter!("o2o_http_requests_refused_total", "reason" => "body_timeout")
                .increment(1);
            let mut response = StatusCode::REQUEST_TIMEOUT.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large() -> Response {
    metrics::counter!("o2o_http_requests_refused_total", "reason" => "too_large").increment(1);
    StatusCode::PAYLOAD_TOO_LARGE.into_response()
}
