//! Hostile peers, part one: a DOKU (or something answering as DOKU) that lies, and signed
//! notifications that try to make the sidecar emit what the contract does not allow. Each test
//! tries the attack and fails if it works. Run them with `cargo test --test it hostile_doku`.
//!
//! Lying answers come from a fake DOKU (wiremock) whose answers the test sets; rejections and
//! timeouts from the simulator's fault injection; notifications are signed with the test key.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use o2o_sidecar::grpc::pb;
use serde_json::{Value, json};
use tonic::Code;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::method};

use o2o_sidecar::testing::{
    InProcessSidecar, Options, PATH, SECRET, eventually, reason, request, signed_headers,
};

use crate::notifications::{next, post, stream_from_start};

// ---------------------------------------------------------------------------------------
// A fake DOKU whose answers the test decides

#[derive(Default)]
struct FakeState {
    /// Codes issued honestly, per invoice.
    codes: HashMap<String, String>,
    /// When set, the Generate answer (status, body) instead of an honest one.
    generate_lie: Option<(u16, String)>,
    /// `how_to_pay_page` of honest Generate answers.
    how_to_pay_page: Option<String>,
    /// The Check Status answer body; `None`: an honest PENDING.
    status_answer: Option<String>,
}

#[derive(Clone, Default)]
struct FakeDoku(Arc<Mutex<FakeState>>);

impl Respond for FakeDoku {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.0.lock().unwrap();
        let path = request.url.path();
        if let Some(invoice) = path.strip_prefix("/orders/v1/status/") {
            let body = state.status_answer.clone().unwrap_or_else(|| {
                let code = state.codes.get(invoice).cloned().unwrap_or_default();
                status_body(Some(invoice), Some(10_000), Some(&code), "PENDING")
            });
            return ResponseTemplate::new(200).set_body_string(body);
        }
        if let Some((status, body)) = state.generate_lie.clone() {
            return ResponseTemplate::new(status).set_body_string(body);
        }
        let sent: Value = serde_json::from_slice(&request.body).unwrap();
        let invoice = sent["order"]["invoice_number"].as_str().unwrap().to_owned();
        let n = state.codes.len() + 1;
        let code = state
            .codes
            .entry(invoice.clone())
            .or_insert_with(|| format!("88800000{n:04}"))
            .clone();
        let page = state
            .how_to_pay_page
            .clone()
            .unwrap_or_else(|| "https://sandbox.doku.com/how-to-pay/x".into());
        ResponseTemplate::new(200).set_body_json(json!({
            "order": {"invoice_number": invoice, "amount": sent["order"]["amount"]},
            "online_to_offline_info": {
                "payment_code": code,
                "expired_date_utc": "2030-01-01T00:00:00Z",
                "how_to_pay_page": page,
                "how_to_pay_api": "https://api-sandbox.doku.com/how-to-pay-api/x"
            }
        }))
    }
}

/// A Check Status / notification body with each part optional.
fn status_body(
    invoice: Option<&str>,
    amount: Option<i64>,
    code: Option<&str>,
    status: &str,
) -> String {
    let mut order = serde_json::Map::new();
    if let Some(i) = invoice {
        order.insert("invoice_number".into(), i.into());
    }
    if let Some(a) = amount {
        order.insert("amount".into(), a.into());
    }
    let mut body = json!({
        "service": {"id": "ONLINE_TO_OFFLINE"},
        "channel": {"id": "ONLINE_TO_OFFLINE_INDOMARET"},
        "transaction": {"status": status, "date": "2026-11-25T07:06:28Z"},
    });
    if invoice.is_some() || amount.is_some() {
        body["order"] = Value::Object(order);
    }
    if let Some(c) = code {
        body["online_to_offline_info"] = json!({"payment_code": c});
    }
    body.to_string()
}

async fn fake_doku() -> (MockServer, FakeDoku) {
    let server = MockServer::start().await;
    let fake = FakeDoku::default();
    Mock::given(method("POST"))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    (server, fake)
}

async fn rig_against(server: &MockServer, options: &Options) -> InProcessSidecar {
    let url = server.uri();
    InProcessSidecar::start_adjusted(options.clone(), move |mut c, _| {
        c.doku_base_url = url;
        c
    })
    .await
}

async fn calls(server: &MockServer, path_contains: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path().contains(path_contains))
        .collect()
}

async fn refresh(rig: &mut InProcessSidecar, invoice: &str) -> Result<pb::Payment, tonic::Status> {
    rig.grpc
        .get_status(pb::GetStatusRequest {
            invoice_number: invoice.into(),
            refresh: true,
        })
        .await
        .map(|r| r.into_inner().payment.unwrap())
}

async fn stored(rig: &mut InProcessSidecar, invoice: &str) -> pb::Payment {
    rig.grpc
        .get_status(pb::GetStatusRequest {
            invoice_number: invoice.into(),
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Lying Check Status answers

/// Every lie says SUCCESS: if any were believed, the payment would be PAID and a
/// RECONCILIATION event emitted. Both the caller's refresh and the sweeper see each lie.
#[tokio::test]
async fn hostile_check_status_about_another_payment_changes_nothing() {
    let (server, fake) = fake_doku().await;
    let mut rig = rig_against(
        &server,
        &Options {
            sweep_interval: Duration::from_millis(50),
            first_check_after: Duration::ZERO,
            ..Options::default()
        },
    )
    .await;
    let invoice = "INV-LIE-1";
    let code = rig.generate(request(invoice, 10_000)).await.payment_code;

    let lies = [
        (
            "another invoice",
            status_body(Some("INV-LIE-OTHER"), Some(10_000), Some(&code), "SUCCESS"),
        ),
        (
            "no invoice",
            status_body(None, Some(10_000), Some(&code), "SUCCESS"),
        ),
        (
            "no amount",
            status_body(Some(invoice), None, Some(&code), "SUCCESS"),
        ),
        (
            "another amount",
            status_body(Some(invoice), Some(1), Some(&code), "SUCCESS"),
        ),
        (
            "no order at all",
            status_body(None, None, Some(&code), "SUCCESS"),
        ),
        (
            "another code",
            status_body(Some(invoice), Some(10_000), Some("99999999"), "SUCCESS"),
        ),
        (
            "another channel",
            status_body(Some(invoice), Some(10_000), Some(&code), "SUCCESS")
                .replace("ONLINE_TO_OFFLINE_INDOMARET", "ONLINE_TO_OFFLINE_ALFA"),
        ),
    ];
    for (what, lie) in lies {
        fake.0.lock().unwrap().status_answer = Some(lie);
        // The caller's refresh: retryable "outcome unknown", nothing changed.
        let err = refresh(&mut rig, invoice).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{what}");
        assert_eq!(reason(&err), "DOKU_OUTCOME_UNKNOWN", "{what}");
        // The sweeper: let it ask about this lie twice more.
        let seen = calls(&server, "/orders/v1/status/").await.len();
        eventually(
            &format!("the sweeper asks ({what})"),
            Duration::from_secs(5),
            || async { calls(&server, "/orders/v1/status/").await.len() >= seen + 2 },
        )
        .await;
        let p = stored(&mut rig, invoice).await;
        assert_eq!(p.status(), pb::PaymentStatus::Pending, "{what}");
        assert!(p.pay_time.is_none(), "{what}");
    }
    let (_, metrics) = rig.admin_get("/metrics").await;
    for reason in [
        "invoice_mismatch",
        "invoice_missing",
        "amount_missing",
        "amount_mismatch",
        "code_mismatch",
        "channel_mismatch",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("o2o_doku_answers_rejected_total")
                    && l.contains("check_status")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{reason} not counted"
        );
    }

    // The honest answer is applied: the first and only event of the log is this PAID.
    fake.0.lock().unwrap().status_answer = Some(status_body(
        Some(invoice),
        Some(10_000),
        Some(&code),
        "SUCCESS",
    ));
    let p = refresh(&mut rig, invoice).await.unwrap();
    assert_eq!(p.status(), pb::PaymentStatus::Paid);
    let mut s = rig
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: o2o_sidecar::grpc::stream::resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let e = next(&mut s).await;
    assert_eq!(
        (e.invoice_number.as_str(), e.status()),
        (invoice, pb::PaymentStatus::Paid)
    );
    assert_eq!(e.source(), pb::Source::Reconciliation);
    assert_eq!(e.event_id, 1, "no event before it");
    rig.stop().await;
}

// ---------------------------------------------------------------------------------------
// Lying Generate answers

#[tokio::test]
async fn hostile_generate_answer_for_another_payment_stores_no_code() {
    let (server, fake) = fake_doku().await;
    let mut rig = rig_against(&server, &Options::default()).await;
    let invoice = "INV-LIE-GEN";
    let lies = [
        ("no invoice", r#"{"online_to_offline_info":{"payment_code":"222222"}}"#.to_owned()),
        (
            "another invoice",
            r#"{"order":{"invoice_number":"INV-X","amount":10000},"online_to_offline_info":{"payment_code":"222222"}}"#.to_owned(),
        ),
        (
            "another amount",
            format!(r#"{{"order":{{"invoice_number":"{invoice}","amount":1}},"online_to_offline_info":{{"payment_code":"222222"}}}}"#),
        ),
    ];
    for (what, lie) in lies {
        for status in [200, 409] {
            fake.0.lock().unwrap().generate_lie = Some((status, lie.clone()));
            let err = rig
                .grpc
                .generate_payment_code(request(invoice, 10_000))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable, "{what} {status}");
            assert_eq!(reason(&err), "DOKU_OUTCOME_UNKNOWN", "{what} {status}");
            let p = stored(&mut rig, invoice).await;
            assert_eq!(p.payment_code, "", "{what} {status}: no code stored");
        }
    }
    // DOKU answers honestly now (and with a how-to-pay link that is not a web URL): the
    // stored request is replayed under its one Request-Id and its real code stored.
    {
        let mut state = fake.0.lock().unwrap();
        state.generate_lie = None;
        state.how_to_pay_page = Some("javascript:alert(1)".into());
    }
    let p = rig
        .grpc
        .generate_payment_code(request(invoice, 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_ne!(p.payment_code, "222222");
    assert!(p.payment_code.starts_with("888"), "{}", p.payment_code);
    assert_eq!(
        p.how_to_pay_url, "",
        "a javascript: URL never reaches callers"
    );
    assert!(p.how_to_pay_api_url.starts_with("https://"));
    let sent = calls(&server, "/payment-code").await;
    assert_eq!(sent.len(), 7);
    let ids: Vec<_> = sent
        .iter()
        .map(|r| r.headers.get("Request-Id").unwrap().clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one Request-Id for every attempt"
    );
    rig.stop().await;
}

// ---------------------------------------------------------------------------------------
// A definitive rejection frees the invoice, and nothing else does

fn with_amount(invoice: &str, amount: i64, key: &str) -> pb::GeneratePaymentCodeRequest {
    pb::GeneratePaymentCodeRequest {
        idempotency_key: key.into(),
        ..request(invoice, amount)
    }
}

#[tokio::test]
async fn hostile_a_rejected_invoice_gets_one_code_on_a_corrected_request() {
    let mut h = InProcessSidecar::start().await;
    let invoice = "INV-REJ-1";
    h.fault(json!({"target": "payment_code", "kind": "status", "status": 400, "times": 1, "invoice_number": invoice}))
        .await;
    let rejected = with_amount(invoice, 10_000, "key-rej-1");
    let err = h
        .grpc
        .generate_payment_code(rejected.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "DOKU_REJECTED");
    assert_eq!(h.sim_requests("/payment-code").await.len(), 1);

    // No payment exists at DOKU.
    let err = h
        .grpc
        .get_status(pb::GetStatusRequest {
            invoice_number: invoice.into(),
            refresh: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "PAYMENT_NOT_FOUND")
    );

    // The identical request: the same rejection, DOKU not called.
    let err = h
        .grpc
        .generate_payment_code(rejected.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "DOKU_REJECTED");
    assert_eq!(
        h.sim_requests("/payment-code").await.len(),
        1,
        "DOKU not called again"
    );

    // The key of the rejected request belongs to this invoice: another invoice cannot use it.
    let err = h
        .grpc
        .generate_payment_code(with_amount("INV-REJ-OTHER", 10_000, "key-rej-1"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");

    // The corrected request (same key) gets a code, under a new Request-Id.
    let corrected = with_amount(invoice, 12_000, "key-rej-1");
    let p = h
        .grpc
        .generate_payment_code(corrected.clone())
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert!(!p.payment_code.is_empty());
    assert_eq!(p.amount, 12_000);
    let sent = h.sim_requests("/payment-code").await;
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0]["request_id"], sent[1]["request_id"]);

    // Never a second code: neither another request nor the rejected one again (with its
    // key, which now belongs to the corrected request, or without it).
    for other in [
        with_amount(invoice, 13_000, ""),
        with_amount(invoice, 10_000, ""),
    ] {
        let err = h.grpc.generate_payment_code(other).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::AlreadyExists, "INVOICE_EXISTS")
        );
    }
    let err = h.grpc.generate_payment_code(rejected).await.unwrap_err();
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");
    let again = h
        .grpc
        .generate_payment_code(corrected)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.payment.unwrap().payment_code, p.payment_code);
    assert_eq!(h.sim_requests("/payment-code").await.len(), 2);
    assert_eq!(h.sim_payments(invoice).await.len(), 1);
    assert_eq!(h.status(invoice, false).await.payment_code, p.payment_code);
    h.stop().await;
}

#[tokio::test]
async fn hostile_after_an_unknown_outcome_a_rejection_frees_nothing() {
    let mut h = InProcessSidecar::start_with(Options {
        doku_timeout: Duration::from_millis(300),
        max_attempts: 1,
        ..Options::default()
    })
    .await;
    let invoice = "INV-UNK-REJ";
    // DOKU issues the code but the answer comes too late: outcome unknown.
    h.fault(json!({"target": "payment_code", "kind": "delay", "delay_ms": 1500, "times": 1}))
        .await;
    let first = request(invoice, 10_000);
    let err = h
        .grpc
        .generate_payment_code(first.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "DOKU_OUTCOME_UNKNOWN");
    // The replay is refused with a 4xx: the invoice still stays bound to that Request-Id.
    h.fault(json!({"target": "payment_code", "kind": "status", "status": 400, "times": 1}))
        .await;
    let err = h
        .grpc
        .generate_payment_code(first.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "DOKU_REJECTED");
    let err = h
        .grpc
        .generate_payment_code(request(invoice, 20_000))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::AlreadyExists, "INVOICE_EXISTS")
    );

    // The replay recovers the one code DOKU issued.
    let p = h
        .grpc
        .generate_payment_code(first)
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    let at_doku = h.sim_payments(invoice).await;
    assert_eq!(at_doku.len(), 1);
    assert_eq!(p.payment_code, at_doku[0]["payment_code"].as_str().unwrap());
    let sent = h.sim_requests("/payment-code").await;
    assert!(
        sent.iter()
            .all(|r| r["request_id"] == sent[0]["request_id"])
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Signed notifications that must not be streamed

/// A DOKU-shaped notification; `date: None` leaves out `transaction.date`.
fn notification(
    invoice: &str,
    amount: i64,
    code: &str,
    status: &str,
    date: Option<&str>,
) -> String {
    let mut transaction = json!({"status": status, "original_request_id": "r-0"});
    if let Some(d) = date {
        transaction["date"] = d.into();
    }
    json!({
        "service": {"id": "ONLINE_TO_OFFLINE"},
        "acquirer": {"id": "INDOMARET"},
        "channel": {"id": "ONLINE_TO_OFFLINE_INDOMARET"},
        "transaction": transaction,
        "order": {"invoice_number": invoice, "amount": amount},
        "online_to_offline_info": {"payment_code": code}
    })
    .to_string()
}

async fn deliver(h: &InProcessSidecar, body: &str, request_id: &str) -> u16 {
    post(
        h,
        body.as_bytes(),
        &signed_headers(body.as_bytes(), SECRET, PATH, request_id),
    )
    .await
}

/// Events of the log from the start up to (not including) the sentinel invoice's.
async fn events_before_sentinel(h: &mut InProcessSidecar, sentinel: &str) -> Vec<pb::Notification> {
    let mut s = stream_from_start(h).await;
    let mut got = Vec::new();
    loop {
        let n = next(&mut s).await;
        if n.invoice_number == sentinel {
            return got;
        }
        got.push(n);
    }
}

async fn verdict_of(h: &InProcessSidecar, request_id: &str) -> Option<String> {
    let path = o2o_sidecar::store::sqlite::database_path(&h.store_url).unwrap();
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    db.query_row(
        "SELECT verdict FROM notifications WHERE doku_request_id = ?1",
        [request_id],
        |row| row.get(0),
    )
    .map(Some)
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        e => Err(e),
    })
    .unwrap()
}

#[tokio::test]
async fn hostile_a_pending_notification_for_an_unknown_invoice_is_not_streamed_and_reserves_nothing()
 {
    let mut h = InProcessSidecar::start().await;
    let phantom = "INV-PHANTOM-1";
    let pending = notification(
        phantom,
        10_000,
        "5550001",
        "PENDING",
        Some("2026-11-25T07:06:28Z"),
    );
    assert_eq!(deliver(&h, &pending, "req-phantom-1").await, 200);
    assert_eq!(
        verdict_of(&h, "req-phantom-1").await.as_deref(),
        Some("ACCEPTED"),
        "stored for audit"
    );
    let err = h
        .grpc
        .get_status(pb::GetStatusRequest {
            invoice_number: phantom.into(),
            refresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "no payment row");
    // The invoice is free: the merchant's request gets its code.
    let p = h
        .grpc
        .generate_payment_code(request(phantom, 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert!(!p.payment_code.is_empty());

    // A PAID for an unknown invoice is still created and streamed (DOKU knows it): the
    // sentinel, and nothing before it.
    let paid = notification(
        "INV-FOREIGN-S",
        5_000,
        "5550002",
        "SUCCESS",
        Some("2026-11-25T07:06:28Z"),
    );
    assert_eq!(deliver(&h, &paid, "req-foreign-s").await, 200);
    assert_eq!(events_before_sentinel(&mut h, "INV-FOREIGN-S").await, []);
    h.stop().await;
}

#[tokio::test]
async fn hostile_repeat_payments_of_a_reusable_code_count_once_each() {
    let mut h = InProcessSidecar::start().await;
    let mut codes = HashMap::new();
    for invoice in ["INV-RU-1", "INV-RU-2", "INV-RU-3"] {
        let p = h
            .grpc
            .generate_payment_code(pb::GeneratePaymentCodeRequest {
                reusable: true,
                ..request(invoice, 10_000)
            })
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap();
        codes.insert(invoice, p.payment_code);
    }
    // The same dateless PAID, sent again under new Request-Ids: one payment.
    let dateless = notification("INV-RU-1", 10_000, &codes["INV-RU-1"], "SUCCESS", None);
    for id in ["ru1-a", "ru1-b", "ru1-c"] {
        assert_eq!(deliver(&h, &dateless, id).await, 200);
    }
    assert_eq!(
        verdict_of(&h, "ru1-b").await.as_deref(),
        Some("UNDATED_REPEAT")
    );
    // Two dated payments: two events.
    for (id, date) in [
        ("ru2-a", "2026-11-25T07:00:00Z"),
        ("ru2-b", "2026-11-25T08:00:00Z"),
    ] {
        let b = notification(
            "INV-RU-2",
            10_000,
            &codes["INV-RU-2"],
            "SUCCESS",
            Some(date),
        );
        assert_eq!(deliver(&h, &b, id).await, 200);
    }
    // One dated payment redelivered under a new Request-Id: one event.
    let once = notification(
        "INV-RU-3",
        10_000,
        &codes["INV-RU-3"],
        "SUCCESS",
        Some("2026-11-25T09:00:00Z"),
    );
    for id in ["ru3-a", "ru3-b"] {
        assert_eq!(deliver(&h, &once, id).await, 200);
    }
    let sentinel = notification(
        "INV-RU-SENTINEL",
        1_000,
        "5550003",
        "SUCCESS",
        Some("2026-11-25T07:06:28Z"),
    );
    assert_eq!(deliver(&h, &sentinel, "ru-sentinel").await, 200);

    let events = events_before_sentinel(&mut h, "INV-RU-SENTINEL").await;
    let ids: Vec<_> = events.iter().map(|e| e.doku_request_id.as_str()).collect();
    assert_eq!(ids, ["ru1-a", "ru2-a", "ru2-b", "ru3-a"]);
    assert!(events.iter().all(|e| e.status() == pb::PaymentStatus::Paid));
    h.stop().await;
}

#[tokio::test]
async fn hostile_a_request_id_longer_than_128_characters_is_refused_before_storing() {
    let h = InProcessSidecar::start().await;
    let b = notification(
        "INV-LONG-ID",
        1_000,
        "5550004",
        "SUCCESS",
        Some("2026-11-25T07:06:28Z"),
    );
    let too_long = "r".repeat(129);
    assert_eq!(deliver(&h, &b, &too_long).await, 401);
    assert_eq!(verdict_of(&h, &too_long).await, None, "nothing stored");
    let longest = "r".repeat(128);
    assert_eq!(deliver(&h, &b, &longest).await, 200);
    h.stop().await;
}
