//! Payment instructions as data: the how-to-pay JSON DOKU's answer links to is fetched by the
//! sidecar (from allowed origins only), kept with the payment and returned by
//! GeneratePaymentCode and GetStatus; a fetch that is not allowed or fails never fails the
//! payment. Run them with `cargo test --test it instructions`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use o2o_sidecar::{doku::AllowedOrigin, grpc::pb};
use serde_json::{Value, json};
use tokio::time::Instant;
use wiremock::{
    Mock, MockServer, Request, Respond, ResponseTemplate,
    matchers::{method, path},
};

use o2o_sidecar::testing::{InProcessSidecar, Options, request};

#[tokio::test]
async fn generate_and_get_status_return_the_instructions_doku_sim_serves() {
    returns_the_instructions_doku_sim_serves(pb::Channel::Indomaret, "INDOMARET").await;
}

#[tokio::test]
async fn an_alfa_payment_gets_alfa_s_instructions() {
    returns_the_instructions_doku_sim_serves(pb::Channel::Alfa, "ALFA").await;
}

/// A payment on `channel` carries the instructions doku-sim serves for it (their
/// `payment_instruction[].channel` is `doku_channel`), from GeneratePaymentCode, GetStatus and
/// a refresh.
async fn returns_the_instructions_doku_sim_serves(channel: pb::Channel, doku_channel: &str) {
    let mut h = InProcessSidecar::start().await;
    // No receipt: an Alfa receipt has no description.
    let on_channel = || pb::GeneratePaymentCodeRequest {
        channel: channel.into(),
        receipt: None,
        ..request("INV-INS-1", 25_000)
    };
    let payment = h.generate(on_channel()).await;
    assert!(!payment.payment_code.is_empty());
    assert_eq!(payment.channel(), channel);

    // What the simulator's how-to-pay API says, read directly.
    let api = payment
        .how_to_pay_api_url
        .strip_prefix(&h.doku_url)
        .unwrap();
    let served = h.sim_get(api).await;
    let want: Vec<pb::PaymentInstruction> = served["payment_instruction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| pb::PaymentInstruction {
            channel: i["channel"].as_str().unwrap().into(),
            language: i["language"].as_str().unwrap().into(),
            steps: i["step"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().into())
                .collect(),
        })
        .collect();
    assert!(!want.is_empty() && !want[0].steps.is_empty(), "{served}");
    assert_eq!(want[0].channel, doku_channel);
    assert_eq!(payment.instructions, want);

    // Kept with the payment: GetStatus from the store, and after a refresh from DOKU.
    assert_eq!(h.status("INV-INS-1", false).await.instructions, want);
    assert_eq!(h.status("INV-INS-1", true).await.instructions, want);
    // The idempotent repeat returns them too, without fetching again.
    let again = h.generate(on_channel()).await;
    assert_eq!(again, payment);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// A fake DOKU whose answers link wherever the test says

/// Generate answers whose `how_to_pay_api` is the link the test set for the invoice.
#[derive(Clone, Default)]
struct FakeDoku {
    links: Arc<Mutex<HashMap<String, String>>>,
}

impl FakeDoku {
    fn link(&self, invoice: &str, url: String) {
        self.links.lock().unwrap().insert(invoice.into(), url);
    }
}

impl Respond for FakeDoku {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let sent: Value = serde_json::from_slice(&request.body).unwrap();
        let invoice = sent["order"]["invoice_number"].as_str().unwrap().to_owned();
        let links = self.links.lock().unwrap();
        let code = format!("88800000{:04}", links.len());
        ResponseTemplate::new(200).set_body_json(json!({
            "order": {"invoice_number": invoice, "amount": sent["order"]["amount"]},
            "online_to_offline_info": {
                "payment_code": code,
                "expired_date_utc": "2030-01-01T00:00:00Z",
                "how_to_pay_page": "https://sandbox.doku.com/how-to-pay/x",
                "how_to_pay_api": links.get(&invoice).cloned().unwrap_or_default(),
            }
        }))
    }
}

const ANSWER: &str = r#"{"payment_instruction":[{"channel":"INDOMARET","language":"id","step":["Datang ke Indomaret.","Bayar di kasir."]}]}"#;

/// A fake DOKU, and a sidecar that calls it and may fetch how-to-pay JSON from it (and only
/// from it) within `timeout`.
async fn rig(timeout: Duration) -> (MockServer, FakeDoku, InProcessSidecar) {
    let server = MockServer::start().await;
    let fake = FakeDoku::default();
    Mock::given(method("POST"))
        .and(path("/indomaret-online-to-offline/v2/payment-code"))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let url = server.uri();
    let h = InProcessSidecar::start_adjusted(Options::default(), move |mut c, _| {
        c.how_to_pay.allowed = vec![AllowedOrigin::of_url(&url).unwrap()];
        c.how_to_pay.timeout = timeout;
        c.doku_base_url = url;
        c
    })
    .await;
    (server, fake, h)
}

async fn serve(server: &MockServer, at: &str, answer: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(answer)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_link_to_a_host_that_is_not_allowed_is_never_fetched() {
    let (doku, fake, mut h) = rig(Duration::from_secs(2)).await;
    // Another listener, on another port of the same machine: not an allowed origin.
    let elsewhere = MockServer::start().await;
    serve(
        &elsewhere,
        "/how-to-pay-api/1",
        ResponseTemplate::new(200).set_body_string(ANSWER),
    )
    .await;
    serve(
        &doku,
        "/how-to-pay-api/1",
        ResponseTemplate::new(200).set_body_string(ANSWER),
    )
    .await;

    // The rig fetches from DOKU's own origin...
    fake.link("INV-INS-OK", format!("{}/how-to-pay-api/1", doku.uri()));
    let fetched = h.generate(request("INV-INS-OK", 10_000)).await;
    assert_eq!(fetched.instructions.len(), 1);
    assert_eq!(fetched.instructions[0].steps.len(), 2);

    // ...and not from wherever an answer points.
    let away = format!("{}/how-to-pay-api/1", elsewhere.uri());
    fake.link("INV-INS-AWAY", away.clone());
    let p = h.generate(request("INV-INS-AWAY", 10_000)).await;
    assert!(!p.payment_code.is_empty());
    assert_eq!(p.status(), pb::PaymentStatus::Pending);
    assert!(p.instructions.is_empty());
    // The link itself is still the caller's (it is an http URL).
    assert_eq!(p.how_to_pay_api_url, away);
    assert!(
        h.status("INV-INS-AWAY", false)
            .await
            .instructions
            .is_empty()
    );
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "the sidecar fetched from an origin that is not allowed"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failing_slow_or_oversized_how_to_pay_api_does_not_fail_the_payment() {
    let timeout = Duration::from_millis(500);
    let (doku, fake, mut h) = rig(timeout).await;
    let ok = || ResponseTemplate::new(200);
    let big = json!({"payment_instruction": [], "pad": "x".repeat(100 * 1024)});
    let cases = [
        ("500", ResponseTemplate::new(500)),
        (
            "slow",
            ok().set_body_string(ANSWER)
                .set_delay(Duration::from_secs(30)),
        ),
        ("big", ok().set_body_string(big.to_string())),
        ("garbage", ok().set_body_string("<html>maintenance</html>")),
    ];
    for (case, answer) in &cases {
        serve(&doku, &format!("/htp/{case}"), answer.clone()).await;
    }
    for (n, (case, _)) in cases.iter().enumerate() {
        let invoice = format!("INV-INS-F{n}");
        fake.link(&invoice, format!("{}/htp/{case}", doku.uri()));
        let started = Instant::now();
        let p = h.generate(request(&invoice, 10_000)).await;
        assert!(
            started.elapsed() < timeout + Duration::from_secs(3),
            "{case}: the fetch was not bounded"
        );
        assert!(!p.payment_code.is_empty(), "{case}");
        assert!(p.instructions.is_empty(), "{case}");
        let stored = h.status(&invoice, false).await;
        assert_eq!(stored.payment_code, p.payment_code, "{case}");
        assert!(stored.instructions.is_empty(), "{case}");
    }
    // Each was asked once: a failed fetch is not retried.
    for (case, _) in cases {
        let asked = doku
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == format!("/htp/{case}"))
            .count();
        assert_eq!(asked, 1, "{case}");
    }
    h.stop().await;
}
