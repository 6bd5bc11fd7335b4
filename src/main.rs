//! `o2o-sidecar`: parse the configuration (exit 64 when it is bad), start logging, bind the
//! listeners, log the bound addresses in one line, run until SIGINT/SIGTERM.

use o2o_sidecar::{
    BoundAddrs, Listeners,
    config::{Cli, Command, Config, DevArgs},
    secret::SecretSource,
    sim::{SimConfig, Simulator},
    telemetry,
};
use std::{net::SocketAddr, process::ExitCode};

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::parse_from_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("o2o-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (result, telemetry) = match cli.command {
        Command::Serve(args) => {
            let common = args.common.clone();
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("o2o-sidecar: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Inside the runtime: the OTLP exporter's connection lives there.
            let telemetry = runtime.block_on(async { telemetry::init(common.log_format) });
            let result = runtime.block_on(serve(
                config,
                common.grpc_addr,
                common.http_addr,
                common.admin_addr,
            ));
            (result, telemetry)
        }
        Command::Dev(args) => {
            let telemetry = runtime.block_on(async { telemetry::init(args.common.log_format) });
            (runtime.block_on(dev(args)), telemetry)
        }
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o2o-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Config,
    grpc: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    tracing::info!(
        version = o2o_sidecar::VERSION,
        commit = o2o_sidecar::GIT_COMMIT,
        "o2o-sidecar starting"
    );
    let listeners = Listeners::bind(grpc, http, admin).await?;
    o2o_sidecar::run(config, listeners, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, before the
/// sidecar starts serving, not when the future is first polled: a SIGTERM that arrives just
/// after the "serving" line is a graceful stop too, not the default kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loopback form of a bound address, for URLs printed to the user.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    o2o_sidecar::install_tls_provider();
    let common = args.common;
    // Loopback unless chosen: `Cli::parse_from_args` already moved the defaults.
    let listeners = Listeners::bind(common.grpc_addr, common.http_addr, common.admin_addr).await?;
    let addrs = listeners.addrs()?;
    let sim_listener = tokio::net::TcpListener::bind(args.sim_addr)
        .await
        .map_err(|e| anyhow::anyhow!("--sim-addr: cannot bind {}: {e}", args.sim_addr))?;
    let sim_addr = sim_listener.local_addr()?;

    let client_id = "MCH-0001-DEV0000000001".to_owned();
    let secret = format!("SK-dev-{}", uuid::Uuid::new_v4().simple());
    // The temporary directory is removed when `_dir` drops, on every way out of this function
    // (Ctrl-C and SIGTERM end `run` normally); `--keep-dir` keeps it.
    let (store, _dir) = match args.store {
        Some(s) => (s, None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("o2o-sidecar-dev-")
                .tempdir()
                .map_err(|e| anyhow::anyhow!("cannot create a temporary directory: {e}"))?;
            let store = format!("sqlite://{}", dir.path().join("o2o-sidecar.db").display());
            (store, Some(DevDir::new(dir, args.keep_dir)))
        }
    };
    let notification_url = format!(
        "http://{}{}",
        reachable(addrs.http),
        common.notification_path
    );
    let sim = Simulator::new(SimConfig {
        notification_url: Some(notification_url),
        ..SimConfig::new(client_id.clone(), secret.clone())
    });
    let mut config = Config::from_flags(
        format!("http://{sim_addr}"),
        client_id,
        SecretSource::fixed(secret),
        store.clone(),
        &common,
    )?;
    // The simulator's how-to-pay links point at its own address (plain http on loopback).
    config.how_to_pay.allowed.push(
        o2o_sidecar::doku::AllowedOrigin::of_url(&format!("http://{}", reachable(sim_addr)))
            .map_err(|e| anyhow::anyhow!("--sim-addr: {e}"))?,
    );

    let sim_stop = tokio_util::sync::CancellationToken::new();
    let sim_task = tokio::spawn(sim.serve(sim_listener, sim_stop.clone().cancelled_owned()));
    let keep = match &_dir {
        Some(d) if d.keep => "   (kept on exit: --keep-dir)",
        Some(_) => "   (removed on exit; --keep-dir keeps it)",
        None => "",
    };
    let banner = banner(&addrs, sim_addr, &common.notification_path, &store, keep);
    // The handlers go in before the banner: a SIGTERM sent as soon as the banner is read is a
    // graceful stop (the temporary directory is removed), not the default kill.
    let shutdown = shutdown_signal();
    // One write, and no panic when stdout is gone (`dev | head`, a test that stopped reading).
    {
        use std::io::Write as _;
        let _ = std::io::stdout().lock().write_all(banner.as_bytes());
        let _ = std::io::stdout().flush();
    }
    let result = o2o_sidecar::run(config, listeners, shutdown).await;
    sim_stop.cancel();
    let _ = sim_task.await;
    result
}

/// `dev`'s banner: the addresses bound (as URLs a user can open), the store, and the
/// walk-through, streaming command first.
fn banner(addrs: &BoundAddrs, sim_addr: SocketAddr, path: &str, store: &str, keep: &str) -> String {
    let grpc = reachable(addrs.grpc);
    let sim_url = format!("http://{}", reachable(sim_addr));
    let http = reachable(addrs.http);
    let admin = reachable(addrs.admin);
    [
        String::new(),
        "o2o-sidecar dev: sidecar + in-process DOKU simulator (no DOKU account needed)".into(),
        format!(
            "  gRPC (o2o.v1.O2OPayments)  {grpc}{}",
            exposure(addrs.grpc)
        ),
        format!(
            "  DOKU notifications         http://{http}{path}{}",
            exposure(addrs.http)
        ),
        format!(
            "  admin                      http://{admin}/ready  /metrics{}",
            exposure(addrs.admin)
        ),
        format!(
            "  DOKU simulator             {sim_url}   (GET /_sim/payments){}",
            exposure(sim_addr)
        ),
        format!(
            "  simulator page             {sim_url}/   (pay codes at its counter; API: /_sim/openapi.json)"
        ),
        format!("  store                      {store}{keep}"),
        String::new(),
        "Try it (grpcurl uses the sidecar's reflection, no .proto needed).".into(),
        "1. In a second terminal, watch payment results as they happen (leave it running):".into(),
        format!("grpcurl -plaintext -d '{{}}' {grpc} o2o.v1.O2OPayments/StreamNotifications"),
        "2. Then, here or in a third terminal:".into(),
        format!(
            r#"grpcurl -plaintext -d '{{"invoice_number":"INV-1001","amount":150000,"customer":{{"name":"Budi Santoso"}}}}' {grpc} o2o.v1.O2OPayments/GeneratePaymentCode"#
        ),
        format!("curl -s -X POST {sim_url}/_sim/payments/INV-1001/pay"),
        format!(
            r#"grpcurl -plaintext -d '{{"invoice_number":"INV-1001","refresh":true}}' {grpc} o2o.v1.O2OPayments/GetStatus"#
        ),
        "3. The same at an Alfa Group store (Alfamart, Alfamidi, Lawson, Dan+Dan): channel CHANNEL_ALFA (the default is CHANNEL_INDOMARET); an Alfa receipt takes a footer message only:".into(),
        format!(
            r#"grpcurl -plaintext -d '{{"invoice_number":"INV-1002","amount":75000,"customer":{{"name":"Budi Santoso"}},"channel":"CHANNEL_ALFA","receipt":{{"footer_message":"Terima kasih"}}}}' {grpc} o2o.v1.O2OPayments/GeneratePaymentCode"#
        ),
        format!("curl -s -X POST {sim_url}/_sim/payments/INV-1002/pay"),
        format!(
            r#"grpcurl -plaintext -d '{{"invoice_number":"INV-1002","refresh":true}}' {grpc} o2o.v1.O2OPayments/GetStatus"#
        ),
        String::new(),
    ]
    .join("\n")
}

/// The banner's note for a listener bound beyond loopback (the user chose it).
fn exposure(bound: SocketAddr) -> String {
    if bound.ip().is_loopback() {
        String::new()
    } else {
        format!("   (bound {bound}: reachable from the network)")
    }
}

/// `dev`'s temporary directory: removed on drop unless kept.
#[derive(Debug)]
struct DevDir {
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl DevDir {
    fn new(dir: tempfile::TempDir, keep: bool) -> Self {
        Self {
            dir: Some(dir),
            keep,
        }
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if self.keep {
                let path = dir.keep();
                eprintln!("o2o-sidecar dev: kept {}", path.display());
            } else if let Err(e) = dir.close() {
                eprintln!("o2o-sidecar dev: cannot remove the temporary directory: {e}");
            }
        }
    }
}
