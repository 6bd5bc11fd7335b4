//! Configuration: command-line flags with `O2O_*` environment twins, turned into a typed
//! [`Config`]. Secrets are read from files, never from flags or environment values.
//!
//! Every flag of `serve` has an env twin: `--doku-client-id` ⇔ `O2O_DOKU_CLIENT_ID`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::secret::SecretKeySource;

/// DOKU's sandbox, the default so that nobody reaches production by accident.
pub const DOKU_SANDBOX_URL: &str = "https://api-sandbox.doku.com";
/// Default public path of the notification URL configured in DOKU's Back Office.
pub const DEFAULT_NOTIFICATION_PATH: &str = "/payments/notifications";

/// The command line of `o2o-sidecar`.
#[derive(Debug, Parser)]
#[command(
    name = "o2o-sidecar",
    version = crate::LONG_VERSION,
    about = "gRPC sidecar for DOKU Indomaret payment codes"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `args` (the program name first). For `dev`, the notification and admin
    /// listeners move to loopback unless the user chose them (flag or env twin): `serve`'s
    /// `0.0.0.0` defaults suit a pod, not a laptop on a café's network.
    pub fn parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let (Command::Dev(dev), Some(m)) = (&mut cli.command, matches.subcommand_matches("dev"))
        {
            let chosen = |id: &str| {
                !matches!(
                    m.value_source(id),
                    None | Some(clap::parser::ValueSource::DefaultValue)
                )
            };
            let loopback = |a: SocketAddr| SocketAddr::from(([127, 0, 0, 1], a.port()));
            if !chosen("http_addr") {
                dev.common.http_addr = loopback(dev.common.http_addr);
            }
            if !chosen("admin_addr") {
                dev.common.admin_addr = loopback(dev.common.admin_addr);
            }
        }
        Ok(cli)
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar against DOKU (production entry point).
    Serve(ServeArgs),
    /// Run the sidecar with an in-process DOKU simulator, a fresh SQLite file and a generated
    /// key: no DOKU account needed.
    Dev(DevArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Listener and behaviour flags shared by `serve` and `dev`.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// gRPC listener for the application (keep it on loopback: callers are in the same pod).
    #[arg(long, env = "O2O_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listener that receives DOKU's notifications (exposed through the pod's Service).
    #[arg(long, env = "O2O_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Admin listener: /live, /ready, /metrics.
    #[arg(long, env = "O2O_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Public path of the notification URL configured in DOKU's Back Office. DOKU signs with
    /// this path, so it must be the path DOKU sees, even behind a rewriting proxy.
    #[arg(long, env = "O2O_NOTIFICATION_PATH", default_value = DEFAULT_NOTIFICATION_PATH)]
    pub notification_path: String,
    /// Log format.
    #[arg(long, env = "O2O_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Per-attempt timeout of a DOKU call, e.g. `10s`, `1500ms`.
    #[arg(long, env = "O2O_DOKU_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub doku_timeout: Duration,
    /// Connect timeout of a DOKU call.
    #[arg(long, env = "O2O_DOKU_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub doku_connect_timeout: Duration,
    /// Largest DOKU notification body accepted, in bytes (DOKU's are under 2 KiB); larger is 413.
    #[arg(long, env = "O2O_NOTIFICATION_MAX_BYTES", default_value_t = 64 * 1024)]
    pub notification_max_bytes: usize,
    /// How far a notification's Request-Timestamp may be from our clock before it is logged
    /// and counted as skewed.
    #[arg(long, env = "O2O_NOTIFICATION_SKEW_TOLERANCE", default_value = "5m", value_parser = parse_duration)]
    pub notification_skew_tolerance: Duration,
    /// Reject (401) notifications whose Request-Timestamp is beyond the tolerance. Off by
    /// default: DOKU's retries (30 min, 6 h, 12 h later) may carry the original timestamp, and
    /// replays are already harmless (deduplicated on Request-Id).
    #[arg(long, env = "O2O_NOTIFICATION_REJECT_SKEWED", default_value_t = false)]
    pub notification_reject_skewed: bool,
    /// How long events stay in the log for StreamNotifications resume tokens.
    #[arg(long, env = "O2O_EVENT_RETENTION", default_value = "720h", value_parser = parse_duration)]
    pub event_retention: Duration,
    /// File holding a bearer token every O2OPayments call must present
    /// (`authorization: Bearer <token>`); unset: no caller authentication (gRPC stays on
    /// loopback). Health and reflection stay open.
    #[arg(long, env = "O2O_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Longest time a unary gRPC call may take before DEADLINE_EXCEEDED.
    #[arg(long, env = "O2O_GRPC_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub grpc_timeout: Duration,
    /// gRPC calls in flight per connection, open streams included; beyond it calls fail fast
    /// with RESOURCE_EXHAUSTED (reason TOO_MANY_CALLS).
    #[arg(long, env = "O2O_GRPC_CONCURRENCY_LIMIT", default_value_t = 512)]
    pub grpc_concurrency_limit: usize,
    /// Open StreamNotifications across all connections; beyond it a new stream fails with
    /// RESOURCE_EXHAUSTED (reason TOO_MANY_STREAMS).
    #[arg(long, env = "O2O_GRPC_MAX_STREAMS", default_value_t = 4096)]
    pub grpc_max_streams: usize,
    /// Open gRPC connections; past it a new connection is closed at once.
    #[arg(long, env = "O2O_GRPC_MAX_CONNECTIONS", default_value_t = 256)]
    pub grpc_max_connections: usize,
    /// A gRPC connection with no call in flight for this long is closed (the client
    /// reconnects when it next calls).
    #[arg(long, env = "O2O_GRPC_IDLE_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub grpc_idle_timeout: Duration,
    /// How often an HTTP/2 ping checks that a gRPC client is still there.
    #[arg(long, env = "O2O_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long a gRPC client may take to answer a ping before its connection is closed.
    #[arg(long, env = "O2O_GRPC_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Open connections to the notification listener (it faces the internet); past it a new
    /// connection is closed at once, so a flood cannot take the descriptors the rest needs.
    #[arg(long, env = "O2O_HTTP_MAX_CONNECTIONS", default_value_t = 512)]
    pub http_max_connections: usize,
    /// Open connections to the admin listener; past it a new connection is closed at once.
    #[arg(long, env = "O2O_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,
    /// Longest time an HTTP client (notification and admin listeners) may take to send a
    /// request's headers, counted from the connection's start or the previous answer.
    #[arg(long, env = "O2O_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// Longest time an HTTP client may take to send a request's body (DOKU sends its ~2 KiB
    /// in milliseconds); beyond it the answer is 408 and the connection is closed.
    #[arg(long, env = "O2O_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,
    /// An HTTP connection with no bytes in either direction for this long is closed.
    #[arg(long, env = "O2O_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// PEM certificate chain: serve gRPC and notifications over TLS (for clusters without a
    /// mesh). Requires --tls-key-file.
    #[arg(long, env = "O2O_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "O2O_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Attempts per DOKU call (retries on connect errors, timeouts, 5xx and 429).
    #[arg(long, env = "O2O_DOKU_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub doku_max_attempts: u32,
    /// PostgreSQL connections per replica (bounds one replica's load on the database).
    #[arg(long, env = "O2O_STORE_POOL_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub store_pool_size: u32,
    /// How long connecting to PostgreSQL (or waiting for a pooled connection) may take before
    /// a request fails with STORE_UNAVAILABLE.
    #[arg(long, env = "O2O_STORE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub store_connect_timeout: Duration,
    /// Longest one PostgreSQL statement may run before the database cancels it; `0` = no limit.
    #[arg(long, env = "O2O_STORE_STATEMENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub store_statement_timeout: Duration,
    /// How long a replaced secret key still verifies DOKU's notifications after the key file
    /// changed (DOKU retries a notification up to 12 h after the first attempt); `0` turns it
    /// off. Outbound calls always use the new key at once.
    #[arg(long, env = "O2O_PREVIOUS_KEY_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub previous_key_grace: Duration,
    /// On SIGTERM, how long in-flight calls (DOKU calls, notifications being stored) may take
    /// to finish before they are abandoned; keep it below the pod's termination grace period.
    #[arg(long, env = "O2O_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// DOKU API base URL (production: https://api.doku.com).
    #[arg(long, env = "O2O_DOKU_BASE_URL", default_value = DOKU_SANDBOX_URL)]
    pub doku_base_url: String,
    /// DOKU Client-Id from the DOKU Back Office.
    #[arg(long, env = "O2O_DOKU_CLIENT_ID")]
    pub doku_client_id: Option<String>,
    /// File holding the DOKU Secret Key (re-read when it changes).
    #[arg(long, env = "O2O_DOKU_SECRET_KEY_FILE")]
    pub doku_secret_key_file: Option<PathBuf>,
    /// Store: `sqlite://PATH` (one pod) or `postgres://…` (many replicas).
    #[arg(long, env = "O2O_STORE", default_value = "sqlite://o2o-sidecar.db")]
    pub store: String,
}

/// Flags of `dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Listener of the in-process DOKU simulator.
    #[arg(long, env = "O2O_DEV_SIM_ADDR", default_value = "127.0.0.1:8181")]
    pub sim_addr: SocketAddr,
    /// Store; default: a fresh SQLite file in a new temporary directory, removed on exit.
    #[arg(long, env = "O2O_STORE")]
    pub store: Option<String>,
    /// Keep the temporary directory (and its SQLite file) on exit, to inspect it.
    #[arg(long, env = "O2O_DEV_KEEP_DIR", default_value_t = false)]
    pub keep_dir: bool,
}

/// Parses `500ms`, `10s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 5m or 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    })
}

/// Listener bounds with the default timeouts.
fn http_limits(max_connections: usize) -> crate::listen::HttpLimits {
    crate::listen::HttpLimits {
        conn: crate::listen::Limits {
            max_connections,
            idle_timeout: Duration::from_secs(60),
        },
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
    }
}

/// A configuration error: names the flag, printed as one line, exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    /// The flag at fault.
    pub flag: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

/// The sidecar's typed runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public notification path DOKU signs with; also the path the ingress serves.
    pub notification_path: String,
    /// DOKU API base URL.
    pub doku_base_url: String,
    /// DOKU Client-Id.
    pub doku_client_id: String,
    /// DOKU Secret Key (watched file or fixed).
    pub secret_key: SecretKeySource,
    /// Store URL.
    pub store_url: String,
    /// Per-attempt DOKU timeout.
    pub doku_timeout: Duration,
    /// DOKU connect timeout.
    pub doku_connect_timeout: Duration,
    /// Attempts per DOKU call.
    pub doku_max_attempts: u32,
    /// Largest notification body accepted (DOKU's are under 2 KiB).
    pub max_notification_bytes: usize,
    /// How far a notification's Request-Timestamp may be from our clock before it is logged
    /// and counted as skewed.
    pub notification_skew_tolerance: Duration,
    /// Whether a skewed notification is rejected (401) instead of only logged.
    pub notification_reject_skewed: bool,
    /// How long events are kept for resume tokens.
    pub event_retention: Duration,
    /// Bearer token callers must present, if configured.
    pub api_token: Option<SecretKeySource>,
    /// Longest unary gRPC call.
    pub grpc_timeout: Duration,
    /// gRPC calls in flight per connection, streams included.
    pub grpc_concurrency_limit: usize,
    /// Open `StreamNotifications` across all connections.
    pub grpc_max_streams: usize,
    /// What a gRPC connection may hold (count, idle time by calls in flight).
    pub grpc_conn: crate::listen::Limits,
    /// HTTP/2 keepalive ping interval and timeout of the gRPC listener.
    pub grpc_keepalive: (Duration, Duration),
    /// What the notification listener lets a peer hold (its body limit is
    /// `max_notification_bytes`).
    pub notification_limits: crate::listen::HttpLimits,
    /// What the admin listener lets a peer hold.
    pub admin_limits: crate::listen::HttpLimits,
    /// Reconciliation sweeper settings.
    pub sweeper: crate::reconcile::SweeperConfig,
    /// TLS identity for the gRPC and notification listeners, if configured.
    pub tls: Option<crate::tls::TlsIdentity>,
    /// Connection settings of a PostgreSQL store (pool size, timeouts).
    pub store_options: crate::store::StoreOptions,
    /// How long a replaced secret key still verifies notifications.
    pub previous_key_grace: Duration,
    /// Bound on draining in-flight work at shutdown.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Defaults for everything but the DOKU identity, store and key (tests, `dev`).
    pub fn new(
        doku_base_url: impl Into<String>,
        doku_client_id: impl Into<String>,
        secret_key: SecretKeySource,
        store_url: impl Into<String>,
    ) -> Self {
        Self {
            notification_path: DEFAULT_NOTIFICATION_PATH.to_owned(),
            doku_base_url: doku_base_url.into(),
            doku_client_id: doku_client_id.into(),
            secret_key,
            store_url: store_url.into(),
            doku_timeout: Duration::from_secs(10),
            doku_connect_timeout: Duration::from_secs(3),
            doku_max_attempts: 3,
            max_notification_bytes: 64 * 1024,
            notification_skew_tolerance: Duration::from_secs(300),
            notification_reject_skewed: false,
            event_retention: Duration::from_secs(30 * 24 * 3600),
            api_token: None,
            grpc_timeout: Duration::from_secs(60),
            grpc_concurrency_limit: 512,
            grpc_max_streams: 4096,
            grpc_conn: crate::listen::Limits {
                max_connections: 256,
                idle_timeout: Duration::from_secs(15 * 60),
            },
            grpc_keepalive: (Duration::from_secs(30), Duration::from_secs(10)),
            notification_limits: http_limits(512),
            admin_limits: http_limits(64),
            tls: None,
            sweeper: crate::reconcile::SweeperConfig::default(),
            store_options: crate::store::StoreOptions::default(),
            previous_key_grace: Duration::from_secs(24 * 3600),
            shutdown_timeout: Duration::from_secs(20),
        }
    }

    /// Applies the shared flags.
    pub fn with_common(mut self, common: &CommonArgs) -> Result<Self, ConfigError> {
        let path = &common.notification_path;
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(ConfigError::new(
                "--notification-path",
                format!("{path:?} must be a URL path starting with '/'"),
            ));
        }
        self.notification_path = path.clone();
        self.doku_timeout = common.doku_timeout;
        self.doku_connect_timeout = common.doku_connect_timeout;
        self.doku_max_attempts = common.doku_max_attempts;
        if common.notification_max_bytes < 1024 {
            return Err(ConfigError::new(
                "--notification-max-bytes",
                "must be at least 1024",
            ));
        }
        self.max_notification_bytes = common.notification_max_bytes;
        self.notification_skew_tolerance = common.notification_skew_tolerance;
        self.notification_reject_skewed = common.notification_reject_skewed;
        if common.event_retention < Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "--event-retention",
                "must be at least 1h (callers need time to resume)",
            ));
        }
        self.event_retention = common.event_retention;
        if let Some(path) = &common.api_token_file {
            let token = SecretKeySource::from_file(path)
                .map_err(|e| ConfigError::new("--api-token-file", e.to_string()))?;
            self.api_token = Some(token);
        }
        self.grpc_timeout = common.grpc_timeout;
        if common.grpc_concurrency_limit == 0 {
            return Err(ConfigError::new(
                "--grpc-concurrency-limit",
                "must be at least 1",
            ));
        }
        self.grpc_concurrency_limit = common.grpc_concurrency_limit;
        let at_least_one = |n: usize, flag: &'static str| {
            if n == 0 {
                Err(ConfigError::new(flag, "must be at least 1"))
            } else {
                Ok(n)
            }
        };
        let not_zero = |d: Duration, flag: &'static str| {
            if d.is_zero() {
                Err(ConfigError::new(flag, "must be more than 0"))
            } else {
                Ok(d)
            }
        };
        self.grpc_max_streams = at_least_one(common.grpc_max_streams, "--grpc-max-streams")?;
        self.grpc_conn = crate::listen::Limits {
            max_connections: at_least_one(common.grpc_max_connections, "--grpc-max-connections")?,
            idle_timeout: not_zero(common.grpc_idle_timeout, "--grpc-idle-timeout")?,
        };
        self.grpc_keepalive = (
            not_zero(common.grpc_keepalive_interval, "--grpc-keepalive-interval")?,
            not_zero(common.grpc_keepalive_timeout, "--grpc-keepalive-timeout")?,
        );
        let header_timeout = not_zero(common.http_header_timeout, "--http-header-timeout")?;
        let body_timeout = not_zero(common.http_body_timeout, "--http-body-timeout")?;
        let idle_timeout = not_zero(common.http_idle_timeout, "--http-idle-timeout")?;
        let http = |max_connections: usize| crate::listen::HttpLimits {
            conn: crate::listen::Limits {
                max_connections,
                idle_timeout,
            },
            header_timeout,
            body_timeout,
        };
        self.notification_limits = http(at_least_one(
            common.http_max_connections,
            "--http-max-connections",
        )?);
        self.admin_limits = http(at_least_one(
            common.admin_max_connections,
            "--admin-max-connections",
        )?);
        if let (Some(cert), Some(key)) = (&common.tls_cert_file, &common.tls_key_file) {
            let identity = crate::tls::TlsIdentity::from_files(cert, key)
                .map_err(|(flag, message)| ConfigError::new(flag, message))?;
            self.tls = Some(identity);
        }
        if common.store_connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "--store-connect-timeout",
                "must be more than 0",
            ));
        }
        self.store_options = crate::store::StoreOptions {
            pool_size: common.store_pool_size,
            connect_timeout: common.store_connect_timeout,
            statement_timeout: Some(common.store_statement_timeout).filter(|t| !t.is_zero()),
        };
        self.previous_key_grace = common.previous_key_grace;
        self.shutdown_timeout = common.shutdown_timeout;
        Ok(self)
    }
}

fn check_store_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(ConfigError::new(
            "--store",
            "must be sqlite://PATH or postgres://…",
        ))
    }
}

impl ServeArgs {
    /// Checks the flags and reads the secret key file.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let client_id = self
            .doku_client_id
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    "--doku-client-id",
                    "is required (or O2O_DOKU_CLIENT_ID): the Client-Id from DOKU's Back Office",
                )
            })?;
        let key_file = self.doku_secret_key_file.ok_or_else(|| {
            ConfigError::new(
                "--doku-secret-key-file",
                "is required (or O2O_DOKU_SECRET_KEY_FILE): a file holding DOKU's Secret Key",
            )
        })?;
        let key = SecretKeySource::from_file(&key_file)
            .map_err(|e| ConfigError::new("--doku-secret-key-file", e.to_string()))?;
        let base = self.doku_base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ConfigError::new(
                "--doku-base-url",
                "must be an http:// or https:// URL",
            ));
        }
        check_store_url(&self.store)?;
        Config::new(base, client_id, key, self.store).with_common(&self.common)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_from_args(std::iter::once("o2o-sidecar").chain(args.iter().copied()))
    }

    fn dev_addrs(args: &[&str]) -> (SocketAddr, SocketAddr, SocketAddr) {
        let mut all = vec!["dev"];
        all.extend_from_slice(args);
        let Command::Dev(dev) = parse(&all).unwrap().command else {
            panic!()
        };
        (
            dev.common.grpc_addr,
            dev.common.http_addr,
            dev.common.admin_addr,
        )
    }

    #[test]
    fn dev_stays_on_loopback_unless_told_otherwise() {
        // Unless the test's environment sets the env twins (then they count as chosen).
        if std::env::var_os("O2O_HTTP_ADDR").is_some()
            || std::env::var_os("O2O_ADMIN_ADDR").is_some()
        {
            return;
        }
        let (grpc, http, admin) = dev_addrs(&[]);
        assert_eq!(grpc, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(admin, "127.0.0.1:9090".parse().unwrap());

        // Chosen on the command line: kept as given, even 0.0.0.0.
        let (_, http, admin) = dev_addrs(&["--http-addr", "0.0.0.0:8080"]);
        assert_eq!(http, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(admin, "127.0.0.1:9090".parse().unwrap());
        let (_, http, admin) = dev_addrs(&["--admin-addr", "0.0.0.0:9999"]);
        assert_eq!(http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(admin, "0.0.0.0:9999".parse().unwrap());

        // `serve` keeps its pod defaults.
        let Command::Serve(serve) = parse(&["serve"]).unwrap().command else {
            panic!()
        };
        assert_eq!(serve.common.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(serve.common.admin_addr, "0.0.0.0:9090".parse().unwrap());
    }

    #[test]
    fn version_names_the_commit() {
        use clap::CommandFactory as _;
        let v = Cli::command().render_version();
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains(env!("O2O_GIT_COMMIT")), "{v}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn serve_requires_client_id_and_key_file_by_name() {
        let Command::Serve(args) = parse(&["serve"]).unwrap().command else {
            panic!()
        };
        let err = args.into_config().unwrap_err();
        assert_eq!(err.flag, "--doku-client-id");

        let Command::Serve(args) = parse(&["serve", "--doku-client-id", "MCH-1"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            args.into_config().unwrap_err().flag,
            "--doku-secret-key-file"
        );

        let Command::Serve(args) = parse(&[
            "serve",
            "--doku-client-id",
            "MCH-1",
            "--doku-secret-key-file",
            "/nonexistent/key",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let err = args.into_config().unwrap_err();
        assert_eq!(err.flag, "--doku-secret-key-file");
        assert!(err.to_string().contains("/nonexistent/key"));
    }

    #[test]
    fn serve_builds_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "SK-1\n").unwrap();
        let Command::Serve(args) = parse(&[
            "serve",
            "--doku-client-id",
            "MCH-1",
            "--doku-secret-key-file",
            key.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--notification-path",
            "/hooks/doku",
            "--doku-base-url",
            "http://127.0.0.1:8181/",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(args.common.grpc_addr.port(), 0);
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.notification_path, "/hooks/doku");
        assert_eq!(cfg.doku_base_url, "http://127.0.0.1:8181");
        assert!(!format!("{cfg:?}").contains("SK-1"));
    }

    #[test]
    fn store_settings_reach_the_config() {
        let Command::Dev(args) = parse(&[
            "dev",
            "--store-pool-size",
            "3",
            "--store-connect-timeout",
            "1500ms",
            "--store-statement-timeout",
            "0",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let cfg = Config::new("http://x", "c", SecretKeySource::fixed("k"), "sqlite://x")
            .with_common(&args.common)
            .unwrap();
        assert_eq!(
            cfg.store_options,
            crate::store::StoreOptions {
                pool_size: 3,
                connect_timeout: Duration::from_millis(1500),
                statement_timeout: None,
            }
        );
        assert!(parse(&["dev", "--store-pool-size", "0"]).is_err());
        let Command::Dev(args) = parse(&["dev", "--store-connect-timeout", "0"])
            .unwrap()
            .command
        else {
            panic!()
        };
        let cfg = Config::new("http://x", "c", SecretKeySource::fixed("k"), "sqlite://x");
        assert_eq!(
            cfg.with_common(&args.common).unwrap_err().flag,
            "--store-connect-timeout"
        );
    }

    #[test]
    fn key_grace_and_shutdown_timeout_flags() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "SK-1").unwrap();
        let key = key.to_str().unwrap();
        let base = [
            "serve",
            "--doku-client-id",
            "MCH-1",
            "--doku-secret-key-file",
            key,
        ];
        let Command::Serve(args) = parse(&base).unwrap().command else {
            panic!()
        };
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.previous_key_grace, Duration::from_secs(24 * 3600));
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(20));
        let mut args = base.to_vec();
        args.extend(["--previous-key-grace", "0", "--shutdown-timeout", "1500ms"]);
        let Command::Serve(args) = parse(&args).unwrap().command else {
            panic!()
        };
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.previous_key_grace, Duration::ZERO);
        assert_eq!(cfg.shutdown_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_notification_path_names_the_flag() {
        let common = match parse(&["dev", "--notification-path", "payments"])
            .unwrap()
            .command
        {
            Command::Dev(d) => d.common,
            Command::Serve(_) => panic!(),
        };
        let cfg = Config::new("http://x", "c", SecretKeySource::fixed("k"), "sqlite://x");
        assert_eq!(
            cfg.with_common(&common).unwrap_err().flag,
            "--notification-path"
        );
    }
}
