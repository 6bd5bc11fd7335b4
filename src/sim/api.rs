//! DOKU's own endpoints as the simulator serves them: Generate Payment Code, Check Status, the
//! how-to-pay page and API, and DOKU-style answers to wrong paths and methods. Every request
//! is logged with its verdict, and faults are applied around the processing.

use axum::{
    Extension,
    extract::{ConnectInfo, Path, State},
    http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use rand::Rng as _;
use time::OffsetDateTime;

use crate::sim::{
    FaultKind, FaultTarget, ReceivedRequest, SimChannel, Simulator, Verdict,
    auth::{self, Rejection},
    conn::{ConnKill, drop_connection},
    lock, page,
    state::{PaymentRecord, Replay},
    wire,
};

/// Company prefix of the simulator's payment codes; ten random digits follow.
pub(crate) const CODE_PREFIX: &str = "77310";

/// What a DOKU endpoint answers, before faults are applied.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    verdict: Verdict,
}

impl Answer {
    fn rejected(r: Rejection) -> Self {
        Self {
            status: r.status,
            headers: Vec::new(),
            body: wire::error_body(r.code, &r.message, "invalid_request_error").into(),
            verdict: Verdict::Rejected {
                code: r.code.to_owned(),
                message: r.message,
            },
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::rejected(Rejection::new(StatusCode::BAD_REQUEST, code, message))
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (n, v) in self.headers {
            h.insert(n, v);
        }
        res
    }
}

fn request_log(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    invoice: Option<String>,
) -> ReceivedRequest {
    ReceivedRequest {
        received_at: wire::now(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        request_id: headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        invoice_number: invoice,
        status: None,
        verdict: Verdict::Accepted,
        fault: None,
    }
}

impl Simulator {
    fn record(&self, r: ReceivedRequest) {
        tracing::debug!(
            method = %r.method,
            path = %r.path,
            status = ?r.status,
            verdict = ?r.verdict,
            fault = ?r.fault,
            "doku-sim request"
        );
        lock(&self.inner.state).requests.push(r);
    }

    /// Runs `process` with the fault (if any) for `target` around it, logs, answers.
    async fn with_faults(
        &self,
        target: FaultTarget,
        mut log: ReceivedRequest,
        kill: Option<&ConnKill>,
        process: impl FnOnce() -> Answer,
    ) -> Response {
        let fault = self
            .inner
            .faults
            .take_api(target, log.invoice_number.as_deref());
        log.fault = fault.as_ref().map(FaultKind::describe);
        match fault {
            Some(FaultKind::Status { status }) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                log.status = Some(status.as_u16());
                log.verdict = Verdict::Faulted;
                self.record(log);
                let kind = if status.is_server_error() {
                    "api_error"
                } else {
                    "invalid_request_error"
                };
                // `503` → `service_unavailable`, `429` → `too_many_requests`, …
                let message = status.canonical_reason().unwrap_or("Simulated fault");
                let code = message.to_ascii_lowercase().replace([' ', '-'], "_");
                return Answer {
                    status,
                    headers: Vec::new(),
                    body: wire::error_body(&code, message, kind).into(),
                    verdict: Verdict::Faulted,
                }
                .into_response();
            }
            Some(FaultKind::Drop {
                after_processing: false,
            }) => {
                log.verdict = Verdict::Faulted;
                self.record(log);
                return drop_connection(kill);
            }
            _ => {}
        }
        let answer = process();
        log.verdict = answer.verdict.clone();
        log.status = Some(answer.status.as_u16());
        match fault {
            Some(FaultKind::Drop {
                after_processing: true,
            }) => {
                log.status = None;
                self.record(log);
                drop_connection(kill)
            }
            Some(FaultKind::Delay { delay_ms }) => {
                self.record(log);
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                answer.into_response()
            }
            _ => {
                self.record(log);
                answer.into_response()
            }
        }
    }

    fn generate(
        &self,
        channel: SimChannel,
        headers: &HeaderMap,
        path: &str,
        body: &Bytes,
    ) -> Answer {
        let cfg = &self.inner.cfg;
        let now = wire::now();
        let request_id = match auth::authenticate(cfg, headers, path, Some(body), now) {
            Ok(id) => id,
            Err(r) => return Answer::rejected(r),
        };
        if let Err(r) = json_content_type(headers) {
            return Answer::rejected(r);
        }

        let mut st = lock(&self.inner.state);
        if let Some(replay) = st.replays.get(&request_id) {
            if replay.request_body != *body || replay.channel != channel {
                return Answer::bad_request(
                    "invalid_request_id",
                    "different request data for a Request-Id already used",
                );
            }
            let response_body = replay.response_body.clone();
            return Answer {
                status: StatusCode::CONFLICT,
                headers: auth::response_headers(cfg, &request_id, path, Some(&response_body), now),
                body: response_body,
                verdict: Verdict::Replayed,
            };
        }

        let req = match wire::parse_generate(body, channel) {
            Ok(r) => r,
            Err(m) => return Answer::bad_request("invalid_parameter", m),
        };
        let notification_url = match &req.override_notification_url {
            Some(url) => match self.check_override(url) {
                Ok(()) => Some(url.clone()),
                Err(m) => return Answer::bad_request("invalid_parameter", m),
            },
            None => cfg.notification_url.clone(),
        };
        if st.get(&req.invoice_number).is_some() {
            return Answer::bad_request(
                "duplicate_invoice",
                format!(
                    "duplicate invoice: {} already has a payment code",
                    req.invoice_number
                ),
            );
        }

        let issue = Issue {
            channel,
            request_id: &request_id,
            notification_url,
            now,
        };
        let response_body = self.issue(&mut st, req, issue, headers);
        st.replays.insert(
            request_id.clone(),
            Replay {
                channel,
                request_body: body.clone(),
                response_body: response_body.clone(),
            },
        );
        Answer {
            status: StatusCode::OK,
            headers: auth::response_headers(cfg, &request_id, path, Some(&response_body), now),
            body: response_body,
            verdict: Verdict::Accepted,
        }
    }

    /// Issues a fresh payment code for a valid request and keeps the payment; returns DOKU's
    /// answer body.
    fn issue(
        &self,
        st: &mut super::state::State,
        req: wire::GenerateRequest,
        issue: Issue<'_>,
        headers: &HeaderMap,
    ) -> Bytes {
        let Issue {
            channel,
            request_id,
            notification_url,
            now,
        } = issue;
        let mut rng = rand::rng();
        let payment_code = loop {
            let c = format!(
                "{CODE_PREFIX}{:010}",
                rng.random_range(0..10_000_000_000u64)
            );
            if !st.code_taken(&c) {
                break c;
            }
        };
        let token = URL_SAFE_NO_PAD.encode(rng.random::<[u8; 32]>());
        let minutes = i64::try_from(req.expired_minutes).unwrap_or(i64::MAX);
        let expires = now + time::Duration::minutes(minutes);
        let base = self.public_base(headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        let product = channel.product();
        let how_to_pay_page = format!("{base}/how-to-pay/v2/{product}/{payment_code}/{token}");
        let response_body: Bytes = wire::generate_response(&wire::Issued {
            invoice_number: &req.invoice_number,
            amount: req.amount,
            payment_code: &payment_code,
            info: req.info.as_deref(),
            created: now,
            expires,
            how_to_pay_page: how_to_pay_page.clone(),
            how_to_pay_api: format!("{base}/{product}/v2/how-to-pay-api/{payment_code}/{token}"),
        })
        .into();
        st.insert(PaymentRecord {
            invoice_number: req.invoice_number.clone(),
            amount: req.amount,
            channel,
            payment_code,
            customer_name: req.customer_name,
            how_to_pay_url: how_to_pay_page,
            token,
            request_id: request_id.to_owned(),
            reusable: req.reusable,
            info: req.info,
            created_at: now,
            expires_at: expires,
            paid: Vec::new(),
            expired_at: None,
            failed_at: None,
            notification_url,
        });
        tracing::info!(invoice = %req.invoice_number, "doku-sim issued a payment code");
        response_body
    }

    /// DOKU's rule: an override URL keeps the configured Notification URL's path.
    fn check_override(&self, url: &str) -> Result<(), String> {
        let name = "additional_info.override_notification_url";
        let parsed = wire::parse_http_url(url).map_err(|e| format!("{name}: {e}"))?;
        let configured = self
            .inner
            .cfg
            .notification_url
            .as_deref()
            .and_then(|u| wire::parse_http_url(u).ok());
        if let Some(configured) = configured
            && configured.path() != parsed.path()
        {
            return Err(format!(
                "{name} must have the same path as the configured Notification URL ({}), got {}",
                configured.path(),
                parsed.path()
            ));
        }
        Ok(())
    }

    fn status(&self, headers: &HeaderMap, path: &str, invoice: &str) -> Answer {
        let cfg = &self.inner.cfg;
        let now = wire::now();
        let request_id = match auth::authenticate(cfg, headers, path, None, now) {
            Ok(id) => id,
            Err(r) => return Answer::rejected(r),
        };
        let st = lock(&self.inner.state);
        let Some(p) = st.get(invoice) else {
            return Answer::rejected(Rejection::new(
                StatusCode::NOT_FOUND,
                "transaction_not_found",
                format!("Transaction not found for invoice {invoice}"),
            ));
        };
        let body: Bytes = wire::status_response(&txn_view(p, now)).into();
        Answer {
            status: StatusCode::OK,
            headers: auth::response_headers(cfg, &request_id, path, None, now),
            body,
            verdict: Verdict::Accepted,
        }
    }
}

/// What a new code is issued for, besides the request body.
#[derive(Debug)]
struct Issue<'a> {
    channel: SimChannel,
    request_id: &'a str,
    notification_url: Option<String>,
    now: OffsetDateTime,
}

/// Check Status's view of a payment now.
pub(crate) fn txn_view(p: &PaymentRecord, now: OffsetDateTime) -> wire::TxnView<'_> {
    wire::TxnView {
        channel: p.channel,
        invoice_number: &p.invoice_number,
        amount: p.amount,
        payment_code: &p.payment_code,
        status: p.status(now).as_str(),
        date: p.status_date(now),
        original_request_id: &p.request_id,
    }
}

fn json_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_content_type",
            "Content-Type must be application/json",
        ))
    }
}

fn conn_kill(ext: &Extensions) -> Option<&ConnKill> {
    ext.get::<ConnectInfo<ConnKill>>().map(|c| &c.0)
}

/// `POST /{product}/v2/payment-code` of the channel the route was built for
/// ([`SimChannel::payment_code_path`]).
pub(crate) async fn payment_code(
    State(sim): State<Simulator>,
    Extension(channel): Extension<SimChannel>,
    ext: Extensions,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let log = request_log(&method, &uri, &headers, wire::peek_invoice(&body));
    let path = uri.path();
    sim.with_faults(
        FaultTarget::payment_code(channel),
        log,
        conn_kill(&ext),
        || sim.generate(channel, &headers, path, &body),
    )
    .await
}

/// `GET /orders/v1/status/{invoice}`.
pub(crate) async fn check_status(
    State(sim): State<Simulator>,
    Path(invoice): Path<String>,
    ext: Extensions,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let log = request_log(&method, &uri, &headers, Some(invoice.clone()));
    let path = uri.path();
    sim.with_faults(FaultTarget::CheckStatus, log, conn_kill(&ext), || {
        sim.status(&headers, path, &invoice)
    })
    .await
}

/// A DOKU path called with the wrong method.
pub(crate) async fn method_not_allowed(
    State(sim): State<Simulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let answer = Answer::rejected(Rejection::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("Request method '{method}' is not supported"),
    ));
    let mut log = request_log(&method, &uri, &headers, None);
    log.status = Some(answer.status.as_u16());
    log.verdict = answer.verdict.clone();
    sim.record(log);
    answer.into_response()
}

/// Any path DOKU does not have (DOKU answers these `404 No static resource`).
pub(crate) async fn not_found(
    State(sim): State<Simulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let answer = Answer::rejected(Rejection::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("No static resource {}.", uri.path().trim_start_matches('/')),
    ));
    if !uri.path().starts_with("/_sim/") {
        let mut log = request_log(&method, &uri, &headers, None);
        log.status = Some(answer.status.as_u16());
        log.verdict = answer.verdict.clone();
        sim.record(log);
    }
    answer.into_response()
}

/// The payment a how-to-pay link points at, if code, token and the link's channel match.
fn linked(sim: &Simulator, channel: SimChannel, code: &str, token: &str) -> Option<PaymentRecord> {
    lock(&sim.inner.state)
        .by_code(code)
        .filter(|p| p.token == token && p.channel == channel)
        .cloned()
}

/// `GET /how-to-pay/v2/{product}/{code}/{token}`: a page for the customer.
pub(crate) async fn how_to_pay_page(
    State(sim): State<Simulator>,
    Extension(channel): Extension<SimChannel>,
    Path((code, token)): Path<(String, String)>,
) -> Response {
    match linked(&sim, channel, &code, &token) {
        Some(p) => page::how_to_pay(&p),
        None => page::how_to_pay_not_found(),
    }
}

/// `GET /{product}/v2/how-to-pay-api/{code}/{token}`: the same as JSON.
pub(crate) async fn how_to_pay_api(
    State(sim): State<Simulator>,
    Extension(channel): Extension<SimChannel>,
    Path((code, token)): Path<(String, String)>,
) -> Response {
    let Some(p) = linked(&sim, channel, &code, &token) else {
        return Answer::rejected(Rejection::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown payment code",
        ))
        .into_response();
    };
    // DOKU's plugins read `payment_instruction[].channel` and `.step[]`; the rest follows
    // the VA answer's shape (`order`, the channel's info, `customer`): docs/design-notes.md.
    axum::Json(serde_json::json!({
        "order": {"invoice_number": p.invoice_number, "amount": p.amount},
        "online_to_offline_info": {
            "payment_code": p.payment_code,
            "info": p.info,
            "created_date_utc": wire::iso_utc(p.created_at),
            "expired_date_utc": wire::iso_utc(p.expires_at),
        },
        "customer": {"name": p.customer_name},
        "payment_instruction": [{
            "channel": p.channel.instruction_channel(),
            "language": "en",
            "step": p.channel.steps(),
        }],
    }))
    .into_response()
}
