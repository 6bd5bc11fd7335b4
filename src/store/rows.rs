//! What the SQL backends share about rows: the shapes both schemas return, their decoding
//! into domain types (a value this version cannot read is [`StoreError::Corrupt`]), the column
//! lists and `SELECT`s built from them, the time encoding and the error mapping.

use time::OffsetDateTime;

use super::{AttemptRejection, PaymentRecord, RejectedAttempt, StoreError, StoredRequest};
use crate::payment::{
    Amount, Channel, Event, EventSource, InvoiceNumber, Payment, PaymentCode, PaymentInstruction,
    PaymentStatus,
};

/// Columns of `payments`, in the order of [`PaymentRow`], for `SELECT` and `RETURNING`.
macro_rules! payment_columns {
    () => {
        "invoice, amount, channel, payment_code, status, create_time, expire_time, pay_time, \
         how_to_pay_url, how_to_pay_api_url, reusable, fingerprint, idempotency_key, \
         doku_request_id, doku_request_body, attempt_lease_until, next_check_at, check_count, \
         rejected_http_status, rejected_message, outcome_unknown, trace_context, instructions"
    };
}
pub(super) use payment_columns;

/// Columns of `events`, in the order of [`EventRow`].
macro_rules! event_columns {
    () => {
        "seq, invoice, status, amount, payment_code, channel, occur_time, source, doku_request_id"
    };
}
pub(super) use event_columns;

/// A `payments` row as stored. Times are unix seconds.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct PaymentRow {
    pub(super) invoice: String,
    pub(super) amount: i64,
    pub(super) channel: String,
    pub(super) payment_code: Option<String>,
    pub(super) status: String,
    pub(super) create_time: i64,
    pub(super) expire_time: i64,
    pub(super) pay_time: Option<i64>,
    pub(super) how_to_pay_url: Option<String>,
    pub(super) how_to_pay_api_url: Option<String>,
    pub(super) reusable: bool,
    pub(super) fingerprint: String,
    pub(super) idempotency_key: Option<String>,
    pub(super) doku_request_id: Option<String>,
    pub(super) doku_request_body: Option<Vec<u8>>,
    pub(super) attempt_lease_until: Option<i64>,
    pub(super) next_check_at: Option<i64>,
    pub(super) check_count: i64,
    pub(super) rejected_http_status: Option<i64>,
    pub(super) rejected_message: Option<String>,
    pub(super) outcome_unknown: bool,
    pub(super) trace_context: Option<String>,
    pub(super) instructions: Option<String>,
}

impl TryFrom<PaymentRow> for PaymentRecord {
    type Error = StoreError;

    fn try_from(row: PaymentRow) -> Result<Self, StoreError> {
        let invoice = invoice(&row.invoice)?;
        let at = |field: &str, secs: i64| from_unix(&invoice, field, secs);
        let doku_request = match (row.doku_request_id, row.doku_request_body) {
            (Some(request_id), Some(body)) => Some(StoredRequest { request_id, body }),
            (None, None) => None,
            _ => {
                return Err(corrupt(
                    &invoice,
                    "doku_request_id and doku_request_body are not both set",
                ));
            }
        };
        let payment = Payment {
            amount: amount(&invoice, row.amount)?,
            channel: channel(&invoice, &row.channel)?,
            payment_code: row
                .payment_code
                .as_deref()
                .map(|c| code(&invoice, c))
                .transpose()?,
            status: status(&invoice, &row.status)?,
            create_time: at("create_time", row.create_time)?,
            expire_time: at("expire_time", row.expire_time)?,
            pay_time: row.pay_time.map(|s| at("pay_time", s)).transpose()?,
            how_to_pay_url: row.how_to_pay_url,
            how_to_pay_api_url: row.how_to_pay_api_url,
            reusable: row.reusable,
            instructions: instructions_from_json(&invoice, row.instructions.as_deref())?,
            invoice: invoice.clone(),
        };
        Ok(PaymentRecord {
            fingerprint: row.fingerprint,
            idempotency_key: row.idempotency_key,
            doku_request,
            attempt_lease_until: row
                .attempt_lease_until
                .map(|s| at("attempt_lease_until", s))
                .transpose()?,
            next_check_at: row
                .next_check_at
                .map(|s| at("next_check_at", s))
                .transpose()?,
            check_count: u32::try_from(row.check_count)
                .map_err(|_| corrupt(&invoice, "check_count out of range"))?,
            rejection: match row.rejected_http_status {
                None => None,
                Some(status) => Some(AttemptRejection {
                    http_status: u16::try_from(status)
                        .map_err(|_| corrupt(&invoice, "rejected_http_status out of range"))?,
                    message: row.rejected_message.unwrap_or_default(),
                }),
            },
            outcome_unknown: row.outcome_unknown,
            trace_context: row.trace_context,
            payment,
        })
    }
}

/// Columns of `payment_attempts`, in the order of [`AttemptRow`].
macro_rules! attempt_columns {
    () => {
        "doku_request_id, fingerprint, idempotency_key, request_body, http_status, message, \
         ended_at"
    };
}
pub(super) use attempt_columns;

/// `SELECT` of the payment of invoice `$1`, followed by `$suffix` (a lock clause, or `""`).
macro_rules! payment_of_invoice {
    ($suffix:literal) => {
        concat!(
            "SELECT ",
            $crate::store::rows::payment_columns!(),
            " FROM payments WHERE invoice = $1",
            $suffix
        )
    };
}
pub(super) use payment_of_invoice;

/// `SELECT` of the `payment_attempts` of invoice `$1` by `ended_at`, then `$tiebreak`.
macro_rules! attempts_of_invoice {
    ($tiebreak:literal) => {
        concat!(
            "SELECT ",
            $crate::store::rows::attempt_columns!(),
            " FROM payment_attempts WHERE invoice = $1 ORDER BY ended_at, ",
            $tiebreak
        )
    };
}
pub(super) use attempts_of_invoice;

/// SQL condition (on `payments`) of [`PaymentRecord::rejected_draft`]; both backends use it
/// so that the replacement statement and the Rust predicate agree. `outcome_unknown` is
/// compared as `= FALSE`, which SQLite reads as `= 0`.
macro_rules! rejected_draft {
    () => {
        "rejected_http_status IS NOT NULL AND payment_code IS NULL AND status = 'PENDING' \
         AND outcome_unknown = FALSE"
    };
}
pub(super) use rejected_draft;

/// `verdict_detail` of a notification withheld as an undated repeat PAID.
pub(super) const UNDATED_REPEAT_DETAIL: &str = "PAID without transaction.date on a reusable \
     code already PAID: cannot be told from a redelivery under a new Request-Id; not emitted";

/// A `payment_attempts` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AttemptRow {
    pub(super) doku_request_id: String,
    pub(super) fingerprint: String,
    pub(super) idempotency_key: Option<String>,
    pub(super) request_body: Vec<u8>,
    pub(super) http_status: i64,
    pub(super) message: String,
    pub(super) ended_at: i64,
}

impl TryFrom<AttemptRow> for RejectedAttempt {
    type Error = StoreError;

    fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
        let bad = |what: &str| {
            StoreError::Corrupt(format!("payment_attempts {}: {what}", row.doku_request_id))
        };
        Ok(RejectedAttempt {
            rejection: AttemptRejection {
                http_status: u16::try_from(row.http_status)
                    .map_err(|_| bad("http_status out of range"))?,
                message: row.message.clone(),
            },
            rejected_at: OffsetDateTime::from_unix_timestamp(row.ended_at)
                .map_err(|_| bad("ended_at is not a time"))?,
            request_id: row.doku_request_id,
            fingerprint: row.fingerprint,
            idempotency_key: row.idempotency_key,
            body: row.request_body,
        })
    }
}

/// An `events` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    pub(super) seq: i64,
    pub(super) invoice: String,
    pub(super) status: String,
    pub(super) amount: i64,
    pub(super) payment_code: Option<String>,
    pub(super) channel: String,
    pub(super) occur_time: i64,
    pub(super) source: String,
    pub(super) doku_request_id: Option<String>,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        let invoice = invoice(&row.invoice)?;
        Ok(Event {
            seq: u64::try_from(row.seq)
                .map_err(|_| StoreError::Corrupt(format!("events.seq {} is negative", row.seq)))?,
            status: status(&invoice, &row.status)?,
            amount: amount(&invoice, row.amount)?,
            payment_code: row
                .payment_code
                .as_deref()
                .map(|c| code(&invoice, c))
                .transpose()?,
            channel: channel(&invoice, &row.channel)?,
            occur_time: from_unix(&invoice, "occur_time", row.occur_time)?,
            source: EventSource::parse(&row.source)
                .ok_or_else(|| corrupt(&invoice, &format!("unknown source {:?}", row.source)))?,
            doku_request_id: row.doku_request_id,
            invoice,
        })
    }
}

/// Decodes a list of rows, failing on the first that cannot be read.
pub(super) fn decode_all<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// How a time is stored: whole unix seconds, UTC (DOKU's times are whole seconds too; a
/// sub-second part is dropped).
pub(super) fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// The current time as stored, for `updated_at` / `recorded_at` / `received_at` columns.
pub(super) fn unix_now() -> i64 {
    unix(OffsetDateTime::now_utc())
}

/// Converts a stored count or seq (never negative in practice) to the trait's unsigned type.
pub(super) fn unsigned(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

/// Converts a trait-level count or seq to the database's signed 64-bit integer, saturating
/// (a seq above `i64::MAX` can never exist, so the saturated query has the same answer).
pub(super) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Maps a driver error: what lies outside the data (I/O, pool exhausted or closed, a
/// database error the backend's `outside_data` recognises: locked, disk full, read-only,
/// connection lost) is [`StoreError::Unavailable`]; everything else is a row or statement
/// this version cannot handle, i.e. a bug or a foreign writer: [`StoreError::Corrupt`].
pub(super) fn store_error(
    e: sqlx::Error,
    outside_data: fn(&dyn sqlx::error::DatabaseError) -> bool,
) -> StoreError {
    use sqlx::Error as E;
    let unavailable = match &e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::InvalidSavePointStatement
        | E::BeginFailed
        | E::Configuration(_) => true,
        E::Database(db) => outside_data(db.as_ref()),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Corrupt(e.to_string())
    }
}

/// `payments.instructions` as stored: a JSON array of `{"channel", "language", "steps"}`
/// (this module's format, not DOKU's); NULL when there are none.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredInstruction {
    channel: String,
    language: String,
    steps: Vec<String>,
}

/// The `instructions` column for `list`: `None` (NULL) when it is empty.
pub(super) fn instructions_json(list: &[PaymentInstruction]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    let stored: Vec<StoredInstruction> = list
        .iter()
        .map(|i| StoredInstruction {
            channel: i.channel.clone(),
            language: i.language.clone(),
            steps: i.steps.clone(),
        })
        .collect();
    Some(serde_json::to_string(&stored).expect("strings serialize"))
}

fn instructions_from_json(
    invoice: &InvoiceNumber,
    json: Option<&str>,
) -> Result<Vec<PaymentInstruction>, StoreError> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredInstruction> =
        serde_json::from_str(json).map_err(|_| corrupt(invoice, "instructions are not JSON"))?;
    Ok(stored
        .into_iter()
        .map(|i| PaymentInstruction {
            channel: i.channel,
            language: i.language,
            steps: i.steps,
        })
        .collect())
}

fn corrupt(invoice: &InvoiceNumber, what: &str) -> StoreError {
    StoreError::Corrupt(format!("payment {invoice}: {what}"))
}

fn invoice(s: &str) -> Result<InvoiceNumber, StoreError> {
    InvoiceNumber::parse(s).map_err(|e| StoreError::Corrupt(format!("invoice {s:?} {e}")))
}

fn amount(invoice: &InvoiceNumber, rupiah: i64) -> Result<Amount, StoreError> {
    Amount::new(rupiah).map_err(|e| corrupt(invoice, &format!("amount {rupiah} {e}")))
}

fn code(invoice: &InvoiceNumber, s: &str) -> Result<PaymentCode, StoreError> {
    PaymentCode::parse(s).map_err(|e| corrupt(invoice, &e))
}

fn status(invoice: &InvoiceNumber, s: &str) -> Result<PaymentStatus, StoreError> {
    PaymentStatus::parse(s).ok_or_else(|| corrupt(invoice, &format!("unknown status {s:?}")))
}

fn channel(invoice: &InvoiceNumber, s: &str) -> Result<Channel, StoreError> {
    Channel::parse(s).ok_or_else(|| corrupt(invoice, &format!("unknown channel {s:?}")))
}

pub(super) fn from_unix(
    invoice: &InvoiceNumber,
    field: &str,
    secs: i64,
) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| corrupt(invoice, &format!("{field} {secs} is not a time")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_values_are_corrupt() {
        let inv = InvoiceNumber::parse("INV-1").unwrap();
        assert!(matches!(
            status(&inv, "SETTLED"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(amount(&inv, 0), Err(StoreError::Corrupt(_))));
        assert!(matches!(invoice("a b"), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            from_unix(&inv, "pay_time", i64::MAX),
            Err(StoreError::Corrupt(_))
        ));
    }
}
