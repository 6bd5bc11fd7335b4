//! Integration tests: the real `run()` on 127.0.0.1:0 against the DOKU simulator (also on port
//! 0), through a real tonic client. One binary, one file per behaviour.

mod child;
mod harness;

mod admin;
mod auth;
mod cli;
mod dev;
mod otlp;

mod errors;
mod faults;
mod generate;
mod grpc_ecosystem;
mod hostile_doku;
mod hostile_peers;
mod idempotency;
mod notifications;
mod reconcile;
mod replicas;
mod rig;
mod secrets;
mod shutdown;
mod status;
mod stream;
mod tls;
