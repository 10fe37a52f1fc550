//! Integration tests of the `kmsguard` binary: one test binary, a module per topic.

// Spawning the binary, feeding stdin from a thread, locating shared fixtures.
mod util;

// Every example and rule of spec sections 2, 3 and 5, one golden case each.
mod golden;
// The output contract of filter and tag mode on mixed files.
mod contract;
// Public CloudTrail fixtures in ../shared/data (skipped, loudly, when absent).
mod conformance;
// The shipped sample and the corpus generator that made it.
mod sample;
// The fuzz targets' properties, run on their committed seeds (stable, no fuzzer needed).
mod fuzz_seeds;
// Live pipelines: a match written into an open pipe comes out at once.
mod live;
// Hostile input, end to end: each case's output and exit status, memory where it matters.
mod hostile;
// kmsguard inside a real Fluent Bit: the example configs, the exec input, two instances with
// kmsguard between them, the WASM filter.
mod fluentbit;
// The inputs users hold: gzip and zstd, trees, pretty JSON, LookupEvents, Vector aws_s3 events,
// ECS without a dataset; warnings and hunting options.
mod inputs;
// Rule packs: Elastic's TOML rules loaded with --rules, alerts per rule, budgets, SIGHUP.
mod rules;
// Elastic's own rules on Elastic's own data, through the library: loading, raw/ECS agreement,
// a prefilter literal for every rule.
mod elastic_pack;
