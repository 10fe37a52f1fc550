//! Same-length rewrites that let simd-json accept valid JSON it would otherwise refuse.
//!
//! simd-json rejects two things that are valid JSON text and that Elasticsearch indexes:
//! lone surrogate escapes (`"\ud800"`, indexed as U+FFFD, spec section 3) and numbers outside
//! `i64`/`u64`/`f64` range (`1e400`, a 10,000-digit integer). Neither can decide the rule: a
//! surrogate is never part of a term, and a number never equals a keyword. So when a parse
//! fails, the evaluator rewrites the copy it parses, in place and at the same length, and tries
//! once more: every well-formed number becomes `0` padded with spaces, and each lone surrogate
//! escape becomes its own private-use character (`\ud800` + k to `\ue000` + k). Elasticsearch
//! indexes such a value as U+FFFD, but its JSON parser keeps `{"\ud800":1,"\ud801":2}` two
//! different keys; a private-use stand-in per surrogate keeps them different for the duplicate
//! check, where one U+FFFD for all would call them a repeated key. Neither rewrite can turn
//! invalid JSON into valid JSON.

/// Rewrites lone surrogate escapes inside strings and well-formed numbers outside them.
/// Returns whether anything changed.
pub(crate) fn normalize(buf: &mut [u8]) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'"' => i = string_end(buf, i + 1, &mut changed),
            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9' => {
                let end = i + buf[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(buf.len() - i);
                if is_json_number(&buf[i..end]) && &buf[i..end] != b"0" {
                    buf[i] = b'0';
                    buf[i + 1..end].fill(b' ');
                    changed = true;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    changed
}

/// Scans a string body from `i` (just past its opening quote), replacing lone surrogate escapes,
/// and returns the offset just past its closing quote (or the buffer's end).
fn string_end(buf: &mut [u8], mut i: usize, changed: &mut bool) -> usize {
    while i < buf.len() {
        match buf[i] {
            b'"' => return i + 1,
            b'\\' if buf.get(i + 1) == Some(&b'u') => match surrogate(buf, i) {
                Some(0xD800..=0xDBFF) if matches!(surrogate(buf, i + 6), Some(0xDC00..=0xDFFF)) => {
                    i += 12;
                }
                Some(unit) => {
                    let stand_in = format!("{:04x}", 0xE000 + (unit - 0xD800));
                    buf[i + 2..i + 6].copy_from_slice(stand_in.as_bytes());
                    *changed = true;
                    i += 6;
                }
                None => i += 2,
            },
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    i
}

/// The code unit of a `\uXXXX` escape at `i` when it is a surrogate (D800 to DFFF).
fn surrogate(buf: &[u8], i: usize) -> Option<u32> {
    let esc = buf.get(i..i + 6)?;
    if esc[0] != b'\\' || esc[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&esc[2..]).ok()?;
    let unit = u32::from_str_radix(hex, 16).ok()?;
    (0xD800..=0xDFFF).contains(&unit).then_some(unit)
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

    fn norm(s: &str) -> (String, bool) {
        let mut b = s.as_bytes().to_vec();
        let changed = normalize(&mut b);
        (String::from_utf8(b).unwrap(), changed)
    }

    #[test]
    fn lone_surrogates_become_distinct_private_use_chars() {
        assert_eq!(norm(r#"{"a":"\ud800"}"#).0, r#"{"a":"\ue000"}"#);
        assert_eq!(norm(r#"{"a":"\uDC00x"}"#).0, r#"{"a":"\ue400x"}"#);
        assert_eq!(norm(r#"{"a":"\ud800\u0041"}"#).0, r#"{"a":"\ue000\u0041"}"#);
        assert_eq!(norm(r#"{"\ud800":1}"#).0, r#"{"\ue000":0}"#);
    }

    #[test]
    fn pairs_and_escaped_backslashes_are_left_alone() {
        assert_eq!(norm(r#"{"a":"\ud800\udc00"}"#), (r#"{"a":"\ud800\udc00"}"#.into(), false));
        assert_eq!(norm(r#"{"a":"\\ud800"}"#), (r#"{"a":"\\ud800"}"#.into(), false));
    }

    #[test]
    fn numbers_become_zero_only_when_well_formed() {
        assert_eq!(norm(r#"{"a":1e400}"#).0, r#"{"a":0    }"#);
        assert_eq!(norm(r#"{"a":-12.5E+3,"b":0}"#).0, r#"{"a":0       ,"b":0}"#);
        for bad in ["01", "1.", "-", "1e", ".5", "1-2", "--1", "1.5e+"] {
            let doc = format!(r#"{{"a":{bad}}}"#);
            assert_eq!(norm(&doc).0, doc, "{bad}");
        }
        assert_eq!(norm(r#"{"a":"123"}"#), (r#"{"a":"123"}"#.into(), false));
    }
}
