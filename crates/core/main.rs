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
use kmsguard_transform::{AlertBudget, Mode, OnInvalid, Options, Transform};
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

/// Runs over a mapped file, dropping each window's pages once it is decided so that resident
/// memory stays a few MiB whatever the file's size.
fn run_mapped(
    transform: &mut Transform,
    map: &Mmap,
    out: &mut dyn Write,
) -> Result<(), kmsguard_transform::Error> {
    let page = 4096;
    let mut released = 0;
    transform.run_slice(map, out, &mut |end| {
        let upto = end / page * page;
        if upto > released {
            // SAFETY: `MADV_DONTNEED` on a read-only file mapping drops our copy of the pages;
            // touching them again (we never do) would re-read the file, not see zeros.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, released, upto - released)
            };
            released = upto;
        }
        signal::received().is_none()
    })
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let mut transform = build(args);
    let stdout = io::stdout();
    let lock = stdout.lock();
    // Block-buffer a pipe or file; a terminal sees each line as soon as it is decided.
    let capacity = if lock.is_terminal() { 0 } else { 256 * 1024 };
    let mut out = BufWriter::with_capacity(capacity, lock);
    let stdin_name = std::path::PathBuf::from("-");
    let files = if args.files.is_empty() { std::slice::from_ref(&stdin_name) } else { &args.files };
    let mut code = ExitCode::SUCCESS;
    for path in files {
        let result = if path.as_os_str() == "-" {
            let stdin = io::stdin();
            // A redirected regular file can be mapped through the stdin descriptor.
            let file = stdin.as_fd().try_clone_to_owned().map(File::from);
            match file.ok().filter(|_| !args.no_mmap).and_then(|f| map(&f)) {
                Some(map) => run_mapped(&mut transform, &map, &mut out),
                None => transform.run(&mut StopOnSignal(stdin.lock()), &mut out),
            }
        } else {
            match File::open(path) {
                Ok(file) => match map(&file).filter(|_| !args.no_mmap) {
                    Some(map) => run_mapped(&mut transform, &map, &mut out),
                    None => transform.run(&mut StopOnSignal(&file), &mut out),
                },
                Err(e) => {
                    eprintln!("kmsguard: {}: {e}", path.display());
                    code = ExitCode::from(2);
                    continue;
                }
            }
        };
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
                    eprintln!("{}", transform.stats().report(start.elapsed()));
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
        eprintln!("{}", transform.stats().report(start.elapsed()));
    }
    if let Some(sig) = signal::received() {
        // The shell convention for a run ended by a signal, after a clean flush.
        return Ok(ExitCode::from(128 + sig as u8));
    }
    Ok(code)
}
