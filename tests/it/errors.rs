//! DOKU failures as the caller sees them: rejected credentials, 5xx, lost answers.

use std::time::Duration;

use o2o_sidecar::grpc::pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use o2o_sidecar::testing::{InProcessSidecar, Options, reason, request};

#[tokio::test]
async fn doku_rejecting_our_signature_is_internal_auth_rejected() {
    let mut h = InProcessSidecar::start_with(Options {
        sim_key: "SK-SOMEONE-ELSES-KEY".into(),
        ..Options::default()
    })
    .await;
    let err = h
        .grpc
        .generate_payment_code(request("INV-AUTH-1", 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(reason(&err), "DOKU_AUTH_REJECTED");
    assert!(!err.message().contains("SK-"), "{}", err.message());
    assert!(h.sim_payments("INV-AUTH-1").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn doku_5xx_after_retries_is_unavailable_with_retry_info() {
    let mut h = InProcessSidecar::start().await;
    h.fault(json!({"target": "payment_code", "kind": "status", "status": 503}))
        .await;
    let err = h
        .grpc
        .generate_payment_code(request("INV-5XX-1", 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "DOKU_UNAVAILABLE");
    assert!(err.get_error_details().retry_info().is_some());
    // Every attempt carried the same Request-Id.
    let sent = h.sim_requests("/payment-code").await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        sent.iter()
            .all(|r| r["request_id"] == sent[0]["request_id"])
    );

    // DOKU recovers: the same request now succeeds with one code.
    h.clear_faults().await;
    let payment = h
        .grpc
        .generate_payment_code(request("INV-5XX-1", 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.status(), pb::PaymentStatus::Pending);
    assert_eq!(h.sim_payments("INV-5XX-1").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn doku_timeout_is_outcome_unknown_and_a_retry_never_creates_a_second_code() {
    let mut h = InProcessSidecar::start_with(Options {
        doku_timeout: Duration::from_millis(300),
        max_attempts: 1,
        ..Options::default()
    })
    .await;
    // DOKU issues the code, but its answer arrives after our timeout.
    h.fault(json!({"target": "payment_code", "kind": "delay", "delay_ms": 1500, "times": 1}))
        .await;
    let err = h
        .grpc
        .generate_payment_code(request("INV-TMO-1", 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "DOKU_OUTCOME_UNKNOWN");
    assert!(err.get_error_details().retry_info().is_some());
    let issued = h.sim_payments("INV-TMO-1").await;
    assert_eq!(issued.len(), 1, "DOKU issued a code we did not hear about");

    // The payment is stored PENDING without a code.
    let stored = h.status("INV-TMO-1", false).await;
    assert_eq!(stored.status(), pb::PaymentStatus::Pending);
    assert_eq!(stored.payment_code, "");

    // Retrying the same request replays the same Request-Id: DOKU answers with the code it
    // already issued (409 replay), and there is still exactly one payment at DOKU.
    let payment = h
        .grpc
        .generate_payment_code(request("INV-TMO-1", 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(
        payment.payment_code,
        issued[0]["payment_code"].as_str().unwrap()
    );
    assert_eq!(h.sim_payments("INV-TMO-1").await.len(), 1);
    let sent = h.sim_requests("/payment-code").await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["request_id"], sent[1]["request_id"]);
    h.stop().await;
}
