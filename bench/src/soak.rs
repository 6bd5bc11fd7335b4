//! The soak (`--soak 30m`): constant mixed load against one sidecar for a long time, to find
//! leaks and errors rather than limits. Every rate is well below what two shared cores sustain,
//! so nothing queues and a rising memory curve or a failure means something is wrong, not that
//! the machine was saturated.
//!
//! For the whole duration, each as an open loop: `GeneratePaymentCode` for new invoices,
//! `GetStatus` of recently generated invoices, DOKU-signed `SUCCESS` notifications POSTed to
//! the sidecar (each pays the oldest payment generated and not yet paid, else an invoice the
//! sidecar did not create; either way the payment moves to PAID and one event is committed),
//! while [`SoakPlan::streams`] `StreamNotifications` streams stay open and keep reading. Every
//! notification's event must reach every stream, in event-id order. The sidecar's memory,
//! open files and CPU time are sampled every [`SAMPLE_EVERY`].

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use o2o_sidecar::grpc::pb;
use serde::Serialize;
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

use crate::{
    hist::{Latencies, Summary},
    load::{PhaseReport, open_loop},
    machine::Machine,
    procs::{Memory, Proc},
    report::{Unit, machine_and_env, problems_and_rest, show, thousands},
    scenarios::{Rig, STATUS_INVOICE, clients, generate_code, get_status_of, lock},
};

/// How often the sidecar is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The shortest warm-up (see [`warm_up`]).
const MIN_WARM_UP: Duration = Duration::from_secs(120);
/// How long the last notifications' events may take to reach every stream after the load.
const SETTLE: Duration = Duration::from_secs(30);
/// How many of the latest generated invoices `GetStatus` reads in turn.
const RECENT: usize = 1000;
/// Connections the streams are spread over.
const STREAM_CONNECTIONS: usize = 4;

/// What a soak runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakPlan {
    /// Length of the load, s.
    pub(crate) duration_s: f64,
    /// `GeneratePaymentCode` calls per second.
    pub(crate) generate_rate: f64,
    /// `GetStatus` calls per second.
    pub(crate) status_rate: f64,
    /// Notification POSTs per second.
    pub(crate) notification_rate: f64,
    /// Open `StreamNotifications` streams.
    pub(crate) streams: usize,
    /// Seconds between samples of the sidecar.
    pub(crate) sample_every_s: f64,
    /// Samples before this time (s) are warm-up: not in the growth fit.
    pub(crate) warm_up_s: f64,
    /// Extra environment of the sidecar process (`--sidecar-env`).
    pub(crate) sidecar_env: Vec<(String, String)>,
}

impl SoakPlan {
    /// The soak's rates for a load of `duration`.
    ///
    /// 50 `GeneratePaymentCode`/s (about 11% of a core in the sidecar at 2.25 ms CPU each,
    /// half of P2's rate), 200 `GetStatus`/s (one fifth of P1's fixed rate; ~3% of a core), 100
    /// notifications/s (a fifth of P3's rate, a seventh of its measured durable ingest), each
    /// event fanned out to 100 streams (10,000 stream messages/s, the largest share of the
    /// work): together well under one of two shared cores, so nothing queues.
    pub(crate) fn new(duration: Duration, sidecar_env: Vec<(String, String)>) -> Self {
        Self {
            duration_s: duration.as_secs_f64(),
            generate_rate: 50.0,
            status_rate: 200.0,
            notification_rate: 100.0,
            streams: 100,
            sample_every_s: SAMPLE_EVERY.as_secs_f64(),
            warm_up_s: warm_up(duration).as_secs_f64(),
            sidecar_env,
        }
    }
}

/// Parses the soak's length, a humantime duration (`30m`, `90s`, `1h30m`), at least 1 s.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 30m or 90s: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: a soak lasts at least 1s"));
    }
    Ok(d)
}

/// The warm-up of a soak of `total`: 2 minutes or 10% of the run, whichever is later, but at
/// most half the run (so that a short try still has samples to fit).
pub(crate) fn warm_up(total: Duration) -> Duration {
    MIN_WARM_UP.max(total / 10).min(total / 2)
}

/// The samples from the first one at or after `warm_up_s`.
pub(crate) fn after_warm_up(samples: &[Sample], warm_up_s: f64) -> &[Sample] {
    let from = samples
        .iter()
        .position(|s| s.t_s >= warm_up_s)
        .unwrap_or(samples.len());
    &samples[from..]
}

/// The least-squares slope of `y` over `x`; `None` for fewer than two distinct `x`.
pub(crate) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (sxx, sxy) = points.iter().fold((0.0, 0.0), |(sxx, sxy), (x, y)| {
        let dx = x - mean_x;
        (sxx + dx * dx, sxy + dx * (y - mean_y))
    });
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The sidecar at one moment of the soak.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the load started.
    pub(crate) t_s: f64,
    /// Resident memory.
    #[serde(flatten)]
    pub(crate) memory: Memory,
    /// Open file descriptors.
    pub(crate) open_files: u64,
    /// CPU time used since the load started, s.
    pub(crate) cpu_s: f64,
}

/// The memory curve in a few numbers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Curve {
    /// The first sample at or after the warm-up.
    pub(crate) after_warm_up: Sample,
    /// The last sample (the end of the load).
    pub(crate) end: Sample,
    /// Largest RSS of any sample, bytes.
    pub(crate) max_rss: u64,
    /// Largest anonymous RSS of any sample, bytes.
    pub(crate) max_anon: u64,
    /// Most open files of any sample.
    pub(crate) max_open_files: u64,
    /// RSS growth, bytes per hour: least squares over the samples after the warm-up.
    pub(crate) rss_per_hour: Option<f64>,
    /// Anonymous RSS growth, bytes per hour, fitted the same way.
    pub(crate) anon_per_hour: Option<f64>,
    /// Open files growth per hour, fitted the same way.
    pub(crate) open_files_per_hour: Option<f64>,
    /// Samples in the fit.
    pub(crate) fitted: usize,
}

/// The curve of `samples` with the warm-up cut at `warm_up_s`; `None` without a sample after it.
pub(crate) fn curve(samples: &[Sample], warm_up_s: f64) -> Option<Curve> {
    let fit = after_warm_up(samples, warm_up_s);
    let per_hour = |f: &dyn Fn(&Sample) -> f64| {
        let points: Vec<(f64, f64)> = fit.iter().map(|s| (s.t_s, f(s))).collect();
        slope(&points).map(|per_s| per_s * 3600.0)
    };
    Some(Curve {
        after_warm_up: *fit.first()?,
        end: *fit.last()?,
        max_rss: samples.iter().map(|s| s.memory.rss).max()?,
        max_anon: samples.iter().map(|s| s.memory.anon).max()?,
        max_open_files: samples.iter().map(|s| s.open_files).max()?,
        rss_per_hour: per_hour(&|s| s.memory.rss as f64),
        anon_per_hour: per_hour(&|s| s.memory.anon as f64),
        open_files_per_hour: per_hour(&|s| s.open_files as f64),
        fitted: fit.len(),
    })
}

/// The events each accepted notification must bring to every stream: for each invoice whose
/// notification is under way, when it was due and how many streams have its event so far.
#[derive(Debug)]
struct Fanout {
    streams: u64,
    state: Mutex<FanoutState>,
}

/// [`Fanout`]'s books.
#[derive(Debug, Default)]
struct FanoutState {
    /// Invoice → (notification due, streams that have its event).
    pending: HashMap<String, (Instant, u64)>,
    /// From the notification's due time until its event was on the last stream.
    everywhere: Latencies,
    /// Stream messages about invoices no notification of the soak waits for.
    other: u64,
}

impl Fanout {
    fn new(streams: usize) -> Self {
        Self {
            streams: streams as u64,
            state: Mutex::new(FanoutState::default()),
        }
    }

    /// A notification for `invoice`, due at `due`, is about to be sent.
    fn expect(&self, invoice: String, due: Instant) {
        lock(&self.state).pending.insert(invoice, (due, 0));
    }

    /// Its POST failed: its event is not owed.
    fn forget(&self, invoice: &str) {
        lock(&self.state).pending.remove(invoice);
    }

    /// One stream received the event of `invoice` at `at`.
    fn seen(&self, invoice: &str, at: Instant) {
        let mut state = lock(&self.state);
        let Some((due, streams)) = state.pending.get_mut(invoice) else {
            state.other += 1;
            return;
        };
        *streams += 1;
        if *streams == self.streams {
            let due = *due;
            state.pending.remove(invoice);
            state.everywhere.record(at.saturating_duration_since(due));
        }
    }

    /// Notifications whose event has not reached every stream yet.
    fn pending(&self) -> usize {
        lock(&self.state).pending.len()
    }
}

/// One open stream: its reader and how many events it has received.
#[derive(Debug)]
struct Reader {
    received: Arc<AtomicU64>,
    task: JoinHandle<String>,
}

/// Reads `stream` until it ends or breaks; returns why it stopped. Each event is counted and
/// handed to `fanout`; event ids must increase.
async fn read(
    mut stream: tonic::Streaming<pb::StreamNotificationsResponse>,
    fanout: Arc<Fanout>,
    received: Arc<AtomicU64>,
) -> String {
    let mut last = 0;
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                let at = Instant::now();
                let Some(n) = msg.notification else {
                    return "a response without a notification".into();
                };
                if n.event_id <= last {
                    return format!("event {} after event {last}", n.event_id);
                }
                last = n.event_id;
                received.fetch_add(1, Ordering::Relaxed);
                fanout.seen(&n.invoice_number, at);
            }
            Ok(None) => return "the stream ended".into(),
            Err(s) => return format!("stream: {s}"),
        }
    }
}

/// Samples `proc` every [`SAMPLE_EVERY`] from `start` until `done`, then once more; logs a
/// progress line every minute. Stops at the first sample that cannot be read (with why).
async fn sample(
    proc: &Proc,
    start: Instant,
    total: Duration,
    events: &[Reader],
    mut done: oneshot::Receiver<()>,
) -> (Vec<Sample>, Option<String>) {
    let cpu_at_start = proc.cpu_time().unwrap_or_default();
    let take = || -> anyhow::Result<Sample> {
        Ok(Sample {
            t_s: start.elapsed().as_secs_f64(),
            memory: proc.memory()?,
            open_files: proc.open_files()?,
            cpu_s: proc.cpu_time()?.saturating_sub(cpu_at_start).as_secs_f64(),
        })
    };
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(start, SAMPLE_EVERY);
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut done => true,
        };
        match take() {
            Ok(s) => samples.push(s),
            Err(e) => return (samples, Some(format!("cannot sample the sidecar: {e:#}"))),
        }
        if last {
            return (samples, None);
        }
        if samples.len() % 6 == 1 {
            let s = samples[samples.len() - 1];
            let received: u64 = events
                .iter()
                .map(|r| r.received.load(Ordering::Relaxed))
                .sum();
            eprintln!(
                "o2o-bench: soak {} of {}: RSS {} (anonymous {}), {} open files, {} stream events",
                humantime::format_duration(Duration::from_secs(s.t_s as u64)),
                humantime::format_duration(total),
                show(Unit::Bytes, s.memory.rss as f64),
                show(Unit::Bytes, s.memory.anon as f64),
                s.open_files,
                thousands(received as f64),
            );
        }
    }
}

/// What the soak observed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakResult {
    /// Every sample of the sidecar, in order.
    pub(crate) samples: Vec<Sample>,
    /// The memory curve in a few numbers (`None` without samples).
    pub(crate) curve: Option<Curve>,
    /// Why sampling stopped early, if it did.
    pub(crate) sampling_error: Option<String>,
    /// `GeneratePaymentCode`, latency from due time.
    pub(crate) generate: PhaseReport,
    /// `GetStatus`, latency from due time.
    pub(crate) status: PhaseReport,
    /// Notification POST until `200`, latency from due time.
    pub(crate) notifications: PhaseReport,
    /// Notifications that paid a payment the soak generated.
    pub(crate) paid_generated: u64,
    /// Notifications for an invoice the sidecar did not create (no unpaid payment was left).
    pub(crate) paid_unknown: u64,
    /// From a notification's due time until its event was on every stream.
    pub(crate) event_on_every_stream: Summary,
    /// Accepted notifications whose event did not reach every stream.
    pub(crate) events_missing: u64,
    /// Stream deliveries those events lacked.
    pub(crate) deliveries_missing: u64,
    /// Stream messages about invoices no notification of the soak waited for.
    pub(crate) other_events: u64,
    /// Streams opened.
    pub(crate) streams: usize,
    /// Streams that ended or broke before the end.
    pub(crate) streams_failed: usize,
    /// Why the first of them stopped.
    pub(crate) first_stream_error: Option<String>,
    /// Events received, all streams together.
    pub(crate) events_received: u64,
    /// Fewest events one stream received.
    pub(crate) events_per_stream_min: u64,
    /// Most events one stream received.
    pub(crate) events_per_stream_max: u64,
    /// The sidecar's CPU time during the load, s.
    pub(crate) sidecar_cpu_s: f64,
    /// The same as a share of one core over the load.
    pub(crate) sidecar_cores: f64,
}

impl SoakResult {
    /// Failed calls, notifications and streams, missed events; empty when all went well.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, p) in [
            ("GeneratePaymentCode", &self.generate),
            ("GetStatus", &self.status),
            ("notification POSTs", &self.notifications),
        ] {
            if p.errors > 0 {
                out.push(format!(
                    "{name}: {} of {} failed (first: {})",
                    p.errors,
                    p.errors + p.ok,
                    p.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        if self.streams_failed > 0 {
            out.push(format!(
                "{} of {} streams stopped before the end (first: {})",
                self.streams_failed,
                self.streams,
                self.first_stream_error.as_deref().unwrap_or("?")
            ));
        }
        if self.events_missing > 0 {
            out.push(format!(
                "accepted notifications whose event did not reach every stream: {} ({} \
                 deliveries missing)",
                self.events_missing, self.deliveries_missing
            ));
        }
        if let Some(e) = &self.sampling_error {
            out.push(e.clone());
        }
        out
    }
}

/// Runs the soak against the rig's long-running sidecar.
pub(crate) async fn run(rig: &Rig, plan: &SoakPlan) -> anyhow::Result<SoakResult> {
    let grpc = rig.grpc();
    let fanout = Arc::new(Fanout::new(plan.streams));
    let stream_clients = clients(grpc, STREAM_CONNECTIONS).await?;
    let opens = (0..plan.streams).map(|k| {
        let mut c = stream_clients[k % STREAM_CONNECTIONS].clone();
        async move {
            c.stream_notifications(pb::StreamNotificationsRequest::default())
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let readers: Vec<Reader> = futures::future::try_join_all(opens)
        .await
        .context("opening the streams")?
        .into_iter()
        .map(|stream| {
            let received = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(read(stream, fanout.clone(), received.clone()));
            Reader { received, task }
        })
        .collect();

    let calls = clients(grpc, 2).await?;
    // Generated payments: the latest ones for GetStatus, the unpaid ones for notifications.
    let recent = Arc::new(Mutex::new(VecDeque::<String>::with_capacity(RECENT)));
    let unpaid = Arc::new(Mutex::new(VecDeque::<(String, String)>::new()));
    let paid_generated = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs_f64(plan.duration_s);

    let generate = {
        let (client, recent, unpaid) = (calls[0].clone(), recent.clone(), unpaid.clone());
        open_loop(plan.generate_rate, duration, move |i, _| {
            let (client, recent, unpaid) = (client.clone(), recent.clone(), unpaid.clone());
            async move {
                let invoice = format!("SOAK-G{i}");
                let code = generate_code(client, invoice.clone()).await?;
                {
                    let mut recent = lock(&recent);
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    recent.push_back(invoice.clone());
                }
                lock(&unpaid).push_back((invoice, code));
                Ok(())
            }
        })
    };
    let status = {
        let (client, recent) = (calls[1].clone(), recent.clone());
        open_loop(plan.status_rate, duration, move |i, _| {
            let invoice = {
                let recent = lock(&recent);
                recent.get(i as usize % recent.len().max(1)).cloned()
            };
            get_status_of(
                client.clone(),
                invoice.unwrap_or_else(|| STATUS_INVOICE.into()),
            )
        })
    };
    let notifications = {
        let (notifier, fanout) = (rig.sidecar_notifier(), fanout.clone());
        let (unpaid, paid_generated) = (unpaid.clone(), paid_generated.clone());
        open_loop(plan.notification_rate, duration, move |i, due| {
            let (notifier, fanout) = (notifier.clone(), fanout.clone());
            let next = lock(&unpaid).pop_front();
            let (invoice, code) = match next {
                Some(generated) => {
                    paid_generated.fetch_add(1, Ordering::Relaxed);
                    generated
                }
                None => (format!("SOAK-N{i}"), (7_000_000 + i).to_string()),
            };
            async move {
                fanout.expect(invoice.clone(), due);
                let result = notifier.post(&invoice, &code).await;
                if result.is_err() {
                    fanout.forget(&invoice);
                }
                result
            }
        })
    };

    eprintln!(
        "o2o-bench: soak for {}: {}/s GeneratePaymentCode, {}/s GetStatus, {}/s notifications, \
         {} open streams",
        humantime::format_duration(duration),
        plan.generate_rate,
        plan.status_rate,
        plan.notification_rate,
        plan.streams
    );
    let sidecar = rig.sidecar();
    let cpu_before = sidecar.cpu_time()?;
    let start = Instant::now();
    let (done_tx, done_rx) = oneshot::channel();
    let load = async {
        let outcomes = tokio::join!(generate, status, notifications);
        let _ = done_tx.send(());
        outcomes
    };
    let ((generate, status, notifications), (samples, sampling_error)) =
        tokio::join!(load, sample(sidecar, start, duration, &readers, done_rx));
    let elapsed = start.elapsed();
    let sidecar_cpu_s = sidecar.cpu_time()?.saturating_sub(cpu_before).as_secs_f64();

    let settle = Instant::now() + SETTLE;
    while fanout.pending() > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut received = Vec::with_capacity(readers.len());
    let (mut streams_failed, mut first_stream_error) = (0, None);
    for reader in readers {
        received.push(reader.received.load(Ordering::Relaxed));
        if reader.task.is_finished() {
            streams_failed += 1;
            let why = reader
                .task
                .await
                .unwrap_or_else(|e| format!("reader panicked: {e}"));
            first_stream_error.get_or_insert(why);
        } else {
            reader.task.abort();
        }
    }
    let state = std::mem::take(&mut *lock(&fanout.state));
    let deliveries_missing = state
        .pending
        .values()
        .map(|(_, seen)| fanout.streams - seen)
        .sum();
    let paid_generated = paid_generated.load(Ordering::Relaxed);
    let sent_notifications = notifications.latencies.count() + notifications.errors;
    Ok(SoakResult {
        curve: curve(&samples, plan.warm_up_s),
        samples,
        sampling_error,
        generate: generate.report(),
        status: status.report(),
        notifications: notifications.report(),
        paid_generated,
        paid_unknown: sent_notifications.saturating_sub(paid_generated),
        event_on_every_stream: state.everywhere.summary(),
        events_missing: state.pending.len() as u64,
        deliveries_missing,
        other_events: state.other,
        streams: received.len(),
        streams_failed,
        first_stream_error,
        events_received: received.iter().sum(),
        events_per_stream_min: received.iter().copied().min().unwrap_or(0),
        events_per_stream_max: received.iter().copied().max().unwrap_or(0),
        sidecar_cpu_s,
        sidecar_cores: sidecar_cpu_s / elapsed.as_secs_f64().max(1e-9),
    })
}

/// Everything a soak produced (`soak.json`).
#[derive(Debug, Serialize)]
pub(crate) struct SoakReport {
    /// The command that produced it.
    pub(crate) command: String,
    /// Always `soak`.
    pub(crate) mode: &'static str,
    /// UTC start time.
    pub(crate) started: String,
    /// The machine.
    pub(crate) machine: Machine,
    /// Rates and durations.
    pub(crate) plan: SoakPlan,
    /// Failed calls, streams and missed events, if any.
    pub(crate) problems: Vec<String>,
    /// What was observed, every sample included.
    pub(crate) result: SoakResult,
}

/// A byte count per hour, signed, in MB/h.
fn per_hour(bytes: Option<f64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:+.2} MB/h", b / 1e6))
}

impl SoakReport {
    /// The markdown page (`soak.md`).
    pub(crate) fn markdown(&self) -> String {
        let (p, r) = (&self.plan, &self.result);
        let total = humantime::format_duration(Duration::from_secs_f64(p.duration_s));
        let mut s = String::new();
        let _ = writeln!(s, "# o2o-sidecar soak\n");
        let _ = writeln!(
            s,
            "`{}` · {total} of constant load against one sidecar · {}\n",
            self.command, self.started
        );
        machine_and_env(&mut s, &self.machine, &p.sidecar_env);
        let _ = writeln!(
            s,
            "Load, open loops: {}/s GeneratePaymentCode, {}/s GetStatus (the latest {} \
             generated invoices in turn), {}/s DOKU-signed notifications (each pays a generated \
             payment, else an invoice the sidecar did not create: {} and {}), and {} open \
             StreamNotifications streams. Sidecar CPU: {:.1} s, {:.0}% of one core.\n",
            p.generate_rate,
            p.status_rate,
            thousands(RECENT as f64),
            p.notification_rate,
            thousands(r.paid_generated as f64),
            thousands(r.paid_unknown as f64),
            p.streams,
            r.sidecar_cpu_s,
            r.sidecar_cores * 100.0,
        );

        let _ = writeln!(
            s,
            "## Memory\n\nSampled every {} s ({} samples in `soak.json`); warm-up {}.\n",
            p.sample_every_s,
            r.samples.len(),
            humantime::format_duration(Duration::from_secs_f64(p.warm_up_s))
        );
        match &r.curve {
            Some(c) => {
                let mb = |b: u64| show(Unit::Bytes, b as f64);
                let at = |x: &Sample| humantime::format_duration(Duration::from_secs(x.t_s as u64));
                let _ = writeln!(s, "| | RSS | anonymous | open files |");
                let _ = writeln!(s, "|---|---|---|---|");
                for (name, x) in [("after warm-up", &c.after_warm_up), ("end", &c.end)] {
                    let _ = writeln!(
                        s,
                        "| {name} (at {}) | {} | {} | {} |",
                        at(x),
                        mb(x.memory.rss),
                        mb(x.memory.anon),
                        x.open_files
                    );
                }
                let _ = writeln!(
                    s,
                    "| max | {} | {} | {} |",
                    mb(c.max_rss),
                    mb(c.max_anon),
                    c.max_open_files
                );
                let _ = writeln!(
                    s,
                    "| growth per hour (least squares over the samples after warm-up: {}) | {} | {} | {} |",
                    c.fitted,
                    per_hour(c.rss_per_hour),
                    per_hour(c.anon_per_hour),
                    c.open_files_per_hour
                        .map_or("n/a".into(), |f| format!("{f:+.1}/h")),
                );
            }
            None => {
                let _ = writeln!(s, "No samples.");
            }
        }

        let _ = writeln!(
            s,
            "\n## Requests\n\nLatency from when each request was due.\n"
        );
        let _ = writeln!(s, "| kind | ok | errors | p50 | p99 | max |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        let ms = |x: f64| show(Unit::Ms, x);
        for (name, ph) in [
            ("GeneratePaymentCode", &r.generate),
            ("GetStatus", &r.status),
            ("notification POST → 200", &r.notifications),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} |",
                thousands(ph.ok as f64),
                thousands(ph.errors as f64),
                ms(ph.latency.p50_ms),
                ms(ph.latency.p99_ms),
                ms(ph.latency.max_ms)
            );
        }
        let e = &r.event_on_every_stream;
        let _ = writeln!(
            s,
            "| notification → event on all {} streams | {} | {} | {} | {} | {} |",
            r.streams,
            thousands(e.count as f64),
            thousands(r.events_missing as f64),
            ms(e.p50_ms),
            ms(e.p99_ms),
            ms(e.max_ms)
        );
        let _ = writeln!(
            s,
            "\nStreams: {} opened, {} stopped early; {} events received ({} to {} per stream), \
             {} of them about invoices no notification of the soak paid (reconciliation).",
            r.streams,
            r.streams_failed,
            thousands(r.events_received as f64),
            thousands(r.events_per_stream_min as f64),
            thousands(r.events_per_stream_max as f64),
            thousands(r.other_events as f64),
        );
        problems_and_rest(
            &mut s,
            &self.problems,
            "Every call, notification and stream succeeded, and every notification's event \
             reached every stream.",
            "Every sample and full latency histograms: `soak.json` beside this file.",
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_s: f64, rss: u64) -> Sample {
        Sample {
            t_s,
            memory: Memory {
                rss,
                anon: rss / 2,
                file: rss / 2,
            },
            open_files: 40,
            cpu_s: t_s / 10.0,
        }
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("30").is_err(), "a unit is required");
        assert!(parse_duration("500ms").is_err(), "at least 1s");
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_warm_up_is_two_minutes_or_a_tenth_at_most_half() {
        let m = |x: u64| Duration::from_secs(60 * x);
        assert_eq!(warm_up(m(30)), m(3), "a tenth of 30 min");
        assert_eq!(warm_up(m(10)), m(2), "2 min is later than a tenth");
        assert_eq!(warm_up(Duration::from_secs(90)), Duration::from_secs(45));
        let samples: Vec<Sample> = (0..10).map(|i| at(10.0 * i as f64, 1)).collect();
        assert_eq!(after_warm_up(&samples, 25.0)[0].t_s, 30.0);
        assert_eq!(after_warm_up(&samples, 30.0).len(), 7);
        assert!(after_warm_up(&samples, 95.0).is_empty());
    }

    #[test]
    fn growth_is_the_least_squares_slope_after_the_warm_up() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        // Noise around y = 1 + 0.5 x: the fit goes through it.
        let s = slope(&[(0.0, 1.1), (2.0, 1.9), (4.0, 3.1), (6.0, 3.9)]).unwrap();
        assert!((s - 0.48).abs() < 1e-9, "{s}");
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);

        // A start-up climb, then 1 MB per 10 s: 360 MB per hour, the climb not in the fit.
        let mut samples = vec![at(0.0, 10_000_000), at(10.0, 50_000_000)];
        samples.extend((2..20).map(|i| at(10.0 * i as f64, 30_000_000 + 1_000_000 * i)));
        let c = curve(&samples, 20.0).unwrap();
        assert_eq!(c.fitted, 18);
        assert_eq!(c.after_warm_up.t_s, 20.0);
        assert_eq!(c.end.memory.rss, 49_000_000);
        assert_eq!(c.max_rss, 50_000_000);
        let per_hour = c.rss_per_hour.unwrap();
        assert!((per_hour - 360e6).abs() < 1.0, "{per_hour}");
        assert!((c.anon_per_hour.unwrap() - 180e6).abs() < 1.0);
        assert_eq!(c.open_files_per_hour, Some(0.0));
        assert!(curve(&samples, 1000.0).is_none());
    }
}
