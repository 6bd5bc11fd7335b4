//! o2o-sidecar: a gRPC sidecar for DOKU Indomaret (O2O) payment codes.
#![forbid(unsafe_code)]

pub mod doku;
pub mod error;
pub mod payment;
pub mod secret;
pub mod sim;
pub mod store;
