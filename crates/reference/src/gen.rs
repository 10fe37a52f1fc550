//! Adversarial documents for differential testing, built from a string of choice bytes.
//!
//! The same bytes always build the same document, so proptest can shrink a failure by shrinking
//! the bytes, and a fuzzer can steer the generator with its own input. The documents aim at the
//! edges of the spec: dotted and nested spellings of one field, arrays of values and of objects,
//! `\u` escapes in keys and values, near-miss terms, every shape, and broken variants (truncated,
//! doubled, repeated keys, CRLF, lone surrogates, huge numbers, invalid UTF-8).

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
    Raw(String),
    Str(String),
    Arr(Vec<Tree>),
    Obj(Vec<(String, Tree)>),
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
];
const PROVIDERS: &[&str] =
    &["kms.amazonaws.com", "kms.amazonaws.com ", "KMS.amazonaws.com", "s3.amazonaws.com"];
const OUTCOMES: &[&str] = &["success", "failure", "Success", "unknown"];
const DATASETS: &[&str] = &["aws.cloudtrail", "aws.cloudtrail ", "aws.s3access", "AWS.cloudtrail"];

/// A field value: mostly one of `terms` (the first few are the rule's), sometimes an array, a
/// null, a number, a boolean or an object.
fn value(ch: &mut Choices, terms: &[&str]) -> Tree {
    match ch.below(12) {
        0..=6 => {
            let good = if terms == ACTIONS { 2 } else { 1 };
            Tree::Str(ch.pick(&terms[..good]).to_string())
        }
        7 => Tree::Str(ch.pick(terms).to_string()),
        8 => {
            let n = 1 + ch.below(3);
            Tree::Arr((0..n).map(|_| value(ch, terms)).collect())
        }
        9 => Tree::Raw(ch.pick(&["null", "1", "true", "[]", "{}", "[null]"]).to_string()),
        10 => Tree::Obj(vec![(ch.pick(terms).to_string(), Tree::Raw("1".into()))]),
        _ => Tree::Str(String::new()),
    }
}

/// Inserts `path` = `value` into an object, spelling the path as a dotted key, nested objects,
/// or an array of objects, chosen at each segment.
fn insert(ch: &mut Choices, members: &mut Vec<(String, Tree)>, path: &str, value: Tree) {
    let Some((head, rest)) = path.split_once('.').filter(|_| !ch.chance(30)) else {
        members.push((path.to_string(), value));
        return;
    };
    let existing =
        members.iter().position(|(k, t)| k == head && matches!(t, Tree::Obj(_) | Tree::Arr(_)));
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
            members.push((head.to_string(), tree));
        }
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
        members.push(("message".into(), Tree::Str(raw)));
    }
    Tree::Obj(members)
}

/// A raw CloudTrail record.
fn raw_record(ch: &mut Choices) -> Tree {
    let mut members = vec![("eventVersion".to_string(), Tree::Str("1.08".into()))];
    if !ch.chance(5) {
        members.push(("eventSource".into(), value(ch, PROVIDERS)));
    }
    if !ch.chance(5) {
        members.push(("eventName".into(), value(ch, ACTIONS)));
    }
    for key in ["errorCode", "errorMessage"] {
        if ch.chance(35) {
            let v = ch.pick(&[
                r#""AccessDenied""#,
                "null",
                r#""""#,
                "{}",
                "[]",
                r#"[null,""]"#,
                r#"{"a":{"b":""}}"#,
                "0",
                "false",
                r#"["x"]"#,
            ]);
            members.push((key.into(), Tree::Raw(v.to_string())));
        }
    }
    if ch.chance(30) {
        members.push(("eventTime".into(), Tree::Str("2024-09-11T09:29:16Z".into())));
    }
    if ch.chance(15) {
        let v = value(ch, ACTIONS);
        members.push(("event".into(), Tree::Obj(vec![("action".into(), v)])));
    }
    shuffle(ch, &mut members);
    Tree::Obj(members)
}

fn shuffle<T>(ch: &mut Choices, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, ch.below(i + 1));
    }
}

/// A document of a random shape.
fn shaped(ch: &mut Choices) -> Tree {
    match ch.below(10) {
        0..=3 => ecs(ch),
        4 | 5 => raw_record(ch),
        6 => {
            let n = ch.below(4);
            let mut records: Vec<Tree> = (0..n).map(|_| raw_record(ch)).collect();
            if ch.chance(10) {
                records.push(ecs(ch));
            }
            Tree::Obj(vec![("Records".into(), Tree::Arr(records))])
        }
        7 => {
            let detail_type = if ch.chance(85) {
                "AWS API Call via CloudTrail"
            } else {
                "AWS Console Sign In via CloudTrail"
            };
            let detail = if ch.chance(90) { raw_record(ch) } else { ecs(ch) };
            Tree::Obj(vec![
                ("version".into(), Tree::Str("0".into())),
                ("detail-type".into(), Tree::Str(detail_type.into())),
                ("source".into(), Tree::Str("aws.kms".into())),
                ("detail".into(), detail),
            ])
        }
        _ => {
            let mut members = Vec::new();
            if ch.chance(80) {
                let v = value(ch, DATASETS);
                let field = if ch.chance(50) { "data_stream.dataset" } else { "event.dataset" };
                insert(ch, &mut members, field, v);
            }
            let inner = match ch.below(10) {
                0 => ecs(ch),
                _ => raw_record(ch),
            };
            let mut message = spell(ch, &inner);
            if ch.chance(5) {
                message.truncate(message.len() / 2);
            }
            members.push(("message".into(), Tree::Str(message)));
            shuffle(ch, &mut members);
            Tree::Obj(members)
        }
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
                    let key = quote(ch, k);
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
    match ch.below(40) {
        7 => {
            let cut = ch.below(bytes.len().max(1));
            bytes.truncate(cut);
        }
        1 => {
            let copy = bytes.clone();
            bytes.push(b' ');
            bytes.extend(copy);
        }
        2 => bytes.push(b'\r'),
        3 => {
            // A member added after the first `{`: often a repeated key.
            let key = ch.pick(&[
                "\"event.action\":\"DisableKey\",",
                "\"eventName\":\"DisableKey\",",
                "\"x\":1,\"x\":2,",
                "\"Records\":[],",
            ]);
            if let Some(i) = bytes.iter().position(|&b| b == b'{') {
                bytes.splice(i + 1..i + 1, key.bytes());
            }
        }
        4 => {
            let extra = ch.pick(&[
                ",\"s\":\"\\ud800\"",
                ",\"n\":1e400",
                ",\"n\":123456789012345678901234567890",
                ",\"n\":01",
                ",\"s\":\"\\uDC00\\ud800\\udc00\"",
                ",\"\\ud800\":1,\"\\ud801\":2",
                ",\"\\ud800\":1,\"\\uD800\":2",
            ]);
            if let Some(i) = bytes.iter().rposition(|&b| b == b'}') {
                bytes.splice(i..i, extra.bytes());
            }
        }
        5 => {
            let i = ch.below(bytes.len().max(1));
            bytes.insert(i.min(bytes.len()), *ch.pick(&[0xff, 0xc3, 0x00, b'"', b'\\', b'}']));
        }
        6 => {
            let prefixes: [&[u8]; 3] = [b"  ", b"\xef\xbb\xbf", b"\t"];
            let prefix = *ch.pick(&prefixes);
            bytes.splice(0..0, prefix.iter().copied());
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

    #[test]
    fn exhausted_choices_give_a_valid_document() {
        let doc = document(&[]);
        assert!(crate::parse(&doc).is_some(), "{}", String::from_utf8_lossy(&doc));
    }
}
