//! A rule pack ready to run (`--rules`): the compiled [`RuleSet`], its cross-rule prefilter, and
//! each rule's enrichment, built once and shared by every thread.
//!
//! # Alerts (RULES.md section 5)
//!
//! Filter mode writes one line per (event, rule) that matched, each enriched for its rule alone.
//! Tag mode writes each event once, with every matched rule's tag appended to `tags` (in pack
//! order); `rule` is the matched rule's object, or, when several matched, an array of their
//! objects in pack order, and `threat` the concatenation of their threat lists without
//! repeats. A rule's object holds `id`, `name`, `ruleset`, `category` (its type, `query`),
//! `author`, `license`, `reference` (its references), and, outside ECS, `severity` and
//! `risk_score`; `threat` is the TOML's whole `[[rule.threat]]` list (framework, tactic,
//! techniques with their subtechniques), so nothing of the mapping is dropped. Where the
//! document holds `rule` or `threat` already, the policy of the built-in rule applies
//! (`kmsguard.rule`, `kmsguard.threat`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kmsguard_matcher::packfilter::PackPrefilter;
use kmsguard_matcher::ruleset::RuleSet;
use kmsguard_rules::PackRule;
use serde_json::{json, Value};

use crate::enrich::Enricher;

/// One rule of a pack, as the transform needs it.
#[derive(Clone, Debug)]
pub struct PackEntry {
    /// The rule as loaded: its tag (appended to `tags`), `rule_id`, `name`, `max_signals` (its
    /// alert budget per window when budgets are on), and what its alert says.
    pub rule: PackRule,
    /// The rule's alert, built when it first fires: most rules of a pack never do on a
    /// given input, and building all 85 of Elastic's at load was a quarter of the work done
    /// after the rule files are parsed.
    alert: OnceLock<Alert>,
}

/// What a rule's alert adds to an event.
#[derive(Clone, Debug)]
struct Alert {
    rule_json: Value,
    threat: Vec<Value>,
    enricher: Enricher,
}

impl PackEntry {
    /// The rule's alert, built on first use.
    fn alert(&self) -> &Alert {
        self.alert.get_or_init(|| alert(&self.rule))
    }
}

/// A compiled rule pack. Immutable and `Sync`: transforms share one through an [`Arc`].
#[derive(Debug)]
pub struct Pack {
    pub(crate) set: RuleSet,
    pub(crate) prefilter: PackPrefilter,
    entries: Vec<PackEntry>,
}

impl Pack {
    /// Compiles `rules` (loaded by `kmsguard-rules`) for documents whose dataset is
    /// `assume_dataset` when they carry none.
    pub fn new(rules: &[PackRule], assume_dataset: Option<String>) -> Arc<Pack> {
        let set = kmsguard_rules::compile(rules, assume_dataset);
        let prefilter = PackPrefilter::new(&set);
        let entries = rules
            .iter()
            .map(|rule| PackEntry { rule: rule.clone(), alert: OnceLock::new() })
            .collect();
        Arc::new(Pack { set, prefilter, entries })
    }

    /// The rules, in pack order.
    pub fn rules(&self) -> &[PackEntry] {
        &self.entries
    }

    /// The compiled rule set.
    pub fn rule_set(&self) -> &RuleSet {
        &self.set
    }

    /// The enrichment of an event that matched `rules` (pack indices, in order, at least one).
    pub(crate) fn enricher(&self, rules: &[usize]) -> Enricher {
        if let [one] = rules {
            return self.entries[*one].alert().enricher.clone();
        }
        let tags: Vec<&str> = rules.iter().map(|&r| self.entries[r].rule.tag.as_str()).collect();
        let alerts: Vec<&Alert> = rules.iter().map(|&r| self.entries[r].alert()).collect();
        let objects: Vec<&Value> = alerts.iter().map(|a| &a.rule_json).collect();
        let mut threat: Vec<&Value> = Vec::new();
        for t in alerts.iter().flat_map(|a| &a.threat) {
            if !threat.contains(&t) {
                threat.push(t);
            }
        }
        Enricher::from_json(&tags, json!(objects).to_string(), json!(threat).to_string())
    }

    /// The enrichment of one rule's alert.
    pub(crate) fn enricher_of(&self, rule: usize) -> &Enricher {
        &self.entries[rule].alert().enricher
    }
}

fn alert(rule: &PackRule) -> Alert {
    let rule_json = json!({
        "id": rule.id,
        "name": rule.name,
        "ruleset": "elastic/detection-rules",
        "category": "query",
        "author": rule.author,
        "license": rule.license,
        "reference": rule.references,
        "severity": rule.severity,
        "risk_score": rule.risk_score,
    });
    let threat: Vec<Value> =
        rule.threat.iter().map(|t| serde_json::to_value(t).expect("plain data")).collect();
    let enricher =
        Enricher::from_json(&[&rule.tag], rule_json.to_string(), json!(threat).to_string());
    Alert { rule_json, threat, enricher }
}

/// The pack a run uses, replaceable while it runs (`SIGHUP` reloads the rule files): each
/// transform picks up the new pack between two buffers, so a line is always decided by one whole
/// pack, never half of each.
#[derive(Debug)]
pub struct PackHandle {
    current: Mutex<Arc<Pack>>,
    generation: AtomicU64,
}

impl PackHandle {
    /// A handle holding `pack`.
    pub fn new(pack: Arc<Pack>) -> Arc<PackHandle> {
        Arc::new(PackHandle { current: Mutex::new(pack), generation: AtomicU64::new(0) })
    }

    /// The pack now in force.
    pub fn current(&self) -> Arc<Pack> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `pack` in force for every transform's next buffer.
    pub fn replace(&self, pack: Arc<Pack>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = pack;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many times the pack was replaced: a transform compares it with the generation it
    /// holds, one atomic load per buffer.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
