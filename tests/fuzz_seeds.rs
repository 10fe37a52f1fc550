//! Runs each fuzz target's property over its seed corpus (and any regression inputs) in
//! `fuzz/seeds/<target>/`, so `cargo test` on stable checks what the fuzzers check.

use std::path::Path;

use kmsguard_reference::props;

fn each_seed(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| property(&data));
        assert!(result.is_ok(), "{target}: seed {} fails its property", path.display());
        count += 1;
    }
    assert!(count >= 10, "{target}: only {count} seeds");
}

#[test]
fn matcher_differential_seeds() {
    each_seed("matcher_differential", props::matcher_agrees);
}

#[test]
fn streaming_seeds() {
    each_seed("streaming", props::streaming_is_chunking_independent);
}

#[test]
fn tag_lossless_seeds() {
    each_seed("tag_lossless", props::tag_mode_is_lossless);
}

#[test]
fn prefilter_sound_seeds() {
    each_seed("prefilter_sound", props::prefilter_is_sound);
}

#[test]
fn pack_differential_seeds() {
    each_seed("pack_differential", props::pack_agrees);
}
