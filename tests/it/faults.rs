//! The fault matrix, driven by the simulator's fault API and by hand-made notifications:
//! DOKU 500/503/429, answers slower than the timeout, connections reset before and after DOKU
//! processed the request, 409 replays; duplicate, delayed, out-of-order and badly signed
//! notifications; a read-only store and a full disk. Each case tries to make the bad thing
//! happen: a second code, a lost result, an event emitted that should not be, an
//! acknowledgement of something not stored.

use std::time::Duration;

use o2o_sidecar::grpc::{pb, stream::resume_token};
use serde_json::{Value, json};
use tonic::Code;

use o2o_sidecar::testing::{
    ChildOptions, ChildSidecar, InProcessSidecar, Options, PATH, SECRET, eventually,
    notification_body, post_notification, reason, request, signed_headers,
};

use crate::notifications::post;

/// One DOKU-side case: faults for the invoice, then what the first call and the retry see.
struct DokuCase {
    name: &'static str,
    faults: Vec<Value>,
    /// Reason of the first call's error, or `None` when the first call gets the code.
    first_error: Option<&'static str>,
    /// Verdicts the simulator logged for the invoice's requests, in order.
    verdicts: &'static [&'static str],
}

fn fault(kind: Value, times: u32) -> Value {
    let mut f = kind;
    f["target"] = json!("payment_code");
    f["times"] = json!(times);
    f
}

#[tokio::test]
async fn doku_failures_never_lose_a_code_or_issue_a_second_one() {
    let mut h = InProcessSidecar::start_with(Options {
        doku_timeout: Duration::from_millis(300),
        max_attempts: 3,
        ..Options::default()
    })
    .await;
    let status = |s: u16| json!({"kind": "status", "status": s});
    let slow = json!({"kind": "delay", "delay_ms": 900});
    let reset_before = json!({"kind": "drop", "after_processing": false});
    let reset_after = json!({"kind": "drop", "after_processing": true});
    let cases = vec![
        DokuCase {
            name: "DOKU 500 twice",
            faults: vec![fault(status(500), 2)],
            first_error: None,
            verdicts: &["faulted", "faulted", "accepted"],
        },
        DokuCase {
            name: "DOKU 503 twice",
            faults: vec![fault(status(503), 2)],
            first_error: None,
            verdicts: &["faulted", "faulted", "accepted"],
        },
        DokuCase {
            name: "DOKU 429 twice",
            faults: vec![fault(status(429), 2)],
            first_error: None,
            verdicts: &["faulted", "faulted", "accepted"],
        },
        DokuCase {
            name: "DOKU 503 on every attempt",
            faults: vec![fault(status(503), 3)],
            first_error: Some("DOKU_UNAVAILABLE"),
            verdicts: &["faulted", "faulted", "faulted", "accepted"],
        },
        DokuCase {
            name: "answer slower than the timeout, once",
            faults: vec![fault(slow.clone(), 1)],
            first_error: None,
            verdicts: &["accepted", "replayed"],
        },
        DokuCase {
            name: "answer slower than the timeout, every attempt",
            faults: vec![fault(slow, 3)],
            first_error: Some("DOKU_OUTCOME_UNKNOWN"),
            verdicts: &["accepted", "replayed", "replayed", "replayed"],
        },
        DokuCase {
            name: "connection reset before DOKU read the request",
            faults: vec![fault(reset_before.clone(), 1)],
            first_error: None,
            verdicts: &["faulted", "accepted"],
        },
        DokuCase {
            name: "connection reset before, on every attempt",
            faults: vec![fault(reset_before, 3)],
            // The client cannot tell a reset before from one after: outcome unknown.
            first_error: Some("DOKU_OUTCOME_UNKNOWN"),
            verdicts: &["faulted", "faulted", "faulted", "accepted"],
        },
        DokuCase {
            name: "connection reset after DOKU issued the code",
            faults: vec![fault(reset_after.clone(), 1)],
            first_error: None,
            verdicts: &["accepted", "replayed"],
        },
        DokuCase {
            name: "connection reset after, on every attempt",
            faults: vec![fault(reset_after, 3)],
            first_error: Some("DOKU_OUTCOME_UNKNOWN"),
            verdicts: &["accepted", "replayed", "replayed", "replayed"],
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let invoice = format!("INV-DF-{i}");
        let faults: Vec<Value> = case
            .faults
            .into_iter()
            .map(|mut f| {
                f["invoice_number"] = json!(invoice);
                f
            })
            .collect();
        h.fault(Value::Array(faults)).await;
        let first = h
            .grpc
            .generate_payment_code(request(&invoice, 10_000))
            .await;
        let code = match (first, case.first_error) {
            (Ok(r), None) => r.into_inner().payment.unwrap().payment_code,
            (Err(e), Some(want)) => {
                assert_eq!(reason(&e), want, "{}", case.name);
                assert_eq!(e.code(), Code::Unavailable, "{}", case.name);
                // Stored PENDING without a code; the retry recovers the code.
                let p = h
                    .grpc
                    .get_status(pb::GetStatusRequest {
                        invoice_number: invoice.clone(),
                        refresh: false,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .payment
                    .unwrap();
                assert_eq!(p.status(), pb::PaymentStatus::Pending, "{}", case.name);
                assert_eq!(p.payment_code, "", "{}", case.name);
                h.grpc
                    .generate_payment_code(request(&invoice, 10_000))
                    .await
                    .unwrap_or_else(|e| panic!("{}: retry failed: {e:?}", case.name))
                    .into_inner()
                    .payment
                    .unwrap()
                    .payment_code
            }
            (other, want) => panic!("{}: got {other:?}, wanted error {want:?}", case.name),
        };
        let sim = h.sim_payments(&invoice).await;
        assert_eq!(sim.len(), 1, "{}: one code at DOKU", case.name);
        assert_eq!(sim[0]["payment_code"], code.as_str(), "{}", case.name);
        let sent: Vec<Value> = h
            .sim_requests("/payment-code")
            .await
            .into_iter()
            .filter(|r| r["invoice_number"] == invoice.as_str())
            .collect();
        let verdicts: Vec<&str> = sent
            .iter()
            .map(|r| r["verdict"].as_str().unwrap())
            .collect();
        assert_eq!(verdicts, case.verdicts, "{}", case.name);
        assert!(
            sent.iter()
                .all(|r| r["request_id"] == sent[0]["request_id"]),
            "{}: one Request-Id",
            case.name
        );
        println!(
            "doku fault | {:<48} | first call: {:<20} | DOKU saw: {}",
            case.name,
            case.first_error.unwrap_or("code"),
            verdicts.join(", ")
        );
    }
    h.stop().await;
}

/// What the matrix prints and the doc records: case, HTTP answer, emitted.
struct Row {
    case: &'static str,
    http: u16,
    emitted: &'static str,
}

async fn notify(h: &InProcessSidecar, b: &str, key: &str, target: &str, request_id: &str) -> u16 {
    post(
        h,
        b.as_bytes(),
        &signed_headers(b.as_bytes(), key, target, request_id),
    )
    .await
}

async fn code_of(h: &mut InProcessSidecar, invoice: &str) -> String {
    h.grpc
        .generate_payment_code(request(invoice, 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
        .payment_code
}

/// Waits until the simulator's notification deliveries for `invoice` made `attempts` attempts.
async fn sim_delivered(h: &InProcessSidecar, invoice: &str, attempts: u64) {
    eventually(
        "the simulator's delivery",
        Duration::from_secs(5),
        || async {
            let all = h.sim_get("/_sim/notifications").await;
            let n: u64 = all
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["invoice_number"] == invoice)
                .map(|d| d["attempts"].as_u64().unwrap())
                .sum();
            n >= attempts
        },
    )
    .await;
}

#[tokio::test]
async fn every_bad_notification_is_rejected_or_deduplicated_and_nothing_is_emitted() {
    let mut h = InProcessSidecar::start().await;
    let mut rows = Vec::new();
    let mut check = |case: &'static str, got: u16, want: u16, emitted: &'static str| {
        assert_eq!(got, want, "{case}");
        rows.push(Row {
            case,
            http: got,
            emitted,
        });
    };
    let c1 = code_of(&mut h, "INV-NM-1").await;
    let paid = notification_body("INV-NM-1", 10_000, &c1, "SUCCESS");
    let s = notify(&h, &paid, SECRET, PATH, "nm-1").await;
    check("valid PAID (baseline)", s, 200, "PAID");
    for _ in 0..2 {
        let s = notify(&h, &paid, SECRET, PATH, "nm-1").await;
        check("exact duplicate (same Request-Id)", s, 200, "nothing");
    }
    let s = notify(&h, &paid, SECRET, PATH, "nm-1-again").await;
    check("same PAID, new Request-Id", s, 200, "nothing");
    for (status, case) in [
        ("EXPIRED", "EXPIRED after PAID"),
        ("FAILED", "FAILED after PAID"),
        ("PENDING", "PENDING after PAID (out of order)"),
    ] {
        let b = notification_body("INV-NM-1", 10_000, &c1, status);
        let s = notify(&h, &b, SECRET, PATH, &format!("nm-1-{status}")).await;
        check(case, s, 200, "nothing");
    }
    // A late PAID after EXPIRED: PAID ranks higher, so it is the one result that counts.
    let c2 = code_of(&mut h, "INV-NM-2").await;
    let s = notify(
        &h,
        &notification_body("INV-NM-2", 10_000, &c2, "EXPIRED"),
        SECRET,
        PATH,
        "nm-2-exp",
    )
    .await;
    check("EXPIRED", s, 200, "EXPIRED");
    let s = notify(
        &h,
        &notification_body("INV-NM-2", 10_000, &c2, "SUCCESS"),
        SECRET,
        PATH,
        "nm-2-paid",
    )
    .await;
    check("PAID after EXPIRED (PAID wins)", s, 200, "PAID");

    // Not DOKU: refused before anything is read.
    let c3 = code_of(&mut h, "INV-NM-3").await;
    let good = notification_body("INV-NM-3", 10_000, &c3, "SUCCESS");
    let s = notify(&h, &good, "SK-WRONG-KEY", PATH, "nm-3-a").await;
    check("signed with another key", s, 401, "nothing");
    let s = notify(&h, &good, SECRET, "/other/path", "nm-3-b").await;
    check("signed over another path", s, 401, "nothing");
    let mut tampered = good.clone();
    tampered = tampered.replace("10000", "10");
    let s = post(
        &h,
        tampered.as_bytes(),
        &signed_headers(good.as_bytes(), SECRET, PATH, "nm-3-c"),
    )
    .await;
    check("body changed after signing", s, 401, "nothing");
    let headers = signed_headers(good.as_bytes(), SECRET, PATH, "nm-3-d");
    for (missing, case) in [
        ("Signature", "no Signature header"),
        ("Request-Id", "no Request-Id header"),
        ("Request-Timestamp", "no Request-Timestamp header"),
    ] {
        let partial: Vec<_> = headers
            .iter()
            .filter(|(k, _)| *k != missing)
            .cloned()
            .collect();
        let s = post(&h, good.as_bytes(), &partial).await;
        check(case, s, 401, "nothing");
    }
    let mut other = headers.clone();
    other[0].1 = "MCH-SOMEONE-ELSE".into();
    let s = post(&h, good.as_bytes(), &other).await;
    check("another merchant's Client-Id", s, 401, "nothing");
    let mut truncated = headers.clone();
    truncated[3].1.truncate(20);
    let s = post(&h, good.as_bytes(), &truncated).await;
    check("truncated signature", s, 401, "nothing");
    let huge = vec![b' '; 70 * 1024];
    let s = post(&h, &huge, &signed_headers(&huge, SECRET, PATH, "nm-3-huge")).await;
    check("body over --notification-max-bytes", s, 413, "nothing");
    // The simulator signs badly (its bad_signature fault).
    h.fault(json!({"target": "notification", "kind": "bad_signature", "times": 1, "invoice_number": "INV-NM-3"}))
        .await;
    h.pay("INV-NM-3").await;
    sim_delivered(&h, "INV-NM-3", 1).await;
    let d = h.sim_get("/_sim/notifications").await;
    let d = d
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["invoice_number"] == "INV-NM-3")
        .unwrap()
        .clone();
    check(
        "simulator's badly signed notification",
        d["last_status"].as_u64().unwrap() as u16,
        401,
        "nothing",
    );

    // Verified, but not consistent with the stored payment: stored for audit, answered 200 so
    // that DOKU stops retrying, never emitted.
    let c4 = code_of(&mut h, "INV-NM-4").await;
    let s = notify(
        &h,
        &notification_body("INV-NM-4", 1, &c4, "SUCCESS"),
        SECRET,
        PATH,
        "nm-4-a",
    )
    .await;
    check("amount differs from the stored one", s, 200, "nothing");
    let s = notify(
        &h,
        &notification_body("INV-NM-4", 10_000, "99999999", "SUCCESS"),
        SECRET,
        PATH,
        "nm-4-b",
    )
    .await;
    check("payment code differs", s, 200, "nothing");
    let s = notify(
        &h,
        &notification_body("INV-NM-4", 10_000, &c4, "REFUNDED"),
        SECRET,
        PATH,
        "nm-4-c",
    )
    .await;
    check(
        "status unknown to the sidecar (REFUNDED)",
        s,
        200,
        "nothing",
    );
    let s = notify(&h, "{\"order\": [", SECRET, PATH, "nm-4-d").await;
    check("signed, but not JSON", s, 200, "nothing");
    let s = notify(
        &h,
        r#"{"order":{"invoice_number":"INV-NM-4"},"transaction":{"status":"SUCCESS"}}"#,
        SECRET,
        PATH,
        "nm-4-e",
    )
    .await;
    check("signed, amount missing", s, 200, "nothing");

    // The simulator duplicates one and delays another.
    code_of(&mut h, "INV-NM-5").await;
    h.fault(json!({"target": "notification", "kind": "duplicate", "times": 1, "invoice_number": "INV-NM-5"}))
        .await;
    h.pay("INV-NM-5").await;
    sim_delivered(&h, "INV-NM-5", 2).await;
    check("simulator sends it twice", 200, 200, "PAID once");
    code_of(&mut h, "INV-NM-6").await;
    h.fault(json!({"target": "notification", "kind": "delay", "delay_ms": 400, "times": 1, "invoice_number": "INV-NM-6"}))
        .await;
    h.pay("INV-NM-6").await;
    sim_delivered(&h, "INV-NM-6", 1).await;
    check("simulator delivers it 400 ms late", 200, 200, "PAID");

    // After a restart the dedupe still holds.
    h.restart().await;
    let s = notify(&h, &paid, SECRET, PATH, "nm-1").await;
    check("duplicate after a restart", s, 200, "nothing");

    // The log holds exactly the expected events: read up to a sentinel.
    let sentinel = code_of(&mut h, "INV-NM-END").await;
    let s = notify(
        &h,
        &notification_body("INV-NM-END", 10_000, &sentinel, "SUCCESS"),
        SECRET,
        PATH,
        "nm-end",
    )
    .await;
    assert_eq!(s, 200);
    let mut stream = h
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let n = crate::notifications::next(&mut stream).await;
        if n.invoice_number == "INV-NM-END" {
            break;
        }
        seen.push(format!("{} {}", n.invoice_number, n.status().as_str_name()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "INV-NM-1 PAYMENT_STATUS_PAID",
            "INV-NM-2 PAYMENT_STATUS_EXPIRED",
            "INV-NM-2 PAYMENT_STATUS_PAID",
            "INV-NM-5 PAYMENT_STATUS_PAID",
            "INV-NM-6 PAYMENT_STATUS_PAID",
        ]
    );
    for r in &rows {
        println!(
            "notification | {:<44} | HTTP {} | emitted: {}",
            r.case, r.http, r.emitted
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_read_only_store_acknowledges_nothing_and_loses_nothing() {
    let options = Options::default();
    let mut rig = InProcessSidecar::start_adjusted(options.clone(), |c, _| c).await;
    let code = rig.generate(request("INV-RO-1", 10_000)).await.payment_code;
    rig.shutdown().await;
    // The volume becomes read-only.
    let mut config = rig.config();
    config.store_url = format!("{}?mode=ro", rig.store_url);
    rig.relaunch(config).await;
    let paid = notification_body("INV-RO-1", 10_000, &code, "SUCCESS");
    let headers = signed_headers(paid.as_bytes(), SECRET, PATH, "ro-1");
    let url = rig.notification_url();
    assert_eq!(
        post_notification(&rig.http, &url, paid.as_bytes(), &headers).await,
        Some(503),
        "not stored, so not acknowledged: DOKU retries"
    );
    let err = rig
        .grpc
        .generate_payment_code(request("INV-RO-2", 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "STORE_UNAVAILABLE");
    assert!(
        rig.sim()
            .simulator()
            .requests()
            .iter()
            .all(|r| r.invoice_number.as_deref() != Some("INV-RO-2")),
        "DOKU is not called for a payment that cannot be stored"
    );
    // Reads still work.
    let p = rig
        .grpc
        .get_status(pb::GetStatusRequest {
            invoice_number: "INV-RO-1".into(),
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status(), pb::PaymentStatus::Pending);

    // Writable again: DOKU's retry (same Request-Id) is stored once.
    rig.shutdown().await;
    let config = rig.config();
    rig.relaunch(config).await;
    let headers = signed_headers(paid.as_bytes(), SECRET, PATH, "ro-1");
    assert_eq!(
        post_notification(&rig.http, &url, paid.as_bytes(), &headers).await,
        Some(200)
    );
    let mut s = rig
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let n = crate::notifications::next(&mut s).await;
    assert_eq!(n.invoice_number, "INV-RO-1");
    assert_eq!(n.event_id, 1);
    rig.stop().await;
}

/// The sidecar binary with its files limited to a few KiB beyond the database's size
/// (`ulimit -f`; SIGXFSZ ignored, so a write past the limit fails with EFBIG as on a full
/// disk). Notifications are acknowledged until the store cannot write, then refused with 503;
/// after a restart without the limit every acknowledged one is there, and DOKU's retries of
/// the refused ones are stored once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_acknowledges_nothing_it_did_not_store() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, SECRET).unwrap();
    let db = dir.path().join("o2o.db");
    let store = format!("sqlite://{}", db.display());
    let launch = |wrap: Option<&str>| ChildOptions {
        rust_log: "warn,o2o_sidecar=info".into(),
        wrap: wrap.map(str::to_owned),
        ..ChildOptions::new(crate::BIN, &key_file, &store)
    };
    // Create the database, then stop.
    let (status, _) = ChildSidecar::start(&launch(None)).await.terminate().await;
    assert!(status.success());
    let size = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", db.display())).map_or(0, |m| m.len())
    };
    let largest_kib = size("").max(size("-wal")) / 1024;
    let limit = format!("ulimit -f {}; trap '' XFSZ", largest_kib + 160);
    let sidecar = ChildSidecar::start(&launch(Some(&limit))).await;
    let http = reqwest::Client::new();
    let url = sidecar.notification_url();
    let send = |i: usize| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let b = notification_body(
                &format!("INV-DISK-{i}"),
                10_000,
                &format!("7731{i:06}"),
                "SUCCESS",
            );
            let headers = signed_headers(b.as_bytes(), SECRET, PATH, &format!("disk-{i}"));
            post_notification(&http, &url, b.as_bytes(), &headers)
                .await
                .unwrap()
        }
    };
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for i in 0..2_000 {
        match send(i).await {
            200 => acked.push(i),
            503 => refused.push(i),
            other => panic!("notification {i}: HTTP {other}"),
        }
        if refused.len() >= 5 {
            break;
        }
    }
    assert!(!acked.is_empty(), "some notifications fit");
    assert!(refused.len() >= 5, "the disk never filled up");
    let mut grpc = pb::o2o_payments_client::O2oPaymentsClient::connect(format!(
        "http://{}",
        sidecar.addrs.grpc
    ))
    .await
    .unwrap();
    // A new payment's insert is smaller than a notification's writes, so a few may still
    // fit: each is stored and then meets DOKU, which this test does not run. Until the disk
    // refuses one: never a code, and then STORE_UNAVAILABLE.
    let mut store_refused = None;
    for n in 0..50 {
        match grpc
            .generate_payment_code(request(&format!("INV-DISK-NEW-{n}"), 10_000))
            .await
        {
            Ok(r) => panic!("a payment code while the disk is full: {r:?}"),
            Err(e) if reason(&e) == "STORE_UNAVAILABLE" => {
                store_refused = Some(e);
                break;
            }
            Err(e) => assert_eq!(reason(&e), "DOKU_UNAVAILABLE", "{e:?}"),
        }
    }
    let (_, log) = sidecar.terminate().await;
    assert!(
        store_refused.is_some(),
        "the full disk never refused a payment\n{log}"
    );
    assert!(
        log.contains("cannot store DOKU notification"),
        "a clear error in the log"
    );

    // Space again: everything acknowledged is there; DOKU's retries of the rest are stored.
    let sidecar = ChildSidecar::start(&launch(None)).await;
    let url = sidecar.notification_url();
    for &i in &refused {
        let b = notification_body(
            &format!("INV-DISK-{i}"),
            10_000,
            &format!("7731{i:06}"),
            "SUCCESS",
        );
        let headers = signed_headers(b.as_bytes(), SECRET, PATH, &format!("disk-{i}"));
        assert_eq!(
            post_notification(&http, &url, b.as_bytes(), &headers).await,
            Some(200)
        );
    }
    let mut grpc = pb::o2o_payments_client::O2oPaymentsClient::connect(format!(
        "http://{}",
        sidecar.addrs.grpc
    ))
    .await
    .unwrap();
    let mut s = grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..acked.len() + refused.len() {
        let n = crate::notifications::next(&mut s).await;
        assert!(seen.insert(n.invoice_number), "an invoice emitted twice");
    }
    for i in acked.iter().chain(&refused) {
        assert!(seen.contains(&format!("INV-DISK-{i}")), "INV-DISK-{i} lost");
    }
    println!(
        "full disk: acknowledged={} refused_503={} lost=0 duplicates=0",
        acked.len(),
        refused.len()
    );
    drop(s);
    let (status, _) = sidecar.terminate().await;
    assert!(status.success());
}

/// Unmounts a test tmpfs when dropped (lazily: the sidecar may still hold its files).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real filesystem that fills up and frees again (a 1 MiB tmpfs; skipped, with a line on
/// stderr, where this user may not mount one): notifications are refused while it is full and
/// stored again as soon as space is freed, without a restart.
#[tokio::test]
async fn a_disk_that_fills_up_and_frees_again_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mount(mnt.clone());
    let db = mnt.join("o2o.db");
    let mut rig = InProcessSidecar::start_adjusted(Options::default().clone(), |mut c, _| {
        c.store_url = format!("sqlite://{}", db.display());
        c
    })
    .await;
    let (http, url) = (rig.http.clone(), rig.notification_url());
    let send = |i: usize| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let b = notification_body(
                &format!("INV-FULL-{i}"),
                10_000,
                &format!("7731{i:06}"),
                "SUCCESS",
            );
            let headers = signed_headers(b.as_bytes(), SECRET, PATH, &format!("full-{i}"));
            let mut req = http.post(&url).body(b.clone());
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            match req.send().await {
                Ok(r) => r.status().as_u16(),
                Err(e) => panic!("INV-FULL-{i}: {e:?}"),
            }
        }
    };
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for i in 0..10 {
        assert_eq!(send(i).await, 200);
        acked.push(i);
    }
    // Fill the disk.
    let filler = mnt.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    }
    for i in 10..2_000 {
        match send(i).await {
            200 => acked.push(i),
            503 => refused.push(i),
            other => panic!("notification {i}: HTTP {other}"),
        }
        if refused.len() >= 5 {
            break;
        }
    }
    assert!(refused.len() >= 5, "the disk never filled up");
    let err = rig
        .grpc
        .generate_payment_code(request("INV-FULL-NEW", 10_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "STORE_UNAVAILABLE", "{err:?}");

    // Space again: DOKU's retries are stored by the same process, no restart.
    std::fs::remove_file(&filler).unwrap();
    for &i in &refused {
        assert_eq!(send(i).await, 200, "INV-FULL-{i} after space was freed");
    }
    rig.grpc
        .generate_payment_code(request("INV-FULL-NEW", 10_000))
        .await
        .unwrap();
    let mut s = rig
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..acked.len() + refused.len() {
        let n = crate::notifications::next(&mut s).await;
        assert!(seen.insert(n.invoice_number), "an invoice emitted twice");
    }
    for i in acked.iter().chain(&refused) {
        assert!(seen.contains(&format!("INV-FULL-{i}")), "INV-FULL-{i} lost");
    }
    println!(
        "disk full then freed: acknowledged={} refused_503={} stored_after_freeing={} lost=0",
        acked.len(),
        refused.len(),
        refused.len()
    );
    drop(s);
    rig.stop().await;
}
