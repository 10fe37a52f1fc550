//! Criterion benchmarks: the transform over each corpus profile, the three paths a line can take,
//! and the exact path beside simd-json's own parse of the same lines.
//!
//! Every benchmark checks its answer (the generator's match count) before it is timed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kmsguard_corpus::{Generator, Profile};
use kmsguard_matcher::Matcher;
use kmsguard_transform::{Options, Transform};

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

criterion_group!(benches, profiles, paths, exact_vs_simd_json);
criterion_main!(benches);
