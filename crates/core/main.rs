//! The `kmsguard` binary: NDJSON on stdin or files, matching CloudTrail events out.

mod cli;
mod input;
mod output;
mod signal;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use std::os::fd::AsFd;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use kmsguard_matcher::{Matcher, Rule, Shapes, DATA_STREAM_DATASET, EVENT_DATASET};
use kmsguard_transform::{AlertBudget, Mode, OnInvalid, Options, Pack, PackHandle, Transform};
use memmap2::{Mmap, UncheckedAdvice};

use crate::cli::{Args, DatasetField, MaxAlerts, ModeArg, OnInvalidArg, StatsFormat, WarnKind};
use crate::input::{Format, Input};
use crate::output::{InputSink, Ordered, Separated};
use crate::signal::{Reload, StopOnSignal};

fn main() -> ExitCode {
    if let Some(code) = nats_subcommand() {
        return code;
    }
    // Computed once per run (it detects the CPU), so leaking it is what `'static` costs.
    let version: &'static str = Box::leak(cli::long_version().into_boxed_str());
    let matches = Args::command().long_version(version).get_matches_from(rules_check_alias());
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if let Some(kind) = args.generate {
        return match cli::generate(kind, &mut io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kmsguard: {e}");
                ExitCode::from(2)
            }
        };
    }
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

/// The command line, with `kmsguard rules check PATH...` spelled as `--list-rules --rules
/// PATH...` (to read a file named `rules`, write `./rules`).
fn rules_check_alias() -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1..3) {
        Some([a, b]) if a == "rules" && b == "check" => {
            let mut out = vec![args[0].clone(), "--list-rules".into()];
            for path in &args[3..] {
                out.push("--rules".into());
                out.push(path.clone());
            }
            out
        }
        _ => args,
    }
}

/// The rule pack of `--rules`, loaded once by [`run`] and replaced on SIGHUP.
static PACK: OnceLock<Arc<PackHandle>> = OnceLock::new();

/// Whether a `BrokenPipe` I/O error is anywhere in the chain, by itself or inside a transform
/// error (whose message holds it, so it is not its `source`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io = cause.downcast_ref::<io::Error>().or_else(|| {
            cause.downcast_ref::<kmsguard_transform::Error>().and_then(|e| e.io_error())
        });
        io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The rule the run evaluates.
fn rule(args: &Args) -> Rule {
    let dataset_field = match args.dataset_field {
        DatasetField::EventDataset => EVENT_DATASET,
        DatasetField::DataStreamDataset => DATA_STREAM_DATASET,
    };
    Rule::kms_cmk_disabled_or_scheduled_for_deletion().with_dataset_field(dataset_field)
}

fn build(args: &Args) -> Transform {
    let options = options(args);
    if let Some(pack) = PACK.get() {
        return Transform::with_pack(Arc::clone(pack), options);
    }
    let rule = rule(args);
    let shapes = args.shapes.as_deref().map_or_else(Shapes::all, Shapes::of);
    let matcher = Matcher::builder()
        .rule(rule)
        .shapes(shapes)
        .assume_dataset(args.assume_dataset.clone())
        .build();
    Transform::new(matcher, options)
}

/// The transform's options from the command line.
fn options(args: &Args) -> Options {
    Options {
        mode: match args.mode {
            // Only counted: matches are not enriched for nothing.
            ModeArg::Filter if args.count || args.quiet => Mode::Count,
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
        count_lines: args.stats || args.stats_format.is_some(),
        explain: args.explain,
        wrap_invalid: args.wrap_invalid,
        alert_budget: args.max_alerts.map(|max| AlertBudget {
            max: match max {
                MaxAlerts::Count(n) => n,
                MaxAlerts::MaxSignals => 100,
            },
            window: std::time::Duration::from_secs(args.alert_window),
        }),
        max_signals: args.max_alerts == Some(MaxAlerts::MaxSignals),
        ..Options::default()
    }
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
    // No `MADV_SEQUENTIAL`: measured on a 256 MiB file, it made a cold read 1.5 to 2.5 times
    // slower (0.26-0.42 s against 0.17 s) and a cached one about 3 ms slower; the kernel's
    // default readahead and fault-around do better on their own (BENCHMARKS.md).
    // SAFETY: the map is read-only. If another process truncates the file while it is mapped,
    // reading the lost pages raises SIGBUS; ripgrep accepts the same trade-off, and
    // `--no-mmap` avoids it.
    unsafe { Mmap::map(file) }.ok()
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

/// Runs over a mapped file, on as many threads as there are transforms, releasing the pages
/// decided as it goes.
fn run_mapped(
    transforms: &mut [Transform],
    map: &Mmap,
    out: &mut dyn Write,
) -> Result<(), kmsguard_transform::Error> {
    let mut releaser = Releaser { map, released: 0 };
    kmsguard_transform::run_chunked(transforms, map, out, &mut |end| releaser.release(end))
}

/// Why an input stopped before its end.
enum InputError {
    /// It could not be read (or decompressed) to its end: reported, and the run goes on.
    Read(String),
    /// `--on-invalid fail` met an invalid line: the run stops with status 1.
    Invalid(String),
    /// Writing the output failed: the run stops.
    Write(kmsguard_transform::Error),
}

impl From<kmsguard_transform::Error> for InputError {
    fn from(e: kmsguard_transform::Error) -> InputError {
        if e.is_read() {
            InputError::Read(e.to_string())
        } else if e.is_invalid_line() {
            InputError::Invalid(e.to_string())
        } else {
            InputError::Write(e)
        }
    }
}

/// What a run noticed that may have hidden a match, beyond what [`kmsguard_transform::Stats`]
/// counts: inputs read as text although they look compressed or binary.
#[derive(Default)]
struct Findings {
    undecoded: Vec<(usize, String, &'static str)>,
}

impl Findings {
    fn note(&mut self, index: usize, name: &str, format: Format, head: &[u8]) {
        let kind = match format {
            Format::Undecoded(kind) => kind,
            Format::Plain if input::looks_binary(head) => "binary (NUL bytes)",
            _ => return,
        };
        self.undecoded.push((index, name.to_string(), kind));
    }
}

/// Decides one input with `transforms` (several only for a memory-mapped file cut into chunks),
/// writing events to `out`.
fn decide_input(
    index: usize,
    input: &Input,
    transforms: &mut [Transform],
    out: &mut dyn Write,
    args: &Args,
    findings: &mut Findings,
) -> Result<(), InputError> {
    let name = input.name();
    for t in transforms.iter_mut() {
        t.begin_input(index, &name);
    }
    match input {
        Input::Stdin => {
            let stdin = io::stdin();
            // A redirected regular file can be mapped through the stdin descriptor.
            if let Ok(fd) = stdin.as_fd().try_clone_to_owned() {
                return decide_file(index, &name, File::from(fd), transforms, out, args, findings);
            }
            enlarge_pipe(stdin.as_fd());
            let stream = Stream { index, name: &name, size: None };
            decide_stream(stream, stdin.lock(), &mut transforms[0], out, args, findings)
        }
        Input::Path(path) => match File::open(path) {
            Ok(file) => decide_file(index, &name, file, transforms, out, args, findings),
            Err(e) => Err(InputError::Read(e.to_string())),
        },
    }
}

/// Decides an open file: memory-mapped when it is a regular, uncompressed file, else streamed
/// (and decompressed when its first bytes say so).
fn decide_file(
    index: usize,
    name: &str,
    file: File,
    transforms: &mut [Transform],
    out: &mut dyn Write,
    args: &Args,
    findings: &mut Findings,
) -> Result<(), InputError> {
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    if regular && !args.no_mmap && !args.json_stream {
        let head = input::head_of(&file).map_err(|e| InputError::Read(e.to_string()))?;
        if matches!(input::sniff(&head), Format::Plain | Format::Undecoded(_)) {
            if let Some(map) = map(&file) {
                let format = input::sniff(&map);
                findings.note(index, name, format, &map[..map.len().min(8192)]);
                return Ok(run_mapped(transforms, &map, out)?);
            }
        }
    }
    enlarge_pipe(file.as_fd());
    let size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    let stream = Stream { index, name, size };
    decide_stream(stream, file, &mut transforms[0], out, args, findings)
}

/// Which input a stream is (its index and name), and its size when it is a regular file.
#[derive(Clone, Copy)]
struct Stream<'a> {
    index: usize,
    name: &'a str,
    size: Option<u64>,
}

/// Decides a stream, recognised by its first bytes and decompressed when it needs to be.
fn decide_stream(
    stream: Stream<'_>,
    reader: impl io::Read + AsFd,
    transform: &mut Transform,
    out: &mut dyn Write,
    args: &Args,
    findings: &mut Findings,
) -> Result<(), InputError> {
    let peeked = input::Peeked::new(StopOnSignal::new(reader))
        .map_err(|e| InputError::Read(e.to_string()))?;
    let format = input::sniff(peeked.head());
    findings.note(stream.index, stream.name, format, peeked.head());
    let size = stream.size;
    let mut text =
        input::reader(format, peeked, size).map_err(|e| InputError::Read(e.to_string()))?;
    if args.json_stream {
        Ok(transform.run_documents(&mut text, out)?)
    } else {
        Ok(transform.run(&mut text, out)?)
    }
}

/// The matches so far, as `--count` counts them: the lines filter mode writes, one per matching
/// event or, with a rule pack, one per (event, rule) alert within the rules' budgets.
fn matches(transforms: &[Transform]) -> u64 {
    let alerts = |s: &kmsguard_transform::Stats| match s.rules.as_slice() {
        [] => s.matches,
        rules => rules.iter().map(|r| r.matches).sum(),
    };
    transforms.iter().map(|t| alerts(t.stats())).sum()
}

/// What a run's inputs came to.
#[derive(Default)]
struct Outcome {
    stats: kmsguard_transform::Stats,
    findings: Findings,
    /// Inputs that could not be read to their end (and walking errors).
    errors: u64,
    /// `--on-invalid fail` stopped the run.
    invalid: bool,
    /// The run stopped on a write error (a closed stdout ends it quietly).
    write_error: Option<kmsguard_transform::Error>,
}

impl Outcome {
    /// Takes in one input's result; returns the line to report on stderr, if any. An unreadable
    /// input is reported, and the others still run, as cat and rg do.
    fn absorb(&mut self, name: &str, result: Result<(), InputError>) -> Option<String> {
        match result {
            Ok(()) => None,
            Err(InputError::Read(e)) => {
                self.errors += 1;
                Some(format!("kmsguard: {name}: {e}"))
            }
            Err(InputError::Invalid(e)) => {
                self.invalid = true;
                Some(format!("kmsguard: {name}: {e}"))
            }
            Err(InputError::Write(e)) => {
                self.write_error = Some(e);
                None
            }
        }
    }

    fn stopped(&self) -> bool {
        self.invalid || self.write_error.is_some() || signal::received().is_some()
    }
}

/// The line `--count` writes for one input, if any: none for an input that could not be read
/// to its end (its error says so), as `rg -c` writes none for a missing file.
fn count_line(args: &Args, inputs: usize, name: &str, count: u64, read: bool) -> Option<String> {
    match (args.count && read, inputs) {
        (false, _) => None,
        (true, 1) => Some(format!("{count}\n")),
        (true, _) if count > 0 => Some(format!("{name}:{count}\n")),
        _ => None,
    }
}

/// Decides the inputs one after the other (a mapped file on `-j` threads).
fn run_sequential(
    args: &Args,
    inputs: &[Input],
    jobs: usize,
    out: &mut Separated<Box<dyn Write + Send>>,
) -> Outcome {
    let mut transforms: Vec<Transform> = (0..jobs).map(|_| build(args)).collect();
    let mut outcome = Outcome::default();
    let events_elsewhere = args.count || args.quiet;
    for (index, input) in inputs.iter().enumerate() {
        let before = matches(&transforms);
        let result = if events_elsewhere {
            decide_input(
                index,
                input,
                &mut transforms,
                &mut io::sink(),
                args,
                &mut outcome.findings,
            )
        } else {
            decide_input(index, input, &mut transforms, out, args, &mut outcome.findings)
        };
        out.end_input();
        let name = input.name();
        let count = matches(&transforms) - before;
        let read = !matches!(result, Err(InputError::Read(_)));
        if let Some(note) = outcome.absorb(&name, result) {
            eprintln!("{note}");
        }
        if let Some(line) = count_line(args, inputs.len(), &name, count, read) {
            if let Err(e) = out.write_all(line.as_bytes()) {
                outcome.write_error = Some(e.into());
            }
        }
        if outcome.stopped() {
            break;
        }
    }
    for t in &transforms {
        outcome.stats.add(t.stats());
    }
    outcome
}

/// Decides `jobs` inputs at a time, each on one thread, writing their outputs in input order.
fn run_parallel(
    args: &Args,
    inputs: &[Input],
    jobs: usize,
    out: Separated<Box<dyn Write + Send>>,
) -> (Outcome, Separated<Box<dyn Write + Send>>) {
    let ordered = Ordered::new(out);
    let next = AtomicUsize::new(0);
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| scope.spawn(|| work(args, inputs, 2 * jobs, &ordered, &next)))
            .collect();
        workers.into_iter().map(|w| w.join().expect("a worker panicked")).collect()
    });
    let mut total = Outcome::default();
    for o in outcomes {
        total.stats.add(&o.stats);
        total.findings.undecoded.extend(o.findings.undecoded);
        total.errors += o.errors;
        total.invalid |= o.invalid;
        total.write_error = total.write_error.or(o.write_error);
    }
    total.findings.undecoded.sort();
    (total, ordered.into_inner())
}

/// One worker of [`run_parallel`]: takes the next input until none is left, at most `window`
/// inputs ahead of the one being written.
fn work(
    args: &Args,
    inputs: &[Input],
    window: usize,
    ordered: &Ordered<Separated<Box<dyn Write + Send>>>,
    next: &AtomicUsize,
) -> Outcome {
    let mut transform = build(args);
    let mut outcome = Outcome::default();
    loop {
        let index = next.fetch_add(1, AtomicOrdering::Relaxed);
        if index >= inputs.len() || !ordered.wait_window(index, window) {
            break;
        }
        let mut slot = ordered.slot(index);
        let input = &inputs[index];
        let transforms = std::slice::from_mut(&mut transform);
        let before = matches(transforms);
        let events: &mut dyn Write =
            if args.count || args.quiet { &mut io::sink() } else { &mut slot };
        let result = decide_input(index, input, transforms, events, args, &mut outcome.findings);
        let count = matches(transforms) - before;
        let name = input.name();
        let read = !matches!(result, Err(InputError::Read(_)));
        let note = outcome.absorb(&name, result);
        let count = count_line(args, inputs.len(), &name, count, read);
        let written = count.map_or(Ok(()), |line| slot.write_all(line.as_bytes()));
        if let Err(e) = written.and_then(|()| slot.finish(note.as_deref())) {
            // `Interrupted` is another worker's stop, already recorded there.
            if outcome.write_error.is_none() && e.kind() != io::ErrorKind::Interrupted {
                outcome.write_error = Some(e.into());
            }
        }
        if outcome.stopped() {
            ordered.stop();
            break;
        }
    }
    outcome.stats.add(transform.stats());
    outcome
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let silenced = |kind| args.no_warn.contains(&kind) || args.no_warn.contains(&WarnKind::All);
    if !args.rules.is_empty() {
        // Taken before the files are read, so that an edit while they load is a change.
        let fingerprint = args.watch_rules.then(|| kmsguard_rules::fingerprint(&args.rules));
        let loaded = kmsguard_rules::load(&args.rules);
        if args.list_rules {
            return list_rules(args, &loaded);
        }
        if let Err(why) = accept(args, &loaded) {
            eprintln!("kmsguard: {why}");
            return Ok(ExitCode::from(2));
        }
        if !loaded.refused.is_empty() && !silenced(WarnKind::Refused) {
            let first = &loaded.refused[0];
            eprintln!(
                "kmsguard: warning: {} rules loaded, {} rule files refused (the first: {}: {}); \
                 --list-rules says why for each (--no-warn refused)",
                loaded.rules.len(),
                loaded.refused.len(),
                first.path.display(),
                first.reason
            );
        }
        let pack = Pack::new(&loaded.rules, args.assume_dataset.clone());
        let handle = PACK.get_or_init(|| PackHandle::new(pack));
        let changed = fingerprint.map(|mut seen| {
            let paths = args.rules.clone();
            Box::new(move || {
                let now = kmsguard_rules::fingerprint(&paths);
                now != std::mem::replace(&mut seen, now.clone())
            }) as Box<dyn FnMut() -> bool + Send>
        });
        signal::on_hangup(reload_on_hangup(args.clone(), Arc::clone(handle)), changed);
    } else if let Some(dataset) = &args.assume_dataset {
        let rule = rule(args);
        let accepted = rule.dataset_clause().is_some_and(|c| c.terms.contains(&dataset.as_str()));
        if !accepted && !silenced(WarnKind::AssumeDataset) {
            eprintln!(
                "kmsguard: warning: --assume-dataset {dataset}: the rule's {} clause accepts only {}, \
                 so documents without a dataset still cannot match (--no-warn assume-dataset)",
                rule.dataset_clause().map_or("dataset", |c| c.field),
                rule.dataset_clause().map_or(String::new(), |c| c.terms.join(", "))
            );
        }
    }
    let mut walk_errors = 0;
    let walk = input::Walk { hidden: args.hidden, follow: args.follow };
    let inputs = input::expand(&args.files, walk, &mut |e| {
        eprintln!("kmsguard: {e}");
        walk_errors += 1;
    });
    // Line numbers (--on-invalid fail) and the alert budget belong to one stream: one thread.
    let jobs = if args.on_invalid == OnInvalidArg::Fail || args.max_alerts.is_some() {
        1
    } else {
        args.threads.max(1)
    };
    let stdout = io::stdout();
    // Block-buffer a pipe or file; a terminal sees each line as soon as it is decided.
    let capacity = if stdout.is_terminal() { 0 } else { 256 * 1024 };
    let sink: Box<dyn Write + Send> = if args.quiet {
        Box::new(io::sink())
    } else {
        Box::new(BufWriter::with_capacity(capacity, stdout))
    };
    let out = Separated::new(sink);
    let (mut outcome, mut out) = if jobs > 1 && inputs.len() > 1 {
        run_parallel(args, &inputs, jobs, out)
    } else {
        let mut out = out;
        let outcome = run_sequential(args, &inputs, jobs, &mut out);
        (outcome, out)
    };
    outcome.errors += walk_errors;
    if outcome.write_error.is_none() {
        if let Err(e) = out.flush() {
            outcome.write_error = Some(e.into());
        }
    }
    if args.stats || args.stats_format.is_some() {
        report(args, &outcome, start.elapsed());
    }
    warn(args, &outcome, &inputs);
    if let Some(e) = outcome.write_error {
        return Err(e).context("writing standard output");
    }
    if let Some(sig) = signal::received() {
        // The shell convention for a run ended by a signal, after a clean flush.
        return Ok(ExitCode::from(128 + sig as u8));
    }
    Ok(exit_code(args, &outcome))
}

/// Whether a loaded rule set may run: some rule loaded, and, under `--strict`, none refused.
fn accept(args: &Args, loaded: &kmsguard_rules::Loaded) -> Result<(), String> {
    if loaded.rules.is_empty() {
        let refused = match loaded.refused.first() {
            Some(r) => format!(
                " ({} refused; the first: {}: {})",
                loaded.refused.len(),
                r.path.display(),
                r.reason
            ),
            None => String::new(),
        };
        return Err(format!("no rule loaded from --rules{refused}"));
    }
    if let (true, Some(first)) = (args.strict, loaded.refused.first()) {
        return Err(format!(
            "{} rule files refused (--strict); the first: {}: {}",
            loaded.refused.len(),
            first.path.display(),
            first.reason
        ));
    }
    Ok(())
}

/// `--list-rules`: one line per rule file on stdout, a summary on stderr.
fn list_rules(args: &Args, loaded: &kmsguard_rules::Loaded) -> anyhow::Result<ExitCode> {
    let set = kmsguard_rules::compile(&loaded.rules, None);
    let prefilter = kmsguard_matcher::packfilter::PackPrefilter::new(&set);
    let mut out = io::stdout().lock();
    let mut lines: Vec<(&std::path::Path, String)> = Vec::new();
    for (n, rule) in loaded.rules.iter().enumerate() {
        let unknown = set.unknown_on_raw(n);
        let raw = if unknown.is_empty() {
            "raw=decided".to_string()
        } else {
            format!("raw=may-be-unknown({})", unknown.join(","))
        };
        let fields = set.rule_fields(n).join(",");
        let literals = prefilter.describe(n);
        lines.push((
            &rule.path,
            format!(
                "loaded\t{}\t{}\tfields={fields}\t{raw}\tliterals={literals}",
                rule.path.display(),
                rule.tag
            ),
        ));
    }
    for r in &loaded.refused {
        lines.push((&r.path, format!("refused\t{}\t{}", r.path.display(), r.reason)));
    }
    lines.sort_by(|a, b| a.0.cmp(b.0));
    for (_, line) in &lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &loaded.refused {
        *reasons.entry(r.reason.as_str()).or_default() += 1;
    }
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    eprintln!(
        "kmsguard: {} rules loaded, {} refused{}{}",
        loaded.rules.len(),
        loaded.refused.len(),
        if reasons.is_empty() { "" } else { ": " },
        reasons.join("; ")
    );
    Ok(if args.strict && !loaded.refused.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// What SIGHUP does with `--rules`: loads the files again and, when the new set is sound (some
/// rule loads; no file is broken or holds a query kmsguard cannot run; under `--strict`, none is
/// refused), puts it in force for every thread's next buffer. Otherwise the running set stays
/// and stderr says why.
fn reload_on_hangup(args: Args, handle: Arc<PackHandle>) -> impl Fn(Reload) + Send + 'static {
    move |why| {
        let loaded = kmsguard_rules::load(&args.rules);
        let broken = loaded.refused.iter().find(|r| !r.unsupported);
        let verdict = accept(&args, &loaded).and_then(|()| match broken {
            Some(r) => Err(format!("{}: {}", r.path.display(), r.reason)),
            None => Ok(()),
        });
        match verdict {
            Ok(()) => {
                handle.replace(Pack::new(&loaded.rules, args.assume_dataset.clone()));
                eprintln!(
                    "kmsguard: {why}: {} rules loaded, {} refused; in force from the next buffer",
                    loaded.rules.len(),
                    loaded.refused.len()
                );
            }
            Err(broken) => {
                eprintln!("kmsguard: {why}: rules not reloaded, the running set stays: {broken}")
            }
        }
    }
}

/// `kmsguard nats ARGS...` runs the NATS JetStream worker, `kmsguard-nats ARGS...` (README,
/// "Across machines"): a binary of its own, beside this one or on the `PATH`, so that the async
/// runtime and the NATS client stay out of this one. A file or directory named `nats` in the
/// working directory is still an input.
fn nats_subcommand() -> Option<ExitCode> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new("nats"))
        || std::path::Path::new("nats").exists()
    {
        return None;
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("kmsguard-nats")))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| "kmsguard-nats".into());
    // exec only returns when it failed.
    let err = std::process::Command::new(&program).args(args).exec();
    eprintln!(
        "kmsguard: nats: cannot run {}: {err} (the worker is its own binary: build it with \
         `cargo build --release -p kmsguard-nats` and put it beside kmsguard or on the PATH)",
        program.display()
    );
    Some(ExitCode::from(2))
}

/// The exit status: 0 when every input was read, 1 when --on-invalid fail stopped, 2 after an
/// error; with -q, grep's: 0 when something matched (even after an error), 1 when nothing did.
fn exit_code(args: &Args, outcome: &Outcome) -> ExitCode {
    if args.quiet && outcome.stats.matches > 0 {
        ExitCode::SUCCESS
    } else if outcome.invalid {
        ExitCode::from(1)
    } else if outcome.errors > 0 {
        ExitCode::from(2)
    } else if args.quiet {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `--stats`: the counts on stderr, as text or JSON.
fn report(args: &Args, outcome: &Outcome, elapsed: std::time::Duration) {
    match args.stats_format.unwrap_or(StatsFormat::Text) {
        StatsFormat::Text => eprintln!("{}", outcome.stats.report(elapsed)),
        StatsFormat::Json => {
            let mut json = outcome.stats.to_json(elapsed);
            json["errors"] = outcome.errors.into();
            eprintln!("{json}");
        }
    }
}

/// One stderr line per condition that likely hid a match, whether or not --stats was asked,
/// unless silenced with --no-warn.
fn warn(args: &Args, outcome: &Outcome, inputs: &[Input]) {
    let silenced = |kind| args.no_warn.contains(&kind) || args.no_warn.contains(&WarnKind::All);
    let stats = &outcome.stats;
    // Under --on-invalid fail the invalid line has been named already.
    if stats.invalid > 0 && !outcome.invalid && !silenced(WarnKind::Invalid) {
        let first = stats
            .first_invalid
            .as_ref()
            .map_or(String::new(), |p| format!(" (the first: {})", where_in(p, inputs)));
        let (n, what) = match stats.invalid {
            1 => (1, "line is not a valid JSON document"),
            n => (n, "lines are not valid JSON documents"),
        };
        eprintln!(
            "kmsguard: warning: {n} parsed {what} and cannot match{first}; \
             --explain says why (--no-warn invalid)"
        );
    }
    if stats.dataset_absent > 0 && !silenced(WarnKind::Dataset) {
        eprintln!(
            "kmsguard: warning: {} ECS document{} every clause but the dataset, which {} no value: \
             if the stream is CloudTrail's, add --assume-dataset aws.cloudtrail (--no-warn dataset)",
            stats.dataset_absent,
            if stats.dataset_absent == 1 { " satisfies" } else { "s satisfy" },
            if stats.dataset_absent == 1 { "has" } else { "have" },
        );
    }
    if !outcome.findings.undecoded.is_empty() && !silenced(WarnKind::Undecoded) {
        let (_, name, kind) = &outcome.findings.undecoded[0];
        let more = outcome.findings.undecoded.len() - 1;
        let more = if more > 0 { format!(" and {more} more input(s)") } else { String::new() };
        eprintln!(
            "kmsguard: warning: {name} looks {kind}{more}, which kmsguard does not decode: it was \
             read as text (decompress it first; gzip and zstd are decoded) (--no-warn undecoded)"
        );
    }
    if stats.spanning > 0 && !silenced(WarnKind::Spanning) {
        let name = stats.first_spanning.as_ref().map_or("-", |p| p.name.as_str());
        eprintln!(
            "kmsguard: warning: {name} holds JSON documents that span lines (pretty-printed), \
             which are invalid as lines: read such input with --json-stream (--no-warn spanning)"
        );
    }
}

/// `NAME line N`, or `NAME byte N` when lines were not counted and cannot be counted again
/// cheaply (a pipe, a compressed file).
fn where_in(p: &kmsguard_transform::Position, inputs: &[Input]) -> String {
    let line = p.line.or_else(|| match inputs.get(p.input) {
        Some(Input::Path(path)) => line_of_offset(path, p.byte),
        _ => None,
    });
    match line {
        Some(line) => format!("{} line {line}", p.name),
        None => format!("{} byte {}", p.name, p.byte),
    }
}

/// The 1-based line number of byte `offset` of a plain file, by counting newlines before it.
fn line_of_offset(path: &std::path::Path, offset: u64) -> Option<u64> {
    let file = File::open(path).ok()?;
    if !matches!(input::sniff(&input::head_of(&file).ok()?), Format::Plain) {
        return None;
    }
    let map = map(&file)?;
    let upto = usize::try_from(offset).ok()?.min(map.len());
    Some(memchr::memchr_iter(b'\n', &map[..upto]).count() as u64 + 1)
}
