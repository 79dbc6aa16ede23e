//! config.json → a typed config that mirrors Hugging Face's, validated once at load.
//!
//! Everything the forward pass depends on is either honoured or refused here, with one line
//! naming the field and what is supported.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const SUPPORTED_ARCHITECTURES: &str = "BertForSequenceClassification, \
RobertaForSequenceClassification, XLMRobertaForSequenceClassification, \
ModernBertForSequenceClassification, Qwen3ForCausalLM and Qwen2ForCausalLM (LLM rerankers), \
BlipForImageTextRetrieval (images)";

/// The model families crossrank runs. They differ in position ids, token type ids, tensor
/// prefixes and the classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT: positions 0.., token types from the tokenizer, head = pooler(dense+tanh) + classifier.
    Bert,
    /// RoBERTa and XLM-RoBERTa: positions from padding_idx + 1 skipping padding, token types 0,
    /// head = classifier.dense + tanh + classifier.out_proj.
    Roberta,
    /// ModernBERT: RoPE instead of a position table, pre-norm blocks, full and sliding-window
    /// layers, GeGLU, head = pooling (cls or mean) + dense + act + LayerNorm + classifier.
    /// Its own settings are in [`ModelConfig::modernbert`].
    ModernBert,
    /// Decoder LLM rerankers (Qwen3-Reranker, mxbai-rerank-v2 on Qwen2): RMSNorm pre-norm
    /// blocks, RoPE, grouped-query causal attention, SwiGLU, scored from the yes / no logits of
    /// the last position. Its own settings are in [`ModelConfig::qwen`].
    Qwen,
    /// BLIP's image-text matching model: a ViT over the image and a BERT text encoder whose
    /// layers cross-attend to the image rows, scored from the ITM head on the text [CLS] row.
    /// The text encoder's settings are the shared fields; the vision tower's are in
    /// [`ModelConfig::blip`].
    Blip,
}

/// The hidden activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu` in transformers: the exact erf form.
    GeluErf,
    /// `silu` (x · sigmoid(x)): the gate of Qwen's SwiGLU.
    Silu,
}

/// What a Qwen2 / Qwen3 causal-LM config says beyond the shared fields, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenConfig {
    /// Qwen3 (per-head RMSNorm on Q and K, no QKV bias by default) or Qwen2 (QKV bias).
    pub qwen3: bool,
    pub num_kv_heads: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f32,
    /// Bias on the Q, K and V projections (Qwen2 always; Qwen3 when `attention_bias`).
    pub qkv_bias: bool,
    /// The LM head is the embedding table (`tie_word_embeddings`).
    pub tied_embeddings: bool,
}

impl QwenConfig {
    /// The whole validated config of a Qwen2 / Qwen3 causal LM.
    fn config(architecture: String, v: &serde_json::Value) -> Result<ModelConfig, String> {
        use serde_json::Value;
        let qwen3 = architecture == "Qwen3ForCausalLM";
        let uint = |name: &str| -> Result<Option<usize>, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => match x.as_u64() {
                    Some(0) => Err(format!("field `{name}` must be positive, got 0")),
                    Some(n) => Ok(Some(n as usize)),
                    None => Err(format!("field `{name}` = {x} is not a positive integer")),
                },
            }
        };
        let need = |name: &str| uint(name)?.ok_or_else(|| format!("field `{name}` is missing"));
        let flag = |name: &str, default: bool| -> Result<bool, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(x) => Err(format!("field `{name}` = {x} is not a boolean")),
            }
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let num_kv_heads = uint("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(format!(
                "field `num_attention_heads` ({num_heads}) is not a multiple of `num_key_value_heads` ({num_kv_heads})"
            ));
        }
        // Qwen3 states head_dim (128 on the 0.6B model, whose hidden / heads is 64).
        let head_dim = uint("head_dim")?.unwrap_or(hidden_size / num_heads);
        if !head_dim.is_multiple_of(2) {
            return Err(format!(
                "field `head_dim` = {head_dim} is not even (RoPE pairs)"
            ));
        }
        match v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu")
        {
            "silu" => {}
            other => {
                return Err(format!(
                    "field `hidden_act` = \"{other}\" is not supported (supported: silu)"
                ))
            }
        }
        // transformers 5: rope_parameters; older configs: rope_theta and rope_scaling.
        let mut rope_theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        if let Some(x) = v.get("rope_scaling").filter(|x| !x.is_null()) {
            return Err(format!(
                "field `rope_scaling` = {x} is not supported (only default RoPE)"
            ));
        }
        if let Some(p) = v.get("rope_parameters").filter(|x| !x.is_null()) {
            let kind = p
                .get("rope_type")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(format!(
                    "field `rope_parameters.rope_type` = \"{kind}\" is not supported (supported: default)"
                ));
            }
            match p.get("rope_theta").and_then(Value::as_f64) {
                Some(t) if t > 0.0 => rope_theta = t,
                _ => {
                    return Err(
                        "field `rope_parameters.rope_theta` is missing or not positive".into(),
                    )
                }
            }
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(format!("field `rope_theta` = {rope_theta} is not positive"));
        }
        if flag("use_sliding_window", false)? {
            return Err(
                "field `use_sliding_window` = true is not supported (full causal attention only)"
                    .into(),
            );
        }
        if let Some(Value::Array(types)) = v.get("layer_types") {
            if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                return Err(format!(
                    "field `layer_types` has layer type {t}, which is not supported (supported: full_attention)"
                ));
            }
        }
        let rms_norm_eps = v
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(format!(
                "field `rms_norm_eps` = {rms_norm_eps} is out of range"
            ));
        }
        let qwen = QwenConfig {
            qwen3,
            num_kv_heads,
            rope_theta,
            rms_norm_eps: rms_norm_eps as f32,
            qkv_bias: if qwen3 {
                flag("attention_bias", false)?
            } else {
                true
            },
            tied_embeddings: flag("tie_word_embeddings", false)?,
        };
        Ok(ModelConfig {
            architecture,
            family: Family::Qwen,
            vocab_size: need("vocab_size")?,
            hidden_size,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            head_dim,
            intermediate_size: need("intermediate_size")?,
            activation: Activation::Silu,
            max_position_embeddings: need("max_position_embeddings")?,
            type_vocab_size: 1,
            layer_norm_eps: qwen.rms_norm_eps,
            pad_token_id: 0,
            num_labels: 1,
            modernbert: None,
            qwen: Some(qwen),
            blip: None,
        })
    }
}

/// BLIP's vision tower (transformers' `BlipVisionConfig`), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BlipVisionConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    /// The square input's side in pixels.
    pub image_size: usize,
    /// The square patch's side; `image_size` is a multiple of it.
    pub patch_size: usize,
    pub layer_norm_eps: f32,
}

impl BlipVisionConfig {
    /// Patches per image.
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Rows per image through the tower: the class token, then the patches.
    pub fn rows_per_image(&self) -> usize {
        self.patches() + 1
    }

    /// Values per preprocessed image: 3 channels of image_size².
    pub fn pixels_per_image(&self) -> usize {
        3 * self.image_size * self.image_size
    }
}

/// `BlipForImageTextRetrieval`: the text encoder as the shared fields, the vision tower as
/// [`BlipVisionConfig`]. Absent fields take transformers' defaults (`BlipTextConfig`,
/// `BlipVisionConfig`).
fn blip_config(architecture: String, v: &serde_json::Value) -> Result<ModelConfig, String> {
    use serde_json::Value;
    let section = |name: &str| -> Result<&serde_json::Map<String, Value>, String> {
        match v.get(name) {
            Some(Value::Object(m)) => Ok(m),
            None | Some(Value::Null) => Err(format!("field `{name}` is missing")),
            Some(x) => Err(format!("field `{name}` = {x} is not an object")),
        }
    };
    let (text, vision) = (section("text_config")?, section("vision_config")?);
    let uint = |m: &serde_json::Map<String, Value>, sec: &str, name: &str, default: usize| match m
        .get(name)
    {
        None | Some(Value::Null) => Ok(default),
        Some(x) => match x.as_u64() {
            Some(0) => Err(format!("field `{sec}.{name}` must be positive, got 0")),
            Some(n) => Ok(n as usize),
            None => Err(format!(
                "field `{sec}.{name}` = {x} is not a positive integer"
            )),
        },
    };
    // image_size and patch_size may be an int or a [height, width] pair; only squares here.
    let side = |name: &str, default: usize| -> Result<usize, String> {
        match vision.get(name) {
            Some(Value::Array(a)) => match a.as_slice() {
                [h, w] if h == w => uint(
                    &serde_json::Map::from_iter([(name.to_string(), h.clone())]),
                    "vision_config",
                    name,
                    default,
                ),
                _ => Err(format!(
                    "field `vision_config.{name}` = {} is not supported (square only)",
                    Value::Array(a.clone())
                )),
            },
            _ => uint(vision, "vision_config", name, default),
        }
    };
    let eps = |m: &serde_json::Map<String, Value>, sec: &str, default: f64| {
        let e = m
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(default);
        if e > 0.0 && e < 1.0 {
            Ok(e as f32)
        } else {
            Err(format!(
                "field `{sec}.layer_norm_eps` = {e} is out of range"
            ))
        }
    };
    let gelu = |m: &serde_json::Map<String, Value>, sec: &str| match m
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu")
    {
        "gelu" => Ok(()),
        other => Err(format!(
            "field `{sec}.hidden_act` = \"{other}\" is not supported (supported: gelu)"
        )),
    };
    gelu(text, "text_config")?;
    gelu(vision, "vision_config")?;
    let heads_of = |hidden: usize, heads: usize, sec: &str| {
        if hidden.is_multiple_of(heads) {
            Ok(hidden / heads)
        } else {
            Err(format!(
                "field `{sec}.hidden_size` ({hidden}) is not a multiple of `num_attention_heads` ({heads})"
            ))
        }
    };
    let vh = uint(vision, "vision_config", "hidden_size", 768)?;
    let vheads = uint(vision, "vision_config", "num_attention_heads", 12)?;
    let image_size = side("image_size", 384)?;
    let patch_size = side("patch_size", 16)?;
    if !image_size.is_multiple_of(patch_size) {
        return Err(format!(
            "field `vision_config.image_size` ({image_size}) is not a multiple of `patch_size` ({patch_size})"
        ));
    }
    let vision_cfg = BlipVisionConfig {
        hidden_size: vh,
        num_layers: uint(vision, "vision_config", "num_hidden_layers", 12)?,
        num_heads: vheads,
        head_dim: heads_of(vh, vheads, "vision_config")?,
        intermediate_size: uint(vision, "vision_config", "intermediate_size", 3072)?,
        image_size,
        patch_size,
        layer_norm_eps: eps(vision, "vision_config", 1e-5)?,
    };
    let th = uint(text, "text_config", "hidden_size", 768)?;
    let theads = uint(text, "text_config", "num_attention_heads", 8)?;
    // BlipConfig sets the text tower's encoder_hidden_size to the vision width.
    let enc = uint(text, "text_config", "encoder_hidden_size", vh)?;
    if enc != vh {
        return Err(format!(
            "field `text_config.encoder_hidden_size` ({enc}) differs from `vision_config.hidden_size` ({vh})"
        ));
    }
    if let Some(p) = text
        .get("position_embedding_type")
        .and_then(Value::as_str)
        .filter(|p| *p != "absolute")
    {
        return Err(format!(
            "field `text_config.position_embedding_type` = \"{p}\" is not supported (supported: absolute)"
        ));
    }
    let pad = text
        .get("pad_token_id")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    Ok(ModelConfig {
        architecture,
        family: Family::Blip,
        vocab_size: uint(text, "text_config", "vocab_size", 30524)?,
        hidden_size: th,
        num_layers: uint(text, "text_config", "num_hidden_layers", 12)?,
        num_heads: theads,
        head_dim: heads_of(th, theads, "text_config")?,
        intermediate_size: uint(text, "text_config", "intermediate_size", 3072)?,
        activation: Activation::GeluErf,
        max_position_embeddings: uint(text, "text_config", "max_position_embeddings", 512)?,
        type_vocab_size: 1,
        layer_norm_eps: eps(text, "text_config", 1e-12)?,
        pad_token_id: pad,
        num_labels: 1,
        modernbert: None,
        qwen: None,
        blip: Some(vision_cfg),
    })
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
    hidden_activation: Option<String>,
    norm_eps: Option<f64>,
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
    /// The ModernBERT family's own settings; `Some` exactly when `family` is ModernBert.
    pub modernbert: Option<ModernBertConfig>,
    /// The Qwen family's own settings; `Some` exactly when `family` is Qwen.
    pub qwen: Option<QwenConfig>,
    /// BLIP's vision tower; `Some` exactly when `family` is Blip.
    pub blip: Option<BlipVisionConfig>,
}

/// Which attention a ModernBERT layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// `full_attention`: every token of the pair.
    Full,
    /// `sliding_attention`: keys within `local_attention / 2` positions of the query.
    Sliding,
}

/// How the ModernBERT head pools the final hidden states of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first ([CLS]) row.
    Cls,
    /// The mean over the pair's tokens.
    Mean,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

/// What a ModernBERT config says beyond the shared fields, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModernBertConfig {
    /// One per layer.
    pub layer_types: Vec<LayerType>,
    /// RoPE base of the full-attention layers.
    pub rope_theta_full: f64,
    /// RoPE base of the sliding-window layers.
    pub rope_theta_sliding: f64,
    /// `local_attention`: the window's full width; a query sees keys at most half of it away.
    pub local_attention: usize,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub classifier_bias: bool,
    pub classifier_activation: Activation,
    pub classifier_pooling: Pooling,
}

impl ModernBertConfig {
    /// The most positions a sliding-window query looks away on either side.
    pub fn half_window(&self) -> usize {
        self.local_attention / 2
    }

    /// The RoPE base of a layer of this type.
    pub fn rope_theta(&self, t: LayerType) -> f64 {
        match t {
            LayerType::Full => self.rope_theta_full,
            LayerType::Sliding => self.rope_theta_sliding,
        }
    }

    /// Reads the family's fields as transformers 5 does (`layer_types`, `rope_parameters`),
    /// and the older form the hub configs carry (`global_attn_every_n_layers`,
    /// `global_rope_theta`, `local_rope_theta`).
    fn from_value(v: &serde_json::Value, layers: usize) -> Result<Self, String> {
        use serde_json::Value;
        let bool_field = |name: &str| -> Result<bool, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(format!("field `{name}` = {other} is not a boolean")),
            }
        };
        let uint = |name: &str, default: u64| -> Result<u64, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .ok_or_else(|| format!("field `{name}` = {x} is not a non-negative integer")),
            }
        };
        let float = |name: &str, default: f64| -> Result<f64, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|t| *t > 0.0)
                    .ok_or_else(|| format!("field `{name}` = {x} is not a positive number")),
            }
        };
        let gelu = |name: &str| -> Result<Activation, String> {
            match v.get(name).and_then(Value::as_str).unwrap_or("gelu") {
                "gelu" => Ok(Activation::GeluErf),
                other => Err(format!(
                    "field `{name}` = \"{other}\" is not supported (supported: gelu)"
                )),
            }
        };
        let layer_types = match v.get("layer_types") {
            None | Some(Value::Null) => {
                let every = uint("global_attn_every_n_layers", 3)? as usize;
                if every == 0 {
                    return Err("field `global_attn_every_n_layers` must be positive, got 0".into());
                }
                (0..layers)
                    .map(|i| {
                        if i % every == 0 {
                            LayerType::Full
                        } else {
                            LayerType::Sliding
                        }
                    })
                    .collect()
            }
            Some(Value::Array(list)) => {
                if list.len() != layers {
                    return Err(format!(
                        "field `layer_types` lists {} layers, `num_hidden_layers` is {layers}",
                        list.len()
                    ));
                }
                list.iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(LayerType::Full),
                        Some("sliding_attention") => Ok(LayerType::Sliding),
                        _ => Err(format!(
                            "field `layer_types` has layer type {t}, which is not supported (supported: full_attention, sliding_attention)"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(other) => return Err(format!("field `layer_types` = {other} is not a list")),
        };
        // transformers 5: rope_parameters keyed by layer type; older configs: two thetas.
        let (mut full, mut sliding) = (
            float("global_rope_theta", 160_000.0)?,
            float("local_rope_theta", 10_000.0)?,
        );
        if let Some(x) = v.get("rope_scaling").filter(|x| !x.is_null()) {
            return Err(format!(
                "field `rope_scaling` = {x} is not supported (only default RoPE)"
            ));
        }
        match v.get("rope_parameters") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, p) in map {
                    let slot = match key.as_str() {
                        "full_attention" => &mut full,
                        "sliding_attention" => &mut sliding,
                        other => {
                            return Err(format!(
                                "field `rope_parameters` has layer type `{other}`, which is not supported (supported: full_attention, sliding_attention)"
                            ))
                        }
                    };
                    let kind = p
                        .get("rope_type")
                        .and_then(Value::as_str)
                        .unwrap_or("default");
                    if kind != "default" {
                        return Err(format!(
                            "field `rope_parameters.{key}.rope_type` = \"{kind}\" is not supported (supported: default)"
                        ));
                    }
                    if let Some(f) = p.get("partial_rotary_factor").and_then(Value::as_f64) {
                        if f != 1.0 {
                            return Err(format!(
                                "field `rope_parameters.{key}.partial_rotary_factor` = {f} is not supported (supported: 1.0)"
                            ));
                        }
                    }
                    match p.get("rope_theta").and_then(Value::as_f64) {
                        Some(t) if t > 0.0 => *slot = t,
                        _ => {
                            return Err(format!(
                            "field `rope_parameters.{key}.rope_theta` is missing or not positive"
                        ))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "field `rope_parameters` = {other} is not an object"
                ))
            }
        }
        let local_attention = uint("local_attention", 128)? as usize;
        if local_attention == 0 || !local_attention.is_multiple_of(2) {
            return Err(format!(
                "field `local_attention` = {local_attention} is not supported (the window must be even and positive)"
            ));
        }
        let classifier_pooling = match v
            .get("classifier_pooling")
            .and_then(Value::as_str)
            .unwrap_or("cls")
        {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => {
                return Err(format!(
                "field `classifier_pooling` = \"{other}\" is not supported (supported: cls, mean)"
            ))
            }
        };
        Ok(ModernBertConfig {
            layer_types,
            rope_theta_full: full,
            rope_theta_sliding: sliding,
            local_attention,
            norm_bias: bool_field("norm_bias")?,
            attention_bias: bool_field("attention_bias")?,
            mlp_bias: bool_field("mlp_bias")?,
            classifier_bias: bool_field("classifier_bias")?,
            classifier_activation: gelu("classifier_activation")?,
            classifier_pooling,
        })
    }
}

impl ModelConfig {
    /// Columns of the FFN's first linear: 2 · intermediate for a gated MLP (ModernBERT's
    /// GeGLU: input | gate), else intermediate.
    pub fn ffn_in_width(&self) -> usize {
        match self.family {
            Family::ModernBert | Family::Qwen => 2 * self.intermediate_size,
            Family::Bert | Family::Roberta | Family::Blip => self.intermediate_size,
        }
    }

    /// (out, in) of every linear of a layer, as the forward fuses them: QKV, the attention's
    /// output, the FFN's two. (The GEMM shapes a forward runs, for tuning.)
    pub fn linear_shapes(&self) -> [(usize, usize); 4] {
        let h = self.hidden_size;
        let (qkv, attn_out) = match &self.qwen {
            Some(q) => {
                let d = self.head_dim;
                (
                    (self.num_heads + 2 * q.num_kv_heads) * d,
                    self.num_heads * d,
                )
            }
            None => (3 * h, h),
        };
        [
            (qkv, h),
            (h, attn_out),
            (self.ffn_in_width(), h),
            (h, self.intermediate_size),
        ]
    }

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
            "ModernBertForSequenceClassification" => Family::ModernBert,
            "Qwen3ForCausalLM" | "Qwen2ForCausalLM" => {
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("not a valid config: {e}"))?;
                return QwenConfig::config(architecture, &v);
            }
            "BlipForImageTextRetrieval" => {
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("not a valid config: {e}"))?;
                return blip_config(architecture, &v);
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
        // ModernBERT names its activation `hidden_activation` and its eps `norm_eps`.
        let (act_field, act_value) = match family {
            Family::ModernBert => ("hidden_activation", raw.hidden_activation.as_deref()),
            _ => ("hidden_act", raw.hidden_act.as_deref()),
        };
        let activation = match act_value.unwrap_or("gelu") {
            "gelu" => Activation::GeluErf,
            other => {
                return Err(format!(
                    "field `{act_field}` = \"{other}\" is not supported (supported: gelu)"
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
            (Family::ModernBert, _) => 50283,
            (Family::Qwen | Family::Blip, _) => 0,
            (Family::Roberta, _) => {
                return Err(
                    "field `pad_token_id` is missing or negative; RoBERTa positions need it".into(),
                )
            }
        };
        let modern = family == Family::ModernBert;
        let max_position_embeddings = need(
            raw.max_position_embeddings.or(modern.then_some(8192)),
            "max_position_embeddings",
        )?;
        let layer_norm_eps = if modern {
            raw.norm_eps.unwrap_or(1e-5)
        } else {
            raw.layer_norm_eps.unwrap_or(1e-12)
        };
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let modernbert = if modern {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("not a valid config: {e}"))?;
            Some(ModernBertConfig::from_value(&v, num_layers)?)
        } else {
            None
        };
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
            num_layers,
            num_heads,
            head_dim: hidden_size / num_heads,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            activation,
            max_position_embeddings,
            // ModernBERT has no token type table: every type is 0.
            type_vocab_size: if modern {
                1
            } else {
                need(raw.type_vocab_size.or(Some(2)), "type_vocab_size")?
            },
            layer_norm_eps: layer_norm_eps as f32,
            pad_token_id,
            num_labels,
            modernbert,
            qwen: None,
            blip: None,
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
            Family::Bert | Family::ModernBert | Family::Qwen | Family::Blip => {
                self.max_position_embeddings
            }
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
        if let Some(v) = &self.blip {
            // transformers' BlipForImageTextRetrieval, less vision_proj and text_proj (256 wide
            // projections for the contrastive score, which the ITM head does not use).
            let (vh, vi, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
            let vision_emb = vh * 3 * p * p + vh + vh + v.rows_per_image() * vh;
            let vision_layer = 3 * vh * vh + 3 * vh + vh * vh + vh + 2 * vh * vi + vi + vh + 4 * vh;
            let vision = vision_emb + v.num_layers * vision_layer + 2 * vh;
            let text_emb = (self.vocab_size + self.max_position_embeddings) * h + 2 * h;
            let attn = |kv_in: usize| h * h + h + 2 * (kv_in * h + h) + h * h + h + 2 * h;
            let text_layer = attn(h) + attn(vh) + 2 * h * i + i + h + 2 * h;
            return vision + text_emb + self.num_layers * text_layer + 2 * h + 2;
        }
        if let Some(q) = &self.qwen {
            let (d, heads, kv) = (self.head_dim, self.num_heads, q.num_kv_heads);
            let qkv = h * (heads + 2 * kv) * d + if q.qkv_bias { (heads + 2 * kv) * d } else { 0 };
            let qk_norm = if q.qwen3 { 2 * d } else { 0 };
            let layer = qkv + heads * d * h + qk_norm + 3 * h * i + 2 * h;
            let lm_head = if q.tied_embeddings {
                0
            } else {
                self.vocab_size * h
            };
            return self.vocab_size * h + self.num_layers * layer + h + lm_head;
        }
        if let Some(m) = &self.modernbert {
            let norm = if m.norm_bias { 2 * h } else { h };
            let bias = |on: bool, n: usize| if on { n } else { 0 };
            let emb = self.vocab_size * h + norm;
            let layer = 3 * h * h
                + bias(m.attention_bias, 3 * h)
                + h * h
                + bias(m.attention_bias, h)
                + 2 * i * h
                + bias(m.mlp_bias, 2 * i)
                + i * h
                + bias(m.mlp_bias, h)
                + 2 * norm;
            let head =
                h * h + bias(m.classifier_bias, h) + norm + h * self.num_labels + self.num_labels;
            // Layer 0 has no attention norm (Identity); the final norm takes its place.
            return emb + self.num_layers * layer + head;
        }
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
