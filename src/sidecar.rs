//! The sidecar's operations — generate a payment code, read a status — as domain logic between
//! the callers' transport (`grpc/`) and the outside systems (`store/`, `doku/`).
//!
//! The rules that keep money safe live here:
//! - a request is validated completely before DOKU is called;
//! - the payment and the exact DOKU request are stored *before* DOKU is called, so an answer
//!   lost on the way back is recovered by replaying the same Request-Id and body (DOKU answers
//!   a replay with the original code), never by a second request;
//! - only one caller at a time may talk to DOKU about one payment (a lease in the store);
//! - a DOKU answer is applied only if it describes this payment ([`check_report`]);
//! - a definitive DOKU rejection frees the invoice for a corrected request, unless any attempt
//!   of the payment ever had an unknown outcome (then the invoice stays bound to its
//!   Request-Id, so that a code DOKU may hold is never joined by a second one);
//! - statuses only move forward.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::{
    doku::{DokuClient, DokuError, PreparedRequest, StatusReport, types::ReportedStatus},
    error::Error,
    payment::{
        AmountRule, Event, EventSource, InvoiceNumber, Payment, PaymentCodeInput, PaymentStatus,
        ReportedIdentity, StatusChange, check_report,
    },
    store::{
        AttemptRejection, Created, PaymentDraft, PaymentRecord, Store, StoreError, StoredRequest,
    },
};

/// How long a caller waits before retrying after DOKU was unavailable.
const RETRY_AFTER_DOKU: Duration = Duration::from_secs(2);
/// When the sweeper replays a request whose answer was lost, if the caller has not.
const RECOVER_AFTER: Duration = Duration::from_secs(30);

/// Settings of the domain service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configured public notification path (a per-request URL must keep it).
    pub notification_path: String,
    /// How long one DOKU call may hold a payment's attempt lease: bounds how long other callers
    /// of the same payment wait, and how long a crashed caller blocks it.
    pub attempt_lease: Duration,
    /// When the sweeper first checks a new payment (DOKU: "after 60 seconds").
    pub first_check_after: Duration,
}

/// The domain service behind the gRPC API and the notification ingress.
#[derive(Debug, Clone)]
pub struct Sidecar {
    store: Arc<dyn Store>,
    doku: DokuClient,
    settings: Settings,
    /// Committed events, for live streams. Subscribers read gaps from the store.
    events: broadcast::Sender<Event>,
}

pub(crate) fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::Unavailable(detail) => {
            tracing::error!(%detail, "store unavailable");
            Error::StoreUnavailable
        }
        other => {
            tracing::error!(error = %other, "store error");
            Error::Internal
        }
    }
}

/// Whether DOKU's 4xx means "not processed" for sure: every 4xx but the credentials (401,
/// 403, reported as `AuthRejected` anyway), 404 (a wrong path or a proxy: says nothing about
/// DOKU), 408 (a timeout at some hop), 409 (a Request-Id DOKU has seen: it holds state for
/// it), 425 and 429 (try later).
fn definitive_rejection(http_status: u16) -> bool {
    (400..500).contains(&http_status)
        && !matches!(http_status, 401 | 403 | 404 | 408 | 409 | 425 | 429)
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

impl Sidecar {
    /// A sidecar over `store` and `doku`.
    pub fn new(store: Arc<dyn Store>, doku: DokuClient, settings: Settings) -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            store,
            doku,
            settings,
            events,
        }
    }

    /// The store, for the other parts of the sidecar (ingress, streams, sweeper).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The DOKU client.
    pub fn doku(&self) -> &DokuClient {
        &self.doku
    }

    /// Subscribes to events committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Announces a committed event to live streams (after the commit, never before).
    pub fn publish(&self, event: Event) {
        metrics::counter!("o2o_events_emitted_total", "source" => event.source.as_str().to_ascii_lowercase(), "status" => event.status.as_str().to_ascii_lowercase())
            .increment(1);
        // No receivers is fine: nobody is streaming.
        let _ = self.events.send(event);
    }

    /// Creates (or returns the already created) payment code for a request.
    #[tracing::instrument(skip_all, fields(invoice = %input.invoice_number))]
    pub async fn generate_payment_code(&self, input: &PaymentCodeInput) -> Result<Payment, Error> {
        let result = self.generate(input).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        metrics::counter!("o2o_payment_codes_total", "outcome" => outcome.to_ascii_lowercase())
            .increment(1);
        result
    }

    async fn generate(&self, input: &PaymentCodeInput) -> Result<Payment, Error> {
        let request = input
            .validate(&self.settings.notification_path)
            .map_err(Error::InvalidArgument)?;
        let fingerprint = request.fingerprint();

        if let Some(key) = &request.idempotency_key
            && let Some(rec) = self
                .store
                .find_by_idempotency_key(key)
                .await
                .map_err(store_error)?
        {
            if rec.fingerprint == fingerprint {
                return self.ensure_issued(rec).await;
            }
            // The key of a request DOKU rejected may carry the corrected request for the same
            // invoice (no code exists); anything else is a reused key.
            let replaces_rejected =
                rec.rejected_draft().is_some() && rec.payment.invoice == request.invoice;
            if !replaces_rejected {
                return Err(Error::IdempotencyKeyReused {
                    invoice: rec.payment.invoice,
                });
            }
        }

        let prepared = self.doku.prepare_payment_code(&request);
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let draft = PaymentDraft {
            expire_time: now + time::Duration::minutes(i64::from(request.expiry_minutes)),
            create_time: now,
            fingerprint: fingerprint.clone(),
            doku_request: StoredRequest {
                request_id: prepared.request_id,
                body: prepared.body,
            },
            request,
            trace_context: crate::telemetry::current_traceparent(),
        };
        let rec = match self
            .store
            .create_payment(&draft)
            .await
            .map_err(store_error)?
        {
            Created::New(rec) => {
                tracing::info!(request_id = %draft.doku_request.request_id, "payment created");
                rec
            }
            Created::Existing(rec) if rec.fingerprint == fingerprint => rec,
            Created::Existing(rec) => {
                return Err(Error::InvoiceExists {
                    invoice: rec.payment.invoice,
                });
            }
            Created::IdempotencyKeyTaken(rec) => {
                return Err(Error::IdempotencyKeyReused {
                    invoice: rec.payment.invoice,
                });
            }
        };
        self.ensure_issued(rec).await
    }

    /// Returns the payment if it has a code; DOKU's rejection again, without calling DOKU, if
    /// its request was definitively rejected; otherwise sends (or replays) its stored DOKU
    /// request under the attempt lease.
    async fn ensure_issued(&self, rec: PaymentRecord) -> Result<Payment, Error> {
        if rec.payment.payment_code.is_some() {
            return Ok(rec.payment);
        }
        if let Some(rejection) = rec.rejected_draft() {
            return Err(Error::DokuRejected {
                http_status: rejection.http_status,
                message: rejection.message.clone(),
            });
        }
        let invoice = rec.payment.invoice.clone();
        let Some(stored) = rec.doku_request else {
            // Created from a DOKU notification: DOKU issued the code outside this sidecar.
            return Ok(rec.payment);
        };
        let now = OffsetDateTime::now_utc();
        let claimed = self
            .store
            .claim_attempt(&invoice, now, now + to_time(self.settings.attempt_lease))
            .await
            .map_err(store_error)?;
        if !claimed {
            // Rejected meanwhile by the caller that held the lease: the same answer.
            if let Some(now) = self
                .store
                .get_payment(&invoice)
                .await
                .map_err(store_error)?
                && let Some(rejection) = now.rejected_draft()
            {
                return Err(Error::DokuRejected {
                    http_status: rejection.http_status,
                    message: rejection.message.clone(),
                });
            }
            return Err(Error::InFlight {
                invoice,
                retry_after: RETRY_AFTER_DOKU,
            });
        }
        let request_id = stored.request_id.clone();
        let request = PreparedRequest {
            request_id: stored.request_id,
            body: stored.body,
        };
        match self.doku.generate_payment_code(&request).await {
            Ok(issued) => {
                let rec = self
                    .store
                    .record_issued(&invoice, &issued)
                    .await
                    .map_err(store_error)?;
                let first_check =
                    OffsetDateTime::now_utc() + to_time(self.settings.first_check_after);
                self.store
                    .schedule_check(&invoice, Some(first_check))
                    .await
                    .map_err(store_error)?;
                tracing::info!(code = %issued.payment_code, "payment code issued");
                Ok(rec.payment)
            }
            Err(e) => {
                match &e {
                    // DOKU may hold a code for this Request-Id: bound to it for good.
                    DokuError::OutcomeUnknown { .. } => self
                        .store
                        .record_outcome_unknown(&invoice)
                        .await
                        .map_err(store_error)?,
                    DokuError::Rejected {
                        http_status,
                        message,
                        ..
                    } if definitive_rejection(*http_status) => {
                        let rejection = AttemptRejection {
                            http_status: *http_status,
                            message: message.clone(),
                        };
                        let freed = self
                            .store
                            .record_rejected(&invoice, &request_id, &rejection)
                            .await
                            .map_err(store_error)?;
                        if freed {
                            tracing::info!(
                                %request_id,
                                http_status,
                                "DOKU rejected the request: the invoice is free for a corrected request"
                            );
                        } else {
                            tracing::warn!(
                                %request_id,
                                http_status,
                                "DOKU rejected the request, but an earlier attempt's outcome is unknown: the invoice stays bound to this request"
                            );
                        }
                    }
                    _ => self
                        .store
                        .release_attempt(&invoice)
                        .await
                        .map_err(store_error)?,
                }
                if matches!(
                    e,
                    DokuError::OutcomeUnknown { .. } | DokuError::Unavailable { .. }
                ) {
                    // If the caller never retries, the sweeper replays the request.
                    let at = OffsetDateTime::now_utc() + to_time(RECOVER_AFTER);
                    self.store
                        .schedule_check(&invoice, Some(at))
                        .await
                        .map_err(store_error)?;
                }
                Err(self.doku_error(e, Some(invoice)))
            }
        }
    }

    /// Replays the stored DOKU request of a payment that has no code yet (the sweeper's
    /// recovery after a lost answer). Returns the payment, with its code if DOKU had issued one.
    pub async fn recover_code(&self, rec: PaymentRecord) -> Result<Payment, Error> {
        self.ensure_issued(rec).await
    }

    fn doku_error(&self, e: DokuError, invoice: Option<InvoiceNumber>) -> Error {
        match e {
            DokuError::Unavailable {
                detail,
                retry_after,
            } => {
                tracing::warn!(%detail, "DOKU unavailable");
                Error::DokuUnavailable {
                    retry_after: retry_after.unwrap_or(RETRY_AFTER_DOKU),
                }
            }
            DokuError::OutcomeUnknown { detail } => {
                tracing::warn!(%detail, "DOKU outcome unknown; the stored request will be replayed");
                match invoice {
                    Some(invoice) => Error::DokuOutcomeUnknown {
                        invoice,
                        retry_after: RETRY_AFTER_DOKU,
                    },
                    None => Error::DokuUnavailable {
                        retry_after: RETRY_AFTER_DOKU,
                    },
                }
            }
            DokuError::AuthRejected { http_status, body } => {
                tracing::error!(
                    http_status,
                    %body,
                    "DOKU REJECTED OUR CREDENTIALS: check --doku-client-id, the secret key file and --doku-base-url"
                );
                Error::DokuAuthRejected
            }
            DokuError::Rejected {
                http_status,
                message,
                body,
            } => {
                tracing::warn!(http_status, %body, "DOKU rejected the request");
                Error::DokuRejected {
                    http_status,
                    message,
                }
            }
            DokuError::NotFound { body } => {
                tracing::warn!(%body, "DOKU does not know the invoice");
                match invoice {
                    Some(invoice) => Error::PaymentNotFound { invoice },
                    None => Error::Internal,
                }
            }
        }
    }

    /// The payment of an invoice; with `refresh`, DOKU's Check Status first.
    #[tracing::instrument(skip(self))]
    pub async fn get_status(&self, invoice: &str, refresh: bool) -> Result<Payment, Error> {
        let invoice = InvoiceNumber::parse(invoice).map_err(|e| {
            Error::InvalidArgument(vec![crate::payment::FieldViolation::new(
                "invoice_number",
                e,
            )])
        })?;
        let rec = self
            .store
            .get_payment(&invoice)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Error::PaymentNotFound {
                invoice: invoice.clone(),
            })?;
        // Its only request was rejected: no payment exists at DOKU.
        if rec.rejected_draft().is_some() {
            return Err(Error::PaymentNotFound { invoice });
        }
        if !refresh {
            return Ok(rec.payment);
        }
        let report = match self.doku.check_status(&invoice).await {
            Ok(r) => r,
            // DOKU has never seen an invoice whose code was never issued: nothing to learn.
            Err(DokuError::NotFound { .. }) if rec.payment.payment_code.is_none() => {
                return Ok(rec.payment);
            }
            Err(e) => return Err(self.doku_error(e, Some(invoice))),
        };
        match self.reconcile(&rec, &report).await? {
            Some(payment) => Ok(payment),
            None => Ok(rec.payment),
        }
    }

    /// Applies what Check Status said to a stored payment. Returns the updated payment, or
    /// `None` when nothing changed. An answer that does not describe this payment (another
    /// invoice, no or another amount, another code) changes nothing, is logged with DOKU's
    /// body and counted, and is [`Error::DokuOutcomeUnknown`]: what DOKU knows is unknown.
    pub async fn reconcile(
        &self,
        rec: &PaymentRecord,
        report: &StatusReport,
    ) -> Result<Option<Payment>, Error> {
        let invoice = &rec.payment.invoice;
        let reported = ReportedIdentity {
            invoice_number: report.invoice_number.as_deref(),
            amount: report.amount,
            payment_code: report.payment_code.as_deref(),
        };
        let reported_code =
            match check_report(rec.payment.identity(), reported, AmountRule::Required) {
                Ok(code) => code,
                Err(why) => {
                    metrics::counter!(
                        "o2o_doku_answers_rejected_total",
                        "endpoint" => "check_status",
                        "reason" => why.reason()
                    )
                    .increment(1);
                    tracing::error!(
                        %invoice,
                        reason = why.reason(),
                        %why,
                        body = %report.raw_body,
                        "DOKU CHECK STATUS ANSWER IS NOT ABOUT THIS PAYMENT: not applied"
                    );
                    return Err(Error::DokuOutcomeUnknown {
                        invoice: invoice.clone(),
                        retry_after: RETRY_AFTER_DOKU,
                    });
                }
            };
        let status = match &report.status {
            ReportedStatus::Known(PaymentStatus::Pending) => return Ok(None),
            ReportedStatus::Known(s) => *s,
            ReportedStatus::Unrecognized(raw) => {
                tracing::warn!(%invoice, status = %raw, "DOKU reported a status this sidecar does not know; ignored");
                return Ok(None);
            }
        };
        let change = StatusChange {
            invoice: rec.payment.invoice.clone(),
            status,
            amount: rec.payment.amount,
            payment_code: reported_code.or_else(|| rec.payment.payment_code.clone()),
            occur_time: report.occur_time,
            source: EventSource::Reconciliation,
            doku_request_id: None,
        };
        let applied = self
            .store
            .apply_status(&change)
            .await
            .map_err(store_error)?;
        if let Some(event) = applied.event {
            tracing::info!(
                seq = event.seq,
                status = event.status.as_str(),
                "status changed by reconciliation"
            );
            self.publish(event);
        }
        Ok(Some(applied.record.payment))
    }
}
