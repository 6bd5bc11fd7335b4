//! The PostgreSQL [`Store`]: the shared store when several replicas run.
//!
//! # Format
//!
//! The tables of the SQLite store (see [`super::sqlite`]) with PostgreSQL types: times are
//! `BIGINT` unix seconds (UTC) so both backends return identical values, bodies `BYTEA`,
//! `events.seq` a `BIGINT` identity. Schema versioned by `migrations/postgres/`, migrated at
//! open (sqlx takes an advisory lock, so replicas starting together migrate once).
//!
//! # Concurrency
//!
//! Transactions are READ COMMITTED. Every transaction that changes a payment first locks its
//! row (`SELECT … FOR UPDATE`, or the unique index for an insert), so changes to one payment
//! are serialized. Every transaction that appends to `events` takes
//! `pg_advisory_xact_lock(EVENT_APPEND_LOCK)` just before the insert and holds it to commit:
//! appends (and the seqs they draw) are serialized, so seq order is commit order and a reader
//! that has seen seq `n` never later sees a smaller one appear (a plain identity column could
//! commit 8 before 7). The lock is taken last, after every row lock, so it cannot deadlock
//! with them; it is held only for the insert and the commit.
//!
//! # Many replicas
//!
//! - **Wake-ups** ([`Store::commit_hints`]): a trigger on `events` sends `NOTIFY o2o_events`
//!   with the new seq in the appending transaction, so listeners hear of it when, and only
//!   if, it commits, in commit order. Each store runs one listener task on a dedicated
//!   connection (started by the first caller). The payload is only a hint: streams read the
//!   table. While the listener connection is down (the database restarting, a network
//!   failure) the task polls `last_seq` every [`POLL_INTERVAL`] and keeps reconnecting; on
//!   reconnect it reads `last_seq` again, because notifications sent meanwhile are lost. A
//!   quiet listener is pinged every [`LISTENER_QUIET_CHECK`], so a silently dead connection
//!   is noticed within that bound.
//! - **Sweeper leader** ([`Store::sweeper_election`]): a session-level
//!   `pg_try_advisory_lock(SWEEPER_LOCK)` on a dedicated connection; the lock lives exactly as
//!   long as that session. A replica that dies closes its socket and the server frees the lock
//!   at once; a replica cut off by the network is dropped by the server's TCP keepalive on
//!   that session (idle 5 s, then 3 probes 2 s apart: about 11 s). A leader confirms its
//!   session with every campaign, each bounded by the connect timeout, so a cut-off leader
//!   stops sweeping within one campaign period plus that timeout (2 s + 5 s by default),
//!   before the server hands the lock to another replica.
//! - **Timeouts** ([`StoreOptions`]): the pool's size and acquire timeout (which also bounds
//!   connecting), and `statement_timeout` on every pooled session. While the database is down
//!   every operation fails as [`StoreError::Unavailable`] after the connect timeout, and
//!   [`Store::ping`] (readiness) after at most [`PING_TIMEOUT`].

use std::str::FromStr as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use super::rows::{
    AttemptRow, EventRow, PaymentRow, Transition, UNDATED_REPEAT_DETAIL, attempt_columns,
    decode_all, event_columns, payment_columns, rejected_draft, signed, transition, unix, unix_now,
    unsigned,
};
use super::{
    Applied, AttemptRejection, Created, Election, InboundNotification, PaymentDraft, PaymentRecord,
    Recorded, RejectedAttempt, Store, StoreError, StoreOptions, Verdict,
};
use crate::payment::{
    Channel, Event, InvoiceNumber, IssuedCode, PaymentCode, PaymentStatus, StatusChange,
};

/// Advisory lock key serializing appends to `events` ("o2o-evts" in ASCII). Other
/// advisory locks of the sidecar (the sweeper's) must use different keys.
pub const EVENT_APPEND_LOCK: i64 = 0x6f32_6f2d_6576_7473;
/// Session-level advisory lock key held by the replica that runs the sweeper ("o2o-swep" in
/// ASCII): distinct from [`EVENT_APPEND_LOCK`].
pub const SWEEPER_LOCK: i64 = 0x6f32_6f2d_7377_6570;
/// The `NOTIFY` channel of committed events (migration 0002); the payload is the seq.
pub const EVENTS_CHANNEL: &str = "o2o_events";
/// How often the listener task reads `last_seq` while its connection is down.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// After this long without a notification, the listener pings its connection.
pub const LISTENER_QUIET_CHECK: Duration = Duration::from_secs(10);
/// Longest [`Store::ping`] takes: readiness answers within a probe's timeout even while the
/// database is unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// `application_name` of the listener's and the election's sessions, so that an operator
/// (or a test) can tell them from the pool's in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "o2o-sidecar commit listener";
/// See [`LISTENER_APPLICATION_NAME`].
pub const ELECTION_APPLICATION_NAME: &str = "o2o-sidecar sweeper election";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store; see the module doc for how concurrent replicas stay consistent.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where the dedicated sessions (listener, election) connect; without the pool's
    /// `statement_timeout`.
    session_options: PgConnectOptions,
    settings: StoreOptions,
    hints: Arc<Mutex<Hints>>,
}

/// The listener task behind [`Store::commit_hints`], started by its first caller.
#[derive(Debug, Default)]
enum Hints {
    #[default]
    NotStarted,
    Running {
        /// Cloned for every caller.
        rx: watch::Receiver<u64>,
        /// Dropping it (with the last clone of the store, or on close) stops the task.
        _stop: oneshot::Sender<()>,
    },
    Closed,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) with default settings and runs
    /// pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// Connects to `url` with `settings` and runs pending migrations.
    pub async fn open_with(url: &str, settings: &StoreOptions) -> Result<Self, StoreError> {
        // sqlx's URL errors do not repeat the URL, which may hold a password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL store URL: {e}")))?;
        Self::connect_with(options, settings).await
    }

    #[cfg(test)]
    async fn connect(options: PgConnectOptions) -> Result<Self, StoreError> {
        Self::connect_with(options, &StoreOptions::default()).await
    }

    async fn connect_with(
        options: PgConnectOptions,
        settings: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let pooled = match settings.statement_timeout {
            Some(limit) => options.clone().options([(
                "statement_timeout",
                format!("{}ms", limit.as_millis().max(1)),
            )]),
            None => options.clone(),
        };
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(settings.connect_timeout)
            .connect_with(pooled)
            .await
            .map_err(db_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| super::rows::migrate_error(e, outside_data))?;
        Ok(Self {
            pool,
            session_options: options,
            settings: settings.clone(),
            hints: Arc::default(),
        })
    }

    /// Closes every connection, waiting for in-flight operations, and stops the listener;
    /// later calls fail as [`StoreError::Unavailable`].
    pub async fn close(&self) {
        *self.hints.lock().unwrap_or_else(PoisonError::into_inner) = Hints::Closed;
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(db_error)
    }
}

/// SQLSTATEs that mean "the environment", not "the data": connection exceptions (08),
/// invalid authorization (28), transaction rollbacks such as serialization failures and
/// deadlocks (40), insufficient resources such as disk full (53), operator intervention such
/// as shutdown (57), system errors (58), a read-only transaction (25006), a lock not available
/// (55P03), a database that does not exist (3D000).
fn outside_data(e: &dyn sqlx::error::DatabaseError) -> bool {
    let code = e.code().unwrap_or_default();
    matches!(code.get(..2), Some("08" | "28" | "40" | "53" | "57" | "58"))
        || matches!(&*code, "25006" | "55P03" | "3D000")
}

fn db_error(e: sqlx::Error) -> StoreError {
    super::rows::store_error(e, outside_data)
}

async fn payment_in(
    conn: &mut PgConnection,
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

/// The row of `invoice`, locked until the end of the transaction.
async fn payment_for_update(
    conn: &mut PgConnection,
    invoice: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE invoice = $1 FOR UPDATE"
    ))
    .bind(invoice)
    .fetch_optional(conn)
    .await
    .map_err(db_error)?
    .map(PaymentRecord::try_from)
    .transpose()
}

async fn payment_by_key(
    conn: &mut PgConnection,
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

/// Appends an event for `change` on a payment of `channel` at `occur` (DOKU's time, or when
/// the sidecar learned an undated change), after taking the append lock.
async fn append_event(
    conn: &mut PgConnection,
    change: &StatusChange,
    occur: OffsetDateTime,
    code: Option<&PaymentCode>,
    channel: Channel,
    doku_request_id: Option<&str>,
) -> Result<Event, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(EVENT_APPEND_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
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

/// Applies `change` to the locked payment `record` (inside the caller's transaction), by the
/// rule of [`transition`]; an undated change happens at `learned_at`. Returns the payment
/// afterwards, the event, if any, and whether it was an undated repeat PAID (withheld).
async fn apply_change(
    conn: &mut PgConnection,
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
            // The row lock held since payment_for_update serializes this check with every
            // other change of the payment.
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
/// from what DOKU sent, and appends its event. `false` if another transaction created the
/// invoice meanwhile (the caller then applies the change to it).
async fn create_from_notification(
    conn: &mut PgConnection,
    change: &StatusChange,
    channel: Channel,
    doku_request_id: &str,
    received_at: OffsetDateTime,
) -> Result<Option<Event>, StoreError> {
    let occur_time = change.occur_time.unwrap_or(received_at);
    let occur = unix(occur_time);
    let inserted = sqlx::query(
        "INSERT INTO payments (invoice, amount, channel, payment_code, status, create_time, \
         expire_time, pay_time, reusable, fingerprint, check_count, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, FALSE, '', 0, $8) \
         ON CONFLICT (invoice) DO NOTHING",
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
    .map_err(db_error)?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    let event = append_event(
        conn,
        change,
        occur_time,
        change.payment_code.as_ref(),
        channel,
        Some(doku_request_id),
    )
    .await?;
    Ok(Some(event))
}

/// After an insert that conflicted: replaces the invoice's rejected draft with `draft` if
/// there is one and the request differs (one transaction, the row locked: of racing
/// replacements exactly one finds it still rejected), else reports what is there.
async fn create_over_existing(
    tx: &mut PgConnection,
    draft: &PaymentDraft,
) -> Result<Option<Created>, StoreError> {
    let request = &draft.request;
    let Some(record) = payment_for_update(tx, request.invoice.as_str()).await? else {
        return Ok(None);
    };
    if record.rejected_draft().is_none() || record.fingerprint == draft.fingerprint {
        return Ok(Some(Created::Existing(record)));
    }
    if let Some(key) = &request.idempotency_key
        && let Some(owner) = payment_by_key(tx, key).await?
        && owner.payment.invoice != request.invoice
    {
        return Ok(Some(Created::IdempotencyKeyTaken(owner)));
    }
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
    .fetch_one(tx)
    .await
    .map_err(db_error)?;
    Ok(Some(Created::New(PaymentRecord::try_from(row)?)))
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let round_trip = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(PING_TIMEOUT, round_trip).await {
            Ok(done) => done.map(drop).map_err(db_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from PostgreSQL within {PING_TIMEOUT:?}"
            ))),
        }
    }

    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        let request = &draft.request;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        // One statement: a concurrent insert of the same invoice or key makes this one wait
        // for it and then do nothing, so exactly one row is created.
        let row = sqlx::query_as::<_, PaymentRow>(concat!(
            "INSERT INTO payments (invoice, amount, channel, status, create_time, expire_time, \
             reusable, fingerprint, idempotency_key, doku_request_id, doku_request_body, \
             check_count, updated_at, trace_context) \
             VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, $8, $9, $10, 0, $11, $12) \
             ON CONFLICT DO NOTHING RETURNING ",
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
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        if let Some(row) = row {
            return Ok(Created::New(PaymentRecord::try_from(row)?));
        }
        drop(conn);
        // The conflicting row is committed (the insert waited for it): the invoice first, as
        // the trait orders the outcomes.
        let mut tx = self.begin().await?;
        if let Some(created) = create_over_existing(&mut tx, draft).await? {
            tx.commit().await.map_err(db_error)?;
            return Ok(created);
        }
        tx.commit().await.map_err(db_error)?;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        if let Some(key) = &request.idempotency_key
            && let Some(record) = payment_by_key(&mut conn, key).await?
        {
            return Ok(Created::IdempotencyKeyTaken(record));
        }
        Err(StoreError::Unavailable(format!(
            "creating invoice {} conflicted with a row that then vanished; retry",
            request.invoice
        )))
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        payment_by_key(&mut conn, key).await
    }

    async fn get_payment(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        payment_in(&mut conn, invoice.as_str()).await
    }

    async fn claim_attempt(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        // One statement: PostgreSQL re-checks the WHERE clause on the latest row version
        // after waiting for a concurrent claim, so only one succeeds. A lease still set when
        // it is taken over was never released: its holder vanished mid-call, so that
        // attempt's outcome is unknown.
        let taken = sqlx::query(
            "UPDATE payments SET attempt_lease_until = $2, updated_at = $4, \
             outcome_unknown = outcome_unknown OR attempt_lease_until IS NOT NULL \
             WHERE invoice = $1 AND payment_code IS NULL AND rejected_http_status IS NULL \
             AND (attempt_lease_until IS NULL OR attempt_lease_until <= $3)",
        )
        .bind(invoice.as_str())
        .bind(unix(until))
        .bind(unix(now))
        .bind(unix_now())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected()
            == 1;
        if !taken && payment_in(&mut conn, invoice.as_str()).await?.is_none() {
            return Err(StoreError::NotFound(invoice.clone()));
        }
        Ok(taken)
    }

    async fn release_attempt(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        let found = sqlx::query(
            "UPDATE payments SET attempt_lease_until = NULL, updated_at = $2 WHERE invoice = $1",
        )
        .bind(invoice.as_str())
        .bind(unix_now())
        .execute(&self.pool)
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
            "UPDATE payments SET outcome_unknown = TRUE, attempt_lease_until = NULL, \
             updated_at = $2 WHERE invoice = $1",
        )
        .bind(invoice.as_str())
        .bind(unix_now())
        .execute(&self.pool)
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
        let record = payment_for_update(&mut tx, invoice.as_str())
            .await?
            .ok_or_else(|| StoreError::NotFound(invoice.clone()))?;
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
            " FROM payment_attempts WHERE invoice = $1 ORDER BY ended_at, doku_request_id"
        ))
        .bind(invoice.as_str())
        .fetch_all(&self.pool)
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
        let record = payment_for_update(&mut tx, invoice.as_str())
            .await?
            .ok_or_else(|| StoreError::NotFound(invoice.clone()))?;
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
        let record = payment_for_update(&mut tx, change.invoice.as_str())
            .await?
            .ok_or_else(|| StoreError::NotFound(change.invoice.clone()))?;
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
        // A concurrent insert of the same Request-Id makes this wait for it, then do nothing.
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
                let request_id = Some(n.doku_request_id.as_str());
                match payment_for_update(&mut tx, change.invoice.as_str()).await? {
                    Some(record) => {
                        let (_, event, undated_repeat) =
                            apply_change(&mut tx, record, change, true, request_id, n.received_at)
                                .await?;
                        withheld = undated_repeat;
                        event
                    }
                    // A PENDING for an unknown invoice reserves nothing: audit row only.
                    None if change.status == PaymentStatus::Pending => None,
                    None => {
                        match create_from_notification(
                            &mut tx,
                            change,
                            n.channel,
                            &n.doku_request_id,
                            n.received_at,
                        )
                        .await?
                        {
                            Some(event) => Some(event),
                            // Created by another transaction since the lookup.
                            None => {
                                let record = payment_for_update(&mut tx, change.invoice.as_str())
                                    .await?
                                    .ok_or_else(|| {
                                        StoreError::Unavailable(format!(
                                            "invoice {} conflicted with a row that then \
                                             vanished; retry",
                                            change.invoice
                                        ))
                                    })?;
                                let (_, event, undated_repeat) = apply_change(
                                    &mut tx,
                                    record,
                                    change,
                                    true,
                                    request_id,
                                    n.received_at,
                                )
                                .await?;
                                withheld = undated_repeat;
                                event
                            }
                        }
                    }
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        decode_all(rows)
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        // Pruning may have removed the newest events; their seqs still count as seen.
        let seq: i64 = sqlx::query_scalar(
            "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM events), 0), \
             COALESCE((SELECT value FROM meta WHERE key = 'pruned_through'), 0))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        unsigned("last seq", seq)
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'pruned_through'")
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        unsigned("pruned_through", seq.unwrap_or(0))
    }

    async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        // A prefix of the log: everything up to the newest event recorded before `before`,
        // so that "a token below pruned_through is expired" stays exact. An append in flight
        // draws a seq above every committed one, so it is never inside the prefix.
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
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
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
        .fetch_all(&self.pool)
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
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        if found == 0 {
            return Err(StoreError::NotFound(invoice.clone()));
        }
        Ok(())
    }

    fn commit_hints(&self) -> Option<watch::Receiver<u64>> {
        let mut hints = self.hints.lock().unwrap_or_else(PoisonError::into_inner);
        match &*hints {
            Hints::Running { rx, .. } => Some(rx.clone()),
            Hints::Closed => None,
            Hints::NotStarted => {
                let (tx, rx) = watch::channel(0);
                let (stop, stopped) = oneshot::channel();
                tokio::spawn(follow_commits(
                    self.pool.clone(),
                    self.session_options
                        .clone()
                        .application_name(LISTENER_APPLICATION_NAME),
                    self.settings.connect_timeout,
                    tx,
                    stopped,
                ));
                *hints = Hints::Running {
                    rx: rx.clone(),
                    _stop: stop,
                };
                Some(rx)
            }
        }
    }

    fn sweeper_election(&self) -> Box<dyn Election> {
        Box::new(AdvisoryLockElection {
            options: self
                .session_options
                .clone()
                .application_name(ELECTION_APPLICATION_NAME)
                // The server drops this session (and frees the lock) about 11 s after its
                // peer went silent, so that a replica cut off by the network cannot keep the
                // sweeper from every other replica.
                .options([
                    ("tcp_keepalives_idle", "5"),
                    ("tcp_keepalives_interval", "2"),
                    ("tcp_keepalives_count", "3"),
                ]),
            timeout: self.settings.connect_timeout,
            session: None,
        })
    }
}

/// Raises the hint to `seq` (hints only move up).
fn raise(tx: &watch::Sender<u64>, seq: u64) {
    tx.send_if_modified(|known| {
        let higher = seq > *known;
        if higher {
            *known = seq;
        }
        higher
    });
}

/// Reads `last_seq` and raises the hint to it (the fallback when notifications may have been
/// missed).
async fn poll_last_seq(pool: &PgPool, tx: &watch::Sender<u64>) -> Result<(), sqlx::Error> {
    let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
        .fetch_one(pool)
        .await?;
    raise(tx, u64::try_from(seq).unwrap_or(0));
    Ok(())
}

/// A listener on its own one-connection pool, subscribed to [`EVENTS_CHANNEL`].
async fn listen(options: &PgConnectOptions, timeout: Duration) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    // A lost connection is handled here (poll, then reconnect), not inside the listener.
    listener.eager_reconnect(false);
    listener.listen(EVENTS_CHANNEL).await?;
    Ok(listener)
}

/// The listener task: turns `NOTIFY` into hints; polls while it cannot listen. Ends when
/// `stop` resolves (the store was closed or dropped).
async fn follow_commits(
    pool: PgPool,
    options: PgConnectOptions,
    timeout: Duration,
    tx: watch::Sender<u64>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        // Down (or not connected yet): poll while reconnecting.
        let reconnect = async {
            loop {
                match listen(&options, timeout).await {
                    Ok(listener) => return listener,
                    Err(e) => {
                        if down_since.is_none() {
                            tracing::warn!(error = %e, "cannot listen for commits of other replicas; polling the event log every second until it can");
                            down_since = Some(tokio::time::Instant::now());
                        }
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
            }
        };
        let poll = async {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Errors: the database is down too; the next tick tries again.
                let _ = poll_last_seq(&pool, &tx).await;
            }
        };
        let mut listener = tokio::select! {
            _ = &mut stop => return,
            listener = reconnect => listener,
            () = poll => unreachable!("polling never ends"),
        };
        metrics::gauge!("o2o_store_listener_connected").set(1.0);
        if let Some(since) = down_since.take() {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                "listening for commits of other replicas again"
            );
        }
        // Anything committed before LISTEN took effect (or while disconnected) was not heard.
        let _ = poll_last_seq(&pool, &tx).await;
        // Up: hints from notifications until the connection fails.
        let lost = loop {
            let received = tokio::select! {
                _ = &mut stop => return,
                received = tokio::time::timeout(LISTENER_QUIET_CHECK, listener.try_recv()) => received,
            };
            match received {
                Ok(Ok(Some(n))) => match n.payload().parse::<u64>() {
                    Ok(seq) => raise(&tx, seq),
                    Err(_) => {
                        let _ = poll_last_seq(&pool, &tx).await;
                    }
                },
                Ok(Ok(None)) => break "connection lost".to_owned(),
                Ok(Err(e)) => break e.to_string(),
                Err(_quiet) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut listener);
                    match tokio::time::timeout(timeout, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break format!("no answer to a ping within {timeout:?}"),
                    }
                }
            }
        };
        metrics::gauge!("o2o_store_listener_connected").set(0.0);
        tracing::warn!(error = %lost, "lost the listener connection; polling the event log every second until it is back");
        down_since = Some(tokio::time::Instant::now());
        drop(listener);
    }
}

/// [`Election`] by a session-level advisory lock on a dedicated connection: see the module
/// doc.
#[derive(Debug)]
struct AdvisoryLockElection {
    options: PgConnectOptions,
    /// Bounds each campaign (connect and query).
    timeout: Duration,
    /// The session, and whether it holds [`SWEEPER_LOCK`].
    session: Option<(PgConnection, bool)>,
}

impl AdvisoryLockElection {
    async fn try_campaign(&mut self) -> Result<bool, StoreError> {
        let (conn, held) = match &mut self.session {
            Some(session) => session,
            None => {
                let conn = PgConnection::connect_with(&self.options)
                    .await
                    .map_err(db_error)?;
                self.session.insert((conn, false))
            }
        };
        if *held {
            // A session-level lock lasts as long as its session: a round trip proves both.
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        } else {
            *held = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(SWEEPER_LOCK)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(*held)
    }
}

#[async_trait]
impl Election for AdvisoryLockElection {
    async fn campaign(&mut self) -> Result<bool, StoreError> {
        let outcome = match tokio::time::timeout(self.timeout, self.try_campaign()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from PostgreSQL within {:?}",
                self.timeout
            ))),
        };
        if outcome.is_err() {
            // Dropping the session closes its socket: whatever it held is the server's to free.
            self.session = None;
        }
        outcome
    }

    async fn resign(&mut self) {
        if let Some((mut conn, held)) = self.session.take() {
            let release = async {
                // Unlocking answers once the lock is free, so another replica's next campaign
                // wins; ending the session would free it too, but a moment after we return.
                if held {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(SWEEPER_LOCK)
                        .execute(&mut conn)
                        .await?;
                }
                conn.close().await
            };
            // A failure means the session is gone already, and its lock with it.
            let _ = tokio::time::timeout(self.timeout, release).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        store::conformance::{TestStore, conformance_tests},
        testing::postgres::{ScratchDb, admin_options},
    };

    async fn fixture() -> Option<TestStore> {
        let db = ScratchDb::create().await?;
        let store = PostgresStore::connect(db.options()).await.unwrap();
        Some(TestStore {
            store: Arc::new(store),
            _guard: Box::new(db),
        })
    }

    conformance_tests!(fixture());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_together_migrate_once() {
        let Some(db) = ScratchDb::create().await else {
            return;
        };
        let (a, b) = tokio::join!(
            PostgresStore::connect(db.options()),
            PostgresStore::connect(db.options())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        assert_eq!(applied, i64::try_from(MIGRATOR.iter().count()).unwrap());
        b.ping().await.unwrap();
        a.close().await;
        b.close().await;
    }

    /// Appends one event through `store` (a notification for a new invoice); returns its seq.
    async fn append(store: &PostgresStore, n: u32) -> u64 {
        use crate::payment::{Amount, EventSource};
        let change = StatusChange {
            invoice: InvoiceNumber::parse(&format!("INV-H-{n}")).unwrap(),
            status: PaymentStatus::Paid,
            amount: Amount::new(10_000).unwrap(),
            payment_code: None,
            occur_time: Some(OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()),
            source: EventSource::DokuNotification,
            doku_request_id: Some(format!("req-h-{n}")),
        };
        let notification = InboundNotification {
            doku_request_id: format!("req-h-{n}"),
            received_at: OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
            headers: "{}".into(),
            body: b"{}".to_vec(),
            verdict: Verdict::Accepted,
            change: Some(change),
            channel: Channel::Indomaret,
        };
        match store.record_notification(&notification).await.unwrap() {
            Recorded::Stored { event: Some(e) } => e.seq,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Waits (bounded) until a listener session of this database has run its LISTEN.
    async fn listening(store: &PostgresStore) {
        let start = tokio::time::Instant::now();
        loop {
            let listeners: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = $1 AND query LIKE 'LISTEN%' AND state = 'idle'",
            )
            .bind(LISTENER_APPLICATION_NAME)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            if listeners == 1 {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no listener");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the hint reaches `seq`.
    async fn hinted(rx: &mut watch::Receiver<u64>, seq: u64, within: Duration) {
        tokio::time::timeout(within, rx.wait_for(|h| *h >= seq))
            .await
            .unwrap_or_else(|_| panic!("no hint of seq {seq} within {within:?}"))
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_by_one_replica_wakes_the_other() {
        let Some(db) = ScratchDb::create().await else {
            return;
        };
        let a = PostgresStore::connect(db.options()).await.unwrap();
        let b = PostgresStore::connect(db.options()).await.unwrap();
        let mut hints = a.commit_hints().unwrap();
        // Once it listens, the task no longer polls: these hints come from NOTIFY.
        listening(&b).await;
        for n in 1..=5 {
            let seq = append(&b, n).await;
            hinted(&mut hints, seq, Duration::from_secs(5)).await;
        }
        // Every caller shares the one listener.
        assert_eq!(*a.commit_hints().unwrap().borrow(), 5);
        a.close().await;
        assert!(a.commit_hints().is_none(), "a closed store gives no hints");
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hints_keep_coming_while_the_listener_reconnects() {
        let Some(db) = ScratchDb::create().await else {
            return;
        };
        let a = PostgresStore::connect(db.options()).await.unwrap();
        let b = PostgresStore::connect(db.options()).await.unwrap();
        let mut hints = a.commit_hints().unwrap();
        listening(&b).await;
        let first = append(&b, 1).await;
        hinted(&mut hints, first, Duration::from_secs(5)).await;
        for n in 2..=3 {
            listening(&b).await;
            // Kill the listener's session, then commit at once: the notification is lost,
            // the poll (or the read after reconnecting) still raises the hint.
            let killed: i64 = sqlx::query_scalar(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
            )
            .bind(LISTENER_APPLICATION_NAME)
            .fetch_one(&b.pool)
            .await
            .unwrap();
            assert_eq!(killed, 1, "one listener session per store");
            let seq = append(&b, n).await;
            hinted(&mut hints, seq, POLL_INTERVAL * 5).await;
        }
        a.close().await;
        b.close().await;
    }

    async fn session_pids(store: &PostgresStore, application: &str) -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1 ORDER BY pid",
        )
        .bind(application)
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_holds_the_sweeper_and_a_dead_holder_lets_another_take_it() {
        let Some(db) = ScratchDb::create().await else {
            return;
        };
        let a = PostgresStore::connect(db.options()).await.unwrap();
        let b = PostgresStore::connect(db.options()).await.unwrap();
        let (mut ea, mut eb) = (a.sweeper_election(), b.sweeper_election());
        assert!(ea.campaign().await.unwrap());
        assert!(!eb.campaign().await.unwrap());
        assert!(ea.campaign().await.unwrap(), "the holder confirms");
        assert!(!eb.campaign().await.unwrap());

        // The holder's session dies (as with its process): the server frees the lock.
        let pids = session_pids(&a, ELECTION_APPLICATION_NAME).await;
        assert_eq!(pids.len(), 2);
        let holder: i32 = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(SWEEPER_LOCK)
        .fetch_one(&a.pool)
        .await
        .unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(holder)
            .execute(&a.pool)
            .await
            .unwrap();
        assert!(
            ea.campaign().await.is_err(),
            "the old holder learns it lost"
        );
        // The server frees the lock as the session's backend exits, just after the session
        // reported its end: campaigning again (as the sweeper does every few seconds) wins.
        let killed = tokio::time::Instant::now();
        while !eb.campaign().await.unwrap() {
            assert!(killed.elapsed() < Duration::from_secs(5), "no takeover");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!ea.campaign().await.unwrap(), "the other replica keeps it");

        // Resigning hands over at once.
        eb.resign().await;
        assert!(ea.campaign().await.unwrap());
        ea.resign().await;
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_statement_past_the_timeout_is_cancelled_as_unavailable() {
        let Some(db) = ScratchDb::create().await else {
            return;
        };
        // Migrate first with the default timeout: on a busy machine a migration statement
        // can itself take longer than the 100 ms this test sets.
        PostgresStore::connect_with(db.options(), &StoreOptions::default())
            .await
            .unwrap()
            .close()
            .await;
        let settings = StoreOptions {
            statement_timeout: Some(Duration::from_millis(100)),
            ..StoreOptions::default()
        };
        let store = PostgresStore::connect_with(db.options(), &settings)
            .await
            .unwrap();
        let slow = sqlx::query("SELECT pg_sleep(2)")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert!(
            matches!(db_error(slow), StoreError::Unavailable(ref d) if d.contains("statement timeout")),
        );
        store.ping().await.unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_missing_database_is_unavailable_and_the_password_stays_out() {
        let Some(_db) = ScratchDb::create().await else {
            return;
        };
        let admin = admin_options();
        let url = format!(
            "postgres://{}:hunter2@{}:{}/o2o_no_such_database",
            admin.get_username(),
            admin.get_host(),
            admin.get_port()
        );
        match crate::store::open(&url).await {
            Err(StoreError::Unavailable(detail)) => {
                assert!(detail.contains("does not exist"), "{detail}");
                assert!(!detail.contains("hunter2"), "{detail}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
