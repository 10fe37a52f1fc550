//! Concatenated JSON (`--json-stream`): documents separated by any whitespace, as `jq` reads its
//! input, so pretty-printed files and `aws cloudtrail lookup-events` output work as they come.
//!
//! A small scanner finds where each document ends without parsing it: it follows strings and
//! bracket depth only. What it calls a document the matcher then judges; text that is not JSON
//! still splits somewhere and comes out unchanged (tag mode), so no byte is lost.

/// Bytes JSON allows between values.
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// What kind of value the scanner is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kind {
    /// Nothing seen yet (or only a byte order mark).
    #[default]
    Start,
    /// An object or array: ends when its brackets balance.
    Container,
    /// A string: ends at its closing quote.
    Text,
    /// A number, a literal, or anything else: ends before whitespace or a structural byte.
    Scalar,
}

/// Finds the end of one document, fed its bytes in pieces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scanner {
    kind: Kind,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Bytes of a leading byte order mark still to skip.
    bom_left: usize,
    seen: usize,
}

impl Scanner {
    /// A scanner at the first byte of a document (not whitespace).
    pub(crate) fn new() -> Scanner {
        Scanner::default()
    }

    /// Feeds the document's next bytes; returns how many of them belong to it once it ends.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            let first = self.seen == 0;
            self.seen += 1;
            if first && b == 0xEF {
                self.bom_left = 2;
                continue;
            }
            if self.bom_left > 0 {
                self.bom_left -= 1;
                continue;
            }
            match self.kind {
                Kind::Start => match b {
                    b'{' | b'[' => {
                        self.kind = Kind::Container;
                        self.depth = 1;
                    }
                    b'"' => {
                        self.kind = Kind::Text;
                        self.in_string = true;
                    }
                    // A stray closer, or whitespace after a byte order mark: one byte alone.
                    b'}' | b']' | b',' | b':' => return Some(i + 1),
                    b if is_ws(b) => return Some(i),
                    _ => self.kind = Kind::Scalar,
                },
                Kind::Scalar => {
                    if is_ws(b) || matches!(b, b'{' | b'[' | b'}' | b']' | b'"' | b',' | b':') {
                        return Some(i);
                    }
                }
                Kind::Text | Kind::Container => {
                    if self.in_string {
                        match (self.escaped, b) {
                            (true, _) => self.escaped = false,
                            (false, b'\\') => self.escaped = true,
                            (false, b'"') => {
                                self.in_string = false;
                                if self.kind == Kind::Text {
                                    return Some(i + 1);
                                }
                            }
                            _ => {}
                        }
                        continue;
                    }
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        None
    }
}

/// Appends `doc` to `out` without the whitespace between its tokens (and without a leading byte
/// order mark): one line of NDJSON.
pub(crate) fn compact(doc: &[u8], out: &mut Vec<u8>) {
    let doc = doc.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(doc);
    let (mut in_string, mut escaped) = (false, false);
    for &b in doc {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            out.push(b);
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !is_ws(b) {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `text` into (separator, document) pairs, feeding the scanner `piece` bytes at a
    /// time.
    fn split(text: &[u8], piece: usize) -> Vec<String> {
        let mut docs = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            if is_ws(text[pos]) {
                pos += 1;
                continue;
            }
            let mut scanner = Scanner::new();
            let mut at = pos;
            let end = loop {
                let chunk = &text[at..(at + piece).min(text.len())];
                if chunk.is_empty() {
                    break text.len();
                }
                if let Some(n) = scanner.feed(chunk) {
                    break at + n;
                }
                at += chunk.len();
            };
            docs.push(String::from_utf8_lossy(&text[pos..end]).into_owned());
            pos = end.max(pos + 1);
        }
        docs
    }

    #[test]
    fn documents_end_where_their_brackets_balance() {
        let text = b"{\n  \"a\": \"}{\\\"\",\n  \"b\": [1, {\"c\": 2}]\n}\n[1]\"s\\\"x\" 12 true{}";
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(
                split(text, piece),
                [
                    "{\n  \"a\": \"}{\\\"\",\n  \"b\": [1, {\"c\": 2}]\n}",
                    "[1]",
                    "\"s\\\"x\"",
                    "12",
                    "true",
                    "{}"
                ],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn text_that_is_not_json_still_splits() {
        assert_eq!(split(b"} ]x{", 4), ["}", "]", "x", "{"]);
        assert_eq!(split(b"\xEF\xBB\xBF{\"a\":1}", 2), ["\u{feff}{\"a\":1}"]);
    }

    #[test]
    fn compaction_keeps_strings_whole() {
        let mut out = Vec::new();
        compact(b"\xEF\xBB\xBF{ \"a b\" :\n [ 1 , \"\\\" x\" ] }", &mut out);
        assert_eq!(out, b"{\"a b\":[1,\"\\\" x\"]}");
    }
}
