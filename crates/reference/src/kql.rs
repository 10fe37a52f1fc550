//! A reference evaluator for many KQL rules at once, written as plainly as `RULES.md` sections 3
//! and 4 read (with `RULE.md` sections 2-4 for field values, validity and shapes). Slow on
//! purpose: each line is parsed into a tree by the crate's own parser ([`crate::parse`]), every
//! leaf is listed with its dotted path ([`crate::leaves`]), and each rule's query is walked over
//! those lists in Kleene's three-valued logic. The fast [`kmsguard_matcher::ruleset`] is tested
//! against it; only the data types ([`Query`], [`Shape`], [`Tri`]) are shared, never logic.
//!
//! Readings of the spec where it leaves room (each also noted where it is implemented):
//! - Lengths for `ignore_above` are counted in UTF-16 code units, as Elasticsearch's Java
//!   `String.length()` counts them (the spec's "characters").
//! - A flattened leaf is too long when the UTF-8 bytes of its key (its dotted path below the
//!   flattened field) plus those of its value exceed 32,766 ("whose key and value exceed 32,766
//!   bytes"; Elasticsearch itself also counts the `\0` between them, one byte less). Depth is
//!   counted as Elasticsearch's flattened parser counts it (see `within_flattened_limits`).
//! - `assume_dataset` fills each of `event.dataset` and `data_stream.dataset` on its own, when
//!   the ECS document has no non-null leaf at that path. It plays no part in recognising shapes.
//! - A query on a flattened field's root (`aws.cloudtrail.flattened.request_parameters: x`)
//!   reads every leaf below it, as Elasticsearch's flattened type does.
//! - `event.action` from a non-string `eventName`: the pipeline writes some string (spec:
//!   "like `{0=DisableKey}`") that equals no term; so `field: *` is true (unknown when the value
//!   is so long that the string might exceed `ignore_above`), an exact term false, and a
//!   wildcard pattern unknown (the string is not specified).
//! - "UserAuthentication events" are records whose `eventName` is the string
//!   `UserAuthentication`; "for ConsoleLogin" means `eventName` is the string `ConsoleLogin`.
//! - `user.id` for an `IdentityCenterUser` is `userIdentity.onBehalfOf.userId` only (no
//!   fallback to `principalId`).
//! - "whose string form may reach 32,766 characters": the `Map.toString()` form is computed
//!   exactly (its length does not depend on the map's order), and the flattened copy's fields
//!   are unknown when that length is 32,766 or more (the pipeline copies when `length() <
//!   32766`).

use std::collections::HashMap;
use std::net::IpAddr;

use kmsguard_matcher::kql::{Pattern, Query, Value};
use kmsguard_matcher::ruleset::Tri;
use kmsguard_matcher::Shape;

use crate::{
    is_raw_record, leaves, lookup_events_records, parse, parse_units, without_empty, Json, Text,
};

const CLOUDTRAIL: &str = "aws.cloudtrail";
const DATASET_FIELDS: [&str; 2] = ["event.dataset", "data_stream.dataset"];
const EVENTBRIDGE_DETAIL_TYPE: &str = "AWS API Call via CloudTrail";

/// The flattened fields of the CloudTrail mapping and the raw record member each copies.
const FLATTENED: [(&str, &str); 4] = [
    ("aws.cloudtrail.flattened.request_parameters", "requestParameters"),
    ("aws.cloudtrail.flattened.response_elements", "responseElements"),
    ("aws.cloudtrail.flattened.additional_eventdata", "additionalEventData"),
    ("aws.cloudtrail.flattened.service_event_details", "serviceEventDetails"),
];

/// Elasticsearch's `depth_limit` for flattened fields.
const FLATTENED_DEPTH_LIMIT: usize = 20;
/// Bytes of a flattened leaf's key and value together above which the document is rejected.
const FLATTENED_LEAF_LIMIT: usize = 32_766;
/// The pipeline copies a member into its flattened field only when its `toString()` is shorter.
const TO_STRING_LIMIT: usize = 32_766;
/// `ignore_above` of ordinary keyword fields.
const KEYWORD_LIMIT: usize = 1024;
/// `ignore_above` of `aws.cloudtrail.request_parameters` and `.response_elements`.
const LONG_KEYWORD_LIMIT: usize = 8191;

/// Decides one line (without its `\n`) against every query, as RULES.md sections 3 and 4 say:
/// `None` when the line is not a document Elasticsearch would index (no rule matches), else the
/// shape it was read as and one verdict per query, in order.
pub fn evaluate_pack(
    queries: &[Query],
    assume_dataset: Option<&str>,
    line: &[u8],
) -> Option<(Shape, Vec<Tri>)> {
    let doc = parse(line)?;
    if !matches!(doc, Json::Object(_)) {
        return None;
    }
    // 1. A CloudTrail log file.
    if let Some(records) = log_file(&doc) {
        return Some((Shape::Records, over_records(queries, records.iter())));
    }
    // 2. A LookupEvents response: every element's CloudTrailEvent a raw record as JSON text.
    if let Some(records) = lookup_events_records(&doc) {
        return Some((Shape::LookupEvents, over_records(queries, records.iter())));
    }
    // 3. EventBridge.
    if doc.get("detail-type").is_some_and(|t| t.is_str(EVENTBRIDGE_DETAIL_TYPE)) {
        if let Some(detail) = doc.get("detail").filter(|d| is_raw_record(d)) {
            return Some((Shape::EventBridge, over_records(queries, std::iter::once(detail))));
        }
    }
    // 4. A raw record.
    if is_raw_record(&doc) {
        return Some((Shape::Raw, over_records(queries, std::iter::once(&doc))));
    }
    let ecs = Ecs::new(&doc);
    // 5. A shipper envelope: CloudTrail's dataset, or no dataset value at all.
    let cloudtrail = DATASET_FIELDS
        .iter()
        .any(|f| ecs.present(f).iter().any(|v| matches!(v, Json::String(t) if t.is(CLOUDTRAIL))))
        || DATASET_FIELDS.iter().all(|f| ecs.present(f).is_empty());
    if let (true, Some(Json::String(message))) = (cloudtrail, doc.get("message")) {
        if let Some(inner) = parse_units(&message.0).filter(|d| matches!(d, Json::Object(_))) {
            if let Some(records) = log_file(&inner) {
                return Some((Shape::Envelope, over_records(queries, records.iter())));
            }
            if is_raw_record(&inner) {
                return Some((Shape::Envelope, over_records(queries, std::iter::once(&inner))));
            }
        }
    }
    // 6. ECS: rejected as a whole when a flattened field breaks Elasticsearch's limits.
    if !within_flattened_limits(&doc) {
        return None;
    }
    // Each field's values, worked out once per document.
    let mut known: HashMap<String, Vec<Indexed>> = HashMap::new();
    let verdicts = queries
        .iter()
        .map(|q| {
            evaluate(q, &mut |field, value| {
                let values = known
                    .entry(field.to_string())
                    .or_insert_with(|| ecs.values(field, assume_dataset));
                tri(satisfies(values, value))
            })
        })
        .collect();
    Some((Shape::Ecs, verdicts))
}

/// The records of a CloudTrail log file: a non-empty `Records` array of raw records.
fn log_file(doc: &Json) -> Option<&Vec<Json>> {
    match doc.get("Records") {
        Some(Json::Array(records)) if !records.is_empty() && records.iter().all(is_raw_record) => {
            Some(records)
        }
        _ => None,
    }
}

/// Each query's verdict on a container: Kleene `or` of its verdicts on each record.
fn over_records<'a>(queries: &[Query], records: impl Iterator<Item = &'a Json>) -> Vec<Tri> {
    let mut verdicts = vec![Tri::False; queries.len()];
    for record in records {
        let raw = Raw::new(record);
        // Elasticsearch refuses the document the pipeline makes of it: no rule matches it.
        if !raw.within_flattened_limits() {
            continue;
        }
        let mut known: HashMap<String, RawValues> = HashMap::new();
        for (verdict, q) in verdicts.iter_mut().zip(queries) {
            let tri = evaluate(q, &mut |field, value| {
                known.entry(field.to_string()).or_insert_with(|| raw.values(field)).test(value)
            });
            *verdict = or(*verdict, tri);
        }
    }
    verdicts
}

fn not(a: Tri) -> Tri {
    match a {
        Tri::True => Tri::False,
        Tri::False => Tri::True,
        Tri::Unknown => Tri::Unknown,
    }
}

fn and(a: Tri, b: Tri) -> Tri {
    match (a, b) {
        (Tri::False, _) | (_, Tri::False) => Tri::False,
        (Tri::True, Tri::True) => Tri::True,
        _ => Tri::Unknown,
    }
}

fn or(a: Tri, b: Tri) -> Tri {
    not(and(not(a), not(b)))
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::True
    } else {
        Tri::False
    }
}

/// A query's verdict, given each `field: value` condition's.
fn evaluate(q: &Query, field: &mut dyn FnMut(&str, &Value) -> Tri) -> Tri {
    match q {
        Query::Or(parts) => parts.iter().fold(Tri::False, |acc, p| or(acc, evaluate(p, field))),
        Query::And(parts) => parts.iter().fold(Tri::True, |acc, p| and(acc, evaluate(p, field))),
        Query::Not(inner) => not(evaluate(inner, field)),
        Query::Field(path, value) => field(path, value),
    }
}

/// How the `logs-aws.cloudtrail-*` mappings index a field (RULES.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// Strings up to this many UTF-16 code units; numbers and booleans as their text.
    Keyword(usize),
    /// `true`/`false` and the strings "true"/"false".
    Boolean,
    /// A flattened field: `root` (the ECS field), `member` (the raw record's member it copies)
    /// and the dotted key below the root (`None` for a query on the root itself).
    Flattened { root: &'static str, member: &'static str, key: Option<&'a str> },
}

fn kind(path: &str) -> Kind<'_> {
    for (root, member) in FLATTENED {
        if path == root {
            return Kind::Flattened { root, member, key: None };
        }
        if let Some(key) = path.strip_prefix(root).and_then(|r| r.strip_prefix('.')) {
            return Kind::Flattened { root, member, key: Some(key) };
        }
    }
    match path {
        "aws.cloudtrail.read_only" => Kind::Boolean,
        "aws.cloudtrail.request_parameters" | "aws.cloudtrail.response_elements" => {
            Kind::Keyword(LONG_KEYWORD_LIMIT)
        }
        _ => Kind::Keyword(KEYWORD_LIMIT),
    }
}

/// An indexed value: its text and its length in UTF-16 code units.
#[derive(Clone, Debug)]
struct Indexed {
    text: String,
    units: usize,
}

impl Indexed {
    fn of(text: String) -> Indexed {
        let units = text.encode_utf16().count();
        Indexed { text, units }
    }

    fn of_text(t: &Text) -> Indexed {
        Indexed { text: t.to_string_lossy(), units: t.0.len() }
    }
}

/// Keeps what the field's mapping indexes.
fn indexed_by(kind: Kind<'_>, values: Vec<Indexed>) -> Vec<Indexed> {
    match kind {
        Kind::Keyword(limit) => values.into_iter().filter(|v| v.units <= limit).collect(),
        // Other strings in a boolean field make Elasticsearch reject the document; the tests
        // do not generate them.
        Kind::Boolean => {
            values.into_iter().filter(|v| v.text == "true" || v.text == "false").collect()
        }
        Kind::Flattened { .. } => values,
    }
}

/// Whether some indexed value satisfies `value` (`field: *` when there is any).
fn satisfies(values: &[Indexed], value: &Value) -> bool {
    match value {
        Value::Exists => !values.is_empty(),
        Value::Exact(term) => values.iter().any(|v| v.text == *term),
        Value::Wildcard(pattern) => values.iter().any(|v| wildcard(pattern, &v.text)),
    }
}

/// Whether `text` as a whole matches the pattern, `*` any sequence of characters.
fn wildcard(pattern: &Pattern, text: &str) -> bool {
    // The pattern as characters, `None` for a star.
    let mut pat: Vec<Option<char>> = Vec::new();
    if pattern.leading {
        pat.push(None);
    }
    for (n, piece) in pattern.pieces.iter().enumerate() {
        if n > 0 {
            pat.push(None);
        }
        pat.extend(piece.chars().map(Some));
    }
    if pattern.trailing {
        pat.push(None);
    }
    let s: Vec<char> = text.chars().collect();
    // Textbook glob matching: on a mismatch, let the last star take one more character.
    let (mut p, mut i) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pat.get(p) {
            Some(Some(c)) if *c == s[i] => {
                p += 1;
                i += 1;
            }
            Some(None) => {
                last_star = Some((p, i));
                p += 1;
            }
            _ => match last_star {
                Some((star, taken)) => {
                    last_star = Some((star, taken + 1));
                    p = star + 1;
                    i = taken + 1;
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(Option::is_none)
}

/// The text Elasticsearch indexes for a leaf of an ECS document: a string's value, a number's
/// token as written, `true`/`false`.
fn ecs_text(leaf: &Json) -> Option<Indexed> {
    match leaf {
        Json::String(t) => Some(Indexed::of_text(t)),
        Json::Number(token) => Some(Indexed::of(token.clone())),
        Json::Bool(b) => Some(Indexed::of(b.to_string())),
        _ => None,
    }
}

/// An ECS document's leaves, with their paths as text.
struct Ecs<'a> {
    leaves: Vec<(String, &'a Json)>,
}

impl<'a> Ecs<'a> {
    fn new(doc: &'a Json) -> Ecs<'a> {
        Ecs { leaves: leaves(doc).into_iter().map(|(p, v)| (p.to_string_lossy(), v)).collect() }
    }

    /// The non-null leaves at `path` exactly.
    fn present(&self, path: &str) -> Vec<&'a Json> {
        self.leaves
            .iter()
            .filter(|(p, v)| p == path && **v != Json::Null)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The values `field` has, as its mapping indexes them.
    fn values(&self, field: &str, assume_dataset: Option<&str>) -> Vec<Indexed> {
        let kind = kind(field);
        let found: Vec<&Json> = match kind {
            Kind::Flattened { root, key: None, .. } => {
                let prefix = format!("{root}.");
                self.leaves
                    .iter()
                    .filter(|(p, v)| p.starts_with(&prefix) && **v != Json::Null)
                    .map(|(_, v)| *v)
                    .collect()
            }
            _ => self.present(field),
        };
        let mut values: Vec<Indexed> = found.into_iter().filter_map(ecs_text).collect();
        // The declared dataset stands in for a missing one (RULE.md section 4), field by field.
        if let Some(dataset) = assume_dataset {
            if DATASET_FIELDS.contains(&field) && self.present(field).is_empty() {
                values = vec![Indexed::of(dataset.to_string())];
            }
        }
        indexed_by(kind, values)
    }
}

/// Whether Elasticsearch accepts the document's flattened fields: no object deeper than
/// [`FLATTENED_DEPTH_LIMIT`] levels, no leaf whose key (its dotted path below the field) and
/// value take more than [`FLATTENED_LEAF_LIMIT`] bytes together.
///
/// Levels are counted as Elasticsearch's flattened parser counts them: the field's own object
/// is level 1 and each object written inside it one more, whatever its key; the parser does not
/// split keys, so a dotted key inside is one level. A dotted key that reaches past the field
/// (`{"aws.cloudtrail.flattened.request_parameters.a.b": {...}}`) is, as RULE.md section 2
/// says, the same as nested objects down to the field, and the rest of it one key there.
fn within_flattened_limits(doc: &Json) -> bool {
    /// `level`: the level `value` has as an object when it is inside a flattened field.
    fn walk(value: &Json, path: &str, level: Option<usize>) -> bool {
        match value {
            Json::Object(members) => {
                if level.is_some_and(|l| l > FLATTENED_DEPTH_LIMIT) {
                    return false;
                }
                members.iter().all(|(key, v)| {
                    let key = key.to_string_lossy();
                    let p = if path.is_empty() { key } else { format!("{path}.{key}") };
                    let child = match level {
                        Some(l) => Some(l + 1),
                        None if FLATTENED.iter().any(|(root, _)| p == *root) => Some(1),
                        None if flattened_key(&p).is_some() => Some(2),
                        // Nothing below leads to a flattened field.
                        None if !FLATTENED.iter().any(|(root, _)| {
                            root.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('.'))
                        }) =>
                        {
                            return true
                        }
                        None => None,
                    };
                    walk(v, &p, child)
                })
            }
            Json::Array(items) => items.iter().all(|v| walk(v, path, level)),
            Json::Null => true,
            leaf => match (level, flattened_key(path), ecs_text(leaf)) {
                (Some(_), Some(key), Some(v)) => key.len() + v.text.len() <= FLATTENED_LEAF_LIMIT,
                _ => true,
            },
        }
    }
    walk(doc, "", None)
}

/// The key below a flattened field of a dotted path inside one.
fn flattened_key(path: &str) -> Option<&str> {
    FLATTENED.iter().find_map(|(root, _)| path.strip_prefix(root)?.strip_prefix('.'))
}

/// What a raw record gives a field.
enum RawValues {
    /// The pipeline computes it from data the record does not hold (RULES.md section 4).
    Unknown,
    /// These values (before the mapping's `ignore_above`).
    Known(Vec<Indexed>),
    /// Some string that equals no term (`event.action` from a non-string `eventName`), and
    /// whether it is surely short enough to be indexed.
    Rendered { short: bool },
}

impl RawValues {
    /// Whether `field: value` holds, is false, or cannot be told from the record.
    fn test(&self, value: &Value) -> Tri {
        match self {
            RawValues::Unknown => Tri::Unknown,
            RawValues::Known(values) => tri(satisfies(values, value)),
            RawValues::Rendered { short } => match value {
                Value::Exists if *short => Tri::True,
                Value::Exact(_) => Tri::False,
                Value::Exists | Value::Wildcard(_) => Tri::Unknown,
            },
        }
    }
}

/// A raw record as the ingest pipeline sees it after its first script.
struct Raw {
    record: Json,
}

impl Raw {
    fn new(record: &Json) -> Raw {
        Raw { record: without_empty(record).unwrap_or(Json::Object(Vec::new())) }
    }

    /// The value at a path of object members.
    fn at(&self, path: &[&str]) -> Option<&Json> {
        path.iter().try_fold(&self.record, |v, key| v.get(key))
    }

    /// The values the pipeline copies or renames from `path` (arrays flattened).
    fn copied(&self, path: &[&str]) -> Vec<Indexed> {
        self.at(path).map(java_scalars).unwrap_or_default()
    }

    /// What the record gives `field`, as its mapping indexes it.
    fn values(&self, field: &str) -> RawValues {
        let kind = kind(field);
        let values = match kind {
            Kind::Flattened { member, key, .. } => self.flattened(member, key),
            _ => self.mapped(field),
        };
        match values {
            RawValues::Known(values) => RawValues::Known(indexed_by(kind, values)),
            other => other,
        }
    }

    /// Whether the flattened copies the pipeline makes of the record's members (RULES.md
    /// section 4: those whose `Map.toString()` form is short enough) keep within Elasticsearch's
    /// limits (section 3), counted as [`within_flattened_limits`] counts them in an ECS document.
    fn within_flattened_limits(&self) -> bool {
        fn fits(value: &Json, key: &str, level: usize) -> bool {
            match value {
                Json::Object(members) => {
                    level <= FLATTENED_DEPTH_LIMIT
                        && members.iter().all(|(k, v)| {
                            let k = k.to_string_lossy();
                            let key = if key.is_empty() { k } else { format!("{key}.{k}") };
                            fits(v, &key, level + 1)
                        })
                }
                Json::Array(items) => items.iter().all(|v| fits(v, key, level)),
                leaf => {
                    key.is_empty()
                        || java_scalars(leaf)
                            .iter()
                            .all(|v| key.len() + v.text.len() <= FLATTENED_LEAF_LIMIT)
                }
            }
        }
        FLATTENED.iter().all(|(_, member)| match self.record.get(member) {
            Some(value) if java_string_length(value) < TO_STRING_LIMIT => fits(value, "", 1),
            _ => true,
        })
    }

    /// A leaf of a flattened copy of `member` (every leaf for the root): unknown when the
    /// member's `Map.toString()` form is too long for the pipeline to copy it.
    fn flattened(&self, member: &str, key: Option<&str>) -> RawValues {
        let Some(value) = self.record.get(member) else { return RawValues::Known(Vec::new()) };
        if java_string_length(value) >= TO_STRING_LIMIT {
            return RawValues::Unknown;
        }
        RawValues::Known(
            leaves(value)
                .into_iter()
                .filter(|(path, _)| key.is_none_or(|k| path.is(k)))
                .flat_map(|(_, leaf)| java_scalars(leaf))
                .collect(),
        )
    }

    /// The table of RULES.md section 4; any other field is unknown.
    fn mapped(&self, field: &str) -> RawValues {
        let path: &[&str] = match field {
            "event.dataset" | "data_stream.dataset" => {
                return RawValues::Known(vec![Indexed::of(CLOUDTRAIL.into())])
            }
            "event.action" => {
                return match self.record.get("eventName") {
                    None => RawValues::Known(Vec::new()),
                    Some(Json::String(name)) => RawValues::Known(vec![Indexed::of_text(name)]),
                    // The rendering is not specified beyond "a string like `{0=DisableKey}`":
                    // one of a value whose own string form is at most half the limit is surely
                    // indexed.
                    Some(other) => RawValues::Rendered {
                        short: java_string_length(other) <= KEYWORD_LIMIT / 2,
                    },
                };
            }
            "event.outcome" => return RawValues::Known(vec![Indexed::of(self.outcome())]),
            "source.ip" => {
                return RawValues::Known(match self.record.get("sourceIPAddress") {
                    Some(Json::String(s)) if s.to_string_lossy().parse::<IpAddr>().is_ok() => {
                        vec![Indexed::of_text(s)]
                    }
                    _ => Vec::new(),
                })
            }
            "user.name" => return RawValues::Known(self.user_name()),
            "user.id" => {
                let identity_center = self
                    .at(&["userIdentity", "type"])
                    .is_some_and(|t| t.is_str("IdentityCenterUser"));
                return RawValues::Known(if identity_center {
                    self.copied(&["userIdentity", "onBehalfOf", "userId"])
                } else {
                    self.copied(&["userIdentity", "principalId"])
                });
            }
            "cloud.account.id" => {
                return RawValues::Known(match self.at(&["userIdentity", "accountId"]) {
                    Some(v) => java_scalars(v),
                    None => self.copied(&["recipientAccountId"]),
                })
            }
            "event.provider" => &["eventSource"],
            "event.id" => &["eventID"],
            "cloud.region" => &["awsRegion"],
            "source.address" => &["sourceIPAddress"],
            "user_agent.original" => &["userAgent"],
            "aws.cloudtrail.user_identity.type" => &["userIdentity", "type"],
            "aws.cloudtrail.user_identity.arn" => &["userIdentity", "arn"],
            "aws.cloudtrail.user_identity.access_key_id" => &["userIdentity", "accessKeyId"],
            "aws.cloudtrail.user_identity.invoked_by" => &["userIdentity", "invokedBy"],
            "aws.cloudtrail.user_identity.session_context.session_issuer.principal_id" => {
                &["userIdentity", "sessionContext", "sessionIssuer", "principalId"]
            }
            "aws.cloudtrail.user_identity.session_context.session_issuer.arn" => {
                &["userIdentity", "sessionContext", "sessionIssuer", "arn"]
            }
            "aws.cloudtrail.user_identity.session_context.session_issuer.account_id" => {
                &["userIdentity", "sessionContext", "sessionIssuer", "accountId"]
            }
            "aws.cloudtrail.user_identity.session_context.session_issuer.type" => {
                &["userIdentity", "sessionContext", "sessionIssuer", "type"]
            }
            "aws.cloudtrail.error_code" => &["errorCode"],
            "aws.cloudtrail.error_message" => &["errorMessage"],
            "aws.cloudtrail.event_type" => &["eventType"],
            "aws.cloudtrail.event_category" => &["eventCategory"],
            "aws.cloudtrail.recipient_account_id" => &["recipientAccountId"],
            "aws.cloudtrail.request_id" => &["requestID"],
            "aws.cloudtrail.management_event" => &["managementEvent"],
            "aws.cloudtrail.read_only" => &["readOnly"],
            _ => return RawValues::Unknown,
        };
        RawValues::Known(self.copied(path))
    }

    /// `failure` when `errorCode` or `errorMessage` is there, else `success`; for a
    /// `ConsoleLogin` event, `responseElements.ConsoleLogin` lowercased when it is there.
    fn outcome(&self) -> String {
        let console_login = self.record.get("eventName").is_some_and(|n| n.is_str("ConsoleLogin"));
        if console_login {
            // The tests give `ConsoleLogin` only string values.
            if let Some(Json::String(s)) = self.at(&["responseElements", "ConsoleLogin"]) {
                return s.to_string_lossy().to_lowercase();
            }
        }
        let failed = ["errorCode", "errorMessage"].iter().any(|k| self.record.get(k).is_some());
        if failed { "failure" } else { "success" }.to_string()
    }

    /// `user.name`: the session issuer's user name for assumed roles and federated users when
    /// there is one, else `userIdentity.userName`, else for `UserAuthentication` events
    /// `additionalEventData.UserName`.
    fn user_name(&self) -> Vec<Indexed> {
        let issuer = self
            .at(&["userIdentity", "type"])
            .is_some_and(|t| t.is_str("AssumedRole") || t.is_str("FederatedUser"));
        let from_issuer = self
            .at(&["userIdentity", "sessionContext", "sessionIssuer", "userName"])
            .filter(|_| issuer);
        let authentication =
            self.record.get("eventName").is_some_and(|n| n.is_str("UserAuthentication"));
        let from_event = self.at(&["additionalEventData", "UserName"]).filter(|_| authentication);
        from_issuer
            .or_else(|| self.at(&["userIdentity", "userName"]))
            .or(from_event)
            .map(java_scalars)
            .unwrap_or_default()
    }
}

/// The scalars of a value the pipeline parsed (arrays flattened; objects hold no value at this
/// path), as Elasticsearch indexes them from the pipeline's output.
fn java_scalars(value: &Json) -> Vec<Indexed> {
    match value {
        Json::String(t) => vec![Indexed::of_text(t)],
        Json::Number(token) => vec![Indexed::of(java_number(token))],
        Json::Bool(b) => vec![Indexed::of(b.to_string())],
        Json::Array(items) => items.iter().flat_map(java_scalars).collect(),
        Json::Null | Json::Object(_) => Vec::new(),
    }
}

/// The length in UTF-16 code units of Java's `toString()` of the value the pipeline parsed:
/// `{k=v, k2=v2}`, `[a, b]`, strings as they are, numbers as [`java_number`].
pub fn java_string_length(value: &Json) -> usize {
    let joined = |lengths: Vec<usize>| {
        2 + lengths.iter().sum::<usize>() + 2 * lengths.len().saturating_sub(1)
    };
    match value {
        Json::Null => 4,
        Json::Bool(b) => b.to_string().len(),
        Json::Number(token) => java_number(token).len(),
        Json::String(t) => t.0.len(),
        Json::Array(items) => joined(items.iter().map(java_string_length).collect()),
        Json::Object(members) => {
            joined(members.iter().map(|(k, v)| k.0.len() + 1 + java_string_length(v)).collect())
        }
    }
}

/// A JSON number token as Jackson reads it and Java writes it back: an integer token as its
/// digits (any size, `-0` is `0`), any other as Java's `Double.toString`.
pub fn java_number(token: &str) -> String {
    if token.contains(['.', 'e', 'E']) {
        java_double(token.parse::<f64>().expect("a JSON number"))
    } else if token.trim_start_matches('-').bytes().all(|b| b == b'0') {
        "0".to_string()
    } else {
        token.to_string()
    }
}

/// Java's `Double.toString` (JDK 19 and later): the shortest decimal that reads back as `f`
/// (for a one-digit shortest, the closest of those with one or two digits), written as
/// `ddd.ddd` between 10^-3 and 10^7 and as `d.dddEn` outside.
pub fn java_double(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f.is_infinite() {
        return format!("{sign}Infinity");
    }
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    let (digits, exp) = java_digits(f.abs());
    if (-3..7).contains(&exp) {
        let (int, frac) = if exp >= 0 {
            let split = (exp + 1) as usize;
            let mut int: String = digits.chars().take(split).collect();
            while int.len() < split {
                int.push('0');
            }
            let frac: String = digits.chars().skip(split).collect();
            (int, frac)
        } else {
            ("0".to_string(), format!("{}{digits}", "0".repeat((-exp - 1) as usize)))
        };
        let frac = if frac.is_empty() { "0".to_string() } else { frac };
        format!("{sign}{int}.{frac}")
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        format!("{sign}{first}.{rest}E{exp}")
    }
}

/// The significant digits (no trailing zeros) and decimal exponent of Java's choice for a
/// positive finite `f`: `f` reads as `d.ddd × 10^exp`.
fn java_digits(f: f64) -> (String, i32) {
    let shortest = format!("{f:e}");
    let (mantissa, exp) = shortest.split_once('e').expect("scientific notation");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().expect("an exponent");
    // Only a subnormal's rounding interval is wide enough to hold a two-digit decimal other
    // than `d.0`; Java then takes the one or two-digit decimal closest to `f`.
    if digits.len() > 1 || f >= f64::MIN_POSITIVE {
        return (digits, exp);
    }
    // Candidates as (c, q): c × 10^q, measured in units of 10^(exp - 2).
    let mut candidates: Vec<(u64, i32)> = Vec::new();
    for q in [exp - 2, exp - 1, exp] {
        for c in 1..=99u64 {
            if format!("{c}e{q}").parse::<f64>() == Ok(f) {
                candidates.push((c, q));
            }
        }
    }
    // f = k × 2^-1074; in units of 10^(exp-2): k × 2^-1074 × 10^(2-exp), computed in steps.
    let k = f.to_bits() as f64;
    let scaled = k * (f64::from_bits(1) * 1e300) * 10f64.powi(2 - exp - 300);
    let distance = |(c, q): (u64, i32)| ((c as f64) * 10f64.powi(q - (exp - 2)) - scaled).abs();
    let best = candidates
        .iter()
        .copied()
        .min_by(|a, b| {
            distance(*a).total_cmp(&distance(*b)).then_with(|| (a.0 % 2).cmp(&(b.0 % 2)))
        })
        .expect("the shortest decimal itself reads back");
    let (c, q) = best;
    let text = c.to_string();
    let trimmed = text.trim_end_matches('0');
    (trimmed.to_string(), q + text.len() as i32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Query {
        kmsguard_matcher::kql::parse(text).unwrap()
    }

    fn verdicts(queries: &[&str], dataset: Option<&str>, line: &str) -> Option<(Shape, Vec<Tri>)> {
        let queries: Vec<Query> = queries.iter().map(|t| q(t)).collect();
        evaluate_pack(&queries, dataset, line.as_bytes())
    }

    #[test]
    fn java_numbers() {
        for (token, java) in [
            ("1e2", "100.0"),
            ("1.50", "1.5"),
            ("1e-7", "1.0E-7"),
            ("22", "22"),
            ("-0", "0"),
            ("-0.0", "-0.0"),
            ("22.0", "22.0"),
            ("1e7", "1.0E7"),
            ("9999999", "9999999"),
            ("9999999.0", "9999999.0"),
            ("0.001", "0.001"),
            ("0.0009", "9.0E-4"),
            ("123456789012345678901234567890", "123456789012345678901234567890"),
            ("1.2345e-5", "1.2345E-5"),
            ("-1.5E+3", "-1500.0"),
            ("1e400", "Infinity"),
            ("-1e400", "-Infinity"),
            ("1e-400", "0.0"),
            ("5e-324", "4.9E-324"),
            ("1e-323", "9.9E-324"),
            ("1.7976931348623157e308", "1.7976931348623157E308"),
            ("0.1", "0.1"),
            ("100", "100"),
            ("1E0", "1.0"),
            ("123.456e2", "12345.6"),
        ] {
            assert_eq!(java_number(token), java, "{token}");
        }
    }

    #[test]
    fn wildcards() {
        let p = |text: &str| match q(&format!("f:{text}")) {
            Query::Field(_, Value::Wildcard(p)) => p,
            other => panic!("{other:?}"),
        };
        assert!(wildcard(&p("*terraform*"), "x-terraform-y"));
        assert!(!wildcard(&p("*terraform*"), "Terraform"));
        assert!(wildcard(&p("a*b*c"), "abc") && !wildcard(&p("a*b*c"), "acb"));
        assert!(wildcard(&p("ab*ab"), "abab") && !wildcard(&p("ab*ab"), "aba"));
        assert!(wildcard(&p("*.pem"), "x.pemy.pem") && !wildcard(&p("*.pem"), "x.pemx"));
        assert!(wildcard(&p("a*"), "a") && !wildcard(&p("a*a"), "a"));
        assert!(wildcard(&p(r"\**"), "*x") && !wildcard(&p(r"\**"), "x"));
    }

    #[test]
    fn shapes_and_kleene() {
        let rule =
            r#"event.provider: kms.amazonaws.com and not source.as.organization.name: Amazon*"#;
        let raw = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;
        assert_eq!(verdicts(&[rule], None, raw), Some((Shape::Raw, vec![Tri::Unknown])));
        let other = r#"{"eventSource":"s3.amazonaws.com","eventName":"DisableKey"}"#;
        assert_eq!(verdicts(&[rule], None, other), Some((Shape::Raw, vec![Tri::False])));
        let file = format!(r#"{{"Records":[{other},{raw}]}}"#);
        assert_eq!(verdicts(&[rule], None, &file), Some((Shape::Records, vec![Tri::Unknown])));
        let ecs = r#"{"event.provider":"kms.amazonaws.com","source":{"as":{"organization":{"name":"Amazon.com"}}}}"#;
        assert_eq!(verdicts(&[rule], None, ecs), Some((Shape::Ecs, vec![Tri::False])));
        let envelope = format!(r#"{{"message":{}}}"#, serde_json_string(raw));
        assert_eq!(verdicts(&[rule], None, &envelope), Some((Shape::Envelope, vec![Tri::Unknown])));
        assert_eq!(verdicts(&[rule], None, "[]"), None);
    }

    fn serde_json_string(s: &str) -> String {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }

    #[test]
    fn field_values() {
        let ecs = r#"{"a":{"port":22,"big":1e2,"flag":true},"event":{"action":"x"}}"#;
        let rules = ["a.port: 22", "a.port: 22.0", "a.big: 1e2", "a.flag: true", "a.port: *"];
        let v = verdicts(&rules, None, ecs).unwrap().1;
        assert_eq!(v, [Tri::True, Tri::False, Tri::True, Tri::True, Tri::True]);
        let raw = r#"{"eventSource":"x","eventName":"y","requestParameters":{"port":22,"big":1e2,"t":true,"n":null,"e":"-"}}"#;
        let rules = [
            "aws.cloudtrail.flattened.request_parameters.port: 22",
            "aws.cloudtrail.flattened.request_parameters.big: 100.0",
            "aws.cloudtrail.flattened.request_parameters.t: true",
            "aws.cloudtrail.flattened.request_parameters.n: *",
            "aws.cloudtrail.flattened.request_parameters.e: *",
            "aws.cloudtrail.request_parameters: *",
        ];
        let v = verdicts(&rules, None, raw).unwrap().1;
        assert_eq!(v, [Tri::True, Tri::True, Tri::True, Tri::False, Tri::False, Tri::Unknown]);
        let long = "x".repeat(1025);
        let ecs = format!(
            r#"{{"event":{{"action":"{long}"}},"aws.cloudtrail.flattened.request_parameters.k":"{long}"}}"#
        );
        let rules = ["event.action: *", "aws.cloudtrail.flattened.request_parameters.k: *"];
        assert_eq!(verdicts(&rules, None, &ecs).unwrap().1, [Tri::False, Tri::True]);
    }

    /// A raw record's document is refused when the flattened copies the pipeline makes of it
    /// break the limits: no rule matches it, the other records of its file are decided.
    #[test]
    fn raw_flattened_limits() {
        let record = |params: &str| {
            format!(r#"{{"eventSource":"s","eventName":"X","requestParameters":{params}}}"#)
        };
        let nested =
            |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        let fires = |line: &str| {
            verdicts(&["event.action: X", "not cloud.region: b"], None, line).unwrap().1
        };
        assert_eq!(fires(&record(&nested(20))), [Tri::True, Tri::True]);
        assert_eq!(fires(&record(&nested(21))), [Tri::False, Tri::False]);
        let leaf = |n: usize| record(&format!(r#"{{"k":"{}"}}"#, "\u{20AC}".repeat(n)));
        assert_eq!(fires(&leaf(10_921)), [Tri::True, Tri::True]);
        assert_eq!(fires(&leaf(10_922)), [Tri::False, Tri::False]);
        // Not copied at all: the record is indexed, and its flattened fields unknown.
        let long = record(&format!(r#"{{"k":"{}"}}"#, "v".repeat(40_000)));
        assert_eq!(fires(&long), [Tri::True, Tri::True]);
        let file = format!(r#"{{"Records":[{},{}]}}"#, record(&nested(21)), record("{}"));
        assert_eq!(fires(&file), [Tri::True, Tri::True]);
    }

    #[test]
    fn flattened_limits() {
        let leaf = |n: usize| {
            format!(
                r#"{{"aws.cloudtrail.flattened.request_parameters":{{"k":"{}"}}}}"#,
                "x".repeat(n)
            )
        };
        assert!(verdicts(&["a: *"], None, &leaf(32_765)).is_some());
        assert!(verdicts(&["a: *"], None, &leaf(32_766)).is_none());
        let deep = |levels: usize| {
            let inner = format!("{}1{}", r#"{"a":"#.repeat(levels - 1), "}".repeat(levels - 1));
            format!(r#"{{"aws.cloudtrail.flattened.response_elements":{{"x":{inner}}}}}"#)
        };
        // The field's object is level 1, `x`'s object level 2, ...
        assert!(verdicts(&["a: *"], None, &deep(20)).is_some());
        assert!(verdicts(&["a: *"], None, &deep(21)).is_none());
        // An object in an array is a level; a dotted key inside the field is one level.
        let chain = |levels: usize| {
            let mut chain = "1".to_string();
            for level in (1..=levels).rev() {
                chain = match level {
                    3 => format!(r#"[{{"a":{chain}}}]"#),
                    _ => format!(r#"{{"a":{chain}}}"#),
                };
            }
            format!(r#"{{"aws.cloudtrail.flattened.response_elements":{chain}}}"#)
        };
        assert!(verdicts(&["a: *"], None, &chain(20)).is_some());
        assert!(verdicts(&["a: *"], None, &chain(21)).is_none());
        let dotted = format!(
            r#"{{"aws.cloudtrail.flattened.request_parameters":{{"{}":{{"x":1}}}}}}"#,
            vec!["d"; 25].join(".")
        );
        assert!(verdicts(&["a: *"], None, &dotted).is_some());
        // A dotted key past the field is the nested objects it stands for (RULE.md section 2).
        let past = format!(
            r#"{{"aws.cloudtrail.flattened.request_parameters.k":"{}"}}"#,
            "x".repeat(32_766)
        );
        assert!(verdicts(&["a: *"], None, &past).is_none());
        let root = [
            "aws.cloudtrail.flattened.request_parameters: x",
            "aws.cloudtrail.flattened.request_parameters.k: x",
        ];
        let past = r#"{"aws.cloudtrail":{"flattened.request_parameters.k":"x"}}"#;
        assert_eq!(verdicts(&root, None, past).unwrap().1, [Tri::True, Tri::True]);
    }

    #[test]
    fn dataset_is_assumed_field_by_field() {
        let rules = ["event.dataset: aws.cloudtrail", "data_stream.dataset: aws.cloudtrail"];
        let doc = r#"{"event":{"dataset":"other"}}"#;
        assert_eq!(verdicts(&rules, Some(CLOUDTRAIL), doc).unwrap().1, [Tri::False, Tri::True]);
        assert_eq!(verdicts(&rules, None, doc).unwrap().1, [Tri::False, Tri::False]);
    }
}
