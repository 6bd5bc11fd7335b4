//! Alfa Group (CHANNEL_ALFA) end to end: created on Alfa's DOKU endpoint with Alfa's body,
//! refreshed through Check Status, paid at the simulated counter and streamed with its
//! channel; a notification naming another channel is never PAID. (The sweeper settling an
//! Alfa payment with its channel is part of `reconcile.rs`.)

use o2o_sidecar::grpc::pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use o2o_sidecar::testing::{
    InProcessSidecar, PATH, SECRET, notification_body, reason, request, signed_headers,
};

use crate::notifications::{next, post, stream_from_start};

const ALFA_PATH: &str = "/alfa-online-to-offline/v2/payment-code";

/// A valid Alfa request: Indomaret's test request with the receipt footer only.
pub(crate) fn alfa_request(invoice: &str, amount: i64) -> pb::GeneratePaymentCodeRequest {
    let mut r = request(invoice, amount);
    r.channel = pb::Channel::Alfa.into();
    r.receipt = Some(pb::Receipt {
        description: String::new(),
        footer_message: "Terima kasih".into(),
    });
    r
}

/// DOKU's notification for a payment at an Alfa Group store.
fn alfa_notification(invoice: &str, amount: i64, code: &str, status: &str) -> String {
    let body = notification_body(invoice, amount, code, status)
        .replace(
            r#""acquirer":{"id":"INDOMARET"}"#,
            r#""acquirer":{"id":"ALFA"}"#,
        )
        .replace(
            r#""channel":{"id":"ONLINE_TO_OFFLINE_INDOMARET"}"#,
            r#""channel":{"id":"ONLINE_TO_OFFLINE_ALFA"}"#,
        );
    assert!(body.contains("ONLINE_TO_OFFLINE_ALFA"), "{body}");
    body
}

/// Posts `body` to the sidecar as DOKU does, signed under `request_id`; the HTTP status.
async fn notify(h: &InProcessSidecar, body: &str, request_id: &str) -> u16 {
    let headers = signed_headers(body.as_bytes(), SECRET, PATH, request_id);
    post(h, body.as_bytes(), &headers).await
}

#[tokio::test]
async fn an_alfa_payment_is_created_refreshed_paid_and_streamed() {
    let mut h = InProcessSidecar::start().await;
    let mut s = stream_from_start(&mut h).await;

    let payment = h.generate(alfa_request("INV-ALFA-1", 150_000)).await;
    assert_eq!(payment.channel(), pb::Channel::Alfa);
    assert_eq!(payment.status(), pb::PaymentStatus::Pending);
    assert!(payment.payment_code.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        payment
            .how_to_pay_url
            .contains("/how-to-pay/v2/alfa-online-to-offline/"),
        "{}",
        payment.how_to_pay_url
    );
    assert!(
        payment
            .how_to_pay_api_url
            .contains("/alfa-online-to-offline/v2/how-to-pay-api/"),
        "{}",
        payment.how_to_pay_api_url
    );

    // DOKU saw one request, on Alfa's path, and accepted Alfa's body.
    let sent = h.sim_requests("/payment-code").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["path"], ALFA_PATH);
    assert_eq!(sent[0]["verdict"], "accepted", "{sent:?}");
    let at_doku = h.sim_payments("INV-ALFA-1").await;
    assert_eq!(at_doku[0]["channel"], "ALFA");
    assert_eq!(at_doku[0]["payment_code"], payment.payment_code.as_str());

    // Refresh: DOKU's Check Status (which names ONLINE_TO_OFFLINE_ALFA) is believed.
    let refreshed = h.status("INV-ALFA-1", true).await;
    assert_eq!(refreshed.status(), pb::PaymentStatus::Pending);
    assert_eq!(refreshed.channel(), pb::Channel::Alfa);
    let checks = h.sim_requests("/orders/v1/status/INV-ALFA-1").await;
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0]["verdict"], "accepted");

    // Paid at the counter: DOKU's Alfa notification is accepted and streamed as CHANNEL_ALFA.
    h.pay("INV-ALFA-1").await;
    let event = next(&mut s).await;
    assert_eq!(event.invoice_number, "INV-ALFA-1");
    assert_eq!(event.status(), pb::PaymentStatus::Paid);
    assert_eq!(event.channel(), pb::Channel::Alfa);
    assert_eq!(event.source(), pb::Source::DokuNotification);
    assert_eq!(event.payment_code, payment.payment_code);
    let paid = h.status("INV-ALFA-1", true).await;
    assert_eq!(
        (paid.status(), paid.channel()),
        (pb::PaymentStatus::Paid, pb::Channel::Alfa)
    );

    // Paid with the notification lost: GetStatus(refresh) learns it from Check Status.
    h.fault(json!({"target": "notification", "kind": "suppress", "invoice_number": "INV-ALFA-2"}))
        .await;
    h.generate(alfa_request("INV-ALFA-2", 20_000)).await;
    h.pay("INV-ALFA-2").await;
    assert_eq!(
        h.status("INV-ALFA-2", false).await.status(),
        pb::PaymentStatus::Pending
    );
    let refreshed = h.status("INV-ALFA-2", true).await;
    assert_eq!(refreshed.status(), pb::PaymentStatus::Paid);
    let event = next(&mut s).await;
    assert_eq!(event.invoice_number, "INV-ALFA-2");
    assert_eq!(event.channel(), pb::Channel::Alfa);
    assert_eq!(event.source(), pb::Source::Reconciliation);
    h.stop().await;
}

#[tokio::test]
async fn a_lost_alfa_answer_is_replayed_on_alfa_s_endpoint() {
    let mut h = InProcessSidecar::start().await;
    // DOKU issues the code, then the connection drops: the client's retry replays the same
    // request, which must go to Alfa's endpoint again to be recognised (409 with the code).
    h.fault(json!({"target": "alfa_payment_code", "kind": "drop", "after_processing": true, "times": 1}))
        .await;
    let payment = h.generate(alfa_request("INV-ALFA-R", 10_000)).await;
    let sent = h.sim_requests("/payment-code").await;
    let seen: Vec<_> = sent
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [(ALFA_PATH, "accepted"), (ALFA_PATH, "replayed")]);
    assert_eq!(
        h.sim_payments("INV-ALFA-R").await[0]["payment_code"],
        payment.payment_code.as_str()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_receipt_description_on_alfa_is_invalid_argument_and_doku_receives_nothing() {
    let mut h = InProcessSidecar::start().await;
    let mut r = alfa_request("INV-ALFA-D", 10_000);
    r.receipt = Some(pb::Receipt {
        description: "ORDER 001".into(),
        footer_message: "Terima kasih".into(),
    });
    let err = h.grpc.generate_payment_code(r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "INVALID_FIELD");
    let details = err.get_error_details();
    let violations = &details
        .bad_request()
        .expect("a BadRequest")
        .field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "receipt.description");
    assert!(
        violations[0].description.contains("footer_message"),
        "says why: {violations:?}"
    );
    assert!(h.sim_requests("/payment-code").await.is_empty());
    // The same request on Indomaret, which prints a description, is fine.
    let mut r = alfa_request("INV-ALFA-D", 10_000);
    r.channel = pb::Channel::Indomaret.into();
    r.receipt = request("x", 1).receipt;
    assert_eq!(h.generate(r).await.channel(), pb::Channel::Indomaret);
    h.stop().await;
}

#[tokio::test]
async fn an_alfa_notification_for_a_stored_indomaret_payment_is_a_mismatch() {
    let mut h = InProcessSidecar::start().await;
    let code = h.generate(request("INV-CH-1", 10_000)).await.payment_code;
    // Same invoice, amount and code, signed correctly, but paid at an Alfa Group store.
    let wrong = alfa_notification("INV-CH-1", 10_000, &code, "SUCCESS");
    assert_eq!(notify(&h, &wrong, "req-ch-1").await, 200, "stored");
    let p = h.status("INV-CH-1", false).await;
    assert_eq!(p.status(), pb::PaymentStatus::Pending, "never PAID");
    assert!(p.pay_time.is_none());
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("o2o_notifications_total")
                && l.contains(r#"verdict="mismatch""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // Sentinel: the first event of the log is the honest Indomaret notification.
    let right = notification_body("INV-CH-1", 10_000, &code, "SUCCESS");
    assert_eq!(notify(&h, &right, "req-ch-2").await, 200);
    let mut s = stream_from_start(&mut h).await;
    let e = next(&mut s).await;
    assert_eq!(e.doku_request_id, "req-ch-2");
    assert_eq!(e.channel(), pb::Channel::Indomaret);
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_invoice_notified_on_alfa_becomes_an_alfa_payment() {
    let mut h = InProcessSidecar::start().await;
    let body = alfa_notification("INV-ALFA-FOREIGN", 77_000, "1234567890", "SUCCESS");
    assert_eq!(notify(&h, &body, "req-foreign-alfa").await, 200);
    let mut s = stream_from_start(&mut h).await;
    let e = next(&mut s).await;
    assert_eq!(e.invoice_number, "INV-ALFA-FOREIGN");
    assert_eq!(e.channel(), pb::Channel::Alfa);
    let p = h.status("INV-ALFA-FOREIGN", false).await;
    assert_eq!(
        (p.channel(), p.status()),
        (pb::Channel::Alfa, pb::PaymentStatus::Paid)
    );
    h.stop().await;
}
