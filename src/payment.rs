//! Domain types of a payment: invoice numbers, amounts, codes, statuses and events, and the
//! validation of a payment-code request against DOKU's limits.
//!
//! Nothing here knows gRPC, SQL or DOKU's JSON: `grpc/` converts into these types, `store/`
//! persists them and `doku/` translates them to DOKU's wire format.

use std::fmt;

use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// Longest invoice number DOKU accepts.
pub const INVOICE_MAX_LEN: usize = 64;
/// Largest amount: DOKU allows 12 digits.
pub const AMOUNT_MAX: i64 = 999_999_999_999;
/// Expiry used when the caller sets none (DOKU's own default).
pub const DEFAULT_EXPIRY_MINUTES: u32 = 60;
/// DOKU's `expired_time` has at most 8 digits.
pub const EXPIRY_MAX_MINUTES: u32 = 99_999_999;
/// Limits DOKU does not document; chosen so that every value fits what third-party
/// integrations send successfully (names 64, receipt lines 128).
pub const CUSTOMER_NAME_MAX_LEN: usize = 64;
/// See [`CUSTOMER_NAME_MAX_LEN`].
pub const CUSTOMER_EMAIL_MAX_LEN: usize = 128;
/// See [`CUSTOMER_NAME_MAX_LEN`].
pub const INFO_MAX_LEN: usize = 64;
/// See [`CUSTOMER_NAME_MAX_LEN`].
pub const RECEIPT_LINE_MAX_LEN: usize = 128;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 128;

/// An invoice number DOKU accepts and that travels unchanged in DOKU's Check Status path.
///
/// DOKU allows "alphabetic, numeric, special chars" up to 64; we allow the URL-unreserved set
/// (`A-Za-z0-9-_.~`) because the invoice is part of the signed Check Status `Request-Target`,
/// where a character that needs percent-encoding would make the signed path ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvoiceNumber(String);

impl InvoiceNumber {
    /// Validates `s` as an invoice number.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > INVOICE_MAX_LEN {
            return Err(format!("must be at most {INVOICE_MAX_LEN} characters"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
        {
            return Err(format!(
                "contains {c:?}; allowed are A-Z, a-z, 0-9 and - _ . ~"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The invoice number as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InvoiceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount in whole rupiah: positive, at most 12 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    /// Validates an amount in whole rupiah.
    pub fn new(rupiah: i64) -> Result<Self, String> {
        if rupiah <= 0 {
            return Err("must be greater than 0 (whole rupiah)".into());
        }
        if rupiah > AMOUNT_MAX {
            return Err(format!("must be at most {AMOUNT_MAX} (12 digits)"));
        }
        Ok(Self(rupiah))
    }

    /// The amount in whole rupiah.
    pub fn rupiah(self) -> i64 {
        self.0
    }
}

/// A payment code issued by DOKU: the digits a customer tells the cashier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaymentCode(String);

impl PaymentCode {
    /// Validates a code as DOKU issues them: 1 to 32 ASCII digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("payment code {s:?} is not 1 to 32 digits"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PaymentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Status of a payment. Statuses only move forward by [`PaymentStatus::rank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Code issued (or being issued), not paid yet.
    Pending,
    /// DOKU reported a failure; the merchant should create a new code.
    Failed,
    /// The code expired unpaid.
    Expired,
    /// The customer paid.
    Paid,
}

impl PaymentStatus {
    /// Order in which statuses may move: PENDING < FAILED < EXPIRED < PAID (a late PAID wins
    /// over EXPIRED, because money was taken).
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Failed => 1,
            Self::Expired => 2,
            Self::Paid => 3,
        }
    }

    /// Stable text form used in the store and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
            Self::Paid => "PAID",
        }
    }

    /// Lower-case form for metric label values (Prometheus convention), without allocating.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Paid => "paid",
        }
    }

    /// Parses [`PaymentStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "FAILED" => Self::Failed,
            "EXPIRED" => Self::Expired,
            "PAID" => Self::Paid,
            _ => return None,
        })
    }
}

/// Where the customer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Indomaret convenience stores.
    Indomaret,
    /// Alfa Group convenience stores: Alfamart, Alfamidi, Lawson, Dan+Dan.
    Alfa,
}

impl Channel {
    /// Every channel, in the order of the proto enum.
    pub const ALL: [Self; 2] = [Self::Indomaret, Self::Alfa];

    /// Stable text form used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Indomaret => "INDOMARET",
            Self::Alfa => "ALFA",
        }
    }

    /// Parses [`Channel::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the channel's receipt has a description line besides the footer: Indomaret's
    /// has both, Alfa Group's only a footer message.
    pub fn has_receipt_description(self) -> bool {
        match self {
            Self::Indomaret => true,
            Self::Alfa => false,
        }
    }
}

/// How the sidecar learned about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventSource {
    /// A verified DOKU HTTP notification.
    DokuNotification,
    /// DOKU's Check Status API (sweeper or `GetStatus(refresh)`).
    Reconciliation,
}

impl EventSource {
    /// Stable text form used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DokuNotification => "DOKU_NOTIFICATION",
            Self::Reconciliation => "RECONCILIATION",
        }
    }

    /// Lower-case form for metric label values, without allocating.
    pub fn label(self) -> &'static str {
        match self {
            Self::DokuNotification => "doku_notification",
            Self::Reconciliation => "reconciliation",
        }
    }

    /// Parses [`EventSource::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "DOKU_NOTIFICATION" => Some(Self::DokuNotification),
            "RECONCILIATION" => Some(Self::Reconciliation),
            _ => None,
        }
    }
}

/// One invalid field of a request: the proto field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field path as in the proto, e.g. `customer.name`.
    pub field: String,
    /// What is wrong, safe to show to the caller.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A payment-code request as the caller sent it, before validation.
#[derive(Debug, Clone, Default)]
pub struct PaymentCodeInput {
    /// See the proto.
    pub invoice_number: String,
    /// See the proto.
    pub amount: i64,
    /// `None` when the caller sent no `customer` message.
    pub customer_name: Option<String>,
    /// Empty when not given.
    pub customer_email: String,
    /// `(seconds, nanos)` of the proto Duration, `None` when unset.
    pub expiry: Option<(i64, i32)>,
    /// See the proto.
    pub reusable: bool,
    /// See the proto.
    pub info: String,
    /// See the proto.
    pub receipt_description: String,
    /// See the proto.
    pub receipt_footer_message: String,
    /// Empty when not given.
    pub idempotency_key: String,
    /// `None` for CHANNEL_UNSPECIFIED; `Err(raw)` for a value this version does not know.
    pub channel: Option<Result<Channel, i32>>,
    /// Empty when not given.
    pub notification_url: String,
}

/// A validated payment-code request: everything DOKU needs, within DOKU's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    /// The merchant's invoice.
    pub invoice: InvoiceNumber,
    /// Amount in rupiah.
    pub amount: Amount,
    /// Customer name (required by DOKU).
    pub customer_name: String,
    /// Customer e-mail, if given.
    pub customer_email: Option<String>,
    /// Minutes until the code expires.
    pub expiry_minutes: u32,
    /// Whether the code can be paid more than once.
    pub reusable: bool,
    /// Text shown at the counter on inquiry.
    pub info: Option<String>,
    /// Receipt description.
    pub receipt_description: Option<String>,
    /// Receipt footer.
    pub receipt_footer_message: Option<String>,
    /// Caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Payment channel.
    pub channel: Channel,
    /// Per-request notification URL override, if any.
    pub notification_url: Option<String>,
}

fn optional(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn check_text(
    violations: &mut Vec<FieldViolation>,
    field: &str,
    value: &str,
    max: usize,
    required: bool,
) {
    if required && value.trim().is_empty() {
        violations.push(FieldViolation::new(field, "is required"));
    } else if value.chars().count() > max {
        violations.push(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    } else if value.chars().any(char::is_control) {
        violations.push(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
}

fn check_email(violations: &mut Vec<FieldViolation>, value: &str) {
    if value.is_empty() {
        return;
    }
    check_text(
        violations,
        "customer.email",
        value,
        CUSTOMER_EMAIL_MAX_LEN,
        false,
    );
    let well_formed = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
    }) && !value.chars().any(char::is_whitespace);
    if !well_formed {
        violations.push(FieldViolation::new(
            "customer.email",
            "must be an e-mail address like name@example.com",
        ));
    }
}

/// Longest per-request notification URL.
const NOTIFICATION_URL_MAX_LEN: usize = 2048;

/// Checks a per-request notification URL: a plain absolute `http`/`https` URL with a host, an
/// optional port and exactly the configured path; no user info, query, fragment,
/// percent-encoding, backslash, whitespace or dot segments. DOKU requires the override to keep
/// the configured path, and anything a URL parser might read differently from DOKU's (`?`
/// before the path, `#`, `user@host`) would be accepted here and then refused by DOKU.
fn check_notification_url(
    violations: &mut Vec<FieldViolation>,
    value: &str,
    configured_path: &str,
) {
    if value.is_empty() {
        return;
    }
    let field = "notification_url";
    let plain = "must be a plain absolute http:// or https:// URL (host, optional port, path; \
                 no user info, query, fragment or escapes)";
    if value.len() > NOTIFICATION_URL_MAX_LEN {
        violations.push(FieldViolation::new(
            field,
            format!("must be at most {NOTIFICATION_URL_MAX_LEN} characters"),
        ));
        return;
    }
    let Some((scheme, rest)) = value
        .strip_prefix("https://")
        .map(|r| ("https", r))
        .or_else(|| value.strip_prefix("http://").map(|r| ("http", r)))
    else {
        violations.push(FieldViolation::new(field, plain));
        return;
    };
    // The authority ends at the first `/`; everything after it is the path, verbatim.
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority_ok = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    let path_ok = path
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '%' | '\\' | '@'));
    // The `url` crate (through reqwest) confirms that the authority is a valid host and port
    // and that the path is read exactly as written (no dot segments or normalisation).
    let parsed = reqwest::Url::parse(value).ok().filter(|u| {
        u.scheme() == scheme
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
            && (u.path() == path || path.is_empty())
    });
    if !authority_ok || !path_ok || parsed.is_none() {
        violations.push(FieldViolation::new(field, plain));
    } else if path != configured_path {
        violations.push(FieldViolation::new(
            field,
            format!(
                "DOKU requires the same path as the configured notification URL ({configured_path})"
            ),
        ));
    }
}

impl PaymentCodeInput {
    /// Checks every field against DOKU's limits and reports *all* violations at once.
    ///
    /// `notification_path` is the sidecar's configured public notification path, which a
    /// per-request `notification_url` must keep.
    pub fn validate(&self, notification_path: &str) -> Result<NewPayment, Vec<FieldViolation>> {
        let mut v = Vec::new();
        let invoice = InvoiceNumber::parse(&self.invoice_number)
            .map_err(|e| v.push(FieldViolation::new("invoice_number", e)))
            .ok();
        let amount = Amount::new(self.amount)
            .map_err(|e| v.push(FieldViolation::new("amount", e)))
            .ok();
        match &self.customer_name {
            None => v.push(FieldViolation::new("customer", "is required")),
            Some(name) => check_text(&mut v, "customer.name", name, CUSTOMER_NAME_MAX_LEN, true),
        }
        check_email(&mut v, &self.customer_email);
        let expiry_minutes = match self.expiry {
            None => Some(DEFAULT_EXPIRY_MINUTES),
            Some((secs, nanos)) => {
                if nanos != 0 || secs % 60 != 0 {
                    v.push(FieldViolation::new("expiry", "must be whole minutes"));
                    None
                } else if secs < 60 || secs / 60 > i64::from(EXPIRY_MAX_MINUTES) {
                    v.push(FieldViolation::new(
                        "expiry",
                        format!("must be from 1 to {EXPIRY_MAX_MINUTES} minutes"),
                    ));
                    None
                } else {
                    u32::try_from(secs / 60).ok()
                }
            }
        };
        check_text(&mut v, "info", &self.info, INFO_MAX_LEN, false);
        check_text(
            &mut v,
            "receipt.description",
            &self.receipt_description,
            RECEIPT_LINE_MAX_LEN,
            false,
        );
        check_text(
            &mut v,
            "receipt.footer_message",
            &self.receipt_footer_message,
            RECEIPT_LINE_MAX_LEN,
            false,
        );
        if self.idempotency_key.len() > IDEMPOTENCY_KEY_MAX_LEN
            || !self
                .idempotency_key
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b))
        {
            v.push(FieldViolation::new(
                "idempotency_key",
                format!("must be at most {IDEMPOTENCY_KEY_MAX_LEN} printable ASCII characters without spaces"),
            ));
        }
        let channel = match self.channel {
            None => Some(Channel::Indomaret),
            Some(Ok(channel)) => Some(channel),
            Some(Err(raw)) => {
                v.push(FieldViolation::new(
                    "channel",
                    format!("{raw} is not a channel this sidecar supports"),
                ));
                None
            }
        };
        if let Some(channel) = channel
            && !channel.has_receipt_description()
            && !self.receipt_description.is_empty()
        {
            // Never dropped silently: the caller would believe it is printed.
            v.push(FieldViolation::new(
                "receipt.description",
                format!(
                    "must be empty for channel {}: its receipt has no description line, only \
                     receipt.footer_message",
                    channel.as_str()
                ),
            ));
        }
        check_notification_url(&mut v, &self.notification_url, notification_path);

        match (invoice, amount, expiry_minutes, channel) {
            (Some(invoice), Some(amount), Some(expiry_minutes), Some(channel)) if v.is_empty() => {
                Ok(NewPayment {
                    invoice,
                    amount,
                    customer_name: self.customer_name.clone().unwrap_or_default(),
                    customer_email: optional(&self.customer_email),
                    expiry_minutes,
                    reusable: self.reusable,
                    info: optional(&self.info),
                    receipt_description: optional(&self.receipt_description),
                    receipt_footer_message: optional(&self.receipt_footer_message),
                    idempotency_key: optional(&self.idempotency_key),
                    channel,
                    notification_url: optional(&self.notification_url),
                })
            }
            _ => Err(v),
        }
    }
}

impl NewPayment {
    /// A fingerprint of everything that defines the payment (not the idempotency key): two
    /// requests with the same fingerprint are the same request.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |name: &str, value: &str| {
            // Length-prefixed so that no two different requests hash the same input.
            h.update(name.as_bytes());
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        };
        field("invoice", self.invoice.as_str());
        field("amount", &self.amount.rupiah().to_string());
        field("name", &self.customer_name);
        field("email", self.customer_email.as_deref().unwrap_or(""));
        field("expiry", &self.expiry_minutes.to_string());
        field("reusable", if self.reusable { "1" } else { "0" });
        field("info", self.info.as_deref().unwrap_or(""));
        field("desc", self.receipt_description.as_deref().unwrap_or(""));
        field(
            "footer",
            self.receipt_footer_message.as_deref().unwrap_or(""),
        );
        field("channel", self.channel.as_str());
        field("url", self.notification_url.as_deref().unwrap_or(""));
        let digest = h.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A payment as the sidecar knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The merchant's invoice.
    pub invoice: InvoiceNumber,
    /// Amount in rupiah.
    pub amount: Amount,
    /// Payment channel.
    pub channel: Channel,
    /// DOKU's code; `None` while DOKU's answer is not known.
    pub payment_code: Option<PaymentCode>,
    /// Current status.
    pub status: PaymentStatus,
    /// When the code was created (DOKU's time when known, else the sidecar's).
    pub create_time: OffsetDateTime,
    /// When the code expires.
    pub expire_time: OffsetDateTime,
    /// When it was paid.
    pub pay_time: Option<OffsetDateTime>,
    /// DOKU's how-to-pay page.
    pub how_to_pay_url: Option<String>,
    /// DOKU's how-to-pay API.
    pub how_to_pay_api_url: Option<String>,
    /// Whether the code can be paid more than once.
    pub reusable: bool,
    /// How to pay, as data: fetched from the how-to-pay API when the code was issued; empty
    /// when the fetch was not allowed or failed (the URLs above still lead there).
    pub instructions: Vec<PaymentInstruction>,
}

/// One set of steps DOKU gives for paying a code: for one place or way to pay, in one
/// language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentInstruction {
    /// Where or how the steps apply, as DOKU names it (e.g. `INDOMARET`).
    pub channel: String,
    /// The steps' language, as DOKU names it (e.g. `en`, `id`); may be empty.
    pub language: String,
    /// What the customer does, in order: plain text, one step each.
    pub steps: Vec<String>,
}

/// What DOKU answered when it issued a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCode {
    /// The code.
    pub payment_code: PaymentCode,
    /// DOKU's creation time, when it said.
    pub create_time: Option<OffsetDateTime>,
    /// DOKU's expiry time, when it said.
    pub expire_time: Option<OffsetDateTime>,
    /// DOKU's how-to-pay page.
    pub how_to_pay_url: Option<String>,
    /// DOKU's how-to-pay API.
    pub how_to_pay_api_url: Option<String>,
    /// What the how-to-pay API listed, when it was fetched (empty otherwise).
    pub instructions: Vec<PaymentInstruction>,
}

/// A change of a payment's status, as reported by DOKU (notification or Check Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The invoice.
    pub invoice: InvoiceNumber,
    /// The new status.
    pub status: PaymentStatus,
    /// Amount DOKU reported.
    pub amount: Amount,
    /// Code DOKU reported, if any.
    pub payment_code: Option<PaymentCode>,
    /// When it happened according to DOKU (`transaction.date`); `None` when DOKU did not say.
    /// Kept absent rather than defaulted: whether DOKU dated a payment decides whether a
    /// repeated PAID of a reusable code can be told from a redelivery (see [`crate::store`]).
    /// The store records an undated change at the time it learned it.
    pub occur_time: Option<OffsetDateTime>,
    /// How the sidecar learned it.
    pub source: EventSource,
    /// DOKU's notification Request-Id, for notifications.
    pub doku_request_id: Option<String>,
}

impl StatusChange {
    /// When the change happened: DOKU's time, or `learned_at` (when the sidecar learned it)
    /// when DOKU did not say.
    pub fn occurred(&self, learned_at: OffsetDateTime) -> OffsetDateTime {
        self.occur_time.unwrap_or(learned_at)
    }
}

/// What a DOKU message (notification, Check Status answer, Generate answer) says identifies
/// the payment it is about, as DOKU sent it. `None`: the field was absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedIdentity<'a> {
    /// `order.invoice_number`.
    pub invoice_number: Option<&'a str>,
    /// `order.amount` in rupiah.
    pub amount: Option<i64>,
    /// `online_to_offline_info.payment_code`.
    pub payment_code: Option<&'a str>,
}

/// What the sidecar knows identifies one of its payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentIdentity<'a> {
    /// The invoice.
    pub invoice: &'a InvoiceNumber,
    /// The amount requested.
    pub amount: Amount,
    /// The code DOKU issued, once known.
    pub payment_code: Option<&'a PaymentCode>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Payment {
    /// A PENDING Indomaret payment with epoch times, for unit tests and fuzz targets.
    pub fn fixture(invoice: InvoiceNumber, amount: Amount, code: Option<PaymentCode>) -> Self {
        let t = OffsetDateTime::UNIX_EPOCH;
        Self {
            invoice,
            amount,
            channel: Channel::Indomaret,
            payment_code: code,
            status: PaymentStatus::Pending,
            create_time: t,
            expire_time: t,
            pay_time: None,
            how_to_pay_url: None,
            how_to_pay_api_url: None,
            reusable: false,
            instructions: Vec::new(),
        }
    }
}

impl Payment {
    /// The fields a DOKU report must match to be about this payment.
    pub fn identity(&self) -> PaymentIdentity<'_> {
        PaymentIdentity {
            invoice: &self.invoice,
            amount: self.amount,
            payment_code: self.payment_code.as_ref(),
        }
    }
}

/// Whether a report without `order.amount` can still describe a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountRule {
    /// The amount must be present and equal: notifications and Check Status answers, which
    /// move money-relevant state.
    Required,
    /// A present amount must be equal; an absent one is tolerated: DOKU's Generate answer,
    /// whose documented shape (`order: { invoice_number }`) carries no amount.
    IfPresent,
}

/// Why a DOKU report is not about the payment it was compared with. Each has a
/// low-cardinality [`ReportMismatch::reason`] for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportMismatch {
    /// No `order.invoice_number`.
    #[error("order.invoice_number is missing (expected {expected})")]
    InvoiceMissing {
        /// Ours.
        expected: InvoiceNumber,
    },
    /// Another invoice.
    #[error("invoice {reported:?} differs from {expected}")]
    InvoiceMismatch {
        /// DOKU's, as sent.
        reported: String,
        /// Ours.
        expected: InvoiceNumber,
    },
    /// No `order.amount` where one is required.
    #[error("order.amount is missing (expected {})", expected.rupiah())]
    AmountMissing {
        /// Ours.
        expected: Amount,
    },
    /// Another amount.
    #[error("amount {reported} differs from {}", expected.rupiah())]
    AmountMismatch {
        /// DOKU's.
        reported: i64,
        /// Ours.
        expected: Amount,
    },
    /// A payment code that is not a code at all.
    #[error("{0}")]
    CodeInvalid(String),
    /// Another payment code than the one DOKU issued for this payment.
    #[error("payment code {reported} differs from the stored {expected}")]
    CodeMismatch {
        /// DOKU's.
        reported: PaymentCode,
        /// Ours.
        expected: PaymentCode,
    },
}

impl ReportMismatch {
    /// The `reason` label of `o2o_doku_answers_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvoiceMissing { .. } => "invoice_missing",
            Self::InvoiceMismatch { .. } => "invoice_mismatch",
            Self::AmountMissing { .. } => "amount_missing",
            Self::AmountMismatch { .. } => "amount_mismatch",
            Self::CodeInvalid(_) => "code_invalid",
            Self::CodeMismatch { .. } => "code_mismatch",
        }
    }
}

/// The one rule for "this DOKU report describes this payment", used for notifications,
/// Check Status answers (GetStatus refresh and the sweeper) and Generate answers: the same
/// invoice (a missing one is not the same), the same amount (missing is not the same unless
/// `amount_rule` is [`AmountRule::IfPresent`]), and, where DOKU sends a payment code, a valid
/// one equal to the stored code if one is stored. Returns DOKU's code, if it sent one.
pub fn check_report(
    ours: PaymentIdentity<'_>,
    reported: ReportedIdentity<'_>,
    amount_rule: AmountRule,
) -> Result<Option<PaymentCode>, ReportMismatch> {
    match reported.invoice_number {
        None => {
            return Err(ReportMismatch::InvoiceMissing {
                expected: ours.invoice.clone(),
            });
        }
        Some(theirs) if theirs != ours.invoice.as_str() => {
            return Err(ReportMismatch::InvoiceMismatch {
                reported: theirs.to_owned(),
                expected: ours.invoice.clone(),
            });
        }
        Some(_) => {}
    }
    match (reported.amount, amount_rule) {
        (None, AmountRule::Required) => {
            return Err(ReportMismatch::AmountMissing {
                expected: ours.amount,
            });
        }
        (Some(theirs), _) if theirs != ours.amount.rupiah() => {
            return Err(ReportMismatch::AmountMismatch {
                reported: theirs,
                expected: ours.amount,
            });
        }
        _ => {}
    }
    let code = reported
        .payment_code
        .map(PaymentCode::parse)
        .transpose()
        .map_err(ReportMismatch::CodeInvalid)?;
    if let (Some(stored), Some(theirs)) = (ours.payment_code, &code)
        && stored != theirs
    {
        return Err(ReportMismatch::CodeMismatch {
            reported: theirs.clone(),
            expected: stored.clone(),
        });
    }
    Ok(code)
}

/// An event of the log: a committed change of a payment's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Monotonic sequence number; the resume token encodes it.
    pub seq: u64,
    /// The invoice.
    pub invoice: InvoiceNumber,
    /// Status after the event.
    pub status: PaymentStatus,
    /// Amount DOKU reported.
    pub amount: Amount,
    /// Code that was paid.
    pub payment_code: Option<PaymentCode>,
    /// Channel.
    pub channel: Channel,
    /// When it happened.
    pub occur_time: OffsetDateTime,
    /// How the sidecar learned it.
    pub source: EventSource,
    /// DOKU's notification Request-Id, for notifications.
    pub doku_request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> PaymentCodeInput {
        PaymentCodeInput {
            invoice_number: "INV-1".into(),
            amount: 150_000,
            customer_name: Some("Taufik Ismail".into()),
            customer_email: "taufik@example.com".into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_request_gets_defaults() {
        let p = valid().validate("/payments/notifications").unwrap();
        assert_eq!(p.expiry_minutes, 60);
        assert_eq!(p.channel, Channel::Indomaret);
        assert_eq!(p.idempotency_key, None);
    }

    #[test]
    fn every_violation_is_reported() {
        let input = PaymentCodeInput {
            invoice_number: "INV 1/2".into(),
            amount: 0,
            customer_name: None,
            customer_email: "nope".into(),
            expiry: Some((90, 0)),
            info: "x".repeat(65),
            receipt_footer_message: "a\nb".into(),
            idempotency_key: "has space".into(),
            channel: Some(Err(7)),
            notification_url: "https://example.com/other".into(),
            ..Default::default()
        };
        let v = input.validate("/payments/notifications").unwrap_err();
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "invoice_number",
                "amount",
                "customer",
                "customer.email",
                "expiry",
                "info",
                "receipt.footer_message",
                "idempotency_key",
                "channel",
                "notification_url"
            ]
        );
    }

    #[test]
    fn alfa_takes_a_footer_but_no_receipt_description() {
        let mut i = valid();
        i.channel = Some(Ok(Channel::Alfa));
        i.receipt_footer_message = "Terima kasih".into();
        let p = i.validate("/p").unwrap();
        assert_eq!(p.channel, Channel::Alfa);
        assert_eq!(p.receipt_footer_message.as_deref(), Some("Terima kasih"));
        // A description cannot be printed on an Alfa receipt: refused, never dropped.
        i.receipt_description = "ORDER 001".into();
        let v = i.validate("/p").unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "receipt.description");
        assert!(v[0].description.contains("receipt.footer_message"), "{v:?}");
        // Indomaret prints both.
        i.channel = Some(Ok(Channel::Indomaret));
        assert!(i.validate("/p").is_ok());
        // The Alfa footer has Indomaret's limit (DOKU documents none).
        let mut i = valid();
        i.channel = Some(Ok(Channel::Alfa));
        i.receipt_footer_message = "f".repeat(RECEIPT_LINE_MAX_LEN);
        assert!(i.validate("/p").is_ok());
        i.receipt_footer_message.push('f');
        let v = i.validate("/p").unwrap_err();
        assert_eq!(v[0].field, "receipt.footer_message");
    }

    #[test]
    fn channels_round_trip_their_stored_text() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        assert_eq!(Channel::parse("alfa"), None);
    }

    #[test]
    fn limits_are_inclusive() {
        let mut i = valid();
        i.invoice_number = "A".repeat(64);
        i.amount = AMOUNT_MAX;
        i.expiry = Some((i64::from(EXPIRY_MAX_MINUTES) * 60, 0));
        i.customer_name = Some("n".repeat(64));
        assert!(i.validate("/p").is_ok());
        i.invoice_number.push('A');
        i.amount += 1;
        let v = i.validate("/p").unwrap_err();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn notification_url_must_keep_the_path() {
        let mut i = valid();
        i.notification_url = "https://shop.example.com/payments/notifications".into();
        assert!(i.validate("/payments/notifications").is_ok());
        i.notification_url = "ftp://shop.example.com/payments/notifications".into();
        assert!(i.validate("/payments/notifications").is_err());
        i.notification_url = "https:///payments/notifications".into();
        assert!(i.validate("/payments/notifications").is_err());
    }

    #[test]
    fn notification_url_must_be_plain() {
        let path = "/payments/notifications";
        let mut i = valid();
        for ok in [
            "http://h/payments/notifications",
            "https://shop.example.com:8443/payments/notifications",
            "http://[::1]:8080/payments/notifications",
        ] {
            i.notification_url = ok.into();
            assert!(i.validate(path).is_ok(), "{ok}");
        }
        for bad in [
            "http://h?/payments/notifications",
            "http://h#/payments/notifications",
            "http://h/payments/notifications?x=1",
            "http://h/payments/notifications#top",
            "http://user@h/payments/notifications",
            "http://user:pw@h/payments/notifications",
            "http://h@evil.example/payments/notifications",
            "http://h/payments/%6Eotifications",
            "http://h/payments/./notifications",
            "http://h/x/../payments/notifications",
            "http://h\\/payments/notifications",
            "http://h /payments/notifications",
            "http:/h/payments/notifications",
            "HTTP://h/payments/notifications",
            "javascript://h/payments/notifications",
            "http:///payments/notifications",
            "http://h",
            "http://h/",
            "http://h:99999/payments/notifications",
        ] {
            i.notification_url = bad.into();
            let v = i.validate(path).unwrap_err();
            assert_eq!(v.len(), 1, "{bad}");
            assert_eq!(v[0].field, "notification_url", "{bad}");
        }
    }

    #[test]
    fn a_report_must_name_this_payment() {
        let invoice = InvoiceNumber::parse("INV-1").unwrap();
        let code = PaymentCode::parse("123456").unwrap();
        let ours = PaymentIdentity {
            invoice: &invoice,
            amount: Amount::new(10_000).unwrap(),
            payment_code: Some(&code),
        };
        let good = ReportedIdentity {
            invoice_number: Some("INV-1"),
            amount: Some(10_000),
            payment_code: Some("123456"),
        };
        assert_eq!(
            check_report(ours, good, AmountRule::Required),
            Ok(Some(code.clone()))
        );
        let reason =
            |r: ReportedIdentity<'_>, rule| check_report(ours, r, rule).err().map(|e| e.reason());
        use AmountRule::{IfPresent, Required};
        let cases = [
            (
                ReportedIdentity {
                    invoice_number: None,
                    ..good
                },
                Required,
                "invoice_missing",
            ),
            (
                ReportedIdentity {
                    invoice_number: Some("INV-2"),
                    ..good
                },
                IfPresent,
                "invoice_mismatch",
            ),
            (
                ReportedIdentity {
                    invoice_number: Some("inv-1"),
                    ..good
                },
                Required,
                "invoice_mismatch",
            ),
            (
                ReportedIdentity {
                    amount: None,
                    ..good
                },
                Required,
                "amount_missing",
            ),
            (
                ReportedIdentity {
                    amount: Some(10_001),
                    ..good
                },
                IfPresent,
                "amount_mismatch",
            ),
            (
                ReportedIdentity {
                    payment_code: Some("654321"),
                    ..good
                },
                Required,
                "code_mismatch",
            ),
            (
                ReportedIdentity {
                    payment_code: Some("12a"),
                    ..good
                },
                Required,
                "code_invalid",
            ),
        ];
        for (r, rule, want) in cases {
            assert_eq!(reason(r, rule), Some(want), "{r:?}");
        }
        // Tolerated: no amount in a Generate answer; no code in a report; any code when none
        // is stored yet.
        assert!(
            check_report(
                ours,
                ReportedIdentity {
                    amount: None,
                    ..good
                },
                IfPresent
            )
            .is_ok()
        );
        assert_eq!(
            check_report(
                ours,
                ReportedIdentity {
                    payment_code: None,
                    ..good
                },
                Required
            ),
            Ok(None)
        );
        let fresh = PaymentIdentity {
            payment_code: None,
            ..ours
        };
        assert!(
            check_report(
                fresh,
                ReportedIdentity {
                    payment_code: Some("999"),
                    ..good
                },
                Required
            )
            .is_ok()
        );
    }

    #[test]
    fn fingerprint_ignores_idempotency_key_only() {
        let a = valid().validate("/p").unwrap();
        let mut b = a.clone();
        b.idempotency_key = Some("k".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.amount = Amount::new(1).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn status_rank_is_forward_only() {
        use PaymentStatus::*;
        assert!(Pending.rank() < Failed.rank());
        assert!(Failed.rank() < Expired.rank());
        assert!(Expired.rank() < Paid.rank());
        for s in [Pending, Failed, Expired, Paid] {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
    }
}
