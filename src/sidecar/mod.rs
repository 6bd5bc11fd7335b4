//! The domain service: every use case of the sidecar, end to end, between the transports
//! (`grpc/` for callers, [`notify`](crate::notify) for DOKU's notifications, the
//! [`reconcile`](crate::reconcile) sweeper's schedule) and the outside systems (`store/`,
//! `doku/`). The transports decode, authenticate and answer; every decision about a payment is
//! made here, and only here is the store written or DOKU called.
//!
//! - [`generate`]: create (or return the already created) payment code;
//! - [`check`]: a payment's status, refreshed from DOKU's Check Status on request or by the
//!   sweeper, and the recovery of a code whose answer was lost;
//! - [`notification`]: record a verified DOKU notification;
//! - [`report`]: the one rule for believing what DOKU reports about a payment;
//! - events: [`Sidecar::subscribe`] and [`Sidecar::events_after`] for streams. An event is
//!   announced to live streams by the use case that committed it, right after the commit
//!   (`Sidecar::announce` is private: no path can append an event and forget to announce it).
//!
//! The rules that keep money safe live here:
//! - a request is validated completely before DOKU is called;
//! - the payment and the exact DOKU request are stored *before* DOKU is called, so an answer
//!   lost on the way back is recovered by replaying the same Request-Id and body (DOKU answers
//!   a replay with the original code), never by a second request;
//! - only one caller at a time may talk to DOKU about one payment (a lease in the store);
//! - a DOKU report is applied only if it describes this payment ([`report::assess`]);
//! - a definitive DOKU rejection frees the invoice for a corrected request, unless any attempt
//!   of the payment ever had an unknown outcome (then the invoice stays bound to its
//!   Request-Id, so that a code DOKU may hold is never joined by a second one);
//! - statuses only move forward.

pub mod check;
pub mod generate;
pub mod notification;
pub mod report;

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};

use crate::{
    doku::DokuClient,
    error::Error,
    payment::{Event, InvoiceNumber},
    store::{PaymentRecord, Store},
};

pub use check::CheckOutcome;
pub use notification::{Notification, NotificationOutcome};

/// Settings of the domain service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configured public notification path (a per-request URL must keep it).
    pub notification_path: String,
    /// How long one DOKU call may hold a payment's attempt lease: bounds how long other callers
    /// of the same payment wait, and how long a crashed caller blocks it. Derive it from the
    /// DOKU client's own bound ([`DokuClient::worst_case_call`]).
    pub attempt_lease: Duration,
    /// When the sweeper first checks a new payment (DOKU: "after 60 seconds").
    pub first_check_after: Duration,
}

/// The domain service behind the gRPC API, the notification ingress and the sweeper.
#[derive(Debug, Clone)]
pub struct Sidecar {
    store: Arc<dyn Store>,
    doku: DokuClient,
    settings: Settings,
    /// Committed events, for live streams. Subscribers read gaps from the store.
    events: broadcast::Sender<Event>,
}

/// What a new stream subscribes to before it reads the store, so that nothing committed
/// after the read is missed.
#[derive(Debug)]
pub struct Subscription {
    /// Events committed by this replica from now on.
    pub live: broadcast::Receiver<Event>,
    /// The newest `seq` committed by any replica sharing the store, if the store tells.
    pub hints: Option<watch::Receiver<u64>>,
}

/// Where a `StreamNotifications` stream begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// After the newest event: only events committed from now on.
    Now,
    /// With the oldest event the log still retains (everything not yet pruned).
    Oldest,
    /// After the event at this position (a resume token's).
    After(u64),
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

    /// Announces a committed event to live streams (after the commit, never before).
    fn announce(&self, event: Event) {
        metrics::counter!(
            "o2o_events_emitted_total",
            "source" => event.source.label(),
            "status" => event.status.label()
        )
        .increment(1);
        // No receivers is fine: nobody is streaming.
        let _ = self.events.send(event);
    }

    /// Subscribes to events committed from now on (read the store after this, not before).
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            live: self.events.subscribe(),
            hints: self.store.commit_hints(),
        }
    }

    /// The position a stream starts after (its first event is the next one): the newest
    /// event for [`StreamFrom::Now`], the last pruned one for [`StreamFrom::Oldest`] (so the
    /// oldest retained event comes first), or a resume token's position if the log still
    /// retains what follows it and has reached it.
    pub async fn stream_start(&self, from: StreamFrom) -> Result<u64, Error> {
        let last = self.store.last_seq().await?;
        let seq = match from {
            StreamFrom::Now => return Ok(last),
            StreamFrom::Oldest => return Ok(self.store.pruned_through().await?),
            StreamFrom::After(seq) => seq,
        };
        if seq > last {
            return Err(Error::ResumeTokenAhead { last });
        }
        let pruned = self.store.pruned_through().await?;
        if seq < pruned {
            return Err(Error::ResumeTokenExpired { oldest: pruned });
        }
        Ok(seq)
    }

    /// At most `limit` committed events after position `after`, oldest first.
    pub async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, Error> {
        Ok(self.store.events_after(after, limit).await?)
    }

    /// Payments whose next check is due (the sweeper's work list), at most `limit`.
    pub async fn due_for_check(&self, limit: u32) -> Result<Vec<PaymentRecord>, Error> {
        Ok(self
            .store
            .due_for_check(OffsetDateTime::now_utc(), limit)
            .await?)
    }

    /// When the sweeper checks a payment next (`None`: never again).
    pub async fn schedule_check(
        &self,
        invoice: &InvoiceNumber,
        at: Option<OffsetDateTime>,
    ) -> Result<(), Error> {
        Ok(self.store.schedule_check(invoice, at).await?)
    }
}
