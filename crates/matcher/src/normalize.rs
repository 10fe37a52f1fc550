//! Rewrites valid JSON that simd-json refuses into equivalent JSON it accepts, keeping every
//! comparison the evaluator makes exact.
//!
//! simd-json rejects two things that are valid JSON text and that Elasticsearch indexes:
//! lone surrogate escapes (`"\ud800"`, spec section 3) and numbers outside `i64`/`u64`/`f64`
//! range (`1e400`, a 10,000-digit integer). When a parse fails, the evaluator rewrites a copy of
//! the text with [`normalize`] and parses once more:
//!
//! - every well-formed number becomes `0`: a number never equals a keyword term, and only its
//!   presence counts;
//! - strings are re-spelled so that their decoded text is an *injective* encoding of the UTF-16
//!   code units Elasticsearch's parser (Jackson) sees. With `M` the marker U+F8FF, a lone
//!   surrogate `S` becomes the two characters `M` and `S - U+D800 + U+E000` (so `M` followed by
//!   one of U+E000..U+E7FF), and a genuine `M` becomes `M M`.
//!
//! # Why keys cannot collide
//!
//! Decoding an encoded string left to right is unambiguous: an `M` is always followed by a second
//! character, which is `M` for a genuine marker and a character in U+E000..U+E7FF (never `M`)
//! for a lone surrogate; every other character stands for itself. So two encoded keys are equal
//! exactly when the code-unit sequences they encode are equal, which is Jackson's (and so
//! Elasticsearch's) duplicate-key test. The encoding only adds non-ASCII characters, so it can
//! neither make nor break the equality of a value with an ASCII term, a field path or a member
//! name. Neither rewrite turns invalid JSON into valid JSON: numbers are rewritten only when
//! already well-formed, and strings only gain characters that are valid inside a string.
//!
//! # Documents inside strings
//!
//! An envelope's `message` is parsed a second time, from the text the first parse decoded. When
//! the first parse was a rewritten one, that text holds encodings already (`M x`, `M M`), and a
//! lone surrogate of the outer level sits there as `M x` where Jackson would hold the bare code
//! unit. Rewriting such inner text with `outer_encoded` set keeps those pairs as they are, encodes
//! the inner level's own escapes the same way, and joins an outer high surrogate with an inner
//! low one (or the reverse) into the character the two code units make, as Java strings do.

/// The marker that introduces an encoded lone surrogate: U+F8FF, the last private-use character
/// of the Basic Multilingual Plane.
const MARKER: u32 = 0xF8FF;
/// [`MARKER`] in UTF-8.
pub(crate) const MARKER_UTF8: &[u8] = "\u{F8FF}".as_bytes();
/// Where lone surrogates are encoded: U+D800 + k becomes U+E000 + k.
const STAND_IN_BASE: u32 = 0xE000;

/// Appends to `out` a rewrite of `input` (see the module documentation). `outer_encoded` says
/// that `input` is decoded string text of a rewritten document, whose raw markers are encodings.
/// Returns whether the rewrite differs from `input`.
pub(crate) fn normalize(input: &[u8], out: &mut Vec<u8>, outer_encoded: bool) -> bool {
    let start = out.len();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'"' => {
                out.push(b'"');
                i = string(input, i + 1, out, outer_encoded);
            }
            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9' => {
                let end = i + input[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(input.len() - i);
                if is_json_number(&input[i..end]) {
                    out.push(b'0');
                } else {
                    out.extend_from_slice(&input[i..end]);
                }
                i = end;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out[start..] != *input
}

/// Rewrites a string body from `i` (just past its opening quote) into `out`, up to and including
/// its closing quote, and returns the offset just past that quote (or the input's end).
fn string(input: &[u8], mut i: usize, out: &mut Vec<u8>, outer_encoded: bool) -> usize {
    while i < input.len() {
        match input[i] {
            b'"' => {
                out.push(b'"');
                return i + 1;
            }
            b'\\' if input.get(i + 1) == Some(&b'u') => {
                let Some(unit) = escape_at(input, i) else {
                    out.extend_from_slice(&input[i..i + 2]);
                    i += 2;
                    continue;
                };
                let next_escape = escape_at(input, i + 6);
                if is_high(unit) && next_escape.is_some_and(is_low) {
                    // A proper pair: simd-json decodes it.
                    out.extend_from_slice(&input[i..i + 12]);
                    i += 12;
                } else if let (true, Some(low)) = (
                    is_high(unit) && outer_encoded,
                    encoded_at(input, i + 6).filter(|&u| is_low(u)),
                ) {
                    push_char(out, pair(unit, low));
                    i += 6 + 2 * MARKER_UTF8.len();
                } else if is_surrogate(unit) {
                    push_encoded(out, unit);
                    i += 6;
                } else if unit == MARKER {
                    push_char(out, MARKER);
                    push_char(out, MARKER);
                    i += 6;
                } else {
                    out.extend_from_slice(&input[i..i + 6]);
                    i += 6;
                }
            }
            b'\\' => {
                out.extend_from_slice(&input[i..(i + 2).min(input.len())]);
                i += 2;
            }
            _ if input[i..].starts_with(MARKER_UTF8) => {
                let after = i + MARKER_UTF8.len();
                if !outer_encoded {
                    // A genuine marker.
                    push_char(out, MARKER);
                    push_char(out, MARKER);
                    i = after;
                } else if let Some(high) = encoded_at(input, i).filter(|&u| is_high(u)) {
                    let past = i + 2 * MARKER_UTF8.len();
                    match escape_at(input, past).filter(|&u| is_low(u)) {
                        Some(low) => {
                            push_char(out, pair(high, low));
                            i = past + 6;
                        }
                        None => {
                            out.extend_from_slice(&input[i..past]);
                            i = past;
                        }
                    }
                } else {
                    // `M M` or `M x` from the outer level: already an encoding. A lone marker
                    // cannot come from a rewrite; it is copied, and its string is left as it is.
                    let len = if encoded_at(input, i).is_some() || marker_pair_at(input, i) {
                        2 * MARKER_UTF8.len()
                    } else {
                        MARKER_UTF8.len()
                    };
                    out.extend_from_slice(&input[i..i + len]);
                    i += len;
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    i
}

fn is_surrogate(unit: u32) -> bool {
    (0xD800..=0xDFFF).contains(&unit)
}

fn is_high(unit: u32) -> bool {
    (0xD800..=0xDBFF).contains(&unit)
}

fn is_low(unit: u32) -> bool {
    (0xDC00..=0xDFFF).contains(&unit)
}

/// The character a high and a low surrogate make.
fn pair(high: u32, low: u32) -> u32 {
    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
}

fn push_char(out: &mut Vec<u8>, c: u32) {
    let c = char::from_u32(c).expect("a scalar value");
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

/// Appends the encoding of a lone surrogate: the marker and its stand-in.
fn push_encoded(out: &mut Vec<u8>, unit: u32) {
    push_char(out, MARKER);
    push_char(out, STAND_IN_BASE + (unit - 0xD800));
}

/// The code unit of a `\uXXXX` escape at `i`, if one is there.
fn escape_at(input: &[u8], i: usize) -> Option<u32> {
    let esc = input.get(i..i + 6)?;
    if esc[0] != b'\\' || esc[1] != b'u' || !esc[2..].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(&esc[2..]).ok()?, 16).ok()
}

/// The lone surrogate encoded at `i` (a raw marker and a stand-in), if one is there.
fn encoded_at(input: &[u8], i: usize) -> Option<u32> {
    let rest = input.get(i..)?.strip_prefix(MARKER_UTF8)?;
    let c = std::str::from_utf8(rest.get(..3)?).ok()?.chars().next()? as u32;
    (STAND_IN_BASE..STAND_IN_BASE + 0x800).contains(&c).then(|| c - STAND_IN_BASE + 0xD800)
}

/// Whether two raw markers start at `i`.
fn marker_pair_at(input: &[u8], i: usize) -> bool {
    input.get(i..).is_some_and(|r| {
        r.starts_with(MARKER_UTF8) && r[MARKER_UTF8.len()..].starts_with(MARKER_UTF8)
    })
}

/// The text Elasticsearch indexes for a decoded string of a rewritten document: each encoded
/// lone surrogate as U+FFFD, the replacement Jackson's UTF-8 output writes for it (RULE.md
/// section 3), each doubled marker as one. Borrowed when `s` holds no marker.
pub(crate) fn indexed_text(s: &str) -> std::borrow::Cow<'_, str> {
    let marker = char::from_u32(MARKER).expect("a scalar value");
    if !s.contains(marker) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(match (c == marker).then(|| chars.next()).flatten() {
            Some(next) if next == marker => marker,
            Some(_) => char::REPLACEMENT_CHARACTER,
            None => c,
        });
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `s` is exactly one number in JSON's grammar:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(s: &[u8]) -> bool {
    let digits = |s: &[u8], i: usize| s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(s, i),
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        let n = digits(s, i + 1);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(s, i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_with(s: &str, outer_encoded: bool) -> String {
        let mut out = Vec::new();
        normalize(s.as_bytes(), &mut out, outer_encoded);
        String::from_utf8(out).unwrap()
    }

    fn norm(s: &str) -> String {
        norm_with(s, false)
    }

    const M: char = '\u{F8FF}';

    #[test]
    fn lone_surrogates_become_marked_stand_ins() {
        assert_eq!(norm(r#"{"a":"\ud800"}"#), format!("{{\"a\":\"{M}\u{e000}\"}}"));
        assert_eq!(norm(r#"{"a":"\uDC00x"}"#), format!("{{\"a\":\"{M}\u{e400}x\"}}"));
        assert_eq!(norm(r#"{"\ud800":1}"#), format!("{{\"{M}\u{e000}\":0}}"));
    }

    #[test]
    fn genuine_markers_are_doubled_so_stand_ins_cannot_collide() {
        // The issue's reproducer: U+D800 and U+E000 stay different keys.
        assert_ne!(norm(r#"{"\ud800":1}"#), norm(r#"{"\ue000":1}"#));
        assert_eq!(norm(r#"{"a":"\uf8ff"}"#), format!("{{\"a\":\"{M}{M}\"}}"));
        assert_eq!(norm(&format!("{{\"a\":\"{M}\"}}")), format!("{{\"a\":\"{M}{M}\"}}"));
        // A genuine marker followed by a genuine stand-in is not a lone surrogate.
        let genuine = norm(&format!("{{\"{M}\u{e000}\":1}}"));
        let lone = norm(r#"{"\ud800":1}"#);
        assert_ne!(genuine, lone);
    }

    #[test]
    fn pairs_and_escaped_backslashes_are_left_alone() {
        assert_eq!(norm(r#"{"a":"\ud800\udc00"}"#), r#"{"a":"\ud800\udc00"}"#);
        assert_eq!(norm(r#"{"a":"\\ud800"}"#), r#"{"a":"\\ud800"}"#);
        assert_eq!(norm(r#"{"a":"\ud800\u0041"}"#), format!("{{\"a\":\"{M}\u{e000}\\u0041\"}}"));
    }

    #[test]
    fn inner_text_keeps_outer_encodings_and_pairs_across_levels() {
        // An outer lone high surrogate (encoded) before an inner low escape: one character.
        let inner = format!("{{\"{M}\u{e000}\\udc00\":1}}");
        assert_eq!(norm_with(&inner, true), "{\"\u{10000}\":0}");
        // The reverse: an inner high escape before an outer low surrogate.
        let inner = format!("{{\"\\ud800{M}\u{e400}\":1}}");
        assert_eq!(norm_with(&inner, true), "{\"\u{10000}\":0}");
        // Outer encodings stay; inner lone escapes get the same encoding as outer ones.
        let inner = format!("{{\"{M}\u{e000}\":1,\"\\ud800\":2,\"{M}{M}\":3}}");
        assert_eq!(
            norm_with(&inner, true),
            format!("{{\"{M}\u{e000}\":0,\"{M}\u{e000}\":0,\"{M}{M}\":0}}")
        );
    }

    #[test]
    fn only_an_encoded_inner_text_pairs_across_levels() {
        // Outside an encoded inner text, a raw marker and stand-in are genuine characters: the
        // high escape before them stays a lone surrogate and the marker is doubled.
        let doc = format!("{{\"\\ud800{M}\u{e400}\":1}}");
        assert_eq!(norm(&doc), format!("{{\"{M}\u{e000}{M}{M}\u{e400}\":0}}"));
        // A genuine marker of the outer level (`M M`) is one unit: the stand-in after it is a
        // genuine character, and does not pair with the inner low escape that follows.
        let inner = format!("{{\"{M}{M}\u{e000}\\udc00\":1}}");
        assert_eq!(norm_with(&inner, true), format!("{{\"{M}{M}\u{e000}{M}\u{e400}\":0}}"));
        // A non-surrogate escape before an outer encoding pairs with nothing.
        let inner = format!("{{\"\\u0041{M}\u{e400}\":1}}");
        assert_eq!(norm_with(&inner, true), format!("{{\"\\u0041{M}\u{e400}\":0}}"));
    }

    #[test]
    fn pairs_across_levels_make_the_right_character() {
        // U+1F600 is D83D DE00: both halves non-zero, so the arithmetic is all exercised.
        let inner = format!("{{\"{M}\u{e03d}\\ude00\":1}}");
        assert_eq!(norm_with(&inner, true), "{\"\u{1f600}\":0}");
        let inner = format!("{{\"\\udbff{M}\u{e7ff}\":1}}");
        assert_eq!(norm_with(&inner, true), "{\"\u{10ffff}\":0}");
    }

    #[test]
    fn only_a_high_then_a_low_escape_is_a_pair() {
        // Two lone lows, and a high before what only looks like an escape.
        assert_eq!(
            norm(r#"{"a":"\udc00\udc01"}"#),
            format!("{{\"a\":\"{M}\u{e400}{M}\u{e401}\"}}")
        );
        assert_eq!(norm(r#"{"a":"\ud800xudc00"}"#), format!("{{\"a\":\"{M}\u{e000}xudc00\"}}"));
        assert_eq!(norm(r#"{"a":"\ud800\\dc00"}"#), format!("{{\"a\":\"{M}\u{e000}\\\\dc00\"}}"));
        assert_eq!(norm(r#"{"a":"\ud800\u0dc0"}"#), format!("{{\"a\":\"{M}\u{e000}\\u0dc0\"}}"));
    }

    #[test]
    fn numbers_become_zero_only_when_well_formed() {
        assert_eq!(norm(r#"{"a":1e400}"#), r#"{"a":0}"#);
        assert_eq!(norm(r#"{"a":-12.5E+3,"b":0}"#), r#"{"a":0,"b":0}"#);
        for huge in ["0e400", "-0e400", "1.25e400", "-0.5E-400", "10.01e+999"] {
            assert_eq!(norm(&format!(r#"{{"a":{huge}}}"#)), r#"{"a":0}"#, "{huge}");
        }
        for bad in ["01", "1.", "-", "1e", ".5", "1-2", "--1", "1.5e+"] {
            let doc = format!(r#"{{"a":{bad}}}"#);
            assert_eq!(norm(&doc), doc, "{bad}");
        }
        assert_eq!(norm(r#"{"a":"123"}"#), r#"{"a":"123"}"#);
    }
}
