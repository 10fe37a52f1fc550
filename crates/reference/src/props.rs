//! The properties the fuzz targets check, as plain functions, so that the same checks run on the
//! committed seed corpora under `cargo test` on stable. Each panics when its property fails.

use std::cell::RefCell;
use std::io::Read;

use kmsguard_matcher::Matcher;
use kmsguard_transform::{Mode, Options, Transform};

use crate::{evaluate, gen, parse, Config, Json};

/// The line a fuzz input stands for: its first byte picks raw bytes (odd) or a generated
/// adversarial document (even) built from the rest.
pub fn line_from(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((b, rest)) if b % 2 == 1 => rest.to_vec(),
        Some((_, rest)) => gen::document(rest),
        None => Vec::new(),
    }
}

/// Input of several lines: generated documents and raw bytes, split at `0xFF 0xFF`.
pub fn lines_from(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in data.split(|&b| b == 0xFE) {
        let mut line = line_from(part);
        line.retain(|&b| b != b'\n');
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out
}

thread_local! {
    /// One matcher per thread, reused across inputs as the binary reuses it across lines (which
    /// also checks that no state leaks from one line to the next).
    static MATCHER: RefCell<Matcher> = RefCell::new(Matcher::new());
}

/// The fast matcher agrees with the reference, and never matches a line its prefilter rejects.
pub fn matcher_agrees(data: &[u8]) {
    let line = line_from(data);
    let want = evaluate(&Config::default(), &line);
    MATCHER.with_borrow_mut(|matcher| {
        let got = matcher.evaluate(&line);
        assert_eq!(got, want, "line: {}", String::from_utf8_lossy(&line));
        prefilter_is_sound_on(matcher, &line);
    });
}

/// A line the exact path matches is a prefilter candidate; and the buffer-wide search (one
/// fused pass where the CPU allows) finds exactly the lines the per-line search calls
/// candidates.
pub fn prefilter_is_sound(data: &[u8]) {
    MATCHER.with_borrow_mut(|matcher| {
        prefilter_is_sound_on(matcher, &line_from(data));
        let buffer = lines_from(data);
        let pre = matcher.prefilter();
        let want: Vec<_> =
            line_ranges(&buffer).filter(|r| pre.is_candidate(&buffer[r.clone()])).collect();
        let got: Vec<_> = pre.candidate_lines(&buffer).collect();
        assert_eq!(got, want, "buffer: {}", String::from_utf8_lossy(&buffer));
    });
}

/// The ranges of `buffer`'s lines, without their `\n` (a last `\n` ends the last line).
fn line_ranges(buffer: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    buffer
        .split(|&b| b == b'\n')
        .map(move |line| {
            let range = start..start + line.len();
            start = range.end + 1;
            range
        })
        .filter(move |r| r.start < buffer.len())
}

fn prefilter_is_sound_on(matcher: &mut Matcher, line: &[u8]) {
    if matcher.evaluate(line).is_match() {
        assert!(
            matcher.prefilter().is_candidate(line),
            "prefilter missed: {}",
            String::from_utf8_lossy(line)
        );
        if !line.contains(&b'\n') {
            let found: Vec<_> = matcher.prefilter().candidate_lines(line).collect();
            assert_eq!(found.len(), 1);
            assert_eq!(found[0], 0..line.len());
        }
    }
}

/// A reader that hands out its data in the sizes it is given, cycling.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes[self.turn % self.sizes.len()].min(buf.len()).min(self.data.len());
        self.turn += 1;
        buf[..size].copy_from_slice(&self.data[..size]);
        self.data = &self.data[size..];
        Ok(size)
    }
}

fn transform(mode: Mode, max_line_bytes: usize) -> Transform {
    let options = Options { mode, max_line_bytes, read_size: 4096, ..Options::default() };
    Transform::new(Matcher::new(), options)
}

/// Base64 (standard alphabet, padded) decoded, written out plainly.
fn unbase64(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextets: Vec<u32> = text
        .bytes()
        .filter(|&b| b != b'=')
        .map(|b| alphabet.iter().position(|&a| a == b).expect("base64") as u32)
        .collect();
    let mut out = Vec::new();
    for group in sextets.chunks(4) {
        let n = group.iter().enumerate().fold(0, |n, (i, s)| n | s << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

/// The same input cut into arbitrary reads gives the same output as one slice, in both modes,
/// and with a small line limit too.
pub fn streaming_is_chunking_independent(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(4));
    let sizes: Vec<usize> = head.iter().map(|&b| usize::from(b) % 97 + 1).chain([4096]).collect();
    let input = lines_from(rest);
    for mode in [Mode::Filter, Mode::Tag] {
        for max_line in [usize::MAX / 2, 300] {
            let mut once = Vec::new();
            transform(mode, max_line).run_slice(&input, &mut once, &mut |_| true).unwrap();
            let mut chunked = Vec::new();
            let mut reader = Chunked { data: &input, sizes: sizes.clone(), turn: 0 };
            transform(mode, max_line).run(&mut reader, &mut chunked).unwrap();
            assert_eq!(chunked, once, "mode {mode:?}, max line {max_line}, sizes {sizes:?}");
            // Concatenated JSON: the same, document by document.
            let mut once = Vec::new();
            transform(mode, max_line).run_documents(&mut &input[..], &mut once).unwrap();
            let mut chunked = Vec::new();
            let mut reader = Chunked { data: &input, sizes: sizes.clone(), turn: 0 };
            transform(mode, max_line).run_documents(&mut reader, &mut chunked).unwrap();
            assert_eq!(chunked, once, "json-stream, mode {mode:?}, max line {max_line}");
        }
    }
}

/// Tag mode gives back every line; changed lines are exactly the matches, each strict JSON with
/// every original member kept (`tags` only extended) and the enrichment added.
pub fn tag_mode_is_lossless(data: &[u8]) {
    let input = lines_from(data);
    let mut out = Vec::new();
    transform(Mode::Tag, usize::MAX / 2).run(&mut &input[..], &mut out).unwrap();
    let ins: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    let outs: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
    assert_eq!(ins.len(), outs.len());
    let config = Config::default();
    for (i, o) in ins.iter().zip(&outs) {
        if !evaluate(&config, i).is_match() {
            assert_eq!(i, o);
            continue;
        }
        // A byte order mark that starts a line is kept, and is not part of the document.
        assert_eq!(i.starts_with(BOM), o.starts_with(BOM));
        let (Some(Json::Object(before)), Some(after)) = (parse(i), parse(o)) else {
            panic!("enriched line is not strict JSON: {}", String::from_utf8_lossy(o));
        };
        for (key, value) in &before {
            let kept = after.member(key).unwrap_or_else(|| panic!("member {key:?} lost"));
            if key.is("tags") {
                match (value, kept) {
                    (old, new) if old == new => {}
                    (Json::Array(old), Json::Array(new)) => assert_eq!(&new[..old.len()], &old[..]),
                    (Json::Null, Json::Array(new)) => assert_eq!(new.len(), 1),
                    (old, Json::Array(new)) => assert_eq!(new.first(), Some(old)),
                    (old, new) => panic!("tags {old:?} became {new:?}"),
                }
            } else {
                assert_eq!(kept, value, "member {key:?} changed");
            }
        }
        assert!(matches!(after.get("tags"), Some(Json::Array(_))), "tags is an array");
        assert!(after.get("rule").is_some() || after.get("kmsguard").is_some());
    }
    // --wrap-invalid: every line that is not a valid document comes out as one that holds it.
    let mut wrapped = Vec::new();
    let options = Options { mode: Mode::Tag, wrap_invalid: true, ..Options::default() };
    Transform::new(Matcher::new(), options).run(&mut &input[..], &mut wrapped).unwrap();
    let wraps: Vec<&[u8]> = wrapped.split(|&b| b == b'\n').collect();
    assert_eq!(wraps.len(), ins.len());
    for ((i, o), plain) in ins.iter().zip(&wraps).zip(&outs) {
        if i.is_empty() || parse(i).is_some_and(|d| matches!(d, Json::Object(_))) {
            assert_eq!(o, plain, "valid lines are written as without --wrap-invalid");
            continue;
        }
        let Some(Json::Object(_)) = parse(o) else {
            panic!("not wrapped: {}", String::from_utf8_lossy(o));
        };
        let kept = parse(o).unwrap();
        let inner = kept.get("kmsguard").expect("marked");
        let original =
            match (kept.get("event").and_then(|e| e.get("original")), inner.get("original_base64"))
            {
                (Some(Json::String(text)), _) => text.to_string_lossy().into_bytes(),
                (_, Some(Json::String(b64))) => unbase64(&b64.to_string_lossy()),
                _ => panic!("wrapper without the line: {}", String::from_utf8_lossy(o)),
            };
        assert_eq!(&original[..], *i, "the wrapped line comes back");
    }

    // Concatenated JSON in tag mode: when every line holds exactly one JSON value, documents and
    // lines are the same units, and the output is line mode's, byte for byte.
    let mut docs = Vec::new();
    transform(Mode::Tag, usize::MAX / 2).run_documents(&mut &input[..], &mut docs).unwrap();
    if ins.iter().all(|l| l.trim_ascii().is_empty() || crate::is_one_value(l)) {
        assert_eq!(
            String::from_utf8_lossy(&docs),
            String::from_utf8_lossy(&out),
            "json-stream and lines differ"
        );
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Rule packs: one to eight random rules (KQL over the fields Elastic's AWS rules read) and one
/// random document, every choice read from `data` ([`packgen`](crate::packgen)). The pack
/// evaluator and its masked evaluation (what the transform runs) decide exactly as the reference
/// KQL evaluator; a rule the pack prefilter rules out is false; and the buffer-wide candidate
/// search finds the line when some rule is not false on it.
pub fn pack_agrees(data: &[u8]) {
    use crate::packgen::{line, query, Gen, Rng};
    use kmsguard_matcher::kql;
    use kmsguard_matcher::packfilter::{PackPrefilter, RuleMask};
    use kmsguard_matcher::ruleset::{PackEvaluator, PackVerdict, RuleSet, Tri};

    let mut g = Gen::with(Rng::from_bytes(data));
    g.palette();
    let n = 1 + g.rng.below(8);
    let texts: Vec<String> = (0..n).map(|_| query(&mut g, 0)).collect();
    let queries: Vec<kql::Query> = texts
        .iter()
        .map(|t| kql::parse(t).unwrap_or_else(|e| panic!("generated rule {t:?}: {e}")))
        .collect();
    let assume = match g.rng.below(20) {
        0..=8 => None,
        9..=18 => Some("aws.cloudtrail"),
        _ => Some("aws.vpcflow"),
    };
    let set = RuleSet::new(&queries, assume.map(String::from))
        .unwrap_or_else(|(n, e)| panic!("generated rule {:?} refused: {e}", texts[n]));
    let (_, line) = line(&mut g);
    let shown = String::from_utf8_lossy(&line);
    let reference = crate::kql::evaluate_pack(&queries, assume, &line);
    let mut evaluator = PackEvaluator::new();
    let outcome = |verdict: PackVerdict, evaluator: &PackEvaluator| match verdict {
        PackVerdict::Invalid => None,
        PackVerdict::Decided(shape) => Some((shape, evaluator.verdicts().to_vec())),
    };
    let verdict = evaluator.evaluate(&set, &line);
    let fast = outcome(verdict, &evaluator);
    assert_eq!(fast, reference, "rules {texts:?}, assume {assume:?}, on {shown}");
    let prefilter = PackPrefilter::new(&set);
    let mut mask = RuleMask::default();
    prefilter.possible(&line, &mut mask, &mut Vec::new());
    // Whole terms found from their quotes (where the CPU allows) or by Teddy: the same rules.
    let mut plain = RuleMask::default();
    PackPrefilter::with_term_scan(&set, false).possible(&line, &mut plain, &mut Vec::new());
    assert_eq!(mask, plain, "term scan against Teddy: rules {texts:?} on {shown}");
    let verdict = evaluator.evaluate_masked(&set, &line, &mask);
    let masked = outcome(verdict, &evaluator);
    assert_eq!(masked, reference, "masked: rules {texts:?}, assume {assume:?}, on {shown}");
    let verdicts = reference.as_ref().map_or(&[][..], |(_, v)| v.as_slice());
    for (r, v) in verdicts.iter().enumerate() {
        assert!(
            mask.contains(r) || *v == Tri::False,
            "ruled out but {v:?}: {} on {shown}",
            texts[r]
        );
    }
    if !line.contains(&b'\n') {
        let mut search = prefilter.candidate_lines(&line);
        match search.next() {
            // The transform evaluates a candidate with the rules the search found for it.
            Some(_) => {
                let verdict = evaluator.evaluate_masked(&set, &line, search.mask());
                let searched = outcome(verdict, &evaluator);
                assert_eq!(searched, reference, "searched: rules {texts:?} on {shown}");
            }
            None => assert!(
                verdicts.iter().all(|v| *v == Tri::False),
                "the candidate search missed {shown} for {texts:?}"
            ),
        }
    }
}
