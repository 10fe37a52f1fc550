//! The cross-rule prefilter of a [`RuleSet`]: finds, over whole buffers, the lines some rule of
//! the set could fire on, and for each such line which rules, without parsing it.
//!
//! # What is necessary
//!
//! A rule's query gives, in conjunctive form, *clauses* of literals: for the query to hold, each
//! clause must have one of its literals in the line's bytes. A positive predicate `field: v` on
//! a field whose value the document carries verbatim (RULES.md section 4: not a computed field
//! such as `event.outcome` or the dataset of a raw record, not one raw shapes leave unknown)
//! gives one literal: the longest run of `v` made of plain ASCII (no `"`, `\`, `/`, control or
//! non-ASCII characters), which any JSON spelling of `v` holds literally unless it writes one of
//! those characters as `\u00XX`. `and` joins its children's clauses, `or` joins one clause of
//! each child into one (no literal when a child has none), `not` and `field: *` give none.
//! Numbers need care: a raw record's numbers are written back as Java does (`1e2` is indexed as
//! "100.0"), so a value that reads as a non-integral number gives no literal, and a wildcard run
//! made only of number characters gives none.
//!
//! A literal taken from the start (end) of a whole term must sit right after (before) a
//! quote: the whole-term check that keeps `DisableKeyRotation` from being a candidate for
//! `DisableKey`. A string escaped for an envelope ends in `\"`, so the byte after the term may
//! also be a backslash.
//!
//! # Soundness
//!
//! A line holding `\u00` may spell anything: every rule with literals is then possible. A rule
//! with no clause (all its predicates negative, or on computed fields) is possible on every
//! line. A literal of a flattened field is not necessary when the record's copy may be skipped
//! (its verdict is then unknown, RULES.md section 4), which takes a line of at least
//! [`LONG_LINE`] bytes: on such lines those literals count as present. So when the prefilter
//! says a rule is impossible on a line, the rule's verdict there is `false`, neither `true` nor
//! unknown; the differential tests and the fuzz target check exactly that.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem::Finder;

use crate::ruleset::{Expr, RuleSet, Source, Test};

/// Lines at least this long may hold a flattened field whose string form reaches Elasticsearch's
/// 32,766-character limit (a number such as `9e6` writes back as `9000000.0`, three times its
/// bytes), so flattened literals are not necessary on them.
pub const LONG_LINE: usize = 32_766 / 3;

/// One literal of a clause: bytes, and the quotes a whole term's ends need.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Literal {
    bytes: Vec<u8>,
    /// The bytes start a whole term: the byte before must be `"`.
    quote_before: bool,
    /// The bytes end a whole term: the byte after must be `"` or `\`.
    quote_after: bool,
    /// From a flattened field: not necessary on long lines.
    flattened: bool,
    /// From `event.action`: action names are the rarest terms of CloudTrail traffic.
    action: bool,
}

/// A clause: the line must hold one of these literals (indices into `PackPrefilter::literals`).
type Clause = Vec<usize>;

/// Which rules of a set may fire on a line: a bit per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMask {
    words: Vec<u64>,
}

impl RuleMask {
    fn reset(&mut self, rules: usize) {
        self.words.clear();
        self.words.resize(rules.div_ceil(64), 0);
    }

    fn set(&mut self, rule: usize) {
        self.words[rule / 64] |= 1 << (rule % 64);
    }

    /// Whether rule `rule` may fire.
    pub fn contains(&self, rule: usize) -> bool {
        self.words.get(rule / 64).is_some_and(|w| w >> (rule % 64) & 1 == 1)
    }

    /// Whether no rule may fire.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The rules that may fire, in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..64).filter(move |b| w >> b & 1 == 1).map(move |b| i * 64 + b))
    }
}

/// The prefilter of a [`RuleSet`] (see the module's documentation). Immutable and `Sync`.
#[derive(Clone, Debug)]
pub struct PackPrefilter {
    rules: usize,
    literals: Vec<Literal>,
    /// Per rule, its clauses; empty for a rule possible on every line.
    clauses: Vec<Vec<Clause>>,
    /// Every literal's bytes, each once, for the second stage (overlapping matches).
    all: Option<AhoCorasick>,
    /// `all`'s pattern of each literal.
    pattern_of: Vec<usize>,
    /// The first stage: one clause per rule (its rarest), all together.
    anchors: Option<AhoCorasick>,
    /// Some rule has no clause: every line is a candidate.
    every_line: bool,
    escape: Finder<'static>,
}

impl PackPrefilter {
    /// Builds the prefilter of `set`.
    pub fn new(set: &RuleSet) -> PackPrefilter {
        let mut literals: Vec<Literal> = Vec::new();
        let mut clauses = Vec::with_capacity(set.len());
        for expr in set.exprs() {
            let cnf = necessary(set, expr, &mut literals);
            clauses.push(cnf);
        }
        let every_line = clauses.iter().any(Vec::is_empty);
        // Distinct byte strings for the automata.
        let mut patterns: Vec<&[u8]> = literals.iter().map(|l| l.bytes.as_slice()).collect();
        patterns.sort_unstable();
        patterns.dedup();
        let pattern_of = literals
            .iter()
            .map(|l| {
                patterns.binary_search(&l.bytes.as_slice()).expect("every literal is a pattern")
            })
            .collect();
        let build = |pats: &[&[u8]], kind: MatchKind| {
            (!pats.is_empty()).then(|| {
                AhoCorasick::builder()
                    .match_kind(kind)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(pats)
                    .expect("literal sets are small")
            })
        };
        let all = build(&patterns, MatchKind::Standard);
        let mut anchor_bytes: Vec<&[u8]> = clauses
            .iter()
            .filter_map(|cnf| cnf.iter().max_by_key(|c| rarity(&literals, c)))
            .flat_map(|c| c.iter().map(|&l| literals[l].bytes.as_slice()))
            .collect();
        anchor_bytes.sort_unstable();
        anchor_bytes.dedup();
        // A literal that holds another is found through the shorter one.
        let anchor_bytes: Vec<&[u8]> = anchor_bytes
            .iter()
            .copied()
            .filter(|a| {
                !anchor_bytes
                    .iter()
                    .any(|b| b.len() < a.len() && memchr::memmem::find(a, b).is_some())
            })
            .collect();
        let anchors = build(&anchor_bytes, MatchKind::LeftmostFirst);
        PackPrefilter {
            rules: set.len(),
            literals,
            clauses,
            all,
            pattern_of,
            anchors,
            every_line,
            escape: Finder::new(b"\\u00").into_owned(),
        }
    }

    /// How many rules are possible on every line (they have no necessary literal).
    pub fn unfiltered_rules(&self) -> usize {
        self.clauses.iter().filter(|c| c.is_empty()).count()
    }

    /// The first-stage literals: one clause of each rule (its rarest).
    pub fn anchor_count(&self) -> usize {
        self.anchors.as_ref().map_or(0, |a| a.patterns_len())
    }

    /// Fills `mask` with the rules that may fire on `line`; returns whether there is any.
    pub fn possible(&self, line: &[u8], mask: &mut RuleMask, scratch: &mut Vec<u8>) -> bool {
        mask.reset(self.rules);
        let escaped = self.escape.find(line).is_some();
        let long = line.len() >= LONG_LINE;
        // Per literal, whether the line holds it (with its quotes).
        scratch.clear();
        scratch.resize(self.literals.len(), 0);
        if !escaped {
            if let Some(all) = &self.all {
                // Per pattern: bit 0 found, bit 1 after a quote, bit 2 before a quote, bit 3
                // both at one occurrence.
                let mut found = vec![0u8; all.patterns_len()];
                for m in all.find_overlapping_iter(line) {
                    let before = m.start() > 0 && line[m.start() - 1] == b'"';
                    let after = matches!(line.get(m.end()), Some(b'"' | b'\\'));
                    let bits = 1
                        | u8::from(before) << 1
                        | u8::from(after) << 2
                        | u8::from(before && after) << 3;
                    found[m.pattern().as_usize()] |= bits;
                }
                for (l, lit) in self.literals.iter().enumerate() {
                    let bits = found[self.pattern_of[l]];
                    let need = match (lit.quote_before, lit.quote_after) {
                        (false, false) => 1,
                        (true, false) => 2,
                        (false, true) => 4,
                        (true, true) => 8,
                    };
                    scratch[l] = u8::from(bits & need != 0 || (long && lit.flattened));
                }
            }
        }
        for (rule, cnf) in self.clauses.iter().enumerate() {
            let holds = cnf.is_empty()
                || escaped
                || cnf.iter().all(|clause| clause.iter().any(|&l| scratch[l] == 1));
            if holds {
                mask.set(rule);
            }
        }
        !mask.is_empty()
    }

    /// Iterates over the lines of `haystack` (`\n`-terminated; the last may lack its `\n`) on
    /// which some rule may fire, each with its range without the `\n`; `mask` holds the rules of
    /// the line last returned.
    pub fn candidate_lines<'p, 'h>(&'p self, haystack: &'h [u8]) -> PackCandidates<'p, 'h> {
        PackCandidates {
            pre: self,
            haystack,
            pos: 0,
            next_anchor: 0,
            next_escape: 0,
            mask: RuleMask::default(),
            scratch: Vec::new(),
        }
    }
}

/// Lines of a buffer some rule may fire on; see [`PackPrefilter::candidate_lines`].
#[derive(Debug)]
pub struct PackCandidates<'p, 'h> {
    pre: &'p PackPrefilter,
    haystack: &'h [u8],
    pos: usize,
    /// Offsets of the next anchor and escape at or after the last search (`usize::MAX`: none).
    next_anchor: usize,
    next_escape: usize,
    mask: RuleMask,
    scratch: Vec<u8>,
}

impl PackCandidates<'_, '_> {
    /// The rules that may fire on the line last returned.
    pub fn mask(&self) -> &RuleMask {
        &self.mask
    }

    fn next_hit(&mut self) -> Option<usize> {
        let hay = &self.haystack[self.pos..];
        if self.next_anchor != usize::MAX && self.next_anchor < self.pos {
            self.next_anchor = match &self.pre.anchors {
                Some(a) => a.find(hay).map_or(usize::MAX, |m| self.pos + m.start()),
                None => usize::MAX,
            };
        }
        if self.next_escape != usize::MAX && self.next_escape < self.pos {
            self.next_escape = self.pre.escape.find(hay).map_or(usize::MAX, |i| self.pos + i);
        }
        let hit = self.next_anchor.min(self.next_escape);
        (hit != usize::MAX).then_some(hit)
    }
}

impl Iterator for PackCandidates<'_, '_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let hay = self.haystack;
        while self.pos < hay.len() {
            let hit = if self.pre.every_line { self.pos } else { self.next_hit()? };
            let start =
                memchr::memrchr(b'\n', &hay[self.pos..hit]).map_or(self.pos, |i| self.pos + i + 1);
            let end = memchr::memchr(b'\n', &hay[hit..]).map_or(hay.len(), |i| hit + i);
            self.pos = end + 1;
            if self.pre.possible(&hay[start..end], &mut self.mask, &mut self.scratch) {
                return Some(start..end);
            }
        }
        None
    }
}

/// How rare a clause's literals are in CloudTrail traffic, for picking a rule's first-stage
/// clause: action names first, then the shortest literal's length.
fn rarity(literals: &[Literal], clause: &Clause) -> (bool, usize) {
    let all_actions = clause.iter().all(|&l| literals[l].action);
    let shortest = clause.iter().map(|&l| literals[l].bytes.len()).min().unwrap_or(0);
    (all_actions, shortest)
}

/// The clauses that must hold for `expr` to be true (see the module's documentation).
fn necessary(set: &RuleSet, expr: &Expr, literals: &mut Vec<Literal>) -> Vec<Clause> {
    match expr {
        Expr::And(children) => {
            let mut cnf: Vec<Clause> = Vec::new();
            for c in children {
                for clause in necessary(set, c, literals) {
                    if !cnf.contains(&clause) {
                        cnf.push(clause);
                    }
                }
            }
            cnf
        }
        Expr::Or(children) => {
            let mut joined: Clause = Vec::new();
            for c in children {
                let cnf = necessary(set, c, literals);
                let Some(best) = cnf.iter().max_by_key(|c| rarity(literals, c)) else {
                    return Vec::new();
                };
                for &l in best {
                    if !joined.contains(&l) {
                        joined.push(l);
                    }
                }
            }
            if joined.is_empty() {
                Vec::new()
            } else {
                vec![joined]
            }
        }
        Expr::Not(_) => Vec::new(),
        Expr::Pred(field, test) => {
            let (path, source) = set.field_source(*field);
            let verbatim = !matches!(source, Source::Dataset | Source::Outcome | Source::Unknown);
            let literal = if verbatim { literal_of(test) } else { None };
            match literal {
                Some(mut lit) => {
                    lit.flattened = matches!(source, Source::Flattened(..));
                    lit.action = path == "event.action";
                    let at = literals.iter().position(|l| *l == lit).unwrap_or_else(|| {
                        literals.push(lit);
                        literals.len() - 1
                    });
                    vec![vec![at]]
                }
                None => Vec::new(),
            }
        }
    }
}

/// Whether a byte may stand in a literal: it reaches the line verbatim unless written `\u00XX`.
fn plain(b: u8) -> bool {
    (b.is_ascii_graphic() || b == b' ') && !matches!(b, b'"' | b'\\' | b'/')
}

/// The longest plain run of `text`: (start, end).
fn longest_run(text: &str, usable: impl Fn(&[u8]) -> bool) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < bytes.len() {
        if !plain(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && plain(bytes[i]) {
            i += 1;
        }
        if usable(&bytes[start..i]) && best.is_none_or(|(s, e)| i - start > e - s) {
            best = Some((start, i));
        }
    }
    best
}

/// The literal a positive predicate's value gives, if any.
fn literal_of(test: &Test) -> Option<Literal> {
    let lit = |bytes: &[u8], quote_before, quote_after| Literal {
        bytes: bytes.to_vec(),
        quote_before,
        quote_after,
        flattened: false,
        action: false,
    };
    match test {
        Test::Exists => None,
        Test::Exact(v) => {
            let integral = {
                let digits = v.strip_prefix('-').unwrap_or(v);
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            };
            if v == "true" || v == "false" || integral {
                // Also a bare JSON token: no quotes around it.
                return Some(lit(v.as_bytes(), false, false));
            }
            if v.parse::<f64>().is_ok() {
                return None;
            }
            let (s, e) = longest_run(v, |_| true)?;
            Some(lit(&v.as_bytes()[s..e], s == 0, e == v.len()))
        }
        Test::Wildcard(p) => {
            // Runs of number characters may come from a number written back by Java.
            let usable = |run: &[u8]| {
                !run.iter().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'E' | b'-'))
            };
            let last = p.pieces.len().saturating_sub(1);
            let mut best: Option<Literal> = None;
            for (n, piece) in p.pieces.iter().enumerate() {
                let Some((s, e)) = longest_run(piece, usable) else { continue };
                if best.as_ref().is_some_and(|b| b.bytes.len() >= e - s) {
                    continue;
                }
                let before = n == 0 && !p.leading && s == 0;
                let after = n == last && !p.trailing && e == piece.len();
                best = Some(lit(&piece.as_bytes()[s..e], before, after));
            }
            best
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kql::parse;

    fn prefilter(queries: &[&str]) -> PackPrefilter {
        let qs: Vec<_> = queries.iter().map(|q| parse(q).unwrap()).collect();
        PackPrefilter::new(&RuleSet::new(&qs, None).unwrap())
    }

    fn rules_on(pre: &PackPrefilter, line: &str) -> Vec<usize> {
        let mut mask = RuleMask::default();
        pre.possible(line.as_bytes(), &mut mask, &mut Vec::new());
        mask.iter().collect()
    }

    #[test]
    fn whole_terms_are_confirmed() {
        let pre = prefilter(&[
            "event.provider: kms.amazonaws.com and event.action: (DisableKey or ScheduleKeyDeletion)",
            "event.action: CreateUser and not user.name: root",
        ]);
        assert_eq!(
            rules_on(&pre, r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#),
            [0]
        );
        assert!(rules_on(
            &pre,
            r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKeyRotation"}"#
        )
        .is_empty());
        assert!(rules_on(&pre, r#"{"eventName":"DisableKey"}"#).is_empty(), "the provider too");
        assert_eq!(rules_on(&pre, r#"{"message":"{\"eventName\":\"CreateUser\"}"}"#), [1]);
        assert_eq!(rules_on(&pre, r#"{"eventName":"Create\u0055ser"}"#), [0, 1], "escapes");
    }

    #[test]
    fn computed_fields_and_negations_give_no_literal() {
        let pre = prefilter(&["event.outcome: success", "not event.action: X"]);
        assert_eq!(pre.unfiltered_rules(), 2);
        let pre = prefilter(&["event.outcome: failure and event.action: ConsoleLogin"]);
        assert_eq!(pre.unfiltered_rules(), 0);
        assert_eq!(rules_on(&pre, r#"{"eventName":"ConsoleLogin"}"#), [0]);
    }

    #[test]
    fn numbers_and_wildcards() {
        let pre = prefilter(&[
            "aws.cloudtrail.flattened.request_parameters.fromPort: 22",
            "aws.cloudtrail.flattened.request_parameters.x: 1.5",
            "user_agent.original: *terraform*",
            "user.name: *.0",
        ]);
        assert_eq!(pre.unfiltered_rules(), 2, "1.5 may be written 15e-1; .0 may come from Java");
        assert_eq!(rules_on(&pre, r#"{"requestParameters":{"fromPort":22}}"#), [0, 1, 3]);
        assert_eq!(rules_on(&pre, r#"{"userAgent":"aws-cli terraform/1.0"}"#), [1, 2, 3]);
    }

    #[test]
    fn flattened_literals_are_not_needed_on_long_lines() {
        let pre = prefilter(&["aws.cloudtrail.flattened.request_parameters.name: needle"]);
        assert!(rules_on(&pre, r#"{"requestParameters":{"name":"hay"}}"#).is_empty());
        let long = format!(
            r#"{{"requestParameters":{{"name":"hay","pad":"{}"}}}}"#,
            "x".repeat(LONG_LINE)
        );
        assert_eq!(rules_on(&pre, &long), [0]);
    }

    #[test]
    fn candidate_lines_skip_near_misses() {
        let pre = prefilter(&["event.action: DisableKey", "event.action: StopLogging"]);
        let hay = "{\"eventName\":\"DisableKeyRotation\"}\n{\"a\":1}\n{\"eventName\":\"StopLogging\"}\n{\"eventName\":\"DisableKey\"}";
        let mut lines = pre.candidate_lines(hay.as_bytes());
        let mut got = Vec::new();
        while let Some(r) = lines.next() {
            got.push((&hay[r], lines.mask().iter().collect::<Vec<_>>()));
        }
        assert_eq!(
            got,
            [
                (r#"{"eventName":"StopLogging"}"#, vec![1]),
                (r#"{"eventName":"DisableKey"}"#, vec![0])
            ]
        );
    }
}
