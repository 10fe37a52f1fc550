//! kmsguard inside a real Fluent Bit 5.1.1, built from `../shared/tools/fluent-bit/` once per
//! machine into a cache outside the checkout (keyed by the source tarball's checksum). Every test
//! runs the files in `examples/shippers/fluent-bit/` themselves, with their paths substituted, so
//! an example cannot drift from what is tested. Without the kit or a toolchain to build it, the
//! tests say `SKIPPED` loudly; under CI they fail instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const RULE_ID: &str = "6951f15e-533c-4a60-8014-a3c3ab851a1b";

/// Where built tools are kept between runs: `KMSGUARD_CACHE`, else `$XDG_CACHE_HOME/kmsguard`,
/// else `~/.cache/kmsguard`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KMSGUARD_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
    });
    base.join("kmsguard")
}

/// `Ok(path)`, or why the tool is not there; the calling test skips loudly, or fails under CI.
fn require(test: &str, tool: &Result<PathBuf, String>) -> Option<PathBuf> {
    match tool {
        Ok(path) => Some(path.clone()),
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "{test}: {why}");
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            None
        }
    }
}

/// The Fluent Bit binary, built on first use.
fn fluent_bit(test: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(test, BUILT.get_or_init(build_fluent_bit))
}

fn build_fluent_bit() -> Result<PathBuf, String> {
    let kit = std::env::var_os("KMSGUARD_FLUENT_BIT_KIT").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/fluent-bit")
    });
    let tarball = kit.join("fluent-bit-src.tar.xz");
    if !tarball.exists() {
        return Err(format!("no Fluent Bit source kit at {}", kit.display()));
    }
    let sum = Command::new("sha256sum").arg(&tarball).output().map_err(|e| e.to_string())?;
    let sum = String::from_utf8_lossy(&sum.stdout)[..16].to_string();
    let dir = cache_dir().join(format!("fluent-bit-{sum}"));
    let bin = dir.join("build/bin/fluent-bit");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache_dir()).map_err(|e| e.to_string())?;
    // One build per machine, even with several test processes at once.
    let lock = std::fs::File::create(cache_dir().join(format!("fluent-bit-{sum}.lock")))
        .map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| e.to_string())?;
    if bin.exists() {
        return Ok(bin);
    }
    let log = cache_dir().join(format!("fluent-bit-{sum}.log"));
    eprintln!(
        "building Fluent Bit into {} (about 3.5 minutes; log: {})",
        dir.display(),
        log.display()
    );
    let status = Command::new("sh")
        .arg(kit.join("build.sh"))
        .arg(&dir)
        .stdout(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log).map_err(|e| e.to_string())?,
        ))
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() || !bin.exists() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        return Err(format!("the Fluent Bit build failed ({status}):\n{}", tail.join("\n")));
    }
    Ok(bin)
}

/// kmsguard.wasm, built (release, wasm32-wasip1) on first use.
fn wasm_module(test: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(test, BUILT.get_or_init(build_wasm))
}

fn build_wasm() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = root.join("target/wasm");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-q", "--target", "wasm32-wasip1", "-p", "kmsguard-wasm"])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "building kmsguard.wasm failed (is the target installed? rustup target add \
             wasm32-wasip1): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join("wasm32-wasip1/release/kmsguard_wasm.wasm"))
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    crate::util::scratch_dir(&format!("fb-{name}"))
}

/// `examples/shippers/fluent-bit/<name>` with its paths replaced by the test's, written to
/// `dir`: the example itself, as a user copies it, and its output directory made, as it says.
fn example(name: &str, dir: &Path, input: &Path, wasm: Option<&Path>) -> PathBuf {
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shippers/fluent-bit").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut subs = vec![
        ("/usr/bin/kmsguard", env!("CARGO_BIN_EXE_kmsguard").to_string()),
        ("/var/log/cloudtrail/events.ndjson", input.display().to_string()),
        ("/var/lib/kmsguard", dir.join("out").display().to_string()),
    ];
    if let Some(wasm) = wasm {
        subs.push(("/usr/lib/kmsguard/kmsguard.wasm", wasm.display().to_string()));
    }
    assert!(subs.iter().any(|(from, _)| text.contains(from)), "{name} holds none of the paths");
    let mut text = text;
    for (from, to) in subs {
        text = text.replace(from, &to);
    }
    let out = dir.join(name);
    std::fs::write(&out, text).unwrap();
    out
}

/// Starts Fluent Bit on `config`, its log in the config's folder.
fn start(fb: &Path, config: &Path) -> Child {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    Command::new(fb)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// Waits until `path` holds `n` lines (or more, or the time is up); returns how many it holds.
fn wait_for(path: &Path, n: usize, within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let got = lines(path);
        if got >= n || start.elapsed() > within {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then the exit status within `within`.
fn stop(mut child: Child, within: Duration) -> std::process::ExitStatus {
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "Fluent Bit did not stop within {within:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn values(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The alerts the kmsguard binary writes for `input` (filter mode, dataset declared as the
/// examples declare it), as JSON values.
fn cli_alerts(input: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsguard"))
        .args(["--assume-dataset", "aws.cloudtrail"])
        .arg(input)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A generated corpus of `size` bytes (mixed profile) in `dir`: its path, line and match counts.
fn corpus(dir: &Path, size: usize) -> (PathBuf, usize, usize) {
    let mut gen = kmsguard_corpus::Generator::new(kmsguard_corpus::Profile::MIXED, 5);
    let mut data = Vec::new();
    gen.fill(&mut data, size);
    let path = dir.join("corpus.ndjson");
    std::fs::write(&path, &data).unwrap();
    (path, gen.events as usize, gen.matches as usize)
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloudtrail-sample.ndjson")
}

/// Whether a process whose command line mentions `needle` is still running.
fn running(needle: &str) -> bool {
    Command::new("pgrep").arg("-f").arg(needle).output().is_ok_and(|o| o.status.success())
}

/// exec.yaml on a file that grows: every alert arrives whole and exact (on the sample and on a
/// 64 MB corpus), a match appended while it runs arrives within 2 s, and SIGTERM ends Fluent Bit,
/// tail and kmsguard.
#[test]
fn exec_input_in_front() {
    let Some(fb) = fluent_bit("exec_input_in_front") else { return };
    for (name, size) in [("sample", 0), ("64mb", 64 << 20)] {
        let dir = scratch(&format!("exec-{name}"));
        let (input, total, matches) = if size == 0 {
            let input = dir.join("events.ndjson");
            std::fs::copy(sample(), &input).unwrap();
            (input, 275, 5)
        } else {
            corpus(&dir, size)
        };
        let config = example("exec.yaml", &dir, &input, None);
        let child = start(&fb, &config);
        let (alerts, rest) = (dir.join("out/alerts.ndjson"), dir.join("out/rest.ndjson"));
        let within = Duration::from_secs(if size == 0 { 60 } else { 300 });
        assert_eq!(wait_for(&alerts, matches, within), matches, "{name}: alerts");
        assert_eq!(wait_for(&rest, total - matches, within), total - matches, "{name}: the rest");
        assert_eq!(values(&alerts), cli_alerts(&input), "{name}: the CLI's alerts, exactly");
        // Live: a match appended now arrives within 2 s.
        let record =
            r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","eventID":"appended"}"#;
        let appended = Instant::now();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap()
            .write_all(format!("{record}\n").as_bytes())
            .unwrap();
        assert_eq!(
            wait_for(&alerts, matches + 1, Duration::from_secs(2)),
            matches + 1,
            "{name}: live alert"
        );
        eprintln!("{name}: an appended match reached the output in {:?}", appended.elapsed());
        let status = stop(child, Duration::from_secs(15));
        assert!(status.success(), "{name}: Fluent Bit exited with {status}");
        // tail (--pid) and kmsguard end with it.
        let until = Instant::now() + Duration::from_secs(5);
        while running(&input.display().to_string()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !running(&input.display().to_string()),
            "{name}: tail or kmsguard outlived Fluent Bit"
        );
        assert_eq!(lines(&alerts), matches + 1, "{name}: nothing doubled at shutdown");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// producer.yaml | kmsguard --mode tag --wrap-invalid | consumer.yaml: every record arrives once,
/// on its route, on the sample and on 64 MB.
#[test]
fn two_instances_with_kmsguard_between() {
    let Some(fb) = fluent_bit("two_instances_with_kmsguard_between") else { return };
    for (name, size) in [("sample", 0), ("64mb", 64 << 20)] {
        let dir = scratch(&format!("two-{name}"));
        let (input, total, matches) =
            if size == 0 { (sample(), 275, 5) } else { corpus(&dir, size) };
        let producer = example("producer.yaml", &dir, &input, None);
        let consumer = example("consumer.yaml", &dir, &input, None);
        let pipeline = format!(
            "'{fb}' -c '{p}' 2>'{d}/producer.log' | '{k}' --mode tag --wrap-invalid | '{fb}' -c '{c}' 2>'{d}/consumer.log'",
            fb = fb.display(),
            p = producer.display(),
            c = consumer.display(),
            k = env!("CARGO_BIN_EXE_kmsguard"),
            d = dir.display()
        );
        let status = Command::new("sh").arg("-c").arg(&pipeline).status().unwrap();
        assert!(status.success(), "{name}: {status}");
        let (alerts, rest) = (dir.join("out/alerts.ndjson"), dir.join("out/rest.ndjson"));
        assert_eq!((lines(&alerts), lines(&rest)), (matches, total - matches), "{name}: per route");
        let alerts = values(&alerts);
        assert!(alerts.iter().all(|a| a["rule"]["id"] == RULE_ID), "{name}: only alerts");
        assert_eq!(alerts, cli_alerts(&input), "{name}: the CLI's alerts");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Invalid lines in the stream: with --wrap-invalid, Fluent Bit's in_stdin (which drops its whole
/// read buffer at one invalid line) receives every line.
#[test]
fn wrapped_invalid_lines_all_reach_fluent_bit() {
    let Some(fb) = fluent_bit("wrapped_invalid_lines_all_reach_fluent_bit") else { return };
    let dir = scratch("wrapped");
    let mut input = Vec::new();
    for (n, line) in std::fs::read_to_string(sample()).unwrap().lines().enumerate() {
        input.extend_from_slice(line.as_bytes());
        input.push(b'\n');
        if n % 10 == 0 {
            input.extend_from_slice(b"{\"not json\n\xff\xfe binary\n");
        }
    }
    let path = dir.join("events.ndjson");
    std::fs::write(&path, &input).unwrap();
    let total = input.iter().filter(|&&b| b == b'\n').count();
    let consumer = example("consumer.yaml", &dir, &path, None);
    let pipeline = format!(
        "'{k}' --mode tag --wrap-invalid --no-warn all '{i}' | '{fb}' -c '{c}' 2>'{d}/consumer.log'",
        k = env!("CARGO_BIN_EXE_kmsguard"),
        i = path.display(),
        fb = fb.display(),
        c = consumer.display(),
        d = dir.display()
    );
    assert!(Command::new("sh").arg("-c").arg(&pipeline).status().unwrap().success());
    let (alerts, rest) = (dir.join("out/alerts.ndjson"), dir.join("out/rest.ndjson"));
    assert_eq!(lines(&alerts) + lines(&rest), total, "every line arrives");
    assert_eq!(lines(&alerts), 5);
    let wrapped = values(&rest).iter().filter(|v| v["kmsguard"]["invalid"].is_string()).count();
    assert_eq!(wrapped, 2 * 28, "each invalid line arrives wrapped");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// wasm.yaml: kmsguard.wasm inside Fluent Bit gives the CLI's alerts exactly, on the sample and on
/// 64 MB, and handles a 100 KB record.
#[test]
fn wasm_filter_matches_the_cli() {
    let Some(fb) = fluent_bit("wasm_filter_matches_the_cli") else { return };
    let Some(wasm) = wasm_module("wasm_filter_matches_the_cli") else { return };
    for (name, size) in [("sample", 0), ("64mb", 64 << 20)] {
        let dir = scratch(&format!("wasm-{name}"));
        let (input, total, matches) = if size == 0 {
            let input = dir.join("events.ndjson");
            let mut data = std::fs::read(sample()).unwrap();
            // A 100 KB record that matches.
            let big = format!(
                r#"{{"eventSource":"kms.amazonaws.com","eventName":"ScheduleKeyDeletion","requestParameters":{{"pad":"{}"}}}}"#,
                "x".repeat(100_000)
            );
            data.extend_from_slice(big.as_bytes());
            data.push(b'\n');
            std::fs::write(&input, data).unwrap();
            (input, 276, 6)
        } else {
            corpus(&dir, size)
        };
        let config = example("wasm.yaml", &dir, &input, Some(&wasm));
        let child = start(&fb, &config);
        let (alerts, rest) = (dir.join("out/alerts.ndjson"), dir.join("out/rest.ndjson"));
        let within = Duration::from_secs(if size == 0 { 60 } else { 300 });
        assert_eq!(wait_for(&alerts, matches, within), matches, "{name}: alerts");
        assert_eq!(wait_for(&rest, total - matches, within), total - matches, "{name}: the rest");
        assert!(stop(child, Duration::from_secs(15)).success());
        assert_eq!(values(&alerts), cli_alerts(&input), "{name}: the CLI's alerts, exactly");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// kmsguard.wasm leaks nothing per call: from 100,000 to 500,000 records, Fluent Bit's peak
/// resident size grows no more with `kms_tag` than with the module's `identity` function (the
/// growth Fluent Bit has of its own), give or take 8 MiB (a leak of 32 bytes a call would show).
#[test]
fn wasm_filter_memory_is_flat() {
    let Some(fb) = fluent_bit("wasm_filter_memory_is_flat") else { return };
    let Some(wasm) = wasm_module("wasm_filter_memory_is_flat") else { return };
    let peak = |function: &str, records: usize| -> u64 {
        let dir = scratch(&format!("wasm-memory-{function}-{records}"));
        let input = dir.join("events.ndjson");
        let mut data = Vec::with_capacity(records * 90);
        for n in 0..records {
            let name = if n % 100 == 0 { "DisableKey" } else { "Decrypt" };
            writeln!(data, r#"{{"eventSource":"kms.amazonaws.com","eventName":"{name}","n":{n}}}"#)
                .unwrap();
        }
        std::fs::write(&input, data).unwrap();
        let config = example("wasm.yaml", &dir, &input, Some(&wasm));
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("function_name: kms_tag", &format!("function_name: {function}")),
        )
        .unwrap();
        let child = start(&fb, &config);
        let rest = dir.join("out/rest.ndjson");
        let want = if function == "identity" { records } else { records - records / 100 };
        assert_eq!(
            wait_for(&rest, want, Duration::from_secs(300)),
            want,
            "{function}, {records} records"
        );
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let hwm: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .unwrap();
        assert!(stop(child, Duration::from_secs(15)).success());
        std::fs::remove_dir_all(&dir).unwrap();
        hwm
    };
    let growth = |function| {
        let (small, large) = (peak(function, 100_000), peak(function, 500_000));
        eprintln!("Fluent Bit peak RSS with {function}: {small} KiB after 100,000 records, {large} KiB after 500,000");
        large as i64 - small as i64
    };
    let (ours, mechanism) = (growth("kms_tag"), growth("identity"));
    assert!(ours < mechanism + 8 * 1024, "kms_tag grows {ours} KiB, identity {mechanism} KiB");
}
