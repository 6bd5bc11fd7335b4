//! Fuzz target: DOKU's answers: Generate Payment Code, Check Status, error bodies, dates.
//! The properties checked are documented in `o2o_sidecar::fuzzing::doku_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| o2o_sidecar::fuzzing::doku_response(data));
