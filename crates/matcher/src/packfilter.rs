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
//! # The first stage
//!
//! Each rule's rarest clause's literals are its *anchors*. Anchors that start a term (nearly
//! all of Elastic's pack: action names) are found from the quote before them by the term scan
//! (`terms.rs`, AVX2), the others through shared needles by Teddy. An anchor found whole is a
//! literal known to be in its line: a line's memo keeps what is known of each literal, so the
//! other clauses' literals are each looked for once per line, whatever the number of hits.
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

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem::Finder;

use crate::prefilter::line_around;
use crate::ruleset::{Expr, RuleSet, Source, Test};
use crate::terms::{TermHit, TermScan};

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
    /// A wildcard on `event.action`, whose value is unknown when a raw record's `eventName` is
    /// not a string: such lines must reach the second stage (see [`non_string_event_name`]).
    rendered_wildcard: bool,
}

/// A clause: the line must hold one of these literals (indices into `PackPrefilter::literals`).
type Clause = Vec<usize>;

impl Literal {
    /// Whether the literal stands whole at `start` of `hay`, with the quotes it needs.
    fn holds_at(&self, hay: &[u8], start: usize) -> bool {
        let end = start + self.bytes.len();
        hay.get(start..end) == Some(self.bytes.as_slice())
            && (!self.quote_before || (start > 0 && hay[start - 1] == b'"'))
            && (!self.quote_after || matches!(hay.get(end), Some(b'"' | b'\\')))
    }
}

/// Whether `lit` stands whole somewhere in `line`. Every occurrence is tried, overlapping ones
/// included: in a run of 1,024 `L`s, a literal of 558 `L`s that must end before a quote stands
/// whole only at the run's last 558 bytes, which non-overlapping matches skip.
fn holds_in(lit: &Literal, finder: &Finder, line: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = finder.find(&line[from..]) {
        if lit.holds_at(line, from + i) {
            return true;
        }
        from += i + 1;
    }
    false
}

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
    /// Per literal, a searcher for its bytes (the second stage for the few rules an anchor
    /// names).
    finders: Vec<Finder<'static>>,
    /// Every literal's bytes, each once, for long lines (overlapping matches), and each
    /// literal's pattern: built on the first long line, which most inputs never hold.
    all: OnceLock<Option<(AhoCorasick, Vec<usize>)>>,
    /// The first stage: one clause per rule (its rarest), all together.
    stage1: Stage1,
    /// Some rule has no clause: every line is a candidate.
    every_line: bool,
    escape: Finder<'static>,
    /// Per first-stage anchor, the literals it is (a found anchor is a literal found).
    anchor_literals: Vec<Vec<usize>>,
    /// Some literal is a wildcard's on `event.action` (see [`non_string_event_name`]).
    rendered: bool,
    /// Per rule, whether one of its literals is such a wildcard's: only those rules are
    /// possible wherever `eventName` is not a string.
    rendered_rules: Vec<bool>,
    /// Per first-stage anchor, the other literals its rules need, when there are several: one
    /// search of the line answers them all (see [`Companions`]).
    companions: Vec<Option<Companions>>,
}

/// The literals an anchor's rules need besides their first-stage clause, looked for together:
/// where each would take a pass of its own over the line (the six action names of Elastic's
/// Lambda rules, on every Lambda line), one Teddy search finds every place one of them starts.
/// A literal that starts a term is searched for with the quote before it, which keeps Teddy's
/// fingerprints off the middle of words.
#[derive(Clone, Debug)]
struct Companions {
    searcher: aho_corasick::packed::Searcher,
    /// The literals (indices into `PackPrefilter::literals`).
    literals: Vec<usize>,
}

impl Companions {
    /// The search for `needed`, when there are at least [`COMPANIONS`] (else each is looked for
    /// by itself, when a clause needs it) and this CPU runs Teddy.
    fn new(literals: &[Literal], needed: Vec<usize>) -> Option<Companions> {
        if needed.len() < COMPANIONS {
            return None;
        }
        let quote = |l: &Literal| if l.quote_before { &b"\""[..] } else { &[] };
        let mut quoted: Vec<Vec<u8>> =
            needed.iter().map(|&l| [quote(&literals[l]), &literals[l].bytes].concat()).collect();
        quoted.sort_unstable();
        quoted.dedup();
        let searcher = aho_corasick::packed::Config::new()
            .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(&quoted)
            .build()?;
        Some(Companions { searcher, literals: needed })
    }
}

/// The fewest literals an anchor's rules need for one search to look for them all. Below it,
/// each is looked for by `memmem` only when a clause of a rule still possible needs it: a pass
/// of `memmem` costs a fraction of Teddy's over the same line (Teddy stops wherever a pattern's
/// first bytes line up: `"requestParameters` and `true` stand in every raw record), and a rule
/// stops at its first clause that fails. From 2 to 5, Elastic's pack took 3-4% fewer
/// instructions (callgrind, 16 MiB of each corpus profile, loading included).
const COMPANIONS: usize = 5;

/// Teddy, the SIMD searcher aho-corasick uses for small sets, takes at most this many patterns.
const TEDDY_PATTERNS: usize = 64;
/// Needles shorter than this are not shared between anchors (they would be too common).
const SHARED_NEEDLE: usize = 8;

/// The first stage: the anchors (each rule's rarest clause's literals), found through *needles*,
/// substrings that several anchors share (`SecurityGroup` for the four security group calls),
/// searched by a few Teddy searchers over the whole buffer; a needle's hit is confirmed by an
/// anchor holding it, whole, with its quotes, before the line goes to the second stage.
#[derive(Clone, Debug, Default)]
struct Stage1 {
    anchors: Vec<Literal>,
    /// Per anchor, the rules whose first-stage clause holds it.
    anchor_rules: Vec<Vec<usize>>,
    searchers: Vec<AhoCorasick>,
    /// Per searcher, per pattern: the anchors holding the needle, and where.
    holders: Vec<Vec<Vec<(usize, usize)>>>,
    /// Per searcher, per pattern: the other patterns it is a prefix of or that are prefixes of
    /// it, with their bytes. A searcher reports one needle per position, and these may stand
    /// at the same position.
    alternates: Vec<Vec<Alternates>>,
    /// Some anchor is a flattened field's literal, which long lines need not hold.
    long_lines: bool,
    /// The searcher and pattern of the extra needle `eventName`, searched when some literal is
    /// a wildcard's on `event.action`.
    event_name: Option<(usize, usize)>,
    /// The searcher and pattern of the escape literal `\u00`, searched with the needles rather
    /// than in a pass of its own when there is no term scan: a line holding it goes to the
    /// second stage as it is.
    escape: Option<(usize, usize)>,
    /// The whole-term anchors (after a quote, before a quote or backslash), when this CPU can
    /// scan for them from their quotes (`terms.rs`); it also finds the escape literal. The
    /// searchers then hold only the other anchors' needles.
    terms: Option<TermScan>,
    /// Per term of `terms`, the anchors that stand where it stands whole: the anchors that are
    /// that term, and the prefix anchors it starts with.
    term_anchors: Vec<Vec<usize>>,
    /// Per prefix of `terms`, the anchors that are that prefix.
    prefix_anchors: Vec<Vec<usize>>,
}

/// Whether an anchor is found by the term scan as a term: a whole term, after a quote and
/// before a quote or backslash, of at least two bytes.
fn whole_term(a: &Literal) -> bool {
    a.quote_before && a.quote_after && a.bytes.len() >= 2
}

/// Whether an anchor is found by the term scan as a prefix: after a quote, of at least two
/// bytes, with nothing said of what follows it.
fn prefix_term(a: &Literal) -> bool {
    a.quote_before && !a.quote_after && a.bytes.len() >= 2
}

impl Stage1 {
    fn new(anchors: Vec<Literal>, term_scan: bool) -> Stage1 {
        let long_lines = anchors.iter().any(|a| a.flattened);
        let distinct = |kind: fn(&Literal) -> bool| {
            let mut bytes: Vec<&[u8]> =
                anchors.iter().filter(|a| kind(a)).map(|a| a.bytes.as_slice()).collect();
            bytes.sort_unstable();
            bytes.dedup();
            bytes
        };
        let (terms, prefixes) = (distinct(whole_term), distinct(prefix_term));
        let scan = if term_scan { TermScan::new(&terms, &prefixes) } else { None };
        let scanned = |a: &Literal| scan.is_some() && (whole_term(a) || prefix_term(a));
        let holders = |holds: &dyn Fn(&Literal) -> bool| -> Vec<usize> {
            (0..anchors.len()).filter(|&i| holds(&anchors[i])).collect()
        };
        let (term_anchors, prefix_anchors) = match scan {
            Some(_) => (
                terms
                    .iter()
                    .map(|t| {
                        holders(&|a| {
                            (whole_term(a) && a.bytes == *t)
                                || (prefix_term(a) && t.starts_with(&a.bytes))
                        })
                    })
                    .collect(),
                prefixes.iter().map(|p| holders(&|a| prefix_term(a) && a.bytes == *p)).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        // The anchors the searchers find, by index: all of them without a term scan.
        let searched = holders(&|a| !scanned(a));
        let bytes: Vec<&[u8]> = searched.iter().map(|&i| anchors[i].bytes.as_slice()).collect();
        let mut needles = needles(&bytes);
        let rendered = anchors.iter().any(|a| a.rendered_wildcard);
        let at = |k: usize| (k / TEDDY_PATTERNS, k % TEDDY_PATTERNS);
        let mut stage = Stage1 { long_lines, ..Stage1::default() };
        if rendered {
            stage.event_name = Some(at(needles.len()));
            needles.push(EVENT_NAME.to_vec());
        }
        if scan.is_none() {
            stage.escape = Some(at(needles.len()));
            needles.push(ESCAPE.to_vec());
        }
        stage.terms = scan;
        stage.term_anchors = term_anchors;
        stage.prefix_anchors = prefix_anchors;
        for chunk in needles.chunks(TEDDY_PATTERNS) {
            // The NFA builds in a fraction of the DFA's time; Teddy does the searching anyway.
            let searcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(chunk)
                .expect("needle sets are small");
            let holders = chunk
                .iter()
                .map(|n| {
                    bytes
                        .iter()
                        .zip(&searched)
                        .flat_map(|(b, &a)| memchr::memmem::find_iter(b, n).map(move |at| (a, at)))
                        .collect()
                })
                .collect();
            let alternates = chunk
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    let related = |(j, m): &(usize, &Vec<u8>)| {
                        *j != k && (m.starts_with(n) || n.starts_with(m))
                    };
                    chunk.iter().enumerate().filter(related).map(|(j, m)| (j, m.clone())).collect()
                })
                .collect();
            stage.searchers.push(searcher);
            stage.holders.push(holders);
            stage.alternates.push(alternates);
        }
        stage.anchors = anchors;
        stage
    }

    /// The anchors standing where the term scan found `hit`.
    fn scanned(&self, hit: TermHit) -> impl Iterator<Item = usize> + '_ {
        let (term, prefixes) = match hit {
            TermHit::Term(n) => (Some(n), 0),
            TermHit::Prefixes(bits) => (None, bits),
            TermHit::Escape => (None, 0),
        };
        let prefixes = (0..64).filter(move |i| prefixes >> i & 1 == 1);
        let term = term.into_iter().flat_map(|n| &self.term_anchors[n]);
        term.chain(prefixes.flat_map(|i| &self.prefix_anchors[i])).copied()
    }

    /// Whether `eventName` stands at `at` in `hay`, where searcher `s` found its needle
    /// `pattern`: that needle is `eventName`, or hides it (see `alternates`).
    fn event_name_at(&self, hay: &[u8], s: usize, pattern: usize, at: usize) -> bool {
        let Some((_, ep)) = self.event_name.filter(|&(es, _)| es == s) else { return false };
        (ep == pattern || self.alternates[s][pattern].iter().any(|&(j, _)| j == ep))
            && hay[at..].starts_with(EVENT_NAME)
    }

    /// The anchors that the needle `pattern` of searcher `s`, found at `at` in `hay`, is part
    /// of there, whole, with their quotes.
    fn confirmed<'a>(
        &'a self,
        hay: &'a [u8],
        s: usize,
        pattern: usize,
        at: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        let also = self.alternates[s][pattern]
            .iter()
            .filter(move |(_, bytes)| hay[at..].starts_with(bytes))
            .map(|(j, _)| *j);
        std::iter::once(pattern).chain(also).flat_map(move |p| {
            self.holders[s][p].iter().filter_map(move |&(a, offset)| {
                let start = at.checked_sub(offset)?;
                self.anchors[a].holds_at(hay, start).then_some(a)
            })
        })
    }
}

/// A needle's alternates: (pattern, bytes).
type Alternates = Vec<(usize, Vec<u8>)>;

/// The escape literal: a line holding it may spell any literal (see the module's documentation).
pub(crate) const ESCAPE: &[u8] = b"\\u00";

/// What a line's memo knows of a literal (see [`PackPrefilter::holds`]).
const UNKNOWN: u8 = 0;
const HELD: u8 = 1;
const ABSENT: u8 = 2;

/// The raw record member whose non-string value makes `event.action` unknown to wildcards.
const EVENT_NAME: &[u8] = b"eventName";

/// Whether `line` may hold a raw record whose `eventName` is not a string: the name followed,
/// past its closing quote (`"` or an envelope's `\"`), blanks and `:`, by anything but the
/// opening of a string. (A name spelled with `\u00` escapes is the escape fallback's.)
pub(crate) fn non_string_event_name(line: &[u8]) -> bool {
    memchr::memmem::find_iter(line, EVENT_NAME)
        .any(|at| non_string_after(line, at + EVENT_NAME.len()))
}

/// [`non_string_event_name`] for the occurrence ending at `end`.
fn non_string_after(line: &[u8], end: usize) -> bool {
    /// Past JSON's blanks, as they are or, in a document inside a string, escaped.
    fn blanks(mut rest: &[u8]) -> &[u8] {
        loop {
            rest = rest.trim_ascii_start();
            match rest {
                [b'\\', b'n' | b't' | b'r', tail @ ..] => rest = tail,
                _ => return rest,
            }
        }
    }
    let mut rest = &line[end.min(line.len())..];
    rest = rest.strip_prefix(b"\\").unwrap_or(rest);
    let Some(rest) = rest.strip_prefix(b"\"") else { return false };
    let Some(rest) = blanks(rest).strip_prefix(b":") else { return false };
    // Only `"` or `\"` opens a string (one spelled `\u0022` is the escape fallback's).
    !matches!(blanks(rest), [] | [b'"', ..] | [b'\\', b'"', ..])
}

/// Needles that find every anchor: greedily, the substring of [`SHARED_NEEDLE`] bytes held by
/// the most anchors not yet found, while two or more hold it (in byte order on ties, so the
/// choice is the same on every run); each anchor left is its own needle. (Every substring two
/// anchors share that is at least that long holds one of that length.)
fn needles(anchors: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut holders: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
    for (i, a) in anchors.iter().enumerate() {
        if a.len() <= SHARED_NEEDLE {
            holders.entry(a).or_default().push(i);
            continue;
        }
        for gram in a.windows(SHARED_NEEDLE) {
            let list = holders.entry(gram).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    holders.retain(|_, hs| hs.len() > 1);
    let mut found = vec![false; anchors.len()];
    let mut out = Vec::new();
    loop {
        let best = holders
            .iter()
            .map(|(sub, hs)| (hs.iter().filter(|&&h| !found[h]).count(), *sub))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        let Some((_, needle)) = best.filter(|b| b.0 > 1) else { break };
        for &h in &holders[needle] {
            found[h] = true;
        }
        out.push(needle.to_vec());
        holders.retain(|_, hs| hs.iter().filter(|&&h| !found[h]).count() > 1);
    }
    out.extend(anchors.iter().zip(&found).filter(|(_, f)| !**f).map(|(a, _)| a.to_vec()));
    out
}

impl PackPrefilter {
    /// Builds the prefilter of `set`.
    pub fn new(set: &RuleSet) -> PackPrefilter {
        PackPrefilter::with_term_scan(set, true)
    }

    /// Builds the prefilter of `set`, finding whole-term anchors from their quotes
    /// (`term_scan`, where the CPU allows) or with the other needles: both must say the same,
    /// which the tests check on CPUs that have the term scan.
    pub fn with_term_scan(set: &RuleSet, term_scan: bool) -> PackPrefilter {
        let mut literals: Vec<Literal> = Vec::new();
        let mut clauses = Vec::with_capacity(set.len());
        for expr in set.exprs() {
            let cnf = necessary(set, expr, &mut literals);
            clauses.push(cnf);
        }
        let every_line = clauses.iter().any(Vec::is_empty);
        let mut anchors: Vec<Literal> = clauses
            .iter()
            .filter_map(|cnf| cnf.iter().max_by_key(|c| rarity(&literals, c)))
            .flat_map(|c| c.iter().map(|&l| literals[l].clone()))
            .collect();
        anchors.sort();
        anchors.dedup();
        let mut stage1 = Stage1::new(anchors, term_scan);
        stage1.anchor_rules = vec![Vec::new(); stage1.anchors.len()];
        for (rule, cnf) in clauses.iter().enumerate() {
            let Some(clause) = cnf.iter().max_by_key(|c| rarity(&literals, c)) else { continue };
            for &l in clause {
                let a = stage1.anchors.binary_search(&literals[l]).expect("an anchor");
                stage1.anchor_rules[a].push(rule);
            }
        }
        let anchor_literals: Vec<Vec<usize>> = stage1
            .anchors
            .iter()
            .map(|a| (0..literals.len()).filter(|&l| literals[l] == *a).collect())
            .collect();
        let companions = (0..stage1.anchors.len())
            .map(|a| {
                let mut needed: Vec<usize> = stage1.anchor_rules[a]
                    .iter()
                    .flat_map(|&r| clauses[r].iter().flatten().copied())
                    .filter(|l| !anchor_literals[a].contains(l))
                    .collect();
                needed.sort_unstable();
                needed.dedup();
                Companions::new(&literals, needed)
            })
            .collect();
        PackPrefilter {
            rules: set.len(),
            anchor_literals,
            rendered: literals.iter().any(|l| l.rendered_wildcard),
            rendered_rules: clauses
                .iter()
                .map(|cnf| cnf.iter().flatten().any(|&l| literals[l].rendered_wildcard))
                .collect(),
            stage1,
            companions,
            finders: literals.iter().map(|l| Finder::new(&l.bytes).into_owned()).collect(),
            literals,
            clauses,
            all: OnceLock::new(),
            every_line,
            escape: Finder::new(ESCAPE).into_owned(),
        }
    }

    /// How many rules are possible on every line (they have no necessary literal).
    pub fn unfiltered_rules(&self) -> usize {
        self.clauses.iter().filter(|c| c.is_empty()).count()
    }

    /// How many literals the first stage confirms (each rule's rarest clause's), and through
    /// how many needles it finds them.
    pub fn anchor_count(&self) -> (usize, usize) {
        let terms = self.stage1.term_anchors.len() + self.stage1.prefix_anchors.len();
        let needles: usize = self.stage1.holders.iter().map(Vec::len).sum();
        (self.stage1.anchors.len(), needles + terms)
    }

    /// Rule `rule`'s necessary literals, as `--list-rules` shows them: its clauses joined by
    /// `&`, each clause's literals by `|`, the first-stage clause first; `*` when it has none
    /// (every line is a candidate for it). One line, printable: a literal is a run of plain
    /// ASCII, with no control character, `\` or `"` (see the module's documentation).
    pub fn describe(&self, rule: usize) -> String {
        let cnf = &self.clauses[rule];
        if cnf.is_empty() {
            return "*".to_string();
        }
        let anchor = cnf.iter().max_by_key(|c| rarity(&self.literals, c));
        let show = |c: &Clause| {
            let lits: Vec<String> = c
                .iter()
                .map(|&l| String::from_utf8_lossy(&self.literals[l].bytes).into_owned())
                .collect();
            lits.join("|")
        };
        let mut parts: Vec<String> = anchor.into_iter().map(show).collect();
        parts.extend(cnf.iter().filter(|c| Some(*c) != anchor).map(show));
        parts.join(" & ")
    }

    /// Whether rule `rule` may fire on `line`, which holds no escape: each of its clauses has a
    /// literal in it.
    fn rule_possible(&self, rule: usize, line: &[u8], memo: &mut [u8]) -> bool {
        (self.rendered_rules[rule] && self.non_string_name(line, memo))
            || self.clauses_hold(rule, line, memo)
    }

    /// Whether each clause of rule `rule` has a literal in `line` (no escape, and `eventName`
    /// only as a string, in it).
    fn clauses_hold(&self, rule: usize, line: &[u8], memo: &mut [u8]) -> bool {
        let long = line.len() >= LONG_LINE;
        self.clauses[rule].iter().all(|clause| {
            clause
                .iter()
                .any(|&l| (long && self.literals[l].flattened) || self.holds(l, line, memo))
        })
    }

    /// Readies `memo` for a new line: nothing known yet.
    fn fresh_memo(&self, memo: &mut Vec<u8>) {
        memo.clear();
        memo.resize(self.literals.len() + 1, UNKNOWN);
    }

    /// Whether literal `l` stands whole in `line`, looked for once per line: `memo` holds, per
    /// literal, what is known of it in this line (and in its last slot, of `eventName`).
    fn holds(&self, l: usize, line: &[u8], memo: &mut [u8]) -> bool {
        if memo[l] == UNKNOWN {
            let holds = holds_in(&self.literals[l], &self.finders[l], line);
            memo[l] = if holds { HELD } else { ABSENT };
        }
        memo[l] == HELD
    }

    /// Records in `memo` that anchor `a` was found whole in the line, and, when its rules need
    /// several other literals, whether `line` holds each of them (one search for all).
    fn found(&self, a: usize, line: &[u8], memo: &mut [u8]) {
        for &l in &self.anchor_literals[a] {
            memo[l] = HELD;
        }
        let Some(c) = &self.companions[a] else { return };
        if c.literals.iter().all(|&l| memo[l] != UNKNOWN) {
            return;
        }
        for &l in &c.literals {
            if memo[l] == UNKNOWN {
                memo[l] = ABSENT;
            }
        }
        // Every place one of them starts is visited: the search reports the leftmost start (of
        // the literal, or of the quote it needs before it), and goes on from the byte after it.
        let mut from = 0;
        while let Some(m) = c.searcher.find(&line[from..]) {
            let at = from + m.start();
            for &l in &c.literals {
                let lit = &self.literals[l];
                if memo[l] != HELD && lit.holds_at(line, at + usize::from(lit.quote_before)) {
                    memo[l] = HELD;
                }
            }
            from = at + 1;
        }
    }

    /// [`non_string_event_name`] of `line`, looked for once per line (see [`Self::holds`]).
    fn non_string_name(&self, line: &[u8], memo: &mut [u8]) -> bool {
        let slot = self.literals.len();
        if memo[slot] == UNKNOWN {
            memo[slot] = if non_string_event_name(line) { HELD } else { ABSENT };
        }
        memo[slot] == HELD
    }

    /// Fills `mask` with the rules that may fire on `line`; returns whether there is any.
    pub fn possible(&self, line: &[u8], mask: &mut RuleMask, scratch: &mut Vec<u8>) -> bool {
        self.fresh_memo(scratch);
        self.possible_with(line, mask, scratch)
    }

    /// `all`, built on first use: one automaton over every literal's distinct bytes.
    fn all(&self) -> Option<&(AhoCorasick, Vec<usize>)> {
        self.all
            .get_or_init(|| {
                let mut patterns: Vec<&[u8]> =
                    self.literals.iter().map(|l| l.bytes.as_slice()).collect();
                patterns.sort_unstable();
                patterns.dedup();
                let pattern_of = self.literals.iter().map(|l| {
                    patterns.binary_search(&l.bytes.as_slice()).expect("every literal is a pattern")
                });
                let all = (!patterns.is_empty()).then(|| {
                    // Standard semantics: the only kind that reports overlapping matches.
                    AhoCorasick::builder()
                        .match_kind(MatchKind::Standard)
                        .kind(Some(AhoCorasickKind::ContiguousNFA))
                        .build(&patterns)
                        .expect("literal sets are small")
                })?;
                Some((all, pattern_of.collect()))
            })
            .as_ref()
    }

    /// [`PackPrefilter::possible`] with what `memo` already knows of the line (see
    /// [`Self::holds`]); `memo` is spent.
    fn possible_with(&self, line: &[u8], mask: &mut RuleMask, memo: &mut Vec<u8>) -> bool {
        mask.reset(self.rules);
        // An escape may spell anything; a non-string `eventName` makes wildcards on
        // `event.action` unknown: every rule is possible.
        let escaped =
            self.escape.find(line).is_some() || (self.rendered && self.non_string_name(line, memo));
        let long = line.len() >= LONG_LINE;
        if !escaped && !long {
            self.possible_by_anchors(line, mask, memo);
            return !mask.is_empty();
        }
        let scratch = memo;
        // Per literal, whether the line holds it (with its quotes).
        scratch.clear();
        scratch.resize(self.literals.len(), 0);
        if !escaped {
            if let Some((all, pattern_of)) = self.all() {
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
                    let bits = found[pattern_of[l]];
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

    /// [`PackPrefilter::possible`] for a line that holds no escape, no non-string `eventName`,
    /// and is shorter than [`LONG_LINE`]: a rule may fire only when its first-stage clause has a
    /// literal there, which the first stage's needles find; only those rules' other clauses
    /// are then looked for. (Over a line of a few KiB this costs a few Teddy passes, where
    /// looking for every literal of the pack costs an automaton walk of every byte.)
    fn possible_by_anchors(&self, line: &[u8], mask: &mut RuleMask, memo: &mut [u8]) {
        for (rule, cnf) in self.clauses.iter().enumerate() {
            if cnf.is_empty() {
                mask.set(rule);
            }
        }
        let stage1 = &self.stage1;
        if let Some(scan) = &stage1.terms {
            let mut from = 0;
            while let Some((at, hit)) = scan.find(line, from) {
                from = at + 1;
                for a in stage1.scanned(hit) {
                    self.add_found(a, line, mask, memo);
                }
            }
        }
        for (s, searcher) in stage1.searchers.iter().enumerate() {
            let mut from = 0;
            while let Some(m) = searcher.find(&line[from..]) {
                let (at, pattern) = (from + m.start(), m.pattern().as_usize());
                from = at + 1;
                for a in stage1.confirmed(line, s, pattern, at) {
                    self.add_found(a, line, mask, memo);
                }
            }
        }
    }

    /// Anchor `a` stands whole in `line`: its rules whose clauses all hold there join `mask`.
    fn add_found(&self, a: usize, line: &[u8], mask: &mut RuleMask, memo: &mut [u8]) {
        self.found(a, line, memo);
        for &rule in &self.stage1.anchor_rules[a] {
            if !mask.contains(rule) && self.clauses_hold(rule, line, memo) {
                mask.set(rule);
            }
        }
    }

    /// Iterates over the lines of `haystack` (`\n`-terminated; the last may lack its `\n`) on
    /// which some rule may fire, each with its range without the `\n`; `mask` holds the rules of
    /// the line last returned.
    pub fn candidate_lines<'p, 'h>(&'p self, haystack: &'h [u8]) -> PackCandidates<'p, 'h> {
        let mut lines = PackCandidates {
            pre: self,
            haystack,
            pos: 0,
            next_needle: Vec::new(),
            next_term: None,
            next_long: if self.stage1.long_lines {
                long_line_after(haystack, 0)
            } else {
                usize::MAX
            },
            mask: RuleMask::default(),
            memo: Vec::new(),
            memo_line: 0..0,
        };
        lines.next_needle = (0..self.stage1.searchers.len()).map(|s| lines.search(s, 0)).collect();
        lines.next_term = self.stage1.terms.as_ref().and_then(|t| t.find(haystack, 0));
        lines
    }
}

/// Lines of a buffer some rule may fire on; see [`PackPrefilter::candidate_lines`].
#[derive(Debug)]
pub struct PackCandidates<'p, 'h> {
    pre: &'p PackPrefilter,
    haystack: &'h [u8],
    pos: usize,
    /// Per first-stage searcher, its next hit at or after the last search (offset, pattern);
    /// `None` when it has no more.
    next_needle: Vec<Option<(usize, usize)>>,
    /// The term scan's next hit at or after the last search.
    next_term: Option<(usize, TermHit)>,
    /// The next long line's start (`usize::MAX`: none).
    next_long: usize,
    mask: RuleMask,
    /// What is known of the line `memo_line` (see [`PackPrefilter::holds`]).
    memo: Vec<u8>,
    /// The memo's line, without its `\n` (empty: none; the memo is then spent).
    memo_line: std::ops::Range<usize>,
}

/// What the first stage found.
enum Hit {
    /// Needle `pattern` of searcher `searcher`, at `at`.
    Needle { searcher: usize, pattern: usize, at: usize },
    /// The term scan's `hit` (a term or prefixes), at `at`.
    Term { hit: TermHit, at: usize },
    /// A long line, or an escape, at `at`: the line goes to the second stage as it is.
    Line { at: usize },
}

impl<'h> PackCandidates<'_, 'h> {
    /// The rules that may fire on the line last returned.
    pub fn mask(&self) -> &RuleMask {
        &self.mask
    }

    /// Whether some rule of `anchors`, found whole at `at`, may fire on the line around it.
    fn possible_at(&mut self, at: usize, mut anchors: impl Iterator<Item = usize>) -> bool {
        let line = self.memo_for(at);
        let (pre, memo) = (self.pre, &mut self.memo);
        anchors.any(|a| {
            pre.found(a, line, memo);
            pre.stage1.anchor_rules[a].iter().any(|&r| pre.rule_possible(r, line, memo))
        })
    }

    /// The line around `at`, with the memo readied for it (kept when it is the memo's line
    /// already: what is known of its literals holds for every hit in it).
    fn memo_for(&mut self, at: usize) -> &'h [u8] {
        let hay = self.haystack;
        if !self.memo_line.contains(&at) {
            self.pre.fresh_memo(&mut self.memo);
            self.memo_line = line_around(hay, self.pos, at);
        }
        &hay[self.memo_line.clone()]
    }

    /// The term scan's next hit at or after `from`.
    fn search_terms(&self, from: usize) -> Option<(usize, TermHit)> {
        self.pre.stage1.terms.as_ref()?.find(self.haystack, from)
    }

    /// Searcher `s`'s next hit at or after `from`.
    fn search(&self, s: usize, from: usize) -> Option<(usize, usize)> {
        let m = self.pre.stage1.searchers[s].find(&self.haystack[from..])?;
        Some((from + m.start(), m.pattern().as_usize()))
    }

    fn next_hit(&mut self) -> Option<Hit> {
        let (pos, hay) = (self.pos, self.haystack);
        for s in 0..self.next_needle.len() {
            if matches!(self.next_needle[s], Some((at, _)) if at < pos) {
                self.next_needle[s] = self.search(s, pos);
            }
        }
        if matches!(self.next_term, Some((at, _)) if at < pos) {
            self.next_term = self.search_terms(pos);
        }
        if self.next_long != usize::MAX && self.next_long < pos {
            self.next_long = long_line_after(hay, pos);
        }
        let needle = (0..self.next_needle.len())
            .filter_map(|s| self.next_needle[s].map(|(at, pattern)| (at, s, pattern)))
            .min();
        let line = self.next_long;
        let term = self.next_term.filter(|&(at, _)| at < line && needle.is_none_or(|n| at < n.0));
        match (term, needle) {
            (Some((at, TermHit::Escape)), _) => Some(Hit::Line { at }),
            (Some((at, hit)), _) => Some(Hit::Term { hit, at }),
            (None, Some((at, searcher, pattern))) if at < line => {
                Some(Hit::Needle { searcher, pattern, at })
            }
            _ if line != usize::MAX => Some(Hit::Line { at: line }),
            _ => None,
        }
    }
}

/// The start of the first line at or after `pos` that is at least [`LONG_LINE`] bytes long (as
/// many bytes past `pos` as that when `pos` is inside one), or `usize::MAX`.
fn long_line_after(hay: &[u8], pos: usize) -> usize {
    let mut start = pos;
    for nl in memchr::memchr_iter(b'\n', &hay[pos..]).map(|i| pos + i).chain([hay.len()]) {
        if nl - start >= LONG_LINE {
            return start;
        }
        start = nl + 1;
    }
    usize::MAX
}

impl Iterator for PackCandidates<'_, '_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let hay = self.haystack;
        while self.pos < hay.len() {
            let at = if self.pre.every_line {
                self.pos
            } else {
                match self.next_hit()? {
                    Hit::Line { at } => at,
                    // An escape: the line goes to the second stage as it is.
                    Hit::Needle { searcher, pattern, at }
                        if self.pre.stage1.escape == Some((searcher, pattern)) =>
                    {
                        at
                    }
                    Hit::Term { hit, at } => {
                        // As for a needle, below, with the anchors standing there.
                        let pre = self.pre;
                        if !self.possible_at(at, pre.stage1.scanned(hit)) {
                            self.next_term = self.search_terms(at + 1);
                            continue;
                        }
                        at
                    }
                    Hit::Needle { searcher, pattern, at } => {
                        // The rules of the anchors found whole here; the line goes on when
                        // one of them may fire, or when `eventName` stands here (as this
                        // needle or one it hides) and is not a string; else the search goes
                        // on right after the needle (another may follow in the same line).
                        let stage1 = &self.pre.stage1;
                        let unknown_action = stage1.event_name_at(hay, searcher, pattern, at)
                            && non_string_after(hay, at + EVENT_NAME.len());
                        let anchors = stage1.confirmed(hay, searcher, pattern, at);
                        if !unknown_action && !self.possible_at(at, anchors) {
                            self.next_needle[searcher] = self.search(searcher, at + 1);
                            continue;
                        }
                        at
                    }
                }
            };
            // The memo's line when the hit is in it (its bounds are known, and so is what it
            // holds), else a line found afresh.
            let line = if self.memo_line.contains(&at) {
                std::mem::take(&mut self.memo_line)
            } else {
                self.pre.fresh_memo(&mut self.memo);
                line_around(hay, self.pos, at)
            };
            self.pos = line.end + 1;
            if self.pre.possible_with(&hay[line.clone()], &mut self.mask, &mut self.memo) {
                return Some(line);
            }
        }
        None
    }
}

/// How rare a clause's literals are in CloudTrail traffic, for picking a rule's first-stage
/// clause: one every line must hold (not a flattened field's) first, then one with no
/// wildcard on `event.action` (such an anchor makes the first stage look for every
/// `eventName`, one per raw record, to find the non-string ones), then action names, then the
/// shortest literal's length.
fn rarity(literals: &[Literal], clause: &Clause) -> (bool, bool, bool, usize) {
    let everywhere = clause.iter().all(|&l| !literals[l].flattened);
    let no_rendered = clause.iter().all(|&l| !literals[l].rendered_wildcard);
    let all_actions = clause.iter().all(|&l| literals[l].action);
    let shortest = clause.iter().map(|&l| literals[l].bytes.len()).min().unwrap_or(0);
    (everywhere, no_rendered, all_actions, shortest)
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
                    lit.rendered_wildcard =
                        matches!(source, Source::Rendered(_)) && matches!(test, Test::Wildcard(_));
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
        rendered_wildcard: false,
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
            // Runs that may be part of a number written back by Java (`1.0E-7`, `Infinity`
            // for `1e400`) need not be in the bytes.
            let usable = |run: &[u8]| {
                let java = |b: &u8| b.is_ascii_digit() || matches!(b, b'.' | b'E' | b'-');
                let special = |word: &[u8]| memchr::memmem::find(word, run).is_some();
                !run.iter().all(java) && !special(b"-Infinity") && !special(b"NaN")
            };
            let last = p.pieces.len().saturating_sub(1);
            let mut best: Option<Literal> = None;
            for (n, piece) in p.pieces.iter().enumerate() {
                let Some((s, e)) = longest_run(piece, usable) else { continue };
                if best.as_ref().is_some_and(|b| b.bytes.len() >= e - s) {
                    continue;
                }
                let run = &piece.as_bytes()[s..e];
                // The text may be a bare token (a number or a boolean in an ECS document): its
                // ends need a quote only when no token starts or ends that way.
                let bare_start = matches!(run[0], b'-' | b'0'..=b'9' | b't' | b'f');
                let bare_end = matches!(run[run.len() - 1], b'0'..=b'9' | b'e');
                let before = n == 0 && !p.leading && s == 0 && !bare_start;
                let after = n == last && !p.trailing && e == piece.len() && !bare_end;
                best = Some(lit(run, before, after));
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

    #[test]
    fn descriptions_lead_with_the_first_stage_and_stay_on_one_line() {
        let pre = prefilter(&[
            "event.provider: iam.amazonaws.com and event.action: (CreateUser or DeleteUser)",
            r#"event.action: "ab\ncd" and event.provider: "p\\qr""#,
        ]);
        assert_eq!(pre.describe(0), "CreateUser|DeleteUser & iam.amazonaws.com");
        // A newline or a backslash in a value ends its literal's run.
        assert_eq!(pre.describe(1), "ab & qr");
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
    fn needles_at_the_same_place_are_all_tried() {
        // `.amazon` is a needle of its own; `iam.amazonaws.com` and `guardduty.amazonaws.com`
        // share `.amazona`, which starts where `.amazon` does.
        let pre = prefilter(&[
            "event.provider: (kms*.amazon*aws.com or iam.amazonaws.com or guardduty.amazonaws.com)",
        ]);
        let hay = r#"{"eventSource":"kms.amazonaws.com"}"#;
        assert_eq!(pre.candidate_lines(hay.as_bytes()).count(), 1);
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

    /// `eventName` is searched among the anchors' needles, and a searcher reports one needle
    /// per position: one that starts at the same byte (a wildcard's `event`, or `eventName`
    /// itself) must not hide it when the anchor's rule cannot fire there.
    #[test]
    fn a_needle_at_the_same_byte_does_not_hide_event_name() {
        // An object `eventName` is written back as `{a=x}`: the first rule is unknown there.
        let hay = r#"{"eventName":{"a":"x"},"user":{"name":"x"}}"#;
        for other in
            ["user.name: *event* and user.id: *ab*", "user.name: *eventName* and user.id: *ab*"]
        {
            let pre = prefilter(&["event.action: *a=x*", other]);
            let mut lines = pre.candidate_lines(hay.as_bytes());
            assert_eq!(lines.next(), Some(0..hay.len()), "{other}");
            assert!(lines.mask().contains(0), "{other}");
            assert!(rules_on(&pre, hay).contains(&0), "{other}");
        }
    }

    /// Inside a string (an envelope's `message`, a `CloudTrailEvent`), a record's blanks are
    /// escapes: a non-string `eventName` after them is still found.
    #[test]
    fn escaped_blanks_do_not_hide_a_non_string_event_name() {
        let pre = prefilter(&["event.action: *a=x*", "event.action: Other"]);
        for line in [
            r#"{"message":"{\"eventSource\":\"s\",\"eventName\":\n7}"}"#,
            r#"{"message":"{\"eventSource\":\"s\",\"eventName\"\t:[\"a\"]}"}"#,
            r#"{"Events":[{"CloudTrailEvent":"{\"eventName\":\r\n{\"a\":\"x\"}}"}]}"#,
        ] {
            assert!(rules_on(&pre, line).contains(&0), "{line}");
            assert_eq!(pre.candidate_lines(line.as_bytes()).count(), 1, "{line}");
        }
        let string = r#"{"message":"{\"eventName\":\n\"Other\"}"}"#;
        assert!(!rules_on(&pre, string).contains(&0), "a string");
    }

    /// An anchor's rules that need only a few other literals get no search for them together:
    /// each is looked for by itself, still whole, with its quotes.
    #[test]
    fn few_other_literals_are_looked_for_one_by_one() {
        let pre = prefilter(&[
            "event.provider: iam.amazonaws.com and event.action: Get* and user.name: (admin or root)",
        ]);
        assert!(pre.companions.iter().all(Option::is_none));
        let on = |user: &str| {
            let line = format!(
                r#"{{"eventSource":"iam.amazonaws.com","eventName":"GetUser","user":{{"name":"{user}"}}}}"#
            );
            rules_on(&pre, &line)
        };
        assert_eq!(on("root"), [0]);
        assert_eq!(on("admin"), [0]);
        assert!(on("administrator").is_empty());
    }

    /// An anchor's rules that need several other literals look for them in one search: each
    /// must still stand whole where it is found, and one that starts another (`Delete`,
    /// `DeleteFunction20`), starts where another is found, or inside it, is not missed.
    #[test]
    fn other_literals_of_an_anchor_are_found_together() {
        // The wildcards keep the actions out of the first stage (see `rarity`).
        let pre = prefilter(&[
            "event.provider: lambda.amazonaws.com and event.action: (Delete* or Invoke)",
            "event.provider: lambda.amazonaws.com and event.action: (DeleteFunction20 or Publish*)",
            "event.provider: lambda.amazonaws.com and event.action: Get* and user.name: *shell*",
        ]);
        assert!(pre.companions.iter().flatten().any(|c| c.literals.len() == 6));
        let on = |action: &str| {
            let line = format!(
                r#"{{"eventSource":"lambda.amazonaws.com","x":"xDeleteFunction20","eventName":"{action}"}}"#
            );
            let rules = rules_on(&pre, &line);
            assert_eq!(
                pre.candidate_lines(line.as_bytes()).count(),
                usize::from(!rules.is_empty())
            );
            rules
        };
        assert_eq!(on("DeleteFunction20"), [0, 1]);
        assert_eq!(on("DeleteFunction2"), [0]);
        assert_eq!(on("Publisher"), [1]);
        assert_eq!(on("Invoke"), [0]);
        assert_eq!(on("Getshell"), [2]);
        assert!(on("Getsh").is_empty());
        assert!(on("Invoker").is_empty());
        assert!(on("xPublish").is_empty());
    }

    /// A raw record whose `eventName` is not a string leaves a wildcard on `event.action`
    /// unknown: the rule is possible wherever its other clauses may hold, whether the wildcard
    /// is its first-stage clause (the first stage then looks at every `eventName`) or not
    /// (the provider is, and the line is found through it).
    #[test]
    fn a_non_string_event_name_keeps_wildcard_rules_possible() {
        let pre = prefilter(&[
            "event.action: Invoke*",
            "event.provider: lambda.amazonaws.com and event.action: Publish*",
        ]);
        let candidates = |hay: &str| -> Vec<(String, Vec<usize>)> {
            let mut lines = pre.candidate_lines(hay.as_bytes());
            let mut got = Vec::new();
            while let Some(r) = lines.next() {
                got.push((hay[r].to_string(), lines.mask().iter().collect()));
            }
            got
        };
        let odd = r#"{"eventSource":"lambda.amazonaws.com","eventName":7}"#;
        let odd_elsewhere = r#"{"eventSource":"s3.amazonaws.com","eventName" : [1]}"#;
        let plain = r#"{"eventSource":"lambda.amazonaws.com","eventName":"GetFunction"}"#;
        let hay = [plain, odd, odd_elsewhere, plain].join("\n");
        let got = candidates(&hay);
        let lines: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(lines, [odd, odd_elsewhere]);
        assert!(got[0].1.contains(&1), "the provider's rule on {odd}: {:?}", got[0].1);
        assert!(rules_on(&pre, odd_elsewhere).contains(&0));
        assert!(rules_on(&pre, plain).is_empty());
    }

    /// Found by the pack_differential fuzz target: a literal that must end before a quote,
    /// inside a longer run of its own bytes, stands whole only at the run's end, which
    /// non-overlapping matches skipped.
    #[test]
    fn overlapping_occurrences_are_all_tried() {
        let pre = prefilter(&["user_agent.original: x*aaaa and source.address: *"]);
        let line = r#"{"user_agent":{"original":"xaaaaaaa"},"source":{"address":"a"}}"#;
        assert_eq!(rules_on(&pre, line), [0]);
        assert_eq!(pre.candidate_lines(line.as_bytes()).count(), 1);
        // And the whole check still holds: the run must end at the quote.
        let line = r#"{"user_agent":{"original":"xaaaaaaab"},"source":{"address":"a"}}"#;
        assert!(rules_on(&pre, line).is_empty());
    }
}
