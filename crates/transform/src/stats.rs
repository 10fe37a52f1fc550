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
    /// Per shape, in [`Shape::ALL`] order: (parsed lines of that shape, of which matched).
    pub shapes: [(u64, u64); Shape::ALL.len()],
}

impl Stats {
    pub(crate) fn count(&mut self, verdict: Verdict) {
        if let Some(shape) = verdict.shape() {
            let slot = &mut self.shapes[shape as usize];
            slot.0 += 1;
            slot.1 += u64::from(verdict.is_match());
        }
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
            shapes,
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
        for (mine, theirs) in self.shapes.iter_mut().zip(shapes) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
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
        s.push_str("\nkmsguard: shapes (parsed/matched):");
        for shape in Shape::ALL {
            let (seen, matched) = self.shapes[shape as usize];
            let _ = write!(s, " {shape} {seen}/{matched}");
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
