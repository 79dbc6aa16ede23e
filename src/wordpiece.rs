//! A fast path for BERT WordPiece tokenizers: the same ids as the `tokenizers` library's
//! BertNormalizer + BertPreTokenizer + WordPiece, without the character alignments and the
//! per-piece strings that library keeps for offsets nobody here reads.
//!
//! It is a twin, not an approximation: the same Unicode tables (the `unicode_categories` and
//! `unicode-normalization-alignments` crates `tokenizers` itself uses), the same steps in the
//! same order (clean text, space out CJK, NFD and drop non-spacing marks, lowercase; split on
//! whitespace, isolate punctuation; greedy longest-match WordPiece). It applies only when
//! tokenizer.json has exactly that pipeline, and a text that could contain an added token
//! (any character that starts one, e.g. `[` of `[SEP]`) goes the general way.
//! tests/wordpiece.rs checks it against the library on seeded random multilingual text.

use std::collections::HashMap;

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model, ModelWrapper, Tokenizer};
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

pub struct FastWordPiece {
    clean_text: bool,
    chinese: bool,
    strip_accents: bool,
    lowercase: bool,
    /// Word-initial pieces.
    vocab: HashMap<String, u32>,
    /// Continuation pieces, keyed without their prefix (`##`).
    cont: HashMap<String, u32>,
    unk: u32,
    max_chars: usize,
    /// First characters of the added tokens: a text holding one takes the general path.
    guard: Vec<char>,
}

/// tokenizers' BertNormalizer: `\t \n \r` count as whitespace, not control.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    if c.is_ascii() {
        // ASCII's only "other" characters are the Cc controls 0x00-0x1F and 0x7F; the Unicode
        // tables are binary searches, too slow to run on every character.
        return (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\x7f';
    }
    c.is_other()
}

fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F |
        0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// tokenizers' BertPreTokenizer punctuation. Every ASCII character in a Unicode P* category
/// is also ASCII punctuation, so ASCII needs no table lookup.
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    c.is_punctuation()
}

impl FastWordPiece {
    /// The fast path for this tokenizer, or `None` when its pipeline is not plain BERT.
    pub fn new(t: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::BertNormalizer(n)) = t.get_normalizer() else {
            return None;
        };
        let Some(PreTokenizerWrapper::BertPreTokenizer(_)) = t.get_pre_tokenizer() else {
            return None;
        };
        let ModelWrapper::WordPiece(wp) = t.get_model() else {
            return None;
        };
        let mut guard: Vec<char> = Vec::new();
        for token in t.get_added_tokens_decoder().values() {
            let first = token.content.chars().next()?;
            // Only characters that no other character normalizes into are safe guards.
            if !first.is_ascii_punctuation() {
                return None;
            }
            if !guard.contains(&first) {
                guard.push(first);
            }
        }
        let all = wp.get_vocab();
        let unk = *all.get(&wp.unk_token)?;
        let prefix = wp.continuing_subword_prefix.as_str();
        let cont = all
            .iter()
            .filter_map(|(k, &v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v)))
            .collect();
        Some(FastWordPiece {
            clean_text: n.clean_text,
            chinese: n.handle_chinese_chars,
            strip_accents: n.strip_accents.unwrap_or(n.lowercase),
            lowercase: n.lowercase,
            vocab: all,
            cont,
            unk,
            max_chars: wp.max_input_chars_per_word,
            guard,
        })
    }

    /// The ids of `text` without special tokens, or `None` if the text must take the general
    /// path (it holds a character that starts an added token).
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        if text.chars().any(|c| self.guard.contains(&c)) {
            return None;
        }
        let text = self.normalize(text);
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut word_start = None;
        for (i, c) in text.char_indices() {
            let ws = c.is_whitespace();
            if ws || is_punctuation(c) {
                if let Some(s) = word_start.take() {
                    self.word(&text[s..i], &mut ids);
                }
                if !ws {
                    self.word(&text[i..i + c.len_utf8()], &mut ids);
                }
            } else if word_start.is_none() {
                word_start = Some(i);
            }
        }
        if let Some(s) = word_start {
            self.word(&text[s..], &mut ids);
        }
        Some(ids)
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            let c = if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    ' '
                } else {
                    c
                }
            } else {
                c
            };
            if self.chinese && is_chinese_char(c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        // ASCII is its own NFD, has no marks, and lowercases byte by byte.
        if s.is_ascii() {
            if self.lowercase {
                s.make_ascii_lowercase();
            }
            return s;
        }
        if self.strip_accents {
            s = s
                .nfd()
                .map(|(c, _)| c)
                .filter(|c| !c.is_mark_nonspacing())
                .collect();
        }
        if self.lowercase {
            s = s.chars().flat_map(char::to_lowercase).collect();
        }
        s
    }

    /// Greedy longest-match-first WordPiece of one word; a word with a piece missing from
    /// the vocabulary, or longer than max_input_chars_per_word, is one [UNK].
    fn word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_chars {
            ids.push(self.unk);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 { &self.vocab } else { &self.cont };
            let mut end = word.len();
            let found = loop {
                if let Some(&id) = table.get(&word[start..end]) {
                    break Some(id);
                }
                let Some(last) = word[start..end].chars().next_back() else {
                    break None;
                };
                end -= last.len_utf8();
                if end == start {
                    break None;
                }
            };
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ASCII shortcuts agree with the Unicode tables tokenizers uses, on every ASCII char.
    #[test]
    fn ascii_shortcuts_equal_the_unicode_tables() {
        for b in 0u8..128 {
            let c = b as char;
            let control = !matches!(c, '\t' | '\n' | '\r') && c.is_other();
            assert_eq!(is_control(c), control, "{b:#x}");
            assert_eq!(
                is_punctuation(c),
                c.is_ascii_punctuation() || c.is_punctuation(),
                "{b:#x}"
            );
        }
    }
}
