//! A strict, in-memory DOKU simulator: it answers DOKU's convenience-store endpoints (Generate
//! Payment Code for Indomaret and for Alfa Group, Check Status) with DOKU's signatures and
//! refusals, lets tests and people pay or expire codes through a control API (`/_sim/...`),
//! sends DOKU-signed payment notifications with DOKU's retry schedule, and injects faults
//! (error statuses, delays, dropped connections, suppressed / duplicated / badly signed
//! notifications).
//!
//! It is deliberately strict, so that a sidecar bug fails here rather than against DOKU:
//! every header and body field is checked, unknown body fields are refused (DOKU answers
//! "Invalid JSON Format" to those), and `Request-Id` idempotency follows DOKU (`409` with the
//! original body on an exact repeat).
//!
//! It knows DOKU's JSON through its own wire types (`wire`), never through `crate::doku`'s,
//! so that a mistake in one is not mirrored in the other. Only the vector-tested signature
//! functions of `crate::doku::signature` are shared.
//!
//! Choices where DOKU's documentation is silent (see `doku-api.md` §9), made to be at least
//! as strict as DOKU is likely to be:
//! - every header failure is `401`; `Content-Type` must be `application/json` (else `415`);
//! - field limits: invoice ≤ 64 printable ASCII characters, `info` ≤ 64, `customer.name` ≤ 64,
//!   `customer.email` ≤ 128 and must look like an address, receipt lines ≤ 128;
//! - a JSON `null` counts as an absent field;
//! - responses to accepted calls (`200`, `409`) are signed with `Response-Timestamp`; the
//!   Digest covers the response body and, as for requests, is left out for `GET`;
//! - error answers are not signed;
//! - a reusable code stays payable until it expires; once paid at least once it reads
//!   `SUCCESS`.
//!
//! # Control API
//!
//! Described by the OpenAPI document `openapi.json` beside this file (served at
//! `GET /_sim/openapi.json`), and with examples in `docs/simulator.md`. A test checks that
//! every route of `control::table()` is in the document and nothing else is.
//!
//! | request | effect |
//! |---|---|
//! | `POST /_sim/payments/{invoice}/pay` | `SUCCESS` + signed notification; answers [`PayOutcome`] |
//! | `POST /_sim/payments/{invoice}/fail` | `FAILED` + signed `FAILED` notification |
//! | `POST /_sim/payments/{invoice}/expire` | `EXPIRED`, no notification |
//! | `POST /_sim/payments/{invoice}/resend` | the latest notification again (same `Request-Id`) |
//! | `GET /_sim/payments`, `GET /_sim/payments/{invoice}` | [`SimPayment`]s |
//! | `GET /_sim/codes/{payment_code}` | [`Inquiry`]: what a till shows for a typed code |
//! | `GET /_sim/notifications` | [`NotificationDelivery`]s, each attempt with status and timing |
//! | `GET /_sim/requests` | [`ReceivedRequest`]s (DOKU endpoints only) |
//! | `POST /_sim/faults` (one [`Fault`] or an array; appended), `GET`, `DELETE` | faults |
//! | `GET /_sim/state` | settings (retry schedule), payments, deliveries and faults at once |
//! | `GET /_sim/openapi.json` | the OpenAPI document |
//!
//! Unknown invoices answer `404`, a payment whose state forbids the action `409`.
//!
//! # Pages
//!
//! `GET /` is a page for people (`page`): every payment with **Pay**, **Expire** and **Fail**
//! buttons, a counter where a payment code is typed and paid, the notification deliveries with
//! **Resend**, and the faults. It polls `GET /_sim/state` every second and acts only through
//! the control API. The how-to-pay links of DOKU's answers lead to a customer's page with the
//! code shown large.

mod api;
mod auth;
mod conn;
mod control;
mod fault;
mod notify;
mod page;
mod state;
mod wire;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::Duration,
};

use axum::{
    Extension, Router,
    routing::{get, post},
};
use tokio::{net::TcpListener, task::JoinSet};

pub use fault::{Fault, FaultKind, FaultTarget};
pub use state::{
    DeliveryAttempt, Inquiry, NotificationDelivery, PayOutcome, ReceivedRequest, SimAction,
    SimChannel, SimPayment, SimStatus, Verdict,
};

use crate::sim::{fault::FaultBook, state::State};

/// DOKU's path for generating an Indomaret payment code.
pub const PAYMENT_CODE_PATH: &str = "/indomaret-online-to-offline/v2/payment-code";
/// DOKU's path for generating an Alfa Group payment code (the path DOKU's own plugins call;
/// one page of DOKU's docs says `/alfa-virtual-account/...`, which the simulator does not
/// serve).
pub const ALFA_PAYMENT_CODE_PATH: &str = "/alfa-online-to-offline/v2/payment-code";
/// DOKU's Check Status path, without the trailing invoice number.
pub const CHECK_STATUS_PREFIX: &str = "/orders/v1/status/";

/// How the simulator behaves; one value per simulated merchant account.
#[derive(Clone)]
pub struct SimConfig {
    /// The merchant's Client-Id: requests with another one are refused, notifications carry it.
    pub client_id: String,
    /// HMAC key (UTF-8 bytes) shared with the merchant; never printed by `Debug`.
    pub secret_key: String,
    /// The Notification URL configured "in DOKU's Back Office": where notifications go unless
    /// a payment overrides it, and whose path an override must keep.
    pub notification_url: Option<String>,
    /// Multiplies DOKU's retry delays (30 min, 6 h, 12 h): `1.0` is DOKU's real schedule, a
    /// tiny value lets a test see all retries in milliseconds.
    pub notification_retry_scale: f64,
    /// How far `Request-Timestamp` may be from the simulator's clock, either way.
    pub timestamp_tolerance: Duration,
    /// Base of the how-to-pay links; when `None` the address [`Simulator::serve`] bound is used.
    pub public_base_url: Option<String>,
}

impl SimConfig {
    /// A config with DOKU's defaults: no notification URL, real retry schedule, 5 min skew.
    pub fn new(client_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            secret_key: secret_key.into(),
            notification_url: None,
            notification_retry_scale: 1.0,
            timestamp_tolerance: Duration::from_secs(5 * 60),
            public_base_url: None,
        }
    }

    /// Checks the values a person can get wrong; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.client_id.trim().is_empty() {
            return Err("client_id: must not be empty".into());
        }
        if self.secret_key.is_empty() {
            return Err("secret_key: must not be empty".into());
        }
        if let Some(url) = &self.notification_url {
            wire::parse_http_url(url).map_err(|e| format!("notification_url: {e}"))?;
        }
        if let Some(url) = &self.public_base_url {
            wire::parse_http_url(url).map_err(|e| format!("public_base_url: {e}"))?;
        }
        let scale = self.notification_retry_scale;
        if !scale.is_finite() || scale < 0.0 {
            return Err(format!(
                "notification_retry_scale: must be a finite number >= 0, got {scale}"
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("client_id", &self.client_id)
            .field("secret_key", &"<redacted>")
            .field("notification_url", &self.notification_url)
            .field("notification_retry_scale", &self.notification_retry_scale)
            .field("timestamp_tolerance", &self.timestamp_tolerance)
            .field("public_base_url", &self.public_base_url)
            .finish()
    }
}

/// Why a control action on a simulated payment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No payment code was ever issued for this invoice.
    #[error("no payment for invoice {0}")]
    NotFound(String),
    /// The payment's state does not allow the action (paid, expired, failed).
    #[error("{0}")]
    Conflict(String),
}

/// The DOKU simulator. Cloning shares the same payments, faults and deliveries.
#[derive(Clone, Debug)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SimConfig,
    /// `http://ip:port` of the listener [`Simulator::serve`] bound, for how-to-pay links.
    bound_base: OnceLock<String>,
    state: Mutex<State>,
    faults: FaultBook,
    http: reqwest::Client,
    /// Notification deliveries in flight; aborted on shutdown (and when the last handle goes).
    tasks: Mutex<JoinSet<()>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("cfg", &self.cfg)
            .field("bound_base", &self.bound_base.get())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: the simulator's state stays usable after a panicking
/// test thread, which is what a test harness wants.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Notification POSTs give up after this long (the receiver then counts as failed).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(15);

impl Simulator {
    /// Builds a simulator. Installs `ring` as the process's rustls provider if none is set,
    /// because the notification client needs one.
    ///
    /// # Panics
    ///
    /// If the HTTP client for notifications cannot be built (no TLS provider usable).
    pub fn new(cfg: SimConfig) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // DOKU's header names as DOKU spells them (`Client-Id`, not `client-id`): merchant
            // code such as DOKU's own plugins looks them up case-sensitively (see notify.rs).
            .http1_title_case_headers()
            .timeout(NOTIFY_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("build the notification HTTP client");
        Self {
            inner: Arc::new(Inner {
                cfg,
                bound_base: OnceLock::new(),
                state: Mutex::new(State::default()),
                faults: FaultBook::default(),
                http,
                tasks: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// DOKU's endpoints, the how-to-pay pages, the `/_sim` control API and the page at `/`.
    ///
    /// A `drop` fault needs [`Simulator::serve`] to cut the TCP connection; behind another
    /// server it answers with a body that breaks off instead.
    pub fn router(&self) -> Router {
        let mut router = Router::new().route(
            "/orders/v1/status/{invoice}",
            get(api::check_status).fallback(api::method_not_allowed),
        );
        for channel in SimChannel::ALL {
            router = router
                .route(
                    channel.payment_code_path(),
                    post(api::payment_code)
                        .fallback(api::method_not_allowed)
                        .layer(Extension(channel)),
                )
                .route(
                    &format!("/how-to-pay/v2/{}/{{code}}/{{token}}", channel.product()),
                    get(api::how_to_pay_page).layer(Extension(channel)),
                )
                .route(
                    &format!(
                        "/{}/v2/how-to-pay-api/{{code}}/{{token}}",
                        channel.product()
                    ),
                    get(api::how_to_pay_api).layer(Extension(channel)),
                );
        }
        router
            .merge(control::routes())
            .merge(page::routes())
            .fallback(api::not_found)
            .with_state(self.clone())
    }

    /// Serves [`Simulator::router`] on `listener` until `shutdown` completes, then stops the
    /// notification deliveries still in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let _ = self.inner.bound_base.set(base_from_addr(addr));
        let app = self
            .router()
            .into_make_service_with_connect_info::<conn::ConnKill>();
        let result = axum::serve(conn::SimListener::new(listener), app)
            .with_graceful_shutdown(shutdown)
            .await;
        self.shutdown();
        result
    }

    /// Stops every notification delivery in flight (pending retries included).
    pub fn shutdown(&self) {
        lock(&self.inner.tasks).abort_all();
    }

    /// Every payment code issued, oldest first, with its status as Check Status would read it.
    pub fn payments(&self) -> Vec<SimPayment> {
        let now = wire::now();
        lock(&self.inner.state)
            .payments()
            .map(|p| p.snapshot(now))
            .collect()
    }

    /// One payment, by invoice number.
    pub fn payment(&self, invoice: &str) -> Option<SimPayment> {
        let now = wire::now();
        lock(&self.inner.state)
            .get(invoice)
            .map(|p| p.snapshot(now))
    }

    /// The customer pays at the counter: the payment becomes `SUCCESS` and DOKU's signed
    /// notification is sent in the background (with retries). A reusable code can be paid
    /// again until it expires; a non-reusable one only once.
    pub async fn pay(&self, invoice: &str) -> Result<PayOutcome, SimError> {
        self.settle(invoice, SimStatus::Success)
    }

    /// The payment fails at the acquirer: `FAILED`, with a `FAILED` notification (DOKU's
    /// notifications carry `SUCCESS` or `FAILED`).
    pub async fn fail(&self, invoice: &str) -> Result<PayOutcome, SimError> {
        self.settle(invoice, SimStatus::Failed)
    }

    /// The code expires now. Like DOKU, no notification is sent.
    pub fn expire(&self, invoice: &str) -> Result<(), SimError> {
        let now = wire::now();
        let mut st = lock(&self.inner.state);
        let p = st
            .get_mut(invoice)
            .ok_or_else(|| SimError::NotFound(invoice.to_owned()))?;
        p.expire(now)
    }

    /// Replaces all faults.
    pub fn set_faults(&self, faults: Vec<Fault>) {
        self.inner.faults.set(faults);
    }

    /// Adds faults after the ones already set (`POST /_sim/faults` does this).
    pub fn add_faults(&self, faults: Vec<Fault>) {
        self.inner.faults.add(faults);
    }

    /// The faults still active, with their remaining `times`.
    pub fn faults(&self) -> Vec<Fault> {
        self.inner.faults.list()
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.inner.faults.set(Vec::new());
    }

    /// Every DOKU-API request received (not the control API), oldest first, with its verdict.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.inner.state).requests.clone()
    }

    /// Every notification delivery, oldest first, with its attempts so far.
    pub fn notifications(&self) -> Vec<NotificationDelivery> {
        lock(&self.inner.state).deliveries.clone()
    }

    fn settle(&self, invoice: &str, status: SimStatus) -> Result<PayOutcome, SimError> {
        let now = wire::now();
        let plan = {
            let mut st = lock(&self.inner.state);
            let p = st
                .get_mut(invoice)
                .ok_or_else(|| SimError::NotFound(invoice.to_owned()))?;
            match status {
                SimStatus::Failed => p.fail(now)?,
                _ => p.pay(now)?,
            }
            let p = p.clone();
            notify::build(&mut st, &p, status, now).map(|sent| {
                let faults = self.inner.faults.take_notification(invoice);
                notify::plan(&mut st, &sent, &faults, false)
            })
        };
        let outcome = PayOutcome {
            invoice_number: invoice.to_owned(),
            status,
            notification_request_id: plan.as_ref().map(|p| p.request_id.clone()),
        };
        if let Some(plan) = plan {
            self.start_delivery(plan);
        }
        Ok(outcome)
    }

    fn start_delivery(&self, plan: notify::Plan) {
        if plan.suppressed {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let mut tasks = lock(&self.inner.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(notify::deliver(weak, plan));
    }

    /// Sends the invoice's latest notification again, as DOKU's Back Office can: same
    /// `Request-Id` and body, freshly timestamped and signed, with DOKU's retry schedule. The
    /// notification faults active now apply to it (so a resend can be late, duplicated or
    /// badly signed too). The original deliveries are left as they are.
    pub fn resend(&self, invoice: &str) -> Result<PayOutcome, SimError> {
        let (plan, status) = {
            let mut st = lock(&self.inner.state);
            if st.get(invoice).is_none() {
                return Err(SimError::NotFound(invoice.to_owned()));
            }
            let last = st
                .deliveries
                .iter()
                .rev()
                .find(|d| d.invoice_number == invoice)
                .and_then(|d| st.sent.get(&d.request_id))
                .cloned()
                .ok_or_else(|| {
                    SimError::Conflict(format!(
                        "invoice {invoice} has no notification to resend (not paid or failed \
                         yet, or no notification URL)"
                    ))
                })?;
            let faults = self.inner.faults.take_notification(invoice);
            (notify::plan(&mut st, &last, &faults, true), last.status)
        };
        let outcome = PayOutcome {
            invoice_number: invoice.to_owned(),
            status,
            notification_request_id: Some(plan.request_id.clone()),
        };
        self.start_delivery(plan);
        Ok(outcome)
    }

    /// What a till shows when the cashier types `payment_code`; `None` for a code never
    /// issued.
    pub fn inquiry(&self, payment_code: &str) -> Option<Inquiry> {
        let now = wire::now();
        let st = lock(&self.inner.state);
        let p = st.by_code(payment_code)?;
        let refusal = p.pay_refusal(now);
        Some(Inquiry {
            merchant: self.inner.cfg.client_id.clone(),
            payment: p.snapshot(now),
            payable: refusal.is_none(),
            reason: refusal.map(|e| e.to_string()),
        })
    }

    /// When DOKU tries a notification, counted from its first attempt, as configured
    /// (DOKU's 0, 30 min, 6 h, 12 h times `notification_retry_scale`). `None` for an
    /// attempt scaled beyond what can be waited for (it never happens).
    pub fn retry_schedule(&self) -> Vec<Option<Duration>> {
        notify::SCHEDULE
            .iter()
            .map(|&o| notify::scaled(o, self.inner.cfg.notification_retry_scale))
            .collect()
    }

    /// Base for how-to-pay links: configured, else the bound address, else the request's Host.
    fn public_base(&self, host: Option<&str>) -> String {
        let base = self
            .inner
            .cfg
            .public_base_url
            .clone()
            .or_else(|| self.inner.bound_base.get().cloned())
            .or_else(|| host.map(|h| format!("http://{h}")))
            .unwrap_or_else(|| "http://localhost".to_owned());
        base.trim_end_matches('/').to_owned()
    }
}

/// Checks a Generate Payment Code body sent to `path` as the simulator does (strictly) and
/// returns its invoice and amount; the fuzz targets use it as an oracle for the sidecar's
/// requests.
#[doc(hidden)]
pub fn check_generate_body(path: &str, body: &[u8]) -> Result<(String, u64), String> {
    let channel = SimChannel::ALL
        .into_iter()
        .find(|c| c.payment_code_path() == path)
        .ok_or_else(|| format!("No static resource {path}"))?;
    wire::parse_generate(body, channel).map(|r| (r.invoice_number, r.amount))
}

/// `http://ip:port` for a bound address; an unspecified IP (`0.0.0.0`) becomes loopback so
/// that the link works from the same machine.
fn base_from_addr(mut addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}
