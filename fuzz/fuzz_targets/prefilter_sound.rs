//! Fuzz target: `kmsguard_reference::props::prefilter_is_sound` (the same check runs on the seeds in
//! `fuzz/seeds/prefilter_sound` under `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsguard_reference::props::prefilter_is_sound(data));
