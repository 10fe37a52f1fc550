//! kmsguard in a live pipeline: stdin stays open, input arrives in bursts, and a match must not
//! wait in a buffer (Fluentd's exec_filter, Vector's and Fluent Bit's exec plumbing).

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MATCH: &str = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","eventTime":"2026-11-28T10:00:00Z"}"#;
const OTHER: &str = r#"{"eventSource":"kms.amazonaws.com","eventName":"Decrypt","eventTime":"2026-11-28T10:00:01Z"}"#;

/// Spawns kmsguard with `args` and a thread that forwards each stdout line to a channel.
fn spawn(args: &[&str]) -> (std::process::Child, std::process::ChildStdin, mpsc::Receiver<String>) {
    let mut child = crate::util::spawn(args);
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    (child, stdin, rx)
}

#[test]
fn a_match_comes_out_while_stdin_stays_open() {
    let (child, mut stdin, rx) = spawn(&[]);
    let start = Instant::now();
    writeln!(stdin, "{OTHER}\n{MATCH}").unwrap();
    stdin.flush().unwrap();
    let line = rx.recv_timeout(Duration::from_secs(1)).expect("no output within a second");
    assert!(line.contains(r#""eventName":"DisableKey""#) && line.contains(r#""rule":"#));
    assert!(start.elapsed() < Duration::from_secs(1));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "stderr stays quiet: {}", String::from_utf8_lossy(&out.stderr));
}

/// Drives kmsguard as Fluentd's `out_exec_filter` does: JSON records in one-second batches on a
/// pipe that stays open, reading results back as it goes, then EOF and exit 0.
#[test]
fn exec_filter_protocol_in_tag_mode() {
    let (child, mut stdin, rx) = spawn(&["--mode", "tag"]);
    for batch in 0..3 {
        let batch_start = Instant::now();
        let records = [OTHER, MATCH, OTHER];
        for record in records {
            writeln!(stdin, "{record}").unwrap();
        }
        stdin.flush().unwrap();
        let got: Vec<String> = (0..records.len())
            .map(|_| rx.recv_timeout(Duration::from_secs(1)).expect("batch answered"))
            .collect();
        assert_eq!(got[0], OTHER, "batch {batch}");
        assert!(
            got[1].starts_with(&MATCH[..MATCH.len() - 1])
                && got[1].contains("kms-cmk-disabled-or-scheduled-for-deletion")
        );
        assert_eq!(got[2], OTHER);
        std::thread::sleep(
            Duration::from_secs(1)
                .saturating_sub(batch_start.elapsed())
                .min(Duration::from_millis(300)),
        );
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(rx.try_recv().is_err(), "nothing beyond the records");
}

#[test]
fn closed_stdout_ends_the_run_quietly() {
    let mut input = String::new();
    for _ in 0..200_000 {
        input.push_str(MATCH);
        input.push('\n');
    }
    let mut child = crate::util::spawn(&[]);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout); // like `| head -1`
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(first.contains("DisableKey"));
    assert!(out.status.success(), "status {:?}", out.status);
    assert!(out.stderr.is_empty(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unreadable_inputs_are_reported_and_the_rest_still_run() {
    let dir = std::env::temp_dir().join(format!("kmsguard-unreadable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A gzip header and then garbage: a corrupt archive.
    let corrupt = dir.join("corrupt.json.gz");
    std::fs::write(&corrupt, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage, not deflate")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmsguard"))
        .arg(dir.join("kmsguard-no-such-file"))
        .arg(&corrupt)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cloudtrail-sample.ndjson"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 2, "one line per bad input: {err}");
    assert!(err.contains("No such file"), "{err}");
    assert!(
        err.contains("corrupt.json.gz: corrupt or truncated gzip data at compressed byte"),
        "{err}"
    );
    assert_eq!(
        out.stdout.iter().filter(|&&b| b == b'\n').count(),
        5,
        "the sample's matches still come out"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM and SIGINT: what was read is decided and flushed, `--stats` is printed, and the exit
/// status is 128 + the signal (143, 130), even though stdin is still open.
#[test]
fn signals_flush_report_and_exit_with_128_plus_the_signal() {
    for (signal, status) in [("-TERM", 143), ("-INT", 130)] {
        let (child, mut stdin, rx) = spawn(&["--stats"]);
        writeln!(stdin, "{OTHER}\n{MATCH}").unwrap();
        stdin.flush().unwrap();
        let line = rx.recv_timeout(Duration::from_secs(1)).expect("the match comes out first");
        assert!(line.contains("DisableKey"));
        let killed = Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(status), "{signal}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("2 lines") && err.contains("1 matches"), "{signal}: {err}");
        drop(stdin);
    }
}

/// The alert budget: the first N matches of a window are enriched; the rest pass unenriched
/// (tag) or are dropped (filter), are counted, and are announced once per window.
#[test]
fn alert_budget_caps_enriched_alerts_per_window() {
    let input = format!("{MATCH}\n{OTHER}\n{MATCH}\n{MATCH}\n{MATCH}\n");
    let out =
        crate::util::kmsguard(&["--mode", "tag", "--max-alerts", "2", "--stats"], input.as_bytes());
    assert!(out.status.success());
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].contains("\"rule\":") && lines[2].contains("\"rule\":"));
    assert_eq!(lines[1], OTHER);
    assert_eq!(&lines[3..], [MATCH, MATCH], "over the budget: unchanged");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("alert budget of")).collect();
    assert_eq!(warnings, ["kmsguard: alert budget of 2 per 600 s spent; further matches in this window pass unenriched"]);
    assert!(err.contains("2 matches") && err.contains("2 over the alert budget"), "{err}");
    let filtered = crate::util::kmsguard(&["--max-alerts", "1"], input.as_bytes());
    assert_eq!(filtered.stdout.iter().filter(|&&b| b == b'\n').count(), 1);
    assert!(String::from_utf8_lossy(&filtered.stderr).contains("are dropped"));
    // Off by default: every match is enriched.
    let all = crate::util::stdout_of(&[], input.as_bytes());
    assert_eq!(all.iter().filter(|&&b| b == b'\n').count(), 4);
}

/// A reader that stops reading: kmsguard blocks on its write, without spinning and without
/// buffering the rest of its input; when the reader comes back, everything arrives.
#[test]
fn blocked_stdout_neither_spins_nor_grows() {
    use std::io::Read;
    let line = format!("{OTHER}\n");
    let total = (64 << 20) / line.len() * line.len();
    let mut child = crate::util::spawn(&["--mode", "tag"]);
    let mut stdin = child.stdin.take().unwrap();
    let input = line.repeat(total / line.len());
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    // Fields 14 and 15 (after the parenthesised name): user and system time in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(ticks < 50, "{ticks} ticks of CPU while blocked: a busy loop?");
    assert!(rss_kib < 32 << 10, "{rss_kib} KiB resident while blocked");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out.len(), total, "every byte arrives once the reader is back");
}

/// Fluentd's exec_filter shuts a child down by closing its stdin and sending SIGTERM at once.
/// Everything written before the close still comes out: on a signal kmsguard first reads what
/// the pipe already holds. Exit status 143 says it was signalled.
#[test]
fn close_then_sigterm_loses_nothing_written() {
    for round in 0..3 {
        let mut child = crate::util::spawn(&["--mode", "tag"]);
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut BufReader::new(stdout), &mut out).unwrap();
            out
        });
        // kmsguard waits in read (its pipe buffer enlarged to 1 MiB); stopped there, it cannot
        // read what comes next, so the signal lands with all of it still in the pipe.
        std::thread::sleep(Duration::from_millis(300));
        let signal = |sig: &str| {
            Command::new("kill").arg(sig).arg(child.id().to_string()).status().unwrap();
        };
        signal("-STOP");
        let records = 20_000;
        let input: String =
            (0..records).map(|n| format!("{{\"eventName\":\"Decrypt\",\"n\":{n}}}\n")).collect();
        assert!(input.len() < 1 << 20, "the input fits in the pipe");
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        signal("-TERM");
        signal("-CONT");
        let status = child.wait().unwrap();
        let out = reader.join().unwrap();
        assert_eq!(out.len(), input.len(), "round {round}: every byte written comes out");
        assert_eq!(out, input.as_bytes());
        assert_eq!(status.code(), Some(143), "round {round}: {status}");
    }
}

/// Logstash's pipe output gives kmsguard a pipe it never reads, so the config sends kmsguard's
/// output to a file (`>> tagged.ndjson`, O_APPEND) that Logstash's file input tails. Each event
/// written into the open pipe reaches the file within a second, and a second kmsguard appends
/// after the first.
#[test]
fn output_to_an_appended_file_arrives_while_input_idles() {
    let path = std::env::temp_dir().join(format!("kmsguard-append-{}.ndjson", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    for run in 1..=2 {
        let file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kmsguard"))
            .args(["--mode", "tag", "--wrap-invalid"])
            .stdin(std::process::Stdio::piped())
            .stdout(file)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{OTHER}\n{MATCH}").unwrap();
        stdin.flush().unwrap();
        let start = Instant::now();
        let want = 2 * run;
        while std::fs::read_to_string(&path).unwrap().lines().count() < want {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "run {run}: not in the file within 1 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!((lines[0], lines[2]), (OTHER, OTHER), "each run appends after the last");
    assert!(lines[1].contains(r#""rule":{"#) && lines[3].contains(r#""rule":{"#));
    std::fs::remove_file(&path).unwrap();
}
