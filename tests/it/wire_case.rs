//! DOKU's header names on the wire, byte for byte: what DOKU's own merchant code reads
//! case-sensitively (`$headers['Client-Id']` in its PrestaShop plugin). The simulator's
//! notifications and the sidecar's requests to DOKU are read by a raw TCP listener, not through
//! a case-insensitive header map; the sidecar's own ingress accepts any case.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tonic::Code;

use o2o_sidecar::{
    doku::client::PAYMENT_CODE_PATH,
    grpc::pb,
    testing::{
        InProcessSidecar, Options, PATH, SECRET, loopback, notification_body, reason, request,
        signed_headers,
    },
};

/// The header names DOKU documents, in DOKU's spelling.
const DOKU_NAMES: [&str; 5] = [
    "Client-Id",
    "Request-Id",
    "Request-Timestamp",
    "Signature",
    "Content-Type",
];

/// Reads one request head (up to the blank line) as sent.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed inside the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    String::from_utf8(buf[..end].to_vec()).expect("an ASCII request head")
}

/// The first connection to `listener` and its request head, within 10 s.
async fn accept_head(listener: &TcpListener) -> (TcpStream, String) {
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("a connection within 10 s")
        .unwrap();
    let head = read_head(&mut conn).await;
    (conn, head)
}

/// Every expected name is on the wire exactly so, and no other spelling of it.
fn assert_names_exact(head: &str, expected: &[&str]) {
    let names: Vec<&str> = head
        .split("\r\n")
        .skip(1)
        .map(|line| line.split_once(':').expect("a header line").0)
        .collect();
    for want in expected {
        assert!(
            names.contains(want),
            "{want:?} is not on the wire as DOKU spells it; head:\n{head}"
        );
        for got in &names {
            if got.eq_ignore_ascii_case(want) {
                assert_eq!(got.as_bytes(), want.as_bytes(), "head:\n{head}");
            }
        }
    }
}

#[tokio::test]
async fn the_simulator_notifies_with_dokus_header_names() {
    let merchant = TcpListener::bind(loopback()).await.unwrap();
    let mut h = InProcessSidecar::start().await;
    let mut req = request("INV-WIRE-1", 10_000);
    // DOKU requires the configured path; the host is the raw listener.
    req.notification_url = format!("http://{}{PATH}", merchant.local_addr().unwrap());
    h.grpc.generate_payment_code(req).await.unwrap();
    h.pay("INV-WIRE-1").await;

    let (mut conn, head) = accept_head(&merchant).await;
    assert!(
        head.starts_with(&format!("POST {PATH} HTTP/1.1\r\n")),
        "head:\n{head}"
    );
    assert_names_exact(&head, &DOKU_NAMES);
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn the_sidecar_calls_doku_with_dokus_header_names() {
    let doku = TcpListener::bind(loopback()).await.unwrap();
    let h = InProcessSidecar::start_with(Options {
        doku_url: Some(format!("http://{}", doku.local_addr().unwrap())),
        max_attempts: 1,
        ..Options::default()
    })
    .await;
    let mut grpc = h.grpc.clone();
    let call = tokio::spawn(async move {
        grpc.generate_payment_code(request("INV-WIRE-2", 10_000))
            .await
    });

    let (mut conn, head) = accept_head(&doku).await;
    assert!(
        head.starts_with(&format!("POST {PAYMENT_CODE_PATH} HTTP/1.1\r\n")),
        "head:\n{head}"
    );
    assert_names_exact(&head, &DOKU_NAMES);
    // DOKU refuses it as unavailable: nothing was created, the caller may retry.
    conn.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    drop(conn);
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "DOKU_UNAVAILABLE");
    h.stop().await;
}

/// How a header name is spelled on the wire.
type Spelling = fn(&str) -> String;

/// POSTs a notification over a raw connection with the header names spelled by `name`;
/// returns the status line of the answer.
async fn post_raw(h: &InProcessSidecar, body: &str, request_id: &str, name: Spelling) -> String {
    let mut head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        h.addrs.http,
        body.len()
    );
    for (k, v) in signed_headers(body.as_bytes(), SECRET, PATH, request_id) {
        head.push_str(&format!("{}: {v}\r\n", name(k)));
    }
    head.push_str("\r\n");
    let mut conn = TcpStream::connect(h.addrs.http).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_ingress_accepts_header_names_in_any_case() {
    let mut h = InProcessSidecar::start().await;
    let spellings: [(&str, Spelling); 2] = [
        ("INV-WIRE-LOWER", |k| k.to_ascii_lowercase()),
        // cLIENT-iD, rEQUEST-iD…: every letter's case flipped.
        ("INV-WIRE-MIXED", |k| {
            k.chars()
                .map(|c| {
                    if c.is_ascii_uppercase() {
                        c.to_ascii_lowercase()
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect()
        }),
    ];
    for (invoice, name) in spellings {
        let code = h.generate(request(invoice, 10_000)).await.payment_code;
        let body = notification_body(invoice, 10_000, &code, "SUCCESS");
        let status = post_raw(&h, &body, &format!("req-{invoice}"), name).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{invoice}");
        assert_eq!(
            h.status(invoice, false).await.status(),
            pb::PaymentStatus::Paid,
            "{invoice}: the notification was verified and applied"
        );
    }
    h.stop().await;
}
