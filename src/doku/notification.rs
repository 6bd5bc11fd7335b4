//! DOKU's HTTP payment notifications to us: verifying their signature over the raw body bytes
//! and parsing them leniently into a [`NotificationReport`].
//!
//! Verification uses the same algorithm as our requests, with the headers DOKU sent and, as
//! Request-Target, the public path of the notification URL configured in DOKU's Back Office
//! (not the path the request arrived on, which a proxy may have rewritten). Several keys can
//! be tried so that notifications signed before a key rotation still verify.
//!
//! `Request-Timestamp` is not checked for freshness: DOKU's documented retries come hours
//! after the original, and replays are made harmless by deduplicating on `Request-Id`.

use time::OffsetDateTime;

use super::{
    signature::{self, Components, TimestampKind},
    types::{DokuTransactionReport, ReportedChannel, ReportedStatus},
};

/// Longest `Request-Id` DOKU sends ("max 128 characters"). A longer one is refused before
/// anything is stored: it is the deduplication key and the audit table's primary key.
pub const REQUEST_ID_MAX_LEN: usize = 128;

/// The notification headers the signature covers, as received (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct NotificationHeaders<'a> {
    /// `Client-Id`.
    pub client_id: Option<&'a str>,
    /// `Request-Id`: DOKU's id of this notification, also the deduplication key.
    pub request_id: Option<&'a str>,
    /// `Request-Timestamp`.
    pub request_timestamp: Option<&'a str>,
    /// `Signature`.
    pub signature: Option<&'a str>,
}

/// Why a notification is refused. None of these holds a key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A header the signature needs is missing or empty.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is longer than DOKU documents it.
    #[error("header {0} is too long")]
    HeaderTooLong(&'static str),
    /// The notification is for another merchant's Client-Id.
    #[error("Client-Id does not match ours")]
    ClientIdMismatch,
    /// The signature verifies under none of our keys.
    #[error("signature does not verify")]
    BadSignature,
    /// The signed body is not a notification we can use.
    #[error("malformed notification body: {0}")]
    MalformedBody(String),
}

/// Verifies a notification over the raw `body` bytes with Request-Target = `target` (the
/// configured public notification path). Tries each key (current first, then previous ones)
/// in constant time per key; returns the index of the key that verified.
pub fn verify(
    h: &NotificationHeaders<'_>,
    body: &[u8],
    expected_client_id: &str,
    keys: &[&[u8]],
    target: &str,
) -> Result<usize, Rejection> {
    fn required<'h>(value: Option<&'h str>, name: &'static str) -> Result<&'h str, Rejection> {
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or(Rejection::MissingHeader(name))
    }
    let client_id = required(h.client_id, "Client-Id")?;
    let request_id = required(h.request_id, "Request-Id")?;
    let request_timestamp = required(h.request_timestamp, "Request-Timestamp")?;
    let signature_header = required(h.signature, "Signature")?;
    if request_id.chars().count() > REQUEST_ID_MAX_LEN {
        return Err(Rejection::HeaderTooLong("Request-Id"));
    }
    // The Client-Id is public; comparing it first only saves the MAC work.
    if client_id != expected_client_id {
        return Err(Rejection::ClientIdMismatch);
    }
    let digest = signature::digest(body);
    let sts = signature::string_to_sign(&Components {
        client_id,
        request_id,
        timestamp: request_timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: target,
        digest: Some(&digest),
    });
    keys.iter()
        .position(|key| signature::verify(key, &sts, signature_header))
        .ok_or(Rejection::BadSignature)
}

/// What a notification says about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationReport {
    /// `order.invoice_number`.
    pub invoice_number: String,
    /// `order.amount` in rupiah.
    pub amount: i64,
    /// `online_to_offline_info.payment_code`.
    pub payment_code: Option<String>,
    /// `transaction.status`, mapped without guessing.
    pub status: ReportedStatus,
    /// `transaction.date`; `None` when absent or in neither of DOKU's formats.
    pub occur_time: Option<OffsetDateTime>,
    /// `channel.id` (e.g. `ONLINE_TO_OFFLINE_ALFA`), mapped; `None` when absent.
    pub channel: Option<ReportedChannel>,
    /// `transaction.original_request_id`: the Request-Id of our generate request.
    pub original_request_id: Option<String>,
}

/// Lenient parse (unknown fields allowed). Missing order.invoice_number / order.amount /
/// transaction.status → MalformedBody.
pub fn parse(body: &[u8]) -> Result<NotificationReport, Rejection> {
    let r = DokuTransactionReport::parse(body).map_err(Rejection::MalformedBody)?;
    let missing = |field: &str| Rejection::MalformedBody(format!("{field} is missing"));
    let invoice_number = r
        .invoice_number()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("order.invoice_number"))?
        .to_owned();
    let amount = r.amount().ok_or_else(|| missing("order.amount"))?;
    let status = r.status().ok_or_else(|| missing("transaction.status"))?;
    Ok(NotificationReport {
        invoice_number,
        amount,
        payment_code: r.payment_code().map(str::to_owned),
        status: ReportedStatus::from_doku(status),
        occur_time: r.occur_time(),
        channel: r.channel(),
        original_request_id: r.original_request_id().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::payment::PaymentStatus;

    const KEY: &[u8] = b"SK-TEST-0123456789abcdef";
    const OLD_KEY: &[u8] = b"SK-TEST-previous-key";
    const CLIENT: &str = "MCH-0001-10791114622547";
    const TARGET: &str = "/payments/notifications";
    /// The V3 vector of the project's DOKU reference.
    const V3_BODY: &str = r#"{"service":{"id":"ONLINE_TO_OFFLINE"},"acquirer":{"id":"ALFA"},"channel":{"id":"ONLINE_TO_OFFLINE_ALFA"},"transaction":{"status":"SUCCESS","date":"2021-08-12T07:06:28Z","original_request_id":"5b8e438f-fac1-4103-9e0e-ebfdc38b5acb"},"order":{"invoice_number":"INV-20210125-0001","amount":150000},"online_to_offline_info":{"payment_code":"73"}}"#;
    const V3_SIGNATURE: &str = "HMACSHA256=NsLBcWkSAZfNwUbu2PIwC2jeI7bUrK6kNNpQ3H9yfB0=";

    fn v3_headers() -> NotificationHeaders<'static> {
        NotificationHeaders {
            client_id: Some(CLIENT),
            request_id: Some("479b663f-5c9d-400d-8e80-3e548a8f7639"),
            request_timestamp: Some("2021-08-12T07:06:29Z"),
            signature: Some(V3_SIGNATURE),
        }
    }

    #[test]
    fn v3_is_accepted() {
        let body = V3_BODY.as_bytes();
        assert_eq!(verify(&v3_headers(), body, CLIENT, &[KEY], TARGET), Ok(0));
        assert_eq!(
            verify(&v3_headers(), body, CLIENT, &[OLD_KEY, KEY], TARGET),
            Ok(1),
            "a previous key that still verifies is reported by its index"
        );
    }

    #[test]
    fn any_changed_byte_is_a_bad_signature() {
        let mut body = V3_BODY.as_bytes().to_vec();
        body[100] ^= 1;
        assert_eq!(
            verify(&v3_headers(), &body, CLIENT, &[KEY], TARGET),
            Err(Rejection::BadSignature)
        );
        let mut body = V3_BODY.as_bytes().to_vec();
        body.push(b'\n');
        assert_eq!(
            verify(&v3_headers(), &body, CLIENT, &[KEY], TARGET),
            Err(Rejection::BadSignature)
        );
        let h = NotificationHeaders {
            request_timestamp: Some("2021-08-12T07:06:30Z"),
            ..v3_headers()
        };
        assert_eq!(
            verify(&h, V3_BODY.as_bytes(), CLIENT, &[KEY], TARGET),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn wrong_target_or_keys_is_a_bad_signature() {
        let body = V3_BODY.as_bytes();
        for target in ["/payments/notification", "/payments/notifications/", ""] {
            assert_eq!(
                verify(&v3_headers(), body, CLIENT, &[KEY], target),
                Err(Rejection::BadSignature),
                "{target:?}"
            );
        }
        assert_eq!(
            verify(&v3_headers(), body, CLIENT, &[OLD_KEY], TARGET),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&v3_headers(), body, CLIENT, &[], TARGET),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn missing_headers_and_other_merchants() {
        let body = V3_BODY.as_bytes();
        let cases: [(NotificationHeaders<'_>, &str); 5] = [
            (
                NotificationHeaders {
                    client_id: None,
                    ..v3_headers()
                },
                "Client-Id",
            ),
            (
                NotificationHeaders {
                    request_id: Some(""),
                    ..v3_headers()
                },
                "Request-Id",
            ),
            (
                NotificationHeaders {
                    request_timestamp: None,
                    ..v3_headers()
                },
                "Request-Timestamp",
            ),
            (
                NotificationHeaders {
                    signature: None,
                    ..v3_headers()
                },
                "Signature",
            ),
            (NotificationHeaders::default(), "Client-Id"),
        ];
        for (h, name) in cases {
            assert_eq!(
                verify(&h, body, CLIENT, &[KEY], TARGET),
                Err(Rejection::MissingHeader(name))
            );
        }
        assert_eq!(
            verify(&v3_headers(), body, "MCH-0001-other", &[KEY], TARGET),
            Err(Rejection::ClientIdMismatch)
        );
    }

    #[test]
    fn a_request_id_longer_than_doku_documents_is_refused() {
        let body = V3_BODY.as_bytes();
        let sign = |request_id: &str| {
            let digest = signature::digest(body);
            let sts = signature::string_to_sign(&Components {
                client_id: CLIENT,
                request_id,
                timestamp: "2021-08-12T07:06:29Z",
                timestamp_kind: TimestampKind::Request,
                request_target: TARGET,
                digest: Some(&digest),
            });
            signature::sign(KEY, &sts)
        };
        let longest = "r".repeat(REQUEST_ID_MAX_LEN);
        let too_long = "r".repeat(REQUEST_ID_MAX_LEN + 1);
        let (ok_sig, long_sig) = (sign(&longest), sign(&too_long));
        let h = |request_id, signature| NotificationHeaders {
            request_id: Some(request_id),
            signature: Some(signature),
            ..v3_headers()
        };
        assert_eq!(
            verify(&h(&longest, &ok_sig), body, CLIENT, &[KEY], TARGET),
            Ok(0)
        );
        assert_eq!(
            verify(&h(&too_long, &long_sig), body, CLIENT, &[KEY], TARGET),
            Err(Rejection::HeaderTooLong("Request-Id")),
            "correctly signed, still refused"
        );
    }

    #[test]
    fn v3_parses() {
        let r = parse(V3_BODY.as_bytes()).unwrap();
        assert_eq!(
            r,
            NotificationReport {
                invoice_number: "INV-20210125-0001".into(),
                amount: 150_000,
                payment_code: Some("73".into()),
                status: ReportedStatus::Known(PaymentStatus::Paid),
                occur_time: Some(datetime!(2021-08-12 07:06:28 UTC)),
                channel: Some(ReportedChannel::Known(crate::payment::Channel::Alfa)),
                original_request_id: Some("5b8e438f-fac1-4103-9e0e-ebfdc38b5acb".into()),
            }
        );
    }

    #[test]
    fn parse_is_lenient_but_needs_invoice_amount_and_status() {
        let minimal = br#"{"order":{"invoice_number":"INV-1","amount":5000},"transaction":{"status":"REFUNDED"},"online_to_offline_payment":{"x":[1]}}"#;
        let r = parse(minimal).unwrap();
        assert_eq!(r.status, ReportedStatus::Unrecognized("REFUNDED".into()));
        assert_eq!(
            (r.payment_code, r.occur_time, r.channel),
            (None, None, None)
        );

        for (body, field) in [
            (
                &br#"{"order":{"amount":5000},"transaction":{"status":"SUCCESS"}}"#[..],
                "order.invoice_number",
            ),
            (
                br#"{"order":{"invoice_number":"","amount":5000},"transaction":{"status":"SUCCESS"}}"#,
                "order.invoice_number",
            ),
            (
                br#"{"order":{"invoice_number":"INV-1","amount":null},"transaction":{"status":"SUCCESS"}}"#,
                "order.amount",
            ),
            (
                br#"{"order":{"invoice_number":"INV-1","amount":5000},"transaction":{}}"#,
                "transaction.status",
            ),
        ] {
            match parse(body) {
                Err(Rejection::MalformedBody(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(b"not json"),
            Err(Rejection::MalformedBody(_))
        ));
        assert!(matches!(parse(b"[]"), Err(Rejection::MalformedBody(_))));
    }
}
