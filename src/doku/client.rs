//! The signed HTTP client for DOKU's Generate Payment Code (Indomaret and Alfa Group) and Check
//! Status APIs.
//!
//! One logical call keeps one `Request-Id` and one body buffer across all its attempts, so a
//! retried POST is a replay DOKU recognises (it answers a repeated Request-Id with the original
//! answer and `409`). Each attempt gets a fresh `Request-Timestamp` and signature. Attempts are
//! bounded and spaced by exponential backoff with full jitter; connect errors, timeouts, 5xx
//! and 429 are retried, and after the last attempt the error says whether any attempt might
//! have reached DOKU ([`DokuError::OutcomeUnknown`]) or none did ([`DokuError::Unavailable`]).
//!
//! Every attempt is one HTTP request and runs in its own `doku.call` tracing span, a `CLIENT`
//! span as the OpenTelemetry HTTP client conventions name it (`POST /indomaret-…/payment-code`,
//! `GET /orders/v1/status/{invoice_number}`): `http.request.method`, `url.full` (the base URL
//! without user info, and no query: DOKU's API has none), `url.template`, `server.address`,
//! `server.port`, `http.response.status_code`, `http.request.resend_count` on a retry, and on
//! failure (no answer, or a status of 400 and above) `error.type` and the status Error; plus the
//! endpoint, Request-Id, attempt and elapsed time. DOKU's raw error bodies are logged (truncated
//! to 2 KiB); the secret key and signatures never are, in a log or on a span.

use std::{error::Error as StdError, sync::Arc, time::Duration};

use rand::Rng as _;
use reqwest::{Method, StatusCode, Url, header::HeaderMap};
use secrecy::ExposeSecret as _;
use time::{OffsetDateTime, macros::format_description};
use tokio::time::Instant;
use tracing::{Instrument as _, Span, field};

use super::{
    error::{ConfigError, DokuError},
    how_to_pay::{HowToPay, HowToPayConfig},
    signature::{self, Components, TimestampKind},
    types::{
        DokuPaymentCodeRequest, DokuPaymentCodeResponse, DokuTransactionReport, ReportedChannel,
        ReportedStatus,
    },
};
use crate::{
    payment::{
        Amount, AmountRule, Channel, InvoiceNumber, IssuedCode, NewPayment, PaymentIdentity,
        ReportMismatch, ReportedIdentity, check_report,
    },
    secret::SecretSource,
};

/// DOKU's sandbox, the default so that a missing setting never reaches production.
pub const SANDBOX_BASE_URL: &str = "https://api-sandbox.doku.com";
/// Path of Generate Payment Code for Indomaret.
pub const PAYMENT_CODE_PATH: &str = "/indomaret-online-to-offline/v2/payment-code";
/// Path of Generate Payment Code for Alfa Group: the path DOKU's own plugins (PrestaShop,
/// Magento, OpenCart) and its code generator call and sign. One page of DOKU's docs says
/// `/alfa-virtual-account/v2/payment-code`, which those sources treat as a docs error.
pub const ALFA_PAYMENT_CODE_PATH: &str = "/alfa-online-to-offline/v2/payment-code";

/// The Generate Payment Code path of a channel: the one place a channel's endpoint is chosen.
pub fn payment_code_path(channel: Channel) -> &'static str {
    match channel {
        Channel::Indomaret => PAYMENT_CODE_PATH,
        Channel::Alfa => ALFA_PAYMENT_CODE_PATH,
    }
}
/// Path of Check Status, followed by the invoice number.
pub const CHECK_STATUS_PATH: &str = "/orders/v1/status/";

/// The `endpoint` label of the DOKU metrics: one per API this client calls.
pub const ENDPOINTS: [&str; 2] = ["payment_code", "check_status"];

/// Largest answer read from DOKU; its answers are a few hundred bytes.
const RESPONSE_BODY_MAX: usize = 1 << 20;
/// Longest part of a DOKU body written to the log.
const LOG_BODY_MAX: usize = 2048;
/// A `Date` header further than this from our clock is worth a warning: DOKU checks
/// `Request-Timestamp`, so a skewed clock shows up as rejected signatures.
const CLOCK_SKEW_WARN: time::Duration = time::Duration::seconds(60);

/// How the client reaches DOKU and how hard it tries.
#[derive(Debug, Clone)]
pub struct DokuClientConfig {
    /// DOKU's API root, e.g. `https://api-sandbox.doku.com`. A path prefix (a proxy or the
    /// simulator mounted under a path) is kept and becomes part of the signed Request-Target.
    pub base_url: String,
    /// The merchant's Client-Id from DOKU's Back Office; it is part of every signature.
    pub client_id: String,
    /// Bound on establishing a connection; a connect failure proves DOKU saw nothing.
    pub connect_timeout: Duration,
    /// Bound on one attempt (send and read the answer). A timeout here may be after DOKU
    /// acted, so it makes the outcome unknown.
    pub request_timeout: Duration,
    /// Attempts per logical call, the first included.
    pub max_attempts: u32,
    /// First backoff step; it doubles per attempt and a random part of it is slept.
    pub backoff_base: Duration,
    /// Longest backoff step, so that a call's total time stays bounded.
    pub backoff_max: Duration,
    /// Longest wait honoured from DOKU's `Retry-After`: a caller is waiting on the call.
    pub retry_after_max: Duration,
    /// Where the how-to-pay JSON of an issued code may be fetched from, and how long that may
    /// take (see [`super::how_to_pay`]).
    pub how_to_pay: HowToPayConfig,
}

impl Default for DokuClientConfig {
    fn default() -> Self {
        Self {
            base_url: SANDBOX_BASE_URL.to_owned(),
            client_id: String::new(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(5),
            how_to_pay: HowToPayConfig::default(),
        }
    }
}

impl DokuClientConfig {
    /// The longest one logical call can take: every attempt running into both timeouts, and
    /// the longest wait between attempts (the backoff's cap or an honoured `Retry-After`),
    /// then the fetch of the issued code's how-to-pay JSON. A payment's attempt lease is
    /// derived from it, so that it outlasts any call.
    pub fn worst_case_call(&self) -> Duration {
        let attempts = self.max_attempts.max(1);
        let attempt = self.connect_timeout.saturating_add(self.request_timeout);
        let between = self.backoff_max.max(self.retry_after_max);
        attempt
            .saturating_mul(attempts)
            .saturating_add(between.saturating_mul(attempts - 1))
            .saturating_add(self.how_to_pay.timeout)
    }
}

/// A payment-code request ready to be sent, possibly many times: the caller stores it before
/// the first attempt so that every retry, even after a restart, is the same request to DOKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRequest {
    /// Where the customer pays: it chooses DOKU's endpoint ([`payment_code_path`]).
    pub channel: Channel,
    /// The `Request-Id` of every attempt (UUID v4).
    pub request_id: String,
    /// The exact JSON bytes that are signed and sent.
    pub body: Vec<u8>,
}

/// What DOKU's Check Status says about an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// `transaction.status`, mapped without guessing.
    pub status: ReportedStatus,
    /// `order.invoice_number`, to compare with the invoice asked about.
    pub invoice_number: Option<String>,
    /// `order.amount` in rupiah.
    pub amount: Option<i64>,
    /// `online_to_offline_info.payment_code`.
    pub payment_code: Option<String>,
    /// `channel.id`, mapped; `None` when absent or `null`.
    pub channel: Option<ReportedChannel>,
    /// `transaction.date`.
    pub occur_time: Option<OffsetDateTime>,
    /// `transaction.original_request_id`: the Request-Id of the request that created it.
    pub original_request_id: Option<String>,
    /// DOKU's raw answer, truncated for the log: whoever rejects the answer logs it.
    pub raw_body: String,
}

/// The DOKU API client. Cloning is cheap and shares the connection pool and the key source.
#[derive(Clone, Debug)]
pub struct DokuClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// `base_url` without a trailing slash.
    base: String,
    /// Path part of `base_url` without a trailing slash (usually empty).
    path_prefix: String,
    /// `base` without user info, for `url.full` on spans.
    span_base: String,
    /// `server.address` and `server.port` on spans.
    server: (String, u16),
    cfg: DokuClientConfig,
    key: SecretSource,
    how_to_pay: HowToPay,
}

/// `Request-Timestamp` format: UTC, seconds, `Z`, no fraction.
pub fn request_timestamp(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(fmt)
        .expect("a four-digit-year UTC time formats")
}

/// The four signed headers of a request to DOKU (`Client-Id`, `Request-Id`,
/// `Request-Timestamp`, `Signature`). `target` is the path as DOKU sees it; `body` is the exact
/// bytes sent (POST) or `None` (GET, no Digest line).
pub fn signed_headers(
    client_id: &str,
    key: &[u8],
    request_id: &str,
    timestamp: OffsetDateTime,
    target: &str,
    body: Option<&[u8]>,
) -> Vec<(&'static str, String)> {
    let timestamp = request_timestamp(timestamp);
    let digest = body.map(signature::digest);
    let sts = signature::string_to_sign(&Components {
        client_id,
        request_id,
        timestamp: &timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: target,
        digest: digest.as_deref(),
    });
    vec![
        ("Client-Id", client_id.to_owned()),
        ("Request-Id", request_id.to_owned()),
        ("Request-Timestamp", timestamp),
        ("Signature", signature::sign(key, &sts)),
    ]
}

/// An answer DOKU gave (2xx or a status that is not retried).
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    /// An earlier attempt of the same call may have reached DOKU (timeout, connection lost
    /// after sending): a refusal now does not prove that DOKU never processed the request.
    after_unknown: bool,
}

/// One request of a logical call, identical on every attempt except for its timestamp.
#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    endpoint: &'static str,
    method: &'a Method,
    /// Path after the base URL (`/orders/v1/status/INV-1`).
    path: &'a str,
    /// `path` with its variable part named (`/orders/v1/status/{invoice_number}`): the span's
    /// name and `url.template`, low in cardinality.
    template: &'static str,
    request_id: &'a str,
    body: Option<&'a [u8]>,
}

/// What one attempt ended with.
#[derive(Debug)]
enum Attempt {
    Answer(Answer),
    /// 5xx or 429: DOKU did not process it.
    Retryable {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// No answer. `maybe_reached` unless the connection was never established.
    Failed {
        detail: String,
        maybe_reached: bool,
    },
}

impl DokuClient {
    /// Builds the client. Installs ring as the process's rustls provider if none is installed
    /// yet (the crate does not build aws-lc).
    pub fn new(cfg: DokuClientConfig, key: SecretSource) -> Result<Self, ConfigError> {
        let url = Url::parse(&cfg.base_url)
            .map_err(|e| ConfigError(format!("base URL {:?}: {e}", cfg.base_url)))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(ConfigError(format!(
                "base URL {:?} must be http(s)://host[:port][/path] without query or fragment",
                cfg.base_url
            )));
        }
        if cfg.client_id.is_empty() {
            return Err(ConfigError("DOKU Client-Id is empty".into()));
        }
        if cfg.max_attempts == 0 {
            return Err(ConfigError("max_attempts must be at least 1".into()));
        }
        // Fails only when a provider is already installed, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            // A redirect would change the signed Request-Target; DOKU does not redirect its API.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP/1 header names in DOKU's own case (`Client-Id`, `Request-Id`,
            // `Request-Timestamp`, `Signature`, `Content-Type`): hyper lower-cases them
            // otherwise. Title case is exactly DOKU's spelling for every header we send.
            .http1_title_case_headers()
            .user_agent(concat!("o2o-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError(format!("HTTP client: {}", error_chain(&e))))?;
        let path_prefix = url.path().trim_end_matches('/').to_owned();
        let server = (
            url.host_str().unwrap_or_default().to_owned(),
            url.port_or_known_default().unwrap_or_default(),
        );
        let how_to_pay = HowToPay::new(&cfg.how_to_pay)?;
        let mut shown = url.clone();
        // Cannot fail for an http(s) URL with a host.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: cfg.base_url.trim_end_matches('/').to_owned(),
                span_base: shown.as_str().trim_end_matches('/').to_owned(),
                server,
                path_prefix,
                cfg,
                key,
                how_to_pay,
            }),
        })
    }

    /// [`DokuClientConfig::worst_case_call`] of this client.
    pub fn worst_case_call(&self) -> Duration {
        self.inner.cfg.worst_case_call()
    }

    /// Builds the request for a new payment code: a fresh Request-Id (UUID v4) and the body
    /// serialized once. The caller stores both and passes them to every attempt.
    pub fn prepare_payment_code(&self, p: &NewPayment) -> PreparedRequest {
        PreparedRequest {
            channel: p.channel,
            request_id: uuid::Uuid::new_v4().to_string(),
            body: DokuPaymentCodeRequest::new(p).to_bytes(),
        }
    }

    /// Asks DOKU for a payment code on the request's channel, sending exactly `req.body` with
    /// `req.request_id` on every attempt. A `409` carrying a success body is DOKU replaying
    /// the answer to an earlier attempt of the same request, and counts as success.
    pub async fn generate_payment_code(
        &self,
        req: &PreparedRequest,
    ) -> Result<IssuedCode, DokuError> {
        let answer = self
            .call(Call {
                endpoint: "payment_code",
                method: &Method::POST,
                path: payment_code_path(req.channel),
                template: payment_code_path(req.channel),
                request_id: &req.request_id,
                body: Some(&req.body),
            })
            .await?;
        let status = answer.status;
        if !(status.is_success() || status == StatusCode::CONFLICT) {
            return Err(refusal_of_call(answer));
        }
        let parsed = DokuPaymentCodeResponse::parse(&answer.body);
        // An answer without a code: unreadable success (a code may exist), or a 409 that is
        // not a replay.
        let (response, issued) = match parsed.and_then(|r| {
            let issued = r.issued()?;
            Ok((r, issued))
        }) {
            Ok(found) => found,
            Err(why) if status == StatusCode::CONFLICT => {
                tracing::debug!(%why, "409 is not a replayed success");
                return Err(refusal_of_call(answer));
            }
            Err(why) => {
                tracing::warn!(
                    request_id = %req.request_id,
                    http_status = status.as_u16(),
                    body = %for_log(&answer.body),
                    %why,
                    "DOKU's success answer is unreadable; a payment code may exist"
                );
                return Err(DokuError::OutcomeUnknown {
                    detail: format!("HTTP {} answer unreadable: {why}", status.as_u16()),
                });
            }
        };
        // A code is this payment's only if the answer names this request's invoice (and, if
        // it says, its amount): the rule every DOKU report passes, with the request we sent
        // as the reference. Otherwise it is not our code, and whether DOKU issued ours is
        // unknown: the stored request is replayed later.
        if let Err(why) = answer_is_for(&req.body, &response) {
            metrics::counter!(
                "o2o_doku_answers_rejected_total",
                "endpoint" => "payment_code",
                "reason" => why.reason()
            )
            .increment(1);
            tracing::error!(
                request_id = %req.request_id,
                http_status = status.as_u16(),
                body = %for_log(&answer.body),
                reason = why.reason(),
                %why,
                "DOKU GENERATE ANSWER IS NOT ABOUT THIS PAYMENT: its code is not used; the stored request will be replayed"
            );
            return Err(DokuError::OutcomeUnknown {
                detail: format!("answer not about this payment: {why}"),
            });
        }
        let issued = web_urls_only(issued, &req.request_id);
        if status == StatusCode::CONFLICT {
            tracing::info!(
                request_id = %req.request_id,
                "DOKU replayed its answer to an earlier attempt (409)"
            );
        }
        Ok(issued)
    }

    /// The instructions DOKU's how-to-pay API lists at `url` (an issued code's
    /// `how_to_pay_api`); none when its origin is not allowed or the fetch fails, which is
    /// logged and counted, never an error: see [`super::how_to_pay`].
    pub async fn payment_instructions(&self, url: &str) -> Vec<crate::payment::PaymentInstruction> {
        self.inner.how_to_pay.instructions(url).await
    }

    /// Asks DOKU's Check Status about `invoice` (GET, signed without Digest).
    pub async fn check_status(&self, invoice: &InvoiceNumber) -> Result<StatusReport, DokuError> {
        // InvoiceNumber allows only URL-unreserved characters, so the path needs no encoding
        // and the signed target is exactly what is sent.
        let path = format!("{CHECK_STATUS_PATH}{invoice}");
        let request_id = uuid::Uuid::new_v4().to_string();
        let answer = self
            .call(Call {
                endpoint: "check_status",
                method: &Method::GET,
                path: &path,
                template: "/orders/v1/status/{invoice_number}",
                request_id: &request_id,
                body: None,
            })
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Err(DokuError::NotFound {
                body: String::from_utf8_lossy(&answer.body).into_owned(),
            });
        }
        if !answer.status.is_success() {
            return Err(refusal(answer));
        }
        let raw_body = for_log(&answer.body);
        let report = DokuTransactionReport::parse(&answer.body).and_then(|r| match r.status() {
            Some(raw) => Ok(StatusReport {
                status: ReportedStatus::from_doku(raw),
                invoice_number: r.invoice_number().map(str::to_owned),
                amount: r.amount(),
                payment_code: r.payment_code().map(str::to_owned),
                channel: r.channel(),
                occur_time: r.occur_time(),
                original_request_id: r.original_request_id().map(str::to_owned),
                raw_body: raw_body.clone(),
            }),
            None => Err("transaction.status is missing".to_owned()),
        });
        report.map_err(|why| {
            tracing::warn!(
                %invoice,
                %request_id,
                body = %for_log(&answer.body),
                %why,
                "DOKU's Check Status answer is unreadable"
            );
            DokuError::OutcomeUnknown {
                detail: format!("Check Status answer unreadable: {why}"),
            }
        })
    }

    /// Sends `call` until DOKU gives an answer that is not retried, or attempts run out.
    async fn call(&self, call: Call<'_>) -> Result<Answer, DokuError> {
        let cfg = &self.inner.cfg;
        let mut maybe_reached = false;
        let mut last_detail = String::new();
        let mut last_retry_after = None;
        for attempt in 1..=cfg.max_attempts {
            let span = self.attempt_span(&call, attempt);
            let retry_after = match self.attempt(call).instrument(span).await {
                Attempt::Answer(answer) => {
                    return Ok(Answer {
                        after_unknown: maybe_reached,
                        ..answer
                    });
                }
                Attempt::Retryable {
                    detail,
                    retry_after,
                } => {
                    last_detail = detail;
                    last_retry_after = retry_after.or(last_retry_after);
                    retry_after
                }
                Attempt::Failed {
                    detail,
                    maybe_reached: reached,
                } => {
                    maybe_reached |= reached;
                    last_detail = detail;
                    None
                }
            };
            if attempt < cfg.max_attempts {
                let wait = backoff(cfg.backoff_base, cfg.backoff_max, attempt)
                    .max(retry_after.unwrap_or_default().min(cfg.retry_after_max));
                tokio::time::sleep(wait).await;
            }
        }
        let detail = format!(
            "{} attempt(s) to {}; last: {last_detail}",
            cfg.max_attempts, call.endpoint
        );
        Err(if maybe_reached {
            DokuError::OutcomeUnknown { detail }
        } else {
            DokuError::Unavailable {
                detail,
                retry_after: last_retry_after,
            }
        })
    }

    /// The `CLIENT` span of one attempt (one HTTP request): see the module doc. The response
    /// status, `error.type` and the elapsed time are recorded by [`Self::attempt`].
    fn attempt_span(&self, call: &Call<'_>, attempt: u32) -> Span {
        let inner = &*self.inner;
        let (address, port) = &inner.server;
        // Integers as i64: tracing-opentelemetry records a u64 as a string.
        let span = tracing::info_span!(
            "doku.call",
            otel.name = %format_args!("{} {}", call.method, call.template),
            otel.kind = "client",
            otel.status_code = field::Empty,
            http.request.method = %call.method,
            url.full = %format_args!("{}{}", inner.span_base, call.path),
            url.template = call.template,
            server.address = %address,
            server.port = i64::from(*port),
            http.request.resend_count = field::Empty,
            http.response.status_code = field::Empty,
            "error.type" = field::Empty,
            endpoint = call.endpoint,
            request_id = call.request_id,
            attempt = i64::from(attempt),
            elapsed_ms = field::Empty,
        );
        if attempt > 1 {
            span.record("http.request.resend_count", i64::from(attempt - 1));
        }
        span
    }

    /// One signed attempt, inside its `doku.call` span.
    async fn attempt(&self, call: Call<'_>) -> Attempt {
        let target = format!("{}{}", self.inner.path_prefix, call.path);
        let key = self.inner.key.current();
        let request = self.signed_request(&call, &target, key.expose_secret().as_bytes());
        let started = Instant::now();
        let span = Span::current();
        let mut resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => return send_failed(&e, &span, call.endpoint, started),
        };
        let status = resp.status();
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.as_u16() >= 400 {
            // The client conventions: every 4xx and 5xx is an error of the request.
            mark_failed(&span, status.as_str());
        }
        let headers = resp.headers().clone();
        let body = read_body(&mut resp).await;
        record_call(&span, call.endpoint, started, status.as_str());
        warn_on_clock_skew(&headers);
        let body = match body {
            Ok(body) => body,
            Err(detail) => {
                mark_failed(&span, "response_body");
                tracing::warn!(%detail, "DOKU's answer could not be read");
                return Attempt::Failed {
                    detail: format!("HTTP {} answer unreadable: {detail}", status.as_u16()),
                    maybe_reached: true,
                };
            }
        };
        self.log_response_signature(&call, &target, &headers, &body, &key);
        classify(status, &headers, body)
    }

    /// The request of one attempt, signed now with `key`.
    fn signed_request(&self, call: &Call<'_>, target: &str, key: &[u8]) -> reqwest::RequestBuilder {
        let inner = &*self.inner;
        let headers = signed_headers(
            &inner.cfg.client_id,
            key,
            call.request_id,
            OffsetDateTime::now_utc(),
            target,
            call.body,
        );
        let mut req = inner
            .http
            .request(call.method.clone(), format!("{}{}", inner.base, call.path));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if let Some(body) = call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        req
    }

    /// Checks DOKU's response signature when it sends one. How DOKU computes it is not
    /// confirmed, so a mismatch is only logged, never acted on.
    fn log_response_signature(
        &self,
        call: &Call<'_>,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
        key: &secrecy::SecretString,
    ) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(sig), Some(ts)) = (header("Signature"), header("Response-Timestamp")) else {
            return;
        };
        let verdict = response_signature(
            key.expose_secret().as_bytes(),
            &self.inner.cfg.client_id,
            call.request_id,
            ts,
            target,
            body,
            call.body,
            sig,
        );
        match verdict {
            Some(over) => tracing::debug!(over, "DOKU's response signature verified"),
            None => tracing::warn!(
                response_timestamp = ts,
                "DOKU's response signature does not verify (log only)"
            ),
        }
    }
}

/// What DOKU's response signature covers, or `None` when it verifies under no reading.
///
/// DOKU documents the response signature "based on the response body" but has published no
/// worked example, so the readings tried are: Digest of the response body, Digest of the
/// request body, and no Digest. The one that matches is logged, which settles the question
/// on the first real answer.
#[allow(clippy::too_many_arguments)]
fn response_signature(
    key: &[u8],
    client_id: &str,
    request_id: &str,
    response_timestamp: &str,
    target: &str,
    response_body: &[u8],
    request_body: Option<&[u8]>,
    signature_header: &str,
) -> Option<&'static str> {
    let mut readings = vec![("response body", Some(response_body))];
    if let Some(body) = request_body {
        readings.push(("request body", Some(body)));
    }
    readings.push(("no digest", None));
    readings
        .into_iter()
        .find(|(_, body)| {
            let digest = body.map(signature::digest);
            let sts = signature::string_to_sign(&Components {
                client_id,
                request_id,
                timestamp: response_timestamp,
                timestamp_kind: TimestampKind::Response,
                request_target: target,
                digest: digest.as_deref(),
            });
            signature::verify(key, &sts, signature_header)
        })
        .map(|(name, _)| name)
}

/// Whether a Generate answer with a code is about the request `ours` (the exact bytes sent):
/// [`check_report`] with the request's invoice and amount as the reference. DOKU's documented
/// answer shape carries `order.invoice_number` but no amount, so a missing amount is
/// tolerated, a different one is not.
fn answer_is_for(ours: &[u8], answer: &DokuPaymentCodeResponse) -> Result<(), ReportMismatch> {
    // The prepared body's `order` has the same shape as the answer's, so the same parser
    // reads it back; it is our own serialization, so it always has both fields.
    let request = DokuPaymentCodeResponse::parse(ours).ok();
    let invoice = request
        .as_ref()
        .and_then(|r| r.invoice_number())
        .and_then(|i| InvoiceNumber::parse(i).ok());
    let amount = request
        .as_ref()
        .and_then(DokuPaymentCodeResponse::amount)
        .and_then(|a| Amount::new(a).ok());
    let (Some(invoice), Some(amount)) = (invoice, amount) else {
        // Cannot happen for a request this client prepared; refuse rather than trust.
        return Err(ReportMismatch::CodeInvalid(
            "the request sent has no readable order to compare the answer with".into(),
        ));
    };
    let reported = ReportedIdentity {
        invoice_number: answer.invoice_number(),
        amount: answer.amount(),
        // The code is new: nothing stored to compare it with.
        payment_code: None,
    };
    let ours = PaymentIdentity {
        invoice: &invoice,
        amount,
        payment_code: None,
    };
    check_report(ours, reported, AmountRule::IfPresent).map(drop)
}

/// Only absolute `http`/`https` URLs with a host reach callers: DOKU's how-to-pay links are
/// shown to customers, so anything else (`javascript:`, `data:`, relative) is dropped, logged
/// and counted.
fn web_urls_only(mut issued: IssuedCode, request_id: &str) -> IssuedCode {
    for (field, url) in [
        ("how_to_pay_page", &mut issued.how_to_pay_url),
        ("how_to_pay_api", &mut issued.how_to_pay_api_url),
    ] {
        let Some(value) = url.as_deref() else {
            continue;
        };
        if is_web_url(value) {
            continue;
        }
        metrics::counter!(
            "o2o_doku_answers_rejected_total",
            "endpoint" => "payment_code",
            "reason" => "url_scheme"
        )
        .increment(1);
        tracing::error!(
            %request_id,
            field,
            value = %for_log(value.as_bytes()),
            "DOKU sent a how-to-pay URL that is not an absolute http(s) URL: dropped"
        );
        *url = None;
    }
    issued
}

/// An absolute `http`/`https` URL with a host and no user info.
pub(crate) fn is_web_url(value: &str) -> bool {
    Url::parse(value).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.username().is_empty()
            && u.password().is_none()
    })
}

/// The error for a refused Generate answer. A refusal after an earlier attempt of the same
/// call may have reached DOKU proves nothing about that attempt: the outcome is unknown.
fn refusal_of_call(answer: Answer) -> DokuError {
    let after_unknown = answer.after_unknown;
    match refusal(answer) {
        DokuError::Rejected {
            http_status,
            message,
            body,
        } if after_unknown => {
            tracing::warn!(
                http_status,
                body = %for_log(body.as_bytes()),
                "DOKU refused a retry of a request an earlier attempt may have delivered: outcome unknown"
            );
            DokuError::OutcomeUnknown {
                detail: format!(
                    "HTTP {http_status} ({message}) after an earlier attempt may have reached DOKU"
                ),
            }
        }
        other => other,
    }
}

/// The error for an answer DOKU refused (not 2xx, not retried).
fn refusal(answer: Answer) -> DokuError {
    let http_status = answer.status.as_u16();
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    if matches!(
        answer.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        return DokuError::AuthRejected { http_status, body };
    }
    let message = super::types::error_message(&answer.body)
        .unwrap_or_else(|| format!("HTTP {http_status} without a message"));
    DokuError::Rejected {
        http_status,
        message,
        body,
    }
}

/// Marks an attempt's span as failed (`error.type`, status Error).
fn mark_failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// Records an attempt's duration on its span and in the metrics, with `status` (the HTTP
/// status, or `timeout`/`error` when there was no answer).
fn record_call(span: &Span, endpoint: &'static str, started: Instant, status: &str) {
    let took = started.elapsed();
    span.record(
        "elapsed_ms",
        i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
    );
    metrics::histogram!("o2o_doku_request_duration_seconds", "endpoint" => endpoint)
        .record(took.as_secs_f64());
    metrics::counter!(
        "o2o_doku_requests_total",
        "endpoint" => endpoint,
        "status" => status.to_owned()
    )
    .increment(1);
}

/// An attempt that got no answer. Only a failed connect proves the request never left;
/// anything later (timeout, reset, closed mid-answer) may be after DOKU acted on it.
fn send_failed(
    e: &reqwest::Error,
    span: &Span,
    endpoint: &'static str,
    started: Instant,
) -> Attempt {
    record_call(
        span,
        endpoint,
        started,
        if e.is_timeout() { "timeout" } else { "error" },
    );
    let error_type = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    mark_failed(span, error_type);
    let maybe_reached = !e.is_connect();
    let detail = error_chain(e);
    tracing::warn!(%detail, maybe_reached, "DOKU call failed");
    Attempt::Failed {
        detail,
        maybe_reached,
    }
}

/// What an answer means for the retry loop: 5xx and 429 are retried (after `Retry-After`,
/// within bounds), anything else is DOKU's answer.
fn classify(status: StatusCode, headers: &HeaderMap, body: Vec<u8>) -> Attempt {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after(headers);
        // `Option` values record nothing when absent: no `Some(..)`/`None` in the line.
        tracing::warn!(
            body = %for_log(&body),
            retry_after_s = retry_after.map(|d| d.as_secs()),
            "DOKU is unavailable"
        );
        return Attempt::Retryable {
            detail: format!("HTTP {}", status.as_u16()),
            retry_after,
        };
    }
    if status.is_success() {
        // At `debug`: the call's span carries its status and time, and the operation logs
        // its result (`payment code issued`) at `info`.
        tracing::debug!("DOKU answered");
    } else {
        tracing::warn!(body = %for_log(&body), "DOKU refused the request");
    }
    Attempt::Answer(Answer {
        status,
        body,
        after_unknown: false,
    })
}

/// Full-jitter exponential backoff: a random wait in `[0, min(max, base * 2^(attempt-1))]`.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(max);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
}

/// A numeric `Retry-After` (seconds). The HTTP-date form is not used by APIs like DOKU's and
/// is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Reads the answer, refusing one larger than [`RESPONSE_BODY_MAX`].
async fn read_body(resp: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > RESPONSE_BODY_MAX {
            return Err(format!("answer larger than {RESPONSE_BODY_MAX} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How far DOKU's `Date` header (IMF-fixdate) is from `now`, when it parses.
fn clock_skew(date: &str, now: OffsetDateTime) -> Option<time::Duration> {
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let theirs = time::PrimitiveDateTime::parse(date.trim(), fmt)
        .ok()?
        .assume_utc();
    Some(now - theirs)
}

fn warn_on_clock_skew(headers: &HeaderMap) {
    let Some(date) = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    if let Some(skew) = clock_skew(date, OffsetDateTime::now_utc())
        && skew.abs() > CLOCK_SKEW_WARN
    {
        tracing::warn!(
            doku_date = date,
            skew_seconds = skew.whole_seconds(),
            "our clock differs from DOKU's; DOKU may reject Request-Timestamp"
        );
    }
}

/// A DOKU body for the log: lossy UTF-8, at most [`LOG_BODY_MAX`] bytes.
fn for_log(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= LOG_BODY_MAX {
        return text.into_owned();
    }
    let mut end = LOG_BODY_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], body.len())
}

/// An error and its sources on one line (reqwest's own `Display` hides the cause).
pub(super) fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::doku::types::tests::v1_payment;

    const KEY: &[u8] = b"SK-TEST-0123456789abcdef";
    const CLIENT: &str = "MCH-0001-10791114622547";

    #[test]
    fn v1_golden_request_is_signed_as_the_vector() {
        let body = DokuPaymentCodeRequest::new(&v1_payment()).to_bytes();
        assert_eq!(
            body,
            include_bytes!("../../tests/golden/doku/payment_code_v1.json")
        );
        let headers = signed_headers(
            CLIENT,
            KEY,
            "5b8e438f-fac1-4103-9e0e-ebfdc38b5acb",
            datetime!(2020-08-11 15:45:42.999 +7),
            PAYMENT_CODE_PATH,
            Some(&body),
        );
        assert_eq!(
            headers,
            vec![
                ("Client-Id", CLIENT.to_owned()),
                (
                    "Request-Id",
                    "5b8e438f-fac1-4103-9e0e-ebfdc38b5acb".to_owned()
                ),
                ("Request-Timestamp", "2020-08-11T08:45:42Z".to_owned()),
                (
                    "Signature",
                    "HMACSHA256=ctyeJ/roO15esvxAIm2CCCCicGZZN+5/oiKWbePybpE=".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn v2_get_is_signed_without_digest() {
        let headers = signed_headers(
            CLIENT,
            KEY,
            "d895fb53-479c-4f77-a76a-ab81b40d77cb",
            datetime!(2020-08-11 08:45:42 UTC),
            "/orders/v1/status/INV-123123-12313",
            None,
        );
        assert_eq!(
            headers[3].1,
            "HMACSHA256=po9vane9Ameix3qVbteTzMXvPIn/SKDJLBvBv0pDEo4="
        );
    }

    #[test]
    fn v6_response_signature_and_its_readings() {
        let v1 = include_bytes!("../../tests/golden/doku/payment_code_v1.json");
        let sig = "HMACSHA256=lwkO4gMZl5ayBOXT9AHj4Cb+uiRP4Jk1s1IKD4J0vhw=";
        let check = |response_body: &[u8], request_body: Option<&[u8]>, target: &str| {
            response_signature(
                KEY,
                CLIENT,
                "5b8e438f-fac1-4103-9e0e-ebfdc38b5acb",
                "2020-08-11T08:45:43Z",
                target,
                response_body,
                request_body,
                sig,
            )
        };
        assert_eq!(check(v1, None, PAYMENT_CODE_PATH), Some("response body"));
        assert_eq!(
            check(b"{}", Some(v1), PAYMENT_CODE_PATH),
            Some("request body")
        );
        assert_eq!(check(b"{}", None, PAYMENT_CODE_PATH), None);
        assert_eq!(check(v1, Some(v1), "/other"), None);
    }

    #[test]
    fn worst_case_call_covers_every_attempt_and_the_longest_wait() {
        let cfg = DokuClientConfig {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            backoff_max: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(5),
            how_to_pay: crate::doku::HowToPayConfig {
                timeout: Duration::from_secs(2),
                ..Default::default()
            },
            ..DokuClientConfig::default()
        };
        // 3 attempts of 13 s, two waits of up to 5 s (Retry-After beats the backoff), and the
        // 2 s fetch of the how-to-pay JSON.
        assert_eq!(cfg.worst_case_call(), Duration::from_secs(51));
        let one = DokuClientConfig {
            max_attempts: 1,
            ..cfg.clone()
        };
        assert_eq!(one.worst_case_call(), Duration::from_secs(15));
        let huge = DokuClientConfig {
            request_timeout: Duration::MAX,
            ..cfg
        };
        assert_eq!(huge.worst_case_call(), Duration::MAX);
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(250);
        for _ in 0..200 {
            assert!(backoff(base, max, 1) <= base);
            assert!(backoff(base, max, 2) <= Duration::from_millis(200));
            assert!(backoff(base, max, 30) <= max);
            assert!(backoff(base, max, u32::MAX) <= max);
        }
        // Full jitter uses the whole range: over many draws the third step exceeds the first.
        assert!((0..200).any(|_| backoff(base, max, 3) > base));
    }

    #[test]
    fn retry_after_is_numeric_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn clock_skew_from_date_header() {
        let now = datetime!(2015-10-21 07:29:30 UTC);
        assert_eq!(
            clock_skew("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(time::Duration::seconds(90))
        );
        assert_eq!(
            clock_skew("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(time::Duration::seconds(-30))
        );
        assert_eq!(clock_skew("yesterday", now), None);
    }

    #[test]
    fn log_bodies_are_truncated_on_a_char_boundary() {
        assert_eq!(for_log(b"short"), "short");
        let long = "é".repeat(2000);
        let logged = for_log(long.as_bytes());
        assert!(logged.len() < LOG_BODY_MAX + 32);
        assert!(logged.ends_with("… (4000 bytes)"), "{logged}");
    }

    #[test]
    fn config_is_checked() {
        let key = SecretSource::fixed("SK-x");
        let cfg = |base: &str, id: &str| DokuClientConfig {
            base_url: base.to_owned(),
            client_id: id.to_owned(),
            ..Default::default()
        };
        assert!(DokuClient::new(cfg(SANDBOX_BASE_URL, CLIENT), key.clone()).is_ok());
        for bad in ["", "api.doku.com", "ftp://api.doku.com", "https://x/?a=1"] {
            assert!(
                DokuClient::new(cfg(bad, CLIENT), key.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(DokuClient::new(cfg(SANDBOX_BASE_URL, ""), key.clone()).is_err());
        let c = DokuClient::new(cfg("http://127.0.0.1:1/doku/", CLIENT), key).unwrap();
        assert_eq!(c.inner.base, "http://127.0.0.1:1/doku");
        assert_eq!(c.inner.path_prefix, "/doku");
        assert_eq!(c.inner.span_base, "http://127.0.0.1:1/doku");
        assert_eq!(c.inner.server, ("127.0.0.1".to_owned(), 1));
        // Spans show no user info, and the scheme's port when none is written.
        let key = SecretSource::fixed("SK-x");
        let c = DokuClient::new(cfg("https://proxy:s3cret@doku.example/", CLIENT), key).unwrap();
        assert_eq!(c.inner.span_base, "https://doku.example");
        assert_eq!(c.inner.server, ("doku.example".to_owned(), 443));
    }

    #[test]
    fn prepared_requests_get_fresh_ids_and_the_same_body() {
        let c = DokuClient::new(
            DokuClientConfig {
                client_id: CLIENT.into(),
                ..Default::default()
            },
            SecretSource::fixed("SK-x"),
        )
        .unwrap();
        let a = c.prepare_payment_code(&v1_payment());
        let b = c.prepare_payment_code(&v1_payment());
        assert_ne!(a.request_id, b.request_id);
        assert!(uuid::Uuid::parse_str(&a.request_id).is_ok());
        assert_eq!(a.body, b.body);
        assert_eq!(
            a.body,
            include_bytes!("../../tests/golden/doku/payment_code_v1.json")
        );
    }
}

/// The client against a local HTTP server on 127.0.0.1:0.
#[cfg(test)]
mod server_tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use time::macros::datetime;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{method, path},
    };

    use super::*;
    use crate::{
        doku::types::tests::{alfa_payment, v1_payment},
        payment::PaymentStatus,
    };

    const KEY: &str = "SK-TEST-0123456789abcdef";
    const CLIENT: &str = "MCH-0001-10791114622547";
    const SUCCESS: &str = r#"{"order":{"invoice_number":"INV-2021002-0001","amount":150000},"online_to_offline_info":{"payment_code":"8880123456789012","created_date":"20230529090510","expired_date":"20230529100510","expired_date_utc":"2023-05-29T03:05:10Z","how_to_pay_page":"https://sandbox.doku.com/how-to-pay/x","how_to_pay_api":"https://api-sandbox.doku.com/how-to-pay-api/x"}}"#;

    fn client_for(base_url: String, max_attempts: u32, request_timeout_ms: u64) -> DokuClient {
        DokuClient::new(
            DokuClientConfig {
                base_url,
                client_id: CLIENT.into(),
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_millis(request_timeout_ms),
                max_attempts,
                backoff_base: Duration::from_millis(5),
                backoff_max: Duration::from_millis(20),
                retry_after_max: Duration::from_millis(30),
                how_to_pay: HowToPayConfig::default(),
            },
            SecretSource::fixed(KEY),
        )
        .unwrap()
    }

    fn client(server: &MockServer, max_attempts: u32) -> DokuClient {
        client_for(server.uri(), max_attempts, 1000)
    }

    /// Asserts that `req` carries a valid signature over its path and received body bytes;
    /// returns its Request-Id.
    fn assert_signed(req: &wiremock::Request) -> String {
        let header = |name: &str| {
            req.headers
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        let ts = header("Request-Timestamp");
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(
            time::PrimitiveDateTime::parse(
                &ts,
                format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")
            )
            .is_ok()
        );
        let is_post = req.method == Method::POST;
        let digest = is_post.then(|| signature::digest(&req.body));
        let sts = signature::string_to_sign(&Components {
            client_id: &header("Client-Id"),
            request_id: &header("Request-Id"),
            timestamp: &ts,
            timestamp_kind: TimestampKind::Request,
            request_target: req.url.path(),
            digest: digest.as_deref(),
        });
        assert!(
            signature::verify(KEY.as_bytes(), &sts, &header("Signature")),
            "signature of {} does not verify",
            req.url.path()
        );
        if is_post {
            assert_eq!(header("Content-Type"), "application/json");
        }
        header("Request-Id")
    }

    async fn mount(server: &MockServer, status: u16, body: &str, times: Option<u64>) {
        let mock = Mock::given(method("POST"))
            .and(path(PAYMENT_CODE_PATH))
            .respond_with(ResponseTemplate::new(status).set_body_string(body));
        let mock = match times {
            Some(n) => mock.up_to_n_times(n),
            None => mock,
        };
        mock.mount(server).await;
    }

    async fn received(server: &MockServer) -> Vec<wiremock::Request> {
        server.received_requests().await.unwrap()
    }

    #[tokio::test]
    async fn retries_resend_the_same_request_and_succeed() {
        let server = MockServer::start().await;
        mount(&server, 503, "busy", Some(2)).await;
        mount(&server, 200, SUCCESS, None).await;
        let c = client(&server, 3);
        let req = c.prepare_payment_code(&v1_payment());

        let issued = c.generate_payment_code(&req).await.unwrap();
        assert_eq!(issued.payment_code.as_str(), "8880123456789012");
        assert_eq!(issued.create_time, Some(datetime!(2023-05-29 02:05:10 UTC)));
        assert_eq!(issued.expire_time, Some(datetime!(2023-05-29 03:05:10 UTC)));
        assert_eq!(
            issued.how_to_pay_url.as_deref(),
            Some("https://sandbox.doku.com/how-to-pay/x")
        );

        let sent = received(&server).await;
        assert_eq!(sent.len(), 3);
        for r in &sent {
            assert_eq!(assert_signed(r), req.request_id);
            assert_eq!(r.body, req.body, "every attempt sends the prepared bytes");
        }
    }

    #[tokio::test]
    async fn an_alfa_request_goes_to_alfa_s_path_with_alfa_s_body() {
        let server = MockServer::start().await;
        let alfa_success = SUCCESS.replace("INV-2021002-0001", "INV-20210124-0001");
        Mock::given(method("POST"))
            .and(path(ALFA_PAYMENT_CODE_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_string(alfa_success))
            .mount(&server)
            .await;
        let c = client(&server, 1);
        let req = c.prepare_payment_code(&alfa_payment());
        assert_eq!(req.channel, Channel::Alfa);
        let issued = c.generate_payment_code(&req).await.unwrap();
        assert_eq!(issued.payment_code.as_str(), "8880123456789012");
        let sent = received(&server).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].url.path(),
            "/alfa-online-to-offline/v2/payment-code"
        );
        assert_signed(&sent[0]);
        assert_eq!(
            sent[0].body,
            include_bytes!("../../tests/golden/doku/payment_code_alfa.json")
        );
        assert_eq!(payment_code_path(Channel::Indomaret), PAYMENT_CODE_PATH);
    }

    #[tokio::test]
    async fn only_5xx_is_unavailable_with_retry_after() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "7"))
            .mount(&server)
            .await;
        let c = client(&server, 3);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DokuError::Unavailable { retry_after: Some(d), .. } if *d == Duration::from_secs(7)),
            "{err:?}"
        );
        assert_eq!(received(&server).await.len(), 3);
    }

    #[tokio::test]
    async fn too_many_requests_is_retried() {
        let server = MockServer::start().await;
        mount(&server, 429, "slow down", Some(1)).await;
        mount(&server, 200, SUCCESS, None).await;
        let c = client(&server, 3);
        assert!(
            c.generate_payment_code(&c.prepare_payment_code(&v1_payment()))
                .await
                .is_ok()
        );
        assert_eq!(received(&server).await.len(), 2);
    }

    #[tokio::test]
    async fn a_timeout_makes_the_outcome_unknown() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(SUCCESS)
                    .set_delay(Duration::from_millis(600)),
            )
            .mount(&server)
            .await;
        let c = client_for(server.uri(), 2, 100);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(matches!(err, DokuError::OutcomeUnknown { .. }), "{err:?}");
        assert_eq!(received(&server).await.len(), 2);
    }

    #[tokio::test]
    async fn a_timeout_then_5xx_is_still_unknown() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(600)))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        mount(&server, 502, "bad gateway", None).await;
        let c = client_for(server.uri(), 3, 100);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(matches!(err, DokuError::OutcomeUnknown { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        let port = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let c = client_for(format!("http://127.0.0.1:{port}"), 2, 1000);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                DokuError::Unavailable {
                    retry_after: None,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_dropped_mid_answer_makes_the_outcome_unknown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"order\":")
                    .await;
                // Dropping the socket cuts the answer short.
            }
        });
        let c = client_for(format!("http://{addr}"), 2, 1000);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(matches!(err, DokuError::OutcomeUnknown { .. }), "{err:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn conflict_with_the_original_answer_is_success() {
        let server = MockServer::start().await;
        mount(&server, 409, SUCCESS, None).await;
        let c = client(&server, 3);
        let issued = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap();
        assert_eq!(issued.payment_code.as_str(), "8880123456789012");
        assert_eq!(received(&server).await.len(), 1);
    }

    #[tokio::test]
    async fn conflict_without_a_code_is_rejected() {
        let server = MockServer::start().await;
        mount(
            &server,
            409,
            r#"{"message":"different request data"}"#,
            None,
        )
        .await;
        let c = client(&server, 3);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DokuError::Rejected { http_status: 409, message, .. } if message == "different request data"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unauthorized_keeps_the_body_and_is_not_retried() {
        let server = MockServer::start().await;
        mount(&server, 401, r#"{"error":"Invalid Signature"}"#, None).await;
        let c = client(&server, 3);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DokuError::AuthRejected {
                http_status: 401,
                body: r#"{"error":"Invalid Signature"}"#.into()
            }
        );
        assert!(!err.to_string().contains(KEY));
        assert_eq!(received(&server).await.len(), 1);
    }

    #[tokio::test]
    async fn bad_request_extracts_doku_s_message() {
        let server = MockServer::start().await;
        let body = r#"{"error":{"code":"invalid_parameter","message":"Invalid JSON Format"}}"#;
        mount(&server, 400, body, None).await;
        let c = client(&server, 3);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DokuError::Rejected {
                http_status: 400,
                message: "Invalid JSON Format".into(),
                body: body.into(),
            }
        );
        assert_eq!(received(&server).await.len(), 1);
    }

    #[tokio::test]
    async fn an_unreadable_or_foreign_success_makes_the_outcome_unknown() {
        let foreign = SUCCESS.replace("INV-2021002-0001", "INV-OTHER");
        for body in ["<html>gateway</html>", r#"{"order":{}}"#, foreign.as_str()] {
            let server = MockServer::start().await;
            mount(&server, 200, body, None).await;
            let c = client(&server, 3);
            let err = c
                .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
                .await
                .unwrap_err();
            assert!(
                matches!(err, DokuError::OutcomeUnknown { .. }),
                "{body}: {err:?}"
            );
            assert_eq!(received(&server).await.len(), 1);
        }
    }

    #[tokio::test]
    async fn a_code_that_does_not_name_this_request_is_not_ours() {
        let no_invoice = r#"{"online_to_offline_info":{"payment_code":"222222"}}"#.to_owned();
        let no_order_invoice = SUCCESS.replace(r#""invoice_number":"INV-2021002-0001","#, "");
        let other_amount = SUCCESS.replace("150000", "150001");
        for (status, body) in [
            (200, no_invoice.as_str()),
            (200, no_order_invoice.as_str()),
            (200, other_amount.as_str()),
            (409, no_invoice.as_str()),
            (409, other_amount.as_str()),
        ] {
            let server = MockServer::start().await;
            mount(&server, status, body, None).await;
            let c = client(&server, 3);
            let err = c
                .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
                .await
                .unwrap_err();
            assert!(
                matches!(err, DokuError::OutcomeUnknown { .. }),
                "{status} {body}: {err:?}"
            );
        }
        // DOKU's documented answer shape has no amount: tolerated.
        let server = MockServer::start().await;
        let no_amount = SUCCESS.replace(r#","amount":150000"#, "");
        mount(&server, 200, &no_amount, None).await;
        let c = client(&server, 3);
        assert!(
            c.generate_payment_code(&c.prepare_payment_code(&v1_payment()))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn only_web_urls_reach_callers() {
        let server = MockServer::start().await;
        let body = SUCCESS
            .replace(
                "https://sandbox.doku.com/how-to-pay/x",
                "javascript:alert(1)",
            )
            .replace(
                "https://api-sandbox.doku.com/how-to-pay-api/x",
                "/relative/path",
            );
        mount(&server, 200, &body, None).await;
        let c = client(&server, 3);
        let issued = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap();
        assert_eq!(issued.payment_code.as_str(), "8880123456789012");
        assert_eq!(issued.how_to_pay_url, None);
        assert_eq!(issued.how_to_pay_api_url, None);
        for (url, ok) in [
            ("https://doku.com/x", true),
            ("http://doku.com", true),
            ("javascript:alert(1)", false),
            ("data:text/html,x", false),
            ("https://user:pw@doku.com/x", false),
            ("ftp://doku.com/x", false),
        ] {
            assert_eq!(is_web_url(url), ok, "{url}");
        }
    }

    #[tokio::test]
    async fn a_rejection_after_an_attempt_that_may_have_reached_doku_is_unknown() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(600)))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        mount(&server, 400, r#"{"message":"bad"}"#, None).await;
        let c = client_for(server.uri(), 3, 100);
        let err = c
            .generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap_err();
        assert!(matches!(err, DokuError::OutcomeUnknown { .. }), "{err:?}");
    }

    fn status_body(status: &str) -> String {
        format!(
            r#"{{"service":{{"id":"ONLINE_TO_OFFLINE"}},"acquirer":{{"id":"INDOMARET"}},"channel":{{"id":"ONLINE_TO_OFFLINE_INDOMARET"}},"transaction":{{"status":"{status}","date":"2021-08-12T07:06:28Z","original_request_id":"5b8e438f-fac1-4103-9e0e-ebfdc38b5acb"}},"order":{{"invoice_number":"INV-1","amount":150000}},"online_to_offline_info":{{"payment_code":"8880123456789012"}}}}"#
        )
    }

    #[tokio::test]
    async fn check_status_maps_doku_s_answer() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/orders/v1/status/INV-1"))
            .respond_with(ResponseTemplate::new(200).set_body_string(status_body("SUCCESS")))
            .mount(&server)
            .await;
        let c = client(&server, 3);
        let invoice = InvoiceNumber::parse("INV-1").unwrap();
        let report = c.check_status(&invoice).await.unwrap();
        assert_eq!(
            report,
            StatusReport {
                status: ReportedStatus::Known(PaymentStatus::Paid),
                invoice_number: Some("INV-1".into()),
                amount: Some(150_000),
                payment_code: Some("8880123456789012".into()),
                channel: Some(ReportedChannel::Known(Channel::Indomaret)),
                occur_time: Some(datetime!(2021-08-12 07:06:28 UTC)),
                original_request_id: Some("5b8e438f-fac1-4103-9e0e-ebfdc38b5acb".into()),
                raw_body: status_body("SUCCESS"),
            }
        );
        let sent = received(&server).await;
        assert_eq!(sent.len(), 1);
        assert!(sent[0].body.is_empty());
        assert!(sent[0].headers.get("Content-Type").is_none());
        assert_signed(&sent[0]);
    }

    #[tokio::test]
    async fn check_status_reports_unknown_statuses_raw() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string(status_body("ON_HOLD")))
            .mount(&server)
            .await;
        let c = client(&server, 3);
        let report = c
            .check_status(&InvoiceNumber::parse("INV-1").unwrap())
            .await
            .unwrap();
        assert_eq!(
            report.status,
            ReportedStatus::Unrecognized("ON_HOLD".into())
        );
    }

    #[tokio::test]
    async fn check_status_not_found_and_unreadable() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/orders/v1/status/INV-404"))
            .respond_with(ResponseTemplate::new(404).set_body_string("No static resource"))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/orders/v1/status/INV-EMPTY"))
            .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"order":{}}"#))
            .mount(&server)
            .await;
        let c = client(&server, 3);
        let err = c
            .check_status(&InvoiceNumber::parse("INV-404").unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DokuError::NotFound {
                body: "No static resource".into()
            }
        );
        let err = c
            .check_status(&InvoiceNumber::parse("INV-EMPTY").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, DokuError::OutcomeUnknown { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_base_url_path_prefix_is_part_of_the_signed_target() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/doku/orders/v1/status/INV-1"))
            .respond_with(ResponseTemplate::new(200).set_body_string(status_body("PENDING")))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(format!("/doku{PAYMENT_CODE_PATH}")))
            .respond_with(ResponseTemplate::new(200).set_body_string(SUCCESS))
            .mount(&server)
            .await;
        let c = client_for(format!("{}/doku/", server.uri()), 1, 1000);
        let report = c
            .check_status(&InvoiceNumber::parse("INV-1").unwrap())
            .await
            .unwrap();
        assert_eq!(report.status, ReportedStatus::Known(PaymentStatus::Pending));
        c.generate_payment_code(&c.prepare_payment_code(&v1_payment()))
            .await
            .unwrap();
        let sent = received(&server).await;
        assert_eq!(sent.len(), 2);
        for r in &sent {
            assert!(r.url.path().starts_with("/doku/"));
            assert_signed(r);
        }
    }

    #[tokio::test]
    async fn check_status_uses_one_request_id_per_call() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string(status_body("EXPIRED")))
            .mount(&server)
            .await;
        let c = client(&server, 3);
        let invoice = InvoiceNumber::parse("INV-1").unwrap();
        c.check_status(&invoice).await.unwrap();
        c.check_status(&invoice).await.unwrap();
        let ids: Vec<String> = received(&server).await.iter().map(assert_signed).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], ids[1], "a retry keeps the call's Request-Id");
        assert_ne!(ids[1], ids[2], "a new call gets a new Request-Id");
    }
}
