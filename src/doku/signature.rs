//! DOKU's non-SNAP request signature, as pure functions over bytes.
//!
//! The string to sign is the components below, one `Name:value` per line, joined with `\n` and
//! with no trailing newline; the signature is `HMACSHA256=` + base64(HMAC-SHA256(secret key
//! bytes, string to sign)). `Digest` is base64(SHA-256(exact body bytes)) and is present only
//! when there is a body (POST); `GET` requests drop the line. Requests and DOKU's notifications
//! use `Request-Timestamp`; DOKU's responses use `Response-Timestamp` in the same position.
//!
//! The vectors in the tests are the ones in the project's DOKU reference (V1–V6); they pin the
//! algorithm to the byte.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Prefix DOKU puts before the base64 MAC in the `Signature` header.
pub const SIGNATURE_PREFIX: &str = "HMACSHA256=";

/// Which timestamp header a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    /// `Request-Timestamp`: our requests, and DOKU's notifications to us.
    Request,
    /// `Response-Timestamp`: DOKU's answers to our requests.
    Response,
}

/// The values a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Components<'a> {
    /// `Client-Id` header value.
    pub client_id: &'a str,
    /// `Request-Id` header value.
    pub request_id: &'a str,
    /// `Request-Timestamp` or `Response-Timestamp` header value, as sent.
    pub timestamp: &'a str,
    /// Which of the two timestamp headers `timestamp` came from.
    pub timestamp_kind: TimestampKind,
    /// Path of the endpoint (`/indomaret-online-to-offline/v2/payment-code`), or for
    /// notifications the path of the merchant's configured notification URL.
    pub request_target: &'a str,
    /// `digest(body)` for requests with a body; `None` for `GET`.
    pub digest: Option<&'a str>,
}

/// base64(SHA-256(body)): the `Digest` component.
pub fn digest(body: &[u8]) -> String {
    B64.encode(Sha256::digest(body))
}

/// The exact string DOKU signs: five lines (four without a digest), no trailing newline.
pub fn string_to_sign(c: &Components<'_>) -> String {
    let ts_name = match c.timestamp_kind {
        TimestampKind::Request => "Request-Timestamp",
        TimestampKind::Response => "Response-Timestamp",
    };
    let mut s = format!(
        "Client-Id:{}\nRequest-Id:{}\n{ts_name}:{}\nRequest-Target:{}",
        c.client_id, c.request_id, c.timestamp, c.request_target
    );
    if let Some(d) = c.digest {
        s.push_str("\nDigest:");
        s.push_str(d);
    }
    s
}

fn mac(secret_key: &[u8], string_to_sign: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret_key)
        .expect("HMAC-SHA256 accepts any key length");
    mac.update(string_to_sign.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The `Signature` header value: `HMACSHA256=` + base64(HMAC-SHA256(key, string to sign)).
///
/// The key is the Secret Key string's UTF-8 bytes, used as is (not base64-decoded).
pub fn sign(secret_key: &[u8], string_to_sign: &str) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        B64.encode(mac(secret_key, string_to_sign))
    )
}

/// Whether `signature_header` is the right `Signature` for `string_to_sign` under `secret_key`.
///
/// The MAC bytes are compared in constant time; a header without the `HMACSHA256=` prefix or
/// with invalid base64 is simply wrong.
pub fn verify(secret_key: &[u8], string_to_sign: &str, signature_header: &str) -> bool {
    let Some(b64) = signature_header.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return false;
    };
    let Ok(given) = B64.decode(b64) else {
        return false;
    };
    let expected = mac(secret_key, string_to_sign);
    given.len() == expected.len() && bool::from(given.ct_eq(&expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"SK-TEST-0123456789abcdef";
    const CLIENT: &str = "MCH-0001-10791114622547";

    const V1_BODY: &str = r#"{"order":{"invoice_number":"INV-2021002-0001","amount":150000},"online_to_offline_info":{"expired_time":60,"reusable_status":false,"info":"Thanks for shopping"},"customer":{"name":"Taufik Ismail","email":"taufik@example.com"},"indomaret_info":{"receipt":{"description":"ORDER 001","footer_message":"Terima kasih"}}}"#;

    fn request(id: &'static str, ts: &'static str, target: &'static str) -> Components<'static> {
        Components {
            client_id: CLIENT,
            request_id: id,
            timestamp: ts,
            timestamp_kind: TimestampKind::Request,
            request_target: target,
            digest: None,
        }
    }

    #[test]
    fn digest_known_answers() {
        assert_eq!(digest(b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(
            digest(b"{}"),
            "RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="
        );
    }

    #[test]
    fn v1_post_indomaret_generate() {
        assert_eq!(V1_BODY.len(), 315);
        let d = digest(V1_BODY.as_bytes());
        assert_eq!(d, "q6K/5WwCFP0/SfXZGfFDuPdLx5bwXIMoldWIRTlSsBY=");
        let c = Components {
            digest: Some(&d),
            ..request(
                "5b8e438f-fac1-4103-9e0e-ebfdc38b5acb",
                "2020-08-11T08:45:42Z",
                "/indomaret-online-to-offline/v2/payment-code",
            )
        };
        let sts = string_to_sign(&c);
        assert_eq!(
            sts,
            "Client-Id:MCH-0001-10791114622547\n\
             Request-Id:5b8e438f-fac1-4103-9e0e-ebfdc38b5acb\n\
             Request-Timestamp:2020-08-11T08:45:42Z\n\
             Request-Target:/indomaret-online-to-offline/v2/payment-code\n\
             Digest:q6K/5WwCFP0/SfXZGfFDuPdLx5bwXIMoldWIRTlSsBY="
        );
        let sig = sign(KEY, &sts);
        assert_eq!(
            sig,
            "HMACSHA256=ctyeJ/roO15esvxAIm2CCCCicGZZN+5/oiKWbePybpE="
        );
        assert!(verify(KEY, &sts, &sig));
    }

    #[test]
    fn v2_get_check_status_has_no_digest_line() {
        let c = request(
            "d895fb53-479c-4f77-a76a-ab81b40d77cb",
            "2020-08-11T08:45:42Z",
            "/orders/v1/status/INV-123123-12313",
        );
        let sts = string_to_sign(&c);
        assert_eq!(
            sts,
            "Client-Id:MCH-0001-10791114622547\n\
             Request-Id:d895fb53-479c-4f77-a76a-ab81b40d77cb\n\
             Request-Timestamp:2020-08-11T08:45:42Z\n\
             Request-Target:/orders/v1/status/INV-123123-12313"
        );
        assert_eq!(
            sign(KEY, &sts),
            "HMACSHA256=po9vane9Ameix3qVbteTzMXvPIn/SKDJLBvBv0pDEo4="
        );
    }

    #[test]
    fn v3_incoming_notification() {
        let body = r#"{"service":{"id":"ONLINE_TO_OFFLINE"},"acquirer":{"id":"ALFA"},"channel":{"id":"ONLINE_TO_OFFLINE_ALFA"},"transaction":{"status":"SUCCESS","date":"2021-08-12T07:06:28Z","original_request_id":"5b8e438f-fac1-4103-9e0e-ebfdc38b5acb"},"order":{"invoice_number":"INV-20210125-0001","amount":150000},"online_to_offline_info":{"payment_code":"73"}}"#;
        let d = digest(body.as_bytes());
        assert_eq!(d, "C+fvlBUSOSjLS4KrolEp8RrnZMN8RCSKz41kuxrP3NM=");
        let c = Components {
            digest: Some(&d),
            ..request(
                "479b663f-5c9d-400d-8e80-3e548a8f7639",
                "2021-08-12T07:06:29Z",
                "/payments/notifications",
            )
        };
        let sts = string_to_sign(&c);
        let expected = "HMACSHA256=NsLBcWkSAZfNwUbu2PIwC2jeI7bUrK6kNNpQ3H9yfB0=";
        assert_eq!(sign(KEY, &sts), expected);
        assert!(verify(KEY, &sts, expected));
        // One byte changed anywhere breaks it: body, key, target.
        let mut tampered = body.as_bytes().to_vec();
        tampered[100] ^= 1;
        let d2 = digest(&tampered);
        let sts2 = string_to_sign(&Components {
            digest: Some(&d2),
            ..c
        });
        assert!(!verify(KEY, &sts2, expected));
        assert!(!verify(b"SK-TEST-0123456789abcdeF", &sts, expected));
        let sts3 = string_to_sign(&Components {
            request_target: "/payments/notification",
            ..c
        });
        assert!(!verify(KEY, &sts3, expected));
    }

    #[test]
    fn v4_docs_published_string_with_test_key() {
        let sts = "Client-Id:MCH-0001-10791114622547\n\
                   Request-Id:cc682442-6c22-493e-8121-b9ef6b3fa728\n\
                   Request-Timestamp:2020-08-11T08:45:42Z\n\
                   Request-Target:/doku-virtual-account/v2/payment-code\n\
                   Digest:5WIYK2TJg6iiZ0d5v4IXSR0EkYEkYOezJIma3Ufli5s=";
        let c = Components {
            digest: Some("5WIYK2TJg6iiZ0d5v4IXSR0EkYEkYOezJIma3Ufli5s="),
            ..request(
                "cc682442-6c22-493e-8121-b9ef6b3fa728",
                "2020-08-11T08:45:42Z",
                "/doku-virtual-account/v2/payment-code",
            )
        };
        assert_eq!(string_to_sign(&c), sts);
        assert_eq!(
            sign(KEY, sts),
            "HMACSHA256=jC+sFURUlJ29U9a2OocWaqIwsMme+F31MMi2I7OnYkg="
        );
    }

    #[test]
    fn v5_alfa_sample_digest() {
        let body = r#"{"order":{"invoice_number":"INV-20210124-0001","amount":150000},"online_to_offline_info":{"expired_time":60,"reusable_status":false,"info":"Merchant Demo Store"},"customer":{"name":"Anton Budiman","email":"anton@example.com"}}"#;
        assert_eq!(
            digest(body.as_bytes()),
            "0eKB1s5YdzXZ5HPEr5idNl9GC8CCW4w4Kwu1PXVOZdE="
        );
    }

    #[test]
    fn v6_response_signature() {
        let d = digest(V1_BODY.as_bytes());
        let c = Components {
            timestamp_kind: TimestampKind::Response,
            digest: Some(&d),
            ..request(
                "5b8e438f-fac1-4103-9e0e-ebfdc38b5acb",
                "2020-08-11T08:45:43Z",
                "/indomaret-online-to-offline/v2/payment-code",
            )
        };
        let sts = string_to_sign(&c);
        assert!(sts.contains("\nResponse-Timestamp:2020-08-11T08:45:43Z\n"));
        assert_eq!(
            sign(KEY, &sts),
            "HMACSHA256=lwkO4gMZl5ayBOXT9AHj4Cb+uiRP4Jk1s1IKD4J0vhw="
        );
    }

    #[test]
    fn verify_rejects_malformed_headers() {
        let sts = "x";
        let good = sign(KEY, sts);
        assert!(verify(KEY, sts, &good));
        assert!(!verify(KEY, sts, ""));
        assert!(!verify(KEY, sts, good.trim_start_matches(SIGNATURE_PREFIX)));
        assert!(!verify(KEY, sts, "HMACSHA256=not base64!"));
        assert!(!verify(KEY, sts, "HMACSHA256=AAAA"));
        assert!(!verify(KEY, sts, &good.replace("HMACSHA256", "HMACSHA512")));
    }
}
