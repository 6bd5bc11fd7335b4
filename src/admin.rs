//! The admin listener: `/live` (the process answers), `/ready` (the store answers and the
//! secret key file is readable; false while draining) and `/metrics` (Prometheus text format).

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{secret::SecretKeySource, store::Store};

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

/// What `/ready` looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    store: Arc<dyn Store>,
    draining: Arc<AtomicBool>,
    /// The watched key: not ready while its file cannot be read (the last good key stays in
    /// use, but a rotation would go unnoticed).
    key: Option<SecretKeySource>,
}

impl Readiness {
    /// Readiness over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            draining: Arc::new(AtomicBool::new(false)),
            key: None,
        }
    }

    /// Also requires the secret key file to be readable.
    pub fn with_secret_key(mut self, key: SecretKeySource) -> Self {
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

async fn ready(State(r): State<Readiness>) -> (StatusCode, String) {
    if r.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    if r.key.as_ref().and_then(SecretKeySource::problem).is_some() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "secret key file unreadable; the last good key is in use\n".into(),
        );
    }
    match r.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store unreachable\n".into(),
            )
        }
    }
}

async fn metrics_text() -> String {
    prometheus().render()
}

/// The admin router.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
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
    async fn ready_follows_the_store_and_draining() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let sqlite = Arc::new(SqliteStore::open(&url).await.unwrap());
        let readiness = Readiness::new(sqlite.clone());
        let router = router(readiness.clone());
        assert_eq!(status(&router, "/live").await, StatusCode::OK);
        assert_eq!(status(&router, "/ready").await, StatusCode::OK);

        // The store stops answering: not ready, still live.
        sqlite.close().await;
        assert_eq!(
            status(&router, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(&router, "/live").await, StatusCode::OK);

        let other = Arc::new(SqliteStore::open(&url).await.unwrap());
        let readiness = Readiness::new(other);
        let router = super::router(readiness.clone());
        assert_eq!(status(&router, "/ready").await, StatusCode::OK);
        readiness.set_draining();
        assert_eq!(
            status(&router, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
