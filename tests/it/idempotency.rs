//! Idempotent GeneratePaymentCode: the same key and request give the original answer (also
//! after a restart), the same key with another request is refused, a concurrent duplicate is
//! ABORTED while DOKU is called once, and 1,000 calls under injected DOKU failures with
//! client retries never produce a second payment code.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use o2o_sidecar::grpc::pb;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt as _;

use o2o_sidecar::testing::{InProcessSidecar, Options, reason, request};

fn keyed(invoice: &str, amount: i64, key: &str) -> pb::GeneratePaymentCodeRequest {
    pb::GeneratePaymentCodeRequest {
        idempotency_key: key.into(),
        ..request(invoice, amount)
    }
}

#[tokio::test]
async fn the_same_key_and_request_return_the_original_answer_also_after_a_restart() {
    let mut h = InProcessSidecar::start().await;
    let first = h
        .grpc
        .generate_payment_code(keyed("INV-ID-1", 25_000, "order-1"))
        .await
        .unwrap()
        .into_inner();
    h.restart().await;
    let again = h
        .grpc
        .generate_payment_code(keyed("INV-ID-1", 25_000, "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again, "the stored answer, byte for byte");
    // A different request under the same key, before and after another restart.
    for _ in 0..2 {
        for other in [
            keyed("INV-ID-1", 25_001, "order-1"),
            keyed("INV-ID-2", 25_000, "order-1"),
            pb::GeneratePaymentCodeRequest {
                reusable: true,
                ..keyed("INV-ID-1", 25_000, "order-1")
            },
        ] {
            let err = h.grpc.generate_payment_code(other).await.unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");
            let info = err.get_error_details().error_info().cloned().unwrap();
            assert_eq!(info.metadata["invoice_number"], "INV-ID-1");
        }
        h.restart().await;
    }
    assert_eq!(h.sim_requests("/payment-code").await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_with_one_key_are_aborted_and_doku_is_called_once() {
    let mut h = InProcessSidecar::start().await;
    // DOKU takes 800 ms to answer: every other call arrives while the first is in flight.
    h.fault(json!({"target": "payment_code", "kind": "delay", "delay_ms": 800, "times": 1}))
        .await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut grpc = h.grpc.clone();
            tokio::spawn(async move {
                grpc.generate_payment_code(keyed("INV-CONC-1", 10_000, "conc-1"))
                    .await
            })
        })
        .collect();
    let (mut ok, mut aborted) = (Vec::new(), 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => ok.push(r.into_inner().payment.unwrap().payment_code),
            Err(e) => {
                assert_eq!(e.code(), Code::Aborted, "{e:?}");
                assert_eq!(reason(&e), "REQUEST_IN_FLIGHT");
                assert!(e.get_error_details().retry_info().is_some());
                aborted += 1;
            }
        }
    }
    assert!(!ok.is_empty());
    assert!(aborted > 0, "the other calls overlapped the first");
    // A retry after the answer gets the same code.
    let after = h
        .generate(keyed("INV-CONC-1", 10_000, "conc-1"))
        .await
        .payment_code;
    assert!(ok.iter().all(|c| *c == after));
    assert_eq!(
        h.sim_requests("/payment-code").await.len(),
        1,
        "one DOKU call"
    );
    assert_eq!(h.sim_payments("INV-CONC-1").await.len(), 1);
    h.stop().await;
}

/// One injected DOKU failure, scoped to an invoice and used once.
fn random_fault(rng: &mut StdRng, invoice: &str) -> Value {
    let mut f = match rng.random_range(0..7) {
        0 => json!({"kind": "status", "status": 500}),
        1 => json!({"kind": "status", "status": 503}),
        2 => json!({"kind": "status", "status": 429}),
        // Processed, answered after the sidecar's 250 ms timeout: outcome unknown.
        3 => json!({"kind": "delay", "delay_ms": 600}),
        // Connection reset before DOKU read the request...
        4 => json!({"kind": "drop", "after_processing": false}),
        // ...and after it issued the code.
        5 => json!({"kind": "drop", "after_processing": true}),
        _ => json!({"kind": "delay", "delay_ms": 1200}),
    };
    f["target"] = json!("payment_code");
    f["times"] = json!(1);
    f["invoice_number"] = json!(invoice);
    f
}

/// 1,000 invoices (`O2O_FAULT_CALLS` to change), each with up to three DOKU failures injected
/// (5xx, 429, timeouts after DOKU issued the code, connection resets before and after), some
/// called twice at once; callers retry until they get a code. Every invoice must end with one
/// code at DOKU, one Request-Id for all its attempts, and the same code in every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_calls_under_doku_faults_never_issue_a_second_code() {
    let calls: usize = std::env::var("O2O_FAULT_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("O2O_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mut h = InProcessSidecar::start_with(Options {
        doku_timeout: Duration::from_millis(250),
        max_attempts: 3,
        ..Options::default()
    })
    .await;
    // Printed first, so that a failing run can be replayed (`O2O_FAULT_SEED`).
    eprintln!("generate under faults: seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    for i in 0..calls {
        let invoice = format!("INV-FLT-{i}");
        for _ in 0..rng.random_range(0..=3) {
            faults.push(random_fault(&mut rng, &invoice));
        }
    }
    let injected = faults.len();
    h.fault(Value::Array(faults)).await;

    // invoice → every code a caller was given.
    let answers: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let twice: Vec<bool> = (0..calls).map(|_| rng.random_bool(0.1)).collect();
    let jobs = (0..calls).flat_map(|i| {
        let copies = if twice[i] { 2 } else { 1 };
        (0..copies).map(move |_| i)
    });
    futures::stream::iter(jobs)
        .map(|i| {
            let mut grpc = h.grpc.clone();
            let answers = answers.clone();
            let attempts = attempts.clone();
            async move {
                let invoice = format!("INV-FLT-{i}");
                // Half the callers use an idempotency key, half rely on the invoice.
                let req = if i % 2 == 0 {
                    keyed(&invoice, 10_000 + i as i64, &format!("flt-{i}"))
                } else {
                    request(&invoice, 10_000 + i as i64)
                };
                // A caller retries while another holds the attempt's lease (`ABORTED`) or
                // DOKU failed (`UNAVAILABLE`); the lease lasts a worst-case DOKU call (three
                // tries of 250 ms), so the bound is time, not a count: forty quick `ABORTED`
                // answers 25 ms apart can all fall inside one lease on a busy machine.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let mut tries = 0;
                while tokio::time::Instant::now() < deadline {
                    tries += 1;
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match grpc.generate_payment_code(req.clone()).await {
                        Ok(r) => {
                            let code = r.into_inner().payment.unwrap().payment_code;
                            assert!(!code.is_empty());
                            answers
                                .lock()
                                .unwrap()
                                .entry(invoice)
                                .or_default()
                                .insert(code);
                            return;
                        }
                        Err(e) if matches!(e.code(), Code::Unavailable | Code::Aborted) => {
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                        Err(e) => panic!("{invoice}: {e:?}"),
                    }
                }
                panic!("{invoice}: no code within 30 s ({tries} attempts)");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    let answers = answers.lock().unwrap().clone();
    let sim_payments = h.sim_get("/_sim/payments").await;
    let sim_requests = h.sim_get("/_sim/requests").await;
    let mut doku_codes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in sim_payments.as_array().unwrap() {
        doku_codes
            .entry(p["invoice_number"].as_str().unwrap().to_owned())
            .or_default()
            .push(p["payment_code"].as_str().unwrap().to_owned());
    }
    let mut request_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut replays = 0;
    for r in sim_requests.as_array().unwrap() {
        if !r["path"].as_str().unwrap().contains("/payment-code") {
            continue;
        }
        // A second request for an invoice would be refused (`duplicate_invoice`), a changed
        // body under the same Request-Id too (`invalid_request_id`): nothing may be refused.
        assert_ne!(r["verdict"], "rejected", "DOKU refused a request: {r}");
        replays += usize::from(r["verdict"] == "replayed");
        request_ids
            .entry(r["invoice_number"].as_str().unwrap_or("").to_owned())
            .or_default()
            .insert(r["request_id"].as_str().unwrap().to_owned());
    }
    let mut second_codes = 0;
    for i in 0..calls {
        let invoice = format!("INV-FLT-{i}");
        let given = &answers[&invoice];
        let at_doku = &doku_codes[&invoice];
        if given.len() != 1 || at_doku.len() != 1 || !given.contains(&at_doku[0]) {
            second_codes += 1;
            eprintln!("{invoice}: callers got {given:?}, DOKU holds {at_doku:?}");
        }
        assert_eq!(
            request_ids[&invoice].len(),
            1,
            "{invoice}: every attempt must reuse the first Request-Id"
        );
    }
    let stored = h
        .grpc
        .get_status(pb::GetStatusRequest {
            invoice_number: "INV-FLT-0".into(),
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert!(answers["INV-FLT-0"].contains(&stored.payment_code));
    let doku_calls = sim_requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/payment-code"))
        .count();
    println!(
        "generate under faults: invoices={calls} duplicate_callers={} faults_injected={injected} \
         client_attempts={} doku_requests={doku_calls} doku_replays_409={replays} \
         second_codes={second_codes} seed={seed}",
        twice.iter().filter(|t| **t).count(),
        attempts.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(second_codes, 0);
    assert_eq!(doku_codes.len(), calls, "one payment at DOKU per invoice");
    h.stop().await;
}
