//! The only code that knows tonic and prost: the generated `o2o.v1` types, the
//! `O2OPayments` service, conversions to and from domain types, and the error table.

pub mod auth;
pub mod convert;
pub mod limit;
pub mod metrics;
pub mod service;
pub mod status;
pub mod stream;

/// Generated code of `proto/o2o/v1/o2o_payments.proto`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod pb {
    tonic::include_proto!("o2o.v1");
}

/// Encoded `FileDescriptorSet` of the contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/o2o_descriptor.bin"));

pub use service::PaymentsService;
