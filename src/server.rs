//! The sidecar as a server, built then run (the shape of mini-redis' `Listener`):
//! [`Server::build`] opens the store and assembles the domain service; [`Server::run`] starts
//! each listener from its one assembly function (`serve_grpc`, `serve_notifications`,
//! `serve_admin`) and
//! the background tasks, serves until the shutdown signal, then drains.
//!
//! Shutdown uses two [`CancellationToken`]s and a [`TaskTracker`]:
//! - `drain`, a child of `lifetime`, stops what serves payments: the gRPC and notification
//!   listeners stop accepting, open streams end with `SHUTTING_DOWN`, in-flight calls and
//!   notifications being stored run to completion, the sweeper finishes its round; all within
//!   `--shutdown-timeout`, past which the rest is abandoned (see `drain_within`);
//! - `lifetime` stops the rest last: the admin listener, so that `/ready` says "draining" and
//!   `/metrics` can be scraped for as long as the drain lasts, and the file and store watchers.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin,
    config::Config,
    doku::{DokuClient, DokuClientConfig},
    grpc::{self, PaymentsService, pb::o2o_payments_server::O2oPaymentsServer},
    install_tls_provider, listen, notify, reconcile, secret,
    sidecar::{self, Sidecar},
    store::{self, Store},
    telemetry, tls,
};

/// The sidecar's bound listeners. Binding is separate from [`Server::run`] so that tests and
/// the binary can bind port 0 and learn the ports before the sidecar starts.
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

/// A sidecar ready to serve: its store is open and its domain service assembled.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Listeners,
    store: Arc<dyn Store>,
    sidecar: Sidecar,
    readiness: admin::Readiness,
}

impl Server {
    /// Opens the store (migrating it) and assembles the domain service over it and the DOKU
    /// client. Installs the metrics recorder first, so that everything after it is recorded.
    pub async fn build(config: Config, listeners: Listeners) -> anyhow::Result<Self> {
        install_tls_provider();
        admin::prometheus();
        admin::describe_metrics();
        let store: Arc<dyn Store> = Arc::new(store::metered::Metered::new(
            store::open_with(&config.store_url, &config.store_options)
                .await
                .context("--store: cannot open the store")?,
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
                how_to_pay: config.how_to_pay.clone(),
                ..DokuClientConfig::default()
            },
            config.secret_key.clone(),
        )
        .context("cannot build the DOKU client")?;
        let settings = sidecar::Settings {
            notification_path: config.notification_path.clone(),
            // A DOKU call holds its payment's lease for as long as it can possibly take.
            attempt_lease: doku.worst_case_call(),
            first_check_after: config.sweeper.first_check_after,
        };
        let sidecar = Sidecar::new(store.clone(), doku, settings);
        config
            .secret_key
            .set_previous_key_grace(config.previous_key_grace);
        let readiness =
            admin::Readiness::new(store.clone()).with_secret_key(config.secret_key.clone());
        Ok(Self {
            config,
            listeners,
            store,
            sidecar,
            readiness,
        })
    }

    /// Serves until `shutdown` completes, then drains (see the module doc) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            config,
            listeners,
            store,
            sidecar,
            readiness,
        } = self;
        let addrs = listeners.addrs()?;
        let lifetime = CancellationToken::new();
        let drain = lifetime.child_token();

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<O2oPaymentsServer<PaymentsService>>()
            .await;
        let serving = TaskTracker::new();
        let grpc = serving.spawn(serve_grpc(
            &config,
            listeners.grpc,
            sidecar.clone(),
            health_service,
            drain.clone(),
        )?);
        let notifications = serving.spawn(serve_notifications(
            &config,
            listeners.http,
            sidecar.clone(),
            drain.clone(),
        )?);
        let sweeper = serving.spawn(reconcile::run(
            sidecar,
            store.sweeper_election(),
            config.sweeper.clone(),
            drain.clone(),
        ));
        serving.close();
        let admin = tokio::spawn(serve_admin(
            &config,
            listeners.admin,
            readiness.clone(),
            lifetime.clone(),
        ));
        let background = background(&config, store, &lifetime);
        tracing::info!(
            grpc_addr = %addrs.grpc,
            http_addr = %addrs.http,
            admin_addr = %addrs.admin,
            notification_path = %config.notification_path,
            "o2o-sidecar serving"
        );

        shutdown.await;
        tracing::info!(
            timeout_ms = millis(config.shutdown_timeout),
            "shutting down: draining"
        );
        // 1. Probes and callers learn first: /ready and grpc.health say NOT_SERVING.
        readiness.set_draining();
        health
            .set_not_serving::<O2oPaymentsServer<PaymentsService>>()
            .await;
        // 2. What serves payments drains, within the shutdown timeout.
        drain.cancel();
        let abort = [
            grpc.abort_handle(),
            notifications.abort_handle(),
            sweeper.abort_handle(),
        ];
        drain_within(config.shutdown_timeout, &serving, abort).await;
        // 3. The admin listener and the watchers.
        lifetime.cancel();
        let admin = admin.await;
        background.wait().await;
        finished(grpc).await.context("gRPC server")?;
        finished(notifications).await?;
        admin.context("admin listener")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The result of a server task that has ended (or was aborted by the drain timeout: that is
/// not a failure).
async fn finished(task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Waits at most `timeout` for what `serving` tracks to finish its in-flight work. Past the
/// timeout the rest is abandoned: a notification whose answer was not sent is not
/// acknowledged (DOKU retries it; a repeat is deduplicated), a payment whose DOKU answer was
/// not recorded stays PENDING and is recovered by replaying its stored request.
async fn drain_within<const N: usize>(
    timeout: Duration,
    serving: &TaskTracker,
    abort: [tokio::task::AbortHandle; N],
) {
    if tokio::time::timeout(timeout, serving.wait()).await.is_err() {
        tracing::warn!(
            timeout_ms = millis(timeout),
            "shutdown timeout: abandoning in-flight calls; unanswered notifications will be \
             retried by DOKU, payments without a recorded code are recovered by replay"
        );
        for a in abort {
            a.abort();
        }
    }
}

/// The gRPC listener: `o2o.v1.O2OPayments` behind the bearer token, health, reflection; the
/// connection and call bounds of [`grpc::limit`]; stops accepting when `drain` is cancelled.
fn serve_grpc(
    config: &Config,
    listener: TcpListener,
    sidecar: Sidecar,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    drain: CancellationToken,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + Send + 'static> {
    // Both reflection versions: grpcurl speaks v1alpha, newer clients v1. Besides the
    // contract and health, the google.rpc status and error details (tonic-types' descriptors),
    // so that reflection clients decode ErrorInfo, BadRequest and RetryInfo instead of showing
    // base64.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let auth = grpc::auth::BearerAuth::new(config.api_token.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        ))?;
    }
    let (keepalive_interval, keepalive_timeout) = config.grpc_keepalive;
    let incoming = grpc::limit::incoming(
        listen::BoundedListener::new(listener, config.grpc_conn, "grpc"),
        config.grpc_concurrency_limit,
    );
    let payments = PaymentsService::new(sidecar, drain.clone(), config.grpc_max_streams);
    let server = builder
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
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(payments.into_server(auth))
        .serve_with_incoming_shutdown(incoming, drain.cancelled_owned());
    Ok(async move { server.await.map_err(Into::into) })
}

/// The notification listener (TLS when configured): DOKU's signed notifications, within the
/// connection, header and body bounds of [`listen`]; stops accepting when `drain` is
/// cancelled.
fn serve_notifications(
    config: &Config,
    listener: TcpListener,
    sidecar: Sidecar,
    drain: CancellationToken,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + Send + 'static> {
    let ingress = notify::Ingress {
        sidecar,
        client_id: config.doku_client_id.clone(),
        key: config.secret_key.clone(),
        path: config.notification_path.clone(),
        max_bytes: config.max_notification_bytes,
        skew_tolerance: config.notification_skew_tolerance,
        reject_skewed: config.notification_reject_skewed,
    };
    let router = notify::router(ingress).layer(axum::middleware::from_fn_with_state(
        listen::BodyLimits {
            timeout: config.notification_limits.body_timeout,
            max_bytes: config.max_notification_bytes,
        },
        listen::bounded_body,
    ));
    let listener =
        listen::BoundedListener::new(listener, config.notification_limits.conn, "notifications");
    let header_timeout = config.notification_limits.header_timeout;
    let stop = drain.cancelled_owned();
    let server: Pin<Box<dyn Future<Output = ()> + Send>> = match &config.tls {
        Some(identity) => Box::pin(listen::serve_http(
            tls::TlsListener::new(listener, identity)
                .map_err(|e| anyhow::anyhow!("--tls-cert-file: {e}"))?,
            router,
            header_timeout,
            stop,
        )),
        None => Box::pin(listen::serve_http(listener, router, header_timeout, stop)),
    };
    Ok(async move {
        server.await;
        Ok(())
    })
}

/// The admin listener: `/live`, `/ready`, `/health/store`, `/metrics`; stops when `lifetime`
/// is cancelled, after the drain.
fn serve_admin(
    config: &Config,
    listener: TcpListener,
    readiness: admin::Readiness,
    lifetime: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let router = admin::router(readiness).layer(axum::middleware::from_fn_with_state(
        listen::BodyLimits {
            timeout: config.admin_limits.body_timeout,
            max_bytes: ADMIN_MAX_BODY_BYTES,
        },
        listen::bounded_body,
    ));
    listen::serve_http(
        listen::BoundedListener::new(listener, config.admin_limits.conn, "admin"),
        router,
        config.admin_limits.header_timeout,
        lifetime.cancelled_owned(),
    )
}

/// The watchers and the event log's retention, until `lifetime` is cancelled.
fn background(config: &Config, store: Arc<dyn Store>, lifetime: &CancellationToken) -> TaskTracker {
    let tasks = TaskTracker::new();
    tasks.spawn(secret::watch_key_file(
        config.secret_key.clone(),
        lifetime.clone(),
    ));
    if let Some(token) = config.api_token.clone() {
        tasks.spawn(secret::watch_token_file(token, lifetime.clone()));
    }
    tasks.spawn(admin::watch_store(
        store.clone(),
        lifetime.clone().cancelled_owned(),
    ));
    tasks.spawn(admin::metrics_upkeep(lifetime.clone().cancelled_owned()));
    tasks.spawn(reconcile::prune(
        store,
        config.event_retention,
        lifetime.clone(),
    ));
    tasks.close();
    tasks
}
