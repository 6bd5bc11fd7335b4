//! Durable state: payments, the event log and the audit trail of DOKU notifications.
//!
//! One trait, [`Store`], with a SQLite implementation (one pod; the default) and a PostgreSQL
//! one (many replicas). Only this module writes SQL. The same test suite runs against every
//! implementation.
//!
//! # Invariants
//!
//! - One row per invoice in `payments`. A payment's `payment_code` is set at most once: a
//!   different code for the same invoice is refused ([`StoreError::CodeConflict`]), so one
//!   invoice can never carry two codes.
//! - Every payment keeps the exact DOKU request (Request-Id and body bytes) of its draft;
//!   every retry sends those same bytes with that same Request-Id. Only a draft DOKU
//!   definitively rejected is ever replaced (see below).
//! - A payment's status only moves forward by
//!   [`PaymentStatus::rank`](crate::payment::PaymentStatus::rank). Each forward move is
//!   appended to `events` in the same transaction. A reusable code that is paid again appends
//!   another PAID event (one per DOKU notification Request-Id).
//! - `events.seq` is strictly increasing in commit order and never reused: a reader that has
//!   seen `seq = n` will never later see an event with `seq < n` appear.
//! - A DOKU notification Request-Id is recorded at most once (`notifications`); a repeat
//!   changes nothing.
//! - **A definitive rejection frees the invoice, nothing else does.** [`Store::record_rejected`]
//!   marks the draft rejected only if it is still the draft of that Request-Id, has no code,
//!   is PENDING and no attempt of it ever had an unknown outcome ([`Store::record_outcome_unknown`],
//!   or a lease that expired unreleased, which [`Store::claim_attempt`] records when it takes
//!   the lease over). The rejected attempt is copied to `payment_attempts` for audit; the
//!   sweeper never checks a rejected draft and a lease is never granted on one.
//!   [`Store::create_payment`] with a *different* fingerprint replaces a rejected draft (new
//!   Request-Id, body, key and times; atomically, so of racing replacements exactly one wins);
//!   with the same fingerprint it returns the rejected draft unchanged.
//! - Migrations are versioned and run at start-up.
//!
//! # Details every implementation shares
//!
//! - Times are kept as whole seconds (DOKU's are); a sub-second part is dropped, and records
//!   and events are returned as stored.
//! - **Repeat payments of a reusable code are counted once each, and only once.** A PAID on a
//!   reusable code whose payment is already PAID is a new payment (a new event) only if it
//!   comes from an accepted notification with a new Request-Id that carries
//!   `transaction.date` ([`StatusChange::occur_time`] is `Some`), and no PAID event of that
//!   invoice has that `occur_time` (that would be the same payment, redelivered under a new
//!   Request-Id or seen first by reconciliation). Such a PAID *without* a date cannot be told
//!   from a redelivery: it is stored for audit with verdict `UNDATED_REPEAT`
//!   ([`Recorded::UndatedRepeat`]) and not emitted. Reconciliation never repeats a PAID: Check
//!   Status cannot tell one payment of a reusable code from the next.
//! - An undated change that *is* emitted (a first PAID, an EXPIRED) gets the time the sidecar
//!   learned it: the notification's receive time, or the time of the Check Status answer.
//! - An accepted notification for an invoice the store does not know creates the payment from
//!   DOKU's data and emits it when it is PAID, EXPIRED or FAILED (DOKU knows the invoice, so it
//!   is reserved); a PENDING one is only stored in `notifications`: no payment row, no event,
//!   and the invoice stays free for a request.
//! - [`Store::record_issued`] with the code already stored fills in how-to-pay URLs and
//!   instructions still missing and ends the lease; it keeps the stored times, and never
//!   replaces stored instructions.
//! - [`Store::prune_events`] removes a prefix of the log: every event up to the newest one
//!   *recorded* (not occurred: a late notification may carry an old time) before the cutoff.
//!   [`Store::last_seq`] never goes down, even when the newest events were pruned.
//! - [`Store::schedule_check`] with `Some(at)` sets the time and adds one to `check_count`;
//!   with `None` it clears the time and leaves the count.
//! - Backends: [`sqlite`] (one pod) and [`postgres`] (many replicas); [`open`] picks one from
//!   the URL. `conformance.rs` is the test suite both pass.
//! - What the backends share is written once: `decide.rs` (the rules above as plain
//!   functions), `shared.rs` (every operation's statements, and the one [`Store`]
//!   implementation for both), `sql.rs` (statements as SQL text and parameters, with the few
//!   that differ per engine in a `Dialect`), `rows.rs` (row shapes and their decoding). A
//!   backend file holds only its connections, its dialect, its error mapping and what its
//!   concurrency makes its own.
//!
//! # Many replicas
//!
//! Two more things let several sidecars share one store and behave as one:
//!
//! - [`Store::commit_hints`]: a wake-up when *any* process commits an event, carrying the
//!   highest seq known to be committed. It is only a hint: a stream that wakes up reads the
//!   log with [`Store::events_after`]. A backend only one process writes to returns `None`
//!   (the sidecar's in-process fan-out already sees every commit).
//! - [`Store::sweeper_election`]: the right to run the reconciliation sweeper, held by one
//!   replica at a time ([`Election`]).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::payment::{
    Channel, Event, InvoiceNumber, IssuedCode, NewPayment, Payment, PaymentCode, StatusChange,
};

pub mod cache;
#[cfg(test)]
mod conformance;
mod decide;
mod group;
mod migrate;
pub mod postgres;
mod rows;
mod shared;
mod sql;
pub mod sqlite;

pub mod metered;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Opens the store a `--store` URL names (`sqlite://PATH`, or `postgres://…` /
/// `postgresql://…`), running its migrations, so that callers pick a backend by
/// configuration alone.
///
/// An unsupported scheme is [`StoreError::Unavailable`] (the store cannot be reached as
/// configured); the message names the scheme only, never the URL, which may hold a password.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// How long [`open`] waits for another process to let go of a SQLite store (a previous
/// sidecar still draining) before it gives up.
const SOLE_WRITER_WAIT: Duration = Duration::from_secs(5);

/// [`open`] with connection settings (used by PostgreSQL; SQLite has its own fixed ones).
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match Backend::of(url).map_err(StoreError::Unavailable)? {
        Backend::Sqlite => {
            // One sidecar per SQLite file, so its payments can be read from memory.
            let path = sqlite::database_path(url)?;
            let sole = cache::SoleWriter::acquire(&path, SOLE_WRITER_WAIT).await?;
            let store = Arc::new(SqliteStore::open(url).await?);
            Ok(Arc::new(cache::Cached::new(store, Some(sole))))
        }
        Backend::Postgres => Ok(Arc::new(PostgresStore::open_with(url, options).await?)),
    }
}

/// The backend a store URL names: the one scheme check, used by [`open_with`] and by the
/// configuration, which refuses a bad `--store` before anything starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:…`
    Sqlite,
    /// `postgres://…` or `postgresql://…`
    Postgres,
}

impl Backend {
    /// The backend of `url`, or why there is none; the message names the scheme only, never
    /// the URL, which may hold a password.
    pub fn of(url: &str) -> Result<Self, String> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => Err(format!(
                "unsupported store URL scheme {scheme:?}; expected sqlite:// or postgres://"
            )),
        }
    }
}

/// Connection settings of a shared store (`--store-pool-size`, `--store-connect-timeout`,
/// `--store-statement-timeout`). SQLite, a local file, ignores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections per replica: bounds the load one replica puts on the database, and how
    /// many store operations it runs at once.
    pub pool_size: u32,
    /// How long connecting, or waiting for a pooled connection, may take before an operation
    /// fails as [`StoreError::Unavailable`]: while the database is down, callers get
    /// `STORE_UNAVAILABLE` after this long instead of hanging.
    pub connect_timeout: Duration,
    /// Longest one statement may run before the database cancels it (`None`: no limit), so
    /// that a stuck lock or query cannot hold a caller and a pooled connection forever.
    pub statement_timeout: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// The right to run work that one replica at a time may do (the reconciliation sweeper).
///
/// The holder calls [`Election::campaign`] regularly: it confirms the right is still held. A
/// holder that gets `Ok(false)` or an error must stop the work at once: the store may already
/// have given the right to another replica. When a holder dies, the store frees the right
/// within a bounded time (see the backend's doc), and the next campaign of another replica
/// takes it.
#[async_trait]
pub trait Election: Send + std::fmt::Debug {
    /// Tries to take the right, or confirms that this replica still holds it. `Ok(true)`:
    /// this replica holds it now; `Ok(false)`: another one does; an error: the store cannot
    /// tell (count it as not held).
    async fn campaign(&mut self) -> Result<bool, StoreError>;

    /// Gives the right up at once, so that another replica can take it without waiting.
    async fn resign(&mut self);
}

/// The [`Election`] of a store only one process uses (SQLite): that process always holds the
/// right.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoleReplica;

#[async_trait]
impl Election for SoleReplica {
    async fn campaign(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn resign(&mut self) {}
}

/// Everything the store keeps about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// The payment as callers see it.
    pub payment: Payment,
    /// [`NewPayment::fingerprint`] of the request that created it (empty when the payment
    /// was created from a DOKU notification for an invoice the sidecar did not know).
    pub fingerprint: String,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The prepared DOKU request of the first attempt, replayed byte for byte on retries.
    pub doku_request: Option<StoredRequest>,
    /// Until when an in-flight DOKU call holds the right to issue this payment's code.
    pub attempt_lease_until: Option<OffsetDateTime>,
    /// When the reconciliation sweeper should next ask DOKU about this payment.
    pub next_check_at: Option<OffsetDateTime>,
    /// How many times the sweeper has asked DOKU about this payment.
    pub check_count: u32,
    /// DOKU's definitive rejection of the draft's request, if it was rejected.
    pub rejection: Option<AttemptRejection>,
    /// Whether any attempt of this payment ended with an unknown outcome: the invoice then
    /// stays bound to the draft's Request-Id, whatever DOKU answers later.
    pub outcome_unknown: bool,
    /// The W3C `traceparent` of the trace that created the payment
    /// ([`PaymentDraft::trace_context`]); `None` for a payment created from a DOKU
    /// notification or without tracing.
    pub trace_context: Option<String>,
}

impl PaymentRecord {
    /// The record of a payment the sidecar never requested (created from a DOKU notification
    /// for an invoice it did not know): no request, fingerprint, idempotency key, lease,
    /// schedule, attempts or trace.
    pub fn without_request(payment: Payment) -> Self {
        Self {
            payment,
            fingerprint: String::new(),
            idempotency_key: None,
            doku_request: None,
            attempt_lease_until: None,
            next_check_at: None,
            check_count: 0,
            rejection: None,
            outcome_unknown: false,
            trace_context: None,
        }
    }

    /// The rejection, if this record is a draft DOKU definitively rejected and that nothing
    /// has bound since: no code, PENDING, no unknown outcome. Such a draft holds no payment at
    /// DOKU; a different request may replace it.
    pub fn rejected_draft(&self) -> Option<&AttemptRejection> {
        self.rejection.as_ref().filter(|_| {
            self.payment.payment_code.is_none()
                && self.payment.status == crate::payment::PaymentStatus::Pending
                && !self.outcome_unknown
        })
    }
}

/// DOKU's definitive refusal of a request (a 4xx meaning "not processed").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRejection {
    /// DOKU's HTTP status.
    pub http_status: u16,
    /// DOKU's message, as extracted from its body.
    pub message: String,
}

/// A rejected attempt kept for audit ([`Store::rejected_attempts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedAttempt {
    /// The attempt's DOKU Request-Id.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: String,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The exact body sent.
    pub body: Vec<u8>,
    /// What DOKU said.
    pub rejection: AttemptRejection,
    /// When the sidecar recorded the rejection.
    pub rejected_at: OffsetDateTime,
}

/// An outbound DOKU request, kept opaque: the store does not know what the bytes mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The Request-Id used on every attempt.
    pub request_id: String,
    /// The exact body bytes signed and sent.
    pub body: Vec<u8>,
}

/// A payment about to be created.
#[derive(Debug, Clone)]
pub struct PaymentDraft {
    /// The validated request.
    pub request: NewPayment,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The DOKU request that will be sent for it.
    pub doku_request: StoredRequest,
    /// When the sidecar created it.
    pub create_time: OffsetDateTime,
    /// Provisional expiry (create time + expiry minutes) until DOKU says otherwise.
    pub expire_time: OffsetDateTime,
    /// The W3C `traceparent` of the span creating it
    /// ([`crate::telemetry::current_traceparent`]), kept so that the span of a later DOKU
    /// notification can link to that trace. Stored as given; a replacement draft replaces it.
    pub trace_context: Option<String>,
    /// The creator's attempt lease ([`Store::claim_attempt`]), taken with the insert: a new
    /// payment's first DOKU call needs no transaction of its own to claim it. `None` leaves
    /// the payment unclaimed.
    pub attempt_lease_until: Option<OffsetDateTime>,
}

/// Result of [`Store::create_payment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The draft was stored.
    New(PaymentRecord),
    /// The invoice already existed; nothing was changed.
    Existing(PaymentRecord),
    /// The idempotency key already belongs to this other payment; nothing was changed.
    IdempotencyKeyTaken(PaymentRecord),
}

/// What an incoming DOKU notification turned out to be (kept for audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified and consistent with the stored payment (or for an unknown invoice).
    Accepted,
    /// Verified, but invoice/amount/code do not match the stored payment: never emitted.
    Mismatch(String),
    /// Verified, but its status is one the sidecar does not know: stored raw, not emitted.
    UnknownStatus(String),
    /// Set by the store, never passed in: an accepted PAID without `transaction.date` on a
    /// reusable code already PAID (see the module doc); stored, not emitted.
    UndatedRepeat,
}

impl Verdict {
    /// Lower-case form for the `verdict` label of `o2o_notifications_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Mismatch(_) => "mismatch",
            Self::UnknownStatus(_) => "unknown_status",
            Self::UndatedRepeat => "undated_repeat",
        }
    }

    /// Stable text form for the audit table.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Mismatch(_) => "MISMATCH",
            Self::UnknownStatus(_) => "UNKNOWN_STATUS",
            Self::UndatedRepeat => "UNDATED_REPEAT",
        }
    }
}

/// A verified DOKU notification, ready to be recorded.
#[derive(Debug, Clone)]
pub struct InboundNotification {
    /// DOKU's `Request-Id` header: the dedupe key.
    pub doku_request_id: String,
    /// When the sidecar received it.
    pub received_at: OffsetDateTime,
    /// Raw headers as JSON text (signature value shortened), for audit.
    pub headers: String,
    /// Raw body bytes, for audit.
    pub body: Vec<u8>,
    /// What the sidecar made of it.
    pub verdict: Verdict,
    /// The status change to apply (only for [`Verdict::Accepted`]).
    pub change: Option<StatusChange>,
    /// Channel to use when the invoice is unknown and the payment is created from the
    /// notification.
    pub channel: Channel,
}

/// Result of [`Store::record_notification`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// This Request-Id was recorded before; nothing changed.
    Duplicate,
    /// Recorded; `event` is the appended event, if the status moved.
    Stored {
        /// The event appended in the same transaction, if any.
        event: Option<Event>,
    },
    /// Recorded with verdict `UNDATED_REPEAT`: a PAID without `transaction.date` on a reusable
    /// code already PAID, which cannot be told from a redelivery; nothing emitted.
    UndatedRepeat,
}

/// Result of [`Store::apply_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The payment after the change.
    pub record: PaymentRecord,
    /// The event appended, if the status moved forward.
    pub event: Option<Event>,
}

/// Store failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the operation for reasons outside the data
    /// (I/O, disk full, read-only, pool timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A different payment code for an invoice that already has one.
    #[error("invoice {invoice} already has payment code {existing}, refused {offered}")]
    CodeConflict {
        /// The invoice.
        invoice: InvoiceNumber,
        /// The code stored.
        existing: PaymentCode,
        /// The code refused.
        offered: PaymentCode,
    },
    /// The payment does not exist.
    #[error("no payment for invoice {0}")]
    NotFound(InvoiceNumber),
    /// Stored data that this version cannot read (a bug or a foreign writer).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Persistent state of the sidecar. See the module doc for the invariants every
/// implementation keeps.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Cheap round trip to the database, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new PENDING payment without a code, unless the invoice exists
    /// ([`Created::Existing`]) or the draft's idempotency key belongs to another invoice
    /// ([`Created::IdempotencyKeyTaken`]). Atomic: two concurrent calls for one invoice
    /// create one row. An existing [`PaymentRecord::rejected_draft`] with another fingerprint
    /// is replaced by this draft ([`Created::New`]); the key check then ignores the rejected
    /// draft's own key. Of concurrent replacements exactly one wins; the others see it as
    /// [`Created::Existing`].
    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError>;

    /// The payment whose request carried this idempotency key.
    async fn find_by_idempotency_key(&self, key: &str)
    -> Result<Option<PaymentRecord>, StoreError>;

    /// The payment of an invoice.
    async fn get_payment(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Option<PaymentRecord>, StoreError>;

    /// Takes the right to call DOKU for this payment until `until`, if the payment has no code
    /// yet and no unexpired lease is held. Returns whether the lease was taken.
    async fn claim_attempt(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back (after a failed attempt) so that a retry can go at once.
    async fn release_attempt(&self, invoice: &InvoiceNumber) -> Result<(), StoreError>;

    /// Gives the lease back after an attempt whose outcome is unknown (DOKU may have issued a
    /// code), and records that: the invoice stays bound to its draft's Request-Id for good.
    async fn record_outcome_unknown(&self, invoice: &InvoiceNumber) -> Result<(), StoreError>;

    /// Records DOKU's definitive rejection of the attempt with Request-Id `request_id` and
    /// gives the lease back. Returns `true` when the draft is now rejected (freed, see the
    /// module doc): the attempt is copied to the audit trail and the sweeper's check cleared.
    /// Returns `false` and only ends the lease when the invoice must stay bound: an earlier
    /// attempt had an unknown outcome, or the draft has a code, moved on, or is no longer the
    /// draft of `request_id`.
    async fn record_rejected(
        &self,
        invoice: &InvoiceNumber,
        request_id: &str,
        rejection: &AttemptRejection,
    ) -> Result<bool, StoreError>;

    /// The rejected attempts of an invoice, oldest first (audit).
    async fn rejected_attempts(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Vec<RejectedAttempt>, StoreError>;

    /// Records the code DOKU issued, with DOKU's times, how-to-pay URLs and instructions,
    /// clears the lease and, with `first_check`, schedules the sweeper's first check, in one
    /// transaction.
    /// Idempotent for the same code; a different code is [`StoreError::CodeConflict`].
    ///
    /// **Committed without waiting for the disk** on SQLite (`synchronous=NORMAL` for this
    /// transaction alone): a killed process loses nothing (the WAL frames are in the kernel's
    /// page cache); only a machine that stops before the next durable commit loses it, and
    /// then the payment is its draft again, which the sidecar recovers from: the draft (its
    /// exact request and Request-Id, committed durably before DOKU was called) is due for the
    /// sweeper when its lease ends, and the replay, by the sweeper or by the caller's retry,
    /// gets the same code from DOKU (one Request-Id, one code); a notification for the code
    /// meanwhile is accepted (a payment without a stored code takes DOKU's). What a caller
    /// may see meanwhile is `GetStatus` without the code it was given. The WAL is replayed
    /// in order and a later durable commit syncs every earlier frame, so what is lost is
    /// always the newest writes, never one in the middle. PostgreSQL commits it durably.
    async fn record_issued(
        &self,
        invoice: &InvoiceNumber,
        issued: &IssuedCode,
        first_check: Option<OffsetDateTime>,
    ) -> Result<PaymentRecord, StoreError>;

    /// Applies a status change from reconciliation: moves the status forward (appending an
    /// event) or leaves it (no event). A code in the change is recorded if the payment has
    /// none. Unknown invoice: [`StoreError::NotFound`].
    async fn apply_status(&self, change: &StatusChange) -> Result<Applied, StoreError>;

    /// Records a verified DOKU notification and, for an accepted one, applies its status
    /// change in the same transaction: the audit row, the status and the event commit
    /// together or not at all. A repeated Request-Id is [`Recorded::Duplicate`] and changes
    /// nothing. An accepted notification for an unknown invoice creates the payment from the
    /// data DOKU sent.
    ///
    /// Concurrent calls share a transaction (group commit, `group.rs`): one commit, one
    /// `fsync`, and still no answer before the commit.
    async fn record_notification(
        &self,
        notification: InboundNotification,
    ) -> Result<Recorded, StoreError>;

    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// The highest committed `seq` (0 when the log is empty).
    async fn last_seq(&self) -> Result<u64, StoreError>;

    /// The highest `seq` removed by retention (0 if none): a resume token below it is expired.
    async fn pruned_through(&self) -> Result<u64, StoreError>;

    /// Deletes the events recorded before `before` (a prefix of the log: see the module
    /// doc); returns how many were removed.
    async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// PENDING payments whose `next_check_at` is due, oldest first, at most `limit`; never a
    /// rejected draft.
    async fn due_for_check(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError>;

    /// Sets when the sweeper next checks this payment and counts the check.
    async fn schedule_check(
        &self,
        invoice: &InvoiceNumber,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;

    /// Wake-ups when any process sharing this store commits an event: the value is the
    /// highest seq known to be committed, and it changes (upwards only) after such a commit.
    /// Subscribe *before* reading the log, then read [`Store::events_after`] whenever the
    /// value passes what was read: the value is a hint, the log is the truth. It may lag while
    /// the backend cannot listen (PostgreSQL then polls about once a second) and may skip
    /// values, but it never stays below a committed seq for longer than that.
    ///
    /// `None` when no other process writes to this store (SQLite): the in-process fan-out
    /// after each commit already sees every event. Call it inside a Tokio runtime: a backend
    /// may start a listener task on first use.
    fn commit_hints(&self) -> Option<watch::Receiver<u64>>;

    /// A contender for the right to run the reconciliation sweeper; see [`Election`].
    fn sweeper_election(&self) -> Box<dyn Election>;
}
