//! The one table that maps domain errors to gRPC statuses with rich error details
//! (`google.rpc.ErrorInfo` always, `BadRequest` for invalid fields, `RetryInfo` where a retry
//! helps). The message is the error's short external text; details for operators were logged
//! where the error arose.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// `ErrorInfo.domain` of every error the sidecar returns.
pub const ERROR_DOMAIN: &str = "o2o-sidecar";

fn meta<const N: usize>(pairs: [(&str, String); N]) -> HashMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Converts a domain error into the gRPC status a caller sees.
pub fn to_status(err: Error) -> Status {
    let message = err.to_string();
    let mut details = ErrorDetails::new();
    let reason = err.reason();
    let (code, metadata) = match &err {
        Error::InvalidArgument(violations) => {
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            let fields = violations
                .iter()
                .map(|v| v.field.as_str())
                .collect::<Vec<_>>()
                .join(",");
            (Code::InvalidArgument, meta([("fields", fields)]))
        }
        Error::InvoiceExists { invoice } => (
            Code::AlreadyExists,
            meta([("invoice_number", invoice.to_string())]),
        ),
        Error::IdempotencyKeyReused { invoice } => (
            Code::FailedPrecondition,
            meta([("invoice_number", invoice.to_string())]),
        ),
        Error::InFlight {
            invoice,
            retry_after,
        } => {
            details.set_retry_info(Some(*retry_after));
            (
                Code::Aborted,
                meta([("invoice_number", invoice.to_string())]),
            )
        }
        Error::PaymentNotFound { invoice } => (
            Code::NotFound,
            meta([("invoice_number", invoice.to_string())]),
        ),
        Error::DokuUnavailable { retry_after } => {
            details.set_retry_info(Some(*retry_after));
            (Code::Unavailable, HashMap::new())
        }
        Error::DokuOutcomeUnknown {
            invoice,
            retry_after,
        } => {
            details.set_retry_info(Some(*retry_after));
            (
                Code::Unavailable,
                meta([("invoice_number", invoice.to_string())]),
            )
        }
        Error::DokuAuthRejected => (Code::Internal, HashMap::new()),
        Error::DokuRejected { http_status, .. } => {
            // 400 and 422 are about the request's content; any other 4xx is about state at
            // DOKU (a Request-Id it has seen, a conflict), which a corrected request won't fix.
            let code = if matches!(http_status, 400 | 422) {
                Code::InvalidArgument
            } else {
                Code::FailedPrecondition
            };
            (code, meta([("doku_http_status", http_status.to_string())]))
        }
        Error::ResumeTokenInvalid => (Code::InvalidArgument, HashMap::new()),
        // Past the end of the log: OUT_OF_RANGE, like a read past the end of a file.
        Error::ResumeTokenAhead { last } => (
            Code::OutOfRange,
            meta([("last_event_id", last.to_string())]),
        ),
        Error::ResumeTokenExpired { oldest } => (
            Code::OutOfRange,
            meta([("oldest_event_id", oldest.to_string())]),
        ),
        Error::ShuttingDown => {
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            (Code::Unavailable, HashMap::new())
        }
        Error::TooManyCalls { limit } | Error::TooManyStreams { limit } => {
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            (
                Code::ResourceExhausted,
                meta([("limit", limit.to_string())]),
            )
        }
        Error::StoreUnavailable => {
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            (Code::Unavailable, HashMap::new())
        }
        Error::Unauthenticated => (Code::Unauthenticated, HashMap::new()),
        Error::Internal => (Code::Internal, HashMap::new()),
    };
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{FieldViolation, InvoiceNumber};

    #[test]
    fn invalid_argument_lists_every_field() {
        let status = to_status(Error::InvalidArgument(vec![
            FieldViolation::new("amount", "must be greater than 0"),
            FieldViolation::new("customer.name", "is required"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "INVALID_FIELD");
        assert_eq!(info.domain, ERROR_DOMAIN);
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["amount", "customer.name"]);
    }

    #[test]
    fn outcome_unknown_is_retryable_unavailable() {
        let status = to_status(Error::DokuOutcomeUnknown {
            invoice: InvoiceNumber::parse("INV-1").unwrap(),
            retry_after: std::time::Duration::from_secs(2),
        });
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "DOKU_OUTCOME_UNKNOWN");
        assert_eq!(
            details.error_info().unwrap().metadata["invoice_number"],
            "INV-1"
        );
        assert!(details.retry_info().unwrap().retry_delay.is_some());
    }

    #[test]
    fn auth_rejected_is_internal_and_says_nothing_secret() {
        let status = to_status(Error::DokuAuthRejected);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "DOKU_AUTH_REJECTED"
        );
    }
}
