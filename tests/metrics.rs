//! `/metrics` of a fresh sidecar: HELP text for every metric, the counters alerts need present
//! at zero before their first event, every histogram present (count zero) before its first
//! observation, and every metric the chart's dashboard and alerts use.
//!
//! Its own test binary: metrics are process-wide, and "fresh" means no other test's calls.

use std::collections::BTreeSet;

use o2o_sidecar::testing::{InProcessSidecar, request};

const RULES: &str = include_str!("../helm/o2o-sidecar/files/prometheus-rules.yaml");
const DASHBOARD: &str = include_str!("../helm/o2o-sidecar/files/grafana-dashboard.json");
const README: &str = include_str!("../README.md");

/// Metric names used in `text`: words starting with `o2o_` or `process_`, histogram suffixes
/// removed (the family is what `/metrics` names in `# TYPE`). Comments are skipped.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find(|c: char| c.is_ascii_lowercase()) {
            rest = &rest[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            if word.starts_with("o2o_") || word.starts_with("process_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                names.insert(family.to_owned());
            }
            rest = &rest[end..];
        }
    }
    names
}

/// `# TYPE` families of a Prometheus text page.
fn families(page: &str, prefix: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The value of the sample `name{labels}` (exact text before the value).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

async fn scrape(h: &InProcessSidecar) -> String {
    h.http
        .get(format!("http://{}/metrics", h.addrs.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fresh_sidecar_describes_every_metric_and_counts_from_zero() {
    let mut h = InProcessSidecar::start().await;
    let fresh = scrape(&h).await;

    // HELP for every metric.
    let typed = families(&fresh, "# TYPE ");
    let helped = families(&fresh, "# HELP ");
    let missing: Vec<_> = typed.difference(&helped).collect();
    assert!(missing.is_empty(), "no HELP for {missing:?}:\n{fresh}");
    assert!(typed.contains("process_resident_memory_bytes"), "{fresh}");
    assert!(typed.contains("process_cpu_seconds_total"), "{fresh}");

    // Build info, and the counters alerts use, at zero before any call.
    let build = format!(
        "o2o_build_info{{version=\"{}\",commit=\"{}\"}}",
        o2o_sidecar::VERSION,
        o2o_sidecar::GIT_COMMIT
    );
    assert_eq!(sample(&fresh, &build), Some(1.0), "{fresh}");
    for series in [
        r#"o2o_payment_codes_total{outcome="ok"}"#,
        r#"o2o_payment_codes_total{outcome="doku_unavailable"}"#,
        r#"o2o_payment_codes_total{outcome="doku_auth_rejected"}"#,
        r#"o2o_notifications_total{verdict="bad_signature"}"#,
        r#"o2o_notifications_total{verdict="mismatch"}"#,
        r#"o2o_store_errors_total{op="record_notification"}"#,
        r#"o2o_doku_requests_total{endpoint="payment_code",status="error"}"#,
        r#"o2o_grpc_server_requests_total{method="o2o.v1.O2OPayments/GeneratePaymentCode",code="unavailable"}"#,
    ] {
        assert_eq!(sample(&fresh, series), Some(0.0), "{series} in:\n{fresh}");
    }
    // The sweeper's first round starts with the sidecar, so it may already have counted it.
    let sweeps = sample(&fresh, "o2o_sweeper_runs_total");
    assert!(
        matches!(sweeps, Some(n) if n <= 1.0),
        "{sweeps:?} in:\n{fresh}"
    );
    assert_eq!(sample(&fresh, "o2o_store_up"), Some(1.0), "{fresh}");
    assert_eq!(
        sample(&fresh, "o2o_secret_key_file_ok"),
        Some(1.0),
        "{fresh}"
    );

    // Every histogram, with every label value it will have, before its first observation.
    let histograms = families(&fresh, "# TYPE ")
        .into_iter()
        .filter(|f| fresh.contains(&format!("# TYPE {f} histogram")))
        .collect::<BTreeSet<_>>();
    assert_eq!(
        histograms,
        BTreeSet::from(
            [
                "o2o_doku_request_duration_seconds",
                "o2o_grpc_server_duration_seconds",
                "o2o_store_operation_duration_seconds",
            ]
            .map(str::to_owned)
        ),
        "{fresh}"
    );
    for endpoint in o2o_sidecar::doku::client::ENDPOINTS {
        let series = format!("o2o_doku_request_duration_seconds_count{{endpoint=\"{endpoint}\"}}");
        assert_eq!(sample(&fresh, &series), Some(0.0), "{series} in:\n{fresh}");
        let bucket = format!(
            "o2o_doku_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}}"
        );
        assert_eq!(sample(&fresh, &bucket), Some(0.0), "{bucket} in:\n{fresh}");
    }
    for (method, _) in o2o_sidecar::grpc::metrics::PRESET {
        let series = format!("o2o_grpc_server_duration_seconds_count{{method=\"{method}\"}}");
        assert_eq!(sample(&fresh, &series), Some(0.0), "{series} in:\n{fresh}");
    }
    for op in o2o_sidecar::store::metered::OPS {
        // Start-up may already have used some operations: present, counted or not.
        let series = format!("o2o_store_operation_duration_seconds_count{{op=\"{op}\"}}");
        assert!(sample(&fresh, &series).is_some(), "{series} in:\n{fresh}");
    }
    let series = r#"o2o_store_operation_duration_seconds_count{op="record_rejected"}"#;
    assert_eq!(sample(&fresh, series), Some(0.0), "{fresh}");

    // Every metric an alert uses, and every metric the dashboard plots, exists before its
    // first event.
    let alerting = referenced(RULES);
    assert!(alerting.len() >= 6, "{alerting:?}");
    let absent: Vec<_> = alerting.difference(&typed).collect();
    assert!(absent.is_empty(), "alerts use {absent:?}, not in:\n{fresh}");
    let plotted = referenced(DASHBOARD);
    assert!(plotted.len() >= 10, "{plotted:?}");
    let absent: Vec<_> = plotted.difference(&typed).collect();
    assert!(
        absent.is_empty(),
        "the dashboard uses {absent:?}, not in a fresh sidecar's:\n{fresh}"
    );

    // After one payment and its notification, still every metric the dashboard plots.
    h.grpc
        .generate_payment_code(request("INV-METRICS-1", 10_000))
        .await
        .unwrap();
    let err = h
        .grpc
        .get_status(o2o_sidecar::grpc::pb::GetStatusRequest {
            invoice_number: "INV-METRICS-UNKNOWN".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    h.pay("INV-METRICS-1").await;
    // A stream from the start of the log: its first event is the payment, so the
    // notification was committed; the stream is counted when it opened.
    let mut stream = h
        .grpc
        .stream_notifications(o2o_sidecar::grpc::pb::StreamNotificationsRequest {
            resume_token: o2o_sidecar::grpc::stream::resume_token(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.notification.unwrap().invoice_number, "INV-METRICS-1");
    drop(stream);
    let page = scrape(&h).await;
    let typed = families(&page, "# TYPE ");
    let plotted = referenced(DASHBOARD);
    assert!(plotted.len() >= 10, "{plotted:?}");
    let absent: Vec<_> = plotted.difference(&typed).collect();
    assert!(
        absent.is_empty(),
        "the dashboard uses {absent:?}, not in:\n{page}"
    );

    // The payment's instructions were fetched from the simulator's how-to-pay API.
    assert_eq!(
        sample(&page, r#"o2o_how_to_pay_fetches_total{outcome="ok"}"#),
        Some(1.0),
        "{page}"
    );

    // Per-RPC metrics by method and code.
    assert_eq!(
        sample(
            &page,
            r#"o2o_grpc_server_requests_total{method="o2o.v1.O2OPayments/GeneratePaymentCode",code="ok"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"o2o_grpc_server_requests_total{method="o2o.v1.O2OPayments/GetStatus",code="not_found"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert!(page.contains(
        r#"o2o_grpc_server_duration_seconds_bucket{method="o2o.v1.O2OPayments/GetStatus",le="#
    ));

    // The README lists every o2o_ metric.
    let undocumented: Vec<_> = typed
        .iter()
        .filter(|m| m.starts_with("o2o_") && !README.contains(&format!("`{m}")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "README does not list {undocumented:?}"
    );
    h.stop().await;
}
