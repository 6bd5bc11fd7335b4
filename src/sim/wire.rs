//! DOKU's JSON as the simulator reads and writes it, with its own types (never
//! `crate::doku::types`): strict validation of the Generate Payment Code body, the success,
//! Check Status, notification and error bodies, and DOKU's two date formats.

use serde::Serialize;
use serde_json::{Map, Value};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset, macros::format_description};

use crate::sim::SimChannel;

/// Longest `order.invoice_number`.
pub(crate) const INVOICE_MAX: usize = 64;
/// Largest `order.amount`: 12 digits.
pub(crate) const AMOUNT_MAX: u64 = 999_999_999_999;
/// Largest `online_to_offline_info.expired_time` (8 digits), in minutes.
pub(crate) const EXPIRED_TIME_MAX: u64 = 99_999_999;
/// `expired_time` when the request has none.
pub(crate) const EXPIRED_TIME_DEFAULT: u64 = 60;
const INFO_MAX: usize = 64;
const NAME_MAX: usize = 64;
const EMAIL_MAX: usize = 128;
const RECEIPT_MAX: usize = 128;

/// Now, to the second: DOKU's timestamps carry no fractions.
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, UTC.
pub(crate) fn iso_utc(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .expect("a UTC date formats")
}

/// `yyyyMMddHHmmss` in WIB (UTC+7), DOKU's `created_date` / `expired_date`.
pub(crate) fn compact_wib(t: OffsetDateTime) -> String {
    let wib = UtcOffset::from_hms(7, 0, 0).expect("UTC+7 is a valid offset");
    t.to_offset(wib)
        .format(format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .expect("a WIB date formats")
}

/// Parses a `Request-Timestamp`: exactly `YYYY-MM-DDTHH:MM:SSZ`, nothing more or less.
pub(crate) fn parse_request_timestamp(s: &str) -> Option<OffsetDateTime> {
    const SHAPE: &[u8; 20] = b"dddd-dd-ddTdd:dd:ddZ";
    let b = s.as_bytes();
    let shaped = b.len() == SHAPE.len()
        && b.iter().zip(SHAPE).all(|(&c, &want)| match want {
            b'd' => c.is_ascii_digit(),
            _ => c == want,
        });
    if !shaped {
        return None;
    }
    PrimitiveDateTime::parse(
        &s[..19],
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

/// Parses an absolute `http`/`https` URL with a host.
pub(crate) fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} is not http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(url)
}

/// A Generate Payment Code request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenerateRequest {
    pub(crate) invoice_number: String,
    pub(crate) amount: u64,
    pub(crate) reusable: bool,
    pub(crate) expired_minutes: u64,
    pub(crate) info: Option<String>,
    pub(crate) customer_name: String,
    pub(crate) customer_email: Option<String>,
    pub(crate) receipt_description: Option<String>,
    pub(crate) receipt_footer: Option<String>,
    pub(crate) override_notification_url: Option<String>,
}

/// Reads `order.invoice_number` from a body without validating it (to match faults and log).
pub(crate) fn peek_invoice(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("order")?
        .get("invoice_number")?
        .as_str()
        .map(str::to_owned)
}

/// The key of a channel's receipt object in the Generate Payment Code body, and the receipt
/// lines it takes: Indomaret's `indomaret_info.receipt` has a description and a footer, Alfa's
/// `alfa_info.receipt` only a footer (what DOKU's own Alfa plugin sends).
fn receipt_object(channel: SimChannel) -> (&'static str, &'static [&'static str]) {
    match channel {
        SimChannel::Indomaret => ("indomaret_info", &["description", "footer_message"]),
        SimChannel::Alfa => ("alfa_info", &["footer_message"]),
    }
}

/// Validates a Generate Payment Code body sent to `channel`'s endpoint. The error says which
/// field and why; the other channel's receipt object is an unknown field.
pub(crate) fn parse_generate(body: &[u8], channel: SimChannel) -> Result<GenerateRequest, String> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON Format: {e}"))?;
    let root = as_object(&root, "request body")?;
    let (receipt_key, receipt_lines) = receipt_object(channel);
    only_keys(
        root,
        "",
        &[
            "order",
            "online_to_offline_info",
            "customer",
            receipt_key,
            "additional_info",
        ],
    )?;

    let order = required_object(root, "order", "")?;
    only_keys(order, "order.", &["invoice_number", "amount"])?;
    let invoice_number = required_str(order, "invoice_number", "order.", INVOICE_MAX)?;
    if let Some(c) = invoice_number.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "order.invoice_number contains {c:?}; only printable ASCII without spaces is allowed"
        ));
    }
    let amount = match present(order, "amount") {
        None => return Err("order.amount is required".into()),
        Some(v) => integer_in(v, "order.amount", AMOUNT_MAX, "whole rupiah, 12 digits")?,
    };

    let o2o = required_object(root, "online_to_offline_info", "")?;
    only_keys(
        o2o,
        "online_to_offline_info.",
        &["expired_time", "reusable_status", "info"],
    )?;
    let reusable = match present(o2o, "reusable_status") {
        None => return Err("online_to_offline_info.reusable_status is required".into()),
        Some(v) => v
            .as_bool()
            .ok_or("online_to_offline_info.reusable_status must be a JSON boolean")?,
    };
    let expired_minutes = match present(o2o, "expired_time") {
        None => EXPIRED_TIME_DEFAULT,
        Some(v) => integer_in(
            v,
            "online_to_offline_info.expired_time",
            EXPIRED_TIME_MAX,
            "minutes, 8 digits",
        )?,
    };
    let info = optional_str(o2o, "info", "online_to_offline_info.", INFO_MAX)?;

    let customer = required_object(root, "customer", "")?;
    only_keys(customer, "customer.", &["name", "email"])?;
    let customer_name = required_str(customer, "name", "customer.", NAME_MAX)?;
    let customer_email = optional_str(customer, "email", "customer.", EMAIL_MAX)?;
    if let Some(e) = &customer_email {
        let ok = match e.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !e.chars().any(char::is_whitespace)
            }
            None => false,
        };
        if !ok {
            return Err(format!("customer.email {e:?} is not an email address"));
        }
    }

    let (mut receipt_description, mut receipt_footer) = (None, None);
    if let Some(v) = present(root, receipt_key) {
        let info = as_object(v, receipt_key)?;
        only_keys(info, &format!("{receipt_key}."), &["receipt"])?;
        if let Some(v) = present(info, "receipt") {
            let prefix = format!("{receipt_key}.receipt.");
            let r = as_object(v, &format!("{receipt_key}.receipt"))?;
            only_keys(r, &prefix, receipt_lines)?;
            receipt_description = optional_str(r, "description", &prefix, RECEIPT_MAX)?;
            receipt_footer = optional_str(r, "footer_message", &prefix, RECEIPT_MAX)?;
        }
    }

    let mut override_notification_url = None;
    if let Some(v) = present(root, "additional_info") {
        let ai = as_object(v, "additional_info")?;
        // `integration`, `account` and `settlement` are what DOKU's own plugins send.
        only_keys(
            ai,
            "additional_info.",
            &[
                "override_notification_url",
                "integration",
                "account",
                "settlement",
            ],
        )?;
        override_notification_url = optional_str(
            ai,
            "override_notification_url",
            "additional_info.",
            usize::MAX,
        )?;
    }

    Ok(GenerateRequest {
        invoice_number,
        amount,
        reusable,
        expired_minutes,
        info,
        customer_name,
        customer_email,
        receipt_description,
        receipt_footer,
        override_notification_url,
    })
}

/// A JSON integer (not a float, not a string) in `1..=max`.
fn integer_in(v: &Value, name: &str, max: u64, unit: &str) -> Result<u64, String> {
    if !(v.is_u64() || v.is_i64()) {
        return Err(format!("{name} must be a JSON integer ({unit}), got {v}"));
    }
    match v.as_u64() {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} must be between 1 and {max} ({unit}), got {v}"
        )),
    }
}

fn as_object<'a>(v: &'a Value, name: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{name} must be a JSON object"))
}

/// The value of `key`, treating JSON `null` as absent.
fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn only_keys(m: &Map<String, Value>, prefix: &str, allowed: &[&str]) -> Result<(), String> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("Invalid JSON Format: unknown field {prefix}{k}")),
        None => Ok(()),
    }
}

fn required_object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<&'a Map<String, Value>, String> {
    let v = present(m, key).ok_or_else(|| format!("{prefix}{key} is required"))?;
    as_object(v, &format!("{prefix}{key}"))
}

fn required_str(
    m: &Map<String, Value>,
    key: &str,
    prefix: &str,
    max: usize,
) -> Result<String, String> {
    let s =
        optional_str(m, key, prefix, max)?.ok_or_else(|| format!("{prefix}{key} is required"))?;
    if s.trim().is_empty() {
        return Err(format!("{prefix}{key} must not be empty"));
    }
    Ok(s)
}

fn optional_str(
    m: &Map<String, Value>,
    key: &str,
    prefix: &str,
    max: usize,
) -> Result<Option<String>, String> {
    let Some(v) = present(m, key) else {
        return Ok(None);
    };
    let s = v
        .as_str()
        .ok_or_else(|| format!("{prefix}{key} must be a JSON string"))?;
    let len = s.chars().count();
    if len > max {
        return Err(format!(
            "{prefix}{key} must be at most {max} characters, got {len}"
        ));
    }
    Ok(Some(s.to_owned()))
}

#[derive(Serialize)]
struct Order<'a> {
    invoice_number: &'a str,
    amount: u64,
}

#[derive(Serialize)]
struct Id<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct Transaction<'a> {
    status: &'a str,
    date: String,
    original_request_id: &'a str,
}

#[derive(Serialize)]
struct CodeInfo<'a> {
    payment_code: &'a str,
}

/// The values of a `200` Generate Payment Code answer.
#[derive(Debug)]
pub(crate) struct Issued<'a> {
    pub(crate) invoice_number: &'a str,
    pub(crate) amount: u64,
    pub(crate) payment_code: &'a str,
    pub(crate) info: Option<&'a str>,
    pub(crate) created: OffsetDateTime,
    pub(crate) expires: OffsetDateTime,
    pub(crate) how_to_pay_page: String,
    pub(crate) how_to_pay_api: String,
}

/// The `200` body of Generate Payment Code.
pub(crate) fn generate_response(i: &Issued<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        order: Order<'a>,
        online_to_offline_info: Info<'a>,
    }
    #[derive(Serialize)]
    struct Info<'a> {
        payment_code: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a str>,
        created_date: String,
        expired_date: String,
        created_date_utc: String,
        expired_date_utc: String,
        how_to_pay_page: &'a str,
        how_to_pay_api: &'a str,
    }
    to_vec(&Body {
        order: Order {
            invoice_number: i.invoice_number,
            amount: i.amount,
        },
        online_to_offline_info: Info {
            payment_code: i.payment_code,
            info: i.info,
            created_date: compact_wib(i.created),
            expired_date: compact_wib(i.expires),
            created_date_utc: iso_utc(i.created),
            expired_date_utc: iso_utc(i.expires),
            how_to_pay_page: &i.how_to_pay_page,
            how_to_pay_api: &i.how_to_pay_api,
        },
    })
}

/// The values shared by a Check Status answer and a notification.
#[derive(Debug)]
pub(crate) struct TxnView<'a> {
    pub(crate) channel: SimChannel,
    pub(crate) invoice_number: &'a str,
    pub(crate) amount: u64,
    pub(crate) payment_code: &'a str,
    pub(crate) status: &'a str,
    pub(crate) date: OffsetDateTime,
    pub(crate) original_request_id: &'a str,
}

const SERVICE: Id<'static> = Id {
    id: "ONLINE_TO_OFFLINE",
};

/// `acquirer` and `channel` of a channel's Check Status answers and notifications.
fn acquirer_and_channel(channel: SimChannel) -> (Id<'static>, Id<'static>) {
    let (acquirer, channel) = match channel {
        SimChannel::Indomaret => ("INDOMARET", "ONLINE_TO_OFFLINE_INDOMARET"),
        SimChannel::Alfa => ("ALFA", "ONLINE_TO_OFFLINE_ALFA"),
    };
    (Id { id: acquirer }, Id { id: channel })
}

/// The `200` body of Check Status.
pub(crate) fn status_response(t: &TxnView<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        order: Order<'a>,
        transaction: Transaction<'a>,
        service: Id<'a>,
        acquirer: Id<'a>,
        channel: Id<'a>,
        online_to_offline_info: CodeInfo<'a>,
    }
    let (acquirer, channel) = acquirer_and_channel(t.channel);
    to_vec(&Body {
        order: Order {
            invoice_number: t.invoice_number,
            amount: t.amount,
        },
        transaction: Transaction {
            status: t.status,
            date: iso_utc(t.date),
            original_request_id: t.original_request_id,
        },
        service: SERVICE,
        acquirer,
        channel,
        online_to_offline_info: CodeInfo {
            payment_code: t.payment_code,
        },
    })
}

/// The body of a payment notification (compact JSON, DOKU's field order).
pub(crate) fn notification_body(t: &TxnView<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        service: Id<'a>,
        acquirer: Id<'a>,
        channel: Id<'a>,
        transaction: Transaction<'a>,
        order: Order<'a>,
        online_to_offline_info: CodeInfo<'a>,
    }
    let (acquirer, channel) = acquirer_and_channel(t.channel);
    to_vec(&Body {
        service: SERVICE,
        acquirer,
        channel,
        transaction: Transaction {
            status: t.status,
            date: iso_utc(t.date),
            original_request_id: t.original_request_id,
        },
        order: Order {
            invoice_number: t.invoice_number,
            amount: t.amount,
        },
        online_to_offline_info: CodeInfo {
            payment_code: t.payment_code,
        },
    })
}

/// DOKU-style error body: `{"error":{"code","message","type"}}`.
pub(crate) fn error_body(code: &str, message: &str, kind: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
    }
    to_vec(&Body {
        error: Inner {
            code,
            message,
            kind,
        },
    })
}

fn to_vec(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain structs serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_BODY: &str = r#"{"order":{"invoice_number":"INV-2021002-0001","amount":150000},"online_to_offline_info":{"expired_time":60,"reusable_status":false,"info":"Thanks for shopping"},"customer":{"name":"Taufik Ismail","email":"taufik@example.com"},"indomaret_info":{"receipt":{"description":"ORDER 001","footer_message":"Terima kasih"}}}"#;

    #[test]
    fn parses_the_reference_body() {
        let r = parse_generate(V1_BODY.as_bytes(), SimChannel::Indomaret).unwrap();
        assert_eq!(r.invoice_number, "INV-2021002-0001");
        assert_eq!(r.amount, 150_000);
        assert!(!r.reusable);
        assert_eq!(r.expired_minutes, 60);
        assert_eq!(r.info.as_deref(), Some("Thanks for shopping"));
        assert_eq!(r.customer_email.as_deref(), Some("taufik@example.com"));
        assert_eq!(r.receipt_footer.as_deref(), Some("Terima kasih"));
    }

    fn err(body: &str) -> String {
        parse_generate(body.as_bytes(), SimChannel::Indomaret).unwrap_err()
    }

    #[test]
    fn refuses_wrong_types_and_limits() {
        let base = r#"{"order":{"invoice_number":"I","amount":1},"online_to_offline_info":{"reusable_status":false},"customer":{"name":"N"}}"#;
        assert!(parse_generate(base.as_bytes(), SimChannel::Indomaret).is_ok());
        let cases = [
            (r#""amount":1"#, r#""amount":"1""#, "order.amount"),
            (r#""amount":1"#, r#""amount":1.0"#, "order.amount"),
            (r#""amount":1"#, r#""amount":0"#, "order.amount"),
            (r#""amount":1"#, r#""amount":-5"#, "order.amount"),
            (r#""amount":1"#, r#""amount":1000000000000"#, "order.amount"),
            (
                r#""reusable_status":false"#,
                r#""reusable_status":"false""#,
                "reusable_status",
            ),
            (
                r#""reusable_status":false"#,
                r#""reusable_status":null"#,
                "reusable_status",
            ),
            (r#""name":"N""#, r#""name":"""#, "customer.name"),
            (r#""name":"N""#, r#""name":7"#, "customer.name"),
            (
                r#""name":"N""#,
                r#""name":"N","email":"nope""#,
                "customer.email",
            ),
            (
                r#""name":"N""#,
                r#""name":"N","phone":"1""#,
                "customer.phone",
            ),
            (
                r#""invoice_number":"I""#,
                r#""invoice_number":"I 1""#,
                "invoice_number",
            ),
            (
                r#""reusable_status":false"#,
                r#""reusable_status":false,"expired_time":100000000"#,
                "expired_time",
            ),
            (
                r#""reusable_status":false"#,
                r#""reusable_status":false,"expired_time":"60""#,
                "expired_time",
            ),
        ];
        for (from, to, field) in cases {
            let body = base.replace(from, to);
            let e = err(&body);
            assert!(e.contains(field), "{body}: {e}");
        }
        assert!(err("{").contains("Invalid JSON"));
        assert!(err("[]").contains("object"));
        let long = format!(
            r#"{{"order":{{"invoice_number":"{}","amount":1}},"online_to_offline_info":{{"reusable_status":true}},"customer":{{"name":"N"}}}}"#,
            "x".repeat(65)
        );
        assert!(err(&long).contains("at most 64"));
        let ok = long.replace(&"x".repeat(65), &"x".repeat(64));
        assert!(parse_generate(ok.as_bytes(), SimChannel::Indomaret).is_ok());
    }

    #[test]
    fn date_formats() {
        let t = time::macros::datetime!(2023-05-29 02:05:10 UTC);
        assert_eq!(iso_utc(t), "2023-05-29T02:05:10Z");
        assert_eq!(compact_wib(t), "20230529090510");
        assert_eq!(parse_request_timestamp("2023-05-29T02:05:10Z"), Some(t));
        for bad in [
            "2023-05-29T02:05:10.000Z",
            "2023-05-29T02:05:10+00:00",
            "2023-05-29 02:05:10Z",
            "2023-13-29T02:05:10Z",
            "+023-05-29T02:05:10Z",
            "",
        ] {
            assert_eq!(parse_request_timestamp(bad), None, "{bad}");
        }
    }
}
