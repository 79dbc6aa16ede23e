//! The decoder LLM reranker shape of `crossrank bench`: `qwen3-reranker-0.6b`, Qwen3-Reranker-0.6B's
//! config as published (28 layers × 1024, 16 query and 8 K/V heads of 128, SwiGLU 3072, RoPE
//! theta 1e6, RMSNorm eps 1e-6, tied embeddings, a 151936-row table, 40960 positions), seeded
//! weights in bf16 (the dtype it ships in), and a synthetic byte-level BPE tokenizer of the real
//! tokenizer's size.
//!
//! The tokenizer: no Qwen tokenizer.json ships in a package we can install, so it is made here
//! with Qwen2's pre-tokenizer (its split regex, then byte-level), NFC, the byte-level decoder, and
//! 151643 BPE tokens (the 256 bytes, then every workload word built left to right by merges, with
//! and without its leading space, then pseudo-words) followed by Qwen's 26 added tokens at their
//! ids (`<|endoftext|>` 151643, `<|im_start|>` 151644, `<|im_end|>` 151645, `<think>` 151667,
//! `</think>` 151668; the others as placeholders): 151669 in all, as the real one. Token counts
//! per word and tokenization speed are of the same kind as the real BPE's, not the same numbers.

use std::collections::HashSet;

use serde_json::json;

use super::shapes::Dims;
use super::workload::vocabulary_words;
use super::Rng;
use crate::error::{Error, Result};

/// Regular BPE tokens of Qwen2's and Qwen3's tokenizer; the added tokens follow.
pub const BPE_TOKENS: usize = 151_643;
/// Qwen's added (special) tokens, from id BPE_TOKENS on.
pub const ADDED_TOKENS: usize = 26;

/// config.json as transformers writes it for the shape.
pub fn config_json(name: &str, d: &Dims, vocab: usize) -> serde_json::Value {
    let (layers, hidden, heads, kv_heads) = (d.layers, d.hidden, d.heads, d.kv_heads);
    let (head_dim, intermediate, positions) = (d.head_dim, d.intermediate, d.positions);
    json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "intermediate_size": intermediate, "hidden_act": "silu", "vocab_size": vocab,
        "max_position_embeddings": positions, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 1_000_000.0, "rope_type": "default"},
        "attention_bias": false, "attention_dropout": 0.0, "tie_word_embeddings": true,
        "use_sliding_window": false, "sliding_window": null, "max_window_layers": layers,
        "layer_types": vec!["full_attention"; layers],
        "bos_token_id": 151_643, "eos_token_id": 151_645, "pad_token_id": null,
        "initializer_range": 0.02, "dtype": "bfloat16", "crossrank_shape": name
    })
}

/// tokenizer_config.json: the class transformers 5 builds Qwen's tokenizer with.
pub fn tokenizer_config(positions: usize) -> serde_json::Value {
    json!({
        "add_prefix_space": false, "backend": "tokenizers", "bos_token": null,
        "clean_up_tokenization_spaces": false, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": positions, "pad_token": "<|endoftext|>",
        "split_special_tokens": false, "tokenizer_class": "Qwen2Tokenizer", "unk_token": null
    })
}

/// GPT-2's byte-to-character table, which byte-level BPE spells its tokens in: printable bytes
/// stand for themselves, the others for 256 + their rank.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// The synthetic byte-level BPE tokenizer.json (module comment).
pub fn synthetic_byte_bpe() -> Result<String> {
    let table = byte_chars();
    let spell =
        |s: &str| -> Vec<String> { s.bytes().map(|b| table[b as usize].to_string()).collect() };
    let mut vocab: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let mut seen: HashSet<String> = vocab.iter().cloned().collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    // A word becomes one token by merging its pieces left to right; every prefix on the way is
    // a token of its own.
    let mut add_word = |vocab: &mut Vec<String>, merges: &mut Vec<(String, String)>, word: &str| {
        let pieces = spell(word);
        let mut acc = match pieces.first() {
            Some(p) => p.clone(),
            None => return,
        };
        for p in &pieces[1..] {
            if vocab.len() >= BPE_TOKENS {
                return;
            }
            let next = format!("{acc}{p}");
            if seen.insert(next.clone()) {
                merges.push((acc.clone(), p.clone()));
                vocab.push(next.clone());
            }
            acc = next;
        }
    };
    // The label tokens and the template's words first, then the workload's words.
    let template = "yes no Judge whether the Document meets requirements based on Query and \
                    Instruct provided Note that answer can only be system user assistant Given \
                    a web search query retrieve relevant passages";
    for w in template.split_whitespace().chain(vocabulary_words()) {
        for form in [w.to_string(), format!(" {w}")] {
            add_word(&mut vocab, &mut merges, &form);
        }
    }
    // Pseudo-words up to the real size, from a seeded stream of syllables.
    const SYL: [&str; 16] = [
        "ka", "ri", "to", "me", "su", "lan", "dor", "vi", "ne", "po", "ga", "shi", "ur", "el",
        "mon", "te",
    ];
    let mut rng = Rng::for_name(0, "qwen pseudo-words");
    let mut guard = 0usize;
    while vocab.len() < BPE_TOKENS {
        let n = 2 + (rng.next_u64() % 4) as usize;
        let w: String = (0..n)
            .map(|_| SYL[(rng.next_u64() % 16) as usize])
            .collect();
        let space = rng.next_u64().is_multiple_of(2);
        add_word(
            &mut vocab,
            &mut merges,
            &if space { format!(" {w}") } else { w },
        );
        guard += 1;
        if guard > 50 * BPE_TOKENS {
            return Err(Error::Internal(
                "the synthetic BPE vocabulary did not fill".into(),
            ));
        }
    }
    let vocab_json: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let named = [
        (0, "<|endoftext|>"),
        (1, "<|im_start|>"),
        (2, "<|im_end|>"),
        (24, "<think>"),
        (25, "</think>"),
    ];
    let added: Vec<serde_json::Value> = (0..ADDED_TOKENS)
        .map(|k| {
            let content = named
                .iter()
                .find(|(i, _)| *i == k)
                .map_or_else(|| format!("<|reserved_{k}|>"), |(_, s)| s.to_string());
            json!({"id": BPE_TOKENS + k, "content": content, "single_word": false,
                   "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab_json,
            "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
    });
    serde_json::to_string(&tok).map_err(|e| Error::Internal(e.to_string()))
}

/// Every tensor of the checkpoint under the hub's names: (name, shape, whether it is a norm
/// weight, drawn around 1).
pub fn tensor_list(dims: &Dims, vocab: usize) -> Vec<(String, Vec<usize>, bool)> {
    let (h, d, i) = (dims.hidden, dims.head_dim, dims.intermediate);
    let (layers, heads, kv_heads) = (dims.layers, dims.heads, dims.kv_heads);
    let w = |name: String, shape: Vec<usize>| (format!("{name}.weight"), shape, false);
    let norm = |name: String, n: usize| (format!("{name}.weight"), vec![n], true);
    let mut t = vec![w("model.embed_tokens".into(), vec![vocab, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        t.push(norm(format!("{p}.input_layernorm"), h));
        t.push(w(format!("{a}.q_proj"), vec![heads * d, h]));
        t.push(w(format!("{a}.k_proj"), vec![kv_heads * d, h]));
        t.push(w(format!("{a}.v_proj"), vec![kv_heads * d, h]));
        t.push(w(format!("{a}.o_proj"), vec![h, heads * d]));
        t.push(norm(format!("{a}.q_norm"), d));
        t.push(norm(format!("{a}.k_norm"), d));
        t.push(norm(format!("{p}.post_attention_layernorm"), h));
        t.push(w(format!("{p}.mlp.gate_proj"), vec![i, h]));
        t.push(w(format!("{p}.mlp.up_proj"), vec![i, h]));
        t.push(w(format!("{p}.mlp.down_proj"), vec![h, i]));
    }
    t.push(norm("model.norm".into(), h));
    t
}
