//! kmsguard's streaming transform: NDJSON in, NDJSON out, matching CloudTrail events filtered or
//! tagged, in input order, in bounded memory.
//!
//! The hot path works on whole buffers: the matcher's prefilter finds the rare candidate lines,
//! and in tag mode everything between candidates is written straight from the input buffer.
//!
//! A [`Transform`] is ripgrep's searcher, matcher and sink, each in a module of its own: the
//! reading code (`read.rs`) cuts input into buffers of whole lines, [`Transform::process`]
//! finds a buffer's candidates and hands each to the decider (`decider.rs`: one rule or a
//! pack, budgets), and the sink (`sink.rs`) writes what the [`Mode`] asks for. One transform
//! serves one thread; [`run_chunked`] runs several over an input held in memory.
//!
//! # Example
//!
//! ```
//! use kmsguard_matcher::Matcher;
//! use kmsguard_transform::{Mode, Options, Transform};
//!
//! let input = concat!(
//!     r#"{"eventSource":"kms.amazonaws.com","eventName":"Decrypt"}"#, "\n",
//!     r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#, "\n",
//! );
//! let mut t = Transform::new(Matcher::new(), Options { mode: Mode::Tag, ..Options::default() });
//! let mut out = Vec::new();
//! t.run(&mut input.as_bytes(), &mut out).unwrap();
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.starts_with(r#"{"eventSource":"kms.amazonaws.com","eventName":"Decrypt"}"#));
//! assert!(text.lines().nth(1).unwrap().contains(r#""tags":["kms-cmk-disabled-or-scheduled-for-deletion"]"#));
//! assert_eq!(t.stats().matches, 1);
//! ```
#![deny(missing_docs)]

mod budget;
mod decider;
mod docs;
mod enrich;
mod pack;
mod read;
mod scan;
mod sink;
mod stats;
mod wrap;

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use kmsguard_matcher::packfilter::{PackCandidates, RuleMask};
use kmsguard_matcher::{CandidateLines, Matcher, Shape, Verdict};
use memchr::memmem::Finder;

pub use crate::budget::AlertBudget;
pub use crate::enrich::{Enriched, Enricher};
pub use crate::pack::{Pack, PackEntry, PackHandle};
pub use crate::read::run_chunked;
pub use crate::stats::{Position, RuleCounts, Stats};

use crate::decider::{Alerts, Decider, Search};
use crate::sink::Sink;

/// What comes out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Only matching events, enriched, each ending in `\n`.
    #[default]
    Filter,
    /// Every line, in order: non-matching, invalid and blank lines byte for byte, matching lines
    /// enriched (their line terminator kept).
    Tag,
    /// Nothing written: matches are counted in [`Stats`] and not enriched (`--count`,
    /// `--quiet`), so the enrichment's counts ([`Stats::displaced`], [`Stats::skipped`]) stay
    /// zero. Invalid lines are handled as in filter mode, without being written.
    Count,
}

/// What filter mode does with a line that is not a document Elasticsearch would index.
/// Tag mode always passes such lines through unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnInvalid {
    /// Count it and drop it, like any non-matching line. Only candidate lines are parsed, so
    /// the count covers candidates; the fast path is kept.
    #[default]
    Drop,
    /// Count it and write it out unchanged. Every non-blank line is parsed (slower).
    Pass,
    /// Stop with an error naming the line. Every non-blank line is parsed (slower).
    Fail,
}

/// How the transform runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Filter or tag.
    pub mode: Mode,
    /// Policy for invalid lines in filter mode.
    pub on_invalid: OnInvalid,
    /// Emit each event of a container as its own line, when nothing is lost by it: each record of
    /// a CloudTrail log file (`{"Records":[...]}` with no other member), each element of a
    /// LookupEvents response (`{"Events":[...]}` with no other member), and each record of a log
    /// file held in an envelope's `message` (one envelope per record, its other members copied).
    /// Every line that may hold such a container is then parsed, candidate or not.
    pub split_records: bool,
    /// Longest line evaluated, in bytes without its `\n` (or `\r\n`). Longer lines are never
    /// buffered whole: they are counted as oversized and, like invalid lines, passed through in tag
    /// mode and handled by [`Options::on_invalid`] in filter mode. Memory stays below about this
    /// plus [`Options::read_size`], plus, for a line that is evaluated, up to about six times its
    /// size (its copy, simd-json's buffers and tape, the enriched output): a 50 MB Records file
    /// peaks near 320 MiB.
    pub max_line_bytes: usize,
    /// The size of each read.
    pub read_size: usize,
    /// The tag appended to `tags`; `None` uses the rule's.
    pub tag: Option<String>,
    /// Count lines for [`Stats::lines`]: one more pass over the input (`--stats` asks for it).
    pub count_lines: bool,
    /// Tag mode: write each invalid line (whitespace-only lines included, empty ones not) as one
    /// JSON object holding it (see `wrap.rs`), so every output line is a JSON object or empty,
    /// for consumers that lose data on an invalid line. Every line is then parsed (slower).
    pub wrap_invalid: bool,
    /// Write one line to stderr for each parsed line that does not match, saying why
    /// (`--explain`). Lines are counted so that each can be named.
    pub explain: bool,
    /// At most this many enriched alerts per window (off when `None`). Matches over the budget
    /// are counted in [`Stats::over_budget`], announced by one line on stderr per window, and
    /// otherwise treated as non-matching lines: unchanged in tag mode, dropped in filter mode.
    /// With a rule pack each rule has its own budget.
    pub alert_budget: Option<AlertBudget>,
    /// With a rule pack and an alert budget: each rule's budget is its own `max_signals` (per
    /// the budget's window) rather than the budget's `max`.
    pub max_signals: bool,
}

/// Elasticsearch's default `http.max_content_length`: a longer document cannot be indexed, so
/// it can raise no alert.
pub const DEFAULT_MAX_LINE_BYTES: usize = 100 * 1024 * 1024;

impl Default for Options {
    fn default() -> Options {
        Options {
            mode: Mode::Filter,
            on_invalid: OnInvalid::Drop,
            split_records: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            read_size: 1 << 20,
            tag: None,
            count_lines: true,
            explain: false,
            wrap_invalid: false,
            alert_budget: None,
            max_signals: false,
        }
    }
}

/// Why a run stopped.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    Read(io::Error),
    Write(io::Error),
    Invalid { line: u64, oversized: bool },
}

impl Error {
    /// The I/O error behind this one, if it is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.kind {
            ErrorKind::Read(e) | ErrorKind::Write(e) => Some(e),
            ErrorKind::Invalid { .. } => None,
        }
    }

    /// Whether reading the input failed (as opposed to writing, or an invalid line).
    pub fn is_read(&self) -> bool {
        matches!(self.kind, ErrorKind::Read(_))
    }

    /// Whether an invalid (or oversized) line stopped the run under [`OnInvalid::Fail`].
    pub fn is_invalid_line(&self) -> bool {
        matches!(self.kind, ErrorKind::Invalid { .. })
    }
}

/// Write errors convert implicitly (`?` on `out`); read errors are built where reads happen.
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error { kind: ErrorKind::Write(e) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Read(e) | ErrorKind::Write(e) => e.fmt(f),
            ErrorKind::Invalid { line, oversized: false } => {
                write!(f, "line {line} is not a valid JSON object (--on-invalid fail)")
            }
            ErrorKind::Invalid { line, oversized: true } => {
                write!(f, "line {line} is longer than --max-line-bytes (--on-invalid fail)")
            }
        }
    }
}

/// No `source`: the message already holds the I/O error's (a chain would say it twice).
impl std::error::Error for Error {}

/// The UTF-8 byte order mark some Windows tools write at the start of a file. A line that starts
/// with one is the document after it (the matcher skips it); tag mode keeps it, filter mode's
/// output drops it.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A streaming filter/tag transform over NDJSON.
pub struct Transform {
    decider: Decider,
    sink: Sink,
    options: Options,
    /// Finds the member names of containers `--split-records` splits (`Records`, `Events`).
    containers: [Finder<'static>; 2],
    stats: Stats,
    /// The input being read: its index and name, and the counts when it began.
    input: InputStart,
    /// An oversized line being wrapped as it streams through (`--wrap-invalid`).
    wrapping: Option<wrap::Streaming>,
    /// The read buffer, kept between runs (see `read_buffer`).
    buffer: Vec<u8>,
}

/// Where the current input began in a transform's counts.
#[derive(Clone, Debug, Default)]
struct InputStart {
    index: usize,
    name: String,
    bytes: u64,
    lines: u64,
    /// Its first line has not been seen yet.
    first_line: bool,
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transform").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Transform {
    /// A transform that decides lines with `matcher`.
    pub fn new(matcher: Matcher, options: Options) -> Transform {
        Transform::with_decider(Decider::one(matcher, &options), Stats::default(), options)
    }

    /// A transform that decides lines with every rule of `pack` (RULES.md section 5 for what
    /// comes out; [`Options::tag`] does not apply: each rule has its tag).
    ///
    /// The pack is read from `handle` when the transform starts and again, when it was
    /// replaced, before each buffer.
    pub fn with_pack(handle: Arc<PackHandle>, options: Options) -> Transform {
        let mut stats = Stats::default();
        let decider = Decider::pack(handle, &options, &mut stats);
        Transform::with_decider(decider, stats, options)
    }

    fn with_decider(decider: Decider, stats: Stats, options: Options) -> Transform {
        Transform {
            decider,
            sink: Sink::new(&options),
            options,
            containers: [Finder::new("Records").into_owned(), Finder::new("Events").into_owned()],
            stats,
            input: InputStart { first_line: true, ..InputStart::default() },
            wrapping: None,
            buffer: Vec::new(),
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Names the input read next (its index among the run's inputs, and its name for messages),
    /// so that positions in [`Stats`] and `--explain` lines point into it.
    pub fn begin_input(&mut self, index: usize, name: &str) {
        self.input = InputStart {
            index,
            name: name.to_string(),
            bytes: self.stats.bytes,
            lines: self.stats.lines,
            first_line: true,
        };
    }

    /// The position of the line at `data[start]`, `data` having begun `lines_before` lines into
    /// the run's counts.
    fn position(&self, data: &[u8], start: usize, lines_before: u64) -> Position {
        Position {
            input: self.input.index,
            name: self.input.name.clone(),
            // `data` was counted in `bytes` already; a compacted document (--json-stream) may
            // be a byte longer than what was read, hence the saturation.
            byte: (self.stats.bytes + start as u64)
                .saturating_sub(data.len() as u64)
                .saturating_sub(self.input.bytes),
            line: self
                .counts_lines()
                .then(|| line_number(lines_before, data, start) - self.input.lines),
        }
    }

    /// Notes an input whose first line is only the start of a document that spans lines.
    fn check_first_line(&mut self, data: &[u8], lines_before: u64) {
        if !self.input.first_line {
            return;
        }
        let Some(end) = data.iter().position(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        else {
            return;
        };
        self.input.first_line = false;
        let line_start = memchr::memrchr(b'\n', &data[..end]).map_or(0, |i| i + 1);
        let line_end = memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |i| end + i);
        if starts_spanning_document(&data[line_start..line_end]) {
            self.stats.spanning += 1;
            if self.stats.first_spanning.is_none() {
                self.stats.first_spanning = Some(self.position(data, line_start, lines_before));
            }
        }
    }

    /// Whether [`Stats::lines`] is kept: asked for, or needed to name a failing line.
    fn counts_lines(&self) -> bool {
        self.options.count_lines
            || self.options.explain
            || self.options.on_invalid == OnInvalid::Fail
    }

    /// Whether every line must be parsed to apply the invalid-line policy.
    fn validates_every_line(&self) -> bool {
        self.sink.validates_every_line()
    }

    /// Whether invalid lines are wrapped (tag mode with --wrap-invalid).
    fn wraps(&self) -> bool {
        self.sink.wraps()
    }

    /// Processes whole lines: `data` ends in `\n`, or is the input's last line without one.
    ///
    /// # Errors
    ///
    /// Write errors, and the first invalid line under [`OnInvalid::Fail`].
    pub fn process(&mut self, data: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        self.decider.refresh(&self.options, &mut self.stats);
        let lines_before = self.stats.lines;
        self.stats.bytes += data.len() as u64;
        if self.counts_lines() {
            self.stats.lines += memchr::memchr_iter(b'\n', data).count() as u64;
            if data.last().is_some_and(|&b| b != b'\n') {
                self.stats.lines += 1;
            }
        }
        self.check_first_line(data, lines_before);
        let every_line = self.options.split_records || self.validates_every_line();
        let mut pos = 0;
        if every_line {
            while pos < data.len() {
                let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i);
                let line = &data[pos..end];
                if self.worth_parsing(line) {
                    self.decide(data, pos..end, None, lines_before, out)?;
                } else {
                    self.sink.unmatched(out, &data[pos..(end + 1).min(data.len())])?;
                }
                pos = end + 1;
            }
            return Ok(());
        }
        match self.decider.search() {
            Search::One(prefilter) => {
                self.decide_candidates(data, prefilter.candidate_lines(data), lines_before, out)
            }
            Search::Pack(pack) => {
                let candidates = pack.prefilter.candidate_lines(data);
                self.decide_candidates(data, candidates, lines_before, out)
            }
        }
    }

    /// Decides the candidate lines `ranges` of `data`; in tag mode writes the lines between
    /// them as they are.
    fn decide_candidates(
        &mut self,
        data: &[u8],
        mut ranges: impl Candidates,
        lines_before: u64,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let mut pos = 0;
        while let Some(range) = ranges.next() {
            self.sink.unmatched(out, &data[pos..range.start])?;
            pos = (range.end + 1).min(data.len());
            // The search has the line's rules already: they are handed on, not searched again.
            self.decide(data, range, ranges.rules(), lines_before, out)?;
        }
        self.sink.unmatched(out, &data[pos.min(data.len())..])?;
        Ok(())
    }

    /// Whether a line seen in every-line mode must be parsed.
    fn worth_parsing(&mut self, line: &[u8]) -> bool {
        let doc = line.strip_prefix(BOM).unwrap_or(line);
        if doc.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            // No document. Under --wrap-invalid one with bytes (spaces, a `\r`) is wrapped too,
            // so that every line out is a JSON object or empty.
            return self.wraps() && !line.is_empty();
        }
        self.validates_every_line()
            || self.decider.is_candidate(line)
            || (self.options.split_records
                && self.containers.iter().any(|f| f.find(line).is_some()))
    }

    /// Decides the line `data[range]` and writes what the mode asks for; `rules` are a pack's
    /// rules that may fire on it, when the prefilter's search found them.
    fn decide(
        &mut self,
        data: &[u8],
        range: std::ops::Range<usize>,
        rules: Option<&RuleMask>,
        lines_before: u64,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let line = &data[range.clone()];
        let terminator = &data[range.end..(range.end + 1).min(data.len())];
        // A `\r\n` line is the same document as a `\n` one (RULE.md section 3).
        if line.strip_suffix(b"\r").unwrap_or(line).len() > self.options.max_line_bytes {
            // Streamed input never buffers a line more than a byte (a `\r`) longer.
            self.stats.oversized += 1;
            if self.sink.fails_on_invalid() {
                out.flush()?;
                let line = line_number(lines_before, data, range.start);
                return Err(Error { kind: ErrorKind::Invalid { line, oversized: true } });
            }
            self.sink.oversized(out, line, terminator, OVERSIZED, &mut self.stats)?;
            return Ok(());
        }
        self.stats.candidates += 1;
        let verdict = self.decider.evaluate(line, rules, &mut self.stats);
        self.stats.count(verdict);
        if !verdict.is_match() {
            self.note_miss(verdict, data, range.start, lines_before);
        }
        if self.options.split_records && self.split(verdict, line, out)? {
            return Ok(());
        }
        match verdict {
            Verdict::Match(_) => self.emit_match(line, terminator, out)?,
            Verdict::NoMatch(_) => self.sink.no_match(out, line, terminator)?,
            Verdict::Invalid => {
                self.stats.invalid += 1;
                let Transform { sink, decider, stats, .. } = self;
                let why = || decider.invalid_reason(line);
                if let sink::Invalid::Fail = sink.invalid(out, line, terminator, why, stats)? {
                    let line = line_number(lines_before, data, range.start);
                    return Err(Error { kind: ErrorKind::Invalid { line, oversized: false } });
                }
            }
        }
        Ok(())
    }

    /// Counts what a parsed line that did not match says about the run (an invalid line, a
    /// document without a dataset), and explains it under `--explain`.
    fn note_miss(&mut self, verdict: Verdict, data: &[u8], start: usize, lines_before: u64) {
        if verdict == Verdict::Invalid && self.stats.first_invalid.is_none() {
            self.stats.first_invalid = Some(self.position(data, start, lines_before));
        }
        self.stats.dataset_absent += u64::from(self.decider.dataset_absent(verdict));
        if self.options.explain {
            let at = self.position(data, start, lines_before);
            let line = &data
                [start..memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i)];
            let why = self.decider.explain(line, verdict);
            eprintln!("kmsguard: {}:{}: {why}", at.name, at.line.unwrap_or(0));
        }
    }

    /// Writes a matching line's alerts: in tag mode the line once with every allowed rule's
    /// enrichment, in filter mode one line per allowed rule. Matches over the alert budget go
    /// out as non-matching lines.
    fn emit_match(
        &mut self,
        line: &[u8],
        terminator: &[u8],
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let Transform { decider, sink, stats, options, .. } = self;
        match decider.alerts(options, stats) {
            Alerts::Spent => sink.no_match(out, line, terminator)?,
            Alerts::One(enricher) => sink.alert(out, line, terminator, enricher, stats)?,
            Alerts::Rules(pack, rules) if sink.keeps_every_byte() => {
                sink.alert(out, line, terminator, &pack.enricher(&rules), stats)?;
            }
            Alerts::Rules(pack, rules) => {
                for r in rules {
                    sink.alert(out, line, terminator, pack.enricher_of(r), stats)?;
                }
            }
        }
        Ok(())
    }

    /// Splits a container line into one line per event when it can be split without losing
    /// anything (see [`Options::split_records`]), writing each as the mode says; returns whether
    /// it did.
    fn split(&mut self, verdict: Verdict, line: &[u8], out: &mut dyn Write) -> Result<bool, Error> {
        let line = line.strip_prefix(BOM).unwrap_or(line);
        match verdict.shape() {
            Some(Shape::Records) => {
                let Some(records) = scan::sole_array(line, "Records") else { return Ok(false) };
                for record in records {
                    let record = &line[record];
                    let matched = self.decider.evaluate_piece(Shape::Records, record);
                    self.emit_split(record, matched, out)?;
                }
            }
            Some(Shape::LookupEvents) => {
                let Some(events) = scan::sole_array(line, "Events") else { return Ok(false) };
                for event in events {
                    let event = &line[event];
                    let matched = self.decider.evaluate_piece(Shape::LookupEvents, event);
                    self.emit_split(event, matched, out)?;
                }
            }
            Some(Shape::Envelope) => {
                let Some(envelopes) = scan::split_envelope(line) else { return Ok(false) };
                for envelope in envelopes {
                    let matched = self.decider.evaluate_piece(Shape::Envelope, &envelope);
                    self.emit_split(&envelope, matched, out)?;
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Writes one event split out of a container as its own line.
    fn emit_split(
        &mut self,
        event: &[u8],
        matched: bool,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        self.stats.records += 1;
        if matched {
            self.emit_match(event, b"\n", out)?;
        } else {
            self.sink.no_match(out, event, b"\n")?;
        }
        Ok(())
    }
}

/// The candidate lines of a buffer, as a prefilter's search finds them.
trait Candidates: Iterator<Item = std::ops::Range<usize>> {
    /// The rules the line last returned may fire, when the search knows them (a pack's).
    fn rules(&self) -> Option<&RuleMask> {
        None
    }
}

impl Candidates for CandidateLines<'_, '_> {}

impl Candidates for PackCandidates<'_, '_> {
    fn rules(&self) -> Option<&RuleMask> {
        Some(self.mask())
    }
}

/// Whether `line`, the first of an input, opens a document that goes on over the next lines, as
/// pretty-printed JSON does: `{` or `[` alone, or a line that ends inside an open object or array
/// (`{"Records": [`). Such input wants `--json-stream`.
pub fn starts_spanning_document(line: &[u8]) -> bool {
    let line = line.strip_prefix(BOM).unwrap_or(line);
    let trimmed = line.trim_ascii();
    // A line that starts a document spanning lines ends where JSON can go on: after an opener,
    // a comma or a colon. Any other ending (a complete object's `}`) is settled without a scan.
    if !matches!(trimmed.first(), Some(b'{' | b'['))
        || !matches!(trimmed.last(), Some(b'{' | b'[' | b',' | b':'))
    {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0i64, false, false);
    for &b in trimmed {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => depth += 1,
            (false, _, b'}' | b']') => depth -= 1,
            _ => {}
        }
    }
    depth > 0 && !in_string
}

/// Why a wrapped oversized line is invalid.
const OVERSIZED: &str = "longer than --max-line-bytes";

/// The end of the line holding `data[at - 1]` (just past its `\n`), or `data.len()`: windows
/// and chunks of a buffer are cut there so that no line is split.
pub fn line_end_after(data: &[u8], at: usize) -> usize {
    if at >= data.len() {
        return data.len();
    }
    let from = at.saturating_sub(1);
    memchr::memchr(b'\n', &data[from..]).map_or(data.len(), |i| from + i + 1)
}

/// The 1-based number of the line starting at `data[start]`, `lines_before` lines having been
/// read before `data`.
fn line_number(lines_before: u64, data: &[u8], start: usize) -> u64 {
    lines_before + memchr::memchr_iter(b'\n', &data[..start]).count() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::line_end_after;
    use kmsguard_matcher::Matcher;

    #[test]
    fn spanning_documents_are_told_from_whole_ones() {
        use super::starts_spanning_document as spans;
        for line in ["{", " [ ", r#"{"Records": ["#, r#"{"a": 1,"#, r#"{"a":"#, "\u{feff}{"] {
            assert!(spans(line.as_bytes()), "{line}");
        }
        for line in [r#"{"a":1}"#, "[1]", r#"{"a":"{"}"#, r#""{""#, "", "x{", r#"{"a":"b,"#] {
            assert!(!spans(line.as_bytes()), "{line}");
        }
    }

    #[test]
    fn count_mode_writes_nothing_and_counts_what_filter_mode_writes() {
        use super::{Mode, Options, Transform};
        let sample = include_bytes!("../../../examples/cloudtrail-sample.ndjson");
        let run = |mode| {
            let mut t = Transform::new(Matcher::new(), Options { mode, ..Options::default() });
            let mut out = Vec::new();
            t.run(&mut &sample[..], &mut out).unwrap();
            (out, t.stats().matches)
        };
        let (filtered, matches) = run(Mode::Filter);
        let (counted, counted_matches) = run(Mode::Count);
        assert!(matches > 0);
        assert_eq!(filtered.iter().filter(|&&b| b == b'\n').count() as u64, matches);
        assert!(counted.is_empty());
        assert_eq!(counted_matches, matches);
    }

    #[test]
    fn cuts_fall_just_after_a_newline() {
        let data = b"ab\ncd\nef";
        assert_eq!(line_end_after(data, 0), 3);
        assert_eq!(line_end_after(data, 3), 3, "a cut right after a newline stays there");
        assert_eq!(line_end_after(data, 4), 6);
        assert_eq!(line_end_after(data, 7), 8, "the last line has no newline");
        assert_eq!(line_end_after(data, 50), 8);
    }
}
