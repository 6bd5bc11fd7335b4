//! The HTTP ingress for DOKU's payment notifications.
//!
//! For each `POST` on the configured notification path:
//! 1. read the raw body (at most `max_notification_bytes`, else `413`);
//! 2. verify `Signature` over those exact bytes with Request-Target = the configured public
//!    path, in constant time, with the current secret key and then with keys replaced within
//!    the rotation grace window (`o2o_notifications_verified_total{key="current|previous"}`
//!    counts which one verified); a missing header or a bad signature is `401`, nothing
//!    stored;
//! 3. parse leniently and check the notification against the stored payment (invoice, amount,
//!    payment code: [`check_report`], the rule Check Status answers pass too); a mismatch is
//!    stored for audit, logged loudly, answered `200` (DOKU must not retry forever) and never
//!    emitted. For an invoice this sidecar never created: PAID, EXPIRED and FAILED create the
//!    payment from DOKU's data (DOKU knows the invoice, so it is reserved) and are emitted; a
//!    PENDING is stored for audit only: no payment, no event, the invoice stays free;
//! 4. record it (dedupe on DOKU's Request-Id) together with the status change and its event in
//!    one transaction, then answer `200`; a store failure is `503`, so DOKU retries and nothing
//!    unstored is ever acknowledged;
//! 5. after the commit, announce the event to live streams (never delaying the answer).

use std::time::Duration;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::{
    doku::{
        notification::{self, NotificationHeaders, NotificationReport, Rejection},
        parse_doku_time,
        types::ReportedStatus,
    },
    payment::{
        Amount, AmountRule, Channel, EventSource, InvoiceNumber, Payment, PaymentCode,
        PaymentStatus, ReportedIdentity, StatusChange, check_report,
    },
    secret::{KeyRole, SecretKeySource},
    sidecar::Sidecar,
    store::{InboundNotification, Recorded, Verdict},
};

/// What the ingress needs.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// Domain operations and the store.
    pub sidecar: Sidecar,
    /// Client-Id DOKU must send.
    pub client_id: String,
    /// Secret Key to verify with (current and, within the grace window, replaced ones).
    pub key: SecretKeySource,
    /// Public notification path (the signed Request-Target).
    pub path: String,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Request-Timestamp skew beyond which a notification is logged and counted.
    pub skew_tolerance: Duration,
    /// Whether a skewed notification is rejected (401) instead of only logged.
    pub reject_skewed: bool,
}

/// The notification router: `POST {path}`.
pub fn router(ingress: Ingress) -> Router {
    let path = ingress.path.clone();
    let limit = ingress.max_bytes;
    Router::new()
        .route(&path, post(receive))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingress)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Headers kept for audit; the signature is shortened so the audit table never holds a
/// complete MAC.
fn audit_headers(h: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for name in [
        "client-id",
        "request-id",
        "request-timestamp",
        "content-type",
        "user-agent",
        "x-forwarded-for",
    ] {
        if let Some(v) = header(h, name) {
            map.insert(name.to_owned(), v.into());
        }
    }
    if let Some(sig) = header(h, "signature") {
        let short: String = sig.chars().take(16).collect();
        map.insert("signature".into(), format!("{short}…").into());
    }
    serde_json::Value::Object(map).to_string()
}

async fn receive(State(ingress): State<Ingress>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = NotificationHeaders {
        client_id: header(&headers, "client-id"),
        request_id: header(&headers, "request-id"),
        request_timestamp: header(&headers, "request-timestamp"),
        signature: header(&headers, "signature"),
    };
    // The current key first, then keys replaced within the grace window (DOKU may sign a
    // late delivery or a retry with the key it had before the rotation).
    let keys = ingress.key.verification_keys();
    let key_bytes: Vec<&[u8]> = keys
        .iter()
        .map(|(_, k)| k.expose_secret().as_bytes())
        .collect();
    let verified = notification::verify(&h, &body, &ingress.client_id, &key_bytes, &ingress.path);
    if let Ok(i) = verified {
        let role = keys.get(i).map_or(KeyRole::Current, |(role, _)| *role);
        metrics::counter!("o2o_notifications_verified_total", "key" => role.as_str()).increment(1);
        if role == KeyRole::Previous {
            tracing::info!(
                request_id = h.request_id.unwrap_or(""),
                "DOKU notification verified with the previous secret key (rotation grace window)"
            );
        }
    }
    if let Err(rejection) = verified {
        metrics::counter!("o2o_notifications_total", "verdict" => "bad_signature").increment(1);
        tracing::warn!(
            reason = ?rejection,
            request_id = h.request_id.unwrap_or(""),
            bytes = body.len(),
            "DOKU notification rejected: not verified"
        );
        return StatusCode::UNAUTHORIZED;
    }
    if let Some(ts) = h.request_timestamp.and_then(parse_doku_time) {
        let skew = (OffsetDateTime::now_utc() - ts).abs();
        if skew > time::Duration::try_from(ingress.skew_tolerance).unwrap_or(time::Duration::MAX) {
            metrics::counter!("o2o_notification_timestamp_skewed_total").increment(1);
            tracing::warn!(
                skew_seconds = skew.whole_seconds(),
                rejected = ingress.reject_skewed,
                request_id = h.request_id.unwrap_or(""),
                "notification Request-Timestamp is far from our clock"
            );
            if ingress.reject_skewed {
                metrics::counter!("o2o_notifications_total", "verdict" => "skewed").increment(1);
                return StatusCode::UNAUTHORIZED;
            }
        }
    }
    // verify() checked that these headers are present.
    let request_id = h.request_id.unwrap_or_default().to_owned();
    let span = tracing::info_span!("notification", %request_id);
    ingest(ingress, headers, body, request_id)
        .instrument(span)
        .await
}

/// Steps 3 to 5 for a verified notification.
async fn ingest(
    ingress: Ingress,
    headers: HeaderMap,
    body: Bytes,
    request_id: String,
) -> StatusCode {
    let (verdict, change) = match notification::parse(&body) {
        Ok(report) => {
            let (verdict, change) = judge(&ingress, report).await;
            let change = change.map(|c| StatusChange {
                doku_request_id: Some(request_id.clone()),
                ..c
            });
            (verdict, change)
        }
        Err(Rejection::MalformedBody(detail)) => {
            tracing::error!(%detail, "VERIFIED DOKU NOTIFICATION COULD NOT BE PARSED: stored for audit; the sweeper will ask Check Status");
            (
                Verdict::Mismatch(format!("unparseable body: {detail}")),
                None,
            )
        }
        Err(other) => (Verdict::Mismatch(format!("{other:?}")), None),
    };
    let record = InboundNotification {
        doku_request_id: request_id.clone(),
        received_at: OffsetDateTime::now_utc(),
        headers: audit_headers(&headers),
        body: body.to_vec(),
        verdict: verdict.clone(),
        change,
        channel: Channel::Indomaret,
    };
    match ingress.sidecar.store().record_notification(&record).await {
        Ok(Recorded::Duplicate) => {
            metrics::counter!("o2o_notifications_total", "verdict" => "duplicate").increment(1);
            tracing::info!("duplicate DOKU notification; already recorded");
            StatusCode::OK
        }
        Ok(Recorded::UndatedRepeat) => {
            metrics::counter!("o2o_notifications_total", "verdict" => "undated_repeat")
                .increment(1);
            tracing::error!(
                "DOKU PAID NOTIFICATION WITHOUT transaction.date FOR A REUSABLE CODE ALREADY PAID: \
                 stored for audit, NOT emitted; it cannot be told from a redelivery under a new \
                 Request-Id. Check the payment in DOKU's Back Office"
            );
            StatusCode::OK
        }
        Ok(Recorded::Stored { event }) => {
            let label = match &verdict {
                Verdict::Accepted => "accepted",
                Verdict::Mismatch(_) => "mismatch",
                Verdict::UnknownStatus(_) => "unknown_status",
                Verdict::UndatedRepeat => "undated_repeat",
            };
            metrics::counter!("o2o_notifications_total", "verdict" => label).increment(1);
            if let Some(event) = event {
                tracing::info!(seq = event.seq, invoice = %event.invoice, status = event.status.as_str(), "payment event committed");
                ingress.sidecar.publish(event);
            }
            StatusCode::OK
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store DOKU notification; answering 503 so that DOKU retries");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// Reads the stored payment and compares the notification with it.
async fn judge(ingress: &Ingress, report: NotificationReport) -> (Verdict, Option<StatusChange>) {
    let stored = match InvoiceNumber::parse(&report.invoice_number) {
        Ok(invoice) => match ingress.sidecar.store().get_payment(&invoice).await {
            Ok(p) => p,
            Err(e) => {
                // Recording will fail the same way and answer 503; judge conservatively.
                tracing::warn!(error = %e, "cannot read the stored payment");
                None
            }
        },
        Err(_) => None,
    };
    if let Some(creating) = stored.as_ref().and_then(|r| r.trace_context.as_deref()) {
        crate::telemetry::link_to(&tracing::Span::current(), creating);
    }
    assess(report, stored.as_ref().map(|r| &r.payment))
}

/// Compares a verified notification with the stored payment of its invoice (`None`: the
/// sidecar did not create it), without I/O. An accepted change for a stored payment always
/// carries the stored invoice and amount, and never a payment code other than the stored one.
pub fn assess(
    report: NotificationReport,
    stored: Option<&Payment>,
) -> (Verdict, Option<StatusChange>) {
    let Ok(invoice) = InvoiceNumber::parse(&report.invoice_number) else {
        return mismatch(format!(
            "invoice number {:?} is not valid",
            report.invoice_number
        ));
    };
    let Ok(amount) = Amount::new(report.amount) else {
        return mismatch(format!("amount {} is not valid", report.amount));
    };
    let code = match report.payment_code.as_deref().map(PaymentCode::parse) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return mismatch(e),
    };
    let status = match report.status {
        ReportedStatus::Known(s) => s,
        ReportedStatus::Unrecognized(raw) => {
            tracing::warn!(status = %raw, %invoice, "DOKU notification with a status this sidecar does not know: stored, not emitted");
            return (Verdict::UnknownStatus(raw), None);
        }
    };
    if let Some(p) = stored {
        // The same rule as for Check Status answers: this notification must describe the
        // stored payment (invoice, amount, and a code equal to the stored one).
        let reported = ReportedIdentity {
            invoice_number: Some(&report.invoice_number),
            amount: Some(report.amount),
            payment_code: report.payment_code.as_deref(),
        };
        if let Err(why) = check_report(p.identity(), reported, AmountRule::Required) {
            return mismatch(why.to_string());
        }
    } else if status == PaymentStatus::Pending {
        tracing::warn!(%invoice, "DOKU PENDING notification for an invoice this sidecar did not create: stored for audit only (no payment, no event)");
    } else {
        tracing::warn!(%invoice, "DOKU notification for an invoice this sidecar did not create: stored and emitted as DOKU sent it");
    }
    let change = StatusChange {
        invoice,
        status,
        amount,
        payment_code: code,
        // Absent stays absent: the store decides what an undated payment means.
        occur_time: report.occur_time,
        source: EventSource::DokuNotification,
        doku_request_id: None,
    };
    (Verdict::Accepted, Some(change))
}

fn mismatch(reason: String) -> (Verdict, Option<StatusChange>) {
    tracing::error!(%reason, "DOKU NOTIFICATION DOES NOT MATCH THE STORED PAYMENT: stored for audit, not emitted");
    (Verdict::Mismatch(reason), None)
}
