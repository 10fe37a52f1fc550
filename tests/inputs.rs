//! The inputs users actually hold (issue "Inputs users actually hold"): CloudTrail's gzipped S3
//! objects, directories of them, pretty-printed records, `lookup-events` output, Vector `aws_s3`
//! events, ECS documents without a dataset. Each is built from the same labelled public records
//! (`../shared/data/raw-cloudtrail-kms-labeled.ndjson`) and must give exactly their labels, or a
//! warning that names the fix.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::util::{kmsguard, scratch_dir, shared_data, stdout_of};

/// The labelled records: (record, expected match).
fn labelled(test: &str) -> Option<Vec<(Value, bool)>> {
    let dir = shared_data(test)?;
    let text = std::fs::read_to_string(dir.join("raw-cloudtrail-kms-labeled.ndjson")).unwrap();
    let out: Vec<(Value, bool)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| (l["record"].clone(), l["expected_match"].as_bool().unwrap()))
        .collect();
    assert_eq!(out.len(), 15);
    assert_eq!(out.iter().filter(|(_, m)| *m).count(), 9);
    Some(out)
}

/// A CloudTrail log file holding one record, as CloudTrail writes it to S3.
fn log_file(record: &Value) -> Value {
    json!({ "Records": [record] })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The `eventID`s of the events in kmsguard's output, one per line, wherever the record sits
/// (at the top level, in `Records`, or as a string in `message` / `CloudTrailEvent`).
fn event_ids(out: &[u8]) -> Vec<String> {
    fn ids(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(id)) = m.get("eventID") {
                    out.push(id.clone());
                }
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("message" | "CloudTrailEvent", Value::String(s)) => {
                            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                                ids(&inner, out);
                            }
                        }
                        _ => ids(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| ids(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(out).lines() {
        ids(&serde_json::from_str(line).expect("kmsguard writes JSON lines"), &mut found);
    }
    found
}

fn expected_ids(records: &[(Value, bool)]) -> Vec<String> {
    records.iter().filter(|(_, m)| *m).map(|(r, _)| r["eventID"].as_str().unwrap().into()).collect()
}

/// Row 1: CloudTrail's S3 objects, gzipped, in a tree with plain and zstd files beside them:
/// `kmsguard DIR` finds exactly the labelled matches, in path order, the same with `-j 2`.
#[test]
fn a_tree_of_gzipped_log_files() {
    let Some(records) = labelled("a_tree_of_gzipped_log_files") else { return };
    let dir = scratch_dir("tree");
    for (n, (record, _)) in records.iter().enumerate() {
        let text = log_file(record).to_string();
        let sub = dir.join(format!("AWSLogs/123/CloudTrail/us-east-1/2024/09/{:02}", n % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let name = format!("{n:02}");
        match n % 3 {
            0 => std::fs::write(sub.join(name + ".json.gz"), gzip(text.as_bytes())).unwrap(),
            1 => std::fs::write(sub.join(name + ".json"), &text).unwrap(),
            _ => std::fs::write(
                sub.join(name + ".json.zst"),
                zstd::encode_all(text.as_bytes(), 3).unwrap(),
            )
            .unwrap(),
        }
    }
    let dir_arg = dir.to_str().unwrap();
    let one = stdout_of(&["--split-records", dir_arg], b"");
    let mut want = Vec::new();
    // Path order: the day folders first, then the files in each.
    for day in 0..3 {
        for (n, (record, matched)) in records.iter().enumerate() {
            if n % 3 == day && *matched {
                want.push(record["eventID"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(event_ids(&one), want);
    let two = stdout_of(&["--split-records", "-j", "2", dir_arg], b"");
    assert_eq!(two, one, "-j 2 writes what -j 1 writes");
    // Counts per file, only files with matches, as rg -c.
    let counts = String::from_utf8(stdout_of(&["-c", "-j", "2", dir_arg], b"")).unwrap();
    assert_eq!(counts.lines().count(), 9, "{counts}");
    assert!(counts.lines().all(|l| l.ends_with(":1")), "{counts}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// gzip from standard input, and concatenated members (`cat a.gz b.gz`).
#[test]
fn gzip_on_standard_input_and_in_several_members() {
    let Some(records) = labelled("gzip_on_standard_input_and_in_several_members") else { return };
    let members: Vec<u8> =
        records.iter().flat_map(|(r, _)| gzip(format!("{}\n", log_file(r)).as_bytes())).collect();
    let out = stdout_of(&["--split-records"], &members);
    assert_eq!(event_ids(&out), expected_ids(&records));
}

/// Row 2: pretty-printed records and log files (as AWS's documentation and `aws cloudtrail
/// get-...` show them) need `--json-stream`; without it, a warning names the option.
#[test]
fn pretty_printed_json() {
    let Some(records) = labelled("pretty_printed_json") else { return };
    let mut pretty = String::new();
    for (n, (record, _)) in records.iter().enumerate() {
        let doc = if n % 2 == 0 { record.clone() } else { log_file(record) };
        pretty += &serde_json::to_string_pretty(&doc).unwrap();
        pretty += "\n";
    }
    let out = stdout_of(&["--json-stream", "--split-records"], pretty.as_bytes());
    assert_eq!(event_ids(&out), expected_ids(&records));
    // Tag mode gives back every byte but the enrichment.
    let tagged = stdout_of(&["--json-stream", "--mode", "tag"], pretty.as_bytes());
    let tagged = String::from_utf8(tagged).unwrap();
    assert_eq!(tagged.lines().count(), pretty.lines().count());
    // As lines, nothing matches, and the user is told why.
    let lines = kmsguard(&[], pretty.as_bytes());
    assert!(lines.stdout.is_empty());
    let err = String::from_utf8_lossy(&lines.stderr);
    assert!(err.contains("span lines") && err.contains("--json-stream"), "{err}");
}

/// Row 3: `aws cloudtrail lookup-events` output, each record a string in `CloudTrailEvent`, on
/// one line or as the CLI prints it.
#[test]
fn lookup_events_output() {
    let Some(records) = labelled("lookup_events_output") else { return };
    let events: Vec<Value> = records
        .iter()
        .map(|(r, _)| {
            json!({
                "EventId": r["eventID"],
                "EventName": r["eventName"],
                "ReadOnly": "false",
                "EventSource": r["eventSource"],
                "CloudTrailEvent": r.to_string(),
            })
        })
        .collect();
    // One response per record: each line's verdict is its record's label.
    let lines: String =
        events.iter().map(|e| json!({ "Events": [e] }).to_string() + "\n").collect();
    assert_eq!(event_ids(&stdout_of(&[], lines.as_bytes())), expected_ids(&records));
    // One response holding them all, pretty-printed, split into its elements.
    let all = serde_json::to_string_pretty(&json!({ "Events": events })).unwrap();
    let out = stdout_of(&["--json-stream", "--split-records"], all.as_bytes());
    assert_eq!(event_ids(&out), expected_ids(&records));
    let whole = stdout_of(&["--json-stream"], all.as_bytes());
    assert_eq!(whole.iter().filter(|&&b| b == b'\n').count(), 1, "the response matches whole");
}

/// Row 4: Vector's `aws_s3` source: each line of an S3 object in `message`, no dataset; the
/// line is a whole log file (as CloudTrail writes them) or a record.
#[test]
fn vector_aws_s3_events() {
    let Some(records) = labelled("vector_aws_s3_events") else { return };
    let mut lines = String::new();
    for (n, (record, _)) in records.iter().enumerate() {
        let message = if n % 2 == 0 { log_file(record) } else { record.clone() };
        let event = json!({
            "bucket": "trail-bucket",
            "message": message.to_string(),
            "object": format!("AWSLogs/123/CloudTrail/us-east-1/2024/09/11/{n}.json.gz"),
            "region": "us-east-1",
            "source_type": "aws_s3",
            "timestamp": "2024-09-11T09:30:00Z",
        });
        lines += &(event.to_string() + "\n");
    }
    let out = stdout_of(&[], lines.as_bytes());
    assert_eq!(event_ids(&out), expected_ids(&records));
    for line in String::from_utf8(out).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["bucket"], "trail-bucket", "the envelope is kept and enriched");
        assert!(v["rule"]["id"].is_string());
    }
    // Split: one envelope per record, bucket and object kept.
    let split = stdout_of(&["--split-records"], lines.as_bytes());
    assert_eq!(event_ids(&split), expected_ids(&records));
}

/// Row 5: ECS documents without a dataset (Elastic's own pipeline output): no match, and a
/// warning that names --assume-dataset; with it, the matches and no warning.
#[test]
fn ecs_without_a_dataset_names_the_option() {
    let Some(dir) = shared_data("ecs_without_a_dataset_names_the_option") else { return };
    let input = std::fs::read(dir.join("ecs-cloudtrail-expected.ndjson")).unwrap();
    let strict = kmsguard(&[], &input);
    assert!(strict.stdout.is_empty());
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("2 ECS documents satisfy every clause but the dataset"), "{err}");
    assert!(err.contains("--assume-dataset aws.cloudtrail"), "{err}");
    let declared = kmsguard(&["--assume-dataset", "aws.cloudtrail"], &input);
    assert_eq!(declared.stdout.iter().filter(|&&b| b == b'\n').count(), 2);
    assert!(declared.stderr.is_empty(), "{}", String::from_utf8_lossy(&declared.stderr));
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path.to_str().unwrap().to_string()
}

const MATCH: &str = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;

/// A truncated and a corrupt archive: one line each, naming the file and the compressed offset;
/// the other inputs still run; exit status 2. Tag mode keeps what was decoded before the fault.
#[test]
fn corrupt_archives_are_named_and_the_rest_still_runs() {
    let dir = scratch_dir("corrupt");
    let whole = gzip(format!("{MATCH}\n").repeat(2000).as_bytes());
    let truncated = write(&dir, "truncated.json.gz", &whole[..whole.len() / 2]);
    let mut bad = whole.clone();
    bad[30..60].fill(0x55);
    let corrupt = write(&dir, "corrupt.json.gz", &bad);
    let good = write(&dir, "good.json.gz", &gzip(format!("{MATCH}\n").as_bytes()));
    for jobs in ["1", "2"] {
        let out = kmsguard(&["-j", jobs, &truncated, &corrupt, &good], b"");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].starts_with(&format!(
                "kmsguard: {truncated}: corrupt or truncated gzip data at compressed byte "
            )),
            "{err}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "kmsguard: {corrupt}: corrupt or truncated gzip data at compressed byte "
            )),
            "{err}"
        );
        let matches = out.stdout.iter().filter(|&&b| b == b'\n').count();
        assert!(matches > 1, "the good file and what the truncated one held before its end");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each end-of-run warning appears when its condition holds, and not otherwise; --no-warn
/// silences it.
#[test]
fn warnings_appear_when_they_should() {
    let dir = scratch_dir("warnings");
    let clean =
        format!("{MATCH}\n{{\"eventSource\":\"s3.amazonaws.com\",\"eventName\":\"GetObject\"}}\n");
    let cases: Vec<(&str, Vec<String>, Vec<u8>, &str)> = vec![
        ("invalid", vec![], format!("{MATCH}\n{{\"eventName\":\"DisableKey\",\n").into_bytes(), "1 parsed line is not a valid JSON document"),
        ("dataset", vec![], br#"{"event.provider":"kms.amazonaws.com","event.action":"DisableKey","event.outcome":"success"}"#.to_vec(), "satisfies every clause but the dataset"),
        ("undecoded", vec![write(&dir, "x.json.bz2", b"BZh91AY&SY")], Vec::new(), "looks bzip2"),
        ("spanning", vec![], b"{\n\"eventName\": \"GetObject\"\n}\n".to_vec(), "--json-stream"),
        ("assume-dataset", vec!["--assume-dataset".into(), "aws.cloudtrai".into()], clean.clone().into_bytes(), "--assume-dataset aws.cloudtrai"),
    ];
    for (kind, args, input, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kmsguard(&args, input);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().any(|l| l.starts_with("kmsguard: warning: ") && l.contains(says)),
            "{kind}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{kind}: one warning, no other: {err}");
        let silenced = [&args[..], &["--no-warn", kind]].concat();
        let quiet = kmsguard(&silenced, input);
        assert!(quiet.stderr.is_empty(), "{kind}: {}", String::from_utf8_lossy(&quiet.stderr));
    }
    let plain = kmsguard(&[], clean.as_bytes());
    assert!(plain.stderr.is_empty(), "no warning without a reason");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// -q: grep's exit status; -c: counts; --stats-format json: one JSON object on stderr; --explain:
/// one line per candidate that does not match.
#[test]
fn hunting_options() {
    let other = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":"AccessDenied"}"#;
    let input = format!("{MATCH}\n{other}\n{MATCH}\n");
    assert_eq!(kmsguard(&["-q"], input.as_bytes()).status.code(), Some(0));
    assert_eq!(kmsguard(&["-q"], format!("{other}\n").as_bytes()).status.code(), Some(1));
    assert_eq!(kmsguard(&["-q", "/nonexistent"], b"").status.code(), Some(2));
    assert!(kmsguard(&["-q"], input.as_bytes()).stdout.is_empty());
    assert_eq!(stdout_of(&["-c"], input.as_bytes()), b"2\n");
    let out = kmsguard(&["--stats-format", "json"], input.as_bytes());
    let stats: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!((stats["matches"].as_u64(), stats["lines"].as_u64()), (Some(2), Some(3)));
    assert_eq!(stats["shapes"]["raw"]["parsed"], 3);
    let explained = kmsguard(&["--explain"], input.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&explained.stderr).trim(),
        "kmsguard: -:2: raw: the record has errorCode, so event.outcome is failure"
    );
}
