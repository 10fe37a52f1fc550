//! Counts the lines of an NDJSON file that match the rule, the way the `kmsguard` binary finds
//! them: the prefilter over the whole buffer, the exact decision only for candidates.
//!
//! ```text
//! cargo run --release -p kmsguard-matcher --example count_matches -- examples/cloudtrail-sample.ndjson
//! ```

use kmsguard_matcher::{Matcher, Shape, Verdict};

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: count_matches FILE");
    let data = std::fs::read(path)?;
    let mut matcher = Matcher::new();
    let prefilter = matcher.prefilter().clone();
    let (mut candidates, mut by_shape) = (0, [0u64; Shape::ALL.len()]);
    for range in prefilter.candidate_lines(&data) {
        candidates += 1;
        if let Verdict::Match(shape) = matcher.evaluate(&data[range]) {
            by_shape[shape as usize] += 1;
        }
    }
    println!("{candidates} candidates");
    for shape in Shape::ALL {
        println!("{shape}: {} matches", by_shape[shape as usize]);
    }
    Ok(())
}
