//! The notification ingress: what DOKU's signature accepts, what it refuses, and what a
//! verified but inconsistent notification does.

use o2o_sidecar::grpc::{pb, stream::resume_token};
use tonic::Streaming;

use o2o_sidecar::testing::{
    InProcessSidecar, PATH, SECRET, notification_body, request, signed_headers,
};

pub(crate) async fn post(
    h: &InProcessSidecar,
    body: &[u8],
    headers: &[(&'static str, String)],
) -> u16 {
    let mut req = h.http.post(h.notification_url()).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A stream replaying the whole log from the beginning.
pub(crate) async fn stream_from_start(
    h: &mut InProcessSidecar,
) -> Streaming<pb::StreamNotificationsResponse> {
    h.grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn next(s: &mut Streaming<pb::StreamNotificationsResponse>) -> pb::Notification {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
        .notification
        .unwrap()
}

async fn code_of(h: &mut InProcessSidecar, invoice: &str, amount: i64) -> String {
    h.grpc
        .generate_payment_code(request(invoice, amount))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
        .payment_code
}

#[tokio::test]
async fn a_correctly_signed_notification_is_accepted_and_one_changed_byte_is_not() {
    let mut h = InProcessSidecar::start().await;
    let code = code_of(&mut h, "INV-N-1", 10_000).await;
    let good = notification_body("INV-N-1", 10_000, &code, "SUCCESS");
    let headers = signed_headers(good.as_bytes(), SECRET, PATH, "req-n-1");

    let mut tampered = good.clone().into_bytes();
    let i = tampered.iter().position(|&b| b == b'1').unwrap();
    tampered[i] = b'9';
    assert_eq!(post(&h, &tampered, &headers).await, 401, "one byte changed");

    let wrong_key = signed_headers(good.as_bytes(), "SK-WRONG", PATH, "req-n-2");
    assert_eq!(
        post(&h, good.as_bytes(), &wrong_key).await,
        401,
        "wrong key"
    );

    let wrong_path = signed_headers(good.as_bytes(), SECRET, "/other/path", "req-n-3");
    assert_eq!(
        post(&h, good.as_bytes(), &wrong_path).await,
        401,
        "wrong path"
    );

    for missing in ["Client-Id", "Request-Id", "Request-Timestamp", "Signature"] {
        let partial: Vec<_> = headers
            .iter()
            .filter(|(k, _)| *k != missing)
            .cloned()
            .collect();
        assert_eq!(
            post(&h, good.as_bytes(), &partial).await,
            401,
            "missing {missing}"
        );
    }
    let mut other_client = headers.clone();
    other_client[0].1 = "MCH-OTHER".into();
    assert_eq!(
        post(&h, good.as_bytes(), &other_client).await,
        401,
        "other Client-Id"
    );

    let huge = vec![b'{'; 2 * 1024 * 1024];
    let huge_headers = signed_headers(&huge, SECRET, PATH, "req-n-4");
    assert_eq!(post(&h, &huge, &huge_headers).await, 413, "oversized");

    // Nothing above changed anything: the accepted notification is the first event.
    assert_eq!(post(&h, good.as_bytes(), &headers).await, 200);
    let mut s = stream_from_start(&mut h).await;
    let event = next(&mut s).await;
    assert_eq!(event.invoice_number, "INV-N-1");
    assert_eq!(event.status(), pb::PaymentStatus::Paid);
    assert_eq!(event.source(), pb::Source::DokuNotification);
    assert_eq!(event.doku_request_id, "req-n-1");
    assert_eq!(event.payment_code, code);
    h.stop().await;
}

#[tokio::test]
async fn a_duplicate_notification_is_one_event() {
    let mut h = InProcessSidecar::start().await;
    let code = code_of(&mut h, "INV-N-2", 10_000).await;
    let b = notification_body("INV-N-2", 10_000, &code, "SUCCESS");
    let headers = signed_headers(b.as_bytes(), SECRET, PATH, "req-dup-1");
    for _ in 0..3 {
        assert_eq!(post(&h, b.as_bytes(), &headers).await, 200);
    }
    // A sentinel after the duplicates: the next event must be it, not a repeat.
    let code3 = code_of(&mut h, "INV-N-3", 5_000).await;
    let b3 = notification_body("INV-N-3", 5_000, &code3, "SUCCESS");
    assert_eq!(
        post(
            &h,
            b3.as_bytes(),
            &signed_headers(b3.as_bytes(), SECRET, PATH, "req-dup-2")
        )
        .await,
        200
    );

    let mut s = stream_from_start(&mut h).await;
    let first = next(&mut s).await;
    let second = next(&mut s).await;
    assert_eq!(first.invoice_number, "INV-N-2");
    assert_eq!(second.invoice_number, "INV-N-3");
    assert!(second.event_id > first.event_id);
    h.stop().await;
}

#[tokio::test]
async fn an_amount_or_code_mismatch_is_acknowledged_but_never_paid() {
    let mut h = InProcessSidecar::start().await;
    let code = code_of(&mut h, "INV-N-4", 10_000).await;
    let wrong_amount = notification_body("INV-N-4", 1, &code, "SUCCESS");
    assert_eq!(
        post(
            &h,
            wrong_amount.as_bytes(),
            &signed_headers(wrong_amount.as_bytes(), SECRET, PATH, "req-mm-1")
        )
        .await,
        200
    );
    let wrong_code = notification_body("INV-N-4", 10_000, "99999999", "SUCCESS");
    assert_eq!(
        post(
            &h,
            wrong_code.as_bytes(),
            &signed_headers(wrong_code.as_bytes(), SECRET, PATH, "req-mm-2")
        )
        .await,
        200
    );

    let status = h.status("INV-N-4", false).await;
    assert_eq!(status.status(), pb::PaymentStatus::Pending);

    // Sentinel: the first event in the log is the one after the mismatches.
    let b = notification_body("INV-N-4", 10_000, &code, "SUCCESS");
    assert_eq!(
        post(
            &h,
            b.as_bytes(),
            &signed_headers(b.as_bytes(), SECRET, PATH, "req-mm-3")
        )
        .await,
        200
    );
    let mut s = stream_from_start(&mut h).await;
    let e = next(&mut s).await;
    assert_eq!(e.doku_request_id, "req-mm-3");
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_invoice_is_stored_and_emitted_as_doku_sent_it() {
    let mut h = InProcessSidecar::start().await;
    let b = notification_body("INV-FOREIGN-1", 77_000, "1234567890", "SUCCESS");
    assert_eq!(
        post(
            &h,
            b.as_bytes(),
            &signed_headers(b.as_bytes(), SECRET, PATH, "req-f-1")
        )
        .await,
        200
    );
    let mut s = stream_from_start(&mut h).await;
    let e = next(&mut s).await;
    assert_eq!(e.invoice_number, "INV-FOREIGN-1");
    assert_eq!(e.amount, 77_000);
    assert_eq!(e.payment_code, "1234567890");
    assert_eq!(e.status(), pb::PaymentStatus::Paid);
    let p = h.status("INV-FOREIGN-1", false).await;
    assert_eq!(p.status(), pb::PaymentStatus::Paid);
    h.stop().await;
}

#[tokio::test]
async fn a_late_expired_never_overrides_paid() {
    let mut h = InProcessSidecar::start().await;
    let code = code_of(&mut h, "INV-N-5", 10_000).await;
    let paid = notification_body("INV-N-5", 10_000, &code, "SUCCESS");
    let expired = notification_body("INV-N-5", 10_000, &code, "EXPIRED");
    assert_eq!(
        post(
            &h,
            paid.as_bytes(),
            &signed_headers(paid.as_bytes(), SECRET, PATH, "req-o-1")
        )
        .await,
        200
    );
    assert_eq!(
        post(
            &h,
            expired.as_bytes(),
            &signed_headers(expired.as_bytes(), SECRET, PATH, "req-o-2")
        )
        .await,
        200
    );
    let p = h.status("INV-N-5", false).await;
    assert_eq!(p.status(), pb::PaymentStatus::Paid);
    h.stop().await;
}
