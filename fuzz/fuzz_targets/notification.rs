//! Fuzz target: DOKU notification verification and parsing, and the comparison with the stored payment.
//! The properties checked are documented in `o2o_sidecar::fuzzing::notification`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| o2o_sidecar::fuzzing::notification(data));
