//! The Secret Key: rotation without a restart (outbound calls switch at once, the previous
//! key keeps verifying notifications for the grace window, a metric says which key verified),
//! an unreadable key file (last good key kept, not ready), and secret hygiene: the key never
//! appears in logs, error messages, `Debug` output, `/metrics` or exported spans.

use std::{path::Path, time::Duration};

use base64::Engine as _;
use o2o_sidecar::{
    config::Config,
    grpc::{
        pb::{self, o2o_payments_client::O2oPaymentsClient},
        stream::resume_token,
    },
    secret::SecretSource,
    sim::SimConfig,
};
use serde_json::json;

use o2o_sidecar::testing::{
    CLIENT_ID, ChildOptions, ChildSidecar, InProcessSidecar, Options, PATH, Sim, eventually,
    notification_body, post_notification, reason, request, signed_headers,
};

const OLD: &str = "SK-ROTATE-old-0123456789";
const NEW: &str = "SK-ROTATE-new-9876543210";

/// Replaces the key file atomically (write elsewhere, rename), as a Secret volume does.
fn write_key(path: &Path, key: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{key}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A sidecar whose key comes from a file holding `file_key`, against a simulator that holds
/// `sim_key`.
struct KeyRig {
    rig: InProcessSidecar,
    key: SecretSource,
    key_file: std::path::PathBuf,
}

impl KeyRig {
    async fn start(file_key: &str, sim_key: &str, grace: Duration) -> Self {
        let mut source = None;
        let options = Options {
            sim_key: sim_key.into(),
            ..Options::default()
        };
        let rig = InProcessSidecar::start_adjusted(options, |config, dir| {
            let path = dir.join("doku-secret-key");
            write_key(&path, file_key);
            let key = SecretSource::from_file(&path).unwrap();
            source = Some((key.clone(), path));
            Config {
                secret_key: key,
                previous_key_grace: grace,
                ..config
            }
        })
        .await;
        let (key, key_file) = source.unwrap();
        Self { rig, key, key_file }
    }

    async fn notify(&self, key: &str, request_id: &str) -> u16 {
        let b = notification_body(
            &format!("INV-{request_id}"),
            10_000,
            "7731000001",
            "SUCCESS",
        );
        let headers = signed_headers(b.as_bytes(), key, PATH, request_id);
        post_notification(
            &self.rig.http,
            &self.rig.notification_url(),
            b.as_bytes(),
            &headers,
        )
        .await
        .unwrap()
    }

    async fn ready(&self) -> (u16, String) {
        self.rig.admin_get("/ready").await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.rig.http, self.rig.addrs.admin, series).await
    }
}

/// The value of one series in `/metrics` (0 when absent).
pub(crate) async fn metric(
    http: &reqwest::Client,
    admin: std::net::SocketAddr,
    series: &str,
) -> f64 {
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const PREVIOUS: &str = "o2o_notifications_verified_total{key=\"previous\"}";
const CURRENT: &str = "o2o_notifications_verified_total{key=\"current\"}";

#[tokio::test]
async fn a_rotated_key_file_switches_outbound_calls_and_the_old_key_still_verifies() {
    // DOKU already has the new key; the sidecar's file still holds the old one.
    let mut rig = KeyRig::start(OLD, NEW, Duration::from_secs(3600)).await;
    let err = rig
        .rig
        .grpc
        .generate_payment_code(request("INV-ROT-1", 10_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "DOKU_AUTH_REJECTED");
    let current_before = rig.metric(CURRENT).await;
    assert_eq!(rig.notify(OLD, "rot-1").await, 200);
    assert!(rig.metric(CURRENT).await > current_before);

    // Rotate the file: no restart; the watcher picks it up and the next call signs with NEW.
    write_key(&rig.key_file, NEW);
    let mut grpc = rig.rig.grpc.clone();
    eventually(
        "a call signed with the new key",
        Duration::from_secs(5),
        || {
            let mut grpc = grpc.clone();
            async move {
                grpc.generate_payment_code(request("INV-ROT-1", 10_000))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    let p = grpc
        .generate_payment_code(request("INV-ROT-1", 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert!(!p.payment_code.is_empty());

    // Notifications: the old key within its grace window, the new key, never a foreign one.
    let previous_before = rig.metric(PREVIOUS).await;
    assert_eq!(rig.notify(OLD, "rot-2").await, 200, "previous key in grace");
    assert!(rig.metric(PREVIOUS).await >= previous_before + 1.0);
    let current_before = rig.metric(CURRENT).await;
    assert_eq!(rig.notify(NEW, "rot-3").await, 200);
    assert!(rig.metric(CURRENT).await >= current_before + 1.0);
    assert_eq!(rig.notify("SK-SOMEONE-ELSE", "rot-4").await, 401);
    rig.rig.stop().await;
}

#[tokio::test]
async fn without_a_grace_window_the_old_key_is_refused_at_once() {
    let rig = KeyRig::start(OLD, OLD, Duration::ZERO).await;
    assert_eq!(rig.notify(OLD, "nog-1").await, 200);
    write_key(&rig.key_file, NEW);
    // The same source the running sidecar holds: no need to wait for the watcher.
    assert!(rig.key.refresh().unwrap());
    assert_eq!(rig.notify(OLD, "nog-2").await, 401);
    assert_eq!(rig.notify(NEW, "nog-3").await, 200);
    rig.rig.stop().await;
}

#[tokio::test]
async fn an_unreadable_key_file_keeps_the_last_key_and_turns_readiness_off() {
    let mut rig = KeyRig::start(OLD, OLD, Duration::from_secs(3600)).await;
    assert_eq!(rig.ready().await.0, 200);
    std::fs::remove_file(&rig.key_file).unwrap();
    eventually("/ready turns 503", Duration::from_secs(5), || async {
        rig.ready().await.0 == 503
    })
    .await;
    let (_, text) = rig.ready().await;
    assert!(text.contains("secret key file unreadable"), "{text}");
    // The last good key is still used, both ways.
    rig.rig
        .grpc
        .generate_payment_code(request("INV-KEYGONE-1", 10_000))
        .await
        .unwrap();
    assert_eq!(rig.notify(OLD, "gone-1").await, 200);

    // Empty is as bad as missing.
    std::fs::write(&rig.key_file, "").unwrap();
    assert!(rig.key.refresh().is_err());
    assert_eq!(rig.ready().await.0, 503);

    write_key(&rig.key_file, OLD);
    eventually("/ready turns 200 again", Duration::from_secs(5), || async {
        rig.ready().await.0 == 200
    })
    .await;
    rig.rig.stop().await;
}

/// Every way the secret could be written down.
fn forms_of(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_owned(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        hex,
        // Its middle, in case something truncates or wraps it.
        secret[4..secret.len() - 4].to_owned(),
    ]
}

/// `HMACSHA256=` followed by a complete base64 MAC (44 characters).
fn full_signatures(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("HMACSHA256=") {
        let tail = &rest[i + "HMACSHA256=".len()..];
        let mac: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
            .collect();
        if mac.len() >= 44 {
            found.push(mac);
        }
        rest = tail;
    }
    found
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        for form in forms_of(secret) {
            assert!(
                !text.contains(&form),
                "{what} contains the secret key (as {form:?})"
            );
        }
    }
    let sigs = full_signatures(text);
    assert!(sigs.is_empty(), "{what} contains full signatures: {sigs:?}");
}

#[test]
fn the_detector_finds_every_form_of_the_secret_and_full_signatures() {
    let secret = "SK-DETECT-0123456789";
    let sig = signed_headers(b"{}", secret, PATH, "r-1")[3].1.clone();
    for leak in forms_of(secret)
        .into_iter()
        .chain([format!("signature={sig} rest")])
    {
        let text = format!("a log line with {leak} inside");
        let caught = std::panic::catch_unwind(|| assert_clean("test", &text, &[secret]));
        assert!(caught.is_err(), "{leak} was not caught");
    }
    // The shortened signature the audit table keeps is fine.
    assert_clean("test", &format!("{}…", &sig[..16]), &[secret]);
}

/// The whole scenario against the real binary with a known secret, at the most verbose log
/// level, exporting its spans to an OTLP collector: generate (with DOKU failures and a lost
/// answer), bad input, payments and bad notifications, a key rotation and an unreadable key
/// file, `/metrics`, then SIGTERM. The secret must not appear in any output, spans included
/// (their attributes and the log events recorded on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_appears_in_logs_errors_debug_or_metrics() {
    const SECRET: &str = "SK-HYGIENE-4f1c2a9e7b3d5a60";
    const SECRET2: &str = "SK-HYGIENE-rotated-88c1d0e2f4";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("doku-secret-key");
    write_key(&key_file, SECRET);
    let store = format!("sqlite://{}", dir.path().join("o2o.db").display());
    let sim_listener = Sim::bind().await;
    let sim_url = sim_listener.url.clone();
    let spans = crate::otlp::Received::default();
    let otlp = crate::otlp::collector("grpc", spans.clone()).await;
    let exporting = format!(
        "export OTEL_EXPORTER_OTLP_ENDPOINT={otlp} OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
         OTEL_SERVICE_NAME=o2o-hygiene"
    );
    let sidecar = ChildSidecar::start(&ChildOptions {
        doku_base_url: sim_url.clone(),
        rust_log: "trace".into(),
        keep_log: true,
        wrap: Some(exporting.clone()),
        ..ChildOptions::new(crate::BIN, &key_file, &store).flags(&[
            "--doku-timeout",
            "300ms",
            "--doku-max-attempts",
            "2",
            "--previous-key-grace",
            "1h",
        ])
    })
    .await;
    let mut sim = sim_listener.serve(SimConfig {
        notification_url: Some(sidecar.notification_url()),
        ..SimConfig::new(CLIENT_ID, SECRET)
    });
    let http = reqwest::Client::new();
    let sim_post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{sim_url}{path}");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    let mut grpc = O2oPaymentsClient::connect(format!("http://{}", sidecar.addrs.grpc))
        .await
        .unwrap();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut record = |what: &str, status: &tonic::Status| {
        outputs.push((
            what.to_owned(),
            format!(
                "{} {:?} {}",
                status.message(),
                status.metadata(),
                String::from_utf8_lossy(status.details())
            ),
        ));
    };

    // Generate: fine, after 5xx, after a lost answer.
    grpc.generate_payment_code(request("INV-HY-1", 10_000))
        .await
        .unwrap();
    sim_post(
        "/_sim/faults".into(),
        json!({"target": "payment_code", "kind": "status", "status": 503, "times": 2}),
    )
    .await;
    let e = grpc
        .generate_payment_code(request("INV-HY-2", 10_000))
        .await
        .unwrap_err();
    record("DOKU 503", &e);
    grpc.generate_payment_code(request("INV-HY-2", 10_000))
        .await
        .unwrap();
    sim_post(
        "/_sim/faults".into(),
        json!({"target": "payment_code", "kind": "delay", "delay_ms": 1000, "times": 2}),
    )
    .await;
    let e = grpc
        .generate_payment_code(request("INV-HY-3", 10_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DOKU_OUTCOME_UNKNOWN");
    record("outcome unknown", &e);
    // Bad input and unknown invoices.
    let mut bad = request("INV HY", 0);
    bad.idempotency_key = "k".repeat(200);
    record(
        "invalid",
        &grpc.generate_payment_code(bad).await.unwrap_err(),
    );
    record(
        "not found",
        &grpc
            .get_status(pb::GetStatusRequest {
                invoice_number: "INV-NOPE".into(),
                refresh: true,
            })
            .await
            .unwrap_err(),
    );
    record(
        "bad token",
        &grpc
            .stream_notifications(pb::StreamNotificationsRequest {
                resume_token: "garbage".into(),
                invoice_numbers: vec![],
            })
            .await
            .unwrap_err(),
    );
    grpc.get_status(pb::GetStatusRequest {
        invoice_number: "INV-HY-1".into(),
        refresh: true,
    })
    .await
    .unwrap();

    // Payments: a good notification from the simulator, a badly signed one, forged ones.
    let mut stream = grpc
        .stream_notifications(pb::StreamNotificationsRequest {
            resume_token: resume_token(0),
            invoice_numbers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    sim_post("/_sim/payments/INV-HY-1/pay".into(), json!({})).await;
    let n = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(n.notification.unwrap().invoice_number, "INV-HY-1");
    sim_post(
        "/_sim/faults".into(),
        json!({"target": "notification", "kind": "bad_signature", "times": 1}),
    )
    .await;
    sim_post("/_sim/payments/INV-HY-2/pay".into(), json!({})).await;
    let b = notification_body("INV-HY-2", 10_000, "7731000002", "SUCCESS");
    let forged = signed_headers(b.as_bytes(), "SK-FORGER", PATH, "hy-forged");
    assert_eq!(
        post_notification(&http, &sidecar.notification_url(), b.as_bytes(), &forged).await,
        Some(401)
    );

    // Rotation: outbound calls use SECRET2 (the simulator, still on SECRET, refuses them);
    // a notification signed with SECRET verifies as the previous key.
    write_key(&key_file, SECRET2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for attempt in 0.. {
        let r = grpc
            .generate_payment_code(request(&format!("INV-HY-4-{attempt}"), 10_000))
            .await;
        if let Err(e) = &r
            && reason(e) == "DOKU_AUTH_REJECTED"
        {
            record("auth rejected", e);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rotation not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = notification_body("INV-HY-5", 10_000, "7731000005", "SUCCESS");
    let old = signed_headers(b.as_bytes(), SECRET, PATH, "hy-old-key");
    assert_eq!(
        post_notification(&http, &sidecar.notification_url(), b.as_bytes(), &old).await,
        Some(200)
    );
    // An unreadable key file.
    std::fs::write(&key_file, "").unwrap();
    let ready = format!("http://{}/ready", sidecar.addrs.admin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while http.get(&ready).send().await.unwrap().status() != 503 {
        assert!(tokio::time::Instant::now() < deadline, "not unready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut admin_text = String::new();
    for path in ["/ready", "/live", "/metrics"] {
        let t = http
            .get(format!("http://{}{path}", sidecar.addrs.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        admin_text.push_str(&t);
    }
    assert!(admin_text.contains("o2o_notifications_verified_total"));
    write_key(&key_file, SECRET2);

    // Debug output of everything that holds the key.
    let key = SecretSource::from_file(&key_file).unwrap();
    let config = Config::new(sim_url.clone(), CLIENT_ID, key.clone(), store.clone());
    let mut debug = format!("{config:?} {key:?} {:?}", sim.simulator().config());
    debug.push_str(&format!("{:?}", key.verification_keys()));
    debug.push_str(&format!(
        "{:?}",
        o2o_sidecar::doku::DokuClient::new(
            o2o_sidecar::doku::DokuClientConfig {
                base_url: sim_url.clone(),
                client_id: CLIENT_ID.into(),
                ..Default::default()
            },
            key,
        )
        .unwrap()
    ));
    debug.push_str(&format!(
        "{:?}",
        SecretSource::from_file(dir.path().join("missing")).unwrap_err()
    ));

    drop(stream);
    let (status, log) = sidecar.terminate().await;
    assert!(status.success(), "{status}");
    sim.stop().await;
    let secrets = [SECRET, SECRET2];
    assert_clean("the log", &log, &secrets);
    assert!(log.len() > 10_000, "the log is suspiciously short");
    assert!(
        log.contains("DOKU SECRET KEY FILE UNREADABLE"),
        "the unreadable key file is logged loudly"
    );
    for (what, text) in &outputs {
        assert_clean(what, text, &secrets);
    }
    assert_clean("the admin listener", &admin_text, &secrets);
    assert_clean("Debug output", &debug, &secrets);
    // The collector's requests, decoded: every span name, attribute and event.
    let exported = format!("{:?}", spans.lock().unwrap());
    assert!(
        exported.contains("POST /indomaret-online-to-offline/v2/payment-code"),
        "the DOKU calls' spans were exported"
    );
    assert_clean("the exported spans", &exported, &secrets);
    assert!(
        outputs.iter().all(|(_, t)| !t.is_empty()),
        "every error has a message"
    );
    println!(
        "secret hygiene: log_lines={} log_bytes={} grpc_errors={} admin_bytes={} debug_bytes={} \
         span_bytes={} leaks=0",
        log.lines().count(),
        log.len(),
        outputs.len(),
        admin_text.len(),
        debug.len(),
        exported.len()
    );
}
