//! The exact decision: parse a candidate with simd-json and read the rule's fields off the tape.

use simd_json::{tape::Node, Buffers, StaticNode, Tape};

use crate::normalize::normalize;
use crate::rule::{
    is_dataset_field, Rule, CLOUDTRAIL_DATASET, DATA_STREAM_DATASET, EVENT_DATASET, OUTCOME_FIELD,
    RAW_ERROR_KEYS, RAW_FIELD_MAP,
};
use crate::shape::{Shape, Shapes};

/// Deepest nesting accepted, as Elasticsearch's JSON parser (Jackson's default
/// `maxNestingDepth`). Deeper documents are rejected by Elasticsearch, so they never match.
pub const MAX_DEPTH: usize = 1000;

/// The `detail-type` of an EventBridge event that carries a CloudTrail record in `detail`.
const EVENTBRIDGE_DETAIL_TYPE: &str = "AWS API Call via CloudTrail";

/// What the exact evaluator decided about one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The document matches the rule; the shape it was recognised as.
    Match(Shape),
    /// A valid document that does not match; the shape it was recognised as, if any applied.
    NoMatch(Option<Shape>),
    /// Not a document Elasticsearch would index (spec section 3): invalid JSON or UTF-8, not an
    /// object, trailing data, a repeated key, or nesting deeper than [`MAX_DEPTH`]. Never matches.
    Invalid,
}

impl Verdict {
    /// Whether this is [`Verdict::Match`].
    pub fn is_match(&self) -> bool {
        matches!(self, Verdict::Match(_))
    }

    /// The shape the document was recognised as, if any.
    pub fn shape(&self) -> Option<Shape> {
        match *self {
            Verdict::Match(s) => Some(s),
            Verdict::NoMatch(s) => s,
            Verdict::Invalid => None,
        }
    }
}

/// A field path looked up with Elasticsearch semantics, and the terms it is compared with.
#[derive(Clone, Debug)]
struct Probe {
    field: &'static str,
    terms: &'static [&'static str],
}

/// What a document holds at a probe's field.
#[derive(Clone, Copy, Debug, Default)]
struct Hit {
    /// Some non-null leaf sits at the path.
    has_value: bool,
    /// Some string leaf at the path equals one of the terms.
    equal: bool,
}

/// Most probes one evaluator tracks: the rule's clauses plus the two dataset fields.
const MAX_PROBES: usize = 8;
/// Marks a probe whose field the current path has left.
const DEAD: u16 = u16::MAX;

/// A reusable simd-json parse: scratch copy of the input, parser buffers and tape storage.
struct Parser {
    scratch: Vec<u8>,
    buffers: Buffers,
    nodes: Vec<Node<'static>>,
}

impl Parser {
    fn new() -> Parser {
        Parser {
            scratch: Vec::new(),
            buffers: Buffers::with_max_depth(4096, MAX_DEPTH),
            nodes: Vec::new(),
        }
    }

    /// Parses a copy of `input` and hands its tape to `f`; `None` when `input` is not JSON.
    ///
    /// simd-json rewrites strings in place even when it fails, so the retry after
    /// [`normalize`] starts from a fresh copy. The tape's storage is kept for the next call.
    fn with_tape<R>(&mut self, input: &[u8], f: impl FnOnce(&[Node]) -> R) -> Option<R> {
        let len = input.len();
        self.fill(input);
        let mut tape = Tape(std::mem::take(&mut self.nodes)).reset();
        if simd_json::fill_tape_padded(&mut self.scratch, len, &mut self.buffers, &mut tape).is_ok()
        {
            let result = f(&tape.0);
            self.nodes = tape.reset().0;
            return Some(result);
        }
        self.nodes = tape.reset().0;
        self.fill(input);
        if !normalize(&mut self.scratch[..len]) {
            return None;
        }
        let mut tape = Tape(std::mem::take(&mut self.nodes)).reset();
        let ok = simd_json::fill_tape_padded(&mut self.scratch, len, &mut self.buffers, &mut tape)
            .is_ok();
        let result = ok.then(|| f(&tape.0));
        self.nodes = tape.reset().0;
        result
    }

    fn fill(&mut self, input: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(input);
        self.scratch.resize(input.len() + simd_json::INPUT_PADDING, b' ');
    }
}

/// Evaluates documents exactly against a rule. Created by [`crate::Matcher`].
pub(crate) struct Evaluator {
    ctx: Ctx,
    outer: Parser,
    inner: Parser,
    keys: Vec<(u64, u32)>,
}

/// The immutable part of an evaluator: the rule and what was derived from it.
struct Ctx {
    rule: Rule,
    shapes: Shapes,
    assume_dataset: Option<String>,
    probes: Vec<Probe>,
    /// Index of the rule's dataset clause among the probes.
    dataset_clause: Option<usize>,
    /// Indexes of the `event.dataset` and `data_stream.dataset` probes that recognise envelopes.
    envelope_probes: [usize; 2],
}

impl Evaluator {
    pub(crate) fn new(rule: Rule, shapes: Shapes, assume_dataset: Option<String>) -> Evaluator {
        let mut probes: Vec<Probe> =
            rule.clauses.iter().map(|c| Probe { field: c.field, terms: c.terms }).collect();
        let dataset_clause = rule.clauses.iter().position(|c| is_dataset_field(c.field));
        let mut envelope_probes = [0; 2];
        for (slot, field) in envelope_probes.iter_mut().zip([EVENT_DATASET, DATA_STREAM_DATASET]) {
            *slot = probes.len();
            probes.push(Probe { field, terms: &[CLOUDTRAIL_DATASET] });
        }
        assert!(probes.len() <= MAX_PROBES, "a rule has at most {} clauses", MAX_PROBES - 2);
        assert!(probes.iter().all(|p| p.field.len() < usize::from(DEAD)), "field path too long");
        let ctx = Ctx { rule, shapes, assume_dataset, probes, dataset_clause, envelope_probes };
        Evaluator { ctx, outer: Parser::new(), inner: Parser::new(), keys: Vec::new() }
    }

    pub(crate) fn rule(&self) -> &Rule {
        &self.ctx.rule
    }

    /// Decides one line (without its line terminator).
    pub(crate) fn evaluate(&mut self, line: &[u8]) -> Verdict {
        let Evaluator { ctx, outer, inner, keys } = self;
        outer
            .with_tape(line, |tape| {
                let mut hits = [Hit::default(); MAX_PROBES];
                if !valid_object(tape, &ctx.probes, &mut hits, keys) {
                    return Verdict::Invalid;
                }
                ctx.decide(tape, &hits, inner, keys)
            })
            .unwrap_or(Verdict::Invalid)
    }

    /// Decides one raw CloudTrail record on its own (an element of a `Records` array).
    pub(crate) fn evaluate_record(&mut self, record: &[u8]) -> Verdict {
        let Evaluator { ctx, inner, keys, .. } = self;
        inner
            .with_tape(record, |tape| {
                let mut hits = [Hit::default(); MAX_PROBES];
                if !valid_object(tape, &[], &mut hits, keys) {
                    Verdict::Invalid
                } else if is_raw_record(tape, 0) {
                    ctx.verdict(ctx.raw_matches(tape, 0), Shape::Raw)
                } else {
                    Verdict::NoMatch(None)
                }
            })
            .unwrap_or(Verdict::Invalid)
    }
}

/// Whether a parsed document is an object without repeated keys, recording the probes' hits.
fn valid_object(
    tape: &[Node],
    probes: &[Probe],
    hits: &mut [Hit; MAX_PROBES],
    keys: &mut Vec<(u64, u32)>,
) -> bool {
    matches!(tape.first(), Some(Node::Object { .. }))
        && walk(tape, 0, &[0; MAX_PROBES], true, probes, hits, keys).is_ok()
}

impl Ctx {
    /// Recognises the shape of a valid, duplicate-free object (spec section 4: the first shape
    /// that applies decides) and evaluates it.
    fn decide(
        &self,
        tape: &[Node],
        hits: &[Hit],
        inner: &mut Parser,
        keys: &mut Vec<(u64, u32)>,
    ) -> Verdict {
        let shapes = self.shapes;
        if shapes.contains(Shape::Records) {
            if let Some(i) = member(tape, 0, "Records") {
                if let Node::Array { len, .. } = tape[i] {
                    if len > 0 && children(tape, i).all(|r| is_raw_record(tape, r)) {
                        let any = children(tape, i).any(|r| self.raw_matches(tape, r));
                        return self.verdict(any, Shape::Records);
                    }
                }
            }
        }
        if shapes.contains(Shape::EventBridge) {
            let detail_type = member(tape, 0, "detail-type").map(|i| tape[i]);
            if detail_type == Some(Node::String(EVENTBRIDGE_DETAIL_TYPE)) {
                if let Some(d) = member(tape, 0, "detail").filter(|&d| is_raw_record(tape, d)) {
                    return self.verdict(self.raw_matches(tape, d), Shape::EventBridge);
                }
            }
        }
        if shapes.contains(Shape::Raw) && is_raw_record(tape, 0) {
            return self.verdict(self.raw_matches(tape, 0), Shape::Raw);
        }
        if shapes.contains(Shape::Envelope) && self.envelope_dataset(hits) {
            if let Some(Node::String(message)) = member(tape, 0, "message").map(|i| tape[i]) {
                let inner_verdict = inner.with_tape(message.as_bytes(), |t| {
                    let mut inner_hits = [Hit::default(); MAX_PROBES];
                    (valid_object(t, &[], &mut inner_hits, keys) && is_raw_record(t, 0))
                        .then(|| self.raw_matches(t, 0))
                });
                if let Some(Some(matched)) = inner_verdict {
                    return self.verdict(matched, Shape::Envelope);
                }
            }
        }
        if shapes.contains(Shape::Ecs) {
            let matched = (0..self.rule.clauses.len()).all(|c| {
                let hit = hits[c];
                hit.equal
                    || (Some(c) == self.dataset_clause
                        && !hit.has_value
                        && self.assumed_dataset_in(self.probes[c].terms))
            });
            return self.verdict(matched, Shape::Ecs);
        }
        Verdict::NoMatch(None)
    }

    fn verdict(&self, matched: bool, shape: Shape) -> Verdict {
        if matched {
            Verdict::Match(shape)
        } else {
            Verdict::NoMatch(Some(shape))
        }
    }

    /// Whether the declared dataset is one of `terms`.
    fn assumed_dataset_in(&self, terms: &[&str]) -> bool {
        self.assume_dataset.as_deref().is_some_and(|d| terms.contains(&d))
    }

    /// Whether a document's dataset makes it a shipper envelope for CloudTrail.
    fn envelope_dataset(&self, hits: &[Hit]) -> bool {
        let [a, b] = self.envelope_probes.map(|p| hits[p]);
        a.equal
            || b.equal
            || (!a.has_value && !b.has_value && self.assumed_dataset_in(&[CLOUDTRAIL_DATASET]))
    }

    /// Evaluates the rule on a raw record as the Elastic AWS integration would index it.
    fn raw_matches(&self, tape: &[Node], record: usize) -> bool {
        self.rule.clauses.iter().all(|clause| {
            if is_dataset_field(clause.field) {
                clause.terms.contains(&CLOUDTRAIL_DATASET)
            } else if clause.field == OUTCOME_FIELD {
                let failed = RAW_ERROR_KEYS
                    .iter()
                    .any(|k| member(tape, record, k).is_some_and(|v| !is_empty(tape, v)));
                clause.terms.contains(&if failed { "failure" } else { "success" })
            } else if let Some((_, key)) =
                RAW_FIELD_MAP.iter().find(|(ecs, _)| *ecs == clause.field)
            {
                member(tape, record, key).is_some_and(|v| any_string_in(tape, v, clause.terms))
            } else {
                false
            }
        })
    }
}

/// Walks the value at `i` with the probes' matched prefix lengths in `state`, recording what each
/// probe's field holds and rejecting repeated keys. Returns the index just past the value.
///
/// Paths follow Elasticsearch: an object member extends the path by `.key`, array elements keep
/// it, so dotted keys, nested objects and arrays of objects all reach the same field.
fn walk(
    tape: &[Node],
    i: usize,
    state: &[u16; MAX_PROBES],
    at_root: bool,
    probes: &[Probe],
    hits: &mut [Hit; MAX_PROBES],
    keys: &mut Vec<(u64, u32)>,
) -> Result<usize, ()> {
    match tape[i] {
        Node::Object { len, count } => {
            check_unique_keys(tape, i, len, keys)?;
            let mut j = i + 1;
            for _ in 0..len {
                let Node::String(key) = tape[j] else { return Err(()) };
                let mut next = [DEAD; MAX_PROBES];
                for (p, probe) in probes.iter().enumerate() {
                    next[p] = extend(probe.field, state[p], at_root, key);
                }
                j = walk(tape, j + 1, &next, false, probes, hits, keys)?;
            }
            debug_assert_eq!(j, i + 1 + count);
            Ok(j)
        }
        Node::Array { len, count } => {
            let mut j = i + 1;
            for _ in 0..len {
                j = walk(tape, j, state, at_root, probes, hits, keys)?;
            }
            debug_assert_eq!(j, i + 1 + count);
            Ok(j)
        }
        Node::String(s) => {
            for (p, probe) in probes.iter().enumerate() {
                if usize::from(state[p]) == probe.field.len() {
                    hits[p].has_value = true;
                    hits[p].equal |= probe.terms.contains(&s);
                }
            }
            Ok(i + 1)
        }
        Node::Static(StaticNode::Null) => Ok(i + 1),
        Node::Static(_) => {
            for (p, probe) in probes.iter().enumerate() {
                if usize::from(state[p]) == probe.field.len() {
                    hits[p].has_value = true;
                }
            }
            Ok(i + 1)
        }
    }
}

/// Extends a probe's matched prefix of `field` by one object key.
fn extend(field: &str, pos: u16, at_root: bool, key: &str) -> u16 {
    if pos == DEAD {
        return DEAD;
    }
    let rest = &field.as_bytes()[usize::from(pos)..];
    let rest = if at_root {
        rest
    } else {
        match rest.split_first() {
            Some((b'.', rest)) => rest,
            _ => return DEAD,
        }
    };
    if rest.starts_with(key.as_bytes()) {
        (field.len() - rest.len() + key.len()) as u16
    } else {
        DEAD
    }
}

/// Fails when the object at `i` repeats a key (after unescaping, as the tape holds them).
fn check_unique_keys(
    tape: &[Node],
    i: usize,
    len: usize,
    keys: &mut Vec<(u64, u32)>,
) -> Result<(), ()> {
    if len < 2 {
        return Ok(());
    }
    let key_at = |j: usize| match tape[j] {
        Node::String(k) => k,
        _ => "",
    };
    if len <= 8 {
        let mut seen = [""; 8];
        for (n, j) in member_keys(tape, i).enumerate() {
            let k = key_at(j);
            if seen[..n].contains(&k) {
                return Err(());
            }
            seen[n] = k;
        }
        return Ok(());
    }
    keys.clear();
    keys.extend(member_keys(tape, i).map(|j| (hash(key_at(j).as_bytes()), j as u32)));
    keys.sort_unstable();
    for w in keys.windows(2) {
        if w[0].0 == w[1].0 && key_at(w[0].1 as usize) == key_at(w[1].1 as usize) {
            return Err(());
        }
    }
    Ok(())
}

/// FNV-1a: keys are short, and a collision only costs one string comparison.
fn hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The number of tape nodes the value at `i` occupies.
fn size(tape: &[Node], i: usize) -> usize {
    match tape[i] {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Tape indexes of the keys of the object at `obj`.
fn member_keys<'t>(tape: &'t [Node], obj: usize) -> impl Iterator<Item = usize> + 't {
    let len = match tape[obj] {
        Node::Object { len, .. } => len,
        _ => 0,
    };
    let mut j = obj + 1;
    (0..len).map(move |_| {
        let key = j;
        j = key + 1 + size(tape, key + 1);
        key
    })
}

/// Tape indexes of the elements of the array (or the member values of the object) at `i`.
fn children<'t>(tape: &'t [Node], i: usize) -> impl Iterator<Item = usize> + 't {
    let (len, step) = match tape[i] {
        Node::Array { len, .. } => (len, 0),
        Node::Object { len, .. } => (len, 1),
        _ => (0, 0),
    };
    let mut j = i + 1;
    (0..len).map(move |_| {
        let value = j + step;
        j = value + size(tape, value);
        value
    })
}

/// The tape index of the value of `name` in the object at `obj` (a plain key, not a path).
fn member(tape: &[Node], obj: usize, name: &str) -> Option<usize> {
    member_keys(tape, obj).find(|&k| tape[k] == Node::String(name)).map(|k| k + 1)
}

/// A raw CloudTrail record: an object with `eventSource` and `eventName` keys.
fn is_raw_record(tape: &[Node], i: usize) -> bool {
    matches!(tape[i], Node::Object { .. })
        && member(tape, i, "eventSource").is_some()
        && member(tape, i, "eventName").is_some()
}

/// Whether the ingest pipeline would drop the value at `i`: `null`, `""`, or an object or array
/// whose members are all such values.
fn is_empty(tape: &[Node], i: usize) -> bool {
    match tape[i] {
        Node::Static(StaticNode::Null) => true,
        Node::String(s) => s.is_empty(),
        Node::Object { .. } | Node::Array { .. } => children(tape, i).all(|c| is_empty(tape, c)),
        Node::Static(_) => false,
    }
}

/// Whether the value at `i`, with arrays flattened, holds a string equal to one of `terms`.
fn any_string_in(tape: &[Node], i: usize, terms: &[&str]) -> bool {
    match tape[i] {
        Node::String(s) => terms.contains(&s),
        Node::Array { .. } => children(tape, i).any(|c| any_string_in(tape, c, terms)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Matcher;

    const M: &str = r#""event.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com","event.outcome":"success""#;

    fn verdict(doc: &str) -> Verdict {
        Matcher::new().evaluate(doc.as_bytes())
    }

    macro_rules! verdicts {
        ($($name:ident: $doc:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                let doc: String = $doc;
                assert_eq!(verdict(&doc), $want, "{doc}");
            }
        )*};
    }

    use Verdict::*;
    const ECS: Verdict = Match(Shape::Ecs);
    const NO: Verdict = NoMatch(Some(Shape::Ecs));

    verdicts! {
        dotted_key: format!(r#"{{{M},"event.action":"DisableKey"}}"#) => ECS;
        nested_object: format!(r#"{{{M},"event":{{"action":"DisableKey"}}}}"#) => ECS;
        dotted_and_nested_both_count: format!(r#"{{{M},"event":{{"action":"X"}},"event.action":"ScheduleKeyDeletion"}}"#) => ECS;
        array_of_values: format!(r#"{{{M},"event":{{"action":["Decrypt","DisableKey"]}}}}"#) => ECS;
        array_of_objects: r#"{"event":[{"action":"DisableKey"},{"outcome":"success"},{"provider":"kms.amazonaws.com","dataset":"aws.cloudtrail"}]}"#.into() => ECS;
        escaped_value: r#"{"event.dataset":"aws.cloudtrail","event.provider":"kms\u002eamazonaws.com","event.outcome":"success","event.action":"\u0044isableKey"}"#.into() => ECS;
        escaped_key: format!(r#"{{{M},"event\u002eaction":"DisableKey"}}"#) => ECS;
        null_is_no_value: format!(r#"{{{M},"event.action":null}}"#) => NO;
        case_sensitive: format!(r#"{{{M},"event.action":"disablekey"}}"#) => NO;
        whole_value: format!(r#"{{{M},"event.action":"DisableKeyRotation"}}"#) => NO;
        trailing_space_in_term: r#"{"event.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com ","event.outcome":"success","event.action":"DisableKey"}"#.into() => NO;
        object_is_not_a_term: format!(r#"{{{M},"event.action":{{"DisableKey":1}}}}"#) => NO;
        empty_key_segment: format!(r#"{{{M},"event.":{{"action":"DisableKey"}}}}"#) => NO;
        duplicate_key: format!(r#"{{{M},"event.action":"DisableKey","event.action":"DisableKey"}}"#) => Invalid;
        nested_duplicate_key: format!(r#"{{{M},"event.action":"DisableKey","x":{{"a":1,"b":2,"a":3}}}}"#) => Invalid;
        escaped_duplicate_key: format!(r#"{{{M},"event.action":"DisableKey","x":1,"\u0078":2}}"#) => Invalid;
        trailing_object: format!(r#"{{{M},"event.action":"DisableKey"}} {{}}"#) => Invalid;
        not_an_object: r#"["DisableKey"]"#.into() => Invalid;
        crlf: format!("{{{M},\"event.action\":\"DisableKey\"}}\r") => ECS;
        lone_surrogate_elsewhere: format!(r#"{{{M},"event.action":"DisableKey","x":"\ud800"}}"#) => ECS;
        distinct_lone_surrogate_keys: format!(r#"{{{M},"event.action":"DisableKey","\ud800":1,"\ud801":2,"\ufffd":3}}"#) => ECS;
        same_lone_surrogate_key_twice: format!(r#"{{{M},"event.action":"DisableKey","\ud800":1,"\uD800":2}}"#) => Invalid;
        huge_number_elsewhere: format!(r#"{{{M},"event.action":"DisableKey","x":1e400,"y":{}}}"#, "9".repeat(10_000)) => ECS;
        invalid_number: format!(r#"{{{M},"event.action":"DisableKey","x":01}}"#) => Invalid;
        too_deep: format!(r#"{{{M},"event.action":"DisableKey","x":{}{}}}"#, "[".repeat(1000), "]".repeat(1000)) => Invalid;
        deep_enough: format!(r#"{{{M},"event.action":"DisableKey","x":{}{}}}"#, "[".repeat(999), "]".repeat(999)) => ECS;
        raw_success: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#.into() => Match(Shape::Raw);
        raw_failure: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":"AccessDenied"}"#.into() => NoMatch(Some(Shape::Raw));
        raw_empty_error: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":{"a":[null,""]},"errorMessage":""}"#.into() => Match(Shape::Raw);
        records_any: r#"{"Records":[{"eventSource":"s3.amazonaws.com","eventName":"GetObject"},{"eventSource":"kms.amazonaws.com","eventName":"ScheduleKeyDeletion"}]}"#.into() => Match(Shape::Records);
        records_not_all_raw: r#"{"Records":[{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"},1]}"#.into() => NO;
        eventbridge: r#"{"detail-type":"AWS API Call via CloudTrail","detail":{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}}"#.into() => Match(Shape::EventBridge);
        envelope: r#"{"data_stream":{"dataset":"aws.cloudtrail"},"message":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}"}"#.into() => Match(Shape::Envelope);
        envelope_without_dataset_is_ecs: r#"{"message":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}"}"#.into() => NO;
    }

    #[test]
    fn declared_dataset_fills_only_missing_values() {
        let mut m = Matcher::builder().assume_dataset(Some(CLOUDTRAIL_DATASET.into())).build();
        let base = r#""event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey""#;
        assert_eq!(m.evaluate(format!("{{{base}}}").as_bytes()), ECS);
        assert_eq!(m.evaluate(format!(r#"{{{base},"event.dataset":null}}"#).as_bytes()), ECS);
        assert_eq!(m.evaluate(format!(r#"{{{base},"event.dataset":"aws.s3"}}"#).as_bytes()), NO);
        assert_eq!(verdict(&format!("{{{base}}}")), NO);
    }

    #[test]
    fn later_rule_version_reads_data_stream_dataset() {
        let rule = Rule::kms_cmk_disabled_or_scheduled_for_deletion()
            .with_dataset_field(DATA_STREAM_DATASET);
        let mut m = Matcher::builder().rule(rule).build();
        let doc = r#"{"data_stream.dataset":"aws.cloudtrail","event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey"}"#;
        assert_eq!(m.evaluate(doc.as_bytes()), ECS);
        assert_eq!(verdict(doc), NO);
    }

    #[test]
    fn restricted_shapes_fall_through() {
        let mut m = Matcher::builder().shapes(Shapes::of(&[Shape::Ecs])).build();
        let raw = br#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;
        assert_eq!(m.evaluate(raw), NO);
    }
}
