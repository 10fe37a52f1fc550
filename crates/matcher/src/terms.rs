//! Whole terms found from the quote before them.
//!
//! Nearly every first-stage literal of Elastic's rule pack is a whole term: an action name
//! such as `DisableKey`, which stands right after a `"` and right before a `"` (or an
//! envelope's `\"`). Searched as 150 substrings by Teddy, they cost more than half of the
//! pack's time on mixed traffic (BENCHMARKS.md): the needles' first bytes match anywhere in a
//! line. A whole term can only start one byte after a quote, and those positions are few and
//! easy to test in bulk. This kernel tests, 32 positions at a time with AVX2, whether the byte
//! before a position is `"` and the two bytes at it are a fingerprint of some term (Teddy's
//! nibble masks, in eight buckets); each survivor's term is read up to its closing `"` or `\`
//! and looked up in a hash table. The same pass reports the escape literal `\u00`, whose
//! first two bytes are checked at every backslash.
//!
//! Only x86_64 with AVX2 (detected at run time) gets the kernel; elsewhere [`TermScan::new`]
//! says no and the prefilter searches the terms with Teddy, as before.

use crate::packfilter::ESCAPE;
use crate::pair::avx2;
#[cfg(target_arch = "x86_64")]
use crate::pair::scan_blocks;

/// What [`TermScan::find`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TermHit {
    /// Term number `n` (in the order given to [`TermScan::new`]), whole, at the position.
    Term(usize),
    /// No term but these prefixes (bit `i`: prefix number `i`) start at the position.
    Prefixes(u64),
    /// The escape literal `\u00` at the position.
    Escape,
}

/// A search for whole terms and the escape literal: see the module's documentation.
#[derive(Clone, Debug)]
// The nibble masks are read by the x86_64 kernel only (elsewhere no scan is ever made).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct TermScan {
    terms: Vec<Vec<u8>>,
    /// Prefixes that must follow a quote, with nothing said of what ends them.
    prefixes: Vec<Vec<u8>>,
    /// Open addressing over `terms`: a term's index and the low half of its hash (most
    /// strings that reach a full slot are told apart by it without a byte comparison), or
    /// `u32::MAX` for an empty slot.
    table: Vec<(u32, u32)>,
    /// `table.len() - 1`.
    mask: usize,
    /// The longest term's length.
    longest: usize,
    /// Teddy's nibble masks: bit `k` set when some term of bucket `k` has a first (second)
    /// byte with that low (high) nibble.
    first: ([u8; 16], [u8; 16]),
    second: ([u8; 16], [u8; 16]),
    /// A bit per pair of bytes that starts some term or prefix: what the buckets let through
    /// that starts none (their masks pair first and second bytes only per bucket) costs a
    /// bit test, not a search for the term's end.
    pairs: Vec<u64>,
}

impl TermScan {
    /// A scan for `terms` and `prefixes` (each at least two bytes, none holding `"` or `\`;
    /// at most 64 prefixes), or `None` when this CPU has no AVX2 or one of them does not fit.
    pub(crate) fn new(terms: &[&[u8]], prefixes: &[&[u8]]) -> Option<TermScan> {
        if !avx2() || (terms.is_empty() && prefixes.is_empty()) || prefixes.len() > 64 {
            return None;
        }
        let all = || terms.iter().chain(prefixes);
        if all().any(|t| t.len() < 2 || t.iter().any(|&b| matches!(b, b'"' | b'\\'))) {
            return None;
        }
        // Terms sharing a first byte share a bucket, so that a bucket's masks pair each first
        // byte with its own second bytes as much as eight buckets allow.
        let mut firsts: Vec<u8> = all().map(|t| t[0]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        let mut first = ([0u8; 16], [0u8; 16]);
        let mut second = ([0u8; 16], [0u8; 16]);
        let mut pairs = vec![0u64; (1 << 16) / 64];
        for t in all() {
            let (word, bit) = pair_bit(t[0], t[1]);
            pairs[word] |= bit;
            let bucket = firsts.binary_search(&t[0]).expect("every first byte") % 8;
            let bit = 1u8 << bucket;
            first.0[usize::from(t[0] & 0xf)] |= bit;
            first.1[usize::from(t[0] >> 4)] |= bit;
            second.0[usize::from(t[1] & 0xf)] |= bit;
            second.1[usize::from(t[1] >> 4)] |= bit;
        }
        let size = (terms.len() * 4).next_power_of_two();
        let mut scan = TermScan {
            terms: terms.iter().map(|t| t.to_vec()).collect(),
            prefixes: prefixes.iter().map(|t| t.to_vec()).collect(),
            table: vec![(u32::MAX, 0); size],
            mask: size - 1,
            longest: terms.iter().map(|t| t.len()).max().unwrap_or(0),
            first,
            second,
            pairs,
        };
        for (n, t) in terms.iter().enumerate() {
            let h = hash(t);
            let mut slot = slot_of(h) & scan.mask;
            while scan.table[slot].0 != u32::MAX {
                slot = (slot + 1) & scan.mask;
            }
            scan.table[slot] = (u32::try_from(n).ok()?, h as u32);
        }
        Some(scan)
    }

    /// The number of the term that is exactly `bytes`, if any.
    fn lookup(&self, bytes: &[u8]) -> Option<usize> {
        let h = hash(bytes);
        let mut slot = slot_of(h) & self.mask;
        loop {
            let (n, tag) = *self.table.get(slot)?;
            if n == u32::MAX {
                return None;
            }
            if tag == h as u32 && self.terms[n as usize] == bytes {
                return Some(n as usize);
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// What stands at `at` in `hay`: a term after a quote and before a `"` or `\`, prefixes
    /// after a quote, or `\u00`.
    fn check(&self, hay: &[u8], at: usize) -> Option<TermHit> {
        let rest = &hay[at..];
        if rest.first() == Some(&b'\\') {
            return rest.starts_with(ESCAPE).then_some(TermHit::Escape);
        }
        if at == 0 || hay[at - 1] != b'"' {
            return None;
        }
        let (word, bit) = match rest {
            [a, b, ..] => pair_bit(*a, *b),
            _ => return None,
        };
        if self.pairs[word] & bit == 0 {
            return None;
        }
        let window = &rest[..rest.len().min(self.longest + 1)];
        let term = term_end(window).and_then(|end| self.lookup(&window[..end]));
        if let Some(n) = term {
            return Some(TermHit::Term(n));
        }
        let prefixes = self
            .prefixes
            .iter()
            .enumerate()
            // The first byte first: most positions checked start no prefix, and a call to
            // compare them whole costs more than the rest of the check.
            .filter(|(_, p)| rest.first() == p.first() && rest.starts_with(p))
            .fold(0u64, |bits, (i, _)| bits | 1 << i);
        (prefixes != 0).then_some(TermHit::Prefixes(prefixes))
    }

    /// The first hit at or after `from`: where a term stands whole (whatever prefixes it also
    /// starts with), some prefixes start after a quote, or the escape literal starts.
    pub(crate) fn find(&self, hay: &[u8], from: usize) -> Option<(usize, TermHit)> {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `new` returned this scan only after detecting AVX2 on this CPU.
            unsafe { find_avx2(self, hay, from) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (from..hay.len()).find_map(|at| Some((at, self.check(hay, at)?)))
        }
    }
}

/// Where the bit of the byte pair `a b` sits in `TermScan::pairs`: its word and its mask.
fn pair_bit(a: u8, b: u8) -> (usize, u64) {
    let pair = usize::from(a) << 8 | usize::from(b);
    (pair / 64, 1 << (pair % 64))
}

/// Where the string starting `window` ends: its first `"` or `\`. Most strings the scan asks
/// about end within 16 bytes, which one SSE2 comparison answers without a call to `memchr2`.
fn term_end(window: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(head) = window.first_chunk::<16>() {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of every x86_64 CPU; `head` is 16 readable bytes, and `loadu`
        // needs no alignment.
        let bits = unsafe {
            let v = _mm_loadu_si128(head.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(quote, backslash))
        };
        if bits != 0 {
            return Some(bits.trailing_zeros() as usize);
        }
        return memchr::memchr2(b'"', b'\\', &window[16..]).map(|end| 16 + end);
    }
    memchr::memchr2(b'"', b'\\', window)
}

/// A hash of a term from its length and its first and last eight bytes: the high half picks
/// the slot ([`slot_of`]), the low half is kept as the slot's tag.
fn hash(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let (head, tail) = match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        // Most terms: two loads, where copying a shorter run would call `memcpy`.
        (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => {
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(bytes);
            (u64::from_le_bytes(w), u64::from_le_bytes(w))
        }
    };
    (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The slot number (before masking) of a [`hash`].
fn slot_of(hash: u64) -> usize {
    (hash >> 32) as usize
}

/// The kernel of [`TermScan::find`].
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn find_avx2(scan: &TermScan, hay: &[u8], from: usize) -> Option<(usize, TermHit)> {
    use std::arch::x86_64::*;

    const BLOCK: usize = 32;
    // Reads the 32 bytes at `hay[at..]`.
    macro_rules! load {
        ($at:expr) => {{
            let at: usize = $at;
            debug_assert!(at + BLOCK <= hay.len());
            // SAFETY: `candidates` reads at `i - 1`, `i` and `i + 1` with `i >= 1`, and
            // `scan_blocks` gives only blocks with `i + 1 + BLOCK <= hay.len()`, so every 32
            // bytes read are inside `hay`; `loadu` needs no alignment.
            unsafe { _mm256_loadu_si256(hay.as_ptr().add(at).cast::<__m256i>()) }
        }};
    }
    let table = |t: &[u8; 16]| {
        // SAFETY: `t` is 16 readable bytes; `loadu` needs no alignment.
        let half = unsafe { _mm_loadu_si128(t.as_ptr().cast::<__m128i>()) };
        _mm256_broadcastsi128_si256(half)
    };
    let (lo1, hi1) = (table(&scan.first.0), table(&scan.first.1));
    let (lo2, hi2) = (table(&scan.second.0), table(&scan.second.1));
    let nibble = _mm256_set1_epi8(0x0f);
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let u = _mm256_set1_epi8(b'u' as i8);
    let zero = _mm256_setzero_si256();
    // The buckets whose masks `v`'s bytes match.
    let buckets = |v: __m256i, lo: __m256i, hi: __m256i| {
        let low = _mm256_and_si256(v, nibble);
        let high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        _mm256_and_si256(_mm256_shuffle_epi8(lo, low), _mm256_shuffle_epi8(hi, high))
    };
    let start = from.max(1);
    if from == 0 {
        if let Some(hit) = scan.check(hay, 0) {
            return Some((0, hit));
        }
    }
    // The positions of the block at `i` that may start a hit.
    let candidates = |i: usize| {
        let (prev, cur, next) = (load!(i - 1), load!(i), load!(i + 1));
        let both = _mm256_and_si256(buckets(cur, lo1, hi1), buckets(next, lo2, hi2));
        let term =
            _mm256_andnot_si256(_mm256_cmpeq_epi8(both, zero), _mm256_cmpeq_epi8(prev, quote));
        let escape =
            _mm256_and_si256(_mm256_cmpeq_epi8(cur, backslash), _mm256_cmpeq_epi8(next, u));
        _mm256_or_si256(term, escape)
    };
    // SAFETY: this CPU has AVX2 (the caller's contract), and `candidates` reads at `i - 1`,
    // `i` and `i + 1` with `i >= 1`, within `hay` for the blocks `scan_blocks` gives it (a span
    // of one byte).
    unsafe { scan_blocks(hay, start, 1, candidates, |at| scan.check(hay, at)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hit the scan reports, found one after another, against a plain reading of what
    /// a whole term is.
    #[test]
    fn agrees_with_a_plain_search_at_every_alignment() {
        let terms: [&[u8]; 6] =
            [b"DisableKey", b"Disable", b"CreateTrail", b"iam.amazonaws.com", b"ab", b"Db"];
        let prefixes: [&[u8]; 3] = [b"BedrockAPIKey-", b"Disab", b"ia"];
        let Some(scan) = TermScan::new(&terms, &prefixes) else {
            eprintln!("no AVX2 on this CPU: the term scan is not used, nothing to test");
            return;
        };
        let plain = |hay: &[u8], at: usize| -> Option<TermHit> {
            if hay[at..].starts_with(b"\\u00") {
                return Some(TermHit::Escape);
            }
            if at == 0 || hay[at - 1] != b'"' {
                return None;
            }
            let whole = |t: &&[u8]| {
                hay[at..].starts_with(t) && matches!(hay.get(at + t.len()), Some(b'"' | b'\\'))
            };
            if let Some(n) = terms.iter().position(whole) {
                return Some(TermHit::Term(n));
            }
            let bits = (0..prefixes.len())
                .filter(|&i| hay[at..].starts_with(prefixes[i]))
                .fold(0, |bits, i| bits | 1 << i);
            (bits != 0).then_some(TermHit::Prefixes(bits))
        };
        // Terms, near misses (a longer or shorter term, no quote before, a `\n` after), at
        // every offset of a block and at the very end of the buffer.
        let pieces: [&[u8]; 14] = [
            b"\"BedrockAPIKey-x",
            b"\"Disabl\"",
            b"\"DisableKey\"",
            b"\"DisableKey\\\"",
            b"\"DisableKeyRotation\"",
            b"DisableKey\"",
            b"\"Disable",
            b"\"iam.amazonaws.com\"",
            b"\"ab\\",
            b"\"Db\"",
            b"\"Dbx\"",
            b"\\u00",
            b"\\u0",
            b"\"CreateTrail\\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..3_000 {
            let mut hay = Vec::new();
            let len = round % 160;
            while hay.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(3) {
                    hay.extend_from_slice(pieces[(state >> 8) as usize % pieces.len()]);
                } else {
                    hay.push(b"aDbi\"\\u0:\n"[(state >> 8) as usize % 10]);
                }
            }
            let want: Vec<(usize, TermHit)> =
                (0..hay.len()).filter_map(|at| Some((at, plain(&hay, at)?))).collect();
            let mut got = Vec::new();
            let mut from = 0;
            while let Some((at, hit)) = scan.find(&hay, from) {
                got.push((at, hit));
                from = at + 1;
            }
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&hay));
        }
    }

    #[test]
    fn refuses_terms_it_cannot_delimit() {
        assert!(TermScan::new(&[b"a"], &[]).is_none());
        assert!(TermScan::new(&[b"a\"b"], &[]).is_none());
        assert!(TermScan::new(&[b"ab"], &[b"c\\"]).is_none());
        assert!(TermScan::new(&[], &[]).is_none());
    }
}
