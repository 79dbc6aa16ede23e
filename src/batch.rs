//! The packed variable-length batch: every pair of a call, back to back, no padding.
//!
//! Both backends consume this one structure. Sequence `s` occupies rows
//! `cu_seqlens[s]..cu_seqlens[s + 1]`; its [CLS] (or `<s>`) row is `cu_seqlens[s]`.

use crate::config::{Family, ModelConfig};
use crate::tokenize::EncodedPair;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedBatch {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    /// i32 prefix sums of the sequence lengths: n + 1 entries, starting at 0.
    pub cu_seqlens: Vec<i32>,
    pub max_seqlen: usize,
    /// A shared-prefix batch (causal models, [`PackedBatch::share_prefix`]): when non-zero,
    /// sequence 0 is the prefix, these many rows, and every later sequence holds only what
    /// follows it, attending to rows 0..shared_prefix before its own. 0: plain sequences.
    pub shared_prefix: usize,
}

impl PackedBatch {
    /// Packs encoded pairs, computing position ids as the model family does.
    pub fn pack<'a>(pairs: impl IntoIterator<Item = &'a EncodedPair>, cfg: &ModelConfig) -> Self {
        let mut b = PackedBatch {
            cu_seqlens: vec![0],
            ..Default::default()
        };
        for pair in pairs {
            b.push(&pair.ids, &pair.type_ids, cfg);
        }
        b
    }

    fn push(&mut self, ids: &[u32], type_ids: &[u32], cfg: &ModelConfig) {
        self.input_ids.extend_from_slice(ids);
        self.token_type_ids.extend_from_slice(type_ids);
        match cfg.family {
            Family::Bert | Family::ModernBert | Family::Qwen | Family::Blip => {
                self.position_ids.extend(0..ids.len() as u32)
            }
            Family::Roberta => {
                // transformers' create_position_ids_from_input_ids: a running count of
                // non-padding tokens, offset by padding_idx; padding tokens sit at padding_idx.
                let pad = cfg.pad_token_id;
                let mut count = 0;
                for &id in ids {
                    if id == pad {
                        self.position_ids.push(pad);
                    } else {
                        count += 1;
                        self.position_ids.push(pad + count);
                    }
                }
            }
        }
        let end = self.input_ids.len() as i32;
        self.cu_seqlens.push(end);
        self.max_seqlen = self.max_seqlen.max(ids.len());
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of tokens, all sequences together.
    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// The rows of sequence `s`.
    pub fn range(&self, s: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[s] as usize..self.cu_seqlens[s + 1] as usize
    }

    /// Indices as a batch of one-token sequences, sequence s holding `indices[s]` as its id:
    /// how an op that looks rows up by index (cross-attention's image of each pair) gets them
    /// onto the device with the batch's own upload.
    pub fn indices(indices: &[u32]) -> Self {
        let n = indices.len();
        PackedBatch {
            input_ids: indices.to_vec(),
            token_type_ids: vec![0; n],
            position_ids: vec![0; n],
            cu_seqlens: (0..=n as i32).collect(),
            max_seqlen: usize::from(n > 0),
            shared_prefix: 0,
        }
    }
}

/// The shape a batch is laid out in on the device when the forward is replayed from a CUDA
/// graph: a graph fixes every launch's grid and every GEMM's row count, so batches are padded
/// up to a few shapes and each shape's graph serves every batch that fits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchShape {
    /// Rows: the tokens, then padding rows that belong to no sequence.
    pub tokens: usize,
    /// Sequences: the real ones, then empty ones.
    pub seqs: usize,
    /// Longest sequence the attention grid covers: a multiple of 64 (its query tile).
    pub max_seqlen: usize,
}

/// The attention kernel's query tile: grids are counted in these.
const SEQLEN_STEP: usize = 64;

/// `n` rounded up to a step of 1/`parts` of its power-of-two octave, at least `min_step`:
/// at most `parts` shapes per octave, and never more than 2/`parts` of the rows wasted.
fn round_up_in_octave(n: usize, parts: usize, min_step: usize) -> usize {
    let step = (n.max(1).next_power_of_two() / parts).max(min_step);
    n.div_ceil(step) * step
}

impl BatchShape {
    /// The shape a batch of `tokens` tokens in `seqs` sequences, the longest `max_seqlen`, is
    /// padded to: tokens to 1/16 of their octave (at least 64), so that padding rows cost at
    /// most 1/8 of the GEMM work; sequences to 1/4 of theirs (at least 8: an empty sequence
    /// costs almost nothing); the longest sequence to the attention tile. Never beyond the
    /// arena (`max_tokens` rows, `max_seqs` sequences), never below the batch itself.
    pub fn fit(
        tokens: usize,
        seqs: usize,
        max_seqlen: usize,
        max_tokens: usize,
        max_seqs: usize,
    ) -> Self {
        BatchShape {
            tokens: round_up_in_octave(tokens, 16, 64)
                .min(max_tokens)
                .max(tokens),
            seqs: round_up_in_octave(seqs, 4, 8).min(max_seqs).max(seqs),
            max_seqlen: max_seqlen.div_ceil(SEQLEN_STEP) * SEQLEN_STEP,
        }
    }
}

impl PackedBatch {
    /// This batch laid out in `shape`: padding rows get id, type and position 0 (valid entries
    /// of every table, so every row stays finite) and belong to no sequence; the extra
    /// sequences are empty and start at the last token. Rows are computed independently by
    /// every op but attention, which reads only the rows of its sequence: the real rows see
    /// nothing of the padding, and their results are those of the unpadded batch.
    pub fn padded_to(&self, shape: BatchShape) -> PackedBatch {
        let (t, n) = (self.tokens(), self.len());
        let extra = shape.tokens.saturating_sub(t);
        let pad = |v: &[u32]| {
            let mut out = Vec::with_capacity(t + extra);
            out.extend_from_slice(v);
            out.resize(t + extra, 0);
            out
        };
        let mut cu_seqlens = Vec::with_capacity(shape.seqs.max(n) + 1);
        cu_seqlens.extend_from_slice(&self.cu_seqlens);
        cu_seqlens.resize(shape.seqs.max(n) + 1, t as i32);
        PackedBatch {
            input_ids: pad(&self.input_ids),
            token_type_ids: pad(&self.token_type_ids),
            position_ids: pad(&self.position_ids),
            cu_seqlens,
            max_seqlen: shape.max_seqlen.max(self.max_seqlen),
            shared_prefix: self.shared_prefix,
        }
    }

    /// The longest run of ids every sequence starts with, cut so that each sequence keeps at
    /// least one token of its own (its last row feeds the head); 0 with fewer than two
    /// sequences. By ids, after tokenization: BPE may merge across a template's text boundary.
    pub fn common_prefix(&self) -> usize {
        let n = self.len();
        if n < 2 || self.shared_prefix > 0 {
            return 0;
        }
        let seq = |s: usize| &self.input_ids[self.range(s)];
        let first = seq(0);
        let mut p = (1..n).map(|s| seq(s).len()).fold(first.len(), usize::min);
        p = p.saturating_sub(1);
        for s in 1..n {
            let other = seq(s);
            p = first[..p]
                .iter()
                .zip(other)
                .take_while(|(a, b)| a == b)
                .count();
            if p == 0 {
                break;
            }
        }
        p
    }

    /// The same sequences with their common prefix stored once (a causal model's K/V of a
    /// prefix do not depend on what follows): sequence 0 is the prefix, then each sequence's
    /// remaining tokens at their original positions. Its logits are the prefix's (to drop),
    /// then one per original sequence. None when the sequences share no prefix.
    pub fn share_prefix(&self) -> Option<PackedBatch> {
        let p = self.common_prefix();
        if p == 0 {
            return None;
        }
        let n = self.len();
        let mut b = PackedBatch {
            cu_seqlens: vec![0],
            shared_prefix: p,
            ..Default::default()
        };
        let head = self.range(0).start;
        b.input_ids
            .extend_from_slice(&self.input_ids[head..head + p]);
        b.token_type_ids
            .extend_from_slice(&self.token_type_ids[head..head + p]);
        b.position_ids
            .extend_from_slice(&self.position_ids[head..head + p]);
        b.cu_seqlens.push(p as i32);
        b.max_seqlen = p;
        for s in 0..n {
            let r = self.range(s);
            let rest = r.start + p..r.end;
            b.input_ids.extend_from_slice(&self.input_ids[rest.clone()]);
            b.token_type_ids
                .extend_from_slice(&self.token_type_ids[rest.clone()]);
            b.position_ids
                .extend_from_slice(&self.position_ids[rest.clone()]);
            b.cu_seqlens.push(b.input_ids.len() as i32);
            b.max_seqlen = b.max_seqlen.max(rest.len());
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn cfg(arch: &str) -> ModelConfig {
        let v = serde_json::json!({
            "architectures": [arch], "vocab_size": 10, "hidden_size": 4,
            "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8,
            "max_position_embeddings": 20, "pad_token_id": 1, "id2label": {"0": "x"}
        });
        ModelConfig::from_json(&v.to_string()).unwrap()
    }

    fn pair(ids: &[u32]) -> EncodedPair {
        EncodedPair {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            truncated: false,
        }
    }

    #[test]
    fn packs_back_to_back_with_prefix_sums() {
        let pairs = [pair(&[2, 5, 3]), pair(&[2]), pair(&[2, 6, 7, 3])];
        let b = PackedBatch::pack(&pairs, &cfg("BertForSequenceClassification"));
        assert_eq!(b.cu_seqlens, vec![0, 3, 4, 8]);
        assert_eq!((b.len(), b.tokens(), b.max_seqlen), (3, 8, 4));
        assert_eq!(b.position_ids, vec![0, 1, 2, 0, 0, 1, 2, 3]);
        assert_eq!(b.range(2), 4..8);
    }

    #[test]
    fn roberta_positions_skip_padding_tokens() {
        // A literal <pad> (id 1) inside the text sits at padding_idx and is not counted,
        // as transformers' create_position_ids_from_input_ids does.
        let pairs = [pair(&[0, 5, 1, 6, 2]), pair(&[0, 2])];
        let b = PackedBatch::pack(&pairs, &cfg("XLMRobertaForSequenceClassification"));
        assert_eq!(b.position_ids, vec![2, 3, 1, 4, 5, 2, 3]);
    }

    #[test]
    fn shapes_bound_the_padding_and_never_shrink_a_batch() {
        for tokens in (1..20_000).step_by(7) {
            let s = BatchShape::fit(tokens, 100, 200, 16384, 16384);
            if tokens <= 16384 {
                assert!(s.tokens >= tokens && s.tokens <= 16384, "{tokens} -> {s:?}");
                // At most 1/8 of the rows, or 63 rows, are padding.
                assert!(
                    s.tokens - tokens <= (tokens / 8).max(63),
                    "{tokens} -> {s:?}"
                );
            } else {
                assert_eq!(s.tokens, tokens);
            }
        }
        for seqs in 1..600 {
            let s = BatchShape::fit(seqs, seqs, 1, 1 << 20, 512);
            assert!(
                s.seqs >= seqs && (s.seqs <= 512 || s.seqs == seqs),
                "{seqs} -> {s:?}"
            );
            assert!(s.seqs - seqs <= (seqs / 2).max(7), "{seqs} -> {s:?}");
        }
        assert_eq!(
            BatchShape::fit(9000, 100, 190, 16384, 16384).max_seqlen,
            192
        );
        assert_eq!(
            BatchShape::fit(9000, 100, 192, 16384, 16384).max_seqlen,
            192
        );
        assert_eq!(
            BatchShape::fit(9000, 100, 193, 16384, 16384).max_seqlen,
            256
        );
        // Few shapes: one octave of token counts maps to at most 16 shapes.
        let shapes: std::collections::HashSet<_> = (4097..=8192)
            .map(|t| BatchShape::fit(t, 100, 200, 16384, 16384).tokens)
            .collect();
        assert!(shapes.len() <= 16, "{}", shapes.len());
    }

    #[test]
    fn padding_adds_rows_of_no_sequence_and_empty_sequences() {
        let pairs = [pair(&[2, 5, 3]), pair(&[2, 6, 7, 3])];
        let b = PackedBatch::pack(&pairs, &cfg("BertForSequenceClassification"));
        let shape = BatchShape {
            tokens: 10,
            seqs: 4,
            max_seqlen: 64,
        };
        let p = b.padded_to(shape);
        assert_eq!(p.input_ids, vec![2, 5, 3, 2, 6, 7, 3, 0, 0, 0]);
        assert_eq!(p.position_ids, vec![0, 1, 2, 0, 1, 2, 3, 0, 0, 0]);
        assert_eq!(p.token_type_ids.len(), 10);
        assert_eq!(p.cu_seqlens, vec![0, 3, 7, 7, 7]);
        assert_eq!((p.len(), p.tokens(), p.max_seqlen), (4, 10, 64));
        assert_eq!(p.range(1), b.range(1));
        assert!(p.range(3).is_empty());
    }

    fn raw(seqs: &[&[u32]]) -> PackedBatch {
        let mut b = PackedBatch {
            cu_seqlens: vec![0],
            ..Default::default()
        };
        for ids in seqs {
            b.input_ids.extend_from_slice(ids);
            b.token_type_ids.extend(std::iter::repeat_n(0, ids.len()));
            b.position_ids.extend(0..ids.len() as u32);
            b.cu_seqlens.push(b.input_ids.len() as i32);
            b.max_seqlen = b.max_seqlen.max(ids.len());
        }
        b
    }

    /// The shared run stops where any sequence differs, and always leaves every sequence one
    /// token of its own (its last row feeds the head), even when one sequence is a prefix of
    /// another or two are equal; one sequence shares nothing.
    #[test]
    fn common_prefix_leaves_every_sequence_a_token() {
        assert_eq!(raw(&[&[1, 2, 3, 9], &[1, 2, 4, 9]]).common_prefix(), 2);
        assert_eq!(raw(&[&[1, 2, 3], &[1, 2, 3, 4]]).common_prefix(), 2);
        assert_eq!(raw(&[&[5, 6], &[5, 6]]).common_prefix(), 1);
        assert_eq!(raw(&[&[7], &[7, 8]]).common_prefix(), 0);
        assert_eq!(raw(&[&[1, 2, 3]]).common_prefix(), 0);
        assert_eq!(raw(&[&[1, 2], &[3, 2]]).common_prefix(), 0);
        assert!(raw(&[&[1, 2], &[3, 2]]).share_prefix().is_none());
    }

    /// The prefix once as sequence 0, then each sequence's rest at its original positions.
    #[test]
    fn share_prefix_lays_out_the_prefix_then_the_rests() {
        let b = raw(&[&[1, 2, 3, 9], &[1, 2, 4], &[1, 2, 5, 6, 7]]);
        let s = b.share_prefix().unwrap();
        assert_eq!(s.shared_prefix, 2);
        assert_eq!(s.input_ids, [1, 2, 3, 9, 4, 5, 6, 7]);
        assert_eq!(s.position_ids, [0, 1, 2, 3, 2, 2, 3, 4]);
        assert_eq!(s.cu_seqlens, [0, 2, 4, 5, 8]);
        assert_eq!(s.tokens() + 2 * 2, b.tokens());
        assert_eq!(s.common_prefix(), 0, "a shared batch is not shared again");
    }
}
