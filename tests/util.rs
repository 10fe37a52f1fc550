use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// Starts kmsguard with `args` and all three standard streams piped.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kmsguard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kmsguard")
}

/// Runs kmsguard with `args`, feeding `stdin` from a thread, and returns its output.
pub fn kmsguard(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn(args);
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // kmsguard may exit before reading everything (e.g. --on-invalid fail).
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for kmsguard");
    writer.join().unwrap();
    out
}

/// Runs kmsguard and returns stdout, asserting a zero exit status and a stderr that holds
/// nothing but end-of-run warnings (`kmsguard: warning: ...`).
pub fn stdout_of(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = kmsguard(args, stdin);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().all(|l| l.starts_with("kmsguard: warning: ")), "stderr: {stderr}");
    out.stdout
}

/// The shared CloudTrail fixtures, or `None` after saying loudly on stderr that the calling
/// test is skipped. Under CI (`CI` set) their absence is a failure.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KMSGUARD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: shared fixtures missing at {}",
        dir.display()
    );
    // Written to the real stderr, past the test harness's capture, so the skip is visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no shared CloudTrail fixtures at {} (set KMSGUARD_SHARED_DATA)",
        dir.display()
    );
    None
}

/// The JSON values of an NDJSON file's non-blank lines.
pub fn ndjson(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Parses a line strictly (no repeated keys) with the reference parser.
pub fn strict_json(line: &[u8]) -> kmsguard_reference::Json {
    kmsguard_reference::parse(line)
        .unwrap_or_else(|| panic!("not strict JSON: {}", String::from_utf8_lossy(line)))
}

/// An empty scratch directory for one test, `kmsguard-<name>-<pid>` under the system's temp
/// directory (what an earlier run left there is removed).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kmsguard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
