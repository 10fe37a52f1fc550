//! Shows what one `pack_differential` fuzz input stands for: its rules, the document's length,
//! the fast and reference verdicts, the pack prefilter's mask and each rule's literals.
//!
//! `cargo run -p kmsguard-reference --example packcase -- fuzz/artifacts/pack_differential/crash-...`

use kmsguard_matcher::kql;
use kmsguard_matcher::packfilter::{PackPrefilter, RuleMask};
use kmsguard_matcher::ruleset::{PackEvaluator, RuleSet};
use kmsguard_reference::packgen::{line, query, Gen, Rng};
fn main() {
    let path = std::env::args().nth(1).expect("a fuzz input's path");
    let data = std::fs::read(path).expect("a readable fuzz input");
    let mut g = Gen::with(Rng::from_bytes(&data));
    g.palette();
    let n = 1 + g.rng.below(8);
    let texts: Vec<String> = (0..n).map(|_| query(&mut g, 0)).collect();
    let queries: Vec<kql::Query> = texts.iter().map(|t| kql::parse(t).unwrap()).collect();
    let assume = match g.rng.below(20) {
        0..=8 => None,
        9..=18 => Some("aws.cloudtrail"),
        _ => Some("aws.vpcflow"),
    };
    let set = RuleSet::new(&queries, assume.map(String::from)).unwrap();
    let (_, line) = line(&mut g);
    println!("line len {}", line.len());
    let reference = kmsguard_reference::kql::evaluate_pack(&queries, assume, &line);
    let mut ev = PackEvaluator::new();
    ev.evaluate(&set, &line);
    println!("fast {:?}\nref {:?}", ev.verdicts(), reference);
    let pre = PackPrefilter::new(&set);
    let mut mask = RuleMask::default();
    pre.possible(&line, &mut mask, &mut Vec::new());
    println!("mask {:?}", mask.iter().collect::<Vec<_>>());
    for (r, text) in texts.iter().enumerate() {
        println!("{r}: {text}\n   literals: {}", pre.describe(r));
    }
}
