//! A reference evaluator for kmsguard's rule, written as plainly as `RULE.md` reads, with
//! serde_json. Slow on purpose: it builds a full tree, lists every leaf with its dotted path, and
//! compares. The fast matcher is tested against it (differential tests, fuzzing); it is not used
//! by the binary.
//!
//! It shares only the rule's *data* ([`Rule`], [`Shape`], [`Verdict`]) with the matcher, never
//! its logic.
#![deny(missing_docs)]

pub mod gen;
pub mod props;

use std::collections::HashSet;

use kmsguard_matcher::{Rule, Shape, Shapes, Verdict, CLOUDTRAIL_DATASET, MAX_DEPTH};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value that keeps object members in order (so repeated keys can be refused).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// Any number, kept as text (no range limit).
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object's members in document order.
    Object(Vec<(String, Json)>),
}

/// The key serde_json uses to pass an arbitrary-precision number through `deserialize_any`.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Number(n.to_string()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Number(n.to_string()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
        Ok(Json::Number(n.to_string()))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members: Vec<(String, Json)> = Vec::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == NUMBER_TOKEN && members.is_empty() {
                let text: String = map.next_value()?;
                return Ok(Json::Number(text));
            }
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

impl Json {
    /// The value of member `key` of an object (a plain key, not a path).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Parses one document the way Elasticsearch accepts it (spec section 3), or `None`: valid JSON
/// and UTF-8, nothing after the value, no repeated key in any object, at most [`MAX_DEPTH`]
/// levels of nesting. A lone surrogate escape is read as a private-use character of its own
/// (U+E000 + its offset from U+D800): Elasticsearch indexes it as U+FFFD, but keys that differ
/// only in their lone surrogates are still different keys.
pub fn parse(bytes: &[u8]) -> Option<Json> {
    let text = std::str::from_utf8(bytes).ok()?;
    if depth(text) > MAX_DEPTH {
        return None;
    }
    let text = replace_lone_surrogates(text);
    let mut de = serde_json::Deserializer::from_str(&text);
    de.disable_recursion_limit();
    let value = Json::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

/// The deepest nesting of arrays and objects in `text`, brackets inside strings not counted.
fn depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Rewrites `\uXXXX` escapes of surrogates that are not part of a high+low pair as escapes of
/// their private-use stand-ins.
fn replace_lone_surrogates(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let unit_at = |i: usize| -> Option<u32> {
        if chars.get(i) != Some(&'\\') || chars.get(i + 1) != Some(&'u') {
            return None;
        }
        let hex: String = chars.get(i + 2..i + 6)?.iter().collect();
        u32::from_str_radix(&hex, 16).ok()
    };
    let is_high = |u: Option<u32>| matches!(u, Some(0xD800..=0xDBFF));
    let is_low = |u: Option<u32>| matches!(u, Some(0xDC00..=0xDFFF));
    let mut out = String::with_capacity(text.len());
    let (mut i, mut in_string) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        if !in_string {
            in_string = c == '"';
            out.push(c);
            i += 1;
        } else if c == '"' {
            in_string = false;
            out.push(c);
            i += 1;
        } else if c == '\\' && chars.get(i + 1) == Some(&'u') {
            let unit = unit_at(i);
            if is_high(unit) && is_low(unit_at(i + 6)) {
                out.extend(&chars[i..i + 12]);
                i += 12;
            } else if let Some(u @ 0xD800..=0xDFFF) = unit {
                out.push_str(&format!("\\u{:04x}", 0xE000 + (u - 0xD800)));
                i += 6;
            } else {
                out.extend(&chars[i..i + 2]);
                i += 2;
            }
        } else if c == '\\' {
            out.extend(chars.get(i..i + 2).unwrap_or(&chars[i..]));
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every leaf of `value` with its Elasticsearch field path: object keys joined with `.`, arrays
/// flattened (of values and of objects alike).
pub fn leaves(value: &Json) -> Vec<(String, &Json)> {
    fn walk<'a>(value: &'a Json, path: Option<&str>, out: &mut Vec<(String, &'a Json)>) {
        match value {
            Json::Object(members) => {
                for (key, v) in members {
                    let p = match path {
                        None => key.clone(),
                        Some(prefix) => format!("{prefix}.{key}"),
                    };
                    walk(v, Some(&p), out);
                }
            }
            Json::Array(items) => items.iter().for_each(|v| walk(v, path, out)),
            leaf => {
                if let Some(p) = path {
                    out.push((p.to_owned(), leaf));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(value, None, &mut out);
    out
}

/// How the reference is configured: the same knobs as the matcher's builder.
#[derive(Clone, Debug)]
pub struct Config {
    /// The rule.
    pub rule: Rule,
    /// Shapes to recognise.
    pub shapes: Shapes,
    /// The declared dataset, if any.
    pub assume_dataset: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            rule: Rule::kms_cmk_disabled_or_scheduled_for_deletion(),
            shapes: Shapes::all(),
            assume_dataset: None,
        }
    }
}

const DATASET_FIELDS: [&str; 2] = ["event.dataset", "data_stream.dataset"];

/// Decides one line (without its `\n`) as the spec says.
pub fn evaluate(config: &Config, line: &[u8]) -> Verdict {
    let Some(doc) = parse(line) else { return Verdict::Invalid };
    if !matches!(doc, Json::Object(_)) {
        return Verdict::Invalid;
    }
    let verdict = |matched: bool, shape: Shape| {
        if matched {
            Verdict::Match(shape)
        } else {
            Verdict::NoMatch(Some(shape))
        }
    };
    let on = |shape| config.shapes.contains(shape);

    // 1. A CloudTrail log file.
    if on(Shape::Records) {
        if let Some(Json::Array(records)) = doc.get("Records") {
            if !records.is_empty() && records.iter().all(is_raw_record) {
                let matched = records.iter().any(|r| raw_matches(config, r));
                return verdict(matched, Shape::Records);
            }
        }
    }
    // 2. EventBridge.
    if on(Shape::EventBridge)
        && doc.get("detail-type") == Some(&Json::String("AWS API Call via CloudTrail".into()))
    {
        if let Some(detail) = doc.get("detail").filter(|d| is_raw_record(d)) {
            return verdict(raw_matches(config, detail), Shape::EventBridge);
        }
    }
    // 3. A raw record.
    if on(Shape::Raw) && is_raw_record(&doc) {
        return verdict(raw_matches(config, &doc), Shape::Raw);
    }
    let leaves = leaves(&doc);
    let values = |field: &str| -> Vec<&Json> {
        leaves.iter().filter(|(p, v)| p == field && **v != Json::Null).map(|(_, v)| *v).collect()
    };
    let any_string_in = |field: &str, terms: &[&str]| {
        values(field).iter().any(|v| matches!(v, Json::String(s) if terms.contains(&s.as_str())))
    };
    // 4. A shipper envelope.
    if on(Shape::Envelope) {
        let cloudtrail = DATASET_FIELDS.iter().any(|f| any_string_in(f, &[CLOUDTRAIL_DATASET]))
            || (DATASET_FIELDS.iter().all(|f| values(f).is_empty())
                && config.assume_dataset.as_deref() == Some(CLOUDTRAIL_DATASET));
        if cloudtrail {
            if let Some(Json::String(message)) = doc.get("message") {
                if let Some(record) = parse(message.as_bytes()).filter(is_raw_record) {
                    return verdict(raw_matches(config, &record), Shape::Envelope);
                }
            }
        }
    }
    // 5. ECS.
    if on(Shape::Ecs) {
        let matched = config.rule.clauses.iter().all(|clause| {
            any_string_in(clause.field, clause.terms)
                || (DATASET_FIELDS.contains(&clause.field)
                    && values(clause.field).is_empty()
                    && config.assume_dataset.as_deref().is_some_and(|d| clause.terms.contains(&d)))
        });
        return verdict(matched, Shape::Ecs);
    }
    Verdict::NoMatch(None)
}

/// Decides one raw record on its own, as an element of a `Records` array.
pub fn evaluate_record(config: &Config, record: &[u8]) -> Verdict {
    match parse(record) {
        None => Verdict::Invalid,
        Some(doc) if !matches!(doc, Json::Object(_)) => Verdict::Invalid,
        Some(doc) if is_raw_record(&doc) => {
            if raw_matches(config, &doc) {
                Verdict::Match(Shape::Raw)
            } else {
                Verdict::NoMatch(Some(Shape::Raw))
            }
        }
        Some(_) => Verdict::NoMatch(None),
    }
}

/// An object with `eventSource` and `eventName` keys.
fn is_raw_record(value: &Json) -> bool {
    value.get("eventSource").is_some() && value.get("eventName").is_some()
}

/// What the ingest pipeline drops: `null`, `""`, and objects or arrays of only such values.
fn is_empty(value: &Json) -> bool {
    match value {
        Json::Null => true,
        Json::String(s) => s.is_empty(),
        Json::Array(items) => items.iter().all(is_empty),
        Json::Object(members) => members.iter().all(|(_, v)| is_empty(v)),
        _ => false,
    }
}

/// The strings of a raw value, arrays flattened.
fn strings(value: &Json) -> Vec<&str> {
    match value {
        Json::String(s) => vec![s.as_str()],
        Json::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// The rule on a raw record: `event.dataset` is CloudTrail's, `event.provider` is `eventSource`,
/// `event.action` is `eventName`, `event.outcome` is `failure` when `errorCode` or
/// `errorMessage` is present and not empty, else `success`.
fn raw_matches(config: &Config, record: &Json) -> bool {
    config.rule.clauses.iter().all(|clause| {
        let values: Vec<&str> = match clause.field {
            "event.dataset" | "data_stream.dataset" => vec![CLOUDTRAIL_DATASET],
            "event.provider" => record.get("eventSource").map(strings).unwrap_or_default(),
            "event.action" => record.get("eventName").map(strings).unwrap_or_default(),
            "event.outcome" => {
                let failed = ["errorCode", "errorMessage"]
                    .iter()
                    .any(|k| record.get(k).is_some_and(|v| !is_empty(v)));
                vec![if failed { "failure" } else { "success" }]
            }
            _ => Vec::new(),
        };
        values.iter().any(|v| clause.terms.contains(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_what_elasticsearch_refuses() {
        assert!(parse(br#"{"a":1,"a":2}"#).is_none());
        assert!(parse(br#"{"a":{"b":1,"b":1}}"#).is_none());
        assert!(parse(br#"{"a":1} {}"#).is_none());
        assert!(parse(b"{\"a\":\"\xff\"}").is_none());
        assert!(parse(b"").is_none());
        assert!(parse(format!("{}{}", "[".repeat(1001), "]".repeat(1001)).as_bytes()).is_none());
        assert!(parse(format!("{}{}", "[".repeat(1000), "]".repeat(1000)).as_bytes()).is_some());
    }

    #[test]
    fn parse_accepts_valid_json_that_fast_parsers_refuse() {
        assert_eq!(
            parse(br#"{"a":"\ud800x"}"#),
            Some(Json::Object(vec![("a".into(), Json::String("\u{e000}x".into()))]))
        );
        assert!(parse(br#"{"a":1e400}"#).is_some());
        assert!(parse(format!(r#"{{"a":{}}}"#, "9".repeat(10_000)).as_bytes()).is_some());
        assert!(parse(b"{\"a\":1}\r").is_some());
    }

    #[test]
    fn leaves_follow_dotted_paths_through_arrays() {
        let doc =
            parse(br#"{"event":[{"action":"A"},{"x":{"y":null}}],"event.action":["B"]}"#).unwrap();
        let paths: Vec<_> = leaves(&doc).into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["event.action", "event.x.y", "event.action"]);
    }
}
