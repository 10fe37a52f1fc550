//! The fast matcher against the plain reference evaluator on generated adversarial documents.
//!
//! `KMSGUARD_DIFF_CASES` sets the number of cases per property (default 100,000 for the main
//! property). Every case also checks the prefilter contract: a matching line is a candidate.

use kmsguard_matcher::{Matcher, Rule, Shape, Shapes, DATA_STREAM_DATASET};
use kmsguard_reference::{evaluate, gen, Config};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("KMSGUARD_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn check(config: &Config, matcher: &mut Matcher, line: &[u8]) -> Result<(), TestCaseError> {
    let want = evaluate(config, line);
    let got = matcher.evaluate(line);
    prop_assert_eq!(got, want, "line: {}", String::from_utf8_lossy(line));
    if want.is_match() {
        prop_assert!(
            matcher.prefilter().is_candidate(line),
            "prefilter missed {}",
            String::from_utf8_lossy(line)
        );
    }
    prop_assert_eq!(matcher.is_match(line), want.is_match());
    Ok(())
}

fn config_from(choice: u16) -> (Config, Matcher) {
    let mut config = Config::default();
    if choice & 1 != 0 {
        config.assume_dataset = Some("aws.cloudtrail".into());
    }
    if choice & 2 != 0 {
        config.rule = Rule::kms_cmk_disabled_or_scheduled_for_deletion()
            .with_dataset_field(DATA_STREAM_DATASET);
    }
    if choice & 4 != 0 {
        let shapes: Vec<Shape> =
            Shape::ALL.iter().copied().filter(|s| (choice >> (3 + *s as u16)) & 1 == 0).collect();
        config.shapes = Shapes::of(&shapes);
    }
    let matcher = Matcher::builder()
        .rule(config.rule.clone())
        .shapes(config.shapes)
        .assume_dataset(config.assume_dataset.clone())
        .build();
    (config, matcher)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(100_000), failure_persistence: None, ..ProptestConfig::default() })]

    /// Default configuration: every shape, no declared dataset.
    #[test]
    fn fast_path_agrees_with_reference(choices in prop::collection::vec(any::<u8>(), 0..400)) {
        let config = Config::default();
        let mut matcher = Matcher::new();
        check(&config, &mut matcher, &gen::document(&choices))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(100_000) / 4, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every option: declared dataset, the later dataset field, restricted shapes.
    #[test]
    fn fast_path_agrees_under_every_option(option in any::<u16>(), choices in prop::collection::vec(any::<u8>(), 0..400)) {
        let (config, mut matcher) = config_from(option);
        check(&config, &mut matcher, &gen::document(&choices))?;
    }

    /// Arbitrary bytes, mostly invalid: both sides must call them invalid alike.
    #[test]
    fn arbitrary_bytes_agree(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let config = Config::default();
        let mut matcher = Matcher::new();
        check(&config, &mut matcher, &bytes)?;
    }

    /// Records elements decided alone agree with the reference too.
    #[test]
    fn records_alone_agree(choices in prop::collection::vec(any::<u8>(), 0..400)) {
        let config = Config::default();
        let mut matcher = Matcher::new();
        let doc = gen::document(&choices);
        prop_assert_eq!(matcher.evaluate_record(&doc), kmsguard_reference::evaluate_record(&config, &doc));
    }
}

/// One matcher reused across many lines must give the same answers as fresh ones (scratch
/// buffers and tapes are reused, never leaked between lines).
#[test]
fn reuse_does_not_leak_state() {
    let mut reused = Matcher::new();
    for seed in 0..2_000u32 {
        let choices: Vec<u8> = (0..300u32)
            .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
            .collect();
        let doc = gen::document(&choices);
        assert_eq!(
            reused.evaluate(&doc),
            Matcher::new().evaluate(&doc),
            "{}",
            String::from_utf8_lossy(&doc)
        );
    }
}
