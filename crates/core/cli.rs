//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use kmsguard_matcher::Shape;

const AFTER_HELP: &str = "\
Examples:
  kmsguard cloudtrail.ndjson                    only matching events, enriched
  kmsguard --mode tag < in.ndjson > out.ndjson  every line; matches tagged
  vector ... | kmsguard --mode tag --assume-dataset aws.cloudtrail | vector ...
  kmsguard --rules detection-rules/rules/integrations/aws/ events.ndjson
  kmsguard nats --stream CLOUDTRAIL --consumer kmsguard --subject-out kmsguard.alerts
                                                a NATS JetStream worker (kmsguard-nats)

Exit status: 0 when the input was read to its end (whether or not anything matched),
1 when --on-invalid fail stopped at an invalid line, 2 on I/O or usage errors (an
unreadable file or a corrupt archive: the other inputs still run). With -q: 0 when
something matched, 1 when nothing did, 2 on an error, as grep.
130 / 143 after SIGINT / SIGTERM (what was read is decided, written and flushed first).
A closed stdout (a downstream `head`) ends the run quietly with status 0.";

/// Detects the Elastic rule "AWS KMS Customer Managed Key Disabled or Scheduled for Deletion"
/// in NDJSON CloudTrail events (ECS documents, raw records, EventBridge events, S3 log files,
/// LookupEvents responses and shipper envelopes), inline, and filters or tags the matches.
#[derive(Clone, Debug, Parser)]
#[command(name = "kmsguard", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Input files and directories (walked recursively, in path order); `-` or none reads
    /// standard input. gzip and zstd input is recognised by its first bytes and decompressed.
    #[arg(value_name = "PATH")]
    pub files: Vec<PathBuf>,

    /// Run Elastic detection rules from these TOML files or directories of them (the option
    /// repeats) instead of the built-in rule: every query rule in KQL that kmsguard decides
    /// exactly, all in one pass. The others are refused with their reason (--list-rules). SIGHUP
    /// reloads the files; a set that fails to load leaves the running one in place.
    #[arg(long = "rules", value_name = "PATH", conflicts_with_all = ["tag", "dataset_field", "shapes"])]
    pub rules: Vec<PathBuf>,

    /// Print one line per rule file of --rules and exit: `loaded` with the rule's tag, the fields
    /// it reads and whether raw CloudTrail shapes can decide it, or `refused` with the reason.
    /// `kmsguard rules check PATH...` is the same.
    #[arg(long, requires = "rules")]
    pub list_rules: bool,

    /// With --rules: a refused rule file is an error (exit status 2), not a warning.
    #[arg(long, requires = "rules")]
    pub strict: bool,

    /// With --rules: also reload when a rule file of --rules is added, removed or changed
    /// (checked every second), as SIGHUP does: a set that fails to load leaves the running one.
    #[arg(long, requires = "rules")]
    pub watch_rules: bool,

    /// filter: only matching events come out, enriched. tag: every line comes out in order,
    /// unchanged byte for byte unless it matches, in which case it is enriched.
    #[arg(short, long, value_enum, default_value_t = ModeArg::Filter)]
    pub mode: ModeArg,

    /// Declare the stream's dataset: documents with no value in the rule's dataset field count
    /// as DATASET, as in a `logs-aws.cloudtrail-*` data stream (use `aws.cloudtrail`).
    #[arg(long, value_name = "DATASET")]
    pub assume_dataset: Option<String>,

    /// The field the rule's dataset clause reads: `event.dataset` (version 1 of the rule) or
    /// `data_stream.dataset` (later upstream versions).
    #[arg(long, value_enum, default_value_t = DatasetField::EventDataset)]
    pub dataset_field: DatasetField,

    /// Recognise only these event shapes (comma-separated): records, lookupevents, eventbridge,
    /// raw, envelope, ecs. Others fall through to the next allowed shape.
    #[arg(long, value_delimiter = ',', value_name = "SHAPES")]
    pub shapes: Option<Vec<Shape>>,

    /// Emit each event of a container as its own line: each record of a CloudTrail log file
    /// (`{"Records":[...]}`), each element of a LookupEvents response (`{"Events":[...]}`), each
    /// record of a log file in an envelope's `message` (one envelope per record). Matching events
    /// are enriched, and in tag mode every event comes out.
    #[arg(long)]
    pub split_records: bool,

    /// What filter mode does with lines that are not valid JSON objects: drop (counted), pass
    /// (written unchanged) or fail (stop, exit 1). pass and fail parse every line (slower).
    /// Tag mode always passes them unchanged.
    #[arg(long, value_enum, default_value_t = OnInvalidArg::Drop)]
    pub on_invalid: OnInvalidArg,

    /// Longest line evaluated, in bytes without its line end. Longer lines are never buffered
    /// whole: they count as oversized and are handled like invalid lines. The default is
    /// Elasticsearch's http.max_content_length (100 MiB): a longer document could never be
    /// indexed.
    #[arg(long, value_name = "BYTES", default_value_t = kmsguard_transform::DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,

    /// The tag appended to `tags` of matching events.
    #[arg(long)]
    pub tag: Option<String>,

    /// Enrich at most N alerts per --alert-window, as Elastic caps a rule at max_signals (100)
    /// per execution. Matches over the budget are counted, announced by one stderr line per
    /// window, and treated as non-matching: unchanged in tag mode, dropped in filter mode. With
    /// --rules each rule has its own budget; `max-signals` makes it the rule's own max_signals.
    #[arg(long, value_name = "N")]
    pub max_alerts: Option<MaxAlerts>,

    /// The alert budget's window in wall-clock seconds (default 600, the rule's interval).
    #[arg(long, value_name = "SECONDS", default_value_t = 600, requires = "max_alerts")]
    pub alert_window: u64,

    /// Decide on N threads: several inputs (files, a directory's files) N at a time, a single
    /// memory-mapped file in chunks of whole lines. Output keeps the input order either way, one
    /// input after the other. Pipes are read on one thread, and so is every input under
    /// --on-invalid fail or --max-alerts (their line numbers and budget belong to one stream).
    #[arg(short = 'j', long, value_name = "N", default_value_t = 1)]
    pub threads: usize,

    /// Print the number of matches instead of the events (with --rules, of alerts: one per
    /// event and rule, as filter mode writes them): the number alone for one input,
    /// `NAME:COUNT` for each input with matches when there are several (as `rg -c`).
    #[arg(short, long)]
    pub count: bool,

    /// Print nothing on stdout; exit 0 when something matched, 1 when nothing did, 2 on an
    /// error (grep's convention, for scripts). Without -q the exit status is 0 whenever the
    /// input was read, matches or not, so that a pipeline does not see a quiet hour as a fault.
    #[arg(short, long)]
    pub quiet: bool,

    /// Walk hidden files and directories too (names starting with `.`).
    #[arg(long)]
    pub hidden: bool,

    /// Follow symbolic links inside directories (paths named on the command line are always
    /// read).
    #[arg(short = 'L', long)]
    pub follow: bool,

    /// For each line that was parsed and does not match, one line on stderr saying which
    /// clause failed and why (outcome failure from errorCode, dataset absent, repeated key,
    /// invalid JSON...). Only prefilter candidates are parsed: a line without an action term
    /// cannot match and is not explained.
    #[arg(long)]
    pub explain: bool,

    /// Silence warnings about what may have hidden a match (comma-separated): invalid,
    /// dataset, undecoded, spanning, assume-dataset, refused (rule files not run), or all.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub no_warn: Vec<WarnKind>,

    /// Tag mode: write each invalid line, whitespace-only ones included, as one JSON object
    /// holding it ({"kmsguard":{"invalid":WHY},"event":{"original":LINE}}, or the line in base64
    /// when it is not UTF-8 or too long), so every output line is a JSON object or empty, for
    /// consumers that drop data after an invalid line (Fluent Bit's stdin input). Every line is
    /// then parsed (slower).
    #[arg(long)]
    pub wrap_invalid: bool,

    /// Read concatenated JSON instead of lines: documents separated by any whitespace, as jq
    /// reads them, so pretty-printed files and `aws cloudtrail lookup-events` output work as
    /// they come. Tag mode writes every byte again (matches enriched in place); filter mode
    /// writes each match on one line.
    #[arg(long)]
    pub json_stream: bool,

    /// Never memory-map regular files; read them like a pipe.
    #[arg(long)]
    pub no_mmap: bool,

    /// Print counts (lines, bytes, candidates, matches, invalid, by shape) and throughput to
    /// stderr at the end.
    #[arg(long)]
    pub stats: bool,

    /// The format of --stats: text, or one JSON object (implies --stats).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub stats_format: Option<StatsFormat>,

    /// Print the man page or a shell completion script, generated from this very definition,
    /// and exit.
    #[arg(long, value_enum, value_name = "KIND")]
    pub generate: Option<Generate>,
}

/// `--generate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// The man page (roff).
    Man,
    /// Completions for bash.
    CompleteBash,
    /// Completions for zsh.
    CompleteZsh,
    /// Completions for fish.
    CompleteFish,
}

/// The long `--version`: the version, the commit it was built from (when built from a checkout),
/// the target, the SIMD level simd-json uses on this machine, and the ingest pipeline the raw
/// mapping follows. What a bug report needs.
pub fn long_version() -> String {
    let commit = match env!("KMSGUARD_GIT_COMMIT") {
        "" => String::new(),
        commit => format!(" (commit {commit})"),
    };
    format!(
        "{}{commit}\ntarget: {}\nsimd-json: {} (detected at run time)\nraw mapping: elastic/integrations CloudTrail pipeline at {}",
        env!("CARGO_PKG_VERSION"),
        env!("KMSGUARD_TARGET"),
        simd_level(),
        kmsguard_matcher::PIPELINE_COMMIT
    )
}

/// The implementation simd-json's run-time detection picks on this CPU.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
        if std::is_x86_feature_detected!("sse4.2") {
            return "sse4.2";
        }
    }
    "portable (no SIMD)"
}

/// Writes what `--generate` asks for to `out`.
pub fn generate(kind: Generate, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Args::command();
    let name = cmd.get_name().to_string();
    match kind {
        Generate::Man => clap_mangen::Man::new(cmd).render(out),
        Generate::CompleteBash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out);
            Ok(())
        }
        Generate::CompleteZsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out);
            Ok(())
        }
        Generate::CompleteFish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out);
            Ok(())
        }
    }
}

/// `--max-alerts`: a number, or each rule's own `max_signals`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxAlerts {
    /// At most this many per window (per rule with --rules).
    Count(u64),
    /// Each rule's `max_signals` (100 for the built-in rule).
    MaxSignals,
}

impl std::str::FromStr for MaxAlerts {
    type Err = String;

    fn from_str(s: &str) -> Result<MaxAlerts, String> {
        match s {
            "max-signals" => Ok(MaxAlerts::MaxSignals),
            _ => s
                .parse()
                .map(MaxAlerts::Count)
                .map_err(|_| format!("`{s}` is neither a number nor `max-signals`")),
        }
    }
}

/// `--stats-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// Lines for a human.
    Text,
    /// One JSON object.
    Json,
}

/// `--no-warn`: the warnings a run prints at its end when something may have hidden a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WarnKind {
    /// Parsed lines that are not valid documents.
    Invalid,
    /// ECS documents that match but for a missing dataset.
    Dataset,
    /// Inputs that look compressed or binary in a format kmsguard does not decode.
    Undecoded,
    /// Inputs whose documents span lines (pretty-printed JSON).
    Spanning,
    /// An --assume-dataset value that no rule clause accepts.
    AssumeDataset,
    /// Rule files of --rules that were refused.
    Refused,
    /// Every warning.
    All,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Only matching events.
    Filter,
    /// Every line; matches enriched.
    Tag,
}

/// `--dataset-field`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetField {
    /// `event.dataset`.
    #[value(name = "event.dataset")]
    EventDataset,
    /// `data_stream.dataset`.
    #[value(name = "data_stream.dataset")]
    DataStreamDataset,
}

/// `--on-invalid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnInvalidArg {
    /// Drop and count.
    Drop,
    /// Write unchanged and count.
    Pass,
    /// Stop with exit status 1.
    Fail,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn generated_docs_come_from_the_definition() {
        let mut man = Vec::new();
        generate(Generate::Man, &mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains("\\-\\-json\\-stream") && man.contains("kmsguard"), "{man}");
        for kind in [Generate::CompleteBash, Generate::CompleteZsh, Generate::CompleteFish] {
            let mut script = Vec::new();
            generate(kind, &mut script).unwrap();
            assert!(String::from_utf8(script).unwrap().contains("assume-dataset"), "{kind:?}");
        }
        assert!(long_version().contains("target: ") && long_version().contains("simd-json: "));
    }

    #[test]
    fn rules_options() {
        let args = Args::try_parse_from(["kmsguard", "--rules", "a", "--rules", "b", "f"]).unwrap();
        assert_eq!(args.rules, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(args.files, [PathBuf::from("f")]);
        assert!(Args::try_parse_from(["kmsguard", "--rules", "a", "--tag", "x"]).is_err());
        assert!(Args::try_parse_from(["kmsguard", "--list-rules"]).is_err());
        let args = Args::try_parse_from(["kmsguard", "--max-alerts", "max-signals"]).unwrap();
        assert_eq!(args.max_alerts, Some(MaxAlerts::MaxSignals));
        assert!(Args::try_parse_from(["kmsguard", "--max-alerts", "lots"]).is_err());
    }

    #[test]
    fn shapes_parse_as_a_list() {
        let args = Args::try_parse_from(["kmsguard", "--shapes", "ecs,raw"]).unwrap();
        assert_eq!(args.shapes, Some(vec![Shape::Ecs, Shape::Raw]));
        assert!(Args::try_parse_from(["kmsguard", "--shapes", "bogus"]).is_err());
    }
}
