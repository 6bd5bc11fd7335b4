//! o2o-sidecar: a gRPC sidecar that creates DOKU convenience-store (O2O) payment codes,
//! Indomaret and Alfa Group, for the application beside it, verifies DOKU's payment
//! notifications, stores them durably and streams payment results.
//!
//! The sidecar alone holds the DOKU Client-Id and Secret Key. Applications call
//! `o2o.v1.O2OPayments` over gRPC on loopback; DOKU calls the notification listener.
//!
//! # Layout
//!
//! Follow a payment from [`run`]: [`Server`] assembles the listeners around one domain
//! service, [`sidecar::Sidecar`], which owns every use case (generate a code, read or refresh
//! a status, record a notification, the sweeper's check) and announces each event it commits.
//!
//! - [`server`]: the server, built then run: listeners, their assembly, background tasks,
//!   shutdown (a drain, then the admin listener last).
//! - [`sidecar`]: the domain service and its use cases, including the one rule for believing
//!   a DOKU report ([`sidecar::report`]).
//! - [`payment`]: domain types and validation (invoice, amount, code, status, events).
//! - [`error`]: the domain error, and the mapping of store and DOKU failures to it.
//! - Transports, which decode, authenticate and answer, and decide nothing about payments:
//!   - [`grpc`]: the only code that knows tonic/prost (service, conversions, streams, call
//!     limits, per-RPC metrics, and `grpc::status`, the one error-to-status table);
//!   - [`notify`]: the HTTP ingress for DOKU's notifications (signature, clock skew);
//!   - [`reconcile`]: the sweeper's schedule and leader election, and event retention.
//! - Outside systems:
//!   - [`doku`]: the only code that knows DOKU (signature, JSON, client, notifications);
//!   - [`store`]: the only code that writes SQL (SQLite and PostgreSQL).
//! - Operations:
//!   - [`config`]: flags with `O2O_*` env twins, turned into a typed [`config::Config`];
//!   - [`admin`]: `/live`, `/ready` (the sidecar's own state), `/health/store`, `/metrics`,
//!     and every metric's description;
//!   - [`telemetry`]: logs (text or JSON, with trace ids), OpenTelemetry traces (OTLP over
//!     gRPC or HTTP) and span conventions;
//!   - [`secret`]: the Secret Key and API token, read from watched files; replaced keys keep
//!     verifying notifications for a grace window;
//!   - [`listen`]: what a peer may hold of a listener: connection caps, idle, header and
//!     body timeouts, `TCP_NODELAY`;
//!   - [`tls`]: optional TLS for the gRPC and notification listeners.
//! - [`sim`]: the DOKU simulator (`doku-sim`, `o2o-sidecar dev`, tests). It plays DOKU, so it
//!   keeps its own DOKU wire types on purpose: a mistake in [`doku`] is not mirrored there.
//! - `fuzzing` (only with the `fuzzing` feature, and in unit tests): entry points of the
//!   cargo-fuzz targets in `fuzz/`, replayed as unit tests over the seeds and every past crash.
//! - `testing` (only with the `test-support` feature, and in unit tests): the one way tests
//!   start sidecars (in-process and child-process), the simulator, PostgreSQL scratch
//!   databases and `eventually`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod doku;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod listen;
pub mod notify;
pub mod payment;
pub mod reconcile;
pub mod secret;
pub mod server;
pub mod sidecar;
pub mod sim;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
pub mod tls;

use std::future::Future;

use crate::config::Config;
pub use crate::server::{BoundAddrs, Listeners, Server};

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from (short hash; "unknown" when built outside a git
/// checkout), set by `build.rs`.
pub const GIT_COMMIT: &str = env!("O2O_GIT_COMMIT");
/// `--version`'s text: version and commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("O2O_GIT_COMMIT"),
    ")"
);

/// Installs the ring TLS provider for outbound HTTPS (idempotent).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the sidecar on `listeners` until `shutdown` completes, then drains and returns:
/// [`Server::build`], then [`Server::run`].
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::build(config, listeners).await?.run(shutdown).await
}
