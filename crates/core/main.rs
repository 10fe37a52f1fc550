//! The `kmsguard` binary: NDJSON on stdin or files, matching CloudTrail events out.

mod cli;
mod signal;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use std::os::fd::AsFd;

use anyhow::Context;
use clap::Parser;
use kmsguard_matcher::{Matcher, Rule, Shapes, DATA_STREAM_DATASET, EVENT_DATASET};
use kmsguard_transform::{line_end_after, AlertBudget, Mode, OnInvalid, Options, Transform};
use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::cli::{Args, DatasetField, ModeArg, OnInvalidArg};
use crate::signal::StopOnSignal;

fn main() -> ExitCode {
    let args = Args::parse();
    signal::install();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            // Rust ignores SIGPIPE, so a closed stdout (`| head`) surfaces as a BrokenPipe
            // write error: the reader has all it wanted, which is success for a filter.
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("kmsguard: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether a `BrokenPipe` I/O error is anywhere in the chain (a transform error names its I/O
/// error as its source, so the chain reaches it).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn build(args: &Args) -> Transform {
    let dataset_field = match args.dataset_field {
        DatasetField::EventDataset => EVENT_DATASET,
        DatasetField::DataStreamDataset => DATA_STREAM_DATASET,
    };
    let rule = Rule::kms_cmk_disabled_or_scheduled_for_deletion().with_dataset_field(dataset_field);
    let shapes = args.shapes.as_deref().map_or_else(Shapes::all, Shapes::of);
    let matcher = Matcher::builder()
        .rule(rule)
        .shapes(shapes)
        .assume_dataset(args.assume_dataset.clone())
        .build();
    let options = Options {
        mode: match args.mode {
            ModeArg::Filter => Mode::Filter,
            ModeArg::Tag => Mode::Tag,
        },
        on_invalid: match args.on_invalid {
            OnInvalidArg::Drop => OnInvalid::Drop,
            OnInvalidArg::Pass => OnInvalid::Pass,
            OnInvalidArg::Fail => OnInvalid::Fail,
        },
        split_records: args.split_records,
        max_line_bytes: args.max_line_bytes,
        tag: args.tag.clone(),
        count_lines: args.stats,
        alert_budget: args.max_alerts.map(|max| AlertBudget {
            max,
            window: std::time::Duration::from_secs(args.alert_window),
        }),
        ..Options::default()
    };
    Transform::new(matcher, options)
}

/// When `fd` is a pipe (stdin, or a named pipe given as a file), asks the kernel for a 1 MiB pipe buffer instead of 64 KiB, so a fast
/// writer hands data over with a sixteenth of the wake-ups. Best effort: the limit is
/// `/proc/sys/fs/pipe-max-size`, and a refusal changes nothing but speed.
fn enlarge_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: `fstat` fills the zeroed `stat` we own; `fcntl(F_SETPIPE_SZ)` takes an int and
    // only resizes the pipe's kernel buffer. Both act on our own open descriptor.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
        }
    }
}

/// Maps `file` when it is a non-empty regular file; `None` sends it down the read path.
fn map(file: &File) -> Option<Mmap> {
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    // SAFETY: the map is read-only. If another process truncates the file while it is mapped,
    // reading the lost pages raises SIGBUS; ripgrep accepts the same trade-off, and
    // `--no-mmap` avoids it.
    let map = unsafe { Mmap::map(file) }.ok()?;
    let _ = map.advise(Advice::Sequential);
    Some(map)
}

/// Drops the pages of a mapped file that have been decided, so that resident memory stays a few
/// MiB whatever the file's size; says whether to go on (no stop signal has arrived).
struct Releaser<'a> {
    map: &'a Mmap,
    released: usize,
}

impl Releaser<'_> {
    fn release(&mut self, end: usize) -> bool {
        let upto = end / 4096 * 4096;
        if upto > self.released {
            // SAFETY: `MADV_DONTNEED` on a read-only file mapping drops our copy of the pages;
            // touching them again (we never do) would re-read the file, not see zeros.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )
            };
            self.released = upto;
        }
        signal::received().is_none()
    }
}

/// Keeps the lines of consecutive inputs apart (spec section 5): when an input's output ends
/// without a `\n` (tag mode, a last line without one), a `\n` goes out before the next input's
/// first byte. Every read path writes through it, so mapped, streamed and threaded runs agree.
struct Separated<W> {
    inner: W,
    /// The last byte written for the current input, if any.
    last: Option<u8>,
    /// A `\n` is owed before the next byte.
    owed: bool,
}

impl<W: Write> Separated<W> {
    fn new(inner: W) -> Separated<W> {
        Separated { inner, last: None, owed: false }
    }

    /// Marks the end of one input. An input that wrote nothing leaves an owed `\n` owed.
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

/// How much of a mapped file each thread decides per round.
const CHUNK: usize = 4 << 20;

/// Runs over a mapped file. With more than one transform, each round cuts the next
/// `CHUNK` x N bytes into N chunks of whole lines, decides them on N threads, and writes their
/// outputs in input order.
fn run_mapped(
    transforms: &mut [Transform],
    map: &Mmap,
    out: &mut dyn Write,
) -> Result<(), kmsguard_transform::Error> {
    let mut releaser = Releaser { map, released: 0 };
    if let [only] = transforms {
        return only.run_slice(map, out, &mut |end| releaser.release(end));
    }
    let data: &[u8] = map;
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
        if !releaser.release(pos) {
            break;
        }
    }
    out.flush()?;
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    // Line numbers (--on-invalid fail) and the alert budget belong to one stream: one thread.
    let threads = if args.on_invalid == OnInvalidArg::Fail || args.max_alerts.is_some() {
        1
    } else {
        args.threads.max(1)
    };
    let mut transforms: Vec<Transform> = (0..threads).map(|_| build(args)).collect();
    let report = |transforms: &[Transform]| {
        let mut stats = transforms[0].stats().clone();
        transforms[1..].iter().for_each(|t| stats.add(t.stats()));
        eprintln!("{}", stats.report(start.elapsed()));
    };
    let stdout = io::stdout();
    let lock = stdout.lock();
    // Block-buffer a pipe or file; a terminal sees each line as soon as it is decided.
    let capacity = if lock.is_terminal() { 0 } else { 256 * 1024 };
    let mut out = Separated::new(BufWriter::with_capacity(capacity, lock));
    let stdin_name = std::path::PathBuf::from("-");
    let files = if args.files.is_empty() { std::slice::from_ref(&stdin_name) } else { &args.files };
    let mut code = ExitCode::SUCCESS;
    for path in files {
        let result = if path.as_os_str() == "-" {
            let stdin = io::stdin();
            // A redirected regular file can be mapped through the stdin descriptor.
            let file = stdin.as_fd().try_clone_to_owned().map(File::from);
            match file.ok().filter(|_| !args.no_mmap).and_then(|f| map(&f)) {
                Some(map) => run_mapped(&mut transforms, &map, &mut out),
                None => {
                    enlarge_pipe(stdin.as_fd());
                    transforms[0].run(&mut StopOnSignal(stdin.lock()), &mut out)
                }
            }
        } else {
            match File::open(path) {
                Ok(file) => match map(&file).filter(|_| !args.no_mmap) {
                    Some(map) => run_mapped(&mut transforms, &map, &mut out),
                    None => {
                        enlarge_pipe(file.as_fd());
                        transforms[0].run(&mut StopOnSignal(&file), &mut out)
                    }
                },
                Err(e) => {
                    eprintln!("kmsguard: {}: {e}", path.display());
                    code = ExitCode::from(2);
                    continue;
                }
            }
        };
        out.end_input();
        match result {
            Ok(()) => {}
            // An unreadable input is reported, and the others still run, as cat and rg do.
            Err(e) if e.is_read() => {
                eprintln!("kmsguard: {}: {e}", path.display());
                code = ExitCode::from(2);
            }
            Err(e) if e.is_invalid_line() => {
                eprintln!("kmsguard: {}: {e}", path.display());
                code = ExitCode::from(1);
                break;
            }
            Err(e) => {
                if args.stats {
                    report(&transforms);
                }
                return Err(e).context("writing standard output");
            }
        }
        if signal::received().is_some() {
            break;
        }
    }
    out.flush().context("writing standard output")?;
    if args.stats {
        report(&transforms);
    }
    if let Some(sig) = signal::received() {
        // The shell convention for a run ended by a signal, after a clean flush.
        return Ok(ExitCode::from(128 + sig as u8));
    }
    Ok(code)
}
