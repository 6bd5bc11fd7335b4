//! DOKU's payment notifications: the signed `POST` to the payment's notification URL
//! (Request-Target = that URL's path), sent from a background task with DOKU's retry schedule
//! (30 min, 6 h and 12 h after the first attempt, scaled by `notification_retry_scale`) until a
//! `2xx` arrives, and shaped by the notification faults (suppress, duplicate, bad signature,
//! delay). Each attempt is recorded in the delivery list.

use std::{sync::Weak, time::Duration};

use bytes::Bytes;
use http::header;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::sim::{
    FaultKind, Inner, NotificationDelivery, SimStatus, api, auth, lock,
    state::{PaymentRecord, State},
    wire,
};

/// When DOKU tries, counted from the first attempt: at once, then its three retries.
const SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(30 * 60),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(12 * 3600),
];

/// One notification to send, decided when the payment happened.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The notification's `Request-Id`, kept across retries and duplicates.
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

/// Builds the notification for a payment of `p` that just reached `status`, and records its
/// deliveries. `None` when no notification URL is known (nothing can be sent).
pub(crate) fn plan(
    st: &mut State,
    p: &PaymentRecord,
    status: SimStatus,
    now: OffsetDateTime,
    faults: &[FaultKind],
) -> Option<Plan> {
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
    let body: Bytes = wire::notification_body(&view).into();
    let target = wire::parse_http_url(&url)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/".to_owned());
    let suppressed = faults.contains(&FaultKind::Suppress);
    let duplicate = faults.contains(&FaultKind::Duplicate);
    let bad_signature = faults.contains(&FaultKind::BadSignature);
    let delay = faults.iter().find_map(|f| match f {
        FaultKind::Delay { delay_ms } => Some(Duration::from_millis(*delay_ms)),
        _ => None,
    });
    let request_id = uuid::Uuid::new_v4().to_string();
    let copies = if duplicate { 2 } else { 1 };
    let mut deliveries = Vec::new();
    for copy in 0..copies {
        deliveries.push(st.deliveries.len());
        st.deliveries.push(NotificationDelivery {
            request_id: request_id.clone(),
            invoice_number: p.invoice_number.clone(),
            status,
            url: url.clone(),
            attempts: 0,
            last_status: None,
            last_error: None,
            delivered: false,
            duplicate: copy > 0,
            bad_signature,
            suppressed,
        });
    }
    Some(Plan {
        request_id,
        suppressed,
        url,
        target,
        body,
        bad_signature,
        delay,
        deliveries,
    })
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
    for offset in SCHEDULE {
        let wait = Duration::try_from_secs_f64(offset.as_secs_f64() * scale.max(0.0))
            .unwrap_or(Duration::MAX);
        // A scale so large that the deadline overflows means "never".
        let Some(at) = start.checked_add(wait) else {
            return;
        };
        tokio::time::sleep_until(at).await;
        let Some(inner) = sim.upgrade() else {
            return;
        };
        let mut all_delivered = true;
        for &i in &plan.deliveries {
            if lock(&inner.state).deliveries[i].delivered {
                continue;
            }
            let (status, error) = attempt(&inner, &plan).await;
            let delivered = status.is_some_and(|s| (200..300).contains(&s));
            tracing::info!(
                request_id = %plan.request_id,
                url = %plan.url,
                status = ?status,
                error = ?error,
                "doku-sim notification attempt"
            );
            let mut st = lock(&inner.state);
            let d = &mut st.deliveries[i];
            d.attempts += 1;
            d.last_status = status;
            d.last_error = error;
            d.delivered = delivered;
            all_delivered &= delivered;
        }
        if all_delivered {
            return;
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
