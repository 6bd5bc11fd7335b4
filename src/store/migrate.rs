//! Migrations, for both backends: every pending migration in **one** transaction, recorded in
//! the `_sqlx_migrations` table in the format of sqlx's migrator (which earlier versions ran,
//! so a store they migrated opens as it is, and this runner's rows read the same to them).
//!
//! Why not sqlx's migrator: it commits each migration in its own transaction, one `fsync`
//! each (nine before `SERVING` on a new SQLite file, 40–145 ms on a busy disk), and it runs
//! only on sqlx connections, which the SQLite store no longer uses. The migration files, their
//! checksums and their order still come from `sqlx::migrate!`, which embeds them at compile
//! time.
//!
//! The rules are sqlx's: a migration recorded as failed (`success = false`) is "dirty"; a
//! recorded migration this version does not have (the store was migrated by a newer
//! version), or whose checksum differs from the file's (the file changed after it ran), is
//! refused. Each is [`StoreError::Corrupt`]: this version cannot safely use such a store.
//! Concurrent openers (PostgreSQL replicas starting together) are serialized by the
//! dialect's lock, the same advisory lock sqlx's migrator takes, so an older replica
//! migrating at the same moment waits too.

use std::collections::HashMap;

use sqlx::migrate::{Migration, Migrator};

use super::StoreError;
use super::shared::Backend;
use super::sql::{Conn, Stmt};

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(super) struct AppliedMigration {
    pub(super) version: i64,
    pub(super) checksum: Vec<u8>,
    pub(super) success: bool,
}

/// The recorded migrations, oldest first.
const APPLIED: &str = "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version";

/// Records one migration as applied (sqlx writes `-1` for the time a migration took when it
/// runs inside a transaction, as here).
const RECORD: &str = "INSERT INTO _sqlx_migrations \
                      (version, description, success, checksum, execution_time) \
                      VALUES ($1, $2, TRUE, $3, -1)";

/// Runs every migration of `migrator` the store has not recorded, in one transaction of
/// `backend`; nothing when all are recorded (then nothing is written, so a read-only store
/// opens).
pub(super) async fn run<B: Backend>(
    backend: &B,
    migrator: &'static Migrator,
) -> Result<(), StoreError> {
    // Most opens find everything applied: a read tells, without a write transaction. A
    // failed read (a new store has no table yet) leaves the answer to the transaction.
    if let Ok(applied) = backend.reader().await?.migrations(Stmt::new(APPLIED)).await
        && pending(migrator, &applied)?.is_empty()
    {
        return Ok(());
    }
    let mut tx = backend.begin().await?;
    let conn = &mut *tx;
    let dialect = B::Conn::DIALECT;
    if let Some(lock) = dialect.lock_migrations {
        let database = conn.text(Stmt::new("SELECT current_database()")).await?;
        let key = lock_id(database.as_deref().unwrap_or_default());
        conn.execute(Stmt::new(lock).bind(key)).await?;
    }
    conn.batch(dialect.migrations_table).await?;
    let applied = conn.migrations(Stmt::new(APPLIED)).await?;
    for migration in pending(migrator, &applied)? {
        conn.batch(migration.sql.as_str())
            .await
            .map_err(|e| match e {
                StoreError::Corrupt(detail) => StoreError::Corrupt(format!(
                    "migration {} ({}): {detail}",
                    migration.version, migration.description
                )),
                other => other,
            })?;
        let record = Stmt::new(RECORD)
            .bind(migration.version)
            .bind(migration.description.as_ref())
            .bind(migration.checksum.as_ref());
        conn.execute(record).await?;
    }
    B::commit(tx).await
}

/// The migrations of `migrator` not in `applied`, in order; an error if `applied` shows a
/// store this version must not use.
fn pending(
    migrator: &'static Migrator,
    applied: &[AppliedMigration],
) -> Result<Vec<&'static Migration>, StoreError> {
    let refuse = |why: String| StoreError::Corrupt(format!("migrations: {why}"));
    if let Some(dirty) = applied.iter().find(|m| !m.success) {
        return Err(refuse(format!(
            "migration {} is recorded as failed; the store needs repair by hand",
            dirty.version
        )));
    }
    let ups: Vec<&'static Migration> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let known: HashMap<i64, &Migration> = ups.iter().map(|m| (m.version, *m)).collect();
    for recorded in applied {
        match known.get(&recorded.version) {
            None => {
                return Err(refuse(format!(
                    "migration {} was applied by another version of the sidecar, which this \
                     one does not know; run that version or newer",
                    recorded.version
                )));
            }
            Some(m) if *m.checksum != *recorded.checksum => {
                return Err(refuse(format!(
                    "migration {} was applied from a different file than this version has",
                    recorded.version
                )));
            }
            Some(_) => {}
        }
    }
    let done: std::collections::HashSet<i64> = applied.iter().map(|m| m.version).collect();
    Ok(ups
        .into_iter()
        .filter(|m| !done.contains(&m.version))
        .collect())
}

/// The advisory lock key sqlx's PostgreSQL migrator takes for database `name`, so that this
/// runner and an older replica's migrator exclude each other.
fn lock_id(name: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

    fn applied(m: &Migration) -> AppliedMigration {
        AppliedMigration {
            version: m.version,
            checksum: m.checksum.to_vec(),
            success: true,
        }
    }

    #[test]
    fn only_what_is_not_recorded_is_pending() {
        let all: Vec<_> = SQLITE.iter().collect();
        assert!(all.len() >= 4);
        assert_eq!(pending(&SQLITE, &[]).unwrap().len(), all.len());
        let first_two: Vec<_> = all[..2].iter().map(|m| applied(m)).collect();
        let rest = pending(&SQLITE, &first_two).unwrap();
        assert_eq!(
            rest.iter().map(|m| m.version).collect::<Vec<_>>(),
            all[2..].iter().map(|m| m.version).collect::<Vec<_>>()
        );
        let everything: Vec<_> = all.iter().map(|m| applied(m)).collect();
        assert!(pending(&SQLITE, &everything).unwrap().is_empty());
    }

    #[test]
    fn a_store_this_version_must_not_use_is_refused() {
        let first = SQLITE.iter().next().unwrap();
        let dirty = AppliedMigration {
            success: false,
            ..applied(first)
        };
        let newer = AppliedMigration {
            version: 9_999,
            ..applied(first)
        };
        let changed = AppliedMigration {
            checksum: vec![0; 48],
            ..applied(first)
        };
        for (case, record) in [("dirty", dirty), ("newer", newer), ("changed", changed)] {
            match pending(&SQLITE, &[record]) {
                Err(StoreError::Corrupt(detail)) => {
                    assert!(detail.contains("migration"), "{case}: {detail}")
                }
                other => panic!("{case}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_lock_is_the_one_sqlx_takes() {
        // sqlx-postgres 0.9's `generate_lock_id("postgres")`: 0x3d32ad9e × CRC-32("postgres"),
        // the CRC computed apart (Python's `zlib.crc32(b"postgres")` = 359303029).
        assert_eq!(lock_id("postgres"), 368_907_709_894_077_238);
        assert_ne!(lock_id("a"), lock_id("b"));
    }
}
