//! A minimal scanner over JSON text that the matcher has already validated: it finds the byte
//! spans of an object's members and an array's elements, so output can reuse the input's bytes.
//!
//! It trusts its input to be valid JSON and never recurses, so deep nesting costs no stack.

use std::ops::Range;

/// One top-level member of an object: the key's span (quotes included) and the value's span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `i` is at an opening quote; returns the offset just past the closing quote.
fn skip_string(text: &[u8], mut i: usize) -> usize {
    i += 1;
    // Strings are most of a CloudTrail event's bytes: jump between quotes and backslashes.
    while let Some(at) = text.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        match text[i + at] {
            b'"' => return i + at + 1,
            _ => i += at + 2,
        }
    }
    text.len()
}

/// `i` is at the first byte of a value; returns the offset just past it.
fn skip_value(text: &[u8], mut i: usize) -> usize {
    match text.get(i) {
        Some(b'"') => skip_string(text, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while i < text.len() {
                match text[i] {
                    b'"' => {
                        i = skip_string(text, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            text.len()
        }
        _ => {
            while i < text.len()
                && !matches!(text[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            i
        }
    }
}

/// The span of the top-level object in `text` (a leading byte order mark and surrounding
/// whitespace excluded).
pub(crate) fn object_span(text: &[u8]) -> Range<usize> {
    let bom = if text.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    let start = skip_ws(text, bom);
    start..skip_value(text, start)
}

/// The members of the object starting at `text[start]` (`{`).
pub(crate) fn members(text: &[u8], start: usize) -> Vec<Member> {
    let mut out = Vec::new();
    let mut i = skip_ws(text, start + 1);
    while text.get(i) == Some(&b'"') {
        let key = i..skip_string(text, i);
        i = skip_ws(text, key.end);
        i = skip_ws(text, i + 1); // the colon
        let value = i..skip_value(text, i);
        out.push(Member { key, value: value.clone() });
        i = skip_ws(text, value.end);
        if text.get(i) == Some(&b',') {
            i = skip_ws(text, i + 1);
        }
    }
    out
}

/// The element spans of the array at `span`.
pub(crate) fn elements(text: &[u8], span: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = skip_ws(text, span.start + 1);
    while i < span.end && text[i] != b']' {
        let end = skip_value(text, i);
        out.push(i..end);
        i = skip_ws(text, end);
        if text.get(i) == Some(&b',') {
            i = skip_ws(text, i + 1);
        }
    }
    out
}

/// Whether the array or object at `span` has no elements.
pub(crate) fn is_empty_container(text: &[u8], span: &Range<usize>) -> bool {
    skip_ws(text, span.start + 1) == span.end - 1
}

/// The decoded text of a key span (quotes included); `None` when it holds a lone surrogate,
/// which no key kmsguard writes can equal.
pub(crate) fn decode_key(text: &[u8], key: &Range<usize>) -> Option<String> {
    serde_json::from_slice::<String>(&text[key.clone()]).ok()
}

/// The element spans of array member `name` when `text` is an object whose only member it is:
/// a container (`Records`, `Events`) that can be split without losing anything.
pub(crate) fn sole_array(text: &[u8], name: &str) -> Option<Vec<Range<usize>>> {
    let obj = object_span(text);
    match members(text, obj.start).as_slice() {
        [m] if text.get(m.value.start) == Some(&b'[')
            && decode_key(text, &m.key).as_deref() == Some(name) =>
        {
            Some(elements(text, m.value.clone()))
        }
        _ => None,
    }
}

/// When the envelope `text` holds a CloudTrail log file in its `message` (an object whose only
/// member is `Records`), one envelope per record: the same members, in the same order and bytes,
/// with `message` holding that record alone.
pub(crate) fn split_envelope(text: &[u8]) -> Option<Vec<Vec<u8>>> {
    let obj = object_span(text);
    let members = members(text, obj.start);
    let message =
        members.iter().find(|m| decode_key(text, &m.key).as_deref() == Some("message"))?;
    let file: String = serde_json::from_slice(&text[message.value.clone()]).ok()?;
    let records = sole_array(file.as_bytes(), "Records")?;
    let (head, tail) = (&text[obj.start..message.value.start], &text[message.value.end..obj.end]);
    let envelopes = records
        .into_iter()
        .map(|r| {
            let record = serde_json::to_string(&file[r]).expect("a string serializes");
            [head, record.as_bytes(), tail].concat()
        })
        .collect();
    Some(envelopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_elements_of_nested_text() {
        let text = br#" {"a" : [1, {"b":"]}"}], "c\"d":"x\\" ,"e":null} "#;
        let obj = object_span(text);
        assert_eq!(&text[obj.clone()][..1], b"{");
        let m = members(text, obj.start);
        let keys: Vec<_> = m.iter().map(|m| decode_key(text, &m.key).unwrap()).collect();
        assert_eq!(keys, ["a", "c\"d", "e"]);
        let values: Vec<_> = m.iter().map(|m| &text[m.value.clone()]).collect();
        assert_eq!(values, [&br#"[1, {"b":"]}"}]"#[..], br#""x\\""#, b"null"]);
        let els: Vec<_> =
            elements(text, m[0].value.clone()).into_iter().map(|r| &text[r]).collect();
        assert_eq!(els, [&b"1"[..], br#"{"b":"]}"}"#]);
    }

    #[test]
    fn empty_containers() {
        let text = b"{ }";
        assert!(members(text, 0).is_empty());
        assert!(is_empty_container(text, &(0..3)));
        assert!(elements(b"[ ]", 0..3).is_empty());
        assert!(!is_empty_container(b"[1]", &(0..3)));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let m = members(deep.as_bytes(), 0);
        assert_eq!(m[0].value.len(), 200_000);
    }
}
