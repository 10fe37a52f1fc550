//! The whole-buffer prefilter: finds the few lines that could match without splitting the rest.
//!
//! # Contract
//!
//! A line the exact evaluator matches is always a candidate. The converse does not hold: a
//! candidate may fail the rule (a failed `DisableKey`, the word in a policy document, ...).
//!
//! # Why the literals are sound
//!
//! Every shape kmsguard recognises carries the rule's action term as a JSON string: in ECS as
//! `event.action`, in raw records as `eventName`, in a shipper envelope inside the `message`
//! string (escaping a string for JSON leaves letters alone). A JSON string holds the term's bytes
//! literally unless at least one of its characters is written as an escape. The only JSON escape
//! that yields a letter is `\uXXXX`, and for an ASCII character it is `\u00XX`; escaping that
//! escape again for an envelope (`\\u00XX`, `\u005cu00XX`, ...) still leaves `\u00` in the bytes.
//! So a line that holds neither an action term nor `\u00` cannot match (spec section 6).
//!
//! When a rule's terms hold bytes that other escapes can produce (`"`, `\`, `/`, control
//! characters) or non-ASCII text, the escape literal widens to a lone backslash.
//!
//! # Whole terms
//!
//! A keyword term matches a whole string value, so where a term's literal is found, a line is a
//! candidate only when a whole term stands there between the quotes of a JSON string: `"` before
//! it, and `"` (or, inside an envelope's escaped record, `\`) after it. `leKey` in
//! `"DisableKeyRotation"` then costs a few byte comparisons, not a parse. Lines with the escape
//! literal are candidates as they are.
//!
//! # One pass
//!
//! With one term literal and the `\u00` escape literal (the seed rule's case), on a CPU with
//! AVX2, [`Prefilter::candidate_lines`] searches both in one pass (`pair.rs`) and confirms each
//! near miss inline; [`Prefilter::is_candidate`] keeps the plain `memmem` search, and the tests
//! hold the two to the same answers.

use memchr::memmem::Finder;

use crate::pair::PairScan;
use crate::rule::{Clause, Rule, RAW_FIELD_MAP};

/// Finds candidate lines in a buffer of many lines with a few `memmem` searchers built once.
#[derive(Clone, Debug)]
pub struct Prefilter {
    finders: Vec<Finder<'static>>,
    /// Per finder, the terms that hold its literal and where (empty: no confirmation, as for
    /// the escape literal).
    terms: Vec<Vec<(Vec<u8>, usize)>>,
    /// Both literals in one pass, when there are two and the CPU allows it.
    pair: Option<PairScan>,
}

impl Prefilter {
    /// Builds the prefilter for `rule`: the terms of its rarest clause that every shape carries
    /// literally, plus the escape literal that could spell them.
    ///
    /// A rule with no such clause gets a prefilter that passes every line.
    pub fn new(rule: &Rule) -> Prefilter {
        let Some(clause) = literal_clause(rule) else {
            return Prefilter { finders: Vec::new(), terms: Vec::new(), pair: None };
        };
        let mut needles = term_needles(clause.terms);
        let plain =
            clause.terms.iter().flat_map(|t| t.bytes()).all(|b| b.is_ascii_graphic() || b == b' ')
                && !clause.terms.iter().any(|t| t.contains(['"', '\\', '/']));
        // Whole-term confirmation needs terms a JSON string holds verbatim.
        let terms = needles
            .iter()
            .map(|n| {
                let holders = clause.terms.iter().filter_map(|t| {
                    let at = memchr::memmem::find(t.as_bytes(), n)?;
                    Some((t.as_bytes().to_vec(), at))
                });
                if plain {
                    holders.collect()
                } else {
                    Vec::new()
                }
            })
            .chain([Vec::new()])
            .collect();
        needles.push(if plain { b"\\u00".to_vec() } else { b"\\".to_vec() });
        let pair = match &needles[..] {
            [term, escape] => PairScan::new(term, escape),
            _ => None,
        };
        let finders = needles.iter().map(|n| Finder::new(n).into_owned()).collect();
        Prefilter { finders, terms, pair }
    }

    /// Whether one of the literals stands at `at` of `hay` and confirms there.
    fn hit_at(&self, hay: &[u8], at: usize) -> bool {
        let rest = &hay[at..];
        self.finders.iter().enumerate().any(|(n, f)| {
            // A confirmed term holds its literal there, so only an unconfirmed literal needs
            // comparing.
            if self.terms[n].is_empty() {
                rest.starts_with(f.needle())
            } else {
                self.confirms(n, hay, at)
            }
        })
    }

    /// Whether finder `f`'s literal, found at `at` of `hay`, is part of a whole term there (or
    /// needs no confirmation).
    fn confirms(&self, f: usize, hay: &[u8], at: usize) -> bool {
        let terms = &self.terms[f];
        terms.is_empty()
            || terms.iter().any(|(term, offset)| {
                at.checked_sub(*offset).is_some_and(|start| whole_term_at(hay, start, term))
            })
    }

    /// The literals this prefilter searches for, in order.
    pub fn needles(&self) -> impl Iterator<Item = &[u8]> {
        self.finders.iter().map(|f| f.needle())
    }

    /// Whether `line` is a candidate (holds one of the literals).
    pub fn is_candidate(&self, line: &[u8]) -> bool {
        self.finders.is_empty()
            || self
                .finders
                .iter()
                .enumerate()
                .any(|(n, f)| f.find_iter(line).any(|at| self.confirms(n, line, at)))
    }

    /// Iterates over the candidate lines of `haystack`, a buffer of `\n`-terminated lines (the
    /// last may lack its `\n`). Each item is the line's range without its `\n`.
    ///
    /// Each literal is searched over the buffer at most once, so the bytes of lines that cannot
    /// match are looked at a few times in cache and never split into lines.
    pub fn candidate_lines<'p, 'h>(&'p self, haystack: &'h [u8]) -> CandidateLines<'p, 'h> {
        let next = match self.pair {
            // The pair scan searches as it goes.
            Some(_) => Vec::new(),
            None => self.finders.iter().map(|f| f.find(haystack).unwrap_or(usize::MAX)).collect(),
        };
        CandidateLines { pre: self, haystack, next, pos: 0 }
    }
}

/// The literals that find a clause's terms: their longest common substring when it is long
/// enough to be rare (`DisableKey` and `ScheduleKeyDeletion` share `leKey`: one pass over the
/// buffer instead of two), else every term.
fn term_needles(terms: &[&str]) -> Vec<Vec<u8>> {
    const MIN_SHARED: usize = 5;
    let Some(first) = terms.first() else { return Vec::new() };
    let first = first.as_bytes();
    let mut best: &[u8] = &[];
    for start in 0..first.len() {
        for end in (start + best.len() + 1)..=first.len() {
            let sub = &first[start..end];
            if terms[1..].iter().all(|t| memchr::memmem::find(t.as_bytes(), sub).is_some()) {
                best = sub;
            } else {
                break;
            }
        }
    }
    // A single term is its own longest common substring.
    if best.len() >= MIN_SHARED || terms.len() == 1 {
        vec![best.to_vec()]
    } else {
        terms.iter().map(|t| t.as_bytes().to_vec()).collect()
    }
}

/// The clause whose terms the prefilter searches for: among the clauses whose values every shape
/// carries verbatim (the fields the raw mapping copies), the one with the smallest share.
fn literal_clause(rule: &Rule) -> Option<&Clause> {
    rule.clauses
        .iter()
        .filter(|c| RAW_FIELD_MAP.iter().any(|f| f.ecs == c.field))
        .filter(|c| c.terms.iter().all(|t| !t.is_empty()))
        .min_by(|a, b| a.share.total_cmp(&b.share))
}

/// Whether `term` stands whole at `start` of `hay`: between a string's quotes, unless it could
/// be a bare token there (a number or a boolean) on that side.
fn whole_term_at(hay: &[u8], start: usize, term: &[u8]) -> bool {
    let end = start + term.len();
    let bare_start = matches!(term.first(), Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n'));
    let bare_end = matches!(term.last(), Some(b'0'..=b'9' | b'e' | b'l'));
    // The delimiters first: they turn away near misses (`EnableKeyRotation`) without
    // comparing the term.
    (bare_start || (start > 0 && hay[start - 1] == b'"'))
        && (bare_end || matches!(hay.get(end), Some(b'"' | b'\\')))
        && hay.get(start..end) == Some(term)
}

/// The line of `hay` that holds `at`, without its `\n`, looking back no further than `from` (a
/// line start): a hit's line, found without splitting the buffer into lines.
pub(crate) fn line_around(hay: &[u8], from: usize, at: usize) -> std::ops::Range<usize> {
    let start = memchr::memrchr(b'\n', &hay[from..at]).map_or(from, |i| from + i + 1);
    let end = memchr::memchr(b'\n', &hay[at..]).map_or(hay.len(), |i| at + i);
    start..end
}

/// Iterator over candidate line ranges, returned by [`Prefilter::candidate_lines`].
#[derive(Debug)]
pub struct CandidateLines<'p, 'h> {
    pre: &'p Prefilter,
    haystack: &'h [u8],
    /// Per literal: the offset of its next occurrence at or after the last search start, or
    /// `usize::MAX` when it does not occur again (unused by the pair scan).
    next: Vec<usize>,
    pos: usize,
}

impl CandidateLines<'_, '_> {
    /// The first literal occurrence at or after `self.pos`: its offset and its finder.
    fn next_hit(&mut self) -> Option<(usize, usize)> {
        let hay = self.haystack;
        let mut best = (usize::MAX, 0);
        for (n, (next, finder)) in self.next.iter_mut().zip(&self.pre.finders).enumerate() {
            if *next != usize::MAX && *next < self.pos {
                *next = finder.find(&hay[self.pos..]).map_or(usize::MAX, |i| self.pos + i);
            }
            best = best.min((*next, n));
        }
        (best.0 != usize::MAX).then_some(best)
    }
}

impl Iterator for CandidateLines<'_, '_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let hay = self.haystack;
        if self.pos >= hay.len() {
            return None;
        }
        let hit = if self.pre.finders.is_empty() {
            self.pos
        } else if let Some(pair) = &self.pre.pair {
            let pre = self.pre;
            pair.find(hay, self.pos, |at| pre.hit_at(hay, at))?
        } else {
            loop {
                let (hit, n) = self.next_hit()?;
                if self.pre.confirms(n, hay, hit) {
                    break hit;
                }
                // Not a whole term: look for the literal again right after it.
                let next = self.pre.finders[n].find(&hay[hit + 1..]);
                self.next[n] = next.map_or(usize::MAX, |i| hit + 1 + i);
            }
        };
        let line = line_around(hay, self.pos, hit);
        self.pos = line.end + 1;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(hay: &str) -> Vec<&str> {
        let pre = Prefilter::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion());
        pre.candidate_lines(hay.as_bytes()).map(|r| &hay[r]).collect()
    }

    #[test]
    fn literals_come_from_the_action_clause() {
        let pre = Prefilter::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion());
        let needles: Vec<_> = pre.needles().collect();
        assert_eq!(needles, [&b"leKey"[..], b"\\u00"]);
    }

    #[test]
    fn a_line_without_the_literals_is_no_candidate() {
        let pre = Prefilter::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion());
        assert!(!pre.is_candidate(br#"{"eventName":"Decrypt","eventSource":"kms.amazonaws.com"}"#));
        assert!(pre.is_candidate(br#"{"eventName":"DisableKey"}"#));
        assert!(pre.is_candidate(br#"{"eventName":"Dis\u0061bleKey"}"#));
    }

    #[test]
    fn finds_each_candidate_line_once() {
        let hay = "a\n\"DisableKey\" \"DisableKey\"\nb\nx \"ScheduleKeyDeletion\"\n\\u0044\nc";
        assert_eq!(
            lines(hay),
            [r#""DisableKey" "DisableKey""#, r#"x "ScheduleKeyDeletion""#, "\\u0044"]
        );
    }

    #[test]
    fn first_and_last_lines_without_newline() {
        assert_eq!(lines(r#""DisableKey""#), [r#""DisableKey""#]);
        assert_eq!(lines("x\n\"DisableKey\""), [r#""DisableKey""#]);
        assert_eq!(lines("\"DisableKey\"\n"), [r#""DisableKey""#]);
        assert!(lines("").is_empty());
        assert!(lines("Decrypt\nEncrypt\n").is_empty());
    }

    #[test]
    fn literals_in_adjacent_lines_are_not_merged() {
        assert_eq!(
            lines("\"DisableKey\"\n\"ScheduleKeyDeletion\""),
            [r#""DisableKey""#, r#""ScheduleKeyDeletion""#]
        );
    }

    #[test]
    fn only_whole_terms_are_candidates() {
        let hay = concat!(
            r#"{"eventName":"DisableKeyRotation"}"#,
            "\n",
            r#"{"eventName":"EnableKey","x":"ScheduleKeyDeletions"}"#,
            "\n",
            r#"{"message":"{\"eventName\":\"DisableKey\"}"}"#,
            "\n",
            r#"{"eventName":"DisableKeyRotation","also":["DisableKey"]}"#,
            "\n",
            "DisableKey\n",
        );
        assert_eq!(
            lines(hay),
            [
                r#"{"message":"{\"eventName\":\"DisableKey\"}"}"#,
                r#"{"eventName":"DisableKeyRotation","also":["DisableKey"]}"#
            ]
        );
        let pre = Prefilter::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion());
        assert!(!pre.is_candidate(br#"{"eventName":"EnableKeyRotation"}"#));
        assert!(pre.is_candidate(br#"{"eventName":"EnableKeyRotation","b":"ScheduleKeyDeletion"}"#));
    }

    #[test]
    fn shared_substring_only_when_long_enough() {
        assert_eq!(term_needles(&["DisableKey", "ScheduleKeyDeletion"]), [b"leKey".to_vec()]);
        assert_eq!(term_needles(&["Decrypt", "Encrypt"]), [b"crypt".to_vec()]);
        assert_eq!(term_needles(&["abcd", "xbcd"]), [b"abcd".to_vec(), b"xbcd".to_vec()]);
        assert_eq!(term_needles(&["success"]), [b"success".to_vec()]);
    }

    #[test]
    fn literals_come_only_from_fields_every_shape_carries_verbatim() {
        // However rare the dataset clause is said to be, raw records carry no dataset at all:
        // its terms can never be the literal.
        let mut rule = Rule::kms_cmk_disabled_or_scheduled_for_deletion();
        rule.clauses[0].share = 0.000_001;
        rule.clauses[3].share = 0.000_001;
        let needles: Vec<_> = Prefilter::new(&rule).needles().map(<[u8]>::to_vec).collect();
        assert_eq!(needles, [b"leKey".to_vec(), b"\\u00".to_vec()]);
    }

    #[test]
    fn widens_escape_literal_for_terms_with_slash() {
        let mut rule = Rule::kms_cmk_disabled_or_scheduled_for_deletion();
        rule.clauses[2].terms = &["a/b"];
        assert!(Prefilter::new(&rule).needles().any(|n| n == b"\\"));
    }
}
