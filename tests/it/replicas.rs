//! Many replicas on one PostgreSQL database behave as one sidecar: a notification committed by
//! one replica reaches the streams of another, a resume token of one replica works on another,
//! concurrent appends on two replicas leave no gap, racing replicas agree on idempotency keys
//! and DOKU Request-Ids, one replica sweeps and another takes over when it dies, and a
//! database restart under load loses nothing acknowledged.
//!
//! PostgreSQL: see `o2o_sidecar::testing` (a scratch database per test; without a reachable
//! server the tests fail unless `O2O_TEST_SKIP_POSTGRES=1`). The restart test runs a private
//! cluster on a free port, so the shared server is never stopped.

use std::{net::SocketAddr, path::Path, time::Duration};

use o2o_sidecar::{
    config::Config,
    grpc::{
        pb::{self, o2o_payments_client::O2oPaymentsClient},
        stream::resume_token,
    },
    sim::SimConfig,
    testing::{
        CLIENT_ID, ChildOptions, ChildSidecar, InProcessSidecar, Options, PATH, SECRET, Sim,
        SimListener, connect, eventually, notification_body,
        postgres::{PrivateCluster, ScratchDb},
        reason, request, signed_headers,
    },
};
use tokio::{sync::watch, time::Instant};
use tonic::{Code, Streaming, transport::Channel};

// ---------------------------------------------------------------------------------------
// Simulator and replicas

/// A simulator on `listener` sending DOKU's notifications to `to` (replica A).
fn serve_sim(listener: SimListener, to: &ChildSidecar) -> Sim {
    listener.serve(SimConfig {
        notification_url: Some(to.notification_url()),
        notification_retry_scale: 0.0001,
        ..SimConfig::new(CLIENT_ID, SECRET)
    })
}

/// Two in-process replicas A and B on `store_url`; A's simulator (which notifies A) is B's
/// DOKU too.
async fn two_replicas(
    store_url: &str,
    tune: impl Fn(&mut Config),
) -> (InProcessSidecar, InProcessSidecar) {
    let options = Options {
        store_url: Some(store_url.into()),
        ..Options::default()
    };
    let adjust = |mut c: Config, _: &Path| {
        tune(&mut c);
        c
    };
    let a = InProcessSidecar::start_adjusted(options.clone(), adjust).await;
    let b_options = Options {
        doku_url: Some(a.doku_url.clone()),
        ..options
    };
    let b = InProcessSidecar::start_adjusted(b_options, adjust).await;
    (a, b)
}

/// An `o2o-sidecar serve` process on `store_url` against DOKU at `sim_url`.
async fn spawn_process(store_url: &str, sim_url: &str, key_file: &Path) -> ChildSidecar {
    ChildSidecar::start(&ChildOptions {
        doku_base_url: sim_url.into(),
        ..ChildOptions::new(crate::BIN, key_file, store_url)
            .flags(&["--store-connect-timeout", "2s"])
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Callers

fn signed_notification(invoice: &str, request_id: &str) -> (String, Vec<(&'static str, String)>) {
    let b = notification_body(invoice, 10_000, "5550001", "SUCCESS");
    let headers = signed_headers(b.as_bytes(), SECRET, PATH, request_id);
    (b, headers)
}

/// POSTs DOKU's notification for `invoice` (an invoice the sidecar did not create) to the
/// replica listening on `http`; returns the HTTP status.
async fn notify(http: &reqwest::Client, addr: SocketAddr, invoice: &str, request_id: &str) -> u16 {
    let (b, headers) = signed_notification(invoice, request_id);
    let mut req = http.post(format!("http://{addr}{PATH}")).body(b);
    for (k, v) in &headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn open(
    grpc: &mut O2oPaymentsClient<Channel>,
    token: &str,
) -> Result<Streaming<pb::StreamNotificationsResponse>, tonic::Status> {
    grpc.stream_notifications(pb::StreamNotificationsRequest {
        resume_token: token.into(),
        invoice_numbers: vec![],
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn next_response(
    s: &mut Streaming<pb::StreamNotificationsResponse>,
) -> pb::StreamNotificationsResponse {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .expect("the stream stays open")
}

/// Reads `n` events from a fresh replay of the whole log.
async fn whole_log(grpc: &mut O2oPaymentsClient<Channel>, n: usize) -> Vec<pb::Notification> {
    let mut s = open(grpc, &resume_token(0)).await.unwrap();
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(next_response(&mut s).await.notification.unwrap());
    }
    all
}

async fn generate(grpc: &mut O2oPaymentsClient<Channel>, invoice: &str) -> pb::Payment {
    grpc.generate_payment_code(request(invoice, 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
}

/// The value of an unlabelled metric on an admin listener.
async fn metric(http: &reqwest::Client, admin: SocketAddr, name: &str) -> Option<f64> {
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

async fn ready(http: &reqwest::Client, admin: SocketAddr) -> u16 {
    get_status_code(http, admin, "/ready").await
}

async fn store_health(http: &reqwest::Client, admin: SocketAddr) -> u16 {
    get_status_code(http, admin, "/health/store").await
}

async fn get_status_code(http: &reqwest::Client, admin: SocketAddr, path: &str) -> u16 {
    http.get(format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Median and 99th percentile, in milliseconds.
fn median_p99(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = samples[(samples.len() * 99).div_ceil(100) - 1];
    (ms(samples[samples.len() / 2]), ms(p99))
}

/// Prints the latencies of [`measure_latency`]; returns the median of how much later B got
/// each event than A, in milliseconds.
fn report_latency(mut local: Vec<Duration>, mut cross: Vec<Duration>) -> f64 {
    let mut extra: Vec<Duration> = cross
        .iter()
        .zip(&local)
        .map(|(b, a)| b.saturating_sub(*a))
        .collect();
    let (lm, lp) = median_p99(&mut local);
    let (cm, cp) = median_p99(&mut cross);
    let (em, ep) = median_p99(&mut extra);
    eprintln!(
        "{} notifications POSTed to A (two processes), until on a subscriber's stream: \
         on A median {lm:.2} ms p99 {lp:.2} ms; on B median {cm:.2} ms p99 {cp:.2} ms; \
         B later than A by median {em:.2} ms p99 {ep:.2} ms",
        cross.len()
    );
    em
}

// ---------------------------------------------------------------------------------------
// Tests

/// Measures delivery of `n` notifications POSTed one at a time to replica A, as seen by a
/// subscriber on A and one on B. Returns (same-replica, cross-replica) latencies from the POST.
async fn measure_latency(
    http: &reqwest::Client,
    a_http: SocketAddr,
    on_a: &mut Streaming<pb::StreamNotificationsResponse>,
    on_b: &mut Streaming<pb::StreamNotificationsResponse>,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut local, mut cross) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (invoice, request_id) = (format!("INV-LAT-{i}"), format!("req-lat-{i}"));
        let sent = Instant::now();
        let (status, a, b) = tokio::join!(
            notify(http, a_http, &invoice, &request_id),
            async {
                let r = next_response(on_a).await;
                (r, sent.elapsed())
            },
            async {
                let r = next_response(on_b).await;
                (r, sent.elapsed())
            },
        );
        assert_eq!(status, 200);
        assert_eq!(a.0.notification.unwrap().invoice_number, invoice);
        assert_eq!(b.0.notification.unwrap().invoice_number, invoice);
        local.push(a.1);
        cross.push(b.1);
    }
    (local, cross)
}

/// Two `o2o-sidecar serve` processes on one database: DOKU's notification reaches replica A
/// (the simulator notifies A only) and a subscriber on B gets it; a subscriber on B resuming
/// with a token A issued gets exactly the later events; and the cross-replica delivery latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_to_one_process_reaches_a_subscriber_on_another() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("doku-secret-key");
    std::fs::write(&key_file, SECRET).unwrap();
    let sim_listener = Sim::bind().await;
    let sim_url = sim_listener.url.clone();
    let a = spawn_process(&db.url(), &sim_url, &key_file).await;
    let b = spawn_process(&db.url(), &sim_url, &key_file).await;
    let mut sim = serve_sim(sim_listener, &a);
    let http = reqwest::Client::new();
    let (mut ga, mut gb) = (connect(a.addrs.grpc).await, connect(b.addrs.grpc).await);

    // A payment created on A, paid at the counter: DOKU notifies A; B's subscriber sees it.
    generate(&mut ga, "INV-X-1").await;
    let mut on_a = open(&mut ga, "").await.unwrap();
    let mut on_b = open(&mut gb, "").await.unwrap();
    sim.pay("INV-X-1").await;
    let from_b = next_response(&mut on_b).await;
    let from_a = next_response(&mut on_a).await;
    let n = from_b.notification.unwrap();
    assert_eq!(n.invoice_number, "INV-X-1");
    assert_eq!(n.status(), pb::PaymentStatus::Paid);
    assert_eq!(n.source(), pb::Source::DokuNotification);
    assert_eq!(n.event_id, from_a.notification.unwrap().event_id);
    assert_eq!(from_a.resume_token, from_b.resume_token);

    // Two more payments, created on B, paid (notified to A). A subscriber on B that resumes
    // with the token A issued for the first event gets exactly these two, in order.
    let token_from_a = from_a.resume_token;
    for invoice in ["INV-X-2", "INV-X-3"] {
        generate(&mut gb, invoice).await;
        sim.pay(invoice).await;
        assert_eq!(
            next_response(&mut on_b)
                .await
                .notification
                .unwrap()
                .invoice_number,
            invoice
        );
        next_response(&mut on_a).await;
    }
    let mut resumed = open(&mut gb, &token_from_a).await.unwrap();
    let x2 = next_response(&mut resumed).await.notification.unwrap();
    let x3 = next_response(&mut resumed).await.notification.unwrap();
    assert_eq!(
        (x2.invoice_number.as_str(), x3.invoice_number.as_str()),
        ("INV-X-2", "INV-X-3")
    );
    assert_eq!((x2.event_id, x3.event_id), (n.event_id + 1, n.event_id + 2));

    // Latency: POST to A until the event is on a subscriber's stream.
    let (local, cross) = measure_latency(&http, a.addrs.http, &mut on_a, &mut on_b, 50).await;
    let extra = report_latency(local, cross);
    // Far below the 1 s polling fallback: B heard A's commits through LISTEN/NOTIFY.
    assert!(
        extra < 250.0,
        "B got events a median {extra:.1} ms after A; B's log:\n{}",
        b.log_tail(20)
    );
    sim.stop().await;
}

/// Many concurrent appenders on two replicas; subscribers on both, joining at random moments
/// from the start or from "now", each see a gap-free, duplicate-free, ordered suffix of the
/// log that ends at the last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_on_two_replicas_leave_no_gap_for_any_subscriber() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let (a, b) = two_replicas(&db.url(), |_| {}).await;
    const N: usize = 160;
    const WRITERS: usize = 8;
    let http = reqwest::Client::new();
    let targets = [a.addrs.http, b.addrs.http];
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let http = http.clone();
        writers.push(tokio::spawn(async move {
            for i in (w..N).step_by(WRITERS) {
                let to = targets[i % 2];
                let status = notify(&http, to, &format!("INV-C-{i}"), &format!("req-c-{i}")).await;
                assert_eq!(status, 200);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..8 {
        let mut client = if r % 4 < 2 {
            a.grpc.clone()
        } else {
            b.grpc.clone()
        };
        readers.push(tokio::spawn(async move {
            for _ in 0..r {
                tokio::task::yield_now().await;
            }
            let token = if r % 2 == 0 {
                resume_token(0)
            } else {
                String::new()
            };
            let mut s = open(&mut client, &token).await.unwrap();
            let mut seen = Vec::new();
            while seen.last().copied() != Some(N as u64) {
                seen.push(next_response(&mut s).await.notification.unwrap().event_id);
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
    let mut grpc = b.grpc.clone();
    let invoices: std::collections::BTreeSet<String> = whole_log(&mut grpc, N)
        .await
        .into_iter()
        .map(|n| n.invoice_number)
        .collect();
    assert_eq!(invoices.len(), N);
    a.stop().await;
    b.stop().await;
}

/// Two replicas racing on the same invoice and idempotency key create one DOKU payment code
/// and both return it; the same DOKU notification (one Request-Id) delivered to both at once
/// is acknowledged by both and recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_replicas_agree_on_idempotency_keys_and_notification_dedupe() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let (a, b) = two_replicas(&db.url(), |_| {}).await;
    let http = reqwest::Client::new();

    async fn generate_until_done(
        mut grpc: O2oPaymentsClient<Channel>,
        req: pb::GeneratePaymentCodeRequest,
    ) -> pb::Payment {
        loop {
            match grpc.generate_payment_code(req.clone()).await {
                Ok(r) => return r.into_inner().payment.unwrap(),
                // The other replica holds the payment's DOKU attempt: retry, as told.
                Err(e) if reason(&e) == "REQUEST_IN_FLIGHT" => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
    for i in 0..10 {
        let invoice = format!("INV-K-{i}");
        let req = pb::GeneratePaymentCodeRequest {
            idempotency_key: format!("key-{i}"),
            ..request(&invoice, 25_000)
        };
        let (pa, pb_) = tokio::join!(
            generate_until_done(a.grpc.clone(), req.clone()),
            generate_until_done(b.grpc.clone(), req.clone()),
        );
        assert!(!pa.payment_code.is_empty());
        assert_eq!(pa.payment_code, pb_.payment_code, "{invoice}");
        assert_eq!(a.sim_payments(&invoice).await.len(), 1, "{invoice}");
    }

    for i in 0..10 {
        let (invoice, id) = (format!("INV-D-{i}"), format!("req-dup-{i}"));
        let (sa, sb) = tokio::join!(
            notify(&http, a.addrs.http, &invoice, &id),
            notify(&http, b.addrs.http, &invoice, &id),
        );
        assert_eq!((sa, sb), (200, 200), "{invoice}");
    }
    let mut grpc = a.grpc.clone();
    let log = whole_log(&mut grpc, 10).await;
    let ids: std::collections::BTreeSet<_> =
        log.iter().map(|n| n.doku_request_id.clone()).collect();
    assert_eq!(ids.len(), 10, "one event per Request-Id");
    // Nothing after the ten.
    let mut s = open(&mut grpc, &resume_token(10)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.message())
            .await
            .is_err(),
        "no eleventh event"
    );
    a.stop().await;
    b.stop().await;
}

/// One of two sidecar processes runs the sweeper; when it is killed (SIGKILL), the other
/// takes over within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_moves_to_another_process_when_its_process_dies() {
    // Its HTTP client needs a TLS provider, which other tests install when they run first.
    o2o_sidecar::install_tls_provider();
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("doku-secret-key");
    std::fs::write(&key_file, SECRET).unwrap();
    let sim_listener = Sim::bind().await;
    let sim_url = sim_listener.url.clone();
    let http = reqwest::Client::new();

    let a = spawn_process(&db.url(), &sim_url, &key_file).await;
    eventually("A leads", Duration::from_secs(20), || async {
        metric(&http, a.addrs.admin, "o2o_sweeper_leader").await == Some(1.0)
    })
    .await;
    let b = spawn_process(&db.url(), &sim_url, &key_file).await;
    let mut sim = serve_sim(sim_listener, &a);
    // B campaigns (its gauge exists from its first campaign on) and loses, again and again:
    // over three campaign periods, A leads, B never does, and B never sweeps.
    eventually("B campaigns", Duration::from_secs(20), || async {
        metric(&http, b.addrs.admin, "o2o_sweeper_leader").await == Some(0.0)
    })
    .await;
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        assert_eq!(
            metric(&http, a.addrs.admin, "o2o_sweeper_leader").await,
            Some(1.0)
        );
        assert_eq!(
            metric(&http, b.addrs.admin, "o2o_sweeper_leader").await,
            Some(0.0),
            "{}",
            b.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&http, a.addrs.admin, "o2o_sweeper_runs_total").await >= Some(1.0));
    // Present from start-up (at zero), and still zero: B never swept.
    assert_eq!(
        metric(&http, b.addrs.admin, "o2o_sweeper_runs_total").await,
        Some(0.0)
    );

    let killed = Instant::now();
    a.kill().await;
    eventually("B takes over", Duration::from_secs(20), || async {
        metric(&http, b.addrs.admin, "o2o_sweeper_leader").await == Some(1.0)
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("sweeper failover after SIGKILL of the leader: {failover:?}");
    // The bound: one campaign period (2 s) plus slack for a busy machine.
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?}"
    );
    eventually("B sweeps", Duration::from_secs(10), || async {
        metric(&http, b.addrs.admin, "o2o_sweeper_runs_total").await >= Some(1.0)
    })
    .await;
    sim.stop().await;
}

/// PostgreSQL crashes and restarts while notifications keep arriving on two replicas: the
/// replicas stay up, readiness goes false and comes back, requests fail with
/// STORE_UNAVAILABLE meanwhile, every acknowledged notification is in the log once, and
/// subscribers on A (from before the crash) and on B (from during the outage), resuming with
/// their last token after any error, end up with the whole log, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_under_load_loses_nothing_acknowledged() {
    let Some(cluster) = PrivateCluster::start().await else {
        return;
    };
    let db = ScratchDb::create_on(&cluster.admin_url()).await;
    let (a, b) = two_replicas(&db.url(), |c| {
        c.store_options.connect_timeout = Duration::from_secs(1);
        c.store_options.statement_timeout = Some(Duration::from_secs(5));
    })
    .await;
    let http = reqwest::Client::new();
    const N: usize = 90;

    // The sender: like DOKU, retries a notification (same Request-Id) until it gets 200.
    let (acked_tx, mut acked) = watch::channel((0usize, 0usize)); // (acknowledged, refused)
    let targets = [a.addrs.http, b.addrs.http];
    let sender = {
        let http = http.clone();
        tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..N {
                loop {
                    let status = notify(
                        &http,
                        targets[i % 2],
                        &format!("INV-PG-{i}"),
                        &format!("req-pg-{i}"),
                    )
                    .await;
                    if status == 200 {
                        break;
                    }
                    assert_eq!(status, 503, "a store failure is 503, so that DOKU retries");
                    refused += 1;
                    acked_tx.send_replace((i, refused));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                acked_tx.send_replace((i + 1, refused));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // A subscriber on A from the start (the sender alternates A and B).
    let on_a = tokio::spawn(subscribe_resuming(a.grpc.clone(), N));

    acked.wait_for(|(n, _)| *n >= N / 3).await.unwrap();
    cluster.crash_server();
    let stopped = Instant::now();
    // And one on B that starts while the database is down.
    let on_b = tokio::spawn(subscribe_resuming(b.grpc.clone(), N));
    // The store's health goes down on both replicas while readiness stays (the app's pods
    // keep their Service); requests fail with STORE_UNAVAILABLE.
    for replica in [&a, &b] {
        eventually("store down", Duration::from_secs(10), || async {
            store_health(&http, replica.addrs.admin).await == 503
        })
        .await;
        assert_eq!(ready(&http, replica.addrs.admin).await, 200);
    }
    let err = a
        .grpc
        .clone()
        .get_status(pb::GetStatusRequest {
            invoice_number: "INV-PG-0".into(),
            refresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "STORE_UNAVAILABLE");
    acked.wait_for(|(_, refused)| *refused >= 2).await.unwrap();
    let acked_while_down = acked.borrow().0;
    cluster.start_server();
    let down_for = stopped.elapsed();
    for replica in [&a, &b] {
        eventually("store up again", Duration::from_secs(20), || async {
            store_health(&http, replica.addrs.admin).await == 200
        })
        .await;
    }
    let back = stopped.elapsed() - down_for;

    sender.await.unwrap();
    let subscribers = async { (on_a.await.unwrap(), on_b.await.unwrap()) };
    let ((seen_a, errors_a), (seen_b, errors_b)) =
        tokio::time::timeout(Duration::from_secs(120), subscribers)
            .await
            .expect("the subscribers get every event");
    let refused = acked.borrow().1;
    eprintln!(
        "database down for {down_for:?} ({acked_while_down} of {N} acknowledged before), \
         readiness back {back:?} after the restart; {refused} notifications refused with 503 \
         and retried; the subscribers resumed after {errors_a} (on A) and {errors_b} (on B) \
         UNAVAILABLE errors"
    );
    assert!(refused >= 2);
    assert!(
        errors_b >= 1,
        "B's subscriber started while the database was down"
    );
    // Every acknowledged notification is in the log, once. (Event ids are increasing but
    // not dense: a crash loses the sequence values cached by transactions in flight.)
    let mut grpc = b.grpc.clone();
    let log = whole_log(&mut grpc, N).await;
    let invoices: std::collections::BTreeSet<&str> =
        log.iter().map(|n| n.invoice_number.as_str()).collect();
    assert_eq!(invoices.len(), N);
    let ids: Vec<u64> = log.iter().map(|n| n.event_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let mut after = open(&mut grpc, &resume_token(ids[N - 1])).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), after.message())
            .await
            .is_err(),
        "nothing beyond the {N} acknowledged"
    );
    // The subscribers got the whole log: every event once, in order, across resumes.
    assert_eq!(seen_a, ids);
    assert_eq!(seen_b, ids);
    // Both replicas stayed up through it.
    assert!(!a.has_ended() && !b.has_ended());
    a.stop().await;
    b.stop().await;
    drop(db);
}

/// Follows the log from the start until it has `n` events, resuming with the last token after
/// any error (which must be UNAVAILABLE). Returns the event ids and the number of errors.
async fn subscribe_resuming(mut grpc: O2oPaymentsClient<Channel>, n: usize) -> (Vec<u64>, u32) {
    let (mut seen, mut token, mut errors) = (Vec::new(), resume_token(0), 0);
    while seen.len() < n {
        let mut s = match open(&mut grpc, &token).await {
            Ok(s) => s,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while seen.len() < n {
            match tokio::time::timeout(Duration::from_secs(60), s.message()).await {
                Ok(Ok(Some(r))) => {
                    seen.push(r.notification.unwrap().event_id);
                    token = r.resume_token;
                }
                Ok(Err(status)) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    errors += 1;
                    break;
                }
                Ok(Ok(None)) => panic!("the stream ended without an error"),
                Err(_) => panic!("no event for 60 s after {} events", seen.len()),
            }
        }
    }
    (seen, errors)
}

/// Cross-replica delivery latency with more samples (run by hand:
/// `cargo test --test it replicas::latency -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, run by hand"]
async fn latency_report() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("doku-secret-key");
    std::fs::write(&key_file, SECRET).unwrap();
    let sim_listener = Sim::bind().await;
    let sim_url = sim_listener.url.clone();
    let a = spawn_process(&db.url(), &sim_url, &key_file).await;
    let b = spawn_process(&db.url(), &sim_url, &key_file).await;
    let mut sim = serve_sim(sim_listener, &a);
    let http = reqwest::Client::new();
    let (mut ga, mut gb) = (connect(a.addrs.grpc).await, connect(b.addrs.grpc).await);
    let mut on_a = open(&mut ga, "").await.unwrap();
    let mut on_b = open(&mut gb, "").await.unwrap();
    let (local, cross) = measure_latency(&http, a.addrs.http, &mut on_a, &mut on_b, 1000).await;
    report_latency(local, cross);
    sim.stop().await;
}
