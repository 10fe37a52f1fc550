//! The transform's fuzz properties on generated inputs, so that `cargo test` covers them beyond
//! the committed seeds: chunking independence (lines and concatenated JSON) and lossless tag
//! mode. `KMSGUARD_PROP_CASES` sets the number of cases (default 3,000 each).

use kmsguard_reference::props;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("KMSGUARD_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn streaming_is_chunking_independent(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        props::streaming_is_chunking_independent(&data);
    }

    #[test]
    fn tag_mode_is_lossless(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        props::tag_mode_is_lossless(&data);
    }

    /// Generated documents only (every part's first byte even), so that most inputs hold one
    /// JSON value a line and the concatenated-JSON reader is compared with the line reader.
    #[test]
    fn tag_mode_is_lossless_on_documents(parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 1..8)) {
        let data: Vec<u8> = parts
            .into_iter()
            .map(|mut p| {
                p[0] &= 0xFE;
                p.retain(|&b| b != 0xFE);
                p
            })
            .collect::<Vec<_>>()
            .join(&0xFE);
        props::tag_mode_is_lossless(&data);
    }
}
