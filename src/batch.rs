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
            Family::Bert => self.position_ids.extend(0..ids.len() as u32),
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
}
