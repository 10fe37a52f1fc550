//! The KQL subset of Elastic's query rules (`../spec/RULES.md` section 2), parsed into a query
//! tree; what it does not cover is refused with the reason and where, never half-run.
//!
//! Grammar (Kibana's; detection-rules `lib/kql/kql/kql.g`), keywords in any case:
//!
//! ```text
//! query   := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | "(" or ")" | field ":" values
//! values  := "(" vor ")" | "not" values | value
//! vor     := vand ("or" vand)*
//! vand    := vnot ("and" vnot)*
//! vnot    := "not" vnot | "(" vor ")" | value
//! value   := "*" | QUOTED | UNQUOTED (with `*` wildcards and `\` escapes)
//! ```
//!
//! Refused: range operators (`<`, `>=`, ...), nested queries `field:{...}`, wildcards in field
//! names, and free-text terms with no field.

use std::fmt;

/// A parsed query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Any of these holds.
    Or(Vec<Query>),
    /// All of these hold.
    And(Vec<Query>),
    /// This does not hold.
    Not(Box<Query>),
    /// A condition on one field's values.
    Field(String, Value),
}

/// What `field: value` asks of the field's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `field: *`: the field has an indexed value.
    Exists,
    /// Some value is exactly this text (quoted, or unquoted without a wildcard).
    Exact(String),
    /// Some value matches this pattern (`*` any sequence of characters).
    Wildcard(Pattern),
}

/// A wildcard pattern: literal pieces with `*` between them, case-sensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The literal pieces; `*` stands between consecutive ones, and before the first when
    /// `leading`, after the last when `trailing`.
    pub pieces: Vec<String>,
    /// The pattern starts with `*`.
    pub leading: bool,
    /// The pattern ends with `*`.
    pub trailing: bool,
}

impl Pattern {
    /// Whether `text` matches the pattern as a whole: an anchored first piece at the start, an
    /// anchored last piece at the end (without overlapping), the others leftmost in between.
    pub fn matches(&self, text: &str) -> bool {
        let (mut lo, mut hi) = (0, text.len());
        let mut pieces = &self.pieces[..];
        if !self.leading {
            let Some((first, rest)) = pieces.split_first() else { return text.is_empty() };
            if !text.starts_with(first.as_str()) {
                return false;
            }
            lo = first.len();
            pieces = rest;
        }
        if !self.trailing {
            let Some((last, rest)) = pieces.split_last() else { return lo == text.len() };
            if !text[lo..].ends_with(last.as_str()) {
                return false;
            }
            hi = text.len() - last.len();
            pieces = rest;
        }
        for piece in pieces {
            match text[lo..hi].find(piece.as_str()) {
                Some(at) => lo += at + piece.len(),
                None => return false,
            }
        }
        true
    }
}

/// Why a query cannot be run, and at which byte of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Byte offset in the query text.
    pub at: usize,
    /// What is wrong, in a few words.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.reason, self.at)
    }
}

impl std::error::Error for Refusal {}

/// Parses a KQL query of the supported subset.
pub fn parse(query: &str) -> Result<Query, Refusal> {
    let tokens = lex(query)?;
    let mut p = Parser { tokens, pos: 0, end: query.len() };
    let q = p.or()?;
    match p.peek() {
        None => Ok(q),
        Some(t) => Err(p.refuse_at(t.at, unexpected(&t.kind))),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    Colon,
    Brace,
    Range(&'static str),
    And,
    Or,
    Not,
    /// A quoted string, unescaped.
    Quoted(String),
    /// An unquoted literal: its pieces split at unescaped `*`, and the raw text (for keywords).
    Unquoted(Vec<Option<String>>),
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    at: usize,
    /// Whitespace before the token.
    space_before: String,
}

fn unexpected(kind: &Kind) -> String {
    match kind {
        Kind::Open => "unexpected `(`".into(),
        Kind::Close => "unexpected `)`".into(),
        Kind::Colon => "unexpected `:`".into(),
        Kind::Brace => "nested query (field:{...})".into(),
        Kind::Range(op) => format!("range query ({op})"),
        Kind::And | Kind::Or | Kind::Not => "unexpected keyword".into(),
        Kind::Quoted(_) | Kind::Unquoted(_) => "free-text term with no field".into(),
    }
}

fn lex(text: &str) -> Result<Vec<Token>, Refusal> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut space = String::new();
    while i < bytes.len() {
        let at = i;
        let c = bytes[i];
        let simple = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                space.push(c as char);
                i += 1;
                continue;
            }
            b'(' => Some(Kind::Open),
            b')' => Some(Kind::Close),
            b':' => Some(Kind::Colon),
            b'{' | b'}' => Some(Kind::Brace),
            b'<' | b'>' => {
                let op = match (c, bytes.get(i + 1)) {
                    (b'<', Some(b'=')) => "<=",
                    (b'>', Some(b'=')) => ">=",
                    (b'<', _) => "<",
                    _ => ">",
                };
                i += op.len() - 1;
                Some(Kind::Range(op))
            }
            _ => None,
        };
        let kind = match simple {
            Some(kind) => {
                i += 1;
                kind
            }
            None if c == b'"' => {
                let (value, end) = quoted(text, i)?;
                i = end;
                Kind::Quoted(value)
            }
            None => {
                let (pieces, raw, end) = unquoted(text, i)?;
                i = end;
                match raw.to_ascii_lowercase().as_str() {
                    "and" if pieces.len() == 1 => Kind::And,
                    "or" if pieces.len() == 1 => Kind::Or,
                    "not" if pieces.len() == 1 => Kind::Not,
                    _ => Kind::Unquoted(pieces),
                }
            }
        };
        tokens.push(Token { kind, at, space_before: std::mem::take(&mut space) });
    }
    Ok(tokens)
}

/// A quoted string starting at `text[i]` (`"`): its unescaped text and the offset after it.
/// Escapes: `\"`, `\\`, `\t`, `\n`, `\r`; a `*` inside is a literal star.
fn quoted(text: &str, start: usize) -> Result<(String, usize), Refusal> {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((o, c)) = chars.next() {
        match c {
            '"' => return Ok((out, start + 1 + o + 1)),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                _ => {
                    return Err(Refusal {
                        at: start + 1 + o,
                        reason: "unknown escape in a quoted value".into(),
                    })
                }
            },
            '\r' | '\n' => {
                return Err(Refusal {
                    at: start + 1 + o,
                    reason: "line break in a quoted value".into(),
                })
            }
            c => out.push(c),
        }
    }
    Err(Refusal { at: start, reason: "unterminated quoted value".into() })
}

/// An unquoted literal starting at `text[start]`: its pieces (`None` for each unescaped `*`,
/// `Some` text between), its raw text, and the offset after it.
#[allow(clippy::type_complexity)]
fn unquoted(text: &str, start: usize) -> Result<(Vec<Option<String>>, String, usize), Refusal> {
    let mut pieces: Vec<Option<String>> = Vec::new();
    let mut current = String::new();
    let mut chars = text[start..].char_indices().peekable();
    let mut end = text.len();
    while let Some(&(o, c)) = chars.peek() {
        match c {
            ' ' | '\t' | '\r' | '\n' | '(' | ')' | ':' | '<' | '>' | '"' | '{' | '}' => {
                end = start + o;
                break;
            }
            '*' => {
                if !current.is_empty() {
                    pieces.push(Some(std::mem::take(&mut current)));
                }
                pieces.push(None);
                chars.next();
            }
            '\\' => {
                chars.next();
                match chars.next() {
                    Some((_, 't')) => current.push('\t'),
                    Some((_, 'n')) => current.push('\n'),
                    Some((_, 'r')) => current.push('\r'),
                    Some((_, e)) if "\\():<>\"*{}".contains(e) => current.push(e),
                    Some((eo, e)) => {
                        // An escaped keyword: `\and`, `\or`, `\not`.
                        let rest = &text[start + eo..];
                        let word = ["and", "or", "not"].into_iter().find(|w| {
                            rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w)
                        });
                        match word {
                            Some(w) => {
                                current.push_str(&rest[..w.len()]);
                                for _ in 1..w.len() {
                                    chars.next();
                                }
                            }
                            None => {
                                return Err(Refusal {
                                    at: start + eo - 1,
                                    reason: format!("unknown escape `\\{e}`"),
                                })
                            }
                        }
                    }
                    None => {
                        return Err(Refusal { at: start + o, reason: "a lone backslash".into() })
                    }
                }
            }
            c => {
                current.push(c);
                chars.next();
            }
        }
    }
    if !current.is_empty() || pieces.is_empty() {
        pieces.push(Some(current));
    }
    Ok((pieces, text[start..end].to_string(), end))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next_is(&self, kind: &Kind) -> bool {
        self.peek().is_some_and(|t| t.kind == *kind)
    }

    fn refuse_at(&self, at: usize, reason: impl Into<String>) -> Refusal {
        Refusal { at, reason: reason.into() }
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.at)
    }

    fn or(&mut self) -> Result<Query, Refusal> {
        let mut parts = vec![self.and()?];
        while self.next_is(&Kind::Or) {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Query::Or(parts) })
    }

    fn and(&mut self) -> Result<Query, Refusal> {
        let mut parts = vec![self.not()?];
        while self.next_is(&Kind::And) {
            self.pos += 1;
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Query::And(parts) })
    }

    fn not(&mut self) -> Result<Query, Refusal> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.refuse_at(self.end, "the query ends too soon"));
        };
        match token.kind {
            Kind::Not => {
                self.pos += 1;
                Ok(Query::Not(Box::new(self.not()?)))
            }
            Kind::Open => {
                self.pos += 1;
                let q = self.or()?;
                self.expect_close(token.at)?;
                Ok(q)
            }
            Kind::Quoted(_) | Kind::Unquoted(_) => self.field_expression(),
            kind => Err(self.refuse_at(token.at, unexpected(&kind))),
        }
    }

    fn expect_close(&mut self, open: usize) -> Result<(), Refusal> {
        if self.next_is(&Kind::Close) {
            self.pos += 1;
            Ok(())
        } else {
            let at = self.here();
            let reason = match self.peek() {
                Some(t) => unexpected(&t.kind),
                None => format!("`(` at offset {open} is never closed"),
            };
            Err(self.refuse_at(at, reason))
        }
    }

    fn field_expression(&mut self) -> Result<Query, Refusal> {
        let token = self.tokens[self.pos].clone();
        self.pos += 1;
        let field = match &token.kind {
            Kind::Quoted(f) => f.clone(),
            Kind::Unquoted(pieces) => match &pieces[..] {
                [Some(f)] => f.clone(),
                _ => return Err(self.refuse_at(token.at, "wildcard in a field name")),
            },
            _ => unreachable!("called on a literal"),
        };
        match self.peek().map(|t| (t.kind.clone(), t.at)) {
            Some((Kind::Colon, _)) => self.pos += 1,
            Some((Kind::Range(op), at)) => {
                return Err(self.refuse_at(at, format!("range query ({op})")))
            }
            _ => return Err(self.refuse_at(token.at, "free-text term with no field")),
        }
        if let Some(t) = self.peek() {
            if t.kind == Kind::Brace {
                return Err(self.refuse_at(t.at, "nested query (field:{...})"));
            }
            if let Kind::Range(op) = t.kind {
                return Err(self.refuse_at(t.at, format!("range query ({op})")));
            }
        }
        let values = self.values()?;
        Ok(spread(&field, values))
    }

    /// `values := "(" vor ")" | "not" values | value`
    fn values(&mut self) -> Result<ValueTree, Refusal> {
        match self.peek().map(|t| (t.kind.clone(), t.at)) {
            Some((Kind::Open, at)) => {
                self.pos += 1;
                let v = self.vor()?;
                self.expect_close(at)?;
                Ok(v)
            }
            Some((Kind::Not, _)) => {
                self.pos += 1;
                Ok(ValueTree::Not(Box::new(self.values()?)))
            }
            _ => self.value(),
        }
    }

    fn vor(&mut self) -> Result<ValueTree, Refusal> {
        let mut parts = vec![self.vand()?];
        while self.next_is(&Kind::Or) {
            self.pos += 1;
            parts.push(self.vand()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { ValueTree::Or(parts) })
    }

    fn vand(&mut self) -> Result<ValueTree, Refusal> {
        let mut parts = vec![self.vnot()?];
        while self.next_is(&Kind::And) {
            self.pos += 1;
            parts.push(self.vnot()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { ValueTree::And(parts) })
    }

    fn vnot(&mut self) -> Result<ValueTree, Refusal> {
        match self.peek().map(|t| (t.kind.clone(), t.at)) {
            Some((Kind::Not, _)) => {
                self.pos += 1;
                Ok(ValueTree::Not(Box::new(self.vnot()?)))
            }
            Some((Kind::Open, at)) => {
                self.pos += 1;
                let v = self.vor()?;
                self.expect_close(at)?;
                Ok(v)
            }
            _ => self.value(),
        }
    }

    /// One value; unquoted words separated by spaces join into one when the result holds a
    /// wildcard (`*S3 Browser*`), as the grammar's WILDCARD_LITERAL does.
    fn value(&mut self) -> Result<ValueTree, Refusal> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.refuse_at(self.end, "a value is missing"));
        };
        self.pos += 1;
        let value = match token.kind {
            Kind::Quoted(text) => Value::Exact(text),
            Kind::Unquoted(mut pieces) => {
                while let Some(next) = self.peek().cloned() {
                    let Kind::Unquoted(more) = &next.kind else { break };
                    let joined: Vec<&Option<String>> = pieces.iter().chain(more).collect();
                    if !joined.iter().any(|p| p.is_none()) {
                        return Err(self.refuse_at(next.at, "free-text term with no field"));
                    }
                    let space = Some(next.space_before.clone());
                    pieces = join_words(pieces, space, more.clone());
                    self.pos += 1;
                }
                value_of(pieces)
            }
            kind => return Err(self.refuse_at(token.at, unexpected(&kind))),
        };
        Ok(ValueTree::Value(value))
    }
}

/// Joins two unquoted words with the whitespace between them.
fn join_words(
    mut left: Vec<Option<String>>,
    space: Option<String>,
    right: Vec<Option<String>>,
) -> Vec<Option<String>> {
    let space = space.unwrap_or_default();
    match left.last_mut() {
        Some(Some(text)) => text.push_str(&space),
        _ => left.push(Some(space)),
    }
    for piece in right {
        match (left.last_mut(), piece) {
            (Some(Some(text)), Some(more)) => text.push_str(&more),
            (_, piece) => left.push(piece),
        }
    }
    left
}

/// The value an unquoted literal stands for.
fn value_of(pieces: Vec<Option<String>>) -> Value {
    if !pieces.iter().any(Option::is_none) {
        return Value::Exact(pieces.into_iter().flatten().collect());
    }
    if pieces.iter().all(Option::is_none) {
        return Value::Exists;
    }
    let leading = pieces.first().is_some_and(Option::is_none);
    let trailing = pieces.last().is_some_and(Option::is_none);
    let pieces: Vec<String> = pieces.into_iter().flatten().filter(|p| !p.is_empty()).collect();
    Value::Wildcard(Pattern { pieces, leading, trailing })
}

/// A field's value expression before it is spread over the field.
#[derive(Clone, Debug)]
enum ValueTree {
    Or(Vec<ValueTree>),
    And(Vec<ValueTree>),
    Not(Box<ValueTree>),
    Value(Value),
}

/// `field: (a or not b)` is `field: a or not field: b`.
fn spread(field: &str, values: ValueTree) -> Query {
    match values {
        ValueTree::Or(v) => Query::Or(v.into_iter().map(|v| spread(field, v)).collect()),
        ValueTree::And(v) => Query::And(v.into_iter().map(|v| spread(field, v)).collect()),
        ValueTree::Not(v) => Query::Not(Box::new(spread(field, *v))),
        ValueTree::Value(v) => Query::Field(field.to_string(), v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(field: &str, value: &str) -> Query {
        Query::Field(field.into(), Value::Exact(value.into()))
    }

    #[test]
    fn precedence_not_and_or() {
        let q = parse("a:1 or not b:2 and c:3").unwrap();
        assert_eq!(
            q,
            Query::Or(vec![
                f("a", "1"),
                Query::And(vec![Query::Not(Box::new(f("b", "2"))), f("c", "3")])
            ])
        );
        assert_eq!(
            parse("NOT a:1 AnD b:2").unwrap(),
            Query::And(vec![Query::Not(Box::new(f("a", "1"))), f("b", "2")])
        );
    }

    #[test]
    fn value_lists_spread_over_their_field() {
        let q = parse(r#"event.action:("DisableKey" or ScheduleKeyDeletion) and x: (not 1 and 2)"#)
            .unwrap();
        assert_eq!(
            q,
            Query::And(vec![
                Query::Or(vec![
                    f("event.action", "DisableKey"),
                    f("event.action", "ScheduleKeyDeletion")
                ]),
                Query::And(vec![Query::Not(Box::new(f("x", "1"))), f("x", "2")]),
            ])
        );
    }

    #[test]
    fn wildcards_escapes_and_exists() {
        let q = parse(r#"user.name:(system\:serviceaccount\:* and not system\:serviceaccount\:kube-system\:x) and a:* and b:"*""#).unwrap();
        let Query::And(parts) = q else { panic!() };
        let Query::And(names) = &parts[0] else { panic!() };
        assert_eq!(
            names[0],
            Query::Field(
                "user.name".into(),
                Value::Wildcard(Pattern {
                    pieces: vec!["system:serviceaccount:".into()],
                    leading: false,
                    trailing: true
                })
            )
        );
        assert_eq!(
            names[1],
            Query::Not(Box::new(f("user.name", "system:serviceaccount:kube-system:x")))
        );
        assert_eq!(parts[1], Query::Field("a".into(), Value::Exists));
        assert_eq!(parts[2], f("b", "*"), "a quoted star is a literal star");
        assert_eq!(parse(r"a:\and").unwrap(), f("a", "and"));
    }

    #[test]
    fn spaced_wildcards_join() {
        assert_eq!(
            parse("ua: *S3 Browser* and x:1").unwrap(),
            Query::And(vec![
                Query::Field(
                    "ua".into(),
                    Value::Wildcard(Pattern {
                        pieces: vec!["S3 Browser".into()],
                        leading: true,
                        trailing: true
                    })
                ),
                f("x", "1"),
            ])
        );
    }

    #[test]
    fn refusals_name_the_reason_and_the_offset() {
        let refused = |q: &str| parse(q).unwrap_err().to_string();
        assert_eq!(refused("a:1 and b >= 2"), "range query (>=) at offset 10");
        assert_eq!(refused("a:{b:1}"), "nested query (field:{...}) at offset 2");
        assert_eq!(refused("a*:1"), "wildcard in a field name at offset 0");
        assert_eq!(refused("a:1 and hello"), "free-text term with no field at offset 8");
        assert_eq!(refused("a:one two"), "free-text term with no field at offset 6");
        assert_eq!(refused("a:(1 or 2"), "`(` at offset 2 is never closed at offset 9");
        assert_eq!(refused(r#"a:"x"#), "unterminated quoted value at offset 2");
    }

    #[test]
    fn patterns_match_whole_values() {
        let p = |q: &str| match parse(&format!("f:{q}")).unwrap() {
            Query::Field(_, Value::Wildcard(p)) => p,
            other => panic!("{other:?}"),
        };
        assert!(p("*terraform*").matches("arn:aws:iam::1:role/terraform-ci"));
        assert!(!p("*terraform*").matches("Terraform"));
        assert!(p("arn*/terraform").matches("arn:aws:iam::1:user/terraform"));
        assert!(!p("arn*/terraform").matches("arn:aws:iam::1:user/terraform2"));
        assert!(p("a*b*c").matches("abc") && p("a*b*c").matches("axxbyyc"));
        assert!(!p("a*b*c").matches("acb"));
        assert!(p("*.pem").matches(".pem") && !p("*.pem").matches("x.pemx"));
        assert!(p("ab*ab").matches("abab") && !p("ab*ab").matches("aba"));
        assert!(p("*.pem").matches("x.pemy.pem"), "the last piece is found at the end");
        assert!(p("a*").matches("a") && p("*a*").matches("a") && !p("a*a").matches("a"));
    }
}
