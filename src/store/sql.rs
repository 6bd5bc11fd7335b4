//! Statements in a form no driver owns: the SQL text with its parameters ([`Stmt`]), the few
//! statements whose text differs between engines ([`Dialect`]), and the one trait a backend's
//! connection implements to run them ([`Conn`]).
//!
//! [`super::shared`] writes every operation once against [`Conn`]; a backend only says how
//! its connections run a [`Stmt`] (for sqlx connections, [`sqlx_conn!`]) and which errors
//! mean "unavailable". Nothing here names sqlx outside that macro, so a backend on another
//! driver implements [`Conn`] for its own connection, mapping [`Arg`] to its parameter type,
//! and keeps every statement and decision: the SQLite store does, on rusqlite.

use std::future::Future;

use time::OffsetDateTime;

use super::migrate::AppliedMigration;
use super::{PaymentRecord, RejectedAttempt, StoreError};
use crate::payment::Event;

/// One statement parameter. Every column the store binds is an integer, a text, a blob or a
/// boolean; `None` is SQL `NULL`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    /// An `INTEGER` / `BIGINT` (times are unix seconds).
    Int(Option<i64>),
    /// A `TEXT`.
    Text(Option<&'a str>),
    /// A `BLOB` / `BYTEA`.
    Bytes(&'a [u8]),
    /// A boolean (SQLite stores 0 or 1).
    Bool(bool),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

impl From<OffsetDateTime> for Arg<'_> {
    /// Whole unix seconds, as every time is stored ([`super::rows::unix`]).
    fn from(v: OffsetDateTime) -> Self {
        Self::Int(Some(super::rows::unix(v)))
    }
}

impl From<Option<OffsetDateTime>> for Arg<'_> {
    fn from(v: Option<OffsetDateTime>) -> Self {
        Self::Int(v.map(super::rows::unix))
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Bytes(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// A statement and its parameters (`$1`, `$2`, … in order), built like a sqlx query:
/// `Stmt::new(SQL).bind(a).bind(b)`.
#[derive(Debug)]
pub(super) struct Stmt<'a> {
    /// The SQL text; `$n` placeholders, which both engines read.
    pub(super) sql: &'static str,
    /// The parameters, in placeholder order.
    pub(super) args: Vec<Arg<'a>>,
}

impl<'a> Stmt<'a> {
    pub(super) fn new(sql: &'static str) -> Self {
        Self {
            sql,
            args: Vec::new(),
        }
    }

    /// Adds the next parameter.
    pub(super) fn bind(mut self, arg: impl Into<Arg<'a>>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// The statements whose text differs between the engines; every other statement is written
/// once, in SQL both read.
#[derive(Debug)]
pub(super) struct Dialect {
    /// `SELECT` of a payment by invoice (`$1`) that keeps other writers of the row out until
    /// the transaction ends: `FOR UPDATE` on PostgreSQL; on SQLite the write transaction
    /// already holds the database, so a plain `SELECT`.
    pub(super) lock_payment: &'static str,
    /// A statement (and its one parameter) run before a transaction's first append to
    /// `events`, after its last row lock, holding what serializes appends to commit
    /// (PostgreSQL's advisory lock); `None` where the write transaction already does (SQLite).
    pub(super) lock_events: Option<(&'static str, i64)>,
    /// The highest seq ever committed, pruned or not: one row, one column.
    pub(super) last_seq: &'static str,
    /// Raises `meta.pruned_through` to `$1` (never lowers it).
    pub(super) raise_pruned_through: &'static str,
    /// The `payment_attempts` of invoice `$1`, oldest first, in insertion order among equal
    /// times.
    pub(super) rejected_attempts: &'static str,
    /// Creates `_sqlx_migrations` if missing, as sqlx's migrator creates it for the engine.
    pub(super) migrations_table: &'static str,
    /// A statement taking the lock (its one parameter the key, held to the end of the
    /// transaction) that keeps concurrent migrators out; `None` where the write transaction
    /// already does (SQLite).
    pub(super) lock_migrations: Option<&'static str>,
}

/// A connection (or transaction) that runs [`Stmt`]s: what [`super::shared`] needs of a
/// backend. Errors are already mapped to [`StoreError`] by the backend's rules.
pub(super) trait Conn: Send {
    /// The backend's SQL where the engines differ.
    const DIALECT: &'static Dialect;

    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, stmt: Stmt<'_>) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs SQL that may hold several statements and no parameters (a migration file).
    fn batch(&mut self, sql: &'static str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The `payments` row the statement returns, if any (columns: `payment_columns!`).
    fn payment(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Option<PaymentRecord>, StoreError>> + Send;

    /// Every `payments` row the statement returns.
    fn payments(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<PaymentRecord>, StoreError>> + Send;

    /// The one `events` row the statement returns (columns: `event_columns!`).
    fn event(&mut self, stmt: Stmt<'_>) -> impl Future<Output = Result<Event, StoreError>> + Send;

    /// Every `events` row the statement returns.
    fn events(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Every `payment_attempts` row the statement returns (columns: `attempt_columns!`).
    fn attempts(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<RejectedAttempt>, StoreError>> + Send;

    /// Every `_sqlx_migrations` row the statement returns (columns: version, checksum,
    /// success).
    fn migrations(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<AppliedMigration>, StoreError>> + Send;

    /// The text in the first column of the first row; `None` for no row or `NULL`.
    fn text(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// The integer in the first column of the first row; `None` for no row or `NULL`.
    fn int(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The boolean in the first column of the one row the statement returns.
    fn flag(&mut self, stmt: Stmt<'_>) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Implements [`Conn`] for a sqlx connection type: `sqlx_conn!(PgConnection, Postgres,
/// &POSTGRES, db_error)` with the backend's [`Dialect`] and error mapping. A macro rather than a
/// generic impl over `sqlx::Database`: the bounds such an impl needs (an `Executor` for every
/// borrow, `Encode` and `Type` for each parameter type, `FromRow` for each row, a
/// `rows_affected` that sqlx has on each driver's result type but in no trait) would say less
/// than the two lines that invoke it.
macro_rules! sqlx_conn {
    ($conn:ty, $db:ty, $dialect:expr, $error:path) => {
        /// The parameters of `stmt` in the driver's form; a value the driver cannot encode
        /// fails the statement, as a failed `bind` does.
        fn sqlx_arguments(
            stmt: $crate::store::sql::Stmt<'_>,
        ) -> Result<<$db as sqlx::Database>::Arguments, $crate::store::StoreError> {
            use sqlx::Arguments as _;
            use $crate::store::sql::Arg;
            let mut args = <$db as sqlx::Database>::Arguments::default();
            args.reserve(stmt.args.len(), 0);
            for arg in stmt.args {
                match arg {
                    Arg::Int(v) => args.add(v),
                    Arg::Text(v) => args.add(v),
                    Arg::Bytes(v) => args.add(v),
                    Arg::Bool(v) => args.add(v),
                }
                .map_err(|e| $error(sqlx::Error::Encode(e)))?;
            }
            Ok(args)
        }

        /// Every row `stmt` returns, decoded from its row type `R`.
        async fn sqlx_fetch_all<R, T>(
            conn: &mut $conn,
            stmt: $crate::store::sql::Stmt<'_>,
        ) -> Result<Vec<T>, $crate::store::StoreError>
        where
            R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            T: TryFrom<R, Error = $crate::store::StoreError>,
        {
            let sql = stmt.sql;
            let rows = sqlx::query_as_with::<_, R, _>(sql, sqlx_arguments(stmt)?)
                .fetch_all(conn)
                .await
                .map_err($error)?;
            $crate::store::rows::decode_all(rows)
        }

        /// The first row `stmt` returns, if any, decoded from its row type `R`.
        async fn sqlx_fetch_optional<R, T>(
            conn: &mut $conn,
            stmt: $crate::store::sql::Stmt<'_>,
        ) -> Result<Option<T>, $crate::store::StoreError>
        where
            R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            T: TryFrom<R, Error = $crate::store::StoreError>,
        {
            let sql = stmt.sql;
            sqlx::query_as_with::<_, R, _>(sql, sqlx_arguments(stmt)?)
                .fetch_optional(conn)
                .await
                .map_err($error)?
                .map(T::try_from)
                .transpose()
        }

        impl $crate::store::sql::Conn for $conn {
            const DIALECT: &'static $crate::store::sql::Dialect = $dialect;

            async fn execute(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<u64, $crate::store::StoreError> {
                let sql = stmt.sql;
                let done = sqlx::query_with(sql, sqlx_arguments(stmt)?)
                    .execute(self)
                    .await
                    .map_err($error)?;
                Ok(done.rows_affected())
            }

            async fn batch(&mut self, sql: &'static str) -> Result<(), $crate::store::StoreError> {
                sqlx::raw_sql(sql).execute(self).await.map_err($error)?;
                Ok(())
            }

            async fn payment(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Option<$crate::store::PaymentRecord>, $crate::store::StoreError> {
                sqlx_fetch_optional::<$crate::store::rows::PaymentRow, _>(self, stmt).await
            }

            async fn payments(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Vec<$crate::store::PaymentRecord>, $crate::store::StoreError> {
                sqlx_fetch_all::<$crate::store::rows::PaymentRow, _>(self, stmt).await
            }

            async fn event(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<$crate::payment::Event, $crate::store::StoreError> {
                sqlx_fetch_optional::<$crate::store::rows::EventRow, _>(self, stmt)
                    .await?
                    .ok_or_else(|| $error(sqlx::Error::RowNotFound))
            }

            async fn events(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Vec<$crate::payment::Event>, $crate::store::StoreError> {
                sqlx_fetch_all::<$crate::store::rows::EventRow, _>(self, stmt).await
            }

            async fn attempts(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Vec<$crate::store::RejectedAttempt>, $crate::store::StoreError> {
                sqlx_fetch_all::<$crate::store::rows::AttemptRow, _>(self, stmt).await
            }

            async fn migrations(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Vec<$crate::store::migrate::AppliedMigration>, $crate::store::StoreError>
            {
                let sql = stmt.sql;
                sqlx::query_as_with(sql, sqlx_arguments(stmt)?)
                    .fetch_all(self)
                    .await
                    .map_err($error)
            }

            async fn text(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                let sql = stmt.sql;
                let value: Option<Option<String>> =
                    sqlx::query_scalar_with(sql, sqlx_arguments(stmt)?)
                        .fetch_optional(self)
                        .await
                        .map_err($error)?;
                Ok(value.flatten())
            }

            async fn int(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                let sql = stmt.sql;
                let value: Option<Option<i64>> =
                    sqlx::query_scalar_with(sql, sqlx_arguments(stmt)?)
                        .fetch_optional(self)
                        .await
                        .map_err($error)?;
                Ok(value.flatten())
            }

            async fn flag(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<bool, $crate::store::StoreError> {
                let sql = stmt.sql;
                sqlx::query_scalar_with(sql, sqlx_arguments(stmt)?)
                    .fetch_one(self)
                    .await
                    .map_err($error)
            }
        }
    };
}
pub(super) use sqlx_conn;
