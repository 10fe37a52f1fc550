//! `kmsguard-corpus PROFILE SIZE [SEED]`: writes SIZE bytes (suffixes K, M, G) of generated
//! CloudTrail NDJSON to stdout and `events=N matches=M` to stderr, so a benchmark can check its
//! answer.

use std::io::Write;
use std::process::ExitCode;

use kmsguard_corpus::{Generator, Profile};

fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = digits.parse().ok()?;
    let scale = match unit.trim_end_matches("iB").trim_end_matches('B') {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        let names: Vec<_> = Profile::ALL.iter().map(|p| p.name).collect();
        eprintln!("usage: kmsguard-corpus PROFILE SIZE [SEED]\nprofiles: {}", names.join(", "));
        ExitCode::from(2)
    };
    let (Some(profile), Some(size)) =
        (args.first().and_then(|p| Profile::named(p)), args.get(1).and_then(|s| parse_size(s)))
    else {
        return usage();
    };
    let seed = match args.get(2).map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(seed)) => seed,
        Some(Err(_)) => return usage(),
    };
    let mut gen = Generator::new(profile, seed);
    let mut stdout = std::io::stdout().lock();
    let mut buf = Vec::with_capacity(1 << 21);
    let mut written = 0;
    while written < size {
        buf.clear();
        gen.fill(&mut buf, (1 << 20).min(size - written));
        written += buf.len();
        if let Err(e) = stdout.write_all(&buf) {
            eprintln!("kmsguard-corpus: {e}");
            return ExitCode::from(2);
        }
    }
    eprintln!("events={} matches={} bytes={}", gen.events, gen.matches, written);
    ExitCode::SUCCESS
}
