//! Conformance with public CloudTrail fixtures (`../shared/data`, see its README): Elastic's own
//! pipeline tests, AWS's documented examples and Panther's labelled tests.

use std::fs;

use serde_json::{json, Value};

use crate::util::{ndjson, shared_data, stdout_of};

/// Which lines kmsguard enriches, run once in tag mode over all `lines`.
fn verdicts(args: &[&str], lines: &[String]) -> Vec<bool> {
    assert!(lines.iter().all(|l| !l.contains('\n')));
    let input = lines.join("\n") + "\n";
    let mut tag_args = vec!["--mode", "tag"];
    tag_args.extend_from_slice(args);
    let out = String::from_utf8(stdout_of(&tag_args, input.as_bytes())).unwrap();
    let outs: Vec<&str> = out.lines().collect();
    assert_eq!(outs.len(), lines.len());
    lines.iter().zip(outs).map(|(i, o)| i != o).collect()
}

fn has_action(doc: &Value, action: &str) -> bool {
    doc.pointer("/event/action").and_then(Value::as_str) == Some(action)
}

#[test]
fn elastic_ecs_documents_match_only_with_the_dataset_declared() {
    let Some(dir) = shared_data("elastic_ecs_documents_match_only_with_the_dataset_declared")
    else {
        return;
    };
    let text = fs::read_to_string(dir.join("ecs-cloudtrail-expected.ndjson")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 13);
    assert!(
        verdicts(&[], &lines).iter().all(|m| !m),
        "no document carries a dataset, so none matches strictly"
    );
    let declared = verdicts(&["--assume-dataset", "aws.cloudtrail"], &lines);
    for (line, matched) in lines.iter().zip(&declared) {
        let doc: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let want = has_action(&doc, "DisableKey") || has_action(&doc, "ScheduleKeyDeletion");
        assert_eq!(*matched, want, "{}", &line[..line.len().min(200)]);
    }
    assert_eq!(declared.iter().filter(|m| **m).count(), 2);
}

#[test]
fn beats_documents_never_match() {
    let Some(dir) = shared_data("beats_documents_never_match") else { return };
    let text = fs::read_to_string(dir.join("ecs-cloudtrail-beats-expected.ndjson")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    assert!(verdicts(&[], &lines).iter().all(|m| !m));
    assert!(verdicts(&["--assume-dataset", "aws.cloudtrail"], &lines).iter().all(|m| !m));
}

/// Each labelled raw record, in every shape a pipeline carries it.
#[test]
fn labelled_raw_records_in_every_shape() {
    let Some(dir) = shared_data("labelled_raw_records_in_every_shape") else { return };
    let labelled = ndjson(&dir.join("raw-cloudtrail-kms-labeled.ndjson"));
    assert_eq!(labelled.len(), 15);
    let records: Vec<&Value> = labelled.iter().map(|l| &l["record"]).collect();
    let filler =
        json!({"eventSource":"s3.amazonaws.com","eventName":"GetObject","eventVersion":"1.08"});
    let mut lines = Vec::new();
    let mut want = Vec::new();
    for l in &labelled {
        let record = &l["record"];
        let label = l["expected_match"].as_bool().unwrap();
        let shapes = [
            record.clone(),
            json!({"version":"0","detail-type":"AWS API Call via CloudTrail","source":"aws.kms","detail":record}),
            json!({"Records":[record]}),
            json!({"Records":[filler, record, filler]}),
            json!({"data_stream":{"dataset":"aws.cloudtrail"},"message":record.to_string()}),
            json!({"event":{"dataset":"aws.cloudtrail"},"message":record.to_string(),"tags":["forwarded"]}),
        ];
        for shape in shapes {
            lines.push(shape.to_string());
            want.push(label);
        }
    }
    assert_eq!(verdicts(&[], &lines), want);
    assert_eq!(want.iter().filter(|w| **w).count(), 9 * 6);
    // The whole set as one CloudTrail log file matches, since some records do.
    assert_eq!(verdicts(&[], &[json!({"Records": records}).to_string()]), [true]);
}

/// A raw record gets the verdict of the ECS document Elastic's pipeline made of it.
#[test]
fn raw_records_agree_with_their_ecs_documents() {
    let Some(dir) = shared_data("raw_records_agree_with_their_ecs_documents") else { return };
    let pairs = ndjson(&dir.join("integrations-pairs.ndjson"));
    assert_eq!(pairs.len(), 101);
    let raws: Vec<String> = pairs.iter().map(|p| p["raw"].to_string()).collect();
    let ecs: Vec<String> = pairs.iter().map(|p| p["ecs"].to_string()).collect();
    let declared = ["--assume-dataset", "aws.cloudtrail"];
    let raw_verdicts = verdicts(&declared, &raws);
    assert_eq!(raw_verdicts, verdicts(&declared, &ecs));
    assert_eq!(raw_verdicts.iter().filter(|m| **m).count(), 2);
    // Without a declared dataset the raw shape still carries CloudTrail's by its shape.
    assert_eq!(verdicts(&[], &raws), raw_verdicts);
}

/// The same, straight from Elastic's fixture files: every line of each `*.log` against the
/// document of its `*-expected.json` whose `event.original` it is.
#[test]
fn integration_fixture_files_agree() {
    let Some(dir) = shared_data("integration_fixture_files_agree") else { return };
    let dir = dir.join("integrations-cloudtrail");
    let (mut raws, mut ecs) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let expected_path =
            dir.join(format!("{}-expected.json", path.file_name().unwrap().to_string_lossy()));
        let Ok(expected) = fs::read_to_string(&expected_path) else { continue };
        let expected: Value = serde_json::from_str(&expected).unwrap();
        let docs = expected["expected"].as_array().unwrap();
        for line in fs::read_to_string(&path).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let doc = docs
                .iter()
                .find(|d| d.pointer("/event/original").and_then(Value::as_str) == Some(line));
            if let Some(doc) = doc {
                raws.push(line.to_owned());
                ecs.push(doc.to_string());
            }
        }
    }
    assert!(raws.len() >= 90, "only {} raw lines paired with their ECS documents", raws.len());
    let declared = ["--assume-dataset", "aws.cloudtrail"];
    let raw_verdicts = verdicts(&declared, &raws);
    assert_eq!(raw_verdicts, verdicts(&declared, &ecs));
    assert_eq!(raw_verdicts.iter().filter(|m| **m).count(), 2);
}
