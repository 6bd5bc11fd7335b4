//! Starts a DOKU simulator and a sidecar on port 0 and hands out clients.

use std::{net::SocketAddr, time::Duration};

use o2o_sidecar::{
    BoundAddrs, Listeners,
    config::Config,
    grpc::pb::{self, o2o_payments_client::O2oPaymentsClient},
    secret::SecretSource,
    sim::{SimConfig, Simulator},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub(crate) const CLIENT_ID: &str = "MCH-0001-10791114622547";
pub(crate) const SECRET: &str = "SK-TEST-0123456789abcdef";
pub(crate) const PATH: &str = "/payments/notifications";

/// Knobs of a test setup.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Key the simulator expects (default: the sidecar's).
    pub(crate) sim_key: String,
    /// Per-attempt DOKU timeout of the sidecar.
    pub(crate) doku_timeout: Duration,
    /// Attempts per DOKU call.
    pub(crate) max_attempts: u32,
    /// Simulator notification retry scale.
    pub(crate) retry_scale: f64,
    /// Sweeper tick.
    pub(crate) sweep_interval: Duration,
    /// When the sweeper first checks a new payment.
    pub(crate) first_check_after: Duration,
    /// Bearer token callers must present.
    pub(crate) api_token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sim_key: SECRET.into(),
            doku_timeout: Duration::from_secs(5),
            max_attempts: 3,
            retry_scale: 0.0001,
            sweep_interval: Duration::from_secs(3600),
            first_check_after: Duration::from_secs(3600),
            api_token: None,
        }
    }
}

pub(crate) struct Sim {
    pub(crate) url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

pub(crate) struct Harness {
    pub(crate) sim: Sim,
    pub(crate) addrs: BoundAddrs,
    pub(crate) grpc: O2oPaymentsClient<Channel>,
    pub(crate) http: reqwest::Client,
    pub(crate) store_url: String,
    pub(crate) options: Options,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn config(options: &Options, sim_url: &str, store_url: &str) -> Config {
    let mut config = Config::new(sim_url, CLIENT_ID, SecretSource::fixed(SECRET), store_url);
    config.doku_timeout = options.doku_timeout;
    config.doku_connect_timeout = Duration::from_secs(2);
    config.doku_max_attempts = options.max_attempts;
    config.sweeper.interval = options.sweep_interval;
    config.sweeper.first_check_after = options.first_check_after;
    config.sweeper.backoff = vec![options.sweep_interval];
    config.api_token = options.api_token.clone().map(SecretSource::fixed);
    config
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub(crate) async fn start_with(options: Options) -> Self {
        o2o_sidecar::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("sqlite://{}", dir.path().join("o2o.db").display());
        let listeners = Listeners::bind(loopback(), loopback(), loopback())
            .await
            .unwrap();
        let addrs = listeners.addrs().unwrap();

        let sim_listener = TcpListener::bind(loopback()).await.unwrap();
        let sim_url = format!("http://{}", sim_listener.local_addr().unwrap());
        let sim = Simulator::new(SimConfig {
            notification_url: Some(format!("http://{}{PATH}", addrs.http)),
            notification_retry_scale: options.retry_scale,
            ..SimConfig::new(CLIENT_ID, options.sim_key.clone())
        });
        let (sim_stop, sim_rx) = oneshot::channel::<()>();
        let sim_task = tokio::spawn(sim.serve(sim_listener, async move {
            let _ = sim_rx.await;
        }));

        let (stop, task) = spawn_sidecar(config(&options, &sim_url, &store_url), listeners);
        let grpc = connect(addrs.grpc).await;
        Self {
            sim: Sim {
                url: sim_url,
                stop: Some(sim_stop),
                task: Some(sim_task),
            },
            addrs,
            grpc,
            http: reqwest::Client::new(),
            store_url,
            options,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops the sidecar (graceful) and starts it again on the same store and ports.
    pub(crate) async fn restart(&mut self) {
        self.stop_sidecar().await;
        let listeners = Listeners::bind(self.addrs.grpc, self.addrs.http, self.addrs.admin)
            .await
            .unwrap();
        let (stop, task) = spawn_sidecar(
            config(&self.options, &self.sim.url, &self.store_url),
            listeners,
        );
        self.stop = Some(stop);
        self.task = Some(task);
        self.grpc = connect(self.addrs.grpc).await;
    }

    pub(crate) async fn stop_sidecar(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub(crate) async fn stop(mut self) {
        self.stop_sidecar().await;
        if let Some(stop) = self.sim.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.sim.task.take() {
            let _ = task.await;
        }
    }

    // ---- simulator control API (HTTP, as a user would drive it) ----

    pub(crate) async fn sim_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.sim.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.sim.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub(crate) async fn fault(&self, fault: Value) {
        let r = self.sim_post("/_sim/faults", fault).await;
        assert!(
            r.status().is_success(),
            "fault rejected: {}",
            r.text().await.unwrap()
        );
    }

    pub(crate) async fn clear_faults(&self) {
        let r = self
            .http
            .delete(format!("{}/_sim/faults", self.sim.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub(crate) async fn pay(&self, invoice: &str) -> Value {
        let r = self
            .sim_post(&format!("/_sim/payments/{invoice}/pay"), json!({}))
            .await;
        assert!(r.status().is_success(), "pay failed: {}", r.status());
        r.json().await.unwrap()
    }

    /// DOKU-API requests the simulator received for a path fragment.
    pub(crate) async fn sim_requests(&self, path_contains: &str) -> Vec<Value> {
        let all = self.sim_get("/_sim/requests").await;
        all.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or("").contains(path_contains))
            .cloned()
            .collect()
    }

    /// Payments the simulator holds for an invoice.
    pub(crate) async fn sim_payments(&self, invoice: &str) -> Vec<Value> {
        let all = self.sim_get("/_sim/payments").await;
        all.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["invoice_number"] == invoice)
            .cloned()
            .collect()
    }

    /// GetStatus of an invoice, which must exist.
    pub(crate) async fn status(&mut self, invoice: &str, refresh: bool) -> pb::Payment {
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

    pub(crate) fn notification_url(&self) -> String {
        format!("http://{}{PATH}", self.addrs.http)
    }
}

fn spawn_sidecar(
    config: Config,
    listeners: Listeners,
) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(o2o_sidecar::run(config, listeners, async move {
        let _ = rx.await;
    }));
    (stop, task)
}

async fn connect(addr: SocketAddr) -> O2oPaymentsClient<Channel> {
    // The listener is bound before run() starts, so the connection is accepted as soon as the
    // server polls it: no retry loop needed.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    O2oPaymentsClient::new(channel)
}

/// A valid request for `invoice`.
pub(crate) fn request(invoice: &str, amount: i64) -> pb::GeneratePaymentCodeRequest {
    pb::GeneratePaymentCodeRequest {
        invoice_number: invoice.into(),
        amount,
        customer: Some(pb::Customer {
            name: "Taufik Ismail".into(),
            email: "taufik@example.com".into(),
        }),
        info: "Thanks for shopping".into(),
        receipt: Some(pb::Receipt {
            description: "ORDER 001".into(),
            footer_message: "Terima kasih".into(),
        }),
        ..Default::default()
    }
}

/// ErrorInfo reason of a status.
pub(crate) fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
