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

use std::future::Future;
use std::ops::DerefMut;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::decide::{Emit, Write, emit, plan_change, rejection_frees};
use super::group::{Abandoned, GroupCommit, Turn};
use super::rows::{
    UNDATED_REPEAT_DETAIL, event_columns, instructions_json, payment_columns, payment_of_invoice,
    rejected_draft, signed, unix, unix_now, unsigned,
};
use super::sql::{Conn, Stmt};
use super::{
    Applied, AttemptRejection, Created, Election, InboundNotification, PaymentDraft, PaymentRecord,
    Recorded, RejectedAttempt, Store, StoreError, Verdict,
};
use crate::payment::{
    Channel, Event, InvoiceNumber, IssuedCode, NewPayment, PaymentCode, PaymentStatus, StatusChange,
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
/// (taking it again in the same transaction is free).
///
/// A transaction that may append events for more than one payment, or that may append after
/// locking a payment row, takes it *first*, before any payment row: every such transaction
/// then locks in the same order (log, then rows), and two of them can never each hold what
/// the other waits for. [`append_event`] takes it too, for the transactions that lock one row
/// and append last.
async fn lock_event_log<C: Conn>(conn: &mut C) -> Result<(), StoreError> {
    if let Some((lock, key)) = C::DIALECT.lock_events {
        conn.execute(Stmt::new(lock).bind(key)).await?;
    }
    Ok(())
}

/// Appends an event for `change` on a payment of `channel` at `occur` (DOKU's time, or when
/// the sidecar learned an undated change), after taking the dialect's append lock.
async fn append_event<C: Conn>(
    conn: &mut C,
    change: &StatusChange,
    occur: OffsetDateTime,
    code: Option<&PaymentCode>,
    channel: Channel,
    doku_request_id: Option<&str>,
) -> Result<Event, StoreError> {
    lock_event_log(conn).await?;
    let insert = Stmt::new(concat!(
        "INSERT INTO events (invoice, status, amount, payment_code, channel, occur_time, \
         source, doku_request_id, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING ",
        event_columns!()
    ));
    let insert = insert
        .bind(change.invoice.as_str())
        .bind(change.status.as_str())
        .bind(change.amount.rupiah())
        .bind(code.map(PaymentCode::as_str))
        .bind(channel.as_str())
        .bind(occur)
        .bind(change.source.as_str())
        .bind(doku_request_id)
        .bind(unix_now());
    conn.event(insert).await
}

/// What [`apply_change`] did.
#[derive(Debug)]
pub(super) struct Changed {
    /// The payment afterwards.
    pub(super) record: PaymentRecord,
    /// The event appended, if any.
    pub(super) event: Option<Event>,
    /// Whether it was an undated repeat PAID (withheld).
    pub(super) withheld: bool,
}

/// Applies `change` to the held payment `record` by [`emit`] and [`plan_change`]; an undated
/// change happens at `learned_at`.
pub(super) async fn apply_change<C: Conn>(
    conn: &mut C,
    record: PaymentRecord,
    change: &StatusChange,
    repeat_allowed: bool,
    doku_request_id: Option<&str>,
    learned_at: OffsetDateTime,
) -> Result<Changed, StoreError> {
    let invoice = &record.payment.invoice;
    let decision = emit(&record, change, repeat_allowed);
    let emitted = match decision {
        Emit::Yes => true,
        Emit::No | Emit::Withheld => false,
        // The row held since the lookup serializes this check with every other change of
        // the payment.
        Emit::UnlessPaidAt(at) => {
            let seen = Stmt::new(
                "SELECT EXISTS (SELECT 1 FROM events \
                 WHERE invoice = $1 AND status = 'PAID' AND occur_time = $2)",
            );
            !conn.flag(seen.bind(invoice.as_str()).bind(at)).await?
        }
    };
    let withheld = decision == Emit::Withheld;
    let m = match plan_change(&record, change, emitted, learned_at) {
        Write::Nothing => {
            return Ok(Changed {
                record,
                event: None,
                withheld,
            });
        }
        Write::Code(code) => {
            let sql = concat!(
                "UPDATE payments SET payment_code = $2, updated_at = $3 WHERE invoice = $1 \
                 RETURNING ",
                payment_columns!()
            );
            let stmt = Stmt::new(sql).bind(invoice.as_str()).bind(code.as_str());
            let record = returned(conn.payment(stmt.bind(unix_now())).await?, invoice)?;
            return Ok(Changed {
                record,
                event: None,
                withheld,
            });
        }
        Write::Move(m) => m,
    };
    let update = Stmt::new(concat!(
        "UPDATE payments SET status = $2, pay_time = $3, payment_code = $4, updated_at = $5 \
         WHERE invoice = $1 RETURNING ",
        payment_columns!()
    ));
    let update = update
        .bind(invoice.as_str())
        .bind(m.status.as_str())
        .bind(m.pay_time)
        .bind(m.code.as_ref().map(PaymentCode::as_str))
        .bind(unix_now());
    let updated = returned(conn.payment(update).await?, invoice)?;
    let (code, channel) = (m.event_code.as_ref(), updated.payment.channel);
    let event = append_event(conn, change, m.occur_time, code, channel, doku_request_id).await?;
    Ok(Changed {
        record: updated,
        event: Some(event),
        withheld: false,
    })
}

/// Applies a status change from reconciliation to the held payment.
pub(super) async fn apply_status<C: Conn>(
    conn: &mut C,
    change: &StatusChange,
) -> Result<Applied, StoreError> {
    // The log before the row, as a batch of notifications takes them.
    lock_event_log(conn).await?;
    let record = existing_locked(conn, &change.invoice).await?;
    let request_id = change.doku_request_id.as_deref();
    let now = OffsetDateTime::now_utc();
    let changed = apply_change(conn, record, change, false, request_id, now).await?;
    Ok(Applied {
        record: changed.record,
        event: changed.event,
    })
}

/// Creates the payment of an accepted notification for an invoice the store did not know,
/// from what DOKU sent, and appends its event. `None` if another transaction created the
/// invoice meanwhile (PostgreSQL; the caller then applies the change to it). The caller never
/// passes a PENDING change.
async fn create_from_notification<C: Conn>(
    conn: &mut C,
    change: &StatusChange,
    channel: Channel,
    doku_request_id: &str,
    received_at: OffsetDateTime,
) -> Result<Option<Event>, StoreError> {
    let occur_time = change.occur_time.unwrap_or(received_at);
    let occur = unix(occur_time);
    let insert = Stmt::new(
        "INSERT INTO payments (invoice, amount, channel, payment_code, status, create_time, \
         expire_time, pay_time, reusable, fingerprint, check_count, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, FALSE, '', 0, $8) \
         ON CONFLICT (invoice) DO NOTHING",
    );
    let insert = insert
        .bind(change.invoice.as_str())
        .bind(change.amount.rupiah())
        .bind(channel.as_str())
        .bind(change.payment_code.as_ref().map(PaymentCode::as_str))
        .bind(change.status.as_str())
        .bind(occur)
        .bind((change.status == PaymentStatus::Paid).then_some(occur))
        .bind(unix_now());
    if conn.execute(insert).await? == 0 {
        return Ok(None);
    }
    let code = change.payment_code.as_ref();
    let request_id = Some(doku_request_id);
    let event = append_event(conn, change, occur_time, code, channel, request_id).await?;
    Ok(Some(event))
}

/// Applies the change of an accepted notification: to the stored payment, or by creating
/// the payment. Returns the event, if any, and whether the change was withheld.
async fn accept<C: Conn>(
    conn: &mut C,
    n: &InboundNotification,
    change: &StatusChange,
) -> Result<(Option<Event>, bool), StoreError> {
    let invoice = change.invoice.as_str();
    let record = match payment_locked(conn, invoice).await? {
        Some(record) => record,
        // A PENDING for an unknown invoice reserves nothing: audit row only.
        None if change.status == PaymentStatus::Pending => return Ok((None, false)),
        None => {
            let id = &n.doku_request_id;
            let created = create_from_notification(conn, change, n.channel, id, n.received_at);
            if let Some(event) = created.await? {
                return Ok((Some(event), false));
            }
            // Created by another transaction since the lookup.
            payment_locked(conn, invoice).await?.ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "invoice {invoice} conflicted with a row that then vanished; retry"
                ))
            })?
        }
    };
    let request_id = Some(n.doku_request_id.as_str());
    let changed = apply_change(conn, record, change, true, request_id, n.received_at).await?;
    Ok((changed.event, changed.withheld))
}

/// Records a verified notification and applies an accepted one's change; see
/// [`super::Store::record_notification`].
pub(super) async fn record_notification<C: Conn>(
    conn: &mut C,
    n: &InboundNotification,
) -> Result<Recorded, StoreError> {
    let detail = match &n.verdict {
        Verdict::Accepted => None,
        Verdict::Mismatch(d) | Verdict::UnknownStatus(d) => Some(d.as_str()),
        Verdict::UndatedRepeat => Some(UNDATED_REPEAT_DETAIL),
    };
    // A concurrent insert of the same Request-Id makes this wait for it, then do nothing.
    let audit = Stmt::new(
        "INSERT INTO notifications (doku_request_id, received_at, headers, body, verdict, \
         verdict_detail, invoice) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (doku_request_id) DO NOTHING",
    );
    let audit = audit
        .bind(n.doku_request_id.as_str())
        .bind(n.received_at)
        .bind(n.headers.as_str())
        .bind(n.body.as_slice())
        .bind(n.verdict.as_str())
        .bind(detail)
        .bind(n.change.as_ref().map(|c| c.invoice.as_str()));
    if conn.execute(audit).await? == 0 {
        return Ok(Recorded::Duplicate);
    }
    let (event, withheld) = match (&n.verdict, &n.change) {
        (Verdict::Accepted, Some(change)) => accept(conn, n, change).await?,
        _ => (None, false),
    };
    let id = n.doku_request_id.as_str();
    if withheld {
        let sql = "UPDATE notifications SET verdict = $2, verdict_detail = $3 \
                   WHERE doku_request_id = $1";
        let verdict = Verdict::UndatedRepeat.as_str();
        let stmt = Stmt::new(sql)
            .bind(id)
            .bind(verdict)
            .bind(UNDATED_REPEAT_DETAIL);
        conn.execute(stmt).await?;
        return Ok(Recorded::UndatedRepeat);
    }
    if let Some(event) = &event {
        let sql = "UPDATE notifications SET event_seq = $2 WHERE doku_request_id = $1";
        conn.execute(Stmt::new(sql).bind(id).bind(signed(event.seq)))
            .await?;
    }
    Ok(Recorded::Stored { event })
}

/// How a batch of notifications failed.
enum BatchFailure {
    /// The item at this index failed on its own data: it gets the error, the rest run again.
    Item(usize, StoreError),
    /// The store failed (I/O, a full disk, a lost connection): every item gets the error.
    Store(StoreError),
}

/// Records a batch of notifications (group commit, [`super::group`]) in one transaction: one
/// commit, one `fsync`, for all of them, with each item's result as if it had been recorded
/// alone, in batch order. An item that fails on its own data is answered with its error and
/// the others run again without it (failures are rare; a savepoint per item would cost every
/// batch two statements an item); an error of the store itself is every item's answer.
pub(super) async fn record_notifications<B: Backend>(
    backend: &B,
    batch: &[InboundNotification],
) -> Vec<Result<Recorded, StoreError>> {
    let mut results: Vec<Option<Result<Recorded, StoreError>>> = vec![None; batch.len()];
    loop {
        let pending: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_none()).collect();
        if pending.is_empty() {
            break;
        }
        match record_in_one_transaction(backend, batch, &pending).await {
            Ok(recorded) => {
                for (i, r) in pending.into_iter().zip(recorded) {
                    results[i] = Some(Ok(r));
                }
                break;
            }
            Err(BatchFailure::Item(i, e)) => results[i] = Some(Err(e)),
            Err(BatchFailure::Store(e)) => {
                for i in pending {
                    results[i] = Some(Err(e.clone()));
                }
                break;
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Unavailable("not recorded".into()))))
        .collect()
}

/// [`record_notifications`]' transaction over the items at `pending`.
async fn record_in_one_transaction<B: Backend>(
    backend: &B,
    batch: &[InboundNotification],
    pending: &[usize],
) -> Result<Vec<Recorded>, BatchFailure> {
    let mut tx = backend.begin().await.map_err(BatchFailure::Store)?;
    // The batch may append events for several payments: the log's lock first.
    lock_event_log(&mut *tx)
        .await
        .map_err(BatchFailure::Store)?;
    let mut recorded = Vec::with_capacity(pending.len());
    for &i in pending {
        match record_notification(&mut *tx, &batch[i]).await {
            Ok(r) => recorded.push(r),
            Err(e @ StoreError::Unavailable(_)) => return Err(BatchFailure::Store(e)),
            Err(e) => return Err(BatchFailure::Item(i, e)),
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
/// answered with what [`record_notification`] made of each.
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
