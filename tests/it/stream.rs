//! StreamNotifications: live delivery, resume after a disconnect or a restart, token checks,
//! and the replay/live switch under concurrent appends.

use std::collections::BTreeSet;

use o2o_sidecar::grpc::{pb, stream::resume_token};
use tonic::Code;

use o2o_sidecar::testing::{
    InProcessSidecar, PATH, SECRET, notification_body, reason, request, signed_headers,
};

use crate::notifications::next;

async fn open(
    h: &mut InProcessSidecar,
    token: &str,
) -> tonic::Streaming<pb::StreamNotificationsResponse> {
    h.grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: token.into(),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner()
}

async fn generate(h: &mut InProcessSidecar, invoice: &str) {
    h.grpc
        .generate_payment_code(request(invoice, 10_000))
        .await
        .unwrap();
}

async fn next_response(
    s: &mut tonic::Streaming<pb::StreamNotificationsResponse>,
) -> pb::StreamNotificationsResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn paying_in_the_simulator_reaches_an_open_stream() {
    let mut h = InProcessSidecar::start().await;
    generate(&mut h, "INV-S-1").await;
    // The call returns once the stream is subscribed: nothing after this can be missed.
    let mut s = open(&mut h, "").await;
    h.pay("INV-S-1").await;
    let r = next_response(&mut s).await;
    let n = r.notification.unwrap();
    assert_eq!(n.invoice_number, "INV-S-1");
    assert_eq!(n.status(), pb::PaymentStatus::Paid);
    assert_eq!(n.source(), pb::Source::DokuNotification);
    assert!(!n.doku_request_id.is_empty());
    assert!(!r.resume_token.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn resuming_with_a_token_delivers_exactly_the_missed_events_in_order() {
    let mut h = InProcessSidecar::start().await;
    for i in 1..=3 {
        generate(&mut h, &format!("INV-R-{i}")).await;
    }
    let mut s = open(&mut h, "").await;
    h.pay("INV-R-1").await;
    let first = next_response(&mut s).await;
    drop(s); // the subscriber disconnects

    h.pay("INV-R-2").await;
    h.pay("INV-R-3").await;
    // Wait until both are committed: a fresh replay from the start sees 3 events.
    let mut all = open(&mut h, &resume_token(0)).await;
    for _ in 0..3 {
        next(&mut all).await;
    }

    let mut resumed = open(&mut h, &first.resume_token).await;
    let a = next_response(&mut resumed).await.notification.unwrap();
    let b = next_response(&mut resumed).await.notification.unwrap();
    assert_eq!(a.invoice_number, "INV-R-2");
    assert_eq!(b.invoice_number, "INV-R-3");
    assert_eq!(a.event_id, first.notification.unwrap().event_id + 1);
    assert_eq!(b.event_id, a.event_id + 1);
    h.stop().await;
}

#[tokio::test]
async fn a_restart_between_two_payments_loses_nothing() {
    let mut h = InProcessSidecar::start().await;
    generate(&mut h, "INV-RS-1").await;
    generate(&mut h, "INV-RS-2").await;
    let mut s = open(&mut h, "").await;
    h.pay("INV-RS-1").await;
    let first = next_response(&mut s).await;
    drop(s);

    h.restart().await;
    h.pay("INV-RS-2").await;
    let mut resumed = open(&mut h, &first.resume_token).await;
    let n = next_response(&mut resumed).await.notification.unwrap();
    assert_eq!(n.invoice_number, "INV-RS-2");
    // And from the start, both are there.
    let mut all = open(&mut h, &resume_token(0)).await;
    assert_eq!(next(&mut all).await.invoice_number, "INV-RS-1");
    assert_eq!(next(&mut all).await.invoice_number, "INV-RS-2");
    h.stop().await;
}

#[tokio::test]
async fn the_invoice_filter_only_delivers_matching_events() {
    let mut h = InProcessSidecar::start().await;
    generate(&mut h, "INV-F-1").await;
    generate(&mut h, "INV-F-2").await;
    let mut s = h
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: String::new(),
            invoice_numbers: vec!["INV-F-2".into()],
        })
        .await
        .unwrap()
        .into_inner();
    h.pay("INV-F-1").await;
    h.pay("INV-F-2").await;
    let n = next_response(&mut s).await.notification.unwrap();
    assert_eq!(n.invoice_number, "INV-F-2");
    h.stop().await;
}

#[tokio::test]
async fn malformed_and_foreign_tokens_are_invalid_argument() {
    let mut h = InProcessSidecar::start().await;
    // A well-formed token ahead of the log is RESUME_TOKEN_AHEAD (tests/it/contract.rs).
    for token in ["not-a-token", "b2RkOjE"] {
        let err = h
            .grpc
            .stream_notifications(pb::StreamNotificationsRequest {
                resume_token: token.into(),
                invoice_numbers: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{token}");
        assert_eq!(reason(&err), "RESUME_TOKEN_INVALID");
    }
    h.stop().await;
}

/// Subscribers join at random moments while notifications are appended concurrently; each
/// must see a gap-free, duplicate-free, ordered suffix of the log that ends at the last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_and_live_switch_has_no_gap_under_concurrent_appends() {
    let mut h = InProcessSidecar::start().await;
    const N: usize = 120;
    const WRITERS: usize = 4;
    let url = h.notification_url();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let http = h.http.clone();
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            for i in (w..N).step_by(WRITERS) {
                let b = notification_body(
                    &format!("INV-C-{i}"),
                    1_000 + i as i64,
                    "5550001",
                    "SUCCESS",
                );
                let headers = signed_headers(b.as_bytes(), SECRET, PATH, &format!("req-c-{i}"));
                let mut req = http.post(&url).body(b.clone());
                for (k, v) in &headers {
                    req = req.header(*k, v);
                }
                assert_eq!(req.send().await.unwrap().status(), 200);
            }
        }));
    }
    // Subscribers start at different points, from the start or from "now".
    let mut readers = Vec::new();
    for r in 0..6 {
        let mut client = h.grpc.clone();
        readers.push(tokio::spawn(async move {
            tokio::task::yield_now().await;
            let token = if r % 2 == 0 {
                resume_token(0)
            } else {
                String::new()
            };
            let mut s = client
                .stream_notifications(pb::StreamNotificationsRequest {
                    resume_token: token,
                    invoice_numbers: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            let mut seen = Vec::new();
            while seen.last().copied() != Some(N as u64) {
                let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.message())
                    .await
                    .expect("events keep coming")
                    .unwrap()
                    .unwrap()
                    .notification
                    .unwrap();
                seen.push(n.event_id);
            }
            (r, seen)
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for reader in readers {
        let (r, seen) = reader.await.unwrap();
        let first = seen[0];
        let expected: Vec<u64> = (first..=N as u64).collect();
        assert_eq!(
            seen, expected,
            "reader {r} saw a gap, a duplicate or a reorder"
        );
        if r % 2 == 0 {
            assert_eq!(first, 1, "reader {r} replayed from the start");
        }
    }
    // Every invoice was delivered once.
    let mut all = open(&mut h, &resume_token(0)).await;
    let mut invoices = BTreeSet::new();
    for _ in 0..N {
        invoices.insert(next(&mut all).await.invoice_number);
    }
    assert_eq!(invoices.len(), N);
    h.stop().await;
}

#[tokio::test]
async fn a_token_older_than_the_retained_log_is_out_of_range() {
    let mut h = InProcessSidecar::start().await;
    generate(&mut h, "INV-P-1").await;
    generate(&mut h, "INV-P-2").await;
    let mut s = open(&mut h, "").await;
    h.pay("INV-P-1").await;
    let first = next_response(&mut s).await;
    h.pay("INV-P-2").await;
    let second = next_response(&mut s).await;
    drop(s);
    // Retention removes everything recorded so far (the same store file, as the pruning task
    // would).
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    assert_eq!(h.prune_events(cutoff).await, 2);
    let err = h
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: first.resume_token,
            invoice_numbers: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(reason(&err), "RESUME_TOKEN_EXPIRED");
    // The newest token is still good, and so is the token for the oldest retained event.
    open(&mut h, &second.resume_token).await;
    open(&mut h, o2o_sidecar::grpc::stream::OLDEST).await;
    h.stop().await;
}
