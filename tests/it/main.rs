//! Integration tests: the real `run()` on 127.0.0.1:0 against the DOKU simulator (also on port
//! 0), through a real tonic client. One binary, one file per behaviour. Sidecars, the
//! simulator, PostgreSQL databases and `eventually` come from `o2o_sidecar::testing`.

/// The `o2o-sidecar` binary, for `o2o_sidecar::testing::ChildSidecar`.
const BIN: &str = env!("CARGO_BIN_EXE_o2o-sidecar");

mod admin;
mod alfa;
mod auth;
mod cli;
mod contract;
mod dev;
mod otlp;

mod errors;
mod faults;
mod generate;
mod grpc_ecosystem;
mod hostile_doku;
mod hostile_peers;
mod idempotency;
mod instructions;
mod notifications;
mod reconcile;
mod replicas;
mod secrets;
mod shutdown;
mod status;
mod stream;
mod tls;
mod wire_case;
