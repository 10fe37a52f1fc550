//! kmsguard's streaming transform: NDJSON in, NDJSON out, matching CloudTrail events filtered or
//! tagged, in input order, in bounded memory.
//!
//! The hot path works on whole buffers: the matcher's prefilter finds the rare candidate lines,
//! and in tag mode everything between candidates is written straight from the input buffer.
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
mod docs;
mod enrich;
mod pack;
mod scan;
mod stats;
mod wrap;

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use kmsguard_matcher::packfilter::{PackCandidates, RuleMask};
use kmsguard_matcher::ruleset::{PackEvaluator, PackVerdict, Tri};
use kmsguard_matcher::{CandidateLines, Matcher, Prefilter, Shape, Verdict};
use memchr::memmem::Finder;

pub use crate::budget::AlertBudget;
pub use crate::enrich::{Enriched, Enricher};
pub use crate::pack::{Pack, PackEntry, PackHandle};
pub use crate::stats::{Position, RuleCounts, Stats};

use crate::budget::{Spend, Spender};

/// What comes out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Only matching events, enriched, each ending in `\n`.
    #[default]
    Filter,
    /// Every line, in order: non-matching, invalid and blank lines byte for byte, matching lines
    /// enriched (their line terminator kept).
    Tag,
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
    /// Longest line evaluated, in bytes without its `\n`. Longer lines are never buffered
    /// whole: they are counted as oversized and, like invalid lines, passed through in tag mode
    /// and handled by [`Options::on_invalid`] in filter mode. Memory stays below about this
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

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io_error().map(|e| e as _)
    }
}

/// The UTF-8 byte order mark some Windows tools write at the start of a file. A line that starts
/// with one is the document after it (the matcher skips it); tag mode keeps it, filter mode's
/// output drops it.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A streaming filter/tag transform over NDJSON.
pub struct Transform {
    engine: Engine,
    options: Options,
    /// Finds the member names of containers `--split-records` splits (`Records`, `Events`).
    containers: [Finder<'static>; 2],
    stats: Stats,
    /// Reused output buffer for enriched lines.
    scratch: Vec<u8>,
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

/// What decides lines: one rule, or a pack of them.
// One per transform, so the variants' sizes do not matter; boxing the one-rule state would add
// a pointer chase to the hot path for nothing.
#[allow(clippy::large_enum_variant)]
enum Engine {
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

/// A transform's state for running a rule pack.
struct PackState {
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
    fn evaluate(
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
    fn refresh(&mut self, options: &Options, stats: &mut Stats) {
        let generation = self.handle.generation();
        if generation == self.generation && !self.slots.is_empty() {
            return;
        }
        self.generation = generation;
        self.pack = self.handle.current();
        self.slots = self.pack.rules().iter().map(|r| stats.rule_slot(&r.tag)).collect();
        self.budgets = match options.alert_budget {
            Some(b) => self
                .pack
                .rules()
                .iter()
                .map(|r| {
                    let max = if options.max_signals { r.max_signals } else { b.max };
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
            .map(|(_, r)| r.tag.as_str())
            .collect();
        if unknown.is_empty() {
            "no rule matched".to_string()
        } else {
            format!("no rule matched; unknown on this raw shape: {}", unknown.join(", "))
        }
    }
}

impl Engine {
    /// Whether `line` could match (the prefilter's verdict).
    fn is_candidate(&mut self, line: &[u8]) -> bool {
        match self {
            Engine::One { prefilter, .. } => prefilter.is_candidate(line),
            Engine::Pack(p) => p.pack.prefilter.possible(line, &mut p.mask, &mut p.mask_scratch),
        }
    }

    /// Why `line`, which did not match, did not.
    fn explain(&mut self, line: &[u8], verdict: Verdict) -> String {
        match self {
            Engine::One { matcher, .. } => match matcher.explain(line) {
                kmsguard_matcher::Explanation::Invalid(why) => why,
                other => other.to_string(),
            },
            Engine::Pack(p) => p.explain(line, verdict),
        }
    }
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transform").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Transform {
    /// A transform that decides lines with `matcher`.
    pub fn new(matcher: Matcher, options: Options) -> Transform {
        let tag = options.tag.clone().unwrap_or_else(|| matcher.rule().tag.to_owned());
        let enricher = Enricher::new(matcher.rule(), &tag);
        let budget = options.alert_budget.map(Spender::new);
        let prefilter = Arc::new(matcher.prefilter().clone());
        Transform::with_engine(Engine::One { matcher, prefilter, enricher, budget }, options)
    }

    /// A transform that decides lines with every rule of `pack` (RULES.md section 5 for what
    /// comes out; [`Options::tag`] does not apply: each rule has its tag).
    ///
    /// The pack is read from `handle` when the transform starts and again, when it was
    /// replaced, before each buffer.
    pub fn with_pack(handle: Arc<PackHandle>, options: Options) -> Transform {
        let state = PackState {
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
        let mut t = Transform::with_engine(Engine::Pack(Box::new(state)), options);
        if let Engine::Pack(p) = &mut t.engine {
            p.refresh(&t.options, &mut t.stats);
        }
        t
    }

    fn with_engine(engine: Engine, options: Options) -> Transform {
        Transform {
            engine,
            options,
            containers: [Finder::new("Records").into_owned(), Finder::new("Events").into_owned()],
            stats: Stats::default(),
            scratch: Vec::new(),
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

    /// Reads `input` to its end, writing to `out`. `out` is flushed whenever a
    /// read returns less than asked (the input stalled) and at the end, so in a live pipeline a
    /// match is not held back while the input is quiet.
    ///
    /// # Errors
    ///
    /// I/O errors of either side, and the first invalid line under [`OnInvalid::Fail`]. What was
    /// decided before the error has been written.
    pub fn run(&mut self, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
        let max_line = self.options.max_line_bytes;
        let mut buf = self.read_buffer(max_line);
        let mut filled = 0;
        // Inside an oversized line: its bytes stream through (or away) up to its `\n`.
        let mut skipping = false;
        loop {
            if filled == buf.len() {
                if filled > max_line {
                    self.oversized(&buf[..filled], out)?;
                    skipping = true;
                    filled = 0;
                } else {
                    let grown = (buf.len() * 2).min(max_line.saturating_add(1));
                    buf.resize(grown.max(buf.len() + 1), 0);
                }
            }
            let want = buf.len() - filled;
            let n = match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Keep what was decided; the caller reports the error.
                    let _ = out.flush();
                    return Err(Error { kind: ErrorKind::Read(e) });
                }
            };
            let mut new = filled;
            filled += n;
            if skipping {
                match memchr::memchr(b'\n', &buf[..filled]) {
                    Some(i) => {
                        self.pass_oversized(&buf[..=i], out)?;
                        buf.copy_within(i + 1..filled, 0);
                        filled -= i + 1;
                        new = 0;
                        skipping = false;
                    }
                    None => {
                        self.pass_oversized(&buf[..filled], out)?;
                        filled = 0;
                    }
                }
            }
            if let Some(i) = memchr::memrchr(b'\n', &buf[new..filled]) {
                let end = new + i + 1;
                self.process(&buf[..end], out)?;
                buf.copy_within(end..filled, 0);
                filled -= end;
            }
            if n < want {
                out.flush()?;
            }
        }
        if filled > 0 && !skipping {
            if filled > max_line {
                self.oversized(&buf[..filled], out)?;
            } else {
                self.process(&buf[..filled], out)?;
            }
        }
        self.end_wrapping(out)?;
        self.buffer = buf;
        out.flush()?;
        Ok(())
    }

    /// Reads `input` to its end as concatenated JSON (`--json-stream`): documents separated by
    /// any whitespace, each spanning as many lines as it likes. Tag mode writes every byte again,
    /// matching documents enriched in place; filter mode writes each match on one line. Each
    /// document counts as a line in [`Stats::lines`]; a document longer than
    /// [`Options::max_line_bytes`] is handled as an oversized line.
    ///
    /// # Errors
    ///
    /// As [`Transform::run`].
    pub fn run_documents(
        &mut self,
        input: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let max_doc = self.options.max_line_bytes;
        let mut buf = self.read_buffer(max_doc);
        let (mut filled, mut pos) = (0, 0);
        // The document being read: where it starts in `buf`, and its scanner's progress.
        let mut doc: Option<(usize, docs::Scanner)> = None;
        let mut scanned = 0;
        // Inside an oversized document: its bytes stream through (or away) to its end.
        let mut oversized: Option<docs::Scanner> = None;
        loop {
            // Make room: drop what is done, then grow for a document that fills the buffer.
            let keep = doc.as_ref().map_or(pos, |(start, _)| *start);
            if keep > 0 {
                buf.copy_within(keep..filled, 0);
                filled -= keep;
                pos -= keep;
                scanned -= scanned.min(keep);
                if let Some((start, _)) = doc.as_mut() {
                    *start = 0;
                }
            }
            if filled == buf.len() {
                if filled > max_doc {
                    let (_, scanner) = doc.take().expect("only a document fills the buffer");
                    self.oversized(&buf[..filled], out)?;
                    oversized = Some(scanner);
                    filled = 0;
                    pos = 0;
                    scanned = 0;
                } else {
                    let grown = (buf.len() * 2).min(max_doc.saturating_add(1));
                    buf.resize(grown.max(buf.len() + 1), 0);
                }
            }
            let want = buf.len() - filled;
            let n = match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = out.flush();
                    return Err(Error { kind: ErrorKind::Read(e) });
                }
            };
            filled += n;
            if let Some(scanner) = oversized.as_mut() {
                let end = scanner.feed(&buf[pos..filled]).map(|k| pos + k);
                self.pass_oversized(&buf[pos..end.unwrap_or(filled)], out)?;
                pos = end.unwrap_or(filled);
                if end.is_some() {
                    oversized = None;
                }
            }
            while oversized.is_none() && pos < filled {
                let Some((start, scanner)) = doc.as_mut() else {
                    let ws = buf[pos..filled].iter().take_while(|&&b| docs::is_ws(b)).count();
                    self.pass_between(&buf[pos..pos + ws], out)?;
                    pos += ws;
                    if pos < filled {
                        doc = Some((pos, docs::Scanner::new()));
                        scanned = pos;
                    }
                    continue;
                };
                match scanner.feed(&buf[scanned..filled]) {
                    Some(k) => {
                        let (start, end) = (*start, scanned + k);
                        doc = None;
                        self.document(&buf[start..end], out)?;
                        pos = end;
                    }
                    None => {
                        scanned = filled;
                        break;
                    }
                }
            }
            if n < want {
                out.flush()?;
            }
        }
        if let Some((start, _)) = doc {
            // The input ended inside a document: it is judged as it is (invalid, as a rule).
            self.document(&buf[start..filled], out)?;
        }
        self.end_wrapping(out)?;
        self.buffer = buf;
        out.flush()?;
        Ok(())
    }

    /// The read buffer of the last run, kept so that a run over many small inputs (a directory
    /// of log files) does not allocate and zero a fresh one per input: `read_size` bytes, at most
    /// `max_line + 1`.
    fn read_buffer(&mut self, max_line: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buffer);
        let size = self.options.read_size.max(1).min(max_line.saturating_add(1));
        if buf.capacity() > 4 * size {
            // Grown for a long line: give the memory back rather than keep it for every input.
            buf = Vec::new();
        }
        buf.truncate(size);
        buf.resize(size, 0);
        buf
    }

    /// Whitespace between documents: through in tag mode.
    fn pass_between(&mut self, bytes: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        self.stats.bytes += bytes.len() as u64;
        if self.options.mode == Mode::Tag {
            out.write_all(bytes)?;
        }
        Ok(())
    }

    /// Decides one document of concatenated JSON and writes what the mode asks for: in tag mode
    /// its own bytes (enriched in place when it matches), otherwise one line.
    fn document(&mut self, doc: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        if let Engine::Pack(p) = &mut self.engine {
            p.refresh(&self.options, &mut self.stats);
        }
        let lines_before = self.stats.lines;
        self.stats.bytes += doc.len() as u64;
        self.stats.lines += 1;
        let keep_bytes = self.options.mode == Mode::Tag && !self.options.split_records;
        if keep_bytes {
            if self.worth_parsing(doc) {
                return self.decide(doc, 0..doc.len(), None, lines_before, out);
            }
            out.write_all(doc)?;
            return Ok(());
        }
        let mut line = Vec::with_capacity(doc.len());
        docs::compact(doc, &mut line);
        if self.worth_parsing(&line) {
            line.push(b'\n');
            self.decide(&line, 0..line.len() - 1, None, lines_before, out)?;
        } else if self.options.mode == Mode::Tag {
            line.push(b'\n');
            out.write_all(&line)?;
        }
        Ok(())
    }

    /// Processes an input held whole in memory (a memory-mapped file), in windows of whole
    /// lines, with the same output as [`Transform::run`] on the same bytes. After each window,
    /// `release(end)` says that `data[..end]` will not be read again, so a caller can drop those
    /// pages and keep memory bounded; it returns `false` to stop there (on a signal, say), with
    /// everything decided so far written and flushed.
    ///
    /// # Errors
    ///
    /// Write errors, and the first invalid line under [`OnInvalid::Fail`].
    pub fn run_slice(
        &mut self,
        data: &[u8],
        out: &mut dyn Write,
        release: &mut dyn FnMut(usize) -> bool,
    ) -> Result<(), Error> {
        let mut pos = 0;
        while pos < data.len() {
            let end = line_end_after(data, pos + WINDOW);
            self.process(&data[pos..end], out)?;
            pos = end;
            if !release(end) {
                break;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// Processes `data`, whole lines from the middle of an input held in memory, in
    /// cache-sized windows; no byte order mark is looked for and `out` is not flushed. A caller
    /// that splits a mapped file between threads gives each chunk to its own transform.
    ///
    /// # Errors
    ///
    /// Write errors, and the first invalid line under [`OnInvalid::Fail`] (whose line number
    /// then counts from the chunk's start).
    pub fn process_slice(&mut self, data: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        let mut pos = 0;
        while pos < data.len() {
            let end = line_end_after(data, pos + WINDOW);
            self.process(&data[pos..end], out)?;
            pos = end;
        }
        Ok(())
    }

    /// Whether [`Stats::lines`] is kept: asked for, or needed to name a failing line.
    fn counts_lines(&self) -> bool {
        self.options.count_lines
            || self.options.explain
            || self.options.on_invalid == OnInvalid::Fail
    }

    /// Whether every line must be parsed to apply the invalid-line policy: filter mode's pass
    /// and fail, tag mode's --wrap-invalid.
    fn validates_every_line(&self) -> bool {
        match self.options.mode {
            Mode::Filter => self.options.on_invalid != OnInvalid::Drop,
            Mode::Tag => self.options.wrap_invalid,
        }
    }

    /// Whether invalid lines are wrapped (tag mode with --wrap-invalid).
    fn wraps(&self) -> bool {
        self.options.mode == Mode::Tag && self.options.wrap_invalid
    }

    /// The start of a line longer than the limit: counted, then handled like an invalid line.
    fn oversized(&mut self, head: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        self.stats.oversized += 1;
        if self.counts_lines() {
            self.stats.lines += 1;
        }
        if self.options.mode == Mode::Filter && self.options.on_invalid == OnInvalid::Fail {
            return Err(Error {
                kind: ErrorKind::Invalid { line: self.stats.lines, oversized: true },
            });
        }
        if self.wraps() {
            self.stats.wrapped += 1;
            self.wrapping = Some(wrap::Streaming::begin(OVERSIZED, out)?);
        }
        self.pass_oversized(head, out)
    }

    /// Bytes of an oversized line: through in tag mode and with `--on-invalid pass`, else away;
    /// wrapped under --wrap-invalid, the wrapper closed at the line's `\n`.
    fn pass_oversized(&mut self, bytes: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        self.stats.bytes += bytes.len() as u64;
        if let Some(wrapping) = self.wrapping.as_mut() {
            match bytes.strip_suffix(b"\n") {
                Some(last) => {
                    wrapping.chunk(last, out)?;
                    self.end_wrapping(out)?;
                    out.write_all(b"\n")?;
                }
                None => wrapping.chunk(bytes, out)?,
            }
        } else if self.options.mode == Mode::Tag || self.options.on_invalid == OnInvalid::Pass {
            out.write_all(bytes)?;
        }
        Ok(())
    }

    /// Closes the wrapper of an oversized line the input ended inside.
    fn end_wrapping(&mut self, out: &mut dyn Write) -> Result<(), Error> {
        if let Some(wrapping) = self.wrapping.take() {
            wrapping.end(out)?;
        }
        Ok(())
    }

    /// Processes whole lines: `data` ends in `\n`, or is the input's last line without one.
    ///
    /// # Errors
    ///
    /// Write errors, and the first invalid line under [`OnInvalid::Fail`].
    pub fn process(&mut self, data: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        if let Engine::Pack(p) = &mut self.engine {
            p.refresh(&self.options, &mut self.stats);
        }
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
                } else if self.options.mode == Mode::Tag {
                    out.write_all(&data[pos..(end + 1).min(data.len())])?;
                }
                pos = end + 1;
            }
            return Ok(());
        }
        match &self.engine {
            Engine::One { prefilter, .. } => {
                let prefilter = Arc::clone(prefilter);
                self.decide_candidates(data, prefilter.candidate_lines(data), lines_before, out)
            }
            Engine::Pack(p) => {
                let pack = Arc::clone(&p.pack);
                self.decide_candidates(
                    data,
                    pack.prefilter.candidate_lines(data),
                    lines_before,
                    out,
                )
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
            if self.options.mode == Mode::Tag {
                out.write_all(&data[pos..range.start])?;
            }
            pos = (range.end + 1).min(data.len());
            // The search has the line's rules already: they are handed on, not searched again.
            self.decide(data, range, ranges.rules(), lines_before, out)?;
        }
        if self.options.mode == Mode::Tag {
            out.write_all(&data[pos.min(data.len())..])?;
        }
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
            || self.engine.is_candidate(line)
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
        let tag_mode = self.options.mode == Mode::Tag;
        if line.len() > self.options.max_line_bytes {
            // Only reached for input held in memory; streamed input never buffers such a line.
            self.stats.oversized += 1;
            if !tag_mode && self.options.on_invalid == OnInvalid::Fail {
                out.flush()?;
                let line = line_number(lines_before, data, range.start);
                return Err(Error { kind: ErrorKind::Invalid { line, oversized: true } });
            }
            if self.wraps() {
                self.stats.wrapped += 1;
                let mut wrapping = wrap::Streaming::begin(OVERSIZED, out)?;
                wrapping.chunk(line, out)?;
                wrapping.end(out)?;
                out.write_all(terminator)?;
            } else if tag_mode || self.options.on_invalid == OnInvalid::Pass {
                write_line(out, line, terminator)?;
            }
            return Ok(());
        }
        self.stats.candidates += 1;
        let verdict = match &mut self.engine {
            Engine::One { matcher, .. } => matcher.evaluate(line),
            Engine::Pack(p) => p.evaluate(line, rules, Some(&mut self.stats)),
        };
        self.stats.count(verdict);
        if !verdict.is_match() {
            self.note_miss(verdict, data, range.start, lines_before);
        }
        if self.options.split_records && self.split(verdict, line, out)? {
            return Ok(());
        }
        match verdict {
            Verdict::Match(_) => self.emit_match(line, terminator, out)?,
            Verdict::NoMatch(_) => {
                if tag_mode {
                    write_line(out, line, terminator)?;
                }
            }
            Verdict::Invalid => {
                self.stats.invalid += 1;
                match (tag_mode, self.options.on_invalid) {
                    (true, _) if self.options.wrap_invalid => {
                        self.stats.wrapped += 1;
                        let why = if line.trim_ascii().is_empty() {
                            "blank line".to_string()
                        } else {
                            self.engine.explain(line, verdict)
                        };
                        wrap::write_wrapped(line, &why, out)?;
                        out.write_all(terminator)?;
                    }
                    (true, _) => {
                        write_line(out, line, terminator)?;
                    }
                    (false, OnInvalid::Drop) => {}
                    (false, OnInvalid::Pass) => {
                        write_line(out, line, b"\n")?;
                    }
                    (false, OnInvalid::Fail) => {
                        out.flush()?;
                        let line = line_number(lines_before, data, range.start);
                        return Err(Error { kind: ErrorKind::Invalid { line, oversized: false } });
                    }
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
        let dataset_absent = verdict == Verdict::NoMatch(Some(Shape::Ecs))
            && matches!(&self.engine, Engine::One { matcher, .. }
                if matches!(matcher.last_miss(), kmsguard_matcher::Miss::DatasetAbsent(_)));
        self.stats.dataset_absent += u64::from(dataset_absent);
        if self.options.explain {
            let at = self.position(data, start, lines_before);
            let line = &data
                [start..memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i)];
            let why = match &mut self.engine {
                Engine::One { matcher, .. } => matcher.explain(line).to_string(),
                Engine::Pack(p) => p.explain(line, verdict),
            };
            eprintln!("kmsguard: {}:{}: {why}", at.name, at.line.unwrap_or(0));
        }
    }

    /// Writes a matching line enriched: with its own terminator in tag mode, with `\n` (and
    /// without a trailing `\r`) in filter mode. A pack's filter mode writes one line per matched
    /// rule. Matches over the alert budget are treated as non-matching.
    fn emit_match(
        &mut self,
        line: &[u8],
        terminator: &[u8],
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let tag_mode = self.options.mode == Mode::Tag;
        let Transform { engine, stats, scratch, options, .. } = self;
        let mut emit = |enricher: &Enricher, stats: &mut Stats| -> Result<(), Error> {
            scratch.clear();
            let enriched = enricher.enrich(line, scratch);
            stats.enriched(enriched);
            if tag_mode {
                write_line(out, scratch, terminator)?;
            } else {
                let doc = scratch.strip_prefix(BOM).unwrap_or(scratch);
                write_line(out, doc.strip_suffix(b"\r").unwrap_or(doc), b"\n")?;
            }
            Ok(())
        };
        let allowed = match engine {
            Engine::One { enricher, budget, .. } => {
                match budget.as_mut().map(|b| b.spend(Instant::now())) {
                    Some(Spend::Over { warn }) => {
                        stats.over_budget += 1;
                        if warn {
                            announce_budget(options, None);
                        }
                    }
                    _ => {
                        stats.matches += 1;
                        return emit(enricher, stats);
                    }
                }
                Vec::new()
            }
            Engine::Pack(p) => {
                let now = Instant::now();
                let mut allowed = Vec::with_capacity(p.matched.len());
                for &r in &p.matched {
                    match p.budgets.get_mut(r).map(|b| b.spend(now)) {
                        Some(Spend::Over { warn }) => {
                            stats.over_budget += 1;
                            stats.rules[p.slots[r]].over_budget += 1;
                            if warn {
                                let rule = &p.pack.rules()[r];
                                let max =
                                    if options.max_signals { Some(rule.max_signals) } else { None };
                                announce_budget(options, Some((&rule.tag, max)));
                            }
                        }
                        _ => allowed.push(r),
                    }
                }
                if !allowed.is_empty() {
                    stats.matches += 1;
                    for &r in &allowed {
                        stats.rules[p.slots[r]].matches += 1;
                    }
                    if tag_mode {
                        return emit(&p.pack.enricher(&allowed), stats);
                    }
                    for &r in &allowed {
                        emit(p.pack.enricher_of(r), stats)?;
                    }
                    return Ok(());
                }
                allowed
            }
        };
        debug_assert!(allowed.is_empty());
        if tag_mode {
            write_line(out, line, terminator)?;
        }
        Ok(())
    }

    /// Decides one event split out of a container (`kind` says which).
    fn evaluate_piece(&mut self, kind: Shape, piece: &[u8]) -> bool {
        match &mut self.engine {
            Engine::One { matcher, .. } => match kind {
                Shape::Records => matcher.evaluate_record(piece),
                Shape::LookupEvents => matcher.evaluate_lookup_event(piece),
                _ => matcher.evaluate(piece),
            }
            .is_match(),
            Engine::Pack(p) => match kind {
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
                    let matched = self.evaluate_piece(Shape::Records, record);
                    self.emit_split(record, matched, out)?;
                }
            }
            Some(Shape::LookupEvents) => {
                let Some(events) = scan::sole_array(line, "Events") else { return Ok(false) };
                for event in events {
                    let event = &line[event];
                    let matched = self.evaluate_piece(Shape::LookupEvents, event);
                    self.emit_split(event, matched, out)?;
                }
            }
            Some(Shape::Envelope) => {
                let Some(envelopes) = scan::split_envelope(line) else { return Ok(false) };
                for envelope in envelopes {
                    let matched = self.evaluate_piece(Shape::Envelope, &envelope);
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
        } else if self.options.mode == Mode::Tag {
            write_line(out, event, b"\n")?;
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

/// Small enough that the prefilter's passes over a window hit the cache.
const WINDOW: usize = 1 << 20;

/// The end of the line holding `data[at - 1]` (just past its `\n`), or `data.len()`: windows
/// and chunks of a buffer are cut there so that no line is split.
pub fn line_end_after(data: &[u8], at: usize) -> usize {
    if at >= data.len() {
        return data.len();
    }
    let from = at.saturating_sub(1);
    memchr::memchr(b'\n', &data[from..]).map_or(data.len(), |i| from + i + 1)
}

/// Writes a line and its terminator (`\n`, or nothing for a final line without one).
fn write_line(out: &mut dyn Write, line: &[u8], terminator: &[u8]) -> io::Result<()> {
    out.write_all(line)?;
    out.write_all(terminator)
}

/// The 1-based number of the line starting at `data[start]`, `lines_before` lines having been
/// read before `data`.
fn line_number(lines_before: u64, data: &[u8], start: usize) -> u64 {
    lines_before + memchr::memchr_iter(b'\n', &data[..start]).count() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::line_end_after;

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
    fn cuts_fall_just_after_a_newline() {
        let data = b"ab\ncd\nef";
        assert_eq!(line_end_after(data, 0), 3);
        assert_eq!(line_end_after(data, 3), 3, "a cut right after a newline stays there");
        assert_eq!(line_end_after(data, 4), 6);
        assert_eq!(line_end_after(data, 7), 8, "the last line has no newline");
        assert_eq!(line_end_after(data, 50), 8);
    }
}
