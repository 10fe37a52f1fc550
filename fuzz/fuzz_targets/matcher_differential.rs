//! Fuzz target: `kmsguard_reference::props::matcher_agrees` (the same check runs on the seeds in
//! `fuzz/seeds/matcher_differential` under `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsguard_reference::props::matcher_agrees(data));
