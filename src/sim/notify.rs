//! DOKU's payment notifications: the signed `POST` to the payment's notification URL
//! (Request-Target = that URL's path), sent from a background task with DOKU's retry schedule
//! (30 min, 6 h and 12 h after the first attempt, scaled by `notification_retry_scale`) until a
//! `2xx` arrives, and shaped by the notification faults (suppress, duplicate, bad signature,
//! delay). Each attempt is recorded in the delivery list, with its timing and when the next
//! one is due. A notification is kept after it is built, so that it can be resent as it was.
//!
//! The headers go on the wire as DOKU spells them (`Client-Id`, `Request-Id`,
//! `Request-Timestamp`, `Signature`, `Content-Type`): DOKU's own merchant code looks them up
//! case-sensitively, and the simulator's HTTP client writes HTTP/1 names in title case, which
//! is exactly that spelling (`tests/it/wire_case.rs` checks the bytes).

use std::{sync::Weak, time::Duration};

use bytes::Bytes;
use http::header;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::sim::{
    DeliveryAttempt, FaultKind, Inner, NotificationDelivery, SimStatus, api, auth, lock,
    state::{PaymentRecord, Sent, State},
    wire,
};

/// When DOKU tries, counted from the first attempt: at once, then its three retries.
pub(crate) const SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(30 * 60),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(12 * 3600),
];

/// DOKU's schedule multiplied by `scale`; `None` for an offset too large to represent.
pub(crate) fn scaled(offset: Duration, scale: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(offset.as_secs_f64() * scale.max(0.0)).ok()
}

/// The sending of one notification (a payment's, or a resend of it), decided when it was
/// planned.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The notification's `Request-Id`, kept across retries, duplicates and resends.
    pub(crate) request_id: String,
    /// A `suppress` fault: nothing is sent.
    pub(crate) suppressed: bool,
    url: String,
    /// Path of `url`: the Request-Target DOKU signs.
    target: String,
    body: Bytes,
    bad_signature: bool,
    delay: Option<Duration>,
    /// Indexes into [`State::deliveries`], one per copy sent.
    deliveries: Vec<usize>,
}

/// Builds the notification for a payment of `p` that just reached `status` and keeps it for
/// resends. `None` when no notification URL is known (nothing can be sent).
pub(crate) fn build(
    st: &mut State,
    p: &PaymentRecord,
    status: SimStatus,
    now: OffsetDateTime,
) -> Option<Sent> {
    let Some(url) = p.notification_url.clone() else {
        tracing::warn!(
            invoice = %p.invoice_number,
            "doku-sim has no notification URL for this payment; no notification sent"
        );
        return None;
    };
    let mut view = api::txn_view(p, now);
    view.status = status.as_str();
    view.date = now;
    let sent = Sent {
        request_id: uuid::Uuid::new_v4().to_string(),
        invoice_number: p.invoice_number.clone(),
        status,
        url,
        body: wire::notification_body(&view).into(),
    };
    st.sent.insert(sent.request_id.clone(), sent.clone());
    Some(sent)
}

/// Plans the sending of `sent` shaped by the notification `faults` taken for it, and records
/// its deliveries (two for a `duplicate` fault).
pub(crate) fn plan(st: &mut State, sent: &Sent, faults: &[FaultKind], resend: bool) -> Plan {
    let now = OffsetDateTime::now_utc();
    let target = wire::parse_http_url(&sent.url)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/".to_owned());
    let suppressed = faults.contains(&FaultKind::Suppress);
    let duplicate = faults.contains(&FaultKind::Duplicate);
    let bad_signature = faults.contains(&FaultKind::BadSignature);
    let delay = faults.iter().find_map(|f| match f {
        FaultKind::Delay { delay_ms } => Some(Duration::from_millis(*delay_ms)),
        _ => None,
    });
    let first_attempt = (!suppressed).then(|| now + delay.unwrap_or_default());
    let copies = if duplicate { 2 } else { 1 };
    let mut deliveries = Vec::new();
    for copy in 0..copies {
        deliveries.push(st.deliveries.len());
        st.deliveries.push(NotificationDelivery {
            request_id: sent.request_id.clone(),
            created_at: now,
            invoice_number: sent.invoice_number.clone(),
            status: sent.status,
            url: sent.url.clone(),
            attempts: 0,
            last_status: None,
            last_error: None,
            delivered: false,
            duplicate: copy > 0,
            bad_signature,
            suppressed,
            resend,
            history: Vec::new(),
            next_attempt_at: first_attempt,
        });
    }
    Plan {
        request_id: sent.request_id.clone(),
        suppressed,
        url: sent.url.clone(),
        target,
        body: sent.body.clone(),
        bad_signature,
        delay,
        deliveries,
    }
}

/// Sends `plan` until every copy got a `2xx` or DOKU's schedule is used up. Holds the
/// simulator only weakly between attempts, so dropping it ends the task.
pub(crate) async fn deliver(sim: Weak<Inner>, plan: Plan) {
    if let Some(d) = plan.delay {
        tokio::time::sleep(d).await;
    }
    let Some(scale) = sim.upgrade().map(|s| s.cfg.notification_retry_scale) else {
        return;
    };
    let start = Instant::now();
    let wall_start = OffsetDateTime::now_utc();
    for offset in SCHEDULE {
        // A scale so large that the deadline overflows means "never".
        let Some((at, wait)) =
            scaled(offset, scale).and_then(|w| start.checked_add(w).map(|at| (at, w)))
        else {
            break;
        };
        if let Some(inner) = sim.upgrade() {
            let next = time::Duration::try_from(wait)
                .ok()
                .and_then(|w| wall_start.checked_add(w));
            let mut st = lock(&inner.state);
            for &i in &plan.deliveries {
                let d = &mut st.deliveries[i];
                if !d.delivered {
                    d.next_attempt_at = next;
                }
            }
        }
        tokio::time::sleep_until(at).await;
        let Some(inner) = sim.upgrade() else {
            return;
        };
        let mut all_delivered = true;
        for &i in &plan.deliveries {
            if lock(&inner.state).deliveries[i].delivered {
                continue;
            }
            let sent_at = OffsetDateTime::now_utc();
            let began = Instant::now();
            let (status, error) = attempt(&inner, &plan).await;
            let duration_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
            let delivered = status.is_some_and(|s| (200..300).contains(&s));
            tracing::info!(
                request_id = %plan.request_id,
                url = %plan.url,
                // An absent value records nothing (no `Some(..)`/`None` in the line).
                status,
                error = error.as_deref(),
                "doku-sim notification attempt"
            );
            let mut st = lock(&inner.state);
            let d = &mut st.deliveries[i];
            d.attempts += 1;
            d.last_status = status;
            d.last_error.clone_from(&error);
            d.delivered = delivered;
            d.next_attempt_at = None;
            d.history.push(DeliveryAttempt {
                at: sent_at,
                status,
                error,
                duration_ms,
            });
            all_delivered &= delivered;
        }
        if all_delivered {
            return;
        }
    }
    // DOKU's retries are used up: nothing more is due.
    if let Some(inner) = sim.upgrade() {
        let mut st = lock(&inner.state);
        for &i in &plan.deliveries {
            st.deliveries[i].next_attempt_at = None;
        }
    }
}

/// One `POST`, freshly timestamped and signed. Returns the HTTP status or the error.
async fn attempt(inner: &Inner, plan: &Plan) -> (Option<u16>, Option<String>) {
    let cfg = &inner.cfg;
    let (timestamp, signature) = auth::sign_notification(
        cfg,
        &plan.request_id,
        &plan.target,
        &plan.body,
        wire::now(),
        plan.bad_signature,
    );
    let sent = inner
        .http
        .post(&plan.url)
        .header("Client-Id", &cfg.client_id)
        .header("Request-Id", &plan.request_id)
        .header("Request-Timestamp", timestamp)
        .header("Signature", signature)
        .header(header::CONTENT_TYPE, "application/json")
        .body(plan.body.clone())
        .send()
        .await;
    match sent {
        Ok(res) => {
            let status = res.status().as_u16();
            // Read the answer so the connection can be reused; its content does not matter.
            let _ = res.bytes().await;
            (Some(status), None)
        }
        Err(e) => (None, Some(error_chain(&e))),
    }
}

/// `e` and its sources on one line: reqwest's own message alone hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
