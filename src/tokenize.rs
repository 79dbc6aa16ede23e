//! (query, passage) pair encoding and truncation, exactly as transformers does it:
//! `tokenizer(query, passage, truncation=True, max_length=L)`.
//!
//! transformers' fast tokenizers run this same library: each sequence is encoded on its own
//! (the second with type id 1), then truncated longest-first to L minus the special tokens,
//! then the post-processor adds the special tokens. We do the same steps ourselves so that the
//! query is encoded once per call, not once per passage, and so that truncation and padding
//! settings stored inside tokenizer.json never apply.

use std::path::Path;

use rayon::prelude::*;
use tokenizers::utils::truncation::{
    truncate_encodings, TruncationDirection, TruncationParams, TruncationStrategy,
};
use tokenizers::{Encoding, PostProcessor, Tokenizer};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::unigram::FastUnigram;
use crate::wordpiece::FastWordPiece;

/// Which end of a too-long pair is cut: transformers' `truncation_side` (TEI's
/// `truncation_direction`). Right is transformers' default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TruncationSide {
    #[default]
    Right,
    Left,
}

/// One encoded pair, ready to pack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedPair {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The pair was longer than the max length and was cut.
    pub truncated: bool,
}

pub struct PairTokenizer {
    tokenizer: Tokenizer,
    /// The exact fast path for plain BERT WordPiece or XLM-R Unigram tokenizers.
    fast: Option<FastPath>,
    /// Special tokens the post-processor adds around a pair.
    added_for_pair: usize,
    /// Where the post-processor puts them, read off it at load (None: an unusual
    /// post-processor, which then runs on every pair).
    template: Option<PairTemplate>,
    /// The longest pair the model accepts (position table, tokenizer_config.json).
    max_length_limit: usize,
    /// transformers' default: min(model_max_length, position table).
    default_max_length: usize,
    /// Token types reach the model (BERT with a 2-row table); otherwise all zeros.
    keep_type_ids: bool,
}

impl PairTokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` when present) from a model directory.
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::model(
                &path,
                "missing: crossrank needs the fast tokenizer file tokenizer.json",
            ));
        }
        let config = crate::tokenizer_class::read_config(dir)?;
        // As transformers 5 runs it: for BERT and XLM-R, the class's pipeline, not the file's.
        let mut tokenizer = crate::tokenizer_class::load(dir, config.as_ref())?;
        // Settings stored in tokenizer.json are not ours: every call sets its own.
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::model(&path, format!("tokenizer does not load: {e}")))?;
        tokenizer.with_padding(None);

        let added_for_pair = tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(true))
            .unwrap_or(0);
        let positions = cfg.max_positions();
        let model_max = model_max_length(config.as_ref());
        let default_max_length = match model_max {
            Some(m) if m > 0 && m < positions => m,
            _ => positions,
        };
        if default_max_length <= added_for_pair {
            return Err(Error::model(
                &path,
                format!(
                    "the max length {default_max_length} leaves no room for text after the {added_for_pair} special tokens"
                ),
            ));
        }
        let template = PairTemplate::probe(&tokenizer);
        Ok(PairTokenizer {
            fast: FastPath::new(&tokenizer),
            template,
            tokenizer,
            added_for_pair,
            max_length_limit: positions,
            default_max_length,
            keep_type_ids: cfg.uses_token_types(),
        })
    }

    pub fn default_max_length(&self) -> usize {
        self.default_max_length
    }

    /// The largest `--max-length` accepted: what the position table allows.
    pub fn max_length_limit(&self) -> usize {
        self.max_length_limit
    }

    /// Checks a caller's max length, or gives the default.
    pub fn resolve_max_length(&self, requested: Option<usize>) -> Result<usize> {
        match requested {
            None => Ok(self.default_max_length),
            Some(0) => Err(Error::input("max length must be at least 1, got 0")),
            Some(n) if n > self.max_length_limit => Err(Error::input(format!(
                "max length {n} is beyond what the model allows ({})",
                self.max_length_limit
            ))),
            Some(n) if n <= self.added_for_pair => Err(Error::input(format!(
                "max length {n} leaves no room for text after the {} special tokens of a pair",
                self.added_for_pair
            ))),
            Some(n) => Ok(n),
        }
    }

    /// The ids of a text without special tokens: all that truncation and the post-processor
    /// read of it (they move ids and set type ids; token strings and offsets reach nothing).
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.fast.as_ref().and_then(|f| f.encode(text)) {
            return Ok(ids);
        }
        // encode_fast: no character offsets, which nothing here reads.
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::input(format!("tokenizer failed on a text: {e}")))
    }

    /// Encodes (query, passage) for every passage, cutting on the right; the query is encoded
    /// once, the passages in parallel. `max_length` must come from `resolve_max_length`.
    pub fn encode_group<S: AsRef<str> + Sync>(
        &self,
        query: &str,
        passages: &[S],
        max_length: usize,
    ) -> Result<Vec<EncodedPair>> {
        self.encode_group_with(query, passages, max_length, TruncationSide::Right)
    }

    /// `encode_group`, cutting too-long pairs on `side`.
    pub fn encode_group_with<S: AsRef<str> + Sync>(
        &self,
        query: &str,
        passages: &[S],
        max_length: usize,
        side: TruncationSide,
    ) -> Result<Vec<EncodedPair>> {
        let q = self.encode_text(query)?;
        passages
            .par_iter()
            .map(|p| {
                let p = self.encode_text(p.as_ref())?;
                match &self.template {
                    Some(t) => Ok(self.assemble(t, &q, &p, max_length, side)),
                    None => self.pair_by_library(&q, &p, max_length, side),
                }
            })
            .collect()
    }

    /// The pair of two texts' ids, cut and framed by the library's own truncation and
    /// post-processor: what `assemble` reproduces (and is tested against), and the way for a
    /// post-processor `PairTemplate::probe` does not recognise.
    pub fn pair_by_library(
        &self,
        q: &[u32],
        p: &[u32],
        max_length: usize,
        side: TruncationSide,
    ) -> Result<EncodedPair> {
        let q = ids_encoding(q.to_vec());
        let mut p = ids_encoding(p.to_vec());
        p.set_type_ids(vec![1; p.len()]);
        let budget = max_length.saturating_sub(self.added_for_pair);
        let truncated = q.len() + p.len() > budget;
        let params = TruncationParams {
            max_length: budget,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: match side {
                TruncationSide::Right => TruncationDirection::Right,
                TruncationSide::Left => TruncationDirection::Left,
            },
        };
        let fail = |e: tokenizers::Error| Error::input(format!("tokenizer failed on a pair: {e}"));
        let (q, p) = if truncated {
            truncate_encodings(q, Some(p), &params).map_err(fail)?
        } else {
            (q, Some(p))
        };
        let enc = match self.tokenizer.get_post_processor() {
            Some(proc) => proc.process(q, p, true).map_err(fail)?,
            None => {
                let mut parts = vec![q];
                parts.extend(p);
                Encoding::merge(parts, false)
            }
        };
        let ids = enc.get_ids().to_vec();
        let type_ids = if self.keep_type_ids {
            enc.get_type_ids().to_vec()
        } else {
            vec![0; ids.len()]
        };
        Ok(EncodedPair {
            ids,
            type_ids,
            truncated,
        })
    }

    /// Truncates longest-first and frames the pair as the post-processor does, from ids alone:
    /// the same result as `pair_by_library` without building the library's `Encoding`s (nine
    /// vectors each, cloned and merged), which cost as much as tokenizing the passage.
    fn assemble(
        &self,
        t: &PairTemplate,
        q: &[u32],
        p: &[u32],
        max_length: usize,
        side: TruncationSide,
    ) -> EncodedPair {
        let budget = max_length.saturating_sub(self.added_for_pair);
        let truncated = q.len() + p.len() > budget;
        let (nq, np) = if truncated {
            let (nq, np) = longest_first(q.len(), p.len(), budget);
            // As the library's `truncate`: a length beyond the text keeps all of it.
            (nq.min(q.len()), np.min(p.len()))
        } else {
            (q.len(), p.len())
        };
        let keep = |ids: &'_ [u32], n: usize| -> std::ops::Range<usize> {
            match side {
                TruncationSide::Right => 0..n,
                TruncationSide::Left => ids.len() - n..ids.len(),
            }
        };
        let (q, p) = (&q[keep(q, nq)], &p[keep(p, np)]);
        let len = t.prefix.len() + q.len() + t.middle.len() + p.len() + t.suffix.len();
        let mut ids = Vec::with_capacity(len);
        ids.extend_from_slice(&t.prefix);
        ids.extend_from_slice(q);
        ids.extend_from_slice(&t.middle);
        ids.extend_from_slice(p);
        ids.extend_from_slice(&t.suffix);
        let type_ids = if self.keep_type_ids {
            let mut types = Vec::with_capacity(len);
            types.extend_from_slice(&t.prefix_types);
            types.resize(types.len() + q.len(), t.a_type);
            types.extend_from_slice(&t.middle_types);
            types.resize(types.len() + p.len(), t.b_type);
            types.extend_from_slice(&t.suffix_types);
            types
        } else {
            vec![0; len]
        };
        EncodedPair {
            ids,
            type_ids,
            truncated,
        }
    }

    /// One text alone, as `tokenizer(text, truncation=True, max_length=L)` encodes it: cut on
    /// the right to leave room for the post-processor's single-sequence special tokens, then
    /// framed by it (BLIP's query: `[CLS] text [SEP]`). `max_length` must come from
    /// `resolve_max_length`.
    pub fn encode_single(&self, text: &str, max_length: usize) -> Result<EncodedPair> {
        let mut ids = self.encode_text(text)?;
        let added = self
            .tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        let budget = max_length.saturating_sub(added);
        let truncated = ids.len() > budget;
        ids.truncate(budget);
        let enc = match self.tokenizer.get_post_processor() {
            Some(proc) => proc
                .process(ids_encoding(ids), None, true)
                .map_err(|e| Error::input(format!("tokenizer failed on a text: {e}")))?,
            None => ids_encoding(ids),
        };
        let ids = enc.get_ids().to_vec();
        Ok(EncodedPair {
            type_ids: vec![0; ids.len()],
            ids,
            truncated,
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// The lengths the library's `LongestFirst` truncation (stride 0) keeps of a pair of `n1` and
/// `n2` tokens within `max` (tokenizers `truncate_encodings`): the shorter one whole and the
/// longer cut to the rest when that fits, else half each, the odd one to the second.
pub fn longest_first(n1: usize, n2: usize, max: usize) -> (usize, usize) {
    let (short, swapped) = if n1 > n2 { (n2, true) } else { (n1, false) };
    // Truncation happens only when short + long > max, so the longer text is always longer
    // than max - short: it keeps max - short, or as much as the shorter if that is more.
    let (mut a, mut b) = (
        short,
        if short > max {
            short
        } else {
            (max - short).max(short)
        },
    );
    if a + b > max {
        a = max / 2;
        b = a + max % 2;
    }
    if swapped {
        (b, a)
    } else {
        (a, b)
    }
}

/// How the post-processor frames a pair: `prefix A middle B suffix`, with type ids for each
/// part. Read off the post-processor itself at load by running it on marker ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PairTemplate {
    prefix: Vec<u32>,
    middle: Vec<u32>,
    suffix: Vec<u32>,
    prefix_types: Vec<u32>,
    middle_types: Vec<u32>,
    suffix_types: Vec<u32>,
    a_type: u32,
    b_type: u32,
}

impl PairTemplate {
    /// Runs the post-processor on one marker token per text, reads the frame off the result,
    /// and keeps it only if it also predicts the result for texts of 0 to 3 tokens: a
    /// post-processor that does anything else than frame the two texts gets None.
    fn probe(t: &Tokenizer) -> Option<Self> {
        const A: u32 = u32::MAX;
        const B: u32 = u32::MAX - 1;
        let run = |na: usize, nb: usize| -> Option<(Vec<u32>, Vec<u32>)> {
            let q = ids_encoding(vec![A; na]);
            let mut p = ids_encoding(vec![B; nb]);
            p.set_type_ids(vec![1; nb]);
            let enc = match t.get_post_processor() {
                Some(proc) => proc.process(q, Some(p), true).ok()?,
                None => Encoding::merge([q, p], false),
            };
            Some((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
        };
        let (ids, types) = run(1, 1)?;
        let ia = ids.iter().position(|&i| i == A)?;
        let ib = ids.iter().position(|&i| i == B)?;
        if ib < ia || ids.iter().filter(|&&i| i == A || i == B).count() != 2 {
            return None;
        }
        let template = PairTemplate {
            prefix: ids[..ia].to_vec(),
            middle: ids[ia + 1..ib].to_vec(),
            suffix: ids[ib + 1..].to_vec(),
            prefix_types: types[..ia].to_vec(),
            middle_types: types[ia + 1..ib].to_vec(),
            suffix_types: types[ib + 1..].to_vec(),
            a_type: types[ia],
            b_type: types[ib],
        };
        for (na, nb) in [(0, 0), (0, 2), (3, 0), (2, 3), (3, 1)] {
            let framed = |part: &[u32], n: usize, id: u32| [part, &vec![id; n][..]].concat();
            let want_ids = [
                &template.prefix[..],
                &vec![A; na],
                &template.middle,
                &vec![B; nb],
                &template.suffix,
            ]
            .concat();
            let want_types = [
                framed(&template.prefix_types, na, template.a_type),
                framed(&template.middle_types, nb, template.b_type),
                template.suffix_types.clone(),
            ]
            .concat();
            if run(na, nb)? != (want_ids, want_types) {
                return None;
            }
        }
        Some(template)
    }
}

/// An encoding that carries ids only: truncation and the post-processor read nothing else of
/// it that reaches a result (token strings and offsets stay empty).
fn ids_encoding(ids: Vec<u32>) -> Encoding {
    let n = ids.len();
    Encoding::new(
        ids,
        vec![0; n],
        vec![String::new(); n],
        vec![None; n],
        vec![(0, 0); n],
        vec![0; n],
        vec![1; n],
        Vec::new(),
        Default::default(),
    )
}

/// The exact fast paths: src/wordpiece.rs, src/unigram.rs. Each refuses any pipeline it does
/// not reproduce exactly, and gives `None` for a text that must go the general way.
enum FastPath {
    WordPiece(FastWordPiece),
    /// Boxed: its trie's root table makes it some 9 KB.
    Unigram(Box<FastUnigram>),
}

impl FastPath {
    fn new(t: &Tokenizer) -> Option<Self> {
        FastWordPiece::new(t)
            .map(FastPath::WordPiece)
            .or_else(|| FastUnigram::new(t).map(|f| FastPath::Unigram(Box::new(f))))
    }

    fn encode(&self, text: &str) -> Option<Vec<u32>> {
        match self {
            FastPath::WordPiece(f) => f.encode(text),
            FastPath::Unigram(f) => f.encode(text),
        }
    }
}

impl PairTokenizer {
    /// Whether this tokenizer takes an exact fast path (WordPiece or Unigram).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether pairs are framed from ids (`PairTemplate`) rather than by the post-processor.
    pub fn has_pair_template(&self) -> bool {
        self.template.is_some()
    }
}

/// `model_max_length` from tokenizer_config.json; transformers writes a huge sentinel
/// (1e30) when unset, which we treat as absent.
fn model_max_length(config: Option<&serde_json::Value>) -> Option<usize> {
    config?
        .get("model_max_length")
        .and_then(|m| m.as_f64())
        .filter(|m| *m >= 1.0 && *m < 1e7)
        .map(|m| m as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `longest_first` against the library's `truncate_encodings` on every pair of lengths up
    /// to 40 and every budget up to 60 that truncates, both directions.
    #[test]
    fn longest_first_is_the_librarys_truncation() {
        for max in 0..60 {
            for n1 in 0..40 {
                for n2 in 0..40 {
                    if n1 + n2 <= max {
                        continue;
                    }
                    for direction in [TruncationDirection::Right, TruncationDirection::Left] {
                        let params = TruncationParams {
                            max_length: max,
                            strategy: TruncationStrategy::LongestFirst,
                            stride: 0,
                            direction,
                        };
                        let q = ids_encoding((0..n1 as u32).collect());
                        let p = ids_encoding((100..100 + n2 as u32).collect());
                        let (q, p) = truncate_encodings(q, Some(p), &params).unwrap();
                        let got = longest_first(n1, n2, max);
                        let want = (q.len(), p.map_or(0, |p| p.len()));
                        assert_eq!(got, want, "n1 {n1} n2 {n2} max {max}");
                    }
                }
            }
        }
    }
}
