//! Peers that try to hold the sidecar's listeners: stalled HTTP clients, floods of
//! connections under a small descriptor limit, gRPC callers that open more than their share.
//! Each test runs the real binary with small bounds and tries the attack; it fails if the
//! attack works. See `docs/reliability.md`, "Hostile peers".

use std::{net::SocketAddr, time::Duration};

use o2o_sidecar::grpc::pb::{self, o2o_payments_client::O2oPaymentsClient};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

use o2o_sidecar::testing::{
    ChildOptions, ChildSidecar, PATH, notification_body, post_notification, signed_headers,
};

const KEY: &str = "SK-HOSTILE-0123456789abcdef";

struct Setup {
    sidecar: ChildSidecar,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The real binary, on SQLite, with `extra` flags and an optional shell prelude (`ulimit`).
/// DOKU is never called in these tests, so its URL points nowhere.
async fn start(extra: &[&str], wrap: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let store = format!("sqlite://{}", dir.path().join("o2o.db").display());
    let sidecar = ChildSidecar::start(&ChildOptions {
        wrap: wrap.map(str::to_owned),
        ..ChildOptions::new(crate::BIN, &key_file, &store).flags(extra)
    })
    .await;
    Setup {
        sidecar,
        key_file,
        _dir: dir,
    }
}

/// Reads until the server closes the connection (or resets it); what it sent and how long
/// that took. Panics if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open after {within:?}; received {:?}",
        String::from_utf8_lossy(&got)
    );
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

async fn grpc(addr: SocketAddr) -> O2oPaymentsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    O2oPaymentsClient::new(channel)
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// A GetStatus for an invoice nobody created: a full round trip through the store.
async fn get_status(client: &mut O2oPaymentsClient<Channel>) -> tonic::Status {
    client
        .get_status(pb::GetStatusRequest {
            invoice_number: "INV-NOBODY".into(),
            refresh: false,
        })
        .await
        .expect_err("no such invoice")
}

#[tokio::test]
async fn stalled_http_clients_are_closed_within_the_timeouts() {
    let setup = start(
        &[
            "--http-header-timeout",
            "1s",
            "--http-body-timeout",
            "1s",
            // Longer than the others, so that each of them is what closes its connection.
            "--http-idle-timeout",
            "2s",
        ],
        None,
    )
    .await;
    let http = setup.sidecar.addrs.http;
    let admin = setup.sidecar.addrs.admin;
    // Timeout plus scheduling slack on a busy CI machine.
    let within = Duration::from_secs(4);

    // An idle connection that never sends a byte, on both HTTP listeners.
    for addr in [http, admin] {
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let (got, _) = closed_within(&mut idle, within).await;
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    }

    // Half a request line.
    let mut half = TcpStream::connect(http).await.unwrap();
    half.write_all(b"POST /payments/notif").await.unwrap();
    closed_within(&mut half, within).await;

    // Headers promising a huge body that never comes: refused at once, not read.
    let mut huge = TcpStream::connect(http).await.unwrap();
    huge.write_all(
        b"POST /payments/notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = closed_within(&mut huge, within).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");

    // Headers, then part of the promised body, then nothing: 408 once the body timeout passes.
    let mut slow = TcpStream::connect(http).await.unwrap();
    slow.write_all(
        b"POST /payments/notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"order\":",
    )
    .await
    .unwrap();
    let (got, took) = closed_within(&mut slow, within).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        took >= Duration::from_millis(900),
        "answered before the timeout: {took:?}"
    );

    // A keep-alive connection left idle after an answer.
    let mut kept = TcpStream::connect(http).await.unwrap();
    kept.write_all(b"GET /payments/notifications HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = closed_within(&mut kept, within).await;
    assert!(got.starts_with("HTTP/1.1 405"), "{got}");

    // Content-Length and Transfer-Encoding together, with a request smuggled behind the
    // chunked body: one answer, then the connection is closed; the second is never read.
    let mut both = TcpStream::connect(http).await.unwrap();
    both.write_all(
        b"POST /payments/notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /payments/notifications HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = closed_within(&mut both, within).await;
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
}

#[tokio::test]
async fn a_flood_of_stalled_connections_leaves_everything_else_working() {
    // 256 descriptors in all; the notification port may take 64 of them.
    let setup = start(
        &[
            "--http-max-connections",
            "64",
            "--http-header-timeout",
            "2s",
            "--http-idle-timeout",
            "2s",
        ],
        Some("ulimit -n 256"),
    )
    .await;
    let addrs = setup.sidecar.addrs;
    let mut client = grpc(addrs.grpc).await;
    let http = reqwest::Client::new();

    // 400 connections that each send half a request line and stall.
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(mut s) = TcpStream::connect(addrs.http).await {
            let _ = s.write_all(b"POST /payments/notif").await;
            flood.push(s);
        }
    }
    assert!(
        flood.len() >= 300,
        "only {} connections opened",
        flood.len()
    );

    // Meanwhile: gRPC calls, readiness, and the key watcher all work.
    for _ in 0..20 {
        assert_eq!(get_status(&mut client).await.code(), Code::NotFound);
    }
    let ready = http
        .get(format!("http://{}/ready", addrs.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let new_key = "SK-HOSTILE-rotated-0123456789";
    std::fs::write(&setup.key_file, new_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http
            .get(format!("http://{}/metrics", addrs.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("o2o_secret_key_rotations_total 1") {
            assert!(metrics.contains("o2o_secret_key_file_ok 1"), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key rotation not seen:\n{metrics}"
        );
        tokio::task::yield_now().await;
    }

    // The stalled connections are closed by the header timeout...
    for s in flood.iter_mut().take(64) {
        closed_within(s, Duration::from_secs(6)).await;
    }
    // ...and DOKU's notification, signed with the new key, is answered (DOKU retries a
    // connection that was closed at once; so does this loop, with a deadline).
    let body = notification_body("INV-FLOOD-1", 10_000, "1234567890", "SUCCESS");
    let headers = signed_headers(body.as_bytes(), new_key, PATH, "flood-req-1");
    let url = setup.sidecar.notification_url();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match post_notification(&http, &url, body.as_bytes(), &headers).await {
            Some(200) => break,
            other => assert!(
                Instant::now() < deadline,
                "notification not accepted: {other:?}"
            ),
        }
    }
    drop(flood);
    assert_eq!(get_status(&mut client).await.code(), Code::NotFound);

    let Setup { sidecar, _dir, .. } = setup;
    let (_, log) = sidecar.terminate().await;
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("UNREADABLE"), "{log}");
}

#[tokio::test]
async fn grpc_callers_cannot_open_more_than_their_share() {
    let setup = start(
        &["--grpc-concurrency-limit", "8", "--grpc-max-streams", "12"],
        None,
    )
    .await;
    let addr = setup.sidecar.addrs.grpc;
    let open = |mut c: O2oPaymentsClient<Channel>, filter: Vec<String>| async move {
        c.stream_notifications(pb::StreamNotificationsRequest {
            resume_token: String::new(),
            invoice_numbers: filter,
        })
        .await
    };

    // One connection: 8 calls in flight at most, streams included.
    let one = grpc(addr).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(open(one.clone(), vec![]).await.expect("within the limit"));
    }
    let refused = open(one.clone(), vec![]).await.expect_err("past the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "TOO_MANY_CALLS");
    let refused = get_status(&mut one.clone()).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Ending a stream frees its slot.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get_status(&mut one.clone()).await;
        if status.code() == Code::NotFound {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {status:?}");
        tokio::task::yield_now().await;
    }

    // Across connections: 12 open streams at most.
    let two = grpc(addr).await;
    for _ in 0..5 {
        streams.push(open(two.clone(), vec![]).await.expect("within the total"));
    }
    let refused = open(two.clone(), vec![]).await.expect_err("past the total");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "TOO_MANY_STREAMS");
    // Unary calls on the second connection are not affected.
    assert_eq!(get_status(&mut two.clone()).await.code(), Code::NotFound);

    // A filter list is bounded too.
    drop(streams.pop());
    let three = grpc(addr).await;
    let filter: Vec<String> = (0..1001).map(|i| format!("INV-{i}")).collect();
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused.is_none() {
        match open(three.clone(), filter.clone()).await {
            Err(s) if s.code() == Code::InvalidArgument => refused = Some(s),
            Err(s) if reason(&s) == "TOO_MANY_STREAMS" && Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            other => panic!("a 1001-invoice filter was not refused: {other:?}"),
        }
    }
    let details = refused.unwrap().get_error_details();
    let violations = &details.bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "invoice_numbers");
}

#[tokio::test]
async fn idle_grpc_connections_are_closed_and_busy_ones_kept() {
    let setup = start(&["--grpc-idle-timeout", "1s"], None).await;
    let addr = setup.sidecar.addrs.grpc;

    // A connection that never calls anything.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (_, took) = closed_within(&mut idle, Duration::from_secs(4)).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );

    // A connection with an open stream outlives the idle timeout, and still delivers.
    let mut client = grpc(addr).await;
    let mut stream = client
        .stream_notifications(pb::StreamNotificationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let body = notification_body("INV-IDLE-1", 10_000, "1234567890", "SUCCESS");
    let headers = signed_headers(body.as_bytes(), KEY, PATH, "idle-req-1");
    let status = post_notification(
        &reqwest::Client::new(),
        &setup.sidecar.notification_url(),
        body.as_bytes(),
        &headers,
    )
    .await;
    assert_eq!(status, Some(200));
    let event = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("event within 5 s")
        .expect("stream still open")
        .expect("an event");
    assert_eq!(
        event.notification.unwrap().invoice_number,
        "INV-IDLE-1",
        "the stream's connection was kept"
    );
}

#[tokio::test]
async fn one_call_at_a_time_does_not_wait_for_delayed_acks() {
    // Without TCP_NODELAY on accepted sockets a handler that awaits sends its answer in two
    // writes, and the second waits for the caller's delayed ACK: >= 40 ms per call on Linux.
    let setup = start(&[], None).await;
    let mut client = grpc(setup.sidecar.addrs.grpc).await;
    get_status(&mut client).await;
    let mut took = Vec::new();
    for _ in 0..31 {
        let started = Instant::now();
        get_status(&mut client).await;
        took.push(started.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(25),
        "median {median:?} per sequential GetStatus: {took:?}"
    );
}
