//! o2o-sidecar: a gRPC sidecar that creates DOKU Indomaret (O2O) payment codes for the
//! application beside it, verifies DOKU's payment notifications, stores them durably and
//! streams payment results.
//!
//! The sidecar alone holds the DOKU Client-Id and Secret Key. Applications call
//! `o2o.v1.O2OPayments` over gRPC on loopback; DOKU calls the notification listener.
//!
//! # Layout
//!
//! - [`config`]: flags with `O2O_*` env twins, turned into a typed [`config::Config`].
//! - [`payment`]: domain types and validation (invoice, amount, code, status, events).
//! - [`sidecar`]: the operations, between the transports and the outside systems.
//! - [`doku`]: the only code that knows DOKU (signature, JSON, client, notifications).
//! - [`grpc`]: the only code that knows tonic/prost (service, conversions, error table).
//! - [`store`]: the only code that writes SQL (SQLite and PostgreSQL).
//! - [`notify`]: the HTTP ingress for DOKU's notifications.
//! - [`reconcile`]: the sweeper that asks DOKU about payments still PENDING.
//! - [`admin`]: `/live`, `/ready` (the sidecar's own state), `/health/store`, `/metrics`.
//! - [`secret`]: the Secret Key, read from a watched file; replaced keys keep verifying
//!   notifications for a grace window.
//! - [`sim`]: the DOKU simulator (`doku-sim`, `o2o-sidecar dev`, tests). It plays DOKU, so it
//!   keeps its own DOKU wire types on purpose: a mistake in [`doku`] is not mirrored there.
//! - [`listen`]: what a peer may hold of a listener: connection caps, idle, header and body
//!   timeouts, `TCP_NODELAY`.
//! - [`tls`]: optional TLS for the gRPC and notification listeners.
//! - [`telemetry`]: logging, text or JSON.
//! - `fuzzing` (hidden): entry points of the cargo-fuzz targets in `fuzz/`, also replayed as
//!   unit tests over the seeds and every past crash.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod doku;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod listen;
pub mod notify;
pub mod payment;
pub mod reconcile;
pub mod secret;
pub mod sidecar;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{
    config::Config,
    doku::{DokuClient, DokuClientConfig},
    grpc::{PaymentsService, pb::o2o_payments_server::O2oPaymentsServer},
    sidecar::Sidecar,
};

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from (short hash; "unknown" when built outside a git
/// checkout), set by `build.rs`.
pub const GIT_COMMIT: &str = env!("O2O_GIT_COMMIT");
/// `--version`'s text: version and commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("O2O_GIT_COMMIT"),
    ")"
);

/// The sidecar's bound listeners. Binding is separate from [`run`] so that tests and the
/// binary can bind port 0 and learn the ports before the sidecar starts.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC for the application.
    pub grpc: TcpListener,
    /// HTTP for DOKU's notifications.
    pub http: TcpListener,
    /// Admin HTTP.
    pub admin: TcpListener,
}

/// Bound addresses of [`Listeners`].
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Notifications.
    pub http: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
}

impl Listeners {
    /// Binds the three listeners.
    pub async fn bind(
        grpc: SocketAddr,
        http: SocketAddr,
        admin: SocketAddr,
    ) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("{flag}: cannot bind {addr}"))
        };
        Ok(Self {
            grpc: bind(grpc, "--grpc-addr").await?,
            http: bind(http, "--http-addr").await?,
            admin: bind(admin, "--admin-addr").await?,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn addrs(&self) -> std::io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            grpc: self.grpc.local_addr()?,
            http: self.http.local_addr()?,
            admin: self.admin.local_addr()?,
        })
    }
}

/// Largest request body the admin listener reads (its requests have none).
const ADMIN_MAX_BODY_BYTES: usize = 4 * 1024;

/// Installs the ring TLS provider for outbound HTTPS (idempotent).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the sidecar on `listeners` until `shutdown` completes, then drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    install_tls_provider();
    // Install the metrics recorder before anything records, then describe every metric.
    admin::prometheus();
    admin::describe_metrics();
    let addrs = listeners.addrs()?;
    let store: std::sync::Arc<dyn store::Store> =
        std::sync::Arc::new(store::metered::Metered::new(
            store::open_with(&config.store_url, &config.store_options)
                .await
                .with_context(|| "--store: cannot open the store".to_string())?,
        ));
    // It just answered; `admin::watch_store` keeps this current from now on.
    metrics::gauge!("o2o_store_up").set(1.0);
    let doku = DokuClient::new(
        DokuClientConfig {
            base_url: config.doku_base_url.clone(),
            client_id: config.doku_client_id.clone(),
            connect_timeout: config.doku_connect_timeout,
            request_timeout: config.doku_timeout,
            max_attempts: config.doku_max_attempts,
            ..DokuClientConfig::default()
        },
        config.secret_key.clone(),
    )
    .context("cannot build the DOKU client")?;
    // A DOKU call holds its payment's lease for at most all its attempts plus backoff.
    let lease = (config.doku_timeout + config.doku_connect_timeout + Duration::from_secs(2))
        * config.doku_max_attempts;
    let sidecar = Sidecar::new(
        store.clone(),
        doku,
        sidecar::Settings {
            notification_path: config.notification_path.clone(),
            attempt_lease: lease,
            first_check_after: config.sweeper.first_check_after,
        },
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_watch = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_watch.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<O2oPaymentsServer<PaymentsService>>()
        .await;
    // Both reflection versions: grpcurl speaks v1alpha, newer clients v1.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let auth = grpc::auth::BearerAuth::new(config.api_token.clone());
    let mut grpc_builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        grpc_builder =
            grpc_builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
            ))?;
    }
    let (keepalive_interval, keepalive_timeout) = config.grpc_keepalive;
    let grpc_incoming = grpc::limit::incoming(
        listen::BoundedListener::new(listeners.grpc, config.grpc_conn, "grpc"),
        config.grpc_concurrency_limit,
    );
    let grpc_server = grpc_builder
        .trace_fn(telemetry::grpc_span)
        .timeout(config.grpc_timeout)
        .http2_keepalive_interval(Some(keepalive_interval))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        // A backstop only: calls past the concurrency limit get RESOURCE_EXHAUSTED from
        // CallLimitLayer, which a client can see, rather than waiting for a stream credit.
        .max_concurrent_streams(
            u32::try_from(config.grpc_concurrency_limit.saturating_mul(2)).unwrap_or(u32::MAX),
        )
        // Outermost, so that calls refused by the limit are counted too.
        .layer(grpc::metrics::RpcMetricsLayer)
        .layer(grpc::limit::CallLimitLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            PaymentsService::new(sidecar.clone(), stop_rx.clone(), config.grpc_max_streams)
                .into_server(auth),
        )
        .serve_with_incoming_shutdown(grpc_incoming, stopped());

    let readiness = admin::Readiness::new(store.clone()).with_secret_key(config.secret_key.clone());
    // The admin listener stops last, so that /ready says "draining" and /metrics can be
    // scraped for as long as the drain lasts.
    let (admin_stop_tx, mut admin_stop_rx) = tokio::sync::watch::channel(false);
    let admin_router =
        admin::router(readiness.clone()).layer(axum::middleware::from_fn_with_state(
            listen::BodyLimits {
                timeout: config.admin_limits.body_timeout,
                max_bytes: ADMIN_MAX_BODY_BYTES,
            },
            listen::bounded_body,
        ));
    let admin_server = listen::serve_http(
        listen::BoundedListener::new(listeners.admin, config.admin_limits.conn, "admin"),
        admin_router,
        config.admin_limits.header_timeout,
        async move {
            let _ = admin_stop_rx.wait_for(|s| *s).await;
        },
    );
    let ingress = notify::Ingress {
        sidecar: sidecar.clone(),
        client_id: config.doku_client_id.clone(),
        key: config.secret_key.clone(),
        path: config.notification_path.clone(),
        max_bytes: config.max_notification_bytes,
        skew_tolerance: config.notification_skew_tolerance,
        reject_skewed: config.notification_reject_skewed,
    };
    let notify_router = notify::router(ingress).layer(axum::middleware::from_fn_with_state(
        listen::BodyLimits {
            timeout: config.notification_limits.body_timeout,
            max_bytes: config.max_notification_bytes,
        },
        listen::bounded_body,
    ));
    let http_listener = listen::BoundedListener::new(
        listeners.http,
        config.notification_limits.conn,
        "notifications",
    );
    let header_timeout = config.notification_limits.header_timeout;
    let http_server: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match &config.tls {
        Some(identity) => Box::pin(listen::serve_http(
            tls::TlsListener::new(http_listener, identity)
                .map_err(|e| anyhow::anyhow!("--tls-cert-file: {e}"))?,
            notify_router,
            header_timeout,
            stopped(),
        )),
        None => Box::pin(listen::serve_http(
            http_listener,
            notify_router,
            header_timeout,
            stopped(),
        )),
    };

    config
        .secret_key
        .set_previous_key_grace(config.previous_key_grace);
    let key_watch = tokio::spawn(watch_key(config.secret_key.clone(), stopped()));

    let token_watch = config.api_token.clone().map(|token| {
        let stop = stopped();
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => if let Err(e) = token.refresh() {
                        tracing::error!(error = %e, "cannot re-read --api-token-file; keeping the last good token");
                    },
                }
            }
        })
    });
    let store_watch = tokio::spawn(admin::watch_store(store.clone(), stopped()));
    let retention = tokio::spawn(reconcile::prune(
        store.clone(),
        config.event_retention,
        stop_rx.clone(),
    ));
    let sweeper = tokio::spawn(reconcile::run(
        sidecar.clone(),
        config.sweeper.clone(),
        stop_rx.clone(),
    ));

    tracing::info!(
        grpc_addr = %addrs.grpc,
        http_addr = %addrs.http,
        admin_addr = %addrs.admin,
        notification_path = %config.notification_path,
        "o2o-sidecar serving"
    );
    let grpc_task = tokio::spawn(async move { grpc_server.await.context("gRPC server") });
    let http_task = tokio::spawn(async move {
        http_server.await;
        Ok(())
    });
    let admin_task = tokio::spawn(admin_server);

    shutdown.await;
    tracing::info!(
        timeout_ms = u64::try_from(config.shutdown_timeout.as_millis()).unwrap_or(u64::MAX),
        "shutting down: draining"
    );
    // 1. Probes and callers learn first: /ready and grpc.health say NOT_SERVING.
    readiness.set_draining();
    health
        .set_not_serving::<O2oPaymentsServer<PaymentsService>>()
        .await;
    // 2. The listeners stop accepting; open streams end with UNAVAILABLE (callers resume
    //    elsewhere with their token); in-flight unary calls (with their DOKU calls) and
    //    notifications being stored run to completion, within the shutdown timeout; the
    //    sweeper finishes its round.
    let _ = stop_tx.send(true);
    let drained = drain(config.shutdown_timeout, [grpc_task, http_task], sweeper).await;
    // 3. The admin listener and the background tasks.
    let _ = admin_stop_tx.send(true);
    let admin = admin_task.await;
    let _ = key_watch.await;
    let _ = retention.await;
    let _ = store_watch.await;
    if let Some(t) = token_watch {
        let _ = t.await;
    }
    drained?;
    admin?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits at most `timeout` for the servers and the sweeper to finish their in-flight work.
/// Past the timeout the rest is abandoned: a notification whose answer was not sent is not
/// acknowledged (DOKU retries it; a repeat is deduplicated), a payment whose DOKU answer was
/// not recorded stays PENDING and is recovered by replaying its stored request.
async fn drain(
    timeout: Duration,
    servers: [tokio::task::JoinHandle<anyhow::Result<()>>; 2],
    sweeper: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    let aborts: Vec<_> = servers
        .iter()
        .map(|t| t.abort_handle())
        .chain([sweeper.abort_handle()])
        .collect();
    let [grpc, http] = servers;
    let waited = tokio::time::timeout(timeout, async move {
        let grpc = grpc.await;
        let http = http.await;
        let _ = sweeper.await;
        (grpc, http)
    })
    .await;
    match waited {
        Ok((grpc, http)) => {
            grpc??;
            http??;
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "shutdown timeout: abandoning in-flight calls; unanswered notifications will be \
                 retried by DOKU, payments without a recorded code are recovered by replay"
            );
            for a in aborts {
                a.abort();
            }
            Ok(())
        }
    }
}

/// How often the key file is re-read.
const KEY_POLL: Duration = Duration::from_secs(1);
/// How often a key file that stays unreadable is logged again.
const KEY_PROBLEM_REPEAT: Duration = Duration::from_secs(60);

/// Re-reads the secret key file every [`KEY_POLL`] until `stop`: a new key is used by
/// outbound calls at once; an unreadable or empty file keeps the last good key, turns
/// readiness off and is logged loudly (again every minute while it lasts).
async fn watch_key(key: secret::SecretSource, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(KEY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since_log: Option<tokio::time::Instant> = None;
    metrics::gauge!("o2o_secret_key_file_ok").set(1.0);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        match key.refresh() {
            Ok(changed) => {
                if failing_since_log.take().is_some() {
                    tracing::info!("DOKU secret key file readable again; ready");
                    metrics::gauge!("o2o_secret_key_file_ok").set(1.0);
                }
                if changed {
                    metrics::counter!("o2o_secret_key_rotations_total").increment(1);
                    tracing::info!(
                        "DOKU secret key file changed: outbound calls use the new key now; the \
                         previous key still verifies notifications during the grace window"
                    );
                }
            }
            Err(e) => {
                metrics::gauge!("o2o_secret_key_file_ok").set(0.0);
                let now = tokio::time::Instant::now();
                let due = failing_since_log.is_none_or(|at| now - at >= KEY_PROBLEM_REPEAT);
                if due {
                    failing_since_log = Some(now);
                    tracing::error!(
                        error = %e,
                        "DOKU SECRET KEY FILE UNREADABLE: keeping the last good key; NOT READY \
                         until the file is fixed"
                    );
                }
            }
        }
    }
}
