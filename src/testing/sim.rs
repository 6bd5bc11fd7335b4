//! The DOKU simulator on `127.0.0.1:0`, and its control API as a user drives it (HTTP).

use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::sim::{SimConfig, Simulator};

use super::loopback;

/// A simulator's bound listener: its URL is known before it serves (a sidecar's config needs
/// the URL, the simulator needs the sidecar's notification URL).
#[derive(Debug)]
pub struct SimListener {
    listener: TcpListener,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl SimListener {
    /// Serves a simulator configured with `config` on this listener.
    pub fn serve(self, config: SimConfig) -> Sim {
        let simulator = Simulator::new(config);
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(simulator.clone().serve(self.listener, async move {
            let _ = rx.await;
        }));
        Sim {
            url: self.url,
            simulator,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A running DOKU simulator; stopped by [`Sim::stop`] (or with the test's runtime).
#[derive(Debug)]
pub struct Sim {
    /// `http://127.0.0.1:<port>`: the sidecar's DOKU base URL.
    pub url: String,
    simulator: Simulator,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Sim {
    /// Binds `127.0.0.1:0`.
    pub async fn bind() -> SimListener {
        let listener = TcpListener::bind(loopback())
            .await
            .expect("bind the simulator");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        SimListener { listener, url }
    }

    /// Binds and serves at once.
    pub async fn start(config: SimConfig) -> Self {
        Self::bind().await.serve(config)
    }

    /// The simulator itself (its state and fault list, in memory).
    pub fn simulator(&self) -> &Simulator {
        &self.simulator
    }

    /// Stops serving and every notification delivery in flight.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.simulator.shutdown();
    }

    /// POSTs `body` to the control API.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// GETs a JSON document of the control API.
    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Adds a fault; panics when the simulator refuses it.
    pub async fn fault(&self, fault: Value) {
        let r = self.post("/_sim/faults", fault).await;
        assert!(
            r.status().is_success(),
            "fault rejected: {}",
            r.text().await.unwrap()
        );
    }

    /// Removes every fault.
    pub async fn clear_faults(&self) {
        let r = self
            .http
            .delete(format!("{}/_sim/faults", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Pays `invoice` at the counter (DOKU then notifies); the simulator's answer.
    pub async fn pay(&self, invoice: &str) -> Value {
        let r = self
            .post(&format!("/_sim/payments/{invoice}/pay"), json!({}))
            .await;
        assert!(r.status().is_success(), "pay failed: {}", r.status());
        r.json().await.unwrap()
    }

    /// DOKU-API requests the simulator received for a path fragment.
    pub async fn requests(&self, path_contains: &str) -> Vec<Value> {
        let all = self.get("/_sim/requests").await;
        all.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or("").contains(path_contains))
            .cloned()
            .collect()
    }

    /// Payments the simulator holds for an invoice.
    pub async fn payments(&self, invoice: &str) -> Vec<Value> {
        let all = self.get("/_sim/payments").await;
        all.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["invoice_number"] == invoice)
            .cloned()
            .collect()
    }
}
