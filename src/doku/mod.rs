//! The only code that knows DOKU: its signature, its JSON, its endpoints and its quirks.
//!
//! - [`signature`]: the non-SNAP HMAC-SHA256 signature as pure functions over bytes.
//! - [`types`]: `Doku*` serde wire types and their mapping to domain types.
//! - [`client`]: the signed HTTP client for Generate Payment Code and Check Status.
//! - [`how_to_pay`]: the how-to-pay JSON of an issued code, fetched from allowed origins only.
//! - [`notification`]: verification and parsing of DOKU's HTTP payment notifications.
//! - [`error`]: what can go wrong talking to DOKU.

pub mod client;
pub mod error;
pub mod how_to_pay;
pub mod notification;
pub mod signature;
pub mod types;

pub use client::{
    DokuClient, DokuClientConfig, PreparedRequest, StatusReport, request_timestamp, signed_headers,
};
pub use error::{ConfigError, DokuError};
pub use how_to_pay::{AllowedOrigin, HowToPayConfig};
pub use notification::{NotificationHeaders, NotificationReport, Rejection};
pub use types::{DokuTransactionStatus, ReportedChannel, ReportedStatus, parse_doku_time};
