//! An exact, zero-copy matcher for the Elastic detection rule *AWS KMS Customer Managed Key
//! Disabled or Scheduled for Deletion*, built to run inline on NDJSON at line rate.
//!
//! Two stages decide each line:
//!
//! 1. a whole-buffer [`Prefilter`] of a few `memchr::memmem` searchers, built once, finds the rare
//!    lines that could match (they hold an action name such as `DisableKey`, or a `\u00` escape
//!    that could spell one) without splitting the rest of the buffer into lines;
//! 2. the [`Matcher`] parses each candidate with simd-json, in a reused scratch buffer, and reads
//!    the rule's fields off the tape with Elasticsearch's semantics: dotted keys equal nested
//!    objects, arrays match when any element does, strings compare after unescaping, keyword
//!    terms are exact and case-sensitive, and invalid documents never match.
//!
//! The rule itself is data ([`Rule`]): the evaluator, the prefilter literals and the enrichment
//! written by the `kmsguard` binary all derive from it.
//!
//! # Example
//!
//! ```
//! use kmsguard_matcher::{Matcher, Shape, Verdict};
//!
//! let mut matcher = Matcher::new();
//! let buffer = br#"{"event":{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com","action":"Decrypt","outcome":"success"}}
//! {"event.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com","event":{"action":"DisableKey","outcome":"success"}}
//! {"eventSource":"kms.amazonaws.com","eventName":"ScheduleKeyDeletion","errorCode":"AccessDenied"}
//! "#;
//! let mut matches = Vec::new();
//! for range in matcher.prefilter().clone().candidate_lines(buffer) {
//!     if let Verdict::Match(shape) = matcher.evaluate(&buffer[range.clone()]) {
//!         matches.push((range.start, shape));
//!     }
//! }
//! assert_eq!(matches.len(), 1);
//! assert_eq!(matches[0].1, Shape::Ecs);
//! ```
#![deny(missing_docs)]

mod eval;
mod explain;
pub mod kql;
mod normalize;
pub mod packfilter;
mod pair;
mod prefilter;
mod rule;
pub mod ruleset;
mod shape;
mod terms;

pub use crate::eval::{Verdict, MAX_DEPTH};
pub use crate::explain::{Explanation, Miss};
pub use crate::prefilter::{CandidateLines, Prefilter};
pub use crate::rule::{
    Clause, RawField, RawValue, Ref, Rule, Threat, CLOUDTRAIL_DATASET, DATA_STREAM_DATASET,
    EVENT_DATASET, PIPELINE_COMMIT, RAW_FIELD_MAP, REMOVED_STRINGS,
};
pub use crate::shape::{Shape, Shapes, UnknownShape};

use crate::eval::Evaluator;

/// Configures a [`Matcher`]: the rule, the shapes to recognise, and the stream's dataset.
#[derive(Clone, Debug)]
pub struct MatcherBuilder {
    rule: Rule,
    shapes: Shapes,
    assume_dataset: Option<String>,
}

impl Default for MatcherBuilder {
    fn default() -> MatcherBuilder {
        MatcherBuilder {
            rule: Rule::kms_cmk_disabled_or_scheduled_for_deletion(),
            shapes: Shapes::all(),
            assume_dataset: None,
        }
    }
}

impl MatcherBuilder {
    /// The rule to evaluate (default: [`Rule::kms_cmk_disabled_or_scheduled_for_deletion`]).
    pub fn rule(&mut self, rule: Rule) -> &mut MatcherBuilder {
        self.rule = rule;
        self
    }

    /// The shapes to recognise (default: all). Documents of other shapes fall through to the
    /// next allowed shape; when none applies they do not match.
    pub fn shapes(&mut self, shapes: Shapes) -> &mut MatcherBuilder {
        self.shapes = shapes;
        self
    }

    /// Declares the stream's dataset (spec section 4): a document with no value in the rule's
    /// dataset field then counts as `dataset`, as in a `logs-aws.cloudtrail-*` data stream whose
    /// mapping makes it a constant. An envelope without a dataset then counts as CloudTrail's
    /// when `dataset` is `aws.cloudtrail`.
    pub fn assume_dataset(&mut self, dataset: Option<String>) -> &mut MatcherBuilder {
        self.assume_dataset = dataset;
        self
    }

    /// Builds the matcher, deriving its prefilter from the rule.
    pub fn build(&self) -> Matcher {
        Matcher {
            prefilter: Prefilter::new(&self.rule),
            evaluator: Evaluator::new(self.rule.clone(), self.shapes, self.assume_dataset.clone()),
        }
    }
}

/// Decides lines exactly against a rule; reuses its parse buffers, so it allocates nothing per
/// line once warm. Holds mutable scratch space: use one per thread.
pub struct Matcher {
    prefilter: Prefilter,
    evaluator: Evaluator,
}

impl Default for Matcher {
    fn default() -> Matcher {
        Matcher::new()
    }
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("rule", &self.rule().name).finish_non_exhaustive()
    }
}

impl Matcher {
    /// A matcher for the default rule with every shape and no declared dataset.
    pub fn new() -> Matcher {
        MatcherBuilder::default().build()
    }

    /// A builder to configure the rule, the shapes and the declared dataset.
    pub fn builder() -> MatcherBuilder {
        MatcherBuilder::default()
    }

    /// The rule this matcher evaluates.
    pub fn rule(&self) -> &Rule {
        self.evaluator.rule()
    }

    /// The prefilter derived from the rule: use it to find candidate lines in a whole buffer.
    pub fn prefilter(&self) -> &Prefilter {
        &self.prefilter
    }

    /// Decides one line exactly, without the prefilter. `line` excludes its `\n`; a trailing
    /// `\r` and surrounding JSON whitespace are allowed.
    pub fn evaluate(&mut self, line: &[u8]) -> Verdict {
        self.evaluator.evaluate(line)
    }

    /// Decides one line and says why it does not match, for a human (`--explain`, warnings).
    /// As fast as [`Matcher::evaluate`] for valid documents; an invalid one is parsed again to
    /// say what is wrong with it.
    pub fn explain(&mut self, line: &[u8]) -> Explanation {
        self.evaluator.explain(line)
    }

    /// Why the last line [`Matcher::evaluate`] found valid did not match. Stale after a match
    /// or an invalid line; recorded at no cost, so a caller can count near misses (a document
    /// without a dataset, say) without explaining every line.
    pub fn last_miss(&self) -> Miss {
        self.evaluator.last_miss()
    }

    /// Whether `line` matches: the prefilter first, the exact decision only for candidates.
    pub fn is_match(&mut self, line: &[u8]) -> bool {
        self.prefilter.is_candidate(line) && self.evaluate(line).is_match()
    }

    /// Decides one raw CloudTrail record on its own, as an element of a `Records` file is
    /// decided. Anything that is not a raw record does not match.
    pub fn evaluate_record(&mut self, record: &[u8]) -> Verdict {
        self.evaluator.evaluate_record(record)
    }

    /// Decides one element of a LookupEvents response on its own (`{"CloudTrailEvent":"..."}`
    /// and AWS's summary members), by the raw record its `CloudTrailEvent` holds, as the element
    /// is decided inside the response. Anything else does not match.
    pub fn evaluate_lookup_event(&mut self, event: &[u8]) -> Verdict {
        self.evaluator.evaluate_lookup_event(event)
    }
}

#[cfg(test)]
mod testoibits {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_thread_safe() {
        assert_send::<Matcher>();
        assert_send_sync::<Prefilter>();
        assert_send_sync::<Rule>();
        assert_send_sync::<Verdict>();
    }
}
