//! Where decided events go: standard output, one input after the other, whole lines only.
//!
//! [`Separated`] keeps the lines of consecutive inputs apart. [`Ordered`] lets several threads
//! decide inputs at once while the output stays exactly what one thread would write: each input
//! writes into its own buffer until it is the oldest unfinished input, then straight through.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// A writer that is told where each input ends.
pub trait InputSink: Write {
    /// Marks the end of one input's output.
    fn end_input(&mut self);
}

/// Keeps the lines of consecutive inputs apart (spec section 5): when an input's output ends
/// without a `\n` (tag mode, a last line without one), a `\n` goes out before the next input's
/// first byte. Every read path writes through it, so mapped, streamed and threaded runs agree.
pub struct Separated<W> {
    inner: W,
    /// The last byte written for the current input, if any.
    last: Option<u8>,
    /// A `\n` is owed before the next byte.
    owed: bool,
}

impl<W: Write> Separated<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Separated<W> {
        Separated { inner, last: None, owed: false }
    }
}

impl<W: Write> InputSink for Separated<W> {
    /// An input that wrote nothing leaves an owed `\n` owed.
    fn end_input(&mut self) {
        if let Some(last) = self.last.take() {
            self.owed = last != b'\n';
        }
    }
}

impl<W: Write> Write for Separated<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.owed {
            self.inner.write_all(b"\n")?;
            self.owed = false;
        }
        let n = self.inner.write(buf)?;
        if n > 0 {
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An input's output held in memory until it is the oldest unfinished input: past this, it waits
/// for its turn and then streams, so a large input costs no more memory than this.
const HOLD: usize = 8 << 20;

/// The shared state of inputs decided in parallel and written in input order.
pub struct Ordered<W> {
    out: Mutex<W>,
    /// The index of the input whose turn it is to write.
    turn: Mutex<usize>,
    turned: Condvar,
    /// Set when the run stops early (a write error, a signal): nobody waits any more.
    stopped: AtomicBool,
}

impl<W: InputSink> Ordered<W> {
    /// Shares `out` between inputs `0..`.
    pub fn new(out: W) -> Ordered<W> {
        Ordered {
            out: Mutex::new(out),
            turn: Mutex::new(0),
            turned: Condvar::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// The writer back, once every input is done.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until input `index` may write; `false` when the run stopped instead.
    fn wait_turn(&self, index: usize) -> bool {
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        while *turn != index && !self.stopped.load(Ordering::Relaxed) {
            turn = self.turned.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        !self.stopped.load(Ordering::Relaxed)
    }

    /// Waits while input `index` is more than `window` inputs ahead of the one writing, so that
    /// at most `window` outputs are held at once; `false` when the run stopped instead.
    pub fn wait_window(&self, index: usize, window: usize) -> bool {
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        while index >= *turn + window && !self.stopped.load(Ordering::Relaxed) {
            turn = self.turned.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        !self.stopped.load(Ordering::Relaxed)
    }

    /// Stops the run: every waiting input gives up.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _guard = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.turned.notify_all();
    }

    /// The writer for input `index`.
    pub fn slot(&self, index: usize) -> Slot<'_, W> {
        Slot { shared: self, index, held: Vec::new(), streaming: false }
    }
}

/// One input's writer (see [`Ordered`]).
pub struct Slot<'a, W: InputSink> {
    shared: &'a Ordered<W>,
    index: usize,
    held: Vec<u8>,
    streaming: bool,
}

impl<W: InputSink> Slot<'_, W> {
    fn stopped() -> io::Error {
        io::Error::new(io::ErrorKind::Interrupted, "the run stopped")
    }

    /// Writes what is held once it is this input's turn, ends the input and passes the turn on.
    /// `note`, if any, goes to stderr in the same turn, so messages come in input order too.
    pub fn finish(mut self, note: Option<&str>) -> io::Result<()> {
        if !self.shared.wait_turn(self.index) {
            return Err(Slot::<W>::stopped());
        }
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let result = {
            let mut out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
            let result = out.write_all(&self.held);
            out.end_input();
            result
        };
        self.held = Vec::new();
        *self.shared.turn.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.shared.turned.notify_all();
        result
    }
}

impl<W: InputSink> Write for Slot<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.streaming {
            return self.shared.out.lock().unwrap_or_else(|e| e.into_inner()).write(buf);
        }
        self.held.extend_from_slice(buf);
        if self.held.len() > HOLD {
            if !self.shared.wait_turn(self.index) {
                return Err(Slot::<W>::stopped());
            }
            self.shared.out.lock().unwrap_or_else(|e| e.into_inner()).write_all(&self.held)?;
            self.held.clear();
            self.streaming = true;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.streaming {
            self.shared.out.lock().unwrap_or_else(|e| e.into_inner()).flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_ends_an_unterminated_input_before_the_next() {
        let mut out = Separated::new(Vec::new());
        out.write_all(b"a").unwrap();
        out.end_input();
        out.end_input(); // an empty input keeps the newline owed
        out.write_all(b"b\n").unwrap();
        out.end_input();
        out.write_all(b"c").unwrap();
        out.end_input();
        assert_eq!(out.inner, b"a\nb\nc");
    }

    #[test]
    fn ordered_output_is_input_order_whatever_finishes_first() {
        let ordered = Ordered::new(Separated::new(Vec::new()));
        std::thread::scope(|s| {
            for i in (0..8usize).rev() {
                let ordered = &ordered;
                s.spawn(move || {
                    let mut slot = ordered.slot(i);
                    // Big enough, for some, to stream once it is their turn.
                    let line = format!("{i}{}\n", "x".repeat(if i % 3 == 0 { HOLD } else { 10 }));
                    slot.write_all(line.as_bytes()).unwrap();
                    slot.write_all(format!("{i}").as_bytes()).unwrap();
                    slot.finish(None).unwrap();
                });
            }
        });
        let out = ordered.into_inner().inner;
        let firsts: Vec<u8> =
            out.split(|&b| b == b'\n').filter_map(|l| l.first().copied()).collect();
        assert_eq!(firsts, b"0011223344556677");
    }
}
