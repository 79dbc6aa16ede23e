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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::model(&path, format!("tokenizer does not load: {e}")))?;
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
        let model_max = model_max_length(dir)?;
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
        Ok(PairTokenizer {
            fast: FastPath::new(&tokenizer),
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

    /// Encodes a text without special tokens.
    fn encode_text(&self, text: &str) -> Result<Encoding> {
        if let Some(ids) = self.fast.as_ref().and_then(|f| f.encode(text)) {
            return Ok(ids_encoding(ids));
        }
        // encode_fast: no character offsets, which nothing here reads.
        self.tokenizer
            .encode_fast(text, false)
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
                self.pair(q.clone(), p, max_length, side)
            })
            .collect()
    }

    /// Truncate longest-first, then add the special tokens: transformers' `post_process`.
    fn pair(
        &self,
        q: Encoding,
        mut p: Encoding,
        max_length: usize,
        side: TruncationSide,
    ) -> Result<EncodedPair> {
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

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
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
}

/// `model_max_length` from tokenizer_config.json; transformers writes a huge sentinel
/// (1e30) when unset, which we treat as absent.
fn model_max_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(&path, format!("not valid JSON: {e}")))?;
    Ok(v.get("model_max_length")
        .and_then(|m| m.as_f64())
        .filter(|m| *m >= 1.0 && *m < 1e7)
        .map(|m| m as usize))
}
