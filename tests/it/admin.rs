//! The admin listener: probes and Prometheus metrics that tell an operator the truth, with no
//! secret or customer data in them.

use o2o_sidecar::testing::{InProcessSidecar, SECRET, request};

#[tokio::test]
async fn probes_and_metrics_after_a_payment() {
    let mut h = InProcessSidecar::start().await;
    let admin = format!("http://{}", h.addrs.admin);
    let live = h.http.get(format!("{admin}/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = h.http.get(format!("{admin}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    h.grpc
        .generate_payment_code(request("INV-ADM-SECRETIVE-1", 10_000))
        .await
        .unwrap();
    h.pay("INV-ADM-SECRETIVE-1").await;
    // The notification is committed before the simulator's delivery completes; wait for the
    // event through the log rather than by time.
    let mut s = crate::notifications::stream_from_start(&mut h).await;
    crate::notifications::next(&mut s).await;

    let text = h
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "o2o_payment_codes_total{outcome=\"ok\"}",
        "o2o_doku_requests_total{endpoint=\"payment_code\",status=\"200\"}",
        "o2o_doku_request_duration_seconds_bucket{endpoint=\"payment_code\"",
        "o2o_notifications_total{verdict=\"accepted\"}",
        "o2o_events_emitted_total{source=\"doku_notification\",status=\"paid\"}",
        "o2o_store_operation_duration_seconds_bucket{op=\"record_notification\"",
        "o2o_open_streams",
    ] {
        assert!(text.contains(metric), "missing {metric} in:\n{text}");
    }
    assert!(
        !text.contains("INV-ADM-SECRETIVE-1"),
        "customer data in metrics"
    );
    assert!(!text.contains(SECRET), "secret in metrics");
    h.stop().await;
}
