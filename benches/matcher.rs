//! Criterion benchmarks: the transform over each corpus profile, the three paths a line can take,
//! and the exact path beside simd-json's own parse of the same lines.
//!
//! Every benchmark checks its answer (the generator's match count) before it is timed.
//!
//! `seed-prefilter` is the built-in rule's buffer-wide candidate search (one fused pass for
//! `leKey` and `\u00` where the CPU has AVX2) beside the two `memmem` passes it replaces.
//!
//! `rule-count` is the per-event cost of a rule pack (`--rules`) against its size: the seed
//! rule written as KQL, then 9, 84 and 999 synthetic rules beside it, in Elastic's shape
//! (dataset, provider, action, outcome; some with a `not` or a wildcard), over services the
//! corpus holds but actions it never makes, so every line they add is a non-candidate the
//! cross-rule prefilter must reject. The curve should be nearly flat.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kmsguard_corpus::{Generator, Profile};
use kmsguard_matcher::{kql, Matcher};
use kmsguard_rules::PackRule;
use kmsguard_transform::{Options, Pack, PackHandle, Transform};

const CORPUS_BYTES: usize = 8 << 20;

fn corpus(profile: Profile) -> (Vec<u8>, u64) {
    let mut gen = Generator::new(profile, 1);
    let mut data = Vec::new();
    gen.fill(&mut data, CORPUS_BYTES);
    (data, gen.matches)
}

fn filter(data: &[u8]) -> u64 {
    let options = Options { count_lines: false, ..Options::default() };
    let mut t = Transform::new(Matcher::new(), options);
    t.process(data, &mut std::io::sink()).unwrap();
    t.stats().matches
}

fn profiles(c: &mut Criterion) {
    let mut group = c.benchmark_group("profile");
    for profile in Profile::ALL.into_iter().filter(|p| *p != Profile::SAMPLE) {
        let (data, matches) = corpus(profile);
        assert_eq!(filter(&data), matches, "{}: wrong answer", profile.name);
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(profile.name, |b| b.iter(|| filter(black_box(&data))));
    }
    group.finish();
}

/// One line of each kind: rejected by the prefilter, a candidate that fails, a match.
fn paths(c: &mut Criterion) {
    let mut gen = Generator::new(Profile::ALL_CANDIDATES, 3);
    let (mut reject, mut fail, mut pass) = (None, None, None);
    let mut other = Generator::new(Profile::NO_KMS, 3);
    let mut line = Vec::new();
    other.write_event(&mut line);
    reject.get_or_insert(line);
    while fail.is_none() || pass.is_none() {
        let mut line = Vec::new();
        let slot = if gen.write_event(&mut line) { &mut pass } else { &mut fail };
        slot.get_or_insert(line);
    }
    let mut matcher = Matcher::new();
    let mut group = c.benchmark_group("path");
    for (name, line, want) in [
        ("prefilter-reject", reject.unwrap(), false),
        ("candidate-fails", fail.unwrap(), false),
        ("full-match", pass.unwrap(), true),
    ] {
        let line = line.strip_suffix(b"\n").unwrap().to_vec();
        assert_eq!(matcher.is_match(&line), want, "{name}: wrong answer");
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(name, |b| b.iter(|| matcher.is_match(black_box(&line))));
    }
    group.finish();
}

/// The exact path against simd-json parsing the same candidate lines into a tape (which it must
/// do on a copy, made outside the timing).
fn exact_vs_simd_json(c: &mut Criterion) {
    let (data, matches) = corpus(Profile::ALL_CANDIDATES);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut matcher = Matcher::new();
    assert_eq!(lines.iter().filter(|l| matcher.evaluate(l).is_match()).count() as u64, matches);
    let mut group = c.benchmark_group("all-candidates");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    group.bench_function("kmsguard-evaluate", |b| {
        b.iter(|| lines.iter().filter(|l| matcher.evaluate(l).is_match()).count())
    });
    group.bench_function("simd-json-to-tape", |b| {
        b.iter_batched_ref(
            || lines.iter().map(|l| l.to_vec()).collect::<Vec<_>>(),
            |copies| {
                copies
                    .iter_mut()
                    .map(|l| simd_json::to_tape(l).map(|t| t.0.len()).unwrap_or(0))
                    .sum::<usize>()
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The seed rule, as Elastic's TOML states it.
const SEED_QUERY: &str = "event.dataset:aws.cloudtrail and event.provider:kms.amazonaws.com and \
    event.action:(\"DisableKey\" or \"ScheduleKeyDeletion\") and event.outcome:success";

/// Rule `i` of the synthetic pack (`i >= 1`; rule 0 is the seed rule).
fn synthetic_query(i: usize) -> String {
    const SERVICES: [&str; 6] = ["iam", "s3", "ec2", "sts", "cloudtrail", "guardduty"];
    const VERBS: [&str; 5] = ["Delete", "Put", "Update", "Detach", "Stop"];
    const NOUNS: [&str; 5] = ["Policy", "Bucket", "Detector", "Snapshot", "Trail"];
    let service = SERVICES[i % SERVICES.len()];
    let action = format!("{}{}{i}", VERBS[i % 5], NOUNS[(i / 5) % 5]);
    let base = format!(
        "event.dataset:aws.cloudtrail and event.provider:{service}.amazonaws.com and \
         event.action:{action} and event.outcome:success"
    );
    match i % 3 {
        0 => base,
        1 => format!("{base} and not aws.cloudtrail.user_identity.type:AWSService"),
        _ => format!("{base} and user_agent.original:*console*"),
    }
}

fn pack_rule(i: usize, query: &str) -> PackRule {
    PackRule {
        id: format!("synthetic-{i}"),
        name: format!("Synthetic rule {i}"),
        tag: format!("synthetic-{i}"),
        severity: "low".into(),
        risk_score: 21,
        author: vec!["kmsguard".into()],
        license: "MIT".into(),
        references: Vec::new(),
        threat: Vec::new(),
        max_signals: 100,
        query_text: query.into(),
        query: kql::parse(query).expect("a synthetic rule is in the subset"),
        path: format!("synthetic-{i}.toml").into(),
    }
}

fn pack_filter(handle: &std::sync::Arc<PackHandle>, data: &[u8]) -> u64 {
    let options = Options { count_lines: false, ..Options::default() };
    let mut t = Transform::with_pack(handle.clone(), options);
    t.process(data, &mut std::io::sink()).unwrap();
    t.stats().rules[0].matches
}

/// Per-event cost against the number of rules (mixed and broad traffic).
fn rule_count(c: &mut Criterion) {
    for profile in [Profile::MIXED, Profile::BROAD] {
        let (data, _) = corpus(profile);
        let events = data.iter().filter(|&&b| b == b'\n').count() as u64;
        let expected = filter(&data);
        let mut group = c.benchmark_group(format!("rule-count/{}", profile.name));
        group.sample_size(20);
        group.throughput(Throughput::Elements(events));
        for count in [1, 10, 85, 1000] {
            let rules: Vec<PackRule> = (0..count)
                .map(|i| {
                    let q = if i == 0 { SEED_QUERY.to_string() } else { synthetic_query(i) };
                    pack_rule(i, &q)
                })
                .collect();
            let handle = PackHandle::new(Pack::new(&rules, None));
            assert_eq!(pack_filter(&handle, &data), expected, "{count} rules: wrong answer");
            group.bench_function(count.to_string(), |b| {
                b.iter(|| pack_filter(&handle, black_box(&data)))
            });
        }
        group.finish();
    }
}

/// The seed rule's candidate search over each profile, beside two plain `memmem` passes (the
/// search before the fused scan, without its whole-term confirmations: a lower bound of it).
fn seed_prefilter(c: &mut Criterion) {
    let matcher = Matcher::new();
    let prefilter = matcher.prefilter();
    let finders: Vec<_> =
        prefilter.needles().map(|n| memchr::memmem::Finder::new(n).into_owned()).collect();
    for profile in [Profile::MIXED, Profile::KMS_ROTATION, Profile::ENVELOPE] {
        let (data, matches) = corpus(profile);
        let found = prefilter.candidate_lines(&data).count() as u64;
        assert!(found >= matches, "{}: {found} candidates, {matches} matches", profile.name);
        let mut group = c.benchmark_group(format!("seed-prefilter/{}", profile.name));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function("candidate-lines", |b| {
            b.iter(|| prefilter.candidate_lines(black_box(&data)).count())
        });
        group.bench_function("memmem-two-passes", |b| {
            b.iter(|| finders.iter().map(|f| f.find_iter(black_box(&data)).count()).sum::<usize>())
        });
        group.finish();
    }
}

criterion_group!(benches, profiles, paths, exact_vs_simd_json, seed_prefilter, rule_count);
criterion_main!(benches);
