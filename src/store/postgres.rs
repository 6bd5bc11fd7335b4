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

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use time::OffsetDateTime;

use super::rows::{
    EventRow, PaymentRow, Transition, decode_all, event_columns, payment_columns, signed,
    transition, unix, unix_now, unsigned,
};
use super::{
    Applied, Created, InboundNotification, PaymentDraft, PaymentRecord, Recorded, Store,
    StoreError, Verdict,
};
use crate::payment::{
    Channel, Event, InvoiceNumber, IssuedCode, PaymentCode, PaymentStatus, StatusChange,
};

/// Advisory lock key serializing appends to `events` ("o2o-evts" in ASCII). Other
/// advisory locks of the sidecar (the sweeper's) must use different keys.
pub const EVENT_APPEND_LOCK: i64 = 0x6f32_6f2d_6576_7473;
/// Connections per replica.
const MAX_CONNECTIONS: u32 = 10;
/// How long an operation waits for a pooled connection before the store is "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store; see the module doc for how concurrent replicas stay consistent.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and runs pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // sqlx's URL errors do not repeat the URL, which may hold a password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL store URL: {e}")))?;
        Self::connect(options).await
    }

    async fn connect(options: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| super::rows::migrate_error(e, outside_data))?;
        Ok(Self { pool })
    }

    /// Closes every connection, waiting for in-flight operations; later calls fail as
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
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

/// Appends an event for `change` on a payment of `channel`, after taking the append lock.
async fn append_event(
    conn: &mut PgConnection,
    change: &StatusChange,
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
    .bind(unix(change.occur_time))
    .bind(change.source.as_str())
    .bind(doku_request_id)
    .bind(unix_now())
    .fetch_one(conn)
    .await
    .map_err(db_error)?;
    Event::try_from(row)
}

/// Applies `change` to the locked payment `record` (inside the caller's transaction), by the
/// rule of [`transition`]. Returns the payment afterwards and the event, if any.
async fn apply_change(
    conn: &mut PgConnection,
    record: PaymentRecord,
    change: &StatusChange,
    repeat_allowed: bool,
    doku_request_id: Option<&str>,
) -> Result<(PaymentRecord, Option<Event>), StoreError> {
    let p = &record.payment;
    let code = p
        .payment_code
        .clone()
        .or_else(|| change.payment_code.clone());
    let emit = match transition(p.status, p.reusable, change.status, repeat_allowed) {
        Transition::Forward => true,
        Transition::RepeatPaid => {
            // The row lock held since payment_for_update serializes this check with every
            // other change of the payment.
            let same_payment_seen: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events \
                 WHERE invoice = $1 AND status = 'PAID' AND occur_time = $2)",
            )
            .bind(p.invoice.as_str())
            .bind(unix(change.occur_time))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            !same_payment_seen
        }
        Transition::Stay => false,
    };
    if !emit {
        if code == p.payment_code {
            return Ok((record, None));
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
        return Ok((PaymentRecord::try_from(row)?, None));
    }
    let occur = unix(change.occur_time);
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
        event_code,
        updated.payment.channel,
        doku_request_id,
    )
    .await?;
    Ok((updated, Some(event)))
}

/// Creates the payment of an accepted notification for an invoice the store did not know,
/// from what DOKU sent, and appends its event. `false` if another transaction created the
/// invoice meanwhile (the caller then applies the change to it).
async fn create_from_notification(
    conn: &mut PgConnection,
    change: &StatusChange,
    channel: Channel,
    doku_request_id: &str,
) -> Result<Option<Event>, StoreError> {
    let occur = unix(change.occur_time);
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
        change.payment_code.as_ref(),
        channel,
        Some(doku_request_id),
    )
    .await?;
    Ok(Some(event))
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        let request = &draft.request;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        // One statement: a concurrent insert of the same invoice or key makes this one wait
        // for it and then do nothing, so exactly one row is created.
        let row = sqlx::query_as::<_, PaymentRow>(concat!(
            "INSERT INTO payments (invoice, amount, channel, status, create_time, expire_time, \
             reusable, fingerprint, idempotency_key, doku_request_id, doku_request_body, \
             check_count, updated_at) \
             VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, $8, $9, $10, 0, $11) \
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
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        if let Some(row) = row {
            return Ok(Created::New(PaymentRecord::try_from(row)?));
        }
        // The conflicting row is committed (the insert waited for it): the invoice first, as
        // the trait orders the outcomes.
        if let Some(record) = payment_in(&mut conn, request.invoice.as_str()).await? {
            return Ok(Created::Existing(record));
        }
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
        // after waiting for a concurrent claim, so only one succeeds.
        let taken = sqlx::query(
            "UPDATE payments SET attempt_lease_until = $2, updated_at = $4 \
             WHERE invoice = $1 AND payment_code IS NULL \
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
        let (record, event) = apply_change(
            &mut tx,
            record,
            change,
            false,
            change.doku_request_id.as_deref(),
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
        let event = match (&n.verdict, &n.change) {
            (Verdict::Accepted, Some(change)) => {
                let request_id = Some(n.doku_request_id.as_str());
                match payment_for_update(&mut tx, change.invoice.as_str()).await? {
                    Some(record) => {
                        apply_change(&mut tx, record, change, true, request_id)
                            .await?
                            .1
                    }
                    None => {
                        match create_from_notification(
                            &mut tx,
                            change,
                            n.channel,
                            &n.doku_request_id,
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
                                apply_change(&mut tx, record, change, true, request_id)
                                    .await?
                                    .1
                            }
                        }
                    }
                }
            }
            _ => None,
        };
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
             AND next_check_at <= $1 ORDER BY next_check_at, invoice LIMIT $2"
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sqlx::Connection as _;

    use super::*;
    use crate::store::conformance::{TestStore, conformance_tests};

    /// Where the tests find a server (trust auth); `O2O_TEST_POSTGRES_URL` overrides.
    fn admin_options() -> PgConnectOptions {
        let url = std::env::var("O2O_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        PgConnectOptions::from_str(&url).expect("O2O_TEST_POSTGRES_URL is a postgres:// URL")
    }

    /// A database of its own for one test, dropped (connections and all) with the guard.
    struct ScratchDatabase {
        name: String,
    }

    impl ScratchDatabase {
        /// `None` (after saying so) when no server is reachable, unless `CI=true`: CI must
        /// run these tests, never skip them.
        async fn create() -> Option<Self> {
            let mut admin = match PgConnection::connect_with(&admin_options()).await {
                Ok(admin) => admin,
                Err(e) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                    panic!("CI=true but no PostgreSQL server is reachable: {e}")
                }
                Err(e) => {
                    eprintln!(
                        "skipping PostgreSQL store test: no server reachable ({e}); \
                         set O2O_TEST_POSTGRES_URL"
                    );
                    return None;
                }
            };
            let name = format!("o2o_test_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.ok();
            Some(Self { name })
        }

        fn options(&self) -> PgConnectOptions {
            admin_options().database(&self.name)
        }
    }

    impl Drop for ScratchDatabase {
        fn drop(&mut self) {
            // Drop runs inside the test's runtime, where blocking on another is not allowed:
            // a plain thread with its own runtime does it.
            let name = std::mem::take(&mut self.name);
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut admin = PgConnection::connect_with(&admin_options()).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await?;
                    admin.close().await
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop a scratch test database: {dropped:?}");
            }
        }
    }

    async fn fixture() -> Option<TestStore> {
        let db = ScratchDatabase::create().await?;
        let store = PostgresStore::connect(db.options()).await.unwrap();
        Some(TestStore {
            store: Arc::new(store),
            _guard: Box::new(db),
        })
    }

    conformance_tests!(fixture());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_together_migrate_once() {
        let Some(db) = ScratchDatabase::create().await else {
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

    #[tokio::test]
    async fn a_missing_database_is_unavailable_and_the_password_stays_out() {
        let Some(_db) = ScratchDatabase::create().await else {
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
