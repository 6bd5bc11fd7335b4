//! Fuzz target: Protobuf requests into domain requests, and the DOKU request built from them.
//! The properties checked are documented in `o2o_sidecar::fuzzing::proto`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| o2o_sidecar::fuzzing::proto(data));
