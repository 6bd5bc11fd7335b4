//! The domain error of the sidecar's operations, independent of gRPC.
//!
//! Every variant has an external message (short and safe: what a caller sees) through
//! `Display`, and the detail an operator needs goes to the log where the error is raised.
//! `grpc::status` is the one place that maps these to gRPC codes and error details.
//!
//! What the outside systems report is mapped to the domain here too, once: a
//! [`StoreError`] through `From` (so `?` works in the domain service) and a [`DokuError`]
//! through [`Error::from_doku`]. Both log the detail an operator needs as they map it.

use std::time::Duration;

use crate::{
    doku::DokuError,
    payment::{FieldViolation, InvoiceNumber},
    store::StoreError,
};

/// How long a caller waits before retrying after DOKU was unavailable, when DOKU did not say.
pub const RETRY_AFTER_DOKU: Duration = Duration::from_secs(2);

/// What went wrong with a caller's request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more fields are invalid; every violation is listed (in the `BadRequest`, which
    /// says for each field what is wrong: missing, too long, outside DOKU's limits…).
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The invoice already has a payment created with different parameters.
    #[error("invoice {invoice} already has a payment code created with different parameters")]
    InvoiceExists {
        /// The invoice.
        invoice: InvoiceNumber,
    },
    /// The idempotency key was used before for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused {
        /// The invoice the key belongs to.
        invoice: InvoiceNumber,
    },
    /// Another call for the same payment is talking to DOKU right now.
    #[error("another request for invoice {invoice} is in progress; retry shortly")]
    InFlight {
        /// The invoice.
        invoice: InvoiceNumber,
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// No payment for this invoice.
    #[error("no payment for invoice {invoice}")]
    PaymentNotFound {
        /// The invoice.
        invoice: InvoiceNumber,
    },
    /// DOKU could not be reached or answered 5xx/429 after retries; nothing was created.
    #[error("DOKU is unavailable; retry later")]
    DokuUnavailable {
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// DOKU may or may not have issued a code; the payment is PENDING without a code and a
    /// retry of the same request recovers the code DOKU issued.
    #[error("DOKU's answer for invoice {invoice} was lost; retry the same request to recover it")]
    DokuOutcomeUnknown {
        /// The invoice.
        invoice: InvoiceNumber,
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// DOKU rejected our credentials or signature: the operator must fix the configuration.
    #[error("DOKU rejected the sidecar's credentials; the operator must fix its configuration")]
    DokuAuthRejected,
    /// DOKU refused the request.
    #[error("DOKU rejected the request: {message}")]
    DokuRejected {
        /// DOKU's HTTP status.
        http_status: u16,
        /// DOKU's message, as far as it could be extracted (safe: DOKU's own words about the
        /// request, never the secret).
        message: String,
    },
    /// The resume token is not one this sidecar issued.
    #[error("resume token is malformed")]
    ResumeTokenInvalid,
    /// The resume token is well formed but names a position the event log has not reached:
    /// it is from another store (a new or restored database, another deployment).
    #[error(
        "resume token is ahead of this sidecar's event log; reopen from the oldest event or \
         from now, and GetStatus the open invoices"
    )]
    ResumeTokenAhead {
        /// The newest position of the log.
        last: u64,
    },
    /// The resume token points before the retained event log.
    #[error("resume token is older than the retained event log; resubscribe and GetStatus")]
    ResumeTokenExpired {
        /// The oldest position that can still be resumed from.
        oldest: u64,
    },
    /// The sidecar is draining for shutdown: open streams end with this, and the caller
    /// resumes with its last token (on this replica after the restart, or on another).
    #[error("sidecar is shutting down; resume with your last token")]
    ShuttingDown,
    /// The connection already has as many calls in flight (streams included) as it may.
    #[error("too many calls in flight on this connection (limit {limit}); retry shortly")]
    TooManyCalls {
        /// Calls in flight allowed per connection.
        limit: usize,
    },
    /// As many `StreamNotifications` are open as the sidecar allows.
    #[error("too many open notification streams (limit {limit}); retry shortly")]
    TooManyStreams {
        /// Open streams allowed.
        limit: usize,
    },
    /// The store cannot be reached.
    #[error("payment store unavailable; retry later")]
    StoreUnavailable,
    /// The caller did not present the configured bearer token.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// A bug or corrupt state; details are in the log.
    #[error("internal error")]
    Internal,
}

impl Error {
    /// [`Error::reason`] in lower case, for the `outcome` label of metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_field",
            Self::InvoiceExists { .. } => "invoice_exists",
            Self::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Self::InFlight { .. } => "request_in_flight",
            Self::PaymentNotFound { .. } => "payment_not_found",
            Self::DokuUnavailable { .. } => "doku_unavailable",
            Self::DokuOutcomeUnknown { .. } => "doku_outcome_unknown",
            Self::DokuAuthRejected => "doku_auth_rejected",
            Self::DokuRejected { .. } => "doku_rejected",
            Self::ResumeTokenInvalid => "resume_token_invalid",
            Self::ResumeTokenAhead { .. } => "resume_token_ahead",
            Self::ResumeTokenExpired { .. } => "resume_token_expired",
            Self::ShuttingDown => "shutting_down",
            Self::TooManyCalls { .. } => "too_many_calls",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::StoreUnavailable => "store_unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::Internal => "internal",
        }
    }

    /// The stable UPPER_SNAKE_CASE reason of this error (the gRPC `ErrorInfo.reason` and the
    /// `outcome` label of metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_FIELD",
            Self::InvoiceExists { .. } => "INVOICE_EXISTS",
            Self::IdempotencyKeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            Self::InFlight { .. } => "REQUEST_IN_FLIGHT",
            Self::PaymentNotFound { .. } => "PAYMENT_NOT_FOUND",
            Self::DokuUnavailable { .. } => "DOKU_UNAVAILABLE",
            Self::DokuOutcomeUnknown { .. } => "DOKU_OUTCOME_UNKNOWN",
            Self::DokuAuthRejected => "DOKU_AUTH_REJECTED",
            Self::DokuRejected { .. } => "DOKU_REJECTED",
            Self::ResumeTokenInvalid => "RESUME_TOKEN_INVALID",
            Self::ResumeTokenAhead { .. } => "RESUME_TOKEN_AHEAD",
            Self::ResumeTokenExpired { .. } => "RESUME_TOKEN_EXPIRED",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::TooManyCalls { .. } => "TOO_MANY_CALLS",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Internal => "INTERNAL",
        }
    }
}

/// Violations named in the message at most; the `BadRequest` lists them all. The message
/// travels in the `grpc-message` trailer, which peers bound (often to 8–16 KiB).
const MESSAGE_VIOLATIONS: usize = 5;

/// The first violations as "field description" (`invoice_number is required; amount must be
/// greater than 0`), then how many more: the caller's own fields, safe to show.
fn describe(violations: &[FieldViolation]) -> String {
    if violations.is_empty() {
        return "invalid fields".into();
    }
    let mut text = violations
        .iter()
        .take(MESSAGE_VIOLATIONS)
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(more) = violations
        .len()
        .checked_sub(MESSAGE_VIOLATIONS)
        .filter(|&n| n > 0)
    {
        text.push_str(&format!("; and {more} more (see BadRequest)"));
    }
    text
}

impl From<StoreError> for Error {
    /// The store's failure as a caller sees it: unavailable (retry) or internal. The detail
    /// is logged here and never reaches the caller.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "store unavailable");
                Self::StoreUnavailable
            }
            other => {
                tracing::error!(error = %other, "store error");
                Self::Internal
            }
        }
    }
}

impl Error {
    /// DOKU's failure as a caller sees it, for a call about `invoice` (`None` when the call
    /// was not about one payment). DOKU's raw body and the transport detail are logged here.
    pub fn from_doku(e: DokuError, invoice: Option<InvoiceNumber>) -> Self {
        match e {
            DokuError::Unavailable {
                detail,
                retry_after,
            } => {
                tracing::warn!(%detail, "DOKU unavailable");
                Self::DokuUnavailable {
                    retry_after: retry_after.unwrap_or(RETRY_AFTER_DOKU),
                }
            }
            DokuError::OutcomeUnknown { detail } => {
                tracing::warn!(%detail, "DOKU outcome unknown; the stored request will be replayed");
                match invoice {
                    Some(invoice) => Self::DokuOutcomeUnknown {
                        invoice,
                        retry_after: RETRY_AFTER_DOKU,
                    },
                    None => Self::DokuUnavailable {
                        retry_after: RETRY_AFTER_DOKU,
                    },
                }
            }
            DokuError::AuthRejected { http_status, body } => {
                tracing::error!(
                    http_status,
                    %body,
                    "DOKU REJECTED OUR CREDENTIALS: check --doku-client-id, the secret key file and --doku-base-url"
                );
                Self::DokuAuthRejected
            }
            DokuError::Rejected {
                http_status,
                message,
                body,
            } => {
                tracing::warn!(http_status, %body, "DOKU rejected the request");
                Self::DokuRejected {
                    http_status,
                    message,
                }
            }
            DokuError::NotFound { body } => {
                tracing::warn!(%body, "DOKU does not know the invoice");
                match invoice {
                    Some(invoice) => Self::PaymentNotFound { invoice },
                    None => Self::Internal,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_its_reason_in_lower_case() {
        let invoice = || InvoiceNumber::parse("INV-1").unwrap();
        let wait = Duration::from_secs(1);
        let all = [
            Error::InvalidArgument(vec![]),
            Error::InvoiceExists { invoice: invoice() },
            Error::IdempotencyKeyReused { invoice: invoice() },
            Error::InFlight {
                invoice: invoice(),
                retry_after: wait,
            },
            Error::PaymentNotFound { invoice: invoice() },
            Error::DokuUnavailable { retry_after: wait },
            Error::DokuOutcomeUnknown {
                invoice: invoice(),
                retry_after: wait,
            },
            Error::DokuAuthRejected,
            Error::DokuRejected {
                http_status: 400,
                message: String::new(),
            },
            Error::ResumeTokenInvalid,
            Error::ResumeTokenAhead { last: 1 },
            Error::ResumeTokenExpired { oldest: 1 },
            Error::ShuttingDown,
            Error::TooManyCalls { limit: 1 },
            Error::TooManyStreams { limit: 1 },
            Error::StoreUnavailable,
            Error::Unauthenticated,
            Error::Internal,
        ];
        for e in all {
            assert_eq!(e.label(), e.reason().to_ascii_lowercase(), "{e:?}");
        }
    }

    #[test]
    fn invalid_argument_names_the_fields_and_what_is_wrong() {
        let e = Error::InvalidArgument(vec![FieldViolation::new("invoice_number", "is required")]);
        assert_eq!(e.to_string(), "invalid request: invoice_number is required");
        let many: Vec<_> = (0..1000)
            .map(|i| FieldViolation::new(format!("invoice_numbers[{i}]"), "is not valid"))
            .collect();
        let text = Error::InvalidArgument(many).to_string();
        assert!(text.ends_with("; and 995 more (see BadRequest)"), "{text}");
        assert!(text.len() < 300, "{text}");
    }
}
