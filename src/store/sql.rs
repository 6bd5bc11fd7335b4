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
/// `Stmt::new(SQL).bind(a).bind(b)`; or one statement over many rows ([`Stmt::rows`]).
#[derive(Debug)]
pub(super) struct Stmt<'a> {
    /// The SQL text; `$n` placeholders, which both engines read. For a statement over many
    /// rows, its form for one row.
    pub(super) sql: &'static str,
    /// The parameters, in placeholder order; for a statement over many rows, row after row.
    pub(super) args: Vec<Arg<'a>>,
    /// Set for a statement over many rows.
    pub(super) rows: Option<Rows>,
}

/// A statement over many rows: each row binds `width` parameters. A connection runs it
/// either once for all rows, in its [`all`](Self::all) form (PostgreSQL: `$k` is the array
/// of every row's `k`th value, read with `unnest`, [`Stmt::columns`]), or as its one-row
/// form once per row in order ([`Stmt::each_row`]) where a statement costs no round trip
/// (SQLite). A statement over one row runs as its one-row form on both
/// ([`Stmt::is_over_rows`]), one over no rows runs nothing ([`Stmt::has_no_rows`]). Either
/// way the rows it changes are summed and the rows it returns concatenated.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows {
    /// The statement once for all rows, each parameter an array.
    pub(super) all: &'static str,
    /// Parameters per row.
    pub(super) width: usize,
}

/// One parameter of a statement over many rows in its array form: every row's value, by
/// type (the type of the column's first row; a row of another type fails the statement).
#[derive(Debug)]
pub(super) enum Column<'a> {
    /// `BIGINT[]`.
    Int(Vec<Option<i64>>),
    /// `TEXT[]`.
    Text(Vec<Option<&'a str>>),
    /// `BYTEA[]`.
    Bytes(Vec<&'a [u8]>),
    /// `BOOLEAN[]`.
    Bool(Vec<bool>),
}

impl<'a> Stmt<'a> {
    pub(super) fn new(sql: &'static str) -> Self {
        Self {
            sql,
            args: Vec::new(),
            rows: None,
        }
    }

    /// A statement over many rows: `each` for one row (`$1`…`$width`), `all` for every row
    /// at once (see [`Rows`]); bind the rows' parameters row after row.
    pub(super) fn rows(each: &'static str, all: &'static str, width: usize) -> Self {
        Self {
            sql: each,
            args: Vec::new(),
            rows: Some(Rows { all, width }),
        }
    }

    /// Adds the next parameter.
    pub(super) fn bind(mut self, arg: impl Into<Arg<'a>>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds the next parameter, in place (for a loop over rows).
    pub(super) fn push(&mut self, arg: impl Into<Arg<'a>>) {
        self.args.push(arg.into());
    }

    /// The parameters of each row, in row order, for its one-row form [`Stmt::sql`]: one row
    /// (every parameter) when the statement is not over many rows. For a connection that runs
    /// a statement over many rows row by row.
    pub(super) fn each_row(&self) -> impl Iterator<Item = &[Arg<'a>]> {
        let width = match self.rows {
            Some(Rows { width, .. }) => width.max(1),
            None => self.args.len().max(1),
        };
        let no_parameters = self.rows.is_none() && self.args.is_empty();
        self.args
            .chunks(width)
            .chain(no_parameters.then_some(&[][..]))
    }

    /// Whether the statement is over many rows and has none: every connection runs nothing
    /// for it (no row changed, none returned).
    pub(super) fn has_no_rows(&self) -> bool {
        self.rows.is_some() && self.args.is_empty()
    }

    /// Whether the statement runs once with arrays ([`Stmt::columns`]) on a connection that
    /// binds them: a statement over more than one row. One row runs as its one-row form.
    pub(super) fn is_over_rows(&self) -> bool {
        self.rows.is_some_and(|r| self.args.len() > r.width)
    }

    /// A statement over many rows as its [`Rows::all`] form and one array per parameter,
    /// each the rows' values in row order. `Err` for a statement not over many rows, or one
    /// whose rows bind different types in one column.
    pub(super) fn columns(self) -> Result<(&'static str, Vec<Column<'a>>), String> {
        let Some(Rows { all, width }) = self.rows else {
            return Err(format!("{}: not a statement over many rows", self.sql));
        };
        let width = width.max(1);
        let mut columns: Vec<Column<'a>> = Vec::with_capacity(width);
        for (i, arg) in self.args.into_iter().enumerate() {
            if i < width {
                columns.push(Column::of(arg));
            } else if !columns[i % width].push(arg) {
                return Err(format!("{all}: parameter {} mixes types", i % width + 1));
            }
        }
        Ok((all, columns))
    }
}

impl<'a> Column<'a> {
    /// A column holding `arg` alone.
    fn of(arg: Arg<'a>) -> Self {
        match arg {
            Arg::Int(v) => Self::Int(vec![v]),
            Arg::Text(v) => Self::Text(vec![v]),
            Arg::Bytes(v) => Self::Bytes(vec![v]),
            Arg::Bool(v) => Self::Bool(vec![v]),
        }
    }

    /// Appends `arg`; `false` if it is of another type.
    fn push(&mut self, arg: Arg<'a>) -> bool {
        match (self, arg) {
            (Self::Int(c), Arg::Int(v)) => c.push(v),
            (Self::Text(c), Arg::Text(v)) => c.push(v),
            (Self::Bytes(c), Arg::Bytes(v)) => c.push(v),
            (Self::Bool(c), Arg::Bool(v)) => c.push(v),
            _ => return false,
        }
        true
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

    /// Every `events` row the statement returns (columns: `event_columns!`).
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

    /// The text in the first column of every row (`NULL`s skipped).
    fn texts(
        &mut self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

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
        ///
        /// The driver binds arrays: a statement over many rows runs once, in its
        /// [`Rows::all`]($crate::store::sql::Rows::all) form; hence the SQL returned.
        fn sqlx_arguments(
            stmt: $crate::store::sql::Stmt<'_>,
        ) -> Result<(&'static str, <$db as sqlx::Database>::Arguments), $crate::store::StoreError> {
            use sqlx::Arguments as _;
            use $crate::store::sql::{Arg, Column};
            let mut args = <$db as sqlx::Database>::Arguments::default();
            let encode = |e| $error(sqlx::Error::Encode(e));
            if stmt.is_over_rows() {
                let (sql, columns) = stmt.columns().map_err($crate::store::StoreError::Corrupt)?;
                args.reserve(columns.len(), 0);
                for column in columns {
                    match column {
                        Column::Int(v) => args.add(v),
                        Column::Text(v) => args.add(v),
                        Column::Bytes(v) => args.add(v),
                        Column::Bool(v) => args.add(v),
                    }
                    .map_err(encode)?;
                }
                return Ok((sql, args));
            }
            args.reserve(stmt.args.len(), 0);
            for arg in stmt.args {
                match arg {
                    Arg::Int(v) => args.add(v),
                    Arg::Text(v) => args.add(v),
                    Arg::Bytes(v) => args.add(v),
                    Arg::Bool(v) => args.add(v),
                }
                .map_err(encode)?;
            }
            Ok((stmt.sql, args))
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
            if stmt.has_no_rows() {
                return Ok(Vec::new());
            }
            let (sql, args) = sqlx_arguments(stmt)?;
            let rows = sqlx::query_as_with::<_, R, _>(sql, args)
                .fetch_all(conn)
                .await
                .map_err($error)?;
            $crate::store::rows::decode_all(rows)
        }

        /// The first column of every row `stmt` returns (`NULL` as `None`).
        async fn sqlx_scalars<T>(
            conn: &mut $conn,
            stmt: $crate::store::sql::Stmt<'_>,
        ) -> Result<Vec<Option<T>>, $crate::store::StoreError>
        where
            (Option<T>,): for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row>,
            T: Send + Unpin,
        {
            if stmt.has_no_rows() {
                return Ok(Vec::new());
            }
            let (sql, args) = sqlx_arguments(stmt)?;
            sqlx::query_scalar_with(sql, args)
                .fetch_all(conn)
                .await
                .map_err($error)
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
            if stmt.has_no_rows() {
                return Ok(None);
            }
            let (sql, args) = sqlx_arguments(stmt)?;
            sqlx::query_as_with::<_, R, _>(sql, args)
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
                if stmt.has_no_rows() {
                    return Ok(0);
                }
                let (sql, args) = sqlx_arguments(stmt)?;
                let done = sqlx::query_with(sql, args)
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
                let (sql, args) = sqlx_arguments(stmt)?;
                sqlx::query_as_with(sql, args)
                    .fetch_all(self)
                    .await
                    .map_err($error)
            }

            async fn text(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                Ok(sqlx_scalars(self, stmt).await?.into_iter().next().flatten())
            }

            async fn texts(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                Ok(sqlx_scalars(self, stmt)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect())
            }

            async fn int(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                Ok(sqlx_scalars(self, stmt).await?.into_iter().next().flatten())
            }

            async fn flag(
                &mut self,
                stmt: $crate::store::sql::Stmt<'_>,
            ) -> Result<bool, $crate::store::StoreError> {
                let (sql, args) = sqlx_arguments(stmt)?;
                sqlx::query_scalar_with(sql, args)
                    .fetch_one(self)
                    .await
                    .map_err($error)
            }
        }
    };
}
pub(super) use sqlx_conn;

#[cfg(test)]
mod tests {
    use super::*;

    fn two_rows() -> Stmt<'static> {
        let mut stmt = Stmt::rows("ONE ($1, $2)", "ALL ($1, $2)", 2);
        for (id, n) in [("a", Some(1)), ("b", None)] {
            stmt.push(id);
            stmt.push(n);
        }
        stmt
    }

    #[test]
    fn a_statement_over_rows_runs_as_each_row_in_order() {
        let stmt = two_rows();
        let rows: Vec<Vec<String>> = stmt
            .each_row()
            .map(|row| row.iter().map(|a| format!("{a:?}")).collect())
            .collect();
        assert_eq!(
            rows,
            [
                ["Text(Some(\"a\"))", "Int(Some(1))"],
                ["Text(Some(\"b\"))", "Int(None)"]
            ]
        );
        assert!(stmt.is_over_rows());
        // One row runs as its one-row form everywhere.
        let mut one = Stmt::rows("ONE ($1)", "ALL ($1)", 1);
        one.push("a");
        assert!(!one.is_over_rows());
        assert_eq!(one.each_row().count(), 1);
    }

    #[test]
    fn a_statement_over_rows_runs_once_as_columns() {
        let (sql, columns) = two_rows().columns().unwrap();
        assert_eq!(sql, "ALL ($1, $2)");
        match columns.as_slice() {
            [Column::Text(ids), Column::Int(ns)] => {
                assert_eq!(ids, &[Some("a"), Some("b")]);
                assert_eq!(ns, &[Some(1), None]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_column_of_mixed_types_or_a_single_statement_has_no_array_form() {
        let mut mixed = Stmt::rows("ONE ($1)", "ALL ($1)", 1);
        mixed.push("a");
        mixed.push(1_i64);
        assert!(
            mixed
                .columns()
                .unwrap_err()
                .contains("parameter 1 mixes types")
        );
        assert!(Stmt::new("SELECT $1").bind(1_i64).columns().is_err());
        // A single statement runs as itself, with or without parameters.
        let single = Stmt::new("SELECT $1").bind(1_i64);
        assert!(!single.is_over_rows());
        assert_eq!(single.each_row().map(<[_]>::len).collect::<Vec<_>>(), [1]);
        let bare = Stmt::new("SELECT 1");
        assert_eq!(bare.each_row().map(<[_]>::len).collect::<Vec<_>>(), [0]);
        // A statement over no rows runs no row.
        let none = Stmt::rows("ONE ($1)", "ALL ($1)", 1);
        assert!(none.has_no_rows());
        assert_eq!(none.each_row().count(), 0);
        assert!(!Stmt::new("SELECT 1").has_no_rows());
    }
}
