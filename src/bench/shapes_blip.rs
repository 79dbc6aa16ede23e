//! The image-text shapes of `crossrank bench`: `blip-itm-base` and `tiny-blip`, as transformers'
//! `BlipForImageTextRetrieval` writes them (config.json with `text_config` and `vision_config`,
//! preprocessor_config.json for `BlipImageProcessor`, model.safetensors in f16 under the hub's
//! tensor names).
//!
//! blip-itm-base is Salesforce/blip-itm-base-coco's config: vision a ViT-B/16 at 384 x 384 (12
//! layers x 768, 12 heads, MLP 3072, LayerNorm eps 1e-5: 577 rows per image), text BERT-base
//! (12 x 768, 12 heads, FFN 3072, a 30524-row table, 512 positions) with cross-attention to the
//! image rows in every layer, the ITM head Linear(768, 2), and the contrastive projections
//! `vision_proj` / `text_proj` (256 wide) that crossrank does not read but transformers loads.
//! Its image processor: 384 x 384, bicubic, rescale 1/255, OpenAI CLIP's mean and std.
//!
//! The tokenizer is all-MiniLM-L6-v2's BERT WordPiece (the one the other BERT shapes use), not
//! BLIP's own: BLIP's is bert-base-uncased's WordPiece plus `[DEC]` and `[ENC]` (ids 30522 and
//! 30523, which the ITM score does not use), a vocabulary of the same kind, and every id of
//! MiniLM's falls inside the 30524-row table.
//!
//! tiny-blip is the same architecture at a test size (vision 2 x 32 at 64 x 64 in 16 x 16
//! patches, text 2 x 32, the given tokenizer's vocabulary): seconds on a CPU.
//!
//! Weights follow the other shapes' rule (shapes.rs): every Linear, Conv2d and embedding
//! (the class token and position table included) uniform with standard deviation 0.02, biases
//! too, LayerNorm γ = 1 + U(σ 0.02), β = U(σ 0.02), each from `Rng::for_name(seed, name)`.

use serde_json::json;

use super::shapes::Dims;

/// The vision tower of a BLIP shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionDims {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// The square input's side in pixels.
    pub image_size: usize,
    pub patch: usize,
}

/// BLIP's contrastive projections' width (`image_text_hidden_size`).
const PROJECTION: usize = 256;

/// Salesforce/blip-itm-base-coco's vision tower.
pub const BASE_VISION: VisionDims = VisionDims {
    layers: 12,
    hidden: 768,
    heads: 12,
    intermediate: 3072,
    image_size: 384,
    patch: 16,
};

/// tiny-blip's vision tower.
pub const TINY_VISION: VisionDims = VisionDims {
    layers: 2,
    hidden: 32,
    heads: 2,
    intermediate: 64,
    image_size: 64,
    patch: 16,
};

/// config.json as transformers writes it for `BlipForImageTextRetrieval`.
pub fn config_json(name: &str, d: &Dims, v: &VisionDims, vocab: usize) -> serde_json::Value {
    // [DEC], BLIP's decoder start: none in a smaller vocabulary (tiny-blip's).
    let bos = (vocab > 30522).then_some(30522);
    json!({
        "architectures": ["BlipForImageTextRetrieval"], "model_type": "blip",
        "image_text_hidden_size": PROJECTION, "projection_dim": 512,
        "initializer_factor": 1.0, "initializer_range": 0.02, "label_smoothing": 0.0,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "blip_text_model", "vocab_size": vocab, "hidden_size": d.hidden,
            "encoder_hidden_size": v.hidden, "intermediate_size": d.intermediate,
            "num_hidden_layers": d.layers, "num_attention_heads": d.heads,
            "max_position_embeddings": d.positions, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "pad_token_id": 0, "bos_token_id": bos, "eos_token_id": 2, "sep_token_id": 102,
            "is_decoder": true, "use_cache": true, "projection_dim": 768
        },
        "vision_config": {
            "model_type": "blip_vision_model", "hidden_size": v.hidden,
            "intermediate_size": v.intermediate, "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads, "image_size": v.image_size,
            "patch_size": v.patch, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0, "initializer_range": 1e-10, "projection_dim": 512
        },
        "dtype": "float16", "crossrank_shape": name
    })
}

/// preprocessor_config.json: `BlipImageProcessor` at the tower's input size.
pub fn preprocessor_json(v: &VisionDims) -> serde_json::Value {
    json!({
        "image_processor_type": "BlipImageProcessor", "do_convert_rgb": true,
        "do_resize": true, "size": {"height": v.image_size, "width": v.image_size},
        "resample": 3, "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]
    })
}

/// Every tensor of the checkpoint: hub name, shape, and whether it is a LayerNorm γ (1 + U).
pub fn tensor_list(d: &Dims, v: &VisionDims, vocab: usize) -> Vec<(String, Vec<usize>, bool)> {
    let (h, i, vh, vi, p) = (d.hidden, d.intermediate, v.hidden, v.intermediate, v.patch);
    let mut t: Vec<(String, Vec<usize>, bool)> = Vec::new();
    let lin = |t: &mut Vec<(String, Vec<usize>, bool)>, name: &str, out: usize, inp: usize| {
        t.push((format!("{name}.weight"), vec![out, inp], false));
        t.push((format!("{name}.bias"), vec![out], false));
    };
    let norm = |t: &mut Vec<(String, Vec<usize>, bool)>, name: &str, width: usize| {
        t.push((format!("{name}.weight"), vec![width], true));
        t.push((format!("{name}.bias"), vec![width], false));
    };
    let e = "vision_model.embeddings";
    let rows = (v.image_size / p).pow(2) + 1;
    t.push((format!("{e}.class_embedding"), vec![1, 1, vh], false));
    t.push((
        format!("{e}.patch_embedding.weight"),
        vec![vh, 3, p, p],
        false,
    ));
    t.push((format!("{e}.patch_embedding.bias"), vec![vh], false));
    t.push((format!("{e}.position_embedding"), vec![1, rows, vh], false));
    for l in 0..v.layers {
        let s = format!("vision_model.encoder.layers.{l}");
        norm(&mut t, &format!("{s}.layer_norm1"), vh);
        lin(&mut t, &format!("{s}.self_attn.qkv"), 3 * vh, vh);
        lin(&mut t, &format!("{s}.self_attn.projection"), vh, vh);
        norm(&mut t, &format!("{s}.layer_norm2"), vh);
        lin(&mut t, &format!("{s}.mlp.fc1"), vi, vh);
        lin(&mut t, &format!("{s}.mlp.fc2"), vh, vi);
    }
    norm(&mut t, "vision_model.post_layernorm", vh);
    let te = "text_encoder.embeddings";
    t.push((
        format!("{te}.word_embeddings.weight"),
        vec![vocab, h],
        false,
    ));
    t.push((
        format!("{te}.position_embeddings.weight"),
        vec![d.positions, h],
        false,
    ));
    norm(&mut t, &format!("{te}.LayerNorm"), h);
    for l in 0..d.layers {
        let s = format!("text_encoder.encoder.layer.{l}");
        for (block, kv_in) in [("attention", h), ("crossattention", vh)] {
            lin(&mut t, &format!("{s}.{block}.self.query"), h, h);
            lin(&mut t, &format!("{s}.{block}.self.key"), h, kv_in);
            lin(&mut t, &format!("{s}.{block}.self.value"), h, kv_in);
            lin(&mut t, &format!("{s}.{block}.output.dense"), h, h);
            norm(&mut t, &format!("{s}.{block}.output.LayerNorm"), h);
        }
        lin(&mut t, &format!("{s}.intermediate.dense"), i, h);
        lin(&mut t, &format!("{s}.output.dense"), h, i);
        norm(&mut t, &format!("{s}.output.LayerNorm"), h);
    }
    lin(&mut t, "vision_proj", PROJECTION, vh);
    lin(&mut t, "text_proj", PROJECTION, h);
    lin(&mut t, "itm_head", 2, h);
    t
}
