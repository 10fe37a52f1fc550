//! `--wrap-invalid`: an invalid line comes out as one JSON object that holds it, so tag mode's
//! output stays valid NDJSON for consumers that lose data on an invalid line (Fluent Bit's
//! `in_stdin` drops its whole read buffer on one).
//!
//! A line that is valid UTF-8 is kept as text, `{"kmsguard":{"invalid":WHY},"event":{"original":
//! LINE}}` (`event.original` is ECS's field for an event's original text); any other line, and a
//! line longer than `--max-line-bytes` (which streams through and is never held whole), is kept
//! as base64, `{"kmsguard":{"invalid":WHY,"original_base64":B64}}`. Either way every byte can be
//! recovered.

use std::io::{self, Write};

use base64::Engine as _;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Writes `line` wrapped (see the module documentation).
pub(crate) fn write_wrapped(line: &[u8], why: &str, out: &mut dyn Write) -> io::Result<()> {
    let why = serde_json::Value::from(why);
    match std::str::from_utf8(line) {
        Ok(text) => {
            let text = serde_json::Value::from(text);
            write!(out, r#"{{"kmsguard":{{"invalid":{why}}},"event":{{"original":{text}}}}}"#)
        }
        Err(_) => {
            let b64 = B64.encode(line);
            write!(out, r#"{{"kmsguard":{{"invalid":{why},"original_base64":"{b64}"}}}}"#)
        }
    }
}

/// A line wrapped as it streams through: base64 in pieces, whatever their sizes.
#[derive(Debug, Default)]
pub(crate) struct Streaming {
    /// Up to two bytes waiting for a third.
    carry: Vec<u8>,
}

impl Streaming {
    /// Writes the wrapper's start.
    pub(crate) fn begin(why: &str, out: &mut dyn Write) -> io::Result<Streaming> {
        let why = serde_json::Value::from(why);
        write!(out, r#"{{"kmsguard":{{"invalid":{why},"original_base64":""#)?;
        Ok(Streaming::default())
    }

    /// Encodes the next bytes of the line.
    pub(crate) fn chunk(&mut self, bytes: &[u8], out: &mut dyn Write) -> io::Result<()> {
        self.carry.extend_from_slice(bytes);
        let whole = self.carry.len() / 3 * 3;
        out.write_all(B64.encode(&self.carry[..whole]).as_bytes())?;
        self.carry.drain(..whole);
        Ok(())
    }

    /// Encodes what is left and closes the wrapper.
    pub(crate) fn end(self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(B64.encode(&self.carry).as_bytes())?;
        out.write_all(br#""}}"#)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(out: &[u8]) -> Value {
        serde_json::from_slice(out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
    }

    #[test]
    fn text_and_bytes_are_kept() {
        let mut out = Vec::new();
        write_wrapped(b"{\"a\":\"\t\"", "not valid JSON", &mut out).unwrap();
        let v = parse(&out);
        assert_eq!(v["event"]["original"], "{\"a\":\"\t\"");
        assert_eq!(v["kmsguard"]["invalid"], "not valid JSON");
        let mut out = Vec::new();
        write_wrapped(b"\xff\x00x", "invalid UTF-8", &mut out).unwrap();
        let b64 = parse(&out)["kmsguard"]["original_base64"].as_str().unwrap().to_string();
        assert_eq!(B64.decode(b64).unwrap(), b"\xff\x00x");
    }

    #[test]
    fn streaming_in_any_pieces_is_one_encoding() {
        let line: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for piece in [1, 2, 3, 4, 7, 1000] {
            let mut out = Vec::new();
            let mut s = Streaming::begin("too long", &mut out).unwrap();
            for chunk in line.chunks(piece) {
                s.chunk(chunk, &mut out).unwrap();
            }
            s.end(&mut out).unwrap();
            let b64 = parse(&out)["kmsguard"]["original_base64"].as_str().unwrap().to_string();
            assert_eq!(B64.decode(b64).unwrap(), line, "pieces of {piece}");
        }
    }
}
