//! The two load shapes: an open loop (requests due at a fixed rate whatever the answers do,
//! latency measured from the moment a request was *due*, so a stall shows up in the tail
//! instead of silently delaying later requests), and a closed loop (a fixed number of workers,
//! each sending its next request when the previous one is answered) to find saturation.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{runtime::Handle, sync::mpsc, time::Instant};

use crate::hist::{Latencies, Summary};

/// How long answers may trail the last due request before they count as lost.
const DRAIN: Duration = Duration::from_secs(30);

/// What one load phase observed.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Latency of every successful request.
    pub(crate) latencies: Latencies,
    /// Requests that failed (or were not answered within [`DRAIN`]).
    pub(crate) errors: u64,
    /// The first error seen, for the report.
    pub(crate) first_error: Option<String>,
    /// From the first request to the last answer.
    pub(crate) elapsed: Duration,
}

impl Outcome {
    /// Successful requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.latencies.count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn fail(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    /// The serializable form.
    pub(crate) fn report(&self) -> PhaseReport {
        PhaseReport {
            ok: self.latencies.count(),
            errors: self.errors,
            first_error: self.first_error.clone(),
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput_per_s: self.throughput(),
            latency: self.latencies.summary(),
        }
    }
}

/// One load phase as it appears in the JSON file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// Successful requests.
    pub(crate) ok: u64,
    /// Failed requests.
    pub(crate) errors: u64,
    /// The first failure, if any.
    pub(crate) first_error: Option<String>,
    /// Wall time of the phase.
    pub(crate) elapsed_s: f64,
    /// Successful requests per second.
    pub(crate) throughput_per_s: f64,
    /// Latency distribution of the successful requests.
    pub(crate) latency: Summary,
}

/// Sends `rate × duration` requests, request `i` due at `start + i / rate`; `make(i, due)`
/// builds request `i`. Latency is measured from `due` to the answer.
///
/// The schedule runs on its own OS thread with `std::thread::sleep` (sub-100 µs precision on
/// Linux) instead of tokio's 1 ms timer wheel, so the generator's own lateness does not
/// dominate sub-millisecond latencies; whatever lateness remains is counted, not hidden.
pub(crate) async fn open_loop<F, Fut>(rate: f64, duration: Duration, make: F) -> Outcome
where
    F: Fn(u64, Instant) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let n = ((rate * duration.as_secs_f64()).round() as u64).max(1);
    let handle = Handle::current();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(5);
    let dispatcher = std::thread::spawn(move || {
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let request = make(i, due);
            let tx = tx.clone();
            handle.spawn(async move {
                let result = request.await;
                let _ = tx.send((Instant::now().saturating_duration_since(due), result));
            });
        }
    });
    let mut out = Outcome::default();
    let deadline = start + duration + DRAIN;
    let mut last = start;
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((latency, Ok(())))) => {
                out.latencies.record(latency);
                last = Instant::now();
            }
            Ok(Some((_, Err(e)))) => {
                out.fail(e);
                last = Instant::now();
            }
            Ok(None) | Err(_) => {
                out.fail("no answer within the drain time".into());
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    out.elapsed = last.saturating_duration_since(start);
    out
}

/// Runs `workers` loops for `duration`, each awaiting `make(i)` back to back (`i` counts
/// requests across all workers). Latency is measured per request from send to answer.
pub(crate) async fn closed_loop<F, Fut>(workers: usize, duration: Duration, make: F) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let make = Arc::new(make);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let make = make.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match make(i).await {
                    Ok(()) => out.latencies.record(sent.elapsed()),
                    Err(e) => out.fail(e),
                }
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(out) => {
                total.latencies.merge(&out.latencies);
                total.errors += out.errors;
                if total.first_error.is_none() {
                    total.first_error = out.first_error;
                }
            }
            Err(e) => total.fail(format!("worker panicked: {e}")),
        }
    }
    total.elapsed = start.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_loop_sends_every_request_at_its_rate() {
        let out = open_loop(1000.0, Duration::from_millis(100), |i, _| async move {
            if i == 7 { Err("seven".into()) } else { Ok(()) }
        })
        .await;
        assert_eq!(out.latencies.count(), 99);
        assert_eq!(out.errors, 1);
        assert_eq!(out.first_error.as_deref(), Some("seven"));
        // 100 requests at 1 ms spacing take about 99 ms, never much less.
        assert!(
            out.elapsed >= Duration::from_millis(95),
            "{:?}",
            out.elapsed
        );
    }

    #[tokio::test]
    async fn closed_loop_keeps_every_worker_busy_until_the_end() {
        let out = closed_loop(4, Duration::from_millis(50), |_| async {
            tokio::task::yield_now().await;
            Ok(())
        })
        .await;
        assert!(out.latencies.count() > 4);
        assert_eq!(out.errors, 0);
        assert!(out.elapsed >= Duration::from_millis(50));
    }
}
