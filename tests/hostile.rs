//! Hostile input: every case states its exact output and exit status; the large cases also
//! bound peak memory (measured by `/usr/bin/time`, installed by `.ci/run`).

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::util::kmsguard;

const MATCH: &str = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;
const TAG: &str = "kms-cmk-disabled-or-scheduled-for-deletion";

/// Whether `line` is `doc` enriched (starts with the document's members, carries the tag).
fn is_enriched(line: &[u8], doc: &[u8]) -> bool {
    let body = &doc[..doc.len() - 1];
    line.starts_with(body) && line.windows(TAG.len()).any(|w| w == TAG.as_bytes())
}

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    input: Vec<u8>,
    /// `None`: the output is the input, byte for byte.
    output: Option<Vec<u8>>,
    status: i32,
}

fn case(
    name: &'static str,
    args: &'static [&'static str],
    input: impl Into<Vec<u8>>,
    output: Option<&[u8]>,
    status: i32,
) -> Case {
    Case { name, args, input: input.into(), output: output.map(<[u8]>::to_vec), status }
}

/// A valid document that must be rejected, with the rule's values all in place.
fn with_match_fields(extra: &str) -> Vec<u8> {
    format!(r#"{{"eventSource":"kms.amazonaws.com","eventName":"DisableKey",{extra}}}"#)
        .into_bytes()
}

#[test]
fn table() {
    let deep = format!(r#""x":{}{}"#, "[".repeat(100_000), "]".repeat(100_000));
    let cases = vec![
        case("empty input, filter", &[], "", Some(b""), 0),
        case("empty input, tag", &["--mode", "tag"], "", None, 0),
        case("only newlines, filter", &[], "\n\n\n", Some(b""), 0),
        case("only newlines, tag", &["--mode", "tag"], "\n\n\n", None, 0),
        case(
            "NUL bytes pass through",
            &["--mode", "tag"],
            b"\0\0\n{\"a\":\"\0\"}\n\0".to_vec(),
            None,
            0,
        ),
        case(
            "invalid UTF-8 in a string",
            &["--mode", "tag"],
            [&with_match_fields(r#""x":""#)[..], b"\xff\"}\n"].concat(),
            None,
            0,
        ),
        case(
            "invalid UTF-8 in a string, filter",
            &[],
            [&with_match_fields(r#""x":""#)[..], b"\xff\"}\n"].concat(),
            Some(b""),
            0,
        ),
        case(
            "invalid UTF-8 outside strings",
            &["--mode", "tag"],
            [MATCH.as_bytes(), b"\xc3\n"].concat(),
            None,
            0,
        ),
        case(
            "truncated object",
            &["--mode", "tag"],
            format!("{}\n", &MATCH[..MATCH.len() - 1]),
            None,
            0,
        ),
        case("two objects on a line", &["--mode", "tag"], format!("{MATCH}{MATCH}\n"), None, 0),
        case(
            "nesting 100,000 deep is invalid, no stack overflow",
            &["--mode", "tag"],
            [with_match_fields(&deep), b"\n".to_vec()].concat(),
            None,
            0,
        ),
        case(
            "oversized line, filter fail",
            &["--max-line-bytes", "40", "--on-invalid", "fail"],
            format!("{MATCH}\n"),
            Some(b""),
            1,
        ),
        case(
            "invalid line, filter fail",
            &["--on-invalid", "fail"],
            format!("{MATCH}\n{{\n"),
            None,
            1,
        ),
    ];
    for c in cases {
        let out = kmsguard(c.args, &c.input);
        assert_eq!(
            out.status.code(),
            Some(c.status),
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let want = c.output.unwrap_or_else(|| c.input.clone());
        if c.status == 1 && c.name.starts_with("invalid line") {
            // What was decided before the invalid line is written; the rest is not.
            assert!(is_enriched(&out.stdout, MATCH.as_bytes()), "{}", c.name);
            assert_eq!(
                String::from_utf8_lossy(&out.stderr).trim(),
                "kmsguard: -: line 2 is not a valid JSON object (--on-invalid fail)"
            );
            continue;
        }
        assert_eq!(out.stdout, want, "{}", c.name);
        if c.status == 0 {
            // Nothing but end-of-run warnings (a NUL byte looks binary, an invalid line).
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.lines().all(|l| l.starts_with("kmsguard: warning: ")), "{}: {err}", c.name);
        }
    }
}

#[test]
fn odd_but_valid_documents_still_match() {
    let cases = [
        ("a 10,000-digit number", with_match_fields(&format!(r#""n":{}"#, "7".repeat(10_000)))),
        ("a number out of f64 range", with_match_fields(r#""n":-1e400"#)),
        ("a lone surrogate", with_match_fields(r#""s":"\ud800""#)),
        ("an escaped dot in a key", br#"{"event.dataset":"aws.cloudtrail","event\u002eprovider":"kms.amazonaws.com","event":{"action":"DisableKey"},"event\u002Eoutcome":"success"}"#.to_vec()),
        ("CRLF", [MATCH.as_bytes(), b"\r"].concat()),
    ];
    for (name, doc) in cases {
        let out = kmsguard(&[], &[&doc[..], b"\n"].concat());
        assert!(out.status.success(), "{name}");
        let body = doc.strip_suffix(b"\r").unwrap_or(&doc);
        assert!(is_enriched(&out.stdout, body), "{name}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn byte_order_mark_at_the_start() {
    let input = format!("\u{feff}{MATCH}\n");
    let tagged = kmsguard(&["--mode", "tag"], input.as_bytes()).stdout;
    assert!(
        tagged.starts_with("\u{feff}".as_bytes()) && is_enriched(&tagged[3..], MATCH.as_bytes())
    );
    let filtered = kmsguard(&[], input.as_bytes()).stdout;
    assert!(is_enriched(&filtered, MATCH.as_bytes()), "the BOM is not part of the document");
}

#[test]
fn lines_over_the_limit_are_passed_or_dropped_whole() {
    let long = with_match_fields(&format!(r#""pad":"{}""#, "x".repeat(500)));
    let input = [&long[..], b"\n", MATCH.as_bytes(), b"\n"].concat();
    let args = ["--max-line-bytes", "200", "--mode", "tag", "--stats"];
    let out = kmsguard(&args, &input);
    assert!(out.status.success());
    assert!(
        out.stdout.starts_with(&[&long[..], b"\n"].concat()),
        "the long line comes out unchanged"
    );
    assert!(is_enriched(&out.stdout[long.len() + 1..], MATCH.as_bytes()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 oversized"));
    let filtered = kmsguard(&["--max-line-bytes", "200"], &input).stdout;
    assert!(
        is_enriched(&filtered, MATCH.as_bytes())
            && filtered.iter().filter(|&&b| b == b'\n').count() == 1
    );
}

/// `--max-line-bytes` counts a line without its `\n` or `\r\n` (RULE.md section 3: the same
/// document), read from a pipe as from a file.
#[test]
fn the_line_limit_leaves_out_the_line_end() {
    let limit = MATCH.len().to_string();
    let under = (MATCH.len() - 1).to_string();
    let dir = crate::util::scratch_dir("limit");
    for end in ["\n", "\r\n"] {
        let input = format!("{MATCH}{end}");
        let file = dir.join("line.ndjson");
        std::fs::write(&file, &input).unwrap();
        let file = file.to_str().unwrap();
        for (max, want) in [(&limit, "1\n"), (&under, "0\n")] {
            let piped = kmsguard(&["-c", "--max-line-bytes", max], input.as_bytes());
            let mapped = kmsguard(&["-c", "--max-line-bytes", max, file], b"");
            for out in [piped, mapped] {
                assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{end:?} at {max}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A full disk is one line on stderr naming the error once, and status 2.
#[test]
fn a_failed_write_is_reported_once() {
    let Ok(full) = std::fs::File::options().write(true).open("/dev/full") else {
        eprintln!("no /dev/full here: not checked");
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsguard"))
        .stdin(Stdio::piped())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("{MATCH}\n").repeat(1000);
    // kmsguard may stop reading at the failed write.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("os error 28").count(), 1, "{stderr}");
}

/// Runs kmsguard under `/usr/bin/time`, streaming `produce`'s input, and returns
/// (peak RSS in MiB, stdout length, a checksum of stdout, exit status). `None` (after saying
/// so) when `/usr/bin/time` is missing outside CI.
fn measured(
    args: &[&str],
    produce: impl FnOnce(&mut dyn Write) + Send + 'static,
) -> Option<(f64, usize, u64, i32)> {
    if !std::path::Path::new("/usr/bin/time").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/time is missing (apt-get install time)"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED memory measurement: /usr/bin/time is missing");
        return None;
    }
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg(env!("CARGO_BIN_EXE_kmsguard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || produce(&mut stdin));
    let mut stdout = child.stdout.take().unwrap();
    let (mut len, mut sum, mut buf) = (0usize, 0u64, vec![0u8; 1 << 16]);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        len += n;
        sum = buf[..n].iter().fold(sum, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    }
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let kib: f64 = err.lines().last().unwrap().trim().parse().unwrap();
    Some((kib / 1024.0, len, sum, out.status.code().unwrap_or(-1)))
}

fn checksum(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

#[test]
fn a_200_mb_line_streams_through_in_bounded_memory() {
    let head = br#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","pad":""#;
    let pad = vec![b'x'; 200 << 20];
    let tail = b"\"}\n";
    let want = checksum(&[head, &pad, tail]);
    let produce = move |w: &mut dyn Write| {
        w.write_all(head).unwrap();
        w.write_all(&vec![b'x'; 200 << 20]).unwrap();
        w.write_all(tail).unwrap();
    };
    // Over the default limit (100 MiB): passed through unchanged, memory bounded by the limit.
    let Some((mib, len, sum, status)) = measured(&["--mode", "tag"], produce) else { return };
    assert_eq!((status, len, sum), (0, head.len() + pad.len() + tail.len(), want));
    assert!(mib < 160.0, "peak {mib:.1} MiB with the default 100 MiB line limit");
    let _ = writeln!(std::io::stderr(), "200 MB line: peak RSS {mib:.1} MiB at the default limit");
    // With a small limit the same line costs almost nothing.
    let Some((mib, len, _, status)) = measured(&["--max-line-bytes", "1048576"], move |w| {
        w.write_all(head).unwrap();
        w.write_all(&vec![b'x'; 200 << 20]).unwrap();
        w.write_all(tail).unwrap();
    }) else {
        return;
    };
    assert_eq!((status, len), (0, 0), "filter mode drops the oversized line");
    assert!(mib < 24.0, "peak {mib:.1} MiB with a 1 MiB line limit");
    let _ =
        writeln!(std::io::stderr(), "200 MB line: peak RSS {mib:.1} MiB at --max-line-bytes 1 MiB");
}

#[test]
fn a_gibibyte_of_tiny_lines_in_constant_memory() {
    let line = b"{\"a\":1}\n";
    let produce = move |w: &mut dyn Write| {
        let block = line.repeat((1 << 20) / line.len());
        for _ in 0..1024 {
            w.write_all(&block).unwrap();
        }
    };
    let Some((mib, len, _, status)) = measured(&[], produce) else { return };
    assert_eq!((status, len), (0, 0));
    assert!(mib < 64.0, "peak {mib:.1} MiB on 1 GiB of tiny lines");
    let _ = writeln!(std::io::stderr(), "1 GiB of tiny lines: peak RSS {mib:.1} MiB");
}

#[test]
fn a_50_mb_records_file() {
    let filler = r#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject","requestParameters":{"bucketName":"logs","key":"a/b/c.gz"},"eventVersion":"1.08"}"#;
    let count = (50 << 20) / (filler.len() + 1);
    let build = move || {
        let mut line = String::from(r#"{"Records":["#);
        for i in 0..count {
            line.push_str(if i == count / 2 { MATCH } else { filler });
            line.push(',');
        }
        line.push_str(filler);
        line.push_str("]}\n");
        line
    };
    let input = build();
    let Some((mib, len, _, status)) =
        measured(&[], move |w| w.write_all(input.as_bytes()).unwrap())
    else {
        return;
    };
    assert_eq!(status, 0);
    assert!(len > 50 << 20, "the whole file comes out, enriched");
    assert!(mib < 512.0, "peak {mib:.1} MiB on a 50 MB Records file");
    let _ = writeln!(std::io::stderr(), "50 MB Records file: peak RSS {mib:.1} MiB");
    let split = build();
    let Some((_, len, _, status)) =
        measured(&["--split-records"], move |w| w.write_all(split.as_bytes()).unwrap())
    else {
        return;
    };
    assert_eq!(status, 0);
    assert!(len < 4096, "with --split-records only the matching record comes out ({len} bytes)");
}
