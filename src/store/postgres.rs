//! The PostgreSQL [`Store`]: the shared store when several replicas run.
//!
//! # Format
//!
//! The tables of the SQLite store (see [`super::sqlite`]) with PostgreSQL types: times are
//! `BIGINT` unix seconds (UTC) so both backends return identical values, bodies `BYTEA`,
//! `events.seq` a `BIGINT` identity. Schema versioned by `migrations/postgres/`, migrated at
//! open in one transaction ([`super::migrate`], under an advisory lock, so replicas starting
//! together migrate once).
//!
//! # Concurrency
//!
//! Transactions are READ COMMITTED. Every transaction that changes a payment first locks its
//! row (`SELECT … FOR UPDATE`, or the unique index for an insert), so changes to one payment
//! are serialized. Every transaction that appends to `events` takes
//! `pg_advisory_xact_lock(EVENT_APPEND_LOCK)` before its first insert and holds it to commit:
//! appends (and the seqs they draw) are serialized, so seq order is commit order and a reader
//! that has seen seq `n` never later sees a smaller one appear (a plain identity column could
//! commit 8 before 7).
//!
//! ## Lock order: why no transaction deadlocks
//!
//! Every transaction takes the event log's lock *last*, after every row or key lock it takes,
//! and holding it only inserts its events (new rows; their foreign key checks payment rows it
//! already holds), updates `notifications` rows it inserted itself, and commits. So the
//! holder of the log's lock waits for no other transaction's lock: the log's lock is never in
//! a wait cycle, and it is held for the appends and the commit only, not for the work before.
//!
//! The transactions that take row or key locks, and in which order:
//!
//! - A batch of notifications (group commit, per replica; `record_in_one_transaction` in
//!   [`super::shared`]), one statement per step: (1) the `notifications` keys of its
//!   Request-Ids, inserted in Request-Id order (an insert waits for a concurrent uncommitted
//!   insert of the same key); (2) the invoice keys of the payments it creates (those the store
//!   may lack, one insert `ON CONFLICT DO NOTHING` in invoice order; it waits for a concurrent
//!   uncommitted insert of the same invoice, never for a row lock); (3) the rows of its other
//!   payments, locked by one `SELECT … ORDER BY invoice COLLATE "C" FOR UPDATE` (PostgreSQL
//!   sorts, then locks in that order); (4) the log. Every batch takes its keys in this one
//!   global order (Request-Ids, then new invoices, then payment rows, then the log, each kind
//!   sorted bytewise), so two batches, on one replica or two, never each hold a key the other
//!   waits for. Kinds (2) and (3) never meet: a row lock is only ever taken on a committed
//!   row, and a row another transaction inserted and has not committed is invisible to it. A
//!   PENDING for an unknown invoice creates nothing and holds nothing.
//! - A reconciliation result (`apply_status`, anything else calling `apply_change`): one
//!   payment row, then the log if the status moves.
//! - Everything else locks one payment row (plus, for a new draft, its idempotency key, which
//!   no batch takes; for a rejection, its `payment_attempts` key, which no batch takes) and
//!   never the log.
//!
//! A transaction holding one payment row and waiting for the log waits for a holder that
//! waits for nothing. A cycle would need two transactions each holding a key the other
//! waits for; only batches hold more than one key of the kinds they share, and they take them
//! in one order. The same Request-Id sent to both replicas at once: the second batch's audit
//! insert waits for the first batch's commit, then finds the row (a duplicate, no event).
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
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

#[cfg(doc)]
use super::Store;
use super::rows::{attempts_of_invoice, payment_of_invoice};
use super::shared::{self, Backend, NotificationBatches};
use super::sql::{Dialect, sqlx_conn};
use super::{Created, Election, PaymentDraft, StoreError, StoreOptions};
use crate::payment::InvoiceNumber;

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
    /// Notifications waiting for a transaction (group commit); shared by clones.
    notifications: std::sync::Arc<NotificationBatches>,
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
        let store = Self {
            pool,
            session_options: options,
            settings: settings.clone(),
            hints: Arc::default(),
            notifications: Default::default(),
        };
        super::migrate::run(&store, &MIGRATOR).await?;
        Ok(store)
    }

    /// Closes every connection, waiting for in-flight operations, and stops the listener;
    /// later calls fail as [`StoreError::Unavailable`].
    pub async fn close(&self) {
        *self.hints.lock().unwrap_or_else(PoisonError::into_inner) = Hints::Closed;
        self.pool.close().await;
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

/// The statements where PostgreSQL's text differs from SQLite's.
const POSTGRES: Dialect = Dialect {
    lock_payment: payment_of_invoice!(" FOR UPDATE"),
    lock_events: Some(("SELECT pg_advisory_xact_lock($1)", EVENT_APPEND_LOCK)),
    last_seq: "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM events), 0), \
               COALESCE((SELECT value FROM meta WHERE key = 'pruned_through'), 0))",
    raise_pruned_through: "INSERT INTO meta (key, value) VALUES ('pruned_through', $1) \
                           ON CONFLICT (key) DO UPDATE \
                           SET value = GREATEST(meta.value, EXCLUDED.value)",
    rejected_attempts: attempts_of_invoice!("doku_request_id"),
    // sqlx's migrator's table for PostgreSQL, column for column.
    migrations_table: "CREATE TABLE IF NOT EXISTS _sqlx_migrations ( \
                       version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
                       installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), \
                       success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, \
                       execution_time BIGINT NOT NULL)",
    lock_migrations: Some("SELECT pg_advisory_xact_lock($1)"),
};

sqlx_conn!(PgConnection, sqlx::Postgres, &POSTGRES, db_error);

impl Backend for PostgresStore {
    type Conn = PgConnection;
    type Pooled = PoolConnection<sqlx::Postgres>;
    type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

    /// Reads and one-statement writes share the pool.
    async fn reader(&self) -> Result<Self::Pooled, StoreError> {
        self.pool.acquire().await.map_err(db_error)
    }

    async fn begin(&self) -> Result<Self::Tx, StoreError> {
        self.pool.begin().await.map_err(db_error)
    }

    async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(db_error)
    }

    async fn ping_database(&self) -> Result<(), StoreError> {
        let round_trip = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(PING_TIMEOUT, round_trip).await {
            Ok(done) => done.map(drop).map_err(db_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from PostgreSQL within {PING_TIMEOUT:?}"
            ))),
        }
    }

    async fn create_draft(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        // One statement: a concurrent insert of the same invoice or key makes this one wait
        // for it and then do nothing, so exactly one row is created.
        if let Some(record) = shared::insert_draft(&mut *self.reader().await?, draft).await? {
            return Ok(Created::New(record));
        }
        // The conflicting row is committed (the insert waited for it): the invoice first, as
        // the trait orders the outcomes.
        let mut tx = self.begin().await?;
        let over_existing = shared::create_over_existing(&mut *tx, draft).await?;
        Self::commit(tx).await?;
        if let Some(created) = over_existing {
            return Ok(created);
        }
        let owner = shared::key_owner(&mut *self.reader().await?, &draft.request).await?;
        if let Some(owner) = owner {
            return Ok(Created::IdempotencyKeyTaken(owner));
        }
        Err(StoreError::Unavailable(format!(
            "creating invoice {} conflicted with a row that then vanished; retry",
            draft.request.invoice
        )))
    }

    async fn claim_lease(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // No transaction: the claim is one statement, which re-checks the latest version of
        // the row after waiting for a concurrent claim.
        shared::claim_attempt(&mut *self.reader().await?, invoice, now, until).await
    }

    fn hints(&self) -> Option<watch::Receiver<u64>> {
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

    fn notification_batches(&self) -> &NotificationBatches {
        &self.notifications
    }

    fn election(&self) -> Box<dyn Election> {
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
    use crate::payment::{Channel, PaymentStatus, StatusChange};
    use crate::store::{InboundNotification, Recorded, Store, Verdict};
    use crate::{
        store::conformance::{TestStore, conformance_tests},
        testing::postgres::{ScratchDb, admin_options},
    };

    /// A store on a new scratch database (kept while the returned guard lives); `None`
    /// without a PostgreSQL server to test against.
    async fn scratch_store() -> Option<(ScratchDb, PostgresStore)> {
        let db = ScratchDb::create().await?;
        let store = PostgresStore::connect(db.options()).await.unwrap();
        Some((db, store))
    }

    /// Two replicas on one new scratch database: [`scratch_store`] and a second store on it.
    async fn two_replicas() -> Option<(ScratchDb, PostgresStore, PostgresStore)> {
        let (db, a) = scratch_store().await?;
        let b = PostgresStore::connect(db.options()).await.unwrap();
        Some((db, a, b))
    }

    async fn fixture() -> Option<TestStore> {
        let (db, store) = scratch_store().await?;
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
        match store
            .record_notification(notification.clone())
            .await
            .unwrap()
        {
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
        let Some((_db, a, b)) = two_replicas().await else {
            return;
        };
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
        let Some((_db, a, b)) = two_replicas().await else {
            return;
        };
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
        let Some((_db, a, b)) = two_replicas().await else {
            return;
        };
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

    /// Two replicas' batches sharing Request-Ids and invoices, in opposite orders, at the same
    /// time: each batch takes its keys in one global order (Request-Ids, then invoices, then
    /// the log; see the module doc), so neither waits for the other in a cycle (PostgreSQL
    /// would abort one with a deadlock after `deadlock_timeout`, failing the whole batch), and
    /// every Request-Id is stored once, by one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_of_two_replicas_in_opposite_orders_neither_deadlock_nor_repeat() {
        use crate::store::conformance::{accepted, draft, notified};
        let Some((_db, a, b)) = two_replicas().await else {
            return;
        };
        for i in 0..4 {
            a.create_payment(&draft(&format!("INV-D{i}"), None, false))
                .await
                .unwrap();
        }
        for round in 0..30 {
            // Known invoices and unknown ones (created by the batch), two notifications each.
            let batch: Vec<_> = (0..16_i64)
                .map(|j| {
                    let invoice = match j % 8 {
                        k @ 0..4 => format!("INV-D{k}"),
                        k => format!("INV-N{round}-{k}"),
                    };
                    let status = if j < 8 {
                        PaymentStatus::Paid
                    } else {
                        PaymentStatus::Expired
                    };
                    accepted(notified(&invoice, status, j, &format!("r{round}-{j}")))
                })
                .collect();
            let reversed: Vec<_> = batch.iter().rev().cloned().collect();
            // A wait cycle would end in a deadlock error (SQLSTATE 40P01) after
            // `deadlock_timeout`: every item of one batch would fail as unavailable.
            let (on_a, on_b) = tokio::join!(
                shared::record_notifications(&a, &batch),
                shared::record_notifications(&b, &reversed)
            );
            for (j, n) in batch.iter().enumerate() {
                let (x, y) = (&on_a[j], &on_b[batch.len() - 1 - j]);
                let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
                let duplicates = [x, y]
                    .iter()
                    .filter(|r| ***r == Recorded::Duplicate)
                    .count();
                assert_eq!(duplicates, 1, "{}: {x:?}, {y:?}", n.doku_request_id);
            }
        }
        let per_request: Vec<(String, i64)> = sqlx::query_as(
            "SELECT doku_request_id, COUNT(*) FROM events GROUP BY doku_request_id \
             HAVING COUNT(*) > 1",
        )
        .fetch_all(&a.pool)
        .await
        .unwrap();
        assert!(per_request.is_empty(), "{per_request:?}");
        // Every event is linked from its notification, and only its own.
        let unlinked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events e LEFT JOIN notifications n \
             ON n.doku_request_id = e.doku_request_id \
             WHERE e.doku_request_id IS NOT NULL AND n.event_seq IS DISTINCT FROM e.seq",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap();
        assert_eq!(unlinked, 0);
        let linked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE event_seq IS NOT NULL")
                .fetch_one(&a.pool)
                .await
                .unwrap();
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        assert_eq!(linked, events);
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_batch_changes_the_payments_it_creates() {
        let Some((_db, store)) = scratch_store().await else {
            return;
        };
        crate::store::conformance::a_batch_changes_the_payments_it_creates(&store).await;
        store.close().await;
    }

    /// The array forms of a batch's statements that find existing rows find them by key,
    /// never by scanning the table: on tables of 5,000 rows without statistics (as while a
    /// busy store's tables grow faster than autovacuum analyzes them), in PostgreSQL's generic
    /// plan. (Linking events by a join on a range of seqs scanned every notification in every
    /// batch.)
    #[tokio::test]
    async fn a_batch_finds_its_rows_by_key_not_by_scanning_the_table() {
        use sqlx::Row as _;
        let Some((_db, store)) = scratch_store().await else {
            return;
        };
        let mut conn = store.pool.acquire().await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO payments (invoice, amount, channel, status, create_time, expire_time, \
             reusable, fingerprint, updated_at) SELECT 'INV-' || g, 1000, 'INDOMARET', 'PAID', \
             0, 0, FALSE, '', 0 FROM generate_series(1, 5000) AS g; \
             INSERT INTO notifications (doku_request_id, received_at, headers, body, verdict) \
             SELECT 'r' || g, 0, '{}', '\\x00', 'ACCEPTED' FROM generate_series(1, 5000) AS g; \
             SET plan_cache_mode = force_generic_plan",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        let statements = [
            (shared::LINK_NOTIFICATIONS, "text[], bigint[]"),
            (shared::LOCK_PAYMENTS, "text[]"),
            (
                shared::WRITE_CHANGES,
                "text[], text[], bigint[], text[], bigint[]",
            ),
        ];
        for (i, (sql, types)) in statements.into_iter().enumerate() {
            let nulls = vec!["NULL"; types.split(',').count()].join(", ");
            let explain =
                format!("PREPARE q{i} ({types}) AS {sql}; EXPLAIN EXECUTE q{i} ({nulls})");
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let plan = plan.join("\n");
            assert!(plan.contains("Index"), "{sql}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{sql}:\n{plan}");
        }
        drop(conn);
        store.close().await;
    }

    /// A dated repeat PAID of a reusable code twice in one batch (two Request-Ids, the same
    /// payment): the second sees the first's event, which the batch appends only at its end,
    /// and is not emitted again.
    #[tokio::test]
    async fn a_repeat_paid_twice_in_one_batch_is_emitted_once() {
        use crate::store::conformance::{accepted, draft, notified};
        let Some((_db, store)) = scratch_store().await else {
            return;
        };
        store
            .create_payment(&draft("INV-RR", None, true))
            .await
            .unwrap();
        let first = accepted(notified("INV-RR", PaymentStatus::Paid, 100, "rr-1"));
        let first = store.record_notification(first).await.unwrap();
        assert!(matches!(first, Recorded::Stored { event: Some(_) }));
        let batch = [
            accepted(notified("INV-RR", PaymentStatus::Paid, 200, "rr-2")),
            accepted(notified("INV-RR", PaymentStatus::Paid, 200, "rr-3")),
            accepted(notified("INV-RR", PaymentStatus::Paid, 300, "rr-4")),
        ];
        let results = shared::record_notifications(&store, &batch).await;
        let emitted: Vec<bool> = results
            .iter()
            .map(|r| match r.as_ref().unwrap() {
                Recorded::Stored { event } => event.is_some(),
                other => panic!("expected stored, got {other:?}"),
            })
            .collect();
        assert_eq!(emitted, [true, false, true]);
        assert_eq!(store.last_seq().await.unwrap(), 3);
        store.close().await;
    }
}
