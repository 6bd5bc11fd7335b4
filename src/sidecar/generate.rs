//! Generate a payment code: validate, store the payment with its exact DOKU request, then
//! send (or replay) that request under the payment's attempt lease.

use time::OffsetDateTime;

use super::{Sidecar, to_time};
use crate::{
    doku::{DokuError, PreparedRequest},
    error::{Error, RETRY_AFTER_DOKU},
    payment::{InvoiceNumber, Payment, PaymentCodeInput},
    store::{AttemptRejection, Created, PaymentDraft, PaymentRecord, StoredRequest},
};

/// Whether a call already holds its payment's attempt lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lease {
    /// Taken when this call created the payment.
    Held,
    /// To be claimed before DOKU is called.
    Claim,
}

/// When the sweeper replays a request whose answer was lost, if the caller has not.
const RECOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether DOKU's 4xx means "not processed" for sure: every 4xx but the credentials (401,
/// 403, reported as `AuthRejected` anyway), 404 (a wrong path or a proxy: says nothing about
/// DOKU), 408 (a timeout at some hop), 409 (a Request-Id DOKU has seen: it holds state for
/// it), 425 and 429 (try later).
fn definitive_rejection(http_status: u16) -> bool {
    (400..500).contains(&http_status)
        && !matches!(http_status, 401 | 403 | 404 | 408 | 409 | 425 | 429)
}

impl Sidecar {
    /// Creates (or returns the already created) payment code for a request.
    #[tracing::instrument(skip_all, fields(invoice = %input.invoice_number))]
    pub async fn generate_payment_code(&self, input: &PaymentCodeInput) -> Result<Payment, Error> {
        let result = self.generate(input).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("o2o_payment_codes_total", "outcome" => outcome).increment(1);
        result
    }

    async fn generate(&self, input: &PaymentCodeInput) -> Result<Payment, Error> {
        let request = input
            .validate(&self.settings.notification_path)
            .map_err(Error::InvalidArgument)?;
        let fingerprint = request.fingerprint();

        if let Some(key) = &request.idempotency_key
            && let Some(rec) = self.store.find_by_idempotency_key(key).await?
        {
            if rec.fingerprint == fingerprint {
                return self.ensure_issued(rec, Lease::Claim).await;
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
            // Kept so that the notification that settles it can link to this trace.
            trace_context: crate::telemetry::current_traceparent(),
            // Created claimed: the first DOKU call needs no transaction of its own to claim.
            attempt_lease_until: Some(now + to_time(self.settings.attempt_lease)),
        };
        let rec = match self.store.create_payment(&draft).await? {
            Created::New(rec) => {
                // One `info` line per call, when its code is issued; this one at `debug`.
                tracing::debug!(request_id = %draft.doku_request.request_id, "payment created");
                return self.ensure_issued(rec, Lease::Held).await;
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
        self.ensure_issued(rec, Lease::Claim).await
    }

    /// Returns the payment if it has a code; DOKU's rejection again, without calling DOKU, if
    /// its request was definitively rejected; otherwise sends (or replays) its stored DOKU
    /// request under the attempt lease (`lease`: already held by this call since the payment
    /// was created, or to be claimed now).
    pub(super) async fn ensure_issued(
        &self,
        rec: PaymentRecord,
        lease: Lease,
    ) -> Result<Payment, Error> {
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
        if lease == Lease::Claim {
            let now = OffsetDateTime::now_utc();
            let lease_until = now + to_time(self.settings.attempt_lease);
            if !self.store.claim_attempt(&invoice, now, lease_until).await? {
                return Err(self.not_claimed(invoice).await?);
            }
        }
        let request = PreparedRequest {
            channel: rec.payment.channel,
            request_id: stored.request_id,
            body: stored.body,
        };
        match self.doku.generate_payment_code(&request).await {
            Ok(mut issued) => {
                // The instructions are fetched before the code is recorded, so that they
                // commit with it; a failed fetch leaves them empty and is not retried (the
                // how-to-pay URLs still lead there).
                if let Some(url) = &issued.how_to_pay_api_url {
                    issued.instructions = self.doku.payment_instructions(url).await;
                }
                // The code, its instructions and the sweeper's first check commit together:
                // one transaction.
                let first_check =
                    OffsetDateTime::now_utc() + to_time(self.settings.first_check_after);
                let rec = self
                    .store
                    .record_issued(&invoice, &issued, Some(first_check))
                    .await?;
                tracing::info!(
                    code = %issued.payment_code,
                    request_id = %request.request_id,
                    "payment code issued"
                );
                Ok(rec.payment)
            }
            Err(e) => Err(self
                .record_failed_attempt(invoice, &request.request_id, e)
                .await?),
        }
    }

    /// The answer for a caller who found another caller holding the payment's lease: that
    /// caller's rejection if it was rejected meanwhile, else "in flight, retry".
    async fn not_claimed(&self, invoice: InvoiceNumber) -> Result<Error, Error> {
        if let Some(now) = self.store.get_payment(&invoice).await?
            && let Some(rejection) = now.rejected_draft()
        {
            return Ok(Error::DokuRejected {
                http_status: rejection.http_status,
                message: rejection.message.clone(),
            });
        }
        Ok(Error::InFlight {
            invoice,
            retry_after: RETRY_AFTER_DOKU,
        })
    }

    /// Records what a failed DOKU attempt means for the payment and returns the caller's
    /// error: an unknown outcome binds the invoice to its Request-Id for good, a definitive
    /// rejection frees it (unless an earlier outcome was unknown), anything else releases the
    /// lease; a lost or unavailable answer is replayed by the sweeper if the caller never
    /// retries.
    async fn record_failed_attempt(
        &self,
        invoice: InvoiceNumber,
        request_id: &str,
        e: DokuError,
    ) -> Result<Error, Error> {
        match &e {
            // DOKU may hold a code for this Request-Id: bound to it for good.
            DokuError::OutcomeUnknown { .. } => self.store.record_outcome_unknown(&invoice).await?,
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
                    .record_rejected(&invoice, request_id, &rejection)
                    .await?;
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
            _ => self.store.release_attempt(&invoice).await?,
        }
        if matches!(
            e,
            DokuError::OutcomeUnknown { .. } | DokuError::Unavailable { .. }
        ) {
            // If the caller never retries, the sweeper replays the request.
            let at = OffsetDateTime::now_utc() + to_time(RECOVER_AFTER);
            self.store.schedule_check(&invoice, Some(at)).await?;
        }
        Ok(Error::from_doku(e, Some(invoice)))
    }
}
