//! `doku-sim`: the standalone DOKU simulator. Parses its flags (each with a `DOKU_SIM_` env
//! twin), reads the secret key from a file, binds, logs `doku-sim listening addr=IP:PORT` and
//! serves DOKU's endpoints, the `/_sim` control API and its web page (`/`) until Ctrl-C or
//! SIGTERM.
//!
//! Bad configuration prints one line naming the flag on stderr and exits 64 (`EX_USAGE`).

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{
    Parser,
    error::{ContextKind, ContextValue, ErrorKind},
};
use o2o_sidecar::sim::{SimConfig, Simulator};

/// Exit status for bad configuration (`EX_USAGE` from sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// A strict DOKU (Indomaret O2O, non-SNAP) simulator for tests and local development.
#[derive(Debug, Parser)]
#[command(name = "doku-sim", version, allow_negative_numbers = true)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (the log line says which).
    #[arg(long, env = "DOKU_SIM_ADDR", default_value = "127.0.0.1:8181")]
    addr: SocketAddr,
    /// The merchant Client-Id that requests must carry.
    #[arg(long, env = "DOKU_SIM_CLIENT_ID")]
    client_id: String,
    /// File holding the merchant Secret Key (a trailing newline is ignored).
    #[arg(long, env = "DOKU_SIM_SECRET_KEY_FILE")]
    secret_key_file: PathBuf,
    /// Notification URL "configured in DOKU's Back Office": where payment notifications go.
    #[arg(long, env = "DOKU_SIM_NOTIFICATION_URL")]
    notification_url: Option<String>,
    /// Multiplies DOKU's notification retry delays (30 min, 6 h, 12 h); 1.0 is DOKU's own.
    #[arg(long, env = "DOKU_SIM_NOTIFICATION_RETRY_SCALE", default_value_t = 1.0)]
    notification_retry_scale: f64,
    /// Largest accepted Request-Timestamp skew, in seconds.
    #[arg(long, env = "DOKU_SIM_TIMESTAMP_TOLERANCE_SECS", default_value_t = 300)]
    timestamp_tolerance_secs: u64,
    /// Base URL of the how-to-pay links (default: the bound address).
    #[arg(long, env = "DOKU_SIM_PUBLIC_BASE_URL")]
    public_base_url: Option<String>,
}

fn main() -> ExitCode {
    init_tracing();
    let cfg = match parse_config() {
        Ok(cfg) => cfg,
        Err(line) => {
            eprintln!("doku-sim: {line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("doku-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes would split `addr=` in the line tests parse.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The bound address and the simulator config, or one line naming the bad flag.
fn parse_config() -> Result<(SocketAddr, SimConfig), String> {
    let cli = Cli::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        _ => clap_error_line(&e),
    })?;
    let text = std::fs::read_to_string(&cli.secret_key_file).map_err(|e| {
        format!(
            "--secret-key-file: cannot read {}: {e}",
            cli.secret_key_file.display()
        )
    })?;
    let secret_key = text.trim_end_matches(['\r', '\n']).to_owned();
    let cfg = SimConfig {
        client_id: cli.client_id,
        secret_key,
        notification_url: cli.notification_url,
        notification_retry_scale: cli.notification_retry_scale,
        timestamp_tolerance: Duration::from_secs(cli.timestamp_tolerance_secs),
        public_base_url: cli.public_base_url,
    };
    cfg.validate().map_err(|e| {
        let (field, why) = e.split_once(": ").unwrap_or(("", &e));
        let flag = match field {
            "secret_key" => "--secret-key-file",
            "client_id" => "--client-id",
            "notification_url" => "--notification-url",
            "notification_retry_scale" => "--notification-retry-scale",
            "public_base_url" => "--public-base-url",
            _ => "config",
        };
        format!("{flag}: {why}")
    })?;
    Ok((cli.addr, cfg))
}

/// One line for a clap error, naming the flag (clap's own message spans several lines).
fn clap_error_line(e: &clap::Error) -> String {
    let args = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.join(", "),
        _ => String::new(),
    };
    if e.kind() == ErrorKind::MissingRequiredArgument {
        return format!("{args}: required (flag or its DOKU_SIM_ environment variable)");
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    if args.is_empty() || first.contains(args.as_str()) {
        first.to_owned()
    } else {
        format!("{args}: {first}")
    }
}

async fn run((addr, cfg): (SocketAddr, SimConfig)) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("doku-sim: --addr: cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("doku-sim: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        client_id = %cfg.client_id,
        notification_url = ?cfg.notification_url,
        "doku-sim starting"
    );
    tracing::info!(addr = %bound, "doku-sim listening");
    tracing::info!(
        page = %format!("http://{}/", reachable(bound)),
        openapi = %format!("http://{}/_sim/openapi.json", reachable(bound)),
        "doku-sim page and control API"
    );
    match Simulator::new(cfg).serve(listener, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("doku-sim stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "doku-sim failed");
            ExitCode::FAILURE
        }
    }
}

/// Loopback form of a bound address, for the URLs logged.
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
