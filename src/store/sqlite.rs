//! The SQLite [`Store`]: one file on a volume, for a single pod (the default).
//!
//! # On-disk format
//!
//! One SQLite database file (plus its `-wal` and `-shm` companions), schema versioned by
//! `migrations/sqlite/` (sqlx's `_sqlx_migrations` table records what ran; migrations run at
//! open). Tables, all `STRICT`:
//!
//! - `payments`: one row per invoice (primary key): amount, channel, `payment_code` (NULL until
//!   DOKU issues it), status text (`PENDING`, `PAID`, …), create/expire/pay times, how-to-pay
//!   URLs, reusable, request fingerprint, `idempotency_key` (unique), the draft's DOKU
//!   Request-Id and body bytes, the attempt lease, the sweeper's `next_check_at` and
//!   `check_count`, `updated_at`; since migration 2, `rejected_http_status` and
//!   `rejected_message` (DOKU's definitive rejection of the draft) and `outcome_unknown`
//!   (some attempt's outcome was unknown: the draft can never be replaced); since migration 3,
//!   `trace_context` (the W3C `traceparent` of the call that created the payment).
//! - `payment_attempts` (migration 2): the audit trail of rejected attempts, keyed by their
//!   DOKU Request-Id: invoice, fingerprint, idempotency key, body bytes, outcome
//!   (`REJECTED`), DOKU's status and message, created/ended times.
//! - `events`: the event log; `seq INTEGER PRIMARY KEY AUTOINCREMENT`, so a seq is never
//!   reused even after pruning. A DOKU Request-Id appears at most once.
//! - `notifications`: the audit trail of verified DOKU notifications, keyed by DOKU's
//!   Request-Id: headers, body bytes, verdict (`ACCEPTED`, `MISMATCH`, `UNKNOWN_STATUS`,
//!   `UNDATED_REPEAT`) and its detail, the invoice, and the seq of the event it produced, if
//!   any.
//! - `meta`: named integers; `pruned_through` is the highest seq removed by retention.
//!
//! Times are whole unix seconds, UTC (DOKU's times are whole seconds; a sub-second part is
//! dropped on the way in). Pragmas on every connection: `journal_mode=WAL`,
//! `synchronous=FULL` (a committed notification survives power loss, not only a crash),
//! `foreign_keys=ON`, `busy_timeout` 5 s.
//!
//! # Concurrency
//!
//! Writes go through a pool of exactly one connection and every write transaction starts
//! with `BEGIN IMMEDIATE`: writers queue in the pool (in order, without SQLite's busy-wait),
//! and a transaction never has to upgrade a read lock to a write lock, which in WAL mode can
//! fail with `SQLITE_BUSY` instead of waiting. A second process writing to the same file
//! (which the deployment does not do) would still be handled by the busy timeout. Reads that
//! are not part of a write go through a separate pool of a few connections, which WAL lets run
//! beside the writer; they see every committed write.

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use time::OffsetDateTime;

use super::rows::{
    AttemptRow, EventRow, PaymentRow, Transition, UNDATED_REPEAT_DETAIL, attempt_columns,
    decode_all, event_columns, payment_columns, rejected_draft, signed, transition, unix, unix_now,
    unsigned,
};
use super::{
    Applied, AttemptRejection, Created, InboundNotification, PaymentDraft, PaymentRecord, Recorded,
    RejectedAttempt, Store, StoreError, Verdict,
};
use crate::payment::{
    Channel, Event, InvoiceNumber, IssuedCode, PaymentCode, PaymentStatus, StatusChange,
};

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a pooled connection before the store is "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections for reads outside write transactions.
const READERS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store. Cheap to share behind an `Arc`; see the module doc for the format.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: every write, in `BEGIN IMMEDIATE` transactions.
    writer: SqlitePool,
    /// Reads outside write transactions.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, relative or
    /// absolute: `sqlite:///var/lib/o2o/o2o.db`) and runs pending migrations.
    ///
    /// In-memory databases are refused: the sidecar's promise is that an acknowledged
    /// notification is durable, and tests use a temporary file just as cheaply.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite store URL: {e}")))?;
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Unavailable(
                "an in-memory SQLite store is not durable; use sqlite://PATH".into(),
            ));
        }
        let options = options
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        // The writer connects first: it creates the file and switches it to WAL (a persistent
        // property of the file, so readers need not set it), then migrates.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, _| Box::pin(writer_usable(conn)))
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(db_error)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| super::rows::migrate_error(e, outside_data))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        Ok(Self { writer, reader })
    }

    /// Closes every connection, waiting for in-flight operations; later calls fail as
    /// [`StoreError::Unavailable`]. Lets a graceful shutdown checkpoint the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }
}

/// Whether the writer connection can start a transaction. When a COMMIT fails with an I/O
/// error or a full disk, SQLite has already rolled the transaction back; sqlx's own ROLLBACK
/// then fails and sqlx keeps counting the transaction as open, so every later `BEGIN` on that
/// connection would be refused until a restart. Such a connection is replaced by a new one.
async fn writer_usable(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // A dropped transaction's ROLLBACK may still be queued: let it run, then look again.
    let _ = sqlx::query("SELECT 1").execute(&mut *conn).await;
    Ok(!conn.is_in_transaction())
}

/// SQLite's primary result codes that mean "the environment", not "the data": BUSY, LOCKED,
/// NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL.
fn outside_data(e: &dyn sqlx::error::DatabaseError) -> bool {
    let extended: i32 = e.code().and_then(|c| c.parse().ok()).unwrap_or(0);
    matches!(extended & 0xff, 5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15)
}

fn db_error(e: sqlx::Error) -> StoreError {
    super::rows::store_error(e, outside_data)
}

async fn payment_in(
    conn: &mut SqliteConnection,
    invoice: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE invoice = $1"
    ))
    .bind(invoice)
    .fetch_optional(conn)
    .await
    .map_err(db_error)?
    .map(PaymentRecord::try_from)
    .transpose()
}

async fn payment_by_key(
    conn: &mut SqliteConnection,
    key: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(conn)
    .await
    .map_err(db_error)?
    .map(PaymentRecord::try_from)
    .transpose()
}

/// The row of `invoice`, or [`StoreError::NotFound`].
async fn existing(
    conn: &mut SqliteConnection,
    invoice: &InvoiceNumber,
) -> Result<PaymentRecord, StoreError> {
    payment_in(conn, invoice.as_str())
        .await?
        .ok_or_else(|| StoreError::NotFound(invoice.clone()))
}

/// Appends an event for `change` on a payment of `channel`, at `occur` (DOKU's time, or when
/// the sidecar learned an undated change).
async fn append_event(
    conn: &mut SqliteConnection,
    change: &StatusChange,
    occur: OffsetDateTime,
    code: Option<&PaymentCode>,
    channel: Channel,
    doku_request_id: Option<&str>,
) -> Result<Event, StoreError> {
    let row = sqlx::query_as::<_, EventRow>(concat!(
        "INSERT INTO events (invoice, status, amount, payment_code, channel, occur_time, \
         source, doku_request_id, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING ",
        event_columns!()
    ))
    .bind(change.invoice.as_str())
    .bind(change.status.as_str())
    .bind(change.amount.rupiah())
    .bind(code.map(PaymentCode::as_str))
    .bind(channel.as_str())
    .bind(unix(occur))
    .bind(change.source.as_str())
    .bind(doku_request_id)
    .bind(unix_now())
    .fetch_one(conn)
    .await
    .map_err(db_error)?;
    Event::try_from(row)
}

/// Applies `change` to the stored payment `record` (inside the caller's transaction), by
/// the rule of [`transition`]; an undated change happens at `learned_at`. Returns the payment
/// afterwards, the event, if any, and whether it was an undated repeat PAID (withheld).
async fn apply_change(
    conn: &mut SqliteConnection,
    record: PaymentRecord,
    change: &StatusChange,
    repeat_allowed: bool,
    doku_request_id: Option<&str>,
    learned_at: OffsetDateTime,
) -> Result<(PaymentRecord, Option<Event>, bool), StoreError> {
    let p = &record.payment;
    let code = p
        .payment_code
        .clone()
        .or_else(|| change.payment_code.clone());
    let mut withheld = false;
    let emit = match transition(p.status, p.reusable, change.status, repeat_allowed) {
        Transition::Forward => true,
        Transition::RepeatPaid if change.occur_time.is_none() => {
            // Not distinguishable from a redelivery under a new Request-Id.
            withheld = true;
            false
        }
        Transition::RepeatPaid => {
            let same_payment_seen: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events \
                 WHERE invoice = $1 AND status = 'PAID' AND occur_time = $2)",
            )
            .bind(p.invoice.as_str())
            .bind(change.occur_time.map(unix))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            !same_payment_seen
        }
        Transition::Stay => false,
    };
    if !emit {
        if code == p.payment_code {
            return Ok((record, None, withheld));
        }
        let row = sqlx::query_as::<_, PaymentRow>(concat!(
            "UPDATE payments SET payment_code = $2, updated_at = $3 WHERE invoice = $1 \
             RETURNING ",
            payment_columns!()
        ))
        .bind(p.invoice.as_str())
        .bind(code.as_ref().map(PaymentCode::as_str))
        .bind(unix_now())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
        return Ok((PaymentRecord::try_from(row)?, None, withheld));
    }
    let occur_time = change.occur_time.unwrap_or(learned_at);
    let occur = unix(occur_time);
    let pay_time = match change.status {
        // The latest payment of a reusable code; out-of-order notifications do not move it back.
        PaymentStatus::Paid => Some(p.pay_time.map_or(occur, |t| unix(t).max(occur))),
        _ => p.pay_time.map(unix),
    };
    let row = sqlx::query_as::<_, PaymentRow>(concat!(
        "UPDATE payments SET status = $2, pay_time = $3, payment_code = $4, updated_at = $5 \
         WHERE invoice = $1 RETURNING ",
        payment_columns!()
    ))
    .bind(p.invoice.as_str())
    .bind(change.status.as_str())
    .bind(pay_time)
    .bind(code.as_ref().map(PaymentCode::as_str))
    .bind(unix_now())
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    let updated = PaymentRecord::try_from(row)?;
    let event_code = change.payment_code.as_ref().or(code.as_ref());
    let event = append_event(
        conn,
        change,
        occur_time,
        event_code,
        updated.payment.channel,
        doku_request_id,
    )
    .await?;
    Ok((updated, Some(event), false))
}

/// Creates the payment of an accepted notification for an invoice the store did not know,
/// from what DOKU sent, and appends its event. The caller never passes a PENDING change.
async fn create_from_notification(
    conn: &mut SqliteConnection,
    change: &StatusChange,
    channel: Channel,
    doku_request_id: &str,
    received_at: OffsetDateTime,
) -> Result<Event, StoreError> {
    let occur_time = change.occur_time.unwrap_or(received_at);
    let occur = unix(occur_time);
    sqlx::query(
        "INSERT INTO payments (invoice, amount, channel, payment_code, status, create_time, \
         expire_time, pay_time, reusable, fingerprint, check_count, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 0, '', 0, $8)",
    )
    .bind(change.invoice.as_str())
    .bind(change.amount.rupiah())
    .bind(channel.as_str())
    .bind(change.payment_code.as_ref().map(PaymentCode::as_str))
    .bind(change.status.as_str())
    .bind(occur)
    .bind((change.status == PaymentStatus::Paid).then_some(occur))
    .bind(unix_now())
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    append_event(
        conn,
        change,
        occur_time,
        change.payment_code.as_ref(),
        channel,
        Some(doku_request_id),
    )
    .await
}

/// Replaces the rejected draft of the draft's invoice with `draft` (inside the caller's
/// transaction, which holds the write lock): new request, Request-Id, key and times; the
/// rejection, lease and schedule cleared.
async fn replace_rejected(
    conn: &mut SqliteConnection,
    draft: &PaymentDraft,
) -> Result<PaymentRecord, StoreError> {
    let request = &draft.request;
    let row = sqlx::query_as::<_, PaymentRow>(concat!(
        "UPDATE payments SET amount = $2, channel = $3, create_time = $4, expire_time = $5, \
         reusable = $6, fingerprint = $7, idempotency_key = $8, doku_request_id = $9, \
         doku_request_body = $10, updated_at = $11, pay_time = NULL, how_to_pay_url = NULL, \
         how_to_pay_api_url = NULL, attempt_lease_until = NULL, next_check_at = NULL, \
         check_count = 0, rejected_http_status = NULL, rejected_message = NULL, \
         trace_context = $12 \
         WHERE invoice = $1 AND ",
        rejected_draft!(),
        " RETURNING ",
        payment_columns!()
    ))
    .bind(request.invoice.as_str())
    .bind(request.amount.rupiah())
    .bind(request.channel.as_str())
    .bind(unix(draft.create_time))
    .bind(unix(draft.expire_time))
    .bind(request.reusable)
    .bind(&draft.fingerprint)
    .bind(request.idempotency_key.as_deref())
    .bind(&draft.doku_request.request_id)
    .bind(&draft.doku_request.body)
    .bind(unix_now())
    .bind(draft.trace_context.as_deref())
    .fetch_one(conn)
    .await
    .map_err(db_error)?;
    PaymentRecord::try_from(row)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        let mut tx = self.begin().await?;
        let request = &draft.request;
        if let Some(record) = payment_in(&mut tx, request.invoice.as_str()).await? {
            if record.rejected_draft().is_none() || record.fingerprint == draft.fingerprint {
                return Ok(Created::Existing(record));
            }
            // A different request for an invoice DOKU never processed: it replaces the
            // rejected draft, unless its key belongs to another invoice.
            if let Some(key) = &request.idempotency_key
                && let Some(owner) = payment_by_key(&mut tx, key).await?
                && owner.payment.invoice != request.invoice
            {
                return Ok(Created::IdempotencyKeyTaken(owner));
            }
            let record = replace_rejected(&mut tx, draft).await?;
            tx.commit().await.map_err(db_error)?;
            return Ok(Created::New(record));
        }
        if let Some(key) = &request.idempotency_key
            && let Some(record) = payment_by_key(&mut tx, key).await?
        {
            return Ok(Created::IdempotencyKeyTaken(record));
        }
        let row = sqlx::query_as::<_, PaymentRow>(concat!(
            "INSERT INTO payments (invoice, amount, channel, status, create_time, expire_time, \
             reusable, fingerprint, idempotency_key, doku_request_id, doku_request_body, \
             check_count, updated_at, trace_context) \
             VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, $8, $9, $10, 0, $11, $12) RETURNING ",
            payment_columns!()
        ))
        .bind(request.invoice.as_str())
        .bind(request.amount.rupiah())
        .bind(request.channel.as_str())
        .bind(unix(draft.create_time))
        .bind(unix(draft.expire_time))
        .bind(request.reusable)
        .bind(&draft.fingerprint)
        .bind(request.idempotency_key.as_deref())
        .bind(&draft.doku_request.request_id)
        .bind(&draft.doku_request.body)
        .bind(unix_now())
        .bind(draft.trace_context.as_deref())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let record = PaymentRecord::try_from(row)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Created::New(record))
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(db_error)?;
        payment_by_key(&mut conn, key).await
    }

    async fn get_payment(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(db_error)?;
        payment_in(&mut conn, invoice.as_str()).await
    }

    async fn claim_attempt(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // A lease still set when it is taken over was never released: its holder vanished
        // mid-call, so that attempt's outcome is unknown.
        let taken = sqlx::query(
            "UPDATE payments SET attempt_lease_until = $2, updated_at = $4, \
             outcome_unknown = CASE WHEN attempt_lease_until IS NULL THEN outcome_unknown \
             ELSE 1 END \
             WHERE invoice = $1 AND payment_code IS NULL AND rejected_http_status IS NULL \
             AND (attempt_lease_until IS NULL OR attempt_lease_until <= $3)",
        )
        .bind(invoice.as_str())
        .bind(unix(until))
        .bind(unix(now))
        .bind(unix_now())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected()
            == 1;
        if !taken {
            existing(&mut tx, invoice).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(taken)
    }

    async fn release_attempt(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        let found = sqlx::query(
            "UPDATE payments SET attempt_lease_until = NULL, updated_at = $2 WHERE invoice = $1",
        )
        .bind(invoice.as_str())
        .bind(unix_now())
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if found == 0 {
            return Err(StoreError::NotFound(invoice.clone()));
        }
        Ok(())
    }

    async fn record_outcome_unknown(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        let found = sqlx::query(
            "UPDATE payments SET outcome_unknown = 1, attempt_lease_until = NULL, \
             updated_at = $2 WHERE invoice = $1",
        )
        .bind(invoice.as_str())
        .bind(unix_now())
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if found == 0 {
            return Err(StoreError::NotFound(invoice.clone()));
        }
        Ok(())
    }

    async fn record_rejected(
        &self,
        invoice: &InvoiceNumber,
        request_id: &str,
        rejection: &AttemptRejection,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let record = existing(&mut tx, invoice).await?;
        let ours = record
            .doku_request
            .as_ref()
            .is_some_and(|r| r.request_id == request_id);
        if !ours {
            // Another draft now: nothing of ours to end.
            return Ok(false);
        }
        let freed = record.payment.payment_code.is_none()
            && record.payment.status == PaymentStatus::Pending
            && !record.outcome_unknown;
        if freed {
            let body = record.doku_request.as_ref().map(|r| r.body.clone());
            sqlx::query(
                "INSERT INTO payment_attempts (doku_request_id, invoice, fingerprint, \
                 idempotency_key, request_body, outcome, http_status, message, created_at, \
                 ended_at) VALUES ($1, $2, $3, $4, $5, 'REJECTED', $6, $7, $8, $9) \
                 ON CONFLICT (doku_request_id) DO NOTHING",
            )
            .bind(request_id)
            .bind(invoice.as_str())
            .bind(&record.fingerprint)
            .bind(record.idempotency_key.as_deref())
            .bind(body.unwrap_or_default())
            .bind(i64::from(rejection.http_status))
            .bind(&rejection.message)
            .bind(unix(record.payment.create_time))
            .bind(unix_now())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        sqlx::query(
            "UPDATE payments SET attempt_lease_until = NULL, updated_at = $2, \
             rejected_http_status = CASE WHEN $3 THEN $4 ELSE rejected_http_status END, \
             rejected_message = CASE WHEN $3 THEN $5 ELSE rejected_message END, \
             next_check_at = CASE WHEN $3 THEN NULL ELSE next_check_at END \
             WHERE invoice = $1",
        )
        .bind(invoice.as_str())
        .bind(unix_now())
        .bind(freed)
        .bind(i64::from(rejection.http_status))
        .bind(&rejection.message)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(freed)
    }

    async fn rejected_attempts(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Vec<RejectedAttempt>, StoreError> {
        let rows = sqlx::query_as::<_, AttemptRow>(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM payment_attempts WHERE invoice = $1 ORDER BY ended_at, rowid"
        ))
        .bind(invoice.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        decode_all(rows)
    }

    async fn record_issued(
        &self,
        invoice: &InvoiceNumber,
        issued: &IssuedCode,
    ) -> Result<PaymentRecord, StoreError> {
        let mut tx = self.begin().await?;
        let record = existing(&mut tx, invoice).await?;
        let row = match &record.payment.payment_code {
            Some(code) if *code != issued.payment_code => {
                return Err(StoreError::CodeConflict {
                    invoice: invoice.clone(),
                    existing: code.clone(),
                    offered: issued.payment_code.clone(),
                });
            }
            // The same code again (a retry, or reconciliation saw it first): keep what is
            // stored, fill in URLs not known yet, end the attempt.
            Some(_) => sqlx::query_as::<_, PaymentRow>(concat!(
                "UPDATE payments SET how_to_pay_url = COALESCE(how_to_pay_url, $2), \
                 how_to_pay_api_url = COALESCE(how_to_pay_api_url, $3), \
                 attempt_lease_until = NULL, updated_at = $4 WHERE invoice = $1 RETURNING ",
                payment_columns!()
            ))
            .bind(invoice.as_str())
            .bind(issued.how_to_pay_url.as_deref())
            .bind(issued.how_to_pay_api_url.as_deref())
            .bind(unix_now()),
            None => sqlx::query_as::<_, PaymentRow>(concat!(
                "UPDATE payments SET payment_code = $2, \
                 create_time = COALESCE($3, create_time), \
                 expire_time = COALESCE($4, expire_time), \
                 how_to_pay_url = COALESCE($5, how_to_pay_url), \
                 how_to_pay_api_url = COALESCE($6, how_to_pay_api_url), \
                 attempt_lease_until = NULL, updated_at = $7 WHERE invoice = $1 RETURNING ",
                payment_columns!()
            ))
            .bind(invoice.as_str())
            .bind(issued.payment_code.as_str())
            .bind(issued.create_time.map(unix))
            .bind(issued.expire_time.map(unix))
            .bind(issued.how_to_pay_url.as_deref())
            .bind(issued.how_to_pay_api_url.as_deref())
            .bind(unix_now()),
        }
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let record = PaymentRecord::try_from(row)?;
        tx.commit().await.map_err(db_error)?;
        Ok(record)
    }

    async fn apply_status(&self, change: &StatusChange) -> Result<Applied, StoreError> {
        let mut tx = self.begin().await?;
        let record = existing(&mut tx, &change.invoice).await?;
        let (record, event, _) = apply_change(
            &mut tx,
            record,
            change,
            false,
            change.doku_request_id.as_deref(),
            OffsetDateTime::now_utc(),
        )
        .await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Applied { record, event })
    }

    async fn record_notification(&self, n: &InboundNotification) -> Result<Recorded, StoreError> {
        let mut tx = self.begin().await?;
        let detail = match &n.verdict {
            Verdict::Accepted => None,
            Verdict::Mismatch(d) | Verdict::UnknownStatus(d) => Some(d.as_str()),
            Verdict::UndatedRepeat => Some(UNDATED_REPEAT_DETAIL),
        };
        let inserted = sqlx::query(
            "INSERT INTO notifications (doku_request_id, received_at, headers, body, verdict, \
             verdict_detail, invoice) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (doku_request_id) DO NOTHING",
        )
        .bind(&n.doku_request_id)
        .bind(unix(n.received_at))
        .bind(&n.headers)
        .bind(&n.body)
        .bind(n.verdict.as_str())
        .bind(detail)
        .bind(n.change.as_ref().map(|c| c.invoice.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if inserted == 0 {
            return Ok(Recorded::Duplicate);
        }
        let mut withheld = false;
        let event = match (&n.verdict, &n.change) {
            (Verdict::Accepted, Some(change)) => {
                match payment_in(&mut tx, change.invoice.as_str()).await? {
                    Some(record) => {
                        let (_, event, undated_repeat) = apply_change(
                            &mut tx,
                            record,
                            change,
                            true,
                            Some(&n.doku_request_id),
                            n.received_at,
                        )
                        .await?;
                        withheld = undated_repeat;
                        event
                    }
                    // A PENDING for an unknown invoice reserves nothing: audit row only.
                    None if change.status == PaymentStatus::Pending => None,
                    None => Some(
                        create_from_notification(
                            &mut tx,
                            change,
                            n.channel,
                            &n.doku_request_id,
                            n.received_at,
                        )
                        .await?,
                    ),
                }
            }
            _ => None,
        };
        if withheld {
            sqlx::query(
                "UPDATE notifications SET verdict = $2, verdict_detail = $3 \
                 WHERE doku_request_id = $1",
            )
            .bind(&n.doku_request_id)
            .bind(Verdict::UndatedRepeat.as_str())
            .bind(UNDATED_REPEAT_DETAIL)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            return Ok(Recorded::UndatedRepeat);
        }
        if let Some(event) = &event {
            sqlx::query("UPDATE notifications SET event_seq = $2 WHERE doku_request_id = $1")
                .bind(&n.doku_request_id)
                .bind(signed(event.seq))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Recorded::Stored { event })
    }

    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(signed(after))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        decode_all(rows)
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        // Pruning may have removed the newest events; their seqs still count as seen.
        let seq: i64 = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0), \
             COALESCE((SELECT value FROM meta WHERE key = 'pruned_through'), 0))",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db_error)?;
        unsigned("last seq", seq)
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'pruned_through'")
                .fetch_optional(&self.reader)
                .await
                .map_err(db_error)?;
        unsigned("pruned_through", seq.unwrap_or(0))
    }

    async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        // A prefix of the log: everything up to the newest event recorded before `before`,
        // so that "a token below pruned_through is expired" stays exact.
        let cutoff: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE recorded_at < $1")
                .bind(unix(before))
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(cutoff) = cutoff else {
            return Ok(0);
        };
        let removed = sqlx::query("DELETE FROM events WHERE seq <= $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('pruned_through', $1) \
             ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    async fn due_for_check(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let rows = sqlx::query_as::<_, PaymentRow>(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments WHERE status = 'PENDING' AND next_check_at IS NOT NULL \
             AND next_check_at <= $1 AND rejected_http_status IS NULL \
             ORDER BY next_check_at, invoice LIMIT $2"
        ))
        .bind(unix(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        decode_all(rows)
    }

    async fn schedule_check(
        &self,
        invoice: &InvoiceNumber,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let found = sqlx::query(
            "UPDATE payments SET next_check_at = $2, \
             check_count = check_count + (CASE WHEN $2 IS NULL THEN 0 ELSE 1 END), \
             updated_at = $3 WHERE invoice = $1",
        )
        .bind(invoice.as_str())
        .bind(at.map(unix))
        .bind(unix_now())
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if found == 0 {
            return Err(StoreError::NotFound(invoice.clone()));
        }
        Ok(())
    }

    fn commit_hints(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // One process writes the file: its in-process fan-out sees every commit.
        None
    }

    fn sweeper_election(&self) -> Box<dyn super::Election> {
        Box::new(super::SoleReplica)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::conformance::{TestStore, conformance_tests};

    async fn fixture() -> Option<TestStore> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("o2o.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        Some(TestStore {
            store: Arc::new(store),
            _guard: Box::new(dir),
        })
    }

    conformance_tests!(fixture());

    fn url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("o2o.db").display())
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).unwrap()
    }

    fn change(invoice: &str, status: PaymentStatus, request_id: &str) -> StatusChange {
        StatusChange {
            invoice: InvoiceNumber::parse(invoice).unwrap(),
            status,
            amount: crate::payment::Amount::new(10_000).unwrap(),
            payment_code: Some(PaymentCode::parse("1234").unwrap()),
            occur_time: Some(t(5)),
            source: crate::payment::EventSource::DokuNotification,
            doku_request_id: Some(request_id.into()),
        }
    }

    fn draft(invoice: &str) -> PaymentDraft {
        let request = crate::payment::PaymentCodeInput {
            invoice_number: invoice.into(),
            amount: 10_000,
            customer_name: Some("Siti".into()),
            ..Default::default()
        }
        .validate("/payments/notifications")
        .unwrap();
        PaymentDraft {
            fingerprint: request.fingerprint(),
            request,
            doku_request: crate::store::StoredRequest {
                request_id: format!("req-{invoice}"),
                body: b"{}".to_vec(),
            },
            create_time: t(0),
            expire_time: t(3600),
            trace_context: None,
        }
    }

    fn accepted(change: StatusChange) -> InboundNotification {
        InboundNotification {
            doku_request_id: change.doku_request_id.clone().unwrap(),
            received_at: t(6),
            headers: "{}".into(),
            body: b"{}".to_vec(),
            verdict: Verdict::Accepted,
            change: Some(change),
            channel: Channel::Indomaret,
        }
    }

    #[tokio::test]
    async fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        let n = accepted(change("INV-1", PaymentStatus::Paid, "r1"));
        let Recorded::Stored { event: Some(event) } = store.record_notification(&n).await.unwrap()
        else {
            panic!("expected an event");
        };
        store.prune_events(t(0)).await.unwrap();
        let payment = store.get_payment(&event.invoice).await.unwrap().unwrap();
        store.close().await;
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));

        // Reopening runs the (already applied) migrations again and finds everything.
        let reopened = SqliteStore::open(&url(&dir)).await.unwrap();
        assert_eq!(
            reopened.get_payment(&event.invoice).await.unwrap(),
            Some(payment)
        );
        assert_eq!(
            reopened.events_after(0, 10).await.unwrap(),
            std::slice::from_ref(&event)
        );
        assert_eq!(reopened.last_seq().await.unwrap(), event.seq);
        assert_eq!(
            reopened.record_notification(&n).await.unwrap(),
            Recorded::Duplicate
        );
        let next = reopened
            .record_notification(&accepted(change("INV-2", PaymentStatus::Paid, "r2")))
            .await
            .unwrap();
        assert!(
            matches!(&next, Recorded::Stored { event: Some(e) } if e.seq > event.seq),
            "{next:?}"
        );
    }

    /// Two stores on one file (two writer connections, as with a second process) still
    /// serialize their write transactions: no lock-upgrade failure, one row per invoice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_on_one_file_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let stores = [
            Arc::new(SqliteStore::open(&url(&dir)).await.unwrap()),
            Arc::new(SqliteStore::open(&url(&dir)).await.unwrap()),
        ];
        let mut tasks = Vec::new();
        for i in 0..32 {
            let store = stores[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                // Reads first, then writes: the pattern that fails with SQLITE_BUSY when a
                // deferred transaction must upgrade its lock.
                let invoice = format!("INV-{}", i % 4);
                let created = store.create_payment(&draft(&invoice)).await?;
                let n = accepted(change(&invoice, PaymentStatus::Paid, &format!("r{i}")));
                let recorded = store.record_notification(&n).await?;
                Ok::<_, StoreError>((created, recorded))
            }));
        }
        let (mut new, mut events) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok((created, Recorded::Stored { event })) => {
                    new += usize::from(matches!(created, Created::New(_)));
                    events += usize::from(event.is_some());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(new, 4, "one row per invoice");
        assert_eq!(events, 4, "one PAID per (non-reusable) invoice");
        assert_eq!(stores[0].events_after(0, 100).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn connections_use_the_durable_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        for pool in [&store.writer, &store.reader] {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(sync, 2, "FULL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(fk, 1);
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(busy, 5000);
        }
    }

    #[tokio::test]
    async fn an_unreadable_row_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        store
            .record_notification(&accepted(change("INV-1", PaymentStatus::Paid, "r1")))
            .await
            .unwrap();
        sqlx::query("UPDATE payments SET status = 'SETTLED'")
            .execute(&store.writer)
            .await
            .unwrap();
        let invoice = InvoiceNumber::parse("INV-1").unwrap();
        match store.get_payment(&invoice).await {
            Err(StoreError::Corrupt(detail)) => assert!(detail.contains("SETTLED"), "{detail}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        sqlx::query("UPDATE events SET source = 'CARRIER_PIGEON'")
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(matches!(
            store.events_after(0, 10).await,
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn unusable_locations_are_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = format!("sqlite://{}/no/such/dir/o2o.db", dir.path().display());
        for url in [
            missing_dir.as_str(),
            "sqlite::memory:",
            "sqlite://?mode=memory",
        ] {
            match SqliteStore::open(url).await {
                Err(StoreError::Unavailable(_)) => {}
                other => panic!("{url}: expected Unavailable, got {other:?}"),
            }
        }
        // A database this process may only read (as when the volume is mounted read-only):
        // opening works, writing is "unavailable", not "corrupt".
        let path = dir.path().join("ro.db");
        SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
            .close()
            .await;
        let store = SqliteStore::open(&format!("sqlite://{}?mode=ro", path.display()))
            .await
            .unwrap();
        let n = accepted(change("INV-1", PaymentStatus::Paid, "r1"));
        match store.record_notification(&n).await {
            Err(StoreError::Unavailable(detail)) => {
                assert!(detail.contains("(code: 8)"), "SQLITE_READONLY: {detail}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn open_picks_the_backend_from_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&url(&dir)).await.unwrap();
        store.ping().await.unwrap();
        assert!(format!("{store:?}").contains("SqliteStore"));
        match crate::store::open("mysql://root:hunter2@db/o2o").await {
            Err(StoreError::Unavailable(detail)) => {
                assert!(detail.contains("\"mysql\""), "{detail}");
                assert!(!detail.contains("hunter2"), "{detail}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
