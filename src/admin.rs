//! The admin listener: `/live` (the process answers), `/ready` (the sidecar's own state: not
//! draining, secret key file readable), `/health/store` (the store answers a ping) and
//! `/metrics` (Prometheus text format).
//!
//! `/ready` deliberately ignores the store. The sidecar runs in the application's pod, and a
//! pod is in its Service only while every container is ready: if a PostgreSQL blip made the
//! sidecar unready, every application pod would leave its Service at once, taking all of the
//! application's traffic down, not only payments. While the store is down, payment calls fail
//! by themselves with UNAVAILABLE (`STORE_UNAVAILABLE`, with RetryInfo) and DOKU retries its
//! notifications. The store's health is for operators instead: `/health/store` and the gauge
//! `o2o_store_up`, refreshed by [`watch_store`] every [`STORE_PING_INTERVAL`].

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{secret::SecretSource, store::Store};

/// The process-wide Prometheus recorder (metrics are global in the `metrics` crate).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latency buckets from 0.5 ms (store, in-process) to 10 s (DOKU's timeout).
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours stays unused.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Every metric of the sidecar with its HELP text, the counters an alert needs at zero, and
/// every histogram with the label values it will have (count zero).
/// Called once at start-up ([`crate::run`]); calling it again changes nothing.
///
/// Label values are lowercase snake case throughout (`ok`, `doku_unavailable`, `paid`); the
/// `outcome` of a failed payment code is the call's `ErrorInfo` reason in lowercase.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "o2o_build_info",
        "Always 1; the labels say which version and git commit is running."
    );
    describe_counter!(
        "o2o_payment_codes_total",
        "GeneratePaymentCode calls by outcome: ok, or the error reason in lowercase (doku_unavailable, doku_outcome_unknown, doku_auth_rejected, doku_rejected, store_unavailable, invalid_field, ...)."
    );
    describe_counter!(
        "o2o_doku_requests_total",
        "HTTP requests to DOKU by endpoint and result: the HTTP status, or timeout / error when no status came back."
    );
    describe_histogram!(
        "o2o_doku_request_duration_seconds",
        Unit::Seconds,
        "Time of one HTTP request to DOKU (one attempt), by endpoint."
    );
    describe_counter!(
        "o2o_how_to_pay_fetches_total",
        "Fetches of an issued code's how-to-pay JSON (its instructions), by outcome: ok, not_allowed (the link's origin is not in --how-to-pay-hosts: not fetched), http_error, timeout, error, too_large, unreadable. Only ok gives the payment instructions; none fails it."
    );
    describe_counter!(
        "o2o_notifications_total",
        "DOKU notifications received, by verdict: accepted, duplicate, bad_signature, mismatch, unknown_status, skewed."
    );
    describe_counter!(
        "o2o_notifications_verified_total",
        "DOKU notifications whose signature verified, by key: current, or previous (during the rotation grace window)."
    );
    describe_counter!(
        "o2o_notification_timestamp_skewed_total",
        "DOKU notifications whose Request-Timestamp was beyond the skew tolerance from our clock."
    );
    describe_counter!(
        "o2o_events_emitted_total",
        "Payment events published to streams, by source (doku_notification, reconciliation) and status (paid, expired, failed, pending)."
    );
    describe_gauge!(
        "o2o_open_streams",
        "StreamNotifications calls open on this sidecar."
    );
    describe_counter!(
        "o2o_sweeper_runs_total",
        "Rounds of the reconciliation sweeper on this sidecar (it runs on one replica at a time)."
    );
    describe_counter!(
        "o2o_sweeper_findings_total",
        "What the sweeper learned from DOKU: paid, expired, failed, or code_recovered."
    );
    describe_gauge!(
        "o2o_sweeper_leader",
        "1 while this replica holds the sweeper's lock (exactly one replica should)."
    );
    describe_histogram!(
        "o2o_store_operation_duration_seconds",
        Unit::Seconds,
        "Time of one store operation, by op."
    );
    describe_counter!(
        "o2o_store_errors_total",
        "Store operations that failed, by op."
    );
    describe_gauge!(
        "o2o_store_up",
        "1 if the store answered its last ping (every 5 s), else 0. Not part of /ready."
    );
    describe_gauge!(
        "o2o_store_listener_connected",
        "PostgreSQL only: 1 while the LISTEN connection that wakes other replicas' streams is up."
    );
    describe_gauge!(
        "o2o_secret_key_file_ok",
        "1 if the DOKU secret key file was readable at its last read, else 0 (the last good key stays in use; /ready is 503)."
    );
    describe_counter!(
        "o2o_secret_key_rotations_total",
        "Changes of the DOKU secret key file seen by this sidecar."
    );
    describe_counter!(
        "o2o_grpc_unauthenticated_total",
        "O2OPayments calls refused for a missing or wrong bearer token."
    );
    describe_counter!(
        "o2o_grpc_calls_refused_total",
        "gRPC calls refused with RESOURCE_EXHAUSTED, by reason: connection_limit, stream_limit."
    );
    describe_counter!(
        "o2o_grpc_server_requests_total",
        "gRPC calls by method and code (lowercase gRPC code name). A server-streaming call is counted when its response headers are sent."
    );
    describe_histogram!(
        "o2o_grpc_server_duration_seconds",
        Unit::Seconds,
        "Time of a gRPC call, by method: to its trailers (unary) or to its response headers (server streaming)."
    );
    describe_counter!(
        "o2o_connections_refused_total",
        "Connections closed at once because the listener was at its connection cap, by listener."
    );
    describe_counter!(
        "o2o_http_requests_refused_total",
        "HTTP requests refused on the notification and admin listeners, by reason: body_timeout, too_large."
    );

    metrics::gauge!(
        "o2o_build_info",
        "version" => crate::VERSION,
        "commit" => crate::GIT_COMMIT
    )
    .set(1.0);
    // The counters alerts and dashboards use, at zero before their first event.
    let zero = |name: &'static str, labels: &[(&'static str, &'static str)]| {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|&(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::counter!(name, labels).increment(0);
    };
    for outcome in [
        "ok",
        "invalid_field",
        "doku_unavailable",
        "doku_outcome_unknown",
        "doku_auth_rejected",
        "doku_rejected",
        "store_unavailable",
        "internal",
    ] {
        zero("o2o_payment_codes_total", &[("outcome", outcome)]);
    }
    for verdict in [
        "accepted",
        "duplicate",
        "bad_signature",
        "mismatch",
        "unknown_status",
        "skewed",
    ] {
        zero("o2o_notifications_total", &[("verdict", verdict)]);
    }
    for key in ["current", "previous"] {
        zero("o2o_notifications_verified_total", &[("key", key)]);
    }
    for endpoint in crate::doku::client::ENDPOINTS {
        for status in ["200", "timeout", "error"] {
            zero(
                "o2o_doku_requests_total",
                &[("endpoint", endpoint), ("status", status)],
            );
        }
    }
    for source in ["doku_notification", "reconciliation"] {
        for status in ["paid", "expired", "failed"] {
            zero(
                "o2o_events_emitted_total",
                &[("source", source), ("status", status)],
            );
        }
    }
    for finding in ["paid", "expired", "failed", "code_recovered"] {
        zero("o2o_sweeper_findings_total", &[("finding", finding)]);
    }
    for op in crate::store::metered::OPS {
        zero("o2o_store_errors_total", &[("op", op)]);
    }
    for reason in ["connection_limit", "stream_limit"] {
        zero("o2o_grpc_calls_refused_total", &[("reason", reason)]);
    }
    for listener in ["grpc", "notifications", "admin"] {
        zero("o2o_connections_refused_total", &[("listener", listener)]);
    }
    for reason in ["body_timeout", "too_large"] {
        zero("o2o_http_requests_refused_total", &[("reason", reason)]);
    }
    for name in [
        "o2o_sweeper_runs_total",
        "o2o_notification_timestamp_skewed_total",
        "o2o_secret_key_rotations_total",
        "o2o_grpc_unauthenticated_total",
    ] {
        zero(name, &[]);
    }
    metrics::gauge!("o2o_open_streams").increment(0.0);
    crate::grpc::metrics::preset();
    // The histograms, registered without an observation: the exporter renders a registered
    // histogram with its buckets, `_sum` and `_count` at zero.
    for endpoint in crate::doku::client::ENDPOINTS {
        let _ = metrics::histogram!("o2o_doku_request_duration_seconds", "endpoint" => endpoint);
    }
    for op in crate::store::metered::OPS {
        let _ = metrics::histogram!("o2o_store_operation_duration_seconds", "op" => op);
    }
    for (method, _) in crate::grpc::metrics::PRESET {
        let _ = metrics::histogram!("o2o_grpc_server_duration_seconds", "method" => *method);
    }
    process_collector().describe();
}

/// Process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds`…,
/// the Prometheus client conventions), collected at each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// What `/ready` looks at (draining, the key file) and the store `/health/store` pings.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Pinged by `/health/store` only, never by `/ready` (see the module doc).
    store: Arc<dyn Store>,
    draining: Arc<AtomicBool>,
    /// The watched key: not ready while its file cannot be read (the last good key stays in
    /// use, but a rotation would go unnoticed).
    key: Option<SecretSource>,
}

impl Readiness {
    /// Readiness of a sidecar whose store (for `/health/store`) is `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            draining: Arc::new(AtomicBool::new(false)),
            key: None,
        }
    }

    /// Also requires the secret key file to be readable.
    pub fn with_secret_key(mut self, key: SecretSource) -> Self {
        self.key = Some(key);
        self
    }

    /// Marks the sidecar as draining: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(r): State<Readiness>) -> (StatusCode, &'static str) {
    if r.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if r.key.as_ref().and_then(SecretSource::problem).is_some() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "secret key file unreadable; the last good key is in use\n",
        );
    }
    // Not the store: see the module doc.
    (StatusCode::OK, "ready\n")
}

/// How often [`watch_store`] pings the store.
pub const STORE_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a ping may take before the store counts as down.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Pings the store once, sets `o2o_store_up` and returns whether it answered.
async fn ping_store(store: &dyn Store) -> bool {
    let up = match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "store unreachable");
            false
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = u64::try_from(STORE_PING_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
                "store unreachable: ping timed out"
            );
            false
        }
    };
    metrics::gauge!("o2o_store_up").set(if up { 1.0 } else { 0.0 });
    up
}

/// Keeps `o2o_store_up` current: a ping every [`STORE_PING_INTERVAL`] until `stop`.
pub async fn watch_store(store: Arc<dyn Store>, stop: impl std::future::Future<Output = ()>) {
    periodically(STORE_PING_INTERVAL, stop, || async {
        ping_store(store.as_ref()).await;
    })
    .await;
}

/// Runs `work` at once and then every `period` (a late round delays the next, none is
/// skipped or doubled), until `stop`.
async fn periodically<F, Fut>(
    period: Duration,
    stop: impl std::future::Future<Output = ()>,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        work().await;
    }
}

/// `/health/store`: 200 `{"store":"up"}` or 503 `{"store":"down"}` (the reason is logged, not
/// served: it may name hosts).
async fn store_health(State(r): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    if ping_store(r.store.as_ref()).await {
        (StatusCode::OK, Json(serde_json::json!({ "store": "up" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "store": "down" })),
        )
    }
}

/// How often histogram samples are folded into their buckets when nobody scrapes
/// `/metrics` (the exporter's own upkeep period).
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds, until `stop`.
///
/// The exporter keeps each histogram's new samples in a list until the next scrape or
/// upkeep; a recorder made with `build_recorder` (as here: the admin listener serves it)
/// runs no upkeep of its own, so a sidecar nobody scraped kept every sample of every request:
/// the steady memory climb of the soak (+66 MB/h at 350 requests/s).
pub async fn metrics_upkeep(stop: impl std::future::Future<Output = ()>) {
    periodically(METRICS_UPKEEP_INTERVAL, stop, || async {
        prometheus().run_upkeep();
    })
    .await;
}

async fn metrics_text() -> String {
    process_collector().collect();
    prometheus().render()
}

/// The admin router.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health/store", get(store_health))
        .route("/metrics", get(metrics_text))
        .with_state(readiness)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt as _;

    async fn status(router: &Router, path: &str) -> StatusCode {
        router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn ready_ignores_the_store_which_has_its_own_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let sqlite = Arc::new(SqliteStore::open(&url).await.unwrap());
        let readiness = Readiness::new(sqlite.clone());
        let router = router(readiness.clone());
        assert_eq!(status(&router, "/live").await, StatusCode::OK);
        assert_eq!(status(&router, "/ready").await, StatusCode::OK);
        assert_eq!(status(&router, "/health/store").await, StatusCode::OK);

        // The store stops answering: still ready and live (the app's pod stays in its
        // Service), but the store's own endpoint says so.
        sqlite.close().await;
        assert_eq!(status(&router, "/ready").await, StatusCode::OK);
        assert_eq!(status(&router, "/live").await, StatusCode::OK);
        let down = router
            .clone()
            .oneshot(Request::get("/health/store").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(down.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({ "store": "down" }));

        // Draining is the sidecar's own state: not ready.
        readiness.set_draining();
        assert_eq!(
            status(&router, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
