//! Fuzz target: `kmsguard_reference::props::streaming_is_chunking_independent` (the same check runs on the seeds in
//! `fuzz/seeds/streaming` under `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsguard_reference::props::streaming_is_chunking_independent(data));
