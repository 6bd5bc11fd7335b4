//! PostgreSQL for tests: a scratch database of its own per test on the shared server, and a
//! private cluster a test may crash and restart. See the module above for the server and
//! `O2O_TEST_SKIP_POSTGRES`.

use std::{
    fmt::Display,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use sqlx::{Connection as _, PgConnection, postgres::PgConnectOptions};

/// The shared test server's admin URL: `O2O_TEST_POSTGRES_URL`, or `postgres` on
/// `127.0.0.1:5432` with trust auth.
pub fn admin_url() -> String {
    std::env::var("O2O_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// [`admin_url`] as connect options.
pub fn admin_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&admin_url()).expect("O2O_TEST_POSTGRES_URL is a postgres:// URL")
}

/// Whether skipping was asked for: `O2O_TEST_SKIP_POSTGRES=1` (or `true`), and not in CI.
fn skip_requested() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let asked = std::env::var("O2O_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1" || v == "true");
    asked && !ci
}

/// PostgreSQL is missing (`why`): `None` after saying so when skipping was asked for, else a
/// loud failure saying how to fix it or skip.
fn missing<T>(why: impl Display) -> Option<T> {
    if skip_requested() {
        eprintln!("skipping a PostgreSQL test (O2O_TEST_SKIP_POSTGRES=1): {why}");
        return None;
    }
    panic!(
        "this test needs PostgreSQL: {why}. Start a server on 127.0.0.1:5432 (user postgres, \
         trust auth) or set O2O_TEST_POSTGRES_URL to an admin URL; or set \
         O2O_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL tests (never honoured with CI=true)"
    );
}

/// A database of its own for one test, dropped (connections and all) with the guard.
#[derive(Debug)]
pub struct ScratchDb {
    admin: String,
    name: String,
}

impl ScratchDb {
    /// On the shared server ([`admin_url`]); `None` only when it is unreachable and skipping
    /// was asked for.
    pub async fn create() -> Option<Self> {
        let admin = admin_url();
        match PgConnection::connect(&admin).await {
            Ok(conn) => Some(Self::create_with(conn, admin).await),
            Err(e) => missing(format_args!(
                "no PostgreSQL server reachable at {admin}: {e}"
            )),
        }
    }

    /// On the server at `admin` (a [`PrivateCluster`]), which must be reachable.
    pub async fn create_on(admin: &str) -> Self {
        let conn = PgConnection::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
        Self::create_with(conn, admin.to_owned()).await
    }

    async fn create_with(mut conn: PgConnection, admin: String) -> Self {
        let name = format!("o2o_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        Self { admin, name }
    }

    /// The database's URL (the admin URL with the database name replaced).
    pub fn url(&self) -> String {
        let url = self.admin.as_str();
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (server, _) = base.rsplit_once('/').expect("a postgres:// URL");
        if query.is_empty() {
            format!("{server}/{}", self.name)
        } else {
            format!("{server}/{}?{query}", self.name)
        }
    }

    /// The database's connect options.
    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.admin)
            .expect("a postgres:// URL")
            .database(&self.name)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, where blocking on another is not allowed: a
        // plain thread with its own runtime does it.
        let (admin, name) = (self.admin.clone(), std::mem::take(&mut self.name));
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a scratch test database: {dropped:?}");
        }
    }
}

/// A PostgreSQL cluster of the test's own in a temporary directory, on a free port, so that
/// it can be stopped and started without touching the shared server. `initdb`/`pg_ctl` come
/// from `/usr/lib/postgresql/*/bin` and run as user `postgres` when the tests run as root.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivateCluster {
    /// Creates and starts the cluster; `None` only when PostgreSQL's server programs are
    /// missing and skipping was asked for.
    pub async fn start() -> Option<Self> {
        let Some(bin) = postgres_bin_dir() else {
            return missing("no initdb/pg_ctl under /usr/lib/postgresql/*/bin");
        };
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("o2o-pg-")
            .tempdir()
            .expect("a temporary directory");
        if as_postgres {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            run_ok(std::process::Command::new("chown").args([
                "-R",
                "postgres:postgres",
                dir.path().to_str().unwrap(),
            ]));
        }
        // A free port: bound, read, released just before the server binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster.start_server();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Its admin URL.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when we are root); panics on failure.
    fn pg(&self, program: &str, args: &[&str]) {
        run_ok(&mut self.command(&self.bin.join(program), args));
    }

    fn command(&self, program: &Path, args: &[&str]) -> std::process::Command {
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        command.args(args).current_dir(self.dir.path());
        command
    }

    /// Starts the server and waits (`-w`) until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server the hard way (as a crash would: no checkpoint; recovery replays the
    /// WAL on the next start).
    pub fn crash_server(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command(
                &self.bin.join("pg_ctl"),
                &["-D", data.as_str(), "-m", "immediate", "stop"],
            )
            .output();
    }
}

fn run_ok(command: &mut std::process::Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}
