//! The sidecar's [`crate::run`] in this process, on `127.0.0.1:0`, against a simulator of its
//! own (or another DOKU), on SQLite in a temporary directory (or another store).

use std::{path::Path, time::Duration};

use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::{
    BoundAddrs, Listeners,
    config::Config,
    grpc::pb::{self, o2o_payments_client::O2oPaymentsClient},
    secret::SecretSource,
    sim::SimConfig,
};

use super::{CLIENT_ID, PATH, SECRET, Sim, connect, loopback};

/// What the tests vary; the rest of the [`Config`] is [`config`]'s.
#[derive(Debug, Clone)]
pub struct Options {
    /// Key the simulator expects (default: the sidecar's, [`SECRET`]).
    pub sim_key: String,
    /// Simulator notification retry scale.
    pub retry_scale: f64,
    /// Per-attempt DOKU timeout of the sidecar.
    pub doku_timeout: Duration,
    /// Attempts per DOKU call.
    pub max_attempts: u32,
    /// Sweeper tick.
    pub sweep_interval: Duration,
    /// When the sweeper first checks a new payment.
    pub first_check_after: Duration,
    /// Bearer token callers must present.
    pub api_token: Option<String>,
    /// DOKU's base URL; `None` starts a simulator of the sidecar's own that notifies it.
    pub doku_url: Option<String>,
    /// The store; `None` is SQLite in the sidecar's temporary directory.
    pub store_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sim_key: SECRET.into(),
            retry_scale: 0.0001,
            doku_timeout: Duration::from_secs(5),
            max_attempts: 3,
            sweep_interval: Duration::from_secs(3600),
            first_check_after: Duration::from_secs(3600),
            api_token: None,
            doku_url: None,
            store_url: None,
        }
    }
}

/// The sidecar's config for `options` against DOKU at `doku_url` and the store at
/// `store_url`: key [`SECRET`], a sweeper that stays quiet unless `options` say otherwise.
pub fn config(options: &Options, doku_url: &str, store_url: &str) -> Config {
    let mut config = Config::new(doku_url, CLIENT_ID, SecretSource::fixed(SECRET), store_url);
    config.doku_timeout = options.doku_timeout;
    config.doku_connect_timeout = Duration::from_secs(2);
    config.doku_max_attempts = options.max_attempts;
    config.sweeper.interval = options.sweep_interval;
    config.sweeper.first_check_after = options.first_check_after;
    config.sweeper.backoff = vec![options.sweep_interval];
    config.api_token = options.api_token.clone().map(SecretSource::fixed);
    // As `dev` does: the DOKU the test runs (a simulator on loopback) serves the how-to-pay
    // JSON its answers link to; and only it: a test never reaches DOKU's real hosts.
    config.how_to_pay.allowed = crate::doku::AllowedOrigin::of_url(doku_url)
        .into_iter()
        .collect();
    config
}

/// A running `run()`.
#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A sidecar in this process, with clients for it. Stop it with [`InProcessSidecar::stop`]
/// (graceful, asserting a clean exit); dropped, it stops with the test's runtime.
#[derive(Debug)]
pub struct InProcessSidecar {
    /// gRPC client (plain HTTP/2; connected lazily when the config has TLS).
    pub grpc: O2oPaymentsClient<Channel>,
    /// The bound listeners; kept across restarts.
    pub addrs: BoundAddrs,
    /// Plain HTTP client for the notification and admin listeners and the simulator.
    pub http: reqwest::Client,
    /// The store's URL.
    pub store_url: String,
    /// What it was started with.
    pub options: Options,
    /// DOKU's base URL.
    pub doku_url: String,
    sim: Option<Sim>,
    running: Option<Running>,
    dir: tempfile::TempDir,
}

impl InProcessSidecar {
    /// With the default [`Options`].
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// With `options`.
    pub async fn start_with(options: Options) -> Self {
        Self::start_adjusted(options, |config, _| config).await
    }

    /// With [`config`] for `options`, changed by `adjust` (given the sidecar's temporary
    /// directory, e.g. for a key file), for the settings [`Options`] does not cover. Returns
    /// once the admin listener answers `/ready` with 200 (the store is open).
    pub async fn start_adjusted(
        options: Options,
        adjust: impl FnOnce(Config, &Path) -> Config,
    ) -> Self {
        crate::install_tls_provider();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let listeners = Listeners::bind(loopback(), loopback(), loopback())
            .await
            .expect("bind the sidecar's listeners");
        let addrs = listeners.addrs().expect("bound");
        let sim = match options.doku_url {
            Some(_) => None,
            None => Some(
                Sim::start(SimConfig {
                    notification_url: Some(notification_url(&addrs)),
                    notification_retry_scale: options.retry_scale,
                    ..SimConfig::new(CLIENT_ID, options.sim_key.clone())
                })
                .await,
            ),
        };
        let doku_url = match (&sim, &options.doku_url) {
            (Some(sim), _) => sim.url.clone(),
            (None, url) => url.clone().unwrap_or_default(),
        };
        let store_url = options
            .store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("o2o.db").display()));
        let config = adjust(config(&options, &doku_url, &store_url), dir.path());
        let mut sidecar = Self {
            grpc: lazy(&addrs),
            addrs,
            http: reqwest::Client::new(),
            store_url,
            options,
            doku_url,
            sim,
            running: None,
            dir,
        };
        sidecar.launch(config, listeners).await;
        sidecar
    }

    async fn launch(&mut self, config: Config, listeners: Listeners) {
        let tls = config.tls.is_some();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(config, listeners, async move {
            let _ = rx.await;
        }));
        self.running = Some(Running { stop, task });
        self.grpc = if tls {
            lazy(&self.addrs)
        } else {
            connect(self.addrs.grpc).await
        };
        // The listeners were bound before `run()`: this waits (in the accept queue, no
        // polling) until the admin listener serves, which is after the store is open.
        let (status, text) = self.admin_get("/ready").await;
        assert_eq!(status, 200, "not ready after start: {text}");
    }

    /// The sidecar's temporary directory (its SQLite store unless another was given).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// [`config`] for this sidecar's options, DOKU and store (without the start's `adjust`).
    pub fn config(&self) -> Config {
        config(&self.options, &self.doku_url, &self.store_url)
    }

    /// Starts the sidecar again (after [`InProcessSidecar::shutdown`]) on the same ports with
    /// `config`.
    pub async fn relaunch(&mut self, config: Config) {
        let listeners = Listeners::bind(self.addrs.grpc, self.addrs.http, self.addrs.admin)
            .await
            .expect("bind the same ports again");
        self.launch(config, listeners).await;
    }

    /// Stops the sidecar (graceful) and starts it again on the same store and ports, with
    /// [`InProcessSidecar::config`].
    pub async fn restart(&mut self) {
        self.shutdown().await;
        self.relaunch(self.config()).await;
    }

    /// Sends the shutdown signal; returns the running `run()` to await.
    pub fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        let running = self.running.take().expect("running");
        let _ = running.stop.send(());
        running.task
    }

    /// Graceful stop of the sidecar, which must end without an error; the simulator keeps
    /// running.
    pub async fn shutdown(&mut self) {
        if self.running.is_some() {
            self.begin_shutdown()
                .await
                .expect("run() did not panic")
                .expect("run() ended without an error");
        }
    }

    /// Stops the sidecar, then its simulator.
    pub async fn stop(mut self) {
        self.shutdown().await;
        if let Some(sim) = self.sim.as_mut() {
            sim.stop().await;
        }
    }

    /// Whether `run()` has returned (it must not, until stopped).
    pub fn has_ended(&self) -> bool {
        self.running.as_ref().is_none_or(|r| r.task.is_finished())
    }

    /// Where DOKU sends notifications.
    pub fn notification_url(&self) -> String {
        notification_url(&self.addrs)
    }

    /// GET on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addrs.admin))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Prunes the event log of everything recorded before `before`, as the retention task
    /// would, through the SQLite store beside the running sidecar (which owns the file; the
    /// store itself, without its cache); returns how many events went.
    pub async fn prune_events(&self, before: time::OffsetDateTime) -> u64 {
        use crate::store::Store as _;
        let store = crate::store::SqliteStore::open(&self.store_url)
            .await
            .unwrap();
        store.prune_events(before).await.unwrap()
    }

    /// GeneratePaymentCode, which must succeed: the payment.
    pub async fn generate(&mut self, request: pb::GeneratePaymentCodeRequest) -> pb::Payment {
        self.grpc
            .generate_payment_code(request)
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
    }

    /// GetStatus of an invoice, which must exist.
    pub async fn status(&mut self, invoice: &str, refresh: bool) -> pb::Payment {
        self.grpc
            .get_status(pb::GetStatusRequest {
                invoice_number: invoice.into(),
                refresh,
            })
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
    }

    // ---- the simulator of its own ----

    /// The simulator this sidecar started; panics when it was given another DOKU.
    pub fn sim(&self) -> &Sim {
        self.sim
            .as_ref()
            .expect("this sidecar was started against another DOKU")
    }

    /// See [`Sim::post`].
    pub async fn sim_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.sim().post(path, body).await
    }

    /// See [`Sim::get`].
    pub async fn sim_get(&self, path: &str) -> Value {
        self.sim().get(path).await
    }

    /// See [`Sim::fault`].
    pub async fn fault(&self, fault: Value) {
        self.sim().fault(fault).await;
    }

    /// See [`Sim::clear_faults`].
    pub async fn clear_faults(&self) {
        self.sim().clear_faults().await;
    }

    /// See [`Sim::pay`].
    pub async fn pay(&self, invoice: &str) -> Value {
        self.sim().pay(invoice).await
    }

    /// See [`Sim::requests`].
    pub async fn sim_requests(&self, path_contains: &str) -> Vec<Value> {
        self.sim().requests(path_contains).await
    }

    /// See [`Sim::payments`].
    pub async fn sim_payments(&self, invoice: &str) -> Vec<Value> {
        self.sim().payments(invoice).await
    }
}

fn notification_url(addrs: &BoundAddrs) -> String {
    format!("http://{}{PATH}", addrs.http)
}

fn lazy(addrs: &BoundAddrs) -> O2oPaymentsClient<Channel> {
    O2oPaymentsClient::new(
        Channel::from_shared(format!("http://{}", addrs.grpc))
            .expect("a valid URI")
            .connect_lazy(),
    )
}
