//! A sidecar (`run()` in this process) whose [`Config`] a test adjusts freely, against a DOKU
//! simulator on port 0: for the settings the shared harness does not expose (key file, grace
//! window, shutdown timeout, store URL) and for stopping and restarting on purpose.

use std::{net::SocketAddr, time::Duration};

use o2o_sidecar::{
    BoundAddrs, Listeners,
    config::Config,
    grpc::pb::o2o_payments_client::O2oPaymentsClient,
    sim::{SimConfig, Simulator},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::harness::{CLIENT_ID, Options, PATH, SECRET};

pub(crate) struct Rig {
    pub(crate) grpc: O2oPaymentsClient<Channel>,
    pub(crate) addrs: BoundAddrs,
    pub(crate) http: reqwest::Client,
    pub(crate) sim: Simulator,
    pub(crate) sim_url: String,
    /// `sqlite://…` in the rig's directory.
    pub(crate) store_url: String,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    sim_stop: Option<oneshot::Sender<()>>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Rig {
    /// Starts a simulator holding `sim_key`, then the sidecar with the harness's config for
    /// `options`, changed by `adjust`.
    pub(crate) async fn start(
        sim_key: &str,
        options: &Options,
        adjust: impl FnOnce(Config, &std::path::Path) -> Config,
    ) -> Self {
        o2o_sidecar::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let listeners = Listeners::bind(loopback(), loopback(), loopback())
            .await
            .unwrap();
        let addrs = listeners.addrs().unwrap();
        let sim_listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let sim_url = format!("http://{}", sim_listener.local_addr().unwrap());
        let sim = Simulator::new(SimConfig {
            notification_url: Some(format!("http://{}{PATH}", addrs.http)),
            notification_retry_scale: options.retry_scale,
            ..SimConfig::new(CLIENT_ID, sim_key)
        });
        let (sim_stop, sim_rx) = oneshot::channel::<()>();
        tokio::spawn(sim.clone().serve(sim_listener, async move {
            let _ = sim_rx.await;
        }));
        let store_url = format!("sqlite://{}", dir.path().join("o2o.db").display());
        let config = adjust(
            crate::harness::config(options, &sim_url, &store_url),
            dir.path(),
        );
        let mut rig = Self {
            grpc: connect_lazy(addrs.grpc),
            addrs,
            http: reqwest::Client::new(),
            sim,
            sim_url,
            store_url,
            _dir: dir,
            stop: None,
            task: None,
            sim_stop: Some(sim_stop),
        };
        rig.launch(config, listeners).await;
        rig
    }

    /// The default setup with the harness's key.
    pub(crate) async fn with(options: &Options, adjust: impl FnOnce(Config) -> Config) -> Self {
        Self::start(SECRET, options, |c, _| adjust(c)).await
    }

    async fn launch(&mut self, config: Config, listeners: Listeners) {
        let (stop, rx) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(o2o_sidecar::run(
            config,
            listeners,
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(stop);
        let channel = Channel::from_shared(format!("http://{}", self.addrs.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        self.grpc = O2oPaymentsClient::new(channel);
        // The listeners were bound before `run()`: this waits (in the accept queue, no
        // polling) until the admin listener serves, which is after the store is open.
        let (status, text) = self.admin_get("/ready").await;
        assert_eq!(status, 200, "not ready after start: {text}");
    }

    /// Starts the sidecar again (after [`Rig::shutdown`]) on the same ports with `config`.
    pub(crate) async fn relaunch(&mut self, config: Config) {
        let listeners = Listeners::bind(self.addrs.grpc, self.addrs.http, self.addrs.admin)
            .await
            .unwrap();
        self.launch(config, listeners).await;
    }

    /// The harness's config for `options` against this rig's simulator and store.
    pub(crate) fn config(&self, options: &Options) -> Config {
        crate::harness::config(options, &self.sim_url, &self.store_url)
    }

    /// Sends the shutdown signal; returns the running `run()` to await.
    pub(crate) fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }

    /// Graceful stop of the sidecar; the simulator keeps running.
    pub(crate) async fn shutdown(&mut self) {
        if self.task.is_some() {
            self.begin_shutdown().await.unwrap().unwrap();
        }
    }

    pub(crate) async fn stop(mut self) {
        self.shutdown().await;
        if let Some(stop) = self.sim_stop.take() {
            let _ = stop.send(());
        }
        self.sim.shutdown();
    }

    pub(crate) fn notification_url(&self) -> String {
        format!("http://{}{PATH}", self.addrs.http)
    }

    pub(crate) async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addrs.admin))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn connect_lazy(addr: SocketAddr) -> O2oPaymentsClient<Channel> {
    O2oPaymentsClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    )
}

/// Polls `check` every 50 ms until it holds, at most 5 s (the key watcher re-reads its file
/// every second; a notification delivery takes milliseconds).
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
