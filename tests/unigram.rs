//! The fast Unigram path (src/unigram.rs) against the tokenizers library it mirrors: the same
//! ids on every golden text, on the bench workload texts, and on seeded random multilingual
//! text full of the awkward cases (whitespace of every kind, combining marks after ASCII,
//! grapheme clusters that cross into ASCII, CR LF, emoji sequences, full-width forms, controls,
//! characters nmt_nfkc deletes, the `▁` replacement itself, text that normalizes into a special
//! token's spelling, characters no piece covers), for the committed XLM-R test tokenizers, the
//! 250002-piece synthetic tokenizer of the bench shapes, and every Metaspace setting the fast
//! path accepts.

mod common;

use std::str::FromStr;
use std::time::Instant;

use common::*;
use crossrank::bench::shapes::{synthetic_unigram, XLMR_VOCAB};
use crossrank::bench::workload::{Lengths, Workload};
use crossrank::bench::Rng;
use crossrank::unigram::FastUnigram;
use tokenizers::Tokenizer;

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.range(0, items.len() - 1)]
}

/// Words beyond the shared `WORDS` that matter to this pipeline: Hangul jamo, conjuncts,
/// emoji sequences, clusters that start in ASCII or join the next ASCII character, the `▁`
/// replacement, special tokens spelled full-width (nmt_nfkc makes them `<s>`...), deleted
/// characters.
const EXTRA_WORDS: &[&str] = &[
    "\u{1100}\u{1161}\u{11a8}",
    "क्षत्रिय",
    "ｶﾀｶﾅ",
    "👨\u{200d}👩\u{200d}👧",
    "🏳\u{fe0f}\u{200d}🌈",
    "🇫🇷🇩🇪",
    "a\u{308}\u{301}\u{323}",
    "x\u{301}\u{302}\u{303}\u{304}",
    "\u{301}",
    "\u{600}1",
    "\u{d4e}a",
    "㍿",
    "™",
    "\u{2581}",
    "\u{2581}\u{2581}",
    "a\u{2581}b",
    "word\u{2581}",
    "＜s＞",
    "＜unk＞",
    "＜mask＞",
    "\u{200b}",
    "\u{ad}",
    "\u{feff}",
];

const SEPARATORS: &[&str] = &[
    " ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\r\n\r\n", "\n\r", "\u{b}", "\u{c}", "\u{85}",
    "\u{a0}", "\u{1680}", "\u{2002}", "\u{2009}", "\u{200a}", "\u{2028}", "\u{2029}", "\u{202f}",
    "\u{205f}", "\u{3000}", "\u{200b}", "\u{200c}", "\u{180e}", ".", ",", "!?", "-", "'", "\"",
    "(", ")", "/", "…", "—", "«", "»", "、", "。", "\u{0}", "\u{1}", "\u{7}", "\u{1b}", "\u{1f}",
    "\u{7f}", "\u{9f}", "\u{fffd}", "$", "+", "=", "<", ">", "@", "#", "%", "&", "*", "~", "<",
    "<s", "s>", "</", "<mas", "\u{2581}",
];

/// Added tokens of XLM-R, in about one random text in 16: the fast path must decline those.
const ADDED: &[&str] = &["<s>", "</s>", "<mask>", "<unk>", "<pad>", " <mask>"];

/// Code point ranges to draw single characters from, beyond the words above.
const RANGES: &[(u32, u32)] = &[
    (0x20, 0x7e),
    (0x0, 0x1f),
    (0xa0, 0x17f),
    (0x300, 0x36f),
    (0x370, 0x3ff),
    (0x400, 0x4ff),
    (0x590, 0x5ff),
    (0x600, 0x6ff),
    (0x900, 0x97f),
    (0xe00, 0xe7f),
    (0x1100, 0x11ff),
    (0x2000, 0x206f),
    (0x2100, 0x218f),
    (0x2460, 0x24ff),
    (0x2580, 0x259f),
    (0x3000, 0x30ff),
    (0x3300, 0x33ff),
    (0x4e00, 0x4fff),
    (0xac00, 0xad00),
    (0xfb00, 0xfb4f),
    (0xfe00, 0xfe0f),
    (0xff00, 0xffef),
    (0x1f1e6, 0x1f1ff),
    (0x1f300, 0x1f64f),
    (0x1f3fb, 0x1f3ff),
    (0x110bd, 0x110bd),
    (0x1d400, 0x1d4ff),
    (0xe0020, 0xe007f),
];

fn random_char(rng: &mut Rng) -> char {
    loop {
        let (lo, hi) = RANGES[rng.range(0, RANGES.len() - 1)];
        if let Some(c) = char::from_u32(rng.range(lo as usize, hi as usize) as u32) {
            return c;
        }
    }
}

fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.range(0, 40) {
        match rng.range(0, 9) {
            0..=1 => s.push_str(pick(rng, WORDS)),
            2..=3 => s.push_str(pick(rng, EXTRA_WORDS)),
            4..=5 => s.push_str(pick(rng, SEPARATORS)),
            6 => {
                for _ in 0..rng.range(1, 6) {
                    s.push(random_char(rng));
                }
            }
            7 => {
                // An ASCII letter before a random character, often a mark, joiner or variation
                // selector: a cluster that starts in ASCII.
                s.push('a');
                s.push(random_char(rng));
            }
            _ => s.push(' '),
        }
    }
    if rng.range(0, 15) == 0 {
        let at = s
            .char_indices()
            .nth(rng.range(0, s.chars().count()))
            .map_or(s.len(), |(i, _)| i);
        s.insert_str(at, pick(rng, ADDED));
    }
    s
}

/// Whether the library would split an added token out of `text`: the fast path declines it.
fn holds_added_token(t: &Tokenizer, text: &str) -> bool {
    t.get_added_tokens_decoder()
        .values()
        .any(|a| text.contains(a.content.as_str()))
}

/// Asserts the fast path gives the library's ids for `text`, and declines exactly the texts
/// that hold an added token. Returns whether it took the text.
fn same_ids(name: &str, t: &Tokenizer, fast: &FastUnigram, text: &str) -> bool {
    let want = t.encode_fast(text, false).unwrap().get_ids().to_vec();
    match fast.encode(text) {
        Some(got) => {
            assert_eq!(got, want, "{name}: {text:?}");
            assert!(!holds_added_token(t, text), "{name}: took {text:?}");
            true
        }
        None => {
            assert!(holds_added_token(t, text), "{name}: declined {text:?}");
            false
        }
    }
}

/// Compares every golden text, `extra` and `random` seeded random texts; returns (compared,
/// taken by the fast path).
fn check(name: &str, t: &Tokenizer, extra: &[String], seed: u64, random: usize) -> (usize, usize) {
    let start = Instant::now();
    let fast = FastUnigram::new(t).unwrap_or_else(|| panic!("{name}: no fast path"));
    let load = start.elapsed();
    let mut texts: Vec<String> = Vec::new();
    for model in committed_models() {
        let g = golden(&model);
        for set in [
            &g.groups,
            &g.explicit_max_length.groups,
            &g.left_truncation.groups,
        ] {
            for group in set {
                texts.push(group.query.clone());
                texts.extend(group.passages.iter().cloned());
            }
        }
    }
    texts.extend(extra.iter().cloned());
    let mut rng = Rng::new(seed);
    texts.extend((0..random).map(|_| random_text(&mut rng)));
    let taken = texts
        .iter()
        .filter(|text| same_ids(name, t, &fast, text))
        .count();
    eprintln!(
        "{name}: {} texts compared, {taken} through the fast path, all identical to the tokenizers library (fast path built in {load:.2?})",
        texts.len()
    );
    (texts.len(), taken)
}

fn committed(name: &str) -> Tokenizer {
    let mut t = Tokenizer::from_file(model_dir(name).join("tokenizer.json")).unwrap();
    t.with_padding(None).with_truncation(None).unwrap();
    t
}

#[test]
fn fast_unigram_equals_the_library_on_the_committed_xlmr_tokenizers() {
    for (name, seed) in [("xlmr-bf16", 1), ("roberta-sharded", 2)] {
        let (compared, taken) = check(name, &committed(name), &[], seed, 4000);
        assert!(
            taken * 10 > compared * 9,
            "{name}: {taken} of {compared} taken"
        );
    }
}

/// The synthetic 250002-piece tokenizer of the bge shapes, on the bench workloads' texts too.
#[test]
fn fast_unigram_equals_the_library_on_the_bench_tokenizer_and_workloads() {
    let json = synthetic_unigram(XLMR_VOCAB).unwrap();
    let t = Tokenizer::from_str(&json).unwrap();
    let count =
        |text: &str| -> crossrank::Result<usize> { Ok(t.encode(text, false).unwrap().len()) };
    let mut texts = Vec::new();
    for lengths in [Lengths::Marco, Lengths::Rag] {
        // The bench's workloads: benches/cpu.rs draws 4 calls of 100 with the default seed.
        let w = Workload::generate(
            crossrank::bench::shapes::DEFAULT_SEED,
            lengths,
            &[100],
            4,
            &count,
        )
        .unwrap();
        for call in &w.sets[0].calls {
            texts.push(call.query.clone());
            texts.extend(call.passages.iter().cloned());
        }
    }
    let workload_texts = texts.len();
    let (compared, taken) = check("tiny-xlmr", &t, &texts, 3, 3000);
    assert!(workload_texts >= 800, "{workload_texts}");
    assert!(taken * 10 > compared * 9, "{taken} of {compared} taken");
}

/// Every pre-tokenizer form the fast path accepts: Metaspace after WhitespaceSplit or alone,
/// prepending always or never, splitting or not.
#[test]
fn fast_unigram_equals_the_library_for_every_accepted_metaspace_setting() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("xlmr-bf16").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let mut seed = 10;
    for whitespace_split in [true, false] {
        for prepend in ["always", "never"] {
            for split in [true, false] {
                let metaspace = serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}",
                                                   "prepend_scheme": prepend, "split": split});
                let mut v = base.clone();
                v["pre_tokenizer"] = if whitespace_split {
                    serde_json::json!({"type": "Sequence",
                                       "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]})
                } else {
                    metaspace
                };
                let t = Tokenizer::from_str(&v.to_string()).unwrap();
                let name = format!("xlmr-bf16 {}", v["pre_tokenizer"]);
                check(&name, &t, &[], seed, 1000);
                seed += 1;
            }
        }
    }
}

/// Every piece scoring the same, so that all segmentations into as many pieces tie exactly: a
/// tie keeps the path found first, as the library's strict comparisons do.
#[test]
fn fast_unigram_breaks_ties_as_the_library_does() {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("xlmr-bf16").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    for piece in v["model"]["vocab"].as_array_mut().unwrap() {
        piece[1] = (-1.0).into();
    }
    let t = Tokenizer::from_str(&v.to_string()).unwrap();
    check("xlmr-bf16 with equal scores", &t, &[], 20, 2000);
}

/// A piece listed twice: the library's token map keeps the last id, and the Viterbi search
/// scores it with that id's score.
#[test]
fn fast_unigram_resolves_duplicate_pieces_as_the_library_does() {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("xlmr-bf16").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = v["model"]["vocab"].as_array_mut().unwrap();
    let n = vocab.len();
    for k in 0..40 {
        // The last 40 pieces become copies of common ones, scoring better or worse.
        let piece = vocab[4 + k][0].clone();
        vocab[n - 1 - k] = serde_json::json!([piece, if k % 2 == 0 { -1.0 } else { -30.0 }]);
    }
    let t = Tokenizer::from_str(&v.to_string()).unwrap();
    check("xlmr-bf16 with duplicate pieces", &t, &[], 21, 2000);
}

#[test]
fn other_pipelines_take_the_general_path() {
    let bert = Tokenizer::from_file(model_dir("bert-f32").join("tokenizer.json")).unwrap();
    assert!(
        FastUnigram::new(&bert).is_none(),
        "WordPiece is not Unigram"
    );

    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("xlmr-bf16").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let refused = |edit: &dyn Fn(&mut serde_json::Value), why: &str| {
        let mut v = base.clone();
        edit(&mut v);
        let t = Tokenizer::from_str(&v.to_string()).unwrap();
        assert!(FastUnigram::new(&t).is_none(), "accepted {why}");
    };
    refused(
        &|v| v["pre_tokenizer"]["pretokenizers"][1]["prepend_scheme"] = "first".into(),
        "prepend_scheme first (depends on the offset in the original text)",
    );
    refused(
        &|v| v["model"]["byte_fallback"] = true.into(),
        "byte_fallback",
    );
    refused(
        &|v| v["model"]["unk_id"] = serde_json::Value::Null,
        "no unk_id",
    );
    refused(
        &|v| v["added_tokens"][4]["normalized"] = true.into(),
        "an added token matched on normalized text",
    );
    refused(
        &|v| {
            let pre = v["normalizer"].clone();
            v["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [pre, {"type": "Lowercase"}]});
        },
        "a normalizer other than Precompiled alone",
    );
    refused(
        &|v| {
            v["pre_tokenizer"]["pretokenizers"] = serde_json::json!([{"type": "Whitespace"}, v["pre_tokenizer"]["pretokenizers"][1].clone()]);
        },
        "Whitespace (regex) instead of WhitespaceSplit",
    );
}

/// The unknown-character score (the worst piece's score less 10) decides between a path that
/// covers a character with a longer piece and one that makes it unknown, which happens only
/// when the character has no piece of its own; the committed vocabulary has none such. Here
/// half the single-character pieces are renamed away (their characters keep their longer
/// pieces), and, for pairs of characters that occur in no other piece, the first loses its
/// own piece, the second's scores +20, and the pair becomes a piece scoring 0.5 above or below
/// "unknown + the second's piece" (all above the worst piece, so the library's minimum stays
/// put): a penalty other than 10 picks the other path.
#[test]
fn fast_unigram_scores_unknown_characters_as_the_library_does() {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("xlmr-bf16").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = v["model"]["vocab"].as_array_mut().unwrap();
    let n = vocab.len();
    let pieces: Vec<String> = vocab
        .iter()
        .map(|p| p[0].as_str().unwrap().to_string())
        .collect();
    // Single characters (not the specials, not `▁`, not the last 12 pieces, replaced below).
    let singles: Vec<usize> = (4..n - 12)
        .filter(|&k| pieces[k].chars().count() == 1 && pieces[k] != "\u{2581}")
        .collect();
    let isolated = |k: usize| pieces.iter().filter(|p| p.contains(&pieces[k])).count() == 1;
    let (alone, shared): (Vec<usize>, Vec<usize>) = singles.into_iter().partition(|&k| isolated(k));
    assert!(
        alone.len() >= 24 && shared.len() >= 40,
        "{} {}",
        alone.len(),
        shared.len()
    );
    let rename = |vocab: &mut Vec<serde_json::Value>, k: usize| {
        vocab[k][0] = format!("\u{e000}{k}").into();
    };
    for &k in shared.iter().step_by(2) {
        rename(vocab, k);
    }
    let pairs: Vec<(usize, usize)> = alone.chunks(2).take(12).map(|c| (c[0], c[1])).collect();
    for (j, &(gone, kept)) in pairs.iter().enumerate() {
        rename(vocab, gone);
        vocab[kept][1] = 20.0.into();
        vocab[n - 1 - j] = serde_json::json!([format!("{}{}", pieces[gone], pieces[kept]), 0.0]);
    }
    let min_score = vocab
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    let unk_score = min_score - 10.0;
    let mut extra = Vec::new();
    for (j, &(gone, kept)) in pairs.iter().enumerate() {
        let margin = if j % 2 == 0 { 0.5 } else { -0.5 };
        vocab[n - 1 - j][1] = (unk_score + 20.0 + margin).into();
        let (gone, kept) = (&pieces[gone], &pieces[kept]);
        extra.push(format!("{gone}{kept} {kept}{gone}{kept}"));
    }
    let t = Tokenizer::from_str(&v.to_string()).unwrap();
    let unk = t.token_to_id("<unk>").unwrap();
    // The library itself takes the pair's piece where it scores above the unknown path, and
    // the unknown where it scores below.
    for (j, x) in extra.iter().enumerate() {
        let ids = t.encode(x.as_str(), false).unwrap().get_ids().to_vec();
        let piece = (n - 1 - j) as u32;
        assert_eq!(ids.contains(&piece), j % 2 == 0, "{x:?}: {ids:?}");
        assert_eq!(ids.contains(&unk), j % 2 == 1, "{x:?}: {ids:?}");
    }
    check(
        "xlmr-bf16 without half its single characters",
        &t,
        &extra,
        22,
        3000,
    );
}
