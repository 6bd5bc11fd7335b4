//! The P6 rows' PostgreSQL database: one per run, created on the admin connection
//! (`--postgres`) before the run's sidecars start and dropped after they stop, so every run
//! starts from an empty schema (the first replica migrates it, as in production) and nothing
//! is left on the server.
//!
//! Through `psql`, not a client crate: the harness then needs no database driver of its own,
//! and every machine that runs the sidecar's PostgreSQL tests (CI included) has `psql`.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::Command;

/// How long one `psql` may take: an unreachable server must not stall the run.
const PSQL_TIMEOUT: Duration = Duration::from_secs(20);
/// `PGCONNECT_TIMEOUT` of every `psql`, s: a filtered port fails within this, not minutes.
const CONNECT_TIMEOUT_S: &str = "5";

/// The server the P6 rows ran on, recorded beside their figures: what a commit costs depends
/// on its durability settings.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Server {
    /// `server_version`.
    pub(crate) version: String,
    /// `fsync` (`on` unless the server was set up to lose commits in a crash).
    pub(crate) fsync: String,
    /// `synchronous_commit` (`on`: a commit is acknowledged after its WAL is flushed).
    pub(crate) synchronous_commit: String,
    /// `ssl` (`on`: the server offers TLS, which the sidecars' default `sslmode=prefer` takes,
    /// loopback or not).
    pub(crate) ssl: String,
    /// The `sslmode` of the sidecars' URL (`prefer` when it names none).
    pub(crate) sslmode: String,
}

/// A database created for one run; [`Database::drop`] removes it.
#[derive(Debug)]
pub(crate) struct Database {
    admin: String,
    name: String,
    /// Its URL, for the sidecars' `--store`.
    pub(crate) url: String,
    /// The server it is on.
    pub(crate) server: Server,
}

impl Database {
    /// Reads the server's settings and creates the database `name` (a plain lower-case
    /// identifier); `Err` with the reason when the server cannot be reached or refuses, which
    /// the report shows instead of the P6 figures.
    pub(crate) async fn create(admin: &str, name: &str) -> Result<Self, String> {
        let url = with_database(admin, name)?;
        let settings = psql(
            admin,
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('synchronous_commit'), current_setting('ssl')",
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
        let fields: Vec<&str> = settings.trim().split('|').collect();
        let [version, fsync, synchronous_commit, ssl] = fields[..] else {
            return Err(format!("unexpected answer from psql: {settings:?}"));
        };
        let sslmode = url
            .split_once('?')
            .and_then(|(_, query)| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("sslmode="))
            })
            .unwrap_or("prefer");
        let server = Server {
            version: version.to_owned(),
            fsync: fsync.to_owned(),
            synchronous_commit: synchronous_commit.to_owned(),
            ssl: ssl.to_owned(),
            sslmode: sslmode.to_owned(),
        };
        psql(admin, &format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(Self {
            admin: admin.to_owned(),
            name: name.to_owned(),
            url,
            server,
        })
    }

    /// Drops the database, ending any session still on it (a replica killed after an error,
    /// whose connections the server has not noticed closing yet).
    pub(crate) async fn drop(self) -> anyhow::Result<()> {
        psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await
        .with_context(|| format!("cannot drop the database {}", self.name))
        .map(drop)
    }
}

/// `admin` with its database replaced by `name` (user, password, host and parameters kept).
fn with_database(admin: &str, name: &str) -> Result<String, String> {
    let mut url = reqwest::Url::parse(admin)
        // The URL may hold a password: the parse error alone, not the URL.
        .map_err(|e| format!("--postgres is not a URL: {e}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "--postgres must be a postgres:// URL, not {}://",
            url.scheme()
        ));
    }
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// Runs `sql` with `psql` on `url`; its output, unaligned and without headers. The error is
/// `psql`'s own first line (`connection to server … failed: Connection refused`).
async fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let run = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_S)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PSQL_TIMEOUT, run)
        .await
        .with_context(|| format!("psql did not finish within {PSQL_TIMEOUT:?}"))?
        .context("cannot run psql")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
        bail!("{}", first.unwrap_or("psql failed without a message"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:5432/postgres",
                "o2o_bench_1_0"
            )
            .unwrap(),
            "postgres://postgres@127.0.0.1:5432/o2o_bench_1_0"
        );
        assert_eq!(
            with_database("postgresql://u:pw@db:6432?sslmode=disable", "x").unwrap(),
            "postgresql://u:pw@db:6432/x?sslmode=disable"
        );
        let err = with_database("mysql://u:secret@db/x", "y").unwrap_err();
        assert!(
            err.contains("postgres://") && !err.contains("secret"),
            "{err}"
        );
    }
}
