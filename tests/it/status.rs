//! GetStatus: from the store, and refreshed from DOKU's Check Status.

use o2o_sidecar::grpc::pb;
use tonic::Code;

use o2o_sidecar::testing::{InProcessSidecar, reason, request};

fn get(invoice: &str, refresh: bool) -> pb::GetStatusRequest {
    pb::GetStatusRequest {
        invoice_number: invoice.into(),
        refresh,
    }
}

#[tokio::test]
async fn unknown_invoice_is_not_found() {
    let mut h = InProcessSidecar::start().await;
    for refresh in [false, true] {
        let err = h
            .grpc
            .get_status(get("INV-NOPE", refresh))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(reason(&err), "PAYMENT_NOT_FOUND");
    }
    let err = h
        .grpc
        .get_status(get("bad invoice", false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn refresh_after_paying_in_the_simulator_reads_paid() {
    let mut h = InProcessSidecar::start().await;
    let created = h
        .grpc
        .generate_payment_code(request("INV-ST-1", 25_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    // Stop notifications so that only Check Status can tell us.
    h.fault(serde_json::json!({"target": "notification", "kind": "suppress"}))
        .await;
    h.pay("INV-ST-1").await;

    assert_eq!(
        h.status("INV-ST-1", false).await.status(),
        pb::PaymentStatus::Pending
    );

    let refreshed = h.status("INV-ST-1", true).await;
    assert_eq!(refreshed.status(), pb::PaymentStatus::Paid);
    assert_eq!(refreshed.payment_code, created.payment_code);
    assert!(refreshed.pay_time.is_some());
    // The refresh was stored.
    assert_eq!(
        h.status("INV-ST-1", false).await.status(),
        pb::PaymentStatus::Paid
    );
    h.stop().await;
}

#[tokio::test]
async fn refresh_after_expiry_reads_expired_and_a_late_pay_is_refused_by_doku() {
    let mut h = InProcessSidecar::start().await;
    h.grpc
        .generate_payment_code(request("INV-ST-2", 25_000))
        .await
        .unwrap();
    let r = h
        .sim_post("/_sim/payments/INV-ST-2/expire", serde_json::json!({}))
        .await;
    assert!(r.status().is_success());
    let refreshed = h.status("INV-ST-2", true).await;
    assert_eq!(refreshed.status(), pb::PaymentStatus::Expired);
    h.stop().await;
}
