//! `kmsguard-nats`: a kmsguard worker on a NATS JetStream pull consumer (see the library).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::{Parser, ValueEnum};
use kmsguard_matcher::Matcher;
use kmsguard_nats::{Config, Decider, Topology};
use kmsguard_transform::{Mode, Options, Pack, PackHandle, Transform};

/// Decides CloudTrail events pulled from a NATS JetStream consumer with kmsguard and publishes
/// the alerts (filter) or every event, tagged (tag), to an output subject, at least once and
/// without duplicates in the output stream. Start several on one consumer to share the load.
#[derive(Parser, Debug)]
#[command(name = "kmsguard-nats", version)]
struct Args {
    /// The NATS server(s), comma-separated (as the `nats` CLI's --server).
    #[arg(short, long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// The input stream.
    #[arg(long, default_value = "")]
    stream: String,
    /// The durable pull consumer on the input stream, shared by every worker.
    #[arg(long, default_value = "")]
    consumer: String,
    /// The subject alerts (or tagged events) are published to; a stream must capture it.
    #[arg(long, default_value = "")]
    subject_out: String,
    /// filter: publish each alert as its own message; tag: publish every message again, matches
    /// enriched.
    #[arg(short, long, value_enum, default_value_t = ModeArg::Filter)]
    mode: ModeArg,
    /// Run these Elastic rule files or directories (as kmsguard --rules) instead of the built-in
    /// rule.
    #[arg(long, value_name = "PATH")]
    rules: Vec<PathBuf>,
    /// Documents with no dataset count as DATASET (aws.cloudtrail for a logs-aws.cloudtrail-*
    /// stream).
    #[arg(long, value_name = "DATASET")]
    assume_dataset: Option<String>,
    /// One output per event of a log file or LookupEvents response, or of a log file in an
    /// envelope (as kmsguard --split-records).
    #[arg(long)]
    split_records: bool,
    /// Longest line evaluated, in bytes (longer lines are invalid: dropped in filter mode,
    /// passed in tag mode).
    #[arg(long, default_value_t = kmsguard_transform::DEFAULT_MAX_LINE_BYTES)]
    max_line_bytes: usize,
    /// Messages asked for per pull (Vector's batch_config.batch).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// How long a pull waits for messages, in milliseconds; also bounds how long SIGTERM waits.
    #[arg(long, default_value_t = 1000)]
    pull_expires_ms: u64,
    /// How long a message whose outputs could not be published waits to be redelivered, in
    /// milliseconds.
    #[arg(long, default_value_t = 1000)]
    retry_delay_ms: u64,
    /// Create what is missing: the input stream (capturing --subject-in, work-queue retention,
    /// file storage), the durable consumer, and the output stream (--stream-out, capturing
    /// --subject-out). Existing ones are left as they are.
    #[arg(long)]
    create: bool,
    /// With --create: the input stream's subject.
    #[arg(long, default_value = "cloudtrail.events")]
    subject_in: String,
    /// With --create: the output stream's name.
    #[arg(long, default_value = "KMSGUARD_ALERTS")]
    stream_out: String,
    /// With --create: the consumer's AckWait, in seconds (a dead worker's messages go to the
    /// others after this long).
    #[arg(long, default_value_t = 30)]
    ack_wait: u64,
    /// With --create: the consumer's MaxDeliver (a message is delivered at most this many times).
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// With --create: the consumer's MaxAckPending (messages out and unacknowledged, over all
    /// workers).
    #[arg(long, default_value_t = 4096)]
    max_ack_pending: i64,
    /// With --create: the streams' duplicate window, in seconds.
    #[arg(long, default_value_t = 120)]
    duplicate_window: u64,
    /// Instead of working: publish each line of FILE (`-` for stdin) to --subject-in, wait for
    /// the stream's acks, and exit (to try a pipeline without a shipper).
    #[arg(long, value_name = "FILE")]
    publish: Option<PathBuf>,
    /// Counts on stderr at exit (JSON).
    #[arg(long)]
    stats: bool,
    /// A line of counts on stderr every N seconds (JSON).
    #[arg(long, value_name = "N")]
    stats_interval: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Filter,
    Tag,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kmsguard-nats: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(work(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmsguard-nats: {e}");
            ExitCode::from(2)
        }
    }
}

fn decider(args: &Args) -> Result<Decider, String> {
    let mode = match args.mode {
        ModeArg::Filter => Mode::Filter,
        ModeArg::Tag => Mode::Tag,
    };
    let options = Options {
        mode,
        max_line_bytes: args.max_line_bytes,
        split_records: args.split_records,
        count_lines: false,
        ..Options::default()
    };
    if args.rules.is_empty() {
        let matcher = Matcher::builder().assume_dataset(args.assume_dataset.clone()).build();
        return Ok(Decider::new(Transform::new(matcher, options), mode));
    }
    let loaded = kmsguard_rules::load(&args.rules);
    if loaded.rules.is_empty() {
        return Err("no rule of --rules loaded (kmsguard --list-rules says why)".into());
    }
    if !loaded.refused.is_empty() {
        eprintln!(
            "kmsguard-nats: {} rules loaded, {} rule files refused (kmsguard --list-rules says why)",
            loaded.rules.len(),
            loaded.refused.len()
        );
    }
    let pack = PackHandle::new(Pack::new(&loaded.rules, args.assume_dataset.clone()));
    Ok(Decider::new(Transform::with_pack(pack, options), mode))
}

fn topology(args: &Args) -> Topology {
    Topology {
        stream: args.stream.clone(),
        subject_in: args.subject_in.clone(),
        consumer: args.consumer.clone(),
        stream_out: args.stream_out.clone(),
        subject_out: args.subject_out.clone(),
        ack_wait: Duration::from_secs(args.ack_wait),
        max_deliver: args.max_deliver,
        max_ack_pending: args.max_ack_pending,
        duplicate_window: Duration::from_secs(args.duplicate_window),
    }
}

async fn work(args: Args) -> Result<(), String> {
    let mut decider = decider(&args)?;
    let client = async_nats::ConnectOptions::new()
        .name("kmsguard-nats")
        .retry_on_initial_connect()
        .connect(args.server.as_str())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.server))?;
    if let Some(path) = &args.publish {
        return publish(&client, &args.subject_in, path).await;
    }
    for (name, value) in [
        ("--stream", &args.stream),
        ("--consumer", &args.consumer),
        ("--subject-out", &args.subject_out),
    ] {
        if value.is_empty() {
            return Err(format!("{name} is required"));
        }
    }
    if args.create {
        let js = jetstream::new(client.clone());
        topology(&args).create(&js).await.map_err(|e| format!("--create: {e}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let signals = Arc::clone(&stop);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        let status = tokio::select! {
            _ = term.recv() => 143,
            _ = int.recv() => 130,
        };
        signals.store(true, Ordering::Relaxed);
        // A second signal does not wait for the batch in flight (a server that went away can
        // hold it up to its publish timeouts).
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("kmsguard-nats: second signal: exiting without settling the batch in flight");
        std::process::exit(status);
    });
    let config = Config {
        stream: args.stream.clone(),
        consumer: args.consumer.clone(),
        subject_out: args.subject_out.clone(),
        batch: args.batch.max(1),
        expires: Duration::from_millis(args.pull_expires_ms.max(10)),
        retry_delay: Duration::from_millis(args.retry_delay_ms),
        report_every: args.stats_interval.map(Duration::from_secs),
    };
    let started = Instant::now();
    let stats = kmsguard_nats::run(client, &config, &mut decider, &stop)
        .await
        .map_err(|e| format!("stream {} consumer {}: {e}", args.stream, args.consumer))?;
    if args.stats {
        eprintln!("{}", stats.to_json(decider.stats(), started.elapsed()));
    }
    Ok(())
}

/// Publishes each non-empty line of `path` to `subject` through JetStream, then waits for every
/// ack.
async fn publish(client: &async_nats::Client, subject: &str, path: &PathBuf) -> Result<(), String> {
    let data = if path.as_os_str() == "-" {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data).map(|_| data)
    } else {
        std::fs::read(path)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let js = jetstream::new(client.clone());
    let mut acks = Vec::new();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ack = js
            .publish(subject.to_string(), bytes::Bytes::copy_from_slice(line))
            .await
            .map_err(|e| format!("publish to {subject}: {e}"))?;
        acks.push(ack);
    }
    let count = acks.len();
    for ack in acks {
        ack.await.map_err(|e| format!("publish to {subject}: {e}"))?;
    }
    eprintln!("kmsguard-nats: {count} messages published to {subject}");
    Ok(())
}
