//! The sweeper: with DOKU's notifications switched off, Check Status still brings every paid
//! payment to PAID and every expired one to EXPIRED, each emitted once.

use std::time::Duration;

use o2o_sidecar::grpc::{pb, stream::resume_token};
use serde_json::json;

use o2o_sidecar::testing::{
    InProcessSidecar, Options, PATH, SECRET, notification_body, post_notification, request,
    signed_headers,
};

use crate::{alfa::alfa_request, notifications::next};

#[tokio::test]
async fn without_notifications_the_sweeper_still_delivers_paid_and_expired() {
    let mut h = InProcessSidecar::start_with(Options {
        sweep_interval: Duration::from_millis(100),
        first_check_after: Duration::ZERO,
        ..Options::default()
    })
    .await;
    h.fault(json!({"target": "notification", "kind": "suppress"}))
        .await;
    let mut codes = Vec::new();
    for i in 1..=3 {
        let invoice = format!("INV-SW-{i}");
        // INV-SW-2 is paid at an Alfa Group store: the sweeper keeps its channel.
        let r = match i {
            2 => alfa_request(&invoice, 10_000),
            _ => request(&invoice, 10_000),
        };
        let payment = h
            .grpc
            .generate_payment_code(r)
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap();
        codes.push(payment.payment_code);
    }
    h.pay("INV-SW-1").await;
    h.pay("INV-SW-2").await;
    let r = h
        .sim_post("/_sim/payments/INV-SW-3/expire", json!({}))
        .await;
    assert!(r.status().is_success());

    let mut s = h
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..3 {
        let n = next(&mut s).await;
        assert_eq!(n.source(), pb::Source::Reconciliation);
        got.push((n.invoice_number.clone(), n.status(), n.channel()));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    use pb::Channel::{Alfa, Indomaret};
    assert_eq!(
        got,
        [
            ("INV-SW-1".to_owned(), pb::PaymentStatus::Paid, Indomaret),
            ("INV-SW-2".to_owned(), pb::PaymentStatus::Paid, Alfa),
            ("INV-SW-3".to_owned(), pb::PaymentStatus::Expired, Indomaret),
        ]
    );
    // A late notification for an already reconciled payment (DOKU's own, signed, through the
    // notification listener) is acknowledged and adds nothing: the payment stays PAID and the
    // next event in the log is a new payment's.
    h.clear_faults().await;
    let before = h.status("INV-SW-1", false).await;
    assert_eq!(before.status(), pb::PaymentStatus::Paid);
    let late = notification_body("INV-SW-1", 10_000, &codes[0], "SUCCESS");
    let headers = signed_headers(late.as_bytes(), SECRET, PATH, "late-sw-1");
    assert_eq!(
        post_notification(&h.http, &h.notification_url(), late.as_bytes(), &headers).await,
        Some(200),
        "the late notification is acknowledged"
    );
    assert_eq!(
        h.status("INV-SW-1", false).await,
        before,
        "the payment is unchanged"
    );
    h.grpc
        .generate_payment_code(request("INV-SW-4", 10_000))
        .await
        .unwrap();
    h.pay("INV-SW-4").await;
    let n = next(&mut s).await;
    assert_eq!(n.invoice_number, "INV-SW-4");
    h.stop().await;
}
