//! What the contract's comments promise callers: every status move that
//! `proto/o2o/v1/o2o_payments.proto` (PaymentStatus) allows is streamed and no other is; the
//! stream's start positions and its errors; the messages a caller reads; and rich error
//! details that grpcurl decodes through the sidecar's reflection.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

use o2o_sidecar::{
    grpc::{
        pb::{self, PaymentStatus as S},
        stream::{OLDEST, resume_token},
    },
    testing::{InProcessSidecar, PATH, SECRET, notification_body, reason, request, signed_headers},
};

use crate::notifications::{next, post};

/// One DOKU notification of `invoice` with `status` and DOKU's `transaction.date`.
fn body(invoice: &str, code: &str, status: &str, date: &str) -> String {
    notification_body(invoice, 10_000, code, status).replace("2026-11-25T07:06:28Z", date)
}

const DATE_1: &str = "2026-11-25T07:06:28Z";
const DATE_2: &str = "2026-11-26T08:00:00Z";

/// Creates `invoice` (a reusable code if asked), sends it the notifications `reports`
/// (status, date) in order through the notification ingress, each with its own Request-Id,
/// and returns the statuses the stream carried for it.
async fn run(
    h: &mut InProcessSidecar,
    invoice: &str,
    reusable: bool,
    reports: &[(&str, &str)],
) -> Vec<S> {
    let code = h
        .generate(pb::GeneratePaymentCodeRequest {
            reusable,
            ..request(invoice, 10_000)
        })
        .await
        .payment_code;
    for (i, (status, date)) in reports.iter().enumerate() {
        let b = body(invoice, &code, status, date);
        let headers = signed_headers(b.as_bytes(), SECRET, PATH, &format!("req-{invoice}-{i}"));
        assert_eq!(
            post(h, b.as_bytes(), &headers).await,
            200,
            "{invoice} {status}"
        );
    }
    // A marker event after the last report: everything streamed for `invoice` comes before it.
    let marker = format!("{invoice}-END");
    let marker_code = h.generate(request(&marker, 10_000)).await.payment_code;
    let b = body(&marker, &marker_code, "SUCCESS", DATE_1);
    let headers = signed_headers(b.as_bytes(), SECRET, PATH, &format!("req-{marker}"));
    assert_eq!(post(h, b.as_bytes(), &headers).await, 200);

    let mut s = h
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: OLDEST.into(),
            invoice_numbers: vec![invoice.into(), marker.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let n = next(&mut s).await;
        if n.invoice_number == marker {
            return seen;
        }
        seen.push(n.status());
    }
}

/// An invoice, whether its code is reusable, the reports (status, date) DOKU sends, and the
/// statuses the stream must carry.
type Case = (
    &'static str,
    bool,
    &'static [(&'static str, &'static str)],
    &'static [S],
);

/// Every move the PaymentStatus comment allows, each streamed once, and the moves it forbids
/// (backwards, a repeat of the same status, a second PAID of a non-reusable code) not streamed.
#[tokio::test]
async fn every_allowed_status_move_is_streamed_and_no_other() {
    let mut h = InProcessSidecar::start().await;
    let cases: [Case; 6] = [
        // PENDING -> PAID; then nothing moves a PAID back, and a non-reusable code is paid once.
        (
            "INV-T-1",
            false,
            &[
                ("SUCCESS", DATE_1),
                ("EXPIRED", DATE_1),
                ("FAILED", DATE_1),
                ("PENDING", DATE_1),
                ("SUCCESS", DATE_2),
            ],
            &[S::Paid],
        ),
        // PENDING -> FAILED -> EXPIRED -> PAID; FAILED and EXPIRED are not repeated, nothing
        // goes back to PENDING, EXPIRED never becomes FAILED.
        (
            "INV-T-2",
            false,
            &[
                ("FAILED", DATE_1),
                ("PENDING", DATE_1),
                ("FAILED", DATE_1),
                ("EXPIRED", DATE_1),
                ("FAILED", DATE_1),
                ("PENDING", DATE_1),
                ("EXPIRED", DATE_1),
                ("SUCCESS", DATE_1),
                ("EXPIRED", DATE_1),
            ],
            &[S::Failed, S::Expired, S::Paid],
        ),
        // FAILED -> PAID: a late payment after a failure is streamed (money was taken).
        (
            "INV-T-3",
            false,
            &[("FAILED", DATE_1), ("SUCCESS", DATE_1)],
            &[S::Failed, S::Paid],
        ),
        // PENDING -> EXPIRED -> PAID: a late payment after expiry is streamed.
        (
            "INV-T-4",
            false,
            &[
                ("EXPIRED", DATE_1),
                ("PENDING", DATE_1),
                ("SUCCESS", DATE_1),
            ],
            &[S::Expired, S::Paid],
        ),
        // A reusable code: PAID -> PAID for each further (dated, new) payment; a redelivery
        // of the same payment and an EXPIRED after PAID are not streamed.
        (
            "INV-T-5",
            true,
            &[
                ("SUCCESS", DATE_1),
                ("SUCCESS", DATE_1),
                ("SUCCESS", DATE_2),
                ("EXPIRED", DATE_2),
            ],
            &[S::Paid, S::Paid],
        ),
        // PENDING reports change nothing; PENDING -> FAILED -> EXPIRED ends there (unpaid).
        (
            "INV-T-6",
            false,
            &[("PENDING", DATE_1), ("FAILED", DATE_1), ("EXPIRED", DATE_1)],
            &[S::Failed, S::Expired],
        ),
    ];
    for (invoice, reusable, reports, expected) in cases {
        let seen = run(&mut h, invoice, reusable, reports).await;
        assert_eq!(seen, expected, "{invoice}: reports {reports:?}");
        // GetStatus ends where the stream ended.
        assert_eq!(
            h.status(invoice, false).await.status(),
            *expected.last().unwrap(),
            "{invoice}"
        );
    }
    h.stop().await;
}

async fn open_err(h: &mut InProcessSidecar, token: &str, invoices: &[&str]) -> tonic::Status {
    h.grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: token.into(),
            invoice_numbers: invoices.iter().map(|&i| i.into()).collect(),
        })
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_well_formed_token_ahead_of_the_log_has_its_own_reason() {
    let mut h = InProcessSidecar::start().await;
    let err = open_err(&mut h, &resume_token(1_000_000), &[]).await;
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(reason(&err), "RESUME_TOKEN_AHEAD");
    let details = err.get_error_details();
    assert_eq!(details.error_info().unwrap().metadata["last_event_id"], "0");
    assert!(err.message().contains("ahead"), "{}", err.message());
    // A malformed one is still RESUME_TOKEN_INVALID.
    let err = open_err(&mut h, "not-a-token", &[]).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "RESUME_TOKEN_INVALID");
    h.stop().await;
}

#[tokio::test]
async fn the_oldest_token_replays_from_the_oldest_retained_event() {
    let mut h = InProcessSidecar::start().await;
    for invoice in ["INV-O-1", "INV-O-2"] {
        h.grpc
            .generate_payment_code(request(invoice, 10_000))
            .await
            .unwrap();
        h.pay(invoice).await;
        o2o_sidecar::testing::eventually("the PAID event", Duration::from_secs(10), || {
            let mut h = h.grpc.clone();
            async move {
                h.get_status(pb::GetStatusRequest {
                    invoice_number: invoice.into(),
                    refresh: false,
                })
                .await
                .is_ok_and(|r| r.into_inner().payment.unwrap().status() == S::Paid)
            }
        })
        .await;
    }
    // Retention prunes the first event (recorded before the second, within the same second
    // at most: prune everything, then add a third).
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    assert_eq!(h.prune_events(cutoff).await, 2);
    h.grpc
        .generate_payment_code(request("INV-O-3", 10_000))
        .await
        .unwrap();
    h.pay("INV-O-3").await;

    let mut s = h
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: OLDEST.into(),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut s).await;
    assert_eq!(first.invoice_number, "INV-O-3");
    assert_eq!(first.event_id, 3, "the oldest retained event comes first");
    // An event's own token before the retained log is expired, the oldest token never is.
    let err = open_err(&mut h, &resume_token(1), &[]).await;
    assert_eq!(reason(&err), "RESUME_TOKEN_EXPIRED");
    h.stop().await;
}

#[tokio::test]
async fn filter_entries_are_validated_like_invoice_numbers() {
    let mut h = InProcessSidecar::start().await;
    let err = open_err(&mut h, "", &["INV-OK", "", "INV 2", &"X".repeat(65)]).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "INVALID_FIELD");
    let details = err.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "invoice_numbers[1]",
            "invoice_numbers[2]",
            "invoice_numbers[3]"
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn get_status_without_an_invoice_says_it_is_required() {
    let mut h = InProcessSidecar::start().await;
    let err = h
        .grpc
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "invalid request: invoice_number is required");
    let details = err.get_error_details();
    let v = &details.bad_request().unwrap().field_violations[0];
    assert_eq!(
        (v.field.as_str(), v.description.as_str()),
        ("invoice_number", "is required")
    );
    h.stop().await;
}

/// grpcurl (installed by `scripts/test`) decodes an INVALID_ARGUMENT's ErrorInfo and
/// BadRequest through the sidecar's reflection alone. Skipped, saying so, where grpcurl is
/// absent and `CI` is not set.
#[tokio::test]
async fn grpcurl_decodes_the_error_details_through_reflection() {
    let found = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcurl is missing (scripts/test installs it)"
        );
        eprintln!("grpcurl not found: skipping the reflection decoding check");
        return;
    }
    let h = InProcessSidecar::start().await;
    let addr = h.addrs.grpc.to_string();
    let out = tokio::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-max-time",
            "20",
            "-format-error",
            "-d",
            r#"{"amount": "-1"}"#,
            &addr,
            "o2o.v1.O2OPayments/GeneratePaymentCode",
        ])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    // `-format-error` prints the google.rpc.Status as JSON; an undecodable detail would be
    // `{"@type": …, "value": "<base64>"}` without the fields below.
    let json = &text[text.find('{').unwrap_or(0)..];
    let status: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(status["code"], 3, "{text}");
    let details = status["details"].as_array().expect("details");
    let of = |t: &str| {
        details
            .iter()
            .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{t}"))
            .unwrap_or_else(|| panic!("no {t} in {text}"))
    };
    assert_eq!(of("ErrorInfo")["reason"], "INVALID_FIELD", "{text}");
    assert_eq!(of("ErrorInfo")["domain"], "o2o-sidecar", "{text}");
    let fields: Vec<&str> = of("BadRequest")["fieldViolations"]
        .as_array()
        .unwrap_or_else(|| panic!("BadRequest not decoded: {text}"))
        .iter()
        .filter_map(|v| v["field"].as_str())
        .collect();
    assert_eq!(fields, ["invoice_number", "amount", "customer"], "{text}");
    h.stop().await;
}
