//! Elastic's own rules on Elastic's own data (`../shared/data`, beside the checkout): every AWS
//! query rule loads, the others are refused by reason, and each raw record gives the verdict its
//! ECS document gives whenever the raw verdict is known (RULES.md section 4).
//!
//! The fixtures are not part of the crate: when they are absent the tests say so loudly on
//! stderr and pass, except under CI (`CI` set), where absence is a failure.

use std::collections::BTreeMap;

use kmsguard_matcher::ruleset::{PackEvaluator, PackVerdict, Tri};
use kmsguard_matcher::Shape;

use crate::util::{ndjson, shared_data};

#[test]
fn every_aws_query_rule_loads_and_the_others_are_refused_by_reason() {
    let Some(data) = shared_data("every_aws_query_rule_loads") else { return };
    let loaded = kmsguard_rules::load(&[data.join("detection-rules/aws")]);
    assert_eq!(loaded.rules.len(), 85, "refused: {:#?}", loaded.refused);
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &loaded.refused {
        *reasons.entry(r.reason.as_str()).or_default() += 1;
        assert!(r.name.is_some(), "{} is a rule file", r.path.display());
    }
    assert_eq!(loaded.refused.len(), 109, "{reasons:#?}");
    // Only rule types are refused: no query rule needs what the KQL subset leaves out.
    assert!(reasons.keys().all(|r| r.ends_with("rules are not supported")), "{reasons:#?}");
    // Tags are distinct: a rule's tag names it.
    let mut tags: Vec<&str> = loaded.rules.iter().map(|r| r.tag.as_str()).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), 85);
    let kms = loaded.rules.iter().find(|r| r.tag == "kms-cmk-disabled-or-scheduled-for-deletion");
    let kms = kms.expect("the seed rule is in the pack");
    assert_eq!((kms.severity.as_str(), kms.risk_score), ("medium", 47));
}

#[test]
fn raw_records_and_their_ecs_documents_agree_on_every_rule() {
    let Some(data) = shared_data("raw_records_and_their_ecs_documents_agree") else { return };
    let loaded = kmsguard_rules::load(&[data.join("detection-rules/aws")]);
    let raw_set = kmsguard_rules::compile(&loaded.rules, None);
    let ecs_set = kmsguard_rules::compile(&loaded.rules, Some("aws.cloudtrail".into()));
    let mut ev = PackEvaluator::new();
    let (mut known, mut unknown, mut fired) = (0, 0, 0);
    let mut fired_rules = BTreeMap::new();
    for pair in ndjson(&data.join("integrations-pairs.ndjson")) {
        let raw = serde_json::to_string(&pair["raw"]).unwrap();
        let ecs = serde_json::to_string(&pair["ecs"]).unwrap();
        let fixture = pair["fixture"].as_str().unwrap_or("?");
        assert_eq!(
            ev.evaluate(&raw_set, raw.as_bytes()),
            PackVerdict::Decided(Shape::Raw),
            "{fixture}"
        );
        let raw_verdicts = ev.verdicts().to_vec();
        assert!(matches!(ev.evaluate(&ecs_set, ecs.as_bytes()), PackVerdict::Decided(Shape::Ecs)));
        for ((rule, r), e) in loaded.rules.iter().zip(&raw_verdicts).zip(ev.verdicts()) {
            assert_ne!(*e, Tri::Unknown, "ECS fields are all known");
            match r {
                Tri::Unknown => unknown += 1,
                _ => {
                    known += 1;
                    assert_eq!(r, e, "{fixture}: rule {} ({})", rule.tag, rule.query_text.trim());
                }
            }
            if *e == Tri::True {
                fired += 1;
                *fired_rules.entry(rule.tag.as_str()).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(known + unknown, 101 * 85);
    // The comparison has teeth: most verdicts are known, and some rules fire on this data.
    assert!(known > 101 * 80, "known {known}, unknown {unknown}");
    assert!(fired >= 3, "fired {fired}: {fired_rules:?}");
    eprintln!("{known} known verdicts agree, {unknown} unknown on raw; fired: {fired_rules:?}");
}

#[test]
fn the_pack_prefilter_has_a_literal_for_every_rule() {
    let Some(data) = shared_data("the_pack_prefilter_has_a_literal_for_every_rule") else { return };
    let loaded = kmsguard_rules::load(&[data.join("detection-rules/aws")]);
    let set = kmsguard_rules::compile(&loaded.rules, None);
    let pre = kmsguard_matcher::packfilter::PackPrefilter::new(&set);
    eprintln!("{:?} anchors/needles, {} unfiltered", pre.anchor_count(), pre.unfiltered_rules());
    assert_eq!(pre.unfiltered_rules(), 0);
}
