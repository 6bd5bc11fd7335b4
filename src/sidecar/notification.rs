//! Record a verified DOKU notification: compare it with the stored payment
//! ([`report::assess`](super::report::assess)), store it (deduplicated on DOKU's Request-Id) together
//! with the status change and its event in one transaction, then announce the event.
//!
//! A mismatch is stored for audit, logged loudly and never emitted. For an invoice this
//! sidecar never created: PAID, EXPIRED and FAILED create the payment from DOKU's data (DOKU
//! knows the invoice, so it is reserved) and are emitted; a PENDING is stored for audit only:
//! no payment, no event, the invoice stays free.

use time::OffsetDateTime;

use super::{
    Sidecar,
    report::{Assessment, Report, assess},
};
use crate::{
    doku::notification::{NotificationReport, Rejection},
    error::Error,
    payment::{Channel, InvoiceNumber, Payment, PaymentStatus, StatusChange},
    store::{InboundNotification, Recorded, Verdict},
};

/// A notification whose signature the ingress verified.
#[derive(Debug)]
pub struct Notification {
    /// DOKU's `Request-Id` header: the dedupe key.
    pub request_id: String,
    /// When it arrived.
    pub received_at: OffsetDateTime,
    /// The headers kept for audit (JSON, the signature shortened).
    pub audit_headers: String,
    /// The exact body DOKU signed.
    pub body: Vec<u8>,
    /// The body as DOKU's report, or why it could not be read.
    pub report: Result<NotificationReport, Rejection>,
}

/// What recording a notification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// Stored with this verdict (the `verdict` label of `o2o_notifications_total`).
    Stored(&'static str),
    /// This Request-Id was recorded before; nothing changed.
    Duplicate,
    /// A PAID without a date for a reusable code already paid: stored, not emitted.
    UndatedRepeat,
}

impl NotificationOutcome {
    /// The `verdict` label of `o2o_notifications_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stored(label) => label,
            Self::Duplicate => "duplicate",
            Self::UndatedRepeat => "undated_repeat",
        }
    }
}

impl Sidecar {
    /// Records a verified notification; `Ok` means it is durable (acknowledge it), `Err` that
    /// it is not (DOKU must retry).
    pub async fn record_notification(&self, n: Notification) -> Result<NotificationOutcome, Error> {
        let (verdict, change) = match &n.report {
            Ok(report) => verdict(report, self.stored_payment(report).await.as_ref()),
            Err(Rejection::MalformedBody(detail)) => {
                tracing::error!(%detail, "VERIFIED DOKU NOTIFICATION COULD NOT BE PARSED: stored for audit; the sweeper will ask Check Status");
                (
                    Verdict::Mismatch(format!("unparseable body: {detail}")),
                    None,
                )
            }
            Err(other) => (Verdict::Mismatch(format!("{other:?}")), None),
        };
        // Without a change the store creates no payment, so the channel is never read.
        let (change, channel) = match change {
            Some((c, channel)) => {
                let c = StatusChange {
                    doku_request_id: Some(n.request_id.clone()),
                    ..c
                };
                (Some(c), channel)
            }
            None => (None, Channel::Indomaret),
        };
        let label = verdict.label();
        let record = InboundNotification {
            doku_request_id: n.request_id,
            received_at: n.received_at,
            headers: n.audit_headers,
            body: n.body,
            verdict,
            change,
            channel,
        };
        let outcome = match self.store.record_notification(record).await {
            Ok(Recorded::Duplicate) => {
                tracing::info!("duplicate DOKU notification; already recorded");
                NotificationOutcome::Duplicate
            }
            Ok(Recorded::UndatedRepeat) => {
                tracing::error!(
                    "DOKU PAID NOTIFICATION WITHOUT transaction.date FOR A REUSABLE CODE ALREADY PAID: \
                     stored for audit, NOT emitted; it cannot be told from a redelivery under a new \
                     Request-Id. Check the payment in DOKU's Back Office"
                );
                NotificationOutcome::UndatedRepeat
            }
            Ok(Recorded::Stored { event }) => {
                if let Some(event) = event {
                    tracing::info!(seq = event.seq, invoice = %event.invoice, status = event.status.as_str(), "payment event committed");
                    self.announce(event);
                }
                NotificationOutcome::Stored(label)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store DOKU notification; DOKU must retry");
                return Err(e.into());
            }
        };
        metrics::counter!("o2o_notifications_total", "verdict" => outcome.label()).increment(1);
        Ok(outcome)
    }

    /// The stored payment a notification is about, if any; the current span (the
    /// notification's) is linked to the trace that created it. A store that cannot be read
    /// makes the judgement conservative: recording fails the same way and DOKU retries.
    async fn stored_payment(&self, report: &NotificationReport) -> Option<Payment> {
        let invoice = InvoiceNumber::parse(&report.invoice_number).ok()?;
        match self.store.get_payment(&invoice).await {
            Ok(rec) => rec.map(|r| {
                if let Some(creating) = r.trace_context.as_deref() {
                    crate::telemetry::link_to(&tracing::Span::current(), creating);
                }
                r.payment
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stored payment");
                None
            }
        }
    }
}

/// The store's verdict on a verified notification compared with the stored payment of its
/// invoice (`None`: the sidecar did not create it), without I/O, and the change to apply
/// with it and the payment's channel (DOKU's for an invoice the sidecar did not create). An
/// accepted change for a stored payment always carries the stored invoice and amount, and
/// never a payment code other than the stored one.
pub fn verdict(
    report: &NotificationReport,
    stored: Option<&Payment>,
) -> (Verdict, Option<(StatusChange, Channel)>) {
    match assess(Report::notification(report), stored) {
        Assessment::Change { change, channel } => {
            if stored.is_none() {
                if change.status == PaymentStatus::Pending {
                    tracing::warn!(invoice = %change.invoice, "DOKU PENDING notification for an invoice this sidecar did not create: stored for audit only (no payment, no event)");
                } else {
                    tracing::warn!(invoice = %change.invoice, "DOKU notification for an invoice this sidecar did not create: stored and emitted as DOKU sent it");
                }
            }
            (Verdict::Accepted, Some((change, channel)))
        }
        Assessment::UnknownStatus(raw) => {
            tracing::warn!(status = %raw, invoice = %report.invoice_number, "DOKU notification with a status this sidecar does not know: stored, not emitted");
            (Verdict::UnknownStatus(raw), None)
        }
        Assessment::Mismatch(why) => {
            tracing::error!(reason = %why, "DOKU NOTIFICATION DOES NOT MATCH THE STORED PAYMENT: stored for audit, not emitted");
            (Verdict::Mismatch(why.to_string()), None)
        }
    }
}
