//! One pass over a buffer for two literals at once.
//!
//! The seed rule's prefilter looks for two literals: the shared piece of its action terms
//! (`leKey`) and the escape literal (`\u00`). Searched one after the other, each is a pass of
//! `memmem` over every window of input; the second runs from cache, but on a 256 MiB corpus it
//! still costs about as much as the gap to `rg -F -c` (BENCHMARKS.md). This kernel tests two
//! bytes of each literal, at their offsets, for 32 positions at a time with AVX2, the way
//! `memchr`'s packed-pair prefilter does for one literal, and hands each position where either
//! pair lines up to a caller's check: one pass, and a check cheap enough to run inline for
//! every near miss (`EnableKeyRotation` holds `leKey`).
//!
//! Only x86_64 with AVX2 (detected at run time) gets the kernel; elsewhere [`PairScan::new`]
//! says no and the prefilter searches each literal with `memmem`, as before.

/// Two bytes of a literal and where they sit in it.
#[derive(Clone, Copy, Debug)]
// Read by the x86_64 kernel only (elsewhere no scan is ever made).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Probe {
    first: (usize, u8),
    second: (usize, u8),
}

impl Probe {
    /// The literal's first byte and the one `memchr`'s frequency heuristic ranks rarest after
    /// it; `second_at` overrides that choice.
    fn of(needle: &[u8], second_at: Option<usize>) -> Option<Probe> {
        let pair = memchr::arch::all::packedpair::Pair::new(needle)?;
        let at = second_at.unwrap_or(if pair.index1() != 0 {
            usize::from(pair.index1())
        } else {
            usize::from(pair.index2())
        });
        (at != 0 && at < needle.len())
            .then(|| Probe { first: (0, needle[0]), second: (at, needle[at]) })
    }
}

/// A fused search for two literals: see the module's documentation.
#[derive(Clone, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct PairScan {
    probes: [Probe; 2],
    /// The largest probe offset: a block at `i` reads up to `i + span + 32`.
    span: usize,
}

impl PairScan {
    /// A scan for `term` and `escape` (whose first two bytes, `\u`, are its probe: a lone `\` is
    /// common in CloudTrail, one byte in 24 where messages hold escaped JSON, and `\u` is not),
    /// or `None` when this CPU has no AVX2 or a literal is shorter than two bytes.
    pub(crate) fn new(term: &[u8], escape: &[u8]) -> Option<PairScan> {
        if !avx2() {
            return None;
        }
        let probes = [Probe::of(term, None)?, Probe::of(escape, Some(1))?];
        let span = probes.iter().map(|p| p.second.0).max().unwrap_or(0);
        Some(PairScan { probes, span })
    }

    /// The first position at or after `from` where `check` says yes; `check` is asked only
    /// where one of the literals' probe bytes line up (and at every position of the last few
    /// dozen bytes, where a block would not fit).
    pub(crate) fn find(
        &self,
        hay: &[u8],
        from: usize,
        mut check: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `new` returned this scan only after detecting AVX2 on this CPU.
            unsafe { find_avx2(self, hay, from, &mut check) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (from..hay.len()).find(|&at| check(at))
        }
    }
}

/// Whether this CPU has AVX2, which the pair scan and the term scan (`terms.rs`) need.
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Asks for the bytes a kilobyte past `at` in `hay`, once per 64 bytes an AVX2 scan (this
/// one, the term scan) reads: without it they wait on memory, as the hardware prefetcher
/// stops at every 4 KiB page and a mapped file's pages are that small.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(hay: &[u8], at: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: SSE, the feature `_mm_prefetch` needs, is part of every x86_64 CPU. A prefetch
    // never faults, whatever the address, and `wrapping_add` may point past `hay` without
    // reading there.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(hay.as_ptr().wrapping_add(at + 1024).cast()) }
}

/// The loop both AVX2 scans (this one, the term scan) share: over the blocks of 32 positions
/// from `from`, two blocks a step with one test for both (most steps hold no candidate), the
/// candidate positions `candidates(i)` gives for the block at `i` are handed to `check` in
/// order; the first it takes is returned. The last positions, where a block would not fit, are
/// all handed to `check`.
///
/// # Safety
///
/// The CPU must have AVX2. `candidates(i)` is only called with `i + span + 32 <= hay.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn scan_blocks<T>(
    hay: &[u8],
    from: usize,
    span: usize,
    candidates: impl Fn(usize) -> std::arch::x86_64::__m256i,
    mut check: impl FnMut(usize) -> Option<T>,
) -> Option<(usize, T)> {
    use std::arch::x86_64::*;

    const BLOCK: usize = 32;
    let mask = |v: __m256i| u64::from(_mm256_movemask_epi8(v) as u32);
    // The first position `check` takes among `bits` (bit `k`: position `i + k`).
    let mut first = |i: usize, mut bits: u64| {
        while bits != 0 {
            let at = i + bits.trailing_zeros() as usize;
            if let Some(hit) = check(at) {
                return Some((at, hit));
            }
            bits &= bits - 1;
        }
        None
    };
    let mut i = from;
    while i + span + 2 * BLOCK <= hay.len() {
        prefetch_ahead(hay, i);
        let (low, high) = (candidates(i), candidates(i + BLOCK));
        let any = _mm256_or_si256(low, high);
        if _mm256_testz_si256(any, any) == 0 {
            if let Some(hit) = first(i, mask(low) | mask(high) << 32) {
                return Some(hit);
            }
        }
        i += 2 * BLOCK;
    }
    if i + span + BLOCK <= hay.len() {
        if let Some(hit) = first(i, mask(candidates(i))) {
            return Some(hit);
        }
        i += BLOCK;
    }
    (i..hay.len()).find_map(|at| Some((at, check(at)?)))
}

/// The kernel of [`PairScan::find`].
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn find_avx2(
    scan: &PairScan,
    hay: &[u8],
    from: usize,
    check: &mut dyn FnMut(usize) -> bool,
) -> Option<usize> {
    use std::arch::x86_64::*;

    const BLOCK: usize = 32;
    let [a, b] = scan.probes;
    let a1 = _mm256_set1_epi8(a.first.1 as i8);
    let a2 = _mm256_set1_epi8(a.second.1 as i8);
    let b1 = _mm256_set1_epi8(b.first.1 as i8);
    let b2 = _mm256_set1_epi8(b.second.1 as i8);
    // Reads the 32 bytes at `hay[at..]`.
    macro_rules! load {
        ($at:expr) => {{
            let at: usize = $at;
            debug_assert!(at + BLOCK <= hay.len());
            // SAFETY: every read is at `i + offset` with `offset <= span`, and `scan_blocks`
            // gives only blocks with `i + span + BLOCK <= hay.len()`, so its 32 bytes are inside
            // `hay`; `loadu` needs no alignment.
            unsafe { _mm256_loadu_si256(hay.as_ptr().add(at).cast::<__m256i>()) }
        }};
    }
    // Where either literal's probe bytes line up in the block at `i`.
    let lined_up = |i: usize| {
        let first = _mm256_and_si256(
            _mm256_cmpeq_epi8(load!(i + a.first.0), a1),
            _mm256_cmpeq_epi8(load!(i + a.second.0), a2),
        );
        let second = _mm256_and_si256(
            _mm256_cmpeq_epi8(load!(i + b.first.0), b1),
            _mm256_cmpeq_epi8(load!(i + b.second.0), b2),
        );
        _mm256_or_si256(first, second)
    };
    // SAFETY: this CPU has AVX2 (the caller's contract), and `lined_up` reads within `hay`
    // for the blocks `scan_blocks` gives it (see `load!`).
    unsafe { scan_blocks(hay, from, scan.span, lined_up, |at| check(at).then_some(())) }
        .map(|(at, ())| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The positions the scan reports, found one after another, against a plain search.
    #[test]
    fn agrees_with_a_plain_search_at_every_alignment() {
        let Some(scan) = PairScan::new(b"leKey", b"\\u00") else {
            eprintln!("no AVX2 on this CPU: the pair scan is not used, nothing to test");
            return;
        };
        let is_hit = |hay: &[u8], at: usize| {
            hay[at..].starts_with(b"leKey") || hay[at..].starts_with(b"\\u00")
        };
        // Hits and near misses (`leK y`, `\u0`, `\"`) at every offset of a block, and at the
        // very end of the buffer.
        let pieces: [&[u8]; 6] = [b"leKey", b"\\u00", b"leKy", b"\\u0", b"\\\"", b"lxKey"];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..2_000 {
            let mut hay = Vec::new();
            let len = round % 150;
            while hay.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(5) {
                    hay.extend_from_slice(pieces[(state >> 8) as usize % pieces.len()]);
                } else {
                    hay.push(b"abcleKy\\u0\"\n"[(state >> 8) as usize % 12]);
                }
            }
            let want: Vec<usize> = (0..hay.len()).filter(|&at| is_hit(&hay, at)).collect();
            let mut got = Vec::new();
            let mut from = 0;
            while let Some(at) = scan.find(&hay, from, |at| is_hit(&hay, at)) {
                got.push(at);
                from = at + 1;
            }
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&hay));
        }
    }

    #[test]
    fn probes_pick_the_first_byte_and_a_rare_one() {
        let p = Probe::of(b"leKey", None).unwrap();
        assert_eq!((p.first, p.second), ((0, b'l'), (2, b'K')));
        let p = Probe::of(b"\\u00", Some(1)).unwrap();
        assert_eq!((p.first, p.second), ((0, b'\\'), (1, b'u')));
        assert!(Probe::of(b"\\", Some(1)).is_none());
    }
}
