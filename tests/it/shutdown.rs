//! Graceful shutdown: readiness and grpc.health go NOT_SERVING first, the listeners stop
//! accepting, an in-flight DOKU call finishes (within `--shutdown-timeout`), a notification in
//! progress is either committed or not acknowledged, streams end with UNAVAILABLE so callers
//! resume elsewhere, and a drain that takes too long is cut off at the timeout without losing
//! anything.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use o2o_sidecar::grpc::{pb, stream::resume_token};
use serde_json::json;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use o2o_sidecar::testing::{
    ChildOptions, ChildSidecar, InProcessSidecar, Options, PATH, SECRET, eventually,
    notification_body, post_notification, request, signed_headers,
};

const SERVICE: &str = "o2o.v1.O2OPayments";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_calls_and_ends_streams_with_unavailable() {
    let options = Options::default();
    let mut rig = InProcessSidecar::start_adjusted(options.clone(), |mut c, _| {
        c.shutdown_timeout = Duration::from_secs(10);
        c
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", rig.addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let mut stream = rig
        .grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    // A call whose DOKU answer takes 1.5 s is in flight when the signal comes.
    rig.sim().simulator().add_faults(vec![
        serde_json::from_value(
            json!({"target": "payment_code", "kind": "delay", "delay_ms": 1500, "times": 1}),
        )
        .unwrap(),
    ]);
    let mut grpc = rig.grpc.clone();
    let call = tokio::spawn(async move {
        grpc.generate_payment_code(request("INV-SD-1", 10_000))
            .await
    });
    eventually("DOKU received the call", Duration::from_secs(5), || async {
        !rig.sim().simulator().requests().is_empty()
    })
    .await;
    let started = tokio::time::Instant::now();
    let run = rig.begin_shutdown();

    // 1. NOT_SERVING, for the health watcher and for /ready (the admin listener stays up
    //    until the drain is over).
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    let (status, text) = rig.admin_get("/ready").await;
    assert_eq!((status, text.as_str()), (503, "draining\n"));
    // 2. Streams end with UNAVAILABLE: callers resume elsewhere with their token.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable);
    // 3. No new connections.
    assert!(
        tokio::net::TcpStream::connect(rig.addrs.grpc)
            .await
            .is_err(),
        "the gRPC listener is closed"
    );
    // 4. The in-flight call completes with its code.
    let p = call.await.unwrap().unwrap().into_inner().payment.unwrap();
    assert_eq!(
        p.payment_code,
        rig.sim()
            .simulator()
            .payment("INV-SD-1")
            .unwrap()
            .payment_code
    );
    run.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        tokio::net::TcpStream::connect(rig.addrs.admin)
            .await
            .is_err(),
        "the admin listener is closed last"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_in_progress_is_committed_or_not_acknowledged() {
    let options = Options::default();
    let mut rig = InProcessSidecar::start_adjusted(options.clone(), |c, _| c).await;
    let url = rig.notification_url();
    // (invoice, HTTP status or no answer) per notification sent.
    type Answers = Arc<Mutex<Vec<(String, Option<u16>)>>>;
    let answers: Answers = Arc::default();
    let mut senders = Vec::new();
    for w in 0..4 {
        let http = rig.http.clone();
        let url = url.clone();
        let answers = answers.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..200 {
                let invoice = format!("INV-SDN-{w}-{i}");
                let b = notification_body(&invoice, 10_000, "7731000001", "SUCCESS");
                let headers = signed_headers(b.as_bytes(), SECRET, PATH, &invoice);
                let got = post_notification(&http, &url, b.as_bytes(), &headers).await;
                let stop = got.is_none();
                answers.lock().unwrap().push((invoice, got));
                if stop {
                    return;
                }
            }
        }));
    }
    eventually(
        "some notifications went through",
        Duration::from_secs(5),
        || async { answers.lock().unwrap().len() >= 20 },
    )
    .await;
    rig.shutdown().await;
    for s in senders {
        s.await.unwrap();
    }
    // Everything answered 200 is in the store; nothing else was acknowledged.
    let store = o2o_sidecar::store::open(&rig.store_url).await.unwrap();
    let events = store.events_after(0, 10_000).await.unwrap();
    let stored: std::collections::BTreeSet<String> =
        events.iter().map(|e| e.invoice.to_string()).collect();
    let answers = answers.lock().unwrap().clone();
    let mut acked = 0;
    for (invoice, got) in &answers {
        match got {
            Some(200) => {
                acked += 1;
                assert!(
                    stored.contains(invoice),
                    "{invoice} acknowledged, not stored"
                );
            }
            None | Some(503) => {}
            Some(other) => panic!("{invoice}: HTTP {other}"),
        }
    }
    assert!(acked >= 20);
    assert_eq!(events.len(), stored.len(), "one event per invoice");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_timeout_is_cut_off_and_nothing_is_lost() {
    // One 2 s attempt per call: the abandoned call's lease lasts (2 + 2 + 2) s.
    let options = Options {
        doku_timeout: Duration::from_secs(2),
        max_attempts: 1,
        ..Options::default()
    };
    let mut rig = InProcessSidecar::start_adjusted(options.clone(), |mut c, _| {
        c.shutdown_timeout = Duration::from_millis(500);
        c
    })
    .await;
    // DOKU issues the code but answers only after 10 s.
    rig.sim().simulator().add_faults(vec![
        serde_json::from_value(
            json!({"target": "payment_code", "kind": "delay", "delay_ms": 10000, "times": 1}),
        )
        .unwrap(),
    ]);
    let mut grpc = rig.grpc.clone();
    let call = tokio::spawn(async move {
        grpc.generate_payment_code(request("INV-SD-2", 10_000))
            .await
    });
    eventually("DOKU received the call", Duration::from_secs(5), || async {
        rig.sim().simulator().payment("INV-SD-2").is_some()
    })
    .await;
    let started = tokio::time::Instant::now();
    rig.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the drain is bounded: {:?}",
        started.elapsed()
    );
    call.abort();

    // Restarted: the caller retries. While the abandoned attempt's lease lasts the answer is
    // ABORTED (retry later); then the stored request is replayed and gets the code DOKU issued.
    let config = rig.config();
    rig.relaunch(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let p = loop {
        match rig
            .grpc
            .generate_payment_code(request("INV-SD-2", 10_000))
            .await
        {
            Ok(r) => break r.into_inner().payment.unwrap(),
            Err(e) if matches!(e.code(), Code::Aborted | Code::Unavailable) => {
                assert!(tokio::time::Instant::now() < deadline, "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(
        p.payment_code,
        rig.sim()
            .simulator()
            .payment("INV-SD-2")
            .unwrap()
            .payment_code
    );
    let sent: Vec<_> = rig
        .sim()
        .simulator()
        .requests()
        .into_iter()
        .filter(|r| r.invoice_number.as_deref() == Some("INV-SD-2"))
        .collect();
    assert!(sent.len() >= 2);
    assert!(sent.iter().all(|r| r.request_id == sent[0].request_id));
    assert_eq!(sent[0].verdict, o2o_sidecar::sim::Verdict::Accepted);
    assert_eq!(
        sent.last().unwrap().verdict,
        o2o_sidecar::sim::Verdict::Replayed
    );
    rig.stop().await;
}

/// The binary itself: SIGTERM with an open stream exits 0 within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, SECRET).unwrap();
    let store = format!("sqlite://{}", dir.path().join("o2o.db").display());
    let sidecar = ChildSidecar::start(
        &ChildOptions::new(crate::BIN, &key_file, &store).flags(&["--shutdown-timeout", "5s"]),
    )
    .await;
    let mut grpc = pb::o2o_payments_client::O2oPaymentsClient::connect(format!(
        "http://{}",
        sidecar.addrs.grpc
    ))
    .await
    .unwrap();
    let mut stream = grpc
        .stream_notifications(pb::StreamNotificationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let started = tokio::time::Instant::now();
    let (status, log) = sidecar.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        stream.message().await.unwrap_err().code(),
        Code::Unavailable
    );
    for line in ["shutting down: draining", "stopped"] {
        assert!(log.contains(line), "{line:?} missing from\n{log}");
    }
}

/// SIGTERM right after the "serving" line is a graceful stop, not the default kill: the
/// handler is installed before the sidecar says it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_start_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, SECRET).unwrap();
    let store = format!("sqlite://{}", dir.path().join("o2o.db").display());
    // The window is short: several rounds give it a chance to show.
    for _ in 0..20 {
        let sidecar = ChildSidecar::start(&ChildOptions {
            rust_log: "warn,o2o_sidecar=info".into(),
            ..ChildOptions::new(crate::BIN, &key_file, &store)
        })
        .await;
        let (status, log) = sidecar.terminate().await;
        assert!(status.success(), "{status}\n{log}");
        assert!(log.contains("stopped"), "{log}");
    }
}
