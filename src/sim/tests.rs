//! End-to-end tests of the simulator over real HTTP on loopback: requests are signed here with
//! `crate::doku::signature`, notifications are received by a small axum server on port 0.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use bytes::Bytes;
use serde_json::{Value, json};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset, macros::format_description};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    doku::signature::{self, Components, TimestampKind},
    sim::{
        ALFA_PAYMENT_CODE_PATH, Fault, FaultKind, FaultTarget, PAYMENT_CODE_PATH, SimChannel,
        SimConfig, SimStatus, Simulator, Verdict, api::CODE_PREFIX, lock,
    },
};

const CLIENT: &str = "MCH-0001-10791114622547";
const KEY: &str = "SK-TEST-0123456789abcdef";
const NOTIFY_PATH: &str = "/payments/notifications";
/// Upper bound for anything a test waits for; reached only when the simulator is broken.
const PATIENCE: Duration = Duration::from_secs(10);

struct Running {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

fn cfg() -> SimConfig {
    SimConfig::new(CLIENT, KEY)
}

async fn start(cfg: SimConfig) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sim = Simulator::new(cfg);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        sim,
        base,
        http: reqwest::Client::new(),
        _stop: stop,
    }
}

fn ts_now() -> String {
    iso(OffsetDateTime::now_utc())
}

fn iso(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap()
}

fn body(invoice: &str) -> String {
    body_value(invoice).to_string()
}

fn body_value(invoice: &str) -> Value {
    json!({
        "order": {"invoice_number": invoice, "amount": 150000},
        "online_to_offline_info": {"expired_time": 60, "reusable_status": false, "info": "Thanks"},
        "customer": {"name": "Taufik Ismail", "email": "taufik@example.com"},
        "indomaret_info": {"receipt": {"description": "ORDER 001", "footer_message": "Terima kasih"}}
    })
}

/// An Alfa Group request: the shared parts, the receipt footer under `alfa_info`.
fn alfa_body(invoice: &str) -> String {
    json!({
        "order": {"invoice_number": invoice, "amount": 150000},
        "online_to_offline_info": {"expired_time": 60, "reusable_status": false, "info": "Thanks"},
        "customer": {"name": "Anton Budiman", "email": "anton@example.com"},
        "alfa_info": {"receipt": {"footer_message": "Terima kasih"}}
    })
    .to_string()
}

/// `body` sent to Alfa's Generate Payment Code endpoint.
async fn generate_alfa(r: &Running, request_id: &str, body: String) -> (u16, Value) {
    let mut s = Signed::post(request_id, body);
    s.path = ALFA_PAYMENT_CODE_PATH.to_owned();
    let (status, _, b) = s.send(r).await;
    (status, json_of(&b))
}

fn reusable_body(invoice: &str) -> String {
    body(invoice).replace(r#""reusable_status":false"#, r#""reusable_status":true"#)
}

/// A request signed the way a merchant signs it; fields can be spoilt one at a time.
struct Signed {
    method: reqwest::Method,
    path: String,
    client_id: String,
    key: String,
    request_id: String,
    timestamp: String,
    body: Option<String>,
    /// Signs with this target instead of `path`.
    sign_target: Option<String>,
    /// Signs a GET as if it had a body digest.
    digest_on_get: bool,
    /// `Content-Type` sent with a body.
    content_type: Option<&'static str>,
}

impl Signed {
    fn post(request_id: &str, body: String) -> Self {
        Self {
            method: reqwest::Method::POST,
            path: PAYMENT_CODE_PATH.to_owned(),
            client_id: CLIENT.to_owned(),
            key: KEY.to_owned(),
            request_id: request_id.to_owned(),
            timestamp: ts_now(),
            body: Some(body),
            sign_target: None,
            digest_on_get: false,
            content_type: Some("application/json"),
        }
    }

    fn status(invoice: &str) -> Self {
        Self {
            method: reqwest::Method::GET,
            path: format!("/orders/v1/status/{invoice}"),
            body: None,
            ..Self::post(&uuid::Uuid::new_v4().to_string(), String::new())
        }
    }

    fn request(&self, r: &Running) -> reqwest::RequestBuilder {
        let digest = match &self.body {
            Some(b) => Some(signature::digest(b.as_bytes())),
            None if self.digest_on_get => Some(signature::digest(b"")),
            None => None,
        };
        let sts = signature::string_to_sign(&Components {
            client_id: &self.client_id,
            request_id: &self.request_id,
            timestamp: &self.timestamp,
            timestamp_kind: TimestampKind::Request,
            request_target: self.sign_target.as_deref().unwrap_or(&self.path),
            digest: digest.as_deref(),
        });
        let mut rb = r
            .http
            .request(self.method.clone(), format!("{}{}", r.base, self.path))
            .header("Client-Id", &self.client_id)
            .header("Request-Id", &self.request_id)
            .header("Request-Timestamp", &self.timestamp)
            .header("Signature", signature::sign(self.key.as_bytes(), &sts));
        if let Some(b) = &self.body {
            rb = rb.body(b.clone());
            if let Some(ct) = self.content_type {
                rb = rb.header("Content-Type", ct);
            }
        }
        rb
    }

    async fn send(&self, r: &Running) -> (u16, HeaderMap, Bytes) {
        let res = self.request(r).send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.bytes().await.unwrap())
    }
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

async fn generate(r: &Running, request_id: &str, body: String) -> (u16, Value) {
    let (s, _, b) = Signed::post(request_id, body).send(r).await;
    (s, json_of(&b))
}

async fn status_of(r: &Running, invoice: &str) -> Value {
    let (s, _, b) = Signed::status(invoice).send(r).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    json_of(&b)
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// The how-to-pay page and API links of a Generate answer's `online_to_offline_info`, checked
/// to be the simulator's, under DOKU's `product` path, for the answer's payment code.
fn how_to_pay_links<'a>(r: &Running, info: &'a Value, product: &str) -> (&'a str, &'a str) {
    let code = info["payment_code"].as_str().unwrap();
    let page = info["how_to_pay_page"].as_str().unwrap();
    let api = info["how_to_pay_api"].as_str().unwrap();
    let base = &r.base;
    assert!(
        page.starts_with(&format!("{base}/how-to-pay/v2/{product}/{code}/")),
        "{page}"
    );
    assert!(
        api.starts_with(&format!("{base}/{product}/v2/how-to-pay-api/{code}/")),
        "{api}"
    );
    (page, api)
}

/// Verifies DOKU's response signature (§3.5) over `body` for a request to `target`.
fn response_verifies(h: &HeaderMap, target: &str, body: Option<&[u8]>) -> bool {
    let get = |n: &str| h.get(n).unwrap().to_str().unwrap().to_owned();
    let digest = body.map(signature::digest);
    let sts = signature::string_to_sign(&Components {
        client_id: &get("client-id"),
        request_id: &get("request-id"),
        timestamp: &get("response-timestamp"),
        timestamp_kind: TimestampKind::Response,
        request_target: target,
        digest: digest.as_deref(),
    });
    signature::verify(KEY.as_bytes(), &sts, &get("signature"))
}

#[tokio::test]
async fn happy_generate_issues_a_signed_numeric_code() {
    let r = start(cfg()).await;
    let rid = "5b8e438f-fac1-4103-9e0e-ebfdc38b5acb";
    let (status, headers, raw) = Signed::post(rid, body("INV-1")).send(&r).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(headers["client-id"], CLIENT);
    assert_eq!(headers["request-id"], rid);
    assert!(response_verifies(&headers, PAYMENT_CODE_PATH, Some(&raw)));
    assert!(!response_verifies(&headers, PAYMENT_CODE_PATH, Some(b"{}")));

    let v = json_of(&raw);
    assert_eq!(v["order"]["invoice_number"], "INV-1");
    assert_eq!(v["order"]["amount"], 150000);
    let info = &v["online_to_offline_info"];
    let code = info["payment_code"].as_str().unwrap();
    assert!(code.starts_with(CODE_PREFIX) && code.len() == CODE_PREFIX.len() + 10);
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    assert_eq!(info["info"], "Thanks");

    let utc = |k: &str| {
        PrimitiveDateTime::parse(
            info[k].as_str().unwrap(),
            format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"),
        )
        .unwrap()
        .assume_utc()
    };
    let wib = |k: &str| {
        PrimitiveDateTime::parse(
            info[k].as_str().unwrap(),
            format_description!("[year][month][day][hour][minute][second]"),
        )
        .unwrap()
        .assume_offset(UtcOffset::from_hms(7, 0, 0).unwrap())
    };
    assert_eq!(wib("created_date"), utc("created_date_utc"));
    assert_eq!(wib("expired_date"), utc("expired_date_utc"));
    assert_eq!(
        utc("expired_date_utc") - utc("created_date_utc"),
        time::Duration::minutes(60)
    );
    let skew = (OffsetDateTime::now_utc() - utc("created_date_utc")).abs();
    assert!(skew < time::Duration::seconds(5));

    let (_, api) = how_to_pay_links(&r, info, "indomaret-online-to-offline");
    let how = r.http.get(api).send().await.unwrap();
    assert_eq!(how.status(), 200);
    let how = how.json::<Value>().await.unwrap();
    assert_eq!(how["online_to_offline_info"]["payment_code"], code);
    assert_eq!(how["payment_instruction"][0]["channel"], "INDOMARET");
    assert!(
        how["payment_instruction"][0]["step"][0].is_string(),
        "{how}"
    );
    let wrong_token = r.http.get(format!("{api}x")).send().await.unwrap();
    assert_eq!(wrong_token.status(), 404);

    let p = r.sim.payments();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].payment_code, code);
    assert_eq!(p[0].status, SimStatus::Pending);
    assert_eq!(p[0].request_id, rid);
    assert_eq!(r.sim.requests()[0].verdict, Verdict::Accepted);
    assert_eq!(r.sim.requests()[0].status, Some(200));
}

/// Spoils one part of a signed request.
type Spoil = fn(&mut Signed);

#[tokio::test]
async fn authentication_failures_are_401_and_change_nothing() {
    let r = start(cfg()).await;
    let spoil: Vec<(&str, Spoil)> = vec![
        ("invalid_signature", |s| s.key = "SK-wrong".into()),
        ("invalid_signature", |s| {
            s.sign_target = Some("/indomaret-online-to-offline/v2/payment".into())
        }),
        ("invalid_client_id", |s| s.client_id = "MCH-0001-1".into()),
        ("invalid_timestamp", |s| {
            s.timestamp = iso(OffsetDateTime::now_utc() - Duration::from_secs(600))
        }),
        ("invalid_timestamp", |s| {
            s.timestamp = iso(OffsetDateTime::now_utc() + Duration::from_secs(600))
        }),
        ("invalid_timestamp", |s| {
            s.timestamp = s.timestamp.replace('Z', ".000Z")
        }),
        ("invalid_request_id", |s| s.request_id = "r".repeat(129)),
    ];
    for (i, (code, f)) in spoil.iter().enumerate() {
        let mut s = Signed::post(&format!("rid-{i}"), body(&format!("INV-{i}")));
        f(&mut s);
        let (status, headers, raw) = s.send(&r).await;
        let v = json_of(&raw);
        assert_eq!((status, error_code(&v)), (401, *code), "case {i}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(headers.get("signature").is_none());
    }
    // A body changed after signing fails the digest.
    let s = Signed::post("rid-x", body("INV-x"));
    let res = s.request(&r).body(body("INV-y")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // A missing header.
    let res = r
        .http
        .post(format!("{}{PAYMENT_CODE_PATH}", r.base))
        .header("Content-Type", "application/json")
        .body(body("INV-z"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    assert!(r.sim.payments().is_empty());
    let requests = r.sim.requests();
    assert_eq!(requests.len(), spoil.len() + 2);
    assert!(
        requests
            .iter()
            .all(|q| matches!(q.verdict, Verdict::Rejected { .. }) && q.status == Some(401))
    );
    // With a signature the simulator also accepts, the same request then succeeds.
    let (status, _) = generate(&r, "rid-0", body("INV-0")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn invalid_bodies_are_400_invalid_parameter() {
    let r = start(cfg()).await;
    let mut no_name = body_value("INV-1");
    no_name["customer"].as_object_mut().unwrap().remove("name");
    let no_name = no_name.to_string();
    let amount_string = body("INV-2").replace("150000", r#""150000""#);
    let long_invoice = body(&"I".repeat(65));
    let unknown_field =
        body("INV-4").replace(r#""amount":150000"#, r#""amount":150000,"currency":"IDR""#);
    let not_json = "{\"order\":".to_owned();
    let cases = [
        (no_name, "customer.name"),
        (amount_string, "order.amount"),
        (long_invoice, "order.invoice_number"),
        (unknown_field, "order.currency"),
        (not_json, "Invalid JSON"),
    ];
    for (i, (b, field)) in cases.into_iter().enumerate() {
        let (status, v) = generate(&r, &format!("rid-{i}"), b).await;
        assert_eq!((status, error_code(&v)), (400, "invalid_parameter"), "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{msg}");
    }
    assert!(r.sim.payments().is_empty());
    let (status, _) = generate(&r, "rid-ok", body(&"I".repeat(64))).await;
    assert_eq!(status, 200);

    for ct in [None, Some("text/plain")] {
        let mut s = Signed::post("rid-ct", body("INV-ct"));
        s.content_type = ct;
        let (status, _, raw) = s.send(&r).await;
        assert_eq!(status, 415, "{ct:?}");
        assert_eq!(error_code(&json_of(&raw)), "invalid_content_type");
    }
    let mut s = Signed::post("rid-ct", body("INV-ct"));
    s.content_type = Some("application/json; charset=utf-8");
    let res = s.request(&r).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn request_id_idempotency_and_duplicate_invoices() {
    let r = start(cfg()).await;
    let (s1, h1, b1) = Signed::post("rid-1", body("INV-1")).send(&r).await;
    assert_eq!(s1, 200);
    let code = json_of(&b1)["online_to_offline_info"]["payment_code"].clone();

    // Same Request-Id, byte-identical body: 409 with the original body, signed again.
    let (s2, h2, b2) = Signed::post("rid-1", body("INV-1")).send(&r).await;
    assert_eq!(s2, 409);
    assert_eq!(b2, b1);
    assert!(response_verifies(&h2, PAYMENT_CODE_PATH, Some(&b2)));
    assert_eq!(h1["request-id"], h2["request-id"]);

    // Same Request-Id, other body: 400 "different request data".
    let (s3, v3) = generate(&r, "rid-1", body("INV-1").replace("150000", "150001")).await;
    assert_eq!(s3, 400);
    assert!(
        v3["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different request data")
    );

    // New Request-Id for the same invoice: 400 duplicate invoice; nothing changes.
    let (s4, v4) = generate(&r, "rid-2", body("INV-1")).await;
    assert_eq!(s4, 400);
    assert!(
        v4["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate invoice")
    );

    let p = r.sim.payments();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].request_id, "rid-1");
    assert_eq!(json!(p[0].payment_code), code);
    let verdicts: Vec<_> = r.sim.requests().into_iter().map(|q| q.verdict).collect();
    assert_eq!(verdicts[1], Verdict::Replayed);
    assert!(matches!(verdicts[2], Verdict::Rejected { .. }));
    assert!(matches!(verdicts[3], Verdict::Rejected { .. }));
}

#[tokio::test]
async fn check_status_follows_pay_and_expiry() {
    let r = start(cfg()).await;
    assert_eq!(generate(&r, "rid-a", body("INV-A")).await.0, 200);
    assert_eq!(generate(&r, "rid-b", body("INV-B")).await.0, 200);
    assert_eq!(generate(&r, "rid-c", body("INV-C")).await.0, 200);

    let v = status_of(&r, "INV-A").await;
    assert_eq!(v["transaction"]["status"], "PENDING");
    assert_eq!(v["transaction"]["original_request_id"], "rid-a");
    assert_eq!(v["order"]["amount"], 150000);
    assert_eq!(v["service"]["id"], "ONLINE_TO_OFFLINE");
    assert_eq!(v["acquirer"]["id"], "INDOMARET");
    assert_eq!(v["channel"]["id"], "ONLINE_TO_OFFLINE_INDOMARET");
    assert_eq!(
        v["online_to_offline_info"]["payment_code"],
        json!(r.sim.payment("INV-A").unwrap().payment_code)
    );

    let (s, h, raw) = Signed::status("INV-A").send(&r).await;
    assert_eq!(s, 200);
    assert!(response_verifies(&h, "/orders/v1/status/INV-A", None));
    drop(raw);

    // Through the control API, as scripts do.
    let paid: Value = r
        .http
        .post(format!("{}/_sim/payments/INV-A/pay", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["status"], "SUCCESS");
    assert_eq!(paid["invoice_number"], "INV-A");
    assert_eq!(
        status_of(&r, "INV-A").await["transaction"]["status"],
        "SUCCESS"
    );
    // A paid, non-reusable code cannot be paid or expired again.
    let again = r
        .http
        .post(format!("{}/_sim/payments/INV-A/pay", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert!(
        r.sim
            .expire("INV-A")
            .unwrap_err()
            .to_string()
            .contains("paid")
    );

    // Expired through the control API: EXPIRED, and no longer payable.
    let res = r
        .http
        .post(format!("{}/_sim/payments/INV-B/expire", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        status_of(&r, "INV-B").await["transaction"]["status"],
        "EXPIRED"
    );
    assert!(r.sim.pay("INV-B").await.is_err());

    // A pending code past its deadline reads as EXPIRED.
    let past = OffsetDateTime::now_utc() - Duration::from_secs(1);
    lock(&r.sim.inner.state)
        .get_mut("INV-C")
        .unwrap()
        .expires_at = past;
    let v = status_of(&r, "INV-C").await;
    assert_eq!(v["transaction"]["status"], "EXPIRED");
    assert_eq!(r.sim.payment("INV-C").unwrap().status, SimStatus::Expired);

    // Unknown invoice: 404, DOKU-style body.
    let (s, _, raw) = Signed::status("INV-NOPE").send(&r).await;
    assert_eq!(s, 404);
    assert_eq!(error_code(&json_of(&raw)), "transaction_not_found");

    // GET signed with a Digest line is refused: DOKU's GET signature has none.
    let mut bad = Signed::status("INV-A");
    bad.digest_on_get = true;
    assert_eq!(bad.send(&r).await.0, 401);

    let sims: Vec<Value> = r
        .http
        .get(format!("{}/_sim/payments", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sims.len(), 3);
    assert_eq!(sims[0]["status"], "SUCCESS");
    assert_eq!(sims[0]["pay_count"], 1);
    assert!(sims[0]["paid_at"].is_string());
    assert_eq!(sims[1]["status"], "EXPIRED");
    assert!(sims[1]["expired_at"].is_string());
    assert_eq!(sims[2]["request_id"], "rid-c");
}

#[tokio::test]
async fn wrong_paths_and_methods_are_recorded() {
    let r = start(cfg()).await;
    let res = r
        .http
        .post(format!("{}/indomaret-online/v2/payment-code", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = r
        .http
        .get(format!("{}{PAYMENT_CODE_PATH}", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let q = r.sim.requests();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].path, "/indomaret-online/v2/payment-code");
    assert_eq!(q[0].status, Some(404));
    assert_eq!(q[1].status, Some(405));
    let listed: Vec<Value> = r
        .http
        .get(format!("{}/_sim/requests", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["verdict"], "rejected");
    assert_eq!(listed[0]["code"], "not_found");
}

/// One notification as the receiver saw it.
#[derive(Debug)]
struct Got {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Got {
    fn header(&self, n: &str) -> &str {
        self.headers.get(n).unwrap().to_str().unwrap()
    }

    fn verifies(&self, target: &str) -> bool {
        let digest = signature::digest(&self.body);
        let sts = signature::string_to_sign(&Components {
            client_id: self.header("client-id"),
            request_id: self.header("request-id"),
            timestamp: self.header("request-timestamp"),
            timestamp_kind: TimestampKind::Request,
            request_target: target,
            digest: Some(&digest),
        });
        signature::verify(KEY.as_bytes(), &sts, self.header("signature"))
    }

    fn json(&self) -> Value {
        json_of(&self.body)
    }
}

/// A merchant notification endpoint on port 0 that answers `statuses` in turn, then 200.
struct Receiver {
    url: String,
    got: mpsc::UnboundedReceiver<Got>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Got>,
    statuses: Arc<Vec<u16>>,
    n: Arc<AtomicUsize>,
}

async fn receiver(statuses: Vec<u16>) -> Receiver {
    async fn accept(
        State(st): State<ReceiverState>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::http::StatusCode {
        let i = st.n.fetch_add(1, Ordering::SeqCst);
        let _ = st.tx.send(Got {
            headers,
            body,
            at: Instant::now(),
        });
        let code = st.statuses.get(i).copied().unwrap_or(200);
        axum::http::StatusCode::from_u16(code).unwrap()
    }
    let (tx, got) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(NOTIFY_PATH, post(accept))
        .with_state(ReceiverState {
            tx,
            statuses: Arc::new(statuses),
            n: Arc::new(AtomicUsize::new(0)),
        });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{NOTIFY_PATH}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Receiver {
        url,
        got,
        _stop: stop,
    }
}

impl Receiver {
    async fn next(&mut self) -> Got {
        tokio::time::timeout(PATIENCE, self.got.recv())
            .await
            .expect("a notification arrives")
            .unwrap()
    }
}

fn notifying(url: &str) -> SimConfig {
    SimConfig {
        notification_url: Some(url.to_owned()),
        notification_retry_scale: 1e-6,
        ..cfg()
    }
}

/// Polls the simulator's own record until `done` (bounded by [`PATIENCE`]).
async fn until(sim: &Simulator, done: impl Fn(&Simulator) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done(sim) {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn pay_sends_a_notification_that_verifies() {
    let mut rx = receiver(vec![]).await;
    let r = start(notifying(&rx.url)).await;
    assert_eq!(generate(&r, "rid-gen", body("INV-1")).await.0, 200);
    let out = r.sim.pay("INV-1").await.unwrap();
    let n = rx.next().await;
    assert!(n.verifies(NOTIFY_PATH));
    assert!(!n.verifies("/payments/notification"));
    assert_eq!(n.header("client-id"), CLIENT);
    assert_eq!(
        Some(n.header("request-id")),
        out.notification_request_id.as_deref()
    );
    assert_ne!(n.header("request-id"), "rid-gen");
    assert!(n.header("request-timestamp").ends_with('Z'));
    assert_eq!(n.header("content-type"), "application/json");
    let v = n.json();
    assert_eq!(v["service"]["id"], "ONLINE_TO_OFFLINE");
    assert_eq!(v["acquirer"]["id"], "INDOMARET");
    assert_eq!(v["channel"]["id"], "ONLINE_TO_OFFLINE_INDOMARET");
    assert_eq!(v["transaction"]["status"], "SUCCESS");
    assert_eq!(v["transaction"]["original_request_id"], "rid-gen");
    assert_eq!(v["order"]["invoice_number"], "INV-1");
    assert_eq!(v["order"]["amount"], 150000);
    let code = r.sim.payment("INV-1").unwrap().payment_code;
    assert_eq!(v["online_to_offline_info"]["payment_code"], json!(code));
    // Compact JSON, DOKU's field order.
    let text = std::str::from_utf8(&n.body).unwrap();
    assert!(text.starts_with(r#"{"service":{"id":"ONLINE_TO_OFFLINE"},"acquirer""#));
    assert!(!text.contains(' '));

    until(&r.sim, |s| {
        s.notifications().first().is_some_and(|d| d.delivered)
    })
    .await;
    let d = &r.sim.notifications()[0];
    assert_eq!((d.attempts, d.last_status), (1, Some(200)));
    assert_eq!(d.url, rx.url);
}

#[tokio::test]
async fn failing_receiver_gets_dokus_retries() {
    let mut rx = receiver(vec![500, 503]).await;
    let r = start(notifying(&rx.url)).await;
    assert_eq!(generate(&r, "rid-gen", body("INV-1")).await.0, 200);
    let paid_at = Instant::now();
    let out = r.sim.pay("INV-1").await.unwrap();
    let first = rx.next().await;
    let second = rx.next().await;
    let third = rx.next().await;
    for n in [&first, &second, &third] {
        assert_eq!(
            Some(n.header("request-id")),
            out.notification_request_id.as_deref()
        );
        assert!(n.verifies(NOTIFY_PATH));
        assert_eq!(n.body, first.body);
    }
    // 30 min and 6 h scaled by 1e-6: 1.8 ms and 21.6 ms after the first attempt.
    assert!(second.at - paid_at >= Duration::from_micros(1800));
    assert!(third.at - paid_at >= Duration::from_micros(21600));
    until(&r.sim, |s| s.notifications()[0].delivered).await;
    let d = &r.sim.notifications()[0];
    assert_eq!((d.attempts, d.last_status), (3, Some(200)));
    let statuses: Vec<_> = d.history.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(200)]);
    assert!(d.history.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(d.next_attempt_at, None, "delivered: nothing more is due");

    // A receiver that never answers 2xx gets exactly DOKU's 1 + 3 attempts.
    let mut down = receiver(vec![500; 10]).await;
    let r = start(notifying(&down.url)).await;
    assert_eq!(generate(&r, "rid-gen", body("INV-2")).await.0, 200);
    r.sim.pay("INV-2").await.unwrap();
    for _ in 0..4 {
        down.next().await;
    }
    until(&r.sim, |s| {
        let d = &s.notifications()[0];
        d.attempts == 4 && d.next_attempt_at.is_none()
    })
    .await;
    let d = &r.sim.notifications()[0];
    assert!(!d.delivered);
    assert_eq!(d.last_status, Some(500));
    assert_eq!(d.history.len(), 4);
}

#[tokio::test]
async fn reusable_codes_pay_again_with_new_request_ids() {
    let mut rx = receiver(vec![]).await;
    let r = start(notifying(&rx.url)).await;
    assert_eq!(generate(&r, "rid-r", reusable_body("INV-R")).await.0, 200);
    let a = r.sim.pay("INV-R").await.unwrap();
    let b = r.sim.pay("INV-R").await.unwrap();
    assert_ne!(a.notification_request_id, b.notification_request_id);
    let (n1, n2) = (rx.next().await, rx.next().await);
    assert_ne!(n1.header("request-id"), n2.header("request-id"));
    assert_eq!(r.sim.payment("INV-R").unwrap().pay_count, 2);
    r.sim.expire("INV-R").unwrap();
    assert!(matches!(
        r.sim.pay("INV-R").await,
        Err(crate::sim::SimError::Conflict(_))
    ));
    assert!(matches!(
        r.sim.pay("INV-NONE").await,
        Err(crate::sim::SimError::NotFound(_))
    ));
}

#[tokio::test]
async fn override_notification_url_must_keep_the_path() {
    let configured = receiver(vec![]).await;
    let mut other = receiver(vec![]).await;
    let r = start(notifying(&configured.url)).await;
    let with_override = |invoice: &str, url: &str| {
        body(invoice).replace(
            r#""indomaret_info""#,
            &format!(
                r#""additional_info":{{"override_notification_url":"{url}"}},"indomaret_info""#
            ),
        )
    };
    let wrong_path = other.url.replace(NOTIFY_PATH, "/hooks/doku");
    let (s, v) = generate(&r, "rid-1", with_override("INV-1", &wrong_path)).await;
    assert_eq!((s, error_code(&v)), (400, "invalid_parameter"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same path")
    );
    let (s, _) = generate(&r, "rid-2", with_override("INV-2", "not a url")).await;
    assert_eq!(s, 400);

    let (s, _) = generate(&r, "rid-3", with_override("INV-3", &other.url)).await;
    assert_eq!(s, 200);
    assert_eq!(
        r.sim.payment("INV-3").unwrap().notification_url.as_deref(),
        Some(other.url.as_str())
    );
    r.sim.pay("INV-3").await.unwrap();
    let n = other.next().await;
    assert!(n.verifies(NOTIFY_PATH));
    assert_eq!(n.json()["order"]["invoice_number"], "INV-3");
}

#[tokio::test]
async fn status_fault_answers_without_processing() {
    let r = start(cfg()).await;
    r.sim.set_faults(vec![
        Fault::new(FaultTarget::PaymentCode, FaultKind::Status { status: 503 }).times(1),
    ]);
    let (s, v) = generate(&r, "rid-1", body("INV-1")).await;
    assert_eq!((s, error_code(&v)), (503, "service_unavailable"));
    assert!(r.sim.payments().is_empty());
    assert_eq!(r.sim.requests()[0].verdict, Verdict::Faulted);
    assert!(r.sim.faults().is_empty(), "times: 1 is used up");
    // The retry with the same Request-Id is processed normally.
    assert_eq!(generate(&r, "rid-1", body("INV-1")).await.0, 200);

    r.sim.set_faults(vec![Fault::new(
        FaultTarget::CheckStatus,
        FaultKind::Status { status: 500 },
    )]);
    let (s, _, raw) = Signed::status("INV-1").send(&r).await;
    assert_eq!(
        (s, error_code(&json_of(&raw))),
        (500, "internal_server_error")
    );
    assert_eq!(Signed::status("INV-1").send(&r).await.0, 500, "unlimited");
    r.sim.clear_faults();
    assert_eq!(Signed::status("INV-1").send(&r).await.0, 200);
}

#[tokio::test]
async fn delay_fault_lets_the_client_time_out_after_the_code_was_issued() {
    let r = start(cfg()).await;
    r.sim.set_faults(vec![
        Fault::new(
            FaultTarget::PaymentCode,
            FaultKind::Delay { delay_ms: 2000 },
        )
        .times(1),
    ]);
    let err = Signed::post("rid-1", body("INV-1"))
        .request(&r)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let issued = r.sim.payment("INV-1").expect("DOKU issued the code");
    // The caller retries with the same Request-Id and learns the code.
    let (s, v) = generate(&r, "rid-1", body("INV-1")).await;
    assert_eq!(s, 409);
    assert_eq!(
        v["online_to_offline_info"]["payment_code"],
        json!(issued.payment_code)
    );
}

#[tokio::test]
async fn drop_fault_closes_the_connection_before_or_after_processing() {
    let r = start(cfg()).await;
    r.sim.set_faults(vec![
        Fault::new(
            FaultTarget::PaymentCode,
            FaultKind::Drop {
                after_processing: false,
            },
        )
        .times(1),
        Fault::new(
            FaultTarget::PaymentCode,
            FaultKind::Drop {
                after_processing: true,
            },
        )
        .for_invoice("INV-2"),
    ]);
    let err = Signed::post("rid-1", body("INV-1"))
        .request(&r)
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{err}");
    assert!(r.sim.payments().is_empty());
    assert_eq!(r.sim.requests()[0].status, None);
    assert_eq!(generate(&r, "rid-1", body("INV-1")).await.0, 200);

    let err = Signed::post("rid-2", body("INV-2"))
        .request(&r)
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none(), "{err}");
    assert!(
        r.sim.payment("INV-2").is_some(),
        "processed before the drop"
    );
    let q = r.sim.requests();
    assert_eq!((q[2].status, &q[2].verdict), (None, &Verdict::Accepted));
    r.sim.clear_faults();
    assert_eq!(generate(&r, "rid-2", body("INV-2")).await.0, 409);
}

#[tokio::test]
async fn notification_faults_suppress_duplicate_bad_signature_delay() {
    let mut rx = receiver(vec![]).await;
    let r = start(notifying(&rx.url)).await;
    assert_eq!(generate(&r, "rid-r", reusable_body("INV-R")).await.0, 200);

    // suppress: the first payment sends nothing; the next one arrives first.
    r.sim.set_faults(vec![
        Fault::new(FaultTarget::Notification, FaultKind::Suppress).times(1),
    ]);
    let suppressed = r.sim.pay("INV-R").await.unwrap();
    let sent = r.sim.pay("INV-R").await.unwrap();
    let n = rx.next().await;
    assert_eq!(
        Some(n.header("request-id")),
        sent.notification_request_id.as_deref()
    );
    let d = r.sim.notifications();
    assert_eq!(d[0].request_id, suppressed.notification_request_id.unwrap());
    assert!(d[0].suppressed);
    assert_eq!(d[0].attempts, 0);

    // duplicate: two identical requests, same Request-Id.
    r.sim.set_faults(vec![
        Fault::new(FaultTarget::Notification, FaultKind::Duplicate).times(1),
    ]);
    let dup = r.sim.pay("INV-R").await.unwrap();
    let (a, b) = (rx.next().await, rx.next().await);
    assert_eq!(a.header("request-id"), b.header("request-id"));
    assert_eq!(
        Some(a.header("request-id")),
        dup.notification_request_id.as_deref()
    );
    assert_eq!(a.body, b.body);
    assert!(a.verifies(NOTIFY_PATH) && b.verifies(NOTIFY_PATH));

    // bad_signature: well-formed, does not verify.
    r.sim.set_faults(vec![
        Fault::new(FaultTarget::Notification, FaultKind::BadSignature).times(1),
    ]);
    r.sim.pay("INV-R").await.unwrap();
    let bad = rx.next().await;
    assert!(bad.header("signature").starts_with("HMACSHA256="));
    assert!(!bad.verifies(NOTIFY_PATH));

    // delay: the notification arrives late.
    r.sim.set_faults(vec![
        Fault::new(
            FaultTarget::Notification,
            FaultKind::Delay { delay_ms: 300 },
        )
        .times(1),
    ]);
    let paid_at = Instant::now();
    r.sim.pay("INV-R").await.unwrap();
    let late = rx.next().await;
    assert!(late.at - paid_at >= Duration::from_millis(300));
    assert!(late.verifies(NOTIFY_PATH));
}

#[tokio::test]
async fn faults_through_the_control_api() {
    let r = start(cfg()).await;
    let url = format!("{}/_sim/faults", r.base);
    let res = r
        .http
        .post(&url)
        .json(&json!([
            {"target": "payment_code", "kind": "status", "status": 502, "times": 1, "invoice_number": "INV-F"},
            {"target": "notification", "kind": "duplicate"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let one = r
        .http
        .post(&url)
        .json(&json!({"target": "check_status", "kind": "drop", "after_processing": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(r.sim.faults().len(), 3);

    for bad in [
        json!({"target": "payment_code", "kind": "status"}),
        json!({"target": "payment_code", "kind": "suppress"}),
        json!({"target": "notification", "kind": "status", "status": 500}),
        json!({"target": "payment_code", "kind": "delay", "delay_ms": 5, "status": 500}),
        json!({"target": "payment_code", "kind": "delay", "delayms": 5}),
        json!({"target": "payment_code", "kind": "status", "status": 503, "times": 0}),
        json!({"target": "somewhere", "kind": "drop"}),
    ] {
        let res = r.http.post(&url).json(&bad).send().await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    assert_eq!(r.sim.faults().len(), 3);

    // The invoice filter: another invoice is not affected.
    assert_eq!(generate(&r, "rid-1", body("INV-1")).await.0, 200);
    assert_eq!(generate(&r, "rid-2", body("INV-F")).await.0, 502);

    let listed: Vec<Value> = r.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["kind"], "duplicate");
    assert_eq!(listed[1]["after_processing"], true);
    let res = r.http.delete(&url).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert!(r.sim.faults().is_empty());
}

#[tokio::test]
async fn stopping_the_server_stops_pending_retries() {
    let mut rx = receiver(vec![500; 10]).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // DOKU's real schedule: the first retry would come 30 minutes later.
    let sim = Simulator::new(SimConfig {
        notification_retry_scale: 1.0,
        ..notifying(&rx.url)
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(sim.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let r = Running {
        sim: sim.clone(),
        base,
        http: reqwest::Client::new(),
        _stop: oneshot::channel().0,
    };
    assert_eq!(generate(&r, "rid-1", body("INV-1")).await.0, 200);
    sim.pay("INV-1").await.unwrap();
    rx.next().await;
    until(&sim, |s| s.notifications()[0].attempts == 1).await;

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    let mut tasks = std::mem::take(&mut *lock(&sim.inner.tasks));
    let ended = tasks.join_next().await.expect("the delivery task");
    assert!(ended.unwrap_err().is_cancelled());
    assert!(!sim.notifications()[0].delivered);
}

#[tokio::test]
async fn no_notification_url_means_no_notification() {
    let r = start(cfg()).await;
    assert_eq!(generate(&r, "rid-1", body("INV-1")).await.0, 200);
    let out = r.sim.pay("INV-1").await.unwrap();
    assert_eq!(out.notification_request_id, None);
    assert!(r.sim.notifications().is_empty());
}

#[test]
fn config_debug_hides_the_secret_and_validate_names_fields() {
    let c = cfg();
    assert!(!format!("{c:?}").contains(KEY));
    assert!(c.validate().is_ok());
    let bad = SimConfig {
        notification_url: Some("/payments/notifications".into()),
        ..cfg()
    };
    assert!(bad.validate().unwrap_err().starts_with("notification_url"));
    let bad = SimConfig {
        notification_retry_scale: f64::NAN,
        ..cfg()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .starts_with("notification_retry_scale")
    );
}

// ---- The page, the counter, resends, `/_sim/state` and the OpenAPI document ----

async fn get_json(r: &Running, path: &str) -> (u16, Value) {
    let res = r
        .http
        .get(format!("{}{path}", r.base))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, json_of(&res.bytes().await.unwrap()))
}

async fn post_json(r: &Running, path: &str) -> (u16, Value) {
    let res = r
        .http
        .post(format!("{}{path}", r.base))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, json_of(&res.bytes().await.unwrap()))
}

#[test]
fn openapi_documents_exactly_the_control_routes() {
    let doc: Value = serde_json::from_str(super::control::OPENAPI_JSON).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let table = super::control::table();
    let served: std::collections::BTreeSet<(String, String)> = table
        .routes()
        .iter()
        .map(|(m, p)| (m.as_str().to_ascii_lowercase(), (*p).to_owned()))
        .collect();
    assert!(served.len() >= 14, "the table lists the routes: {served:?}");
    for (method, path) in &served {
        assert!(
            path.starts_with("/_sim/"),
            "control route outside /_sim: {path}"
        );
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{} {path} is served but not in src/sim/openapi.json",
            method.to_uppercase()
        );
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&k.as_str())
                })
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(stale.is_empty(), "documented but not served: {stale:?}");
    // Every `$ref` points at something that exists.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let pointer = r.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

/// The route table is the only place `/_sim` routes are added: a route added to the router
/// anywhere else would be served without the test above seeing it.
#[test]
fn no_control_route_is_added_outside_the_table() {
    let sources = [
        ("mod.rs", include_str!("mod.rs")),
        ("api.rs", include_str!("api.rs")),
        ("page.rs", include_str!("page.rs")),
        ("control.rs", include_str!("control.rs")),
    ];
    for (name, src) in sources {
        for (i, _) in src.match_indices(".route(") {
            let arg = src[i + ".route(".len()..].trim_start();
            assert!(
                !arg.starts_with("\"/_sim"),
                "{name} adds a /_sim route with .route(): add it to control::table() instead"
            );
        }
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let r = start(cfg()).await;
    let res = r.http.get(format!("{}/", r.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script src="/ui/sim.js" defer></script>"#));
    assert!(html.contains(r#"<label for="counter-code">Payment code</label>"#));
    // Nothing from elsewhere: no absolute URLs in the page, script or stylesheet.
    for path in ["/", "/ui/sim.js", "/ui/sim.css"] {
        let res = r
            .http
            .get(format!("{}{path}", r.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let body = res.text().await.unwrap();
        for needle in ["http://", "https://", "//fonts", "@import"] {
            assert!(!body.contains(needle), "{path} refers to {needle}");
        }
    }
    let js = r
        .http
        .get(format!("{}/ui/sim.js", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let js = js.text().await.unwrap();
    for label in [
        "label: 'Pay'",
        "label: 'Expire'",
        "label: 'Fail'",
        "text: 'Resend'",
    ] {
        assert!(js.contains(label), "the page script has {label}");
    }
    // The page's own requests are not DOKU requests.
    assert!(r.sim.requests().is_empty());

    let (status, doc) = get_json(&r, "/_sim/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(super::control::OPENAPI_JSON).unwrap()
    );
}

#[tokio::test]
async fn how_to_pay_page_shows_the_code_large_and_links_to_the_counter() {
    let r = start(cfg()).await;
    let (_, v) = generate(&r, "rid-1", body("INV-H<1>")).await;
    let url = v["online_to_offline_info"]["how_to_pay_page"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = r.sim.payment("INV-H<1>").unwrap().payment_code;
    let res = r.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let html = res.text().await.unwrap();
    assert!(html.contains("<h1>Pay at Indomaret</h1>"));
    assert!(html.contains(&format!(
        r#"<p class="htp-code"><span>{}</span>"#,
        &code[..4]
    )));
    assert!(html.contains("Rp\u{a0}150.000"));
    assert!(html.contains("INV-H&lt;1&gt;"), "the invoice is escaped");
    assert!(html.contains(&format!(r#"href="/?code={code}#counter""#)));
    assert!(html.contains("Tell the cashier"));
    assert!(!html.contains("{{"));
    r.sim.expire("INV-H<1>").unwrap();
    let html = r.http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("has expired"));

    let wrong = format!("{url}x");
    let res = r.http.get(&wrong).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.text().await.unwrap().contains("does not match"));
}

#[tokio::test]
async fn the_counter_looks_codes_up_as_a_till_does() {
    let r = start(cfg()).await;
    generate(&r, "rid-1", body("INV-C1")).await;
    generate(&r, "rid-2", body("INV-C2")).await;
    let code1 = r.sim.payment("INV-C1").unwrap().payment_code;
    let code2 = r.sim.payment("INV-C2").unwrap().payment_code;

    let (status, q) = get_json(&r, &format!("/_sim/codes/{code1}")).await;
    assert_eq!(status, 200);
    assert_eq!(q["invoice_number"], "INV-C1");
    assert_eq!(q["merchant"], CLIENT);
    assert_eq!(q["amount"], 150000);
    assert_eq!(q["customer_name"], "Taufik Ismail");
    assert_eq!(q["info"], "Thanks");
    assert_eq!(q["channel"], "INDOMARET");
    assert_eq!(q["payable"], true);
    assert_eq!(q["reason"], Value::Null);
    assert_eq!(q["actions"], json!(["pay", "expire", "fail"]));

    let (status, v) = get_json(&r, "/_sim/codes/7731099999999999").await;
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap().contains("7731099999999999"));

    assert_eq!(post_json(&r, "/_sim/payments/INV-C2/expire").await.0, 200);
    let (status, q) = get_json(&r, &format!("/_sim/codes/{code2}")).await;
    assert_eq!(status, 200);
    assert_eq!(q["status"], "EXPIRED");
    assert_eq!(q["payable"], false);
    assert!(q["reason"].as_str().unwrap().contains("EXPIRED"));
    assert_eq!(q["actions"], json!([]));

    assert_eq!(post_json(&r, "/_sim/payments/INV-C1/pay").await.0, 200);
    let (_, q) = get_json(&r, &format!("/_sim/codes/{code1}")).await;
    assert_eq!(
        (q["status"].as_str(), q["payable"].as_bool()),
        (Some("SUCCESS"), Some(false))
    );
    assert!(q["reason"].as_str().unwrap().contains("already paid"));
}

#[tokio::test]
async fn state_holds_settings_payments_deliveries_and_faults() {
    let mut rx = receiver(vec![]).await;
    let r = start(notifying(&rx.url)).await;
    generate(&r, "rid-1", body("INV-S1")).await;
    r.sim.add_faults(vec![Fault::new(
        FaultTarget::CheckStatus,
        FaultKind::Status { status: 503 },
    )]);
    r.sim.pay("INV-S1").await.unwrap();
    rx.next().await;
    until(&r.sim, |s| s.notifications()[0].delivered).await;

    let (status, st) = get_json(&r, "/_sim/state").await;
    assert_eq!(status, 200);
    assert_eq!(st["config"]["client_id"], CLIENT);
    assert_eq!(st["config"]["notification_url"], json!(rx.url));
    // DOKU's 0, 30 min, 6 h, 12 h scaled by 1e-6.
    assert_eq!(
        st["config"]["notification_retry_schedule_ms"],
        json!([0, 1, 21, 43])
    );
    let p = &st["payments"][0];
    assert_eq!(p["invoice_number"], "INV-S1");
    assert_eq!(p["status"], "SUCCESS");
    assert_eq!(p["actions"], json!([]));
    assert!(p["how_to_pay_url"].as_str().unwrap().starts_with(&r.base));
    let d = &st["notifications"][0];
    assert_eq!(d["delivered"], true);
    assert_eq!(d["resend"], false);
    assert_eq!(d["history"][0]["status"], 200);
    assert!(d["history"][0]["duration_ms"].is_u64());
    assert!(d["history"][0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(d["next_attempt_at"], Value::Null);
    assert_eq!(st["faults"][0]["kind"], "status");

    // DOKU's real schedule: after a failed first attempt the next is due 30 min later.
    let mut down = receiver(vec![500]).await;
    let r = start(SimConfig {
        notification_url: Some(down.url.clone()),
        ..cfg()
    })
    .await;
    generate(&r, "rid-1", body("INV-S2")).await;
    r.sim.pay("INV-S2").await.unwrap();
    down.next().await;
    until(&r.sim, |s| {
        let d = &s.notifications()[0];
        d.attempts == 1 && d.next_attempt_at.is_some()
    })
    .await;
    let d = &r.sim.notifications()[0];
    let gap = d.next_attempt_at.unwrap() - d.history[0].at;
    assert!(
        (gap - time::Duration::minutes(30)).abs() < time::Duration::seconds(5),
        "second attempt due {gap} after the first"
    );
    let (_, st) = get_json(&r, "/_sim/state").await;
    assert_eq!(
        st["config"]["notification_retry_schedule_ms"],
        json!([0, 1_800_000, 21_600_000, 43_200_000])
    );
}

#[tokio::test]
async fn resend_sends_the_same_notification_again_with_the_faults_active_now() {
    let mut rx = receiver(vec![]).await;
    let r = start(notifying(&rx.url)).await;
    generate(&r, "rid-1", body("INV-R1")).await;

    let (status, v) = post_json(&r, "/_sim/payments/INV-R1/resend").await;
    assert_eq!(status, 409, "nothing to resend before a payment: {v}");
    assert_eq!(post_json(&r, "/_sim/payments/NOPE/resend").await.0, 404);

    let out = r.sim.pay("INV-R1").await.unwrap();
    let first = rx.next().await;
    let (status, v) = post_json(&r, "/_sim/payments/INV-R1/resend").await;
    assert_eq!(status, 200);
    assert_eq!(
        v["notification_request_id"],
        json!(out.notification_request_id)
    );
    assert_eq!(v["status"], "SUCCESS");
    let again = rx.next().await;
    assert_eq!(again.header("request-id"), first.header("request-id"));
    assert_eq!(again.body, first.body);
    assert!(again.verifies(NOTIFY_PATH));
    until(&r.sim, |s| s.notifications().iter().all(|d| d.delivered)).await;
    let ds = r.sim.notifications();
    assert_eq!(ds.len(), 2);
    assert_eq!((ds[0].resend, ds[1].resend), (false, true));

    // A fault active at the resend applies to it.
    r.sim.add_faults(vec![
        Fault::new(FaultTarget::Notification, FaultKind::BadSignature).times(1),
    ]);
    r.sim.resend("INV-R1").unwrap();
    let bad = rx.next().await;
    assert_eq!(bad.body, first.body);
    assert!(!bad.verifies(NOTIFY_PATH));
    assert!(r.sim.faults().is_empty(), "the fault was used up");
    assert!(r.sim.notifications()[2].bad_signature);
}

#[tokio::test]
async fn alfa_is_served_as_strictly_as_indomaret() {
    let mut rx = receiver(vec![]).await;
    let r = start(notifying(&rx.url)).await;

    // Each channel's body only on its own endpoint: the other receipt object is unknown there.
    let (s, v) = generate_alfa(&r, "rid-x1", body("INV-X1")).await;
    assert_eq!(s, 400, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("unknown field indomaret_info"), "{m}");
    let (s, v) = generate(&r, "rid-x2", alfa_body("INV-X2")).await;
    assert_eq!(s, 400, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("unknown field alfa_info"), "{m}");
    // An Alfa receipt has no description line.
    let with_description = alfa_body("INV-X3").replace(
        r#""receipt":{"footer_message""#,
        r#""receipt":{"description":"ORDER 1","footer_message""#,
    );
    let (s, v) = generate_alfa(&r, "rid-x3", with_description).await;
    assert_eq!(s, 400, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("alfa_info.receipt.description"), "{m}");
    let long_footer = alfa_body("INV-X4").replace("Terima kasih", &"f".repeat(129));
    let (s, v) = generate_alfa(&r, "rid-x4", long_footer).await;
    assert_eq!(s, 400, "{v}");
    assert!(r.sim.payments().is_empty());

    // A valid Alfa request: code, expiry, signed answer, Alfa's how-to-pay links.
    let (s, headers, raw) = {
        let mut req = Signed::post("rid-alfa", alfa_body("INV-ALFA"));
        req.path = ALFA_PAYMENT_CODE_PATH.to_owned();
        req.send(&r).await
    };
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&raw));
    assert!(response_verifies(
        &headers,
        ALFA_PAYMENT_CODE_PATH,
        Some(&raw)
    ));
    let v = json_of(&raw);
    let info = &v["online_to_offline_info"];
    let code = info["payment_code"].as_str().unwrap().to_owned();
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    assert_ne!(info["expired_date_utc"], info["created_date_utc"]);
    let (page, api) = how_to_pay_links(&r, info, "alfa-online-to-offline");
    let html = r.http.get(page).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("<h1>Pay at Alfa Group</h1>"), "{html}");
    assert!(html.contains("Go to the nearest Alfamart, Alfamidi, Lawson or Dan+Dan store."));
    let how: Value = r.http.get(api).send().await.unwrap().json().await.unwrap();
    assert_eq!(how["payment_instruction"][0]["channel"], "ALFA");
    assert!(
        how["payment_instruction"][0]["step"][0]
            .as_str()
            .unwrap()
            .contains("Alfamart")
    );
    // The same code and token under Indomaret's paths lead nowhere.
    let wrong = page.replace("alfa-online-to-offline", "indomaret-online-to-offline");
    assert_eq!(r.http.get(&wrong).send().await.unwrap().status(), 404);
    let wrong = api.replace("alfa-online-to-offline", "indomaret-online-to-offline");
    assert_eq!(r.http.get(&wrong).send().await.unwrap().status(), 404);

    let p = r.sim.payment("INV-ALFA").unwrap();
    assert_eq!(
        (p.channel, p.channel_name),
        (SimChannel::Alfa, "Alfa Group")
    );
    let (_, listed) = get_json(&r, "/_sim/payments/INV-ALFA").await;
    assert_eq!(listed["channel"], "ALFA");
    assert_eq!(listed["channel_name"], "Alfa Group");

    // The same Request-Id and body on Indomaret's endpoint is other data, not a replay.
    let (s, v) = generate(&r, "rid-alfa", alfa_body("INV-ALFA")).await;
    assert_eq!(s, 400, "{v}");
    // A new Request-Id for the invoice, on either endpoint: a duplicate invoice.
    let (s, v) = generate(&r, "rid-dup", body("INV-ALFA")).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate invoice")
    );

    // Check Status and the notification carry Alfa's ids.
    let v = status_of(&r, "INV-ALFA").await;
    assert_eq!(v["acquirer"]["id"], "ALFA");
    assert_eq!(v["channel"]["id"], "ONLINE_TO_OFFLINE_ALFA");
    r.sim.pay("INV-ALFA").await.unwrap();
    let n = rx.next().await;
    assert!(n.verifies(NOTIFY_PATH));
    let v = n.json();
    assert_eq!(v["service"]["id"], "ONLINE_TO_OFFLINE");
    assert_eq!(v["acquirer"]["id"], "ALFA");
    assert_eq!(v["channel"]["id"], "ONLINE_TO_OFFLINE_ALFA");
    assert_eq!(v["online_to_offline_info"]["payment_code"], json!(code));
    assert_eq!(
        status_of(&r, "INV-ALFA").await["transaction"]["status"],
        "SUCCESS"
    );
}

#[tokio::test]
async fn faults_target_each_generate_endpoint() {
    let r = start(cfg()).await;
    let res = r
        .http
        .post(format!("{}/_sim/faults", r.base))
        .json(&json!({"target": "alfa_payment_code", "kind": "status", "status": 503, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Indomaret's endpoint is not Alfa's: untouched.
    assert_eq!(generate(&r, "rid-i", body("INV-I")).await.0, 200);
    let (s, v) = generate_alfa(&r, "rid-a", alfa_body("INV-A")).await;
    assert_eq!((s, error_code(&v)), (503, "service_unavailable"));
    assert!(r.sim.payment("INV-A").is_none());
    assert!(r.sim.faults().is_empty(), "times: 1 is used up");
    assert_eq!(generate_alfa(&r, "rid-a", alfa_body("INV-A")).await.0, 200);

    r.sim.set_faults(vec![
        Fault::new(FaultTarget::PaymentCode, FaultKind::Status { status: 500 }).times(1),
    ]);
    assert_eq!(generate_alfa(&r, "rid-b", alfa_body("INV-B")).await.0, 200);
    assert_eq!(generate(&r, "rid-c", body("INV-C")).await.0, 500);
}
