//! The output contract (spec section 5) on a file of mixed lines: every shape, matches and
//! near misses, invalid and blank lines, CRLF, a final line without `\n`.

use kmsguard_reference::{evaluate, gen, Config, Json};

use crate::util::{kmsguard, stdout_of, strict_json};

/// A few hundred generated lines of every kind, joined with `\n` (some `\r\n`), the last line
/// without a terminator.
fn mixed() -> Vec<u8> {
    let mut out = Vec::new();
    for seed in 0..600u32 {
        let choices: Vec<u8> = (0..400u32)
            .map(|i| {
                (seed.wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503)).rotate_left(i % 17)
                    as u8
            })
            .collect();
        let mut line = gen::document(&choices);
        line.retain(|&b| b != b'\n');
        out.extend_from_slice(&line);
        out.extend_from_slice(match seed % 50 {
            0 => b"\r\n",
            1 => b"\n\n",
            _ => b"\n",
        });
    }
    out.extend_from_slice(br#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#);
    out
}

fn lines(data: &[u8]) -> Vec<&[u8]> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|&b| b == b'\n').collect()
}

/// `enriched` is `original` plus the enrichment: every original member kept with its value
/// (`tags` extended), `rule` and `threat` added, no key repeated.
fn assert_enriched_from(original: &[u8], enriched: &[u8]) {
    let before = strict_json(original);
    let after = strict_json(enriched.strip_suffix(b"\r").unwrap_or(enriched));
    let (Json::Object(old), Json::Object(new)) = (&before, &after) else { panic!("not objects") };
    for (key, value) in old {
        let kept = new.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if key.is("tags") {
            let Some(Json::Array(tags)) = kept else { panic!("tags not an array: {kept:?}") };
            assert!(
                tags.contains(&Json::String("kms-cmk-disabled-or-scheduled-for-deletion".into()))
            );
            if let Json::Array(old_tags) = value {
                assert_eq!(&tags[..old_tags.len()], &old_tags[..]);
            }
        } else {
            assert_eq!(kept, Some(value), "member {key:?} changed");
        }
    }
    for added in ["rule", "threat"] {
        let found = after.get(added).or_else(|| after.get("kmsguard").and_then(|k| k.get(added)));
        assert!(found.is_some() || before.get("kmsguard").is_some(), "{added} missing");
    }
}

#[test]
fn tag_mode_keeps_every_line_and_enriches_exactly_the_matches() {
    let input = mixed();
    let output = stdout_of(&["--mode", "tag"], &input);
    let (ins, outs) = (lines(&input), lines(&output));
    assert_eq!(ins.len(), outs.len());
    let config = Config::default();
    let mut matches = 0;
    for (i, o) in ins.iter().zip(&outs) {
        let line = i.strip_suffix(b"\r").unwrap_or(i);
        if evaluate(&config, line).is_match() {
            matches += 1;
            assert_enriched_from(i, o);
            assert_eq!(i.ends_with(b"\r"), o.ends_with(b"\r"));
        } else {
            assert_eq!(i, o, "changed: {}", String::from_utf8_lossy(i));
        }
    }
    assert!(matches > 20, "the mixed file should hold matches of several shapes, has {matches}");
    assert_eq!(output.last(), input.last(), "no newline is added to a final line without one");
}

#[test]
fn filter_mode_is_tag_mode_without_the_rest() {
    let input = mixed();
    let tagged = stdout_of(&["--mode", "tag"], &input);
    let filtered = stdout_of(&[], &input);
    let config = Config::default();
    let want: Vec<Vec<u8>> = lines(&input)
        .iter()
        .zip(lines(&tagged))
        .filter(|(i, _)| evaluate(&config, i.strip_suffix(b"\r").unwrap_or(i)).is_match())
        .map(|(_, o)| {
            // Filter mode writes the document alone: no line-leading byte order mark, no `\r`.
            let o = o.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(o);
            o.strip_suffix(b"\r").unwrap_or(o).to_vec()
        })
        .collect();
    let got: Vec<Vec<u8>> = lines(&filtered).into_iter().map(<[u8]>::to_vec).collect();
    assert_eq!(got, want);
    assert!(filtered.ends_with(b"\n"));
}

#[test]
fn output_does_not_depend_on_how_input_arrives() {
    use std::io::Write;
    let input = mixed();
    for mode in ["filter", "tag"] {
        let once = stdout_of(&["--mode", mode], &input);
        let mut child = crate::util::spawn(&["--mode", mode]);
        let mut pipe = child.stdin.take().unwrap();
        let data = input.clone();
        let writer = std::thread::spawn(move || {
            let mut pos = 0;
            let mut size = 1;
            while pos < data.len() {
                let end = (pos + size).min(data.len());
                pipe.write_all(&data[pos..end]).unwrap();
                pipe.flush().unwrap();
                pos = end;
                size = size * 7 % 4093 + 1;
            }
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert_eq!(out.stdout, once, "mode {mode}");
    }
}

#[test]
fn split_records_emits_each_record() {
    let input = concat!(
        r#"{"Records":[{"eventSource":"s3.amazonaws.com","eventName":"GetObject"},{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}]}"#,
        "\n",
        r#"{"Records":[{"eventSource":"s3.amazonaws.com","eventName":"PutObject"}]}"#,
        "\n",
        r#"{"other":1}"#,
        "\n",
    );
    let tagged = stdout_of(&["--mode", "tag", "--split-records"], input.as_bytes());
    let out = lines(&tagged);
    assert_eq!(out.len(), 4);
    assert_eq!(out[0], br#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject"}"#);
    assert_enriched_from(
        br#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#,
        out[1],
    );
    assert_eq!(out[2], br#"{"eventSource":"s3.amazonaws.com","eventName":"PutObject"}"#);
    assert_eq!(out[3], br#"{"other":1}"#);
    let filtered = stdout_of(&["--split-records"], input.as_bytes());
    assert_eq!(lines(&filtered).len(), 1);
    let whole = stdout_of(&[], input.as_bytes());
    assert_eq!(lines(&whole).len(), 1);
    assert!(
        whole.starts_with(br#"{"Records":["#),
        "without the option a Records file stays one event"
    );
}

#[test]
fn invalid_line_policies_in_filter_mode() {
    let input = b"{\"a\":1}\nnot json\n{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}\n";
    assert_eq!(lines(&stdout_of(&[], input)).len(), 1);
    let passed = stdout_of(&["--on-invalid", "pass"], input);
    assert_eq!(lines(&passed)[0], b"not json");
    assert_eq!(lines(&passed).len(), 2);
    let failed = kmsguard(&["--on-invalid", "fail"], input);
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&failed.stderr).trim(),
        "kmsguard: -: line 2 is not a valid JSON object (--on-invalid fail)"
    );
    assert!(failed.stdout.is_empty());
}

#[test]
fn stats_go_to_stderr_only_when_asked() {
    let input = mixed();
    let out = kmsguard(&["--stats"], &input);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{} lines", lines(&input).len())), "{err}");
    assert!(err.contains(&format!("{} bytes", input.len())), "{err}");
    assert!(err.contains("shapes (parsed/matched): records"), "{err}");
    assert!(err.contains("MB/s"), "{err}");
}

/// `--threads` on a mapped file: the same bytes out, in the same order, and the same counts, as
/// one thread; a file of several chunks per thread, with adversarial lines at the end.
#[test]
fn threads_keep_output_and_counts() {
    let mut gen = kmsguard_corpus::Generator::new(kmsguard_corpus::Profile::KMS_HEAVY, 9);
    let mut data = Vec::new();
    gen.fill(&mut data, 20 << 20);
    data.extend_from_slice(&mixed());
    let path = std::env::temp_dir().join(format!("kmsguard-threads-{}.ndjson", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let file = path.to_str().unwrap();
    for mode in ["filter", "tag"] {
        let one = kmsguard(&["--mode", mode, "--stats", file], b"");
        assert!(one.status.success());
        for threads in ["2", "3"] {
            let many = kmsguard(&["--mode", mode, "--stats", "--threads", threads, file], b"");
            assert!(many.stdout == one.stdout, "mode {mode}, {threads} threads: output differs");
            let counts =
                |err: &[u8]| String::from_utf8_lossy(err).lines().next().unwrap().to_owned();
            assert_eq!(counts(&many.stderr), counts(&one.stderr), "mode {mode}, {threads} threads");
        }
    }
    std::fs::remove_file(&path).unwrap();
}

/// Spec section 5: every input's last line is a line. When one input ends without `\n`, the next
/// input's first line starts on a line of its own, on every read path and in both modes.
#[test]
fn lines_of_consecutive_inputs_never_merge() {
    let dir = std::env::temp_dir().join(format!("kmsguard-boundary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unterminated = br#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject"}"#;
    let alert = br#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;
    let a = dir.join("a.ndjson");
    let b = dir.join("b.ndjson");
    let empty = dir.join("empty.ndjson");
    std::fs::write(&a, unterminated).unwrap();
    std::fs::write(&b, [&alert[..], b"\n"].concat()).unwrap();
    std::fs::write(&empty, b"").unwrap();
    let (a, b, empty) = (a.to_str().unwrap(), b.to_str().unwrap(), empty.to_str().unwrap());
    for read in [&[][..], &["--no-mmap"], &["--threads", "2"]] {
        for mode in ["tag", "filter"] {
            for inputs in [vec![a, b], vec![a, empty, b], vec![a, "-"]] {
                let mut args = vec!["--mode", mode];
                args.extend_from_slice(read);
                args.extend(&inputs);
                let out = stdout_of(&args, &[&alert[..], b"\n"].concat());
                let got = lines(&out);
                let enriched = got.last().unwrap();
                assert!(enriched.starts_with(&alert[..alert.len() - 1]), "{args:?}");
                assert!(enriched.ends_with(b"}"), "{args:?}: {}", String::from_utf8_lossy(&out));
                assert_enriched_from(alert, enriched);
                let want_lines = if mode == "tag" { 2 } else { 1 };
                assert_eq!(got.len(), want_lines, "{args:?}: {}", String::from_utf8_lossy(&out));
                if mode == "tag" {
                    assert_eq!(got[0], unterminated, "{args:?}");
                }
            }
        }
    }
    // The last input's last line keeps its missing `\n` in tag mode, as a lone input's does.
    let out = stdout_of(&["--mode", "tag", b, a], b"");
    assert!(out.ends_with(unterminated));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--split-records` splits LookupEvents responses by element and envelopes of log files into
/// one envelope per record, keeping the envelope's other members; tag mode gives every event.
#[test]
fn split_records_splits_lookup_events_and_envelopes_of_log_files() {
    let rec = |name: &str| format!(r#"{{"eventSource":"kms.amazonaws.com","eventName":"{name}"}}"#);
    let string = |s: &str| Json::String(s.into());
    let lookup = format!(
        r#"{{"Events":[{{"EventId":"1","CloudTrailEvent":{}}},{{"EventId":"2","CloudTrailEvent":{}}}]}}"#,
        serde_json::to_string(&rec("Decrypt")).unwrap(),
        serde_json::to_string(&rec("DisableKey")).unwrap()
    );
    let file = format!(r#"{{"Records":[{},{}]}}"#, rec("ScheduleKeyDeletion"), rec("Encrypt"));
    let envelope = format!(
        r#"{{"bucket":"b","message":{},"source_type":"aws_s3"}}"#,
        serde_json::to_string(&file).unwrap()
    );
    let input = format!("{lookup}\n{envelope}\n");
    let tagged = stdout_of(&["--mode", "tag", "--split-records"], input.as_bytes());
    let out: Vec<Json> = lines(&tagged).iter().map(|l| strict_json(l)).collect();
    assert_eq!(out.len(), 4, "{}", String::from_utf8_lossy(&tagged));
    assert_eq!(out[0].get("EventId"), Some(&string("1")));
    assert!(out[0].get("tags").is_none(), "Decrypt is not an alert");
    assert_eq!(out[1].get("EventId"), Some(&string("2")));
    assert!(out[1].get("rule").is_some(), "DisableKey is");
    for (envelope, name, alert) in
        [(&out[2], "ScheduleKeyDeletion", true), (&out[3], "Encrypt", false)]
    {
        assert_eq!(envelope.get("bucket"), Some(&string("b")));
        assert_eq!(envelope.get("source_type"), Some(&string("aws_s3")));
        assert_eq!(envelope.get("message"), Some(&string(&rec(name))));
        assert_eq!(envelope.get("rule").is_some(), alert, "{name}");
    }
    let filtered = stdout_of(&["--split-records"], input.as_bytes());
    assert_eq!(lines(&filtered), [lines(&tagged)[1], lines(&tagged)[2]]);
}

/// What Vector's and Fluentd's JSON decoders need: under --wrap-invalid every output line is one
/// JSON object, or empty (docs/shippers.md VW7, VW8, FW3), whatever the input holds.
#[test]
fn wrap_invalid_leaves_only_objects_and_empty_lines() {
    let mut input = mixed();
    input.extend_from_slice(b"\n   \n\r\n[1,2]\n\"s\"\n42\n{\"a\":1,\"a\":2}\n\xff\xfe\n{\"eventName\":\"DisableKey\"\n\n");
    let out = stdout_of(&["--mode", "tag", "--wrap-invalid", "--no-warn", "all"], &input);
    assert_eq!(lines(&out).len(), lines(&input).len(), "one line out per line in");
    for line in lines(&out) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        // The reference parser: serde_json's own nesting limit (128) would refuse valid
        // documents 999 deep.
        let value = kmsguard_reference::parse(line);
        assert!(
            matches!(value, Some(Json::Object(_))),
            "not one JSON object: {}",
            String::from_utf8_lossy(line)
        );
    }
}
