//! kmsguard as an in-process Fluent Bit filter: a WebAssembly module for Fluent Bit's `wasm`
//! filter (`Event_Format json`), built with `cargo build --release --target wasm32-wasip1 -p
//! kmsguard-wasm`.
//!
//! Fluent Bit calls an exported function once per record with
//! `(tag_ptr, tag_len, time_sec, time_nsec, record_ptr, record_len) -> ptr`: the record is its
//! JSON text, copied into the module's memory (with the module's exported `malloc`) and freed by
//! the host after the call. The function returns a NUL-terminated JSON object, which the host
//! copies, or an empty string, which drops the record. One function per mode and rule option, as
//! the filter's only setting is `Function_Name`:
//!
//! | function | keeps | documents without a dataset |
//! |---|---|---|
//! | `kms_filter` | matches only, enriched | do not match |
//! | `kms_tag` | every record, matches enriched | do not match |
//! | `kms_filter_cloudtrail` | matches only, enriched | count as `aws.cloudtrail` |
//! | `kms_tag_cloudtrail` | every record, matches enriched | count as `aws.cloudtrail` |
//! | `identity` | every record, unchanged | (no matching: the cost of the mechanism itself) |
//!
//! Verdicts and enrichment are the `kmsguard` binary's: the same matcher (its prefilter first,
//! so most records cost one `memmem` scan) and the same enricher. A record that does not match
//! is handed back as the host's own copy, with no copy made here.

use std::cell::RefCell;

use kmsguard_matcher::{Matcher, CLOUDTRAIL_DATASET};
use kmsguard_transform::Enricher;

/// What a function keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Filter,
    Tag,
}

/// A matcher, its enricher and the buffer the last enriched record was written to (it must
/// outlive the call: the host copies it afterwards).
struct Filter {
    matcher: Matcher,
    enricher: Enricher,
    out: Vec<u8>,
    scan: RarePairs,
}

/// A first pass cheap enough for an interpreter (Fluent Bit runs modules in WAMR's interpreter,
/// where each of the prefilter's `memmem` passes costs tens of microseconds a record): one pass,
/// eight bytes a step, for a rare pair of adjacent bytes of each prefilter literal (`eK` of
/// `leKey`, `\u` of `\u00`; single bytes are too common: every CloudTrail record holds a `K`
/// in `accessKeyId`, and every ECS document a backslash in `event.original`). A record without
/// any of the pairs holds no literal, so it cannot match and is handed back at once; one with a
/// pair goes on to the real prefilter and the matcher. Sound because it only ever says "maybe".
struct RarePairs {
    /// One pair per literal; a literal of one byte is its own pair.
    pairs: Vec<[u8; 2]>,
}

impl RarePairs {
    fn new(matcher: &Matcher) -> RarePairs {
        let mut pairs: Vec<[u8; 2]> = matcher
            .prefilter()
            .needles()
            .map(|n| match n {
                [b] => [*b, *b],
                _ => n
                    .windows(2)
                    .map(|p| [p[0], p[1]])
                    .min_by_key(|p| commonness(p[0]) + commonness(p[1]))
                    .expect("a literal of two bytes or more"),
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        RarePairs { pairs }
    }

    /// Whether `hay` holds one of the pairs (true, too, for literals of one byte, and for more
    /// than two literals: the scan below looks for two pairs at most).
    fn maybe(&self, hay: &[u8]) -> bool {
        let (p, q) = match self.pairs[..] {
            [p] => (p, p),
            [p, q] => (p, q),
            _ => return true,
        };
        if p[0] == p[1] || q[0] == q[1] {
            return true;
        }
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        // The high bit of every byte of `w` that equals `b` (and, rarely, of a byte just above
        // such a byte: a false "maybe", never a miss).
        let eq = |w: u64, b: u8| {
            let x = w ^ (LO * u64::from(b));
            x.wrapping_sub(LO) & !x & HI
        };
        let (mut carry_p, mut carry_q) = (0u64, 0u64);
        let mut words = hay.chunks_exact(8);
        for word in &mut words {
            let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let (p0, q0) = (eq(w, p[0]), eq(w, q[0]));
            // A first byte at byte i, its second at byte i + 1; or across the word boundary.
            let hit_p = (((p0 << 8) | carry_p) & eq(w, p[1])) != 0;
            let hit_q = (((q0 << 8) | carry_q) & eq(w, q[1])) != 0;
            if hit_p || hit_q {
                return true;
            }
            (carry_p, carry_q) = (p0 >> 56, q0 >> 56);
        }
        let tail = words.remainder();
        let last = hay.len() - tail.len();
        hay[last.saturating_sub(1)..].windows(2).any(|w| w == p || w == q)
    }
}

/// How common a byte is in CloudTrail JSON, roughly: lowercase letters, digits and JSON's
/// punctuation most, then uppercase letters, then everything else.
fn commonness(b: u8) -> u8 {
    match b {
        b'a'..=b'z' | b'"' | b':' | b',' | b'.' | b'0'..=b'9' => 3,
        b'A'..=b'Z' | b'-' | b'_' | b'/' => 2,
        b'\\' => 1,
        _ => 0,
    }
}

impl Filter {
    fn new(assume_cloudtrail: bool) -> Filter {
        let matcher = Matcher::builder()
            .assume_dataset(assume_cloudtrail.then(|| CLOUDTRAIL_DATASET.to_string()))
            .build();
        let enricher = Enricher::new(matcher.rule(), matcher.rule().tag);
        let scan = RarePairs::new(&matcher);
        Filter { matcher, enricher, out: Vec::new(), scan }
    }

    /// Decides `record`: `None` when it does not match, else the enriched record, NUL-ended.
    fn enrich(&mut self, record: &[u8]) -> Option<*const u8> {
        if !self.scan.maybe(record) || !self.matcher.is_match(record) {
            return None;
        }
        self.out.clear();
        self.enricher.enrich(record, &mut self.out);
        self.out.push(0);
        Some(self.out.as_ptr())
    }
}

thread_local! {
    /// The module is instantiated once and runs on one thread; state lives across calls.
    static STRICT: RefCell<Filter> = RefCell::new(Filter::new(false));
    static CLOUDTRAIL: RefCell<Filter> = RefCell::new(Filter::new(true));
}

/// The empty string: the host drops the record.
static DROP: [u8; 1] = [0];

fn decide(
    filter: &'static std::thread::LocalKey<RefCell<Filter>>,
    mode: Mode,
    record: *const u8,
    len: u32,
) -> *const u8 {
    if record.is_null() {
        // The host could not copy the record into the module (its memory is exhausted): there
        // is nothing to decide or to hand back. Said on Fluent Bit's stderr, never silently.
        eprintln!("kmsguard.wasm: a record of {len} bytes did not reach the module; dropped");
        return DROP.as_ptr();
    }
    // SAFETY: the host copied `len` bytes of JSON (and a NUL after them) to `record` in this
    // module's memory for the duration of this call; nothing else writes to them meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(record, len as usize) };
    let enriched = filter.with(|f| match f.try_borrow_mut() {
        Ok(mut f) => f.enrich(bytes),
        // Only reachable if an earlier call trapped inside; start that filter afresh.
        Err(_) => None,
    });
    match (enriched, mode) {
        (Some(out), _) => out,
        (None, Mode::Tag) => record,
        (None, Mode::Filter) => DROP.as_ptr(),
    }
}

/// The reactor entry point: WAMR calls it once, at instantiation, so that the module's
/// constructors (wasi-libc's) run before the first record. Without it WAMR warns that a module
/// with WASI imports is neither a command nor a reactor.
#[cfg(target_os = "wasi")]
#[no_mangle]
pub extern "C" fn _initialize() {
    extern "C" {
        fn __wasm_call_ctors();
    }
    // SAFETY: `__wasm_call_ctors` is synthesized by the linker; it runs the static constructors
    // and is called here once, before any export (WAMR calls `_initialize` at instantiation).
    unsafe { __wasm_call_ctors() }
}

/// Keeps matching records only, enriched.
#[no_mangle]
pub extern "C" fn kms_filter(
    _: *const u8,
    _: u32,
    _: u32,
    _: u32,
    rec: *const u8,
    len: u32,
) -> *const u8 {
    decide(&STRICT, Mode::Filter, rec, len)
}

/// Keeps every record, matching ones enriched.
#[no_mangle]
pub extern "C" fn kms_tag(
    _: *const u8,
    _: u32,
    _: u32,
    _: u32,
    rec: *const u8,
    len: u32,
) -> *const u8 {
    decide(&STRICT, Mode::Tag, rec, len)
}

/// As [`kms_filter`], documents without a dataset counting as `aws.cloudtrail`.
#[no_mangle]
pub extern "C" fn kms_filter_cloudtrail(
    _: *const u8,
    _: u32,
    _: u32,
    _: u32,
    rec: *const u8,
    len: u32,
) -> *const u8 {
    decide(&CLOUDTRAIL, Mode::Filter, rec, len)
}

/// As [`kms_tag`], documents without a dataset counting as `aws.cloudtrail`.
#[no_mangle]
pub extern "C" fn kms_tag_cloudtrail(
    _: *const u8,
    _: u32,
    _: u32,
    _: u32,
    rec: *const u8,
    len: u32,
) -> *const u8 {
    decide(&CLOUDTRAIL, Mode::Tag, rec, len)
}

/// Every record unchanged: the cost of Fluent Bit's WASM mechanism alone, for comparison.
#[no_mangle]
pub extern "C" fn identity(
    _: *const u8,
    _: u32,
    _: u32,
    _: u32,
    rec: *const u8,
    _: u32,
) -> *const u8 {
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        f: extern "C" fn(*const u8, u32, u32, u32, *const u8, u32) -> *const u8,
        record: &str,
    ) -> String {
        let copy = std::ffi::CString::new(record).unwrap();
        let out = f(c"t".as_ptr().cast(), 1, 0, 0, copy.as_ptr().cast(), record.len() as u32);
        // SAFETY: every function returns a NUL-terminated string that lives until the next call.
        unsafe { std::ffi::CStr::from_ptr(out.cast()) }.to_str().unwrap().to_string()
    }

    const MATCH: &str = r#"{"eventSource":"kms.amazonaws.com","eventName":"DisableKey"}"#;
    const OTHER: &str = r#"{"eventSource":"kms.amazonaws.com","eventName":"Decrypt"}"#;
    const NO_DATASET: &str =
        r#"{"event":{"provider":"kms.amazonaws.com","action":"DisableKey","outcome":"success"}}"#;

    #[test]
    fn filter_keeps_matches_enriched_and_drops_the_rest() {
        let out = call(kms_filter, MATCH);
        assert!(out.starts_with(&MATCH[..MATCH.len() - 1]) && out.contains(r#""rule":{"#), "{out}");
        assert_eq!(call(kms_filter, OTHER), "");
    }

    #[test]
    fn tag_keeps_every_record() {
        assert!(call(kms_tag, MATCH).contains("kms-cmk-disabled-or-scheduled-for-deletion"));
        assert_eq!(call(kms_tag, OTHER), OTHER);
        assert_eq!(call(identity, MATCH), MATCH);
    }

    #[test]
    fn the_cloudtrail_functions_declare_the_dataset() {
        assert_eq!(call(kms_filter, NO_DATASET), "");
        assert!(call(kms_filter_cloudtrail, NO_DATASET).contains(r#""tags":["#));
        assert_eq!(call(kms_tag, NO_DATASET), NO_DATASET);
        assert!(call(kms_tag_cloudtrail, NO_DATASET).contains(r#""threat":{"#));
    }

    #[test]
    fn the_first_pass_never_turns_a_candidate_away() {
        let filter = Filter::new(false);
        assert_eq!(filter.scan.pairs, [*b"\\u", *b"eK"]);
        let keep = [MATCH, r#"{"a":"\u0044isableKey"}"#, "eK", "\\u", "xxxxxxeK", "xxxxxxxeK"];
        for hay in keep {
            assert!(filter.scan.maybe(hay.as_bytes()), "{hay}");
        }
        for hay in [OTHER, "", "e", "K", r#"{"accessKeyId":"K","e":"\"K"}"#] {
            assert!(!filter.scan.maybe(hay.as_bytes()), "{hay}");
        }
        // Every position of a pair in records of every length, word boundaries included.
        for len in 2..40 {
            for at in 0..len - 1 {
                for pair in [b"eK", b"\\u"] {
                    let mut hay = vec![b'x'; len];
                    hay[at..at + 2].copy_from_slice(pair);
                    assert!(filter.scan.maybe(&hay), "{len} {at}");
                }
            }
        }
    }

    /// Against the prefilter on generated documents: whenever the prefilter says candidate, so
    /// does the first pass.
    #[test]
    fn the_first_pass_is_sound_against_the_prefilter() {
        let filter = Filter::new(false);
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            let len = (state >> 58) as usize;
            let doc: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"leKy\\u0x"[(state % 8) as usize]
                })
                .collect();
            if filter.matcher.prefilter().is_candidate(&doc) {
                assert!(filter.scan.maybe(&doc), "{}", String::from_utf8_lossy(&doc));
            }
        }
    }

    #[test]
    fn a_record_the_host_could_not_copy_is_dropped() {
        let out = kms_tag(std::ptr::null(), 0, 0, 0, std::ptr::null(), 10);
        assert_eq!(out, DROP.as_ptr());
    }
}
