//! The domain error of the sidecar's operations, independent of gRPC.
//!
//! Every variant has an external message (short and safe: what a caller sees) through
//! `Display`, and the detail an operator needs goes to the log where the error is raised.
//! `grpc::status` is the one place that maps these to gRPC codes and error details.

use std::time::Duration;

use crate::payment::{FieldViolation, InvoiceNumber};

/// What went wrong with a caller's request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more fields are invalid; every violation is listed.
    #[error("invalid request: {} field(s) violate DOKU's limits", .0.len())]
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
    /// The resume token points before the retained event log.
    #[error("resume token is older than the retained event log; resubscribe and GetStatus")]
    ResumeTokenExpired {
        /// The oldest position that can still be resumed from.
        oldest: u64,
    },
    /// The subscriber fell too far behind; it should resume with its last token.
    #[error("stream buffer overflowed; resume with your last token")]
    SlowSubscriber,
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
            Self::ResumeTokenExpired { .. } => "RESUME_TOKEN_EXPIRED",
            Self::SlowSubscriber => "SLOW_SUBSCRIBER",
            Self::TooManyCalls { .. } => "TOO_MANY_CALLS",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Internal => "INTERNAL",
        }
    }
}
