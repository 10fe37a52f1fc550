//! Fuzz target: `kmsguard_reference::props::pack_agrees`, random rule packs against random
//! documents, every choice read from the input (the same check runs on the seeds in
//! `fuzz/seeds/pack_differential` under `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsguard_reference::props::pack_agrees(data));
