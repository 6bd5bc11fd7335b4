//! `o2o-sidecar`: parse the configuration (exit 64 when it is bad), start logging, bind the
//! listeners, log the bound addresses in one line, run until SIGINT/SIGTERM.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use o2o_sidecar::{
    Listeners,
    config::{Cli, Command, Config, DevArgs},
    secret::SecretKeySource,
    sim::{SimConfig, Simulator},
    telemetry,
};

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "o2o-sidecar starting");
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
    let listeners = Listeners::bind(common.grpc_addr, common.http_addr, common.admin_addr).await?;
    let addrs = listeners.addrs()?;
    let sim_listener = tokio::net::TcpListener::bind(args.sim_addr)
        .await
        .map_err(|e| anyhow::anyhow!("--sim-addr: cannot bind {}: {e}", args.sim_addr))?;
    let sim_addr = sim_listener.local_addr()?;

    let client_id = "MCH-0001-DEV0000000001".to_owned();
    let secret = format!("SK-dev-{}", uuid::Uuid::new_v4().simple());
    let store = match args.store {
        Some(s) => s,
        None => {
            let dir = std::env::temp_dir()
                .join(format!("o2o-sidecar-dev-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}", dir.join("o2o-sidecar.db").display())
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
    let config = Config::new(
        format!("http://{sim_addr}"),
        client_id,
        SecretKeySource::fixed(secret),
        store.clone(),
    )
    .with_common(&common)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sim_stop = stop_rx.clone();
    let sim_task = tokio::spawn(sim.serve(sim_listener, async move {
        let _ = sim_stop.wait_for(|s| *s).await;
    }));
    let grpc = reachable(addrs.grpc);
    let sim_url = format!("http://{}", reachable(sim_addr));
    let http = reachable(addrs.http);
    let admin = reachable(addrs.admin);
    let path = &common.notification_path;
    let banner = [
        String::new(),
        "o2o-sidecar dev: sidecar + in-process DOKU simulator (no DOKU account needed)".into(),
        format!("  gRPC (o2o.v1.O2OPayments)  {grpc}"),
        format!("  DOKU notifications         http://{http}{path}"),
        format!("  admin                      http://{admin}/ready  /metrics"),
        format!("  DOKU simulator             {sim_url}   (GET /_sim/payments)"),
        format!(
            "  simulator page             {sim_url}/   (pay codes at its counter; API: /_sim/openapi.json)"
        ),
        format!("  store                      {store}"),
        String::new(),
        "Try it (grpcurl uses the sidecar's reflection, no .proto needed):".into(),
        format!(
            r#"grpcurl -plaintext -d '{{"invoice_number":"INV-1001","amount":150000,"customer":{{"name":"Budi Santoso"}}}}' {grpc} o2o.v1.O2OPayments/GeneratePaymentCode"#
        ),
        format!("curl -s -X POST {sim_url}/_sim/payments/INV-1001/pay"),
        format!(
            r#"grpcurl -plaintext -d '{{"invoice_number":"INV-1001","refresh":true}}' {grpc} o2o.v1.O2OPayments/GetStatus"#
        ),
        format!("grpcurl -plaintext -d '{{}}' {grpc} o2o.v1.O2OPayments/StreamNotifications"),
        String::new(),
    ];
    println!("{}", banner.join("\n"));
    let result = o2o_sidecar::run(config, listeners, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    let _ = sim_task.await;
    result
}
