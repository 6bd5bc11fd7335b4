//! A payment's status: read from the store, refreshed from DOKU's Check Status when a caller
//! asks (`GetStatus` with `refresh`) or when the sweeper's schedule says so, and the recovery of
//! a code whose answer was lost.

use super::{
    Sidecar,
    generate::Lease,
    report::{Assessment, Report, assess},
};
use crate::{
    doku::{DokuError, StatusReport},
    error::{Error, RETRY_AFTER_DOKU},
    payment::{FieldViolation, InvoiceNumber, Payment, PaymentStatus},
    store::PaymentRecord,
};

/// What a scheduled check of one payment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// DOKU reported a final status, now applied: no more checks are needed.
    Settled(PaymentStatus),
    /// Still pending (or DOKU could not tell): check again later. `recovered_code` says
    /// whether this check learned the code of a request whose answer was lost.
    Pending {
        /// A lost answer's code was recovered by replaying the stored request.
        recovered_code: bool,
    },
    /// DOKU definitively rejected the payment's only request: there is nothing to check.
    Abandoned,
}

impl Sidecar {
    /// The payment of an invoice; with `refresh`, DOKU's Check Status first.
    #[tracing::instrument(skip(self))]
    pub async fn get_status(&self, invoice: &str, refresh: bool) -> Result<Payment, Error> {
        let invoice = InvoiceNumber::parse(invoice)
            .map_err(|e| Error::InvalidArgument(vec![FieldViolation::new("invoice_number", e)]))?;
        let rec =
            self.store
                .get_payment(&invoice)
                .await?
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
            Err(e) => return Err(Error::from_doku(e, Some(invoice))),
        };
        Ok(self
            .apply_check_status(&rec, &report)
            .await?
            .unwrap_or(rec.payment))
    }

    /// The sweeper's check of one due payment: replays the stored request of a payment whose
    /// code was never learned, else asks DOKU's Check Status and applies the answer.
    pub async fn check(&self, rec: PaymentRecord) -> CheckOutcome {
        let invoice = rec.payment.invoice.clone();
        if rec.payment.payment_code.is_none() && rec.doku_request.is_some() {
            return self.recover_code(rec).await;
        }
        let report = match self.doku.check_status(&invoice).await {
            Ok(report) => report,
            Err(DokuError::NotFound { .. }) => {
                tracing::warn!("DOKU does not know this invoice");
                return CheckOutcome::Pending {
                    recovered_code: false,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "Check Status failed");
                return CheckOutcome::Pending {
                    recovered_code: false,
                };
            }
        };
        match self.apply_check_status(&rec, &report).await {
            Ok(Some(p)) if p.status != PaymentStatus::Pending => CheckOutcome::Settled(p.status),
            Ok(_) => CheckOutcome::Pending {
                recovered_code: false,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply Check Status");
                CheckOutcome::Pending {
                    recovered_code: false,
                }
            }
        }
    }

    /// DOKU's answer was lost: replays the stored request (same Request-Id) to learn the code
    /// DOKU issued, if any. A request DOKU definitively rejected is never replayed again.
    async fn recover_code(&self, rec: PaymentRecord) -> CheckOutcome {
        let invoice = rec.payment.invoice.clone();
        let recovered_code = match self.ensure_issued(rec, Lease::Claim).await {
            Ok(p) => p.payment_code.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "could not recover the payment code yet");
                false
            }
        };
        if recovered_code {
            tracing::info!("payment code recovered by replaying the stored request");
        }
        if let Ok(Some(now)) = self.store.get_payment(&invoice).await
            && now.rejected_draft().is_some()
        {
            tracing::info!("DOKU rejected the stored request; the sweeper stops checking it");
            return CheckOutcome::Abandoned;
        }
        CheckOutcome::Pending { recovered_code }
    }

    /// Applies what Check Status said to a stored payment. Returns the updated payment, or
    /// `None` when nothing changed. An answer that does not describe this payment (another
    /// invoice, no or another amount, another code, another channel) changes nothing, is
    /// logged with DOKU's body and counted, and is [`Error::DokuOutcomeUnknown`]: what DOKU
    /// knows is unknown.
    async fn apply_check_status(
        &self,
        rec: &PaymentRecord,
        report: &StatusReport,
    ) -> Result<Option<Payment>, Error> {
        let invoice = &rec.payment.invoice;
        let change = match assess(Report::check_status(report), Some(&rec.payment)) {
            Assessment::Change { change, .. } if change.status == PaymentStatus::Pending => {
                return Ok(None);
            }
            Assessment::Change { change, .. } => change,
            Assessment::UnknownStatus(raw) => {
                tracing::warn!(%invoice, status = %raw, "DOKU reported a status this sidecar does not know; ignored");
                return Ok(None);
            }
            Assessment::Mismatch(why) => {
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
        let applied = self.store.apply_status(&change).await?;
        if let Some(event) = applied.event {
            tracing::info!(
                seq = event.seq,
                status = event.status.as_str(),
                "status changed by reconciliation"
            );
            self.announce(event);
        }
        Ok(Some(applied.record.payment))
    }
}
