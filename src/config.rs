//! config.json → a typed config that mirrors Hugging Face's, validated once at load.
//!
//! Everything the forward pass depends on is either honoured or refused here, with one line
//! naming the field and what is supported.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const SUPPORTED_ARCHITECTURES: &str = "BertForSequenceClassification, \
RobertaForSequenceClassification, XLMRobertaForSequenceClassification";

/// The model families crossrank runs. They differ in position ids, token type ids, tensor
/// prefixes and the classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT: positions 0.., token types from the tokenizer, head = pooler(dense+tanh) + classifier.
    Bert,
    /// RoBERTa and XLM-RoBERTa: positions from padding_idx + 1 skipping padding, token types 0,
    /// head = classifier.dense + tanh + classifier.out_proj.
    Roberta,
}

/// The hidden activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu` in transformers: the exact erf form.
    GeluErf,
}

/// What `config.json` says, as transformers reads it. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    pad_token_id: Option<i64>,
    position_embedding_type: Option<String>,
    num_labels: Option<usize>,
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
    is_decoder: Option<bool>,
    add_cross_attention: Option<bool>,
}

/// The validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    /// RoBERTa's padding_idx (pad_token_id); positions start after it.
    pub pad_token_id: u32,
    pub num_labels: usize,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|msg| Error::model(path, msg))
    }

    /// Parses and validates; the error is the message without the file name.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("not a valid config: {e}"))?;

        let architecture = match raw.architectures.as_deref() {
            Some([one]) => one.clone(),
            Some([]) | None => {
                return Err(format!(
                    "field `architectures` is missing (supported: {SUPPORTED_ARCHITECTURES})"
                ))
            }
            Some(many) => {
                return Err(format!(
                    "field `architectures` lists {} architectures, expected one of: {SUPPORTED_ARCHITECTURES}",
                    many.len()
                ))
            }
        };
        let family = match architecture.as_str() {
            "BertForSequenceClassification" => Family::Bert,
            "RobertaForSequenceClassification" | "XLMRobertaForSequenceClassification" => {
                Family::Roberta
            }
            other => {
                return Err(format!(
                    "architecture `{other}` is not supported (supported: {SUPPORTED_ARCHITECTURES})"
                ))
            }
        };

        fn need(v: Option<usize>, field: &str) -> Result<usize, String> {
            match v {
                Some(0) => Err(format!("field `{field}` must be positive, got 0")),
                Some(n) => Ok(n),
                None => Err(format!("field `{field}` is missing")),
            }
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        if hidden_size % num_heads != 0 {
            return Err(format!(
                "field `hidden_size` ({hidden_size}) is not a multiple of `num_attention_heads` ({num_heads})"
            ));
        }
        let activation = match raw.hidden_act.as_deref().unwrap_or("gelu") {
            "gelu" => Activation::GeluErf,
            other => {
                return Err(format!(
                    "field `hidden_act` = \"{other}\" is not supported (supported: gelu)"
                ))
            }
        };
        if let Some(p) = raw.position_embedding_type.as_deref() {
            if p != "absolute" {
                return Err(format!(
                    "field `position_embedding_type` = \"{p}\" is not supported (supported: absolute)"
                ));
            }
        }
        if raw.is_decoder == Some(true) || raw.add_cross_attention == Some(true) {
            return Err(
                "decoder configurations (`is_decoder`, `add_cross_attention`) are not supported"
                    .into(),
            );
        }
        // transformers: num_labels comes from id2label when present, else the field, else 2.
        let num_labels = match (&raw.id2label, raw.num_labels) {
            (Some(map), _) => map.len(),
            (None, Some(n)) => n,
            (None, None) => 2,
        };
        if num_labels != 1 {
            return Err(format!(
                "the model has {num_labels} labels; only single-logit cross-encoders (num_labels = 1) are supported"
            ));
        }
        let pad_token_id = match (family, raw.pad_token_id) {
            (_, Some(p)) if p >= 0 => p as u32,
            (Family::Bert, _) => 0,
            (Family::Roberta, _) => {
                return Err(
                    "field `pad_token_id` is missing or negative; RoBERTa positions need it".into(),
                )
            }
        };
        let max_position_embeddings = need(raw.max_position_embeddings, "max_position_embeddings")?;
        let layer_norm_eps = raw.layer_norm_eps.unwrap_or(1e-12);
        if !(layer_norm_eps > 0.0 && layer_norm_eps < 1.0) {
            return Err(format!(
                "field `layer_norm_eps` = {layer_norm_eps} is out of range"
            ));
        }
        let cfg = ModelConfig {
            architecture,
            family,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            head_dim: hidden_size / num_heads,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            activation,
            max_position_embeddings,
            type_vocab_size: need(raw.type_vocab_size.or(Some(2)), "type_vocab_size")?,
            layer_norm_eps: layer_norm_eps as f32,
            pad_token_id,
            num_labels,
        };
        if cfg.max_positions() == 0 {
            return Err(format!(
                "field `max_position_embeddings` ({max_position_embeddings}) leaves no positions after padding_idx {pad_token_id}"
            ));
        }
        let _ = raw.model_type;
        Ok(cfg)
    }

    /// The longest sequence the position table allows: RoBERTa's positions start at
    /// padding_idx + 1, so that many rows are unusable.
    pub fn max_positions(&self) -> usize {
        match self.family {
            Family::Bert => self.max_position_embeddings,
            Family::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
        }
    }

    /// Whether token type ids from the tokenizer reach the model. transformers' RoBERTa
    /// tokenizers return none, so the model sees zeros; a single-row table means zeros too.
    pub fn uses_token_types(&self) -> bool {
        self.family == Family::Bert && self.type_vocab_size > 1
    }

    /// Parameters, counted as transformers counts them for the loaded modules.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let emb =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h;
        let head = h * h + h + h * self.num_labels + self.num_labels;
        emb + self.num_layers * layer + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bert() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["BertForSequenceClassification"],
            "model_type": "bert",
            "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 80, "hidden_act": "gelu",
            "max_position_embeddings": 48, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "pad_token_id": 0, "id2label": {"0": "LABEL_0"}
        })
    }

    fn refuse(v: serde_json::Value) -> String {
        ModelConfig::from_json(&v.to_string()).unwrap_err()
    }

    #[test]
    fn bert_config_is_honoured() {
        let c = ModelConfig::from_json(&bert().to_string()).unwrap();
        assert_eq!(
            (c.family, c.head_dim, c.intermediate_size),
            (Family::Bert, 16, 80)
        );
        assert_eq!(c.max_positions(), 48);
        assert!(c.uses_token_types());
    }

    #[test]
    fn roberta_positions_skip_padding_idx() {
        let mut v = bert();
        v["architectures"] = serde_json::json!(["XLMRobertaForSequenceClassification"]);
        v["pad_token_id"] = 1.into();
        v["max_position_embeddings"] = 514.into();
        v["type_vocab_size"] = 1.into();
        let c = ModelConfig::from_json(&v.to_string()).unwrap();
        assert_eq!((c.family, c.max_positions()), (Family::Roberta, 512));
        assert!(!c.uses_token_types());
    }

    #[test]
    fn refusals_name_the_field() {
        let mut v = bert();
        v["architectures"] = serde_json::json!(["T5ForConditionalGeneration"]);
        let e = refuse(v);
        assert!(
            e.contains("T5ForConditionalGeneration") && e.contains(SUPPORTED_ARCHITECTURES),
            "{e}"
        );

        let mut v = bert();
        v["hidden_act"] = "relu".into();
        assert!(refuse(v).contains("`hidden_act` = \"relu\" is not supported"));

        let mut v = bert();
        v["id2label"] = serde_json::json!({"0": "a", "1": "b"});
        assert!(refuse(v).contains("2 labels"));

        let mut v = bert();
        v.as_object_mut().unwrap().remove("id2label");
        assert!(
            refuse(v).contains("2 labels"),
            "transformers defaults num_labels to 2"
        );

        let mut v = bert();
        v["num_attention_heads"] = 3.into();
        assert!(refuse(v).contains("not a multiple of `num_attention_heads`"));

        let mut v = bert();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(refuse(v).contains("`hidden_size` is missing"));

        let mut v = bert();
        v["position_embedding_type"] = "relative_key".into();
        assert!(refuse(v).contains("position_embedding_type"));

        assert!(ModelConfig::from_json("{")
            .unwrap_err()
            .contains("not a valid config"));
    }
}
