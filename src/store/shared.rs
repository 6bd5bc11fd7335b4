//! Every store operation both SQL backends run, written once: the statements of each
//! operation as functions over any [`Conn`], applying the rules of [`super::decide`], and the
//! one [`Store`] implementation for every [`Backend`].
//!
//! A backend keeps what really differs: how it connects and which connection or transaction
//! an operation runs on (SQLite: one writer in `BEGIN IMMEDIATE` transactions and a pool of
//! readers; PostgreSQL: one pool, row locks and an advisory lock), the few statements in its
//! [`Dialect`](super::sql::Dialect), its error mapping, and the two operations whose
//! concurrency story is its own (`create_payment`, and whether a claim needs a transaction).
//!
//! Why statements over [`Conn`] and plain decision functions, not code generic over
//! `sqlx::Database`: the bounds such code needs (an `Executor` for every borrow, `Encode` and
//! `Type` per parameter type, `FromRow` per row) would outweigh the logic they guard, and a
//! move of SQLite to another driver would have had to rewrite it. Here only `sqlx_conn!` names
//! sqlx: the SQLite backend, on rusqlite, implements [`Conn`] for its connection (its futures
//! are ready at once: statements run on the calling thread) and keeps every statement and
//! decision.
//!
//! Each operation runs inside whatever the caller began; the caller commits. Operations that
//! read a payment before changing it use [`payment_locked`], which holds the row on
//! PostgreSQL (SQLite's write transaction already holds the database).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::ops::DerefMut;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::decide::{Emit, Write, emit, plan_change, rejection_frees};
use super::group::{Abandoned, GroupCommit, Turn};
use super::rows::{
    UNDATED_REPEAT_DETAIL, event_columns, from_unix, instructions_json, payment_columns,
    payment_of_invoice, rejected_draft, signed, unix, unix_now, unsigned,
};
use super::sql::{Conn, Stmt};
use super::{
    Applied, AttemptRejection, Created, Election, InboundNotification, PaymentDraft, PaymentRecord,
    Recorded, RejectedAttempt, Store, StoreError, Verdict,
};
use crate::payment::{
    Channel, Event, InvoiceNumber, IssuedCode, NewPayment, Payment, PaymentCode, PaymentStatus,
    StatusChange,
};

// ---------------------------------------------------------------------------------------------
// Statements

/// Binds the twelve values of a draft, in the order both [`INSERT_DRAFT`] and
/// [`REPLACE_REJECTED`] number them.
fn draft_stmt<'a>(sql: &'static str, draft: &'a PaymentDraft) -> Stmt<'a> {
    let request = &draft.request;
    Stmt::new(sql)
        .bind(request.invoice.as_str())
        .bind(request.amount.rupiah())
        .bind(request.channel.as_str())
        .bind(draft.create_time)
        .bind(draft.expire_time)
        .bind(request.reusable)
        .bind(draft.fingerprint.as_str())
        .bind(request.idempotency_key.as_deref())
        .bind(draft.doku_request.request_id.as_str())
        .bind(draft.doku_request.body.as_slice())
        .bind(unix_now())
        .bind(draft.trace_context.as_deref())
        .bind(draft.attempt_lease_until)
}

/// A new draft; nothing where the invoice or the key exists (the caller then looks).
///
/// A draft created with its lease is due for the sweeper when the lease ends
/// (`next_check_at = $13`): if its code is still unknown then, the creating call is gone
/// (its process died after DOKU answered, or the code's commit was lost with the machine,
/// see [`super::Store::record_issued`]) and the sweeper replays the stored request. The
/// commit of the code moves the schedule to the first check; a failed attempt sets its own
/// ([`release_attempt`] clears it, an unknown outcome reschedules).
const INSERT_DRAFT: &str = concat!(
    "INSERT INTO payments (invoice, amount, channel, status, create_time, expire_time, \
     reusable, fingerprint, idempotency_key, doku_request_id, doku_request_body, \
     check_count, updated_at, trace_context, attempt_lease_until, next_check_at) \
     VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $13, $13) \
     ON CONFLICT DO NOTHING RETURNING ",
    payment_columns!()
);

/// A draft replacing the invoice's rejected one: new request, Request-Id, key, times and
/// lease (the replacing creator's), due for the sweeper when that lease ends (as
/// [`INSERT_DRAFT`]); the rejection cleared. Only while the row is still a rejected draft.
const REPLACE_REJECTED: &str = concat!(
    "UPDATE payments SET amount = $2, channel = $3, create_time = $4, expire_time = $5, \
     reusable = $6, fingerprint = $7, idempotency_key = $8, doku_request_id = $9, \
     doku_request_body = $10, updated_at = $11, pay_time = NULL, how_to_pay_url = NULL, \
     how_to_pay_api_url = NULL, attempt_lease_until = $13, next_check_at = $13, \
     check_count = 0, rejected_http_status = NULL, rejected_message = NULL, \
     trace_context = $12 \
     WHERE invoice = $1 AND ",
    rejected_draft!(),
    " RETURNING ",
    payment_columns!()
);

/// The row a statement that must return one did not return: only a foreign writer (or a bug)
/// can remove a row this transaction holds.
fn returned(
    row: Option<PaymentRecord>,
    invoice: &InvoiceNumber,
) -> Result<PaymentRecord, StoreError> {
    row.ok_or_else(|| StoreError::Corrupt(format!("payment {invoice}: no row returned")))
}

// ---------------------------------------------------------------------------------------------
// Payments

/// The payment of `invoice`.
pub(super) async fn payment_in<C: Conn>(
    conn: &mut C,
    invoice: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    conn.payment(Stmt::new(payment_of_invoice!("")).bind(invoice))
        .await
}

/// The payment of `invoice`, held against other writers until the transaction ends.
pub(super) async fn payment_locked<C: Conn>(
    conn: &mut C,
    invoice: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    conn.payment(Stmt::new(C::DIALECT.lock_payment).bind(invoice))
        .await
}

/// [`payment_locked`], or [`StoreError::NotFound`].
async fn existing_locked<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
) -> Result<PaymentRecord, StoreError> {
    payment_locked(conn, invoice.as_str())
        .await?
        .ok_or_else(|| StoreError::NotFound(invoice.clone()))
}

/// The payment whose request carried idempotency key `key`.
pub(super) async fn payment_by_key<C: Conn>(
    conn: &mut C,
    key: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    let sql = concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE idempotency_key = $1"
    );
    conn.payment(Stmt::new(sql).bind(key)).await
}

/// The payment that holds `request`'s idempotency key, if it has one.
pub(super) async fn key_owner<C: Conn>(
    conn: &mut C,
    request: &NewPayment,
) -> Result<Option<PaymentRecord>, StoreError> {
    match &request.idempotency_key {
        Some(key) => payment_by_key(conn, key).await,
        None => Ok(None),
    }
}

/// Stores `draft` as a new PENDING payment; `None` when its invoice or key exists.
pub(super) async fn insert_draft<C: Conn>(
    conn: &mut C,
    draft: &PaymentDraft,
) -> Result<Option<PaymentRecord>, StoreError> {
    conn.payment(draft_stmt(INSERT_DRAFT, draft)).await
}

/// For a draft whose invoice exists: replaces the invoice's rejected draft with `draft` if
/// there is one and the request differs (the row held: of racing replacements exactly one
/// finds it still rejected), else reports what is there. `None`: the invoice does not exist.
pub(super) async fn create_over_existing<C: Conn>(
    conn: &mut C,
    draft: &PaymentDraft,
) -> Result<Option<Created>, StoreError> {
    let request = &draft.request;
    let Some(record) = payment_locked(conn, request.invoice.as_str()).await? else {
        return Ok(None);
    };
    if record.rejected_draft().is_none() || record.fingerprint == draft.fingerprint {
        return Ok(Some(Created::Existing(record)));
    }
    // A different request for an invoice DOKU never processed: it replaces the rejected
    // draft, unless its key belongs to another invoice.
    if let Some(owner) = key_owner(conn, request).await?
        && owner.payment.invoice != request.invoice
    {
        return Ok(Some(Created::IdempotencyKeyTaken(owner)));
    }
    let replaced = conn.payment(draft_stmt(REPLACE_REJECTED, draft)).await?;
    Ok(Some(Created::New(returned(replaced, &request.invoice)?)))
}

/// Takes the attempt lease of `invoice` until `until` if it has no code, is not rejected and
/// no unexpired lease is held (one statement: on PostgreSQL a concurrent claim makes it wait,
/// then re-check the row, so only one succeeds).
pub(super) async fn claim_attempt<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<bool, StoreError> {
    // A lease still set when it is taken over was never released: its holder vanished
    // mid-call, so that attempt's outcome is unknown.
    // A claimed draft with no schedule is due for the sweeper when this lease ends, as a new
    // one is (INSERT_DRAFT).
    let claim = Stmt::new(
        "UPDATE payments SET attempt_lease_until = $2, updated_at = $4, \
         next_check_at = COALESCE(next_check_at, $2), \
         outcome_unknown = CASE WHEN attempt_lease_until IS NULL THEN outcome_unknown \
         ELSE TRUE END \
         WHERE invoice = $1 AND payment_code IS NULL AND rejected_http_status IS NULL \
         AND (attempt_lease_until IS NULL OR attempt_lease_until <= $3)",
    );
    let claim = claim
        .bind(invoice.as_str())
        .bind(until)
        .bind(now)
        .bind(unix_now());
    let taken = conn.execute(claim).await? == 1;
    if !taken && payment_in(conn, invoice.as_str()).await?.is_none() {
        return Err(StoreError::NotFound(invoice.clone()));
    }
    Ok(taken)
}

/// Runs a one-row update of `invoice` (`$1`; `updated_at` is the statement's job);
/// [`StoreError::NotFound`] when no row changed.
async fn update_one<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
    stmt: Stmt<'_>,
) -> Result<(), StoreError> {
    if conn.execute(stmt).await? == 0 {
        return Err(StoreError::NotFound(invoice.clone()));
    }
    Ok(())
}

/// Ends the attempt lease of `invoice`; a payment still without a code is no longer due for
/// the sweeper at the lease's end (its caller was answered: [`INSERT_DRAFT`]).
pub(super) async fn release_attempt<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
) -> Result<(), StoreError> {
    let sql = "UPDATE payments SET attempt_lease_until = NULL, updated_at = $2, \
               next_check_at = CASE WHEN payment_code IS NULL THEN NULL ELSE next_check_at END \
               WHERE invoice = $1";
    let stmt = Stmt::new(sql).bind(invoice.as_str()).bind(unix_now());
    update_one(conn, invoice, stmt).await
}

/// Ends the attempt lease of `invoice` and binds the invoice to its draft for good.
pub(super) async fn record_outcome_unknown<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
) -> Result<(), StoreError> {
    let sql = "UPDATE payments SET outcome_unknown = TRUE, attempt_lease_until = NULL, \
               updated_at = $2 WHERE invoice = $1";
    let stmt = Stmt::new(sql).bind(invoice.as_str()).bind(unix_now());
    update_one(conn, invoice, stmt).await
}

/// Sets when the sweeper next checks `invoice`, counting a check when it is set.
pub(super) async fn schedule_check<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
    at: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    let sql = "UPDATE payments SET next_check_at = $2, \
               check_count = check_count + (CASE WHEN $2 IS NULL THEN 0 ELSE 1 END), \
               updated_at = $3 WHERE invoice = $1";
    let stmt = Stmt::new(sql)
        .bind(invoice.as_str())
        .bind(at)
        .bind(unix_now());
    update_one(conn, invoice, stmt).await
}

/// Records DOKU's definitive rejection of `request_id` and ends the lease; see
/// [`super::Store::record_rejected`].
pub(super) async fn record_rejected<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
    request_id: &str,
    rejection: &AttemptRejection,
) -> Result<bool, StoreError> {
    let record = existing_locked(conn, invoice).await?;
    let Some(freed) = rejection_frees(&record, request_id) else {
        return Ok(false);
    };
    if freed {
        let body = record.doku_request.as_ref().map(|r| r.body.as_slice());
        let audit = Stmt::new(
            "INSERT INTO payment_attempts (doku_request_id, invoice, fingerprint, \
             idempotency_key, request_body, outcome, http_status, message, created_at, \
             ended_at) VALUES ($1, $2, $3, $4, $5, 'REJECTED', $6, $7, $8, $9) \
             ON CONFLICT (doku_request_id) DO NOTHING",
        );
        let audit = audit
            .bind(request_id)
            .bind(invoice.as_str())
            .bind(record.fingerprint.as_str())
            .bind(record.idempotency_key.as_deref())
            .bind(body.unwrap_or_default())
            .bind(i64::from(rejection.http_status))
            .bind(rejection.message.as_str())
            .bind(record.payment.create_time)
            .bind(unix_now());
        conn.execute(audit).await?;
    }
    let end = Stmt::new(
        "UPDATE payments SET attempt_lease_until = NULL, updated_at = $2, \
         rejected_http_status = CASE WHEN $3 THEN $4 ELSE rejected_http_status END, \
         rejected_message = CASE WHEN $3 THEN $5 ELSE rejected_message END, \
         next_check_at = CASE WHEN $3 THEN NULL ELSE next_check_at END \
         WHERE invoice = $1",
    );
    let end = end
        .bind(invoice.as_str())
        .bind(unix_now())
        .bind(freed)
        .bind(i64::from(rejection.http_status))
        .bind(rejection.message.as_str());
    conn.execute(end).await?;
    Ok(freed)
}

/// The rejected attempts of `invoice`, oldest first.
pub(super) async fn rejected_attempts<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
) -> Result<Vec<RejectedAttempt>, StoreError> {
    conn.attempts(Stmt::new(C::DIALECT.rejected_attempts).bind(invoice.as_str()))
        .await
}

/// Records the code DOKU issued, with its instructions, and ends the lease; the same code
/// again keeps what is stored and fills in URLs and instructions not known yet; another code
/// is [`StoreError::CodeConflict`].
pub(super) async fn record_issued<C: Conn>(
    conn: &mut C,
    invoice: &InvoiceNumber,
    issued: &IssuedCode,
    first_check: Option<OffsetDateTime>,
) -> Result<PaymentRecord, StoreError> {
    let record = existing_locked(conn, invoice).await?;
    let instructions = instructions_json(&issued.instructions);
    let stmt = match &record.payment.payment_code {
        Some(code) if *code != issued.payment_code => {
            return Err(StoreError::CodeConflict {
                invoice: invoice.clone(),
                existing: code.clone(),
                offered: issued.payment_code.clone(),
            });
        }
        // A retry, or reconciliation saw it first.
        Some(_) => Stmt::new(concat!(
            "UPDATE payments SET how_to_pay_url = COALESCE(how_to_pay_url, $2), \
             how_to_pay_api_url = COALESCE(how_to_pay_api_url, $3), \
             instructions = COALESCE(instructions, $5), \
             attempt_lease_until = NULL, updated_at = $4 WHERE invoice = $1 RETURNING ",
            payment_columns!()
        ))
        .bind(invoice.as_str())
        .bind(issued.how_to_pay_url.as_deref())
        .bind(issued.how_to_pay_api_url.as_deref())
        .bind(unix_now())
        .bind(instructions.as_deref()),
        None => Stmt::new(concat!(
            "UPDATE payments SET payment_code = $2, \
             create_time = COALESCE($3, create_time), \
             expire_time = COALESCE($4, expire_time), \
             how_to_pay_url = COALESCE($5, how_to_pay_url), \
             how_to_pay_api_url = COALESCE($6, how_to_pay_api_url), \
             instructions = COALESCE($8, instructions), \
             attempt_lease_until = NULL, updated_at = $7 WHERE invoice = $1 RETURNING ",
            payment_columns!()
        ))
        .bind(invoice.as_str())
        .bind(issued.payment_code.as_str())
        .bind(issued.create_time)
        .bind(issued.expire_time)
        .bind(issued.how_to_pay_url.as_deref())
        .bind(issued.how_to_pay_api_url.as_deref())
        .bind(unix_now())
        .bind(instructions.as_deref()),
    };
    if first_check.is_some() {
        schedule_check(conn, invoice, first_check).await?;
    }
    returned(conn.payment(stmt).await?, invoice)
}

/// PENDING payments due for a check at `now`, oldest first; never a rejected draft.
pub(super) async fn due_for_check<C: Conn>(
    conn: &mut C,
    now: OffsetDateTime,
    limit: u32,
) -> Result<Vec<PaymentRecord>, StoreError> {
    let sql = concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE status = 'PENDING' AND next_check_at IS NOT NULL \
         AND next_check_at <= $1 AND rejected_http_status IS NULL \
         ORDER BY next_check_at, invoice LIMIT $2"
    );
    conn.payments(Stmt::new(sql).bind(now).bind(i64::from(limit)))
        .await
}

// ---------------------------------------------------------------------------------------------
// Status changes and events

/// Takes the dialect's lock on appends to the event log, held to the end of the transaction
/// (taking it again in the same transaction is free, but a round trip).
///
/// Every transaction takes it *last*: after every payment row and every other key it locks,
/// right before its first append ([`append_events`]). While it holds the lock a transaction
/// only appends (new `events` rows, whose foreign key checks payment rows it already holds),
/// links its own `notifications` rows and commits: it never waits for another transaction's
/// lock, so the lock is never part of a wait cycle, and it is held only for the appends and
/// the commit. The PostgreSQL store's module doc has the whole argument.
async fn lock_event_log<C: Conn>(conn: &mut C) -> Result<(), StoreError> {
    if let Some((lock, key)) = C::DIALECT.lock_events {
        conn.execute(Stmt::new(lock).bind(key)).await?;
    }
    Ok(())
}

/// An event a transaction appends once it holds the log's lock: decided by [`apply_change`]
/// or by creating a payment, written by [`append_events`].
#[derive(Debug)]
pub(super) struct Append<'a> {
    /// The change it records.
    change: &'a StatusChange,
    /// When it happened: DOKU's time, or when the sidecar learned an undated change.
    occur: OffsetDateTime,
    /// The event's code.
    code: Option<PaymentCode>,
    /// The payment's channel.
    channel: Channel,
    /// The Request-Id of the notification that carried it.
    doku_request_id: Option<&'a str>,
}

impl Append<'_> {
    /// Whether this is a PAID event of `invoice` at `at` (unix seconds): what
    /// [`Emit::UnlessPaidAt`] looks for in the log.
    fn is_paid_at(&self, invoice: &InvoiceNumber, at: i64) -> bool {
        self.change.invoice == *invoice
            && self.change.status == PaymentStatus::Paid
            && unix(self.occur) == at
    }
}

/// [`append_events`] for one row: `$1`…`$9` the event's columns.
const INSERT_EVENT: &str = concat!(
    "INSERT INTO events (invoice, status, amount, payment_code, channel, occur_time, source, \
     doku_request_id, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
    event_columns!()
);

/// [`INSERT_EVENT`] for every row at once (arrays; see [`Stmt::rows`]), inserted in row order.
const INSERT_EVENTS: &str = concat!(
    "INSERT INTO events (invoice, status, amount, payment_code, channel, occur_time, source, \
     doku_request_id, recorded_at) \
     SELECT invoice, status, amount, payment_code, channel, occur_time, source, \
     doku_request_id, recorded_at \
     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], \
     $7::text[], $8::text[], $9::bigint[]) WITH ORDINALITY AS r(invoice, status, amount, \
     payment_code, channel, occur_time, source, doku_request_id, recorded_at, n) \
     ORDER BY n RETURNING ",
    event_columns!()
);

/// Appends `appends` to the log in one statement, in order; their events, in the same order.
/// The caller holds the log's lock ([`lock_event_log`]), taken after every row lock of its
/// transaction.
async fn append_events<C: Conn>(
    conn: &mut C,
    appends: &[Append<'_>],
) -> Result<Vec<Event>, StoreError> {
    let mut insert = Stmt::rows(INSERT_EVENT, INSERT_EVENTS, 9);
    let now = unix_now();
    for append in appends {
        let change = append.change;
        insert.push(change.invoice.as_str());
        insert.push(change.status.as_str());
        insert.push(change.amount.rupiah());
        insert.push(append.code.as_ref().map(PaymentCode::as_str));
        insert.push(append.channel.as_str());
        insert.push(append.occur);
        insert.push(change.source.as_str());
        insert.push(append.doku_request_id);
        insert.push(now);
    }
    let mut events = conn.events(insert).await?;
    // Seqs are drawn in insertion order: by seq, the events are in the order of `appends`.
    events.sort_unstable_by_key(|e| e.seq);
    if events.len() != appends.len() {
        return Err(StoreError::Corrupt(format!(
            "{} events appended, {} returned",
            appends.len(),
            events.len()
        )));
    }
    Ok(events)
}

/// [`link_notifications`] for one row: `$1` a Request-Id, `$2` its event's seq.
const LINK_NOTIFICATION: &str =
    "UPDATE notifications SET event_seq = $2 WHERE doku_request_id = $1";

/// [`LINK_NOTIFICATION`] for every row at once (arrays; see [`Stmt::rows`]): the rows found
/// by `= ANY` on their key, which PostgreSQL reads from the index at any table size, each
/// row's value looked up by its key's place. (A join, on `events` by a range of seqs or on
/// `unnest`, is planned as a scan of every notification while the table is small or without
/// statistics: in every batch, of a table that grows with every batch.)
pub(super) const LINK_NOTIFICATIONS: &str = "UPDATE notifications \
     SET event_seq = ($2::bigint[])[array_position($1::text[], doku_request_id)] \
     WHERE doku_request_id = ANY($1::text[])";

/// Sets `event_seq` of the notifications that carried `events`, in one statement.
async fn link_notifications<C: Conn>(conn: &mut C, events: &[Event]) -> Result<(), StoreError> {
    let mut link = Stmt::rows(LINK_NOTIFICATION, LINK_NOTIFICATIONS, 2);
    for event in events {
        if let Some(id) = event.doku_request_id.as_deref() {
            link.push(id);
            link.push(signed(event.seq));
        }
    }
    conn.execute(link).await?;
    Ok(())
}

/// What [`apply_change`] did to the payment it was given.
#[derive(Debug)]
pub(super) struct Changed<'a> {
    /// Whether the payment changed: the caller writes it ([`write_changes`]).
    pub(super) written: bool,
    /// The event to append, if any: the caller appends it ([`append_events`]) after its last
    /// row lock.
    pub(super) append: Option<Append<'a>>,
    /// Whether it was an undated repeat PAID (withheld).
    pub(super) withheld: bool,
}

/// Applies `change` to the held payment `record` by [`emit`] and [`plan_change`], in memory;
/// an undated change happens at `learned_at`. The caller writes the payment if it changed and
/// appends the event, if any: `unlogged` are the events this transaction decided before and
/// has not appended yet, which count as in the log.
pub(super) async fn apply_change<'a, C: Conn>(
    conn: &mut C,
    record: &mut PaymentRecord,
    change: &'a StatusChange,
    repeat_allowed: bool,
    doku_request_id: Option<&'a str>,
    learned_at: OffsetDateTime,
    unlogged: &[Append<'_>],
) -> Result<Changed<'a>, StoreError> {
    let invoice = &record.payment.invoice;
    let decision = emit(record, change, repeat_allowed);
    let emitted = match decision {
        Emit::Yes => true,
        Emit::No | Emit::Withheld => false,
        // The row held since the lookup serializes this check with every other change of
        // the payment; this transaction's own events are not in the log yet.
        Emit::UnlessPaidAt(at) => {
            let seen = Stmt::new(
                "SELECT EXISTS (SELECT 1 FROM events \
                 WHERE invoice = $1 AND status = 'PAID' AND occur_time = $2)",
            );
            !(unlogged.iter().any(|a| a.is_paid_at(invoice, at))
                || conn.flag(seen.bind(invoice.as_str()).bind(at)).await?)
        }
    };
    let withheld = decision == Emit::Withheld;
    let plan = plan_change(record, change, emitted, learned_at);
    let payment = &mut record.payment;
    let m = match plan {
        Write::Nothing => {
            return Ok(Changed {
                written: false,
                append: None,
                withheld,
            });
        }
        Write::Code(code) => {
            payment.payment_code = Some(code);
            return Ok(Changed {
                written: true,
                append: None,
                withheld,
            });
        }
        Write::Move(m) => m,
    };
    let pay_time = m
        .pay_time
        .map(|t| from_unix(&payment.invoice, "pay_time", t));
    payment.pay_time = pay_time.transpose()?;
    payment.status = m.status;
    payment.payment_code = m.code;
    Ok(Changed {
        written: true,
        append: Some(Append {
            change,
            occur: m.occur_time,
            code: m.event_code,
            channel: payment.channel,
            doku_request_id,
        }),
        withheld: false,
    })
}

/// [`write_changes`] for one row: `$1` the invoice, `$2`…`$5` what a change writes.
const WRITE_CHANGE: &str = "UPDATE payments SET status = $2, pay_time = $3, payment_code = $4, \
                            updated_at = $5 WHERE invoice = $1";

/// [`WRITE_CHANGE`] for every row at once (arrays; see [`Stmt::rows`]): the rows found by
/// `= ANY` on their key, each row's values looked up by its key's place (see
/// [`LINK_NOTIFICATIONS`] for why not a join).
pub(super) const WRITE_CHANGES: &str = "UPDATE payments SET \
     status = ($2::text[])[array_position($1::text[], invoice)], \
     pay_time = ($3::bigint[])[array_position($1::text[], invoice)], \
     payment_code = ($4::text[])[array_position($1::text[], invoice)], \
     updated_at = ($5::bigint[])[array_position($1::text[], invoice)] \
     WHERE invoice = ANY($1::text[])";

/// Writes what [`apply_change`] changed of the held payments `records` (status, pay time,
/// code), in one statement.
async fn write_changes<C: Conn>(
    conn: &mut C,
    records: &[&PaymentRecord],
) -> Result<(), StoreError> {
    let mut update = Stmt::rows(WRITE_CHANGE, WRITE_CHANGES, 5);
    let now = unix_now();
    for record in records {
        let p = &record.payment;
        update.push(p.invoice.as_str());
        update.push(p.status.as_str());
        update.push(p.pay_time);
        update.push(p.payment_code.as_ref().map(PaymentCode::as_str));
        update.push(now);
    }
    let written = conn.execute(update).await?;
    if written != records.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "{} held payments changed, {written} written",
            records.len()
        )));
    }
    Ok(())
}

/// Applies a status change from reconciliation to the held payment.
pub(super) async fn apply_status<C: Conn>(
    conn: &mut C,
    change: &StatusChange,
) -> Result<Applied, StoreError> {
    // The row, then the log (only to append): the order every transaction takes them in.
    let mut record = existing_locked(conn, &change.invoice).await?;
    let request_id = change.doku_request_id.as_deref();
    let now = OffsetDateTime::now_utc();
    let changed = apply_change(conn, &mut record, change, false, request_id, now, &[]).await?;
    if changed.written {
        write_changes(conn, &[&record]).await?;
    }
    let event = match changed.append {
        Some(append) => {
            lock_event_log(conn).await?;
            append_events(conn, &[append]).await?.pop()
        }
        None => None,
    };
    Ok(Applied { record, event })
}

/// [`create_from_notifications`] for one row: `$1`…`$8` the payment's values.
const CREATE_FROM_NOTIFICATION: &str = "INSERT INTO payments (invoice, amount, channel, \
     payment_code, status, create_time, \
     expire_time, pay_time, reusable, fingerprint, check_count, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, FALSE, '', 0, $8) \
     ON CONFLICT (invoice) DO NOTHING RETURNING invoice";

/// [`CREATE_FROM_NOTIFICATION`] for every row at once (arrays; see [`Stmt::rows`]), inserted
/// in row order.
const CREATE_FROM_NOTIFICATIONS: &str = "INSERT INTO payments (invoice, amount, channel, \
     payment_code, status, create_time, \
     expire_time, pay_time, reusable, fingerprint, check_count, updated_at) \
     SELECT invoice, amount, channel, payment_code, status, occur_time, occur_time, pay_time, \
     FALSE, '', 0, updated_at \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
     $7::bigint[], $8::bigint[]) WITH ORDINALITY AS r(invoice, amount, channel, payment_code, \
     status, occur_time, pay_time, updated_at, n) \
     ORDER BY n ON CONFLICT (invoice) DO NOTHING RETURNING invoice";

/// Inserts, in one statement and in order, the payments of accepted notifications (never a
/// PENDING change) for invoices the store may not know, as [`created_payment`] built them;
/// returns the invoices it created. An invoice that exists is not created, nor one that a
/// concurrent transaction creates meanwhile (the insert waits for it, then does nothing).
async fn create_from_notifications<C: Conn>(
    conn: &mut C,
    payments: &[PaymentRecord],
) -> Result<Vec<String>, StoreError> {
    let mut insert = Stmt::rows(CREATE_FROM_NOTIFICATION, CREATE_FROM_NOTIFICATIONS, 8);
    let now = unix_now();
    for PaymentRecord { payment: p, .. } in payments {
        insert.push(p.invoice.as_str());
        insert.push(p.amount.rupiah());
        insert.push(p.channel.as_str());
        insert.push(p.payment_code.as_ref().map(PaymentCode::as_str));
        insert.push(p.status.as_str());
        // Created and expired at once: `$6` is both.
        insert.push(unix(p.create_time));
        insert.push(p.pay_time.map(unix));
        insert.push(now);
    }
    conn.texts(insert).await
}

/// The payment that `change` of `n` creates when its invoice is new: what DOKU sent, dated
/// when the change happened (whole seconds, as stored).
fn created_payment(
    change: &StatusChange,
    n: &InboundNotification,
) -> Result<PaymentRecord, StoreError> {
    let invoice = &change.invoice;
    let at = from_unix(invoice, "occur_time", unix(change.occurred(n.received_at)))?;
    Ok(PaymentRecord::without_request(Payment {
        invoice: invoice.clone(),
        amount: change.amount,
        channel: n.channel,
        payment_code: change.payment_code.clone(),
        status: change.status,
        create_time: at,
        expire_time: at,
        pay_time: (change.status == PaymentStatus::Paid).then_some(at),
        how_to_pay_url: None,
        how_to_pay_api_url: None,
        reusable: false,
        instructions: Vec::new(),
    }))
}

/// [`payments_locked`] for every row at once (an array; see [`Stmt::rows`]): locked in
/// invoice order, bytewise (`COLLATE "C"`, the order of Rust's `str`), whatever the
/// database's collation.
pub(super) const LOCK_PAYMENTS: &str = concat!(
    "SELECT ",
    payment_columns!(),
    " FROM payments WHERE invoice = ANY($1::text[]) ORDER BY invoice COLLATE \"C\" FOR UPDATE"
);

/// The payments of `invoices` (sorted, distinct) that exist, each held against other writers
/// until the transaction ends, taken in invoice order; in one statement.
async fn payments_locked<C: Conn>(
    conn: &mut C,
    invoices: &[&InvoiceNumber],
) -> Result<Vec<PaymentRecord>, StoreError> {
    let mut select = Stmt::rows(C::DIALECT.lock_payment, LOCK_PAYMENTS, 1);
    for invoice in invoices {
        select.push(invoice.as_str());
    }
    conn.payments(select).await
}

/// [`insert_audits`] for one row: `$1`…`$7` the notification's columns.
const INSERT_AUDIT: &str = "INSERT INTO notifications (doku_request_id, received_at, headers, \
     body, verdict, verdict_detail, invoice) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (doku_request_id) DO NOTHING RETURNING doku_request_id";

/// [`INSERT_AUDIT`] for every row at once (arrays; see [`Stmt::rows`]), inserted in row
/// order.
const INSERT_AUDITS: &str = "INSERT INTO notifications (doku_request_id, received_at, headers, \
     body, verdict, verdict_detail, invoice) \
     SELECT doku_request_id, received_at, headers, body, verdict, verdict_detail, invoice \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::text[], $6::text[], \
     $7::text[]) WITH ORDINALITY AS r(doku_request_id, received_at, headers, body, verdict, \
     verdict_detail, invoice, n) \
     ORDER BY n ON CONFLICT (doku_request_id) DO NOTHING RETURNING doku_request_id";

/// Stores the audit rows of verified notifications (distinct Request-Ids), in one statement
/// and in order; returns the Request-Ids it stored: a Request-Id recorded before is not
/// stored again (a concurrent insert of the same Request-Id makes this wait for it, then do
/// nothing).
async fn insert_audits<'a, C: Conn>(
    conn: &mut C,
    notifications: impl Iterator<Item = &'a InboundNotification>,
) -> Result<Vec<String>, StoreError> {
    let mut audit = Stmt::rows(INSERT_AUDIT, INSERT_AUDITS, 7);
    for n in notifications {
        let detail = match &n.verdict {
            Verdict::Accepted => None,
            Verdict::Mismatch(d) | Verdict::UnknownStatus(d) => Some(d.as_str()),
            Verdict::UndatedRepeat => Some(UNDATED_REPEAT_DETAIL),
        };
        audit.push(n.doku_request_id.as_str());
        audit.push(n.received_at);
        audit.push(n.headers.as_str());
        audit.push(n.body.as_slice());
        audit.push(n.verdict.as_str());
        audit.push(detail);
        audit.push(n.change.as_ref().map(|c| c.invoice.as_str()));
    }
    conn.texts(audit).await
}

/// Marks the stored notification `id` as an undated repeat (its change was withheld).
async fn mark_undated_repeat<C: Conn>(conn: &mut C, id: &str) -> Result<(), StoreError> {
    let sql = "UPDATE notifications SET verdict = $2, verdict_detail = $3 \
               WHERE doku_request_id = $1";
    let verdict = Verdict::UndatedRepeat.as_str();
    let stmt = Stmt::new(sql)
        .bind(id)
        .bind(verdict)
        .bind(UNDATED_REPEAT_DETAIL);
    conn.execute(stmt).await?;
    Ok(())
}

/// How a batch of notifications failed.
enum BatchFailure {
    /// A statement failed on the data of some item: which one, a statement over every item
    /// cannot say.
    Data(StoreError),
    /// The store failed (I/O, a full disk, a lost connection): every item gets the error.
    Store(StoreError),
}

/// How `e` fails a batch: an error of the store fails every item.
fn batch_failure(e: StoreError) -> BatchFailure {
    match e {
        e @ StoreError::Unavailable(_) => BatchFailure::Store(e),
        e => BatchFailure::Data(e),
    }
}

/// Records a batch of notifications (group commit, [`super::group`]) in one transaction: one
/// commit, one `fsync`, for all of them, with each item's result as if it had been recorded
/// alone, in batch order ([`record_in_one_transaction`]). An error of the store itself is
/// every item's answer. A statement that fails on the data of an item (rare: the batch's
/// statements each cover every item, so they cannot tell which) sends the items through
/// again one transaction each, so that only that item gets its error.
pub(super) async fn record_notifications<B: Backend>(
    backend: &B,
    batch: &[InboundNotification],
) -> Vec<Result<Recorded, StoreError>> {
    match record_in_one_transaction(backend, batch).await {
        Ok(recorded) => return recorded.into_iter().map(Ok).collect(),
        Err(BatchFailure::Store(e)) => return vec![Err(e); batch.len()],
        Err(BatchFailure::Data(e)) if batch.len() == 1 => return vec![Err(e)],
        Err(BatchFailure::Data(_)) => {}
    }
    let mut results = Vec::with_capacity(batch.len());
    for one in batch.chunks(1) {
        results.push(match record_in_one_transaction(backend, one).await {
            Ok(mut recorded) => recorded
                .pop()
                .ok_or_else(|| StoreError::Unavailable("not recorded".into())),
            Err(BatchFailure::Data(e) | BatchFailure::Store(e)) => Err(e),
        });
    }
    results
}

/// [`record_notifications`]' transaction over `batch`, in passes, each taking one kind of
/// lock in one global order, so that two batches (on two replicas) run at the same time
/// without a wait cycle and the log is held only at the end; each pass is one statement over
/// all its rows ([`Stmt::rows`]):
///
/// 1. the audit rows, in Request-Id order (the first of a repeated Request-Id in batch order
///    is the one stored);
/// 2. the payments of the accepted ones: (a) those the store may lack created, in invoice
///    order, each by its invoice's first change that is not PENDING; (b) every other one
///    locked (`FOR UPDATE`), in invoice order; then each change applied in memory (a
///    payment's changes in batch order), deciding the events, and (c) the changed payments
///    written;
/// 3. the log's lock, the events (in pass 2's order), one statement linking them to their
///    notifications, and the commit.
///
/// An item's result is what recording it alone would give: its audit row depends on no other
/// item, its change only on the earlier changes of its own payment, and each pass keeps
/// batch order among those.
async fn record_in_one_transaction<B: Backend>(
    backend: &B,
    batch: &[InboundNotification],
) -> Result<Vec<Recorded>, BatchFailure> {
    let mut tx = backend.begin().await.map_err(BatchFailure::Store)?;
    let conn = &mut *tx;
    let mut recorded = vec![Recorded::Duplicate; batch.len()];
    let id = |k: usize| batch[k].doku_request_id.as_str();

    let mut by_request_id: Vec<usize> = (0..batch.len()).collect();
    by_request_id.sort_unstable_by(|&a, &b| id(a).cmp(id(b)).then(a.cmp(&b)));
    by_request_id.dedup_by(|later, first| id(*later) == id(*first));
    let audits = by_request_id.iter().map(|&k| &batch[k]);
    let stored = insert_audits(conn, audits).await.map_err(batch_failure)?;
    let stored: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let mut accepted = Vec::new();
    for k in by_request_id {
        if !stored.contains(id(k)) {
            continue;
        }
        recorded[k] = Recorded::Stored { event: None };
        if let (Verdict::Accepted, Some(change)) = (&batch[k].verdict, &batch[k].change) {
            accepted.push((k, change));
        }
    }

    // By invoice; a payment's changes in batch order.
    accepted.sort_unstable_by(|(a, x), (b, y)| x.invoice.cmp(&y.invoice).then(a.cmp(b)));
    let mut creators: Vec<(usize, &StatusChange)> = Vec::new();
    for &(k, change) in &accepted {
        let first = creators
            .last()
            .is_none_or(|(_, c)| c.invoice != change.invoice);
        if first && change.status != PaymentStatus::Pending {
            creators.push((k, change));
        }
    }
    let creators = creators
        .iter()
        .map(|&(k, change)| created_payment(change, &batch[k]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(batch_failure)?;
    let created = create_from_notifications(conn, &creators).await;
    let created: HashSet<String> = created.map_err(batch_failure)?.into_iter().collect();
    // The payments this transaction created, as inserted, until their creating change.
    let mut fresh: BTreeMap<InvoiceNumber, PaymentRecord> = creators
        .into_iter()
        .filter(|r| created.contains(r.payment.invoice.as_str()))
        .map(|r| (r.payment.invoice.clone(), r))
        .collect();
    let mut others: Vec<&InvoiceNumber> = accepted.iter().map(|(_, c)| &c.invoice).collect();
    others.dedup();
    others.retain(|invoice| !fresh.contains_key(*invoice));
    let locked = payments_locked(conn, &others)
        .await
        .map_err(batch_failure)?;
    // Each held payment as this transaction changed it, and whether it did.
    let mut held: BTreeMap<InvoiceNumber, (PaymentRecord, bool)> = locked
        .into_iter()
        .map(|r| (r.payment.invoice.clone(), (r, false)))
        .collect();

    let mut appends = Vec::new();
    let mut owners = Vec::new();
    for (k, change) in accepted {
        let n = &batch[k];
        let Some((record, written)) = held.get_mut(&change.invoice) else {
            // A PENDING for an unknown invoice reserves nothing: audit row only.
            if change.status == PaymentStatus::Pending {
                continue;
            }
            // The invoice's first change that is not PENDING: it created the payment.
            let Some(record) = fresh.remove(&change.invoice) else {
                return Err(BatchFailure::Store(StoreError::Unavailable(format!(
                    "invoice {} conflicted with a row that then vanished; retry",
                    change.invoice
                ))));
            };
            appends.push(Append {
                change,
                occur: change.occurred(n.received_at),
                code: change.payment_code.clone(),
                channel: n.channel,
                doku_request_id: Some(&n.doku_request_id),
            });
            owners.push(k);
            held.insert(change.invoice.clone(), (record, false));
            continue;
        };
        let request_id = Some(n.doku_request_id.as_str());
        let changed = apply_change(
            conn,
            record,
            change,
            true,
            request_id,
            n.received_at,
            &appends,
        )
        .await
        .map_err(batch_failure)?;
        *written |= changed.written;
        if changed.withheld {
            let marked = mark_undated_repeat(conn, &n.doku_request_id).await;
            marked.map_err(batch_failure)?;
            recorded[k] = Recorded::UndatedRepeat;
        }
        if let Some(append) = changed.append {
            appends.push(append);
            owners.push(k);
        }
    }
    let changed: Vec<&PaymentRecord> = held
        .values()
        .filter_map(|(record, written)| written.then_some(record))
        .collect();
    write_changes(conn, &changed).await.map_err(batch_failure)?;

    if !appends.is_empty() {
        lock_event_log(conn).await.map_err(BatchFailure::Store)?;
        let events = append_events(conn, &appends).await;
        let events = events.map_err(batch_failure)?;
        link_notifications(conn, &events)
            .await
            .map_err(batch_failure)?;
        for (event, &k) in events.into_iter().zip(&owners) {
            recorded[k] = Recorded::Stored { event: Some(event) };
        }
    }
    B::commit(tx).await.map_err(BatchFailure::Store)?;
    Ok(recorded)
}

/// Events with `seq > after`, in order, at most `limit`.
pub(super) async fn events_after<C: Conn>(
    conn: &mut C,
    after: u64,
    limit: u32,
) -> Result<Vec<Event>, StoreError> {
    let sql = concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
    );
    conn.events(Stmt::new(sql).bind(signed(after)).bind(i64::from(limit)))
        .await
}

/// The highest committed seq; pruning may have removed the newest events, whose seqs still
/// count as seen.
pub(super) async fn last_seq<C: Conn>(conn: &mut C) -> Result<u64, StoreError> {
    let seq = conn.int(Stmt::new(C::DIALECT.last_seq)).await?;
    unsigned("last seq", seq.unwrap_or(0))
}

/// The highest seq removed by retention (0 if none).
pub(super) async fn pruned_through<C: Conn>(conn: &mut C) -> Result<u64, StoreError> {
    let sql = "SELECT value FROM meta WHERE key = 'pruned_through'";
    let seq = conn.int(Stmt::new(sql)).await?;
    unsigned("pruned_through", seq.unwrap_or(0))
}

/// Deletes the events recorded before `before`: a prefix of the log, everything up to the
/// newest event recorded before it, so that "a token below pruned_through is expired" stays
/// exact. An append in flight on PostgreSQL draws a seq above every committed one, so it is
/// never inside the prefix.
pub(super) async fn prune_events<C: Conn>(
    conn: &mut C,
    before: OffsetDateTime,
) -> Result<u64, StoreError> {
    let newest = Stmt::new("SELECT MAX(seq) FROM events WHERE recorded_at < $1").bind(before);
    let Some(cutoff) = conn.int(newest).await? else {
        return Ok(0);
    };
    let removed = conn
        .execute(Stmt::new("DELETE FROM events WHERE seq <= $1").bind(cutoff))
        .await?;
    conn.execute(Stmt::new(C::DIALECT.raise_pruned_through).bind(cutoff))
        .await?;
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// The store

/// What a SQL backend supplies so that [`Store`] is implemented once for all of them (below):
/// its connections, and the operations whose concurrency story is its own. Method names
/// differ from [`Store`]'s so that calls on a backend are never ambiguous.
pub(super) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The connection statements run on.
    type Conn: Conn;
    /// A connection outside a write transaction.
    type Pooled: DerefMut<Target = Self::Conn> + Send;
    /// A write transaction, rolled back if dropped.
    type Tx: DerefMut<Target = Self::Conn> + Send;

    /// A connection for reads outside a write transaction. Every write of the shared
    /// operations runs in a transaction ([`Backend::begin`]), a one-statement write too: on
    /// SQLite that keeps the commit's `fsync` off the runtime's threads.
    fn reader(&self) -> impl Future<Output = Result<Self::Pooled, StoreError>> + Send;

    /// Begins a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Begins a write transaction whose commit need not wait for the disk: it survives the
    /// process being killed, and is lost only if the machine stops (power, kernel) before the
    /// next transaction that does wait, which makes it durable too. Only for a write whose
    /// loss the sidecar recovers from ([`Store::record_issued`]). By default
    /// [`Backend::begin`].
    fn begin_unsynced(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send {
        self.begin()
    }

    /// Commits a write transaction.
    fn commit(tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`Store::ping`].
    fn ping_database(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`Store::create_payment`].
    fn create_draft(
        &self,
        draft: &PaymentDraft,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// [`Store::claim_attempt`]: [`claim_attempt`] on the connection or transaction the
    /// backend needs.
    fn claim_lease(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// [`Store::commit_hints`].
    fn hints(&self) -> Option<watch::Receiver<u64>>;

    /// [`Store::sweeper_election`].
    fn election(&self) -> Box<dyn Election>;

    /// The queue of [`Store::record_notification`]'s group commit.
    fn notification_batches(&self) -> &NotificationBatches;
}

/// The group commit of notifications: [`InboundNotification`]s waiting for a transaction,
/// answered with what [`record_notifications`] made of each.
pub(super) type NotificationBatches =
    GroupCommit<InboundNotification, Result<Recorded, StoreError>>;

/// Runs `op` in a write transaction of `backend` and commits what it did.
macro_rules! in_transaction {
    ($backend:expr, |$tx:ident| $op:expr) => {
        in_transaction!($backend, begin, |$tx| $op)
    };
    ($backend:expr, $begin:ident, |$tx:ident| $op:expr) => {{
        let mut tx = $backend.$begin().await?;
        let $tx = &mut *tx;
        let done = $op.await?;
        B::commit(tx).await?;
        Ok(done)
    }};
}

#[async_trait]
impl<B: Backend> Store for B {
    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_database().await
    }

    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        self.create_draft(draft).await
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        payment_by_key(&mut *self.reader().await?, key).await
    }

    async fn get_payment(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        payment_in(&mut *self.reader().await?, invoice.as_str()).await
    }

    async fn claim_attempt(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.claim_lease(invoice, now, until).await
    }

    async fn release_attempt(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        in_transaction!(self, |tx| release_attempt(tx, invoice))
    }

    async fn record_outcome_unknown(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        in_transaction!(self, |tx| record_outcome_unknown(tx, invoice))
    }

    async fn record_rejected(
        &self,
        invoice: &InvoiceNumber,
        request_id: &str,
        rejection: &AttemptRejection,
    ) -> Result<bool, StoreError> {
        in_transaction!(self, |tx| record_rejected(
            tx, invoice, request_id, rejection
        ))
    }

    async fn rejected_attempts(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Vec<RejectedAttempt>, StoreError> {
        rejected_attempts(&mut *self.reader().await?, invoice).await
    }

    async fn record_issued(
        &self,
        invoice: &InvoiceNumber,
        issued: &IssuedCode,
        first_check: Option<OffsetDateTime>,
    ) -> Result<PaymentRecord, StoreError> {
        // Without waiting for the disk: see the recovery argument on [`Store::record_issued`].
        in_transaction!(self, begin_unsynced, |tx| record_issued(
            tx,
            invoice,
            issued,
            first_check
        ))
    }

    async fn apply_status(&self, change: &StatusChange) -> Result<Applied, StoreError> {
        in_transaction!(self, |tx| apply_status(tx, change))
    }

    async fn record_notification(&self, n: InboundNotification) -> Result<Recorded, StoreError> {
        let mut ticket = self.notification_batches().enqueue(n);
        loop {
            let turn = ticket.turn().await.map_err(|Abandoned| {
                StoreError::Unavailable(
                    "the store closed before the notification was recorded".into(),
                )
            })?;
            match turn {
                Turn::Answered(result) => return result,
                Turn::Lead(batch) => {
                    let results = record_notifications(self, batch.items()).await;
                    batch.answer(results);
                }
            }
        }
    }

    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        events_after(&mut *self.reader().await?, after, limit).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        last_seq(&mut *self.reader().await?).await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        pruned_through(&mut *self.reader().await?).await
    }

    async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        in_transaction!(self, |tx| prune_events(tx, before))
    }

    async fn due_for_check(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        due_for_check(&mut *self.reader().await?, now, limit).await
    }

    async fn schedule_check(
        &self,
        invoice: &InvoiceNumber,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        in_transaction!(self, |tx| schedule_check(tx, invoice, at))
    }

    fn commit_hints(&self) -> Option<watch::Receiver<u64>> {
        self.hints()
    }

    fn sweeper_election(&self) -> Box<dyn Election> {
        self.election()
    }
}
