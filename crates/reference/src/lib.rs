//! A reference evaluator for kmsguard's rule, written as plainly as `RULE.md` reads. Slow on
//! purpose: it parses each document into a tree with a textbook recursive-descent parser, lists
//! every leaf with its dotted path, and compares. The fast matcher is tested against it
//! (differential tests, fuzzing); it is not used by the binary.
//!
//! Strings are held as Elasticsearch's parser (Jackson) holds them, as UTF-16 code units
//! ([`Text`]), so a lone surrogate escape is a code unit of its own and two keys are the same key
//! exactly when their code units are. A document held in a string (an envelope's `message`, a
//! LookupEvents `CloudTrailEvent`) is parsed from those code units, as Elasticsearch's `json`
//! processor parses a Java string.
//!
//! It shares only the rule's *data* ([`Rule`], [`Shape`], [`Verdict`]) with the matcher, never
//! its logic.
#![deny(missing_docs)]

pub mod gen;
pub mod kql;
pub mod packgen;
pub mod props;

use std::fmt;

use kmsguard_matcher::{Rule, Shape, Shapes, Verdict, CLOUDTRAIL_DATASET, MAX_DEPTH};

/// A JSON string's value as UTF-16 code units, lone surrogates included.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(pub Vec<u16>);

impl Text {
    /// Whether this is exactly `s`.
    pub fn is(&self, s: &str) -> bool {
        self.0.iter().copied().eq(s.encode_utf16())
    }

    /// The text, with each lone surrogate shown as U+FFFD (as Elasticsearch indexes it).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf16_lossy(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.encode_utf16().collect())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string_lossy(), f)
    }
}

/// A JSON value that keeps object members in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// Any number, kept as its text (no range limit).
    Number(String),
    /// A string, unescaped.
    String(Text),
    /// An array.
    Array(Vec<Json>),
    /// An object's members in document order.
    Object(Vec<(Text, Json)>),
}

impl Json {
    /// The value of member `key` of an object (a plain key, not a path).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k.is(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value of the member whose key is exactly `key`.
    pub fn member(&self, key: &Text) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Whether this is a string equal to `s`.
    pub fn is_str(&self, s: &str) -> bool {
        matches!(self, Json::String(t) if t.is(s))
    }
}

/// Parses one line the way Elasticsearch accepts a document (spec section 3), or `None`: valid
/// UTF-8 and JSON, nothing after the value, no repeated key in any object, at most [`MAX_DEPTH`]
/// levels of nesting. A byte order mark at the very start is skipped, as Jackson skips it.
pub fn parse(bytes: &[u8]) -> Option<Json> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).ok()?;
    parse_units(&text.encode_utf16().collect::<Vec<u16>>())
}

/// Whether `bytes` is exactly one JSON value (any type, repeated keys allowed; a leading byte
/// order mark and surrounding whitespace allowed, as [`parse`] allows them).
pub fn is_one_value(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes)
        .is_ok_and(|t| parse_units_with(&t.encode_utf16().collect::<Vec<u16>>(), false).is_some())
}

/// Parses JSON text given as UTF-16 code units (a string that holds a document), with the rules
/// of [`parse`].
pub fn parse_units(units: &[u16]) -> Option<Json> {
    parse_units_with(units, true)
}

fn parse_units_with(units: &[u16], refuse_repeats: bool) -> Option<Json> {
    let mut p = JsonParser { s: units, i: 0, depth: 0, refuse_repeats };
    p.ws();
    let value = p.value()?;
    p.ws();
    (p.i == units.len()).then_some(value)
}

/// RFC 8259, one code unit at a time.
struct JsonParser<'a> {
    s: &'a [u16],
    i: usize,
    depth: usize,
    refuse_repeats: bool,
}

impl JsonParser<'_> {
    fn peek(&self) -> Option<u16> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> Option<()> {
        (self.peek()? == c as u16).then(|| self.i += 1)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(0x20 | 0x09 | 0x0A | 0x0D)) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Json> {
        match char::from_u32(u32::from(self.peek()?))? {
            '{' => self.nested(Self::object),
            '[' => self.nested(Self::array),
            '"' => self.string().map(Json::String),
            't' => self.literal("true", Json::Bool(true)),
            'f' => self.literal("false", Json::Bool(false)),
            'n' => self.literal("null", Json::Null),
            '-' | '0'..='9' => self.number(),
            _ => None,
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Option<Json>) -> Option<Json> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let value = f(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Option<Json> {
        self.eat('{')?;
        let mut members: Vec<(Text, Json)> = Vec::new();
        self.ws();
        if self.eat('}').is_some() {
            return Some(Json::Object(members));
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(':')?;
            self.ws();
            let value = self.value()?;
            if self.refuse_repeats && members.iter().any(|(k, _)| *k == key) {
                return None;
            }
            members.push((key, value));
            self.ws();
            if self.eat(',').is_none() {
                self.eat('}')?;
                return Some(Json::Object(members));
            }
        }
    }

    fn array(&mut self) -> Option<Json> {
        self.eat('[')?;
        let mut items = Vec::new();
        self.ws();
        if self.eat(']').is_some() {
            return Some(Json::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            if self.eat(',').is_none() {
                self.eat(']')?;
                return Some(Json::Array(items));
            }
        }
    }

    fn string(&mut self) -> Option<Text> {
        self.eat('"')?;
        let mut out = Vec::new();
        loop {
            let u = self.peek()?;
            self.i += 1;
            match u {
                0x22 => return Some(Text(out)),
                0x5C => {
                    let e = self.peek()?;
                    self.i += 1;
                    out.push(match char::from_u32(u32::from(e))? {
                        '"' => 0x22,
                        '\\' => 0x5C,
                        '/' => 0x2F,
                        'b' => 0x08,
                        'f' => 0x0C,
                        'n' => 0x0A,
                        'r' => 0x0D,
                        't' => 0x09,
                        'u' => {
                            let hex = self.s.get(self.i..self.i + 4)?;
                            self.i += 4;
                            let hex = String::from_utf16(hex).ok()?;
                            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return None;
                            }
                            u16::from_str_radix(&hex, 16).ok()?
                        }
                        _ => return None,
                    });
                }
                0x00..=0x1F => return None,
                u => out.push(u),
            }
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Option<Json> {
        for c in word.chars() {
            self.eat(c)?;
        }
        Some(value)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<Json> {
        let start = self.i;
        let digit = |p: &Self| p.peek().is_some_and(|u| (0x30..=0x39).contains(&u));
        let digits = |p: &mut Self| {
            let from = p.i;
            while digit(p) {
                p.i += 1;
            }
            p.i > from
        };
        let _ = self.eat('-');
        if self.eat('0').is_none() && !digits(self) {
            return None;
        }
        if self.eat('.').is_some() && !digits(self) {
            return None;
        }
        if self.eat('e').or_else(|| self.eat('E')).is_some() {
            let _ = self.eat('+').or_else(|| self.eat('-'));
            if !digits(self) {
                return None;
            }
        }
        Some(Json::Number(String::from_utf16(&self.s[start..self.i]).ok()?))
    }
}

/// Every leaf of `value` with its Elasticsearch field path: object keys joined with `.`, arrays
/// flattened (of values and of objects alike).
pub fn leaves(value: &Json) -> Vec<(Text, &Json)> {
    fn walk<'a>(value: &'a Json, path: Option<&Text>, out: &mut Vec<(Text, &'a Json)>) {
        match value {
            Json::Object(members) => {
                for (key, v) in members {
                    let p = match path {
                        None => key.clone(),
                        Some(prefix) => {
                            let mut p = prefix.clone();
                            p.0.push(u16::from(b'.'));
                            p.0.extend_from_slice(&key.0);
                            p
                        }
                    };
                    walk(v, Some(&p), out);
                }
            }
            Json::Array(items) => items.iter().for_each(|v| walk(v, path, out)),
            leaf => {
                if let Some(p) = path {
                    out.push((p.clone(), leaf));
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

fn verdict(matched: bool, shape: Shape) -> Verdict {
    if matched {
        Verdict::Match(shape)
    } else {
        Verdict::NoMatch(Some(shape))
    }
}

/// Decides one line (without its `\n`) as the spec says.
pub fn evaluate(config: &Config, line: &[u8]) -> Verdict {
    let Some(doc) = parse(line) else { return Verdict::Invalid };
    if !matches!(doc, Json::Object(_)) {
        return Verdict::Invalid;
    }
    let on = |shape| config.shapes.contains(shape);

    // 1. A CloudTrail log file.
    if on(Shape::Records) {
        if let Some(matched) = log_file_matches(config, &doc) {
            return verdict(matched, Shape::Records);
        }
    }
    // 2. A LookupEvents response.
    if on(Shape::LookupEvents) {
        if let Some(records) = lookup_events_records(&doc) {
            let matched = records.iter().any(|r| raw_matches(config, r));
            return verdict(matched, Shape::LookupEvents);
        }
    }
    // 3. EventBridge.
    if on(Shape::EventBridge)
        && doc.get("detail-type").is_some_and(|t| t.is_str("AWS API Call via CloudTrail"))
    {
        if let Some(detail) = doc.get("detail").filter(|d| is_raw_record(d)) {
            return verdict(raw_matches(config, detail), Shape::EventBridge);
        }
    }
    // 4. A raw record.
    if on(Shape::Raw) && is_raw_record(&doc) {
        return verdict(raw_matches(config, &doc), Shape::Raw);
    }
    let leaves = leaves(&doc);
    let values = |field: &str| -> Vec<&Json> {
        leaves.iter().filter(|(p, v)| p.is(field) && **v != Json::Null).map(|(_, v)| *v).collect()
    };
    let any_string_in = |field: &str, terms: &[&str]| {
        values(field).iter().any(|v| terms.iter().any(|t| v.is_str(t)))
    };
    // 5. A shipper envelope: CloudTrail's dataset, or no dataset at all.
    if on(Shape::Envelope) {
        let cloudtrail = DATASET_FIELDS.iter().any(|f| any_string_in(f, &[CLOUDTRAIL_DATASET]))
            || DATASET_FIELDS.iter().all(|f| values(f).is_empty());
        if let (true, Some(Json::String(message))) = (cloudtrail, doc.get("message")) {
            if let Some(inner) = parse_units(&message.0).filter(|d| matches!(d, Json::Object(_))) {
                if let Some(matched) = log_file_matches(config, &inner) {
                    return verdict(matched, Shape::Envelope);
                }
                if is_raw_record(&inner) {
                    return verdict(raw_matches(config, &inner), Shape::Envelope);
                }
            }
        }
    }
    // 6. ECS.
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

/// When `doc` is a CloudTrail log file (a non-empty `Records` array of raw records), whether any
/// of its records matches.
fn log_file_matches(config: &Config, doc: &Json) -> Option<bool> {
    match doc.get("Records") {
        Some(Json::Array(records)) if !records.is_empty() && records.iter().all(is_raw_record) => {
            Some(records.iter().any(|r| raw_matches(config, r)))
        }
        _ => None,
    }
}

/// Decides one raw record on its own, as an element of a `Records` array.
pub fn evaluate_record(config: &Config, record: &[u8]) -> Verdict {
    match parse(record) {
        None => Verdict::Invalid,
        Some(doc) if !matches!(doc, Json::Object(_)) => Verdict::Invalid,
        Some(doc) if is_raw_record(&doc) => verdict(raw_matches(config, &doc), Shape::Raw),
        Some(_) => Verdict::NoMatch(None),
    }
}

/// The raw records of a LookupEvents response (`{"Events":[...]}` whose every element's
/// `CloudTrailEvent` is a raw record as JSON text), or `None` when `doc` is not one.
fn lookup_events_records(doc: &Json) -> Option<Vec<Json>> {
    let Some(Json::Array(events)) = doc.get("Events") else { return None };
    let records: Option<Vec<Json>> = events
        .iter()
        .map(|e| match e.get("CloudTrailEvent") {
            Some(Json::String(text)) => parse_units(&text.0).filter(is_raw_record),
            _ => None,
        })
        .collect();
    records.filter(|r| !r.is_empty())
}

/// An object with `eventSource` and `eventName` keys.
pub(crate) fn is_raw_record(value: &Json) -> bool {
    value.get("eventSource").is_some() && value.get("eventName").is_some()
}

/// The value as the pipeline's first script leaves it: `null`, `""`, `"-"`, `"none"`, and
/// objects and arrays left empty, removed (`None`), recursively.
pub(crate) fn without_empty(value: &Json) -> Option<Json> {
    match value {
        Json::Null => None,
        Json::String(s) if ["", "-", "none"].iter().any(|e| s.is(e)) => None,
        Json::Array(items) => {
            let kept: Vec<Json> = items.iter().filter_map(without_empty).collect();
            (!kept.is_empty()).then_some(Json::Array(kept))
        }
        Json::Object(members) => {
            let kept: Vec<(Text, Json)> = members
                .iter()
                .filter_map(|(k, v)| without_empty(v).map(|v| (k.clone(), v)))
                .collect();
            (!kept.is_empty()).then_some(Json::Object(kept))
        }
        other => Some(other.clone()),
    }
}

/// The strings of a value, arrays flattened.
fn strings(value: &Json) -> Vec<&Text> {
    match value {
        Json::String(s) => vec![s],
        Json::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// The rule on a raw record as the pipeline at elastic/integrations 0b97ab02 indexes it: empty
/// values removed first; `event.dataset` is CloudTrail's; `event.provider` is `eventSource`
/// (renamed, so any string of an array counts); `event.action` is `eventName` rendered as text,
/// so only a string can equal a term; `event.outcome` is `failure` when `errorCode` or
/// `errorMessage` is still there, else `success`.
fn raw_matches(config: &Config, record: &Json) -> bool {
    let record = without_empty(record).unwrap_or(Json::Object(Vec::new()));
    config.rule.clauses.iter().all(|clause| {
        let values: Vec<String> = match clause.field {
            "event.dataset" | "data_stream.dataset" => vec![CLOUDTRAIL_DATASET.into()],
            "event.provider" => record
                .get("eventSource")
                .map(|v| strings(v).iter().map(|t| t.to_string_lossy()).collect())
                .unwrap_or_default(),
            "event.action" => match record.get("eventName") {
                Some(Json::String(s)) => vec![s.to_string_lossy()],
                _ => Vec::new(),
            },
            "event.outcome" => {
                let failed = ["errorCode", "errorMessage"].iter().any(|k| record.get(k).is_some());
                vec![if failed { "failure" } else { "success" }.into()]
            }
            _ => Vec::new(),
        };
        values.iter().any(|v| clause.terms.contains(&v.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_what_elasticsearch_refuses() {
        assert!(parse(br#"{"a":1,"a":2}"#).is_none());
        assert!(parse(br#"{"a":{"b":1,"b":1}}"#).is_none());
        assert!(parse(br#"{"a":1,"\u0061":2}"#).is_none());
        assert!(parse(br#"{"a":1} {}"#).is_none());
        assert!(parse(b"{\"a\":\"\xff\"}").is_none());
        assert!(parse(b"").is_none());
        assert!(parse(b" \xEF\xBB\xBF{}").is_none());
        assert!(parse(format!("{}{}", "[".repeat(1001), "]".repeat(1001)).as_bytes()).is_none());
        assert!(parse(format!("{}{}", "[".repeat(1000), "]".repeat(1000)).as_bytes()).is_some());
    }

    #[test]
    fn parse_accepts_valid_json_that_fast_parsers_refuse() {
        assert_eq!(
            parse(br#"{"a":"\ud800x"}"#),
            Some(Json::Object(vec![("a".into(), Json::String(Text(vec![0xD800, 0x78])))]))
        );
        assert!(parse(br#"{"a":1e400}"#).is_some());
        assert!(parse(format!(r#"{{"a":{}}}"#, "9".repeat(10_000)).as_bytes()).is_some());
        assert!(parse(b"{\"a\":1}\r").is_some());
        assert!(parse(b"\xEF\xBB\xBF{}").is_some());
    }

    #[test]
    fn keys_are_code_units() {
        assert!(parse(br#"{"\ud800":1,"\ue000":2,"\ufffd":3,"\udc00":4}"#).is_some());
        assert!(parse(br#"{"\ud800":1,"\uD800":2}"#).is_none());
        assert!(parse("{\"\\ud800\\udc00\":1,\"\u{10000}\":2}".as_bytes()).is_none());
    }

    #[test]
    fn inner_documents_pair_surrogates_across_levels() {
        // The message's text holds a bare high surrogate and an escaped low one: one character.
        let Some(Json::Object(outer)) = parse(br#"{"m":"{\"\ud800\\udc00\":1}"}"#) else {
            panic!()
        };
        let Json::String(text) = &outer[0].1 else { panic!() };
        let Some(Json::Object(inner)) = parse_units(&text.0) else { panic!() };
        assert_eq!(inner[0].0, Text::from("\u{10000}"));
    }

    #[test]
    fn leaves_follow_dotted_paths_through_arrays() {
        let doc =
            parse(br#"{"event":[{"action":"A"},{"x":{"y":null}}],"event.action":["B"]}"#).unwrap();
        let paths: Vec<_> = leaves(&doc).into_iter().map(|(p, _)| p.to_string_lossy()).collect();
        assert_eq!(paths, ["event.action", "event.x.y", "event.action"]);
    }

    #[test]
    fn removal_of_empty_values_recurses() {
        let doc = parse(br#"{"a":["none",{"b":"-"},[null,""]],"c":"None","d":{}}"#).unwrap();
        assert_eq!(without_empty(&doc), parse(br#"{"c":"None"}"#));
    }

    /// The parser accepts exactly what serde_json accepts, repeated keys aside, on text both can
    /// judge: no lone surrogates, no byte order mark, no numbers out of range.
    #[test]
    fn validity_agrees_with_serde_json() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]:,\"\\ u0aA1-.eE+tfnrul \t\r\n";
        let (mut valid, mut judged) = (0, 0);
        for n in 0..100_000 {
            let doc: Vec<u8> = if n % 2 == 0 {
                let len = (next() % 24) as usize;
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            } else {
                gen::document(&(0..300).map(|_| next() as u8).collect::<Vec<u8>>())
            };
            let Ok(text) = std::str::from_utf8(&doc) else { continue };
            // Lone surrogates, a byte order mark and nesting past 1000 are the spec's own rules,
            // where serde_json differs on purpose.
            if text.to_ascii_lowercase().contains("\\ud")
                || text.starts_with('\u{feff}')
                || text.contains(&"[".repeat(999))
            {
                continue;
            }
            let mut de = serde_json::Deserializer::from_str(text);
            de.disable_recursion_limit();
            let serde = serde::Deserialize::deserialize(&mut de)
                .and_then(|v: serde_json::Value| de.end().map(|()| v));
            if serde.as_ref().is_err_and(|e| e.to_string().contains("out of range")) {
                continue;
            }
            let units: Vec<u16> = text.encode_utf16().collect();
            let ours = parse_units_with(&units, false);
            assert_eq!(ours.is_some(), serde.is_ok(), "{text}");
            judged += 1;
            valid += usize::from(ours.is_some());
        }
        assert!(valid > judged / 4 && valid < judged, "{valid} valid of {judged}");
    }
}
