//! The SQLite [`Store`]: one file on a volume, for a single pod (the default).
//!
//! # On-disk format
//!
//! One SQLite database file (plus its `-wal` and `-shm` companions), schema versioned by
//! `migrations/sqlite/` (the `_sqlx_migrations` table records what ran, in the format of
//! sqlx's migrator, which earlier versions used; [`super::migrate`] runs what is pending at
//! open, all in one transaction). Tables, all `STRICT`:
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
//! `foreign_keys=ON`, `busy_timeout` 5 s. One write is committed with `synchronous=NORMAL`
//! (no `fsync`; lost only with the machine, never with the process): an issued code, which
//! the sidecar recovers by replaying the durable draft (the argument is on
//! [`super::Store::record_issued`]). Each transaction sets its own `synchronous` as it
//! begins, so none inherits another's.
//!
//! # Concurrency and threads
//!
//! The driver is rusqlite, and a statement runs on the thread that asks for it: a statement
//! on a page SQLite or the kernel has cached takes microseconds, less than handing it to
//! another thread and back (sqlx's SQLite driver, used before, ran every statement on its
//! connection's own thread: two thread wake-ups per statement, a dozen per operation;
//! `docs/design-notes.md` has the measurements). What waits for the disk is the `COMMIT` of a
//! write transaction (`synchronous=FULL`: an `fsync`), so the commit alone goes to tokio's
//! blocking pool: **one thread hop per write transaction**, and none for a read. Every write
//! is a transaction (a one-statement write too), so no `fsync` ever runs on a runtime thread.
//!
//! Writes go through one connection, held by a transaction from `BEGIN IMMEDIATE` to its
//! commit: writers queue on its lock (in order, without SQLite's busy-wait), and a
//! transaction never has to upgrade a read lock to a write lock, which in WAL mode can fail
//! with `SQLITE_BUSY` instead of waiting. A second process writing to the same file (which
//! [`super::cache::SoleWriter`] prevents) would still be handled by the busy timeout. Reads
//! that are not part of a write go through a few reader connections, which WAL lets run
//! beside the writer; they see every committed write.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rusqlite::types::{Null, ToSql, ToSqlOutput};
use rusqlite::{CachedStatement, Connection, OpenFlags, Row};
use time::OffsetDateTime;
use tokio::sync::{Mutex, OwnedMutexGuard};

#[cfg(doc)]
use super::Store;
use super::migrate::AppliedMigration;
use super::rows::{AttemptRow, EventRow, PaymentRow, attempts_of_invoice, payment_of_invoice};
use super::shared::{self, Backend, NotificationBatches};
use super::sql::{Arg, Conn, Dialect, Stmt};
use super::{Created, PaymentDraft, PaymentRecord, RejectedAttempt, StoreError};
use crate::payment::{Event, InvoiceNumber};

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a connection before the store is "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections for reads outside write transactions. A read holds one only while its
/// statements run (never across a wait), so a few serve every runtime thread.
const READERS: usize = 4;
/// Prepared statements kept per connection: every statement the store runs, with room.
const STATEMENT_CACHE: usize = 64;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Where a `sqlite://` URL points and how it may be opened.
#[derive(Debug, Clone)]
struct Location {
    /// The database file.
    path: PathBuf,
    /// `?mode=ro`: open without writing (a read-only volume); writes then fail as
    /// "unavailable".
    read_only: bool,
}

/// The location of a `sqlite://PATH[?mode=ro|rw|rwc]` URL (`sqlite:PATH` too; the path
/// percent-decoded, as sqlx read it before). An in-memory database is refused: the
/// sidecar's promise is that an acknowledged notification is durable.
fn location_of(url: &str) -> Result<Location, StoreError> {
    let invalid = |why: String| StoreError::Unavailable(format!("invalid SQLite store URL: {why}"));
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| invalid("expected sqlite://PATH".into()))?;
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let not_durable = || {
        StoreError::Unavailable(
            "an in-memory SQLite store is not durable; use sqlite://PATH".into(),
        )
    };
    if path == ":memory:" {
        return Err(not_durable());
    }
    let mut read_only = false;
    for param in params.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=').unwrap_or((param, "")) {
            ("mode", "ro") => read_only = true,
            ("mode", "rw" | "rwc") => read_only = false,
            ("mode", "memory") => return Err(not_durable()),
            (key, value) => {
                return Err(invalid(format!("unsupported parameter {key}={value:?}")));
            }
        }
    }
    let path = percent_decode_str(path)
        .decode_utf8()
        .map_err(|e| invalid(format!("path is not UTF-8: {e}")))?;
    if path.is_empty() {
        return Err(invalid("no path".into()));
    }
    Ok(Location {
        path: PathBuf::from(path.as_ref()),
        read_only,
    })
}

/// The database file a `sqlite://` URL names.
pub fn database_path(url: &str) -> Result<PathBuf, StoreError> {
    Ok(location_of(url)?.path)
}

/// The SQLite store. Cheap to clone; see the module doc for the format.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one connection every write transaction runs on; `None` once closed.
    writer: Slot,
    /// Reads outside write transactions.
    readers: Arc<Readers>,
    /// Notifications waiting for the writer (group commit); shared by clones.
    notifications: Arc<NotificationBatches>,
}

/// A connection behind the lock that lends it to one operation at a time; `None` once the
/// store is closed.
type Slot = Arc<Mutex<Option<SqliteConn>>>;

/// The reader connections, lent in turn.
#[derive(Debug)]
struct Readers {
    slots: Vec<Slot>,
    /// Where the next search for a free reader starts.
    next: AtomicUsize,
}

impl Readers {
    /// A free reader if there is one, else the next in turn once it is free.
    async fn lease(&self) -> Result<Lease, StoreError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        for k in 0..n {
            if let Ok(guard) = self.slots[(start + k) % n].clone().try_lock_owned() {
                return Lease::of(guard);
            }
        }
        Lease::acquire(&self.slots[start % n]).await
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, relative or
    /// absolute: `sqlite:///var/lib/o2o/o2o.db`) and runs pending migrations.
    ///
    /// In-memory databases are refused: the sidecar's promise is that an acknowledged
    /// notification is durable, and tests use a temporary file just as cheaply.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let at = location_of(url)?;
        // The writer connects first: it creates the file and switches it to WAL (a persistent
        // property of the file, so readers need not set it).
        let writer = SqliteConn::open(&at, true)?;
        let readers = (0..READERS)
            .map(|_| Ok(Arc::new(Mutex::new(Some(SqliteConn::open(&at, false)?)))))
            .collect::<Result<_, StoreError>>()?;
        let store = Self {
            writer: Arc::new(Mutex::new(Some(writer))),
            readers: Arc::new(Readers {
                slots: readers,
                next: AtomicUsize::new(0),
            }),
            notifications: Default::default(),
        };
        super::migrate::run(&store, &MIGRATOR).await?;
        Ok(store)
    }

    /// Closes every connection, waiting for in-flight operations; later calls fail as
    /// [`StoreError::Unavailable`]. The last connection to close checkpoints the WAL.
    pub async fn close(&self) {
        for slot in &self.readers.slots {
            slot.lock().await.take();
        }
        self.writer.lock().await.take();
    }
}

/// A SQLite connection. Its statements run on the calling thread, so the futures of its
/// [`Conn`] methods are ready when made.
#[derive(Debug)]
pub struct SqliteConn(Connection);

impl SqliteConn {
    /// Opens a connection to `at` with the store's pragmas; the writer creates the file and
    /// switches it to WAL.
    fn open(at: &Location, writer: bool) -> Result<Self, StoreError> {
        // Each connection is used by one thread at a time (its slot's lock sees to that).
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
        flags |= if at.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else if writer {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let conn = Connection::open_with_flags(&at.path, flags).map_err(db_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        if writer && !at.read_only {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(db_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "SQLite store: journal_mode is {mode:?}, WAL is required"
                )));
            }
        }
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
            .map_err(db_error)?;
        Ok(Self(conn))
    }

    /// `sql` prepared (from the connection's cache) with `args` bound. The SQL numbers
    /// parameters `$1`, `$2`, … (the text PostgreSQL reads too); SQLite takes `$1` as a
    /// parameter *named* `$1`, numbered in order of first use, so each is bound by its name's
    /// number.
    fn prepared(&self, sql: &str, args: &[Arg<'_>]) -> rusqlite::Result<CachedStatement<'_>> {
        let mut prepared = self.0.prepare_cached(sql)?;
        for i in 1..=prepared.parameter_count() {
            let n = match prepared.parameter_name(i) {
                Some(name) => name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()),
                None => Some(i),
            };
            let arg = n
                .and_then(|n| n.checked_sub(1))
                .and_then(|n| args.get(n))
                .ok_or(rusqlite::Error::InvalidParameterCount(i, args.len()))?;
            prepared.raw_bind_parameter(i, arg)?;
        }
        Ok(prepared)
    }

    /// Every row `stmt` returns, decoded by `decode`. A statement over many rows runs once
    /// per row, in order ([`Stmt::each_row`]): in process, a statement costs no round trip.
    fn rows<T>(
        &self,
        stmt: Stmt<'_>,
        mut decode: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for args in stmt.each_row() {
            let mut prepared = self.prepared(stmt.sql, args).map_err(db_error)?;
            let mut rows = prepared.raw_query();
            while let Some(row) = rows.next().map_err(db_error)? {
                out.push(decode(row).map_err(db_error)?);
            }
        }
        Ok(out)
    }

    /// The first row `stmt` returns, if any, decoded by `decode`; the statement runs to its
    /// end (a `RETURNING` statement finishes its write).
    fn first<T>(
        &self,
        stmt: Stmt<'_>,
        decode: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(stmt, decode)?.into_iter().next())
    }

    /// Runs `stmt` to its end (over many rows: once per row, as [`Self::rows`]); the number
    /// of rows it changed.
    fn run(&self, stmt: Stmt<'_>) -> Result<u64, StoreError> {
        let mut changed = 0;
        for args in stmt.each_row() {
            let mut prepared = self.prepared(stmt.sql, args).map_err(db_error)?;
            let mut rows = prepared.raw_query();
            while rows.next().map_err(db_error)?.is_some() {}
            changed += self.0.changes();
        }
        Ok(changed)
    }

    /// Ends a transaction left open (its commit failed, or it was dropped): SQLite keeps
    /// some failed commits' transactions open, and the next `BEGIN` would be refused.
    fn abandon(&self) {
        if !self.0.is_autocommit() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Arg::Int(Some(v)) => ToSqlOutput::from(v),
            Arg::Int(None) | Arg::Text(None) => ToSqlOutput::from(Null),
            Arg::Text(Some(s)) => ToSqlOutput::from(s),
            Arg::Bytes(b) => ToSqlOutput::from(b),
            Arg::Bool(b) => ToSqlOutput::from(b),
        })
    }
}

/// A `payments` row in [`payment_columns!`](super::rows::payment_columns) order.
fn payment_row(row: &Row<'_>) -> rusqlite::Result<PaymentRow> {
    Ok(PaymentRow {
        invoice: row.get(0)?,
        amount: row.get(1)?,
        channel: row.get(2)?,
        payment_code: row.get(3)?,
        status: row.get(4)?,
        create_time: row.get(5)?,
        expire_time: row.get(6)?,
        pay_time: row.get(7)?,
        how_to_pay_url: row.get(8)?,
        how_to_pay_api_url: row.get(9)?,
        reusable: row.get(10)?,
        fingerprint: row.get(11)?,
        idempotency_key: row.get(12)?,
        doku_request_id: row.get(13)?,
        doku_request_body: row.get(14)?,
        attempt_lease_until: row.get(15)?,
        next_check_at: row.get(16)?,
        check_count: row.get(17)?,
        rejected_http_status: row.get(18)?,
        rejected_message: row.get(19)?,
        outcome_unknown: row.get(20)?,
        trace_context: row.get(21)?,
        instructions: row.get(22)?,
    })
}

/// An `events` row in [`event_columns!`](super::rows::event_columns) order.
fn event_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: row.get(0)?,
        invoice: row.get(1)?,
        status: row.get(2)?,
        amount: row.get(3)?,
        payment_code: row.get(4)?,
        channel: row.get(5)?,
        occur_time: row.get(6)?,
        source: row.get(7)?,
        doku_request_id: row.get(8)?,
    })
}

/// A `payment_attempts` row in [`attempt_columns!`](super::rows::attempt_columns) order.
fn attempt_row(row: &Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        doku_request_id: row.get(0)?,
        fingerprint: row.get(1)?,
        idempotency_key: row.get(2)?,
        request_body: row.get(3)?,
        http_status: row.get(4)?,
        message: row.get(5)?,
        ended_at: row.get(6)?,
    })
}

/// Decodes rows into domain values, failing on the first that cannot be read.
fn decoded<R, T: TryFrom<R, Error = StoreError>>(
    rows: Result<Vec<R>, StoreError>,
) -> Result<Vec<T>, StoreError> {
    super::rows::decode_all(rows?)
}

impl Conn for SqliteConn {
    const DIALECT: &'static Dialect = &SQLITE;

    fn execute(&mut self, stmt: Stmt<'_>) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(self.run(stmt))
    }

    fn batch(&mut self, sql: &'static str) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(self.0.execute_batch(sql).map_err(db_error))
    }

    fn payment(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Option<PaymentRecord>, StoreError>> + Send {
        let row = self.first(stmt, payment_row);
        std::future::ready(row.and_then(|row| row.map(PaymentRecord::try_from).transpose()))
    }

    fn payments(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<PaymentRecord>, StoreError>> + Send {
        std::future::ready(decoded(self.rows(stmt, payment_row)))
    }

    fn events(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        std::future::ready(decoded(self.rows(stmt, event_row)))
    }

    fn attempts(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<RejectedAttempt>, StoreError>> + Send {
        std::future::ready(decoded(self.rows(stmt, attempt_row)))
    }

    fn migrations(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<AppliedMigration>, StoreError>> + Send {
        std::future::ready(self.rows(stmt, |row| {
            Ok(AppliedMigration {
                version: row.get(0)?,
                checksum: row.get(1)?,
                success: row.get(2)?,
            })
        }))
    }

    fn texts(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        let values = self.rows(stmt, |row| row.get::<_, Option<String>>(0));
        std::future::ready(values.map(|v| v.into_iter().flatten().collect()))
    }

    fn int(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send {
        let value = self.first(stmt, |row| row.get::<_, Option<i64>>(0));
        std::future::ready(value.map(Option::flatten))
    }

    fn text(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        let value = self.first(stmt, |row| row.get::<_, Option<String>>(0));
        std::future::ready(value.map(Option::flatten))
    }

    fn flag(&mut self, stmt: Stmt<'_>) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let value = self
            .first(stmt, |row| row.get::<_, bool>(0))
            .and_then(|value| value.ok_or_else(|| db_error(rusqlite::Error::QueryReturnedNoRows)));
        std::future::ready(value)
    }
}

/// A connection lent to one operation: its slot's lock, held until dropped.
#[derive(Debug)]
pub struct Lease(OwnedMutexGuard<Option<SqliteConn>>);

impl Lease {
    /// The connection behind `guard`, unless the store is closed.
    fn of(guard: OwnedMutexGuard<Option<SqliteConn>>) -> Result<Self, StoreError> {
        match *guard {
            Some(_) => Ok(Self(guard)),
            None => Err(StoreError::Unavailable("the SQLite store is closed".into())),
        }
    }

    /// The connection of `slot` once it is free, waiting at most [`ACQUIRE_TIMEOUT`].
    async fn acquire(slot: &Slot) -> Result<Self, StoreError> {
        let guard = tokio::time::timeout(ACQUIRE_TIMEOUT, slot.clone().lock_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "no SQLite connection came free within {ACQUIRE_TIMEOUT:?}"
                ))
            })?;
        Self::of(guard)
    }

    /// The driver's connection.
    fn connection(&self) -> &Connection {
        &(**self).0
    }

    /// Commits the transaction this lease's connection is in; a failed commit leaves no
    /// transaction open.
    fn commit(self) -> Result<(), StoreError> {
        let committed = self.connection().execute_batch("COMMIT").map_err(db_error);
        if committed.is_err() {
            self.abandon();
        }
        committed
    }
}

impl Deref for Lease {
    type Target = SqliteConn;

    fn deref(&self) -> &SqliteConn {
        // `Lease::of` lends only an open connection, and closing takes the slot's lock.
        self.0.as_ref().expect("a lease holds an open connection")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut SqliteConn {
        self.0.as_mut().expect("a lease holds an open connection")
    }
}

/// A write transaction (`BEGIN IMMEDIATE`) on the writer connection; rolled back if dropped
/// before [`Backend::commit`].
#[derive(Debug)]
pub struct SqliteTx(Option<Lease>);

impl Deref for SqliteTx {
    type Target = SqliteConn;

    fn deref(&self) -> &SqliteConn {
        self.0
            .as_ref()
            .expect("an unfinished transaction holds its lease")
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConn {
        self.0
            .as_mut()
            .expect("an unfinished transaction holds its lease")
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(lease) = &self.0 {
            lease.abandon();
        }
    }
}

/// SQLite's primary result codes that mean "the environment", not "the data": BUSY, LOCKED,
/// NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL.
fn outside_data(extended_code: i32) -> bool {
    matches!(extended_code & 0xff, 5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15)
}

/// Maps a driver error: what lies outside the data is [`StoreError::Unavailable`], anything
/// else (a row or statement this version cannot handle) [`StoreError::Corrupt`]. The message
/// names SQLite's extended result code, `(code: N)`.
fn db_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let detail = message.as_deref().unwrap_or("");
            let text = format!(
                "SQLite error (code: {}): {failure} {detail}",
                failure.extended_code
            );
            if outside_data(failure.extended_code) {
                StoreError::Unavailable(text)
            } else {
                StoreError::Corrupt(text)
            }
        }
        _ => StoreError::Corrupt(format!("SQLite: {e}")),
    }
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
    // sqlx's migrator's table for SQLite, column for column.
    migrations_table: "CREATE TABLE IF NOT EXISTS _sqlx_migrations ( \
                       version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
                       installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
                       success BOOLEAN NOT NULL, checksum BLOB NOT NULL, \
                       execution_time BIGINT NOT NULL)",
    // The `BEGIN IMMEDIATE` transaction already keeps other migrators out.
    lock_migrations: None,
};

impl SqliteStore {
    /// Begins a write transaction with `begin`, which sets the transaction's `synchronous`
    /// first (SQLite reads it at commit, and refuses to change it inside a transaction): every
    /// transaction says how durable it is, so none inherits a relaxed setting.
    async fn begin_with(&self, begin: &str) -> Result<SqliteTx, StoreError> {
        let lease = Lease::acquire(&self.writer).await?;
        // A transaction a failed commit or a dropped one left open is ended first.
        lease.abandon();
        lease.connection().execute_batch(begin).map_err(db_error)?;
        Ok(SqliteTx(Some(lease)))
    }
}

impl Backend for SqliteStore {
    type Conn = SqliteConn;
    type Pooled = Lease;
    type Tx = SqliteTx;

    async fn reader(&self) -> Result<Lease, StoreError> {
        self.readers.lease().await
    }

    async fn begin(&self) -> Result<SqliteTx, StoreError> {
        self.begin_with("PRAGMA synchronous = FULL; BEGIN IMMEDIATE")
            .await
    }

    async fn begin_unsynced(&self) -> Result<SqliteTx, StoreError> {
        self.begin_with("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")
            .await
    }

    async fn commit(mut tx: SqliteTx) -> Result<(), StoreError> {
        let Some(lease) = tx.0.take() else {
            return Err(StoreError::Unavailable(
                "transaction already finished".into(),
            ));
        };
        // The commit waits for the disk: on the blocking pool, not on a runtime thread (an
        // unsynced one too: it may checkpoint the WAL). Once started it finishes even if the
        // caller stops waiting.
        tokio::task::spawn_blocking(move || lease.commit())
            .await
            .map_err(|e| StoreError::Unavailable(format!("the commit did not finish: {e}")))?
    }

    async fn ping_database(&self) -> Result<(), StoreError> {
        let mut reader = self.reader().await?;
        reader.execute(Stmt::new("SELECT 1")).await.map(drop)
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

    /// Every connection of `store`: the writer, then each reader.
    async fn each_connection(store: &SqliteStore, mut check: impl FnMut(&Connection)) {
        for slot in std::iter::once(&store.writer).chain(&store.readers.slots) {
            let lease = Lease::acquire(slot).await.unwrap();
            check(lease.connection());
        }
    }

    /// Runs `sql` on the writer connection, outside the store's operations.
    async fn write_by_hand(store: &SqliteStore, sql: &str) {
        let lease = Lease::acquire(&store.writer).await.unwrap();
        lease.connection().execute_batch(sql).unwrap();
    }

    /// The writer's `synchronous` inside a transaction begun by `begin`.
    async fn synchronous_in(
        tx: impl Future<Output = Result<SqliteTx, StoreError>>,
        commit: bool,
    ) -> i64 {
        let tx = tx.await.unwrap();
        let level =
            tx.0.as_ref()
                .unwrap()
                .connection()
                .query_row("PRAGMA synchronous", [], |row| row.get(0))
                .unwrap();
        if commit {
            SqliteStore::commit(tx).await.unwrap();
        }
        level
    }

    /// Only the transaction begun unsynced commits without an `fsync`: the next one, after a
    /// commit or a rollback, is FULL again.
    #[tokio::test]
    async fn an_unsynced_transaction_leaves_the_next_one_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        let (normal, full) = (1, 2);
        assert_eq!(synchronous_in(store.begin(), true).await, full);
        assert_eq!(synchronous_in(store.begin_unsynced(), true).await, normal);
        assert_eq!(synchronous_in(store.begin(), true).await, full);
        // Dropped, so rolled back.
        assert_eq!(synchronous_in(store.begin_unsynced(), false).await, normal);
        assert_eq!(synchronous_in(store.begin(), false).await, full);
    }

    #[tokio::test]
    async fn connections_use_the_durable_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        each_connection(&store, |conn| {
            let pragma = |name: &str| -> String {
                conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                    row.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
                .unwrap()
            };
            assert_eq!(pragma("journal_mode"), "wal");
            assert_eq!(pragma("synchronous"), "2", "FULL");
            assert_eq!(pragma("foreign_keys"), "1");
            assert_eq!(pragma("busy_timeout"), "5000");
        })
        .await;
    }

    #[tokio::test]
    async fn statements_bind_parameters_by_their_number_not_their_place() {
        // `$2` before `$1` in the text: SQLite numbers named parameters by first use, so a
        // positional bind would swap them.
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        let mut reader = store.reader().await.unwrap();
        let text = reader
            .text(
                Stmt::new("SELECT $2 || '-' || $1 || '-' || $2")
                    .bind("a")
                    .bind("b"),
            )
            .await
            .unwrap();
        assert_eq!(text.as_deref(), Some("b-a-b"));
        match reader.text(Stmt::new("SELECT $1 || $3").bind("a")).await {
            Err(StoreError::Corrupt(_)) => {}
            other => panic!("a missing parameter must fail the statement: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_transaction_is_rolled_back_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        {
            let mut tx = store.begin().await.unwrap();
            shared::insert_draft(&mut *tx, &draft("INV-DROPPED"))
                .await
                .unwrap();
        }
        let invoice = InvoiceNumber::parse("INV-DROPPED").unwrap();
        assert_eq!(store.get_payment(&invoice).await.unwrap(), None);
        assert!(matches!(
            store.create_payment(&draft("INV-DROPPED")).await.unwrap(),
            Created::New(_)
        ));
        assert!(store.get_payment(&invoice).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_new_store_is_migrated_in_one_transaction_and_reopens_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        let mut recorded = Vec::new();
        each_connection(&store, |conn| {
            let mut stmt = conn
                .prepare("SELECT version, execution_time FROM _sqlx_migrations ORDER BY version")
                .unwrap();
            recorded = stmt
                .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
        })
        .await;
        assert_eq!(recorded.iter().map(|r| r.0).collect::<Vec<_>>(), versions);
        assert!(recorded.iter().all(|r| r.1 == -1), "{recorded:?}");
        store.close().await;
        // Reopening read-only works: nothing is pending, so nothing is written.
        let path = dir.path().join("o2o.db");
        SqliteStore::open(&format!("sqlite://{}?mode=ro", path.display()))
            .await
            .unwrap();
    }

    #[test]
    fn urls_name_a_file_and_nothing_else() {
        let at = location_of("sqlite:///var/lib/o2o/o2o%20a.db?mode=rwc").unwrap();
        assert_eq!(at.path, PathBuf::from("/var/lib/o2o/o2o a.db"));
        assert!(!at.read_only);
        assert_eq!(
            location_of("sqlite:o2o.db").unwrap().path,
            PathBuf::from("o2o.db")
        );
        assert!(location_of("sqlite://x.db?mode=ro").unwrap().read_only);
        for bad in [
            "sqlite://",
            "sqlite://x.db?cache=shared",
            "sqlite://x.db?mode=nope",
            "file:x.db",
        ] {
            assert!(
                matches!(location_of(bad), Err(StoreError::Unavailable(_))),
                "{bad}"
            );
        }
    }

    /// A store whose payment INV-1 has a status this version cannot read (`SETTLED`).
    async fn with_a_corrupt_payment(dir: &tempfile::TempDir) -> SqliteStore {
        let store = SqliteStore::open(&url(dir)).await.unwrap();
        store
            .record_notification(accepted(change("INV-1", PaymentStatus::Paid, "r1")))
            .await
            .unwrap();
        write_by_hand(&store, "UPDATE payments SET status = 'SETTLED'").await;
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
        write_by_hand(&store, "UPDATE events SET source = 'CARRIER_PIGEON'").await;
        assert!(matches!(
            store.events_after(0, 10).await,
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn a_batch_changes_the_payments_it_creates() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&url(&dir)).await.unwrap();
        crate::store::conformance::a_batch_changes_the_payments_it_creates(&store).await;
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
        let audit = store
            .reader()
            .await
            .unwrap()
            .int(Stmt::new(
                "SELECT COUNT(*) FROM notifications WHERE doku_request_id = 'r1-late'",
            ))
            .await
            .unwrap();
        assert_eq!(audit, Some(0));
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
