//! DOKU's how-to-pay API: the JSON that a Generate answer's
//! `online_to_offline_info.how_to_pay_api` links to, turned into
//! [`PaymentInstruction`]s, so that callers can show a customer how to pay without calling
//! DOKU or opening a browser.
//!
//! The URL comes from an answer, so it is fetched only when its origin is one the operator
//! allows (`--how-to-pay-hosts`; DOKU's own hosts by default): a bare host name allows
//! `https://host` on the default port, an entry with a scheme allows exactly that origin
//! (`http://127.0.0.1:8181`, how `dev` allows its simulator). Nothing else is fetched, and
//! a redirect is followed only to an allowed origin. One GET, unsigned (DOKU's own plugins
//! fetch it so), bounded by one timeout from connect to the end of the body
//! (`--how-to-pay-timeout`), never retried; a body over [`BODY_MAX`] is refused.
//!
//! A failure never fails the payment: [`HowToPay::instructions`] logs it, counts it in
//! `o2o_how_to_pay_fetches_total{outcome}` and returns no instructions.
//!
//! # The JSON
//!
//! DOKU's official WooCommerce and Magento plugins read the top-level `payment_instruction`
//! array and, of each element, `channel` and `step` (an array of strings); a third-party app's
//! model of the VA answer adds `language` (see `docs/design-notes.md`). Everything else in the
//! answer (`order`, `customer`, the channel's info) is ignored, as are unknown fields and
//! `null`s. Strict about size: at most [`INSTRUCTIONS_MAX`] instructions of at most
//! [`STEPS_MAX`] steps of at most [`STEP_CHARS_MAX`] characters; an answer beyond a cap is
//! refused whole rather than cut, so that a customer never sees half a procedure.

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tracing::{Instrument as _, field};

use super::error::ConfigError;
use crate::payment::PaymentInstruction;

/// DOKU's hosts allowed by default: its API (production and sandbox, where `how_to_pay_api`
/// links point), the sandbox's how-to-pay pages, and the production API host DOKU's own
/// Magento plugin uses.
pub const DEFAULT_HOSTS: [&str; 4] = [
    "api.doku.com",
    "api-sandbox.doku.com",
    "sandbox.doku.com",
    "api-jokul.doku.com",
];
/// Bound on one fetch, from connect to the end of the body: the caller of
/// GeneratePaymentCode waits for it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read; DOKU's are a few KiB.
pub const BODY_MAX: usize = 64 * 1024;
/// Most instructions kept from one answer.
pub const INSTRUCTIONS_MAX: usize = 16;
/// Most steps in one instruction.
pub const STEPS_MAX: usize = 32;
/// Longest step, in characters.
pub const STEP_CHARS_MAX: usize = 500;
/// Longest `channel` or `language`, in characters.
pub const NAME_CHARS_MAX: usize = 64;
/// Most redirects followed (each to an allowed origin).
const REDIRECTS_MAX: usize = 3;

/// An origin the sidecar may fetch how-to-pay JSON from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl AllowedOrigin {
    /// `host` (meaning `https://host`), or `https://host[:port]` / `http://host:port`; no
    /// path, user info, query or fragment.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        let text = if entry.contains("://") {
            entry.to_owned()
        } else {
            format!("https://{entry}")
        };
        let url = Url::parse(&text).map_err(|e| format!("{entry:?}: {e}"))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !matches!(url.scheme(), "http" | "https")
            || host.is_empty()
            || !url.username().is_empty()
            || url.password().is_some()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || text.trim_end_matches('/').ends_with(':')
        {
            return Err(format!(
                "{entry:?} must be a host name, or http(s)://host[:port] without a path"
            ));
        }
        Ok(Self {
            scheme: url.scheme().to_owned(),
            port: url.port_or_known_default().unwrap_or(443),
            host,
        })
    }

    /// The origin of a URL (its path is ignored), e.g. the simulator's base URL in `dev`.
    pub fn of_url(url: &str) -> Result<Self, String> {
        let parsed = Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        Self::parse(&parsed.origin().ascii_serialization())
    }

    /// Whether `url` is on this origin.
    pub fn allows(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && url.port_or_known_default() == Some(self.port)
            && url.username().is_empty()
            && url.password().is_none()
    }
}

impl std::fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Where how-to-pay JSON may come from and how long fetching it may take.
#[derive(Debug, Clone)]
pub struct HowToPayConfig {
    /// Origins a `how_to_pay_api` URL may point at to be fetched; empty: never fetch.
    pub allowed: Vec<AllowedOrigin>,
    /// Bound on one fetch, connect to the end of the body.
    pub timeout: Duration,
}

impl Default for HowToPayConfig {
    fn default() -> Self {
        Self {
            allowed: DEFAULT_HOSTS
                .iter()
                .map(|h| AllowedOrigin::parse(h).expect("a default host parses"))
                .collect(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why no instructions came back; [`Failure::outcome`] is the metric's label.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    NotAllowed,
    Status(StatusCode),
    Timeout,
    Transport(String),
    TooLarge,
    Unreadable(String),
}

impl Failure {
    fn outcome(&self) -> &'static str {
        match self {
            Self::NotAllowed => "not_allowed",
            Self::Status(_) => "http_error",
            Self::Timeout => "timeout",
            Self::Transport(_) => "error",
            Self::TooLarge => "too_large",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAllowed => f.write_str("origin not allowed (--how-to-pay-hosts)"),
            Self::Status(s) => write!(f, "HTTP {}", s.as_u16()),
            Self::Timeout => f.write_str("timed out"),
            Self::Transport(e) | Self::Unreadable(e) => f.write_str(e),
            Self::TooLarge => write!(f, "answer larger than {BODY_MAX} bytes"),
        }
    }
}

/// The fetcher of how-to-pay JSON (one per DOKU client).
#[derive(Debug)]
pub(crate) struct HowToPay {
    http: reqwest::Client,
    allowed: Arc<[AllowedOrigin]>,
}

impl HowToPay {
    pub(crate) fn new(cfg: &HowToPayConfig) -> Result<Self, ConfigError> {
        let allowed: Arc<[AllowedOrigin]> = cfg.allowed.clone().into();
        let redirect_allowed = allowed.clone();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > REDIRECTS_MAX {
                    attempt.error("too many redirects")
                } else if redirect_allowed.iter().any(|o| o.allows(attempt.url())) {
                    attempt.follow()
                } else {
                    attempt.error("redirect to an origin that is not allowed")
                }
            }))
            .user_agent(concat!("o2o-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError(format!("HTTP client for how-to-pay: {e}")))?;
        Ok(Self { http, allowed })
    }

    /// The instructions at `url`, or none (logged and counted) when it is not allowed or the
    /// fetch fails.
    pub(crate) async fn instructions(&self, url: &str) -> Vec<PaymentInstruction> {
        // Parsed once, here: the span, the log and the fetch use it.
        let parsed = Url::parse(url).ok();
        // Only the origin is logged: the link's path carries the code and its token.
        let origin = parsed.as_ref().map_or_else(
            || "(not a URL)".to_owned(),
            |u| u.origin().ascii_serialization(),
        );
        // Integers as i64: tracing-opentelemetry records a u64 as a string.
        let span = tracing::info_span!(
            "doku.how_to_pay",
            otel.name = "GET how_to_pay_api",
            otel.kind = "client",
            http.request.method = "GET",
            server.address = parsed.as_ref().and_then(Url::host_str).unwrap_or_default(),
            server.port = parsed
                .as_ref()
                .and_then(Url::port_or_known_default)
                .map_or(0, i64::from),
            outcome = field::Empty,
        );
        let result = match parsed {
            Some(parsed) => self.fetch_url(parsed).instrument(span.clone()).await,
            None => Err(Failure::NotAllowed),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(f) => f.outcome(),
        };
        span.record("outcome", outcome);
        metrics::counter!("o2o_how_to_pay_fetches_total", "outcome" => outcome).increment(1);
        let _entered = span.enter();
        match result {
            Ok(found) => {
                tracing::debug!(
                    instructions = found.len(),
                    "how-to-pay instructions fetched"
                );
                found
            }
            Err(Failure::NotAllowed) => {
                tracing::warn!(
                    %origin,
                    "how_to_pay_api points at an origin not in --how-to-pay-hosts: not fetched; the payment has no instructions"
                );
                Vec::new()
            }
            Err(why) => {
                tracing::warn!(
                    %origin,
                    outcome,
                    %why,
                    "how-to-pay instructions could not be fetched; the payment has none"
                );
                Vec::new()
            }
        }
    }

    /// [`Self::fetch_url`] of a URL given as text (the tests' entry).
    #[cfg(test)]
    async fn fetch(&self, url: &str) -> Result<Vec<PaymentInstruction>, Failure> {
        let parsed = Url::parse(url).map_err(|_| Failure::NotAllowed)?;
        self.fetch_url(parsed).await
    }

    async fn fetch_url(&self, parsed: Url) -> Result<Vec<PaymentInstruction>, Failure> {
        if !self.allowed.iter().any(|o| o.allows(&parsed)) {
            return Err(Failure::NotAllowed);
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Failure::Timeout
            } else {
                // Without the URL: its path carries the code and its token.
                Failure::Transport(super::client::error_chain(&e.without_url()))
            }
        };
        let mut resp = self
            .http
            .get(parsed)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(Failure::Status(resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > BODY_MAX as u64) {
            return Err(Failure::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > BODY_MAX {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body).map_err(Failure::Unreadable)
    }
}

/// DOKU's how-to-pay answer: only `payment_instruction` is read.
#[derive(Debug, Deserialize)]
struct DokuHowToPay {
    #[serde(default)]
    payment_instruction: Option<Vec<Option<DokuPaymentInstruction>>>,
}

/// One element of `payment_instruction`.
#[derive(Debug, Deserialize)]
struct DokuPaymentInstruction {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    step: Option<Vec<Option<String>>>,
}

/// The instructions in a how-to-pay answer (see the module doc for what is read and the
/// caps). Text is trimmed and control characters become spaces; empty steps, and
/// instructions without steps, are dropped.
pub fn parse(body: &[u8]) -> Result<Vec<PaymentInstruction>, String> {
    if body.len() > BODY_MAX {
        return Err(format!("answer larger than {BODY_MAX} bytes"));
    }
    let answer: DokuHowToPay =
        serde_json::from_slice(body).map_err(|e| format!("not how-to-pay JSON: {e}"))?;
    let list = answer
        .payment_instruction
        .ok_or("payment_instruction is missing")?;
    at_most(list.len(), INSTRUCTIONS_MAX, "payment_instruction")?;
    let mut found = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        let Some(item) = item else { continue };
        let steps = item.step.unwrap_or_default();
        at_most(
            steps.len(),
            STEPS_MAX,
            &format!("payment_instruction[{i}].step"),
        )?;
        let mut kept = Vec::new();
        for (j, step) in steps.into_iter().enumerate() {
            let step = text(step.as_deref(), STEP_CHARS_MAX)
                .map_err(|e| format!("payment_instruction[{i}].step[{j}] {e}"))?;
            if !step.is_empty() {
                kept.push(step);
            }
        }
        if kept.is_empty() {
            continue;
        }
        found.push(PaymentInstruction {
            channel: text(item.channel.as_deref(), NAME_CHARS_MAX)
                .map_err(|e| format!("payment_instruction[{i}].channel {e}"))?,
            language: text(item.language.as_deref(), NAME_CHARS_MAX)
                .map_err(|e| format!("payment_instruction[{i}].language {e}"))?,
            steps: kept,
        });
    }
    Ok(found)
}

/// An error when the array `what` has more than `max` elements.
fn at_most(len: usize, max: usize, what: &str) -> Result<(), String> {
    if len > max {
        return Err(format!("{what} has {len} elements, more than {max}"));
    }
    Ok(())
}

/// `value` trimmed, control characters as spaces; an error past `max` characters.
fn text(value: Option<&str>, max: usize) -> Result<String, String> {
    let cleaned: String = value
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    let chars = cleaned.chars().count();
    if chars > max {
        return Err(format!("has {chars} characters, more than {max}"));
    }
    Ok(cleaned.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn reads_doku_s_shape_and_ignores_the_rest() {
        // The shape DOKU's plugins read, inside an answer with more parts than they use.
        let found = parse(&body(json!({
            "client": {"id": "MCH-1"},
            "order": {"invoice_number": "INV-1", "amount": 10000},
            "online_to_offline_info": {"payment_code": "773100123456789"},
            "payment_instruction": [
                {"channel": "INDOMARET", "language": "id", "step": ["Datang ke Indomaret.", "Bayar."], "icon": "x"},
                {"channel": "INDOMARET", "language": "en", "step": ["Go to Indomaret.", "Pay."]}
            ],
            "unknown": [1, 2, 3]
        })))
        .unwrap();
        assert_eq!(
            found,
            vec![
                PaymentInstruction {
                    channel: "INDOMARET".into(),
                    language: "id".into(),
                    steps: vec!["Datang ke Indomaret.".into(), "Bayar.".into()],
                },
                PaymentInstruction {
                    channel: "INDOMARET".into(),
                    language: "en".into(),
                    steps: vec!["Go to Indomaret.".into(), "Pay.".into()],
                },
            ]
        );
    }

    #[test]
    fn tolerates_nulls_and_missing_parts_and_cleans_text() {
        let found = parse(&body(json!({
            "payment_instruction": [
                null,
                {"channel": null, "step": ["  Step one\n continues\t", "", null, "   "]},
                {"channel": "NO STEPS", "language": "en"},
                {"channel": "EMPTY", "step": []}
            ]
        })))
        .unwrap();
        assert_eq!(
            found,
            vec![PaymentInstruction {
                channel: String::new(),
                language: String::new(),
                steps: vec!["Step one  continues".into()],
            }]
        );
        assert_eq!(
            parse(&body(json!({"payment_instruction": []}))).unwrap(),
            vec![]
        );
    }

    #[test]
    fn refuses_what_is_not_how_to_pay_json() {
        for bad in [
            &b"<html>maintenance</html>"[..],
            b"",
            b"[]",
            br#"{"payment_instruction": "go to the store"}"#,
            br#"{"payment_instruction": [{"step": "one string"}]}"#,
            br#"{"payment_instruction": [{"step": [1, 2]}]}"#,
            br#"{"order": {"invoice_number": "INV-1"}}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn refuses_an_answer_beyond_the_caps_whole() {
        let step = |n: usize| "x".repeat(n);
        let one = |steps: Vec<String>| json!({"channel": "C", "language": "en", "step": steps});
        // At each cap: fine.
        let at_caps =
            json!({"payment_instruction": vec![one(vec![step(STEP_CHARS_MAX); STEPS_MAX]); 3]});
        assert_eq!(parse(&body(at_caps)).unwrap().len(), 3);
        let many = json!({"payment_instruction": vec![one(vec![step(1)]); INSTRUCTIONS_MAX]});
        assert_eq!(parse(&body(many)).unwrap().len(), INSTRUCTIONS_MAX);
        // One past each cap: refused, not cut.
        for bad in [
            json!({"payment_instruction": vec![one(vec![step(1)]); INSTRUCTIONS_MAX + 1]}),
            json!({"payment_instruction": [one(vec![step(1); STEPS_MAX + 1])]}),
            json!({"payment_instruction": [one(vec![step(STEP_CHARS_MAX + 1)])]}),
            json!({"payment_instruction": [{"channel": step(NAME_CHARS_MAX + 1), "step": ["a"]}]}),
            json!({"payment_instruction": [{"language": step(NAME_CHARS_MAX + 1), "step": ["a"]}]}),
        ] {
            assert!(parse(&body(bad)).is_err());
        }
        // Characters, not bytes: the longest step of two-byte characters passes.
        let wide = json!({"payment_instruction": [one(vec!["é".repeat(STEP_CHARS_MAX)])]});
        assert!(parse(&body(wide)).is_ok());
        // The body itself.
        let padded = format!(
            r#"{{"payment_instruction": [], "pad": "{}"}}"#,
            "x".repeat(BODY_MAX)
        );
        assert!(parse(padded.as_bytes()).is_err());
    }

    #[test]
    fn allowed_origins() {
        let url = |s: &str| Url::parse(s).unwrap();
        let doku = AllowedOrigin::parse("API-Sandbox.doku.com").unwrap();
        assert_eq!(doku.to_string(), "https://api-sandbox.doku.com:443");
        assert!(doku.allows(&url(
            "https://api-sandbox.doku.com/indomaret-online-to-offline/v2/how-to-pay-api/1/t"
        )));
        assert!(doku.allows(&url("https://api-sandbox.doku.com:443/x")));
        for other in [
            "http://api-sandbox.doku.com/x",
            "https://api-sandbox.doku.com:8443/x",
            "https://api-sandbox.doku.com.evil.example/x",
            "https://evil.example/api-sandbox.doku.com",
            "https://user@api-sandbox.doku.com/x",
            "https://doku.com/x",
        ] {
            assert!(!doku.allows(&url(other)), "{other}");
        }
        let sim = AllowedOrigin::parse("http://127.0.0.1:8181").unwrap();
        assert!(sim.allows(&url("http://127.0.0.1:8181/x/y")));
        assert!(!sim.allows(&url("http://127.0.0.1:8182/x")));
        assert!(!sim.allows(&url("https://127.0.0.1:8181/x")));
        assert_eq!(
            AllowedOrigin::parse("https://api.doku.com/").unwrap(),
            AllowedOrigin::parse("api.doku.com").unwrap()
        );
        for bad in [
            "",
            "ftp://api.doku.com",
            "https://api.doku.com/path",
            "https://u:p@api.doku.com",
            "https://api.doku.com?q",
            "api.doku.com:",
            "http://",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            AllowedOrigin::of_url("http://127.0.0.1:8181/prefix/").unwrap(),
            sim
        );
        let defaults = HowToPayConfig::default();
        assert_eq!(defaults.allowed.len(), DEFAULT_HOSTS.len());
        assert!(
            defaults
                .allowed
                .iter()
                .all(|o| o.to_string().starts_with("https://"))
        );
    }
}

#[cfg(test)]
mod fetch_tests {
    use std::time::Duration;

    use serde_json::json;
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{method, path},
    };

    use super::*;

    const ANSWER: &str = r#"{"payment_instruction":[{"channel":"INDOMARET","language":"en","step":["Go.","Pay."]}]}"#;

    fn fetcher(allowed: &[&MockServer], timeout_ms: u64) -> HowToPay {
        crate::install_tls_provider();
        HowToPay::new(&HowToPayConfig {
            allowed: allowed
                .iter()
                .map(|s| AllowedOrigin::of_url(&s.uri()).unwrap())
                .collect(),
            timeout: Duration::from_millis(timeout_ms),
        })
        .unwrap()
    }

    async fn serve(server: &MockServer, at: &str, answer: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(at))
            .respond_with(answer)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn fetches_from_an_allowed_origin_only() {
        let doku = MockServer::start().await;
        let elsewhere = MockServer::start().await;
        for s in [&doku, &elsewhere] {
            serve(s, "/h", ResponseTemplate::new(200).set_body_string(ANSWER)).await;
        }
        let f = fetcher(&[&doku], 2000);
        let got = f.fetch(&format!("{}/h", doku.uri())).await.unwrap();
        assert_eq!(got[0].steps, ["Go.", "Pay."]);
        assert_eq!(
            f.fetch(&format!("{}/h", elsewhere.uri())).await,
            Err(Failure::NotAllowed)
        );
        for bad in ["", "not a url", "javascript:alert(1)", "file:///etc/passwd"] {
            assert_eq!(f.fetch(bad).await, Err(Failure::NotAllowed), "{bad}");
        }
        assert!(elsewhere.received_requests().await.unwrap().is_empty());
        // Nothing allowed: nothing fetched.
        let none = HowToPay::new(&HowToPayConfig {
            allowed: Vec::new(),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(
            none.instructions(&format!("{}/h", doku.uri())).await,
            vec![]
        );
        assert_eq!(doku.received_requests().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn redirects_are_followed_to_allowed_origins_only() {
        let doku = MockServer::start().await;
        let elsewhere = MockServer::start().await;
        serve(
            &doku,
            "/moved",
            ResponseTemplate::new(200).set_body_string(ANSWER),
        )
        .await;
        serve(
            &doku,
            "/same",
            ResponseTemplate::new(302).insert_header("location", format!("{}/moved", doku.uri())),
        )
        .await;
        serve(
            &doku,
            "/away",
            ResponseTemplate::new(302).insert_header("location", format!("{}/h", elsewhere.uri())),
        )
        .await;
        serve(
            &elsewhere,
            "/h",
            ResponseTemplate::new(200).set_body_string(ANSWER),
        )
        .await;
        let f = fetcher(&[&doku], 2000);
        assert_eq!(
            f.fetch(&format!("{}/same", doku.uri()))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            f.fetch(&format!("{}/away", doku.uri())).await,
            Err(Failure::Transport(_))
        ));
        assert!(elsewhere.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn each_failure_is_counted_by_its_outcome_and_gives_no_instructions() {
        let doku = MockServer::start().await;
        let ok = || ResponseTemplate::new(200);
        let padded = json!({"payment_instruction": [], "pad": "x".repeat(BODY_MAX)});
        let cases = [
            (
                "/500",
                ResponseTemplate::new(500).set_body_string(ANSWER),
                "http_error",
            ),
            ("/404", ResponseTemplate::new(404), "http_error"),
            (
                "/slow",
                ok().set_body_string(ANSWER)
                    .set_delay(Duration::from_secs(5)),
                "timeout",
            ),
            (
                "/big",
                ok().set_body_string(padded.to_string()),
                "too_large",
            ),
            ("/html", ok().set_body_string("<html></html>"), "unreadable"),
        ];
        for (at, answer, _) in &cases {
            serve(&doku, at, answer.clone()).await;
        }
        let f = fetcher(&[&doku], 300);
        for (at, _, outcome) in cases {
            let url = format!("{}{at}", doku.uri());
            let got = f.fetch(&url).await;
            assert_eq!(got.as_ref().map_err(Failure::outcome), Err(outcome), "{at}");
            assert_eq!(f.instructions(&url).await, vec![], "{at}");
        }
    }
}
