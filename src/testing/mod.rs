//! Test support, one module for every test of this crate: a sidecar in this process
//! ([`InProcessSidecar`]) and one as a child process ([`ChildSidecar`]), both started from an
//! options value with defaults for what the tests do not vary; the DOKU simulator they call
//! ([`Sim`]); DOKU-signed notifications; PostgreSQL scratch databases and a private cluster
//! ([`postgres`]); one [`eventually`].
//!
//! # Why a module of the library, behind a feature
//!
//! The store's own tests (the conformance suite run against PostgreSQL) are unit tests inside
//! the library: they reach private items, so their database fixture must be compiled into the
//! library. The integration tests under `tests/` see only the library's public items. This
//! module serves both from one place: it is compiled under `cfg(test)` (the unit tests) or with
//! the `test-support` feature, which the crate turns on for its integration tests by listing
//! itself as a dev-dependency with that feature. `cargo build` and the release image never
//! compile it; it is `#[doc(hidden)]` and no API of the product. (A separate support crate
//! could not reach the store's private items; files included with `#[path]` into each test
//! binary, as before, are compiled once per binary and drift apart.)
//!
//! The library's entry points for starting a sidecar ([`crate::run`], [`crate::Listeners`])
//! are called from here only, so that a change to them touches this module, not the tests.
//!
//! # PostgreSQL
//!
//! The PostgreSQL tests use the server at `127.0.0.1:5432` (user `postgres`, trust auth), or
//! the admin URL in `O2O_TEST_POSTGRES_URL`; each test creates a database of its own and drops
//! it after. When the server is unreachable (or, for the restart test, `initdb`/`pg_ctl` are
//! missing) the test **fails**, unless `O2O_TEST_SKIP_POSTGRES=1` asks to skip the PostgreSQL
//! tests; a skipped test says so on stderr. With `CI=true` nothing is skipped.

use std::{future::Future, net::SocketAddr, time::Duration};

use tonic::transport::Channel;

use crate::grpc::pb::{self, o2o_payments_client::O2oPaymentsClient};

mod child;
mod in_process;
mod notification;
pub mod postgres;
mod sim;

pub use child::{ChildOptions, ChildSidecar};
pub use in_process::{InProcessSidecar, Options, config};
pub use notification::{notification_body, post_notification, signed_headers};
pub use sim::{Sim, SimListener};

/// The merchant's Client-Id in every test.
pub const CLIENT_ID: &str = "MCH-0001-10791114622547";
/// The Secret Key the tests' simulator and sidecar share unless a test says otherwise.
pub const SECRET: &str = "SK-TEST-0123456789abcdef";
/// The sidecar's notification path.
pub const PATH: &str = "/payments/notifications";

/// `127.0.0.1:0`.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `within`. Returns how
/// long it took.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC client connected to `addr` (plain HTTP/2). A listener bound before the server runs
/// accepts the connection as soon as the server polls it: no retry loop needed.
pub async fn connect(addr: SocketAddr) -> O2oPaymentsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to the sidecar's gRPC listener");
    O2oPaymentsClient::new(channel)
}

/// A valid GeneratePaymentCode request for `invoice`.
pub fn request(invoice: &str, amount: i64) -> pb::GeneratePaymentCodeRequest {
    pb::GeneratePaymentCodeRequest {
        invoice_number: invoice.into(),
        amount,
        customer: Some(pb::Customer {
            name: "Taufik Ismail".into(),
            email: "taufik@example.com".into(),
        }),
        info: "Thanks for shopping".into(),
        receipt: Some(pb::Receipt {
            description: "ORDER 001".into(),
            footer_message: "Terima kasih".into(),
        }),
        ..Default::default()
    }
}

/// The ErrorInfo reason of a status (empty when it has none).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
