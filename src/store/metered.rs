//! A [`Store`] decorator that records how long every store operation takes
//! (`o2o_store_operation_duration_seconds{op}`) and how many failed
//! (`o2o_store_errors_total{op}`), whatever the backend.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    Applied, AttemptRejection, Created, Election, InboundNotification, PaymentDraft, PaymentRecord,
    Recorded, RejectedAttempt, Store, StoreError,
};
use crate::payment::{Event, InvoiceNumber, IssuedCode, StatusChange};

/// Wraps a store and measures it.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
}

impl Metered {
    /// Measures `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }
}

/// The `op` label of the store metrics: every operation [`Metered`] measures.
pub const OPS: [&str; 18] = [
    "ping",
    "create_payment",
    "find_by_idempotency_key",
    "get_payment",
    "claim_attempt",
    "release_attempt",
    "record_outcome_unknown",
    "record_rejected",
    "rejected_attempts",
    "record_issued",
    "apply_status",
    "record_notification",
    "events_after",
    "last_seq",
    "pruned_through",
    "prune_events",
    "due_for_check",
    "schedule_check",
];

async fn measured<T>(
    op: &'static str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = tokio::time::Instant::now();
    let result = f.await;
    let took: Duration = started.elapsed();
    metrics::histogram!("o2o_store_operation_duration_seconds", "op" => op)
        .record(took.as_secs_f64());
    if result.is_err() {
        metrics::counter!("o2o_store_errors_total", "op" => op).increment(1);
    }
    result
}

#[async_trait]
impl Store for Metered {
    async fn ping(&self) -> Result<(), StoreError> {
        measured("ping", self.inner.ping()).await
    }

    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        measured("create_payment", self.inner.create_payment(draft)).await
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        measured(
            "find_by_idempotency_key",
            self.inner.find_by_idempotency_key(key),
        )
        .await
    }

    async fn get_payment(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        measured("get_payment", self.inner.get_payment(invoice)).await
    }

    async fn claim_attempt(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        measured(
            "claim_attempt",
            self.inner.claim_attempt(invoice, now, until),
        )
        .await
    }

    async fn release_attempt(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        measured("release_attempt", self.inner.release_attempt(invoice)).await
    }

    async fn record_outcome_unknown(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        measured(
            "record_outcome_unknown",
            self.inner.record_outcome_unknown(invoice),
        )
        .await
    }

    async fn record_rejected(
        &self,
        invoice: &InvoiceNumber,
        request_id: &str,
        rejection: &AttemptRejection,
    ) -> Result<bool, StoreError> {
        measured(
            "record_rejected",
            self.inner.record_rejected(invoice, request_id, rejection),
        )
        .await
    }

    async fn rejected_attempts(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Vec<RejectedAttempt>, StoreError> {
        measured("rejected_attempts", self.inner.rejected_attempts(invoice)).await
    }

    async fn record_issued(
        &self,
        invoice: &InvoiceNumber,
        issued: &IssuedCode,
        first_check: Option<OffsetDateTime>,
    ) -> Result<PaymentRecord, StoreError> {
        measured(
            "record_issued",
            self.inner.record_issued(invoice, issued, first_check),
        )
        .await
    }

    async fn apply_status(&self, change: &StatusChange) -> Result<Applied, StoreError> {
        measured("apply_status", self.inner.apply_status(change)).await
    }

    async fn record_notification(
        &self,
        notification: InboundNotification,
    ) -> Result<Recorded, StoreError> {
        measured(
            "record_notification",
            self.inner.record_notification(notification),
        )
        .await
    }

    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        measured("events_after", self.inner.events_after(after, limit)).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        measured("last_seq", self.inner.last_seq()).await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        measured("pruned_through", self.inner.pruned_through()).await
    }

    async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        measured("prune_events", self.inner.prune_events(before)).await
    }

    async fn due_for_check(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        measured("due_for_check", self.inner.due_for_check(now, limit)).await
    }

    async fn schedule_check(
        &self,
        invoice: &InvoiceNumber,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        measured("schedule_check", self.inner.schedule_check(invoice, at)).await
    }

    fn commit_hints(&self) -> Option<watch::Receiver<u64>> {
        self.inner.commit_hints()
    }

    fn sweeper_election(&self) -> Box<dyn Election> {
        self.inner.sweeper_election()
    }
}
