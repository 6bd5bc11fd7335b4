//! Configuration: command-line flags with `O2O_*` environment twins, turned into a typed
//! [`Config`]. Secrets are read from files, never from flags or environment values.
//!
//! Every flag of `serve` has an env twin: `--doku-client-id` ⇔ `O2O_DOKU_CLIENT_ID`.
//!
//! Each default is written once, in its flag's `#[arg]` attribute (where `--help` shows it);
//! [`Config::new`] takes them from there through [`CommonArgs::default`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{doku::client::SANDBOX_BASE_URL, secret::SecretSource};

/// The command line of `o2o-sidecar`.
#[derive(Debug, Parser)]
#[command(
    name = "o2o-sidecar",
    version = crate::LONG_VERSION,
    about = "gRPC sidecar for DOKU convenience-store payment codes (Indomaret, Alfa Group)"
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

/// Listener and behaviour flags shared by `serve` and `dev`. Each doc comment is the flag's
/// `--help` text; the reasons the code cares about are on the [`Config`] field it fills.
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
    #[arg(
        long,
        env = "O2O_NOTIFICATION_PATH",
        default_value = "/payments/notifications"
    )]
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
    /// Hosts an issued code's how-to-pay JSON (the `how_to_pay_api` link in DOKU's answer) may
    /// be fetched from, comma-separated: a host name allows https on the default port,
    /// `http(s)://host:port` exactly that origin; empty: never fetch. A link to any other host
    /// is not fetched (logged and counted).
    #[arg(
        long,
        env = "O2O_HOW_TO_PAY_HOSTS",
        value_delimiter = ',',
        default_value = "api.doku.com,api-sandbox.doku.com,sandbox.doku.com,api-jokul.doku.com"
    )]
    pub how_to_pay_hosts: Vec<String>,
    /// Longest time fetching the how-to-pay JSON may add to GeneratePaymentCode (connect to
    /// the end of the body); past it the payment is returned without instructions.
    #[arg(long, env = "O2O_HOW_TO_PAY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub how_to_pay_timeout: Duration,
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

impl Default for CommonArgs {
    /// Every shared flag at the default of its `#[arg]` attribute, as clap fills it when the
    /// command line is empty; the environment twins are ignored, so the result is the same on
    /// every machine.
    fn default() -> Self {
        use clap::FromArgMatches as _;
        let command = Self::augment_args(clap::Command::new("defaults")).mut_args(|a| a.env(None));
        command
            .try_get_matches_from(["defaults"])
            .and_then(|matches| Self::from_arg_matches(&matches))
            .unwrap_or_else(|e| panic!("a default in CommonArgs' attributes does not parse: {e}"))
    }
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// DOKU API base URL (production: https://api.doku.com).
    #[arg(long, env = "O2O_DOKU_BASE_URL", default_value = SANDBOX_BASE_URL)]
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

/// Parses a duration flag: `500ms`, `10s`, `5m`, `720h`, `1h 30m` and the other forms of
/// [`humantime::parse_duration`], or a bare number of seconds (`0`, `10`), which the flags and
/// the Helm chart have always accepted. A value too large for a [`Duration`] is an error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?}: too many seconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e}; expected a duration like 500ms, 10s, 5m or 1h"))
}

/// A flag with a bad or missing value: names the flag, printed as one line, exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct FlagError {
    /// The flag at fault.
    pub flag: &'static str,
    /// What is wrong.
    pub message: String,
}

impl FlagError {
    fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

/// The sidecar's typed runtime configuration: from the flags by [`ServeArgs::into_config`]
/// (`serve`) and [`Config::from_flags`] (`dev`), or with every flag at its default by
/// [`Config::new`] (tests). Each field says why it exists and which flag sets it; that flag's
/// `--help` text is the operator's side of the same setting.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path DOKU signs notifications with, which the ingress also serves
    /// (`--notification-path`): the signature covers the path DOKU sees, so it cannot be taken
    /// from a request that a proxy rewrote.
    pub notification_path: String,
    /// Where DOKU calls go (`--doku-base-url`); a path prefix is kept and signed.
    pub doku_base_url: String,
    /// The merchant's identity at DOKU, part of every signature in both directions
    /// (`--doku-client-id`).
    pub doku_client_id: String,
    /// Signs outbound calls and verifies notifications; its file is re-read so that a rotated
    /// key takes effect without a restart (`--doku-secret-key-file`).
    pub secret_key: SecretSource,
    /// Where payments and their events are kept: SQLite for one pod, PostgreSQL for replicas
    /// (`--store`).
    pub store_url: String,
    /// Bounds one DOKU attempt; past it the outcome is unknown, so the call is retried or
    /// left to the sweeper (`--doku-timeout`).
    pub doku_timeout: Duration,
    /// Bounds connecting to DOKU; a connect failure proves DOKU saw nothing, so a retry is
    /// safe (`--doku-connect-timeout`).
    pub doku_connect_timeout: Duration,
    /// How many times a transient DOKU failure is tried before the caller sees it
    /// (`--doku-max-attempts`).
    pub doku_max_attempts: u32,
    /// Where the how-to-pay JSON of an issued code may be fetched from, and for how long: the
    /// link comes from an answer, so only origins the operator trusts are fetched
    /// (`--how-to-pay-hosts`, `--how-to-pay-timeout`; `dev` adds its simulator).
    pub how_to_pay: crate::doku::HowToPayConfig,
    /// Bounds what a peer on the internet can make the ingress buffer; DOKU's bodies are under
    /// 2 KiB (`--notification-max-bytes`).
    pub max_notification_bytes: usize,
    /// Clock distance past which a notification's Request-Timestamp is logged and counted:
    /// a skewed clock otherwise shows only as rejected signatures
    /// (`--notification-skew-tolerance`).
    pub notification_skew_tolerance: Duration,
    /// Whether such a notification is also refused; off by default because DOKU's retries,
    /// hours later, may carry the original timestamp (`--notification-reject-skewed`).
    pub notification_reject_skewed: bool,
    /// How far back a resume token reaches, bounding the event log's size
    /// (`--event-retention`).
    pub event_retention: Duration,
    /// The bearer token every O2OPayments call must present, for when more than the
    /// application can reach the gRPC port (`--api-token-file`); `None`: loopback is the
    /// boundary.
    pub api_token: Option<SecretSource>,
    /// Bounds a unary call, so that a stuck store or DOKU cannot hold a caller forever
    /// (`--grpc-timeout`).
    pub grpc_timeout: Duration,
    /// Calls in flight per connection, so that one client cannot take every worker; excess
    /// calls fail fast instead of queueing (`--grpc-concurrency-limit`).
    pub grpc_concurrency_limit: usize,
    /// Open `StreamNotifications` in total: each holds a subscription and its buffer
    /// (`--grpc-max-streams`).
    pub grpc_max_streams: usize,
    /// Connection count and idle time of the gRPC listener, so that forgotten connections do
    /// not pile up (`--grpc-max-connections`, `--grpc-idle-timeout`).
    pub grpc_conn: crate::listen::Limits,
    /// HTTP/2 ping interval and answer timeout: finds clients that vanished without closing
    /// their connection (`--grpc-keepalive-interval`, `--grpc-keepalive-timeout`).
    pub grpc_keepalive: (Duration, Duration),
    /// What a peer on the internet may hold on the notification listener, so that a flood or
    /// a slow client cannot starve the rest (`--http-max-connections` and the `--http-*`
    /// timeouts); its body limit is `max_notification_bytes`.
    pub notification_limits: crate::listen::HttpLimits,
    /// The same for the admin listener (`--admin-max-connections` and the `--http-*`
    /// timeouts), so that scrapers and probes cannot starve it either.
    pub admin_limits: crate::listen::HttpLimits,
    /// How the sweeper asks DOKU about payments whose notification has not come; no flag
    /// (its defaults follow DOKU's guidance; tests shorten them).
    pub sweeper: crate::reconcile::SweeperConfig,
    /// Certificate and key, for clusters where no mesh encrypts the pod's traffic
    /// (`--tls-cert-file`, `--tls-key-file`).
    pub tls: Option<crate::tls::TlsIdentity>,
    /// Bounds one replica's load on PostgreSQL and how long a caller waits for it
    /// (`--store-pool-size`, `--store-connect-timeout`, `--store-statement-timeout`).
    pub store_options: crate::store::StoreOptions,
    /// How long a replaced key still verifies notifications: DOKU may retry one signed with
    /// the old key up to 12 h later (`--previous-key-grace`).
    pub previous_key_grace: Duration,
    /// How long shutdown waits for in-flight work, so that it ends before the pod is killed
    /// (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Every shared flag at its default (tests): the defaults are those of [`CommonArgs`]'
    /// `#[arg]` attributes, the only place they are written.
    pub fn new(
        doku_base_url: impl Into<String>,
        doku_client_id: impl Into<String>,
        secret_key: SecretSource,
        store_url: impl Into<String>,
    ) -> Self {
        Self::from_flags(
            doku_base_url,
            doku_client_id,
            secret_key,
            store_url,
            &CommonArgs::default(),
        )
        .unwrap_or_else(|e| panic!("a default of CommonArgs fails its own check: {e}"))
    }

    /// Checks the shared flags and builds the configuration around the DOKU identity, key and
    /// store (`serve` checks those first; `dev` makes its own).
    pub fn from_flags(
        doku_base_url: impl Into<String>,
        doku_client_id: impl Into<String>,
        secret_key: SecretSource,
        store_url: impl Into<String>,
        common: &CommonArgs,
    ) -> Result<Self, FlagError> {
        let at_least_one = |n: usize, flag: &'static str| {
            if n == 0 {
                Err(FlagError::new(flag, "must be at least 1"))
            } else {
                Ok(n)
            }
        };
        let not_zero = |d: Duration, flag: &'static str| {
            if d.is_zero() {
                Err(FlagError::new(flag, "must be more than 0"))
            } else {
                Ok(d)
            }
        };
        let path = &common.notification_path;
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(FlagError::new(
                "--notification-path",
                format!("{path:?} must be a URL path starting with '/'"),
            ));
        }
        if common.notification_max_bytes < 1024 {
            return Err(FlagError::new(
                "--notification-max-bytes",
                "must be at least 1024",
            ));
        }
        if common.event_retention < Duration::from_secs(3600) {
            return Err(FlagError::new(
                "--event-retention",
                "must be at least 1h (callers need time to resume)",
            ));
        }
        let api_token = match &common.api_token_file {
            Some(path) => Some(
                SecretSource::from_file(path)
                    .map_err(|e| FlagError::new("--api-token-file", e.to_string()))?,
            ),
            None => None,
        };
        let grpc_concurrency_limit =
            at_least_one(common.grpc_concurrency_limit, "--grpc-concurrency-limit")?;
        let grpc_max_streams = at_least_one(common.grpc_max_streams, "--grpc-max-streams")?;
        let grpc_conn = crate::listen::Limits {
            max_connections: at_least_one(common.grpc_max_connections, "--grpc-max-connections")?,
            idle_timeout: not_zero(common.grpc_idle_timeout, "--grpc-idle-timeout")?,
        };
        let grpc_keepalive = (
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
        let notification_limits = http(at_least_one(
            common.http_max_connections,
            "--http-max-connections",
        )?);
        let admin_limits = http(at_least_one(
            common.admin_max_connections,
            "--admin-max-connections",
        )?);
        let tls = match (&common.tls_cert_file, &common.tls_key_file) {
            (Some(cert), Some(key)) => Some(
                crate::tls::TlsIdentity::from_files(cert, key)
                    .map_err(|(flag, message)| FlagError::new(flag, message))?,
            ),
            _ => None,
        };
        let how_to_pay = crate::doku::HowToPayConfig {
            allowed: common
                .how_to_pay_hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| crate::doku::AllowedOrigin::parse(h))
                .collect::<Result<_, _>>()
                .map_err(|e| FlagError::new("--how-to-pay-hosts", e))?,
            timeout: not_zero(common.how_to_pay_timeout, "--how-to-pay-timeout")?,
        };
        let store_options = crate::store::StoreOptions {
            pool_size: common.store_pool_size,
            connect_timeout: not_zero(common.store_connect_timeout, "--store-connect-timeout")?,
            statement_timeout: Some(common.store_statement_timeout).filter(|t| !t.is_zero()),
        };
        Ok(Self {
            notification_path: path.clone(),
            doku_base_url: doku_base_url.into(),
            doku_client_id: doku_client_id.into(),
            secret_key,
            store_url: store_url.into(),
            doku_timeout: common.doku_timeout,
            doku_connect_timeout: common.doku_connect_timeout,
            doku_max_attempts: common.doku_max_attempts,
            how_to_pay,
            max_notification_bytes: common.notification_max_bytes,
            notification_skew_tolerance: common.notification_skew_tolerance,
            notification_reject_skewed: common.notification_reject_skewed,
            event_retention: common.event_retention,
            api_token,
            grpc_timeout: common.grpc_timeout,
            grpc_concurrency_limit,
            grpc_max_streams,
            grpc_conn,
            grpc_keepalive,
            notification_limits,
            admin_limits,
            sweeper: crate::reconcile::SweeperConfig::default(),
            tls,
            store_options,
            previous_key_grace: common.previous_key_grace,
            shutdown_timeout: common.shutdown_timeout,
        })
    }
}

impl ServeArgs {
    /// Checks the flags and reads the secret key file.
    pub fn into_config(self) -> Result<Config, FlagError> {
        let client_id = self
            .doku_client_id
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                FlagError::new(
                    "--doku-client-id",
                    "is required (or O2O_DOKU_CLIENT_ID): the Client-Id from DOKU's Back Office",
                )
            })?;
        let key_file = self.doku_secret_key_file.ok_or_else(|| {
            FlagError::new(
                "--doku-secret-key-file",
                "is required (or O2O_DOKU_SECRET_KEY_FILE): a file holding DOKU's Secret Key",
            )
        })?;
        let key = SecretSource::from_file(&key_file)
            .map_err(|e| FlagError::new("--doku-secret-key-file", e.to_string()))?;
        let base = self.doku_base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(FlagError::new(
                "--doku-base-url",
                "must be an http:// or https:// URL",
            ));
        }
        crate::store::Backend::of(&self.store).map_err(|e| FlagError::new("--store", e))?;
        Config::from_flags(base, client_id, key, self.store, &self.common)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_from_args(std::iter::once("o2o-sidecar").chain(args.iter().copied()))
    }

    fn from_flags(common: &CommonArgs) -> Result<Config, FlagError> {
        Config::from_flags(
            "http://x",
            "c",
            SecretSource::fixed("k"),
            "sqlite://x",
            common,
        )
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
        let secs = Duration::from_secs;
        // Every form the docs, the Helm chart (`^[0-9]+(ms|s|m|h)?$`) and the tests use.
        for (text, want) in [
            ("0", Duration::ZERO),
            ("10", secs(10)),
            ("0ms", Duration::ZERO),
            ("300ms", Duration::from_millis(300)),
            ("500ms", Duration::from_millis(500)),
            ("1500ms", Duration::from_millis(1500)),
            ("1s", secs(1)),
            ("10s", secs(10)),
            ("30s", secs(30)),
            ("5m", secs(300)),
            ("15m", secs(15 * 60)),
            ("1h", secs(3600)),
            ("24h", secs(24 * 3600)),
            ("720h", secs(720 * 3600)),
            (" 10s ", secs(10)),
            ("1h 30m", secs(90 * 60)),
            ("2days", secs(2 * 24 * 3600)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in ["", "5 parsecs", "-1s", "1.5.5s", "10 s s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // Too large: an error naming the value, never a wrapped-around duration.
        let huge = format!("{}h", u64::MAX / 3600 + 1);
        let err = parse_duration(&huge).unwrap_err();
        assert!(err.contains(&huge), "{err}");
        assert!(parse_duration("99999999999999999999").is_err());
        // As a flag: clap's error names the flag.
        let err = parse(&["dev", "--event-retention", &huge]).unwrap_err();
        assert!(err.to_string().contains("--event-retention"), "{err}");
    }

    /// `Config::new` (tests) and `serve` (production) must start from the same defaults. The
    /// pattern lists every field, so a new one fails to compile here until it is compared.
    #[test]
    fn config_new_has_the_flags_defaults() {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "SK-1").unwrap();
        // `serve` with its required flags only, its env twins ignored (the test's environment
        // must not count as a default).
        let matches = Cli::command()
            .mut_subcommand("serve", |s| s.mut_args(|a| a.env(None)))
            .try_get_matches_from([
                "o2o-sidecar",
                "serve",
                "--doku-client-id",
                "MCH-1",
                "--doku-secret-key-file",
                key.to_str().unwrap(),
            ])
            .unwrap();
        let Command::Serve(args) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!()
        };
        let served = args.into_config().unwrap();
        let new = Config::new(
            SANDBOX_BASE_URL,
            "MCH-1",
            SecretSource::fixed("SK-1"),
            "sqlite://o2o-sidecar.db",
        );
        let Config {
            notification_path,
            doku_base_url,
            doku_client_id,
            secret_key: _,
            store_url,
            doku_timeout,
            doku_connect_timeout,
            doku_max_attempts,
            how_to_pay,
            max_notification_bytes,
            notification_skew_tolerance,
            notification_reject_skewed,
            event_retention,
            api_token,
            grpc_timeout,
            grpc_concurrency_limit,
            grpc_max_streams,
            grpc_conn,
            grpc_keepalive,
            notification_limits,
            admin_limits,
            sweeper,
            tls,
            store_options,
            previous_key_grace,
            shutdown_timeout,
        } = served;
        assert_eq!(notification_path, new.notification_path);
        assert_eq!(doku_base_url, new.doku_base_url);
        assert_eq!(doku_client_id, new.doku_client_id);
        assert_eq!(store_url, new.store_url);
        assert_eq!(doku_timeout, new.doku_timeout);
        assert_eq!(doku_connect_timeout, new.doku_connect_timeout);
        assert_eq!(doku_max_attempts, new.doku_max_attempts);
        assert_eq!(how_to_pay.allowed, new.how_to_pay.allowed);
        assert_eq!(how_to_pay.timeout, new.how_to_pay.timeout);
        assert_eq!(max_notification_bytes, new.max_notification_bytes);
        assert_eq!(notification_skew_tolerance, new.notification_skew_tolerance);
        assert_eq!(notification_reject_skewed, new.notification_reject_skewed);
        assert_eq!(event_retention, new.event_retention);
        assert!(api_token.is_none() && new.api_token.is_none());
        assert_eq!(grpc_timeout, new.grpc_timeout);
        assert_eq!(grpc_concurrency_limit, new.grpc_concurrency_limit);
        assert_eq!(grpc_max_streams, new.grpc_max_streams);
        assert_eq!(grpc_conn, new.grpc_conn);
        assert_eq!(grpc_keepalive, new.grpc_keepalive);
        assert_eq!(notification_limits, new.notification_limits);
        assert_eq!(admin_limits, new.admin_limits);
        assert_eq!(format!("{sweeper:?}"), format!("{:?}", new.sweeper));
        assert!(tls.is_none() && new.tls.is_none());
        assert_eq!(store_options, new.store_options);
        assert_eq!(previous_key_grace, new.previous_key_grace);
        assert_eq!(shutdown_timeout, new.shutdown_timeout);

        // The defaults other modules keep for callers that bypass the flags agree too.
        assert_eq!(store_options, crate::store::StoreOptions::default());
        let doku = crate::doku::DokuClientConfig::default();
        assert_eq!(doku.base_url, doku_base_url);
        assert_eq!(doku.request_timeout, doku_timeout);
        assert_eq!(doku.connect_timeout, doku_connect_timeout);
        assert_eq!(doku.max_attempts, doku_max_attempts);
        assert_eq!(doku.how_to_pay.allowed, how_to_pay.allowed);
        assert_eq!(doku.how_to_pay.timeout, how_to_pay.timeout);
    }

    #[test]
    fn how_to_pay_hosts() {
        let common = |args: &[&str]| {
            let mut all = vec!["dev"];
            all.extend_from_slice(args);
            match parse(&all).unwrap().command {
                Command::Dev(d) => d.common,
                Command::Serve(_) => panic!(),
            }
        };
        let cfg = from_flags(&common(&[
            "--how-to-pay-hosts",
            "api.doku.com, http://127.0.0.1:8181",
            "--how-to-pay-timeout",
            "500ms",
        ]))
        .unwrap();
        let shown: Vec<String> = cfg
            .how_to_pay
            .allowed
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["https://api.doku.com:443", "http://127.0.0.1:8181"]);
        assert_eq!(cfg.how_to_pay.timeout, Duration::from_millis(500));
        // Empty: never fetch.
        let cfg = from_flags(&common(&["--how-to-pay-hosts", ""])).unwrap();
        assert!(cfg.how_to_pay.allowed.is_empty());
        for (args, flag) in [
            (
                &["--how-to-pay-hosts", "https://api.doku.com/path"][..],
                "--how-to-pay-hosts",
            ),
            (&["--how-to-pay-hosts", "ftp://x"], "--how-to-pay-hosts"),
            (&["--how-to-pay-timeout", "0"], "--how-to-pay-timeout"),
        ] {
            assert_eq!(from_flags(&common(args)).unwrap_err().flag, flag);
        }
    }

    #[test]
    fn bad_store_url_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "SK-1").unwrap();
        for (store, ok) in [
            ("sqlite://o2o.db", true),
            ("postgres://u:pw@db/o2o", true),
            ("postgresql://u:pw@db/o2o", true),
            ("mysql://u:hunter2@db/o2o", false),
            ("o2o.db", false),
        ] {
            let Command::Serve(args) = parse(&[
                "serve",
                "--doku-client-id",
                "MCH-1",
                "--doku-secret-key-file",
                key.to_str().unwrap(),
                "--store",
                store,
            ])
            .unwrap()
            .command
            else {
                panic!()
            };
            match args.into_config() {
                Ok(_) => assert!(ok, "{store}"),
                Err(e) => {
                    assert!(!ok, "{store}: {e}");
                    assert_eq!(e.flag, "--store");
                    assert!(!e.message.contains("hunter2"), "{e}");
                }
            }
        }
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
        let cfg = from_flags(&args.common).unwrap();
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
        assert_eq!(
            from_flags(&args.common).unwrap_err().flag,
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
        assert_eq!(from_flags(&common).unwrap_err().flag, "--notification-path");
    }
}
