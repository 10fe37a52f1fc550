//! The matcher side of a transform: what decides a line, one rule or a pack of them, with the
//! per-thread state that takes (a matcher's simd-json scratch, a pack's evaluator, the alert
//! budgets). It says what a line is and which rules fired; what is written is the sink's job
//! (`sink.rs`), and reading and cutting input the transform's.

use std::sync::Arc;
use std::time::Instant;

use kmsguard_matcher::packfilter::RuleMask;
use kmsguard_matcher::ruleset::{PackEvaluator, PackVerdict, Tri};
use kmsguard_matcher::{Matcher, Prefilter, Shape, Verdict};

use crate::budget::{Spend, Spender};
use crate::{AlertBudget, Enricher, Mode, Options, Pack, PackHandle, Stats};

/// What decides lines: one rule, or a pack of them.
// One per transform, so the variants' sizes do not matter; boxing the one-rule state would add
// a pointer chase to the hot path for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Decider {
    /// One rule, as a [`Matcher`].
    One {
        matcher: Matcher,
        /// The matcher's prefilter, shared so the candidate loop can borrow it while the
        /// transform is mutably borrowed for each decision (no clone per buffer).
        prefilter: Arc<Prefilter>,
        enricher: Enricher,
        budget: Option<Spender>,
    },
    /// A rule pack.
    Pack(Box<PackState>),
}

/// The search for a buffer's candidate lines, held apart from the decider so that the decider
/// can be borrowed mutably for each candidate.
pub(crate) enum Search {
    /// One rule's prefilter.
    One(Arc<Prefilter>),
    /// A pack's.
    Pack(Arc<Pack>),
}

/// The enrichments a matching event gets once budgets are spent.
pub(crate) enum Alerts<'a> {
    /// Every rule it matched is over its budget: it goes out as a non-matching event.
    Spent,
    /// One rule's.
    One(&'a Enricher),
    /// These rules of a pack, in pack order.
    Rules(&'a Pack, Vec<usize>),
}

/// A decider's state for running a rule pack.
pub(crate) struct PackState {
    handle: Arc<PackHandle>,
    /// The handle's generation `pack` is.
    generation: u64,
    pack: Arc<Pack>,
    /// Per rule of `pack`, its counts' index in [`Stats::rules`].
    slots: Vec<usize>,
    evaluator: PackEvaluator,
    /// The rules the last decided event matched, in pack order.
    matched: Vec<usize>,
    /// Per rule, when budgets are on.
    budgets: Vec<Spender>,
    /// Says why a line is invalid (the reasons do not depend on the rules).
    explainer: Matcher,
    /// The rules the line being decided may fire, when the prefilter is asked for them.
    mask: RuleMask,
    mask_scratch: Vec<u8>,
}

impl PackState {
    /// Decides `line`; fills `matched`, and counts unknown verdicts when `stats` is given.
    /// `rules` are the rules that may fire on it when the buffer-wide search found them.
    pub(crate) fn evaluate(
        &mut self,
        line: &[u8],
        rules: Option<&RuleMask>,
        stats: Option<&mut Stats>,
    ) -> Verdict {
        self.matched.clear();
        // Only the rules the prefilter leaves possible are walked for and evaluated: the
        // others are false on this line (the pack prefilter's soundness).
        let mask = match rules {
            Some(rules) => rules,
            None => {
                self.pack.prefilter.possible(line, &mut self.mask, &mut self.mask_scratch);
                &self.mask
            }
        };
        let shape = match self.evaluator.evaluate_masked(&self.pack.set, line, mask) {
            PackVerdict::Invalid => return Verdict::Invalid,
            PackVerdict::Decided(shape) => shape,
        };
        let verdicts = self.evaluator.verdicts();
        self.matched
            .extend(verdicts.iter().enumerate().filter(|(_, v)| **v == Tri::True).map(|(i, _)| i));
        if let Some(stats) = stats {
            for (i, v) in verdicts.iter().enumerate() {
                stats.rules[self.slots[i]].unknown += u64::from(*v == Tri::Unknown);
            }
        }
        if self.matched.is_empty() {
            Verdict::NoMatch(Some(shape))
        } else {
            Verdict::Match(shape)
        }
    }

    /// Takes the handle's pack when it was replaced, with fresh budgets; keeps the counts of
    /// the rules it keeps.
    pub(crate) fn refresh(&mut self, options: &Options, stats: &mut Stats) {
        let generation = self.handle.generation();
        if generation == self.generation && !self.slots.is_empty() {
            return;
        }
        self.generation = generation;
        self.pack = self.handle.current();
        self.slots = self.pack.rules().iter().map(|r| stats.rule_slot(&r.rule.tag)).collect();
        self.budgets = match options.alert_budget {
            Some(b) => self
                .pack
                .rules()
                .iter()
                .map(|r| {
                    let max = if options.max_signals { r.rule.max_signals } else { b.max };
                    Spender::new(AlertBudget { max, ..b })
                })
                .collect(),
            None => Vec::new(),
        };
    }

    /// Why the line last evaluated did not match.
    fn explain(&mut self, line: &[u8], verdict: Verdict) -> String {
        if verdict == Verdict::Invalid {
            return match self.explainer.explain(line) {
                kmsguard_matcher::Explanation::Invalid(why) => why,
                _ => "Elasticsearch would reject it: a flattened field nested deeper than 20 \
                      objects or a flattened leaf over 32,766 bytes"
                    .to_string(),
            };
        }
        let unknown: Vec<&str> = self
            .evaluator
            .verdicts()
            .iter()
            .zip(self.pack.rules())
            .filter(|(v, _)| **v == Tri::Unknown)
            .map(|(_, r)| r.rule.tag.as_str())
            .collect();
        if unknown.is_empty() {
            "no rule matched".to_string()
        } else {
            format!("no rule matched; unknown on this raw shape: {}", unknown.join(", "))
        }
    }
}

impl Decider {
    /// A decider for one rule.
    pub(crate) fn one(matcher: Matcher, options: &Options) -> Decider {
        let tag = options.tag.clone().unwrap_or_else(|| matcher.rule().tag.to_owned());
        let enricher = Enricher::new(matcher.rule(), &tag);
        let budget = options.alert_budget.map(Spender::new);
        let prefilter = Arc::new(matcher.prefilter().clone());
        Decider::One { matcher, prefilter, enricher, budget }
    }

    /// A decider for the pack `handle` holds, its rules' counts kept in `stats`.
    pub(crate) fn pack(handle: Arc<PackHandle>, options: &Options, stats: &mut Stats) -> Decider {
        let mut state = PackState {
            generation: 0,
            pack: handle.current(),
            handle,
            slots: Vec::new(),
            evaluator: PackEvaluator::new(),
            matched: Vec::new(),
            budgets: Vec::new(),
            explainer: Matcher::new(),
            mask: RuleMask::default(),
            mask_scratch: Vec::new(),
        };
        state.refresh(options, stats);
        Decider::Pack(Box::new(state))
    }

    /// Takes a replaced pack before a buffer is decided (nothing for one rule).
    pub(crate) fn refresh(&mut self, options: &Options, stats: &mut Stats) {
        if let Decider::Pack(p) = self {
            p.refresh(options, stats);
        }
    }

    /// The search for candidate lines.
    pub(crate) fn search(&self) -> Search {
        match self {
            Decider::One { prefilter, .. } => Search::One(Arc::clone(prefilter)),
            Decider::Pack(p) => Search::Pack(Arc::clone(&p.pack)),
        }
    }

    /// Whether `line` could match (the prefilter's verdict).
    pub(crate) fn is_candidate(&mut self, line: &[u8]) -> bool {
        match self {
            Decider::One { prefilter, .. } => prefilter.is_candidate(line),
            Decider::Pack(p) => p.pack.prefilter.possible(line, &mut p.mask, &mut p.mask_scratch),
        }
    }

    /// Decides `line`; `rules` are a pack's rules that may fire on it, when the buffer-wide
    /// search found them. A pack counts its rules' unknown verdicts in `stats`.
    pub(crate) fn evaluate(
        &mut self,
        line: &[u8],
        rules: Option<&RuleMask>,
        stats: &mut Stats,
    ) -> Verdict {
        match self {
            Decider::One { matcher, .. } => matcher.evaluate(line),
            Decider::Pack(p) => p.evaluate(line, rules, Some(stats)),
        }
    }

    /// Decides one event split out of a container (`kind` says which).
    pub(crate) fn evaluate_piece(&mut self, kind: Shape, piece: &[u8]) -> bool {
        match self {
            Decider::One { matcher, .. } => match kind {
                Shape::Records => matcher.evaluate_record(piece),
                Shape::LookupEvents => matcher.evaluate_lookup_event(piece),
                _ => matcher.evaluate(piece),
            }
            .is_match(),
            Decider::Pack(p) => match kind {
                Shape::Records => {
                    p.matched.clear();
                    let set = &p.pack.set;
                    let raw = p.evaluator.evaluate_raw(set, piece);
                    let verdicts = p.evaluator.verdicts();
                    p.matched.extend((0..verdicts.len()).filter(|&i| verdicts[i] == Tri::True));
                    raw && !p.matched.is_empty()
                }
                Shape::LookupEvents => {
                    let mut events = Vec::with_capacity(piece.len() + 12);
                    events.extend_from_slice(b"{\"Events\":[");
                    events.extend_from_slice(piece);
                    events.extend_from_slice(b"]}");
                    p.evaluate(&events, None, None).is_match()
                }
                _ => p.evaluate(piece, None, None).is_match(),
            },
        }
    }

    /// Why `line`, which is invalid, is (the reason a wrapped line carries).
    pub(crate) fn invalid_reason(&mut self, line: &[u8]) -> String {
        match self {
            Decider::One { matcher, .. } => match matcher.explain(line) {
                kmsguard_matcher::Explanation::Invalid(why) => why,
                other => other.to_string(),
            },
            Decider::Pack(p) => p.explain(line, Verdict::Invalid),
        }
    }

    /// Why `line`, which did not match, did not (an `--explain` line).
    pub(crate) fn explain(&mut self, line: &[u8], verdict: Verdict) -> String {
        match self {
            Decider::One { matcher, .. } => matcher.explain(line).to_string(),
            Decider::Pack(p) => p.explain(line, verdict),
        }
    }

    /// Whether a document that did not match lacked the dataset the rule asks for (one rule's
    /// count; a pack's rules each have their own).
    pub(crate) fn dataset_absent(&self, verdict: Verdict) -> bool {
        verdict == Verdict::NoMatch(Some(Shape::Ecs))
            && matches!(self, Decider::One { matcher, .. }
                if matches!(matcher.last_miss(), kmsguard_matcher::Miss::DatasetAbsent(_)))
    }

    /// Spends the alert budgets of the rules the last event matched, counting matches and
    /// drops in `stats`, and says which enrichments it gets.
    pub(crate) fn alerts(&mut self, options: &Options, stats: &mut Stats) -> Alerts<'_> {
        match self {
            Decider::One { enricher, budget, .. } => {
                match budget.as_mut().map(|b| b.spend(Instant::now())) {
                    Some(Spend::Over { warn }) => {
                        stats.over_budget += 1;
                        if warn {
                            announce_budget(options, None);
                        }
                        Alerts::Spent
                    }
                    _ => {
                        stats.matches += 1;
                        Alerts::One(enricher)
                    }
                }
            }
            Decider::Pack(p) => {
                let now = Instant::now();
                let mut allowed = Vec::with_capacity(p.matched.len());
                for &r in &p.matched {
                    match p.budgets.get_mut(r).map(|b| b.spend(now)) {
                        Some(Spend::Over { warn }) => {
                            stats.over_budget += 1;
                            stats.rules[p.slots[r]].over_budget += 1;
                            if warn {
                                let rule = &p.pack.rules()[r].rule;
                                let max =
                                    if options.max_signals { Some(rule.max_signals) } else { None };
                                announce_budget(options, Some((&rule.tag, max)));
                            }
                        }
                        _ => allowed.push(r),
                    }
                }
                if allowed.is_empty() {
                    return Alerts::Spent;
                }
                stats.matches += 1;
                for &r in &allowed {
                    stats.rules[p.slots[r]].matches += 1;
                }
                Alerts::Rules(&p.pack, allowed)
            }
        }
    }
}

/// The one stderr line of a window whose alert budget is spent; `rule` names a pack's rule (its
/// tag, and its own `max_signals` when that is its budget).
fn announce_budget(options: &Options, rule: Option<(&str, Option<u64>)>) {
    let b = options.alert_budget.expect("a spender has a budget");
    let max = rule.and_then(|(_, m)| m).unwrap_or(b.max);
    let whose = rule.map_or(String::new(), |(tag, _)| format!(" for rule {tag}"));
    eprintln!(
        "kmsguard: alert budget of {max} per {} s spent{whose}; further matches in this window {}",
        b.window.as_secs(),
        if options.mode == Mode::Tag { "pass unenriched" } else { "are dropped" }
    );
}
