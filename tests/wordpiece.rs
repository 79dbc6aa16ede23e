//! The fast WordPiece path (src/wordpiece.rs) against the tokenizers library it mirrors: the
//! same ids on every golden text and on seeded random multilingual text full of the awkward
//! cases (accents and combining marks, CJK, controls, odd whitespace, emoji, long words,
//! unknown characters), for the real MiniLM vocabulary, the tiny test vocabulary, and every
//! setting of the BERT normalizer.

mod common;

use std::str::FromStr;

use common::*;
use crossrank::wordpiece::FastWordPiece;
use tokenizers::Tokenizer;

/// SplitMix64, seeded.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEPARATORS: &[&str] = &[
    " ", " ", " ", "  ", "\t", "\n", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", ".", ",", "!?", "-",
    "'", "\"", "(", ")", "/", "…", "—", "«", "»", "、", "。", "\u{0}", "\u{7}", "\u{1b}",
    "\u{fffd}", "\u{200b}", "\u{ad}", "$", "+", "=", "<", ">", "@", "#", "%", "&", "*", "~",
];

fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(40) {
        s.push_str(rng.pick(WORDS));
        if rng.below(8) == 0 {
            // A word longer than max_input_chars_per_word (100): one [UNK].
            s.push_str(&"long".repeat(26));
        }
        s.push_str(rng.pick(SEPARATORS));
    }
    s
}

/// Asserts the fast path gives the library's ids for `text` (or declines it when it holds a
/// character that starts an added token). Returns whether the fast path took it.
fn same_ids(name: &str, t: &Tokenizer, fast: &FastWordPiece, text: &str) -> bool {
    let want = t.encode_fast(text, false).unwrap().get_ids().to_vec();
    match fast.encode(text) {
        Some(got) => {
            assert_eq!(got, want, "{name}: {text:?}");
            true
        }
        None => {
            assert!(
                text.contains('['),
                "{name}: declined {text:?} which holds no guard character"
            );
            false
        }
    }
}

fn check_tokenizer(name: &str, t: &Tokenizer, seed: u64) {
    let fast = FastWordPiece::new(t).unwrap_or_else(|| panic!("{name}: no fast path"));
    let mut taken = 0;
    for model in committed_models() {
        for g in golden(&model).groups {
            for text in std::iter::once(&g.query).chain(&g.passages) {
                taken += same_ids(name, t, &fast, text) as usize;
            }
        }
    }
    let mut rng = Rng(seed);
    for _ in 0..3000 {
        let text = random_text(&mut rng);
        assert!(
            same_ids(name, t, &fast, &text),
            "{name}: random text declined"
        );
        taken += 1;
    }
    assert!(!same_ids(name, t, &fast, "a literal [SEP] in text"));
    eprintln!("{name}: {taken} texts identical to the tokenizers library");
}

fn tokenizer_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn fast_wordpiece_equals_the_library_on_the_test_vocabulary_and_every_normalizer_setting() {
    let base = tokenizer_json(&model_dir("bert-f32").join("tokenizer.json"));
    let mut seed = 1;
    for clean_text in [true, false] {
        for handle_chinese_chars in [true, false] {
            for strip_accents in [serde_json::Value::Null, true.into(), false.into()] {
                for lowercase in [true, false] {
                    let mut v = base.clone();
                    v["normalizer"] = serde_json::json!({
                        "type": "BertNormalizer", "clean_text": clean_text,
                        "handle_chinese_chars": handle_chinese_chars,
                        "strip_accents": strip_accents, "lowercase": lowercase,
                    });
                    let t = Tokenizer::from_str(&v.to_string()).unwrap();
                    let name = format!("bert-f32 {}", v["normalizer"]);
                    check_tokenizer(&name, &t, seed);
                    seed += 1;
                }
            }
        }
    }
}

#[test]
fn fast_wordpiece_equals_the_library_on_the_real_minilm_vocabulary() {
    let Some(dir) = minilm_encoder() else { return };
    let mut t = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    // Its tokenizer.json pads and truncates to 128; transformers (and crossrank) do not.
    t.with_padding(None).with_truncation(None).unwrap();
    check_tokenizer("all-MiniLM-L6-v2", &t, 99);
}

#[test]
fn other_pipelines_take_the_general_path() {
    let t = Tokenizer::from_file(model_dir("xlmr-bf16").join("tokenizer.json")).unwrap();
    assert!(FastWordPiece::new(&t).is_none(), "Unigram is not WordPiece");
}

/// max_input_chars_per_word (100) is inclusive and counts characters, not bytes: a word of 99
/// or 100 characters is split into pieces, one of 101 is one [UNK], exactly as the library does.
#[test]
fn a_word_of_exactly_max_input_chars_is_split_not_unknown() {
    let t = Tokenizer::from_file(model_dir("bert-f32").join("tokenizer.json")).unwrap();
    let fast = FastWordPiece::new(&t).unwrap();
    let unk = t.token_to_id("[UNK]").unwrap();
    for letter in ["a", "б"] {
        for n in [99, 100, 101] {
            let word = letter.repeat(n);
            for text in [word.clone(), format!("{word}, {word}.")] {
                let want = t
                    .encode_fast(text.as_str(), false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                assert_eq!(fast.encode(&text), Some(want.clone()), "{letter} x {n}");
                let unknown = want.contains(&unk);
                assert_eq!(unknown, n > 100, "{letter} x {n}: library gave {want:?}");
            }
        }
    }
}
