//! The HTTP ingress for DOKU's payment notifications.
//!
//! For each `POST` on the configured notification path:
//! 1. read the raw body (at most `max_notification_bytes`, else `413`);
//! 2. verify `Signature` over those exact bytes with Request-Target = the configured public
//!    path, in constant time, with the current secret key and then with keys replaced within
//!    the rotation grace window (`o2o_notifications_verified_total{key="current|previous"}`
//!    counts which one verified); a missing header or a bad signature is `401`, nothing
//!    stored;
//! 3. parse leniently and hand it to the domain service
//!    ([`Sidecar::record_notification`]), which checks it against the stored payment, records
//!    it with its status change and event in one transaction and announces the event; a
//!    mismatch is stored for audit and answered `200` too (DOKU must not retry forever);
//! 4. answer `200` once it is durable; a store failure is `503`, so DOKU retries and nothing
//!    unstored is ever acknowledged.

use std::time::Duration;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::{
    doku::{
        notification::{self, NotificationHeaders},
        parse_doku_time,
    },
    secret::{KeyRole, SecretSource},
    sidecar::{Notification, Sidecar},
};

/// What the ingress needs.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// The domain service, which records what the ingress verified.
    pub sidecar: Sidecar,
    /// Client-Id DOKU must send.
    pub client_id: String,
    /// Secret Key to verify with (current and, within the grace window, replaced ones).
    pub key: SecretSource,
    /// Public notification path (the signed Request-Target).
    pub path: String,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Request-Timestamp skew beyond which a notification is logged and counted.
    pub skew_tolerance: Duration,
    /// Whether a skewed notification is rejected (401) instead of only logged.
    pub reject_skewed: bool,
}

/// The notification router: `POST {path}`.
pub fn router(ingress: Ingress) -> Router {
    let path = ingress.path.clone();
    let limit = ingress.max_bytes;
    Router::new()
        .route(&path, post(receive))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingress)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Headers kept for audit; the signature is shortened so the audit table never holds a
/// complete MAC.
fn audit_headers(h: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for name in [
        "client-id",
        "request-id",
        "request-timestamp",
        "content-type",
        "user-agent",
        "x-forwarded-for",
    ] {
        if let Some(v) = header(h, name) {
            map.insert(name.to_owned(), v.into());
        }
    }
    if let Some(sig) = header(h, "signature") {
        let short: String = sig.chars().take(16).collect();
        map.insert("signature".into(), format!("{short}…").into());
    }
    serde_json::Value::Object(map).to_string()
}

async fn receive(State(ingress): State<Ingress>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = NotificationHeaders {
        client_id: header(&headers, "client-id"),
        request_id: header(&headers, "request-id"),
        request_timestamp: header(&headers, "request-timestamp"),
        signature: header(&headers, "signature"),
    };
    // The current key first, then keys replaced within the grace window (DOKU may sign a
    // late delivery or a retry with the key it had before the rotation).
    let keys = ingress.key.verification_keys();
    let key_bytes: Vec<&[u8]> = keys
        .iter()
        .map(|(_, k)| k.expose_secret().as_bytes())
        .collect();
    let verified = notification::verify(&h, &body, &ingress.client_id, &key_bytes, &ingress.path);
    if let Ok(i) = verified {
        let role = keys.get(i).map_or(KeyRole::Current, |(role, _)| *role);
        metrics::counter!("o2o_notifications_verified_total", "key" => role.as_str()).increment(1);
        if role == KeyRole::Previous {
            tracing::info!(
                request_id = h.request_id.unwrap_or(""),
                "DOKU notification verified with the previous secret key (rotation grace window)"
            );
        }
    }
    if let Err(rejection) = verified {
        metrics::counter!("o2o_notifications_total", "verdict" => "bad_signature").increment(1);
        tracing::warn!(
            reason = ?rejection,
            request_id = h.request_id.unwrap_or(""),
            bytes = body.len(),
            "DOKU notification rejected: not verified"
        );
        return StatusCode::UNAUTHORIZED;
    }
    if let Some(ts) = h.request_timestamp.and_then(parse_doku_time) {
        let skew = (OffsetDateTime::now_utc() - ts).abs();
        if skew > time::Duration::try_from(ingress.skew_tolerance).unwrap_or(time::Duration::MAX) {
            metrics::counter!("o2o_notification_timestamp_skewed_total").increment(1);
            tracing::warn!(
                skew_seconds = skew.whole_seconds(),
                rejected = ingress.reject_skewed,
                request_id = h.request_id.unwrap_or(""),
                "notification Request-Timestamp is far from our clock"
            );
            if ingress.reject_skewed {
                metrics::counter!("o2o_notifications_total", "verdict" => "skewed").increment(1);
                return StatusCode::UNAUTHORIZED;
            }
        }
    }
    // verify() checked that these headers are present.
    let request_id = h.request_id.unwrap_or_default().to_owned();
    let span = tracing::info_span!("notification", %request_id);
    let notification = Notification {
        request_id,
        received_at: OffsetDateTime::now_utc(),
        audit_headers: audit_headers(&headers),
        report: notification::parse(&body),
        body: body.to_vec(),
    };
    match ingress
        .sidecar
        .record_notification(notification)
        .instrument(span)
        .await
    {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
