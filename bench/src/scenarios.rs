//! The measurements P1–P5, each next to its baseline in the same run, against `doku-sim`, the
//! sidecar (`o2o-sidecar serve`) and the no-op baseline server, all separate processes.
//!
//! - P1: `GetStatus` served from the store, open loop at a fixed rate and closed loop at
//!   saturation, against the no-op tonic server; plus CPU time per request.
//! - P2: `GeneratePaymentCode` through the sidecar, against the same signed DOKU request sent
//!   by the harness straight to the simulator (the body and signature come from the
//!   sidecar's own library, so both paths send the same bytes to the same simulator),
//!   followed, as the sidecar does, by the GET of the how-to-pay JSON the answer links to;
//!   and the CPU that rate costs the stack alone (the no-op server's per call, the
//!   simulator's per POST + GET), beside the sidecar's.
//! - P3: a DOKU-signed notification POSTed to the sidecar until its event arrives on an open
//!   `StreamNotifications` stream (open loop), and the durable ingest rate (closed loop).
//! - P4 and P5: a fresh sidecar per run: start to `SERVING` (gRPC health), RSS idle, RSS with
//!   many open streams after one event has reached all of them; binary size.
//! - P6: the sidecar on PostgreSQL, a new database per run (see [`crate::postgres`]):
//!   `GetStatus` at saturation on one replica (P1's load, next to P1's no-op baseline), then a
//!   second replica on the same database, notifications POSTed to the first until their events
//!   arrive on a stream opened on the second (P3's load), and the durable ingest of both.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use o2o_sidecar::{
    doku::{DokuClient, DokuClientConfig, client::PAYMENT_CODE_PATH, signed_headers},
    grpc::{
        convert,
        pb::{self, o2o_payments_client::O2oPaymentsClient},
    },
    secret::SecretSource,
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::{sync::mpsc, time::Instant};
use tonic::transport::Channel;

use crate::{
    hist::{Latencies, Summary},
    load::{PhaseReport, closed_loop, open_loop},
    postgres::{Database, Server},
    procs::{Memory, Proc},
};

/// The notification path the sidecar is configured with (its default).
const NOTIFICATION_PATH: &str = "/payments/notifications";
/// The invoice P1 reads.
pub(crate) const STATUS_INVOICE: &str = "BENCH-STATUS-0001";
/// Connections used by the closed loops and the stream fan-out.
const CONNECTIONS: usize = 4;
/// Start-ups (and restarts) timed per run in P5: one start is short and the machine is noisy.
const P5_STARTS: usize = 5;
/// Streams per connection in P4.
const STREAMS_PER_CONNECTION: usize = 100;

/// Durations and rates of one invocation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    /// Short smoke run (CI), not a measurement.
    pub(crate) smoke: bool,
    /// Repetitions of every measurement.
    pub(crate) runs: usize,
    /// P0 (one caller, one call at a time) phase length, s.
    pub(crate) p0_s: f64,
    /// P1 fixed rate, requests/s.
    pub(crate) p1_rate: f64,
    /// P1 fixed-rate phase length, s.
    pub(crate) p1_fixed_s: f64,
    /// P1 (and P6) saturation phase length, s.
    pub(crate) p1_saturation_s: f64,
    /// P1 (and P6) saturation: concurrent requests.
    pub(crate) p1_workers: usize,
    /// P2 rate, requests/s.
    pub(crate) p2_rate: f64,
    /// P2 phase length, s.
    pub(crate) p2_s: f64,
    /// P3 (and P6) notification rate, /s.
    pub(crate) p3_rate: f64,
    /// P3 (and P6) latency phase length, s.
    pub(crate) p3_s: f64,
    /// P3 (and P6) ingest phase length, s.
    pub(crate) p3_ingest_s: f64,
    /// P3 (and P6, over two replicas) ingest: concurrent POSTs.
    pub(crate) p3_ingest_workers: usize,
    /// P4 open streams.
    pub(crate) p4_streams: usize,
    /// Quiet time before reading the idle RSS, s.
    pub(crate) p4_settle_s: f64,
    /// Extra environment of every sidecar process (`--sidecar-env`), for trying settings.
    pub(crate) sidecar_env: Vec<(String, String)>,
}

impl Plan {
    /// The full plan (`smoke = false`) or the CI smoke plan.
    pub(crate) fn new(smoke: bool, runs: usize) -> Self {
        let scale = if smoke { 0.05 } else { 1.0 };
        Self {
            smoke,
            runs,
            p0_s: 5.0 * scale,
            p1_rate: 1000.0,
            p1_fixed_s: 10.0 * scale,
            p1_saturation_s: 5.0 * scale,
            p1_workers: 64,
            p2_rate: 100.0,
            p2_s: 10.0 * scale,
            p3_rate: 500.0,
            p3_s: 10.0 * scale,
            p3_ingest_s: 5.0 * scale,
            p3_ingest_workers: 32,
            p4_streams: 1000,
            p4_settle_s: if smoke { 0.2 } else { 1.0 },
            sidecar_env: Vec::new(),
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    /// P0: one caller, one GetStatus at a time, no-op server (its handler awaits once).
    pub(crate) p0_status_baseline: PhaseReport,
    /// P0: one caller, one GetStatus at a time, sidecar.
    pub(crate) p0_status_sidecar: PhaseReport,
    /// P0: one caller, one signed request at a time, straight to the simulator.
    pub(crate) p0_generate_direct: PhaseReport,
    /// P0: one caller, one GeneratePaymentCode at a time, through the sidecar.
    pub(crate) p0_generate_sidecar: PhaseReport,
    /// P1 at the fixed rate, no-op server.
    pub(crate) p1_fixed_baseline: PhaseReport,
    /// P1 at the fixed rate, sidecar.
    pub(crate) p1_fixed_sidecar: PhaseReport,
    /// P1 at saturation, no-op server.
    pub(crate) p1_saturation_baseline: PhaseReport,
    /// P1 at saturation, sidecar.
    pub(crate) p1_saturation_sidecar: PhaseReport,
    /// Server CPU time per request at saturation, µs, no-op server.
    pub(crate) p1_cpu_us_baseline: f64,
    /// Server CPU time per request at saturation, µs, sidecar.
    pub(crate) p1_cpu_us_sidecar: f64,
    /// P2 straight to the simulator.
    pub(crate) p2_direct: PhaseReport,
    /// P2 through the sidecar.
    pub(crate) p2_sidecar: PhaseReport,
    /// Server CPU time per GeneratePaymentCode, µs, sidecar.
    pub(crate) p2_cpu_us_sidecar: f64,
    /// P2's stack alone: CPU per GeneratePaymentCode of the no-op server at P2's rate, µs.
    pub(crate) p2_cpu_us_noop: f64,
    /// P2's stack alone: the simulator's CPU per POST + how-to-pay GET sent straight to it at
    /// P2's rate, µs.
    pub(crate) p2_cpu_us_sim: f64,
    /// P3: POST until `200`.
    pub(crate) p3_ack: PhaseReport,
    /// P3: POST due until the event is on the stream.
    pub(crate) p3_event: Summary,
    /// P3: accepted notifications whose event never reached the stream.
    pub(crate) p3_events_missing: u64,
    /// P3: closed-loop ingest.
    pub(crate) p3_ingest: PhaseReport,
    /// The disk under the store: 4 KiB page rewrite + `fsync`, one after another.
    pub(crate) disk_fsync: Summary,
    /// P4: resident memory of a fresh sidecar after start-up.
    pub(crate) p4_idle: Memory,
    /// P4: resident memory with the streams open, after one event reached all of them.
    pub(crate) p4_streams: Memory,
    /// P4: from the POST until the last stream has the event, ms.
    pub(crate) p4_fanout_ms: f64,
    /// P5: spawn until gRPC health answers SERVING, new SQLite file (migrations run), ms;
    /// the median of [`P5_STARTS`] starts.
    pub(crate) p5_start_ms: f64,
    /// P5: the same on the store the previous process left (a restart), ms; median.
    pub(crate) p5_restart_ms: f64,
    /// P5: every start, ms.
    pub(crate) p5_start_samples: Vec<f64>,
    /// P5: every restart, ms.
    pub(crate) p5_restart_samples: Vec<f64>,
    /// P6: the sidecar on PostgreSQL, or why it was not measured.
    pub(crate) p6: P6,
}

/// The P6 measurements of one run, or why there are none: PostgreSQL is optional for the
/// harness (a machine without a server still gets every other row).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum P6 {
    /// Measured.
    Measured(Box<Postgres>),
    /// Not measured, and why (the server could not be reached, `psql` is missing, …).
    NotMeasured(String),
}

/// The sidecar on PostgreSQL in one run: replicas A and B on a database of their own.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Postgres {
    /// The server: version and durability settings.
    pub(crate) server: Server,
    /// `GetStatus` at saturation on A alone (P1's load).
    pub(crate) saturation: PhaseReport,
    /// A's CPU time per `GetStatus` at saturation, µs (PostgreSQL's own not counted).
    pub(crate) saturation_cpu_us: f64,
    /// POSTed to A, event awaited on a stream on B (P3's loads); ingest split over A and B.
    #[serde(flatten)]
    pub(crate) notifications: Notifications,
}

/// Results that are not repeated per run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Once {
    /// Size of the sidecar binary as built, bytes.
    pub(crate) binary_bytes: u64,
    /// Size after `strip` (the release profile already strips symbols), bytes.
    pub(crate) stripped_bytes: Option<u64>,
    /// Resident memory of the long-running sidecar after all runs' load.
    pub(crate) after_load: Memory,
}

/// The processes and clients shared by all runs.
#[derive(Debug)]
pub(crate) struct Rig {
    plan: Plan,
    bin_dir: PathBuf,
    work: PathBuf,
    client_id: String,
    secret: String,
    key_file: PathBuf,
    sim: Proc,
    sim_url: String,
    sidecar: Proc,
    grpc: SocketAddr,
    notify_url: String,
    noop: Proc,
    noop_addr: SocketAddr,
    http: reqwest::Client,
    doku: DokuClient,
    /// The admin URL P6 creates and drops its databases with (`--postgres`).
    postgres: String,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

fn request(invoice: &str) -> pb::GeneratePaymentCodeRequest {
    pb::GeneratePaymentCodeRequest {
        invoice_number: invoice.into(),
        amount: 150_000,
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

/// A DOKU notification body, as in the sidecar's integration tests.
fn notification_body(invoice: &str, code: impl std::fmt::Display) -> String {
    format!(
        r#"{{"service":{{"id":"ONLINE_TO_OFFLINE"}},"acquirer":{{"id":"INDOMARET"}},"channel":{{"id":"ONLINE_TO_OFFLINE_INDOMARET"}},"transaction":{{"status":"SUCCESS","date":"2026-11-25T07:06:28Z","original_request_id":"5b8e438f-fac1-4103-9e0e-ebfdc38b5acb"}},"order":{{"invoice_number":"{invoice}","amount":150000}},"online_to_offline_info":{{"payment_code":"{code}"}}}}"#
    )
}

/// What a notification POST needs.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    http: reqwest::Client,
    url: String,
    client_id: Arc<str>,
    secret: Arc<str>,
}

impl Notifier {
    /// POSTs a DOKU-signed `SUCCESS` notification for `invoice` paid with `code`; `Ok` on
    /// `200`.
    pub(crate) async fn post(
        &self,
        invoice: &str,
        code: impl std::fmt::Display,
    ) -> Result<(), String> {
        let body = notification_body(invoice, code);
        let request_id = uuid::Uuid::new_v4().to_string();
        let headers = signed_headers(
            &self.client_id,
            self.secret.as_bytes(),
            &request_id,
            OffsetDateTime::now_utc(),
            NOTIFICATION_PATH,
            Some(body.as_bytes()),
        );
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| format!("POST: {e}"))?;
        match resp.status().as_u16() {
            200 => Ok(()),
            s => Err(format!("notification answered {s}")),
        }
    }
}

/// Events arriving on one open `StreamNotifications` stream: `(invoice, when)`.
struct Watch {
    rx: mpsc::UnboundedReceiver<(String, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Opens a stream of new events and starts reading it.
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut client = O2oPaymentsClient::new(connect(addr).await?);
        let mut stream = client
            .stream_notifications(pb::StreamNotificationsRequest::default())
            .await?
            .into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                let at = Instant::now();
                if let Some(n) = msg.notification
                    && tx.send((n.invoice_number, at)).is_err()
                {
                    break;
                }
            }
        });
        Ok(Self { rx, task })
    }

    /// Waits (at most `within`) until every invoice in `due` has arrived; returns the
    /// latencies from due time to arrival and how many never arrived.
    async fn collect(
        &mut self,
        mut due: HashMap<String, Instant>,
        within: Duration,
    ) -> (Latencies, u64) {
        let mut lat = Latencies::default();
        let deadline = Instant::now() + within;
        while !due.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((invoice, at))) => {
                    if let Some(d) = due.remove(&invoice) {
                        lat.record(at.saturating_duration_since(d));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        (lat, due.len() as u64)
    }

    /// Discards what has arrived so far.
    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Rig {
    /// Starts the simulator, the no-op server and the sidecar, and creates the payment P1 reads;
    /// P6 will use the PostgreSQL server at the admin URL `postgres`.
    pub(crate) async fn start(
        plan: Plan,
        bin_dir: PathBuf,
        work: PathBuf,
        postgres: String,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&work)?;
        let client_id = "MCH-0001-BENCH0000001".to_owned();
        let secret = format!("SK-bench-{}", uuid::Uuid::new_v4().simple());
        let key_file = work.join("doku-secret-key");
        std::fs::write(&key_file, &secret)?;

        let sim = Proc::spawn(
            "doku-sim",
            &bin_dir.join("doku-sim"),
            &[
                "--addr".into(),
                "127.0.0.1:0".into(),
                "--client-id".into(),
                client_id.clone(),
                "--secret-key-file".into(),
                key_file.display().to_string(),
            ],
            &[],
            "doku-sim listening",
            work.join("doku-sim.log"),
        )
        .await?;
        let sim_url = format!("http://{}", sim.addr("addr")?);

        let noop = Proc::spawn(
            "noop-server",
            &std::env::current_exe()?,
            &["noop-server".into()],
            &[],
            "noop-server listening",
            work.join("noop-server.log"),
        )
        .await?;
        let noop_addr = noop.addr("addr")?;

        let sidecar = spawn_sidecar(
            &plan,
            &bin_dir,
            &work.join("main"),
            &sqlite_store(&work.join("main")),
            &sim_url,
            &client_id,
            &key_file,
        )
        .await?;
        let grpc = sidecar.addr("grpc_addr")?;
        let notify_url = notify_url(&sidecar)?;

        let doku = DokuClient::new(
            DokuClientConfig {
                base_url: sim_url.clone(),
                client_id: client_id.clone(),
                ..DokuClientConfig::default()
            },
            SecretSource::fixed(secret.clone()),
        )?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;

        create_status_payment(grpc, STATUS_INVOICE).await?;
        Ok(Self {
            plan,
            bin_dir,
            work,
            client_id,
            secret,
            key_file,
            sim,
            sim_url,
            sidecar,
            grpc,
            notify_url,
            noop,
            noop_addr,
            http,
            doku,
            postgres,
        })
    }
}

/// Creates the payment `invoice` that P1 (or P6) reads, through the sidecar at `grpc`.
async fn create_status_payment(grpc: SocketAddr, invoice: &str) -> anyhow::Result<()> {
    let mut client = O2oPaymentsClient::new(connect(grpc).await?);
    let payment = client
        .generate_payment_code(request(invoice))
        .await
        .with_context(|| format!("GeneratePaymentCode for {invoice}, the invoice GetStatus reads"))?
        .into_inner()
        .payment
        .context("no payment")?;
    if payment.payment_code.is_empty() {
        bail!("the payment of {invoice} has no code");
    }
    Ok(())
}

/// The notification URL of the sidecar `proc`.
fn notify_url(proc: &Proc) -> anyhow::Result<String> {
    Ok(format!(
        "http://{}{NOTIFICATION_PATH}",
        proc.addr("http_addr")?
    ))
}

/// `--store` for a SQLite file in `dir` (new, or the one an earlier sidecar left there).
fn sqlite_store(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("o2o.db").display())
}

/// Starts `o2o-sidecar serve` on port 0 on `store` (a `--store` URL), logging into `dir`.
async fn spawn_sidecar(
    plan: &Plan,
    bin_dir: &Path,
    dir: &Path,
    store: &str,
    sim_url: &str,
    client_id: &str,
    key_file: &Path,
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let arg = |s: &str| s.to_owned();
    // The sidecar fetches each code's how-to-pay JSON from the simulator, as it does from
    // DOKU in production (an env twin, which a baseline binary without the flag ignores).
    let mut envs: Vec<(&str, &str)> = vec![("O2O_HOW_TO_PAY_HOSTS", sim_url)];
    envs.extend(
        plan.sidecar_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    Proc::spawn(
        "o2o-sidecar",
        &bin_dir.join("o2o-sidecar"),
        &[
            arg("serve"),
            arg("--grpc-addr"),
            arg("127.0.0.1:0"),
            arg("--http-addr"),
            arg("127.0.0.1:0"),
            arg("--admin-addr"),
            arg("127.0.0.1:0"),
            arg("--doku-base-url"),
            arg(sim_url),
            arg("--doku-client-id"),
            arg(client_id),
            arg("--doku-secret-key-file"),
            key_file.display().to_string(),
            arg("--store"),
            arg(store),
        ],
        &envs,
        "o2o-sidecar serving",
        dir.join("o2o-sidecar.log"),
    )
    .await
}

/// `GetStatus` of `invoice`, from the store (`refresh=false`).
pub(crate) async fn get_status_of(
    mut client: O2oPaymentsClient<Channel>,
    invoice: String,
) -> Result<(), String> {
    client
        .get_status(pb::GetStatusRequest {
            invoice_number: invoice,
            refresh: false,
        })
        .await
        .map(drop)
        .map_err(|s| format!("GetStatus: {s}"))
}

/// A short closed loop of `GetStatus` of `invoice` that opens connections and warms caches
/// before a measurement.
async fn warm_up(clients: &Arc<Vec<O2oPaymentsClient<Channel>>>, plan: &Plan, invoice: &str) {
    let (clients, invoice) = (clients.clone(), invoice.to_owned());
    let d = if plan.smoke { 0.05 } else { 0.5 };
    let _ = closed_loop(8, secs(d), move |i| {
        get_status_of(clients[i as usize % clients.len()].clone(), invoice.clone())
    })
    .await;
}

/// `n` clients of the service at `addr`, each on its own connection.
pub(crate) async fn clients(
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<Arc<Vec<O2oPaymentsClient<Channel>>>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(O2oPaymentsClient::new(connect(addr).await?));
    }
    Ok(Arc::new(v))
}

/// P0: one caller on one connection making one GetStatus at a time (how most services call a
/// sidecar): every answer is awaited before the next call, so a delay per answer (Nagle's
/// algorithm waiting for a delayed ACK) shows in full.
async fn get_status_sequential(addr: SocketAddr, plan: &Plan) -> anyhow::Result<PhaseReport> {
    let clients = clients(addr, 1).await?;
    warm_up(&clients, plan, STATUS_INVOICE).await;
    let client = clients[0].clone();
    let out = closed_loop(1, secs(plan.p0_s), move |_| {
        get_status_of(client.clone(), STATUS_INVOICE.into())
    })
    .await;
    Ok(out.report())
}

/// P1 at the fixed rate, on one connection (as an application would call its sidecar).
async fn get_status_fixed(addr: SocketAddr, plan: &Plan) -> anyhow::Result<PhaseReport> {
    let clients = clients(addr, 1).await?;
    warm_up(&clients, plan, STATUS_INVOICE).await;
    let client = clients[0].clone();
    let out = open_loop(plan.p1_rate, secs(plan.p1_fixed_s), move |_, _| {
        get_status_of(client.clone(), STATUS_INVOICE.into())
    })
    .await;
    Ok(out.report())
}

/// P1 (and P6) at saturation, `GetStatus` of `invoice` from the server `server` at `addr`;
/// also its CPU time per request, µs.
async fn get_status_saturation(
    addr: SocketAddr,
    server: &Proc,
    plan: &Plan,
    invoice: &str,
) -> anyhow::Result<(PhaseReport, f64)> {
    let clients = clients(addr, CONNECTIONS).await?;
    warm_up(&clients, plan, invoice).await;
    let cpu_before = server.cpu_time()?;
    let invoice = invoice.to_owned();
    let out = closed_loop(plan.p1_workers, secs(plan.p1_saturation_s), move |i| {
        get_status_of(clients[i as usize % CONNECTIONS].clone(), invoice.clone())
    })
    .await;
    let cpu = server.cpu_time()?.saturating_sub(cpu_before);
    Ok((out.report(), per_request_us(cpu, out.latencies.count())))
}

/// Latency of `n` 4 KiB page writes, each followed by `fsync`, in a preallocated file in
/// `dir` (the directory of the SQLite store): what one durable commit costs at least on this
/// disk. SQLite commits in WAL mode the same way (frames written into a WAL file that is reused
/// after checkpoints, then one `fsync`).
fn fsync_probe(dir: &Path, n: usize) -> anyhow::Result<Latencies> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let page = [0x5au8; 4096];
    for _ in 0..n {
        file.write_all(&page)?;
    }
    file.sync_all()?;
    let mut lat = Latencies::default();
    for i in 0..n {
        file.seek(SeekFrom::Start(4096 * i as u64))?;
        file.write_all(&page)?;
        let t = Instant::now();
        file.sync_all()?;
        lat.record(t.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(lat)
}

/// Milliseconds from spawning `proc` until its gRPC health check answers SERVING.
async fn until_serving(proc: &Proc) -> anyhow::Result<f64> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(connect(proc.addr("grpc_addr")?).await?);
    let answer = health
        .check(HealthCheckRequest {
            service: "o2o.v1.O2OPayments".into(),
        })
        .await?
        .into_inner();
    let ms = proc.spawned.elapsed().as_secs_f64() * 1e3;
    if answer.status != ServingStatus::Serving as i32 {
        bail!("the sidecar is not SERVING: {answer:?}");
    }
    Ok(ms)
}

fn per_request_us(cpu: Duration, requests: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / requests.max(1) as f64
}

/// P2's baseline: the request the sidecar would send, built and signed by the sidecar's own
/// library, sent by the harness straight to the simulator, then the GET of the how-to-pay
/// JSON its answer links to: the two DOKU round trips of every `GeneratePaymentCode`.
#[derive(Debug)]
struct Direct {
    doku: DokuClient,
    http: reqwest::Client,
    url: String,
    client_id: String,
    secret: String,
}

impl Direct {
    async fn send(&self, invoice: &str) -> Result<(), String> {
        let input = convert::payment_code_input(request(invoice));
        let payment = input
            .validate(NOTIFICATION_PATH)
            .map_err(|v| format!("invalid request: {v:?}"))?;
        let prepared = self.doku.prepare_payment_code(&payment);
        let headers = signed_headers(
            &self.client_id,
            self.secret.as_bytes(),
            &prepared.request_id,
            OffsetDateTime::now_utc(),
            PAYMENT_CODE_PATH,
            Some(&prepared.body),
        );
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(prepared.body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| format!("POST: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
        if status != 200 {
            return Err(format!(
                "simulator answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        // Then the how-to-pay JSON the answer links to: the sidecar fetches it on every call
        // (its instructions commit with the code), so the baseline does the same DOKU work.
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("answer: {e}"))?;
        let url = answer["online_to_offline_info"]["how_to_pay_api"]
            .as_str()
            .ok_or("the answer has no online_to_offline_info.how_to_pay_api")?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET how_to_pay_api: {e}"))?;
        let status = resp.status().as_u16();
        resp.bytes()
            .await
            .map_err(|e| format!("how-to-pay body: {e}"))?;
        if status != 200 {
            return Err(format!("how_to_pay_api answered {status}"));
        }
        Ok(())
    }
}

/// `GeneratePaymentCode` for `invoice`; `Ok` when the answer has a payment code.
async fn generate(client: O2oPaymentsClient<Channel>, invoice: String) -> Result<(), String> {
    generate_code(client, invoice).await.map(drop)
}

/// `GeneratePaymentCode` for `invoice`; the payment code issued.
pub(crate) async fn generate_code(
    mut client: O2oPaymentsClient<Channel>,
    invoice: String,
) -> Result<String, String> {
    let payment = client
        .generate_payment_code(request(&invoice))
        .await
        .map_err(|s| format!("GeneratePaymentCode: {s}"))?
        .into_inner()
        .payment
        .ok_or("no payment")?;
    if payment.payment_code.is_empty() {
        return Err("no payment code".into());
    }
    Ok(payment.payment_code)
}

/// Latencies of one P3 (or P6) run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Notifications {
    /// POST until `200`.
    pub(crate) ack: PhaseReport,
    /// POST due until the event is on the stream.
    pub(crate) event: Summary,
    /// Accepted notifications whose event never reached the stream.
    pub(crate) missing: u64,
    /// Closed-loop ingest.
    pub(crate) ingest: PhaseReport,
}

/// Where [`Rig::notifications`] sends and watches: P3's one sidecar, or P6's two replicas.
#[derive(Debug)]
struct NotifyTargets {
    /// First part of every invoice number, so that measurements never share an invoice.
    tag: &'static str,
    /// The latency phase POSTs here…
    post: Notifier,
    /// …and awaits each event on a stream opened on this gRPC address.
    watch: SocketAddr,
    /// The ingest phase POSTs to these in turn (request `i` to `ingest[i % len]`).
    ingest: Vec<Notifier>,
}

/// P4 and P5 of one fresh sidecar.
#[derive(Debug)]
struct Fresh {
    starts: Vec<f64>,
    restarts: Vec<f64>,
    idle: Memory,
    streams: Memory,
    fanout_ms: f64,
}

/// Locks `m`, whether or not a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Rig {
    /// The long-running sidecar's gRPC address.
    pub(crate) fn grpc(&self) -> SocketAddr {
        self.grpc
    }

    /// The long-running sidecar's process.
    pub(crate) fn sidecar(&self) -> &Proc {
        &self.sidecar
    }

    /// Signed notification POSTs to the long-running sidecar.
    pub(crate) fn sidecar_notifier(&self) -> Notifier {
        self.notifier(self.notify_url.clone())
    }

    fn notifier(&self, url: String) -> Notifier {
        Notifier {
            http: self.http.clone(),
            url,
            client_id: self.client_id.as_str().into(),
            secret: self.secret.as_str().into(),
        }
    }

    /// One run of every measurement.
    pub(crate) async fn run(&self, r: usize) -> anyhow::Result<RunResult> {
        let plan = &self.plan;
        let say = |what: &str| eprintln!("o2o-bench: run {}/{}: {what}", r + 1, plan.runs);

        say("P0 one caller, one call at a time (GetStatus, GeneratePaymentCode)");
        let p0_status_baseline = get_status_sequential(self.noop_addr, plan).await?;
        let p0_status_sidecar = get_status_sequential(self.grpc, plan).await?;
        let (p0_generate_direct, p0_generate_sidecar) = self.generate_sequential(r).await?;

        say("P1 GetStatus at a fixed rate (baseline, sidecar)");
        let p1_fixed_baseline = get_status_fixed(self.noop_addr, plan).await?;
        let p1_fixed_sidecar = get_status_fixed(self.grpc, plan).await?;
        say("P1 GetStatus at saturation (baseline, sidecar)");
        let (p1_saturation_baseline, p1_cpu_us_baseline) =
            get_status_saturation(self.noop_addr, &self.noop, plan, STATUS_INVOICE).await?;
        let (p1_saturation_sidecar, p1_cpu_us_sidecar) =
            get_status_saturation(self.grpc, &self.sidecar, plan, STATUS_INVOICE).await?;

        say("P2 GeneratePaymentCode (straight to the simulator, through the sidecar)");
        let (p2_direct, p2_cpu_us_sim) = self.generate_direct(r).await?;
        let (p2_noop, p2_cpu_us_noop) = self
            .generate_at_rate(self.noop_addr, &self.noop, "N", r)
            .await?;
        if p2_noop.errors > 0 {
            bail!(
                "{} GeneratePaymentCode calls to the no-op server failed: {}",
                p2_noop.errors,
                p2_noop.first_error.unwrap_or_default()
            );
        }
        let (p2_sidecar, p2_cpu_us_sidecar) = self
            .generate_at_rate(self.grpc, &self.sidecar, "S", r)
            .await?;

        say("P3 notification to stream event, durable ingest; fsync of the store's disk");
        let sidecar = self.notifier(self.notify_url.clone());
        let n = self
            .notifications(
                r,
                NotifyTargets {
                    tag: "P3",
                    post: sidecar.clone(),
                    watch: self.grpc,
                    ingest: vec![sidecar],
                },
            )
            .await?;
        let dir = self.work.join("main");
        let disk_fsync = tokio::task::spawn_blocking(move || fsync_probe(&dir, 200))
            .await??
            .summary();

        say("P4/P5 fresh sidecar: start-up, idle RSS, open streams");
        let f = self.fresh(r).await?;

        say("P6 PostgreSQL: GetStatus at saturation, notification A → stream on B, ingest A+B");
        let p6 = self.postgres(r).await?;

        Ok(RunResult {
            p0_status_baseline,
            p0_status_sidecar,
            p0_generate_direct,
            p0_generate_sidecar,
            p1_fixed_baseline,
            p1_fixed_sidecar,
            p1_saturation_baseline,
            p1_saturation_sidecar,
            p1_cpu_us_baseline,
            p1_cpu_us_sidecar,
            p2_direct,
            p2_sidecar,
            p2_cpu_us_sidecar,
            p2_cpu_us_noop,
            p2_cpu_us_sim,
            p3_ack: n.ack,
            p3_event: n.event,
            p3_events_missing: n.missing,
            p3_ingest: n.ingest,
            disk_fsync,
            p4_idle: f.idle,
            p4_streams: f.streams,
            p4_fanout_ms: f.fanout_ms,
            p5_start_ms: crate::report::median(&f.starts),
            p5_restart_ms: crate::report::median(&f.restarts),
            p5_start_samples: f.starts,
            p5_restart_samples: f.restarts,
            p6,
        })
    }

    /// P6 of run `r` on a database of its own, dropped afterwards whatever happened;
    /// [`P6::NotMeasured`] when it cannot be created (PostgreSQL unreachable, `psql` missing).
    async fn postgres(&self, r: usize) -> anyhow::Result<P6> {
        let name = format!("o2o_bench_{}_{r}", std::process::id());
        let db = match Database::create(&self.postgres, &name).await {
            Ok(db) => db,
            Err(reason) => {
                eprintln!("o2o-bench: P6 not measured: {reason}");
                return Ok(P6::NotMeasured(reason));
            }
        };
        let measured = self.on_postgres(r, &db).await;
        // A failure to drop does not spoil the figures: say so, the database is named.
        if let Err(e) = db.drop().await {
            eprintln!("o2o-bench: warning: {e:#}");
        }
        Ok(P6::Measured(Box::new(measured?)))
    }

    /// P6's measurements on `db`: replica A alone for `GetStatus` (P1's saturation load: one
    /// replica, as P1's one sidecar), then B beside it for P3's loads across the two. A replica
    /// left running by an error is killed when dropped, and the database dropped with `FORCE`.
    async fn on_postgres(&self, r: usize, db: &Database) -> anyhow::Result<Postgres> {
        let plan = &self.plan;
        let dir = self.work.join(format!("postgres-{r}"));
        let replica = async |name: &str| {
            spawn_sidecar(
                plan,
                &self.bin_dir,
                &dir.join(name),
                &db.url,
                &self.sim_url,
                &self.client_id,
                &self.key_file,
            )
            .await
            .with_context(|| format!("replica {name} on PostgreSQL"))
        };
        // A alone first: it migrates the new database before B starts.
        let a = replica("a").await?;
        let a_grpc = a.addr("grpc_addr")?;
        // An invoice of its own: the simulator, shared by every run, refuses a second code
        // for P1's.
        let invoice = format!("{STATUS_INVOICE}-P6-{r}");
        create_status_payment(a_grpc, &invoice).await?;
        let (saturation, saturation_cpu_us) =
            get_status_saturation(a_grpc, &a, plan, &invoice).await?;

        let b = replica("b").await?;
        let to_a = self.notifier(notify_url(&a)?);
        let notifications = self
            .notifications(
                r,
                NotifyTargets {
                    tag: "P6",
                    post: to_a.clone(),
                    watch: b.addr("grpc_addr")?,
                    ingest: vec![to_a, self.notifier(notify_url(&b)?)],
                },
            )
            .await?;
        a.stop().await;
        b.stop().await;
        Ok(Postgres {
            server: db.server.clone(),
            saturation,
            saturation_cpu_us,
            notifications,
        })
    }

    /// P2's baseline client: the sidecar's signed request, sent straight to the simulator.
    fn direct(&self) -> Arc<Direct> {
        Arc::new(Direct {
            doku: self.doku.clone(),
            http: self.http.clone(),
            url: format!("{}{PAYMENT_CODE_PATH}", self.sim_url),
            client_id: self.client_id.clone(),
            secret: self.secret.clone(),
        })
    }

    /// P0 for GeneratePaymentCode: one signed request at a time straight to the simulator,
    /// then one call at a time through the sidecar (a new invoice each).
    async fn generate_sequential(&self, r: usize) -> anyhow::Result<(PhaseReport, PhaseReport)> {
        let direct = self.direct();
        let out = closed_loop(1, secs(self.plan.p0_s), move |i| {
            let direct = direct.clone();
            async move { direct.send(&format!("P0-D{r}-{i}")).await }
        })
        .await;
        let client = O2oPaymentsClient::new(connect(self.grpc).await?);
        let _ = generate(client.clone(), format!("P0-SW{r}")).await;
        let via = closed_loop(1, secs(self.plan.p0_s), move |i| {
            generate(client.clone(), format!("P0-S{r}-{i}"))
        })
        .await;
        Ok((out.report(), via.report()))
    }

    /// P2's baseline, and the simulator's CPU per POST + GET (µs) while it ran.
    async fn generate_direct(&self, r: usize) -> anyhow::Result<(PhaseReport, f64)> {
        let direct = self.direct();
        for i in 0..5 {
            direct
                .send(&format!("P2-DW{r}-{i}"))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let cpu_before = self.sim.cpu_time()?;
        let out = open_loop(self.plan.p2_rate, secs(self.plan.p2_s), move |i, _| {
            let direct = direct.clone();
            async move { direct.send(&format!("P2-D{r}-{i}")).await }
        })
        .await;
        let cpu = self.sim.cpu_time()?.saturating_sub(cpu_before);
        Ok((out.report(), per_request_us(cpu, out.latencies.count())))
    }

    /// P2's open loop of `GeneratePaymentCode` against `addr` (new invoices, `P2-{tag}…`)
    /// after five warm-up calls, and `server`'s CPU per call (µs) meanwhile: the sidecar, or
    /// the no-op server (what that rate costs the gRPC stack alone).
    async fn generate_at_rate(
        &self,
        addr: SocketAddr,
        server: &Proc,
        tag: &'static str,
        r: usize,
    ) -> anyhow::Result<(PhaseReport, f64)> {
        let client = O2oPaymentsClient::new(connect(addr).await?);
        for i in 0..5 {
            generate(client.clone(), format!("P2-{tag}W{r}-{i}"))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let cpu_before = server.cpu_time()?;
        let out = open_loop(self.plan.p2_rate, secs(self.plan.p2_s), move |i, _| {
            generate(client.clone(), format!("P2-{tag}{r}-{i}"))
        })
        .await;
        let cpu = server.cpu_time()?.saturating_sub(cpu_before);
        Ok((out.report(), per_request_us(cpu, out.latencies.count())))
    }

    /// P3's loads on `to`: warm-up notifications (each must reach the stream), the open loop
    /// of POSTs whose events are awaited on the stream, then the closed-loop ingest.
    async fn notifications(&self, r: usize, to: NotifyTargets) -> anyhow::Result<Notifications> {
        let plan = &self.plan;
        let NotifyTargets {
            tag,
            post: notifier,
            watch,
            ingest,
        } = to;
        if ingest.is_empty() {
            bail!("{tag}: no sidecar to send the ingest load to");
        }
        let mut watch = Watch::open(watch).await?;

        let mut warm = HashMap::new();
        for i in 0..10 {
            let invoice = format!("{tag}-W{r}-{i}");
            let at = Instant::now();
            notifier
                .post(&invoice, 6_000_000 + i)
                .await
                .map_err(anyhow::Error::msg)?;
            warm.insert(invoice, at);
        }
        let (_, missing) = watch.collect(warm, Duration::from_secs(10)).await;
        if missing > 0 {
            bail!("{missing} warm-up events never reached the stream");
        }

        let dues = Arc::new(Mutex::new(HashMap::new()));
        let (n, d) = (notifier.clone(), dues.clone());
        let ack = open_loop(plan.p3_rate, secs(plan.p3_s), move |i, due| {
            let (n, dues) = (n.clone(), d.clone());
            async move {
                let invoice = format!("{tag}-L{r}-{i}");
                lock(&dues).insert(invoice.clone(), due);
                let result = n.post(&invoice, 7_000_000 + i).await;
                if result.is_err() {
                    lock(&dues).remove(&invoice);
                }
                result
            }
        })
        .await;
        let due = std::mem::take(&mut *lock(&dues));
        let (event, missing) = watch.collect(due, Duration::from_secs(30)).await;

        let ingest = closed_loop(plan.p3_ingest_workers, secs(plan.p3_ingest_s), move |i| {
            let n = ingest[i as usize % ingest.len()].clone();
            async move { n.post(&format!("{tag}-I{r}-{i}"), 8_000_000 + i).await }
        })
        .await;
        watch.drain();
        Ok(Notifications {
            ack: ack.report(),
            event: event.summary(),
            missing,
            ingest: ingest.report(),
        })
    }

    async fn fresh(&self, r: usize) -> anyhow::Result<Fresh> {
        let plan = &self.plan;
        let dir = self.work.join(format!("fresh-{r}"));
        let proc = spawn_sidecar(
            plan,
            &self.bin_dir,
            &dir,
            &sqlite_store(&dir),
            &self.sim_url,
            &self.client_id,
            &self.key_file,
        )
        .await?;
        let start_ms = until_serving(&proc).await?;
        let grpc = proc.addr("grpc_addr")?;
        tokio::time::sleep(secs(plan.p4_settle_s)).await;
        let idle = proc.memory()?;

        let connections = plan.p4_streams.div_ceil(STREAMS_PER_CONNECTION);
        let clients = clients(grpc, connections).await?;
        let opens = (0..plan.p4_streams).map(|k| {
            let mut c = clients[k % connections].clone();
            async move {
                c.stream_notifications(pb::StreamNotificationsRequest::default())
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        let streams = futures::future::try_join_all(opens).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
        let readers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Some(_)) = s.message().await {
                        let _ = tx.send(Instant::now());
                    }
                    // Keep the stream open until the measurement is over.
                    std::future::pending::<()>().await;
                })
            })
            .collect();
        let notifier = self.notifier(notify_url(&proc)?);
        let sent = Instant::now();
        notifier
            .post(&format!("P4-{r}"), 9_000_000 + r as u64)
            .await
            .map_err(anyhow::Error::msg)?;
        let deadline = sent + Duration::from_secs(30);
        let mut last = sent;
        for got in 0..plan.p4_streams {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(at)) => last = last.max(at),
                _ => bail!(
                    "only {got} of {} streams received the event",
                    plan.p4_streams
                ),
            }
        }
        let streams = proc.memory()?;
        for reader in readers {
            reader.abort();
        }
        proc.stop().await;
        let (mut starts, mut restarts) = (vec![start_ms], Vec::new());
        for k in 0..P5_STARTS {
            let dir = if k == 0 {
                dir.clone()
            } else {
                self.work.join(format!("fresh-{r}-{k}"))
            };
            if k > 0 {
                starts.push(self.start_and_stop(&dir).await?);
            }
            restarts.push(self.start_and_stop(&dir).await?);
        }
        Ok(Fresh {
            starts,
            restarts,
            idle,
            streams,
            fanout_ms: (last - sent).as_secs_f64() * 1e3,
        })
    }

    /// Starts a sidecar on the store in `dir` (new or left by an earlier one), times it until
    /// SERVING, stops it.
    async fn start_and_stop(&self, dir: &Path) -> anyhow::Result<f64> {
        let proc = spawn_sidecar(
            &self.plan,
            &self.bin_dir,
            dir,
            &sqlite_store(dir),
            &self.sim_url,
            &self.client_id,
            &self.key_file,
        )
        .await?;
        let ms = until_serving(&proc).await;
        proc.stop().await;
        ms
    }

    /// Binary size and the long-running sidecar's RSS after all the load.
    pub(crate) async fn once(&self) -> anyhow::Result<Once> {
        let bin = self.bin_dir.join("o2o-sidecar");
        let binary_bytes = std::fs::metadata(&bin)?.len();
        let stripped = self.work.join("o2o-sidecar.stripped");
        let status = tokio::process::Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&bin)
            .status()
            .await;
        let stripped_bytes = match status {
            Ok(s) if s.success() => Some(std::fs::metadata(&stripped)?.len()),
            _ => None,
        };
        tokio::time::sleep(secs(self.plan.p4_settle_s)).await;
        Ok(Once {
            binary_bytes,
            stripped_bytes,
            after_load: self.sidecar.memory()?,
        })
    }

    /// Stops every process; removes the work directory unless `keep`.
    pub(crate) async fn stop(self, keep: bool) {
        self.sidecar.stop().await;
        self.noop.stop().await;
        self.sim.stop().await;
        if keep {
            eprintln!("o2o-bench: logs and stores kept in {}", self.work.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}
