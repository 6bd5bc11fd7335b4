//! DOKU's JSON on the wire (`Doku*` serde types) and its translation to and from the domain
//! types of [`crate::payment`].
//!
//! Requests are serialized in DOKU's documented key order, compact, with absent optional
//! fields omitted (never `null`). Responses and notifications are parsed leniently: unknown
//! fields are ignored, every field is optional at the serde level, amounts may come as numbers
//! or numeric strings, and dates may come in either of DOKU's two formats
//! ([`parse_doku_time`]). What a caller needs but DOKU did not send is reported by the code
//! that needs it, not by serde.

use serde::{Deserialize, Deserializer, Serialize};
use time::{
    OffsetDateTime, PrimitiveDateTime, UtcOffset,
    format_description::well_known::{Iso8601, Rfc3339},
    macros::{format_description, offset},
};

use crate::payment::{Channel, IssuedCode, NewPayment, PaymentCode, PaymentStatus};

/// `transaction.status` values DOKU documents for Check Status and notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DokuTransactionStatus {
    /// Waiting to be paid.
    Pending,
    /// Paid by the customer (final).
    Success,
    /// Failed to be paid; DOKU says to generate a new payment request.
    Failed,
    /// The payment code's due date passed (final).
    Expired,
    /// Funds refunded to the merchant (not an O2O status).
    Refunded,
    /// Timed out at the acquirer (e-money only).
    Timeout,
    /// Waiting for acquirer verification (credit card only).
    Redirect,
}

impl DokuTransactionStatus {
    /// Parses DOKU's value. Case is ignored because DOKU's own plugin compares it
    /// case-insensitively; any other spelling is unknown.
    pub fn parse(raw: &str) -> Option<Self> {
        let known = [
            ("PENDING", Self::Pending),
            ("SUCCESS", Self::Success),
            ("FAILED", Self::Failed),
            ("EXPIRED", Self::Expired),
            ("REFUNDED", Self::Refunded),
            ("TIMEOUT", Self::Timeout),
            ("REDIRECT", Self::Redirect),
        ];
        let raw = raw.trim();
        known
            .into_iter()
            .find(|(name, _)| raw.eq_ignore_ascii_case(name))
            .map(|(_, s)| s)
    }

    /// The domain status this DOKU status means for an Indomaret payment code, or `None` when
    /// it has no meaning there (the sidecar reports it instead of guessing).
    pub fn payment_status(self) -> Option<PaymentStatus> {
        match self {
            Self::Success => Some(PaymentStatus::Paid),
            Self::Pending => Some(PaymentStatus::Pending),
            Self::Failed => Some(PaymentStatus::Failed),
            Self::Expired => Some(PaymentStatus::Expired),
            Self::Refunded | Self::Timeout | Self::Redirect => None,
        }
    }
}

/// A status as DOKU reported it: either one the domain knows, or DOKU's raw text, which the
/// caller logs and leaves alone rather than mapping it to a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedStatus {
    /// A status with a domain meaning.
    Known(PaymentStatus),
    /// DOKU's raw `transaction.status` (REFUNDED, TIMEOUT, REDIRECT or an unknown value).
    Unrecognized(String),
}

impl ReportedStatus {
    /// Maps DOKU's raw `transaction.status`.
    pub fn from_doku(raw: &str) -> Self {
        match DokuTransactionStatus::parse(raw).and_then(DokuTransactionStatus::payment_status) {
            Some(s) => Self::Known(s),
            None => Self::Unrecognized(raw.to_owned()),
        }
    }
}

/// DOKU's `channel.id` for a channel, as its notifications and Check Status answers carry it.
pub fn channel_id(c: Channel) -> &'static str {
    match c {
        Channel::Indomaret => "ONLINE_TO_OFFLINE_INDOMARET",
        Channel::Alfa => "ONLINE_TO_OFFLINE_ALFA",
    }
}

/// A `channel.id` as DOKU reported it: a channel the domain knows, or DOKU's raw text (another
/// DOKU product, or a value this version does not know), which never matches a stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedChannel {
    /// One of the sidecar's channels.
    Known(Channel),
    /// DOKU's raw `channel.id`.
    Unrecognized(String),
}

impl ReportedChannel {
    /// Maps DOKU's raw `channel.id`; case and surrounding blanks are ignored, as for
    /// `transaction.status`.
    pub fn from_doku(raw: &str) -> Self {
        let id = raw.trim();
        Channel::ALL
            .into_iter()
            .find(|c| id.eq_ignore_ascii_case(channel_id(*c)))
            .map_or_else(|| Self::Unrecognized(raw.to_owned()), Self::Known)
    }
}

/// WIB, the zone of DOKU's compact `yyyyMMddHHmmss` dates.
const WIB: UtcOffset = offset!(+7);

/// Parses a date as DOKU writes it: compact `yyyyMMddHHmmss` in WIB (UTC+7), as in
/// `created_date`, or ISO-8601/RFC 3339 with `Z` or an offset and optional fractional seconds,
/// as in `created_date_utc` and `transaction.date`. The result is in UTC.
pub fn parse_doku_time(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    if s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()) {
        let compact = format_description!("[year][month][day][hour][minute][second]");
        return PrimitiveDateTime::parse(s, compact)
            .ok()
            .map(|t| t.assume_offset(WIB).to_offset(UtcOffset::UTC));
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::PARSING))
        .ok()
        .map(|t| t.to_offset(UtcOffset::UTC))
}

// ---------------------------------------------------------------------------------------------
// Generate payment code: request

/// Body of Generate Payment Code (the path is the channel's,
/// [`payment_code_path`](super::client::payment_code_path)). Field order is DOKU's. Both
/// channels share `order`, `online_to_offline_info`, `customer` and `additional_info`; the
/// receipt goes under the channel's own key: `indomaret_info.receipt` (description and
/// footer) or `alfa_info.receipt` (footer only), never both.
#[derive(Debug, Serialize)]
pub(crate) struct DokuPaymentCodeRequest<'a> {
    order: DokuOrderRequest<'a>,
    online_to_offline_info: DokuO2oRequestInfo<'a>,
    customer: DokuCustomer<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    indomaret_info: Option<DokuStoreInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alfa_info: Option<DokuStoreInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_info: Option<DokuAdditionalInfo<'a>>,
}

#[derive(Debug, Serialize)]
struct DokuOrderRequest<'a> {
    invoice_number: &'a str,
    amount: i64,
}

#[derive(Debug, Serialize)]
struct DokuO2oRequestInfo<'a> {
    expired_time: u32,
    /// DOKU's table says "string" but its sample and every integration send a JSON bool.
    reusable_status: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct DokuCustomer<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
}

/// `indomaret_info` or `alfa_info`: the store chain's receipt.
#[derive(Debug, Serialize)]
struct DokuStoreInfo<'a> {
    receipt: DokuReceipt<'a>,
}

#[derive(Debug, Serialize)]
struct DokuReceipt<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    footer_message: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct DokuAdditionalInfo<'a> {
    override_notification_url: &'a str,
}

impl<'a> DokuPaymentCodeRequest<'a> {
    pub(crate) fn new(p: &'a NewPayment) -> Self {
        let receipt = DokuReceipt {
            description: p.receipt_description.as_deref(),
            footer_message: p.receipt_footer_message.as_deref(),
        };
        let has_receipt = receipt.description.is_some() || receipt.footer_message.is_some();
        let store_info = has_receipt.then_some(DokuStoreInfo { receipt });
        let (indomaret_info, alfa_info) = match p.channel {
            Channel::Indomaret => (store_info, None),
            // Validation refuses a receipt description for Alfa, so only the footer is here.
            Channel::Alfa => (None, store_info),
        };
        Self {
            order: DokuOrderRequest {
                invoice_number: p.invoice.as_str(),
                amount: p.amount.rupiah(),
            },
            online_to_offline_info: DokuO2oRequestInfo {
                expired_time: p.expiry_minutes,
                reusable_status: p.reusable,
                info: p.info.as_deref(),
            },
            customer: DokuCustomer {
                name: &p.customer_name,
                email: p.customer_email.as_deref(),
            },
            indomaret_info,
            alfa_info,
            additional_info: p.notification_url.as_deref().map(|url| DokuAdditionalInfo {
                override_notification_url: url,
            }),
        }
    }

    /// The compact JSON bytes that are signed and sent.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings, integers and bools always serialize.
        serde_json::to_vec(self).expect("payment-code request serializes")
    }
}

// ---------------------------------------------------------------------------------------------
// Generate payment code: response

/// DOKU's answer to a payment-code request (200, or 409 when it replays the original answer).
#[derive(Debug, Deserialize)]
pub(crate) struct DokuPaymentCodeResponse {
    #[serde(default)]
    order: Option<DokuOrder>,
    #[serde(default)]
    online_to_offline_info: Option<DokuO2oIssuedInfo>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct DokuO2oIssuedInfo {
    #[serde(default, deserialize_with = "lenient_string")]
    payment_code: Option<String>,
    #[serde(default)]
    created_date: Option<String>,
    #[serde(default)]
    expired_date: Option<String>,
    #[serde(default)]
    created_date_utc: Option<String>,
    #[serde(default)]
    expired_date_utc: Option<String>,
    #[serde(default)]
    how_to_pay_page: Option<String>,
    #[serde(default)]
    how_to_pay_api: Option<String>,
}

/// The first of the `_utc` field and the compact field that parses.
fn doku_time(utc: Option<&String>, compact: Option<&String>) -> Option<OffsetDateTime> {
    utc.and_then(|s| parse_doku_time(s))
        .or_else(|| compact.and_then(|s| parse_doku_time(s)))
}

impl DokuPaymentCodeResponse {
    /// Parses a success body; `Err` says why it is not one.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not DOKU's payment-code JSON: {e}"))
    }

    /// The invoice DOKU says it answered for, if it said.
    pub(crate) fn invoice_number(&self) -> Option<&str> {
        self.order.as_ref()?.invoice_number.as_deref()
    }

    /// The amount DOKU says it answered for, if it said.
    pub(crate) fn amount(&self) -> Option<i64> {
        self.order.as_ref()?.amount
    }

    /// The issued code; `Err` when the body has no valid payment code.
    pub(crate) fn issued(&self) -> Result<IssuedCode, String> {
        let info = self
            .online_to_offline_info
            .as_ref()
            .cloned()
            .unwrap_or_default();
        let raw = info
            .payment_code
            .as_deref()
            .ok_or("online_to_offline_info.payment_code is missing")?;
        let payment_code = PaymentCode::parse(raw)?;
        Ok(IssuedCode {
            payment_code,
            create_time: doku_time(info.created_date_utc.as_ref(), info.created_date.as_ref()),
            expire_time: doku_time(info.expired_date_utc.as_ref(), info.expired_date.as_ref()),
            how_to_pay_url: info.how_to_pay_page,
            how_to_pay_api_url: info.how_to_pay_api,
            // Fetched separately, from `how_to_pay_api` (see `client::payment_instructions`).
            instructions: Vec::new(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Check Status answers and HTTP notifications (the same shape)

/// A transaction report: the body of DOKU's HTTP notification and of its Check Status answer.
/// Every part may be missing or `null` (DOKU's July 2025 changelog made `service`, `acquirer`
/// and `channel` nullable). `service` and `acquirer` are not read: nothing decides on them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DokuTransactionReport {
    #[serde(default)]
    channel: Option<DokuId>,
    #[serde(default)]
    transaction: Option<DokuTransaction>,
    #[serde(default)]
    order: Option<DokuOrder>,
    #[serde(default)]
    online_to_offline_info: Option<DokuO2oInfo>,
}

/// `service`, `acquirer`, `channel`: `{ "id": … }`.
#[derive(Debug, Default, Deserialize)]
struct DokuId {
    #[serde(default)]
    id: Option<String>,
}

/// `transaction`.
#[derive(Debug, Default, Deserialize)]
struct DokuTransaction {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    original_request_id: Option<String>,
}

/// `order`.
#[derive(Debug, Default, Deserialize)]
struct DokuOrder {
    #[serde(default)]
    invoice_number: Option<String>,
    #[serde(default, deserialize_with = "lenient_amount")]
    amount: Option<i64>,
}

/// `online_to_offline_info` of a report.
#[derive(Debug, Default, Deserialize)]
struct DokuO2oInfo {
    #[serde(default, deserialize_with = "lenient_string")]
    payment_code: Option<String>,
}

impl DokuTransactionReport {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not DOKU's transaction JSON: {e}"))
    }

    pub(crate) fn status(&self) -> Option<&str> {
        self.transaction.as_ref()?.status.as_deref()
    }

    pub(crate) fn invoice_number(&self) -> Option<&str> {
        self.order.as_ref()?.invoice_number.as_deref()
    }

    pub(crate) fn amount(&self) -> Option<i64> {
        self.order.as_ref()?.amount
    }

    pub(crate) fn payment_code(&self) -> Option<&str> {
        self.online_to_offline_info
            .as_ref()?
            .payment_code
            .as_deref()
    }

    pub(crate) fn occur_time(&self) -> Option<OffsetDateTime> {
        parse_doku_time(self.transaction.as_ref()?.date.as_deref()?)
    }

    pub(crate) fn original_request_id(&self) -> Option<&str> {
        self.transaction.as_ref()?.original_request_id.as_deref()
    }

    pub(crate) fn channel_id(&self) -> Option<&str> {
        self.channel.as_ref()?.id.as_deref()
    }

    /// `channel.id`, mapped; `None` when absent or `null`.
    pub(crate) fn channel(&self) -> Option<ReportedChannel> {
        self.channel_id().map(ReportedChannel::from_doku)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Longest message taken from an error body: enough for DOKU's sentences, short enough for
/// a caller-facing error.
const ERROR_MESSAGE_MAX_CHARS: usize = 512;

/// DOKU's own words from a non-success body. DOKU's non-SNAP error schema is undocumented, so
/// this tries every shape seen: `error.message`, `message` (string or array of strings),
/// `error_messages` (array), then `error` and `response_message` as plain strings.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            serde_json::Value::Array(items) => {
                let parts: Vec<&str> = items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            _ => None,
        }
    };
    let found = [
        v.pointer("/error/message"),
        v.get("message"),
        v.get("error_messages"),
        v.get("error"),
        v.get("response_message"),
    ]
    .into_iter()
    .flatten()
    .find_map(text)?;
    // Cut at the limit, then trim again: the cut may fall just after a "; " separator.
    let cut: String = found.chars().take(ERROR_MESSAGE_MAX_CHARS).collect();
    Some(cut.trim_end().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Lenient field parsers

/// An amount as a JSON integer, a float with no fraction, or a numeric string.
fn lenient_amount<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let v = Option::<serde_json::Value>::deserialize(d)?;
    let amount = match &v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            let whole = s.strip_suffix(".00").or_else(|| s.strip_suffix(".0"));
            whole.unwrap_or(s).parse().ok()
        }
        Some(_) => None,
    };
    amount
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("amount {v:?} is not a whole number")))
}

/// A string that DOKU might also send as a JSON number (payment codes are digits).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(D::Error::custom(format!("expected a string, got {other}"))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::payment::PaymentCodeInput;

    /// The NewPayment behind the V1 vector of the project's DOKU reference.
    pub(crate) fn v1_payment() -> NewPayment {
        PaymentCodeInput {
            invoice_number: "INV-2021002-0001".into(),
            amount: 150_000,
            customer_name: Some("Taufik Ismail".into()),
            customer_email: "taufik@example.com".into(),
            expiry: Some((3600, 0)),
            reusable: false,
            info: "Thanks for shopping".into(),
            receipt_description: "ORDER 001".into(),
            receipt_footer_message: "Terima kasih".into(),
            ..Default::default()
        }
        .validate("/payments/notifications")
        .unwrap()
    }

    #[test]
    fn v1_body_is_byte_exact() {
        let golden = include_str!("../../tests/golden/doku/payment_code_v1.json");
        assert_eq!(golden.len(), 315);
        let body = DokuPaymentCodeRequest::new(&v1_payment()).to_bytes();
        assert_eq!(String::from_utf8(body).unwrap(), golden);
    }

    /// The NewPayment behind the docs' Alfa sample (the V5 vector of the project's DOKU
    /// reference), with a receipt footer.
    pub(crate) fn alfa_payment() -> NewPayment {
        PaymentCodeInput {
            invoice_number: "INV-20210124-0001".into(),
            amount: 150_000,
            customer_name: Some("Anton Budiman".into()),
            customer_email: "anton@example.com".into(),
            expiry: Some((3600, 0)),
            reusable: false,
            info: "Merchant Demo Store".into(),
            receipt_footer_message: "Terima kasih".into(),
            channel: Some(Ok(Channel::Alfa)),
            ..Default::default()
        }
        .validate("/payments/notifications")
        .unwrap()
    }

    #[test]
    fn alfa_body_is_byte_exact() {
        let golden = include_str!("../../tests/golden/doku/payment_code_alfa.json");
        assert_eq!(golden.len(), 284);
        let body = DokuPaymentCodeRequest::new(&alfa_payment()).to_bytes();
        assert_eq!(String::from_utf8(body).unwrap(), golden);
        // Field by field: the shared parts as Indomaret's, the receipt under `alfa_info` with
        // the footer only, nothing under `indomaret_info`.
        let v: serde_json::Value = serde_json::from_str(golden).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["alfa_info", "customer", "online_to_offline_info", "order"]
        );
        assert_eq!(
            v["alfa_info"],
            serde_json::json!({"receipt": {"footer_message": "Terima kasih"}})
        );
        assert_eq!(v["order"]["invoice_number"], "INV-20210124-0001");
        assert_eq!(v["online_to_offline_info"]["reusable_status"], false);
    }

    #[test]
    fn alfa_body_without_receipt_is_the_docs_sample() {
        let mut p = alfa_payment();
        p.receipt_footer_message = None;
        let body = DokuPaymentCodeRequest::new(&p).to_bytes();
        // The docs' Alfa sample, compacted: its digest is the reference's V5 vector.
        assert_eq!(
            crate::doku::signature::digest(&body),
            "0eKB1s5YdzXZ5HPEr5idNl9GC8CCW4w4Kwu1PXVOZdE="
        );
        let mut p = alfa_payment();
        p.notification_url = Some("https://shop.example.com/payments/notifications".into());
        let body = String::from_utf8(DokuPaymentCodeRequest::new(&p).to_bytes()).unwrap();
        assert!(
            body.ends_with(r#""alfa_info":{"receipt":{"footer_message":"Terima kasih"}},"additional_info":{"override_notification_url":"https://shop.example.com/payments/notifications"}}"#),
            "{body}"
        );
        assert!(!body.contains("indomaret_info"), "{body}");
    }

    #[test]
    fn channel_ids_map_both_ways() {
        for c in Channel::ALL {
            assert_eq!(
                ReportedChannel::from_doku(channel_id(c)),
                ReportedChannel::Known(c)
            );
        }
        assert_eq!(
            ReportedChannel::from_doku(" online_to_offline_alfa "),
            ReportedChannel::Known(Channel::Alfa)
        );
        for raw in ["ONLINE_TO_OFFLINE", "VIRTUAL_ACCOUNT_BCA", "ALFA", ""] {
            assert_eq!(
                ReportedChannel::from_doku(raw),
                ReportedChannel::Unrecognized(raw.into())
            );
        }
    }

    #[test]
    fn optional_parts_are_omitted_not_null() {
        let mut p = v1_payment();
        p.customer_email = None;
        p.info = None;
        p.receipt_description = None;
        p.receipt_footer_message = None;
        p.reusable = true;
        let body = String::from_utf8(DokuPaymentCodeRequest::new(&p).to_bytes()).unwrap();
        assert_eq!(
            body,
            r#"{"order":{"invoice_number":"INV-2021002-0001","amount":150000},"online_to_offline_info":{"expired_time":60,"reusable_status":true},"customer":{"name":"Taufik Ismail"}}"#
        );
        assert!(!body.contains("null"));
    }

    #[test]
    fn one_receipt_line_and_override_url() {
        let mut p = v1_payment();
        p.receipt_description = None;
        p.notification_url = Some("https://shop.example.com/payments/notifications".into());
        let body = String::from_utf8(DokuPaymentCodeRequest::new(&p).to_bytes()).unwrap();
        assert!(
            body.ends_with(r#""indomaret_info":{"receipt":{"footer_message":"Terima kasih"}},"additional_info":{"override_notification_url":"https://shop.example.com/payments/notifications"}}"#),
            "{body}"
        );
    }

    #[test]
    fn compact_wib_and_utc_dates_are_the_same_instant() {
        // The VA sample of the DOKU reference §1.4.
        let created = parse_doku_time("20230529090510").unwrap();
        let created_utc = parse_doku_time("2023-05-29T02:05:10Z").unwrap();
        assert_eq!(created, created_utc);
        assert_eq!(created, datetime!(2023-05-29 02:05:10 UTC));
        assert_eq!(
            parse_doku_time("20230529100510"),
            parse_doku_time("2023-05-29T03:05:10Z")
        );
        assert_eq!(created.offset(), UtcOffset::UTC);
    }

    #[test]
    fn iso_variants_and_garbage() {
        let t = datetime!(2021-08-12 07:06:28 UTC);
        assert_eq!(parse_doku_time("2021-08-12T07:06:28Z"), Some(t));
        assert_eq!(parse_doku_time("2021-08-12T14:06:28+07:00"), Some(t));
        assert_eq!(
            parse_doku_time("2021-08-12T07:06:28.250Z"),
            Some(t + time::Duration::milliseconds(250))
        );
        assert_eq!(parse_doku_time(" 2021-08-12T07:06:28Z "), Some(t));
        for bad in [
            "",
            "2021-08-12",
            "20211312000000",
            "2021081207062",
            "2021-08-12T07:06:28",
            "yesterday",
        ] {
            assert_eq!(parse_doku_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn success_body_prefers_utc_fields_and_falls_back_to_compact() {
        let body = br#"{"order":{"invoice_number":"INV-1","amount":150000},
            "online_to_offline_info":{"payment_code":"8880123456789012",
              "created_date":"20230529090510","expired_date":"20230529100510",
              "created_date_utc":"garbage","expired_date_utc":"2023-05-29T03:05:10Z",
              "how_to_pay_page":"https://sandbox.doku.com/how-to-pay/x",
              "how_to_pay_api":"https://api-sandbox.doku.com/how-to-pay-api/x",
              "something_new":{"a":1}},
            "extra":true}"#;
        let r = DokuPaymentCodeResponse::parse(body).unwrap();
        assert_eq!(r.invoice_number(), Some("INV-1"));
        let issued = r.issued().unwrap();
        assert_eq!(issued.payment_code.as_str(), "8880123456789012");
        assert_eq!(issued.create_time, Some(datetime!(2023-05-29 02:05:10 UTC)));
        assert_eq!(issued.expire_time, Some(datetime!(2023-05-29 03:05:10 UTC)));
        assert_eq!(
            issued.how_to_pay_url.as_deref(),
            Some("https://sandbox.doku.com/how-to-pay/x")
        );
        assert_eq!(
            issued.how_to_pay_api_url.as_deref(),
            Some("https://api-sandbox.doku.com/how-to-pay-api/x")
        );
    }

    #[test]
    fn success_body_without_a_valid_code_is_not_success() {
        for body in [
            &br#"{"online_to_offline_info":{}}"#[..],
            br#"{"online_to_offline_info":{"payment_code":"12ab"}}"#,
            br#"{"message":"different request data"}"#,
        ] {
            let r = DokuPaymentCodeResponse::parse(body).unwrap();
            assert!(r.issued().is_err());
        }
        assert!(DokuPaymentCodeResponse::parse(b"<html>").is_err());
        let numeric = br#"{"online_to_offline_info":{"payment_code":123456}}"#;
        let issued = DokuPaymentCodeResponse::parse(numeric)
            .unwrap()
            .issued()
            .unwrap();
        assert_eq!(issued.payment_code.as_str(), "123456");
        assert_eq!(issued.create_time, None);
    }

    #[test]
    fn status_mapping_never_guesses() {
        use PaymentStatus::*;
        for (raw, want) in [
            ("SUCCESS", ReportedStatus::Known(Paid)),
            ("success", ReportedStatus::Known(Paid)),
            ("PENDING", ReportedStatus::Known(Pending)),
            ("FAILED", ReportedStatus::Known(Failed)),
            ("EXPIRED", ReportedStatus::Known(Expired)),
            ("REFUNDED", ReportedStatus::Unrecognized("REFUNDED".into())),
            ("TIMEOUT", ReportedStatus::Unrecognized("TIMEOUT".into())),
            ("REDIRECT", ReportedStatus::Unrecognized("REDIRECT".into())),
            ("PAID", ReportedStatus::Unrecognized("PAID".into())),
            ("", ReportedStatus::Unrecognized(String::new())),
        ] {
            assert_eq!(ReportedStatus::from_doku(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn transaction_report_tolerates_nulls_and_odd_amounts() {
        let body = br#"{"service":null,"acquirer":{"id":null},"channel":{"id":"ONLINE_TO_OFFLINE_INDOMARET"},
            "transaction":{"status":"PENDING","date":null},
            "order":{"invoice_number":"INV-1","amount":"150000.00","status":"ORDER_GENERATED"},
            "online_to_offline_info":null}"#;
        let r = DokuTransactionReport::parse(body).unwrap();
        assert_eq!(r.status(), Some("PENDING"));
        assert_eq!(r.amount(), Some(150_000));
        assert_eq!(r.channel_id(), Some("ONLINE_TO_OFFLINE_INDOMARET"));
        assert_eq!(r.payment_code(), None);
        assert_eq!(r.occur_time(), None);
        for (amount, want) in [("150000", Some(150_000)), ("150000.0", Some(150_000))] {
            let body = format!(r#"{{"order":{{"amount":{amount}}}}}"#);
            let r = DokuTransactionReport::parse(body.as_bytes()).unwrap();
            assert_eq!(r.amount(), want, "{amount}");
        }
        for amount in ["150000.5", "\"12x\"", "true"] {
            let body = format!(r#"{{"order":{{"amount":{amount}}}}}"#);
            assert!(
                DokuTransactionReport::parse(body.as_bytes()).is_err(),
                "{amount}"
            );
        }
    }

    #[test]
    fn error_messages_in_every_known_shape() {
        for (body, want) in [
            (
                &br#"{"error":{"code":"invalid_parameter","message":"Invalid JSON Format"}}"#[..],
                Some("Invalid JSON Format"),
            ),
            (
                br#"{"message":"different request data"}"#,
                Some("different request data"),
            ),
            (
                br#"{"message":["amount is required"," name too long "]}"#,
                Some("amount is required; name too long"),
            ),
            (
                br#"{"error_messages":["invoice_number is invalid"]}"#,
                Some("invoice_number is invalid"),
            ),
            (
                br#"{"status":"FAILED","response_code":"INVALID_PARAMETER","response_message":"Bad amount"}"#,
                Some("Bad amount"),
            ),
            (br#"{"message":""}"#, None),
            (br#"{"message":42}"#, None),
            (b"No static resource", None),
        ] {
            assert_eq!(error_message(body).as_deref(), want);
        }
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(2000));
        assert_eq!(
            error_message(long.as_bytes()).unwrap().len(),
            ERROR_MESSAGE_MAX_CHARS
        );
        // Found by fuzzing: the cut at the limit fell right after a "; " separator.
        let first = "a".repeat(ERROR_MESSAGE_MAX_CHARS - 2);
        let body = format!(r#"{{"message":["{first}","second"]}}"#);
        assert_eq!(error_message(body.as_bytes()).unwrap(), format!("{first};"));
    }
}
