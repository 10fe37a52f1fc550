//! kmsguard workers on NATS JetStream.
//!
//! A worker pulls batches from a durable JetStream pull consumer, decides each message with the
//! same transform as the `kmsguard` binary (a message is one NDJSON line, or several), publishes
//! what the mode says to an output subject, waits for every publish ack, and only then acks the
//! input messages. Each output carries a `Nats-Msg-Id` derived from the input's stream and
//! sequence, so a message decided twice (a worker died before its acks reached the server, and
//! the message was redelivered to another) is stored once by the output stream within its
//! duplicate window: delivery is at least once, and the output stream holds no duplicate.
//!
//! Start N workers on one consumer and the server shares the messages between them.
//!
//! The decision itself ([`Decider`]) is synchronous and knows nothing of NATS, so the matcher's
//! hot path never touches tokio.

#![deny(missing_docs)]

pub mod local;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use kmsguard_transform::{Mode, Stats, Transform};

/// Decides message payloads with a [`Transform`] and cuts its output into the messages to
/// publish: in filter mode one message per alert line (without its `\n`), in tag mode one
/// message holding the whole transformed payload, byte for byte as the binary would write it.
///
/// The outputs of a payload are the same every time it is decided (the transform is
/// deterministic; alert budgets, which depend on the clock, are not offered here), which is
/// what makes the message ids of a redelivered message the same as the first time.
pub struct Decider {
    transform: Transform,
    mode: Mode,
    out: Vec<u8>,
    decided: usize,
}

impl Decider {
    /// A decider over `transform`, whose options' mode must be `mode`.
    pub fn new(transform: Transform, mode: Mode) -> Decider {
        Decider { transform, mode, out: Vec::new(), decided: 0 }
    }

    /// Decides `payload`, named `name` in `--explain` lines, and returns the messages to
    /// publish, in order.
    pub fn decide(&mut self, name: &str, payload: &[u8]) -> Vec<Bytes> {
        self.out.clear();
        self.transform.begin_input(self.decided, name);
        self.decided += 1;
        // Writing into a Vec cannot fail, and the transform's only other error is
        // `--on-invalid fail`, which this crate does not offer.
        let _ = self.transform.run(&mut &payload[..], &mut self.out);
        match self.mode {
            Mode::Tag if self.out.is_empty() => Vec::new(),
            Mode::Tag => vec![Bytes::copy_from_slice(&self.out)],
            // Count mode writes nothing: no message goes out.
            Mode::Filter | Mode::Count => self
                .out
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .map(Bytes::copy_from_slice)
                .collect(),
        }
    }

    /// The transform's counts so far (lines, candidates, matches, invalid, per rule).
    pub fn stats(&self) -> &Stats {
        self.transform.stats()
    }
}

/// The deduplication id of output `index` of the message at `sequence` in `stream`: the same
/// for every delivery of that message, distinct for every other output.
pub fn message_id(stream: &str, sequence: u64, index: usize, mode: Mode) -> String {
    match mode {
        Mode::Tag => format!("kmsguard:{stream}:{sequence}"),
        Mode::Filter | Mode::Count => format!("kmsguard:{stream}:{sequence}:{index}"),
    }
}

/// The streams and the consumer a pipeline needs, as `--create` makes them: a work-queue input
/// stream in file storage, a durable pull consumer with explicit acks, and an output stream;
/// both streams deduplicate by `Nats-Msg-Id` over `duplicate_window`.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The input stream's name.
    pub stream: String,
    /// The subject it captures.
    pub subject_in: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// The output stream's name.
    pub stream_out: String,
    /// The subject it captures (the workers' output subject).
    pub subject_out: String,
    /// The consumer's AckWait: a dead worker's messages go to the others after this long.
    pub ack_wait: Duration,
    /// The consumer's MaxDeliver (-1 for no limit).
    pub max_deliver: i64,
    /// The consumer's MaxAckPending, over all workers.
    pub max_ack_pending: i64,
    /// Both streams' duplicate window.
    pub duplicate_window: Duration,
}

impl Topology {
    /// The input stream `stream` capturing `subject_in`, its consumer `consumer`, and the output
    /// stream `stream_out` capturing `subject_out`, with `--create`'s defaults: AckWait 30 s,
    /// MaxDeliver 5, MaxAckPending 4096, a duplicate window of 2 minutes.
    pub fn new(
        stream: &str,
        subject_in: &str,
        consumer: &str,
        stream_out: &str,
        subject_out: &str,
    ) -> Topology {
        Topology {
            stream: stream.into(),
            subject_in: subject_in.into(),
            consumer: consumer.into(),
            stream_out: stream_out.into(),
            subject_out: subject_out.into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 4096,
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// Creates what is missing; existing streams and consumers are left as they are.
    ///
    /// # Errors
    ///
    /// The server's refusal (a name taken by a stream of another configuration, say).
    pub async fn create(&self, js: &jetstream::Context) -> Result<(), async_nats::Error> {
        let input = js
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![self.subject_in.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: self.duplicate_window,
                ..Default::default()
            })
            .await?;
        input
            .get_or_create_consumer(
                &self.consumer,
                consumer::pull::Config {
                    durable_name: Some(self.consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: self.max_deliver,
                    max_ack_pending: self.max_ack_pending,
                    ..Default::default()
                },
            )
            .await?;
        js.get_or_create_stream(stream::Config {
            name: self.stream_out.clone(),
            subjects: vec![self.subject_out.clone()],
            storage: stream::StorageType::File,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        })
        .await?;
        Ok(())
    }
}

/// Where a worker reads and writes.
#[derive(Clone, Debug)]
pub struct Config {
    /// The input stream.
    pub stream: String,
    /// The durable pull consumer on it, shared by every worker.
    pub consumer: String,
    /// The subject outputs are published to; a stream must capture it (for acks and
    /// deduplication).
    pub subject_out: String,
    /// Messages asked for per pull.
    pub batch: usize,
    /// How long a pull waits for messages before it returns what it has.
    pub expires: Duration,
    /// How long a message whose outputs could not all be published waits before it is
    /// redelivered (a negative acknowledgement with this delay).
    pub retry_delay: Duration,
    /// A periodic one-line report on stderr, if any.
    pub report_every: Option<Duration>,
}

/// A worker's counts.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Input messages received (redeliveries included).
    pub messages_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Output messages the output stream acknowledged (duplicates it dropped included).
    pub messages_out: u64,
    /// Of those, how many the output stream reported as duplicates (decided before).
    pub duplicates_out: u64,
    /// Input messages delivered more than once.
    pub redeliveries: u64,
    /// Input messages terminated: an output larger than the server accepts.
    pub poison: u64,
    /// Publishes that failed or were not acknowledged; their inputs are redelivered.
    pub publish_errors: u64,
    /// Pulls that returned at least one message.
    pub batches: u64,
    /// Errors pulling from the consumer (the server away, say); the worker pulls again.
    pub pull_errors: u64,
    /// Time spent deciding messages (the matcher and transform).
    pub decide_time: Duration,
    /// Sum of each batch's publish time: from its first publish to its last ack, less the
    /// time spent deciding.
    pub publish_time: Duration,
    /// The longest.
    pub publish_time_max: Duration,
}

impl WorkerStats {
    /// The counts as one JSON object, with the transform's: the periodic report and `--stats`.
    pub fn to_json(&self, decided: &Stats, elapsed: Duration) -> serde_json::Value {
        let mean_ms = if self.batches == 0 {
            0.0
        } else {
            self.publish_time.as_secs_f64() * 1e3 / self.batches as f64
        };
        let mut json = serde_json::json!({
            "elapsed_s": elapsed.as_secs_f64(),
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "duplicates_out": self.duplicates_out,
            "matches": decided.matches,
            "invalid": decided.invalid,
            "oversized": decided.oversized,
            "redeliveries": self.redeliveries,
            "poison": self.poison,
            "publish_errors": self.publish_errors,
            "pull_errors": self.pull_errors,
            "batches": self.batches,
            "decide_s": self.decide_time.as_secs_f64(),
            "publish_s": self.publish_time.as_secs_f64(),
            "publish_ms_mean": mean_ms,
            "publish_ms_max": self.publish_time_max.as_secs_f64() * 1e3,
        });
        if !decided.rules.is_empty() {
            json["rules"] = decided.to_json(elapsed)["rules"].clone();
        }
        json
    }
}

/// How long a batch's acks may take to reach the server.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What becomes of an input message once its outputs are settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    /// Every output is stored: acknowledge.
    Ack,
    /// Some output could not be published: redeliver later.
    Retry,
    /// Some output can never be published (larger than the server's limit): terminate.
    Term,
}

/// Runs a worker until `stop` is set: then it pulls no more, settles the batch in flight, and
/// returns its counts.
///
/// # Errors
///
/// Only when the consumer cannot be looked up at the start; once running, errors of the server
/// or the network are counted and retried (the client reconnects by itself).
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    decider: &mut Decider,
    stop: &AtomicBool,
) -> Result<WorkerStats, async_nats::Error> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&config.stream).await?;
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&config.consumer).await?;
    let mode = decider.mode;
    let mut stats = WorkerStats::default();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        if let Some(every) = config.report_every {
            if last_report.elapsed() >= every {
                eprintln!("{}", stats.to_json(decider.stats(), started.elapsed()));
                last_report = Instant::now();
            }
        }
        let fetched =
            consumer.fetch().max_messages(config.batch).expires(config.expires).messages().await;
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(e) => {
                stats.pull_errors += 1;
                eprintln!("kmsguard-nats: pull failed, pulling again: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut messages = Vec::new();
        while let Some(next) = batch.next().await {
            match next {
                Ok(m) => messages.push(m),
                Err(e) => {
                    stats.pull_errors += 1;
                    eprintln!("kmsguard-nats: pull interrupted: {e}");
                    break;
                }
            }
        }
        if messages.is_empty() {
            continue;
        }
        backoff = Duration::from_millis(50);
        stats.batches += 1;
        let publish_start = Instant::now();
        let mut batch_decide = Duration::ZERO;
        let mut settle = vec![Settle::Ack; messages.len()];
        let mut pending = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            stats.messages_in += 1;
            stats.bytes_in += m.payload.len() as u64;
            let Ok(info) = m.info() else {
                // Not a JetStream delivery (no ack subject to read): nothing to settle.
                continue;
            };
            if info.delivered > 1 {
                stats.redeliveries += 1;
            }
            let (stream_name, sequence) = (info.stream.to_string(), info.stream_sequence);
            let name = format!("{stream_name}:{sequence}");
            let decide_start = Instant::now();
            let outputs = decider.decide(&name, &m.payload);
            batch_decide += decide_start.elapsed();
            for (k, out) in outputs.into_iter().enumerate() {
                let id = message_id(&stream_name, sequence, k, mode);
                let message = PublishMessage::build().payload(out).message_id(&id);
                match js.send_publish(config.subject_out.clone(), message).await {
                    Ok(ack) => pending.push((i, ack)),
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        eprintln!("kmsguard-nats: {name}: output {k} terminated: {e}");
                        settle[i] = Settle::Term;
                    }
                    Err(e) => {
                        stats.publish_errors += 1;
                        eprintln!("kmsguard-nats: {name}: publish failed, will retry: {e}");
                        if settle[i] == Settle::Ack {
                            settle[i] = Settle::Retry;
                        }
                    }
                }
            }
        }
        for (i, ack) in pending {
            match ack.await {
                Ok(ack) => {
                    stats.messages_out += 1;
                    stats.duplicates_out += u64::from(ack.duplicate);
                }
                Err(e) => {
                    stats.publish_errors += 1;
                    eprintln!("kmsguard-nats: publish not acknowledged, will retry: {e}");
                    if settle[i] == Settle::Ack {
                        settle[i] = Settle::Retry;
                    }
                }
            }
        }
        stats.decide_time += batch_decide;
        let took = publish_start.elapsed().saturating_sub(batch_decide);
        stats.publish_time += took;
        stats.publish_time_max = stats.publish_time_max.max(took);
        for s in &settle {
            stats.poison += u64::from(*s == Settle::Term);
        }
        // Acks are queued to the connection and flushed; with the server away that could wait
        // for as long as it stays away, so it is bounded: an ack that does not arrive is no
        // loss, the message is redelivered after AckWait and its outputs deduplicated.
        let acked = tokio::time::timeout(SETTLE_TIMEOUT, async {
            for (m, s) in messages.iter().zip(&settle) {
                let kind = match s {
                    Settle::Ack => AckKind::Ack,
                    Settle::Retry => AckKind::Nak(Some(config.retry_delay)),
                    Settle::Term => AckKind::Term,
                };
                m.ack_with(kind).await?;
            }
            client.flush().await.map_err(async_nats::Error::from)
        })
        .await;
        match acked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("kmsguard-nats: acks not sent (redelivered later): {e}"),
            Err(_) => eprintln!("kmsguard-nats: acks not confirmed in time (redelivered later)"),
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmsguard_matcher::Matcher;
    use kmsguard_transform::Options;

    const MATCH: &str = r#"{"event":{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com","action":"DisableKey","outcome":"success"}}"#;
    const OTHER: &str = r#"{"event":{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com","action":"EnableKey","outcome":"success"}}"#;

    fn decider(mode: Mode) -> Decider {
        let options = Options { mode, ..Options::default() };
        Decider::new(Transform::new(Matcher::new(), options), mode)
    }

    #[test]
    fn filter_mode_publishes_each_alert_alone() {
        let mut d = decider(Mode::Filter);
        let payload = format!("{MATCH}\n{OTHER}\nnot json\n{MATCH}");
        let out = d.decide("s:1", payload.as_bytes());
        assert_eq!(out.len(), 2);
        for o in &out {
            assert!(!o.ends_with(b"\n"));
            let v: serde_json::Value = serde_json::from_slice(o).unwrap();
            assert_eq!(v["rule"]["id"], "6951f15e-533c-4a60-8014-a3c3ab851a1b");
        }
        assert!(d.decide("s:2", OTHER.as_bytes()).is_empty());
        assert_eq!((d.stats().matches, d.stats().invalid), (2, 0));
    }

    #[test]
    fn tag_mode_publishes_every_byte_once() {
        let mut d = decider(Mode::Tag);
        let payload = format!("{OTHER}\nnot json\n");
        assert_eq!(d.decide("s:1", payload.as_bytes()), vec![Bytes::from(payload.clone())]);
        let out = d.decide("s:2", MATCH.as_bytes());
        assert_eq!(out.len(), 1);
        assert!(!out[0].ends_with(b"\n"), "a payload without \\n stays without");
        assert!(out[0].starts_with(&MATCH.as_bytes()[..MATCH.len() - 2]));
        assert!(std::str::from_utf8(&out[0]).unwrap().contains(r#""tags":["kms-cmk"#));
        assert!(d.decide("s:3", b"").is_empty());
    }

    #[test]
    fn the_same_payload_gives_the_same_outputs() {
        let mut d = decider(Mode::Filter);
        let payload = format!("{MATCH}\n{MATCH}\n");
        let first = d.decide("s:1", payload.as_bytes());
        assert_eq!(d.decide("s:1", payload.as_bytes()), first);
    }

    #[test]
    fn split_records_gives_one_alert_per_matching_record() {
        let options = Options { split_records: true, ..Options::default() };
        let mut d = Decider::new(Transform::new(Matcher::new(), options), Mode::Filter);
        let record = |name: &str| {
            format!(
                r#"{{"eventVersion":"1.08","eventSource":"kms.amazonaws.com","eventName":"{name}","eventID":"{name}"}}"#
            )
        };
        let file = format!(
            r#"{{"Records":[{},{},{}]}}"#,
            record("DisableKey"),
            record("EnableKey"),
            record("ScheduleKeyDeletion")
        );
        let out = d.decide("s:1", file.as_bytes());
        let ids: Vec<String> = out
            .iter()
            .map(|o| serde_json::from_slice::<serde_json::Value>(o).unwrap()["eventID"].to_string())
            .collect();
        assert_eq!(ids, [r#""DisableKey""#, r#""ScheduleKeyDeletion""#]);
    }

    #[test]
    fn ids_name_the_input_and_the_output() {
        assert_eq!(message_id("IN", 7, 2, Mode::Filter), "kmsguard:IN:7:2");
        assert_eq!(message_id("IN", 7, 0, Mode::Tag), "kmsguard:IN:7");
        assert_ne!(message_id("IN", 7, 0, Mode::Filter), message_id("IN", 7, 1, Mode::Filter));
        assert_ne!(message_id("IN", 7, 0, Mode::Filter), message_id("IN", 70, 0, Mode::Filter));
    }
}
