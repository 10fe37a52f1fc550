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
}

impl Filter {
    fn new(assume_cloudtrail: bool) -> Filter {
        let matcher = Matcher::builder()
            .assume_dataset(assume_cloudtrail.then(|| CLOUDTRAIL_DATASET.to_string()))
            .build();
        let enricher = Enricher::new(matcher.rule(), matcher.rule().tag);
        Filter { matcher, enricher, out: Vec::new() }
    }

    /// Decides `record`: `None` when it does not match, else the enriched record, NUL-ended.
    fn enrich(&mut self, record: &[u8]) -> Option<*const u8> {
        if !self.matcher.is_match(record) {
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
    fn a_record_the_host_could_not_copy_is_dropped() {
        let out = kms_tag(std::ptr::null(), 0, 0, 0, std::ptr::null(), 10);
        assert_eq!(out, DROP.as_ptr());
    }
}
