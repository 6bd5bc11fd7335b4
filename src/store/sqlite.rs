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
//!   `trace_context` (the W3C `traceparent` of the call that created the payment); since
//!   migration 4, `instructions` (how to pay the code, as JSON text
//!   `[{"channel", "language", "steps": [..]}]`, NULL when there are none).
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

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use time::OffsetDateTime;

#[cfg(doc)]
use super::Store;
use super::rows::{attempts_of_invoice, payment_of_invoice};
use super::shared::{self, Backend, NotificationBatches};
use super::sql::{Dialect, sqlx_conn};
use super::{Created, PaymentDraft, StoreError};
use crate::payment::InvoiceNumber;

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
    /// Notifications waiting for the writer (group commit); shared by clones.
    notifications: std::sync::Arc<NotificationBatches>,
}

/// The connect options of a `sqlite://` URL; an in-memory database is refused.
fn options_of(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("invalid SQLite store URL: {e}")))?;
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Err(StoreError::Unavailable(
            "an in-memory SQLite store is not durable; use sqlite://PATH".into(),
        ));
    }
    Ok(options)
}

/// The database file a `sqlite://` URL names.
pub fn database_path(url: &str) -> Result<std::path::PathBuf, StoreError> {
    Ok(options_of(url)?.get_filename().to_path_buf())
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, relative or
    /// absolute: `sqlite:///var/lib/o2o/o2o.db`) and runs pending migrations.
    ///
    /// In-memory databases are refused: the sidecar's promise is that an acknowledged
    /// notification is durable, and tests use a temporary file just as cheaply.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = options_of(url)?
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
        Ok(Self {
            writer,
            reader,
            notifications: Default::default(),
        })
    }

    /// Closes every connection, waiting for in-flight operations; later calls fail as
    /// [`StoreError::Unavailable`]. Lets a graceful shutdown checkpoint the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
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

/// The statements where SQLite's text differs from PostgreSQL's.
const SQLITE: Dialect = Dialect {
    // The `BEGIN IMMEDIATE` transaction already holds the database.
    lock_payment: payment_of_invoice!(""),
    lock_events: None,
    last_seq: "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0), \
               COALESCE((SELECT value FROM meta WHERE key = 'pruned_through'), 0))",
    raise_pruned_through: "INSERT INTO meta (key, value) VALUES ('pruned_through', $1) \
                           ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
    rejected_attempts: attempts_of_invoice!("rowid"),
};

sqlx_conn!(SqliteConnection, sqlx::Sqlite, &SQLITE, db_error);

impl Backend for SqliteStore {
    type Conn = SqliteConnection;
    type Pooled = PoolConnection<sqlx::Sqlite>;
    type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

    async fn reader(&self) -> Result<Self::Pooled, StoreError> {
        self.reader.acquire().await.map_err(db_error)
    }

    async fn writer(&self) -> Result<Self::Pooled, StoreError> {
        self.writer.acquire().await.map_err(db_error)
    }

    async fn begin(&self) -> Result<Self::Tx, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(db_error)
    }

    async fn ping_database(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_draft(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        // The write lock, held from `BEGIN IMMEDIATE`, keeps every other writer out: look,
        // then insert.
        let mut tx = self.begin().await?;
        let created = match shared::create_over_existing(&mut *tx, draft).await? {
            Some(created) => created,
            None => match shared::key_owner(&mut *tx, &draft.request).await? {
                Some(owner) => Created::IdempotencyKeyTaken(owner),
                None => match shared::insert_draft(&mut *tx, draft).await? {
                    Some(record) => Created::New(record),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "payment {}: insert under the write lock conflicted",
                            draft.request.invoice
                        )));
                    }
                },
            },
        };
        Self::commit(tx).await?;
        Ok(created)
    }

    async fn claim_lease(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // In a write transaction, so that the claim and the look at the row see one state.
        let mut tx = self.begin().await?;
        let taken = shared::claim_attempt(&mut *tx, invoice, now, until).await?;
        Self::commit(tx).await?;
        Ok(taken)
    }

    fn hints(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // One process writes the file: its in-process fan-out sees every commit.
        None
    }

    fn election(&self) -> Box<dyn super::Election> {
        Box::new(super::SoleReplica)
    }

    fn notification_batches(&self) -> &NotificationBatches {
        &self.notifications
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::payment::{Channel, PaymentCode, PaymentStatus, StatusChange};
    use crate::store::conformance::{TestStore, conformance_tests};
    use crate::store::{InboundNotification, Recorded, Store, Verdict};

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
            attempt_lease_until: None,
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
        let Recorded::Stored { event: Some(event) } =
            store.record_notification(n.clone()).await.unwrap()
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
            reopened.record_notification(n.clone()).await.unwrap(),
            Recorded::Duplicate
        );
        let next = reopened
            .record_notification(accepted(change("INV-2", PaymentStatus::Paid, "r2")))
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
                let recorded = store.record_notification(n.clone()).await?;
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

    /// A store whose payment INV-1 has a status this version cannot read (`SETTLED`).
    async fn with_a_corrupt_payment(dir: &tempfile::TempDir) -> SqliteStore {
        let store = SqliteStore::open(&url(dir)).await.unwrap();
        store
            .record_notification(accepted(change("INV-1", PaymentStatus::Paid, "r1")))
            .await
            .unwrap();
        sqlx::query("UPDATE payments SET status = 'SETTLED'")
            .execute(&store.writer)
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn an_unreadable_row_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = with_a_corrupt_payment(&dir).await;
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
    async fn an_item_that_fails_on_its_data_fails_alone_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = with_a_corrupt_payment(&dir).await;
        let before = store.last_seq().await.unwrap();
        let batch = [
            accepted(change("INV-2", PaymentStatus::Paid, "r2")),
            accepted(change("INV-1", PaymentStatus::Expired, "r1-late")),
            accepted(change("INV-2", PaymentStatus::Paid, "r2")),
            accepted(change("INV-3", PaymentStatus::Paid, "r3")),
        ];
        let results = shared::record_notifications(&store, &batch).await;
        let seqs: Vec<u64> = [&results[0], &results[3]]
            .iter()
            .map(|r| match r {
                Ok(Recorded::Stored { event: Some(e) }) => e.seq,
                other => panic!("expected a stored event, got {other:?}"),
            })
            .collect();
        assert_eq!(seqs, [before + 1, before + 2]);
        assert!(
            matches!(results[1], Err(StoreError::Corrupt(_))),
            "{results:?}"
        );
        assert_eq!(results[2].as_ref().unwrap(), &Recorded::Duplicate);
        // The batch-mates are committed; the failed item left nothing, not even its audit row.
        for invoice in ["INV-2", "INV-3"] {
            let invoice = InvoiceNumber::parse(invoice).unwrap();
            assert!(store.get_payment(&invoice).await.unwrap().is_some());
        }
        assert_eq!(store.last_seq().await.unwrap(), before + 2);
        let audit: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications WHERE doku_request_id = 'r1-late'",
        )
        .fetch_one(&store.reader)
        .await
        .unwrap();
        assert_eq!(audit, 0);
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
        match store.record_notification(n.clone()).await {
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
