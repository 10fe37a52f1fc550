//! The exact decision: parse a candidate with simd-json and read the rule's fields off the tape.

use simd_json::{tape::Node, Buffers, StaticNode, Tape};

use crate::explain::{Explanation, Miss};
use crate::normalize::{normalize, MARKER_UTF8};
use crate::rule::{
    is_dataset_field, RawValue, Rule, CLOUDTRAIL_DATASET, DATA_STREAM_DATASET, EVENT_DATASET,
    OUTCOME_FIELD, RAW_ERROR_KEYS, RAW_FIELD_MAP, REMOVED_STRINGS,
};
use crate::shape::{Shape, Shapes};

/// Deepest nesting accepted, as Elasticsearch's JSON parser (Jackson's default
/// `maxNestingDepth`). Deeper documents are rejected by Elasticsearch, so they never match.
pub const MAX_DEPTH: usize = 1000;

/// The `detail-type` of an EventBridge event that carries a CloudTrail record in `detail`.
pub(crate) const EVENTBRIDGE_DETAIL_TYPE: &str = "AWS API Call via CloudTrail";

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
pub(crate) const DEAD: u16 = u16::MAX;

/// A reusable simd-json parse: scratch copy of the input, parser buffers and tape storage.
pub(crate) struct Parser {
    scratch: Vec<u8>,
    buffers: Buffers,
    nodes: Vec<Node<'static>>,
}

impl Parser {
    pub(crate) fn new() -> Parser {
        Parser {
            scratch: Vec::new(),
            buffers: Buffers::with_max_depth(4096, MAX_DEPTH),
            nodes: Vec::new(),
        }
    }

    /// Parses a copy of `input` and hands its tape to `f`, with whether the tape's strings are in
    /// [`normalize`]'s encoding; `None` when `input` is not JSON.
    ///
    /// `outer_encoded` says that `input` is the decoded text of a string from an encoded tape:
    /// when it holds a marker, the text is rewritten before the first parse, so that its
    /// encodings and its own escapes compare alike. Otherwise the text is parsed as it is and
    /// rewritten only when simd-json refuses it. simd-json rewrites strings in place even when
    /// it fails, so every parse starts from a fresh copy; the tape's storage is kept.
    pub(crate) fn with_tape<R>(
        &mut self,
        input: &[u8],
        outer_encoded: bool,
        f: impl FnOnce(&[Node], bool) -> R,
    ) -> Option<R> {
        let mut encoded = outer_encoded && memchr::memmem::find(input, MARKER_UTF8).is_some();
        self.scratch.clear();
        if encoded {
            normalize(input, &mut self.scratch, true);
        } else {
            self.scratch.extend_from_slice(input);
        }
        loop {
            let len = self.scratch.len();
            self.scratch.resize(len + simd_json::INPUT_PADDING, b' ');
            let mut tape = Tape(std::mem::take(&mut self.nodes)).reset();
            if simd_json::fill_tape_padded(&mut self.scratch, len, &mut self.buffers, &mut tape)
                .is_ok()
            {
                let result = f(&tape.0, encoded);
                self.nodes = tape.reset().0;
                return Some(result);
            }
            self.nodes = tape.reset().0;
            self.scratch.clear();
            if encoded || !normalize(input, &mut self.scratch, false) {
                return None;
            }
            encoded = true;
        }
    }
}

/// Evaluates documents exactly against a rule. Created by [`crate::Matcher`].
pub(crate) struct Evaluator {
    ctx: Ctx,
    outer: Parser,
    inner: Parser,
    keys: Vec<u32>,
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
    /// Why the last document decided did not match.
    miss: std::cell::Cell<Miss>,
}

/// The UTF-8 byte order mark. Jackson skips one at the start of a document's bytes, so a line
/// that starts with one is the document after it (anywhere in a stream, as `cat a b` makes).
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

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
        let miss = std::cell::Cell::new(Miss::NoShape);
        let ctx =
            Ctx { rule, shapes, assume_dataset, probes, dataset_clause, envelope_probes, miss };
        Evaluator { ctx, outer: Parser::new(), inner: Parser::new(), keys: Vec::new() }
    }

    pub(crate) fn rule(&self) -> &Rule {
        &self.ctx.rule
    }

    /// Decides one line (without its line terminator; a leading byte order mark is skipped).
    pub(crate) fn evaluate(&mut self, line: &[u8]) -> Verdict {
        let line = line.strip_prefix(BOM).unwrap_or(line);
        let Evaluator { ctx, outer, inner, keys } = self;
        outer
            .with_tape(line, false, |tape, encoded| {
                let mut hits = [Hit::default(); MAX_PROBES];
                if !valid_object(tape, &ctx.probes, &mut hits, keys) {
                    return Verdict::Invalid;
                }
                let mut doc = Doc { tape, encoded, inner, keys };
                ctx.decide(&mut doc, &hits)
            })
            .unwrap_or(Verdict::Invalid)
    }

    /// Decides one raw CloudTrail record on its own (an element of a `Records` array).
    pub(crate) fn evaluate_record(&mut self, record: &[u8]) -> Verdict {
        let record = record.strip_prefix(BOM).unwrap_or(record);
        let Evaluator { ctx, inner, keys, .. } = self;
        inner
            .with_tape(record, false, |tape, _| {
                let mut hits = [Hit::default(); MAX_PROBES];
                if !valid_object(tape, &[], &mut hits, keys) {
                    Verdict::Invalid
                } else if is_raw_record(tape, 0) {
                    ctx.verdict(ctx.raw_miss(tape, 0), Shape::Raw)
                } else {
                    Verdict::NoMatch(None)
                }
            })
            .unwrap_or(Verdict::Invalid)
    }
}

impl Evaluator {
    /// Decides one element of a LookupEvents response on its own, by the record its
    /// `CloudTrailEvent` holds.
    pub(crate) fn evaluate_lookup_event(&mut self, event: &[u8]) -> Verdict {
        let Evaluator { ctx, outer, inner, keys } = self;
        outer
            .with_tape(event, false, |tape, encoded| {
                let mut hits = [Hit::default(); MAX_PROBES];
                if !valid_object(tape, &[], &mut hits, keys) {
                    return Verdict::Invalid;
                }
                let mut doc = Doc { tape, encoded, inner, keys };
                let record = member(tape, 0, "CloudTrailEvent").and_then(|r| {
                    doc.with_inner(r, |t| is_raw_record(t, 0).then(|| ctx.raw_miss(t, 0)))
                });
                match record.flatten() {
                    Some(miss) => ctx.verdict(miss, Shape::LookupEvents),
                    None => Verdict::NoMatch(None),
                }
            })
            .unwrap_or(Verdict::Invalid)
    }
}

/// A parsed document and what deciding it may need: a parser for the documents its strings hold
/// (an envelope's `message`, a LookupEvents `CloudTrailEvent`) and the duplicate check's scratch.
struct Doc<'t, 'n, 'p> {
    tape: &'t [Node<'n>],
    /// Whether the tape's strings are in the rewrite's encoding (see [`normalize`]).
    encoded: bool,
    inner: &'p mut Parser,
    keys: &'p mut Vec<u32>,
}

impl Doc<'_, '_, '_> {
    /// Parses the string value at `i` as a document of its own and hands it to `f` when it is a
    /// valid object; `None` when it is not a string or not such a document.
    fn with_inner<R>(&mut self, i: usize, f: impl FnOnce(&[Node]) -> R) -> Option<R> {
        let Node::String(text) = self.tape[i] else { return None };
        let keys = &mut *self.keys;
        self.inner
            .with_tape(text.as_bytes(), self.encoded, |t, _| {
                let mut hits = [Hit::default(); MAX_PROBES];
                valid_object(t, &[], &mut hits, keys).then(|| f(t))
            })
            .flatten()
    }
}

/// Whether a parsed document is an object without repeated keys, recording the probes' hits.
fn valid_object(
    tape: &[Node],
    probes: &[Probe],
    hits: &mut [Hit; MAX_PROBES],
    keys: &mut Vec<u32>,
) -> bool {
    matches!(tape.first(), Some(Node::Object { .. }))
        && walk(tape, 0, &[0; MAX_PROBES], true, probes, hits, keys).is_ok()
}

impl Ctx {
    /// Recognises the shape of a valid, duplicate-free object (spec section 4: the first shape
    /// that applies decides) and evaluates it, recording why when it does not match.
    fn decide(&self, doc: &mut Doc, hits: &[Hit]) -> Verdict {
        let shapes = self.shapes;
        let tape = doc.tape;
        if shapes.contains(Shape::Records) {
            if let Some(miss) = self.records_miss(tape, 0) {
                return self.verdict(miss, Shape::Records);
            }
        }
        if shapes.contains(Shape::LookupEvents) {
            if let Some(miss) = self.lookup_events_miss(doc) {
                return self.verdict(miss, Shape::LookupEvents);
            }
        }
        if shapes.contains(Shape::EventBridge) {
            let detail_type = member(tape, 0, "detail-type").map(|i| tape[i]);
            if detail_type == Some(Node::String(EVENTBRIDGE_DETAIL_TYPE)) {
                if let Some(d) = member(tape, 0, "detail").filter(|&d| is_raw_record(tape, d)) {
                    return self.verdict(self.raw_miss(tape, d), Shape::EventBridge);
                }
            }
        }
        if shapes.contains(Shape::Raw) && is_raw_record(tape, 0) {
            return self.verdict(self.raw_miss(tape, 0), Shape::Raw);
        }
        if shapes.contains(Shape::Envelope) && self.envelope_dataset(hits) {
            if let Some(message) = member(tape, 0, "message") {
                let inner = doc.with_inner(message, |t| {
                    self.records_miss(t, 0)
                        .or_else(|| is_raw_record(t, 0).then(|| self.raw_miss(t, 0)))
                });
                if let Some(Some(miss)) = inner {
                    return self.verdict(miss, Shape::Envelope);
                }
            }
        }
        if shapes.contains(Shape::Ecs) {
            return self.verdict(self.ecs_miss(hits), Shape::Ecs);
        }
        self.miss.set(Miss::NoShape);
        Verdict::NoMatch(None)
    }

    /// The verdict for a shape, given what failed (`None`: nothing did).
    fn verdict(&self, miss: Option<Miss>, shape: Shape) -> Verdict {
        match miss {
            None => Verdict::Match(shape),
            Some(miss) => {
                self.miss.set(miss);
                Verdict::NoMatch(Some(shape))
            }
        }
    }

    /// The first clause an ECS document fails, if any. A missing dataset counts as the declared
    /// one; when it is the only failure, it is told apart ([`Miss::DatasetAbsent`]).
    fn ecs_miss(&self, hits: &[Hit]) -> Option<Miss> {
        let mut failed = (0..self.rule.clauses.len()).filter(|&c| {
            let hit = hits[c];
            !(hit.equal
                || (Some(c) == self.dataset_clause
                    && !hit.has_value
                    && self.assumed_dataset_in(self.probes[c].terms)))
        });
        let first = failed.next()?;
        let field = self.probes[first].field;
        Some(match (hits[first].has_value, failed.next()) {
            (true, _) => Miss::NotEqual(field),
            (false, None) if Some(first) == self.dataset_clause => Miss::DatasetAbsent(field),
            (false, _) => Miss::NoValue(field),
        })
    }

    /// When the object at `obj` is a CloudTrail log file (a non-empty `Records` array of raw
    /// records): `Some(None)` when a record matches, else `Some(Some(why))`.
    fn records_miss(&self, tape: &[Node], obj: usize) -> Option<Option<Miss>> {
        let records = member(tape, obj, "Records")?;
        let Node::Array { len, .. } = tape[records] else { return None };
        if len == 0 || !children(tape, records).all(|r| is_raw_record(tape, r)) {
            return None;
        }
        let any = children(tape, records).any(|r| self.raw_miss(tape, r).is_none());
        Some((!any).then_some(Miss::NoRecord(len)))
    }

    /// When the document is a LookupEvents response (a non-empty `Events` array of objects whose
    /// `CloudTrailEvent` string holds a raw record): `Some(None)` when a record matches, else
    /// `Some(Some(why))`.
    fn lookup_events_miss(&self, doc: &mut Doc) -> Option<Option<Miss>> {
        let tape = doc.tape;
        let events = member(tape, 0, "Events")?;
        let Node::Array { len, .. } = tape[events] else { return None };
        if len == 0 {
            return None;
        }
        let mut any = false;
        for event in children(tape, events) {
            let record = member(tape, event, "CloudTrailEvent")?;
            let matched = doc
                .with_inner(record, |t| is_raw_record(t, 0).then(|| self.raw_miss(t, 0).is_none()))
                .flatten()?;
            any |= matched;
        }
        Some((!any).then_some(Miss::NoRecord(len)))
    }

    /// Whether the declared dataset is one of `terms`.
    fn assumed_dataset_in(&self, terms: &[&str]) -> bool {
        self.assume_dataset.as_deref().is_some_and(|d| terms.contains(&d))
    }

    /// Whether a document's dataset makes it a shipper envelope for CloudTrail: it names
    /// `aws.cloudtrail`, or it has no dataset value at all (a generic shipper's envelope).
    fn envelope_dataset(&self, hits: &[Hit]) -> bool {
        let [a, b] = self.envelope_probes.map(|p| hits[p]);
        a.equal || b.equal || (!a.has_value && !b.has_value)
    }

    /// Evaluates the rule on a raw record as the Elastic AWS integration's pipeline would index
    /// it (spec section 4): empty values removed, `eventSource` renamed, `eventName` rendered.
    /// Returns the first clause that fails, or `None` when the record matches.
    fn raw_miss(&self, tape: &[Node], record: usize) -> Option<Miss> {
        for clause in &self.rule.clauses {
            if is_dataset_field(clause.field) {
                if !clause.terms.contains(&CLOUDTRAIL_DATASET) {
                    return Some(Miss::NotEqual(clause.field));
                }
            } else if clause.field == OUTCOME_FIELD {
                let failed = RAW_ERROR_KEYS
                    .iter()
                    .find(|k| member(tape, record, k).is_some_and(|v| !is_removed(tape, v)));
                match failed {
                    Some(key) if !clause.terms.contains(&"failure") => {
                        return Some(Miss::RawFailed(key))
                    }
                    None if !clause.terms.contains(&"success") => {
                        return Some(Miss::NotEqual(clause.field))
                    }
                    _ => {}
                }
            } else if let Some(raw) = RAW_FIELD_MAP.iter().find(|f| f.ecs == clause.field) {
                let miss = match member(tape, record, raw.key) {
                    None => Some(Miss::RawAbsent(raw.key)),
                    Some(v) if is_removed(tape, v) => Some(Miss::RawAbsent(raw.key)),
                    Some(v) => match (raw.value, tape[v]) {
                        (RawValue::Renamed, _) => (!any_string_in(tape, v, clause.terms))
                            .then_some(Miss::RawNotEqual(raw.key)),
                        (RawValue::Rendered, Node::String(s)) => {
                            (!clause.terms.contains(&s)).then_some(Miss::RawNotEqual(raw.key))
                        }
                        (RawValue::Rendered, node) => {
                            Some(Miss::RawRendered { key: raw.key, kind: json_kind(node) })
                        }
                    },
                };
                if miss.is_some() {
                    return miss;
                }
            } else {
                return Some(Miss::NoValue(clause.field));
            }
        }
        None
    }
}

/// The JSON type of a non-string node, with its article, for explanations.
fn json_kind(node: Node) -> &'static str {
    match node {
        Node::Array { .. } => "an array",
        Node::Object { .. } => "an object",
        Node::Static(StaticNode::Bool(_)) => "a boolean",
        Node::Static(StaticNode::Null) => "null",
        Node::Static(_) => "a number",
        Node::String(_) => "a string",
    }
}

impl Evaluator {
    /// Why the last document decided did not match.
    pub(crate) fn last_miss(&self) -> Miss {
        self.ctx.miss.get()
    }

    /// Explains the decision on one line (see [`Explanation`]).
    pub(crate) fn explain(&mut self, line: &[u8]) -> Explanation {
        match self.evaluate(line) {
            Verdict::Match(shape) => Explanation::Match(shape),
            Verdict::NoMatch(shape) => Explanation::NoMatch { shape, miss: self.ctx.miss.get() },
            Verdict::Invalid => Explanation::Invalid(self.invalid_reason(line)),
        }
    }

    /// Why a line is not a document Elasticsearch would index.
    fn invalid_reason(&mut self, line: &[u8]) -> String {
        let line = line.strip_prefix(BOM).unwrap_or(line);
        if let Err(e) = std::str::from_utf8(line) {
            return format!("invalid UTF-8 at byte {}", e.valid_up_to());
        }
        let keys = &mut self.keys;
        let parsed = self.outer.with_tape(line, false, |tape, _| {
            if !matches!(tape.first(), Some(Node::Object { .. })) {
                return format!("not an object but {}", json_kind(tape[0]));
            }
            let mut hits = [Hit::default(); MAX_PROBES];
            match walk(tape, 0, &[0; MAX_PROBES], true, &[], &mut hits, keys) {
                Err(key) => match tape.get(key) {
                    Some(Node::String(k)) => format!("repeated key {k:?}"),
                    _ => "repeated key".to_string(),
                },
                Ok(_) => "rejected".to_string(),
            }
        });
        parsed.unwrap_or_else(|| {
            let mut copy = Vec::new();
            normalize(line, &mut copy, false);
            match simd_json::to_tape(&mut copy) {
                Err(e) => format!("not valid JSON ({e})"),
                Ok(_) => "not valid JSON".to_string(),
            }
        })
    }
}

/// Walks the value at `i` with the probes' matched prefix lengths in `state`, recording what each
/// probe's field holds and rejecting repeated keys. Returns the index just past the value, or the
/// index of a repeated key.
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
    keys: &mut Vec<u32>,
) -> Result<usize, usize> {
    match tape[i] {
        Node::Object { len, count } => {
            check_unique_keys(tape, i, len, keys)?;
            let mut j = i + 1;
            for _ in 0..len {
                let Node::String(key) = tape[j] else { return Err(j) };
                let mut next = [DEAD; MAX_PROBES];
                let mut reached = false;
                for (p, probe) in probes.iter().enumerate() {
                    next[p] = extend(probe.field, state[p], at_root, key);
                    reached |= next[p] != DEAD;
                }
                j = if reached {
                    walk(tape, j + 1, &next, false, probes, hits, keys)?
                } else {
                    check_keys_below(tape, j + 1, keys)?
                };
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

/// Extends a probe's matched prefix of `field` by one object key: at the root the key must
/// start the field, below it the field must go on with `.` and then the key.
pub(crate) fn extend(field: &str, pos: u16, at_root: bool, key: &str) -> u16 {
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
    // The first byte first: most keys a walk meets start no field's rest, and a call to compare
    // them whole costs more than the rest of this.
    let starts = match key.as_bytes().first() {
        Some(b) => rest.first() == Some(b) && rest.starts_with(key.as_bytes()),
        None => true,
    };
    if starts {
        (field.len() - rest.len() + key.len()) as u16
    } else {
        DEAD
    }
}

/// Fails with the tape index of a repeated key when the object at `i` repeats one (after
/// unescaping, as the tape holds them).
///
/// Up to 8 keys are compared pairwise. More are sorted in a reused vector of tape indexes, so
/// that equal keys end up next to each other: exact for any input, and no hash an attacker could
/// collide.
pub(crate) fn check_unique_keys(
    tape: &[Node],
    i: usize,
    len: usize,
    keys: &mut Vec<u32>,
) -> Result<(), usize> {
    if len < 2 {
        return Ok(());
    }
    let key_at = |j: u32| match tape[j as usize] {
        Node::String(k) => k,
        _ => "",
    };
    if len <= 8 {
        let mut seen = [""; 8];
        for (n, j) in member_keys(tape, i).enumerate() {
            let k = key_at(j as u32);
            if seen[..n].contains(&k) {
                return Err(j);
            }
            seen[n] = k;
        }
        return Ok(());
    }
    keys.clear();
    keys.extend(member_keys(tape, i).map(|j| j as u32));
    keys.sort_unstable_by(|&a, &b| key_at(a).cmp(key_at(b)));
    match keys.windows(2).find(|w| key_at(w[0]) == key_at(w[1])) {
        Some(w) => Err(w[1] as usize),
        None => Ok(()),
    }
}

/// Checks every object in the value at `i` for a repeated key, as [`walk`] would, and returns
/// the index just past the value (or the index of a repeated key). A subtree no field reaches
/// needs only this: one pass over its nodes, with no field's path extended at each key.
pub(crate) fn check_keys_below(
    tape: &[Node],
    i: usize,
    keys: &mut Vec<u32>,
) -> Result<usize, usize> {
    let end = i + size(tape, i);
    for j in i..end {
        if let Node::Object { len, .. } = tape[j] {
            check_unique_keys(tape, j, len, keys)?;
        }
    }
    Ok(end)
}

/// The number of tape nodes the value at `i` occupies.
pub(crate) fn size(tape: &[Node], i: usize) -> usize {
    match tape[i] {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Tape indexes of the keys of the object at `obj`.
pub(crate) fn member_keys<'t>(tape: &'t [Node], obj: usize) -> impl Iterator<Item = usize> + 't {
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
pub(crate) fn children<'t>(tape: &'t [Node], i: usize) -> impl Iterator<Item = usize> + 't {
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
pub(crate) fn member(tape: &[Node], obj: usize, name: &str) -> Option<usize> {
    member_keys(tape, obj).find(|&k| tape[k] == Node::String(name)).map(|k| k + 1)
}

/// A raw CloudTrail record: an object with `eventSource` and `eventName` keys.
pub(crate) fn is_raw_record(tape: &[Node], i: usize) -> bool {
    matches!(tape[i], Node::Object { .. })
        && member(tape, i, "eventSource").is_some()
        && member(tape, i, "eventName").is_some()
}

/// Whether the ingest pipeline's first script removes the value at `i`: `null`, one of
/// [`REMOVED_STRINGS`], or an object or array whose members are all removed in turn.
pub(crate) fn is_removed(tape: &[Node], i: usize) -> bool {
    match tape[i] {
        Node::Static(StaticNode::Null) => true,
        Node::String(s) => REMOVED_STRINGS.contains(&s),
        Node::Object { .. } | Node::Array { .. } => children(tape, i).all(|c| is_removed(tape, c)),
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
        envelope_without_dataset: r#"{"message":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}","source_type":"aws_s3"}"#.into() => Match(Shape::Envelope);
        envelope_of_another_dataset_is_ecs: r#"{"event.dataset":"aws.s3access","message":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}"}"#.into() => NO;
        envelope_of_a_log_file: r#"{"message":"{\"Records\":[{\"eventSource\":\"s3.amazonaws.com\",\"eventName\":\"GetObject\"},{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"ScheduleKeyDeletion\"}]}","bucket":"b"}"#.into() => Match(Shape::Envelope);
        envelope_of_a_failed_log_file: r#"{"message":"{\"Records\":[{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\",\"errorCode\":\"X\"}]}"}"#.into() => NoMatch(Some(Shape::Envelope));
        lookup_events: r#"{"Events":[{"EventName":"Decrypt","CloudTrailEvent":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"Decrypt\"}"},{"EventName":"DisableKey","CloudTrailEvent":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}"}]}"#.into() => Match(Shape::LookupEvents);
        lookup_events_summary_is_not_evaluated: r#"{"Events":[{"EventName":"DisableKey","EventSource":"kms.amazonaws.com","CloudTrailEvent":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"Decrypt\"}"}]}"#.into() => NoMatch(Some(Shape::LookupEvents));
        lookup_events_need_every_record: r#"{"Events":[{"CloudTrailEvent":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\"}"},{"CloudTrailEvent":"{\"a\":1}"}]}"#.into() => NO;

        // Issue 15: the pipeline at 0b97ab02 removes "-" and "none", and renders eventName.
        raw_dash_error_is_absent: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":"-"}"#.into() => Match(Shape::Raw);
        raw_nested_removed_error_is_absent: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorMessage":["none",{"a":"-"}]}"#.into() => Match(Shape::Raw);
        raw_capitalised_none_is_an_error: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":"None"}"#.into() => NoMatch(Some(Shape::Raw));
        raw_spaced_dash_is_an_error: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":" - "}"#.into() => NoMatch(Some(Shape::Raw));
        raw_event_name_array_never_matches: r#"{"eventSource":"kms.amazonaws.com","eventName":["DisableKey"]}"#.into() => NoMatch(Some(Shape::Raw));
        raw_event_source_array_matches: r#"{"eventSource":["s3.amazonaws.com","kms.amazonaws.com"],"eventName":"DisableKey"}"#.into() => Match(Shape::Raw);

        // Issue 9: keys compare as Elasticsearch compares them, whatever they hash to.
        lone_surrogate_and_private_use_keys_differ: format!(r#"{{{M},"event.action":"DisableKey","\ud800":1,"\ue000":2}}"#) => ECS;
        raw_lone_surrogate_and_private_use_keys_differ: r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","\udc00":1,"\ue400":2}"#.into() => Match(Shape::Raw);
        marker_and_stand_in_keys_differ_from_a_lone_surrogate: format!("{{{M},\"event.action\":\"DisableKey\",\"\\ud800\":1,\"\u{f8ff}\u{e000}\":2}}") => ECS;
        hash_collision_does_not_hide_a_repeat: format!(r#"{{{M},"event.action":"DisableKey","a":0,"b":0,"2893ea9411391b85":0,"017bf672ad970641":0,"2893ea9411391b85":0}}"#) => Invalid;
        repeat_below_a_key_no_field_reads: format!(r#"{{{M},"event.action":"DisableKey","userIdentity":{{"a":[{{"b":1,"b":2}}]}}}}"#) => Invalid;
        no_repeat_below_a_key_no_field_reads: format!(r#"{{{M},"event.action":"DisableKey","userIdentity":{{"a":[{{"b":1,"c":2}}]}}}}"#) => ECS;
        bom_starts_any_line: format!("\u{feff}{{{M},\"event.action\":\"DisableKey\"}}") => ECS;
        bom_after_whitespace_is_invalid: format!(" \u{feff}{{{M},\"event.action\":\"DisableKey\"}}") => Invalid;
    }

    #[test]
    fn explanations_name_the_first_failing_clause() {
        let explain = |doc: &str| Matcher::new().explain(doc.as_bytes()).to_string();
        let ecs = r#""event.provider":"kms.amazonaws.com","event.outcome":"success","event.action":"DisableKey""#;
        assert_eq!(
            explain(&format!("{{{ecs}}}")),
            "ecs: every clause holds but event.dataset, which has no value \
             (declare the stream's dataset with --assume-dataset aws.cloudtrail)"
        );
        assert!(Matcher::new().explain(format!("{{{ecs}}}").as_bytes()).is_dataset_absent());
        assert_eq!(
            explain(&format!(r#"{{{ecs},"event.dataset":"aws.s3"}}"#)),
            "ecs: no value of event.dataset equals a term of the rule"
        );
        assert_eq!(explain(r#"{"event.action":"DisableKey"}"#), "ecs: event.dataset has no value");
        let raw = r#""eventSource":"kms.amazonaws.com","eventName""#;
        assert_eq!(
            explain(&format!(r#"{{{raw}:"DisableKey","errorCode":"X"}}"#)),
            "raw: the record has errorCode, so event.outcome is failure"
        );
        assert_eq!(explain(&format!(r#"{{{raw}:["DisableKey"]}}"#)), "raw: the record's eventName is an array, which the ingest pipeline renders as text that equals no term");
        assert_eq!(
            explain(&format!(r#"{{{raw}:"Decrypt"}}"#)),
            "raw: the record's eventName equals no term of the rule"
        );
        assert_eq!(
            explain(r#"{"eventSource":"-","eventName":"DisableKey"}"#),
            "raw: the record has no eventSource"
        );
        assert_eq!(
            explain(
                r#"{"Records":[{"eventSource":"x","eventName":"DisableKey"},{"eventSource":"x","eventName":"y"}]}"#
            ),
            "records: none of its 2 records matches"
        );
        assert_eq!(explain(&format!(r#"{{{raw}:"DisableKey"}}"#)), "matches as raw");
        assert_eq!(explain(r#"{"a":1,"b":2,"a":3}"#), r#"invalid: repeated key "a""#);
        assert_eq!(explain(r#"{"a":{"b":[{"c":1,"c":3}]}}"#), r#"invalid: repeated key "c""#);
        assert_eq!(explain("[1]"), "invalid: not an object but an array");
        assert!(
            explain(r#"{"a":}"#).starts_with("invalid: not valid JSON"),
            "{}",
            explain(r#"{"a":}"#)
        );
        let bad = Matcher::new().explain(b"{\"a\":\"\xff\"}").to_string();
        assert_eq!(bad, "invalid: invalid UTF-8 at byte 6");
    }

    #[test]
    fn verdicts_say_what_they_hold() {
        assert!(Match(Shape::Raw).is_match());
        assert!(!NoMatch(Some(Shape::Raw)).is_match() && !Invalid.is_match());
        assert_eq!(Match(Shape::Raw).shape(), Some(Shape::Raw));
        assert_eq!(NoMatch(Some(Shape::Ecs)).shape(), Some(Shape::Ecs));
        assert_eq!(NoMatch(None).shape(), None);
        assert_eq!(Invalid.shape(), None);
    }

    #[test]
    fn many_keys_repeat_only_when_equal() {
        let keys: Vec<String> = (0..40).map(|n| format!(r#""k{n}":{n}"#)).collect();
        let doc = format!(r#"{{{M},"event.action":"DisableKey",{}}}"#, keys.join(","));
        assert_eq!(verdict(&doc), ECS);
        let repeat = format!(r#"{{{M},"event.action":"DisableKey",{},"k7":0}}"#, keys.join(","));
        assert_eq!(verdict(&repeat), Invalid);
    }

    #[test]
    fn records_and_lookup_events_decide_alone() {
        let mut m = Matcher::new();
        let record = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;
        assert_eq!(m.evaluate_record(record.as_bytes()), Match(Shape::Raw));
        assert_eq!(m.evaluate_record(br#"{"a":1}"#), NoMatch(None));
        assert_eq!(m.evaluate_record(br#"{"a":1,"a":2}"#), Invalid);
        let event = |r: &str| {
            format!(r#"{{"EventId":"1","CloudTrailEvent":{}}}"#, serde_json::to_string(r).unwrap())
        };
        assert_eq!(m.evaluate_lookup_event(event(record).as_bytes()), Match(Shape::LookupEvents));
        let failed =
            r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey","errorCode":"X"}"#;
        assert_eq!(
            m.evaluate_lookup_event(event(failed).as_bytes()),
            NoMatch(Some(Shape::LookupEvents))
        );
        assert_eq!(m.evaluate_lookup_event(event("{}").as_bytes()), NoMatch(None));
        assert_eq!(m.evaluate_lookup_event(br#"{"EventId":"1"}"#), NoMatch(None));
        assert_eq!(m.evaluate_lookup_event(br#"{"a":1,"a":1}"#), Invalid);
        assert_eq!(m.evaluate_lookup_event(b"[1]"), Invalid);
    }

    #[test]
    fn inner_documents_compare_keys_across_escaping_levels() {
        // A lone surrogate in the outer text and an escaped one in the inner text are the same
        // code unit: a repeated key of the inner record.
        let repeat = r#"{"message":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\",\"\ud800\":1,\"\\ud800\":2}"}"#;
        assert_eq!(verdict(repeat), NoMatch(Some(Shape::Ecs)));
        // An outer lone surrogate and an inner escaped private-use character are not.
        let distinct = r#"{"message":"{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"DisableKey\",\"\ud800\":1,\"\\ue000\":2}"}"#;
        assert_eq!(verdict(distinct), Match(Shape::Envelope));
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
