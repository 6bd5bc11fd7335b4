//! GeneratePaymentCode: happy path, idempotent repeats, invoice conflicts, validation.

use o2o_sidecar::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

use o2o_sidecar::testing::{InProcessSidecar, reason, request};

#[tokio::test]
async fn creates_a_payment_code_signed_as_doku_expects() {
    let mut h = InProcessSidecar::start().await;
    let payment = h
        .grpc
        .generate_payment_code(request("INV-GEN-1", 150_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.invoice_number, "INV-GEN-1");
    assert_eq!(payment.amount, 150_000);
    assert!(!payment.payment_code.is_empty());
    assert!(payment.payment_code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(payment.status(), pb::PaymentStatus::Pending);
    assert_eq!(payment.channel(), pb::Channel::Indomaret);
    let create = payment.create_time.unwrap().seconds;
    let expire = payment.expire_time.unwrap().seconds;
    assert_eq!(expire - create, 60 * 60, "default expiry is 60 minutes");
    assert!(payment.how_to_pay_url.starts_with("http"));
    assert!(payment.pay_time.is_none());

    // The simulator verified the signature and holds the same code.
    let requests = h.sim_requests("/payment-code").await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["verdict"], "accepted", "{requests:?}");
    let sim = h.sim_payments("INV-GEN-1").await;
    assert_eq!(sim.len(), 1);
    assert_eq!(sim[0]["payment_code"], payment.payment_code.as_str());
    h.stop().await;
}

#[tokio::test]
async fn repeating_the_same_request_returns_the_stored_payment_without_calling_doku() {
    let mut h = InProcessSidecar::start().await;
    let first = h
        .grpc
        .generate_payment_code(request("INV-GEN-2", 10_000))
        .await
        .unwrap()
        .into_inner();
    let second = h
        .grpc
        .generate_payment_code(request("INV-GEN-2", 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(h.sim_requests("/payment-code").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn same_invoice_with_different_parameters_is_already_exists() {
    let mut h = InProcessSidecar::start().await;
    h.grpc
        .generate_payment_code(request("INV-GEN-3", 10_000))
        .await
        .unwrap();
    let err = h
        .grpc
        .generate_payment_code(request("INV-GEN-3", 20_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), "INVOICE_EXISTS");
    assert_eq!(h.sim_requests("/payment-code").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn idempotency_key_reused_for_another_request_is_failed_precondition() {
    let mut h = InProcessSidecar::start().await;
    let mut a = request("INV-IDEM-1", 10_000);
    a.idempotency_key = "key-1".into();
    let first = h
        .grpc
        .generate_payment_code(a.clone())
        .await
        .unwrap()
        .into_inner();
    // Same key, same request: the original answer.
    let again = h.grpc.generate_payment_code(a).await.unwrap().into_inner();
    assert_eq!(first, again);
    let mut b = request("INV-IDEM-2", 10_000);
    b.idempotency_key = "key-1".into();
    let err = h.grpc.generate_payment_code(b).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(h.sim_requests("/payment-code").await.len(), 1);
    h.stop().await;
}

fn violations(status: &tonic::Status) -> Vec<String> {
    let details = status.get_error_details();
    details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn each_invalid_field_is_reported_and_doku_receives_nothing() {
    let mut h = InProcessSidecar::start().await;
    type Mutate = fn(&mut pb::GeneratePaymentCodeRequest);
    let cases: Vec<(&str, Mutate)> = vec![
        ("invoice_number", |r| r.invoice_number = String::new()),
        ("invoice_number", |r| r.invoice_number = "X".repeat(65)),
        ("invoice_number", |r| r.invoice_number = "INV/1".into()),
        ("amount", |r| r.amount = 0),
        ("amount", |r| r.amount = -5),
        ("amount", |r| r.amount = 1_000_000_000_000),
        ("customer", |r| r.customer = None),
        ("customer.name", |r| {
            r.customer.as_mut().unwrap().name = String::new()
        }),
        ("customer.name", |r| {
            r.customer.as_mut().unwrap().name = "n".repeat(65)
        }),
        ("customer.email", |r| {
            r.customer.as_mut().unwrap().email = "not-an-email".into()
        }),
        ("expiry", |r| {
            r.expiry = Some(prost_types::Duration {
                seconds: 90,
                nanos: 0,
            })
        }),
        ("expiry", |r| {
            r.expiry = Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            })
        }),
        ("info", |r| r.info = "i".repeat(65)),
        ("receipt.description", |r| {
            r.receipt.as_mut().unwrap().description = "d".repeat(129)
        }),
        ("receipt.footer_message", |r| {
            r.receipt.as_mut().unwrap().footer_message = "f".repeat(129)
        }),
        ("idempotency_key", |r| r.idempotency_key = "k".repeat(129)),
        ("channel", |r| r.channel = 99),
        ("notification_url", |r| {
            r.notification_url = "https://shop.example.com/other/path".into()
        }),
        ("notification_url", |r| {
            r.notification_url = "not a url".into()
        }),
    ];
    for (field, mutate) in cases {
        let mut req = request("INV-BAD-1", 10_000);
        mutate(&mut req);
        let err = h.grpc.generate_payment_code(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(reason(&err), "INVALID_FIELD", "{field}");
        assert_eq!(violations(&err), [field], "{field}");
    }
    assert!(
        h.sim_requests("").await.is_empty(),
        "DOKU must receive nothing"
    );
    h.stop().await;
}

#[tokio::test]
async fn several_invalid_fields_are_all_listed() {
    let mut h = InProcessSidecar::start().await;
    let req = pb::GeneratePaymentCodeRequest {
        invoice_number: "bad invoice".into(),
        amount: 0,
        customer: None,
        ..Default::default()
    };
    let err = h.grpc.generate_payment_code(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), ["invoice_number", "amount", "customer"]);
    assert!(h.sim_requests("").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn notification_url_override_with_the_same_path_is_sent_to_doku() {
    let mut h = InProcessSidecar::start().await;
    let mut req = request("INV-OVR-1", 10_000);
    req.notification_url = h.notification_url();
    h.grpc.generate_payment_code(req).await.unwrap();
    let sim = h.sim_payments("INV-OVR-1").await;
    assert_eq!(sim[0]["notification_url"], h.notification_url());
    h.stop().await;
}
