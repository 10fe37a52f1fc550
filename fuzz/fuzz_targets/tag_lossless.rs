//! Fuzz target: `kmsguard_reference::props::tag_mode_is_lossless` (the same check runs on the seeds in
//! `fuzz/seeds/tag_lossless` under `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsguard_reference::props::tag_mode_is_lossless(data));
