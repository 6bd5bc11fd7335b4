//! What can go wrong talking to DOKU, sorted by what the caller must do about it: retry later
//! ([`DokuError::Unavailable`]), recover a possibly issued code by replaying the same request
//! ([`DokuError::OutcomeUnknown`]), fix the configuration ([`DokuError::AuthRejected`]), or
//! change the request ([`DokuError::Rejected`]).
//!
//! No variant ever holds the secret key or a signature; DOKU's raw bodies are kept so that the
//! place that logs the error can show exactly what DOKU said.

use std::time::Duration;

/// The result of a DOKU call that did not produce the answer the caller wanted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DokuError {
    /// Never processed as far as we know: connect errors, 5xx, 429 on every attempt.
    #[error("DOKU is unavailable: {detail}")]
    Unavailable {
        /// What the last attempt saw.
        detail: String,
        /// DOKU's last numeric `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// A request may have reached DOKU (timeout after sending, connection dropped mid-answer,
    /// unreadable 2xx body): whether a code was issued is unknown.
    #[error("DOKU's outcome is unknown: {detail}")]
    OutcomeUnknown {
        /// Why the outcome is unknown.
        detail: String,
    },
    /// 401/403: DOKU rejected our Client-Id/signature. `body` = DOKU's raw body.
    #[error("DOKU rejected the sidecar's credentials (HTTP {http_status})")]
    AuthRejected {
        /// 401 or 403.
        http_status: u16,
        /// DOKU's raw body, for the operator's log.
        body: String,
    },
    /// Other 4xx: DOKU refused the request.
    #[error("DOKU rejected the request (HTTP {http_status}): {message}")]
    Rejected {
        /// DOKU's HTTP status.
        http_status: u16,
        /// DOKU's own message, extracted from `error.message`, `message` or `error_messages`;
        /// a generic text when the body has none.
        message: String,
        /// DOKU's raw body, for the operator's log.
        body: String,
    },
    /// Check Status: DOKU does not know the invoice (404).
    #[error("DOKU does not know this invoice")]
    NotFound {
        /// DOKU's raw body, for the operator's log.
        body: String,
    },
}

/// Why a [`crate::doku::DokuClient`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid DOKU client configuration: {0}")]
pub struct ConfigError(pub(crate) String);
