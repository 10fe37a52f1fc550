//! Counts kept while a transform runs, and their one-paragraph report.

use std::fmt::Write as _;
use std::time::Duration;

use kmsguard_matcher::{Shape, Verdict};

use crate::enrich::Enriched;

/// What a run saw. Lines and bytes cover all input; the rest covers the lines that were parsed
/// (prefilter candidates, or every line where an option asks for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines read (a final line without `\n` counts).
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Lines parsed.
    pub candidates: u64,
    /// Enriched events written (with `--split-records`, records).
    pub matches: u64,
    /// Parsed lines that are not documents Elasticsearch would index.
    pub invalid: u64,
    /// Lines longer than the maximum line length, never evaluated.
    pub oversized: u64,
    /// Records emitted as lines of their own by `--split-records`.
    pub records: u64,
    /// Matches whose `rule`/`threat` went under `kmsguard` because the document had its own.
    pub displaced: u64,
    /// Matches where even `kmsguard` was taken, so part of the enrichment was skipped.
    pub skipped: u64,
    /// Matches over the alert budget, not enriched.
    pub over_budget: u64,
    /// Invalid lines written wrapped in a JSON object (`--wrap-invalid`).
    pub wrapped: u64,
    /// Per shape, in [`Shape::ALL`] order: (parsed lines of that shape, of which matched).
    pub shapes: [(u64, u64); Shape::ALL.len()],
    /// ECS documents that satisfy every clause but the dataset's, which has no value: matches
    /// that `--assume-dataset` would make.
    pub dataset_absent: u64,
    /// Where the first invalid parsed line was.
    pub first_invalid: Option<Position>,
    /// Inputs whose first line is not a whole document but the start of one spanning lines
    /// (pretty-printed JSON), and the first of them.
    pub spanning: u64,
    /// The first input whose documents span lines.
    pub first_spanning: Option<Position>,
    /// With a rule pack: per rule, in pack order.
    pub rules: Vec<RuleCounts>,
}

/// What one rule of a pack did in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// The rule's tag, which names it (a reloaded pack keeps the counts of a rule it keeps).
    pub tag: String,
    /// Events it matched (alerts written, in filter mode).
    pub matches: u64,
    /// Parsed events on which its verdict was unknown: a raw shape did not hold a field it
    /// reads (RULES.md section 4). Neither fired nor dropped silently.
    pub unknown: u64,
    /// Matches over its alert budget, not enriched.
    pub over_budget: u64,
}

/// A place in a run's input: which input (its index among the run's inputs and its name) and
/// where in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The input's index among the run's inputs.
    pub input: usize,
    /// The input's name.
    pub name: String,
    /// Offset of the line's first byte in the input (after decompression).
    pub byte: u64,
    /// 1-based line number, when lines were counted.
    pub line: Option<u64>,
}

impl Stats {
    pub(crate) fn count(&mut self, verdict: Verdict) {
        if let Some(shape) = verdict.shape() {
            let slot = &mut self.shapes[shape as usize];
            slot.0 += 1;
            slot.1 += u64::from(verdict.is_match());
        }
    }

    /// The index of the counts of the rule tagged `tag`, added when new.
    pub(crate) fn rule_slot(&mut self, tag: &str) -> usize {
        self.rules.iter().position(|r| r.tag == tag).unwrap_or_else(|| {
            self.rules.push(RuleCounts { tag: tag.to_string(), ..RuleCounts::default() });
            self.rules.len() - 1
        })
    }

    pub(crate) fn enriched(&mut self, e: Enriched) {
        self.displaced += u64::from(e.displaced);
        self.skipped += u64::from(e.skipped);
    }

    /// Adds `other`'s counts to these (the stats of transforms that shared one input).
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            lines,
            bytes,
            candidates,
            matches,
            invalid,
            oversized,
            records,
            displaced,
            skipped,
            over_budget,
            wrapped,
            shapes,
            dataset_absent,
            first_invalid,
            spanning,
            first_spanning,
            rules,
        } = other;
        self.lines += lines;
        self.bytes += bytes;
        self.candidates += candidates;
        self.matches += matches;
        self.invalid += invalid;
        self.oversized += oversized;
        self.records += records;
        self.displaced += displaced;
        self.skipped += skipped;
        self.over_budget += over_budget;
        self.wrapped += wrapped;
        self.dataset_absent += dataset_absent;
        self.spanning += spanning;
        for (mine, theirs) in
            [(&mut self.first_invalid, first_invalid), (&mut self.first_spanning, first_spanning)]
        {
            if let Some(theirs) = theirs {
                if mine.as_ref().is_none_or(|m| theirs < m) {
                    *mine = Some(theirs.clone());
                }
            }
        }
        for theirs in rules {
            let mine = self.rule_slot(&theirs.tag);
            let mine = &mut self.rules[mine];
            mine.matches += theirs.matches;
            mine.unknown += theirs.unknown;
            mine.over_budget += theirs.over_budget;
        }
        for (mine, theirs) in self.shapes.iter_mut().zip(shapes) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }

    /// The counts as one JSON object (`--stats-format json`), with throughput over `elapsed`.
    pub fn to_json(&self, elapsed: Duration) -> serde_json::Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let shapes: serde_json::Map<String, serde_json::Value> = Shape::ALL
            .iter()
            .map(|&shape| {
                let (parsed, matched) = self.shapes[shape as usize];
                (shape.name().into(), serde_json::json!({"parsed": parsed, "matched": matched}))
            })
            .collect();
        let position = |p: &Option<Position>| {
            p.as_ref().map(|p| serde_json::json!({"input": p.name, "byte": p.byte, "line": p.line}))
        };
        serde_json::json!({
            "lines": self.lines,
            "bytes": self.bytes,
            "candidates": self.candidates,
            "matches": self.matches,
            "invalid": self.invalid,
            "oversized": self.oversized,
            "records_split": self.records,
            "displaced": self.displaced,
            "skipped": self.skipped,
            "over_budget": self.over_budget,
            "wrapped": self.wrapped,
            "dataset_absent": self.dataset_absent,
            "spanning_inputs": self.spanning,
            "first_invalid": position(&self.first_invalid),
            "shapes": shapes,
            "rules": self.rules.iter().map(|r| serde_json::json!({
                "tag": r.tag, "matches": r.matches, "unknown": r.unknown, "over_budget": r.over_budget,
            })).collect::<Vec<_>>(),
            "seconds": secs,
            "bytes_per_second": self.bytes as f64 / secs,
        })
    }

    /// A short human report for stderr, with throughput over `elapsed`.
    pub fn report(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut s = format!(
            "kmsguard: {} lines, {} bytes, {} candidates, {} matches, {} invalid, {} oversized",
            self.lines, self.bytes, self.candidates, self.matches, self.invalid, self.oversized
        );
        if self.records > 0 {
            let _ = write!(s, ", {} records split", self.records);
        }
        if self.displaced + self.skipped > 0 {
            let _ =
                write!(s, ", {} displaced, {} skipped enrichments", self.displaced, self.skipped);
        }
        if self.over_budget > 0 {
            let _ = write!(s, ", {} over the alert budget", self.over_budget);
        }
        if self.wrapped > 0 {
            let _ = write!(s, ", {} invalid lines wrapped", self.wrapped);
        }
        s.push_str("\nkmsguard: shapes (parsed/matched):");
        for shape in Shape::ALL {
            let (seen, matched) = self.shapes[shape as usize];
            let _ = write!(s, " {shape} {seen}/{matched}");
        }
        // A pack's rules that did something: matched, were unknown, or went over budget.
        let busy: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.matches + r.unknown + r.over_budget > 0)
            .map(|r| format!(" {} {}/{}/{}", r.tag, r.matches, r.unknown, r.over_budget))
            .collect();
        if !self.rules.is_empty() {
            let _ = write!(
                s,
                "\nkmsguard: rules (matches/unknown/over budget), {} of {} with counts:{}",
                busy.len(),
                self.rules.len(),
                busy.concat()
            );
        }
        let _ = write!(
            s,
            "\nkmsguard: {:.3} s, {:.1} MB/s, {:.0} lines/s",
            secs,
            self.bytes as f64 / secs / 1e6,
            self.lines as f64 / secs
        );
        s
    }
}
