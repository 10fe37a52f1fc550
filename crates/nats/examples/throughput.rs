//! Throughput and latency of kmsguard-nats workers against the same server's raw JetStream
//! rates (the ceiling), on a server of its own:
//!
//! ```sh
//! cargo build --release -p kmsguard-nats
//! cargo run --release -p kmsguard-nats --example throughput -- [EVENTS] [ROUNDS]
//! ```
//!
//! 1. publish EVENTS raw CloudTrail records (one per message) into a work-queue stream, and
//!    drain them with a bare pull consumer that only acks: JetStream's own rates;
//! 2. for 1, 2 and 4 workers: preload the same records, start the workers, and time until the
//!    input is drained and the output stream holds every alert; CPU seconds of the workers and
//!    the server, and the workers' own split between deciding and publishing;
//! 3. one alert's latency at idle: publish a matching record, time until the alert arrives on
//!    the output subject (a core subscription).
//!
//! Medians of ROUNDS (default 3) runs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use kmsguard_corpus::{Format, Generator, Profile};
use kmsguard_nats::local::{self, Server};
use kmsguard_nats::Topology;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let binary = local::binary().expect("nats-server (apt-get install -y nats-server)");
    let worker = std::env::current_exe().unwrap().parent().unwrap().join("../kmsguard-nats");
    assert!(worker.is_file(), "build the worker first: cargo build --release -p kmsguard-nats");
    let server = Server::start(binary, "bench");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(bench(&server, &worker, events, rounds));
}

fn records(count: usize) -> (Vec<Bytes>, usize) {
    let profile =
        Profile { name: "nats", format: Format::Raw, match_share: 0.03, ..Profile::MIXED };
    let mut gen = Generator::new(profile, 13);
    let mut out = Vec::with_capacity(count);
    let mut line = Vec::new();
    for _ in 0..count {
        line.clear();
        gen.write_event(&mut line);
        line.pop();
        out.push(Bytes::copy_from_slice(&line));
    }
    (out, gen.matches as usize)
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5), counted here from field 3 (after the command's ')').
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Fresh streams and consumer, as `--create` makes them.
async fn reset(js: &jetstream::Context) {
    let _ = js.delete_stream("IN").await;
    let _ = js.delete_stream("OUT").await;
    let topology = Topology {
        max_deliver: -1,
        ..Topology::new("IN", "ct.in", "kmsguard", "OUT", "ct.alerts")
    };
    topology.create(js).await.unwrap();
}

async fn publish(js: &jetstream::Context, lines: &[Bytes]) {
    for chunk in lines.chunks(4000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for line in chunk {
            acks.push(js.publish("ct.in", line.clone()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

async fn count(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name).await.map(|s| s.cached_info().state.messages).unwrap_or(0)
}

async fn bench(server: &Server, worker: &std::path::Path, events: usize, rounds: usize) {
    let (client, js) = {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        (client, js)
    };
    let (lines, matches) = records(events);
    let bytes: usize = lines.iter().map(Bytes::len).sum();
    let mb = bytes as f64 / 1e6;
    let server_pid = server.pid().unwrap();
    println!(
        "{events} raw CloudTrail records (one per message), {mb:.1} MB, {matches} matches; \
         median of {rounds}\n"
    );
    println!(
        "| run | s | messages/s | MB/s | CPU s workers | CPU s server | decide s | publish s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");

    // The ceiling: JetStream's own publish and pull-and-ack rates.
    let (mut publish_s, mut drain_s) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        reset(&js).await;
        let start = Instant::now();
        publish(&js, &lines).await;
        publish_s.push(start.elapsed().as_secs_f64());
        let consumer: consumer::PullConsumer =
            js.get_stream("IN").await.unwrap().get_consumer("kmsguard").await.unwrap();
        let start = Instant::now();
        let mut seen = 0;
        while seen < events {
            let mut batch = consumer
                .fetch()
                .max_messages(256)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .unwrap();
            while let Some(m) = batch.next().await {
                m.unwrap().ack().await.unwrap();
                seen += 1;
            }
        }
        client.flush().await.unwrap();
        drain_s.push(start.elapsed().as_secs_f64());
    }
    for (name, s) in
        [("publish (ceiling)", median(publish_s)), ("pull + ack (ceiling)", median(drain_s))]
    {
        let rate = events as f64 / s;
        println!("| {name} | {s:.2} | {rate:.0} | {:.0} | | | | |", mb / s);
    }

    for workers in [1, 2, 4] {
        let mut runs = Vec::new();
        for _ in 0..rounds {
            reset(&js).await;
            publish(&js, &lines).await;
            let server_cpu = cpu_seconds(server_pid);
            let start = Instant::now();
            let children: Vec<Child> = (0..workers)
                .map(|_| {
                    Command::new(worker)
                        .args(["--server", &server.url(), "--stream", "IN"])
                        .args(["--consumer", "kmsguard", "--subject-out", "ct.alerts", "--stats"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            loop {
                let info = async {
                    let mut c: consumer::PullConsumer =
                        js.get_stream("IN").await.ok()?.get_consumer("kmsguard").await.ok()?;
                    let i = c.info().await.ok()?;
                    Some(i.num_pending + i.num_ack_pending as u64)
                }
                .await;
                if info == Some(0) && count(&js, "OUT").await as usize >= matches {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = start.elapsed().as_secs_f64();
            let server_cpu = cpu_seconds(server_pid) - server_cpu;
            let worker_cpu: f64 = children.iter().map(|c| cpu_seconds(c.id())).sum();
            let (mut decide, mut publish) = (0.0, 0.0);
            for child in children {
                local::terminate(child.id());
                let out = child.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stderr);
                let stats: serde_json::Value =
                    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_default();
                decide += stats["decide_s"].as_f64().unwrap_or(0.0);
                publish += stats["publish_s"].as_f64().unwrap_or(0.0);
            }
            runs.push((took, worker_cpu, server_cpu, decide, publish));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (s, wc, sc, d, p) = runs[runs.len() / 2];
        println!(
            "| {workers} worker{} | {s:.2} | {:.0} | {:.0} | {wc:.2} | {sc:.2} | {d:.2} | {p:.2} |",
            if workers == 1 { "" } else { "s" },
            events as f64 / s,
            mb / s
        );
    }

    // One alert at idle: publish to the alert's arrival, a worker waiting.
    reset(&js).await;
    let mut child = Command::new(worker)
        .args(["--server", &server.url(), "--stream", "IN"])
        .args(["--consumer", "kmsguard", "--subject-out", "ct.alerts"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut alerts = client.subscribe("ct.alerts").await.unwrap();
    let (all, _) = records(2000);
    let mut gen_matches = Vec::new();
    let mut m = kmsguard_matcher::Matcher::new();
    for line in &all {
        if m.is_match(line) {
            gen_matches.push(line.clone());
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::new();
    for line in gen_matches.iter().take(21) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        js.publish("ct.in", line.clone()).await.unwrap().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), alerts.next()).await.unwrap().unwrap();
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let max = latencies.iter().copied().fold(0.0, f64::max);
    println!(
        "\none alert at idle, publish to delivery: median {:.2} ms, max {max:.2} ms ({} alerts)",
        median(latencies.clone()),
        latencies.len()
    );
    let _ = child.kill();
    let _ = child.wait();
}
