//! Reading input: a stream of lines, a stream of concatenated JSON documents, an input held
//! whole in memory, and one cut into chunks for several threads. The reading code cuts whole
//! lines (or documents) and hands them to [`Transform::process`]; lines too long to hold stream
//! through here, as the sink's policy for invalid lines says.

use std::io::{self, Read, Write};

use crate::{docs, line_end_after, wrap, Error, ErrorKind, Transform, OVERSIZED};

/// Small enough that the prefilter's passes over a window hit the cache.
const WINDOW: usize = 1 << 20;

impl Transform {
    /// Reads `input` to its end, writing to `out`. `out` is flushed whenever a
    /// read returns less than asked (the input stalled) and at the end, so in a live pipeline a
    /// match is not held back while the input is quiet.
    ///
    /// # Errors
    ///
    /// I/O errors of either side, and the first invalid line under [`OnInvalid::Fail`](crate::OnInvalid::Fail). What was
    /// decided before the error has been written.
    pub fn run(&mut self, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
        // What may stand before a line's `\n`: the longest line evaluated, and a `\r`.
        let max_line = self.options.max_line_bytes.saturating_add(1);
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
                    grow(&mut buf, max_line);
                }
            }
            let want = buf.len() - filled;
            let Some(n) = read_more(input, &mut buf[filled..], out)? else { break };
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
    /// document counts as a line in [`Stats::lines`](crate::Stats::lines); a document longer than
    /// [`Options::max_line_bytes`](crate::Options::max_line_bytes) is handled as an oversized line.
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
                    grow(&mut buf, max_doc);
                }
            }
            let want = buf.len() - filled;
            let Some(n) = read_more(input, &mut buf[filled..], out)? else { break };
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
        self.sink.unmatched(out, bytes)?;
        Ok(())
    }

    /// Decides one document of concatenated JSON and writes what the mode asks for: in tag mode
    /// its own bytes (enriched in place when it matches), otherwise one line.
    fn document(&mut self, doc: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        self.decider.refresh(&self.options, &mut self.stats);
        let lines_before = self.stats.lines;
        self.stats.bytes += doc.len() as u64;
        self.stats.lines += 1;
        let keep_bytes = self.sink.keeps_every_byte() && !self.options.split_records;
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
        } else {
            line.push(b'\n');
            self.sink.unmatched(out, &line)?;
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
    /// Write errors, and the first invalid line under [`OnInvalid::Fail`](crate::OnInvalid::Fail).
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
    /// Write errors, and the first invalid line under [`OnInvalid::Fail`](crate::OnInvalid::Fail) (whose line number
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

    /// The start of a line longer than the limit: counted, then handled like an invalid line.
    fn oversized(&mut self, head: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        self.stats.oversized += 1;
        if self.counts_lines() {
            self.stats.lines += 1;
        }
        if self.sink.fails_on_invalid() {
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
        } else if self.sink.passes_oversized() {
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
}

/// Doubles a full read buffer, up to one byte more than the longest line (or document) held.
fn grow(buf: &mut Vec<u8>, max: usize) {
    let grown = (buf.len() * 2).min(max.saturating_add(1));
    buf.resize(grown.max(buf.len() + 1), 0);
}

/// Reads into `buf` (retrying when interrupted); `None` at the end of the input. On a read
/// error, what was decided is flushed to `out` before the error is returned.
fn read_more(
    input: &mut dyn Read,
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<Option<usize>, Error> {
    loop {
        match input.read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Keep what was decided; the caller reports the error.
                let _ = out.flush();
                return Err(Error { kind: ErrorKind::Read(e) });
            }
        }
    }
}

/// How much of an input held in memory each thread of [`run_chunked`] decides per round.
const CHUNK: usize = 4 << 20;

/// Decides an input held whole in memory (a mapped file) on as many threads as there are
/// `transforms`, with the output [`Transform::run_slice`] gives on one: each round cuts the next
/// `CHUNK` x N bytes into N chunks of whole lines, decides them in parallel into per-thread
/// buffers and writes those in input order. `release` is called as in `run_slice`, after each
/// round. With one transform this is `run_slice`.
///
/// # Errors
///
/// As [`Transform::run_slice`]; a chunk's invalid line under [`OnInvalid::Fail`](crate::OnInvalid::Fail) is numbered
/// from the chunk's start.
pub fn run_chunked(
    transforms: &mut [Transform],
    data: &[u8],
    out: &mut dyn Write,
    release: &mut dyn FnMut(usize) -> bool,
) -> Result<(), Error> {
    if let [only] = transforms {
        return only.run_slice(data, out, release);
    }
    let mut pos = 0;
    let mut outs: Vec<Vec<u8>> = vec![Vec::new(); transforms.len()];
    while pos < data.len() {
        let chunks: Vec<_> = (0..transforms.len())
            .map(|_| {
                let start = pos;
                pos = line_end_after(data, pos + CHUNK);
                start..pos
            })
            .collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = transforms
                .iter_mut()
                .zip(&mut outs)
                .zip(&chunks)
                .map(|((t, o), chunk)| {
                    o.clear();
                    scope.spawn(move || t.process_slice(&data[chunk.clone()], o))
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("a worker panicked"))
        })?;
        for o in &outs {
            out.write_all(o)?;
        }
        if !release(pos) {
            break;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{run_chunked, CHUNK};
    use crate::{Mode, Options, Transform};
    use kmsguard_matcher::Matcher;

    #[test]
    fn chunks_on_threads_write_what_one_transform_writes() {
        let sample = include_bytes!("../../../examples/cloudtrail-sample.ndjson");
        // Enough copies that the threads get several rounds of chunks.
        let data: Vec<u8> = sample.repeat((3 * CHUNK) / sample.len() + 1);
        let transforms = |n| {
            (0..n)
                .map(|_| {
                    Transform::new(
                        Matcher::new(),
                        Options { mode: Mode::Tag, ..Options::default() },
                    )
                })
                .collect::<Vec<_>>()
        };
        let (mut one, mut two) = (Vec::new(), Vec::new());
        let mut releases = Vec::new();
        run_chunked(&mut transforms(1), &data, &mut one, &mut |_| true).unwrap();
        run_chunked(&mut transforms(2), &data, &mut two, &mut |end| {
            releases.push(end);
            true
        })
        .unwrap();
        assert_eq!(one.len(), two.len());
        assert!(one == two, "two threads wrote other bytes than one");
        assert!(releases.len() > 1 && releases.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(releases.last(), Some(&data.len()));
    }
}
