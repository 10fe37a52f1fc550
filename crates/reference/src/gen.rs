//! Adversarial documents for differential testing, built from a string of choice bytes.
//!
//! The same bytes always build the same document, so proptest can shrink a failure by shrinking
//! the bytes, and a fuzzer can steer the generator with its own input. The documents aim at every
//! edge of the spec:
//!
//! - one field spelled as dotted keys, nested objects and arrays of objects, and near misses of
//!   it: paths split at any byte, empty segments (`"event."`, `".action"`, `"event..action"`),
//!   keys in other cases;
//! - `\u` escapes in keys and values, lone surrogates, private-use and marker characters in keys,
//!   keys whose hashes collide, objects of 1 to 40 members, repeated keys;
//! - every shape of spec section 4 (log files, LookupEvents responses, EventBridge, raw records,
//!   envelopes with a record or a log file and with or without a dataset, ECS), with lone
//!   surrogates at the envelope's own level;
//! - the ingest pipeline's mapping: `"-"`, `"none"` and their near misses in error fields, nested
//!   in arrays and objects; `eventName` of every JSON type;
//! - broken variants: truncated, doubled, not an object, nesting 999 to 1001 deep, CRLF, a byte
//!   order mark, huge numbers, invalid UTF-8.

/// Reads choices from a byte string; when the bytes run out every choice is the first option.
#[derive(Debug)]
pub struct Choices<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Choices<'a> {
    /// Choices read from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Choices<'a> {
        Choices { bytes, pos: 0 }
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        let b = self.bytes.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        usize::from(b) % n
    }

    /// True with probability about `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One of `items`.
    pub fn pick<'i, T>(&mut self, items: &'i [T]) -> &'i T {
        &items[self.below(items.len())]
    }
}

/// A generated JSON tree before it is spelled out.
#[derive(Clone, Debug)]
enum Tree {
    /// JSON text, written as it is.
    Raw(String),
    Str(String),
    Arr(Vec<Tree>),
    Obj(Vec<(Key, Tree)>),
}

/// An object key.
#[derive(Clone, Debug, PartialEq)]
enum Key {
    /// A key whose text is spelled out by [`quote`].
    Text(String),
    /// A key written as it is (quotes included), for what a Rust string cannot hold: lone
    /// surrogate escapes.
    Spelled(&'static str),
}

impl Key {
    fn is(&self, s: &str) -> bool {
        matches!(self, Key::Text(k) if k == s)
    }
}

fn key(s: &str) -> Key {
    Key::Text(s.to_string())
}

const ACTIONS: &[&str] = &[
    "DisableKey",
    "ScheduleKeyDeletion",
    "disablekey",
    "DisableKeyRotation",
    "ScheduleKeyDeletion ",
    "Decrypt",
    "EnableKey",
    "CancelKeyDeletion",
    "none",
    "-",
];
const PROVIDERS: &[&str] =
    &["kms.amazonaws.com", "kms.amazonaws.com ", "KMS.amazonaws.com", "s3.amazonaws.com", "-"];
const OUTCOMES: &[&str] = &["success", "failure", "Success", "unknown"];
const DATASETS: &[&str] = &["aws.cloudtrail", "aws.cloudtrail ", "aws.s3access", "AWS.cloudtrail"];

/// Error values: present, removed by the pipeline (`null`, `""`, `"-"`, `"none"`, emptied
/// containers), and near misses of removed ones, which stay and make a failure.
const ERRORS: &[&str] = &[
    r#""AccessDenied""#,
    "null",
    r#""""#,
    r#""-""#,
    r#""none""#,
    r#""None""#,
    r#"" - ""#,
    r#""--""#,
    r#""NONE""#,
    "{}",
    "[]",
    r#"[null,""]"#,
    r#"["none",{"a":"-"}]"#,
    r#"{"a":{"b":""},"c":["-",[]]}"#,
    r#"["none",{"a":"None"}]"#,
    r#"{"a":[" - "]}"#,
    "0",
    "false",
    r#"["x"]"#,
    r#""\u002d""#,
    r#""n\u006fne""#,
];

/// Keys for filler members: plain, colliding under FNV-1a-64 (`2893ea9411391b85` and
/// `017bf672ad970641`), look-alikes of the rule's fields, and characters at the edges of the
/// matcher's string rewriting.
const FILLER_KEYS: &[Key] = &[
    Key::Spelled(r#""2893ea9411391b85""#),
    Key::Spelled(r#""017bf672ad970641""#),
    Key::Spelled(r#""\ud800""#),
    Key::Spelled(r#""\ue000""#),
    Key::Spelled(r#""\uDC00""#),
    Key::Spelled(r#""\ue400""#),
    Key::Spelled(r#""\uf8ff""#),
    Key::Spelled(r#""\uf8ff\ue000""#),
    Key::Spelled(r#""\uf8ff\uf8ff""#),
    // A high surrogate escape before a raw marker and a low stand-in: genuine characters.
    Key::Spelled("\"\\ud800\u{f8ff}\u{e400}\""),
    Key::Spelled("\"\u{f8ff}\u{e000}\""),
    Key::Spelled(r#""\ud800\udc00""#),
    Key::Spelled(r#""𐀀""#),
    Key::Spelled(r#""\ufffd""#),
    Key::Spelled(r#""a""#),
    Key::Spelled(r#""\u0061""#),
    Key::Spelled(r#""""#),
    Key::Spelled(r#""event""#),
    Key::Spelled(r#""eventname""#),
    Key::Spelled(r#""tags""#),
];

/// A field value: mostly one of `terms` (the first few are the rule's), sometimes an array, a
/// null, a number, a boolean or an object.
fn value(ch: &mut Choices, terms: &[&str]) -> Tree {
    match ch.below(13) {
        0..=6 => {
            let good = if terms == ACTIONS { 2 } else { 1 };
            Tree::Str(ch.pick(&terms[..good]).to_string())
        }
        7 => Tree::Str(ch.pick(terms).to_string()),
        8 => {
            let n = 1 + ch.below(3);
            Tree::Arr((0..n).map(|_| value(ch, terms)).collect())
        }
        9 => Tree::Raw(ch.pick(&["null", "1", "true", "[]", "{}", "[null]", "-0.5e3"]).to_string()),
        10 => Tree::Obj(vec![(key(terms[ch.below(terms.len())]), Tree::Raw("1".into()))]),
        11 => Tree::Arr(vec![Tree::Arr(vec![Tree::Str(ch.pick(&terms[..1]).to_string())])]),
        _ => Tree::Str(String::new()),
    }
}

/// A key as the document spells it: mostly `k`, sometimes in another case.
fn cased(ch: &mut Choices, k: &str) -> String {
    match ch.below(40) {
        0 => k.to_uppercase(),
        1 => k.to_lowercase(),
        2 => {
            let mut c = k.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        }
        _ => k.to_string(),
    }
}

/// Inserts `path` = `value` into an object, spelling the path as a dotted key, nested objects,
/// or an array of objects, chosen at each segment; and now and then as a near miss: split at a
/// byte that is not a dot, with an empty segment, or with a key in another case.
fn insert(ch: &mut Choices, members: &mut Vec<(Key, Tree)>, path: &str, value: Tree) {
    if ch.chance(4) && path.len() > 1 {
        // A near miss: cut anywhere, or around a dot so that a segment is empty.
        let cut = 1 + ch.below(path.len() - 1);
        let (head, rest) = path.split_at(cut);
        let (head, rest) = match ch.below(3) {
            0 => (head.to_string(), rest.to_string()),
            1 => (format!("{head}."), rest.to_string()),
            _ => (head.to_string(), format!(".{rest}")),
        };
        let inner = vec![(Key::Text(rest), value)];
        members.push((Key::Text(head), Tree::Obj(inner)));
        return;
    }
    let Some((head, rest)) = path.split_once('.').filter(|_| !ch.chance(30)) else {
        members.push((Key::Text(cased(ch, path)), value));
        return;
    };
    let existing =
        members.iter().position(|(k, t)| k.is(head) && matches!(t, Tree::Obj(_) | Tree::Arr(_)));
    match existing {
        Some(i) if !ch.chance(5) => match &mut members[i].1 {
            Tree::Obj(inner) => insert(ch, inner, rest, value),
            Tree::Arr(items) => {
                let mut inner = Vec::new();
                insert(ch, &mut inner, rest, value);
                items.push(Tree::Obj(inner));
            }
            _ => unreachable!(),
        },
        _ => {
            let mut inner = Vec::new();
            insert(ch, &mut inner, rest, value);
            let tree =
                if ch.chance(20) { Tree::Arr(vec![Tree::Obj(inner)]) } else { Tree::Obj(inner) };
            members.push((Key::Text(cased(ch, head)), tree));
        }
    }
}

/// Adds filler members: now and then up to 40, so that objects take the matcher's path for
/// many keys; keys mostly distinct, sometimes from [`FILLER_KEYS`] (which may repeat one).
fn filler(ch: &mut Choices, members: &mut Vec<(Key, Tree)>) {
    let n = match ch.below(10) {
        0..=5 => 0,
        6 | 7 => 1 + ch.below(4),
        _ => 1 + ch.below(40),
    };
    for i in 0..n {
        let k = if ch.chance(15) { ch.pick(FILLER_KEYS).clone() } else { key(&format!("k{i}")) };
        let v = Tree::Raw(ch.pick(&["0", "\"x\"", "null", "[1]"]).to_string());
        let at = ch.below(members.len() + 1);
        members.insert(at, (k, v));
    }
}

/// An ECS document with the rule's fields in random spellings.
fn ecs(ch: &mut Choices) -> Tree {
    let mut members = Vec::new();
    let fields: [(&str, &[&str]); 5] = [
        ("event.dataset", DATASETS),
        ("event.provider", PROVIDERS),
        ("event.action", ACTIONS),
        ("event.outcome", OUTCOMES),
        ("data_stream.dataset", DATASETS),
    ];
    for (field, terms) in fields {
        let times = match ch.below(20) {
            0 | 1 => 0,
            2 => 2,
            _ => 1,
        };
        for _ in 0..times {
            let v = value(ch, terms);
            insert(ch, &mut members, field, v);
        }
    }
    if ch.chance(30) {
        insert(ch, &mut members, "event.category", Tree::Str("configuration".into()));
    }
    if ch.chance(20) {
        let record = raw_record(ch);
        let raw = spell(ch, &record);
        members.push((key("message"), Tree::Str(raw)));
    }
    filler(ch, &mut members);
    Tree::Obj(members)
}

/// A raw CloudTrail record.
fn raw_record(ch: &mut Choices) -> Tree {
    let mut members = vec![(key("eventVersion"), Tree::Str("1.08".into()))];
    if !ch.chance(5) {
        members.push((Key::Text(cased(ch, "eventSource")), value(ch, PROVIDERS)));
    }
    if !ch.chance(5) {
        members.push((Key::Text(cased(ch, "eventName")), value(ch, ACTIONS)));
    }
    for k in ["errorCode", "errorMessage"] {
        if ch.chance(35) {
            let v = ch.pick(ERRORS);
            members.push((key(k), Tree::Raw(v.to_string())));
        }
    }
    if ch.chance(30) {
        members.push((key("eventTime"), Tree::Str("2024-09-11T09:29:16Z".into())));
    }
    if ch.chance(15) {
        let v = value(ch, ACTIONS);
        members.push((key("event"), Tree::Obj(vec![(key("action"), v)])));
    }
    filler(ch, &mut members);
    shuffle(ch, &mut members);
    Tree::Obj(members)
}

fn shuffle<T>(ch: &mut Choices, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, ch.below(i + 1));
    }
}

/// A CloudTrail log file: mostly raw records, sometimes something else among them.
fn log_file(ch: &mut Choices) -> Tree {
    let n = ch.below(4);
    let mut records: Vec<Tree> = (0..n).map(|_| raw_record(ch)).collect();
    if ch.chance(10) {
        records.push(ecs(ch));
    }
    Tree::Obj(vec![(Key::Text(cased(ch, "Records")), Tree::Arr(records))])
}

/// An `aws cloudtrail lookup-events` response: each element's `CloudTrailEvent` a record as a
/// string (sometimes not one), beside AWS's summary members.
fn lookup_events(ch: &mut Choices) -> Tree {
    let n = ch.below(4);
    let events = (0..n)
        .map(|i| {
            let mut members = vec![
                (key("EventId"), Tree::Str(format!("id-{i}"))),
                (key("EventName"), Tree::Str(ch.pick(ACTIONS).to_string())),
                (key("EventSource"), Tree::Str("kms.amazonaws.com".into())),
            ];
            let record = match ch.below(20) {
                0 => Tree::Raw("null".into()),
                1 => Tree::Str("{\"eventSource\":".into()),
                2 => {
                    let doc = ecs(ch);
                    Tree::Str(spell(ch, &doc))
                }
                3 => Tree::Obj(vec![(key("eventSource"), Tree::Str("kms.amazonaws.com".into()))]),
                _ => {
                    let record = raw_record(ch);
                    message(ch, &record)
                }
            };
            if !ch.chance(5) {
                members.push((Key::Text(cased(ch, "CloudTrailEvent")), record));
            }
            shuffle(ch, &mut members);
            Tree::Obj(members)
        })
        .collect();
    let mut members = vec![(Key::Text(cased(ch, "Events")), Tree::Arr(events))];
    if ch.chance(20) {
        members.push((key("NextToken"), Tree::Str("t".into())));
    }
    Tree::Obj(members)
}

/// A document spelled as the text of a string member (an envelope's `message`, a
/// `CloudTrailEvent`). Now and then an escaped lone surrogate of the inner text is unescaped, so
/// the outer string itself holds a lone surrogate.
fn message(ch: &mut Choices, doc: &Tree) -> Tree {
    let text = spell(ch, doc);
    let mut quoted = quote(ch, &text);
    if ch.chance(30) && quoted.contains("\\\\u") {
        quoted = quoted.replacen("\\\\u", "\\u", 1 + ch.below(3));
    }
    Tree::Raw(quoted)
}

/// A shipper envelope: a record or a log file in `message`, with CloudTrail's dataset, another,
/// or none.
fn envelope(ch: &mut Choices) -> Tree {
    let mut members = Vec::new();
    match ch.below(10) {
        0..=3 => {
            let v = value(ch, DATASETS);
            let field = if ch.chance(50) { "data_stream.dataset" } else { "event.dataset" };
            insert(ch, &mut members, field, v);
        }
        4 => {
            let v = Tree::Raw(ch.pick(&["null", "[]", "{}", "\"\""]).to_string());
            members.push((key("event.dataset"), v));
        }
        _ => {
            // Vector's aws_s3 source: no dataset, the object's coordinates beside the line.
            members.push((key("bucket"), Tree::Str("trail-bucket".into())));
            members.push((key("source_type"), Tree::Str("aws_s3".into())));
        }
    }
    let inner = match ch.below(10) {
        0 => ecs(ch),
        1..=3 => log_file(ch),
        _ => raw_record(ch),
    };
    let mut text = spell(ch, &inner);
    if ch.chance(5) {
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        members.push((Key::Text(cased(ch, "message")), Tree::Str(text)));
    } else if ch.chance(80) {
        members.push((Key::Text(cased(ch, "message")), message(ch, &inner)));
    } else {
        members.push((Key::Text(cased(ch, "message")), Tree::Str(text)));
    }
    filler(ch, &mut members);
    shuffle(ch, &mut members);
    Tree::Obj(members)
}

/// A document of a random shape.
fn shaped(ch: &mut Choices) -> Tree {
    match ch.below(12) {
        0..=3 => ecs(ch),
        4 | 5 => raw_record(ch),
        6 => log_file(ch),
        7 => lookup_events(ch),
        8 => {
            let detail_type = if ch.chance(85) {
                "AWS API Call via CloudTrail"
            } else {
                "AWS Console Sign In via CloudTrail"
            };
            let detail = if ch.chance(90) { raw_record(ch) } else { ecs(ch) };
            Tree::Obj(vec![
                (key("version"), Tree::Str("0".into())),
                (key("detail-type"), Tree::Str(detail_type.into())),
                (key("source"), Tree::Str("aws.kms".into())),
                (key("detail"), detail),
            ])
        }
        _ => envelope(ch),
    }
}

/// Spells a string as a JSON string literal, escaping what must be escaped and, in one string
/// of five, other characters as `\u` escapes (upper or lower case hex) or `\/`.
fn quote(ch: &mut Choices, s: &str) -> String {
    let rate = if ch.chance(20) { 15 } else { 0 };
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '/' if rate > 0 && ch.chance(rate) => out.push_str("\\/"),
            c if rate > 0 && ch.chance(rate) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    if ch.chance(50) {
                        out.push_str(&format!("\\u{:04X}", unit));
                    } else {
                        out.push_str(&format!("\\u{:04x}", unit));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Spells a tree as JSON text, with random whitespace and escapes.
fn spell(ch: &mut Choices, tree: &Tree) -> String {
    let ws = |ch: &mut Choices| if ch.chance(5) { *ch.pick(&[" ", "\t", "  ", "\r"]) } else { "" };
    match tree {
        Tree::Raw(s) => s.clone(),
        Tree::Str(s) => quote(ch, s),
        Tree::Arr(items) => {
            let parts: Vec<String> =
                items.iter().map(|t| format!("{}{}", ws(ch), spell(ch, t))).collect();
            format!("[{}]", parts.join(","))
        }
        Tree::Obj(members) => {
            let parts: Vec<String> = members
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Key::Text(k) => quote(ch, k),
                        Key::Spelled(k) => k.to_string(),
                    };
                    let sep = ws(ch);
                    format!("{key}{sep}:{}", spell(ch, v))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// Damages a valid document the ways a pipeline does, or leaves it alone.
fn mutate(ch: &mut Choices, doc: String) -> Vec<u8> {
    let mut bytes = doc.into_bytes();
    match ch.below(44) {
        1 => {
            let cut = ch.below(bytes.len().max(1));
            bytes.truncate(cut);
        }
        2 => {
            let copy = bytes.clone();
            bytes.push(b' ');
            bytes.extend(copy);
        }
        3 => bytes.push(b'\r'),
        4 => {
            // A member added after the first `{`: often a repeated key.
            let member = ch.pick(&[
                "\"event.action\":\"DisableKey\",",
                "\"eventName\":\"DisableKey\",",
                "\"x\":1,\"x\":2,",
                "\"Records\":[],",
                "\"message\":\"{}\",",
            ]);
            if let Some(i) = bytes.iter().position(|&b| b == b'{') {
                bytes.splice(i + 1..i + 1, member.bytes());
            }
        }
        5 => {
            let extra = ch.pick(&[
                ",\"s\":\"\\ud800\"",
                ",\"n\":1e400",
                ",\"n\":123456789012345678901234567890",
                ",\"n\":01",
                ",\"s\":\"\\uDC00\\ud800\\udc00\"",
                ",\"\\ud800\":1,\"\\ud801\":2",
                ",\"\\ud800\":1,\"\\uD800\":2",
                ",\"\\ud800\":1,\"\\ue000\":2",
                ",\"\\uf8ff\\ue000\":1,\"\\ud800\":2",
                ",\"\u{f8ff}\":1,\"\\uf8ff\":2",
            ]);
            if let Some(i) = bytes.iter().rposition(|&b| b == b'}') {
                bytes.splice(i..i, extra.bytes());
            }
        }
        6 => {
            let i = ch.below(bytes.len().max(1));
            bytes.insert(i.min(bytes.len()), *ch.pick(&[0xff, 0xc3, 0x00, b'"', b'\\', b'}']));
        }
        7 => {
            let prefixes: [&[u8]; 4] = [b"  ", b"\xef\xbb\xbf", b"\t", b" \xef\xbb\xbf"];
            let prefix = *ch.pick(&prefixes);
            bytes.splice(0..0, prefix.iter().copied());
        }
        8 => {
            // Not an object: the document in an array or in a string.
            bytes = if ch.chance(50) {
                [&b"["[..], &bytes, b"]"].concat()
            } else {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                quote(ch, &text).into_bytes()
            };
        }
        9 => {
            // Nested 999 to 1001 deep (the top-level object is one level).
            let depth = 998 + ch.below(3);
            let deep = format!(",\"deep\":{}{}", "[".repeat(depth), "]".repeat(depth));
            if let Some(i) = bytes.iter().rposition(|&b| b == b'}') {
                bytes.splice(i..i, deep.bytes());
            }
        }
        _ => {}
    }
    bytes
}

/// One adversarial line (without `\n`) built from `choices`.
pub fn document(choices: &[u8]) -> Vec<u8> {
    let mut ch = Choices::new(choices);
    let tree = shaped(&mut ch);
    let text = spell(&mut ch, &tree);
    mutate(&mut ch, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_choices_same_document() {
        let choices: Vec<u8> = (0..=255).collect();
        assert_eq!(document(&choices), document(&choices));
        assert_ne!(document(&choices), document(&choices[1..]));
    }

    /// Every family the module promises appears among 20,000 documents, so that the
    /// differential test and the fuzz targets keep exercising it.
    #[test]
    fn every_family_is_generated() {
        use crate::{evaluate, parse, Config, Json};
        use kmsguard_matcher::{Shape, Verdict};

        fn widest(v: &Json) -> usize {
            match v {
                Json::Object(m) => m.iter().map(|(_, v)| widest(v)).max().unwrap_or(0).max(m.len()),
                Json::Array(a) => a.iter().map(widest).max().unwrap_or(0),
                _ => 0,
            }
        }
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let config = Config::default();
        for _ in 0..20_000 {
            let choices: Vec<u8> = (0..400)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let doc = document(&choices);
            let text = String::from_utf8_lossy(&doc);
            let lower = text.to_ascii_lowercase();
            let verdict = evaluate(&config, &doc);
            let mut family =
                |name, present: bool| *counts.entry(name).or_default() += usize::from(present);
            let parsed = parse(&doc);
            family("object of more than 8 keys", parsed.as_ref().is_some_and(|v| widest(v) > 8));
            family(
                "colliding keys",
                text.contains("2893ea9411391b85") && text.contains("017bf672ad970641"),
            );
            family(
                "lone surrogate key",
                lower.contains(r#""\ud800":"#) || lower.contains(r#""\udc00":"#),
            );
            family("marker key", lower.contains(r#""\uf8ff"#) || text.contains('\u{f8ff}'));
            family(
                "lone surrogate of an envelope's own level",
                lower.contains(r#"\"\ud8"#) || lower.contains(r#"\"\udc"#),
            );
            family(
                "depth 999",
                text.contains(&"[".repeat(998)) && !text.contains(&"[".repeat(999)),
            );
            family(
                "depth 1000",
                text.contains(&"[".repeat(999)) && !text.contains(&"[".repeat(1000)),
            );
            family("depth 1001", text.contains(&"[".repeat(1000)));
            family("top-level array", text.starts_with('['));
            family("top-level string", text.starts_with('"'));
            family("byte order mark", doc.starts_with(b"\xEF\xBB\xBF"));
            family(
                "empty path segment",
                text.contains(r#"."":"#)
                    || text.contains(r#"":{"."#)
                    || text.contains(r#"".action""#)
                    || text.contains(r#""event.":"#),
            );
            family(
                "key in another case",
                text.contains("EVENT")
                    || text.contains("Eventname")
                    || text.contains("eventname")
                    || text.contains("RECORDS")
                    || text.contains("EventSource\":"),
            );
            family(
                "removed error value",
                text.contains(r#""errorCode":"-""#) || text.contains(r#""errorMessage":["none""#),
            );
            family(
                "near miss of a removed value",
                text.contains(r#""None""#) || text.contains(r#"" - ""#) || text.contains(r#""--""#),
            );
            family(
                "non-string eventName",
                [
                    "\"eventName\":[",
                    "\"eventName\":{",
                    "\"eventName\":null",
                    "\"eventName\":1",
                    "\"eventName\":true",
                ]
                .iter()
                .any(|p| text.contains(p)),
            );
            family(
                "envelope without dataset",
                verdict.shape() == Some(Shape::Envelope) && !text.contains("dataset"),
            );
            family(
                "envelope of a log file",
                verdict.shape() == Some(Shape::Envelope) && text.contains(r#"\"Records\""#),
            );
            for shape in Shape::ALL {
                family(shape.name(), verdict == Verdict::Match(shape));
            }
            family("invalid", verdict == Verdict::Invalid);
        }
        let rare: Vec<_> = counts.iter().filter(|(_, &n)| n < 20).collect();
        assert!(
            rare.is_empty(),
            "families generated fewer than 20 times in 20,000: {rare:?}\n{counts:#?}"
        );
    }

    #[test]
    fn exhausted_choices_give_a_valid_document() {
        let doc = document(&[]);
        assert!(crate::parse(&doc).is_some(), "{}", String::from_utf8_lossy(&doc));
    }
}
