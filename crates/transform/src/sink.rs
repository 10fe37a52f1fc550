//! The output side of a transform: what each mode writes for a decided line, decided once from
//! [`Options`] instead of checked at every turn. The transform reads and cuts input and the
//! decider says what a line is; the sink alone writes.

use std::io::{self, Write};

use crate::{wrap, Enricher, Mode, OnInvalid, Options, Stats, BOM};

/// What a run writes (see [`Mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Enriched matches only; invalid lines as [`OnInvalid`] says.
    Filter(OnInvalid),
    /// Every byte again, matches enriched; invalid lines wrapped when asked.
    Tag { wrap_invalid: bool },
    /// Nothing but the counts; invalid lines as [`OnInvalid`] says, without writing them.
    Count(OnInvalid),
}

/// What became of an invalid line.
#[must_use]
pub(crate) enum Invalid {
    /// Written, wrapped or dropped as the policy says.
    Handled,
    /// `--on-invalid fail`: the run stops at it.
    Fail,
}

/// Writes decided lines as the run's mode asks.
#[derive(Debug)]
pub(crate) struct Sink {
    policy: Policy,
    /// Reused for each enriched line.
    scratch: Vec<u8>,
}

impl Sink {
    pub(crate) fn new(options: &Options) -> Sink {
        let policy = match options.mode {
            Mode::Filter => Policy::Filter(options.on_invalid),
            Mode::Tag => Policy::Tag { wrap_invalid: options.wrap_invalid },
            Mode::Count => Policy::Count(options.on_invalid),
        };
        Sink { policy, scratch: Vec::new() }
    }

    /// Whether every input byte comes out again (tag mode).
    pub(crate) fn keeps_every_byte(&self) -> bool {
        matches!(self.policy, Policy::Tag { .. })
    }

    /// Whether invalid lines are wrapped (tag mode with `--wrap-invalid`).
    pub(crate) fn wraps(&self) -> bool {
        self.policy == Policy::Tag { wrap_invalid: true }
    }

    /// Whether the policy for invalid lines needs every line parsed: filter (and count) mode's
    /// pass and fail, tag mode's `--wrap-invalid`.
    pub(crate) fn validates_every_line(&self) -> bool {
        match self.policy {
            Policy::Filter(on_invalid) | Policy::Count(on_invalid) => on_invalid != OnInvalid::Drop,
            Policy::Tag { wrap_invalid } => wrap_invalid,
        }
    }

    /// Whether an invalid (or oversized) line stops the run.
    pub(crate) fn fails_on_invalid(&self) -> bool {
        matches!(self.policy, Policy::Filter(OnInvalid::Fail) | Policy::Count(OnInvalid::Fail))
    }

    /// Whether the bytes of an oversized line that is not wrapped go out as they are.
    pub(crate) fn passes_oversized(&self) -> bool {
        matches!(self.policy, Policy::Tag { .. } | Policy::Filter(OnInvalid::Pass))
    }

    /// Bytes no rule can match (lines between candidates, whitespace between documents): out
    /// again in tag mode.
    pub(crate) fn unmatched(&self, out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
        if self.keeps_every_byte() {
            out.write_all(bytes)?;
        }
        Ok(())
    }

    /// A line that did not match, or matched over its budget: out again in tag mode.
    pub(crate) fn no_match(
        &self,
        out: &mut dyn Write,
        line: &[u8],
        terminator: &[u8],
    ) -> io::Result<()> {
        if self.keeps_every_byte() {
            write_line(out, line, terminator)?;
        }
        Ok(())
    }

    /// One alert: `line` enriched by `enricher`, with its own terminator in tag mode, with
    /// `\n` (and without a byte order mark or a trailing `\r`) in filter mode. Count mode
    /// writes nothing and does not enrich.
    pub(crate) fn alert(
        &mut self,
        out: &mut dyn Write,
        line: &[u8],
        terminator: &[u8],
        enricher: &Enricher,
        stats: &mut Stats,
    ) -> io::Result<()> {
        if let Policy::Count(_) = self.policy {
            return Ok(());
        }
        self.scratch.clear();
        stats.enriched(enricher.enrich(line, &mut self.scratch));
        let doc = &self.scratch[..];
        if self.keeps_every_byte() {
            write_line(out, doc, terminator)
        } else {
            let doc = doc.strip_prefix(BOM).unwrap_or(doc);
            write_line(out, doc.strip_suffix(b"\r").unwrap_or(doc), b"\n")
        }
    }

    /// A line that is not a document Elasticsearch would index; `why` says why, for a wrapper.
    pub(crate) fn invalid(
        &self,
        out: &mut dyn Write,
        line: &[u8],
        terminator: &[u8],
        why: impl FnOnce() -> String,
        stats: &mut Stats,
    ) -> io::Result<Invalid> {
        match self.policy {
            Policy::Tag { wrap_invalid: true } => {
                stats.wrapped += 1;
                let why =
                    if line.trim_ascii().is_empty() { "blank line".to_string() } else { why() };
                wrap::write_wrapped(line, &why, out)?;
                out.write_all(terminator)?;
            }
            Policy::Tag { wrap_invalid: false } => write_line(out, line, terminator)?,
            Policy::Filter(OnInvalid::Pass) => write_line(out, line, b"\n")?,
            Policy::Filter(OnInvalid::Fail) | Policy::Count(OnInvalid::Fail) => {
                out.flush()?;
                return Ok(Invalid::Fail);
            }
            Policy::Filter(OnInvalid::Drop) | Policy::Count(_) => {}
        }
        Ok(Invalid::Handled)
    }

    /// A line longer than the limit, held in memory whole: wrapped, passed or dropped like an
    /// invalid line (the caller has counted it and checked [`Sink::fails_on_invalid`]).
    pub(crate) fn oversized(
        &self,
        out: &mut dyn Write,
        line: &[u8],
        terminator: &[u8],
        why: &str,
        stats: &mut Stats,
    ) -> io::Result<()> {
        if self.wraps() {
            stats.wrapped += 1;
            let mut wrapping = wrap::Streaming::begin(why, out)?;
            wrapping.chunk(line, out)?;
            wrapping.end(out)?;
            out.write_all(terminator)?;
        } else if self.passes_oversized() {
            write_line(out, line, terminator)?;
        }
        Ok(())
    }
}

/// Writes a line and its terminator (`\n`, or nothing for a final line without one).
pub(crate) fn write_line(out: &mut dyn Write, line: &[u8], terminator: &[u8]) -> io::Result<()> {
    out.write_all(line)?;
    out.write_all(terminator)
}
