//! DOKU's request authentication as the simulator enforces it (`Client-Id`, `Request-Id`,
//! `Request-Timestamp`, `Signature`, each refused with `401` and a DOKU-style code) and the
//! signing of DOKU's responses and notifications, all through `crate::doku::signature`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use time::OffsetDateTime;

use crate::{
    doku::signature::{self, Components, TimestampKind},
    sim::{SimConfig, wire},
};

/// Longest `Request-Id` DOKU accepts.
pub(crate) const REQUEST_ID_MAX: usize = 128;

/// A refusal: HTTP status, DOKU-style error code and a message safe to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

/// The single value of header `name`: absent, repeated or non-UTF-8 values are `Err`.
pub(crate) fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Err(format!("{name} header is required"));
    };
    if values.next().is_some() {
        return Err(format!("{name} header must appear once"));
    }
    v.to_str()
        .map_err(|_| format!("{name} header is not visible ASCII"))
}

/// Checks the four DOKU headers of a request to `target` (the path as sent) and returns its
/// `Request-Id`. `body` is `Some` for `POST` (signed with a Digest) and `None` for `GET`.
pub(crate) fn authenticate(
    cfg: &SimConfig,
    headers: &HeaderMap,
    target: &str,
    body: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<String, Rejection> {
    let client_id = single_header(headers, "client-id")
        .map_err(|m| Rejection::unauthorized("invalid_client_id", m))?;
    if client_id != cfg.client_id {
        return Err(Rejection::unauthorized(
            "invalid_client_id",
            "Invalid Client-Id",
        ));
    }

    let request_id = single_header(headers, "request-id")
        .map_err(|m| Rejection::unauthorized("invalid_request_id", m))?;
    if request_id.is_empty() || request_id.len() > REQUEST_ID_MAX {
        return Err(Rejection::unauthorized(
            "invalid_request_id",
            format!("Request-Id must be 1 to {REQUEST_ID_MAX} characters"),
        ));
    }

    let timestamp = single_header(headers, "request-timestamp")
        .map_err(|m| Rejection::unauthorized("invalid_timestamp", m))?;
    let Some(ts) = wire::parse_request_timestamp(timestamp) else {
        return Err(Rejection::unauthorized(
            "invalid_timestamp",
            "Request-Timestamp must be YYYY-MM-DDTHH:MM:SSZ (UTC, no fraction)",
        ));
    };
    let skew: Duration = (now - ts).unsigned_abs();
    if skew > cfg.timestamp_tolerance {
        return Err(Rejection::unauthorized(
            "invalid_timestamp",
            format!(
                "Request-Timestamp is {}s away from DOKU's clock (tolerance {}s)",
                skew.as_secs(),
                cfg.timestamp_tolerance.as_secs()
            ),
        ));
    }

    let sig = single_header(headers, "signature")
        .map_err(|m| Rejection::unauthorized("invalid_signature", m))?;
    let digest = body.map(signature::digest);
    let sts = signature::string_to_sign(&Components {
        client_id,
        request_id,
        timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: target,
        digest: digest.as_deref(),
    });
    if !signature::verify(cfg.secret_key.as_bytes(), &sts, sig) {
        return Err(Rejection::unauthorized(
            "invalid_signature",
            "Invalid Header Signature",
        ));
    }
    Ok(request_id.to_owned())
}

/// DOKU's response headers for an accepted request: `Client-Id`, `Request-Id`,
/// `Response-Timestamp` and `Signature` (Digest of the response body for `POST`).
pub(crate) fn response_headers(
    cfg: &SimConfig,
    request_id: &str,
    target: &str,
    body: Option<&[u8]>,
    now: OffsetDateTime,
) -> Vec<(HeaderName, HeaderValue)> {
    let timestamp = wire::iso_utc(now);
    let digest = body.map(signature::digest);
    let sts = signature::string_to_sign(&Components {
        client_id: &cfg.client_id,
        request_id,
        timestamp: &timestamp,
        timestamp_kind: TimestampKind::Response,
        request_target: target,
        digest: digest.as_deref(),
    });
    let sig = signature::sign(cfg.secret_key.as_bytes(), &sts);
    [
        ("client-id", cfg.client_id.as_str()),
        ("request-id", request_id),
        ("response-timestamp", timestamp.as_str()),
        ("signature", sig.as_str()),
    ]
    .into_iter()
    .filter_map(|(n, v)| Some((HeaderName::from_static(n), HeaderValue::from_str(v).ok()?)))
    .collect()
}

/// `Request-Timestamp` and `Signature` of a notification to `target` (the path of the
/// receiving URL). `corrupt` yields a well-formed signature that does not verify.
pub(crate) fn sign_notification(
    cfg: &SimConfig,
    request_id: &str,
    target: &str,
    body: &[u8],
    now: OffsetDateTime,
    corrupt: bool,
) -> (String, String) {
    let timestamp = wire::iso_utc(now);
    let digest = signature::digest(body);
    let mut sts = signature::string_to_sign(&Components {
        client_id: &cfg.client_id,
        request_id,
        timestamp: &timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: target,
        digest: Some(&digest),
    });
    if corrupt {
        sts.push_str("\ncorrupted");
    }
    let sig = signature::sign(cfg.secret_key.as_bytes(), &sts);
    (timestamp, sig)
}
