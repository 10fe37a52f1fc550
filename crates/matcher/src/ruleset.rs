//! Many KQL rules at once (`../spec/RULES.md`): compiled once into the union of the fields they
//! read and a boolean program per rule, then decided with one parse and one walk per document.
//!
//! A field's values come from the document as Elasticsearch indexes it (RULE.md section 2 and
//! RULES.md section 3): dotted keys and nested objects alike, arrays flattened, numbers and
//! booleans as their text, strings longer than the field's `ignore_above` not indexed. For the raw
//! CloudTrail shapes the values are those the Elastic AWS integration's pipeline would give each
//! field ([`Source`]); a field the pipeline computes from data not in the record is *unknown*, and
//! rules are evaluated in Kleene's three-valued logic, so an unknown never fires a rule nor
//! silently drops it.

use simd_json::{tape::Node, StaticNode};

use crate::eval::{
    check_keys_below, check_unique_keys, children, extend, is_raw_record, is_removed, member,
    member_keys, Parser, BOM, DEAD, EVENTBRIDGE_DETAIL_TYPE,
};
use crate::kql::{Pattern, Query, Value};
use crate::shape::Shape;
use crate::CLOUDTRAIL_DATASET;

/// A rule's verdict on one document, in three-valued logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    /// The query holds: the rule fires.
    True,
    /// The query does not hold.
    False,
    /// The query's value depends on a field the raw shape cannot tell (RULES.md section 4).
    Unknown,
}

impl Tri {
    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }

    /// Kleene's `or`.
    fn or(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::True, _) | (_, Tri::True) => Tri::True,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::False,
        }
    }

    /// Kleene's `and`.
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::False, _) | (_, Tri::False) => Tri::False,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::True,
        }
    }
}

/// How Elasticsearch indexes a field (the `logs-aws.cloudtrail-*` mappings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A keyword: strings up to `ignore_above` characters are indexed, numbers and booleans as
    /// their text.
    Keyword {
        /// Longer strings are not indexed.
        ignore_above: usize,
    },
    /// A boolean: `true`/`false` and the strings "true"/"false".
    Boolean,
    /// A leaf of a flattened field: keyword-like, with no `ignore_above`.
    Flattened,
}

/// Where the pipeline takes a field's value from in a raw record (RULES.md section 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `aws.cloudtrail`, by the shape.
    Dataset,
    /// The value at this path of the record, as it is (renamed or copied).
    Path(&'static [&'static str]),
    /// `eventName`, rendered through a template: only a string counts.
    Rendered(&'static str),
    /// `event.outcome`: `failure` when `errorCode` or `errorMessage` holds a value, else
    /// `success`; for `ConsoleLogin`, `responseElements.ConsoleLogin` lowercased when present.
    Outcome,
    /// `source.ip`: `sourceIPAddress` when it is an IP address.
    SourceIp,
    /// `user.name`: the session issuer's user name for assumed roles and federated users, else
    /// `userIdentity.userName`, else (for `UserAuthentication`) `additionalEventData.UserName`.
    UserName,
    /// `user.id`: `userIdentity.principalId` (`onBehalfOf.userId` for an Identity Center user).
    UserId,
    /// `cloud.account.id`: `userIdentity.accountId`, else `recipientAccountId`.
    AccountId,
    /// A leaf of a flattened copy of this record member (`requestParameters`, ...), below it at
    /// the given dotted path; unknown when the member's string form may reach 32,766
    /// characters (the pipeline then skips the copy).
    Flattened(&'static str, String),
    /// Computed from data the record does not hold (GeoIP, `Map.toString()`, user-agent
    /// parsing, ...): unknown.
    Unknown,
}

/// The flattened fields of the CloudTrail mapping: ECS prefix and raw record member.
const FLATTENED: [(&str, &str); 4] = [
    ("aws.cloudtrail.flattened.request_parameters", "requestParameters"),
    ("aws.cloudtrail.flattened.response_elements", "responseElements"),
    ("aws.cloudtrail.flattened.additional_eventdata", "additionalEventData"),
    ("aws.cloudtrail.flattened.service_event_details", "serviceEventDetails"),
];

/// Fields the rules may not read: their mapping is `text`/`match_only_text` (analysis is not
/// reproduced) or they are not indexed.
const REFUSED_FIELDS: [&str; 3] = ["message", "error.message", "event.original"];

/// Whether `path` is the `text` multi-field (`match_only_text`) that Elasticsearch's
/// `ecs@mappings` dynamic templates give the keyword fields of these path patterns
/// (`user_agent.original.text`, `user.name.text`, `process.command_line.text`, ...).
fn text_multi_field(path: &str) -> bool {
    const ENDINGS: [&str; 13] = [
        ".title",
        ".executable",
        ".name",
        ".working_directory",
        ".full_name",
        "file.path",
        "file.target_path",
        "os.full",
        ".body.content",
        "url.full",
        "url.original",
        "command_line",
        "stack_trace",
    ];
    const WHOLE: [&str; 3] = ["email.subject", "vulnerability.description", "user_agent.original"];
    path.strip_suffix(".text")
        .is_some_and(|f| WHOLE.contains(&f) || ENDINGS.iter().any(|e| f.ends_with(e)))
}

/// The mapping and the raw source of an ECS field, or why a rule may not read it.
pub fn field(path: &str) -> Result<(FieldKind, Source), String> {
    let refused = || Err(format!("field {path} is analyzed text or not indexed"));
    if REFUSED_FIELDS.contains(&path) {
        return refused();
    }
    for (prefix, raw) in FLATTENED {
        if let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) {
            return Ok((FieldKind::Flattened, Source::Flattened(raw, rest.to_string())));
        }
        if path == prefix {
            return Ok((FieldKind::Flattened, Source::Flattened(raw, String::new())));
        }
    }
    // Inside a flattened field every leaf is a keyword, whatever its key.
    if text_multi_field(path) {
        return refused();
    }
    let keyword = FieldKind::Keyword { ignore_above: 1024 };
    let long_keyword = FieldKind::Keyword { ignore_above: 8191 };
    let source = match path {
        "event.dataset" | "data_stream.dataset" => Source::Dataset,
        "event.provider" => Source::Path(&["eventSource"]),
        "event.id" => Source::Path(&["eventID"]),
        "event.action" => Source::Rendered("eventName"),
        "event.outcome" => Source::Outcome,
        "cloud.region" => Source::Path(&["awsRegion"]),
        "source.address" => Source::Path(&["sourceIPAddress"]),
        "source.ip" => Source::SourceIp,
        "user_agent.original" => Source::Path(&["userAgent"]),
        "user.name" => Source::UserName,
        "user.id" => Source::UserId,
        "cloud.account.id" => Source::AccountId,
        "aws.cloudtrail.user_identity.type" => Source::Path(&["userIdentity", "type"]),
        "aws.cloudtrail.user_identity.arn" => Source::Path(&["userIdentity", "arn"]),
        "aws.cloudtrail.user_identity.access_key_id" => {
            Source::Path(&["userIdentity", "accessKeyId"])
        }
        "aws.cloudtrail.user_identity.invoked_by" => Source::Path(&["userIdentity", "invokedBy"]),
        "aws.cloudtrail.user_identity.session_context.session_issuer.principal_id" => {
            Source::Path(&["userIdentity", "sessionContext", "sessionIssuer", "principalId"])
        }
        "aws.cloudtrail.user_identity.session_context.session_issuer.arn" => {
            Source::Path(&["userIdentity", "sessionContext", "sessionIssuer", "arn"])
        }
        "aws.cloudtrail.user_identity.session_context.session_issuer.account_id" => {
            Source::Path(&["userIdentity", "sessionContext", "sessionIssuer", "accountId"])
        }
        "aws.cloudtrail.user_identity.session_context.session_issuer.type" => {
            Source::Path(&["userIdentity", "sessionContext", "sessionIssuer", "type"])
        }
        "aws.cloudtrail.error_code" => Source::Path(&["errorCode"]),
        "aws.cloudtrail.error_message" => Source::Path(&["errorMessage"]),
        "aws.cloudtrail.event_type" => Source::Path(&["eventType"]),
        "aws.cloudtrail.event_category" => Source::Path(&["eventCategory"]),
        "aws.cloudtrail.recipient_account_id" => Source::Path(&["recipientAccountId"]),
        "aws.cloudtrail.request_id" => Source::Path(&["requestID"]),
        "aws.cloudtrail.management_event" => Source::Path(&["managementEvent"]),
        "aws.cloudtrail.read_only" => return Ok((FieldKind::Boolean, Source::Path(&["readOnly"]))),
        "aws.cloudtrail.request_parameters" | "aws.cloudtrail.response_elements" => {
            return Ok((long_keyword, Source::Unknown))
        }
        _ => Source::Unknown,
    };
    Ok((keyword, source))
}

/// A compiled condition on one field.
#[derive(Clone, Debug)]
pub(crate) enum Test {
    Exists,
    Exact(String),
    Wildcard(Pattern),
}

/// A rule's boolean program over the rule set's fields.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Pred(usize, Test),
}

/// One field the rule set reads.
#[derive(Clone, Debug)]
struct Field {
    path: String,
    kind: FieldKind,
    source: Source,
}

/// Rules compiled together: the union of the fields they read (each probed once per document)
/// and one boolean program per rule. Immutable and `Sync`: threads share one.
#[derive(Clone, Debug)]
pub struct RuleSet {
    fields: Vec<Field>,
    exprs: Vec<Expr>,
    /// `event.dataset` and `data_stream.dataset` among the fields (envelopes need them).
    dataset_fields: [usize; 2],
    /// The roots of the flattened fields among the fields: their limits hold whatever the rules
    /// read.
    flattened_roots: Vec<usize>,
    /// Per rule, the fields its program reads.
    rule_fields: Vec<Vec<usize>>,
    assume_dataset: Option<String>,
}

/// The part of a rule set one decision needs: the rules the prefilter left possible, and the
/// fields they read (with the dataset fields and flattened roots, which every document is
/// read for). Rules outside it are `false` by the prefilter's soundness, so they are neither
/// walked for nor evaluated.
#[derive(Clone, Debug, Default)]
struct Scope {
    rules: Vec<usize>,
    fields: Vec<usize>,
}

impl Scope {
    /// Rules `rules` of `set`.
    fn of(&mut self, set: &RuleSet, rules: impl Iterator<Item = usize>) {
        self.rules.clear();
        self.rules.extend(rules);
        self.fields.clear();
        self.fields.extend(set.dataset_fields);
        self.fields.extend(&set.flattened_roots);
        for &r in &self.rules {
            self.fields.extend(&set.rule_fields[r]);
        }
        self.fields.sort_unstable();
        self.fields.dedup();
    }
}

impl RuleSet {
    /// Compiles parsed queries, in order; a query that reads a refused field is an error naming
    /// it, with the query's index. `assume_dataset` declares the stream's dataset (RULE.md
    /// section 4) for documents without one.
    pub fn new(
        queries: &[Query],
        assume_dataset: Option<String>,
    ) -> Result<RuleSet, (usize, String)> {
        let mut set = RuleSet {
            fields: Vec::new(),
            exprs: Vec::new(),
            dataset_fields: [0, 0],
            flattened_roots: Vec::new(),
            rule_fields: Vec::new(),
            assume_dataset,
        };
        let mapped = |set: &mut RuleSet, path| set.field_index(path).expect("a mapped field");
        set.dataset_fields =
            [mapped(&mut set, "event.dataset"), mapped(&mut set, "data_stream.dataset")];
        set.flattened_roots = FLATTENED.iter().map(|(root, _)| mapped(&mut set, root)).collect();
        for (n, q) in queries.iter().enumerate() {
            let expr = set.compile(q).map_err(|e| (n, e))?;
            let mut fields = Vec::new();
            expr_fields(&expr, &mut fields);
            set.rule_fields.push(fields);
            set.exprs.push(expr);
        }
        Ok(set)
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.exprs.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.exprs.is_empty()
    }

    /// The rules' boolean programs, in order.
    pub(crate) fn exprs(&self) -> &[Expr] {
        &self.exprs
    }

    /// Field `f`'s path and raw source.
    pub(crate) fn field_source(&self, f: usize) -> (&str, &Source) {
        (&self.fields[f].path, &self.fields[f].source)
    }

    /// The fields the rules read, each once (and the few every document is read for).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.path.as_str())
    }

    /// The fields rule `rule` reads, each once, in the order its query names them.
    pub fn rule_fields(&self, rule: usize) -> Vec<&str> {
        self.rule_fields[rule].iter().map(|&f| self.fields[f].path.as_str()).collect()
    }

    /// The fields rule `rule` reads whose values raw shapes cannot tell, so that its verdict on
    /// them may be unknown (RULES.md section 4). Flattened fields appear when the record's copy
    /// may be skipped.
    pub fn unknown_on_raw(&self, rule: usize) -> Vec<&str> {
        let unknown = |path: &str| {
            self.fields.iter().any(|f| {
                f.path == path && matches!(f.source, Source::Unknown | Source::Flattened(..))
            })
        };
        self.rule_fields(rule).into_iter().filter(|p| unknown(p)).collect()
    }

    fn field_index(&mut self, path: &str) -> Result<usize, String> {
        if let Some(i) = self.fields.iter().position(|f| f.path == path) {
            return Ok(i);
        }
        if path.len() >= usize::from(DEAD) {
            return Err(format!("field path too long: {path}"));
        }
        let (kind, source) = field(path)?;
        self.fields.push(Field { path: path.to_string(), kind, source });
        Ok(self.fields.len() - 1)
    }

    fn compile(&mut self, q: &Query) -> Result<Expr, String> {
        Ok(match q {
            Query::Or(v) => Expr::Or(v.iter().map(|q| self.compile(q)).collect::<Result<_, _>>()?),
            Query::And(v) => {
                Expr::And(v.iter().map(|q| self.compile(q)).collect::<Result<_, _>>()?)
            }
            Query::Not(q) => Expr::Not(Box::new(self.compile(q)?)),
            Query::Field(path, value) => {
                let f = self.field_index(path)?;
                let test = match value {
                    Value::Exists => Test::Exists,
                    Value::Exact(v) => Test::Exact(v.clone()),
                    Value::Wildcard(p) => Test::Wildcard(p.clone()),
                };
                Expr::Pred(f, test)
            }
        })
    }
}

/// The fields `e` reads, each once, in the order it names them.
fn expr_fields(e: &Expr, out: &mut Vec<usize>) {
    match e {
        Expr::Or(v) | Expr::And(v) => v.iter().for_each(|e| expr_fields(e, out)),
        Expr::Not(e) => expr_fields(e, out),
        Expr::Pred(f, _) if !out.contains(f) => out.push(*f),
        Expr::Pred(..) => {}
    }
}

/// A value of a field, for the length of one decision.
#[derive(Clone, Debug)]
enum Val {
    /// A leaf of the tape.
    Node(u32),
    /// Text the pipeline makes (`aws.cloudtrail`, `success`, a lowercased value).
    Text(String),
    /// Some string that equals no term: `event.action` rendered from a non-string `eventName`
    /// (RULE.md section 4, "a string like `{0=DisableKey}`"), and whether it is surely short
    /// enough to be indexed (its value's own string form is at most half of `ignore_above`).
    Opaque { short: bool },
}

/// The values of every field of the rule set for one document or record: per field, its values,
/// or `None` when unknown.
#[derive(Clone, Debug, Default)]
struct Values {
    fields: Vec<Option<Vec<Val>>>,
}

impl Values {
    fn reset(&mut self, n: usize) {
        self.fields.resize_with(n, || Some(Vec::new()));
        for f in &mut self.fields {
            match f {
                Some(v) => v.clear(),
                None => *f = Some(Vec::new()),
            }
        }
    }
}

/// The reusable state for deciding documents against a [`RuleSet`]: parsers, scratch, values.
/// Holds mutable scratch space: one per thread.
pub struct PackEvaluator {
    outer: Parser,
    inner: Parser,
    keys: Vec<u32>,
    values: Values,
    states: Vec<u16>,
    verdicts: Vec<Tri>,
    scope: Scope,
}

impl Default for PackEvaluator {
    fn default() -> PackEvaluator {
        PackEvaluator::new()
    }
}

impl std::fmt::Debug for PackEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackEvaluator").finish_non_exhaustive()
    }
}

/// The decision on one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackVerdict {
    /// Not a document Elasticsearch would index: no rule matches.
    Invalid,
    /// Each rule has a verdict ([`PackEvaluator::verdicts`]); the shape it was read as.
    Decided(Shape),
}

/// Deepest nesting of objects inside a flattened field (Elasticsearch's `depth_limit`).
const FLATTENED_DEPTH: usize = 20;
/// A flattened leaf whose key and value exceed this many bytes makes Elasticsearch reject the
/// document.
const FLATTENED_LEAF: usize = 32_766;

impl PackEvaluator {
    /// Fresh scratch space.
    pub fn new() -> PackEvaluator {
        PackEvaluator {
            outer: Parser::new(),
            inner: Parser::new(),
            keys: Vec::new(),
            values: Values::default(),
            states: Vec::new(),
            verdicts: Vec::new(),
            scope: Scope::default(),
        }
    }

    /// The verdicts of the last [`PackEvaluator::evaluate`], one per rule, in the set's order
    /// (all [`Tri::False`] for an invalid document).
    pub fn verdicts(&self) -> &[Tri] {
        &self.verdicts
    }

    /// Decides one line against every rule of `set`.
    pub fn evaluate(&mut self, set: &RuleSet, line: &[u8]) -> PackVerdict {
        self.scope.of(set, 0..set.len());
        self.decide_in_scope(set, line)
    }

    /// Decides one line against the rules of `set` that `mask` holds, which must hold every
    /// rule [`PackPrefilter::possible`](crate::packfilter::PackPrefilter::possible) leaves
    /// possible on the line: the others are `false` there, and are given that verdict without
    /// being evaluated, or their fields walked for.
    pub fn evaluate_masked(
        &mut self,
        set: &RuleSet,
        line: &[u8],
        mask: &crate::packfilter::RuleMask,
    ) -> PackVerdict {
        self.scope.of(set, mask.iter().filter(|&r| r < set.len()));
        self.decide_in_scope(set, line)
    }

    fn decide_in_scope(&mut self, set: &RuleSet, line: &[u8]) -> PackVerdict {
        let line = line.strip_prefix(BOM).unwrap_or(line);
        let PackEvaluator { outer, inner, keys, values, states, verdicts, scope } = self;
        let scope = &*scope;
        verdicts.clear();
        verdicts.resize(set.exprs.len(), Tri::False);
        let decided = outer.with_tape(line, false, |tape, encoded| {
            if !matches!(tape.first(), Some(Node::Object { .. })) {
                return None;
            }
            values.reset(set.fields.len());
            // Only the root's states start at zero: the walk writes a level's states for the
            // fields it reads there before going down to it. Zeroing every level (85 rules:
            // about 900 KB) cost more than walking a candidate, and evicted the cache.
            let n = set.fields.len();
            if states.len() < n * (crate::MAX_DEPTH + 2) {
                states.resize(n * (crate::MAX_DEPTH + 2), 0);
            }
            states[..n].fill(0);
            let mut walk = Walk { tape, set, active: &scope.fields, states, values, keys };
            walk.value(0, 0, true, None).ok()?;
            // One per document: its number tokens are read at most once, whatever reads them.
            let mut doc = Doc::new(tape, line, encoded);
            resolve_leaves(&mut doc, values, false);
            let mut ctx = Inner { inner, keys };
            Some(decide(set, scope, &mut doc, values, verdicts, &mut ctx))
        });
        match decided.flatten() {
            Some(shape) => PackVerdict::Decided(shape),
            None => {
                verdicts.iter_mut().for_each(|v| *v = Tri::False);
                PackVerdict::Invalid
            }
        }
    }
}

impl PackEvaluator {
    /// Decides `record`, one record of a CloudTrail log file already judged valid as a whole,
    /// as the raw record it is (never as a container of its own); false when it is not one.
    pub fn evaluate_raw(&mut self, set: &RuleSet, record: &[u8]) -> bool {
        let PackEvaluator { outer, values, verdicts, scope, .. } = self;
        scope.of(set, 0..set.len());
        let scope = &*scope;
        verdicts.clear();
        verdicts.resize(set.exprs.len(), Tri::False);
        let raw = outer.with_tape(record, false, |tape, encoded| {
            if !is_raw_record(tape, 0) {
                return false;
            }
            eval_raw(set, scope, &mut Doc::new(tape, record, encoded), 0, values, verdicts);
            true
        });
        raw == Some(true)
    }
}

/// One walk of a document's tape, collecting every field's values (see [`Walk::value`]).
struct Walk<'a, 't, 'n> {
    tape: &'t [Node<'n>],
    set: &'a RuleSet,
    /// The fields walked for (the scope's); the others' states are never read.
    active: &'a [usize],
    states: &'a mut [u16],
    values: &'a mut Values,
    keys: &'a mut Vec<u32>,
}

impl Walk<'_, '_, '_> {
    /// Walks the value at `i`, recording each field's leaves, and rejecting what
    /// Elasticsearch rejects (repeated keys; flattened leaves too long or objects too deep).
    /// `level` picks the slice of `states` that holds the fields' matched prefix lengths at
    /// this depth; `flat` is (object depth, key length, root field) inside a flattened field.
    /// Returns the index just past the value.
    fn value(
        &mut self,
        i: usize,
        level: usize,
        at_root: bool,
        flat: Option<Flat>,
    ) -> Result<usize, ()> {
        let n = self.set.fields.len();
        let tape = self.tape;
        match tape[i] {
            Node::Object { len, .. } => {
                check_unique_keys(tape, i, len, self.keys).map_err(|_| ())?;
                // Every object inside a flattened field counts, in arrays too.
                let flat = flat.map(|f| Flat { depth: f.depth + 1, ..f });
                if flat.is_some_and(|f| f.depth > FLATTENED_DEPTH) {
                    return Err(());
                }
                let mut j = i + 1;
                for _ in 0..len {
                    let Node::String(key) = tape[j] else { return Err(()) };
                    let (here, next) = self.states.split_at_mut((level + 1) * n);
                    let here = &here[level * n..];
                    let mut reached = false;
                    for &f in self.active {
                        next[f] = extend(&self.set.fields[f].path, here[f], at_root, key);
                        reached |= next[f] != DEAD;
                    }
                    let inner_flat = match flat {
                        Some(f) => {
                            let key_len = f.key_len + usize::from(f.key_len > 0) + key.len();
                            Some(Flat { key_len, ..f })
                        }
                        None => self.set.flattened_roots.iter().find_map(|&root| {
                            let path = &self.set.fields[root].path;
                            if usize::from(next[root]) == path.len() {
                                return Some(Flat { depth: 0, key_len: 0, root });
                            }
                            // A dotted key that goes on past the root (`root.a.b`) is the root
                            // holding the key `a.b` (inside a flattened field keys are not
                            // split): the root's object is entered.
                            let tail = past(path, here[root], at_root, key)?;
                            Some(Flat { depth: 1, key_len: tail.len(), root })
                        }),
                    };
                    j = if !reached && inner_flat.is_none() {
                        // No field reaches below this key: only its objects' keys need checking.
                        check_keys_below(tape, j + 1, self.keys).map_err(|_| ())?
                    } else {
                        self.value(j + 1, level + 1, false, inner_flat)?
                    };
                }
                Ok(j)
            }
            Node::Array { len, .. } => {
                // Array elements stay at the same path: this level's states, one level down.
                let (here, next) = self.states.split_at_mut((level + 1) * n);
                next[..n].copy_from_slice(&here[level * n..]);
                let mut j = i + 1;
                for _ in 0..len {
                    j = self.value(j, level + 1, at_root, flat)?;
                }
                Ok(j)
            }
            node => {
                if let Some(f) = flat {
                    if let Node::String(s) = node {
                        if f.key_len + s.len() > FLATTENED_LEAF {
                            return Err(());
                        }
                    }
                    // The flattened root is searched on every leaf below it.
                    if usize::from(self.states[level * n + f.root])
                        != self.set.fields[f.root].path.len()
                    {
                        if let Some(vals) = self.values.fields[f.root].as_mut() {
                            if !matches!(node, Node::Static(StaticNode::Null)) {
                                vals.push(Val::Node(i as u32));
                            }
                        }
                    }
                }
                let here = &self.states[level * n..(level + 1) * n];
                for &f in self.active {
                    if usize::from(here[f]) == self.set.fields[f].path.len() {
                        if let Some(vals) = self.values.fields[f].as_mut() {
                            vals.push(Val::Node(i as u32));
                        }
                    }
                }
                Ok(i + 1)
            }
        }
    }
}

/// When `key`, extending a matched prefix `pos` of `path` (as [`extend`] does), covers the rest
/// of `path` and goes on past it with `.`: what follows.
fn past<'k>(path: &str, pos: u16, at_root: bool, key: &'k str) -> Option<&'k str> {
    if pos == DEAD {
        return None;
    }
    let rest = &path[usize::from(pos)..];
    let rest = if at_root { rest } else { rest.strip_prefix('.')? };
    key.strip_prefix(rest)?.strip_prefix('.')
}

/// Where a walk is inside a flattened field.
#[derive(Clone, Copy, Debug)]
struct Flat {
    /// Objects entered within the field, the root's own first (objects in arrays count).
    depth: usize,
    /// The length of the dotted key below the root.
    key_len: usize,
    /// The root's field index.
    root: usize,
}

/// What deciding records held in strings needs.
struct Inner<'p> {
    inner: &'p mut Parser,
    keys: &'p mut Vec<u32>,
}

/// Recognises the shape (RULE.md section 4, in order) and fills `verdicts`.
fn decide(
    set: &RuleSet,
    scope: &Scope,
    doc: &mut Doc,
    ecs: &Values,
    verdicts: &mut [Tri],
    inner: &mut Inner,
) -> Shape {
    let tape = doc.tape;
    let mut raw = Values::default();
    // 1. A CloudTrail log file.
    if let Some(records) = records_of(tape, 0) {
        decide_records(set, scope, doc, &records, &mut raw, verdicts);
        return Shape::Records;
    }
    // 2. A LookupEvents response.
    if let Some(events) = member(tape, 0, "Events") {
        if matches!(tape[events], Node::Array { len, .. } if len > 0) {
            let mut all = vec![Tri::False; verdicts.len()];
            let mut one = vec![Tri::False; verdicts.len()];
            let ok = children(tape, events).all(|event| {
                let Some(record) = member(tape, event, "CloudTrailEvent") else { return false };
                let ok = inner.held(set, scope, doc, record, false, &mut one);
                all.iter_mut().zip(&one).for_each(|(a, b)| *a = a.or(*b));
                ok
            });
            if ok {
                verdicts.copy_from_slice(&all);
                return Shape::LookupEvents;
            }
        }
    }
    // 3. EventBridge.
    let detail_type = member(tape, 0, "detail-type").map(|i| tape[i]);
    if detail_type == Some(Node::String(EVENTBRIDGE_DETAIL_TYPE)) {
        if let Some(d) = member(tape, 0, "detail").filter(|&d| is_raw_record(tape, d)) {
            eval_raw(set, scope, doc, d, &mut raw, verdicts);
            return Shape::EventBridge;
        }
    }
    // 4. A raw record.
    if is_raw_record(tape, 0) {
        eval_raw(set, scope, doc, 0, &mut raw, verdicts);
        return Shape::Raw;
    }
    // 5. A shipper envelope: CloudTrail's dataset, or no dataset at all.
    let [a, b] = set.dataset_fields.map(|f| ecs.fields[f].as_deref().unwrap_or(&[]));
    let names =
        |vals: &[Val]| vals.iter().any(|v| text(tape, v).as_deref() == Some(CLOUDTRAIL_DATASET));
    let counted = |vals: &[Val]| vals.iter().any(|v| text(tape, v).is_some());
    if names(a) || names(b) || (!counted(a) && !counted(b)) {
        if let Some(message) = member(tape, 0, "message") {
            if inner.held(set, scope, doc, message, true, verdicts) {
                return Shape::Envelope;
            }
        }
    }
    // 6. ECS.
    let mut ecs = ecs.clone();
    if let Some(declared) = &set.assume_dataset {
        for f in set.dataset_fields {
            if let Some(vals) =
                ecs.fields[f].as_mut().filter(|v| !v.iter().any(|v| text(tape, v).is_some()))
            {
                vals.push(Val::Text(declared.clone()));
            }
        }
    }
    eval_all(set, scope, tape, &ecs, verdicts);
    Shape::Ecs
}

/// The records of a CloudTrail log file at `obj`, when it is one.
fn records_of(tape: &[Node], obj: usize) -> Option<Vec<usize>> {
    let records = member(tape, obj, "Records")?;
    if !matches!(tape[records], Node::Array { len, .. } if len > 0) {
        return None;
    }
    let records: Vec<usize> = children(tape, records).collect();
    records.iter().all(|&r| is_raw_record(tape, r)).then_some(records)
}

/// Every rule on every record: a rule fires when it fires on some record (Kleene's `or`).
fn decide_records(
    set: &RuleSet,
    scope: &Scope,
    doc: &mut Doc,
    records: &[usize],
    raw: &mut Values,
    verdicts: &mut [Tri],
) {
    let mut one = vec![Tri::False; verdicts.len()];
    verdicts.iter_mut().for_each(|v| *v = Tri::False);
    for &r in records {
        eval_raw(set, scope, doc, r, raw, &mut one);
        verdicts.iter_mut().zip(&one).for_each(|(a, b)| *a = a.or(*b));
    }
}

impl Inner<'_> {
    /// Decides the document held as a string at `i` of `doc`: a raw record (a LookupEvents
    /// element's `CloudTrailEvent`), or, when `log_files`, also a log file (an envelope's
    /// `message`); false when it is none of those.
    fn held(
        &mut self,
        set: &RuleSet,
        scope: &Scope,
        doc: &Doc,
        i: usize,
        log_files: bool,
        verdicts: &mut [Tri],
    ) -> bool {
        let Node::String(text) = doc.tape[i] else { return false };
        let keys = &mut *self.keys;
        self.inner
            .with_tape(text.as_bytes(), doc.encoded, |t, encoded| {
                if !valid(t, keys) {
                    return false;
                }
                let mut raw = Values::default();
                let mut doc = Doc::new(t, text.as_bytes(), encoded);
                if let Some(records) = log_files.then(|| records_of(t, 0)).flatten() {
                    decide_records(set, scope, &mut doc, &records, &mut raw, verdicts);
                    return true;
                }
                if is_raw_record(t, 0) {
                    eval_raw(set, scope, &mut doc, 0, &mut raw, verdicts);
                    return true;
                }
                false
            })
            .unwrap_or(false)
    }
}

/// Whether a document inside a string is an object with no repeated key.
fn valid(tape: &[Node], keys: &mut Vec<u32>) -> bool {
    matches!(tape.first(), Some(Node::Object { .. })) && check_keys_below(tape, 0, keys).is_ok()
}

/// Every rule of the scope on the raw record at `record` of `doc`: all false when Elasticsearch
/// refuses the document the pipeline makes of it.
fn eval_raw(
    set: &RuleSet,
    scope: &Scope,
    doc: &mut Doc,
    record: usize,
    values: &mut Values,
    verdicts: &mut [Tri],
) {
    if raw_values(set, scope, doc, record, values) {
        eval_all(set, scope, doc.tape, values, verdicts);
    } else {
        scope.rules.iter().for_each(|&r| verdicts[r] = Tri::False);
    }
}

/// Every field's values for the raw record at `record` of `doc`, as the pipeline would give
/// them; false (the values left unset) when the document it makes breaks the flattened fields'
/// limits, which makes Elasticsearch refuse it (RULES.md section 3).
fn raw_values(
    set: &RuleSet,
    scope: &Scope,
    doc: &mut Doc,
    record: usize,
    values: &mut Values,
) -> bool {
    let tape = doc.tape;
    let copied = FLATTENED.map(|(_, name)| copied(tape, record, name, doc));
    if copied.iter().any(|c| matches!(*c, Copied::At(root) if !copy_fits(tape, root, 0, 1, doc))) {
        return false;
    }
    values.fields.clear();
    values.fields.resize_with(set.fields.len(), || Some(Vec::new()));
    for &f in &scope.fields {
        values.fields[f] = raw_field(tape, record, &set.fields[f], &copied, doc);
    }
    resolve_leaves(doc, values, true);
    true
}

/// What the pipeline copies of a raw record's member into its flattened field.
#[derive(Clone, Copy)]
enum Copied {
    /// Nothing: the member is absent, or nothing is left of it after the removals.
    Nothing,
    /// The member's value, at this tape index.
    At(usize),
    /// Not copied: its `toString()` reaches 32,766 characters. What the field holds is unknown.
    TooLong,
}

/// What the pipeline copies of member `name` of the raw record at `record`.
fn copied(tape: &[Node], record: usize, name: &str, doc: &mut Doc) -> Copied {
    let Some(root) = member(tape, record, name) else { return Copied::Nothing };
    match to_string_len(tape, root, doc) {
        None => Copied::Nothing,
        Some(n) if n >= FLATTENED_LEAF => Copied::TooLong,
        Some(_) => Copied::At(root),
    }
}

/// Whether the flattened copy of the value at `i` stays within Elasticsearch's limits, as
/// [`Walk::value`] checks an ECS document's: objects (this one at `level`) at most
/// [`FLATTENED_DEPTH`] deep, and no leaf whose dotted key below the field (`key_len` bytes) and
/// text take more than [`FLATTENED_LEAF`] bytes. What the pipeline removes is not copied.
fn copy_fits(tape: &[Node], i: usize, key_len: usize, level: usize, doc: &mut Doc) -> bool {
    match tape[i] {
        _ if is_removed(tape, i) => true,
        Node::Object { .. } => {
            level <= FLATTENED_DEPTH
                && member_keys(tape, i).all(|k| {
                    let Node::String(key) = tape[k] else { return true };
                    let key_len = key_len + usize::from(key_len > 0) + key.len();
                    copy_fits(tape, k + 1, key_len, level + 1, doc)
                })
        }
        Node::Array { .. } => children(tape, i).all(|c| copy_fits(tape, c, key_len, level, doc)),
        Node::String(s) => key_len == 0 || key_len + s.len() <= FLATTENED_LEAF,
        Node::Static(_) => key_len == 0 || key_len + doc.java_len(i) <= FLATTENED_LEAF,
    }
}

/// The value at `path` of direct object members below `at` (no array on the way), unless the
/// pipeline removes it.
fn value_at(tape: &[Node], at: usize, path: &[&str]) -> Option<usize> {
    let v = path.iter().try_fold(at, |v, key| member(tape, v, key))?;
    (!is_removed(tape, v)).then_some(v)
}

/// A parsed document: its tape, its text, whether the tape is of a rewrite (see
/// [`crate::normalize`]: its strings encode lone surrogates), and its number tokens, read once,
/// when first needed: the tape keeps numbers' values, not their text, which the pipeline's
/// `toString()` of a raw record and Elasticsearch's keyword of an ECS number both use.
struct Doc<'t, 'n, 's> {
    tape: &'t [Node<'n>],
    src: &'s [u8],
    encoded: bool,
    /// The tape indices of the numbers, ascending, and each one's token.
    tokens: Option<(Vec<usize>, Vec<&'s str>)>,
}

impl<'t, 'n, 's> Doc<'t, 'n, 's> {
    fn new(tape: &'t [Node<'n>], src: &'s [u8], encoded: bool) -> Doc<'t, 'n, 's> {
        Doc { tape, src, encoded, tokens: None }
    }

    /// The token of the number at tape index `i`.
    fn token(&mut self, i: usize) -> Option<&'s str> {
        let (tape, src) = (self.tape, self.src);
        let (at, tokens) = self.tokens.get_or_insert_with(|| {
            ((0..tape.len()).filter(|&i| is_number(&tape[i])).collect(), number_tokens(src))
        });
        at.binary_search(&i).ok().and_then(|k| tokens.get(k).copied())
    }

    /// The length of the pipeline's text of the number at tape index `i`.
    fn java_len(&mut self, i: usize) -> usize {
        self.token(i).map_or(0, |t| utf16_len(&jackson(t)))
    }
}

fn is_number(node: &Node) -> bool {
    matches!(node, Node::Static(StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_)))
}

/// Replaces the leaves among `values` whose text the tape does not hold by the text
/// Elasticsearch indexes: a number's token (see [`Doc`]) as written in an ECS document (`1e2`
/// stays "1e2"), and in a raw record the pipeline's parse written back by Java (integers as
/// their digits, whatever their size; others as `Double.toString`); a string of a rewritten
/// tape with its lone surrogates as U+FFFD, as Jackson reads them (RULE.md section 3).
fn resolve_leaves(doc: &mut Doc, values: &mut Values, raw: bool) {
    let tape = doc.tape;
    for v in values.fields.iter_mut().flatten().flatten() {
        let Val::Node(i) = *v else { continue };
        match tape[i as usize] {
            node if is_number(&node) => {
                if let Some(token) = doc.token(i as usize) {
                    *v = Val::Text(if raw { jackson(token) } else { token.to_string() });
                }
            }
            Node::String(s) if doc.encoded => {
                if let std::borrow::Cow::Owned(text) = crate::normalize::indexed_text(s) {
                    *v = Val::Text(text);
                }
            }
            _ => {}
        }
    }
}

/// The number tokens of a JSON text, in order. Strings are skipped with `memchr2` to their
/// closing quote: a record is mostly strings, and its few numbers are outside them.
fn number_tokens(src: &[u8]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        match src[i] {
            b'"' => {
                i += 1;
                // To just past the next quote no backslash escapes, or to the end.
                loop {
                    match memchr::memchr2(b'"', b'\\', src.get(i..).unwrap_or_default()) {
                        Some(k) if src[i + k] == b'\\' => i += k + 2,
                        Some(k) => break i += k + 1,
                        None => break i = src.len(),
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < src.len()
                    && matches!(src[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                out.push(std::str::from_utf8(&src[start..i]).unwrap_or(""));
            }
            _ => i += 1,
        }
    }
    out
}

/// A raw record's number as the pipeline indexes it: Jackson reads an integer token as an
/// integer (a `BigInteger` when long overflows) and anything else as a double, and Java writes
/// it back.
fn jackson(token: &str) -> String {
    if !token.contains(['.', 'e', 'E']) {
        let digits = token.strip_prefix('-').unwrap_or(token);
        return if digits.bytes().all(|b| b == b'0') { "0".to_string() } else { token.to_string() };
    }
    token.parse::<f64>().map_or_else(|_| token.to_string(), java_double)
}

/// The value at `path` below `at` (member by member, arrays flattened), leaves only, without
/// what the pipeline removes.
fn at_path(tape: &[Node], at: usize, path: &[&str], out: &mut Vec<Val>) {
    match tape[at] {
        Node::Array { .. } => children(tape, at).for_each(|c| at_path(tape, c, path, out)),
        Node::Object { .. } => {
            if let Some((first, rest)) = path.split_first() {
                if let Some(v) = member(tape, at, first) {
                    at_path(tape, v, rest, out);
                }
            }
        }
        _ if path.is_empty() && !is_removed(tape, at) => out.push(Val::Node(at as u32)),
        _ => {}
    }
}

/// A field's values in the raw record at `record`; `copied` is what the pipeline copies of each
/// member of [`FLATTENED`].
fn raw_field(
    tape: &[Node],
    record: usize,
    field: &Field,
    copied: &[Copied; 4],
    doc: &mut Doc,
) -> Option<Vec<Val>> {
    let mut out = Vec::new();
    let first_string = |path: &[&str]| {
        let mut vals = Vec::new();
        at_path(tape, record, path, &mut vals);
        vals.into_iter()
            .find(|v| matches!(v, Val::Node(i) if matches!(tape[*i as usize], Node::String(_))))
    };
    match &field.source {
        Source::Dataset => out.push(Val::Text(CLOUDTRAIL_DATASET.to_string())),
        Source::Path(path) => at_path(tape, record, path, &mut out),
        Source::Rendered(key) => match member(tape, record, key) {
            Some(v) if is_removed(tape, v) => {}
            Some(v) if matches!(tape[v], Node::String(_)) => out.push(Val::Node(v as u32)),
            Some(v) => {
                let short = to_string_len(tape, v, doc).is_some_and(|n| n <= 1024 / 2);
                out.push(Val::Opaque { short });
            }
            None => {}
        },
        Source::Outcome => {
            let failed = ["errorCode", "errorMessage"]
                .iter()
                .any(|k| member(tape, record, k).is_some_and(|v| !is_removed(tape, v)));
            let console = member(tape, record, "eventName").map(|i| tape[i])
                == Some(Node::String("ConsoleLogin"));
            let login =
                console.then(|| first_string(&["responseElements", "ConsoleLogin"])).flatten();
            match login.and_then(|v| text(tape, &v).map(|t| t.into_owned())) {
                Some(t) => out.push(Val::Text(t.to_lowercase())),
                None => out.push(Val::Text(if failed { "failure" } else { "success" }.to_string())),
            }
        }
        Source::SourceIp => {
            // The pipeline's grok reads a string only: an array gives no `source.ip`.
            if let Some(v) = member(tape, record, "sourceIPAddress") {
                if matches!(tape[v], Node::String(t) if t.parse::<std::net::IpAddr>().is_ok()) {
                    out.push(Val::Node(v as u32));
                }
            }
        }
        Source::UserName => {
            let kind = first_string(&["userIdentity", "type"])
                .and_then(|v| text(tape, &v).map(|t| t.into_owned()));
            // Copied whole from the first path present (arrays and numbers included).
            let issuer_path = ["userIdentity", "sessionContext", "sessionIssuer", "userName"];
            let issuer = matches!(kind.as_deref(), Some("AssumedRole" | "FederatedUser"))
                .then(|| value_at(tape, record, &issuer_path))
                .flatten();
            let name = issuer.or_else(|| value_at(tape, record, &["userIdentity", "userName"]));
            let auth = member(tape, record, "eventName").map(|i| tape[i])
                == Some(Node::String("UserAuthentication"));
            let name = name.or_else(|| {
                auth.then(|| value_at(tape, record, &["additionalEventData", "UserName"])).flatten()
            });
            if let Some(name) = name {
                at_path(tape, name, &[], &mut out);
            }
        }
        Source::UserId => {
            let kind = first_string(&["userIdentity", "type"])
                .and_then(|v| text(tape, &v).map(|t| t.into_owned()));
            let path: &[&str] = if kind.as_deref() == Some("IdentityCenterUser") {
                &["userIdentity", "onBehalfOf", "userId"]
            } else {
                &["userIdentity", "principalId"]
            };
            at_path(tape, record, path, &mut out);
        }
        Source::AccountId => {
            at_path(tape, record, &["userIdentity", "accountId"], &mut out);
            if out.is_empty() {
                at_path(tape, record, &["recipientAccountId"], &mut out);
            }
        }
        Source::Flattened(member_name, rest) => {
            let k = FLATTENED.iter().position(|(_, m)| m == member_name);
            match k.map(|k| copied[k]) {
                Some(Copied::At(root)) => flattened_leaves(tape, root, rest, &mut out),
                Some(Copied::TooLong) => return None,
                Some(Copied::Nothing) | None => {}
            }
        }
        Source::Unknown => return None,
    }
    Some(out)
}

/// The leaves of a flattened copy of the value at `root` whose dotted key below it is `path`
/// (dotted keys and nested objects alike, arrays flattened), without what the pipeline removes.
fn flattened_leaves(tape: &[Node], root: usize, path: &str, out: &mut Vec<Val>) {
    fn walk(tape: &[Node], i: usize, path: &str, pos: u16, at_root: bool, out: &mut Vec<Val>) {
        match tape[i] {
            Node::Object { .. } => {
                for k in member_keys(tape, i) {
                    let Node::String(key) = tape[k] else { continue };
                    let next = extend(path, pos, at_root, key);
                    if next != DEAD {
                        walk(tape, k + 1, path, next, false, out);
                    }
                }
            }
            Node::Array { .. } => {
                children(tape, i).for_each(|c| walk(tape, c, path, pos, at_root, out))
            }
            _ if usize::from(pos) == path.len() && !is_removed(tape, i) => {
                out.push(Val::Node(i as u32))
            }
            _ => {}
        }
    }
    if path.is_empty() {
        // The flattened root itself: Elasticsearch searches every leaf below it.
        all_leaves(tape, root, out);
    } else {
        walk(tape, root, path, 0, true, out);
    }
}

/// Every leaf below `i`, without what the pipeline removes.
fn all_leaves(tape: &[Node], i: usize, out: &mut Vec<Val>) {
    match tape[i] {
        Node::Object { .. } | Node::Array { .. } => {
            children(tape, i).for_each(|c| all_leaves(tape, c, out))
        }
        _ if !is_removed(tape, i) => out.push(Val::Node(i as u32)),
        _ => {}
    }
}

/// The length of Java's `Map.toString()` / `List.toString()` of the value at `i` (`{k=v, ...}`,
/// `[a, b]`), as the pipeline computes before it decides whether to keep a flattened copy.
///
/// Lengths are Java's (UTF-16 code units), of the value after the pipeline's removal of empty
/// values (`None` when the value itself is removed).
fn to_string_len(tape: &[Node], i: usize, doc: &mut Doc) -> Option<usize> {
    // `{` or `[`, the entries, `, ` between two, `}` or `]`.
    let joined = |(sum, n): (usize, usize)| 2 + sum + 2 * n.saturating_sub(1);
    let add = |(sum, n): (usize, usize), len: usize| (sum + len, n + 1);
    match tape[i] {
        _ if is_removed(tape, i) => None,
        Node::Object { .. } => Some(joined(member_keys(tape, i).fold((0, 0), |acc, k| {
            match (tape[k], to_string_len(tape, k + 1, doc)) {
                (Node::String(key), Some(len)) => add(acc, utf16_len(key) + 1 + len),
                _ => acc,
            }
        }))),
        Node::Array { .. } => {
            Some(joined(children(tape, i).fold((0, 0), |acc, c| {
                to_string_len(tape, c, doc).map_or(acc, |len| add(acc, len))
            })))
        }
        Node::String(s) => Some(utf16_len(s)),
        Node::Static(StaticNode::Bool(b)) => Some(if b { 4 } else { 5 }),
        Node::Static(StaticNode::Null) => None,
        Node::Static(_) => Some(doc.java_len(i)),
    }
}

/// A string's length as Java counts it: UTF-16 code units.
fn utf16_len(s: &str) -> usize {
    if s.is_ascii() {
        return s.len();
    }
    s.chars().map(char::len_utf16).sum()
}

/// The scope's rules on `values`, whose nodes are leaves of `tape`; the other verdicts are
/// left as they are (`false`).
fn eval_all(set: &RuleSet, scope: &Scope, tape: &[Node], values: &Values, verdicts: &mut [Tri]) {
    for &r in &scope.rules {
        verdicts[r] = eval(set, tape, &set.exprs[r], values);
    }
}

fn eval(set: &RuleSet, tape: &[Node], e: &Expr, values: &Values) -> Tri {
    match e {
        Expr::Or(v) => v.iter().fold(Tri::False, |acc, e| acc.or(eval(set, tape, e, values))),
        Expr::And(v) => v.iter().fold(Tri::True, |acc, e| acc.and(eval(set, tape, e, values))),
        Expr::Not(e) => eval(set, tape, e, values).not(),
        Expr::Pred(f, test) => match &values.fields[*f] {
            None => Tri::Unknown,
            Some(vals) => vals
                .iter()
                .map(|v| holds(set.fields[*f].kind, test, tape, v))
                .fold(Tri::False, Tri::or),
        },
    }
}

/// Whether one value of a field satisfies a test, as the field's mapping indexes it.
fn holds(kind: FieldKind, test: &Test, tape: &[Node], v: &Val) -> Tri {
    if let Val::Opaque { short } = v {
        // A string of unknown text that equals no term.
        return match test {
            Test::Exists if *short => Tri::True,
            Test::Exact(_) => Tri::False,
            Test::Exists | Test::Wildcard(_) => Tri::Unknown,
        };
    }
    let Some(indexed) = indexed(kind, tape, v) else { return Tri::False };
    let held = match test {
        Test::Exists => true,
        Test::Exact(want) => indexed == *want,
        Test::Wildcard(p) => p.matches(&indexed),
    };
    if held {
        Tri::True
    } else {
        Tri::False
    }
}

/// What Elasticsearch indexes for a value under a field's mapping, or `None`.
fn indexed<'t>(kind: FieldKind, tape: &'t [Node], v: &'t Val) -> Option<std::borrow::Cow<'t, str>> {
    let t = text(tape, v)?;
    match kind {
        // Elasticsearch compares Java's `String.length()`: UTF-16 code units.
        FieldKind::Keyword { ignore_above } if utf16_len(&t) > ignore_above => None,
        FieldKind::Boolean => match t.as_ref() {
            "true" | "false" => Some(t),
            _ => None,
        },
        _ => Some(t),
    }
}

/// A leaf's text: a string as it is, a number or a boolean as its text; `None` for `null`.
fn text<'t>(tape: &'t [Node], v: &'t Val) -> Option<std::borrow::Cow<'t, str>> {
    use std::borrow::Cow;
    match v {
        Val::Text(t) => Some(Cow::Borrowed(t.as_str())),
        Val::Opaque { .. } => None,
        Val::Node(i) => match tape[*i as usize] {
            Node::String(s) => Some(Cow::Borrowed(s)),
            Node::Static(StaticNode::Bool(b)) => {
                Some(Cow::Borrowed(if b { "true" } else { "false" }))
            }
            Node::Static(StaticNode::I64(n)) => Some(Cow::Owned(n.to_string())),
            Node::Static(StaticNode::U64(n)) => Some(Cow::Owned(n.to_string())),
            Node::Static(StaticNode::F64(f)) => Some(Cow::Owned(java_double(f))),
            Node::Static(StaticNode::Null) | Node::Object { .. } | Node::Array { .. } => None,
        },
    }
}

/// `Double.toString` as Java (17+) writes a double: the shortest decimal that reads back the
/// same, `d.ddd` for magnitudes from 10^-3 to 10^7 (with `.0` when integral), else `d.dddE±n`.
/// The pipeline parses a raw record's numbers and writes them back this way.
pub fn java_double(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    if (1e-3..1e7).contains(&f.abs()) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let mut s = format!("{f:e}");
        if f.abs() < f64::MIN_POSITIVE && !s.contains('.') {
            // A subnormal whose shortest decimal has one digit: Java writes the closest
            // decimal of two digits (`4.9E-324` for the smallest double, not `5.0E-324`).
            s = format!("{f:.1e}");
        }
        let (mantissa, exponent) = s.split_once('e').expect("scientific notation");
        let mantissa =
            if mantissa.contains('.') { mantissa.to_string() } else { format!("{mantissa}.0") };
        format!("{mantissa}E{exponent}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kql::parse;

    /// The verdict of `query` on `doc`, and the shape.
    fn judge(query: &str, doc: &str) -> (Tri, PackVerdict) {
        let set = RuleSet::new(&[parse(query).unwrap()], None).unwrap();
        let mut ev = PackEvaluator::new();
        let verdict = ev.evaluate(&set, doc.as_bytes());
        (ev.verdicts()[0], verdict)
    }

    fn t(query: &str, doc: &str) -> Tri {
        judge(query, doc).0
    }

    #[test]
    fn ecs_values_follow_elasticsearch() {
        let doc = r#"{"event":{"provider":"iam.amazonaws.com","action":["X","CreateUser"]},"user_agent.original":"aws-cli/terraform","n":22,"f":22.0,"b":true,"a":{"read_only":"true"}}"#;
        assert_eq!(
            t("event.action: CreateUser and event.provider: iam.amazonaws.com", doc),
            Tri::True
        );
        assert_eq!(t("user_agent.original: *terraform*", doc), Tri::True);
        assert_eq!(t("not user_agent.original: (*pulumi* or *ansible*)", doc), Tri::True);
        assert_eq!(t("n: 22 and f: 22.0 and not f: 22 and b: true", doc), Tri::True);
        assert_eq!(t("event.provider: *", doc), Tri::True);
        assert_eq!(t("missing: *", doc), Tri::False);
        assert_eq!(t("not missing: x", doc), Tri::True, "not holds when the field is absent");
        assert_eq!(t("event.action: createuser", doc), Tri::False, "case-sensitive");
    }

    #[test]
    fn long_strings_are_not_indexed() {
        let long = "x".repeat(1025);
        let doc = format!(
            r#"{{"user.name":"{long}","aws":{{"cloudtrail":{{"request_parameters":"{long}"}}}}}}"#
        );
        assert_eq!(t("user.name: *", &doc), Tri::False, "over 1024: not indexed");
        assert_eq!(t("aws.cloudtrail.request_parameters: *xx*", &doc), Tri::True, "8191 here");
    }

    #[test]
    fn raw_records_map_as_the_pipeline_does() {
        let raw = r#"{"eventSource":"sts.amazonaws.com","eventName":"AssumeRoleWithWebIdentity","sourceIPAddress":"1.2.3.4","userIdentity":{"type":"AssumedRole","userName":"u","sessionContext":{"sessionIssuer":{"userName":"issuer"}}},"requestParameters":{"ipPermissions":{"items":[{"fromPort":22}]}},"readOnly":false}"#;
        assert_eq!(
            judge("event.provider: sts.amazonaws.com", raw).1,
            PackVerdict::Decided(Shape::Raw)
        );
        assert_eq!(
            t("data_stream.dataset: aws.cloudtrail and event.outcome: success", raw),
            Tri::True
        );
        assert_eq!(t("user.name: issuer", raw), Tri::True, "the session issuer overrides");
        assert_eq!(t("source.ip: * and source.address: 1.2.3.4", raw), Tri::True);
        assert_eq!(
            t("aws.cloudtrail.flattened.request_parameters.ipPermissions.items.fromPort: 22", raw),
            Tri::True
        );
        assert_eq!(t("aws.cloudtrail.read_only: false", raw), Tri::True);
        assert_eq!(t("source.as.organization.name: Amazon*", raw), Tri::Unknown, "GeoIP");
        assert_eq!(t("not source.as.organization.name: Amazon*", raw), Tri::Unknown);
        assert_eq!(
            t("event.provider: x and source.as.organization.name: y", raw),
            Tri::False,
            "false and unknown"
        );
        assert_eq!(
            t("event.provider: sts.amazonaws.com or source.as.organization.name: y", raw),
            Tri::True
        );
    }

    #[test]
    fn number_tokens_skip_strings_and_their_escapes() {
        let src = br#"{"a":"x\"1","b":-1.5e3,"c":["2",3,"\\"],"d\"4":5,"e":"9"#;
        assert_eq!(number_tokens(src), ["-1.5e3", "3", "5"]);
        // A string cut off after a backslash ends the text, not the search.
        assert_eq!(number_tokens(br#"[1,"a\"#), ["1"]);
        assert_eq!(number_tokens(b"[1,\"\\"), ["1"]);
    }

    #[test]
    fn raw_numbers_are_written_back_as_java_does() {
        let raw = r#"{"eventSource":"s","eventName":"e","requestParameters":{"a":1e2,"b":1.50,"c":1e-7,"d":7}}"#;
        for (q, want) in [
            ("a: 100.0", Tri::True),
            ("b: 1.5", Tri::True),
            ("c: 1.0E-7", Tri::True),
            ("d: 7", Tri::True),
            ("a: 1e2", Tri::False),
        ] {
            let q = format!("aws.cloudtrail.flattened.request_parameters.{q}");
            assert_eq!(t(&q, raw), want, "{q}");
        }
        let big = r#"{"eventSource":"s","eventName":"e","requestParameters":{"a":123456789012345678901234,"b":-0}}"#;
        assert_eq!(
            t("aws.cloudtrail.flattened.request_parameters.a: 123456789012345678901234", big),
            Tri::True,
            "Jackson keeps big integers"
        );
        assert_eq!(t("aws.cloudtrail.flattened.request_parameters.b: 0", big), Tri::True);
        let ecs = r#"{"a":1e2,"b":-0,"c":[1.50,"x"],"s":"1e2 \" 7"}"#;
        for (q, want) in [
            ("a: 1e2", Tri::True),
            ("a: 100.0", Tri::False),
            ("b: -0", Tri::True),
            ("c: 1.50", Tri::True),
            ("c: 1.5", Tri::False),
        ] {
            assert_eq!(t(q, ecs), want, "ECS numbers are their tokens: {q}");
        }
        assert_eq!(java_double(12345678.0), "1.2345678E7");
        assert_eq!(java_double(0.001), "0.001");
        assert_eq!(java_double(0.0001), "1.0E-4");
    }

    #[test]
    fn console_login_outcome_and_removed_values() {
        let login = r#"{"eventSource":"signin.amazonaws.com","eventName":"ConsoleLogin","responseElements":{"ConsoleLogin":"Failure"}}"#;
        assert_eq!(t("event.outcome: failure", login), Tri::True);
        let dash = r#"{"eventSource":"s","eventName":"e","errorCode":"-","userAgent":"none"}"#;
        assert_eq!(t("event.outcome: success and not user_agent.original: *", dash), Tri::True);
        let array = r#"{"eventSource":"s","eventName":["e"]}"#;
        assert_eq!(t("event.action: e", array), Tri::False, "a rendered array equals no term");
        assert_eq!(t("event.action: *", array), Tri::True, "but it is a value");
        assert_eq!(t("event.action: *e*", array), Tri::Unknown, "whose text is not specified");
    }

    #[test]
    fn containers_fire_when_a_record_fires() {
        let file = r#"{"Records":[{"eventSource":"a","eventName":"x"},{"eventSource":"b","eventName":"y"}]}"#;
        assert_eq!(
            judge("event.provider: b", file),
            (Tri::True, PackVerdict::Decided(Shape::Records))
        );
        assert_eq!(t("event.provider: c", file), Tri::False);
        let envelope = format!(r#"{{"message":{}}}"#, serde_json::to_string(file).unwrap());
        assert_eq!(
            judge("event.provider: b", &envelope),
            (Tri::True, PackVerdict::Decided(Shape::Envelope))
        );
        assert_eq!(t("source.as.organization.name: z", file), Tri::Unknown);
    }

    #[test]
    fn flattened_limits_reject_the_document() {
        let deep = format!(
            r#"{{"aws":{{"cloudtrail":{{"flattened":{{"request_parameters":{}1{}}}}}}},"x":1}}"#,
            r#"{"a":"#.repeat(21),
            "}".repeat(21)
        );
        assert_eq!(judge("x: 1", &deep).1, PackVerdict::Invalid);
        let ok = deep.replacen(r#"{"a":"#, "", 1).replacen('}', "", 1);
        assert_eq!(judge("x: 1", &ok).0, Tri::True);
        let long = format!(
            r#"{{"aws.cloudtrail.flattened.response_elements":{{"k":"{}"}},"x":1}}"#,
            "v".repeat(32_766)
        );
        assert_eq!(judge("x: 1", &long).1, PackVerdict::Invalid);
        let root = r#"{"aws.cloudtrail.flattened.request_parameters":{"a":{"b":"needle"}}}"#;
        assert_eq!(t("aws.cloudtrail.flattened.request_parameters: needle", root), Tri::True);
    }

    #[test]
    fn a_raw_record_whose_flattened_copy_breaks_the_limits_matches_no_rule() {
        let record = |params: &str| {
            format!(r#"{{"eventSource":"s","eventName":"X","requestParameters":{params}}}"#)
        };
        let nested = |levels: usize, inner: &str| {
            format!("{}{inner}{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
        };
        // The member's own object is level 1.
        assert_eq!(t("event.action: X", &record(&nested(20, "1"))), Tri::True);
        assert_eq!(t("event.action: X", &record(&nested(21, "1"))), Tri::False);
        assert_eq!(t("not event.action: Y", &record(&nested(21, "1"))), Tri::False, "no rule");
        // What the pipeline removes is not copied, so it is no level.
        assert_eq!(t("event.action: X", &record(&nested(25, r#""-""#))), Tri::True);
        // A leaf of more than 32,766 bytes (with its key) whose member's `toString()` is short
        // enough to be copied: three bytes, one UTF-16 unit, a character.
        let leaf = |n: usize| record(&format!(r#"{{"k":"{}"}}"#, "\u{20AC}".repeat(n)));
        assert_eq!(t("event.action: X", &leaf(10_921)), Tri::True);
        assert_eq!(t("event.action: X", &leaf(10_922)), Tri::False);
        // Not copied at all when its `toString()` reaches 32,766: the record is indexed.
        let long = record(&format!(r#"{{"k":"{}"}}"#, "v".repeat(40_000)));
        assert_eq!(t("event.action: X", &long), Tri::True);
        // In a log file, the other records are still decided.
        let file = format!(
            r#"{{"Records":[{},{{"eventSource":"s","eventName":"Y"}}]}}"#,
            record(&nested(21, "1"))
        );
        assert_eq!(t("event.action: X", &file), Tri::False);
        assert_eq!(t("event.action: Y", &file), Tri::True);
    }

    /// A lone surrogate is indexed as U+FFFD, one UTF-16 unit; the rewrite that lets simd-json
    /// parse it (see `normalize`) is not what the rules compare.
    #[test]
    fn lone_surrogates_are_indexed_as_the_replacement_character() {
        assert_eq!(t("x.y: \"a\u{FFFD}b\"", r#"{"x":{"y":"a\udc00b"}}"#), Tri::True);
        assert_eq!(t("x.y: *\u{FFFD}", r#"{"x":{"y":["q","a\ud800"]}}"#), Tri::True);
        // A genuine U+F8FF (the rewrite's marker) in a rewritten document is itself.
        let marker = r#"{"x":{"y":"\uf8ff"},"z":"\ud800"}"#;
        assert_eq!(t("x.y: \"\u{F8FF}\"", marker), Tri::True);
        assert_eq!(t("x.y: \"\u{F8FF}\"", r#"{"x":{"y":"\uf8ff"}}"#), Tri::True);
        // ignore_above (1024) counts each one once.
        let long = |n: usize| format!(r#"{{"x":{{"y":"{}"}}}}"#, "\\ud800".repeat(n));
        assert_eq!(t("x.y: *", &long(1024)), Tri::True);
        assert_eq!(t("x.y: *", &long(1025)), Tri::False);
        // Raw records too.
        let raw = r#"{"eventSource":"s","eventName":"Disable\ud800"}"#;
        assert_eq!(t("event.action: \"Disable\u{FFFD}\"", raw), Tri::True);
    }

    #[test]
    fn an_evaluator_serves_sets_of_any_size_in_turn() {
        let big = RuleSet::new(
            &[parse("a.b.c: 1 and x: 2 and y.z: 3").unwrap(), parse("d.e.f: q").unwrap()],
            None,
        )
        .unwrap();
        let small = RuleSet::new(&[parse("a.b: 1").unwrap()], None).unwrap();
        let docs = [
            r#"{"a":{"b":[1,{"c":1}]},"x":2,"y":{"z":3},"d":{"e":{"f":"q"}}}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a.b":[[1]],"d.e":{"f":["q"]}}"#,
            r#"{"x":{"a":{"b":1}}}"#,
        ];
        // One evaluator, reused as a thread's is across documents and reloads, against a
        // fresh one each time.
        let mut reused = PackEvaluator::new();
        for set in [&big, &small, &big, &small] {
            for doc in docs {
                let mut fresh = PackEvaluator::new();
                let want = fresh.evaluate(set, doc.as_bytes());
                let got = reused.evaluate(set, doc.as_bytes());
                assert_eq!((got, reused.verdicts()), (want, fresh.verdicts()), "{doc}");
            }
        }
    }

    #[test]
    fn keys_repeat_below_keys_no_field_reads() {
        let doc = r#"{"x":1,"a":{"b":[{"c":1,"c":2}]},"a.b":{"d":{"e":1,"e":2}}}"#;
        assert_eq!(judge("x: 1", doc).1, PackVerdict::Invalid);
        let once = doc.replace(r#""c":2"#, r#""f":2"#);
        assert_eq!(judge("x: 1", &once).1, PackVerdict::Invalid, "the dotted key's object");
        assert_eq!(judge("x: 1", &once.replace(r#""e":2"#, r#""f":2"#)).0, Tri::True);
    }

    #[test]
    fn refused_fields_are_named() {
        let err =
            RuleSet::new(&[parse("a:1").unwrap(), parse("message: x").unwrap()], None).unwrap_err();
        assert_eq!(err, (1, "field message is analyzed text or not indexed".to_string()));
        for text in ["user_agent.original.text", "user.name.text", "process.command_line.text"] {
            let err = RuleSet::new(&[parse(&format!("{text}: x")).unwrap()], None).unwrap_err();
            assert_eq!(err, (0, format!("field {text} is analyzed text or not indexed")));
        }
        // Keywords: a `text` key inside a flattened field, or below a field with no multi-field.
        for keyword in ["aws.cloudtrail.flattened.request_parameters.name.text", "labels.text"] {
            assert!(RuleSet::new(&[parse(&format!("{keyword}: x")).unwrap()], None).is_ok());
        }
    }
}
