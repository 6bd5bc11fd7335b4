//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz). They live in the crate so that
//! they reach the crate-private parsers, and so that the committed seeds and every input that
//! once made a target fail run as ordinary unit tests (`cargo test --lib fuzzing`).
//!
//! Each function takes arbitrary bytes, must not panic, and asserts the properties that keep
//! money safe; a violated property panics, which the fuzzer reports as a crash:
//! - [`notification`]: a signature verifies only if it is exactly the MAC of one of our keys,
//!   a correct one always verifies and any changed body byte breaks it; a verified
//!   notification is accepted for a stored payment only with the stored invoice, amount and
//!   (when both are known) payment code.
//! - [`doku_response`]: DOKU's answers parse without panicking, an issued code is a valid
//!   code, dates come out in UTC and survive a round trip, error messages stay bounded.
//! - [`proto`]: any protobuf request either fails validation or yields a DOKU request that the
//!   strict simulator accepts for the same invoice and amount, and whose `order` the client
//!   reads back; a valid invoice travels in the Check Status path without encoding; resume
//!   tokens round-trip.

use prost::Message as _;
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

use crate::{
    doku::{
        notification::{self, NotificationHeaders},
        parse_doku_time,
        signature::{self, Components, TimestampKind},
        types::{
            DokuPaymentCodeRequest, DokuPaymentCodeResponse, DokuTransactionReport,
            DokuTransactionStatus, ReportedStatus, error_message,
        },
    },
    grpc::{
        convert, pb,
        stream::{parse_resume_token, resume_token},
    },
    payment::{Amount, InvoiceNumber, Payment, PaymentCode},
    sidecar::notification::verdict,
    store::Verdict,
};

const KEY: &[u8] = b"SK-FUZZ-current-key";
const OLD_KEY: &[u8] = b"SK-FUZZ-previous-key";
const CLIENT: &str = "MCH-0001-10791114622547";
const TARGET: &str = "/payments/notifications";

fn stored_payment(invoice: InvoiceNumber, amount: i64, code: Option<&str>) -> Payment {
    Payment::fixture(
        invoice,
        Amount::new(amount).unwrap_or_else(|_| Amount::new(1).expect("1 is valid")),
        code.and_then(|c| PaymentCode::parse(c).ok()),
    )
}

/// Notification verification and parsing, and the comparison with a stored payment.
///
/// Input: four header lines (Client-Id, Request-Id, Request-Timestamp, Signature) and the
/// body; with fewer than four line breaks the whole input is the body, sent with correct
/// headers (the path that reaches parsing).
pub fn notification(data: &[u8]) {
    let (headers, body) = split_input(data);
    check_verification(headers, body);
    check_verdicts(body);
}

/// The four header lines and the body of a fuzz input (see [`notification`]).
fn split_input(data: &[u8]) -> ([String; 4], &[u8]) {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let fields: Vec<&[u8]> = parts.by_ref().take(5).collect();
    let (headers, body): (Option<[String; 4]>, &[u8]) = if fields.len() == 5 {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            Some([
                text(fields[0]),
                text(fields[1]),
                text(fields[2]),
                text(fields[3]),
            ]),
            fields[4],
        )
    } else {
        (None, data)
    };
    let headers = headers.unwrap_or_else(|| {
        [
            CLIENT.to_owned(),
            "479b663f-5c9d-400d-8e80-3e548a8f7639".to_owned(),
            "2021-08-12T07:06:29Z".to_owned(),
            String::new(),
        ]
    });
    (headers, body)
}

/// Only our exact MAC verifies; the correct MAC of either key verifies and names the key; a
/// changed body does not.
fn check_verification(headers: [String; 4], body: &[u8]) {
    let [client_id, request_id, timestamp, given_signature] = headers;
    let digest = signature::digest(body);
    let sts = signature::string_to_sign(&Components {
        client_id: &client_id,
        request_id: &request_id,
        timestamp: &timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: TARGET,
        digest: Some(&digest),
    });
    let keys: [&[u8]; 2] = [KEY, OLD_KEY];
    let well_formed = [&client_id, &request_id, &timestamp]
        .iter()
        .all(|v| !v.trim().is_empty())
        && client_id == CLIENT
        && request_id.chars().count() <= notification::REQUEST_ID_MAX_LEN;

    // A fuzzed signature verifies only as the exact MAC of one of the keys.
    let h = NotificationHeaders {
        client_id: Some(&client_id),
        request_id: Some(&request_id),
        request_timestamp: Some(&timestamp),
        signature: Some(&given_signature),
    };
    if let Ok(i) = notification::verify(&h, body, CLIENT, &keys, TARGET) {
        assert_eq!(
            given_signature.trim(),
            signature::sign(keys[i], &sts),
            "a signature that is not our MAC verified"
        );
    }
    // The correct signature of either key verifies, and reports which key.
    for (i, key) in keys.iter().enumerate() {
        let good = signature::sign(key, &sts);
        let h = NotificationHeaders {
            signature: Some(&good),
            ..h
        };
        let verdict = notification::verify(&h, body, CLIENT, &keys, TARGET);
        if well_formed {
            assert_eq!(
                verdict,
                Ok(i),
                "a correctly signed notification was refused"
            );
            if let Some((last, rest)) = body.split_last() {
                let mut changed = rest.to_vec();
                changed.push(last ^ 0x01);
                assert!(
                    notification::verify(&h, &changed, CLIENT, &keys, TARGET).is_err(),
                    "a changed body still verified"
                );
            }
        } else {
            assert!(verdict.is_err(), "bad headers verified");
        }
    }
}

/// A parsed notification's verdict against no stored payment, another payment of its
/// invoice, and a matching one.
fn check_verdicts(body: &[u8]) {
    let Ok(report) = notification::parse(body) else {
        return;
    };
    assert!(!report.invoice_number.is_empty());
    // Compared with: no stored payment, a stored payment of the same invoice with another
    // amount and code, and one matching what DOKU sent.
    let mut stored = vec![None];
    if let Ok(invoice) = InvoiceNumber::parse(&report.invoice_number) {
        stored.push(Some(stored_payment(
            invoice.clone(),
            report.amount.wrapping_add(1).max(1),
            Some("7731099999"),
        )));
        stored.push(Some(stored_payment(
            invoice,
            report.amount,
            report.payment_code.as_deref(),
        )));
    }
    for p in stored {
        let (verdict, change) = verdict(&report, p.as_ref());
        match (&verdict, &change) {
            (Verdict::Accepted, Some((c, channel))) => {
                assert_eq!(c.invoice.as_str(), report.invoice_number);
                assert_eq!(c.amount.rupiah(), report.amount);
                if let Some(p) = &p {
                    assert_eq!(c.invoice, p.invoice, "accepted for another invoice");
                    assert_eq!(c.amount, p.amount, "accepted with another amount");
                    if let (Some(ours), Some(theirs)) = (&p.payment_code, &c.payment_code) {
                        assert_eq!(ours, theirs, "accepted with another payment code");
                    }
                    assert_eq!(*channel, p.channel, "accepted for another channel");
                }
                if let ReportedStatus::Unrecognized(_) = report.status {
                    panic!("an unknown status was accepted");
                }
            }
            (Verdict::Accepted, None) => panic!("accepted without a change"),
            (_, Some(_)) => panic!("a refused notification carries a change"),
            (_, None) => {}
        }
    }
}

fn check_time(t: OffsetDateTime) {
    assert_eq!(t.offset(), UtcOffset::UTC, "DOKU times come out in UTC");
    if let Ok(text) = t.format(&Rfc3339) {
        assert_eq!(
            parse_doku_time(&text),
            Some(t),
            "{text} does not round-trip"
        );
    }
}

/// DOKU's answers: Generate Payment Code, Check Status, error bodies and dates.
pub fn doku_response(data: &[u8]) {
    if let Ok(r) = DokuPaymentCodeResponse::parse(data) {
        let _ = r.invoice_number().map(str::len);
        if let Ok(issued) = r.issued() {
            let code = issued.payment_code.as_str();
            assert_eq!(
                PaymentCode::parse(code).as_ref().map(PaymentCode::as_str),
                Ok(code)
            );
            issued.create_time.into_iter().for_each(check_time);
            issued.expire_time.into_iter().for_each(check_time);
        }
    }
    if let Ok(r) = DokuTransactionReport::parse(data) {
        if let Some(raw) = r.status()
            && let ReportedStatus::Known(_) = ReportedStatus::from_doku(raw)
        {
            assert!(DokuTransactionStatus::parse(raw).is_some());
        }
        let _ = (r.invoice_number(), r.amount(), r.payment_code());
        let _ = (r.original_request_id(), r.channel_id());
        r.occur_time().into_iter().for_each(check_time);
    }
    if let Some(m) = error_message(data) {
        assert!(m.chars().count() <= 512, "error message not bounded");
        assert_eq!(m.trim(), m);
        assert!(!m.is_empty());
    }
    let text = String::from_utf8_lossy(data);
    if let Some(t) = parse_doku_time(&text) {
        check_time(t);
    }
}

/// Protobuf requests into domain requests, and the DOKU request built from them.
pub fn proto(data: &[u8]) {
    if let Ok(req) = pb::GeneratePaymentCodeRequest::decode(data) {
        let input = convert::payment_code_input(req);
        match input.validate(TARGET) {
            Ok(p) => {
                let fp = p.fingerprint();
                assert_eq!(fp.len(), 64);
                assert_eq!(fp, p.fingerprint(), "fingerprint is not deterministic");
                let body = DokuPaymentCodeRequest::new(&p).to_bytes();
                let path = crate::doku::client::payment_code_path(p.channel);
                match crate::sim::check_generate_body(path, &body) {
                    Ok((invoice, amount)) => {
                        assert_eq!(invoice, p.invoice.as_str());
                        assert_eq!(Some(amount), u64::try_from(p.amount.rupiah()).ok());
                    }
                    Err(why) => panic!("a validated request is refused by the simulator: {why}"),
                }
                // The client reads the invoice back out of its own stored body.
                let read_back = DokuPaymentCodeResponse::parse(&body)
                    .ok()
                    .and_then(|r| r.invoice_number().map(str::to_owned));
                assert_eq!(read_back.as_deref(), Some(p.invoice.as_str()));
            }
            Err(violations) => assert!(!violations.is_empty(), "refused without a reason"),
        }
    }
    if let Ok(req) = pb::GetStatusRequest::decode(data)
        && let Ok(invoice) = InvoiceNumber::parse(&req.invoice_number)
    {
        assert!(
            invoice
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)),
            "an invoice that needs percent-encoding in the Check Status path"
        );
    }
    if let Ok(req) = pb::StreamNotificationsRequest::decode(data)
        && let Ok(seq) = parse_resume_token(&req.resume_token)
    {
        assert_eq!(parse_resume_token(&resume_token(seq)).ok(), Some(seq));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs `target` on every file under `fuzz/seeds/<name>` and `fuzz/regressions/<name>`:
    /// the seed corpus, and every input that once failed (each is a regression test).
    fn replay(name: &str, target: fn(&[u8])) -> usize {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{} fails", path.display());
                n += 1;
            }
        }
        n
    }

    #[test]
    fn notification_seeds_and_regressions() {
        assert!(replay("notification", super::notification) > 0);
    }

    #[test]
    fn doku_response_seeds_and_regressions() {
        assert!(replay("doku_response", super::doku_response) > 0);
    }

    #[test]
    fn proto_seeds_and_regressions() {
        assert!(replay("proto", super::proto) > 0);
    }
}
