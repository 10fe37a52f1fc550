//! Golden cases: one input, the exact expected output. `m(doc)` is `doc` as kmsguard enriches it
//! (the golden enrichment is spelled out once, below, and compared byte for byte).

use crate::util::stdout_of;

/// The enrichment kmsguard appends to a matching document with no `tags`, `rule` or `threat`.
const ENRICHMENT: &str = concat!(
    r#""tags":["kms-cmk-disabled-or-scheduled-for-deletion"],"#,
    r#""rule":{"author":["Xavier Pich"],"category":"query","id":"6951f15e-533c-4a60-8014-a3c3ab851a1b","license":"Elastic License v2","#,
    r#""name":"AWS KMS Customer Managed Key Disabled or Scheduled for Deletion","#,
    r#""reference":["https://docs.aws.amazon.com/cli/latest/reference/kms/disable-key.html","https://docs.aws.amazon.com/cli/latest/reference/kms/schedule-key-deletion.html"],"#,
    r#""ruleset":"elastic/detection-rules","version":"1"},"#,
    r#""threat":{"framework":"MITRE ATT&CK","tactic":{"id":"TA0040","name":"Impact","reference":"https://attack.mitre.org/tactics/TA0040/"},"#,
    r#""technique":{"id":"T1485","name":"Data Destruction","reference":"https://attack.mitre.org/techniques/T1485/"}}"#,
);

/// `doc` (a one-line object with members) enriched, with `\n`.
fn m(doc: &str) -> String {
    let close = doc.rfind('}').unwrap();
    format!("{},{}{}\n", &doc[..close], ENRICHMENT, &doc[close..])
}

/// The three clauses other than the action, as dotted keys.
const REST: &str = r#""event.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com","event.outcome":"success""#;

fn doc(extra: &str) -> String {
    format!("{{{REST},{extra}}}")
}

macro_rules! golden {
    ($($name:ident: $args:expr, $input:expr => $output:expr;)*) => {$(
        #[test]
        fn $name() {
            let input: String = $input;
            let want: String = $output;
            let got = stdout_of(&$args, input.as_bytes());
            assert_eq!(String::from_utf8_lossy(&got), want, "input: {input}");
        }
    )*};
}

const FILTER: [&str; 0] = [];
const TAG: [&str; 2] = ["--mode", "tag"];

golden! {
    // Section 2: a field's values.
    dotted_key_matches: FILTER, doc(r#""event.action":"DisableKey""#) + "\n" => m(&doc(r#""event.action":"DisableKey""#));
    nested_object_matches: FILTER, r#"{"event":{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com","action":"DisableKey","outcome":"success"}}"#.to_string() + "\n"
        => m(r#"{"event":{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com","action":"DisableKey","outcome":"success"}}"#);
    dotted_and_nested_values_both_count: FILTER, doc(r#""event":{"action":"X"},"event.action":"ScheduleKeyDeletion""#) + "\n"
        => m(&doc(r#""event":{"action":"X"},"event.action":"ScheduleKeyDeletion""#));
    array_of_values_matches: FILTER, doc(r#""event":{"action":["Decrypt","DisableKey"]}"#) + "\n" => m(&doc(r#""event":{"action":["Decrypt","DisableKey"]}"#));
    array_of_objects_matches: FILTER,
        r#"{"event":[{"action":"DisableKey"},{"outcome":"success"},{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com"}]}"#.to_string() + "\n"
        => m(r#"{"event":[{"action":"DisableKey"},{"outcome":"success"},{"dataset":"aws.cloudtrail","provider":"kms.amazonaws.com"}]}"#);
    escaped_value_matches: FILTER,
        r#"{"event.dataset":"aws.cloudtrail","event.provider":"kms\u002eamazonaws.com","event.outcome":"success","event.action":"Disable\u004bey"}"#.to_string() + "\n"
        => m(r#"{"event.dataset":"aws.cloudtrail","event.provider":"kms\u002eamazonaws.com","event.outcome":"success","event.action":"Disable\u004bey"}"#);
    escaped_key_matches: FILTER, doc(r#""event\u002eaction":"DisableKey""#) + "\n" => m(&doc(r#""event\u002eaction":"DisableKey""#));
    null_is_no_value: FILTER, doc(r#""event.action":null"#) + "\n" => String::new();
    number_is_never_a_term: FILTER, doc(r#""event.action":1"#) + "\n" => String::new();
    boolean_is_never_a_term: FILTER, doc(r#""event.action":true"#) + "\n" => String::new();
    object_is_never_a_term: FILTER, doc(r#""event.action":{"DisableKey":"DisableKey"}"#) + "\n" => String::new();
    terms_are_case_sensitive: FILTER, doc(r#""event.action":"disablekey""#) + "\n" => String::new();
    terms_are_whole_values: FILTER, doc(r#""event.action":"DisableKeyRotation""#) + "\n" => String::new();
    trailing_space_is_not_the_term: FILTER,
        r#"{"event.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com ","event.outcome":"success","event.action":"DisableKey"}"#.to_string() + "\n" => String::new();
    failed_call_does_not_match: FILTER, r#"{"event.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com","event.outcome":"failure","event.action":"DisableKey"}"#.to_string() + "\n" => String::new();
    missing_dataset_does_not_match: FILTER, r#"{"event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey"}"#.to_string() + "\n" => String::new();
    declared_dataset_fills_a_missing_one: ["--assume-dataset", "aws.cloudtrail"],
        r#"{"event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey"}"#.to_string() + "\n"
        => m(r#"{"event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey"}"#);
    later_rule_reads_data_stream_dataset: ["--dataset-field", "data_stream.dataset"],
        r#"{"data_stream":{"dataset":"aws.cloudtrail"},"event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey"}"#.to_string() + "\n"
        => m(r#"{"data_stream":{"dataset":"aws.cloudtrail"},"event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey"}"#);

    // Section 3: documents that never match (tag mode shows they pass through untouched).
    invalid_json_never_matches: TAG, doc(r#""event.action":"DisableKey""#).replace("}", "") + "\n" => doc(r#""event.action":"DisableKey""#).replace("}", "") + "\n";
    top_level_array_never_matches: TAG, format!("[{}]\n", doc(r#""event.action":"DisableKey""#)) => format!("[{}]\n", doc(r#""event.action":"DisableKey""#));
    top_level_string_never_matches: TAG, "\"DisableKey\"\n".to_string() => "\"DisableKey\"\n".to_string();
    two_objects_on_a_line_never_match: TAG, format!("{0} {0}\n", doc(r#""event.action":"DisableKey""#)) => format!("{0} {0}\n", doc(r#""event.action":"DisableKey""#));
    repeated_key_never_matches: TAG, doc(r#""event.action":"DisableKey","event.action":"DisableKey""#) + "\n" => doc(r#""event.action":"DisableKey","event.action":"DisableKey""#) + "\n";
    blank_lines_are_not_documents: TAG, "\n  \n\t\r\n".to_string() => "\n  \n\t\r\n".to_string();
    crlf_is_the_same_document: FILTER, doc(r#""event.action":"DisableKey""#) + "\r\n" => m(&doc(r#""event.action":"DisableKey""#));
    lone_surrogate_does_not_stop_a_match: FILTER, doc(r#""event.action":"DisableKey","note":"\ud800""#) + "\n" => m(&doc(r#""event.action":"DisableKey","note":"\ud800""#));

    // Section 5: the output contract.
    filter_keeps_only_matches_in_order: FILTER,
        format!("{}\n{}\n{}\n", doc(r#""event.action":"Decrypt""#), doc(r#""event.action":"ScheduleKeyDeletion""#), doc(r#""event.action":"DisableKey""#))
        => m(&doc(r#""event.action":"ScheduleKeyDeletion""#)) + &m(&doc(r#""event.action":"DisableKey""#));
    tag_keeps_every_line_and_its_terminator: TAG,
        format!("{}\r\n\n{}", doc(r#""event.action":"DisableKey""#), doc(r#""event.action":"Decrypt""#))
        => m(&doc(r#""event.action":"DisableKey""#)).replace("}\n", "}\r\n") + "\n" + &doc(r#""event.action":"Decrypt""#);
    final_line_without_newline_counts: FILTER, doc(r#""event.action":"DisableKey""#) => m(&doc(r#""event.action":"DisableKey""#));
    tags_string_becomes_an_array: FILTER, doc(r#""event.action":"DisableKey","tags":"prod""#) + "\n"
        => m(&doc(r#""event.action":"DisableKey","tags":"prod""#)).replace(r#""tags":"prod","tags":["#, r#""tags":["prod","#);
    tags_equal_to_the_tag_becomes_an_array: FILTER, doc(r#""event.action":"DisableKey","tags":"kms-cmk-disabled-or-scheduled-for-deletion""#) + "\n"
        => m(&doc(r#""event.action":"DisableKey","tags":"kms-cmk-disabled-or-scheduled-for-deletion""#)).replace(r#""tags":"kms-cmk-disabled-or-scheduled-for-deletion","tags":["kms-cmk-disabled-or-scheduled-for-deletion"]"#, r#""tags":["kms-cmk-disabled-or-scheduled-for-deletion"]"#);
    tags_array_is_appended_to: FILTER, doc(r#""tags":["a"],"event.action":"DisableKey""#) + "\n"
        => m(&doc(r#""tags":["a"],"event.action":"DisableKey""#)).replace(r#""tags":["a"],"event.action":"DisableKey","tags":["#, r#""tags":["a","#).replacen(r#""kms-cmk-disabled-or-scheduled-for-deletion"],"rule""#, r#""kms-cmk-disabled-or-scheduled-for-deletion"],"event.action":"DisableKey","rule""#, 1);
}

#[test]
fn existing_rule_is_kept_and_ours_goes_under_kmsguard() {
    let input = doc(r#""event.action":"DisableKey","rule":{"name":"theirs"}"#) + "\n";
    let out = stdout_of(&[], input.as_bytes());
    let line = out.strip_suffix(b"\n").unwrap();
    let v = crate::util::strict_json(line);
    assert_eq!(
        v.get("rule").and_then(|r| r.get("name")),
        Some(&kmsguard_reference::Json::String("theirs".into()))
    );
    let ours = v.get("kmsguard").and_then(|k| k.get("rule")).and_then(|r| r.get("id"));
    assert_eq!(
        ours,
        Some(&kmsguard_reference::Json::String("6951f15e-533c-4a60-8014-a3c3ab851a1b".into()))
    );
    assert!(v.get("threat").is_some(), "threat was free, so it is written at the top level");
}
